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
    /// Published blocks that are gone: their decision ids are forgotten.
    forget: Vec<(Target, Source)>,
    dropped: u64,
    next_seq: u64,
}

impl Plan {
    /// Queues `p` unless the queue (`len` rows, this plan's included) is at `max`: then it is
    /// counted as dropped.
    fn push(
        &mut self,
        len: &mut usize,
        max: usize,
        target: Target,
        source: &Source,
        kind: PublicationKind,
    ) {
        if *len >= max {
            self.dropped += 1;
            return;
        }
        *len += 1;
        let p = Publication {
            target,
            source: source.clone(),
            kind,
        };
        self.put.push((self.next_seq, p));
        self.next_seq += 1;
    }

    /// How many publications it queues, and how many published blocks it forgets.
    pub fn counts(&self) -> (usize, usize) {
        (self.put.len(), self.forget.len())
    }

    /// The store operations.
    pub fn ops(&self) -> impl Iterator<Item = StoreOp> + '_ {
        self.delete
            .iter()
            .map(|s| StoreOp::DeleteOutbox(*s))
            .chain(
                self.put
                    .iter()
                    .map(|(s, p)| StoreOp::PutOutbox(*s, p.clone())),
            )
            .chain(
                self.forget
                    .iter()
                    .map(|(t, s)| StoreOp::PutPublished(*t, s.clone(), Vec::new())),
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
        if plan.put.is_empty()
            && plan.delete.is_empty()
            && plan.forget.is_empty()
            && plan.dropped == 0
        {
            return;
        }
        let shared = self.echo.clone();
        let mut echo = shared.lock().expect("echo lock");
        for key in &plan.forget {
            if let Some(ids) = self.published.remove(key) {
                echo.remove_ids(&ids);
            }
        }
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

impl Ledger {
    /// At start, once the stored blocks are loaded (those that ended while the daemon was down
    /// removed): the decision ids of published blocks that are gone are forgotten (their
    /// decisions ended with them), and every enforced block of a published source that the
    /// LAPI does not hold and that is not queued (made before publishing was turned on, or left
    /// out by a full queue) is queued, oldest target first.
    pub fn plan_catch_up(&self, now: WallMs) -> Plan {
        let o = &self.outbox;
        let mut plan = Plan {
            next_seq: o.next_seq,
            ..Plan::default()
        };
        for key in o.published.keys() {
            let (target, source) = key;
            if !o.by_key.contains_key(key) && enforced(self.blocks.get(target), source).is_none() {
                plan.forget.push(key.clone());
            }
        }
        plan.forget.sort();
        let mut len = o.queue.len();
        for (target, blocks) in &self.blocks {
            for (source, scenario) in &o.scenarios {
                let key = (*target, source.clone());
                let Some(block) = enforced(Some(blocks), source) else {
                    continue;
                };
                if o.published.contains_key(&key)
                    || o.by_key.contains_key(&key)
                    || block.expires_ms.is_some_and(|e| e <= now)
                {
                    continue;
                }
                plan.push(&mut len, o.max, *target, source, ban(block, scenario));
            }
        }
        plan
    }
}

/// The publication of `block`'s ban.
fn ban(block: &SourceBlock, scenario: &str) -> PublicationKind {
    PublicationKind::Ban {
        expires_ms: block.expires_ms,
        scenario: scenario.to_owned(),
        reason: block.reason.summary(),
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
                        ban(new, scenario)
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
                plan.push(&mut len, o.max, *target, source, kind);
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

    #[test]
    fn at_start_unpublished_blocks_are_queued_and_ids_of_ended_blocks_forgotten() {
        let (mut l, echo) = ledger(10);
        // Made before publishing was on: the ledger holds them, the queue does not.
        let off = l.outbox().scenarios.clone();
        l.outbox_mut().scenarios.clear();
        round(
            &mut l,
            vec![
                block("192.0.2.1", "fail2ban", false),
                block("192.0.2.2", "fail2ban", true),
                block("192.0.2.3", "cli", false),
            ],
            NOW,
        );
        l.outbox_mut().scenarios = off;
        assert!(kinds(&l).is_empty());
        // A block published earlier that ended while the daemon was down.
        let gone: Target = "198.51.100.7".parse().unwrap();
        l.outbox_mut().load(
            Vec::new(),
            vec![(gone, "fail2ban".parse().unwrap(), vec![77])],
        );
        assert!(echo.lock().unwrap().is_own(Some(77), "x", &gone));
        let plan = l.plan_catch_up(NOW + ms(1000));
        assert_eq!(plan.counts(), (1, 1));
        let ops: Vec<StoreOp> = plan.ops().collect();
        assert!(
            matches!(&ops[..], [StoreOp::PutOutbox(1, _), StoreOp::PutPublished(t, _, ids)] if *t == gone && ids.is_empty()),
            "{ops:?}"
        );
        l.outbox_mut().apply(plan);
        assert_eq!(kinds(&l), ["192.0.2.1 fail2ban ban enforcer/fail2ban"]);
        assert_eq!(l.outbox().counters().published, 0);
        assert!(!echo.lock().unwrap().is_own(Some(77), "x", &gone));
        // Once queued (or published), a second start queues nothing again.
        assert_eq!(l.plan_catch_up(NOW + ms(2000)).counts(), (0, 0));
    }
}
