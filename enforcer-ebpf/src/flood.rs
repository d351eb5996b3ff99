//! Flood detection (issue 23): counts the sources of the frames the block maps let through and
//! reports those over their limit; see [`enforcer_common::flood`] for the scheme.
//!
//! One entry point, [`holds`], called by `run` for every frame that passes. With detection off
//! (the read-only [`FLOOD`] global the daemon sets at load) the verifier prunes all of it.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::bpf_ktime_get_boot_ns,
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use enforcer_common::flood::{
    EVENTS_BYTES, FloodConfig, FloodReport, FloodStats, FloodTrack, LIMITS, SKETCH_BLOCKS,
    SKETCH_ROW, SketchBlock, TRACK_ENTRIES, TrackKey, class, sketch_slot,
};

use crate::{
    frame::{Frame, Peek},
    load, ptr_at,
};

#[map(name = "FLOOD_SKETCH")]
static FLOOD_SKETCH: PerCpuArray<SketchBlock> = PerCpuArray::with_max_entries(SKETCH_BLOCKS, 0);
#[map(name = "FLOOD_TRACK")]
static FLOOD_TRACK: LruHashMap<TrackKey, FloodTrack> =
    LruHashMap::with_max_entries(TRACK_ENTRIES, 0);
#[map(name = "FLOOD_EVENTS")]
static FLOOD_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);
#[map(name = "FLOOD_STATS")]
static FLOOD_STATS: PerCpuArray<FloodStats> = PerCpuArray::with_max_entries(1, 0);

/// The detector's configuration, set at load time (read-only: the verifier folds it).
#[unsafe(no_mangle)]
static FLOOD: FloodConfig = FloodConfig::OFF;

/// `[window's start, reports sent in it]`: the global cap on reports per window (every CPU).
#[unsafe(no_mangle)]
static mut FLOOD_WINDOW: [u64; 2] = [0; 2];

const IPPROTO_TCP: u8 = 6;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// A source as the detector keys it: the address words and the family (0 IPv4, 1 IPv6).
pub(crate) struct FloodSource {
    pub words: [u64; 2],
    pub family: u32,
}

macro_rules! conf {
    ($field:ident) => {
        // SAFETY: a read-only global, read whole (the verifier knows its value).
        unsafe { core::ptr::read_volatile(&raw const FLOOD.$field) }
    };
    ($field:ident[$i:expr]) => {{
        // A bounds check the verifier follows (it does not follow `%`); never out of bounds.
        let i: usize = $i;
        if i < LIMITS {
            // SAFETY: as above; the index was checked.
            unsafe { core::ptr::read_volatile(&raw const FLOOD.$field[i]) }
        } else {
            0
        }
    }};
}

/// Counts a frame that the block maps let through; returns whether the hold drops it (its
/// source is over a limit in this window, hold is on, and the allowlist does not cover it).
#[inline(always)]
pub(crate) fn holds(
    ctx: &XdpContext,
    frame: &mut Frame,
    source: &FloodSource,
    allowed: impl FnOnce() -> bool,
) -> bool {
    if conf!(enabled) == 0 {
        return false;
    }
    let window_ns = conf!(window_ns);
    if window_ns == 0 {
        return false;
    }
    let base = source.family as usize * class::COUNT;
    let now = crate::cached_now();
    // Per class (every packet, then the frame's other class if any): 0 = not suspect on this
    // CPU, else its estimate on this CPU.
    let mut est = [0u32; 2];
    let mut start = 0;
    if conf!(limit[base]) != 0 {
        let (e, s) = sketch(source, base as u32, now, window_ns);
        start = s;
        if e >= conf!(suspect[base]) {
            est[0] = e;
        }
    }
    let other = other_class(ctx, frame, base);
    if other != class::PACKETS && conf!(limit[base + other as usize]) != 0 {
        let index = base + other as usize;
        let (e, s) = sketch(source, index as u32, now, window_ns);
        start = s;
        if e >= conf!(suspect[index]) {
            est[1] = e;
        }
    }
    if est == [0, 0] {
        return false;
    }
    track(source, [class::PACKETS, other], est, start, now, allowed)
}

/// Counts the source in this CPU's sketch for `index` (family and class): one block, a cell
/// in each of its rows. Returns its estimate in this window (the smaller of its two counts)
/// and the window's start.
#[inline(always)]
fn sketch(source: &FloodSource, index: u32, now: u64, window_ns: u64) -> (u32, u64) {
    let slot = sketch_slot(source.words[0], source.words[1], index);
    let Some(block) = FLOOD_SKETCH.get_ptr_mut(slot.block) else {
        // Cannot happen (the block is below the array's length): not a suspect.
        return (0, 0);
    };
    // SAFETY: a per-CPU array value is this CPU's alone while the program runs here.
    let block = unsafe { &mut *block };
    // A later window starts from zero. An earlier one cannot come on one CPU (its clock never
    // goes back): were it to, it would count in the block's, so nothing counts less.
    if now >= block.start_ns + window_ns {
        block.start_ns = now - now % window_ns;
        block.cells = [0; 2 * SKETCH_ROW];
    }
    let mut est = u32::MAX;
    for cell in slot.cells {
        if let Some(c) = block.cells.get_mut(cell) {
            *c = c.saturating_add(1);
            est = est.min(*c);
        }
    }
    (est, block.start_ns)
}

/// The exact count of a suspect source over every CPU, per class whose estimate `est` on this
/// CPU reached its level: a CPU's first count in a window is its estimate (its packets so
/// far, and any collisions' in the sketch: never fewer), each one after adds one. Reports each
/// class the first time in the window it passes its limit, and says whether the hold drops
/// the frame. `classes[i]` is the class of `est[i]`; the window is the one starting at `start`.
#[inline(always)]
fn track(
    source: &FloodSource,
    classes: [u32; 2],
    est: [u32; 2],
    start: u64,
    now: u64,
    allowed: impl FnOnce() -> bool,
) -> bool {
    let Some(stats) = FLOOD_STATS.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a per-CPU array slot is this CPU's alone while the program runs here.
    let stats = unsafe { &mut *stats };
    let key: TrackKey = [source.words[0], source.words[1], u64::from(source.family)];
    let mut fresh = false;
    let entry = match FLOOD_TRACK.get_ptr_mut(key) {
        Some(e) => e,
        None => {
            fresh = true;
            let new = FloodTrack {
                window: start,
                ..FloodTrack::default()
            };
            stats.suspects += 1;
            if FLOOD_TRACK.insert(key, new, 0).is_err() {
                return false;
            }
            let Some(e) = FLOOD_TRACK.get_ptr_mut(key) else {
                return false;
            };
            e
        }
    };
    // SAFETY: points into a live map value; CPUs share it, so counts are atomic adds. A window
    // change races with other CPUs' adds: a few packets may count in the wrong window.
    let t = unsafe { &mut *entry };
    if t.window != start {
        t.window = start;
        t.count = [0; 4];
        t.reported = 0;
        fresh = true;
    }
    let mut over = false;
    for (c, est) in classes.into_iter().zip(est) {
        if est == 0 {
            continue;
        }
        let c = c & 3;
        let index = (source.family * class::COUNT as u32 + c) as usize;
        // This CPU's first count in the window: its estimate (at its level, or past it when
        // other sources' packets in its cells lifted it there first, if the count is new).
        let add = if fresh || est == conf!(suspect[index]) {
            est
        } else {
            1
        };
        // SAFETY: a u32 inside the map value, aligned; BPF_ATOMIC_ADD, then a plain read (the
        // program is built for BPF v1, which has no fetching add): another CPU's add between
        // them can only make `n` larger.
        let n = unsafe {
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(&raw mut t.count[c as usize], add);
            core::ptr::read_volatile(&raw const t.count[c as usize])
        };
        let limit = conf!(limit[index]);
        if n <= limit {
            continue;
        }
        over = true;
        if t.reported & (1 << c) == 0 {
            t.reported |= 1 << c;
            report(source, c, n, limit, start, now, stats);
        }
    }
    if !over {
        return false;
    }
    if conf!(hold) != 0 && !allowed() {
        t.held = t.held.wrapping_add(1);
        stats.held += 1;
        return true;
    }
    stats.over += 1;
    false
}

/// Sends a report unless the window's cap is reached or the ring buffer is full (counted).
#[inline(always)]
fn report(
    source: &FloodSource,
    class: u32,
    count: u32,
    limit: u32,
    start: u64,
    now: u64,
    stats: &mut FloodStats,
) {
    // SAFETY: plain words in the program's global data, read and written whole; the count is
    // an atomic add. Two CPUs crossing into a new window at once may both reset it: at worst
    // a few reports more in that window.
    let sent = unsafe {
        let w = &raw mut FLOOD_WINDOW;
        if core::ptr::read_volatile(&raw const (*w)[0]) != start {
            core::ptr::write_volatile(&raw mut (*w)[1], 0);
            core::ptr::write_volatile(&raw mut (*w)[0], start);
        }
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*w)[1], 1);
        core::ptr::read_volatile(&raw const (*w)[1])
    };
    if sent > u64::from(conf!(reports_per_window)) {
        stats.capped += 1;
        return;
    }
    let mut addr = [0u8; 16];
    // SAFETY: [u64; 2] and [u8; 16] have the same size; every bit pattern is valid.
    let words: [u8; 16] = unsafe { core::mem::transmute(source.words) };
    addr.copy_from_slice(&words);
    let r = FloodReport {
        addr,
        family: source.family,
        class,
        count,
        limit,
        elapsed_ns: now.saturating_sub(start),
        window_ns: conf!(window_ns),
        // SAFETY: a helper without preconditions. The precise clock, not the coarse `now`
        // (up to a tick behind): the time to the block is measured from here.
        at_ns: unsafe { bpf_ktime_get_boot_ns() },
    };
    if FLOOD_EVENTS.output::<FloodReport>(&r, 0).is_err() {
        stats.lost += 1;
    } else {
        stats.reports += 1;
    }
}

/// The class the frame counts in besides [`class::PACKETS`] (which every frame counts in), or
/// `PACKETS` for none: a TCP SYN without ACK (of a first fragment) is [`class::SYN`]; ICMP and
/// ICMPv6 (not a later fragment) are [`class::ICMP`]. The IP header alone tells it
/// ([`Frame::peek`]) but when IPv6 extension headers come first: those are walked as for the
/// scope check (the frame's one parse, [`Frame::parse`]); a frame whose protocol the walk
/// cannot find counts as a packet only. With neither limit set for the family (`base` is its
/// first limit), nothing is read: the verifier prunes it.
#[inline(always)]
fn other_class(ctx: &XdpContext, frame: &mut Frame, base: usize) -> u32 {
    let none = class::PACKETS;
    if conf!(limit[base + class::SYN as usize]) == 0
        && conf!(limit[base + class::ICMP as usize]) == 0
    {
        return none;
    }
    let icmp = if frame.v6() {
        IPPROTO_ICMPV6
    } else {
        IPPROTO_ICMP
    };
    let (proto, l4, end) = match frame.peek(ctx) {
        Peek::Header { proto, l4, end } => (proto, l4, end),
        Peek::Nothing => return none,
        Peek::Parse => {
            frame.parse(ctx);
            return if frame.proto() == icmp && !frame.later_fragment() {
                class::ICMP
            } else if frame.syn() {
                class::SYN
            } else {
                none
            };
        }
    };
    if proto == icmp {
        return class::ICMP;
    }
    // The flags are byte 13 of the TCP header, inside the datagram (not in a short frame's
    // padding): the check covers the 14 bytes from its start (the offset is a number the
    // verifier bounds, so the constant goes on the pointer after).
    if proto == IPPROTO_TCP
        && l4 + 14 <= end
        && let Some(header) = ptr_at::<[u8; 14]>(ctx, l4 & 0x3fff)
        // SAFETY: inside the checked 14 bytes.
        && load(unsafe { (header as *const u8).add(13) }) & (TCP_SYN | TCP_ACK) == TCP_SYN
    {
        return class::SYN;
    }
    none
}
