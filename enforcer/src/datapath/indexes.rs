//! What the daemon keeps in memory to spare the data path work: the bits of the prefix lengths
//! in use and of the block filter (with how many blocks need each), and the allowlist, to tell
//! which blocks overlap it.
//!
//! Both are plain structs: the map code feeds them targets and writes what they return.

use std::collections::{BTreeSet, HashMap, HashSet};

use enforcer_common::lookup;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::target::Target;

/// Bits over an array of u64 words, each set while at least one block needs it.
#[derive(Debug)]
pub struct CountedBits {
    words: Vec<u64>,
    refs: HashMap<u32, u32>,
}

impl CountedBits {
    fn new(words: u32) -> Self {
        Self {
            words: vec![0; words as usize],
            refs: HashMap::new(),
        }
    }

    /// The current value of every word.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// One more block needs `bit`: the word to write if it changed.
    fn add(&mut self, bit: u32) -> Option<(u32, u64)> {
        let n = self.refs.entry(bit).or_default();
        *n += 1;
        (*n == 1).then(|| self.flip(bit, true))
    }

    /// One block less needs `bit`: the word to write if it changed.
    fn remove(&mut self, bit: u32) -> Option<(u32, u64)> {
        let n = self.refs.get_mut(&bit)?;
        *n -= 1;
        if *n > 0 {
            return None;
        }
        self.refs.remove(&bit);
        Some(self.flip(bit, false))
    }

    fn flip(&mut self, bit: u32, on: bool) -> (u32, u64) {
        let word = (bit / 64) as usize;
        let mask = 1u64 << (bit % 64);
        if on {
            self.words[word] |= mask;
        } else {
            self.words[word] &= !mask;
        }
        (word as u32, self.words[word])
    }
}

/// The words a block changed in each array: to write after [`BlockIndex::add`] (before the
/// entry) and after [`BlockIndex::remove`] (after the entry is gone).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changed {
    /// Words of [`PREFIX_LENS`](enforcer_common::map_names::PREFIX_LENS), with their values.
    pub lens: Vec<(u32, u64)>,
    /// Words of [`BLOCK_FILTER`](enforcer_common::map_names::BLOCK_FILTER), with their values.
    pub filter: Vec<(u32, u64)>,
}

/// The blocks in the maps, as the lookup structures see them (see
/// [`enforcer_common::lookup`]): the lengths in use, the block filter, the prefixes (for the
/// allowlist overlap) and the exact addresses (so a block written twice counts once).
#[derive(Debug)]
pub struct BlockIndex {
    lens: CountedBits,
    filter: CountedBits,
    prefixes: BTreeSet<Target>,
    hosts_v4: HashSet<u32>,
    hosts_v6: HashSet<u128>,
}

impl Default for BlockIndex {
    fn default() -> Self {
        Self {
            lens: CountedBits::new(lookup::LENS_WORDS),
            filter: CountedBits::new(lookup::FILTER_WORDS),
            prefixes: BTreeSet::new(),
            hosts_v4: HashSet::new(),
            hosts_v6: HashSet::new(),
        }
    }
}

impl BlockIndex {
    /// The words of the lengths in use.
    pub fn lens_words(&self) -> &[u64] {
        self.lens.words()
    }

    /// The words of the block filter.
    pub fn filter_words(&self) -> &[u64] {
        self.filter.words()
    }

    /// The prefix blocks it knows.
    pub fn prefixes(&self) -> impl Iterator<Item = &Target> {
        self.prefixes.iter()
    }

    /// Notes a block (again: no change). Returns the words that changed.
    pub fn add(&mut self, target: &Target) -> Changed {
        if !self.note(target, true) {
            return Changed::default();
        }
        Changed {
            lens: lens_bits(target).filter_map(|b| self.lens.add(b)).collect(),
            filter: self.filter.add(filter_bit(target)).into_iter().collect(),
        }
    }

    /// Forgets a block (unknown: no change). Returns the words that changed.
    pub fn remove(&mut self, target: &Target) -> Changed {
        if !self.note(target, false) {
            return Changed::default();
        }
        Changed {
            lens: lens_bits(target)
                .filter_map(|b| self.lens.remove(b))
                .collect(),
            filter: self.filter.remove(filter_bit(target)).into_iter().collect(),
        }
    }

    /// Adds (`present`) or removes the target from its set; whether that changed the set.
    fn note(&mut self, target: &Target, present: bool) -> bool {
        match (target.net(), target.is_host()) {
            (IpNet::V4(n), true) => toggle(&mut self.hosts_v4, u32::from(n.addr()), present),
            (IpNet::V6(n), true) => toggle(&mut self.hosts_v6, u128::from(n.addr()), present),
            _ if present => self.prefixes.insert(*target),
            _ => self.prefixes.remove(target),
        }
    }
}

fn toggle<T: std::hash::Hash + Eq>(set: &mut HashSet<T>, key: T, present: bool) -> bool {
    if present {
        set.insert(key)
    } else {
        set.remove(&key)
    }
}

/// The block filter bit of a target's key (see [`lookup::filter_bit`]).
pub fn filter_bit(target: &Target) -> u32 {
    let len = u32::from(target.prefix_len());
    match target.net() {
        IpNet::V4(n) => lookup::filter_bit(u64::from(v4_word(&n)), 0, len),
        IpNet::V6(n) => {
            let [a, b] = v6_words(&n);
            lookup::filter_bit(a, b, len)
        }
    }
}

/// A network's address as the data path loads it: its bytes read little-endian.
pub fn v4_word(n: &Ipv4Net) -> u32 {
    u32::from_le_bytes(n.network().octets())
}

/// A network's address as the data path loads it: two little-endian words.
pub fn v6_words(n: &Ipv6Net) -> [u64; 2] {
    let o = n.network().octets();
    let word = |i: usize| u64::from_le_bytes(o[i..i + 8].try_into().expect("8 bytes"));
    [word(0), word(8)]
}

/// The bits of the lengths-in-use words a prefix block sets (none for an exact address).
fn lens_bits(target: &Target) -> Box<dyn Iterator<Item = u32>> {
    if target.is_host() {
        return Box::new(std::iter::empty());
    }
    let len = u32::from(target.prefix_len());
    match target.net() {
        IpNet::V4(n) => {
            let first = lookup::v4_word(u32::from(n.network()));
            let words = 1u32 << 16u32.saturating_sub(len);
            Box::new((first..first + words).map(move |w| w * 64 + len))
        }
        IpNet::V6(_) if len < 32 => Box::new(std::iter::once(lookup::V6_SHORT * 64 + len)),
        IpNet::V6(n) => {
            let o = n.network().octets();
            let first = lookup::v6_words(u32::from_le_bytes([o[0], o[1], o[2], o[3]]));
            let (word, bit) = if len < 96 {
                (first, len - 32)
            } else {
                (first + 1, len - 96)
            };
            Box::new(std::iter::once(word * 64 + bit))
        }
    }
}

/// The allowlist prefixes, indexed to answer "does this block overlap any of them" quickly.
#[derive(Debug, Default)]
pub struct AllowIndex {
    nets: BTreeSet<Target>,
    /// How many prefixes of each (family, length) there are.
    lengths: HashMap<(bool, u8), u32>,
}

impl AllowIndex {
    /// Adds a prefix. Returns whether it is new.
    pub fn insert(&mut self, t: Target) -> bool {
        let new = self.nets.insert(t);
        if new {
            *self.lengths.entry((t.is_v4(), t.prefix_len())).or_default() += 1;
        }
        new
    }

    /// Removes a prefix.
    pub fn remove(&mut self, t: &Target) {
        if self.nets.remove(t)
            && let Some(n) = self.lengths.get_mut(&(t.is_v4(), t.prefix_len()))
        {
            *n -= 1;
            if *n == 0 {
                self.lengths.remove(&(t.is_v4(), t.prefix_len()));
            }
        }
    }

    /// Whether `t` shares any address with an allowlist prefix.
    pub fn overlaps(&self, t: &Target) -> bool {
        // An allowlist prefix as wide as `t` or wider that contains it.
        let wider = self.lengths.keys().any(|&(v4, len)| {
            v4 == t.is_v4()
                && len <= t.prefix_len()
                && self.nets.contains(&Target::new(
                    IpNet::new(t.addr(), len).expect("a length no longer than the target's"),
                ))
        });
        // Or one whose first address lies inside `t` (narrower, or equal).
        wider || {
            let net = t.net();
            let hi = IpNet::new(net.broadcast(), net.max_prefix_len()).expect("a valid length");
            self.nets
                .range(*t..)
                .take_while(|a| a.net() <= hi)
                .any(|a| t.overlaps(a))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Target {
        s.parse().unwrap()
    }

    #[test]
    fn overlap_in_every_direction_and_family() {
        let mut a = AllowIndex::default();
        a.insert(t("192.0.2.0/24"));
        a.insert(t("2001:db8:1::/48"));
        assert!(a.overlaps(&t("192.0.2.7")));
        assert!(a.overlaps(&t("192.0.0.0/16")));
        assert!(a.overlaps(&t("192.0.2.128/25")));
        assert!(!a.overlaps(&t("192.0.3.7")));
        assert!(!a.overlaps(&t("198.51.100.0/24")));
        assert!(a.overlaps(&t("2001:db8::/32")));
        assert!(a.overlaps(&t("2001:db8:1::5")));
        assert!(!a.overlaps(&t("2001:db8:2::5")));
        a.remove(&t("192.0.2.0/24"));
        assert!(!a.overlaps(&t("192.0.2.7")));
    }

    fn bit_set(words: &[u64], bit: u32) -> bool {
        words[(bit / 64) as usize] & (1 << (bit % 64)) != 0
    }

    #[test]
    fn length_bits_are_counted_so_nested_and_sibling_prefixes_keep_theirs() {
        let mut f = BlockIndex::default();
        let wide = t("10.0.0.0/8");
        let narrow = t("10.1.2.0/24");
        let sibling = t("10.1.3.0/24");
        assert_eq!(f.add(&wide).lens.len(), 256, "one word per /16 it covers");
        assert_eq!(f.add(&narrow).lens.len(), 1, "bit 24 of its /16");
        assert!(
            f.add(&sibling).lens.is_empty(),
            "the same bit, counted twice"
        );
        assert!(
            f.add(&sibling).lens.is_empty(),
            "the same prefix twice counts once"
        );
        assert_eq!(f.remove(&wide).lens.len(), 256);
        assert!(
            f.remove(&narrow).lens.is_empty(),
            "the sibling keeps bit 24"
        );
        let word = lookup::v4_word(u32::from_be_bytes([10, 1, 2, 3]));
        assert!(bit_set(f.lens_words(), word * 64 + 24));
        assert_eq!(f.remove(&sibling).lens.len(), 1);
        assert!(f.lens_words().iter().all(|w| *w == 0));
        assert!(f.filter_words().iter().all(|w| *w == 0));
    }

    #[test]
    fn ipv6_lengths_go_to_their_slot_words_or_the_short_word() {
        let mut f = BlockIndex::default();
        assert_eq!(
            f.add(&t("2001:db8::/16")).lens,
            vec![(lookup::V6_SHORT, 1 << 16)]
        );
        let slot = lookup::v6_words(u32::from_le_bytes([0x20, 0x01, 0x0d, 0xb8]));
        assert_eq!(f.add(&t("2001:db8::/48")).lens, vec![(slot, 1 << 16)]);
        assert_eq!(f.add(&t("2001:db8::/100")).lens, vec![(slot + 1, 1 << 4)]);
        assert!(f.add(&t("2001:db8::7")).lens.is_empty(), "an address");
    }

    #[test]
    fn every_block_has_its_filter_bit_until_the_last_block_needing_it_goes() {
        let mut f = BlockIndex::default();
        let targets: Vec<Target> = (0..5000u32)
            .map(|i| Target::host(std::net::Ipv4Addr::from(0x0a00_0000 + i).into()))
            .chain((0..5000u32).map(|i| t(&format!("2001:db8:{i:x}::/48"))))
            .collect();
        for target in &targets {
            f.add(target);
        }
        for target in &targets {
            assert!(bit_set(f.filter_words(), filter_bit(target)), "{target}");
        }
        for target in &targets[..9999] {
            f.remove(target);
        }
        assert!(bit_set(f.filter_words(), filter_bit(&targets[9999])));
        assert_eq!(
            f.filter_words().iter().map(|w| w.count_ones()).sum::<u32>(),
            1
        );
    }
}
