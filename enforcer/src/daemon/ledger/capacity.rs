//! How full each kernel map is, counted in the ledger so that a full map refuses a block
//! before anything is written (a block is acknowledged only if it fits).
//!
//! The block maps are shared by every source, so each is divided (see [`Shares`]): a source
//! other than `cli` and the force sources holds at most its share of a map, and the last
//! entries of each map are kept for `cli` and forced blocks. One source (a compromised LAPI, a
//! noisy Wazuh rule) can then fill its share, never the map: the others and the operator still
//! get room.

use std::collections::HashMap;

use enforcer_common::map_names;

use super::Refusal;
use crate::{block::Source, policy::Allowlist, target::Target};

/// How the block maps are divided between sources (`[capacity]` in the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shares {
    /// The most of each block map one source may hold, in percent (`cli` and the force
    /// sources are not limited).
    pub source_percent: u8,
    /// The end of each block map kept for `cli` and forced blocks, in percent.
    pub reserved_percent: u8,
}

impl Shares {
    /// No division: any source may fill a map (the ledger's unit tests).
    pub const NONE: Self = Self {
        source_percent: 100,
        reserved_percent: 0,
    };
}

/// The maps a target can go to, in slot order.
const MAPS: [&str; 6] = [
    map_names::BLOCK_V4,
    map_names::BLOCK_V6,
    map_names::BLOCK_NET_V4,
    map_names::BLOCK_NET_V6,
    map_names::ALLOW_V4,
    map_names::ALLOW_V6,
];

/// Capacity and use of each block and allowlist map.
#[derive(Clone, Debug)]
pub struct Capacity {
    limits: [u32; 6],
    used: [u64; 6],
    shares: Shares,
    /// Targets each source blocks, per block map (a target two sources block counts for both).
    held: HashMap<Source, [u64; 4]>,
}

impl Capacity {
    /// From (map name, capacity) pairs; maps not named have no room.
    pub fn new(capacities: &[(&'static str, u32)], shares: Shares) -> Self {
        let limits = MAPS.map(|m| {
            capacities
                .iter()
                .find(|(n, _)| *n == m)
                .map_or(0, |(_, c)| *c)
        });
        Self {
            limits,
            used: [0; 6],
            shares,
            held: HashMap::new(),
        }
    }

    /// The same capacity for every map, undivided (tests).
    pub fn uniform(capacity: u32) -> Self {
        Self::new(&MAPS.map(|m| (m, capacity)), Shares::NONE)
    }

    fn block_slot(target: &Target) -> usize {
        match (target.is_v4(), target.is_host()) {
            (true, true) => 0,
            (false, true) => 1,
            (true, false) => 2,
            (false, false) => 3,
        }
    }

    fn allow_slot(target: &Target) -> usize {
        if target.is_v4() { 4 } else { 5 }
    }

    /// Refuses a new blocked target whose map is full: for `exempt` callers (`cli`, a force
    /// source) at the map's end, for the others where the reserved entries start.
    pub fn check(&self, target: &Target, source: &Source, exempt: bool) -> Result<(), Refusal> {
        let slot = Self::block_slot(target);
        self.check_slot(slot)?;
        let reserved = self.reserved(slot);
        if !exempt && self.used[slot] + reserved >= u64::from(self.limits[slot]) {
            return Err(Refusal::Reserved {
                by: source.clone(),
                map: MAPS[slot],
                capacity: self.limits[slot],
                reserved,
            });
        }
        Ok(())
    }

    /// Refuses a block of a target `source` does not block yet when the source holds its share
    /// of the target's map already (`exempt` sources have no share).
    pub fn check_share(
        &self,
        target: &Target,
        source: &Source,
        exempt: bool,
    ) -> Result<(), Refusal> {
        let slot = Self::block_slot(target);
        let share = self.share(slot);
        let held = self.held.get(source).map_or(0, |h| h[slot]);
        if !exempt && held >= share {
            return Err(Refusal::ShareFull {
                by: source.clone(),
                map: MAPS[slot],
                share,
                capacity: self.limits[slot],
                percent: self.shares.source_percent,
            });
        }
        Ok(())
    }

    /// The entries of a block map one source may hold.
    fn share(&self, slot: usize) -> u64 {
        u64::from(self.limits[slot]) * u64::from(self.shares.source_percent) / 100
    }

    /// The entries at the end of a block map kept for `cli` and forced blocks (rounded up).
    fn reserved(&self, slot: usize) -> u64 {
        (u64::from(self.limits[slot]) * u64::from(self.shares.reserved_percent)).div_ceil(100)
    }

    /// Counts `source`'s block of `target` in (`1`) or out (`-1`).
    pub fn add_held(&mut self, target: &Target, source: &Source, delta: i64) {
        let slot = Self::block_slot(target);
        let held = self.held.entry(source.clone()).or_default();
        held[slot] = held[slot].saturating_add_signed(delta);
        if held.iter().all(|h| *h == 0) {
            self.held.remove(source);
        }
    }

    /// Refuses a new allowlist prefix whose map is full.
    pub fn check_allow(&self, target: &Target) -> Result<(), Refusal> {
        self.check_slot(Self::allow_slot(target))
    }

    fn check_slot(&self, slot: usize) -> Result<(), Refusal> {
        if self.used[slot] >= u64::from(self.limits[slot]) {
            return Err(Refusal::MapFull {
                map: MAPS[slot],
                capacity: self.limits[slot],
            });
        }
        Ok(())
    }

    /// Counts a blocked target in (`1`) or out (`-1`).
    pub fn add(&mut self, target: &Target, delta: i64) {
        let used = &mut self.used[Self::block_slot(target)];
        *used = used.saturating_add_signed(delta);
    }

    /// Recounts the allowlist maps.
    pub fn set_allow(&mut self, allow: &Allowlist) {
        self.used[4] = allow.iter().filter(|(t, _)| t.is_v4()).count() as u64;
        self.used[5] = allow.len() as u64 - self.used[4];
    }

    /// Entries in use in `map`.
    pub fn used(&self, map: &str) -> u64 {
        MAPS.iter()
            .position(|m| *m == map)
            .map_or(0, |i| self.used[i])
    }
}
