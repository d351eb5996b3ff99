//! What the daemon keeps in memory to spare the data path work: the prefix prefilter's bits
//! (with how many prefix blocks set each) and the allowlist, to tell which blocks overlap it.
//!
//! Both are plain structs: the map code feeds them targets and writes what they return.

use std::collections::{BTreeSet, HashMap};

use enforcer_common::prefilter;
use ipnet::IpNet;

use crate::target::Target;

/// The prefilter bitmap (see [`enforcer_common::prefilter`]) and, per bit, how many prefix
/// blocks set it. A bit is cleared only when no prefix block covers it any more.
#[derive(Debug)]
pub struct PrefixFilter {
    words: Vec<u64>,
    refs: HashMap<u32, u32>,
    prefixes: BTreeSet<Target>,
}

impl Default for PrefixFilter {
    fn default() -> Self {
        Self {
            words: vec![0; prefilter::WORDS as usize],
            refs: HashMap::new(),
            prefixes: BTreeSet::new(),
        }
    }
}

impl PrefixFilter {
    /// The current value of every word.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// The prefix blocks it knows.
    pub fn prefixes(&self) -> impl Iterator<Item = &Target> {
        self.prefixes.iter()
    }

    /// Notes a prefix block. Returns the words that changed, with their new values.
    pub fn add(&mut self, target: &Target) -> Vec<(u32, u64)> {
        if target.is_host() || !self.prefixes.insert(*target) {
            return Vec::new();
        }
        let mut changed = Vec::new();
        for bit in bits(target) {
            let n = self.refs.entry(bit).or_default();
            *n += 1;
            if *n == 1 {
                changed.push(self.flip(bit, true));
            }
        }
        changed
    }

    /// Forgets a prefix block. Returns the words that changed, with their new values.
    pub fn remove(&mut self, target: &Target) -> Vec<(u32, u64)> {
        if !self.prefixes.remove(target) {
            return Vec::new();
        }
        let mut changed = Vec::new();
        for bit in bits(target) {
            if let Some(n) = self.refs.get_mut(&bit) {
                *n -= 1;
                if *n == 0 {
                    self.refs.remove(&bit);
                    changed.push(self.flip(bit, false));
                }
            }
        }
        changed
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

/// The prefilter bits a prefix block covers (global bit indices into the map's words).
fn bits(target: &Target) -> Vec<u32> {
    let range = |first: u32, host_bits: u8| first..first + (1u32 << host_bits);
    match target.net() {
        IpNet::V4(n) if n.prefix_len() < 16 => range(
            prefilter::v4_short_bit(n.network().octets()),
            16 - n.prefix_len(),
        )
        .collect(),
        IpNet::V4(n) => range(
            prefilter::v4_long_bit(n.network().octets()),
            24u8.saturating_sub(n.prefix_len()),
        )
        .collect(),
        IpNet::V6(n) if n.prefix_len() < 24 => vec![prefilter::V6_SHORT_WORD * 64],
        IpNet::V6(n) => {
            let o = n.network().octets();
            let top = u32::from_be_bytes([o[0], o[1], o[2], o[3]]);
            range(0, 32u8.saturating_sub(n.prefix_len()))
                .map(|i| prefilter::v6_bit((top + i).to_be_bytes()))
                .collect()
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

    #[test]
    fn prefilter_bits_are_counted_so_nested_prefixes_keep_theirs() {
        let mut f = PrefixFilter::default();
        let wide = t("10.0.0.0/8");
        let narrow = t("10.1.2.0/24");
        let inside = t("10.1.2.128/25");
        assert_eq!(f.add(&wide).len(), 256, "one /16 bit each");
        assert_eq!(f.add(&narrow).len(), 1, "its /24 bit");
        assert!(f.add(&inside).is_empty(), "the same /24 bit, counted twice");
        assert_eq!(f.remove(&wide).len(), 256);
        assert!(f.remove(&narrow).is_empty(), "the /25 keeps the /24 bit");
        let bit = prefilter::v4_long_bit([10, 1, 2, 3]);
        assert_ne!(f.words()[(bit / 64) as usize] & (1 << (bit % 64)), 0);
        assert_eq!(f.remove(&inside).len(), 1);
        assert!(f.words().iter().all(|w| *w == 0));
    }

    #[test]
    fn short_ipv6_prefixes_use_the_short_word() {
        let mut f = PrefixFilter::default();
        assert_eq!(
            f.add(&t("2001:db8::/16")),
            vec![(prefilter::V6_SHORT_WORD, 1)]
        );
        assert_eq!(f.add(&t("2001:db8::/30")).len(), 4);
        assert!(
            f.add(&t("2001:db8::/30")).is_empty(),
            "the same prefix twice counts once"
        );
    }
}
