//! The LAPI's decision stream as the bouncer reads it: the answer's envelope
//! ([`enforcer::crowdsec::decision::StreamBody::parse`]), each decision mapped on its own
//! ([`enforcer::crowdsec::decision::map`]), and the ledger that turns a pull into one sync
//! request ([`enforcer::crowdsec::ledger::Ledger`]), as a startup pull and then as a delta.
//!
//! Properties: nothing panics; a mapped decision's target prints in a form that parses back to
//! it, and an `Ip` decision is one address; the startup sync request replaces the source, names
//! each target at most once, in order, each with a TTL above zero that no decision exceeds,
//! and only targets some live decision names; a delta that deletes every decision it added
//! leaves no item and removes every target it touched.
#![no_main]

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use enforcer::{
    block::Source,
    crowdsec::{
        decision::{self, Ban, DecisionKey, StreamBody},
        ledger::Ledger,
    },
    target::Target,
    time::BootMs,
};
use libfuzzer_sys::fuzz_target;

/// The boot-clock time the ledger is told it is.
const NOW: BootMs = BootMs::from_ms(1_000_000_000);

fuzz_target!(|data: &[u8]| {
    let Ok(body) = StreamBody::parse(data) else {
        return;
    };
    let source: Source = "crowdsec".parse().expect("a valid source name");
    let mut bans: Vec<Ban> = Vec::new();
    for raw in &body.new {
        let Ok(ban) = decision::map(raw) else {
            continue;
        };
        let text = ban.target.to_string();
        let back: Target = text
            .parse()
            .unwrap_or_else(|e| panic!("target {text} does not parse back: {e}"));
        assert_eq!(back, ban.target);
        bans.push(ban);
    }
    // The model: per target and decision key, the last live decision said wins (a decision
    // seen twice is updated, an expired one changes nothing); a target lasts as long as its
    // longest decision.
    let mut live: BTreeMap<(Target, DecisionKey), u64> = BTreeMap::new();
    for ban in &bans {
        if let Ok(ms) = u64::try_from(ban.remaining_ms)
            && ms > 0
        {
            live.insert((ban.target, ban.key.clone()), ms);
        }
    }
    let mut longest: BTreeMap<Target, u64> = BTreeMap::new();
    for ((target, _), ms) in live {
        let l = longest.entry(target).or_default();
        *l = (*l).max(ms);
    }
    let touched: BTreeSet<Target> = bans.iter().map(|b| b.target).collect();
    let mut ledger = Ledger::default();
    let startup = ledger.startup(&source, bans.clone(), NOW, NOW);
    assert!(startup.replace && startup.remove.is_empty());
    let targets: Vec<Target> = startup.items.iter().map(|i| i.target).collect();
    assert!(
        targets.windows(2).all(|w| w[0] < w[1]),
        "the items are in target order, each once: {targets:?}"
    );
    assert_eq!(
        targets.iter().copied().collect::<BTreeSet<_>>(),
        longest.keys().copied().collect::<BTreeSet<_>>(),
        "exactly the targets of live decisions"
    );
    for item in &startup.items {
        assert!(item.ttl_ms > 0, "{} with a zero TTL", item.target);
        assert_eq!(
            Some(&item.ttl_ms),
            longest.get(&item.target),
            "{} lasts as long as its longest decision",
            item.target
        );
    }
    // Deleting every decision again: nothing stays.
    let later = NOW + Duration::from_millis(1);
    let delta = ledger.delta(&source, Vec::new(), bans, later, later);
    assert!(delta.items.is_empty(), "{:?}", delta.items);
    assert_eq!(
        delta.remove.iter().copied().collect::<BTreeSet<_>>(),
        touched,
        "every target the deletions name is removed"
    );
    assert_eq!(ledger.active(NOW + Duration::from_millis(1)), 0);
    for deleted in &body.deleted {
        let _ = decision::map(deleted);
    }
});
