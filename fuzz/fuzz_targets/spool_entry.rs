//! Spool files as the daemon's drain reads them ([`enforcer::spool::parse_entry`]), and
//! the TTL adjustment applied to what they hold ([`enforcer::daemon::spool_drain::adjust`]).
//!
//! Properties: parsing never panics; an accepted entry holds a block, block_batch or unblock
//! and re-serialises to a fixed point; `adjust` never panics, whatever the clock says, keeps
//! the request's op, source and targets, never lengthens a TTL, gives every remaining block at
//! least one second, and leaves permanent blocks and unblocks alone.
#![no_main]

use std::time::Duration;

use enforcer::{
    daemon::spool_drain::{DefaultTtls, adjust},
    protocol::Request,
    spool::{EntryError, Spooled, parse_entry},
    time::WallMs,
};
use libfuzzer_sys::fuzz_target;

/// The targets a request names, in order, with their TTL (`None`: the default).
fn targets(request: &Request) -> Vec<(String, Option<u64>)> {
    match request {
        Request::Block(b) => vec![(b.target.to_string(), b.ttl_secs)],
        Request::BlockBatch(b) => b
            .items
            .iter()
            .map(|i| (i.target.to_string(), i.ttl_secs.or(b.ttl_secs)))
            .collect(),
        Request::Unblock { target, .. } => vec![(target.to_string(), None)],
        other => panic!("`{}` accepted from a spool file", other.op()),
    }
}

fn check_adjust(entry: &Spooled, now: WallMs) {
    let defaults = DefaultTtls {
        global: Duration::from_secs(3600),
        ..DefaultTtls::default()
    };
    let before = targets(&entry.request);
    let Some(after) = adjust(entry.request.clone(), entry.spooled_ms, now, &defaults) else {
        assert!(
            matches!(entry.request, Request::Block(_) | Request::BlockBatch(_)),
            "an unblock was dropped"
        );
        return;
    };
    assert_eq!(after.op(), entry.request.op());
    let after_targets = targets(&after);
    match &after {
        Request::Block(b) if b.permanent => assert_eq!(after_targets, before),
        Request::Unblock { .. } => assert_eq!(after_targets, before),
        _ => {
            // Items keep their order; each left has 1 s or more, and no more than it asked for.
            let mut rest = before.iter();
            for (target, ttl) in &after_targets {
                let ttl = ttl.expect("an adjusted block has a TTL");
                assert!(ttl >= 1, "{target} gets a zero TTL");
                let (_, asked) = rest
                    .find(|(t, _)| t == target)
                    .expect("adjust invented or reordered a target");
                let asked = asked.unwrap_or(3600);
                assert!(
                    ttl <= asked.max(1),
                    "{target}: TTL {ttl}s is longer than the {asked}s asked"
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let entry = match parse_entry(data) {
        Ok(entry) => entry,
        Err(EntryError::Malformed(e)) => {
            assert!(!e.to_string().is_empty());
            return;
        }
        Err(EntryError::NotSpoolable(op)) => {
            assert!(
                !matches!(op, "block" | "block_batch" | "unblock"),
                "`{op}` refused"
            );
            return;
        }
    };
    let first = serde_json::to_vec(&entry).expect("an accepted entry serialises");
    let again = parse_entry(&first).expect("a serialised entry parses back");
    assert_eq!((again.spooled_ms, &again.id), (entry.spooled_ms, &entry.id));
    assert_eq!(
        serde_json::to_vec(&again).unwrap(),
        first,
        "not a fixed point"
    );
    // The drain's clock against the spooling time: before it, at it, after it, far after it.
    for now in [
        WallMs::EPOCH,
        entry.spooled_ms,
        entry
            .spooled_ms
            .saturating_add(Duration::from_millis(1_500)),
        WallMs::MAX,
    ] {
        check_adjust(&entry, now);
    }
});
