//! How full each kernel map is, counted in the ledger so that a full map refuses a block
//! before anything is written (a block is acknowledged only if it fits).

use enforcer_common::map_names;

use super::Refusal;
use crate::{policy::Allowlist, target::Target};

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
}

impl Capacity {
    /// From (map name, capacity) pairs; maps not named have no room.
    pub fn new(capacities: &[(&'static str, u32)]) -> Self {
        let limits = MAPS.map(|m| {
            capacities
                .iter()
                .find(|(n, _)| *n == m)
                .map_or(0, |(_, c)| *c)
        });
        Self {
            limits,
            used: [0; 6],
        }
    }

    /// The same capacity for every map (tests).
    pub fn uniform(capacity: u32) -> Self {
        Self {
            limits: [capacity; 6],
            used: [0; 6],
        }
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

    /// Refuses a new blocked target whose map is full.
    pub fn check(&self, target: &Target) -> Result<(), Refusal> {
        self.check_slot(Self::block_slot(target))
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
