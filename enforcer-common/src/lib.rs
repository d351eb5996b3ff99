//! The memory layout shared by the enforcer's XDP program and its userspace.
//!
//! Everything here is `#[repr(C)]` and read by both sides, so a change to any type is a change to
//! the pinned maps' layout: bump [`LAYOUT_VERSION`] with it. Userspace refuses to reuse pins whose
//! key or value sizes differ from these types.
#![no_std]

/// Bumped whenever a map's key, value, type or meaning changes.
///
/// v5: 32-byte block entries with an allowlist-overlap flag and a generation; per-CPU hit slots
/// ([`HitSlot`]); the prefix prefilter bitmap replaces the per-family "prefixes present" flags;
/// the data path's clock is `CLOCK_MONOTONIC_COARSE` plus the boot-time offset in [`map_names::CLOCK`].
pub const LAYOUT_VERSION: u32 = 5;

/// Names of the maps, as the kernel and the pin directory know them (at most 15 bytes).
pub mod map_names {
    /// Exact IPv4 sources (/32): hash map, `[u8; 4]` → [`BlockEntry`](super::BlockEntry).
    pub const BLOCK_V4: &str = "BLOCK_V4";
    /// Exact IPv6 sources (/128): hash map, `[u8; 16]` → [`BlockEntry`](super::BlockEntry).
    pub const BLOCK_V6: &str = "BLOCK_V6";
    /// IPv4 prefixes shorter than /32: LPM trie keyed by the address padded to 8 bytes (so the
    /// value's u64 counters are 8-byte aligned) → [`BlockEntry`](super::BlockEntry).
    pub const BLOCK_NET_V4: &str = "BLOCK_NET_V4";
    /// IPv6 prefixes shorter than /128: LPM trie → [`BlockEntry`](super::BlockEntry).
    pub const BLOCK_NET_V6: &str = "BLOCK_NET_V6";
    /// IPv4 allowlist prefixes (any length): LPM trie → [`AllowValue`](super::AllowValue).
    pub const ALLOW_V4: &str = "ALLOW_V4";
    /// IPv6 allowlist prefixes (any length): LPM trie → [`AllowValue`](super::AllowValue).
    pub const ALLOW_V6: &str = "ALLOW_V6";
    /// Per-CPU counters, one [`Stats`](super::Stats) slot per interface (ifindex % slots).
    pub const STATS: &str = "STATS";
    /// Array of u64 words: the prefix prefilter bitmap (see [`prefilter`](super::prefilter)).
    /// A source whose bit is clear cannot be inside any prefix block: the trie is skipped.
    pub const PREFIX_FILTER: &str = "PREFIX_FILTER";
    /// Per-CPU array of [`HitSlot`](super::HitSlot)s: where hot entries' hits are counted
    /// without writing a cache line shared with the other CPUs.
    pub const HITS: &str = "HITS";
    /// Array of one u64: `CLOCK_BOOTTIME − CLOCK_MONOTONIC` in ns, kept by the daemon (it changes
    /// only across suspend). The data path's "now" is the coarse monotonic clock plus this.
    pub const CLOCK: &str = "CLOCK";
    /// Per-CPU array of [`Unjudged`](super::Unjudged), one slot per interface like
    /// [`STATS`]: the frames the parser gave up on, by reason. Added within layout 5: a build
    /// that finds pins without it creates it (see [`ADDED`]).
    pub const UNJUDGED: &str = "UNJUDGED";

    /// Every map the layout had when first released, in a fixed order (see also [`ADDED`]).
    pub const ALL: [&str; 10] = [
        BLOCK_V4,
        BLOCK_V6,
        BLOCK_NET_V4,
        BLOCK_NET_V6,
        ALLOW_V4,
        ALLOW_V6,
        STATS,
        PREFIX_FILTER,
        HITS,
        CLOCK,
    ];

    /// Maps added to the layout after it was first released: pins made by an earlier build of
    /// the same layout lack them, and the loader creates them beside the others (nothing that
    /// build reads changes). Every other map must be there.
    pub const ADDED: [&str; 1] = [UNJUDGED];
}

/// The XDP program's name in the object file and in the kernel: the one for Ethernet links.
pub const PROGRAM_NAME: &str = "enforcer_xdp";

/// The XDP program for links whose frames start with the IP header (tun, WireGuard, IPIP, GRE,
/// SIT, PPP): the same lookups after a raw-IP parse.
pub const PROGRAM_NAME_IP: &str = "enforcer_xdp_ip";

/// Name of the read-only global that switches per-block hit counters on (1) or off (0).
///
/// On by default. Exists so that the cost of the counters can be measured: the verifier removes
/// the dead branch, so "off" is the program without counters, not a run-time test.
pub const GLOBAL_COUNT_BLOCK_HITS: &str = "COUNT_BLOCK_HITS";

/// Default capacity of each exact-address map (per family).
pub const DEFAULT_MAX_ADDRESSES: u32 = 1 << 20;
/// Default capacity of each prefix trie (per family).
pub const DEFAULT_MAX_PREFIXES: u32 = 100_000;
/// Default capacity of each allowlist trie (per family).
pub const DEFAULT_MAX_ALLOW: u32 = 16_384;
/// How many nested prefix blocks the data path walks when the longest match is shadow or
/// expired (a bounded loop for the verifier).
pub const MAX_NESTED_PREFIXES: u32 = 8;

/// Number of per-interface counter slots; an interface uses slot `ifindex % STATS_SLOTS`.
pub const STATS_SLOTS: u32 = 256;

/// [`BlockEntry::mode`]: matching packets are dropped.
pub const MODE_ENFORCE: u32 = 0;
/// [`BlockEntry::mode`]: matching packets are counted and passed (alert-only rollout).
pub const MODE_SHADOW: u32 = 1;

/// [`BlockEntry::flags`]: the entry overlaps an allowlist prefix, so a hit must consult the
/// allowlist. Entries without it skip that lookup (the daemon keeps the flag current).
pub const FLAG_ALLOW_OVERLAP: u8 = 1;

/// One block in a kernel map: 32 bytes, so an IPv4 address costs 96 bytes of kernel memory.
///
/// Counters: a hit is counted in the CPU's own [`HitSlot`] for the entry when it holds (or can
/// take) one, and only otherwise with atomic adds here; a slot's counts are added here when
/// another entry takes the slot over. The true count is this entry's plus every CPU's slot for
/// it (userspace sums them), so counts are exact, and current to the last packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockEntry {
    /// Kernel boot-clock nanoseconds (see [`map_names::CLOCK`]) after which the entry is treated
    /// as absent; 0 = never.
    pub expires_ns: u64,
    /// Packets counted in the entry itself.
    pub hit_packets: u64,
    /// Bytes counted in the entry itself.
    pub hit_bytes: u64,
    /// Boot-clock seconds of the last hit counted in the entry itself; 0 = none.
    pub last_hit_s: u32,
    /// [`MODE_ENFORCE`] or [`MODE_SHADOW`].
    pub mode: u8,
    /// [`FLAG_ALLOW_OVERLAP`].
    pub flags: u8,
    /// The entry's own prefix length (32/128 for single addresses). The data path uses it to look
    /// for a wider prefix when the longest match is shadow or expired.
    pub prefix_len: u8,
    /// Tells this entry's per-CPU hit slots from those of an earlier entry for the same target
    /// (never 0 in a written entry).
    pub generation: u8,
}

impl BlockEntry {
    /// Whether the entry is past its expiry at `now_ns`.
    #[inline(always)]
    pub const fn is_expired(&self, now_ns: u64) -> bool {
        self.expires_ns != 0 && now_ns >= self.expires_ns
    }
}

/// A CPU's hit counts for one block entry (see [`BlockEntry`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HitSlot {
    /// The entry's key: the address (IPv4 in the first four bytes, the rest zero), masked.
    pub key: [u8; 16],
    /// [`slot_tag`] of the entry; 0 = empty.
    pub tag: u32,
    /// Padding (zero).
    pub pad: u32,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
    /// Boot-clock nanoseconds of the last hit counted here.
    pub last_hit_ns: u64,
}

/// Number of [`HitSlot`]s per CPU (a power of two).
pub const HIT_SLOTS: u32 = 1 << HIT_SLOT_BITS;
/// log2 of [`HIT_SLOTS`].
pub const HIT_SLOT_BITS: u32 = 11;
/// A slot whose last hit is older than this may be taken over by another entry.
pub const HIT_SLOT_STALE_NS: u64 = 1_000_000_000;

/// What identifies an entry in a [`HitSlot`]: family, prefix length and generation (never 0).
#[inline(always)]
pub const fn slot_tag(v6: bool, prefix_len: u8, generation: u8) -> u32 {
    (1 << 24) | ((v6 as u32) << 16) | ((prefix_len as u32) << 8) | generation as u32
}

/// Whether a [`slot_tag`] is IPv6, and its prefix length.
#[inline(always)]
pub const fn slot_tag_parts(tag: u32) -> (bool, u8) {
    ((tag >> 16) & 1 == 1, (tag >> 8) as u8)
}

/// The slot index of an entry's key (the same function on both sides).
#[inline(always)]
pub fn hit_slot(key: &[u8; 16], tag: u32) -> u32 {
    let w = |i: usize| {
        u64::from_le_bytes([
            key[i],
            key[i + 1],
            key[i + 2],
            key[i + 3],
            key[i + 4],
            key[i + 5],
            key[i + 6],
            key[i + 7],
        ])
    };
    hit_slot_words([w(0), w(8)], tag)
}

/// [`hit_slot`] of a key given as its two little-endian 8-byte words (bytes 0..8 and 8..16):
/// the data path keeps keys in registers this way instead of byte by byte.
#[inline(always)]
pub const fn hit_slot_words(key: [u64; 2], tag: u32) -> u32 {
    let (lo, hi) = (key[0], key[1]);
    let h = (lo as u32)
        ^ ((lo >> 32) as u32).rotate_left(7)
        ^ (hi as u32).rotate_left(13)
        ^ ((hi >> 32) as u32).rotate_left(19)
        ^ (tag & 0xffff00);
    h.wrapping_mul(0x9E37_79B1) >> (32 - HIT_SLOT_BITS)
}

/// The prefix prefilter: bitmaps that tell the data path whether a prefix block may cover a
/// source, so that sources outside every blocked prefix usually skip the trie.
///
/// IPv4 has two: one bit per /16 set by prefixes shorter than /16 (a /8 sets 256), and one bit
/// per /24 set by prefixes of /16 and longer (a /16 sets 256). A set bit of the first kind means
/// a prefix covers the whole /16, so it never sends a source to the trie in vain; one of the
/// second kind does so only for a /25../31 block that shares the source's /24. IPv6 has one bit
/// per hash of a /32 (prefixes /24 and longer; a /24 sets 256) and one word that is non-zero
/// while a prefix shorter than /24 is blocked. The daemon sets every bit a prefix block covers
/// before writing it and clears a bit once no prefix block covers it.
pub mod prefilter {
    /// Words of the IPv4 /16 bitmap (prefixes shorter than /16).
    pub const V4_SHORT_WORDS: u32 = 1 << 10;
    /// First word of the IPv4 /24 bitmap (prefixes /16 and longer).
    pub const V4_LONG_FIRST: u32 = V4_SHORT_WORDS;
    /// Words of the IPv4 /24 bitmap.
    pub const V4_LONG_WORDS: u32 = 1 << 18;
    /// First word of the IPv6 bitmap.
    pub const V6_FIRST: u32 = V4_LONG_FIRST + V4_LONG_WORDS;
    /// log2 of the IPv6 bitmap's bits.
    pub const V6_BITS: u32 = 20;
    /// Words of the IPv6 bitmap.
    pub const V6_WORDS: u32 = 1 << (V6_BITS - 6);
    /// Index of the word that is non-zero when an IPv6 prefix shorter than /24 is blocked.
    pub const V6_SHORT_WORD: u32 = V6_FIRST + V6_WORDS;
    /// Total words in the map.
    pub const WORDS: u32 = V6_SHORT_WORD + 1;

    /// Global bit index of an IPv4 address's /16 in the short-prefix bitmap.
    #[inline(always)]
    pub const fn v4_short_bit(addr: [u8; 4]) -> u32 {
        ((addr[0] as u32) << 8) | addr[1] as u32
    }

    /// [`v4_short_bit`] of the address as a number (`u32::from_be_bytes` of its octets).
    #[inline(always)]
    pub const fn v4_short_bit_of(addr: u32) -> u32 {
        addr >> 16
    }

    /// Global bit index of an IPv4 address's /24 in the long-prefix bitmap.
    #[inline(always)]
    pub const fn v4_long_bit(addr: [u8; 4]) -> u32 {
        V4_LONG_FIRST * 64 + (((addr[0] as u32) << 16) | ((addr[1] as u32) << 8) | addr[2] as u32)
    }

    /// [`v4_long_bit`] of the address as a number (`u32::from_be_bytes` of its octets).
    #[inline(always)]
    pub const fn v4_long_bit_of(addr: u32) -> u32 {
        V4_LONG_FIRST * 64 + (addr >> 8)
    }

    /// Global bit index of an IPv6 address's /32 (hashed).
    #[inline(always)]
    pub const fn v6_bit(top32: [u8; 4]) -> u32 {
        v6_bit_of(u32::from_le_bytes(top32))
    }

    /// [`v6_bit`] of the first four address bytes read as a little-endian u32 (as the data path
    /// loads them).
    #[inline(always)]
    pub const fn v6_bit_of(top32_le: u32) -> u32 {
        V6_FIRST * 64 + (top32_le.wrapping_mul(0x9E37_79B1) >> (32 - V6_BITS))
    }
}

/// One block as userspace reads and writes it: the kernel entry with its per-CPU hit slots
/// folded in. The kernel map holds a [`BlockEntry`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockValue {
    /// Kernel boot-clock (`CLOCK_BOOTTIME`) nanoseconds after which the entry is treated as
    /// absent; 0 = never.
    pub expires_ns: u64,
    /// [`MODE_ENFORCE`] or [`MODE_SHADOW`].
    pub mode: u32,
    /// The entry's own prefix length (userspace sets it from the target when writing).
    pub prefix_len: u32,
    /// Packets this entry dropped (enforce) or would have dropped (shadow).
    pub hit_packets: u64,
    /// Bytes of those packets.
    pub hit_bytes: u64,
    /// `CLOCK_BOOTTIME` nanoseconds of the last hit; 0 = never hit.
    pub last_hit_ns: u64,
    /// The kernel entry's generation (0 when writing: a new entry whose counters are these).
    pub generation: u8,
}

impl BlockValue {
    /// A fresh entry with no hits.
    pub const fn new(expires_ns: u64, mode: u32) -> Self {
        Self {
            expires_ns,
            mode,
            prefix_len: 0,
            hit_packets: 0,
            hit_bytes: 0,
            last_hit_ns: 0,
            generation: 0,
        }
    }

    /// Whether the entry is past its expiry at `now_ns` (`CLOCK_BOOTTIME`).
    #[inline(always)]
    pub const fn is_expired(&self, now_ns: u64) -> bool {
        self.expires_ns != 0 && now_ns >= self.expires_ns
    }
}

/// Value of an allowlist entry. The data path only needs presence; `origin` is informational.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowValue {
    /// Who put it there (see [`ALLOW_ORIGIN_CONFIG`] and friends).
    pub origin: u32,
}

/// [`AllowValue::origin`]: the configuration file or the CLI.
pub const ALLOW_ORIGIN_CONFIG: u32 = 0;
/// [`AllowValue::origin`]: added automatically (loopback, the host's own addresses, gateways).
pub const ALLOW_ORIGIN_BUILTIN: u32 = 1;

/// A packet and byte count.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes (frame length as XDP sees it: for a multi-buffer frame, its first buffer).
    pub bytes: u64,
}

impl Counter {
    /// Adds one frame of `bytes` bytes.
    #[inline(always)]
    pub fn add(&mut self, bytes: u64) {
        self.packets += 1;
        self.bytes += bytes;
    }

    /// Sums two counters (userspace folds per-CPU values with this).
    pub const fn plus(self, other: Self) -> Self {
        Self {
            packets: self.packets + other.packets,
            bytes: self.bytes + other.bytes,
        }
    }
}

/// The data path's per-CPU counters for one interface slot.
///
/// Every frame counts in exactly one of `passed` or `dropped`. The other counters say why a frame
/// that matched something passed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Every frame the program saw: `passed + dropped`. The data path does not count it (one
    /// add less per frame); userspace fills it in with [`Stats::with_seen`] when it reads the
    /// map. Earlier builds of layout 5 counted it in the map, always equal to `passed + dropped`,
    /// so deriving it keeps their counts when the maps are reused across an upgrade.
    pub seen: Counter,
    /// Frames passed to the stack (including the three below).
    pub passed: Counter,
    /// Frames dropped by an enforced block.
    pub dropped: Counter,
    /// Frames that matched a block but passed because the allowlist covers their source.
    pub allowlisted: Counter,
    /// Frames that matched a shadow block and passed (what shadow mode would have dropped).
    pub shadow: Counter,
    /// Frames that matched only entries past their expiry (awaiting garbage collection).
    pub expired: Counter,
    /// Frames the parser gave up on (any [`unjudged`] reason: not IPv4/IPv6, too short, too
    /// many VLAN tags...); always passed. [`Unjudged`] says why.
    pub not_ip: Counter,
}

impl Stats {
    /// The counters with `seen` set to `passed + dropped` (whatever the map held there).
    pub const fn with_seen(self) -> Self {
        Self {
            seen: self.passed.plus(self.dropped),
            ..self
        }
    }

    /// Sums two sets of counters.
    pub const fn plus(self, o: Self) -> Self {
        Self {
            seen: self.seen.plus(o.seen),
            passed: self.passed.plus(o.passed),
            dropped: self.dropped.plus(o.dropped),
            allowlisted: self.allowlisted.plus(o.allowlisted),
            shadow: self.shadow.plus(o.shadow),
            expired: self.expired.plus(o.expired),
            not_ip: self.not_ip.plus(o.not_ip),
        }
    }
}

/// Why the parser gave up on a frame (an index into [`Unjudged::reasons`]). Such frames pass,
/// and count in [`Stats::not_ip`] and in their reason.
pub mod unjudged {
    /// Neither IPv4 nor IPv6: another EtherType (ARP, LLDP...), or on a raw-IP link a first
    /// nibble that is not 4 or 6.
    pub const NOT_IP: u32 = 0;
    /// More VLAN tags than the parser reads (it reads two: 802.1ad + 802.1Q, or two 802.1Q).
    pub const VLAN_DEPTH: u32 = 1;
    /// The frame ends before the IP header does.
    pub const TRUNCATED: u32 = 2;
    /// The headers run past the first buffer of a multi-buffer (jumbo) frame: the parser reads
    /// only the first buffer, where every driver puts at least the first few hundred bytes.
    pub const SPLIT_HEADERS: u32 = 3;
    /// Reasons in use (indexes below this); the value has room for [`SLOTS`].
    pub const REASONS: u32 = 4;
    /// Slots in [`Unjudged`](super::Unjudged): room for reasons added later without a layout
    /// change.
    pub const SLOTS: usize = 8;
    /// Names of the reasons, by index, as `stats` and the metrics show them.
    pub const NAMES: [&str; REASONS as usize] =
        ["not-ip", "vlan-depth", "truncated", "split-headers"];
}

/// The frames of one interface slot that the parser gave up on, by [`unjudged`] reason.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unjudged {
    /// Indexed by reason.
    pub reasons: [Counter; unjudged::SLOTS],
}

impl Unjudged {
    /// Sums two sets of counters.
    pub fn plus(self, o: Self) -> Self {
        let mut out = self;
        for (a, b) in out.reasons.iter_mut().zip(o.reasons) {
            *a = a.plus(b);
        }
        out
    }
}

/// Proves at compile time what the `Pod` impls below claim: each shared type is exactly the sum
/// of its fields (no padding byte the kernel could leave unwritten), and each field sits at the
/// offset the other side reads. A layout change fails the build here until its figures, and
/// [`LAYOUT_VERSION`], are updated together.
macro_rules! assert_layout {
    ($ty:ty, $size:expr, { $($field:ident: $offset:expr),+ $(,)? }) => {
        const _: () = {
            assert!(core::mem::size_of::<$ty>() == $size);
            $(assert!(core::mem::offset_of!($ty, $field) == $offset);)+
        };
    };
}

assert_layout!(BlockEntry, 32, {
    expires_ns: 0, hit_packets: 8, hit_bytes: 16, last_hit_s: 24,
    mode: 28, flags: 29, prefix_len: 30, generation: 31,
});
assert_layout!(HitSlot, 48, {
    key: 0, tag: 16, pad: 20, packets: 24, bytes: 32, last_hit_ns: 40,
});
assert_layout!(AllowValue, 4, { origin: 0 });
assert_layout!(Counter, 16, { packets: 0, bytes: 8 });
assert_layout!(Stats, 7 * 16, {
    seen: 0, passed: 16, dropped: 32, allowlisted: 48, shadow: 64, expired: 80, not_ip: 96,
});
assert_layout!(Unjudged, unjudged::SLOTS * 16, { reasons: 0 });

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are `#[repr(C)]`, `Copy`, made only of integers, with no padding bytes.
    unsafe impl aya::Pod for super::BlockEntry {}
    unsafe impl aya::Pod for super::HitSlot {}
    unsafe impl aya::Pod for super::AllowValue {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::Stats {}
    unsafe impl aya::Pod for super::Unjudged {}
}

#[cfg(test)]
mod tests {
    use super::{HIT_SLOT_BITS, hit_slot, hit_slot_words, prefilter, slot_tag};

    /// The prefilter bits as they were written over octets (layout v5): the word forms the data
    /// path uses must pick the same bits that userspace sets.
    #[test]
    fn the_word_forms_of_the_prefilter_bits_pick_the_same_bits_as_the_octet_forms() {
        let mut x: u32 = 0x9E37_79B9;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let a = x.to_be_bytes();
            let short = ((a[0] as u32) << 8) | a[1] as u32;
            let long = prefilter::V4_LONG_FIRST * 64
                + (((a[0] as u32) << 16) | ((a[1] as u32) << 8) | a[2] as u32);
            assert_eq!(prefilter::v4_short_bit(a), short);
            assert_eq!(prefilter::v4_long_bit(a), long);
            assert_eq!(
                prefilter::v4_short_bit_of(u32::from_be(u32::from_le_bytes(a))),
                short
            );
            assert_eq!(
                prefilter::v4_long_bit_of(u32::from_be(u32::from_le_bytes(a))),
                long
            );
            let v6 = prefilter::V6_FIRST * 64
                + (u32::from_le_bytes(a).wrapping_mul(0x9E37_79B1) >> (32 - prefilter::V6_BITS));
            assert_eq!(prefilter::v6_bit(a), v6);
            assert_eq!(prefilter::v6_bit_of(u32::from_le_bytes(a)), v6);
        }
    }

    /// The slot function as it was written over bytes (layout v5): the data path's word form
    /// must pick the same slot, or userspace would look for a CPU's counts in the wrong slot.
    fn by_bytes(key: &[u8; 16], tag: u32) -> u32 {
        let w = |i: usize| u32::from_le_bytes([key[i], key[i + 1], key[i + 2], key[i + 3]]);
        let h = w(0)
            ^ w(4).rotate_left(7)
            ^ w(8).rotate_left(13)
            ^ w(12).rotate_left(19)
            ^ (tag & 0xffff00);
        h.wrapping_mul(0x9E37_79B1) >> (32 - HIT_SLOT_BITS)
    }

    #[test]
    fn the_word_form_of_the_slot_function_picks_the_same_slot_as_the_byte_form() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for i in 0..10_000u32 {
            let mut key = [0u8; 16];
            for b in &mut key {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let tag = slot_tag(i % 2 == 0, (i % 129) as u8, (i % 256) as u8);
            let words = [
                u64::from_le_bytes(key[..8].try_into().unwrap()),
                u64::from_le_bytes(key[8..].try_into().unwrap()),
            ];
            assert_eq!(hit_slot(&key, tag), by_bytes(&key, tag));
            assert_eq!(hit_slot_words(words, tag), by_bytes(&key, tag));
        }
    }
}

/// Port and protocol scopes in the data path.
pub mod scope;
