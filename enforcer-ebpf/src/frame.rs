//! The frame's IP and transport headers, parsed at most once per packet and only when something
//! needs them: the scope check (while scoped blocks exist), the reply check (on a drop) or the
//! flood detector's classes (with a SYN or ICMP limit set). Each of them reads the one [`Frame`]
//! the program carries; the first that needs the transport header parses it ([`Frame::parse`]).
//! See [`enforcer_common::scope`] for the rule that judges what the parse cannot tell.
//!
//! IPv4: a fragment with a non-zero offset carries no ports (`PortsUnknown`, a later fragment);
//! a first fragment or a whole datagram has them at the header length it states, unless the
//! datagram is too short to hold them (a tiny first fragment, RFC 1858: `PortsUnknown`). IPv6: up
//! to [`MAX_EXTENSIONS`] extension headers are walked (hop-by-hop, routing, destination options,
//! fragment, AH); a fragment header with a non-zero offset ends the walk with the protocol it
//! names (`PortsUnknown`, a later fragment), or `Unknown` when that is another extension header;
//! more headers than that, or one cut short, are `Unknown`.
//!
//! Every header is read inside the datagram as its IP length states it (IPv4's total length,
//! IPv6's payload length), not up to the frame's end: a NIC pads a short frame to 60 bytes, and
//! a tiny first fragment's "ports" would otherwise come from the padding. An IPv6 jumbogram
//! (payload length 0) therefore shows no transport header (`PortsUnknown` or `Unknown`).

use aya_ebpf::{bindings::xdp_md, programs::XdpContext};
use enforcer_common::scope::{PROTO_TCP, PROTO_UDP, Transport};

use crate::{load, ptr_at};

/// The most IPv6 extension headers walked before the transport header (RFC 8200's
/// recommended order has six at most).
pub(crate) const MAX_EXTENSIONS: usize = 6;

const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTH: u8 = 51;
const DEST_OPTS: u8 = 60;
/// Offsets stay below this (the largest chain of headers ends far before it); masking with it
/// tells the verifier the offset is bounded.
const OFFSET_MASK: u32 = 0x3fff;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// [`Frame::kind`]: the protocol could not be found ([`Transport::Unknown`]).
const UNKNOWN: u8 = 1;
/// [`Frame::kind`]: TCP or UDP with both ports read ([`Transport::Ports`]).
pub(crate) const PORTS: u8 = 2;
/// [`Frame::kind`]: a protocol without ports ([`Transport::NoPorts`]).
const NO_PORTS: u8 = 3;
/// [`Frame::kind`]: ports that cannot be read ([`Transport::PortsUnknown`]): a later fragment
/// (of any protocol), or a TCP or UDP header cut short.
const PORTS_UNKNOWN: u8 = 4;

/// Where a frame's IP header lies, and once parsed, what its transport header says. Two
/// words, carried in registers: the parse happens in [`parse_frame`], a global function the
/// verifier checks once on its own, so its outcome reaches the caller as one unknown word
/// instead of a state per outcome carried through the whole lookup (which, inlined, took the
/// verifier past its instruction limit).
#[derive(Clone, Copy)]
pub(crate) struct Frame {
    /// `l3 | v6 << 16`: the IP header's offset and family (1: IPv6, also for a v4-mapped source).
    at: u32,
    /// 0 until parsed, then the fields below packed (the kind is never 0).
    word: u64,
}

/// What [`Frame::peek`] found.
pub(crate) enum Peek {
    /// The transport header of `proto` starts at `l4` (a whole datagram or a first fragment);
    /// the datagram ends at `end` (by its IP length: the frame may end before it, or go on with
    /// padding that is not the datagram's).
    Header { proto: u8, l4: usize, end: usize },
    /// No transport header: a later fragment, or an IP header cut short.
    Nothing,
    /// Extension headers come first, or the frame was parsed already: ask [`Frame::parse`].
    Parse,
}

const DPORT_SHIFT: u32 = 0;
const SPORT_SHIFT: u32 = 16;
const PROTO_SHIFT: u32 = 32;
const KIND_SHIFT: u32 = 40;
const LATER_SHIFT: u32 = 43;
const SYN_SHIFT: u32 = 44;

impl Frame {
    /// The frame whose IP header of the family `v6` starts at `l3`, its transport header unread.
    #[inline(always)]
    pub(crate) fn at(l3: usize, v6: bool) -> Self {
        Self {
            at: (l3 as u32 & OFFSET_MASK) | u32::from(v6) << 16,
            word: 0,
        }
    }

    /// What the IP header alone says of the transport header, read inline: a check that wants
    /// one protocol looks here first, so that a frame of another protocol (or a later fragment)
    /// is out after a few loads and never pays for the parse. Only an IPv6 header followed by
    /// extension headers, or a frame parsed already, sends the check to [`Frame::parse`].
    #[inline(always)]
    pub(crate) fn peek(&self, ctx: &XdpContext) -> Peek {
        if self.word != 0 {
            return Peek::Parse;
        }
        let l3 = self.l3();
        if self.v6() {
            let Some(h) = ptr_at::<[u8; 40]>(ctx, l3) else {
                return Peek::Nothing;
            };
            // SAFETY: inside the checked 40-byte header.
            let (payload, next) = unsafe {
                let b = h as *const u8;
                (load((b as *const u16).add(2)), load(b.add(6)))
            };
            if is_extension(next) {
                return Peek::Parse;
            }
            return Peek::Header {
                proto: next,
                l4: l3 + 40,
                end: l3 + 40 + usize::from(u16::from_be(payload)),
            };
        }
        let Some(h) = ptr_at::<[u8; 20]>(ctx, l3) else {
            return Peek::Nothing;
        };
        // SAFETY: inside the checked 20-byte header.
        let (first, total, frag, proto) = unsafe {
            let b = h as *const u8;
            let w = b as *const u16;
            (load(b), load(w.add(1)), load(w.add(3)), load(b.add(9)))
        };
        // The fragment offset (low 13 bits): a later fragment holds no transport header.
        if u16::from_be(frag) & 0x1fff != 0 {
            return Peek::Nothing;
        }
        Peek::Header {
            proto,
            l4: l3 + usize::from(first & 0x0f) * 4,
            end: l3 + usize::from(u16::from_be(total)),
        }
    }

    /// Reads the transport header unless it was read already: at most one parse per frame.
    #[inline(always)]
    pub(crate) fn parse(&mut self, ctx: &XdpContext) {
        if self.word == 0 {
            self.word = parse_frame(ctx.ctx, self.at);
        }
    }

    /// The IP header's offset.
    #[inline(always)]
    pub(crate) fn l3(&self) -> usize {
        (self.at & OFFSET_MASK) as usize
    }

    /// Whether the IP header is IPv6.
    #[inline(always)]
    pub(crate) fn v6(&self) -> bool {
        self.at >> 16 != 0
    }

    /// What the parse found ([`PORTS`], ...; 0 before it).
    #[inline(always)]
    pub(crate) fn kind(&self) -> u8 {
        (self.word >> KIND_SHIFT) as u8 & 7
    }

    /// The protocol (the last next-header of an IPv6 chain); 0 when unknown.
    #[inline(always)]
    pub(crate) fn proto(&self) -> u8 {
        (self.word >> PROTO_SHIFT) as u8
    }

    /// Whether the frame is a fragment at a non-zero offset.
    #[inline(always)]
    pub(crate) fn later_fragment(&self) -> bool {
        (self.word >> LATER_SHIFT) & 1 != 0
    }

    /// Whether the frame is a TCP segment whose flags say SYN without ACK (a whole datagram or
    /// a first fragment that holds them).
    #[inline(always)]
    pub(crate) fn syn(&self) -> bool {
        (self.word >> SYN_SHIFT) & 1 != 0
    }

    /// The source and destination ports as the frame holds them (network order), for [`PORTS`].
    #[inline(always)]
    pub(crate) fn ports(&self) -> (u16, u16) {
        (
            (self.word >> SPORT_SHIFT) as u16,
            (self.word >> DPORT_SHIFT) as u16,
        )
    }

    /// The transport header as the scope check takes it ([`Transport::pack`]); unread, it is
    /// [`Transport::Unknown`] (matching any scope).
    #[inline(always)]
    pub(crate) fn transport(&self) -> u32 {
        let proto = self.proto();
        match self.kind() {
            PORTS => Transport::Ports {
                proto,
                port: u16::from_be(self.ports().1),
            }
            .pack(),
            NO_PORTS => Transport::NoPorts { proto }.pack(),
            PORTS_UNKNOWN => Transport::PortsUnknown { proto }.pack(),
            _ => Transport::Unknown.pack(),
        }
    }
}

/// Parses the transport header of the IP header `at` ([`Frame::at`]) into [`Frame`]'s word.
///
/// A global function: checked by the verifier once, for any arguments; its result is then one
/// unknown word wherever it is called.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn parse_frame(ctx: *mut xdp_md, at: u32) -> u64 {
    let ctx = XdpContext::new(ctx);
    let l3 = at & OFFSET_MASK;
    let p = if at >> 16 != 0 {
        ipv6(&ctx, l3)
    } else {
        ipv4(&ctx, l3)
    };
    u64::from(p.dport) << DPORT_SHIFT
        | u64::from(p.sport) << SPORT_SHIFT
        | u64::from(p.proto) << PROTO_SHIFT
        | u64::from(p.kind) << KIND_SHIFT
        | u64::from(p.later) << LATER_SHIFT
        | u64::from(p.syn) << SYN_SHIFT
}

/// What [`parse_frame`] found, before packing.
struct Parsed {
    kind: u8,
    proto: u8,
    later: u8,
    syn: u8,
    sport: u16,
    dport: u16,
}

impl Parsed {
    #[inline(always)]
    const fn unknown() -> Self {
        Self {
            kind: UNKNOWN,
            proto: 0,
            later: 0,
            syn: 0,
            sport: 0,
            dport: 0,
        }
    }

    /// A fragment at a non-zero offset of protocol `proto`: its ports, if it has any, are in
    /// the first fragment.
    #[inline(always)]
    const fn later(proto: u8) -> Self {
        Self {
            kind: PORTS_UNKNOWN,
            proto,
            later: 1,
            ..Self::unknown()
        }
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: u32) -> Parsed {
    let Some(h) = ptr_at::<[u8; 20]>(ctx, l3 as usize) else {
        return Parsed::unknown();
    };
    // SAFETY: inside the checked 20-byte header.
    let (first, total, frag, proto) = unsafe {
        let b = h as *const u8;
        let w = b as *const u16;
        (load(b), load(w.add(1)), load(w.add(3)), load(b.add(9)))
    };
    // The fragment offset (low 13 bits): only the fragment at offset 0 holds the ports.
    if u16::from_be(frag) & 0x1fff != 0 {
        return Parsed::later(proto);
    }
    let end = l3 + u32::from(u16::from_be(total));
    ports(ctx, l3 + u32::from(first & 0x0f) * 4, end, proto)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: u32) -> Parsed {
    let Some(h) = ptr_at::<[u8; 40]>(ctx, l3 as usize) else {
        return Parsed::unknown();
    };
    // SAFETY: inside the checked 40-byte header.
    let (payload, mut next) = unsafe {
        let b = h as *const u8;
        (load((b as *const u16).add(2)), load(b.add(6)))
    };
    let end = l3 + 40 + u32::from(u16::from_be(payload));
    let mut off = l3 + 40;
    for _ in 0..MAX_EXTENSIONS {
        if !is_extension(next) {
            return ports(ctx, off, end, next);
        }
        // A header cut short, by the frame or by the payload length, ends the walk.
        if off + 4 > end {
            return Parsed::unknown();
        }
        let Some(e) = ptr_at::<[u8; 4]>(ctx, (off & OFFSET_MASK) as usize) else {
            return Parsed::unknown();
        };
        // SAFETY: inside the checked 4 bytes.
        let (following, len, frag) = unsafe {
            let b = e as *const u8;
            (load(b), load(b.add(1)), load((b as *const u16).add(1)))
        };
        let len = u32::from(len);
        off = match next {
            FRAGMENT => {
                // The offset is the high 13 bits; only the fragment at offset 0 goes on.
                if u16::from_be(frag) & 0xfff8 != 0 {
                    return if is_extension(following) {
                        Parsed {
                            later: 1,
                            ..Parsed::unknown()
                        }
                    } else {
                        Parsed::later(following)
                    };
                }
                off + 8
            }
            AUTH => off + (len + 2) * 4,
            _ => off + (len + 1) * 8,
        } & OFFSET_MASK;
        next = following;
    }
    Parsed::unknown()
}

/// The transport header of protocol `proto` at `l4` (in the fragment at offset 0), in a
/// datagram that ends at `end` by its IP length: TCP and UDP ports if the datagram holds them
/// (bytes after `end` are not the datagram's: the padding of a short frame, for one), and
/// whether TCP's flags say SYN without ACK.
#[inline(always)]
fn ports(ctx: &XdpContext, l4: u32, end: u32, proto: u8) -> Parsed {
    let l4 = l4 & OFFSET_MASK;
    let mut p = Parsed {
        kind: NO_PORTS,
        proto,
        ..Parsed::unknown()
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return p;
    }
    let Some(h) = ptr_at::<[u16; 2]>(ctx, l4 as usize).filter(|_| l4 + 4 <= end) else {
        p.kind = PORTS_UNKNOWN;
        return p;
    };
    // SAFETY: inside the checked 4 bytes.
    let (sport, dport) = unsafe {
        let h = h as *const u16;
        (load(h), load(h.add(1)))
    };
    p.kind = PORTS;
    p.sport = sport;
    p.dport = dport;
    // The flags are byte 13 of the TCP header.
    if proto == PROTO_TCP
        && l4 + 14 <= end
        && let Some(h) = ptr_at::<[u8; 14]>(ctx, l4 as usize)
        // SAFETY: inside the checked 14 bytes.
        && load(unsafe { (h as *const u8).add(13) }) & (TCP_SYN | TCP_ACK) == TCP_SYN
    {
        p.syn = 1;
    }
    p
}

#[inline(always)]
fn is_extension(proto: u8) -> bool {
    matches!(proto, HOP_BY_HOP | ROUTING | DEST_OPTS | AUTH | FRAGMENT)
}
