//! Typed access to the data path's maps.
//!
//! A [`Target`] goes to the map that suits it: single addresses to the exact-match hashes, real
//! prefixes to the prefix hashes keyed by (masked address, length). Callers never see that
//! split, nor the rest of the kernel-side bookkeeping done here:
//!
//! - **Hit counters** are read as the entry's own counts plus every CPU's [`HitSlot`] for it
//!   (see [`BlockEntry`]): exact, and current to the last packet. A read that races with the
//!   data path moving a slot's counts into the entry may, for that one read, count up to that
//!   slot's packets twice or not at all. The last-hit time is to the nanosecond while a slot
//!   holds the entry's hits, to the second once they are in the entry.
//! - **The lengths in use and the block filter** (see [`enforcer_common::lookup`]) are kept
//!   here, written in place through a shared mapping of their arrays: every block sets its bits
//!   before it is written, and a bit is cleared after the last block needing it is removed.
//! - **The allowlist-overlap flag** of each block is set here from the allowlist in the maps,
//!   and an allowlist prefix added later flags every block it overlaps before
//!   [`BlockMaps::insert_allow`] returns. A removed allowlist prefix leaves flags set (a wasted
//!   lookup, never a wrong verdict) until the block is written again.
//! - **Batched writes** ([`BlockMaps::insert_blocks`], [`BlockMaps::remove_blocks`]) write all
//!   the single addresses of a round with one system call per hash map (see [`batch`]), with
//!   the same outcome per entry as writing them one by one.

use std::{
    collections::HashMap as StdHashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsFd as _,
    path::Path,
};

use aya::maps::{
    Array, HashMap, IterableMap as _, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key,
};
use enforcer_common::{
    AllowValue, BlockEntry, BlockValue, Counter, FLAG_ALLOW_OVERLAP, HIT_SLOTS, HitSlot,
    STATS_SLOTS, Stats, Unjudged, hit_slot, map_names, net_key_v4, net_key_v6,
    scope::{FLAG_SCOPED, Scopes},
    slot_tag,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

pub use super::maps_error::MapsError;
use super::{
    batch::{self, BatchError},
    clock,
    indexes::{self, AllowIndex, BlockIndex, Changed},
    map_id::{MapId, PerMap},
    maps_error::{insert_error, is_full_errno, is_not_found, kernel, removed},
    scopes::ScopeMaps,
    shared::SharedWords,
};
use crate::target::{Target, v4_bytes, v6_bytes};

/// The block, allowlist and counter maps.
pub struct BlockMaps {
    v4: HashMap<MapData, [u8; 4], BlockEntry>,
    v6: HashMap<MapData, [u8; 16], BlockEntry>,
    net_v4: HashMap<MapData, u64, BlockEntry>,
    net_v6: HashMap<MapData, [u64; 3], BlockEntry>,
    allow_v4: LpmTrie<MapData, [u8; 4], AllowValue>,
    allow_v6: LpmTrie<MapData, [u8; 16], AllowValue>,
    stats: PerCpuArray<MapData, Stats>,
    /// Absent only in the pins of an earlier build of the layout read for an upgrade.
    unjudged: Option<PerCpuArray<MapData, Unjudged>>,
    prefix_lens: SharedWords,
    block_filter: SharedWords,
    hits: PerCpuArray<MapData, HitSlot>,
    clock: Array<MapData, u64>,
    /// Absent only in the pins of an earlier build of the layout read for an upgrade.
    scopes: Option<ScopeMaps>,
    /// Absent only in the pins of an earlier build of the layout read for an upgrade.
    reply_passed: Option<PerCpuArray<MapData, Counter>>,
    capacity: PerMap<u32>,
    index: BlockIndex,
    allow: AllowIndex,
    next_generation: u8,
}

fn convert<T: TryFrom<Map, Error = MapError>>(
    name: &'static str,
    map: Map,
) -> Result<T, MapsError> {
    T::try_from(map).map_err(|source| MapsError::Kernel {
        op: "opening",
        map: name,
        source,
    })
}

impl BlockMaps {
    /// Opens the maps pinned in `dir`: the daemon's data path for writing (it is their only
    /// writer), tests and diagnostics for reading (do not write through this).
    pub fn open_pinned(dir: &Path) -> Result<Self, MapsError> {
        Self::from_maps(|name| {
            let path = dir.join(name);
            let open = |source| MapsError::Open {
                path: path.display().to_string(),
                source,
            };
            let data = MapData::from_pin(&path).map_err(open)?;
            Map::from_map_data(data).map_err(|source| MapsError::Open {
                path: path.display().to_string(),
                source,
            })
        })
    }

    fn from_maps(
        mut get: impl FnMut(&'static str) -> Result<Map, MapsError>,
    ) -> Result<Self, MapsError> {
        let v4: HashMap<_, _, _> = convert(map_names::BLOCK_V4, get(map_names::BLOCK_V4)?)?;
        let v6: HashMap<_, _, _> = convert(map_names::BLOCK_V6, get(map_names::BLOCK_V6)?)?;
        let net_v4: HashMap<_, _, _> =
            convert(map_names::BLOCK_NET_V4, get(map_names::BLOCK_NET_V4)?)?;
        let net_v6: HashMap<_, _, _> =
            convert(map_names::BLOCK_NET_V6, get(map_names::BLOCK_NET_V6)?)?;
        let allow_v4: LpmTrie<_, _, _> = convert(map_names::ALLOW_V4, get(map_names::ALLOW_V4)?)?;
        let allow_v6: LpmTrie<_, _, _> = convert(map_names::ALLOW_V6, get(map_names::ALLOW_V6)?)?;
        let stats: PerCpuArray<_, _> = convert(map_names::STATS, get(map_names::STATS)?)?;
        let prefix_lens = shared(map_names::PREFIX_LENS, get(map_names::PREFIX_LENS)?)?;
        let block_filter = shared(map_names::BLOCK_FILTER, get(map_names::BLOCK_FILTER)?)?;
        let hits: PerCpuArray<_, _> = convert(map_names::HITS, get(map_names::HITS)?)?;
        let clock: Array<_, _> = convert(map_names::CLOCK, get(map_names::CLOCK)?)?;
        let unjudged = match get(map_names::UNJUDGED) {
            Ok(map) => Some(convert(map_names::UNJUDGED, map)?),
            Err(_) => None,
        };
        let scopes = match (get(map_names::SCOPES), get(map_names::SCOPED)) {
            (Ok(entries), Ok(gate)) => Some(ScopeMaps::new(
                convert(map_names::SCOPES, entries)?,
                convert(map_names::SCOPED, gate)?,
            )),
            _ => None,
        };
        let reply_passed = match get(map_names::REPLY_PASSED) {
            Ok(map) => Some(convert(map_names::REPLY_PASSED, map)?),
            Err(_) => None,
        };
        let cap = |m: &MapData| m.info().map(|i| i.max_entries()).unwrap_or(0);
        let capacity = PerMap::from_fn(|id| {
            cap(match id {
                MapId::BlockV4 => v4.map(),
                MapId::BlockV6 => v6.map(),
                MapId::BlockNetV4 => net_v4.map(),
                MapId::BlockNetV6 => net_v6.map(),
                MapId::AllowV4 => allow_v4.map(),
                MapId::AllowV6 => allow_v6.map(),
            })
        });
        Ok(Self {
            v4,
            v6,
            net_v4,
            net_v6,
            allow_v4,
            allow_v6,
            stats,
            unjudged,
            prefix_lens,
            block_filter,
            hits,
            clock,
            scopes,
            reply_passed,
            capacity,
            index: BlockIndex::default(),
            allow: AllowIndex::default(),
            // Differs from run to run, so a restarted daemon rarely reuses a recent generation.
            next_generation: (clock::boottime_ns() / 1_000 % 255) as u8 + 1,
        })
    }

    /// The name of the block map a target goes to, and its capacity.
    pub fn capacity_for(&self, target: &Target) -> (&'static str, u32) {
        let map = MapId::for_block(target);
        (map.name(), self.capacity[map])
    }

    /// The capacity of each block and allowlist map.
    pub fn capacities(&self) -> PerMap<u32> {
        self.capacity
    }

    /// Loads what the writer keeps in memory (the blocks behind the lengths in use and the
    /// block filter, the allowlist) from the maps, and makes those arrays in the kernel match
    /// it. The daemon calls this once, when it opens the maps.
    pub fn refresh_prefix_flags(&mut self) -> Result<(), MapsError> {
        self.index = BlockIndex::default();
        self.allow = AllowIndex::default();
        for (target, _) in self.allows()? {
            self.allow.insert(target);
        }
        for target in self.block_targets()? {
            self.index.add(&target);
        }
        // Each word is written whole with every bit a present entry needs: no entry is hidden
        // at any moment, and bits left by a writer that died between removing an entry and
        // clearing its bit go.
        self.prefix_lens.copy_from(self.index.lens_words());
        self.block_filter.copy_from(self.index.filter_words());
        if let Some(scopes) = &mut self.scopes {
            scopes.reload()?;
        }
        self.set_clock_offset()
    }

    /// Whether the maps hold port and protocol scopes (pins of an earlier build may not).
    pub fn has_scopes(&self) -> bool {
        self.scopes.is_some()
    }

    /// Whether `target`'s scope entries need this writer's care (it has some in the kernel).
    fn is_scoped(&self, target: &Target) -> bool {
        self.scopes.as_ref().is_some_and(|s| s.has(target))
    }

    /// Writes a block's scope entries before its entry is flagged scoped.
    fn write_scopes(&mut self, target: &Target, value: &BlockValue) -> Result<(), MapsError> {
        let Some(scopes) = &value.scopes else {
            return Ok(());
        };
        self.scopes
            .as_mut()
            .ok_or(MapsError::Missing(map_names::SCOPES))?
            .write(target, scopes)
    }

    /// Removes the scope entries a target's entry no longer needs (`keep`: what it covers now;
    /// `None`: the whole address, or no entry at all).
    fn prune_scopes(&mut self, target: &Target, keep: Option<&Scopes>) -> Result<(), MapsError> {
        match &mut self.scopes {
            Some(s) => s.prune(target, keep),
            None => Ok(()),
        }
    }

    /// Every block's target (keys only).
    fn block_targets(&self) -> Result<Vec<Target>, MapsError> {
        let mut out = Vec::new();
        for k in self.v4.keys() {
            out.push(Target::host(IpAddr::from(
                k.map_err(kernel("iterate", map_names::BLOCK_V4))?,
            )));
        }
        for k in self.v6.keys() {
            out.push(Target::host(IpAddr::from(
                k.map_err(kernel("iterate", map_names::BLOCK_V6))?,
            )));
        }
        for k in self.net_v4.keys() {
            out.push(v4_target(
                k.map_err(kernel("iterate", map_names::BLOCK_NET_V4))?,
            ));
        }
        for k in self.net_v6.keys() {
            out.push(v6_target(
                k.map_err(kernel("iterate", map_names::BLOCK_NET_V6))?,
            ));
        }
        Ok(out)
    }

    /// Writes the words a block changed into the kernel's arrays.
    fn write(&self, changed: &Changed) {
        for &(word, value) in &changed.lens {
            self.prefix_lens.set(word, value);
        }
        for &(word, value) in &changed.filter {
            self.block_filter.set(word, value);
        }
    }

    /// Writes `CLOCK_BOOTTIME − CLOCK_MONOTONIC` for the data path's clock (see
    /// [`clock::boot_offset_ns`]).
    pub fn set_clock_offset(&mut self) -> Result<(), MapsError> {
        write_clock_offset(&mut self.clock)
    }

    fn raw_prefixes(&self) -> Result<Vec<(Target, BlockEntry)>, MapsError> {
        let v4 = all_entries(&self.net_v4, map_names::BLOCK_NET_V4)?;
        let v6 = all_entries(&self.net_v6, map_names::BLOCK_NET_V6)?;
        Ok(v4
            .into_iter()
            .map(|(k, v)| (v4_target(k), v))
            .chain(v6.into_iter().map(|(k, v)| (v6_target(k), v)))
            .collect())
    }

    fn generation(&mut self) -> u8 {
        let g = self.next_generation;
        self.next_generation = if g == u8::MAX { 1 } else { g + 1 };
        g
    }

    /// Writes a block entry, replacing any entry for the same target.
    ///
    /// A value read from the maps (its `generation` set) keeps the counters the kernel holds for
    /// the entry; a new value (`generation` 0, as [`BlockValue::new`] makes it) starts a new
    /// entry with the value's counters. A full map is an error ([`MapsError::Full`]); nothing is
    /// ever evicted.
    ///
    /// A scoped value's scope entries go in before the entry is flagged scoped, and the ones it
    /// no longer needs go after (see [`super::scopes`]).
    pub fn insert_block(&mut self, target: &Target, value: &BlockValue) -> Result<(), MapsError> {
        let (map, capacity) = self.capacity_for(target);
        let entry = self.entry_for(target, value)?;
        self.write_scopes(target, value)?;
        // The bits go in first: they only ever let the data path look, never hide an entry
        // that is acknowledged.
        let changed = self.index.add(target);
        self.write(&changed);
        let result = self.raw_put(target, &entry);
        if result.is_err() {
            self.forget_if_absent(target);
        }
        result.map_err(insert_error(map, capacity))?;
        self.prune_scopes(target, value.scopes.as_ref())
    }

    /// The kernel entry that writing `value` for `target` makes (see [`BlockMaps::insert_block`]).
    fn entry_for(&mut self, target: &Target, value: &BlockValue) -> Result<BlockEntry, MapsError> {
        let current = if value.generation == 0 {
            None
        } else {
            self.raw_get(target)?
        };
        let mut entry = match current {
            Some(cur) if cur.generation == value.generation => cur,
            _ => BlockEntry {
                hit_packets: value.hit_packets,
                hit_bytes: value.hit_bytes,
                last_hit_s: (value.last_hit_ns / 1_000_000_000) as u32,
                generation: if value.generation == 0 {
                    self.generation()
                } else {
                    value.generation
                },
                ..BlockEntry::default()
            },
        };
        entry.expires_ns = value.expires_ns;
        entry.mode = value.mode as u8;
        entry.prefix_len = target.prefix_len();
        entry.flags = if self.allow.overlaps(target) {
            FLAG_ALLOW_OVERLAP
        } else {
            0
        };
        if value.scopes.is_some() {
            entry.flags |= FLAG_SCOPED;
        }
        Ok(entry)
    }

    /// Clears the bits of a block whose write failed, unless an entry is there after all.
    fn forget_if_absent(&mut self, target: &Target) {
        if self.raw_get(target).ok().flatten().is_none() {
            let changed = self.index.remove(target);
            self.write(&changed);
            if let Err(e) = self.prune_scopes(target, None) {
                tracing::warn!(%target, error = %crate::error::Chain(&e), "removing the scope entries of a block that could not be written failed");
            }
        }
    }

    /// Writes many block entries, each as [`BlockMaps::insert_block`] writes one: single
    /// addresses with one batched update per hash map (`BPF_MAP_UPDATE_BATCH`), prefixes one by
    /// one. Every entry is tried, in order; returns the ones not written, with why (a full map:
    /// [`MapsError::Full`]). Every other entry is in the kernel when this returns.
    pub fn insert_blocks(&mut self, items: &[(Target, BlockValue)]) -> Vec<(Target, MapsError)> {
        let mut failed = Vec::new();
        let mut v4 = Batch::default();
        let mut v6 = Batch::default();
        for (target, value) in items {
            // Prefixes and scoped blocks one by one (their order of writes matters).
            if !target.is_host() || value.scopes.is_some() || self.is_scoped(target) {
                if let Err(e) = self.insert_block(target, value) {
                    failed.push((*target, e));
                }
                continue;
            }
            let entry = match self.entry_for(target, value) {
                Ok(entry) => entry,
                Err(e) => {
                    failed.push((*target, e));
                    continue;
                }
            };
            // The filter bit goes in before the batch writes the entry.
            let changed = self.index.add(target);
            self.write(&changed);
            match target.net() {
                IpNet::V4(n) => v4.push(*target, v4_bytes(n.addr()), entry),
                IpNet::V6(n) => v6.push(*target, v6_bytes(n.addr()), entry),
            }
        }
        let (cap4, cap6) = (self.capacity[MapId::BlockV4], self.capacity[MapId::BlockV6]);
        let refused: Vec<_> = v4
            .update(&mut self.v4, map_names::BLOCK_V4, cap4)
            .into_iter()
            .chain(v6.update(&mut self.v6, map_names::BLOCK_V6, cap6))
            .collect();
        for (target, _) in &refused {
            self.forget_if_absent(target);
        }
        failed.extend(refused);
        failed
    }

    /// Removes many block entries, each as [`BlockMaps::remove_block`] removes one: single
    /// addresses with one batched delete per hash map (`BPF_MAP_DELETE_BATCH`), prefixes one by
    /// one. Absent entries are not errors; returns the ones that could not be removed, with why.
    pub fn remove_blocks(&mut self, targets: &[Target]) -> Vec<(Target, MapsError)> {
        let mut failed = Vec::new();
        let mut v4 = Batch::default();
        let mut v6 = Batch::default();
        for target in targets {
            match target.net() {
                _ if self.is_scoped(target) => {
                    if let Err(e) = self.remove_block(target) {
                        failed.push((*target, e));
                    }
                }
                IpNet::V4(n) if target.is_host() => {
                    v4.push(*target, v4_bytes(n.addr()), BlockEntry::default());
                }
                IpNet::V6(n) if target.is_host() => {
                    v6.push(*target, v6_bytes(n.addr()), BlockEntry::default());
                }
                _ => {
                    if let Err(e) = self.remove_block(target) {
                        failed.push((*target, e));
                    }
                }
            }
        }
        let refused: Vec<_> = v4
            .delete(&mut self.v4, map_names::BLOCK_V4)
            .into_iter()
            .chain(v6.delete(&mut self.v6, map_names::BLOCK_V6))
            .collect();
        // The filter bits go only once the entries are gone.
        for target in targets.iter().filter(|t| t.is_host()) {
            if !refused.iter().any(|(r, _)| r == target) {
                let changed = self.index.remove(target);
                self.write(&changed);
            }
        }
        failed.extend(refused);
        failed
    }

    fn raw_put(&mut self, target: &Target, entry: &BlockEntry) -> Result<(), MapError> {
        match target.net() {
            IpNet::V4(n) if target.is_host() => self.v4.insert(v4_bytes(n.addr()), entry, 0),
            IpNet::V6(n) if target.is_host() => self.v6.insert(v6_bytes(n.addr()), entry, 0),
            IpNet::V4(n) => self.net_v4.insert(v4_key(&n), entry, 0),
            IpNet::V6(n) => self.net_v6.insert(v6_key(&n), entry, 0),
        }
    }

    fn raw_get(&self, target: &Target) -> Result<Option<BlockEntry>, MapsError> {
        let (map, _) = self.capacity_for(target);
        let result = match target.net() {
            IpNet::V4(n) if target.is_host() => self.v4.get(&v4_bytes(n.addr()), 0),
            IpNet::V6(n) if target.is_host() => self.v6.get(&v6_bytes(n.addr()), 0),
            IpNet::V4(n) => self.net_v4.get(&v4_key(&n), 0),
            IpNet::V6(n) => self.net_v6.get(&v6_key(&n), 0),
        };
        match result {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(kernel("lookup", map)(e)),
        }
    }

    /// Updates expiry and mode of a block, keeping its hit counters (or creates it).
    pub fn upsert_block(
        &mut self,
        target: &Target,
        expires_ns: u64,
        mode: u32,
    ) -> Result<(), MapsError> {
        let mut value = self.get_block(target)?.unwrap_or_default();
        value.expires_ns = expires_ns;
        value.mode = mode;
        self.insert_block(target, &value)
    }

    /// Reads a block entry, with its hit counters summed over the CPUs' slots.
    pub fn get_block(&self, target: &Target) -> Result<Option<BlockValue>, MapsError> {
        let Some(entry) = self.raw_get(target)? else {
            return Ok(None);
        };
        let (key, tag) = slot_id(target, &entry);
        let slots = self
            .hits
            .get(&hit_slot(&key, tag), 0)
            .map_err(kernel("lookup", map_names::HITS))?;
        let mut value = to_value(&entry);
        for slot in slots.iter().filter(|s| s.tag == tag && s.key == key) {
            fold(&mut value, slot);
        }
        value.scopes = self.scopes_of(target, &entry)?;
        Ok(Some(value))
    }

    /// The scopes of a kernel entry: `None` unless it is flagged scoped.
    fn scopes_of(&self, target: &Target, entry: &BlockEntry) -> Result<Option<Scopes>, MapsError> {
        if entry.flags & FLAG_SCOPED == 0 {
            return Ok(None);
        }
        match &self.scopes {
            Some(s) => s.read(target).map(Some),
            None => Err(MapsError::Missing(map_names::SCOPES)),
        }
    }

    /// Removes a block entry. Returns whether it was there.
    pub fn remove_block(&mut self, target: &Target) -> Result<bool, MapsError> {
        let (map, _) = self.capacity_for(target);
        let result = match target.net() {
            IpNet::V4(n) if target.is_host() => self.v4.remove(&v4_bytes(n.addr())),
            IpNet::V6(n) if target.is_host() => self.v6.remove(&v6_bytes(n.addr())),
            IpNet::V4(n) => self.net_v4.remove(&v4_key(&n)),
            IpNet::V6(n) => self.net_v6.remove(&v6_key(&n)),
        };
        let was_there = removed(map, result)?;
        // The bits go only once the entry is gone, and so do its scope entries.
        let changed = self.index.remove(target);
        self.write(&changed);
        self.prune_scopes(target, None)?;
        Ok(was_there)
    }

    /// Every block entry in the kernel (walks all four maps; for reconciliation and tests).
    pub fn blocks(&self) -> Result<Vec<(Target, BlockValue)>, MapsError> {
        let v4 = all_entries(&self.v4, map_names::BLOCK_V4)?;
        let v6 = all_entries(&self.v6, map_names::BLOCK_V6)?;
        let mut raw: Vec<(Target, BlockEntry)> = v4
            .into_iter()
            .map(|(k, v)| (Target::host(IpAddr::from(k)), v))
            .chain(
                v6.into_iter()
                    .map(|(k, v)| (Target::host(IpAddr::from(k)), v)),
            )
            .collect();
        raw.extend(self.raw_prefixes()?);
        let flagged: Vec<bool> = raw
            .iter()
            .map(|(_, e)| e.flags & FLAG_SCOPED != 0)
            .collect();
        let mut out = with_slots(raw, &self.hits)?;
        for ((target, value), scoped) in out.iter_mut().zip(flagged) {
            if scoped {
                value.scopes = self.scopes.as_ref().map(|s| s.read(target)).transpose()?;
            }
        }
        Ok(out)
    }

    /// Sets the allowlist-overlap flag on every block that overlaps `allow`.
    fn flag_blocks_overlapping(&mut self, allow: &Target) -> Result<(), MapsError> {
        let mut affected: Vec<Target> = self
            .index
            .prefixes()
            .filter(|p| p.overlaps(allow))
            .copied()
            .collect();
        let host_bits = allow.net().max_prefix_len() - allow.prefix_len();
        if host_bits <= 12 {
            // Few enough addresses to look each up.
            affected.extend(
                addresses(allow)
                    .map(Target::host)
                    .filter(|t| matches!(self.raw_get(t), Ok(Some(_)))),
            );
        } else if allow.is_v4() {
            for k in self.v4.keys() {
                let t = Target::host(IpAddr::from(
                    k.map_err(kernel("iterate", map_names::BLOCK_V4))?,
                ));
                if allow.overlaps(&t) {
                    affected.push(t);
                }
            }
        } else {
            for k in self.v6.keys() {
                let t = Target::host(IpAddr::from(
                    k.map_err(kernel("iterate", map_names::BLOCK_V6))?,
                ));
                if allow.overlaps(&t) {
                    affected.push(t);
                }
            }
        }
        affected.sort();
        affected.dedup();
        for t in affected {
            if let Some(mut entry) = self.raw_get(&t)?
                && entry.flags & FLAG_ALLOW_OVERLAP == 0
            {
                entry.flags |= FLAG_ALLOW_OVERLAP;
                let (map, capacity) = self.capacity_for(&t);
                self.raw_put(&t, &entry)
                    .map_err(insert_error(map, capacity))?;
            }
        }
        Ok(())
    }

    /// Adds an allowlist prefix.
    pub fn insert_allow(&mut self, target: &Target, origin: u32) -> Result<(), MapsError> {
        let value = AllowValue { origin };
        let (map, capacity, result) = match target.net() {
            IpNet::V4(n) => (
                map_names::ALLOW_V4,
                self.capacity[MapId::AllowV4],
                self.allow_v4.insert(
                    &Key::new(u32::from(n.prefix_len()), v4_bytes(n.network())),
                    value,
                    0,
                ),
            ),
            IpNet::V6(n) => (
                map_names::ALLOW_V6,
                self.capacity[MapId::AllowV6],
                self.allow_v6.insert(
                    &Key::new(u32::from(n.prefix_len()), v6_bytes(n.network())),
                    value,
                    0,
                ),
            ),
        };
        result.map_err(insert_error(map, capacity))?;
        // In the kernel first, then the flags that make the data path look at it.
        if self.allow.insert(*target) {
            self.flag_blocks_overlapping(target)?;
        }
        Ok(())
    }

    /// Removes an allowlist prefix. Returns whether it was there.
    pub fn remove_allow(&mut self, target: &Target) -> Result<bool, MapsError> {
        let (map, result) = match target.net() {
            IpNet::V4(n) => (
                map_names::ALLOW_V4,
                self.allow_v4
                    .remove(&Key::new(u32::from(n.prefix_len()), v4_bytes(n.network()))),
            ),
            IpNet::V6(n) => (
                map_names::ALLOW_V6,
                self.allow_v6
                    .remove(&Key::new(u32::from(n.prefix_len()), v6_bytes(n.network()))),
            ),
        };
        self.allow.remove(target);
        removed(map, result)
    }

    /// Every allowlist prefix in the kernel.
    pub fn allows(&self) -> Result<Vec<(Target, AllowValue)>, MapsError> {
        let mut out = Vec::new();
        for item in self.allow_v4.iter() {
            let (k, v) = item.map_err(kernel("iterate", map_names::ALLOW_V4))?;
            let net = Ipv4Net::new(k.data().into(), k.prefix_len() as u8)
                .expect("the kernel holds valid prefix lengths");
            out.push((Target::new(IpNet::V4(net)), v));
        }
        for item in self.allow_v6.iter() {
            let (k, v) = item.map_err(kernel("iterate", map_names::ALLOW_V6))?;
            let net = Ipv6Net::new(k.data().into(), k.prefix_len() as u8)
                .expect("the kernel holds valid prefix lengths");
            out.push((Target::new(IpNet::V6(net)), v));
        }
        Ok(out)
    }

    /// Counters for one interface (summed over CPUs).
    pub fn stats_for_ifindex(&self, ifindex: u32) -> Result<Stats, MapsError> {
        stats_slot(&self.stats, ifindex % STATS_SLOTS)
    }

    /// Counters over every interface (summed over CPUs and slots).
    pub fn stats_total(&self) -> Result<Stats, MapsError> {
        let mut total = Stats::default();
        for slot in 0..STATS_SLOTS {
            let values = self
                .stats
                .get(&slot, 0)
                .map_err(kernel("lookup", map_names::STATS))?;
            total = values.iter().fold(total, |acc, s| acc.plus(*s));
        }
        Ok(total.with_seen())
    }
}

impl BlockMaps {
    /// Frames one interface's parser gave up on, by reason (summed over CPUs).
    pub fn unjudged_for_ifindex(&self, ifindex: u32) -> Result<Unjudged, MapsError> {
        unjudged_slot(self.unjudged.as_ref(), ifindex % STATS_SLOTS)
    }

    /// The same over every interface.
    pub fn unjudged_total(&self) -> Result<Unjudged, MapsError> {
        (0..STATS_SLOTS).try_fold(Unjudged::default(), |acc, slot| {
            Ok(acc.plus(unjudged_slot(self.unjudged.as_ref(), slot)?))
        })
    }

    /// Frames one interface passed as replies to the host's own connections (summed over
    /// CPUs; zero with the pins of an earlier build).
    pub fn replies_for_ifindex(&self, ifindex: u32) -> Result<Counter, MapsError> {
        replies_slot(self.reply_passed.as_ref(), ifindex % STATS_SLOTS)
    }

    /// The same over every interface.
    pub fn replies_total(&self) -> Result<Counter, MapsError> {
        (0..STATS_SLOTS).try_fold(Counter::default(), |acc, slot| {
            let c = replies_slot(self.reply_passed.as_ref(), slot)?;
            Ok(Counter {
                packets: acc.packets + c.packets,
                bytes: acc.bytes + c.bytes,
            })
        })
    }
}

/// One slot of the REPLY_PASSED map, summed over CPUs (zero without the map).
fn replies_slot(
    map: Option<&PerCpuArray<MapData, Counter>>,
    slot: u32,
) -> Result<Counter, MapsError> {
    let Some(map) = map else {
        return Ok(Counter::default());
    };
    let values = map
        .get(&slot, 0)
        .map_err(kernel("lookup", map_names::REPLY_PASSED))?;
    Ok(values.iter().fold(Counter::default(), |acc, c| Counter {
        packets: acc.packets + c.packets,
        bytes: acc.bytes + c.bytes,
    }))
}

/// One slot of the UNJUDGED map, summed over CPUs (zero without the map).
fn unjudged_slot(
    map: Option<&PerCpuArray<MapData, Unjudged>>,
    slot: u32,
) -> Result<Unjudged, MapsError> {
    let Some(map) = map else {
        return Ok(Unjudged::default());
    };
    let values = map
        .get(&slot, 0)
        .map_err(kernel("lookup", map_names::UNJUDGED))?;
    Ok(values
        .iter()
        .fold(Unjudged::default(), |acc, u| acc.plus(*u)))
}

/// One counter slot, summed over CPUs (`seen` derived: see [`Stats::seen`]).
fn stats_slot(stats: &PerCpuArray<MapData, Stats>, slot: u32) -> Result<Stats, MapsError> {
    let values = stats
        .get(&slot, 0)
        .map_err(kernel("lookup", map_names::STATS))?;
    Ok(values
        .iter()
        .fold(Stats::default(), |acc, s| acc.plus(*s))
        .with_seen())
}

/// Read-only access to the pinned per-CPU counters alone, for readers outside the engine (the
/// metrics endpoint): reading them takes no lock the engine holds.
pub struct StatsReader {
    stats: PerCpuArray<MapData, Stats>,
    unjudged: PerCpuArray<MapData, Unjudged>,
}

impl StatsReader {
    /// Opens the counters pinned in `maps_dir`.
    pub fn open_pinned(maps_dir: &Path) -> Result<Self, MapsError> {
        let open_map = |name: &'static str| {
            let path = maps_dir.join(name);
            let open = |source| MapsError::Open {
                path: path.display().to_string(),
                source,
            };
            let map = Map::from_map_data(MapData::from_pin(&path).map_err(open)?).map_err(open)?;
            Ok::<_, MapsError>(map)
        };
        Ok(Self {
            stats: convert(map_names::STATS, open_map(map_names::STATS)?)?,
            unjudged: convert(map_names::UNJUDGED, open_map(map_names::UNJUDGED)?)?,
        })
    }

    /// Counters for one interface (summed over CPUs).
    pub fn for_ifindex(&self, ifindex: u32) -> Result<Stats, MapsError> {
        stats_slot(&self.stats, ifindex % STATS_SLOTS)
    }

    /// Frames one interface's parser gave up on, by reason (summed over CPUs).
    pub fn unjudged_for_ifindex(&self, ifindex: u32) -> Result<Unjudged, MapsError> {
        unjudged_slot(Some(&self.unjudged), ifindex % STATS_SLOTS)
    }
}

/// Every CPU's hit slots, by entry (key, tag).
type SlotsByEntry = StdHashMap<([u8; 16], u32), Vec<HitSlot>>;

/// Every CPU's hit slots that hold counts, by entry.
fn all_slots(hits: &PerCpuArray<MapData, HitSlot>) -> Result<SlotsByEntry, MapsError> {
    let mut out = SlotsByEntry::new();
    for i in 0..HIT_SLOTS {
        let values = hits.get(&i, 0).map_err(kernel("lookup", map_names::HITS))?;
        for slot in values.iter().filter(|s| s.tag != 0) {
            out.entry((slot.key, slot.tag)).or_default().push(*slot);
        }
    }
    Ok(out)
}

/// Kernel entries with their counts: their own plus every CPU's slots for them (layouts 5 and
/// 6 count hits the same way).
pub(super) fn with_slots(
    raw: Vec<(Target, BlockEntry)>,
    hits: &PerCpuArray<MapData, HitSlot>,
) -> Result<Vec<(Target, BlockValue)>, MapsError> {
    let slots = all_slots(hits)?;
    Ok(raw
        .into_iter()
        .map(|(target, entry)| {
            let mut value = to_value(&entry);
            for slot in slots.get(&slot_id(&target, &entry)).into_iter().flatten() {
                fold(&mut value, slot);
            }
            (target, value)
        })
        .collect())
}

/// Writes `CLOCK_BOOTTIME − CLOCK_MONOTONIC` into the CLOCK map.
pub(crate) fn write_clock_offset(map: &mut Array<MapData, u64>) -> Result<(), MapsError> {
    map.set(0, clock::boot_offset_ns(), 0)
        .map_err(kernel("update", map_names::CLOCK))
}

/// Every address of a prefix (network and broadcast included).
fn addresses(t: &Target) -> impl Iterator<Item = IpAddr> {
    let (first, last): (u128, u128) = match t.net() {
        IpNet::V4(n) => (
            u32::from(n.network()).into(),
            u32::from(n.broadcast()).into(),
        ),
        IpNet::V6(n) => (n.network().into(), n.broadcast().into()),
    };
    let v4 = t.is_v4();
    (first..=last).map(move |a| {
        if v4 {
            IpAddr::V4((a as u32).into())
        } else {
            IpAddr::V6(a.into())
        }
    })
}

/// An entry's hit-slot key and tag.
fn slot_id(target: &Target, entry: &BlockEntry) -> ([u8; 16], u32) {
    let mut key = [0u8; 16];
    match target.net() {
        IpNet::V4(n) => key[..4].copy_from_slice(&n.network().octets()),
        IpNet::V6(n) => key = n.network().octets(),
    }
    (
        key,
        slot_tag(!target.is_v4(), entry.prefix_len, entry.generation),
    )
}

/// The userspace view of a kernel entry (its own counters only).
fn to_value(e: &BlockEntry) -> BlockValue {
    BlockValue {
        expires_ns: e.expires_ns,
        mode: u32::from(e.mode),
        prefix_len: u32::from(e.prefix_len),
        hit_packets: e.hit_packets,
        hit_bytes: e.hit_bytes,
        last_hit_ns: u64::from(e.last_hit_s) * 1_000_000_000,
        generation: e.generation,
        scopes: None,
    }
}

/// Adds one CPU's slot to a value.
fn fold(value: &mut BlockValue, slot: &HitSlot) {
    value.hit_packets += slot.packets;
    value.hit_bytes += slot.bytes;
    value.last_hit_ns = value.last_hit_ns.max(slot.last_hit_ns);
}

/// The IPv4 prefix map's key of a network (see [`net_key_v4`]).
fn v4_key(n: &Ipv4Net) -> u64 {
    net_key_v4(indexes::v4_word(n), n.prefix_len())
}

/// The IPv6 prefix map's key of a network (see [`net_key_v6`]).
fn v6_key(n: &Ipv6Net) -> [u64; 3] {
    net_key_v6(indexes::v6_words(n), n.prefix_len())
}

/// The prefix an IPv4 prefix map key stands for.
fn v4_target(key: u64) -> Target {
    let addr = Ipv4Addr::from((key as u32).to_le_bytes());
    let net = Ipv4Net::new(addr, (key >> 32) as u8).expect("the daemon writes valid lengths");
    Target::new(IpNet::V4(net))
}

/// The prefix an IPv6 prefix map key stands for.
fn v6_target(key: [u64; 3]) -> Target {
    let mut octets = [0u8; 16];
    octets[..8].copy_from_slice(&key[0].to_le_bytes());
    octets[8..].copy_from_slice(&key[1].to_le_bytes());
    let net = Ipv6Net::new(Ipv6Addr::from(octets), key[2] as u8)
        .expect("the daemon writes valid lengths");
    Target::new(IpNet::V6(net))
}

/// Maps an array the daemon writes in place (see [`SharedWords`]).
fn shared(name: &'static str, map: Map) -> Result<SharedWords, MapsError> {
    let array: Array<MapData, u64> = convert(name, map)?;
    SharedWords::map(array.map()).map_err(|source| MapsError::Mmap { map: name, source })
}

/// Entries for one exact-match hash map, written or deleted with batched calls (or entry by
/// entry where the kernel has no batch operations).
struct Batch<K> {
    targets: Vec<Target>,
    keys: Vec<K>,
    entries: Vec<BlockEntry>,
}

impl<K> Default for Batch<K> {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            keys: Vec::new(),
            entries: Vec::new(),
        }
    }
}

impl<K: aya::Pod> Batch<K> {
    fn push(&mut self, target: Target, key: K, entry: BlockEntry) {
        self.targets.push(target);
        self.keys.push(key);
        self.entries.push(entry);
    }

    /// Writes every entry into `map`; the ones refused, with why.
    fn update(
        self,
        map: &mut HashMap<MapData, K, BlockEntry>,
        name: &'static str,
        capacity: u32,
    ) -> Vec<(Target, MapsError)> {
        if self.keys.is_empty() {
            return Vec::new();
        }
        // `K` and `BlockEntry` are the map's key and value types (the map's own type says so).
        match batch::update(map.map().fd().as_fd(), &self.keys, &self.entries) {
            Ok(refused) => refused
                .into_iter()
                .map(|r| {
                    let e = batch_error("update", name, capacity, r.error);
                    (self.targets[r.index], e)
                })
                .collect(),
            Err(BatchError::Unsupported { .. }) => self
                .targets
                .iter()
                .zip(self.keys.iter().zip(&self.entries))
                .filter_map(|(t, (k, e))| {
                    let result = map.insert(k, e, 0);
                    result
                        .err()
                        .map(|err| (*t, insert_error(name, capacity)(err)))
                })
                .collect(),
        }
    }

    /// Deletes every key from `map`; the ones that could not be deleted, with why.
    fn delete(
        self,
        map: &mut HashMap<MapData, K, BlockEntry>,
        name: &'static str,
    ) -> Vec<(Target, MapsError)> {
        if self.keys.is_empty() {
            return Vec::new();
        }
        match batch::delete(map.map().fd().as_fd(), &self.keys) {
            Ok(refused) => refused
                .into_iter()
                .map(|r| {
                    (
                        self.targets[r.index],
                        batch_error("delete", name, 0, r.error),
                    )
                })
                .collect(),
            Err(BatchError::Unsupported { .. }) => self
                .targets
                .iter()
                .zip(&self.keys)
                .filter_map(|(t, k)| removed(name, map.remove(k)).err().map(|e| (*t, e)))
                .collect(),
        }
    }
}

/// Maps the error of one entry of a batch: a full map is [`MapsError::Full`].
/// Every entry of a block map: read in batches (a few system calls for the whole map), or entry
/// by entry (two calls each) where the kernel has no batched lookup.
fn all_entries<K>(
    map: &HashMap<MapData, K, BlockEntry>,
    name: &'static str,
) -> Result<Vec<(K, BlockEntry)>, MapsError>
where
    K: aya::Pod + Default,
{
    // `K` and `BlockEntry` are the map's key and value types (the map's own type says so), and
    // every block map is a plain hash map.
    match batch::lookup_all::<K, BlockEntry>(map.map().fd().as_fd()) {
        Ok(entries) => Ok(entries),
        Err(batch::LookupError::Kernel(source)) => Err(MapsError::Batch {
            op: "lookup",
            map: name,
            source,
        }),
        Err(batch::LookupError::Unsupported) => map
            .iter()
            .map(|item| item.map_err(kernel("iterate", name)))
            .collect(),
    }
}

fn batch_error(
    op: &'static str,
    map: &'static str,
    capacity: u32,
    source: std::io::Error,
) -> MapsError {
    if op == "update" && source.raw_os_error().is_some_and(is_full_errno) {
        MapsError::Full { map, capacity }
    } else {
        MapsError::Batch { op, map, source }
    }
}
