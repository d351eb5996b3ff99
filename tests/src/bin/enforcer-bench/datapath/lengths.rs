//! Many prefix lengths over one source (issue 25, item 1): the program probes each length set
//! in the source's `PREFIX_LENS` word(s), longest first, so its cost follows how many distinct
//! lengths cover (or lie inside) the source's /16 (IPv6: /32). With N nested prefixes of N
//! distinct lengths around one source, this times a hit (the longest decides at the first
//! probe), a miss in the same /16 (/32) outside all of them (every length's filter bit checked,
//! no hash lookup), and a miss that finds an entry at every length (all N expired: a filter
//! check and a hash lookup per length, the most a walk does), against an address hit and a
//! plain miss, in the same rounds: what binary search on lengths with markers (Waldvogel) could
//! save.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use enforcer::{Target, datapath::indexes::BlockIndex};
use enforcer_common::{BlockValue, MODE_ENFORCE, lookup};
use enforcer_tests::frame;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

use super::{
    Case, CaseId, Family, Fill, Fixtures, Loaded, Packet, Parse, Probe, Settings, background,
    measure,
};

/// The numbers of distinct lengths measured, per family. An IPv4 word holds lengths 0–31 of
/// one /16: those up to /16 cover the whole /16, so a miss in it can walk past at most the 15
/// longer ones (/17–/31), the largest IPv4 N here. IPv6 words hold /32–/127 of one /32.
const COUNTS: [(Family, &[usize]); 2] = [
    (Family::Ipv4, &[1, 4, 15]),
    (Family::Ipv6, &[1, 4, 16, 48, 95]),
];

/// The source every prefix covers.
fn source(family: Family) -> IpAddr {
    match family {
        Family::Ipv4 => "203.0.113.77".parse().expect("valid"),
        Family::Ipv6 => "2001:db8:77::77".parse().expect("valid"),
    }
}

/// `n` distinct lengths spread evenly over the ones inside the source's word, longest first:
/// /17–/31 (IPv4), /33–/127 (IPv6). Longer than the word's own prefix, so a source in the same
/// /16 (/32) outside the shortest of them is a miss that walks them all.
fn lengths(family: Family, n: usize) -> Vec<u8> {
    let (lo, hi) = match family {
        Family::Ipv4 => (17usize, 31usize),
        Family::Ipv6 => (33, 127),
    };
    let span = hi - lo + 1;
    assert!(
        n <= span,
        "{family} has {span} lengths inside a word, not {n}"
    );
    (0..n).map(|i| (hi - i * span / n) as u8).collect()
}

/// The prefix of `len` bits covering `addr`.
fn prefix(addr: IpAddr, len: u8) -> Target {
    Target::new(match addr {
        IpAddr::V4(a) => IpNet::V4(Ipv4Net::new(a, len).expect("length ≤ 32").trunc()),
        IpAddr::V6(a) => IpNet::V6(Ipv6Net::new(a, len).expect("length ≤ 128").trunc()),
    })
}

/// `addr` with the last of its first `len` bits flipped: in the same /(`len` − 1), so in the
/// source's /16 (/32) for the lengths above, and outside every prefix of `addr` of `len` bits
/// or more.
fn outside(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) ^ (1 << (32 - len)))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) ^ (1 << (128 - len)))),
    }
}

/// Per family: the fixtures' program (an address hit and a plain miss, the baselines), then
/// for each N a program holding N live nested prefixes around the source and one holding the
/// same N expired. Each N gets programs of its own, so no other N's lengths are in its words.
pub(super) fn run(settings: &Settings) -> Result<Vec<Case>> {
    let mut cases = Vec::new();
    for (family, counts) in COUNTS {
        let mut loaded = vec![Loaded::new(true)?];
        let fixtures = Fixtures::of(family);
        fixtures.install(&mut loaded[0].dp)?;
        let id = |packet, entries| CaseId {
            family,
            fill: if entries == 0 {
                Fill::None
            } else {
                Fill::Prefixes
            },
            entries,
            packet,
            vlan: false,
            counters: true,
            link: Parse::Ethernet,
        };
        let mut probes = vec![
            Probe::new(&fixtures, id(Packet::HitAddress, 0), 0),
            Probe::new(&fixtures, id(Packet::Miss, 0), 0),
        ];
        let src = source(family);
        for &n in counts {
            let lens = lengths(family, n);
            for (expires_ns, packet) in [(0, Packet::LengthsHit), (1, Packet::LengthsExpired)] {
                let mut l = Loaded::new(true)?;
                // Expiry 1 ns after boot: long past, so each entry is found and passed over.
                let value = BlockValue::new(expires_ns, MODE_ENFORCE);
                for &len in &lens {
                    l.dp.maps_mut().insert_block(&prefix(src, len), &value)?;
                }
                loaded.push(l);
                let program = loaded.len() - 1;
                probes.push(Probe::from(id(packet, n), src, program));
                if packet == Packet::LengthsHit {
                    let shortest = *lens.last().expect("n ≥ 1");
                    let miss = outside(src, shortest);
                    probes.push(Probe::from(id(Packet::LengthsMiss, n), miss, program));
                }
            }
        }
        eprintln!("{family}: {counts:?} prefix lengths over one source: measuring");
        cases.extend(measure(&mut loaded, &probes, settings)?);
    }
    Ok(cases)
}

impl Probe {
    /// A UDP frame from `src` (the fixtures' frame shape) for the `program`-th loaded object.
    fn from(id: CaseId, src: IpAddr, program: usize) -> Self {
        Self {
            id,
            frame: frame::udp_from(&[], src),
            program,
        }
    }
}

/// How many distinct lengths the word(s) of a uniformly random source hold with the data path
/// section's prefix fill (random prefixes: IPv4 /8–/31, IPv6 /32–/127 in 2000::/3): what the
/// walk meets on maps like the bench's, beside the N measured above.
#[derive(Debug, Serialize)]
pub(crate) struct Census {
    pub family: Family,
    pub prefixes: usize,
    /// Lengths a miss walks: IPv4 those above /16 in its /16's word (a length up to /16 there
    /// covers the whole /16, so its source is a hit), IPv6 /32–/127 in its /32's slot.
    pub mean: f64,
    pub p99: u32,
    pub max: u32,
    /// Share of sources whose word(s) hold more than 3 such lengths.
    pub over_3: f64,
}

impl Census {
    pub(crate) fn of(family: Family, prefixes: usize) -> Self {
        let mut index = BlockIndex::default();
        for t in background(family, Fill::Prefixes, prefixes) {
            index.add(&t);
        }
        let words = index.lens_words();
        let mut counts: Vec<u32> = match family {
            Family::Ipv4 => words[..lookup::V4_WORDS as usize]
                .iter()
                .map(|w| (w >> 17).count_ones())
                .collect(),
            Family::Ipv6 => words[lookup::V6_FIRST as usize..lookup::V6_SHORT as usize]
                .chunks(2)
                .map(|pair| pair[0].count_ones() + pair[1].count_ones())
                .collect(),
        };
        counts.sort_unstable();
        let n = counts.len();
        Self {
            family,
            prefixes,
            mean: counts.iter().map(|&c| f64::from(c)).sum::<f64>() / n as f64,
            p99: counts[n * 99 / 100],
            max: counts[n - 1],
            over_3: counts.iter().filter(|&&c| c > 3).count() as f64 / n as f64,
        }
    }
}
