//! The scope map and its gate (issue 22): what a scoped block entry covers, one entry per
//! (target, protocol), and the word that tells the data path to read transport headers at all.
//!
//! Written only through [`super::BlockMaps`], in an order that never lets a packet through
//! that the blocks in force cover: the gate goes up before the first scope entry is written
//! and down after the last is removed; a target's scope entries go in before its block entry
//! is flagged scoped, and a protocol a block no longer covers goes only after the block entry
//! says what it now covers.

use std::collections::BTreeSet;

use aya::maps::{Array, HashMap, MapData};
use enforcer_common::{
    map_names,
    scope::{ScopeKey, ScopeValue, Scopes},
};
use ipnet::IpNet;

use super::maps_error::{MapsError, insert_error as map_insert_error, is_not_found};
use crate::target::Target;

/// The SCOPES hash and the SCOPED gate, with the targets that have scope entries.
pub(super) struct ScopeMaps {
    entries: HashMap<MapData, ScopeKey, ScopeValue>,
    gate: Array<MapData, u64>,
    /// Targets with at least one scope entry in the kernel.
    scoped: BTreeSet<Target>,
    /// The gate word as this writer last read or wrote it (`None` before [`ScopeMaps::reload`]
    /// or after a failed write), so a write does not read it back from the kernel each time.
    gate_on: Option<u64>,
}

fn kernel(op: &'static str, map: &'static str) -> impl FnOnce(aya::maps::MapError) -> MapsError {
    move |source| MapsError::Kernel { op, map, source }
}

/// The scope map's key of `target` for `proto` (see [`ScopeKey`]).
pub(super) fn key(target: &Target, proto: u8) -> ScopeKey {
    let mut bytes = [0u8; 16];
    match target.net() {
        IpNet::V4(n) => bytes[..4].copy_from_slice(&n.network().octets()),
        IpNet::V6(n) => bytes = n.network().octets(),
    }
    let word = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    ScopeKey {
        addr: [word(0), word(8)],
        prefix_len: target.prefix_len(),
        v6: u8::from(!target.is_v4()),
        proto,
        pad: [0; 5],
    }
}

/// The target a scope key belongs to.
fn target_of(key: &ScopeKey) -> Option<Target> {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&key.addr[0].to_le_bytes());
    bytes[8..].copy_from_slice(&key.addr[1].to_le_bytes());
    let net = if key.v6 == 0 {
        let v4: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
        IpNet::new(v4.into(), key.prefix_len).ok()?
    } else {
        IpNet::new(bytes.into(), key.prefix_len).ok()?
    };
    Some(Target::new(net))
}

impl ScopeMaps {
    /// Takes the maps (reading nothing yet: a reader opens them too).
    pub(super) fn new(
        entries: HashMap<MapData, ScopeKey, ScopeValue>,
        gate: Array<MapData, u64>,
    ) -> Self {
        Self {
            entries,
            gate,
            scoped: BTreeSet::new(),
            gate_on: None,
        }
    }

    /// The writer's load: reads which targets have scope entries from the kernel, and sets the
    /// gate to match (an entry left by a writer that died has its gate up).
    pub(super) fn reload(&mut self) -> Result<(), MapsError> {
        let mut scoped = BTreeSet::new();
        for key in self.entries.keys() {
            let key = key.map_err(kernel("iterate", map_names::SCOPES))?;
            scoped.extend(target_of(&key));
        }
        self.scoped = scoped;
        self.gate_on = self.gate.get(&0, 0).ok();
        self.set_gate()
    }

    /// Raises or lowers the gate to match `scoped`; the one writer keeps the word it wrote.
    fn set_gate(&mut self) -> Result<(), MapsError> {
        let on = u64::from(!self.scoped.is_empty());
        if self.gate_on == Some(on) {
            return Ok(());
        }
        self.gate_on = None;
        self.gate
            .set(0, on, 0)
            .map_err(kernel("update", map_names::SCOPED))?;
        self.gate_on = Some(on);
        Ok(())
    }

    /// Whether `target` has scope entries in the kernel.
    pub(super) fn has(&self, target: &Target) -> bool {
        self.scoped.contains(target)
    }

    /// The scope entries of `target`.
    pub(super) fn read(&self, target: &Target) -> Result<Scopes, MapsError> {
        let mut out = Scopes::default();
        for (proto, _) in Scopes::default().entries() {
            let value = match self.entries.get(&key(target, proto), 0) {
                Ok(v) => Some(v),
                Err(e) if is_not_found(&e) => None,
                Err(e) => return Err(kernel("lookup", map_names::SCOPES)(e)),
            };
            if let Some(slot) = out.get_mut(proto) {
                *slot = value;
            }
        }
        Ok(out)
    }

    /// Writes `scopes`' entries for `target` (before its block entry is flagged scoped). A
    /// protocol that `scopes` lacks is left for [`ScopeMaps::prune`].
    pub(super) fn write(&mut self, target: &Target, scopes: &Scopes) -> Result<(), MapsError> {
        self.scoped.insert(*target);
        self.set_gate()?;
        for (proto, value) in scopes.entries() {
            if let Some(v) = value {
                self.entries
                    .insert(key(target, proto), v, 0)
                    .map_err(insert_error)?;
            }
        }
        Ok(())
    }

    /// Removes `target`'s entries for the protocols `keep` lacks (all of them for `None`),
    /// once its block entry no longer needs them.
    pub(super) fn prune(
        &mut self,
        target: &Target,
        keep: Option<&Scopes>,
    ) -> Result<(), MapsError> {
        if !self.scoped.contains(target) {
            return Ok(());
        }
        let keep = keep.copied().unwrap_or_default();
        for (proto, value) in keep.entries() {
            if value.is_none() {
                match self.entries.remove(&key(target, proto)) {
                    Ok(()) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(kernel("delete", map_names::SCOPES)(e)),
                }
            }
        }
        if keep == Scopes::default() {
            self.scoped.remove(target);
            self.set_gate()?;
        }
        Ok(())
    }
}

fn insert_error(e: aya::maps::MapError) -> MapsError {
    map_insert_error(map_names::SCOPES, enforcer_common::scope::MAX_SCOPE_ENTRIES)(e)
}
