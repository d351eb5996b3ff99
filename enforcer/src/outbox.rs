//! The publish queue ("outbox"): blocks of local sources on their way to the CrowdSec Local
//! API, so that every host of a fleet enforces them.
//!
//! The engine writes a [`Publication`] in the same store commit as the block change it comes
//! from, so a publication is durable exactly when its block is, and nothing is lost or sent
//! twice across a restart. The publisher task (`crowdsec::publish`) takes publications in order,
//! sends them, and hands back what the LAPI answered ([`Sent`]); the engine then deletes them
//! from the queue and records the LAPI's decision ids (to delete them on an unblock, and so that
//! the pulling side does not import them back, see [`Echo`]).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

pub use crate::protocol::OutboxCounters;
use crate::{block::Source, target::Target, time::WallMs};

/// One queued change for the LAPI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    /// The address or prefix.
    pub target: Target,
    /// The local source whose block it is.
    pub source: Source,
    /// What to do.
    pub kind: PublicationKind,
}

/// Publish a ban, or withdraw one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PublicationKind {
    /// Push a ban decision lasting until `expires_ms` (`None`: permanent).
    Ban {
        /// The block's end (Unix ms).
        expires_ms: Option<WallMs>,
        /// The scenario the decision carries.
        scenario: String,
        /// The block's reason, as the alert's message.
        reason: String,
    },
    /// The block ended: delete its decisions (`expired`: it ended on time, and the LAPI's
    /// decisions end with it, so they are only forgotten).
    Unban {
        /// It ended at its deadline.
        expired: bool,
    },
}

/// A queued publication, with the decision ids already published for its block.
#[derive(Clone, Debug)]
pub struct Queued {
    /// Its place in the queue.
    pub seq: u64,
    /// What to send.
    pub publication: Publication,
    /// The LAPI decisions that stand for this block now (to replace or delete).
    pub published: Vec<i64>,
}

/// What the publisher did with one queued publication.
#[derive(Clone, Debug)]
pub struct Sent {
    /// Its place in the queue.
    pub seq: u64,
    /// The block.
    pub target: Target,
    /// Its source.
    pub source: Source,
    /// Decision ids the LAPI now holds for the block.
    pub added: Vec<i64>,
    /// Decision ids deleted (or forgotten).
    pub removed: Vec<i64>,
}

/// A request from the publisher to the engine.
#[derive(Clone, Debug)]
pub enum OutboxRequest {
    /// The first `max` publications, in order.
    Take {
        /// At most this many.
        max: usize,
    },
    /// These were sent: remove them from the queue and record the decision ids.
    Sent(Vec<Sent>),
}

/// The engine's answer to [`OutboxRequest`]: publications (empty after `Sent`) and the
/// queue's counters.
#[derive(Clone, Debug, Default)]
pub struct OutboxBatch {
    /// The publications taken, in order.
    pub items: Vec<Queued>,
    /// The queue now.
    pub counters: OutboxCounters,
}

/// What the pulling side must not import back: decisions this host published.
///
/// Two rules, both exact for this host: a decision whose id this host recorded, and, while a
/// block's publication is queued or being sent (its ids not known yet), a decision of one of
/// this host's scenarios for that target.
#[derive(Debug, Default)]
pub struct Echo {
    ids: HashSet<i64>,
    in_flight: HashMap<Target, usize>,
    scenarios: HashSet<String>,
}

/// The echo set, shared between the engine (writer) and the bouncer (reader).
pub type SharedEcho = Arc<Mutex<Echo>>;

impl Echo {
    /// An empty set for these scenarios.
    pub fn new(scenarios: impl IntoIterator<Item = String>) -> Self {
        Self {
            scenarios: scenarios.into_iter().collect(),
            ..Self::default()
        }
    }

    /// The scenarios this host publishes under.
    pub fn set_scenarios(&mut self, scenarios: impl IntoIterator<Item = String>) {
        self.scenarios = scenarios.into_iter().collect();
    }

    /// Whether the decision `id` (scenario `scenario`, for `target`) is this host's own.
    pub fn is_own(&self, id: Option<i64>, scenario: &str, target: &Target) -> bool {
        id.is_some_and(|id| self.ids.contains(&id))
            || (self.scenarios.contains(scenario) && self.in_flight.contains_key(target))
    }

    /// A publication for `target` was queued.
    pub fn queued(&mut self, target: Target) {
        *self.in_flight.entry(target).or_default() += 1;
    }

    /// A publication for `target` left the queue.
    pub fn dequeued(&mut self, target: &Target) {
        if let Some(n) = self.in_flight.get_mut(target) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(target);
            }
        }
    }

    /// Decision ids this host published.
    pub fn add_ids(&mut self, ids: &[i64]) {
        self.ids.extend(ids);
    }

    /// Decision ids deleted or forgotten.
    pub fn remove_ids(&mut self, ids: &[i64]) {
        for id in ids {
            self.ids.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_decisions_are_known_by_id_or_by_scenario_while_in_flight() {
        let t: Target = "192.0.2.7".parse().unwrap();
        let other: Target = "192.0.2.8".parse().unwrap();
        let mut e = Echo::new(["enforcer/fail2ban".to_owned()]);
        assert!(!e.is_own(Some(5), "enforcer/fail2ban", &t));
        e.queued(t);
        assert!(e.is_own(Some(5), "enforcer/fail2ban", &t));
        assert!(
            !e.is_own(Some(5), "crowdsecurity/ssh-bf", &t),
            "another scenario"
        );
        assert!(
            !e.is_own(Some(5), "enforcer/fail2ban", &other),
            "another target"
        );
        e.add_ids(&[5]);
        e.dequeued(&t);
        assert!(e.is_own(Some(5), "anything", &other), "by id");
        assert!(!e.is_own(Some(6), "enforcer/fail2ban", &t));
        e.remove_ids(&[5]);
        assert!(!e.is_own(Some(5), "enforcer/fail2ban", &t));
    }
}
