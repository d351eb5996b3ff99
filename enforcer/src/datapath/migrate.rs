//! Carrying blocks and their counters from the pinned maps of an earlier layout into new maps.
//!
//! When a build with a new map layout starts, it creates its maps next to the old ones (the
//! running program keeps using those until the links are swapped). Before anything is attached,
//! the entries of the old maps, with their hit counters, are copied into the new maps: blocks
//! are in force the moment the new program takes over, and counters survive the upgrade. The
//! daemon then reconciles the maps with its store as on any start. Copying is best effort: what
//! cannot be read is logged, and the store still restores every block (without its counters).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, LpmTrie, Map, MapData, MapInfo, MapType, PerCpuArray};
use enforcer_common::{BlockEntry, BlockValue, HitSlot, map_names};
use ipnet::IpNet;

use super::{BlockMaps, bpffs::PinLayout, maps::with_slots};
use crate::target::Target;

/// Copies every block of every older layout's maps under `layout` into `maps` (skipping targets
/// already there).
pub(crate) fn carry_over(layout: &PinLayout, maps: &mut BlockMaps) {
    let current = layout.maps_dir();
    let Ok(entries) = std::fs::read_dir(layout.base()) else {
        return;
    };
    let older: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            *p != current
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("maps-v"))
        })
        .collect();
    for dir in older {
        match read_blocks(&dir) {
            Ok(blocks) => {
                let mut copied = 0usize;
                for (target, value) in blocks {
                    if matches!(maps.get_block(&target), Ok(None)) {
                        let fresh = BlockValue {
                            generation: 0,
                            ..value
                        };
                        match maps.insert_block(&target, &fresh) {
                            Ok(()) => copied += 1,
                            Err(e) => {
                                tracing::warn!(%target, error = %e, "cannot copy a block from the older maps")
                            }
                        }
                    }
                }
                tracing::info!(from = %dir.display(), copied, "copied blocks and their counters from the maps of an older layout");
            }
            Err(e) => {
                tracing::warn!(from = %dir.display(), error = %e, "cannot read the maps of an older layout; blocks come back from the store without their counters")
            }
        }
    }
}

/// The blocks in a directory of pinned maps of this layout, of layout 5 (prefixes in LPM
/// tries) or of layout 4.
fn read_blocks(dir: &Path) -> Result<Vec<(Target, BlockValue)>, String> {
    let info = MapInfo::from_pin(dir.join(map_names::BLOCK_V4)).map_err(|e| e.to_string())?;
    let nets = MapInfo::from_pin(dir.join(map_names::BLOCK_NET_V4)).map_err(|e| e.to_string())?;
    let tries = nets.map_type().ok() == Some(MapType::LpmTrie);
    match info.value_size() as usize {
        s if s == size_of::<BlockEntry>() && dir.join(map_names::HITS).exists() && tries => {
            read_v5(dir)
        }
        s if s == size_of::<BlockEntry>() && dir.join(map_names::HITS).exists() => {
            BlockMaps::open_pinned(dir)
                .and_then(|m| m.blocks())
                .map_err(|e| e.to_string())
        }
        s if s == size_of::<V4Value>() => read_v4(dir),
        s => Err(format!("unknown layout (value size {s})")),
    }
}

/// Layout 5: the exact hashes and the HITS slots as today, prefixes in LPM tries (the IPv4
/// trie keyed by the address padded to 8 bytes).
fn read_v5(dir: &Path) -> Result<Vec<(Target, BlockValue)>, String> {
    let err = |e: aya::maps::MapError| e.to_string();
    let mut raw = Vec::new();
    let v4: HashMap<_, [u8; 4], BlockEntry> =
        HashMap::try_from(open(dir, map_names::BLOCK_V4)?).map_err(err)?;
    for item in v4.iter() {
        let (k, v) = item.map_err(err)?;
        raw.push((Target::host(IpAddr::from(k)), v));
    }
    let v6: HashMap<_, [u8; 16], BlockEntry> =
        HashMap::try_from(open(dir, map_names::BLOCK_V6)?).map_err(err)?;
    for item in v6.iter() {
        let (k, v) = item.map_err(err)?;
        raw.push((Target::host(IpAddr::from(k)), v));
    }
    let net_v4: LpmTrie<_, [u8; 8], BlockEntry> =
        LpmTrie::try_from(open(dir, map_names::BLOCK_NET_V4)?).map_err(err)?;
    for item in net_v4.iter() {
        let (k, v) = item.map_err(err)?;
        let d = k.data();
        raw.push((v4_net([d[0], d[1], d[2], d[3]], k.prefix_len())?, v));
    }
    let net_v6: LpmTrie<_, [u8; 16], BlockEntry> =
        LpmTrie::try_from(open(dir, map_names::BLOCK_NET_V6)?).map_err(err)?;
    for item in net_v6.iter() {
        let (k, v) = item.map_err(err)?;
        raw.push((v6_net(k.data(), k.prefix_len())?, v));
    }
    let hits: PerCpuArray<_, HitSlot> =
        PerCpuArray::try_from(open(dir, map_names::HITS)?).map_err(err)?;
    with_slots(raw, &hits).map_err(|e| e.to_string())
}

fn v4_net(octets: [u8; 4], len: u32) -> Result<Target, String> {
    let net = ipnet::Ipv4Net::new(octets.into(), len as u8).map_err(|e| e.to_string())?;
    Ok(Target::new(IpNet::V4(net)))
}

fn v6_net(octets: [u8; 16], len: u32) -> Result<Target, String> {
    let net = ipnet::Ipv6Net::new(octets.into(), len as u8).map_err(|e| e.to_string())?;
    Ok(Target::new(IpNet::V6(net)))
}

/// The block value of layout 4.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct V4Value {
    expires_ns: u64,
    mode: u32,
    prefix_len: u32,
    hit_packets: u64,
    hit_bytes: u64,
    last_hit_ns: u64,
}

// SAFETY: `#[repr(C)]`, `Copy`, only integers, no padding.
unsafe impl aya::Pod for V4Value {}

impl V4Value {
    fn to_value(self) -> BlockValue {
        BlockValue {
            expires_ns: self.expires_ns,
            mode: self.mode,
            prefix_len: self.prefix_len,
            hit_packets: self.hit_packets,
            hit_bytes: self.hit_bytes,
            last_hit_ns: self.last_hit_ns,
            generation: 0,
            scopes: None,
        }
    }
}

fn open(dir: &Path, name: &str) -> Result<Map, String> {
    let data = MapData::from_pin(dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
    Map::from_map_data(data).map_err(|e| format!("{name}: {e}"))
}

fn read_v4(dir: &Path) -> Result<Vec<(Target, BlockValue)>, String> {
    let err = |e: aya::maps::MapError| e.to_string();
    let mut out = Vec::new();
    let v4: HashMap<_, [u8; 4], V4Value> =
        HashMap::try_from(open(dir, map_names::BLOCK_V4)?).map_err(err)?;
    for item in v4.iter() {
        let (k, v) = item.map_err(err)?;
        out.push((Target::host(IpAddr::from(k)), v.to_value()));
    }
    let v6: HashMap<_, [u8; 16], V4Value> =
        HashMap::try_from(open(dir, map_names::BLOCK_V6)?).map_err(err)?;
    for item in v6.iter() {
        let (k, v) = item.map_err(err)?;
        out.push((Target::host(IpAddr::from(k)), v.to_value()));
    }
    let net_v4: LpmTrie<_, [u8; 8], V4Value> =
        LpmTrie::try_from(open(dir, map_names::BLOCK_NET_V4)?).map_err(err)?;
    for item in net_v4.iter() {
        let (k, v) = item.map_err(err)?;
        let d = k.data();
        let net = ipnet::Ipv4Net::new([d[0], d[1], d[2], d[3]].into(), k.prefix_len() as u8)
            .map_err(|e| e.to_string())?;
        out.push((Target::new(IpNet::V4(net)), v.to_value()));
    }
    let net_v6: LpmTrie<_, [u8; 16], V4Value> =
        LpmTrie::try_from(open(dir, map_names::BLOCK_NET_V6)?).map_err(err)?;
    for item in net_v6.iter() {
        let (k, v) = item.map_err(err)?;
        let net = ipnet::Ipv6Net::new(k.data().into(), k.prefix_len() as u8)
            .map_err(|e| e.to_string())?;
        out.push((Target::new(IpNet::V6(net)), v.to_value()));
    }
    Ok(out)
}
