//! What the LAPI has said, per target: the functional core of the bouncer.
//!
//! The LAPI may hold several decisions for one value (several scenarios or origins, duplicates),
//! and its deltas overlap. The ledger keeps every live decision per target by key, so a target
//! stays blocked as long as its longest live decision, a decision seen twice changes nothing,
//! and a deletion lifts the block only when no other known decision for the target is left.
//! It turns each pull into one [`SyncRequest`] for the engine: a startup pull replaces the
//! source's whole set, a delta pull changes only the targets it touched.
//!
//! Times here (`now`, each decision's end) are `CLOCK_BOOTTIME` milliseconds, not wall-clock
//! ones: only durations matter, and a wall-clock step must not end every decision.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use super::decision::{Ban, DecisionKey};
use crate::{
    block::{Reason, Source},
    protocol::{SyncItem, SyncRequest},
    target::Target,
    time::BootMs,
};

/// One live decision.
#[derive(Clone, Debug)]
struct Live {
    expires_ms: BootMs,
    reason: Arc<Reason>,
    origin: Arc<str>,
}

/// The live decisions, by target.
#[derive(Debug, Default)]
pub struct Ledger {
    targets: HashMap<Target, Decisions>,
    /// Each origin's name once (a pull has a hundred thousand decisions and a few origins; a
    /// hostile one may name as many origins as decisions, so they are hashed).
    origins: HashSet<Arc<str>>,
}

/// One target's decisions by key: almost always one, so a small vector (a `BTreeMap` would
/// allocate a node of eleven slots per target: a hundred megabytes for 100,000 decisions);
/// past [`INDEXED_FROM`] decisions a hash index by key keeps each insert and removal constant
/// time, so an answer of many decisions for one target costs linear time, not quadratic.
#[derive(Debug, Default)]
struct Decisions {
    list: Vec<(DecisionKey, Live)>,
    /// Position of each key in `list`, once it has [`INDEXED_FROM`] entries.
    index: Option<HashMap<DecisionKey, usize>>,
}

/// A target with this many decisions gets an index by key.
const INDEXED_FROM: usize = 16;

impl Decisions {
    fn position(&self, key: &DecisionKey) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.list.iter().position(|(k, _)| k == key),
        }
    }

    fn insert(&mut self, key: DecisionKey, live: Live) {
        if let Some(i) = self.position(&key) {
            self.list[i].1 = live;
            return;
        }
        if let Some(index) = &mut self.index {
            index.insert(key.clone(), self.list.len());
        }
        self.list.push((key, live));
        if self.index.is_none() && self.list.len() >= INDEXED_FROM {
            self.index = Some(
                self.list
                    .iter()
                    .enumerate()
                    .map(|(i, (k, _))| (k.clone(), i))
                    .collect(),
            );
        }
    }

    fn remove(&mut self, key: &DecisionKey) {
        let Some(i) = self.position(key) else {
            return;
        };
        self.list.swap_remove(i);
        if let Some(index) = &mut self.index {
            index.remove(key);
            if let Some((moved, _)) = self.list.get(i) {
                index.insert(moved.clone(), i);
            }
        }
    }

    fn values(&self) -> impl Iterator<Item = &Live> {
        self.list.iter().map(|(_, l)| l)
    }
}

impl Ledger {
    /// A startup pull: the LAPI's whole current state replaces what we knew.
    /// Its items are in target order (the engine's maps and the store take them fastest so).
    ///
    /// `answered`: when the LAPI answered (its durations count from then); `now`: when the
    /// request goes to the engine (its TTLs count from then). A decision that ended between
    /// the two is not asked for.
    pub fn startup(
        &mut self,
        source: &Source,
        bans: Vec<Ban>,
        answered: BootMs,
        now: BootMs,
    ) -> SyncRequest {
        self.targets.clear();
        self.origins.clear();
        for ban in bans {
            self.insert(ban, answered);
        }
        let mut items: Vec<SyncItem> = self
            .targets
            .iter()
            .filter_map(|(t, d)| item(*t, d, now))
            .collect();
        items.sort_unstable_by_key(|i| i.target);
        SyncRequest {
            source: source.clone(),
            replace: true,
            items,
            remove: Vec::new(),
        }
    }

    /// A delta pull: decisions that started and decisions that ended since the last pull
    /// (`answered` and `now` as for [`Ledger::startup`]).
    pub fn delta(
        &mut self,
        source: &Source,
        new: Vec<Ban>,
        deleted: Vec<Ban>,
        answered: BootMs,
        now: BootMs,
    ) -> SyncRequest {
        let mut touched: Vec<Target> = Vec::with_capacity(new.len() + deleted.len());
        for ban in deleted {
            if let Some(live) = self.targets.get_mut(&ban.target) {
                live.remove(&ban.key);
            }
            touched.push(ban.target);
        }
        for ban in new {
            touched.push(ban.target);
            self.insert(ban, answered);
        }
        touched.sort_unstable();
        touched.dedup();
        let mut items = Vec::new();
        let mut remove = Vec::new();
        for target in touched {
            match self.targets.get(&target).and_then(|d| item(target, d, now)) {
                Some(item) => items.push(item),
                None => {
                    self.targets.remove(&target);
                    remove.push(target);
                }
            }
        }
        SyncRequest {
            source: source.clone(),
            replace: false,
            items,
            remove,
        }
    }

    /// Targets with at least one live decision.
    pub fn active(&self, now: BootMs) -> usize {
        self.targets
            .values()
            .filter(|d| d.values().any(|l| l.expires_ms > now))
            .count()
    }

    /// Live targets per origin of their longest decision (for usage metrics).
    pub fn active_by_origin(&self, now: BootMs) -> BTreeMap<String, u64> {
        let mut by_origin = BTreeMap::new();
        for decisions in self.targets.values() {
            if let Some(l) = longest(decisions, now) {
                *by_origin.entry(l.origin.to_string()).or_default() += 1;
            }
        }
        by_origin
    }

    /// Records a decision whose `remaining_ms` counts from `answered`.
    fn insert(&mut self, ban: Ban, answered: BootMs) {
        let Ok(remaining) = u64::try_from(ban.remaining_ms) else {
            return;
        };
        if remaining == 0 {
            return;
        }
        let origin = match self.origins.get(ban.origin.as_str()) {
            Some(o) => o.clone(),
            None => {
                let o: Arc<str> = ban.origin.into();
                self.origins.insert(o.clone());
                o
            }
        };
        let live = Live {
            expires_ms: answered + Duration::from_millis(remaining),
            reason: ban.reason,
            origin,
        };
        self.targets
            .entry(ban.target)
            .or_default()
            .insert(ban.key, live);
    }
}

/// The block a target calls for: as long as its longest live decision, with that one's reason.
fn item(target: Target, decisions: &Decisions, now: BootMs) -> Option<SyncItem> {
    let l = longest(decisions, now)?;
    Some(SyncItem {
        target,
        ttl_ms: l.expires_ms.saturating_since(now).as_millis() as u64,
        reason: l.reason.clone(),
    })
}

/// The longest live decision (of equally long ones, the one with the greatest key, as before).
fn longest(decisions: &Decisions, now: BootMs) -> Option<&Live> {
    decisions
        .list
        .iter()
        .filter(|(_, l)| l.expires_ms > now)
        .max_by(|(ka, a), (kb, b)| a.expires_ms.cmp(&b.expires_ms).then_with(|| ka.cmp(kb)))
        .map(|(_, l)| l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::testing::{boot, ms};

    const NOW: BootMs = boot(1_000_000);

    fn ban(id: i64, target: &str, remaining_ms: i64) -> Ban {
        Ban {
            key: DecisionKey::Id(id),
            target: target.parse().unwrap(),
            remaining_ms,
            reason: Arc::new(Reason::text(format!("decision {id}"))),
            origin: "cscli".into(),
        }
    }

    fn src() -> Source {
        "crowdsec".parse().unwrap()
    }

    fn ttls(req: &SyncRequest) -> Vec<(String, u64)> {
        let mut v: Vec<_> = req
            .items
            .iter()
            .map(|i| (i.target.to_string(), i.ttl_ms))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn startup_replaces_and_keeps_the_longest_decision_per_target() {
        let mut l = Ledger::default();
        let req = l.startup(
            &src(),
            vec![
                ban(1, "192.0.2.9", 300_000),
                ban(2, "192.0.2.9", 600_000),
                ban(3, "198.51.100.0/24", 60_000),
            ],
            NOW,
            NOW,
        );
        assert!(req.replace);
        assert_eq!(
            ttls(&req),
            vec![
                ("192.0.2.9".into(), 600_000),
                ("198.51.100.0/24".into(), 60_000)
            ]
        );
        assert_eq!(
            req.items
                .iter()
                .find(|i| i.target.to_string() == "192.0.2.9")
                .unwrap()
                .reason
                .summary(),
            "decision 2"
        );
        let req = l.startup(
            &src(),
            vec![ban(3, "198.51.100.0/24", 50_000)],
            NOW + ms(10_000),
            NOW + ms(10_000),
        );
        assert_eq!(ttls(&req), vec![("198.51.100.0/24".into(), 50_000)]);
        assert_eq!(l.active(NOW + ms(10_000)), 1);
    }

    /// The first pull is answered while the daemon starts and applied once its engine is
    /// ready: the LAPI's durations count from its answer, the TTLs asked for from the apply.
    #[test]
    fn a_pull_applied_after_its_answer_asks_only_for_what_is_left() {
        let mut l = Ledger::default();
        let later = NOW + ms(5_000);
        let req = l.startup(
            &src(),
            vec![ban(1, "192.0.2.1", 600_000), ban(2, "192.0.2.2", 3_000)],
            NOW,
            later,
        );
        assert_eq!(
            ttls(&req),
            vec![("192.0.2.1".into(), 595_000)],
            "the decision that ended during the wait is not asked for"
        );
        let req = l.delta(
            &src(),
            vec![ban(3, "2001:db8::3", 60_000), ban(4, "192.0.2.1", 1_000)],
            vec![],
            later,
            later + ms(2_000),
        );
        assert_eq!(
            ttls(&req),
            vec![
                ("192.0.2.1".into(), 593_000),
                ("2001:db8::3".into(), 58_000)
            ]
        );
    }

    #[test]
    fn a_startup_pull_lists_its_targets_in_order() {
        let mut l = Ledger::default();
        let bans: Vec<Ban> = (0..50u8)
            .rev()
            .map(|i| ban(i.into(), &format!("192.0.2.{i}"), 60_000))
            .chain([
                ban(99, "2001:db8::1", 60_000),
                ban(98, "10.0.0.0/8", 60_000),
            ])
            .collect();
        let req = l.startup(&src(), bans, NOW, NOW);
        let targets: Vec<Target> = req.items.iter().map(|i| i.target).collect();
        let mut sorted = targets.clone();
        sorted.sort();
        assert_eq!(targets.len(), 52);
        assert_eq!(targets, sorted);
    }

    #[test]
    fn deleting_the_longest_decision_falls_back_to_the_next_one() {
        let mut l = Ledger::default();
        l.startup(
            &src(),
            vec![ban(1, "192.0.2.9", 300_000), ban(2, "192.0.2.9", 600_000)],
            NOW,
            NOW,
        );
        let req = l.delta(
            &src(),
            vec![],
            vec![ban(2, "192.0.2.9", -1)],
            NOW + ms(1000),
            NOW + ms(1000),
        );
        assert_eq!(ttls(&req), vec![("192.0.2.9".into(), 299_000)]);
        assert!(req.remove.is_empty());
        let req = l.delta(
            &src(),
            vec![],
            vec![ban(1, "192.0.2.9", -1)],
            NOW + ms(2000),
            NOW + ms(2000),
        );
        assert!(req.items.is_empty());
        assert_eq!(req.remove, vec!["192.0.2.9".parse().unwrap()]);
        assert_eq!(l.active(NOW + ms(2000)), 0);
    }

    #[test]
    fn overlapping_deltas_are_idempotent() {
        let mut l = Ledger::default();
        l.startup(&src(), vec![], NOW, NOW);
        let a = l.delta(
            &src(),
            vec![ban(5, "2001:db8::5", 60_000)],
            vec![],
            NOW,
            NOW,
        );
        let b = l.delta(
            &src(),
            vec![ban(5, "2001:db8::5", 60_000)],
            vec![],
            NOW,
            NOW,
        );
        assert_eq!(ttls(&a), ttls(&b));
        // A deletion of a decision we never saw still lifts a target nothing else holds.
        let c = l.delta(&src(), vec![], vec![ban(99, "203.0.113.1", -5)], NOW, NOW);
        assert_eq!(c.remove, vec!["203.0.113.1".parse().unwrap()]);
    }

    #[test]
    fn many_decisions_for_one_target_are_indexed_and_still_exact() {
        let mut l = Ledger::default();
        let bans: Vec<Ban> = (1..=40)
            .map(|i| ban(i, "192.0.2.9", i * 1000))
            .chain([ban(7, "192.0.2.9", 500_000)])
            .collect();
        let req = l.startup(&src(), bans, NOW, NOW);
        assert_eq!(ttls(&req), vec![("192.0.2.9".into(), 500_000)]);
        // Delete the longest (id 7, updated in place) and every even id: id 39 is the longest left.
        let gone: Vec<Ban> = (2..=40)
            .step_by(2)
            .chain([7, 40])
            .map(|i| ban(i, "192.0.2.9", -1))
            .collect();
        let req = l.delta(&src(), vec![], gone, NOW, NOW);
        assert_eq!(ttls(&req), vec![("192.0.2.9".into(), 39_000)]);
        let rest: Vec<Ban> = (1..40)
            .step_by(2)
            .map(|i| ban(i, "192.0.2.9", -1))
            .collect();
        let req = l.delta(&src(), vec![], rest, NOW, NOW);
        assert_eq!(req.remove.len(), 1, "{req:?}");
        assert_eq!(l.active(NOW), 0);
    }

    #[test]
    fn expired_and_zero_decisions_are_not_blocks() {
        let mut l = Ledger::default();
        let req = l.startup(
            &src(),
            vec![
                ban(1, "192.0.2.1", 0),
                ban(2, "192.0.2.2", -10),
                ban(3, "192.0.2.3", 1),
            ],
            NOW,
            NOW,
        );
        assert_eq!(ttls(&req), vec![("192.0.2.3".into(), 1)]);
        // The one live decision ran out: a later delta touching it removes it.
        let req = l.delta(&src(), vec![], vec![], NOW + ms(5), NOW + ms(5));
        assert!(req.items.is_empty() && req.remove.is_empty());
        let req = l.delta(
            &src(),
            vec![ban(4, "192.0.2.3", -1)],
            vec![],
            NOW + ms(5),
            NOW + ms(5),
        );
        assert_eq!(req.remove.len(), 1);
    }
}
