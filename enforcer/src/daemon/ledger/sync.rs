//! `sync_source`: one source's blocks made to say what a feed (CrowdSec) says, in one change.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use super::{Change, Ledger};
use crate::{
    audit::Action,
    block::{Reason, Source},
    protocol::{BatchFailure, BlockRequest, Outcome, Reply, SyncReply, SyncRequest},
    target::Target,
    time::WallMs,
};

/// A synced block whose end is this close to the feed's is left as it is.
const SYNC_SLACK: Duration = Duration::from_secs(2);

/// A feed's items the policy refused, remembered so that the next resync, asking the same
/// again, is refused without a second audit line (a blocklist with broad ranges would write
/// thousands at every resync). The item is still judged each time (an allowlist entry removed
/// since lets it through); only an identical refusal of an identical item goes unaudited.
#[derive(Debug, Default)]
pub(super) struct FeedRefusals(HashMap<(Source, Target), Refused>);

/// What was refused: the item (its reason and wanted end) and the refusal's message.
#[derive(Debug)]
struct Refused {
    reason: Arc<Reason>,
    wanted: WallMs,
    message: String,
}

impl FeedRefusals {
    /// Records a refusal; whether the same item was refused the same way before.
    fn repeat(&mut self, key: (Source, Target), now: Refused) -> bool {
        let same = self.0.get(&key).is_some_and(|was| {
            was.reason == now.reason
                && was.message == now.message
                && was.wanted.abs_diff(now.wanted) <= SYNC_SLACK
        });
        self.0.insert(key, now);
        same
    }

    /// Forgets the refusals of a source's targets the feed no longer names.
    fn keep_only(&mut self, source: &Source, named: &HashSet<Target>) {
        self.0.retain(|(s, t), _| s != source || named.contains(t));
    }

    fn forget(&mut self, source: &Source, target: Target) {
        self.0.remove(&(source.clone(), target));
    }
}

impl Ledger {
    /// Makes one source's blocks match a feed (see [`SyncRequest`]). Each item goes through the
    /// same block path and policy as any block; an item already in force as asked (same reason,
    /// end within [`SYNC_SLACK`]) is left alone, so a periodic full resync of a large feed
    /// writes nothing. Unlike a block, a feed's item may shorten the source's block.
    pub fn sync_source(
        &mut self,
        c: &mut Change,
        req: SyncRequest,
        now: WallMs,
    ) -> (Reply, Vec<Target>) {
        let source = req.source;
        let mut reply = SyncReply::default();
        let mut touched = Vec::new();
        let gone: Vec<Target> = if req.replace {
            let keep: HashSet<Target> = req.items.iter().map(|i| i.target).collect();
            self.feed_refusals.keep_only(&source, &keep);
            self.blocks
                .iter()
                .filter(|(t, b)| b.by_source.contains_key(&source) && !keep.contains(t))
                .map(|(t, _)| *t)
                .collect()
        } else {
            for t in &req.remove {
                self.feed_refusals.forget(&source, *t);
            }
            req.remove
                .into_iter()
                .filter(|t| self.has_block(t, &source))
                .collect()
        };
        for target in gone {
            if self.unblock(c, target, Some(source.clone()), false).is_ok() {
                reply.removed += 1;
                touched.push(target);
            }
        }
        for (index, item) in req.items.into_iter().enumerate() {
            let wanted = now.saturating_add(Duration::from_millis(item.ttl_ms));
            if self.in_force_as_asked(&item.target, &source, wanted, &item.reason) {
                reply.unchanged += 1;
                continue;
            }
            if self
                .pending
                .values()
                .any(|p| p.request.target == item.target && p.request.source == source)
            {
                reply.pending += 1;
                continue;
            }
            let one = BlockRequest {
                target: item.target,
                ttl_secs: Some(item.ttl_ms.div_ceil(1000).max(1)),
                permanent: false,
                source: source.clone(),
                reason: Reason::default(),
                shadow: false,
                force: false,
                scope: Default::default(),
            };
            let audited = c.events.len();
            match self.block_until(c, one, item.reason.clone(), false, now, Some(wanted)) {
                Ok(r) => {
                    self.feed_refusals.forget(&source, item.target);
                    if r.outcome == Outcome::Pending {
                        reply.pending += 1;
                    } else {
                        reply.applied += 1;
                        touched.push(r.target);
                    }
                }
                Err(e) => {
                    let refused = Refused {
                        reason: item.reason,
                        wanted,
                        message: e.to_string(),
                    };
                    if self
                        .feed_refusals
                        .repeat((source.clone(), item.target), refused)
                    {
                        // Asked and refused the same way before: audited then.
                        remove_refusal_lines(c, audited);
                    }
                    reply.failed.push(BatchFailure {
                        index,
                        target: item.target,
                        error: e.to_body(),
                    });
                }
            }
        }
        (Reply::SyncSource(reply), touched)
    }

    pub(super) fn has_block(&self, target: &Target, source: &Source) -> bool {
        self.blocks
            .get(target)
            .is_some_and(|b| b.by_source.contains_key(source))
    }

    /// Whether the source's block already ends as the feed asks (within the slack), or as close
    /// to it as the policy allows: a block capped at the source's `max_ttl` when it was made or
    /// last changed is in force as asked while the feed wants it longer (re-asking would only
    /// extend it by the time since, and audit that, at every resync).
    fn in_force_as_asked(
        &self,
        target: &Target,
        source: &Source,
        wanted: WallMs,
        reason: &Arc<Reason>,
    ) -> bool {
        let max_ttl = self.policy.max_ttl(source);
        self.blocks
            .get(target)
            .and_then(|b| b.by_source.get(source))
            .is_some_and(|b| {
                let Some(end) = b.expires_ms else {
                    return false;
                };
                let capped_end = b.updated_ms.saturating_add(max_ttl);
                let as_asked = end.abs_diff(wanted) <= SYNC_SLACK
                    || (wanted > end && end.abs_diff(capped_end) <= SYNC_SLACK);
                as_asked && b.reason == *reason
            })
    }
}

/// Drops the refusal lines a block attempt added to `c` after its first `from` events.
fn remove_refusal_lines(c: &mut Change, from: usize) {
    let mut i = from;
    while i < c.events.len() {
        if c.events[i].action == Action::Refuse {
            c.events.remove(i);
        } else {
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        audit::Action,
        daemon::ledger::Capacity,
        policy::{Policy, PolicyConfig},
        protocol::SyncItem,
        store::StoreOp,
        time::testing::{ms, wall},
    };

    const T0: WallMs = wall(1_000_000);

    fn ledger() -> Ledger {
        Ledger::new(
            Policy::new(PolicyConfig::default(), Duration::from_secs(600)),
            Capacity::uniform(1000),
        )
    }

    fn feed(items: &[(&str, u64)]) -> SyncRequest {
        SyncRequest {
            source: "crowdsec".parse().unwrap(),
            replace: true,
            items: items
                .iter()
                .map(|(t, ttl_ms)| SyncItem {
                    target: t.parse().unwrap(),
                    ttl_ms: *ttl_ms,
                    reason: Arc::new(Reason::text(format!("feed item {t}"))),
                })
                .collect(),
            remove: Vec::new(),
        }
    }

    fn puts(c: &Change) -> usize {
        c.ops
            .iter()
            .filter(|o| matches!(o, StoreOp::Put(_)))
            .count()
    }

    fn end(l: &Ledger, target: &str) -> Option<WallMs> {
        let source: Source = "crowdsec".parse().unwrap();
        l.blocks()
            .get(&target.parse::<Target>().unwrap())
            .and_then(|b| b.by_source.get(&source))
            .and_then(|b| b.expires_ms)
    }

    #[test]
    fn a_fed_block_is_written_once_and_ends_when_the_feed_says() {
        let mut l = ledger();
        let mut c = Change::default();
        l.sync_source(
            &mut c,
            feed(&[("192.0.2.1", 1_500), ("192.0.2.2", 90_250)]),
            T0,
        );
        assert_eq!(puts(&c), 2, "one store row per item: {:?}", c.ops);
        assert_eq!(end(&l, "192.0.2.1"), Some(T0 + ms(1_500)));
        assert_eq!(end(&l, "192.0.2.2"), Some(T0 + ms(90_250)));
        let audited: Vec<_> = c
            .events
            .iter()
            .filter(|e| e.action == Action::Block)
            .map(|e| e.expires_ms)
            .collect();
        assert_eq!(
            audited,
            vec![Some(T0 + ms(1_500)), Some(T0 + ms(90_250))],
            "the audit line says the end the block has"
        );
        assert_eq!(l.deadlines.len(), 2, "one deadline per block");
    }

    #[test]
    fn a_feed_shortens_its_own_block_in_one_write() {
        let mut l = ledger();
        l.sync_source(&mut Change::default(), feed(&[("192.0.2.1", 600_000)]), T0);
        let mut c = Change::default();
        let (reply, _) = l.sync_source(&mut c, feed(&[("192.0.2.1", 60_000)]), T0 + ms(1_000));
        let Reply::SyncSource(reply) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!((reply.applied, reply.unchanged), (1, 0));
        assert_eq!(puts(&c), 1, "{:?}", c.ops);
        assert_eq!(end(&l, "192.0.2.1"), Some(T0 + ms(61_000)));
        assert_eq!(l.deadlines.len(), 1, "the old deadline went");
        // Said again within the slack: nothing is written.
        let mut c = Change::default();
        l.sync_source(&mut c, feed(&[("192.0.2.1", 59_500)]), T0 + ms(2_000));
        assert!(c.ops.is_empty(), "{:?}", c.ops);
    }
}
