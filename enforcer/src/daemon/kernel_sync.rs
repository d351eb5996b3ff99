//! Kernel sync: turns a target's blocks into its kernel map entry, and skips writes that are
//! already current. The daemon is the maps' one writer; this is the only code that writes
//! block entries.

use std::time::Duration;

use enforcer_common::BlockValue;

use crate::{
    block::{KernelEntry, Mode},
    datapath::{BlockMaps, MapsError},
    target::Target,
    time::{BootNs, TimeBase},
};

/// The kernel block and allowlist maps, as the engine uses them (a fake stands in for them in
/// unit tests).
pub trait KernelMap {
    /// A target's entry.
    fn get_block(&self, target: &Target) -> Result<Option<BlockValue>, MapsError>;
    /// Inserts or replaces a target's entry.
    fn insert_block(&mut self, target: &Target, value: &BlockValue) -> Result<(), MapsError>;
    /// Removes a target's entry; whether there was one.
    fn remove_block(&mut self, target: &Target) -> Result<bool, MapsError>;
    /// Inserts or replaces many entries, each as [`KernelMap::insert_block`]; every one is
    /// tried, in order. The ones not written, with why.
    fn insert_blocks(&mut self, items: &[(Target, BlockValue)]) -> Vec<(Target, MapsError)> {
        items
            .iter()
            .filter_map(|(t, v)| self.insert_block(t, v).err().map(|e| (*t, e)))
            .collect()
    }
    /// Removes many entries, each as [`KernelMap::remove_block`] (absent ones are not errors).
    /// The ones that could not be removed, with why.
    fn remove_blocks(&mut self, targets: &[Target]) -> Vec<(Target, MapsError)> {
        targets
            .iter()
            .filter_map(|t| self.remove_block(t).err().map(|e| (*t, e)))
            .collect()
    }
    /// Inserts or replaces an allowlist prefix.
    fn insert_allow(&mut self, target: &Target, origin: u32) -> Result<(), MapsError>;
    /// Removes an allowlist prefix; whether there was one.
    fn remove_allow(&mut self, target: &Target) -> Result<bool, MapsError>;
}

impl KernelMap for BlockMaps {
    fn get_block(&self, target: &Target) -> Result<Option<BlockValue>, MapsError> {
        Self::get_block(self, target)
    }

    fn insert_block(&mut self, target: &Target, value: &BlockValue) -> Result<(), MapsError> {
        Self::insert_block(self, target, value)
    }

    fn remove_block(&mut self, target: &Target) -> Result<bool, MapsError> {
        Self::remove_block(self, target)
    }

    fn insert_blocks(&mut self, items: &[(Target, BlockValue)]) -> Vec<(Target, MapsError)> {
        Self::insert_blocks(self, items)
    }

    fn remove_blocks(&mut self, targets: &[Target]) -> Vec<(Target, MapsError)> {
        Self::remove_blocks(self, targets)
    }

    fn insert_allow(&mut self, target: &Target, origin: u32) -> Result<(), MapsError> {
        Self::insert_allow(self, target, origin)
    }

    fn remove_allow(&mut self, target: &Target) -> Result<bool, MapsError> {
        Self::remove_allow(self, target)
    }
}

/// How far apart two boot-clock deadlines may be and still count as the same (the wall clock
/// slews a little between the base a deadline was written under and the current one).
const SAME_DEADLINE: Duration = Duration::from_millis(5);

/// The boot-clock deadline (ns) of an entry under `base`; 0 = never. Converted with the
/// ledger's base, not the wall clock of the moment, so a wall-clock step that the ledger has
/// not seen yet cannot end (or lengthen) a kernel entry.
fn deadline_ns(entry: &KernelEntry, base: &TimeBase) -> BootNs {
    entry
        .expires_ms
        .map_or(BootNs::NEVER, |ms| base.boot_deadline_ns(ms))
}

/// Whether `current` already says what `entry` calls for (mode, scopes, and the deadline
/// within jitter), so that a restart with a million blocks does not rewrite a million entries.
pub fn is_current(entry: &KernelEntry, current: Option<&BlockValue>, base: &TimeBase) -> bool {
    let Some(v) = current else { return false };
    let wanted = deadline_ns(entry, base);
    let current = BootNs::from_kernel(v.expires_ns);
    let close = if wanted == BootNs::NEVER || current == BootNs::NEVER {
        wanted == current
    } else {
        wanted.abs_diff(current) < SAME_DEADLINE
    };
    close && v.mode == entry.mode.to_kernel() && v.scopes == entry.scopes
}

/// Whether replacing a target's kernel entry `before` with `after` only adds enforcement: a new
/// entry, shadow becoming enforce, or the same mode for at least as long; in each case covering
/// at least what `before` covered. Such a write goes in
/// before its commit (a failed commit takes it out again); one that removes or weakens a block
/// waits for the commit, so a block stays in force until its end is durable.
pub fn only_strengthens(before: Option<&KernelEntry>, after: Option<&KernelEntry>) -> bool {
    let Some(after) = after else { return false };
    let Some(before) = before else { return true };
    let at_least_as_long = match (before.expires_ms, after.expires_ms) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(b), Some(a)) => a >= b,
    };
    let covers = match (&after.scopes, &before.scopes) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => a.covers(b),
    };
    covers
        && match (before.mode, after.mode) {
            (Mode::Shadow, Mode::Enforce) => true,
            (b, a) => b == a && at_least_as_long,
        }
}

/// The map value for `entry`, keeping the hit counters of `current`.
pub fn value_for(entry: &KernelEntry, current: Option<BlockValue>, base: &TimeBase) -> BlockValue {
    let mut value = current.unwrap_or_default();
    value.expires_ns = deadline_ns(entry, base).kernel();
    value.mode = entry.mode.to_kernel();
    value.scopes = entry.scopes;
    value
}

/// What one target's kernel entry should say, for [`sync`].
pub struct Wanted {
    /// The target.
    pub target: Target,
    /// Its entry (`None`: no entry).
    pub entry: Option<KernelEntry>,
    /// Whether the kernel may hold an entry already (a target new in this round cannot),
    /// which saves a lookup per new block.
    pub known: bool,
}

/// Makes each target's kernel entry say what it calls for, with one batched write for all the
/// inserts and one for all the removals (see [`KernelMap::insert_blocks`]). Every target is
/// tried; returns the ones whose entry could not be written, with why.
pub fn sync<K: KernelMap + ?Sized>(
    kernel: &mut K,
    wanted: impl IntoIterator<Item = Wanted>,
    base: &TimeBase,
) -> Vec<(Target, MapsError)> {
    let wanted = wanted.into_iter();
    let mut inserts = Vec::with_capacity(wanted.size_hint().0);
    let mut removals = Vec::new();
    let mut failed = Vec::new();
    for w in wanted {
        let Some(entry) = w.entry else {
            removals.push(w.target);
            continue;
        };
        let current = if w.known {
            match kernel.get_block(&w.target) {
                Ok(current) => current,
                Err(e) => {
                    failed.push((w.target, e));
                    continue;
                }
            }
        } else {
            None
        };
        if !is_current(&entry, current.as_ref(), base) {
            inserts.push((w.target, value_for(&entry, current, base)));
        }
    }
    failed.extend(kernel.insert_blocks(&inserts));
    failed.extend(kernel.remove_blocks(&removals));
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(mode: Mode, expires_ms: Option<u64>) -> KernelEntry {
        KernelEntry {
            expires_ms: expires_ms.map(crate::time::testing::wall),
            mode,
            scopes: None,
        }
    }

    #[test]
    fn only_new_longer_or_enforcing_entries_count_as_strengthening() {
        use Mode::{Enforce, Shadow};
        let strong = |b: Option<KernelEntry>, a: Option<KernelEntry>| {
            only_strengthens(b.as_ref(), a.as_ref())
        };
        assert!(strong(None, Some(e(Enforce, Some(10)))));
        assert!(strong(None, Some(e(Shadow, Some(10)))));
        assert!(strong(
            Some(e(Enforce, Some(10))),
            Some(e(Enforce, Some(20)))
        ));
        assert!(strong(Some(e(Enforce, Some(10))), Some(e(Enforce, None))));
        assert!(strong(Some(e(Shadow, None)), Some(e(Enforce, Some(5)))));
        assert!(!strong(Some(e(Enforce, Some(10))), None), "a removal");
        assert!(!strong(
            Some(e(Enforce, Some(20))),
            Some(e(Enforce, Some(10)))
        ));
        assert!(!strong(Some(e(Enforce, None)), Some(e(Enforce, Some(10)))));
        assert!(!strong(
            Some(e(Enforce, Some(10))),
            Some(e(Shadow, Some(99)))
        ));
        assert!(!strong(None, None));
    }

    #[test]
    fn a_narrower_scope_is_a_weakening_and_a_wider_one_a_strengthening() {
        use enforcer_common::scope::{PortRange, ScopeValue, Scopes};
        let tcp = |ports: &[(u16, u16)]| {
            let mut v = ScopeValue {
                count: ports.len() as u8,
                ..ScopeValue::default()
            };
            for (slot, &(lo, hi)) in v.ranges.iter_mut().zip(ports) {
                *slot = PortRange { lo, hi };
            }
            Some(Scopes {
                tcp: Some(v),
                ..Scopes::default()
            })
        };
        let with = |scopes| KernelEntry {
            scopes,
            ..e(Mode::Enforce, Some(10))
        };
        let strong = |b: KernelEntry, a: KernelEntry| only_strengthens(Some(&b), Some(&a));
        assert!(strong(
            with(tcp(&[(22, 22)])),
            with(tcp(&[(22, 22), (80, 80)]))
        ));
        assert!(
            strong(with(tcp(&[(22, 22)])), with(None)),
            "to the whole address"
        );
        assert!(!strong(
            with(tcp(&[(22, 22), (80, 80)])),
            with(tcp(&[(22, 22)]))
        ));
        assert!(
            !strong(with(None), with(tcp(&[(22, 22)]))),
            "from the whole address"
        );
        assert!(!strong(with(tcp(&[(22, 22)])), with(tcp(&[(80, 80)]))));
        let v = |scopes| BlockValue {
            scopes,
            ..BlockValue::new(0, Mode::Enforce.to_kernel())
        };
        let base = TimeBase::default();
        let never = |scopes| KernelEntry {
            scopes,
            ..e(Mode::Enforce, None)
        };
        assert!(is_current(
            &never(tcp(&[(22, 22)])),
            Some(&v(tcp(&[(22, 22)]))),
            &base
        ));
        assert!(!is_current(&never(tcp(&[(22, 22)])), Some(&v(None)), &base));
        assert!(!is_current(&never(None), Some(&v(tcp(&[(22, 22)]))), &base));
    }
}
