//! Writing blocks into the maps of a layout-5 object (prefixes in LPM tries behind the prefix
//! prefilter), so that `--baseline-object` can time an object from before layout 6 beside this
//! build on the same fixtures: each program on maps of its own layout.

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, lpm_trie::Key},
};
use enforcer::Target;
use enforcer_common::{BlockEntry, MODE_ENFORCE, map_names};
use ipnet::IpNet;

/// Layout 5's prefilter (`enforcer_common::prefilter` at 5f24d60): words of the IPv4 /16 bitmap,
/// then the /24 bitmap, then the hashed IPv6 /32 bitmap, then the short-IPv6 word.
const V4_LONG_FIRST: u32 = 1 << 10;
const V6_FIRST: u32 = V4_LONG_FIRST + (1 << 18);
const V6_BITS: u32 = 20;
const V6_SHORT_WORD: u32 = V6_FIRST + (1 << (V6_BITS - 6));

/// Writes an enforced block (no expiry) into a layout-5 object's maps, prefilter bits first.
pub(crate) fn insert(ebpf: &mut Ebpf, target: &Target) -> Result<()> {
    let entry = BlockEntry {
        mode: MODE_ENFORCE as u8,
        prefix_len: target.prefix_len(),
        generation: 1,
        ..BlockEntry::default()
    };
    set_bits(ebpf, &prefilter_bits(target))?;
    match (target.net(), target.is_host()) {
        (IpNet::V4(n), true) => HashMap::<_, [u8; 4], BlockEntry>::try_from(map(
            ebpf,
            map_names::BLOCK_V4,
        )?)?
        .insert(n.addr().octets(), entry, 0)?,
        (IpNet::V6(n), true) => HashMap::<_, [u8; 16], BlockEntry>::try_from(map(
            ebpf,
            map_names::BLOCK_V6,
        )?)?
        .insert(n.addr().octets(), entry, 0)?,
        (IpNet::V4(n), false) => {
            let o = n.network().octets();
            let key = Key::new(
                u32::from(n.prefix_len()),
                [o[0], o[1], o[2], o[3], 0, 0, 0, 0],
            );
            LpmTrie::<_, [u8; 8], BlockEntry>::try_from(map(ebpf, map_names::BLOCK_NET_V4)?)?
                .insert(&key, entry, 0)?
        }
        (IpNet::V6(n), false) => {
            let key = Key::new(u32::from(n.prefix_len()), n.network().octets());
            LpmTrie::<_, [u8; 16], BlockEntry>::try_from(map(ebpf, map_names::BLOCK_NET_V6)?)?
                .insert(&key, entry, 0)?
        }
    }
    Ok(())
}

fn set_bits(ebpf: &mut Ebpf, bits: &[u32]) -> Result<()> {
    let mut words: Array<_, u64> = Array::try_from(
        ebpf.map_mut("PREFIX_FILTER")
            .context("the layout-5 object has no PREFIX_FILTER")?,
    )?;
    for bit in bits {
        let word = words.get(&(bit / 64), 0)? | (1 << (bit % 64));
        words.set(bit / 64, word, 0)?;
    }
    Ok(())
}

/// The prefilter bits layout 5 sets for a prefix block (none for an address).
fn prefilter_bits(target: &Target) -> Vec<u32> {
    if target.is_host() {
        return Vec::new();
    }
    let range = |first: u32, host_bits: u8| (first..first + (1u32 << host_bits)).collect();
    match target.net() {
        IpNet::V4(n) if n.prefix_len() < 16 => {
            let o = n.network().octets();
            range(
                (u32::from(o[0]) << 8) | u32::from(o[1]),
                16 - n.prefix_len(),
            )
        }
        IpNet::V4(n) => {
            let top24 = u32::from(n.network()) >> 8;
            range(
                V4_LONG_FIRST * 64 + top24,
                24u8.saturating_sub(n.prefix_len()),
            )
        }
        IpNet::V6(n) if n.prefix_len() < 24 => vec![V6_SHORT_WORD * 64],
        IpNet::V6(n) => {
            let o = n.network().octets();
            let top = u32::from_be_bytes([o[0], o[1], o[2], o[3]]);
            (0..1u32 << 32u8.saturating_sub(n.prefix_len()))
                .map(|i| {
                    let le = u32::from_le_bytes((top + i).to_be_bytes());
                    V6_FIRST * 64 + (le.wrapping_mul(0x9E37_79B1) >> (32 - V6_BITS))
                })
                .collect()
        }
    }
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .with_context(|| format!("the layout-5 object has no {name}"))
}
