//! Typed access to the data path's maps.
//!
//! A [`Target`] goes to the map that suits it: single addresses to the exact-match hashes (flat
//! lookup cost whatever their number), real prefixes to the LPM tries. Callers never see that
//! split.

use std::{net::IpAddr, path::Path};

use nix::errno::Errno;

use aya::maps::{
    Array, HashMap, IterableMap as _, LpmTrie, Map, MapData, MapError, PerCpuArray,
    lpm_trie::Key,
};
use enforcer_common::{AllowValue, BlockValue, STATS_SLOTS, Stats, map_names};
use ipnet::IpNet;

use crate::target::{Target, v4_bytes, v6_bytes};

/// A map operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    /// The map holds as many entries as it was created for. Nothing was evicted.
    #[error("the {map} map is full ({capacity} entries); nothing was evicted. Raise its capacity in the configuration or remove blocks")]
    Full { map: &'static str, capacity: u32 },
    /// A map the object should define is missing.
    #[error("map {0} is missing from the eBPF object")]
    Missing(&'static str),
    /// The kernel refused a map operation.
    #[error("{op} on map {map} failed: {source}")]
    Kernel {
        op: &'static str,
        map: &'static str,
        #[source]
        source: MapError,
    },
    /// A pinned map could not be opened.
    #[error("opening pinned map {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: MapError,
    },
}

/// The block, allowlist and counter maps.
pub struct BlockMaps {
    v4: HashMap<MapData, [u8; 4], BlockValue>,
    v6: HashMap<MapData, [u8; 16], BlockValue>,
    net_v4: LpmTrie<MapData, [u8; 8], BlockValue>,
    net_v6: LpmTrie<MapData, [u8; 16], BlockValue>,
    allow_v4: LpmTrie<MapData, [u8; 4], AllowValue>,
    allow_v6: LpmTrie<MapData, [u8; 16], AllowValue>,
    stats: PerCpuArray<MapData, Stats>,
    prefix_flags: Array<MapData, u32>,
    capacity: [u32; 6],
}

fn convert<T: TryFrom<Map, Error = MapError>>(name: &'static str, map: Map) -> Result<T, MapsError> {
    T::try_from(map).map_err(|source| MapsError::Kernel {
        op: "opening",
        map: name,
        source,
    })
}

fn kernel(op: &'static str, map: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Kernel { op, map, source }
}

fn is_not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(s) => s.io_error.raw_os_error() == Some(Errno::ENOENT as i32),
        _ => false,
    }
}

/// Maps an insert error: a full map is [`MapsError::Full`], anything else a kernel error.
fn insert_error(map: &'static str, capacity: u32) -> impl FnOnce(MapError) -> MapsError {
    move |e| {
        if is_full(&e) {
            MapsError::Full { map, capacity }
        } else {
            MapsError::Kernel {
                op: "insert",
                map,
                source: e,
            }
        }
    }
}

/// Maps a delete result: absent is `Ok(false)`.
fn removed(map: &'static str, result: Result<(), MapError>) -> Result<bool, MapsError> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(kernel("delete", map)(e)),
    }
}

fn is_full(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(s) if matches!(s.io_error.raw_os_error(), Some(c) if [Errno::E2BIG, Errno::ENOSPC, Errno::ENOMEM].contains(&Errno::from_raw(c))))
}

impl BlockMaps {
    /// Takes the maps out of a loaded object.
    pub(crate) fn take_from(ebpf: &mut aya::Ebpf) -> Result<Self, MapsError> {
        let take = |name: &'static str| ebpf.take_map(name).ok_or(MapsError::Missing(name));
        Self::from_maps(take)
    }

    /// Opens the maps pinned in `dir`, for reading (tests, diagnostics). The daemon is the only
    /// writer of the maps; do not write through this.
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

    fn from_maps(mut get: impl FnMut(&'static str) -> Result<Map, MapsError>) -> Result<Self, MapsError> {
        let v4: HashMap<_, _, _> = convert(map_names::BLOCK_V4, get(map_names::BLOCK_V4)?)?;
        let v6: HashMap<_, _, _> = convert(map_names::BLOCK_V6, get(map_names::BLOCK_V6)?)?;
        let net_v4: LpmTrie<_, _, _> = convert(map_names::BLOCK_NET_V4, get(map_names::BLOCK_NET_V4)?)?;
        let net_v6: LpmTrie<_, _, _> = convert(map_names::BLOCK_NET_V6, get(map_names::BLOCK_NET_V6)?)?;
        let allow_v4: LpmTrie<_, _, _> = convert(map_names::ALLOW_V4, get(map_names::ALLOW_V4)?)?;
        let allow_v6: LpmTrie<_, _, _> = convert(map_names::ALLOW_V6, get(map_names::ALLOW_V6)?)?;
        let stats: PerCpuArray<_, _> = convert(map_names::STATS, get(map_names::STATS)?)?;
        let prefix_flags: Array<_, _> = convert(map_names::PREFIX_FLAGS, get(map_names::PREFIX_FLAGS)?)?;
        let cap = |m: &MapData| m.info().map(|i| i.max_entries()).unwrap_or(0);
        let capacity = [
            cap(v4.map()),
            cap(v6.map()),
            cap(net_v4.map()),
            cap(net_v6.map()),
            cap(allow_v4.map()),
            cap(allow_v6.map()),
        ];
        Ok(Self {
            v4,
            v6,
            net_v4,
            net_v6,
            allow_v4,
            allow_v6,
            stats,
            prefix_flags,
            capacity,
        })
    }

    /// Capacity of the map a target goes to, and that map's name.
    pub fn capacity_for(&self, target: &Target) -> (&'static str, u32) {
        match (target.net(), target.is_host()) {
            (IpNet::V4(_), true) => (map_names::BLOCK_V4, self.capacity[0]),
            (IpNet::V6(_), true) => (map_names::BLOCK_V6, self.capacity[1]),
            (IpNet::V4(_), false) => (map_names::BLOCK_NET_V4, self.capacity[2]),
            (IpNet::V6(_), false) => (map_names::BLOCK_NET_V6, self.capacity[3]),
        }
    }

    /// Capacities in [`map_names::ALL`] order (without STATS).
    pub fn capacities(&self) -> [(&'static str, u32); 6] {
        let n = map_names::ALL;
        [
            (n[0], self.capacity[0]),
            (n[1], self.capacity[1]),
            (n[2], self.capacity[2]),
            (n[3], self.capacity[3]),
            (n[4], self.capacity[4]),
            (n[5], self.capacity[5]),
        ]
    }

    /// Sets each family's "prefixes present" flag from whether its trie holds anything.
    pub fn refresh_prefix_flags(&mut self) -> Result<(), MapsError> {
        let v4 = self.net_v4.keys().next().is_some();
        let v6 = self.net_v6.keys().next().is_some();
        self.set_prefix_flag(0, v4)?;
        self.set_prefix_flag(1, v6)
    }

    fn set_prefix_flag(&mut self, family: u32, present: bool) -> Result<(), MapsError> {
        self.prefix_flags
            .set(family, u32::from(present), 0)
            .map_err(kernel("update", map_names::PREFIX_FLAGS))
    }

    /// Writes a block entry, replacing any entry for the same target.
    ///
    /// A full map is an error ([`MapsError::Full`]); nothing is ever evicted.
    pub fn insert_block(&mut self, target: &Target, value: &BlockValue) -> Result<(), MapsError> {
        let (map, capacity) = self.capacity_for(target);
        let value = &BlockValue {
            prefix_len: u32::from(target.prefix_len()),
            ..*value
        };
        let result = match target.net() {
            IpNet::V4(n) if target.is_host() => self.v4.insert(v4_bytes(n.addr()), value, 0),
            IpNet::V6(n) if target.is_host() => self.v6.insert(v6_bytes(n.addr()), value, 0),
            IpNet::V4(n) => self
                .net_v4
                .insert(&Key::new(u32::from(n.prefix_len()), v4_padded(n.network())), value, 0),
            IpNet::V6(n) => self
                .net_v6
                .insert(&Key::new(u32::from(n.prefix_len()), v6_bytes(n.network())), value, 0),
        };
        result.map_err(insert_error(map, capacity))?;
        if !target.is_host() {
            // After the insert: the flag only ever lets the data path look, never hides an entry
            // that is acknowledged.
            self.set_prefix_flag(u32::from(!target.is_v4()), true)?;
        }
        Ok(())
    }

    /// Updates expiry and mode of a block, keeping its hit counters (or creates it).
    pub fn upsert_block(&mut self, target: &Target, expires_ns: u64, mode: u32) -> Result<(), MapsError> {
        let mut value = self.get_block(target)?.unwrap_or_default();
        value.expires_ns = expires_ns;
        value.mode = mode;
        self.insert_block(target, &value)
    }

    /// Reads a block entry.
    pub fn get_block(&self, target: &Target) -> Result<Option<BlockValue>, MapsError> {
        let (map, _) = self.capacity_for(target);
        let result = match target.net() {
            IpNet::V4(n) if target.is_host() => self.v4.get(&v4_bytes(n.addr()), 0),
            IpNet::V6(n) if target.is_host() => self.v6.get(&v6_bytes(n.addr()), 0),
            IpNet::V4(n) => self
                .net_v4
                .get(&Key::new(u32::from(n.prefix_len()), v4_padded(n.network())), 0),
            IpNet::V6(n) => self
                .net_v6
                .get(&Key::new(u32::from(n.prefix_len()), v6_bytes(n.network())), 0),
        };
        match result {
            Ok(v) => Ok(Some(v)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(kernel("lookup", map)(e)),
        }
    }

    /// Removes a block entry. Returns whether it was there.
    pub fn remove_block(&mut self, target: &Target) -> Result<bool, MapsError> {
        let (map, _) = self.capacity_for(target);
        let result = match target.net() {
            IpNet::V4(n) if target.is_host() => self.v4.remove(&v4_bytes(n.addr())),
            IpNet::V6(n) if target.is_host() => self.v6.remove(&v6_bytes(n.addr())),
            IpNet::V4(n) => self
                .net_v4
                .remove(&Key::new(u32::from(n.prefix_len()), v4_padded(n.network()))),
            IpNet::V6(n) => self
                .net_v6
                .remove(&Key::new(u32::from(n.prefix_len()), v6_bytes(n.network()))),
        };
        let was_there = removed(map, result)?;
        if !target.is_host() {
            let empty = if target.is_v4() {
                self.net_v4.keys().next().is_none()
            } else {
                self.net_v6.keys().next().is_none()
            };
            if empty {
                self.set_prefix_flag(u32::from(!target.is_v4()), false)?;
            }
        }
        Ok(was_there)
    }

    /// Every block entry in the kernel (walks all four maps; for reconciliation and tests).
    pub fn blocks(&self) -> Result<Vec<(Target, BlockValue)>, MapsError> {
        let mut out = Vec::new();
        for item in self.v4.iter() {
            let (k, v) = item.map_err(kernel("iterate", map_names::BLOCK_V4))?;
            out.push((Target::host(IpAddr::from(k)), v));
        }
        for item in self.v6.iter() {
            let (k, v) = item.map_err(kernel("iterate", map_names::BLOCK_V6))?;
            out.push((Target::host(IpAddr::from(k)), v));
        }
        for item in self.net_v4.iter() {
            let (k, v) = item.map_err(kernel("iterate", map_names::BLOCK_NET_V4))?;
            let d = k.data();
            let net = ipnet::Ipv4Net::new([d[0], d[1], d[2], d[3]].into(), k.prefix_len() as u8)
                .expect("the kernel holds valid prefix lengths");
            out.push((Target::new(IpNet::V4(net)), v));
        }
        for item in self.net_v6.iter() {
            let (k, v) = item.map_err(kernel("iterate", map_names::BLOCK_NET_V6))?;
            let net = ipnet::Ipv6Net::new(k.data().into(), k.prefix_len() as u8)
                .expect("the kernel holds valid prefix lengths");
            out.push((Target::new(IpNet::V6(net)), v));
        }
        Ok(out)
    }

    /// Adds an allowlist prefix.
    pub fn insert_allow(&mut self, target: &Target, origin: u32) -> Result<(), MapsError> {
        let value = AllowValue { origin };
        let (map, capacity, result) = match target.net() {
            IpNet::V4(n) => (
                map_names::ALLOW_V4,
                self.capacity[4],
                self.allow_v4
                    .insert(&Key::new(u32::from(n.prefix_len()), v4_bytes(n.network())), value, 0),
            ),
            IpNet::V6(n) => (
                map_names::ALLOW_V6,
                self.capacity[5],
                self.allow_v6
                    .insert(&Key::new(u32::from(n.prefix_len()), v6_bytes(n.network())), value, 0),
            ),
        };
        result.map_err(insert_error(map, capacity))
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
        removed(map, result)
    }

    /// Every allowlist prefix in the kernel.
    pub fn allows(&self) -> Result<Vec<(Target, AllowValue)>, MapsError> {
        let mut out = Vec::new();
        for item in self.allow_v4.iter() {
            let (k, v) = item.map_err(kernel("iterate", map_names::ALLOW_V4))?;
            let net = ipnet::Ipv4Net::new(k.data().into(), k.prefix_len() as u8)
                .expect("the kernel holds valid prefix lengths");
            out.push((Target::new(IpNet::V4(net)), v));
        }
        for item in self.allow_v6.iter() {
            let (k, v) = item.map_err(kernel("iterate", map_names::ALLOW_V6))?;
            let net = ipnet::Ipv6Net::new(k.data().into(), k.prefix_len() as u8)
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
        Ok(total)
    }
}

/// One counter slot, summed over CPUs.
fn stats_slot(stats: &PerCpuArray<MapData, Stats>, slot: u32) -> Result<Stats, MapsError> {
    let values = stats.get(&slot, 0).map_err(kernel("lookup", map_names::STATS))?;
    Ok(values.iter().fold(Stats::default(), |acc, s| acc.plus(*s)))
}

/// Read-only access to the pinned per-CPU counters alone, for readers outside the engine (the
/// metrics endpoint): reading them takes no lock the engine holds.
pub struct StatsReader(PerCpuArray<MapData, Stats>);

impl StatsReader {
    /// Opens the counters pinned in `maps_dir`.
    pub fn open_pinned(maps_dir: &Path) -> Result<Self, MapsError> {
        let path = maps_dir.join(map_names::STATS);
        let open = |source| MapsError::Open {
            path: path.display().to_string(),
            source,
        };
        let map = Map::from_map_data(MapData::from_pin(&path).map_err(open)?).map_err(open)?;
        Ok(Self(convert(map_names::STATS, map)?))
    }

    /// Counters for one interface (summed over CPUs).
    pub fn for_ifindex(&self, ifindex: u32) -> Result<Stats, MapsError> {
        stats_slot(&self.0, ifindex % STATS_SLOTS)
    }
}

/// The IPv4 prefix trie's key data: the address and four zero bytes (see the map's docs).
fn v4_padded(a: std::net::Ipv4Addr) -> [u8; 8] {
    let o = a.octets();
    [o[0], o[1], o[2], o[3], 0, 0, 0, 0]
}
