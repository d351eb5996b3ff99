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
///
/// v6: prefix blocks live in hash maps keyed by (masked address, length) instead of LPM tries;
/// the lengths in use ([`map_names::PREFIX_LENS`]) and the block filter
/// ([`map_names::BLOCK_FILTER`], in front of every block hash) replace the prefix prefilter.
pub const LAYOUT_VERSION: u32 = 6;

/// Names of the maps, as the kernel and the pin directory know them (at most 15 bytes).
pub mod map_names {
    /// Exact IPv4 sources (/32): hash map, `[u8; 4]` → [`BlockEntry`](super::BlockEntry).
    pub const BLOCK_V4: &str = "BLOCK_V4";
    /// Exact IPv6 sources (/128): hash map, `[u8; 16]` → [`BlockEntry`](super::BlockEntry).
    pub const BLOCK_V6: &str = "BLOCK_V6";
    /// IPv4 prefixes shorter than /32: hash map keyed by [`net_key_v4`](super::net_key_v4)
    /// (the masked address and the length in 8 bytes) → [`BlockEntry`](super::BlockEntry).
    pub const BLOCK_NET_V4: &str = "BLOCK_NET_V4";
    /// IPv6 prefixes shorter than /128: hash map keyed by [`net_key_v6`](super::net_key_v6)
    /// (24 bytes) → [`BlockEntry`](super::BlockEntry).
    pub const BLOCK_NET_V6: &str = "BLOCK_NET_V6";
    /// IPv4 allowlist prefixes (any length): LPM trie → [`AllowValue`](super::AllowValue).
    pub const ALLOW_V4: &str = "ALLOW_V4";
    /// IPv6 allowlist prefixes (any length): LPM trie → [`AllowValue`](super::AllowValue).
    pub const ALLOW_V6: &str = "ALLOW_V6";
    /// Per-CPU counters, one [`Stats`](super::Stats) slot per interface (ifindex % slots).
    pub const STATS: &str = "STATS";
    /// Array of u64 words (mmapable): which prefix lengths are in use where (see
    /// [`lookup`](super::lookup)). The data path looks a source up at those lengths only.
    pub const PREFIX_LENS: &str = "PREFIX_LENS";
    /// Array of u64 words (mmapable): one bit per hashed block key, exact addresses and
    /// prefixes alike (see [`lookup`](super::lookup)). A key whose bit is clear is in no block
    /// map, so its hash lookup is skipped.
    pub const BLOCK_FILTER: &str = "BLOCK_FILTER";
    /// Per-CPU array of [`HitSlot`](super::HitSlot)s: where hot entries' hits are counted
    /// without writing a cache line shared with the other CPUs.
    pub const HITS: &str = "HITS";
    /// Array of one u64: `CLOCK_BOOTTIME − CLOCK_MONOTONIC` in ns, kept by the daemon (it changes
    /// only across suspend). The data path's "now" is the coarse monotonic clock plus this.
    pub const CLOCK: &str = "CLOCK";
    /// Per-CPU array of [`Unjudged`](super::Unjudged), one slot per interface like
    /// [`STATS`]: the frames the parser gave up on, by reason.
    pub const UNJUDGED: &str = "UNJUDGED";
    /// Flood detection (see [`flood`](super::flood)), not pinned: state of the program that
    /// made them, gone with it. Per-CPU count-min sketch, an array of
    /// [`SketchBlock`](super::flood::SketchBlock)s.
    pub const FLOOD_SKETCH: &str = "FLOOD_SKETCH";
    /// Flood detection: LRU hash of the sources counted exactly.
    pub const FLOOD_TRACK: &str = "FLOOD_TRACK";
    /// Flood detection: ring buffer of [`FloodReport`](super::flood::FloodReport)s.
    pub const FLOOD_EVENTS: &str = "FLOOD_EVENTS";
    /// Flood detection: per-CPU [`FloodStats`](super::flood::FloodStats), one slot.
    pub const FLOOD_STATS: &str = "FLOOD_STATS";
    /// Port and protocol scopes (issue 22): hash map,
    /// [`ScopeKey`](super::scope::ScopeKey) → [`ScopeValue`](super::scope::ScopeValue), one entry
    /// per (scoped block, protocol).
    pub const SCOPES: &str = "SCOPES";
    /// Per-CPU [`Counter`](super::Counter)s, one slot per interface like [`STATS`]: frames from
    /// blocked sources passed as replies to connections the host opened.
    pub const REPLY_PASSED: &str = "REPLY_PASSED";
    /// Array of one u64: non-zero while any block entry is scoped. The data path reads a
    /// packet's transport header only then, so that without scoped blocks nothing pays for it.
    pub const SCOPED: &str = "SCOPED";

    /// Every map the layout had when first released, in a fixed order (see also [`ADDED`]).
    pub const ALL: [&str; 12] = [
        BLOCK_V4,
        BLOCK_V6,
        BLOCK_NET_V4,
        BLOCK_NET_V6,
        ALLOW_V4,
        ALLOW_V6,
        STATS,
        PREFIX_LENS,
        HITS,
        CLOCK,
        UNJUDGED,
        BLOCK_FILTER,
    ];

    /// Maps added to the layout after it was first released: pins made by an earlier build of
    /// the same layout lack them, and the loader creates them beside the others (nothing that
    /// build reads changes). Every other map must be there.
    pub const ADDED: [&str; 3] = [SCOPES, SCOPED, REPLY_PASSED];
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
    /// [`FLAG_ALLOW_OVERLAP`], [`scope::FLAG_SCOPED`].
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

/// How the data path finds the blocks that cover a source without walking a trie (layout 6).
///
/// **Keys.** An exact address is keyed by its bytes ([`map_names::BLOCK_V4`]); a prefix by its
/// masked address and its length ([`net_key_v4`], [`net_key_v6`]) in a hash map per family.
///
/// **Lengths in use** ([`map_names::PREFIX_LENS`]). IPv4: one word per /16, whose bit `l` says
/// that a prefix of length `l` covers that /16 (`l` ≤ 16: a /8 sets its bit in 256 words) or
/// lies inside it (`l` > 16). IPv6: two words per hashed /32 (bit `l − 32` of the first for
/// lengths 32..=95, bit `l − 96` of the second for 96..=127), and one word for lengths below /32
/// anywhere. The data path reads its words and looks the source up at each length set there,
/// longest first: the cost depends on how many lengths share the source's /16 (or /32), not on
/// how many prefixes there are.
///
/// **Block filter** ([`map_names::BLOCK_FILTER`]). One bit per hashed key ([`filter_bit`]), exact
/// addresses and prefixes alike: a key whose bit is clear is in no block map, and its hash
/// lookup (a jhash and a bucket walk) is skipped for an inlined array read. With 2^25 bits
/// (4 MiB) and one hash, 1M keys leave 1 − e^(−2^20/2^25) ≈ 3.1% of other keys' bits set.
///
/// The daemon sets every bit an entry needs before it writes the entry and clears a bit only
/// after the last entry needing it is gone (it counts them per bit), so neither structure can
/// hide a block; a stale bit costs a lookup, never a verdict.
pub mod lookup {
    /// Words of the IPv4 part: one per /16.
    pub const V4_WORDS: u32 = 1 << 16;
    /// log2 of the IPv6 /32 slots.
    pub const V6_SLOT_BITS: u32 = 16;
    /// First word of the IPv6 slots (two words each).
    pub const V6_FIRST: u32 = V4_WORDS;
    /// The word of IPv6 lengths below /32 (bit `l`).
    pub const V6_SHORT: u32 = V6_FIRST + 2 * (1 << V6_SLOT_BITS);
    /// Words of [`PREFIX_LENS`](super::map_names::PREFIX_LENS).
    pub const LENS_WORDS: u32 = V6_SHORT + 1;
    /// log2 of the block filter's bits.
    pub const FILTER_BITS_LOG: u32 = 25;
    /// Words of [`BLOCK_FILTER`](super::map_names::BLOCK_FILTER).
    pub const FILTER_WORDS: u32 = 1 << (FILTER_BITS_LOG - 6);

    /// The IPv4 word of an address given as a number (`u32::from_be_bytes` of its octets).
    #[inline(always)]
    pub const fn v4_word(addr: u32) -> u32 {
        addr >> 16
    }

    /// The first of the two words of an IPv6 address's /32, from its first four bytes read as a
    /// little-endian u32 (as the data path loads them).
    #[inline(always)]
    pub const fn v6_words(top32_le: u32) -> u32 {
        V6_FIRST + 2 * (top32_le.wrapping_mul(0x9E37_79B1) >> (32 - V6_SLOT_BITS))
    }

    /// The filter bit of a key: IPv4 as the masked address read little-endian and 0, IPv6 as
    /// the masked address's two little-endian words; `len` the key's length (32 or 128 for an
    /// exact address).
    #[inline(always)]
    pub const fn filter_bit(a: u64, b: u64, len: u32) -> u32 {
        let h = a.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F).rotate_left(21)
            ^ ((len as u64 + 1).wrapping_mul(0x1656_67B1_9E37_79F9)).rotate_left(42);
        let h = (h ^ (h >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (h >> (64 - FILTER_BITS_LOG)) as u32
    }
}

/// The IPv4 prefix map's key: the masked address's four bytes, the length, three zero bytes;
/// as the u64 the data path builds (the address read little-endian in the low half).
#[inline(always)]
pub const fn net_key_v4(masked_le: u32, len: u8) -> u64 {
    masked_le as u64 | (len as u64) << 32
}

/// The IPv6 prefix map's key: the masked address's two little-endian words and the length.
#[inline(always)]
pub const fn net_key_v6(masked: [u64; 2], len: u8) -> [u64; 3] {
    [masked[0], masked[1], len as u64]
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
    /// The entry's port and protocol scopes; `None` for the whole address.
    pub scopes: Option<scope::Scopes>,
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
            scopes: None,
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
assert_layout!(flood::FloodConfig, 72, {
    enabled: 0, hold: 4, window_ns: 8, limit: 16, suspect: 40, reports_per_window: 64, pad: 68,
});
assert_layout!(flood::SketchBlock, 64, { start_ns: 0, cells: 8 });
assert_layout!(flood::FloodTrack, 32, { window: 0, count: 8, reported: 24, held: 28 });
assert_layout!(flood::FloodReport, 56, {
    addr: 0, family: 16, class: 20, count: 24, limit: 28, elapsed_ns: 32, window_ns: 40,
    at_ns: 48,
});
assert_layout!(scope::ScopeKey, 24, { addr: 0, prefix_len: 16, v6: 17, proto: 18, pad: 19 });
assert_layout!(scope::PortRange, 4, { lo: 0, hi: 2 });
assert_layout!(scope::ScopeValue, 4 + 4 * scope::MAX_PORT_RANGES, {
    all: 0, count: 1, pad: 2, ranges: 4,
});
assert_layout!(flood::FloodStats, 48, {
    suspects: 0, reports: 8, capped: 16, lost: 24, held: 32, over: 40,
});

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are `#[repr(C)]`, `Copy`, made only of integers, with no padding bytes.
    unsafe impl aya::Pod for super::BlockEntry {}
    unsafe impl aya::Pod for super::HitSlot {}
    unsafe impl aya::Pod for super::AllowValue {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::Stats {}
    unsafe impl aya::Pod for super::Unjudged {}
    unsafe impl aya::Pod for super::flood::FloodConfig {}
    unsafe impl aya::Pod for super::flood::FloodTrack {}
    unsafe impl aya::Pod for super::flood::FloodReport {}
    unsafe impl aya::Pod for super::flood::FloodStats {}
    unsafe impl aya::Pod for super::scope::ScopeKey {}
    unsafe impl aya::Pod for super::scope::ScopeValue {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;

    use super::{HIT_SLOT_BITS, hit_slot, hit_slot_words, lookup, slot_tag};

    /// The share of filter bits 1M keys set, as the data path's lookups meet them: the rate of
    /// false positives a source that is not blocked sees.
    fn filter_fill(keys: impl Iterator<Item = (u64, u64, u32)>) -> f64 {
        let mut bits = vec![0u64; lookup::FILTER_WORDS as usize];
        for (a, b, len) in keys {
            let bit = lookup::filter_bit(a, b, len);
            bits[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        let set: u32 = bits.iter().map(|w| w.count_ones()).sum();
        f64::from(set) / f64::from(1u32 << lookup::FILTER_BITS_LOG)
    }

    /// 1M keys fill ≈ 1 − e^(−1/32) = 3.08% of the bits whatever their structure: consecutive
    /// IPv4 addresses, addresses in one IPv6 /64, /24s side by side, random IPv6 addresses.
    #[test]
    fn a_million_keys_of_any_shape_set_about_three_percent_of_the_filter_bits() {
        let n = 1u64 << 20;
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let random: vec::Vec<(u64, u64, u32)> = (0..n).map(|_| (next(), next(), 128)).collect();
        let shapes = [
            filter_fill((0..n).map(|i| (u64::from((0x0a00_0000 + i as u32).swap_bytes()), 0, 32))),
            filter_fill((0..n).map(|i| (0xb80d_0120, i.swap_bytes(), 128))),
            filter_fill((0..n).map(|i| (u64::from(((i as u32) << 8).swap_bytes()), 0, 24))),
            filter_fill(random.into_iter()),
        ];
        for fill in shapes {
            assert!((0.0295..0.0322).contains(&fill), "{fill}");
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

/// Flood detection in the data path.
pub mod flood;
