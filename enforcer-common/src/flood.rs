//! Flood detection in the data path (issue 23): the layout of its configuration, maps and
//! reports, shared by the XDP program and the daemon.
//!
//! **Per packet** (only packets the block maps let through, and only when the daemon loaded
//! the program with detection on): the source is counted, per [class](class), in this CPU's
//! count-min sketch ([`map_names::FLOOD_SKETCH`](super::map_names::FLOOD_SKETCH):
//! [`SKETCH_BLOCKS`] blocks of two rows of [`SKETCH_ROW`] counts, each block with the start of
//! the window it counts in, reset lazily when a packet of a later window finds it). One hash
//! of the source picks a block and a cell in each of its rows: no hash map is touched, and a
//! class costs one lookup of a 64-byte array value on this CPU. The window's start
//! in the block also spares a division per packet (only a block's reset divides).
//!
//! **Suspects only**: a source whose estimate on this CPU reaches its class's
//! [`FloodConfig::suspect`] level is counted exactly, over every CPU, in a bounded LRU hash
//! ([`map_names::FLOOD_TRACK`], [`TRACK_ENTRIES`] entries): the estimate at the crossing, then
//! each packet. A source spread thin (a spoofed flood from many addresses) never reaches the
//! level, so it neither takes memory nor makes reports.
//!
//! **Report**: the first time in a window a tracked source's count passes its class's limit, a
//! [`FloodReport`] goes to the ring buffer ([`map_names::FLOOD_EVENTS`]): at most one per source
//! and class per window, and at most [`FloodConfig::reports_per_window`] in all per window
//! (the rest are counted in [`FloodStats::capped`]; a full ring buffer in
//! [`FloodStats::lost`]). The daemon makes each report a block of source `flood` through its
//! policy, like any other request.
//!
//! **Hold** ([`FloodConfig::hold`]): until the block is in place, packets of a source over its
//! limit in the current window are dropped (a fixed-window limit at the threshold), unless the
//! allowlist covers the source. The daemon turns it on only when `flood` blocks are enforced:
//! in shadow mode nothing is dropped, and the over-limit packets are counted
//! ([`FloodStats::over`]).

/// The classes a packet is counted in (an index into the limits, per family).
pub mod class {
    /// Every packet.
    pub const PACKETS: u32 = 0;
    /// TCP SYN without ACK (a connection attempt).
    pub const SYN: u32 = 1;
    /// ICMP (IPv4) or ICMPv6.
    pub const ICMP: u32 = 2;
    /// Classes per family.
    pub const COUNT: usize = 3;
    /// Names, by index, as the daemon shows them.
    pub const NAMES: [&str; COUNT] = ["packets", "syn", "icmp"];
}

/// Limits are indexed `family * class::COUNT + class`, family 0 = IPv4, 1 = IPv6.
pub const LIMITS: usize = 2 * class::COUNT;

/// Blocks of the sketch per CPU (a power of two): 2,048 blocks of 64 bytes, 128 KiB per CPU.
pub const SKETCH_BLOCKS: u32 = 1 << SKETCH_BLOCK_BITS;
/// log2 of [`SKETCH_BLOCKS`].
pub const SKETCH_BLOCK_BITS: u32 = 11;
/// Cells per row in a block.
pub const SKETCH_ROW: usize = 7;

/// One value of [`map_names::FLOOD_SKETCH`](super::map_names::FLOOD_SKETCH): two rows of
/// counts, and the window they count in. A source's cells for a class are one cell in each row
/// of one block ([`sketch_slot`]), so a class costs a packet one array lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SketchBlock {
    /// The start of the window the counts are for (boot clock, ns; a multiple of the window):
    /// a packet of a later window sets it and counts from zero.
    pub start_ns: u64,
    /// Row 0, then row 1.
    pub cells: [u32; 2 * SKETCH_ROW],
}

/// Where a source's count for a class lies: the block, and the cell in each row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SketchSlot {
    /// The index of the [`SketchBlock`].
    pub block: u32,
    /// The cell in row 0 (`0..SKETCH_ROW`) and in row 1 (`SKETCH_ROW..2 * SKETCH_ROW`).
    pub cells: [usize; 2],
}

/// The slot of a source's words for `family_class`: one multiply-xor hash, its top bits the
/// block, two other 12-bit fields the cells (scaled into a row: `x * 7 >> 12`, no division).
#[inline(always)]
pub const fn sketch_slot(a: u64, b: u64, family_class: u32) -> SketchSlot {
    let h = a.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F).rotate_left(23)
        ^ ((family_class as u64 + 1).wrapping_mul(0x1656_67B1_9E37_79F9)).rotate_left(41);
    let h = (h ^ (h >> 29)).wrapping_mul(0x94D0_49BB_1331_11EB);
    SketchSlot {
        block: (h >> (64 - SKETCH_BLOCK_BITS)) as u32,
        cells: [row_cell(h >> 20), SKETCH_ROW + row_cell(h >> 32)],
    }
}

/// 12 bits of a hash scaled into `0..SKETCH_ROW`.
#[inline(always)]
const fn row_cell(bits: u64) -> usize {
    (((bits & 0xfff) * SKETCH_ROW as u64) >> 12) as usize
}

/// Sources counted exactly at once (an LRU: the least recently seen goes first).
pub const TRACK_ENTRIES: u32 = 4096;
/// Bytes of the ring buffer (a power-of-two number of pages).
pub const EVENTS_BYTES: u32 = 64 * 1024;

/// The detector's configuration: a read-only global of the program ([`GLOBAL_FLOOD`]), set by
/// the daemon at load time, so detection switched off is pruned by the verifier, not tested per
/// packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodConfig {
    /// 1: detect; 0: the program does not look.
    pub enabled: u32,
    /// 1: drop a source's packets over its limit in the current window (see the module).
    pub hold: u32,
    /// The window, in ns (boot clock, as the data path reads it).
    pub window_ns: u64,
    /// Packets per window above which a source is reported; 0 = the class is not checked.
    pub limit: [u32; LIMITS],
    /// The per-CPU estimate at which a source is counted exactly (at most its limit).
    pub suspect: [u32; LIMITS],
    /// Reports per window, over every source.
    pub reports_per_window: u32,
    /// Padding (zero).
    pub pad: u32,
}

/// Name of the read-only global holding the [`FloodConfig`].
pub const GLOBAL_FLOOD: &str = "FLOOD";

/// The key of [`map_names::FLOOD_TRACK`](super::map_names::FLOOD_TRACK): the source's two
/// little-endian address words (IPv4 in the low half of the first) and its family (0 or 1).
pub type TrackKey = [u64; 3];

/// One tracked source: its exact counts in the current window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodTrack {
    /// The start of the window the counts are for (boot clock, ns).
    pub window: u64,
    /// Packets by class.
    pub count: [u32; 4],
    /// Bit per class: reported in this window.
    pub reported: u32,
    /// Packets dropped by the hold, all windows.
    pub held: u32,
}

/// A source over its limit, as the ring buffer carries it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodReport {
    /// The source's address bytes (IPv4 in the first four).
    pub addr: [u8; 16],
    /// 0 = IPv4, 1 = IPv6.
    pub family: u32,
    /// The [`class`] over its limit.
    pub class: u32,
    /// Packets counted in the window when the limit was passed.
    pub count: u32,
    /// The limit (packets per window).
    pub limit: u32,
    /// Boot-clock ns from the window's start to the report: `count` packets arrived within it.
    pub elapsed_ns: u64,
    /// The window's length (ns).
    pub window_ns: u64,
    /// When the limit was passed (boot clock, ns, read precisely, unlike the data path's
    /// coarse `now`), for the time from there to the block.
    pub at_ns: u64,
}

/// The detector's per-CPU counters (one slot).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodStats {
    /// Sources that started being counted exactly (per CPU, per window).
    pub suspects: u64,
    /// Reports written to the ring buffer.
    pub reports: u64,
    /// Reports not sent: the window's cap was reached.
    pub capped: u64,
    /// Reports not sent: the ring buffer was full.
    pub lost: u64,
    /// Packets dropped by the hold.
    pub held: u64,
    /// Packets over their source's limit that passed (hold off, or the source allowlisted).
    pub over: u64,
}

impl FloodStats {
    /// Sums two sets of counters.
    pub const fn plus(self, o: Self) -> Self {
        Self {
            suspects: self.suspects + o.suspects,
            reports: self.reports + o.reports,
            capped: self.capped + o.capped,
            lost: self.lost + o.lost,
            held: self.held + o.held,
            over: self.over + o.over,
        }
    }
}

impl FloodConfig {
    /// Detection off (what the program holds unless the daemon sets it).
    pub const OFF: Self = Self {
        enabled: 0,
        hold: 0,
        window_ns: 1_000_000_000,
        limit: [0; LIMITS],
        suspect: [0; LIMITS],
        reports_per_window: 0,
        pad: 0,
    };
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{collections::HashSet, vec, vec::Vec};

    use super::{SKETCH_BLOCKS, SKETCH_ROW, SketchBlock, sketch_slot};

    /// One CPU's sketch as the data path counts in it (one window).
    struct Sketch(Vec<SketchBlock>);

    impl Sketch {
        fn new() -> Self {
            Self(vec![SketchBlock::default(); SKETCH_BLOCKS as usize])
        }

        /// Counts one packet; returns the estimate.
        fn count(&mut self, words: [u64; 2], family_class: u32) -> u32 {
            let slot = sketch_slot(words[0], words[1], family_class);
            let block = &mut self.0[slot.block as usize];
            slot.cells
                .map(|c| {
                    block.cells[c] += 1;
                    block.cells[c]
                })
                .into_iter()
                .min()
                .unwrap()
        }
    }

    fn v6(i: u64) -> [u64; 2] {
        [0xb80d_0120, i.wrapping_mul(0x9E37_79B9).to_be() ^ i]
    }

    #[test]
    fn a_sources_cells_lie_one_in_each_row_of_one_block() {
        for i in 0..100_000u64 {
            for (words, family_class) in [([i, 0], 0), (v6(i), 4)] {
                let slot = sketch_slot(words[0], words[1], family_class);
                assert!(slot.block < SKETCH_BLOCKS, "{slot:?}");
                assert!(slot.cells[0] < SKETCH_ROW, "{slot:?}");
                assert!(
                    (SKETCH_ROW..2 * SKETCH_ROW).contains(&slot.cells[1]),
                    "{slot:?}"
                );
            }
        }
    }

    /// The lab's spread-thin flood (100k IPv6 sources, 2 packets each, on one CPU): no
    /// estimate gets near a suspect level (the lab's is 1000), and every estimate is at least
    /// the source's count. The sources of a /16 (consecutive IPv4 addresses) spread over the
    /// blocks as random ones would (1 − e^(−32) of them: all but none).
    #[test]
    fn a_flood_spread_over_many_sources_lifts_no_estimate_far() {
        let mut sketch = Sketch::new();
        let mut highest = 0;
        for _ in 0..2 {
            for i in 0..100_000 {
                highest = highest.max(sketch.count(v6(i), 3));
            }
        }
        assert!(
            highest < 64,
            "a spread flood lifted an estimate to {highest}"
        );
        let attacker = v6(7);
        let before = sketch.count(attacker, 3);
        assert!(before >= 3, "under-counted: {before}");
        let after = (0..1000).map(|_| sketch.count(attacker, 3)).last().unwrap();
        assert!((1003..1003 + 64).contains(&after), "{after}");

        let blocks: HashSet<u32> = (0..65_536u64)
            .map(|i| sketch_slot((0xc633_0000 | i).swap_bytes() >> 32, 0, 0).block)
            .collect();
        assert_eq!(
            blocks.len(),
            SKETCH_BLOCKS as usize,
            "a /16 leaves blocks empty"
        );
    }
}
