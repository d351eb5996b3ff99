//! Blocks that look expired when loaded after a reboot, while the wall clock may still be wrong
//! (a young boot, no synchronised clock yet): held in the store, not deleted, and judged again
//! once the clock can be trusted. A machine that boots with its date ahead would otherwise
//! delete blocks that NTP, minutes later, would have shown to be still running.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use super::Engine;
use crate::{
    audit::{Action, Event},
    block::Record,
    daemon::kernel_sync,
    store::StoreOp,
    target::Target,
};

/// A boot younger than this may still have the wrong date (NTP's first step comes within it).
const UNSETTLED_BOOT_MS: u64 = 10 * 60_000;

/// Where systemd-timesyncd says the clock was synchronised since boot.
const SYNCHRONIZED: &str = "/run/systemd/timesync/synchronized";

/// Whether the wall clock may still be wrong: a young boot, not known to be synchronised.
fn clock_unsettled(boot_age_ms: u64, synchronized: bool) -> bool {
    boot_age_ms < UNSETTLED_BOOT_MS && !synchronized
}

/// The boot's age. Debug builds let a lab make it younger than the machine's
/// (`ENFORCER_TEST_BOOT_AGE_OFFSET_MS` is subtracted), as no test can reboot the machine.
fn boot_age_ms() -> u64 {
    let age = crate::time::BootMs::now().ms();
    #[cfg(debug_assertions)]
    if let Some(offset) = std::env::var("ENFORCER_TEST_BOOT_AGE_OFFSET_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        return age.saturating_sub(offset);
    }
    age
}

/// Whether now is such a time.
fn unsettled_now() -> bool {
    clock_unsettled(boot_age_ms(), Path::new(SYNCHRONIZED).exists())
}

impl Engine {
    /// Of the rows that looked expired at load, those to delete now: none while the clock is
    /// unsettled after a reboot (`other_boot`); they are held and judged by
    /// [`Engine::judge_held`].
    pub(super) fn hold_if_unsettled(
        &mut self,
        expired: Vec<Record>,
        other_boot: bool,
    ) -> Vec<Record> {
        if expired.is_empty() || !other_boot || !unsettled_now() {
            return expired;
        }
        tracing::warn!(
            held = expired.len(),
            "blocks look expired at load, but the machine booted minutes ago and the clock is not known to be synchronised: kept in the store and judged again once it is (10 min after boot at the latest)"
        );
        self.held = expired;
        Vec::new()
    }

    /// Once the clock can be trusted, loads the held rows that are still running (into the
    /// kernel too) and deletes the others.
    pub(super) fn judge_held(&mut self) {
        if self.held.is_empty() || unsettled_now() {
            return;
        }
        let now = self.end_now();
        let held = std::mem::take(&mut self.held);
        let before: BTreeMap<Target, _> = held
            .iter()
            .map(|r| (r.target, self.ledger.blocks().get(&r.target).cloned()))
            .collect();
        let expired = self.ledger.load_blocks(held, now);
        if !expired.is_empty() {
            let ops: Vec<_> = expired
                .iter()
                .map(|r| StoreOp::Delete(r.target, r.block.source.clone()))
                .collect();
            if let Err(e) = self.store.commit(&ops) {
                tracing::error!(error = %e, "deleting held blocks that expired failed; they are judged again at the next start");
            }
            for r in &expired {
                self.audit.record(
                    Event::new(Action::Expire, r.target)
                        .source(&r.block.source)
                        .detail("expired while the daemon was not running (judged once the clock could be trusted)"),
                );
            }
        }
        let base = self.ledger.time_base().clone();
        let mut writes = Vec::new();
        for (target, was) in before {
            let Some(now_blocks) = self.ledger.blocks().get(&target).cloned() else {
                continue;
            };
            if was.as_ref() == Some(&now_blocks) {
                continue;
            }
            self.tally.replace(was.as_ref(), Some(&now_blocks));
            let Some(entry) = self.ledger.kernel_entry(&target) else {
                continue;
            };
            let had = self.dp.maps().get_block(&target).ok().flatten();
            writes.push((target, kernel_sync::value_for(&entry, had, &base)));
        }
        let failed: BTreeSet<Target> = self
            .dp
            .maps_mut()
            .insert_blocks(&writes)
            .into_iter()
            .map(|(target, e)| {
                tracing::error!(%target, error = %crate::error::Chain(&e), "restoring a held block into the kernel failed");
                target
            })
            .collect();
        let mut restored = 0usize;
        for (target, _) in writes.iter().filter(|(t, _)| !failed.contains(t)) {
            restored += 1;
            self.audit.record(
                Event::new(Action::Restore, *target)
                    .detail("restored into the kernel once the clock could be trusted"),
            );
        }
        self.audit.flush();
        tracing::info!(
            restored,
            expired = expired.len(),
            "judged the blocks held at load now that the clock can be trusted"
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_clock_is_unsettled_only_in_a_young_unsynchronised_boot() {
        assert!(super::clock_unsettled(60_000, false));
        assert!(!super::clock_unsettled(60_000, true), "synchronised");
        assert!(!super::clock_unsettled(10 * 60_000, false), "old enough");
    }
}
