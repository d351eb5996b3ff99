//! The enforcer's data path: an XDP program that drops frames whose source address is blocked.
//!
//! Two programs share everything after the parse: `enforcer_xdp` for Ethernet links (up to two
//! VLAN tags) and `enforcer_xdp_ip` for links whose frames start with the IP header (tun,
//! WireGuard, IPIP, GRE, SIT, PPP); the daemon picks one by the link's type when it attaches.
//! Both are multi-buffer aware (`xdp.frags`), so native mode works at any MTU; they read the
//! headers from the first buffer only (see [`unjudged::SPLIT_HEADERS`]).
//!
//! Per frame: parse the link's header and the IPv4/IPv6 source address; look the source up
//! among the exact-address blocks, then at each prefix length in use around it, longest first
//! (see [`enforcer_common::lookup`]): every key is first checked in the block filter (an inlined
//! array read) and looked up in its hash map only when its bit is set. An entry past its expiry
//! counts as absent. Only when a live block matched, and only if the daemon flagged that block
//! as overlapping the allowlist, is the allowlist consulted; an allowlisted source always passes.
//! Legitimate traffic therefore pays for a few array reads, and a hash lookup only on a filter
//! collision.
//!
//! A hit reads no clock of its own (the coarse monotonic clock plus the boot-time offset the
//! daemon keeps) and counts in the CPU's own hit slot, so CPUs hitting one block do not fight
//! over its cache line.
//!
//! Anything that cannot be parsed passes, counted by why (the UNJUDGED map): the program never
//! drops what it did not match.
#![no_std]
#![no_main]
// The BPF target has no `AtomicU64::fetch_add`; the intrinsic lowers to BPF_ATOMIC_ADD.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_xadd is the only way to emit BPF_ATOMIC_ADD"
)]

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
    mem::{self, MaybeUninit},
    ptr::{NonNull, write_volatile},
};

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, xdp_action},
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_loop, bpf_xdp_get_buff_len},
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use enforcer_common::{
    AllowValue, BlockEntry, DEFAULT_MAX_ADDRESSES, DEFAULT_MAX_ALLOW, DEFAULT_MAX_PREFIXES,
    FLAG_ALLOW_OVERLAP, HIT_SLOT_STALE_NS, HIT_SLOTS, HitSlot, MODE_ENFORCE, STATS_SLOTS, Stats,
    Unjudged, hit_slot_words, lookup, net_key_v4, net_key_v6,
    scope::{FLAG_SCOPED, MAX_SCOPE_ENTRIES, ScopeKey, ScopeValue, Transport, in_scope},
    slot_tag, slot_tag_parts, unjudged,
};

mod flood;
mod frame;
mod replies;

use frame::Frame;

#[map(name = "BLOCK_V4")]
static BLOCK_V4: HashMap<[u8; 4], BlockEntry> =
    HashMap::pinned(DEFAULT_MAX_ADDRESSES, BPF_F_NO_PREALLOC);
#[map(name = "BLOCK_V6")]
static BLOCK_V6: HashMap<[u8; 16], BlockEntry> =
    HashMap::pinned(DEFAULT_MAX_ADDRESSES, BPF_F_NO_PREALLOC);
/// Keyed by [`net_key_v4`]: the masked address and the length in 8 bytes.
#[map(name = "BLOCK_NET_V4")]
static BLOCK_NET_V4: HashMap<u64, BlockEntry> =
    HashMap::pinned(DEFAULT_MAX_PREFIXES, BPF_F_NO_PREALLOC);
/// Keyed by [`net_key_v6`]: the masked address's two words and the length.
#[map(name = "BLOCK_NET_V6")]
static BLOCK_NET_V6: HashMap<[u64; 3], BlockEntry> =
    HashMap::pinned(DEFAULT_MAX_PREFIXES, BPF_F_NO_PREALLOC);
#[map(name = "ALLOW_V4")]
static ALLOW_V4: LpmTrie<[u8; 4], AllowValue> = LpmTrie::pinned(DEFAULT_MAX_ALLOW, 0);
#[map(name = "ALLOW_V6")]
static ALLOW_V6: LpmTrie<[u8; 16], AllowValue> = LpmTrie::pinned(DEFAULT_MAX_ALLOW, 0);
/// Mmapable: the daemon writes its words in place, without a syscall per word.
#[map(name = "PREFIX_LENS")]
static PREFIX_LENS: Array<u64> = Array::pinned(lookup::LENS_WORDS, BPF_F_MMAPABLE);
#[map(name = "BLOCK_FILTER")]
static BLOCK_FILTER: Array<u64> = Array::pinned(lookup::FILTER_WORDS, BPF_F_MMAPABLE);
#[map(name = "HITS")]
static HITS: PerCpuArray<HitSlot> = PerCpuArray::pinned(HIT_SLOTS, 0);
#[map(name = "CLOCK")]
static CLOCK: Array<u64> = Array::pinned(1, 0);
#[map(name = "STATS")]
static STATS: PerCpuArray<Stats> = PerCpuArray::pinned(STATS_SLOTS, 0);
#[map(name = "UNJUDGED")]
static UNJUDGED: PerCpuArray<Unjudged> = PerCpuArray::pinned(STATS_SLOTS, 0);
/// The scopes of the block entries flagged [`FLAG_SCOPED`] (see [`enforcer_common::scope`]).
/// Keyed by a [`ScopeKey`]'s bytes, built as [`ScopeKey::words`].
#[map(name = "SCOPES")]
static SCOPES: HashMap<[u64; 3], ScopeValue> =
    HashMap::pinned(MAX_SCOPE_ENTRIES, BPF_F_NO_PREALLOC);
/// Per interface slot like [`STATS`]: the frames passed as replies to the host's own
/// connections ([`replies`]).
#[map(name = "REPLY_PASSED")]
static REPLY_PASSED: PerCpuArray<enforcer_common::Counter> = PerCpuArray::pinned(STATS_SLOTS, 0);
/// Non-zero while any entry is scoped: only then is the transport header read.
#[map(name = "SCOPED")]
static SCOPED: Array<u64> = Array::pinned(1, 0);

/// 1: count hits per block entry; 0: don't. Set at load time; the verifier prunes the dead branch.
#[unsafe(no_mangle)]
static COUNT_BLOCK_HITS: u8 = 1;

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
/// Offset of the source address in an IPv4 header.
const IPV4_SRC: usize = 12;
/// Offset of the source address in an IPv6 header.
const IPV6_SRC: usize = 8;

/// Ethernet links (and the loopback).
#[xdp(frags)]
pub fn enforcer_xdp(ctx: XdpContext) -> u32 {
    run(&ctx, ethernet_source(&ctx))
}

/// Links whose frames start with the IP header: the version nibble says which family.
#[xdp(frags)]
pub fn enforcer_xdp_ip(ctx: XdpContext) -> u32 {
    run(&ctx, raw_ip_source(&ctx))
}

/// Judges a parsed frame and counts it.
#[inline(always)]
fn run(ctx: &XdpContext, source: Result<(Source, Frame), u32>) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let slot = (ctx.ingress_ifindex() as u32) % STATS_SLOTS;
    let Some(stats) = STATS.get_ptr_mut(slot) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: a per-CPU array slot is ours alone while this program runs on this CPU.
    let stats = unsafe { &mut *stats };
    // `seen` is not counted here: userspace derives it (passed + dropped).

    let verdict = match source {
        Ok((source, mut frame)) => {
            // The transport header is read here only while some entry is scoped; a frame judged
            // before the first scoped entry appeared is judged as matching any scope if it
            // meets one. Otherwise the reply check or the flood detector reads it if they need
            // it: one of them at most (a frame the reply check sees is dropped or passed as a
            // reply, never counted by the detector), so the reply check takes a copy.
            let transport = if SCOPED.get(0).is_some_and(|on| *on != 0) {
                frame.parse(ctx);
                frame.transport()
            } else {
                Transport::Unknown.pack()
            };
            let reply = move || replies::is_reply(ctx, frame);
            match source {
                Source::V4(addr) => {
                    let v = judge_v4(addr, len, stats, transport, reply);
                    flood_check(ctx, &mut frame, v, addr_v4(addr))
                }
                Source::V6(addr) => {
                    let v = judge_v6(addr, len, stats, transport, reply);
                    flood_check(ctx, &mut frame, v, addr_v6(addr))
                }
            }
        }
        Err(reason) => {
            stats.not_ip.add(len);
            if let Some(u) = UNJUDGED.get_ptr_mut(slot) {
                // SAFETY: as for `stats`; the index is masked into the array.
                unsafe { (*u).reasons[reason as usize & (unjudged::SLOTS - 1)].add(len) };
            }
            Verdict::Pass
        }
    };
    match verdict {
        Verdict::Pass => {
            stats.passed.add(len);
            xdp_action::XDP_PASS
        }
        Verdict::Reply => {
            stats.passed.add(len);
            if let Some(r) = REPLY_PASSED.get_ptr_mut(slot) {
                // SAFETY: a per-CPU array slot is ours alone while this program runs here.
                unsafe { (*r).add(len) };
            }
            xdp_action::XDP_PASS
        }
        Verdict::Drop => {
            stats.dropped.add(len);
            xdp_action::XDP_DROP
        }
    }
}

/// A frame the block maps let through goes past the flood detector, whose hold may drop it.
#[inline(always)]
fn flood_check(
    ctx: &XdpContext,
    frame: &mut Frame,
    verdict: Verdict,
    source: flood::FloodSource,
) -> Verdict {
    match verdict {
        Verdict::Pass if flood::holds(ctx, frame, &source, || allowlisted(&source)) => {
            Verdict::Drop
        }
        v => v,
    }
}

#[inline(always)]
fn addr_v4(addr: u32) -> flood::FloodSource {
    flood::FloodSource {
        words: [u64::from(addr), 0],
        family: 0,
    }
}

#[inline(always)]
fn addr_v6(addr: [u64; 2]) -> flood::FloodSource {
    flood::FloodSource {
        words: addr,
        family: 1,
    }
}

/// Whether the allowlist covers a source (the hold never drops what it covers).
#[inline(always)]
fn allowlisted(source: &flood::FloodSource) -> bool {
    if source.family == 0 {
        ALLOW_V4
            .get(Key::new(32, (source.words[0] as u32).to_le_bytes()))
            .is_some()
    } else {
        ALLOW_V6
            .get(Key::new(128, v6_bytes(source.words)))
            .is_some()
    }
}

/// Does nothing: the floor against which the benchmarks measure the enforcer's cost.
#[xdp]
pub fn xdp_pass_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

enum Verdict {
    Pass,
    Drop,
    /// Passed: a reply to a connection this host opened, from a blocked source.
    Reply,
}

/// The source address as the words it was loaded in (the packet's bytes in memory order, read
/// little-endian): IPv4 as one u32, IPv6 as two u64s (bytes 0..8 and 8..16). Keys are built from
/// the words, never byte by byte.
enum Source {
    V4(u32),
    V6([u64; 2]),
}

/// Returns a pointer to `T` at `offset` if the whole `T` lies inside the frame.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// Loads a word from the frame with one load instruction. `read_unaligned` would be split by
/// LLVM's BPF backend into byte loads, shifts and ors (~10 instructions for an IPv4 address,
/// ~35 for IPv6); the verifier accepts unaligned packet loads wherever the CPU has efficient
/// unaligned access (x86-64, arm64: every target we load on), and refuses the program at load
/// otherwise, so nothing can misbehave silently.
#[inline(always)]
fn load<T: Copy>(p: *const T) -> T {
    // SAFETY: the caller checked the bounds (`ptr_at`); see above on alignment: the load is one
    // BPF instruction whatever the address, and the kernel has verified that it is allowed.
    unsafe { core::ptr::read_volatile(p) }
}

/// Parses Ethernet, up to two VLAN tags, and the IP source address (with where the IP header
/// lies, its transport header unread); or says why not ([`unjudged`]).
///
/// Two tags cover 802.1ad + 802.1Q (QinQ) and two stacked 802.1Q tags. A third is counted
/// (`vlan-depth`) and passed: a host only accepts such a frame through a stack of VLAN
/// interfaces, and the innermost of those is where to attach (its frames carry no tag).
#[inline(always)]
fn ethernet_source(ctx: &XdpContext) -> Result<(Source, Frame), u32> {
    // The EtherType in wire order: compared with constants swapped once at compile time.
    let mut proto = load(ptr_at::<u16>(ctx, 12).ok_or_else(|| short(ctx))?);
    let mut offset = ETH_HLEN;
    // Two tags at most (bounded loop).
    for _ in 0..2 {
        if proto != ETH_P_8021Q.to_be() && proto != ETH_P_8021AD.to_be() {
            break;
        }
        proto = load(ptr_at::<u16>(ctx, offset + 2).ok_or_else(|| short(ctx))?);
        offset += VLAN_HLEN;
    }
    if proto == ETH_P_IP.to_be() {
        ipv4_source(ctx, offset).map(|s| (s, Frame::at(offset, false)))
    } else if proto == ETH_P_IPV6.to_be() {
        ipv6_source(ctx, offset).map(|s| (s, Frame::at(offset, true)))
    } else if proto == ETH_P_8021Q.to_be() || proto == ETH_P_8021AD.to_be() {
        Err(unjudged::VLAN_DEPTH)
    } else {
        Err(unjudged::NOT_IP)
    }
}

/// Parses a frame that starts with the IP header: the first nibble is the version. A frame
/// shorter than the minimal IPv4 header is `truncated` whatever its first byte says (one bounds
/// check the verifier can follow; a one-byte check compiles to `data >= data_end`, which it
/// does not accept as one).
#[inline(always)]
fn raw_ip_source(ctx: &XdpContext) -> Result<(Source, Frame), u32> {
    let header = ptr_at::<[u32; 5]>(ctx, 0).ok_or_else(|| short(ctx))?;
    let first = load(header as *const u8);
    match first >> 4 {
        4 => ipv4_source(ctx, 0).map(|s| (s, Frame::at(0, false))),
        6 => ipv6_source(ctx, 0).map(|s| (s, Frame::at(0, true))),
        _ => Err(unjudged::NOT_IP),
    }
}

/// The IPv4 source address of the header at `offset`.
#[inline(always)]
fn ipv4_source(ctx: &XdpContext, offset: usize) -> Result<Source, u32> {
    // The whole minimal header must be there, not just the address (one bounds check).
    let header = ptr_at::<[u32; 5]>(ctx, offset).ok_or_else(|| short(ctx))?;
    // SAFETY: the source address lies inside the checked header.
    Ok(Source::V4(load(unsafe {
        (header as *const u32).add(IPV4_SRC / 4)
    })))
}

/// The IPv6 source address of the header at `offset` (a v4-mapped one as IPv4).
#[inline(always)]
fn ipv6_source(ctx: &XdpContext, offset: usize) -> Result<Source, u32> {
    let header = ptr_at::<[u64; 5]>(ctx, offset).ok_or_else(|| short(ctx))?;
    // SAFETY: the 16 address bytes lie inside the checked header.
    let (hi, lo) = unsafe {
        let src = (header as *const u64).add(IPV6_SRC / 8);
        (load(src), load(src.add(1)))
    };
    // A v4-mapped source (::ffff:a.b.c.d) is the IPv4 address a.b.c.d: bytes 8..12 are
    // 00 00 ff ff, i.e. 0xffff0000 read little-endian.
    if hi == 0 && lo as u32 == 0xffff_0000 {
        Ok(Source::V4((lo >> 32) as u32))
    } else {
        Ok(Source::V6([hi, lo]))
    }
}

/// Why a header did not fit: the frame is shorter (`truncated`), or it goes on in further
/// buffers of a multi-buffer frame that the parser does not read (`split-headers`). Only frames
/// the parser gives up on pay for the helper call.
#[inline(always)]
fn short(ctx: &XdpContext) -> u32 {
    // SAFETY: a helper without preconditions on the program's own context.
    let whole = unsafe { bpf_xdp_get_buff_len(ctx.as_ptr().cast()) };
    if whole > (ctx.data_end() - ctx.data()) as u64 {
        unjudged::SPLIT_HEADERS
    } else {
        unjudged::TRUNCATED
    }
}

/// What the block maps say about a source, and where the prefix walk stands: `repr(C)`, as
/// `bpf_loop` hands it to [`walk_step`] by pointer.
#[repr(C)]
struct Match {
    /// The live entry that decides (enforce before shadow), if any.
    entry: Option<Entry>,
    /// Whether an entry past its expiry was found.
    expired: bool,
    /// The source (IPv4 in the low half of the first word).
    addr: [u64; 2],
    /// Lengths still to look at: bit `b` is length `base + b`.
    lens: u64,
    base: u32,
    v6: bool,
    clock: Clock,
    /// The frame's transport header ([`Transport::pack`]), for scoped entries.
    transport: u32,
}

impl Match {
    /// Writes a fresh walk state into `slot`, each field by its own volatile store, in place.
    /// Plain stores of zero over 16 bytes or more (an IPv4 source's: the second address word,
    /// `lens`, `base`, `v6`) are merged by LLVM into a `memset` call, which this target links
    /// as a byte loop whose byte stores then stall the word loads of the same fields; a
    /// `Match` built by value and moved is copied the same way.
    #[inline(always)]
    fn init(
        slot: &mut MaybeUninit<Self>,
        addr: [u64; 2],
        v6: bool,
        clock: Clock,
        transport: u32,
    ) -> &mut Self {
        let p = slot.as_mut_ptr();
        // SAFETY: `p` points to the caller's `slot`; each field is written once, whole, before
        // `assume_init_mut` (the padding stays uninitialised, which a struct's may).
        unsafe {
            write_volatile(&raw mut (*p).entry, None);
            write_volatile(&raw mut (*p).expired, false);
            write_volatile(&raw mut (*p).addr[0], addr[0]);
            write_volatile(&raw mut (*p).addr[1], addr[1]);
            write_volatile(&raw mut (*p).lens, 0);
            write_volatile(&raw mut (*p).base, 0);
            write_volatile(&raw mut (*p).v6, v6);
            write_volatile(&raw mut (*p).clock, clock);
            write_volatile(&raw mut (*p).transport, transport);
            slot.assume_init_mut()
        }
    }
}

/// A block entry: a pointer into a map value, valid for the duration of the program.
/// `Option<Entry>` is one word, null for `None`, so every bit of it is defined wherever LLVM
/// copies it (an `Option<*mut _>` leaves its payload undefined on the `None` path, and the
/// verifier refuses a copy of it: `!read_ok`).
type Entry = NonNull<BlockEntry>;

/// A block map's lookup as an [`Entry`].
#[inline(always)]
fn as_entry(value: Option<*mut BlockEntry>) -> Option<Entry> {
    value.and_then(NonNull::new)
}

/// Whether an entry covers the frame: every unscoped entry does; a scoped one when its scope
/// entries cover the frame's transport header (see [`enforcer_common::scope`]).
#[inline(always)]
fn applies(entry: Entry, addr: &[u64; 2], v6: bool, transport: u32) -> bool {
    // SAFETY: `entry` points into a map value, valid for the duration of the program.
    let v = unsafe { entry.as_ref() };
    let (flags, prefix_len) = (v.flags, v.prefix_len);
    if flags & FLAG_SCOPED == 0 {
        return true;
    }
    let words = masked(addr, u32::from(prefix_len));
    in_scopes(
        words[0],
        words[1],
        u32::from(prefix_len) | u32::from(v6) << 8,
        transport,
    ) != 0
}

/// Whether the scope entries of the entry `(w0, w1, prefix_len | v6 << 8)` cover a frame whose
/// transport header is `transport` ([`Transport::pack`]).
///
/// A global function: the verifier checks it once, on its own, for any arguments. Inlined (or
/// as a static function), it would be checked again at every step of every prefix walk it is
/// called from, with every exit of its range loop: past the verifier's limit.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn in_scopes(w0: u64, w1: u64, meta: u32, transport: u32) -> u32 {
    u32::from(in_scope(Transport::unpack(transport), |proto| {
        // Three word stores: a `ScopeKey` literal zeroes its padding with a `memset` call.
        let key = ScopeKey::words([w0, w1], meta as u8, (meta >> 8) as u8, proto);
        // SAFETY: a map value, valid for the duration of the program; only read.
        unsafe { SCOPES.get(key) }
    }))
}

#[inline(always)]
fn consider(m: &mut Match, entry: Entry) {
    // SAFETY: `entry` points into a map value, valid for the duration of the program.
    let v = unsafe { entry.as_ref() };
    if v.is_expired(m.clock.now()) {
        m.expired = true;
        return;
    }
    let better = match m.entry {
        None => true,
        // SAFETY: as above.
        Some(current) => !is_enforce(unsafe { current.as_ref() }) && is_enforce(v),
    };
    if better {
        m.entry = Some(entry);
    }
}

#[inline(always)]
fn is_enforce(v: &BlockEntry) -> bool {
    u32::from(v.mode) == MODE_ENFORCE
}

/// The exact entry, then the prefixes, then the allowlist if the matching block overlaps it.
/// The clock is read only once something matched: a miss never pays.
///
/// A live enforced exact entry decides alone (no prefix can beat it: it is the longest match,
/// and enforce wins over shadow), so an address hit goes straight to the verdict without
/// building the walk's state (whose zeroing alone cost a third of the hit: issue 25).
#[inline(always)]
fn judge_v4(
    addr: u32,
    len: u64,
    stats: &mut Stats,
    transport: u32,
    reply: impl FnOnce() -> bool,
) -> Verdict {
    let bytes = addr.to_le_bytes();
    let source = SourceKey {
        key: [u64::from(addr), 0],
        v6: false,
        len,
    };
    let allowed = || ALLOW_V4.get(Key::new(32, bytes)).is_some();
    let mut clock = Clock(0);
    let exact = if in_filter(u64::from(addr), 0, 32) {
        as_entry(BLOCK_V4.get_ptr_mut(bytes)).filter(|&e| applies(e, &source.key, false, transport))
    } else {
        None
    };
    if let Some(e) = exact
        && decides_alone(e, &mut clock)
    {
        return drop_or_pass(e, &source, stats, &mut clock, allowed, reply);
    }
    let lens = PREFIX_LENS
        .get(lookup::v4_word(u32::from_be(addr)))
        .copied()
        .unwrap_or(0);
    if exact.is_none() && lens == 0 {
        // Legitimate traffic: nothing matched, and no prefix is loaded around the source.
        return Verdict::Pass;
    }
    let mut slot = MaybeUninit::uninit();
    let m = Match::init(&mut slot, source.key, false, clock, transport);
    if let Some(e) = exact {
        consider(m, e);
    }
    if !is_enforced(m) {
        walk(m, lens, 0);
    }
    decide(m, &source, stats, allowed, reply)
}

/// As [`judge_v4`], for IPv6: the lengths of the source's /32 slot (/96../127, then /32../95),
/// then those below /32.
#[inline(always)]
fn judge_v6(
    addr: [u64; 2],
    len: u64,
    stats: &mut Stats,
    transport: u32,
    reply: impl FnOnce() -> bool,
) -> Verdict {
    let bytes = v6_bytes(addr);
    let source = SourceKey {
        key: addr,
        v6: true,
        len,
    };
    let allowed = || ALLOW_V6.get(Key::new(128, bytes)).is_some();
    let mut clock = Clock(0);
    let exact = if in_filter(addr[0], addr[1], 128) {
        as_entry(BLOCK_V6.get_ptr_mut(bytes)).filter(|&e| applies(e, &addr, true, transport))
    } else {
        None
    };
    if let Some(e) = exact
        && decides_alone(e, &mut clock)
    {
        return drop_or_pass(e, &source, stats, &mut clock, allowed, reply);
    }
    let mut slot = MaybeUninit::uninit();
    let m = Match::init(&mut slot, addr, true, clock, transport);
    if let Some(e) = exact {
        consider(m, e);
    }
    let first = lookup::v6_words(addr[0] as u32);
    for (word, base) in [(first + 1, 96), (first, 32), (lookup::V6_SHORT, 0)] {
        if !is_enforced(m)
            && let Some(&lens) = PREFIX_LENS.get(word)
        {
            walk(m, lens, base);
        }
    }
    decide(m, &source, stats, allowed, reply)
}

/// Whether an exact-address entry decides without the prefixes: enforced and live.
#[inline(always)]
fn decides_alone(entry: Entry, clock: &mut Clock) -> bool {
    // SAFETY: `entry` points into a map value, valid for the duration of the program.
    let v = unsafe { entry.as_ref() };
    // The clock is read only for an entry that can expire.
    is_enforce(v) && (v.expires_ns == 0 || !v.is_expired(clock.now()))
}

/// Looks the source up at each length `base + bit` whose bit is set in `lens`, longest first,
/// until an enforced block decides. A shadow or expired match goes on to the wider lengths, so
/// every nested prefix is reached. `bpf_loop` runs the steps: the verifier checks one step
/// instead of every path through 64 (a bounded loop over them exceeds its limit).
#[inline(always)]
fn walk(m: &mut Match, lens: u64, base: u32) {
    if lens == 0 {
        return;
    }
    m.lens = lens;
    m.base = base;
    // SAFETY: `walk_step` takes the context it is given, a live `Match` on this stack, and
    // `bpf_loop` calls it at most 64 times (a u64 has 64 bits) with no other precondition.
    unsafe {
        bpf_loop(64, walk_step as *mut c_void, (m as *mut Match).cast(), 0);
    }
}

/// One step of [`walk`]: the longest length left. Returns 1 to stop. Private (the verifier
/// refuses a global function as a callback).
#[inline(never)]
extern "C" fn walk_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `walk` passes a pointer to its `Match`, which outlives the loop.
    let m = unsafe { &mut *ctx.cast::<Match>() };
    if m.lens == 0 {
        return 1;
    }
    let bit = 63 - m.lens.leading_zeros();
    m.lens &= !(1u64 << (bit & 63));
    let bits = m.base + bit;
    let entry = if m.v6 {
        v6_prefix(m.addr, bits)
    } else {
        v4_prefix(m.addr[0] as u32, bits)
    };
    if let Some(e) = entry
        && applies(e, &m.addr, m.v6, m.transport)
    {
        consider(m, e);
        if is_enforced(m) {
            return 1;
        }
    }
    0
}

/// The IPv4 prefix block of `bits` (< 32) bits covering `addr`, if its filter bit is set.
#[inline(always)]
fn v4_prefix(addr: u32, bits: u32) -> Option<Entry> {
    let masked = addr & v4_mask(bits);
    if !in_filter(u64::from(masked), 0, bits) {
        return None;
    }
    as_entry(BLOCK_NET_V4.get_ptr_mut(net_key_v4(masked, bits as u8)))
}

/// The IPv6 prefix block of `bits` (< 128) bits covering `addr`, if its filter bit is set.
#[inline(always)]
fn v6_prefix(addr: [u64; 2], bits: u32) -> Option<Entry> {
    let key = masked(&addr, bits);
    if !in_filter(key[0], key[1], bits) {
        return None;
    }
    as_entry(BLOCK_NET_V6.get_ptr_mut(net_key_v6(key, bits as u8)))
}

/// The mask of the first `bits` (< 32) address bits, in the address word's byte order.
#[inline(always)]
fn v4_mask(bits: u32) -> u32 {
    if bits == 0 {
        0
    } else {
        (u32::MAX << ((32 - bits) & 31)).to_be()
    }
}

/// Whether a key's block filter bit is set (a missing word counts as set). The array read is
/// inlined by the verifier; the daemon writes the words in place (aligned u64s: whole reads).
#[inline(always)]
fn in_filter(a: u64, b: u64, len: u32) -> bool {
    let bit = lookup::filter_bit(a, b, len);
    BLOCK_FILTER
        .get(bit >> 6)
        .is_none_or(|w| (*w >> (bit & 63)) & 1 != 0)
}

/// The 16 address bytes of the two words (stored as two 8-byte words, not byte by byte).
#[inline(always)]
fn v6_bytes(addr: [u64; 2]) -> [u8; 16] {
    // SAFETY: [u64; 2] and [u8; 16] have the same size, and every bit pattern is valid for both.
    unsafe { mem::transmute::<[u64; 2], [u8; 16]>(addr) }
}

/// The frame's source as the counters need it.
struct SourceKey {
    /// The address as the two little-endian words of a 16-byte key (IPv4 in the first four
    /// bytes, the rest zero).
    key: [u64; 2],
    v6: bool,
    /// Frame length.
    len: u64,
}

/// The kernel's boot clock, read at most once per packet and only when needed: the coarse
/// monotonic clock (no clock-source read) plus `CLOCK_BOOTTIME − CLOCK_MONOTONIC`, which the
/// daemon keeps in the CLOCK map. The coarse clock trails the true one by up to a tick and the
/// offset is written low, so expiry is never early, and at most a tick late.
///
/// The coarse clock only moves at a tick, when jiffies does, so the last value read is cached
/// with the jiffies it was read at ([`CLOCK_CACHE`]) and reused while jiffies has not moved:
/// `bpf_jiffies64` is inlined by the verifier into one load, the helper call is not (measured
/// ~2–3 ns per hit). A value is cached only if it is later than the cached one, so a read that
/// lands between the jiffies increment and the timekeeping update (the old tick's value) is not
/// kept for the new tick. A cached value was read earlier, so it is never ahead: never early.
struct Clock(u64);

/// `[jiffies, now]` of the last coarse clock read (shared by every CPU, written once a tick).
#[unsafe(no_mangle)]
static mut CLOCK_CACHE: [u64; 2] = [0; 2];

impl Clock {
    #[inline(always)]
    fn now(&mut self) -> u64 {
        if self.0 == 0 {
            self.0 = cached_now();
        }
        self.0
    }
}

#[inline(always)]
fn cached_now() -> u64 {
    // SAFETY: helpers without preconditions; the cache is plain memory that CPUs may race on:
    // each word is read and written whole, and `now` is written before `jiffies`.
    unsafe {
        let jiffies = bpf_jiffies64();
        let cache = &raw mut CLOCK_CACHE;
        if core::ptr::read_volatile(&raw const (*cache)[0]) == jiffies {
            let cached = core::ptr::read_volatile(&raw const (*cache)[1]);
            if cached != 0 {
                return cached;
            }
        }
        let now = bpf_ktime_get_coarse_ns() + CLOCK.get(0).copied().unwrap_or(0);
        if now > core::ptr::read_volatile(&raw const (*cache)[1]) {
            core::ptr::write_volatile(&raw mut (*cache)[1], now);
            core::ptr::write_volatile(&raw mut (*cache)[0], jiffies);
        }
        now
    }
}

#[inline(always)]
fn is_enforced(m: &Match) -> bool {
    match m.entry {
        // SAFETY: points into a map value.
        Some(e) => is_enforce(unsafe { e.as_ref() }),
        None => false,
    }
}

/// The verdict of the walk's outcome (see [`drop_or_pass`]).
#[inline(always)]
fn decide(
    m: &mut Match,
    source: &SourceKey,
    stats: &mut Stats,
    allowed: impl FnOnce() -> bool,
    reply: impl FnOnce() -> bool,
) -> Verdict {
    let Some(entry) = m.entry else {
        if m.expired {
            stats.expired.add(source.len);
        }
        return Verdict::Pass;
    };
    drop_or_pass(entry, source, stats, &mut m.clock, allowed, reply)
}

/// The verdict of the live entry that decides: the allowlist first (only for blocks flagged as
/// overlapping it), then a reply to the host's own connection, then the entry's mode; counts the
/// hit (a reply is no hit: nothing was stopped).
#[inline(always)]
fn drop_or_pass(
    entry: Entry,
    source: &SourceKey,
    stats: &mut Stats,
    clock: &mut Clock,
    allowed: impl FnOnce() -> bool,
    reply: impl FnOnce() -> bool,
) -> Verdict {
    let len = source.len;
    // SAFETY: `entry` points into a live map value.
    let v = unsafe { entry.as_ref() };
    let (enforce, flags) = (is_enforce(v), v.flags);
    // The allowlist always wins. It is consulted only for blocks the daemon flagged as
    // overlapping it: a source inside a block that overlaps no allowlist prefix is in none.
    if flags & FLAG_ALLOW_OVERLAP != 0 && allowed() {
        stats.allowlisted.add(len);
        return Verdict::Pass;
    }
    if enforce && reply() {
        return Verdict::Reply;
    }
    // SAFETY: reading a read-only global.
    if unsafe { core::ptr::read_volatile(&COUNT_BLOCK_HITS) } != 0 {
        count_hit(entry, source, clock.now());
    }
    if enforce {
        Verdict::Drop
    } else {
        stats.shadow.add(len);
        Verdict::Pass
    }
}

/// The source address masked to `prefix_len` bits (the key of the entry that matched), as the
/// two little-endian words of its 16 bytes: kept in registers, never assembled byte by byte.
#[inline(always)]
fn masked(key: &[u64; 2], prefix_len: u32) -> [u64; 2] {
    // The mask in address (big-endian) order, turned into the words' byte order.
    let keep = |bits: u32| {
        if bits == 0 {
            0
        } else if bits >= 64 {
            u64::MAX
        } else {
            u64::MAX << (64 - bits)
        }
    };
    [
        key[0] & keep(prefix_len.min(64)).to_be(),
        key[1] & keep(prefix_len.saturating_sub(64)).to_be(),
    ]
}

/// The 16 key bytes of a slot as its two words (the slot is 8-byte aligned: aligned loads).
#[inline(always)]
fn slot_key(slot: &HitSlot) -> [u64; 2] {
    // SAFETY: `key` is the first field of a `repr(C)` struct aligned to 8 (it holds u64s).
    unsafe { (&raw const slot.key as *const [u64; 2]).read() }
}

#[inline(always)]
fn set_slot_key(slot: &mut HitSlot, key: [u64; 2]) {
    // SAFETY: as in `slot_key`.
    unsafe { (&raw mut slot.key as *mut [u64; 2]).write(key) }
}

/// Counts a hit: in this CPU's slot for the entry when it holds it (or the slot is free or
/// stale and can be taken over), else with atomic adds in the entry itself. Either way no hit
/// is lost: userspace adds the slots to the entry.
#[inline(always)]
fn count_hit(entry: Entry, source: &SourceKey, now: u64) {
    // SAFETY: `entry` points into a live map value.
    let v = unsafe { entry.as_ref() };
    let (prefix_len, generation) = (v.prefix_len, v.generation);
    let key = masked(&source.key, u32::from(prefix_len));
    let tag = slot_tag(source.v6, prefix_len, generation);
    let Some(slot) = HITS.get_ptr_mut(hit_slot_words(key, tag)) else {
        add_to_entry(entry, 1, source.len, now);
        return;
    };
    // SAFETY: a per-CPU array slot is ours alone while this program runs on this CPU.
    let slot = unsafe { &mut *slot };
    if slot.tag == tag && slot_key(slot) == key {
        slot.packets += 1;
        slot.bytes += source.len;
        slot.last_hit_ns = now;
        return;
    }
    if slot.tag != 0 && now.wrapping_sub(slot.last_hit_ns) < HIT_SLOT_STALE_NS {
        add_to_entry(entry, 1, source.len, now);
        return;
    }
    if slot.tag != 0
        && let Some(owner) = slot_owner(slot)
    {
        add_to_entry(owner, slot.packets, slot.bytes, slot.last_hit_ns);
    }
    set_slot_key(slot, key);
    slot.tag = tag;
    slot.packets = 1;
    slot.bytes = source.len;
    slot.last_hit_ns = now;
}

/// The entry a stale slot counted for, if it still exists (same prefix, same generation).
#[inline(always)]
fn slot_owner(slot: &HitSlot) -> Option<Entry> {
    let (v6, prefix_len) = slot_tag_parts(slot.tag);
    let k = slot.key;
    let words = slot_key(slot);
    let entry = as_entry(match (v6, prefix_len) {
        (false, 32) => BLOCK_V4.get_ptr_mut([k[0], k[1], k[2], k[3]]),
        (false, _) => BLOCK_NET_V4.get_ptr_mut(net_key_v4(words[0] as u32, prefix_len)),
        (true, 128) => BLOCK_V6.get_ptr_mut(k),
        (true, _) => BLOCK_NET_V6.get_ptr_mut(net_key_v6(words, prefix_len)),
    })?;
    // SAFETY: points into a live map value.
    let e = unsafe { entry.as_ref() };
    (slot_tag(v6, e.prefix_len, e.generation) == slot.tag).then_some(entry)
}

/// Adds counts to the entry itself (shared by every CPU: atomic adds). The last-hit second is
/// written only when it changes, so a flood does not write it on every packet.
#[inline(always)]
fn add_to_entry(entry: Entry, packets: u64, bytes: u64, last_ns: u64) {
    let second = (last_ns / 1_000_000_000) as u32;
    let entry = entry.as_ptr();
    // SAFETY: the fields are u64s inside a map value, 8-byte aligned; several CPUs may add at
    // once, so the counters are atomic adds (BPF_ATOMIC_ADD).
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(
            &raw mut (*entry).hit_packets,
            packets,
        );
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*entry).hit_bytes, bytes);
        if (*entry).last_hit_s < second {
            (*entry).last_hit_s = second;
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
