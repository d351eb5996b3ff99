//! The memory layout shared by the enforcer's XDP program and its userspace.
//!
//! Everything here is `#[repr(C)]` and read by both sides, so a change to any type is a change to
//! the pinned maps' layout: bump [`LAYOUT_VERSION`] with it. Userspace refuses to reuse pins whose
//! key or value sizes differ from these types.
#![no_std]

/// Bumped whenever a map's key, value, type or meaning changes.
pub const LAYOUT_VERSION: u32 = 4;

/// Names of the maps, as the kernel and the pin directory know them (at most 15 bytes).
pub mod map_names {
    /// Exact IPv4 sources (/32): hash map, `[u8; 4]` → [`BlockValue`](super::BlockValue).
    pub const BLOCK_V4: &str = "BLOCK_V4";
    /// Exact IPv6 sources (/128): hash map, `[u8; 16]` → [`BlockValue`](super::BlockValue).
    pub const BLOCK_V6: &str = "BLOCK_V6";
    /// IPv4 prefixes shorter than /32: LPM trie keyed by the address padded to 8 bytes (so the
    /// value's u64 counters are 8-byte aligned) → [`BlockValue`](super::BlockValue).
    pub const BLOCK_NET_V4: &str = "BLOCK_NET_V4";
    /// IPv6 prefixes shorter than /128: LPM trie → [`BlockValue`](super::BlockValue).
    pub const BLOCK_NET_V6: &str = "BLOCK_NET_V6";
    /// IPv4 allowlist prefixes (any length): LPM trie → [`AllowValue`](super::AllowValue).
    pub const ALLOW_V4: &str = "ALLOW_V4";
    /// IPv6 allowlist prefixes (any length): LPM trie → [`AllowValue`](super::AllowValue).
    pub const ALLOW_V6: &str = "ALLOW_V6";
    /// Per-CPU counters, one [`Stats`](super::Stats) slot per interface (ifindex % slots).
    pub const STATS: &str = "STATS";
    /// Array of two u32 flags, [IPv4, IPv6]: 1 if the family's prefix trie may hold entries.
    /// Lets the data path skip the trie lookup (a helper call) when no prefix is blocked.
    pub const PREFIX_FLAGS: &str = "PREFIX_FLAGS";

    /// Every map, in a fixed order.
    pub const ALL: [&str; 8] = [
        BLOCK_V4,
        BLOCK_V6,
        BLOCK_NET_V4,
        BLOCK_NET_V6,
        ALLOW_V4,
        ALLOW_V6,
        STATS,
        PREFIX_FLAGS,
    ];
}

/// The XDP program's name in the object file and in the kernel.
pub const PROGRAM_NAME: &str = "enforcer_xdp";

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

/// [`BlockValue::mode`]: matching packets are dropped.
pub const MODE_ENFORCE: u32 = 0;
/// [`BlockValue::mode`]: matching packets are counted and passed (alert-only rollout).
pub const MODE_SHADOW: u32 = 1;

/// One block, as the data path sees it.
///
/// The hit counters live in the entry itself and are bumped with atomic adds only when the
/// entry decides a packet's fate, so the miss path (legitimate traffic) pays nothing for them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockValue {
    /// `CLOCK_BOOTTIME` nanoseconds after which the entry is treated as absent; 0 = never.
    pub expires_ns: u64,
    /// [`MODE_ENFORCE`] or [`MODE_SHADOW`].
    pub mode: u32,
    /// The entry's own prefix length (32/128 for single addresses). Userspace sets it when it
    /// writes the entry; the data path uses it to look for a wider prefix when the longest match
    /// is shadow or expired.
    pub prefix_len: u32,
    /// Packets this entry dropped (enforce) or would have dropped (shadow).
    pub hit_packets: u64,
    /// Bytes of those packets.
    pub hit_bytes: u64,
    /// `CLOCK_BOOTTIME` nanoseconds of the last hit; 0 = never hit.
    pub last_hit_ns: u64,
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
    /// Bytes (frame length as XDP sees it).
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
/// Every frame counts in `seen` and in exactly one of `passed` or `dropped`. The other counters
/// say why a frame that matched something passed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Every frame the program saw.
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
    /// Frames that were not IPv4/IPv6 or too short to parse; always passed.
    pub not_ip: Counter,
}

impl Stats {
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

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are `#[repr(C)]`, `Copy`, made only of integers, with no padding bytes.
    unsafe impl aya::Pod for super::BlockValue {}
    unsafe impl aya::Pod for super::AllowValue {}
    unsafe impl aya::Pod for super::Counter {}
    unsafe impl aya::Pod for super::Stats {}
}
