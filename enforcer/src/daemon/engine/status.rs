//! What the engine tells the outside without being asked: systemd's status line and the
//! metrics snapshot, kept up to date per round (never a walk over the blocks).

use std::{collections::BTreeMap, sync::Arc};

use super::Engine;
use crate::{
    block::{Source, TargetBlocks},
    daemon::{queries::ReadState, systemd::Heartbeat},
    metrics::{Metrics, Published, Snapshot},
    protocol::MapUse,
    target::Target,
    time::WallMs,
};

impl Engine {
    /// Feeds systemd's watchdog and status line from this engine's loop.
    pub fn set_heartbeat(&mut self, heartbeat: Option<Heartbeat>) {
        self.heartbeat = heartbeat;
    }

    /// The `STATUS=` line systemd shows.
    pub fn status_line(&self) -> String {
        let ifaces: Vec<&str> = self.interfaces.protected().map(|(name, _)| name).collect();
        let mut line = format!(
            "enforcing {} blocks on {}",
            self.ledger.blocks().len(),
            if ifaces.is_empty() {
                "no interface".to_owned()
            } else {
                ifaces.join(", ")
            }
        );
        let unprotected: Vec<&str> = self
            .interfaces
            .tracked()
            .filter(|(_, _, s)| !matches!(s, crate::interfaces::Tracked::Protected { .. }))
            .map(|(name, _, _)| name)
            .collect();
        if !unprotected.is_empty() {
            line.push_str(&format!("; NOT protected: {}", unprotected.join(", ")));
        }
        if !self.ledger.pending().is_empty() {
            line.push_str(&format!(
                "; {} waiting for approval",
                self.ledger.pending().len()
            ));
        }
        line
    }

    /// The counters and snapshot this engine keeps for the metrics endpoint.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// What the spool drain tells this engine of the triggers still to be judged.
    pub fn backlog(&self) -> crate::daemon::backlog::Backlog {
        self.backlog.clone()
    }

    /// What reads are answered from (see [`crate::daemon::reads`]).
    pub fn reads(&self) -> Arc<Published<ReadState>> {
        self.reads.clone()
    }

    /// The state reads see now: O(sources + maps + interfaces), the block, pending and
    /// allowlist maps being persistent (cloning one is O(1)).
    pub(super) fn read_state(&mut self, now: WallMs) -> ReadState {
        let judged_from = self.backlog.judged_from(now);
        let breakers = self.ledger.policy_mut().open_breakers(now, judged_from);
        let capacity = self.ledger.capacity();
        let maps = self
            .dp
            .maps()
            .capacities()
            .iter()
            .map(|(map, cap)| MapUse {
                map: map.name().to_owned(),
                used: capacity.used(map),
                capacity: *cap,
            })
            .collect();
        ReadState {
            blocks: self.ledger.blocks().clone(),
            allowlist: self.ledger.allowlist().clone(),
            pending: self.ledger.pending().clone(),
            interfaces: self.interfaces.clone(),
            programs: self.programs,
            started: self.started,
            store_path: self.store.path().to_owned(),
            pins: self.dp.pins().clone(),
            audit_log: self.audit.path().to_owned(),
            blocks_by_source: self.tally.by_source(),
            maps,
            next_expiry_ms: self.ledger.next_block_deadline(),
            policy_mode: self.ledger.policy().config.mode,
            breakers,
            clock_steps: self.ledger.clock_steps().clone(),
        }
    }

    /// Publishes the metrics snapshot and the state reads see: O(sources + maps), never a walk
    /// over the blocks.
    pub fn publish(&mut self) {
        let now = self.now();
        let state = self.read_state(now);
        let open: std::collections::BTreeSet<Source> =
            state.breakers.iter().map(|b| b.source.clone()).collect();
        let mut breakers: BTreeMap<Source, bool> = self
            .ledger
            .policy()
            .config
            .sources
            .keys()
            .map(|s| (s.clone(), false))
            .collect();
        for s in open {
            breakers.insert(s, true);
        }
        let capacity = self.ledger.capacity();
        let maps = self
            .dp
            .maps()
            .capacities()
            .iter()
            .map(|(map, cap)| (map, capacity.used(map), *cap))
            .collect();
        self.metrics.publish(Snapshot {
            blocks: self.tally.entries(),
            targets: self.ledger.blocks().len() as u64,
            maps,
            breakers: breakers.into_iter().collect(),
            pending: self.ledger.pending().len() as u64,
            oldest_deadline_ms: self.ledger.next_block_deadline(),
            interfaces: self
                .interfaces
                .protected()
                .map(|(n, i)| (n.to_owned(), i))
                .collect(),
            interface_states: self
                .interfaces
                .tracked()
                .map(|(n, _, s)| (n.to_owned(), s.label()))
                .collect(),
            clock_steps: self.ledger.clock_steps().count,
            publish: self
                .ledger
                .outbox()
                .is_on()
                .then(|| self.ledger.outbox().counters()),
        });
        self.reads.publish(state);
    }

    /// After a durable change: the tally follows every target it touched.
    pub(super) fn tally(
        &mut self,
        before: &BTreeMap<Target, Option<TargetBlocks>>,
        refused: &[(&'static str, Source)],
    ) {
        for (target, was) in before {
            self.tally
                .replace(was.as_ref(), self.ledger.blocks().get(target));
        }
        for (rule, source) in refused {
            self.metrics.refusal(rule, source);
        }
    }
}
