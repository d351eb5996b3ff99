//! The repeat-offender history: when each target was blocked lately.
//!
//! Bounded two ways, so that a daemon that has blocked millions of targets over the years does
//! not keep them all: a target's history is dropped (from memory and the store) once its latest
//! offense leaves the window ([`Ledger::prune_offenses`], run by the reaper when that moment
//! comes), and at most [`MAX_OFFENDERS`] targets are kept, the one whose latest offense is
//! oldest evicted first. Per target, only as many times as can change a TTL are kept.

use std::collections::{BTreeSet, HashMap};

use super::{Change, Ledger};
use crate::{store::StoreOp, target::Target, time::WallMs};

/// Most targets with an offense history (about 100 bytes each).
pub const MAX_OFFENDERS: usize = 100_000;

/// Offense times by target, indexed by each target's latest.
#[derive(Clone, Debug)]
pub(super) struct Offenses {
    by_target: HashMap<Target, Vec<WallMs>>,
    by_latest: BTreeSet<(WallMs, Target)>,
    cap: usize,
}

impl Default for Offenses {
    fn default() -> Self {
        Self {
            by_target: HashMap::new(),
            by_latest: BTreeSet::new(),
            cap: MAX_OFFENDERS,
        }
    }
}

fn latest(times: &[WallMs]) -> WallMs {
    times.iter().copied().max().unwrap_or(WallMs::EPOCH)
}

impl Offenses {
    /// A target's offense times.
    pub(super) fn get(&self, target: &Target) -> Option<&Vec<WallMs>> {
        self.by_target.get(target)
    }

    /// Replaces a target's history (`None` or empty: forgets it); returns the old one.
    pub(super) fn set(
        &mut self,
        target: Target,
        times: Option<Vec<WallMs>>,
    ) -> Option<Vec<WallMs>> {
        let old = self.by_target.remove(&target);
        if let Some(old) = &old {
            self.by_latest.remove(&(latest(old), target));
        }
        if let Some(times) = times.filter(|t| !t.is_empty()) {
            self.by_latest.insert((latest(&times), target));
            self.by_target.insert(target, times);
        }
        old
    }

    /// The target whose latest offense is oldest, with that time.
    pub(super) fn oldest(&self) -> Option<(WallMs, Target)> {
        self.by_latest.first().copied()
    }

    /// How many targets have a history.
    pub(super) fn len(&self) -> usize {
        self.by_target.len()
    }

    /// Every target's history.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&Target, &Vec<WallMs>)> {
        self.by_target.iter()
    }

    /// Moves every time by `by_ms` (the wall clock stepped).
    pub(super) fn shift(&mut self, by_ms: i64) {
        let all: Vec<(Target, Vec<WallMs>)> = self.by_target.drain().collect();
        self.by_latest.clear();
        for (target, times) in all {
            self.set(
                target,
                Some(times.into_iter().map(|t| t.shifted(by_ms)).collect()),
            );
        }
    }

    /// Changes the cap (tests).
    #[cfg(test)]
    pub(super) fn set_cap(&mut self, cap: usize) {
        self.cap = cap;
    }
}

impl Ledger {
    /// When the oldest history leaves the window (or at once, without escalation configured).
    pub(super) fn next_offense_deadline(&self) -> Option<WallMs> {
        let (latest, _) = self.offenses.oldest()?;
        if self.offenses.len() > self.offenses.cap {
            return Some(WallMs::EPOCH);
        }
        Some(latest.saturating_add(self.policy.offense_window().unwrap_or_default()))
    }

    /// How many earlier blocks of `target` fall in the window at `now`.
    pub(super) fn offense_count(&self, target: &Target, now: WallMs) -> usize {
        let Some(window) = self.policy.offense_window() else {
            return 0;
        };
        let since = now.saturating_sub(window);
        self.offenses
            .get(target)
            .map_or(0, |t| t.iter().filter(|&&x| x >= since).count())
    }

    /// Records that `target` was blocked at `now`, evicting the stalest target when full.
    pub(super) fn record_offense(&mut self, c: &mut Change, target: &Target, now: WallMs) {
        let Some(window) = self.policy.offense_window() else {
            return;
        };
        let since = now.saturating_sub(window);
        let mut times = self.offenses.get(target).cloned().unwrap_or_default();
        let is_new = times.is_empty();
        times.retain(|&t| t >= since);
        times.push(now);
        let keep = self.policy.offense_depth().max(1);
        if times.len() > keep {
            times.drain(..times.len() - keep);
        }
        if is_new
            && self.offenses.len() >= self.offenses.cap
            && let Some((_, stalest)) = self.offenses.oldest()
        {
            self.forget_offenses(c, stalest);
        }
        self.remember_offenses(c, target);
        c.ops.push(StoreOp::PutOffenses(*target, times.clone()));
        self.offenses.set(*target, Some(times));
    }

    /// Drops (at most `max`) histories whose latest offense left the window by `now`, and the
    /// stalest ones past the cap (a store from before the cap); returns how many.
    pub fn prune_offenses(&mut self, c: &mut Change, now: WallMs, max: usize) -> usize {
        let window = self.policy.offense_window().unwrap_or_default();
        let mut pruned = 0;
        while pruned < max {
            match self.offenses.oldest() {
                Some((latest, target))
                    if latest.saturating_add(window) <= now
                        || self.offenses.len() > self.offenses.cap =>
                {
                    self.forget_offenses(c, target);
                    pruned += 1;
                }
                _ => break,
            }
        }
        pruned
    }

    fn forget_offenses(&mut self, c: &mut Change, target: Target) {
        self.remember_offenses(c, &target);
        self.offenses.set(target, None);
        c.ops.push(StoreOp::PutOffenses(target, Vec::new()));
    }

    fn remember_offenses(&self, c: &mut Change, target: &Target) {
        c.offenses_before
            .entry(*target)
            .or_insert_with(|| self.offenses.get(target).cloned());
    }
}
