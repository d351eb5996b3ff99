//! The transport header of a frame, read only while scoped blocks exist (see
//! [`enforcer_common::scope`] for the rule that judges what it cannot tell).
//!
//! IPv4: a fragment with a non-zero offset carries no ports (`PortsUnknown`); a first
//! fragment or a whole datagram has them at the header length it states, unless the frame
//! is too short to hold them (a tiny first fragment, RFC 1858: `PortsUnknown`). IPv6: up to
//! [`MAX_EXTENSIONS`] extension headers are walked (hop-by-hop, routing, destination options,
//! fragment, AH); a fragment header with a non-zero offset ends the walk with the protocol it
//! names (`PortsUnknown`), or `Unknown` when that is another extension header; more headers
//! than that, or one cut short, are `Unknown`.

use aya_ebpf::programs::XdpContext;
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
const OFFSET_MASK: usize = 0x3fff;

/// What the transport header of the IP header at `l3` says.
#[inline(always)]
pub(crate) fn parse(ctx: &XdpContext, l3: usize) -> Transport {
    let Some(h) = ptr_at::<[u32; 5]>(ctx, l3) else {
        return Transport::Unknown;
    };
    if load(h as *const u8) >> 4 == 4 {
        ipv4(ctx, l3)
    } else {
        ipv6(ctx, l3)
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize) -> Transport {
    let Some(h) = ptr_at::<[u8; 20]>(ctx, l3) else {
        return Transport::Unknown;
    };
    // SAFETY: inside the checked 20-byte header.
    let (first, frag, proto) = unsafe {
        let b = h as *const u8;
        (load(b), load((b as *const u16).add(3)), load(b.add(9)))
    };
    // The fragment offset (low 13 bits): only the fragment at offset 0 holds the ports.
    if u16::from_be(frag) & 0x1fff != 0 {
        return Transport::PortsUnknown { proto };
    }
    ports(ctx, l3 + usize::from(first & 0x0f) * 4, proto)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize) -> Transport {
    let Some(h) = ptr_at::<[u8; 40]>(ctx, l3) else {
        return Transport::Unknown;
    };
    // SAFETY: inside the checked 40-byte header.
    let mut next = load(unsafe { (h as *const u8).add(6) });
    let mut off = l3 + 40;
    for _ in 0..MAX_EXTENSIONS {
        if !matches!(next, HOP_BY_HOP | ROUTING | DEST_OPTS | AUTH | FRAGMENT) {
            return ports(ctx, off, next);
        }
        let Some(e) = ptr_at::<[u8; 4]>(ctx, off & OFFSET_MASK) else {
            return Transport::Unknown;
        };
        // SAFETY: inside the checked 4 bytes.
        let (following, len, frag) = unsafe {
            let b = e as *const u8;
            (load(b), load(b.add(1)), load((b as *const u16).add(1)))
        };
        let len = usize::from(len);
        off = match next {
            FRAGMENT => {
                // The offset is the high 13 bits; only the fragment at offset 0 goes on.
                if u16::from_be(frag) & 0xfff8 != 0 {
                    return if is_extension(following) {
                        Transport::Unknown
                    } else {
                        Transport::PortsUnknown { proto: following }
                    };
                }
                off + 8
            }
            AUTH => off + (len + 2) * 4,
            _ => off + (len + 1) * 8,
        } & OFFSET_MASK;
        next = following;
    }
    Transport::Unknown
}

#[inline(always)]
fn is_extension(proto: u8) -> bool {
    matches!(proto, HOP_BY_HOP | ROUTING | DEST_OPTS | AUTH | FRAGMENT)
}

/// TCP and UDP: the destination port of the header at `l4`, if the frame holds it.
#[inline(always)]
fn ports(ctx: &XdpContext, l4: usize, proto: u8) -> Transport {
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Transport::NoPorts { proto };
    }
    match ptr_at::<[u16; 2]>(ctx, l4 & OFFSET_MASK) {
        Some(p) => Transport::Ports {
            proto,
            // SAFETY: inside the checked 4 bytes.
            port: u16::from_be(load(unsafe { (p as *const u16).add(1) })),
        },
        None => Transport::PortsUnknown { proto },
    }
}
