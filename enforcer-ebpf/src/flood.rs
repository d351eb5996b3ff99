//! Flood detection (issue 23): counts the sources of the frames the block maps let through and
//! reports those over their limit; see [`enforcer_common::flood`] for the scheme.
//!
//! One entry point, [`holds`], called by `run` for every frame that passes. With detection off
//! (the read-only [`FLOOD`] global the daemon sets at load) the verifier prunes all of it.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use enforcer_common::flood::{
    EVENTS_BYTES, FloodConfig, FloodReport, FloodStats, FloodTrack, SKETCH_CELLS, TRACK_ENTRIES,
    TrackKey, class, sketch_cell,
};

use crate::{load, ptr_at};

#[map(name = "FLOOD_SKETCH")]
static FLOOD_SKETCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(SKETCH_CELLS, 0);
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

/// `[window, reports sent in it]`: the global cap on reports per window (every CPU).
#[unsafe(no_mangle)]
static mut FLOOD_WINDOW: [u64; 2] = [0; 2];

const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
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
    ($field:ident[$i:expr]) => {
        // SAFETY: as above; the index is below the array's length (callers mask it).
        unsafe { core::ptr::read_volatile(&raw const FLOOD.$field[$i]) }
    };
}

/// Counts a frame that the block maps let through; returns whether the hold drops it (its
/// source is over a limit in this window, hold is on, and the allowlist does not cover it).
// Indexed loops over the classes on purpose: `c` indexes the class bit, the limit slot and
// `est` together, and a plain bounded index is what the verifier tracks best.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
pub(crate) fn holds(
    ctx: &XdpContext,
    raw_ip: bool,
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
    let now = crate::cached_now();
    let window = now / window_ns;
    let classes = classes(ctx, raw_ip);
    // Per class: 0 = not suspect on this CPU, else its estimate on this CPU.
    let mut est = [0u32; class::COUNT];
    let mut suspect = false;
    for c in 0..class::COUNT {
        let index = (source.family as usize * class::COUNT + c) % enforcer_common::flood::LIMITS;
        if classes & (1 << c) == 0 || conf!(limit[index]) == 0 {
            continue;
        }
        let e = sketch(source, index as u32, window);
        if e >= conf!(suspect[index]) {
            est[c] = e;
            suspect = true;
        }
    }
    if !suspect {
        return false;
    }
    track(source, &est, window, now, allowed)
}

/// Counts the source in this CPU's sketch for `index` (family and class); returns its
/// estimate in this window (the smaller of its two cells).
#[inline(always)]
fn sketch(source: &FloodSource, index: u32, window: u64) -> u32 {
    let mut est = u32::MAX;
    for row in 0..2 {
        let cell = sketch_cell(source.words[0], source.words[1], index, row);
        if let Some(p) = FLOOD_SKETCH.get_ptr_mut(cell) {
            // SAFETY: a per-CPU array cell is this CPU's alone while the program runs here.
            let v = unsafe { *p };
            let n = if (v >> 32) as u32 == window as u32 {
                (v as u32).saturating_add(1)
            } else {
                1
            };
            // SAFETY: as above.
            unsafe { *p = (window << 32) | u64::from(n) };
            est = est.min(n);
        }
    }
    // No cell (cannot happen: the index is below the array's length): not a suspect.
    if est == u32::MAX { 0 } else { est }
}

/// The exact count of a suspect source over every CPU, per class whose estimate `est` on this
/// CPU reached its level: a CPU's first count in a window is its estimate (its packets so
/// far, and any collisions' in the sketch: never fewer), each one after adds one. Reports each
/// class the first time in the window it passes its limit, and says whether the hold drops
/// the frame.
// Indexed loops over the classes on purpose: `c` indexes the class bit, the limit slot and
// `est` together, and a plain bounded index is what the verifier tracks best.
#[allow(clippy::needless_range_loop)]
#[inline(always)]
fn track(
    source: &FloodSource,
    est: &[u32; class::COUNT],
    window: u64,
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
                window,
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
    if t.window != window {
        t.window = window;
        t.count = [0; 4];
        t.reported = 0;
        fresh = true;
    }
    let mut over = false;
    for c in 0..class::COUNT {
        if est[c] == 0 {
            continue;
        }
        let index = (source.family as usize * class::COUNT + c) % enforcer_common::flood::LIMITS;
        // This CPU's first count in the window: its estimate (at its level, or past it when
        // other sources' packets in its cells lifted it there first, if the count is new).
        let add = if fresh || est[c] == conf!(suspect[index]) {
            est[c]
        } else {
            1
        };
        // SAFETY: a u32 inside the map value, aligned; BPF_ATOMIC_ADD, then a plain read (the
        // program is built for BPF v1, which has no fetching add): another CPU's add between
        // them can only make `n` larger.
        let n = unsafe {
            atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(&raw mut t.count[c], add);
            core::ptr::read_volatile(&raw const t.count[c])
        };
        let limit = conf!(limit[index]);
        if n <= limit {
            continue;
        }
        over = true;
        if t.reported & (1 << c) == 0 {
            t.reported |= 1 << c;
            report(source, c as u32, n, limit, window, now, stats);
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
    window: u64,
    now: u64,
    stats: &mut FloodStats,
) {
    // SAFETY: plain words in the program's global data, read and written whole; the count is
    // an atomic add. Two CPUs crossing into a new window at once may both reset it: at worst
    // a few reports more in that window.
    let sent = unsafe {
        let w = &raw mut FLOOD_WINDOW;
        if core::ptr::read_volatile(&raw const (*w)[0]) != window {
            core::ptr::write_volatile(&raw mut (*w)[1], 0);
            core::ptr::write_volatile(&raw mut (*w)[0], window);
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
        elapsed_ns: now - window * conf!(window_ns),
        window_ns: conf!(window_ns),
        at_ns: now,
    };
    if FLOOD_EVENTS.output::<FloodReport>(&r, 0).is_err() {
        stats.lost += 1;
    } else {
        stats.reports += 1;
    }
}

/// The classes the frame counts in: every frame in [`class::PACKETS`]; a TCP SYN without ACK
/// (of a first fragment) in [`class::SYN`]; ICMP and ICMPv6 in [`class::ICMP`]. IPv6 extension
/// headers are not walked: a TCP or ICMPv6 header behind one counts as a packet only.
#[inline(always)]
fn classes(ctx: &XdpContext, raw_ip: bool) -> u32 {
    let all = 1 << class::PACKETS;
    let Some(l3) = (if raw_ip { Some(0) } else { l3_offset(ctx) }) else {
        return all;
    };
    let Some(header) = ptr_at::<[u32; 2]>(ctx, l3) else {
        return all;
    };
    let first = load(header as *const u8);
    let v4 = first >> 4 == 4;
    let (proto, l4) = if v4 {
        let Some(h) = ptr_at::<[u8; 20]>(ctx, l3) else {
            return all;
        };
        // SAFETY: inside the checked 20-byte header.
        let (proto, frag) = unsafe {
            (
                load((h as *const u8).add(9)),
                load((h as *const u16).add(3)),
            )
        };
        // Fragment offset (low 13 bits, network order): only a first fragment has the flags.
        if u16::from_be(frag) & 0x1fff != 0 {
            return all;
        }
        (proto, l3 + usize::from(first & 0x0f) * 4)
    } else {
        let Some(h) = ptr_at::<[u8; 40]>(ctx, l3) else {
            return all;
        };
        // SAFETY: inside the checked 40-byte header.
        (unsafe { load((h as *const u8).add(6)) }, l3 + 40)
    };
    if proto == if v4 { IPPROTO_ICMP } else { IPPROTO_ICMPV6 } {
        return all | 1 << class::ICMP;
    }
    // Bytes 12..14 of the TCP header: a two-byte check, which the verifier follows (a
    // one-byte one compiles to `p >= data_end`, which it does not).
    if proto == IPPROTO_TCP
        && let Some(word) = ptr_at::<[u8; 2]>(ctx, (l4 & 0xff) + 12)
        // SAFETY: inside the checked two bytes.
        && load(unsafe { (word as *const u8).add(1) }) & (TCP_SYN | TCP_ACK) == TCP_SYN
    {
        return all | 1 << class::SYN;
    }
    all
}

/// Where the IP header starts in an Ethernet frame (after up to two VLAN tags).
#[inline(always)]
fn l3_offset(ctx: &XdpContext) -> Option<usize> {
    let mut proto = load(ptr_at::<u16>(ctx, 12)?);
    let mut offset = 14;
    for _ in 0..2 {
        if proto != ETH_P_8021Q.to_be() && proto != ETH_P_8021AD.to_be() {
            break;
        }
        proto = load(ptr_at::<u16>(ctx, offset + 2)?);
        offset += 4;
    }
    Some(offset)
}
