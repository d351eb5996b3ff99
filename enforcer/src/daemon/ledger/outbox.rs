//! The publish queue in the ledger: which block changes go to the CrowdSec LAPI
//! ([`crate::outbox`]), planned from a round's change and written in the same commit.
//!
//! One queued row per (target, source) at most: a newer change of the same block replaces the
//! queued one (a re-block that extends it, an unblock that withdraws it), so the queue holds
//! what the LAPI must end up saying, in the order the blocks last changed. Only enforced blocks
//! of the configured sources are published: never shadow blocks, never refused ones (they are
//! no blocks), never `crowdsec` (the configuration refuses it).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use super::{Change, Ledger};
use crate::{
    block::{Mode, Source, SourceBlock},
    outbox::{OutboxCounters, Publication, PublicationKind, Queued, Sent, SharedEcho},
    store::StoreOp,
    target::Target,
    time::WallMs,
};

/// What to publish, and the queue.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Published sources, each with its scenario (empty: publishing is off).
    scenarios: BTreeMap<Source, String>,
    max: usize,
    next_seq: u64,
    queue: BTreeMap<u64, Publication>,
    /// The queued row of each block.
    by_key: HashMap<(Target, Source), u64>,
    /// The LAPI decision ids standing for each published block.
    published: HashMap<(Target, Source), Vec<i64>>,
    dropped: u64,
    echo: SharedEcho,
    wake: Arc<tokio::sync::Notify>,
}

/// What a round adds to and removes from the queue (applied once its commit succeeded).
#[derive(Debug, Default)]
pub struct Plan {
    put: Vec<(u64, Publication)>,
    delete: Vec<u64>,
    dropped: u64,
    next_seq: u64,
}

impl Plan {
    /// The store operations.
    pub fn ops(&self) -> impl Iterator<Item = StoreOp> + '_ {
        self.delete.iter().map(|s| StoreOp::DeleteOutbox(*s)).chain(
            self.put
                .iter()
                .map(|(s, p)| StoreOp::PutOutbox(*s, p.clone())),
        )
    }
}

impl Outbox {
    /// Publishes `scenarios`' sources, queueing at most `max`; `echo` is shared with the
    /// bouncer, `wake` with the publisher.
    pub fn new(
        scenarios: BTreeMap<Source, String>,
        max: usize,
        echo: SharedEcho,
        wake: Arc<tokio::sync::Notify>,
    ) -> Self {
        echo.lock()
            .expect("echo lock")
            .set_scenarios(scenarios.values().cloned());
        Self {
            scenarios,
            max,
            next_seq: 1,
            echo,
            wake,
            ..Self::default()
        }
    }

    /// Loads the stored queue and decision ids.
    pub fn load(
        &mut self,
        queue: Vec<(u64, Publication)>,
        published: Vec<(Target, Source, Vec<i64>)>,
    ) {
        let mut echo = self.echo.lock().expect("echo lock");
        for (seq, p) in queue {
            self.next_seq = self.next_seq.max(seq + 1);
            echo.queued(p.target);
            self.by_key.insert((p.target, p.source.clone()), seq);
            self.queue.insert(seq, p);
        }
        for (target, source, ids) in published {
            echo.add_ids(&ids);
            self.published.insert((target, source), ids);
        }
        drop(echo);
        if !self.queue.is_empty() {
            self.wake.notify_one();
        }
    }

    /// The counters.
    pub fn counters(&self) -> OutboxCounters {
        OutboxCounters {
            depth: self.queue.len() as u64,
            max: self.max as u64,
            dropped: self.dropped,
            published: self.published.len() as u64,
        }
    }

    /// Whether any source is published.
    pub fn is_on(&self) -> bool {
        !self.scenarios.is_empty()
    }

    /// The first `max` queued publications, each with the decision ids it replaces.
    pub fn take(&self, max: usize) -> Vec<Queued> {
        self.queue
            .iter()
            .take(max)
            .map(|(seq, p)| Queued {
                seq: *seq,
                publication: p.clone(),
                published: self
                    .published
                    .get(&(p.target, p.source.clone()))
                    .cloned()
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// The store operations that record `sent` (the queue rows go, the ids are kept).
    pub fn sent_ops(&self, sent: &[Sent]) -> Vec<StoreOp> {
        let mut ops = Vec::new();
        let mut ids: HashMap<(Target, Source), Vec<i64>> = HashMap::new();
        for s in sent {
            if self.queue.contains_key(&s.seq) {
                ops.push(StoreOp::DeleteOutbox(s.seq));
            }
            let key = (s.target, s.source.clone());
            let now = ids
                .entry(key.clone())
                .or_insert_with(|| self.published.get(&key).cloned().unwrap_or_default());
            now.retain(|id| !s.removed.contains(id));
            for id in &s.added {
                if !now.contains(id) {
                    now.push(*id);
                }
            }
        }
        for ((target, source), now) in ids {
            ops.push(StoreOp::PutPublished(target, source, now));
        }
        ops
    }

    /// Applies what [`Outbox::sent_ops`] stored.
    pub fn apply_sent(&mut self, ops: &[StoreOp], sent: &[Sent]) {
        let shared = self.echo.clone();
        let mut echo = shared.lock().expect("echo lock");
        for s in sent {
            echo.add_ids(&s.added);
            echo.remove_ids(&s.removed);
        }
        for op in ops {
            match op {
                StoreOp::DeleteOutbox(seq) => self.unqueue(*seq, &mut echo),
                StoreOp::PutPublished(target, source, ids) => {
                    let key = (*target, source.clone());
                    if ids.is_empty() {
                        self.published.remove(&key);
                    } else {
                        self.published.insert(key, ids.clone());
                    }
                }
                _ => {}
            }
        }
    }

    fn unqueue(&mut self, seq: u64, echo: &mut crate::outbox::Echo) {
        if let Some(p) = self.queue.remove(&seq) {
            echo.dequeued(&p.target);
            let key = (p.target, p.source);
            if self.by_key.get(&key) == Some(&seq) {
                self.by_key.remove(&key);
            }
        }
    }

    /// Applies a committed round's plan.
    pub fn apply(&mut self, plan: Plan) {
        if plan.put.is_empty() && plan.delete.is_empty() && plan.dropped == 0 {
            return;
        }
        let shared = self.echo.clone();
        let mut echo = shared.lock().expect("echo lock");
        for seq in plan.delete {
            self.unqueue(seq, &mut echo);
        }
        let woke = !plan.put.is_empty();
        for (seq, p) in plan.put {
            echo.queued(p.target);
            self.by_key.insert((p.target, p.source.clone()), seq);
            self.queue.insert(seq, p);
        }
        drop(echo);
        self.next_seq = self.next_seq.max(plan.next_seq);
        if plan.dropped > 0 {
            tracing::warn!(
                dropped = plan.dropped,
                max = self.max,
                "the CrowdSec publish queue is full: these blocks are enforced here but not published (crowdsec.publish.queue_max)"
            );
            self.dropped += plan.dropped;
        }
        if woke {
            self.wake.notify_one();
        }
    }
}

/// A source's block as published: enforced blocks only.
fn enforced<'a>(
    blocks: Option<&'a crate::block::TargetBlocks>,
    s: &Source,
) -> Option<&'a SourceBlock> {
    blocks
        .and_then(|b| b.by_source.get(s))
        .filter(|b| b.mode == Mode::Enforce)
}

impl Ledger {
    /// The publish queue.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The publish queue, to change.
    pub fn outbox_mut(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    /// What `change` (applied to the ledger, not committed yet) adds to the publish queue.
    pub fn plan_publications(&self, change: &Change, now: WallMs) -> Plan {
        let o = &self.outbox;
        let mut plan = Plan {
            next_seq: o.next_seq,
            ..Plan::default()
        };
        if !o.is_on() {
            return plan;
        }
        let mut len = o.queue.len();
        for (target, before) in &change.blocks_before {
            let after = self.blocks.get(target);
            for (source, scenario) in &o.scenarios {
                let old = enforced(before.as_ref(), source);
                let new = enforced(after, source);
                let kind = match (old, new) {
                    (old, Some(new)) if old.map(|b| b.expires_ms) != Some(new.expires_ms) => {
                        PublicationKind::Ban {
                            expires_ms: new.expires_ms,
                            scenario: scenario.clone(),
                            reason: new.reason.summary(),
                        }
                    }
                    (Some(old), None) => PublicationKind::Unban {
                        expired: old.expires_ms.is_some_and(|e| e <= now),
                    },
                    _ => continue,
                };
                if let Some(seq) = o.by_key.get(&(*target, source.clone())) {
                    plan.delete.push(*seq);
                    len -= 1;
                }
                if len >= o.max {
                    plan.dropped += 1;
                    continue;
                }
                len += 1;
                let p = Publication {
                    target: *target,
                    source: source.clone(),
                    kind,
                };
                plan.put.push((plan.next_seq, p));
                plan.next_seq += 1;
            }
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        daemon::ledger::{Capacity, Write},
        policy::{Policy, PolicyConfig},
        protocol::{BlockRequest, Request},
        time::testing::{ms, wall},
    };

    const NOW: WallMs = wall(1_000_000_000);

    fn ledger(max: usize) -> (Ledger, SharedEcho) {
        let mut l = Ledger::new(
            Policy::new(PolicyConfig::default(), Duration::from_secs(600)),
            Capacity::uniform(1000),
        );
        let echo: SharedEcho = Arc::default();
        let scenarios = [("fail2ban".parse().unwrap(), "enforcer/fail2ban".to_owned())];
        l.set_outbox(Outbox::new(
            scenarios.into_iter().collect(),
            max,
            echo.clone(),
            Arc::default(),
        ));
        (l, echo)
    }

    fn block(target: &str, source: &str, shadow: bool) -> Request {
        Request::Block(BlockRequest {
            target: target.parse().unwrap(),
            ttl_secs: Some(600),
            permanent: false,
            source: source.parse().unwrap(),
            reason: crate::block::Reason::text("5 failed logins"),
            shadow,
            force: false,
            scope: Default::default(),
        })
    }

    fn unblock(target: &str, source: &str) -> Request {
        Request::Unblock {
            target: target.parse().unwrap(),
            source: Some(source.parse().unwrap()),
            all: false,
            scope: Default::default(),
        }
    }

    /// Applies `requests` in one change, plans and applies the publications; returns the plan's
    /// store operations.
    fn round(l: &mut Ledger, requests: Vec<Request>, now: WallMs) -> Vec<StoreOp> {
        let mut c = Change::default();
        for r in requests {
            let w = Write::new(r, crate::access::Caller::internal("test"));
            assert!(l.apply(&mut c, w, now).answer.is_ok());
        }
        let plan = l.plan_publications(&c, now);
        let ops = plan.ops().collect();
        l.outbox_mut().apply(plan);
        ops
    }

    fn kinds(l: &Ledger) -> Vec<String> {
        l.outbox()
            .take(100)
            .iter()
            .map(|q| {
                let k = match &q.publication.kind {
                    PublicationKind::Ban { scenario, .. } => format!("ban {scenario}"),
                    PublicationKind::Unban { expired } => format!("unban expired={expired}"),
                };
                format!("{} {} {k}", q.publication.target, q.publication.source)
            })
            .collect()
    }

    #[test]
    fn enforced_blocks_of_published_sources_are_queued_in_the_same_commit() {
        let (mut l, echo) = ledger(10);
        let ops = round(
            &mut l,
            vec![
                block("192.0.2.1", "fail2ban", false),
                block("192.0.2.2", "fail2ban", true),
                block("192.0.2.3", "cli", false),
            ],
            NOW,
        );
        assert!(
            matches!(&ops[..], [StoreOp::PutOutbox(1, p)] if p.target.to_string() == "192.0.2.1"),
            "{ops:?}"
        );
        assert_eq!(kinds(&l), ["192.0.2.1 fail2ban ban enforcer/fail2ban"]);
        let target = "192.0.2.1".parse().unwrap();
        assert!(
            echo.lock()
                .unwrap()
                .is_own(None, "enforcer/fail2ban", &target)
        );
        // The same block again, unchanged: nothing new.
        assert!(round(&mut l, vec![block("192.0.2.1", "fail2ban", false)], NOW).is_empty());
    }

    #[test]
    fn a_later_change_replaces_the_queued_one_and_sent_ids_are_kept_until_the_unban() {
        let (mut l, echo) = ledger(10);
        round(&mut l, vec![block("192.0.2.1", "fail2ban", false)], NOW);
        let taken = l.outbox().take(10);
        assert_eq!(taken.len(), 1);
        let sent = vec![Sent {
            seq: taken[0].seq,
            target: taken[0].publication.target,
            source: taken[0].publication.source.clone(),
            added: vec![41],
            removed: vec![],
        }];
        let ops = l.outbox().sent_ops(&sent);
        l.outbox_mut().apply_sent(&ops, &sent);
        assert_eq!(l.outbox().counters().depth, 0);
        assert_eq!(l.outbox().counters().published, 1);
        let other = "198.51.100.9".parse().unwrap();
        assert!(echo.lock().unwrap().is_own(Some(41), "x", &other));
        // Unblocked: the unban carries the ids to delete.
        let ops = round(
            &mut l,
            vec![unblock("192.0.2.1", "fail2ban")],
            NOW + ms(1000),
        );
        assert_eq!(ops.len(), 1, "{ops:?}");
        let taken = l.outbox().take(10);
        assert!(matches!(
            taken[0].publication.kind,
            PublicationKind::Unban { expired: false }
        ));
        assert_eq!(taken[0].published, [41]);
        // Blocked again before the unban was sent: one queued row, the ban.
        let ops = round(
            &mut l,
            vec![block("192.0.2.1", "fail2ban", false)],
            NOW + ms(2000),
        );
        assert!(
            matches!(
                &ops[..],
                [StoreOp::DeleteOutbox(2), StoreOp::PutOutbox(3, _)]
            ),
            "{ops:?}"
        );
        assert_eq!(kinds(&l), ["192.0.2.1 fail2ban ban enforcer/fail2ban"]);
    }

    #[test]
    fn a_full_queue_drops_new_publications_and_counts_them() {
        let (mut l, _) = ledger(2);
        round(
            &mut l,
            vec![
                block("192.0.2.1", "fail2ban", false),
                block("192.0.2.2", "fail2ban", false),
                block("192.0.2.3", "fail2ban", false),
            ],
            NOW,
        );
        let c = l.outbox().counters();
        assert_eq!((c.depth, c.max, c.dropped), (2, 2, 1));
        // A change of a queued block still replaces its row.
        round(&mut l, vec![unblock("192.0.2.1", "fail2ban")], NOW);
        assert_eq!(l.outbox().counters().depth, 2);
        assert_eq!(l.outbox().counters().dropped, 1);
    }
}
