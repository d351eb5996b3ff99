//! How full each kernel map is, counted in the ledger so that a full map refuses a block
//! before anything is written (a block is acknowledged only if it fits).
//!
//! The block maps are shared by every source, so each is divided (see [`Shares`]): a source
//! other than `cli` and the force sources holds at most its share of a map, and the last
//! entries of each map are kept for `cli` and forced blocks. One source (a compromised LAPI, a
//! noisy Wazuh rule) can then fill its share, never the map: the others and the operator still
//! get room.

use std::collections::HashMap;

use super::Refusal;
use crate::{
    block::Source,
    datapath::{MapId, PerMap},
    policy::Allowlist,
    target::Target,
};

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

/// Capacity and use of each block and allowlist map.
#[derive(Clone, Debug)]
pub struct Capacity {
    limits: PerMap<u32>,
    used: PerMap<u64>,
    shares: Shares,
    /// Targets each source blocks, per block map (a target two sources block counts for both;
    /// the allowlists' counts stay 0).
    held: HashMap<Source, PerMap<u64>>,
}

impl Capacity {
    /// From each map's capacity.
    pub fn new(limits: PerMap<u32>, shares: Shares) -> Self {
        Self {
            limits,
            used: PerMap::default(),
            shares,
            held: HashMap::new(),
        }
    }

    /// The same capacity for every map, undivided (tests).
    pub fn uniform(capacity: u32) -> Self {
        Self::new(PerMap::from_fn(|_| capacity), Shares::NONE)
    }

    /// Refuses a new blocked target whose map is full: for `exempt` callers (`cli`, a force
    /// source) at the map's end, for the others where the reserved entries start.
    pub fn check(&self, target: &Target, source: &Source, exempt: bool) -> Result<(), Refusal> {
        let map = MapId::for_block(target);
        self.check_map(map)?;
        let reserved = self.reserved(map);
        if !exempt && self.used[map] + reserved >= u64::from(self.limits[map]) {
            return Err(Refusal::Reserved {
                by: source.clone(),
                map,
                capacity: self.limits[map],
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
        let map = MapId::for_block(target);
        let share = self.share(map);
        let held = self.held.get(source).map_or(0, |h| h[map]);
        if !exempt && held >= share {
            return Err(Refusal::ShareFull {
                by: source.clone(),
                map,
                share,
                capacity: self.limits[map],
                percent: self.shares.source_percent,
            });
        }
        Ok(())
    }

    /// The entries of a block map one source may hold.
    fn share(&self, map: MapId) -> u64 {
        u64::from(self.limits[map]) * u64::from(self.shares.source_percent) / 100
    }

    /// The entries at the end of a block map kept for `cli` and forced blocks (rounded up).
    fn reserved(&self, map: MapId) -> u64 {
        (u64::from(self.limits[map]) * u64::from(self.shares.reserved_percent)).div_ceil(100)
    }

    /// Counts `source`'s block of `target` in (`1`) or out (`-1`).
    pub fn add_held(&mut self, target: &Target, source: &Source, delta: i64) {
        let map = MapId::for_block(target);
        let held = self.held.entry(source.clone()).or_default();
        held[map] = held[map].saturating_add_signed(delta);
        if held.iter().all(|(_, h)| *h == 0) {
            self.held.remove(source);
        }
    }

    /// Refuses a new allowlist prefix whose map is full.
    pub fn check_allow(&self, target: &Target) -> Result<(), Refusal> {
        self.check_map(MapId::for_allow(target))
    }

    fn check_map(&self, map: MapId) -> Result<(), Refusal> {
        if self.used[map] >= u64::from(self.limits[map]) {
            return Err(Refusal::MapFull {
                map,
                capacity: self.limits[map],
            });
        }
        Ok(())
    }

    /// Counts a blocked target in (`1`) or out (`-1`).
    pub fn add(&mut self, target: &Target, delta: i64) {
        let used = &mut self.used[MapId::for_block(target)];
        *used = used.saturating_add_signed(delta);
    }

    /// Recounts the allowlist maps.
    pub fn set_allow(&mut self, allow: &Allowlist) {
        let v4 = allow.iter().filter(|(t, _)| t.is_v4()).count() as u64;
        self.used[MapId::AllowV4] = v4;
        self.used[MapId::AllowV6] = allow.len() as u64 - v4;
    }

    /// Entries in use in `map`.
    pub fn used(&self, map: MapId) -> u64 {
        self.used[map]
    }
}
