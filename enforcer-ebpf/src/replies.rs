//! Replies to the host's own connections (issue 22): a TCP segment from a blocked source that
//! belongs to a connection this host opened passes. Looked at only on the drop path, so a
//! legitimate packet pays nothing.
//!
//! "Opened by this host" is told by the kernel's socket lookup (`bpf_skc_lookup_tcp`, in the
//! receiving device's namespace) finding a socket for the segment's 4-tuple in a connecting or
//! connected state (not a listener, a half-open request or a `TIME_WAIT` remnant), whose local
//! port lies in the host's ephemeral range: a connection accepted from the blocked source (an
//! SSH session it opened before the block) has the service's port, and stays blocked. The lookup
//! runs only for a segment to an ephemeral port.

use core::mem::MaybeUninit;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{BPF_F_CURRENT_NETNS, bpf_sock_tuple},
    helpers::{bpf_sk_release, bpf_skc_lookup_tcp},
    programs::XdpContext,
};
use enforcer_common::scope::PROTO_TCP;

use crate::{
    frame::{Frame, PORTS, Peek},
    load, ptr_at,
};

/// `ephemeral_low << 16 | ephemeral_high` (host order), set at load from the host's
/// `ip_local_port_range`; 0: replies are judged like every other packet.
#[unsafe(no_mangle)]
static REPLIES: u32 = 0;

const TCP_TIME_WAIT: u32 = 6;
const TCP_CLOSE: u32 = 7;
const TCP_LISTEN: u32 = 10;
const TCP_NEW_SYN_RECV: u32 = 12;

/// Whether the frame is a TCP segment of a connection this host opened. Everything but a TCP
/// segment to an ephemeral port is out after a few loads ([`Frame::peek`]; the frame's parse,
/// shared with the scope check and the flood detector, only when IPv6 extension headers come
/// first or it was done already): the tuple is built, and the kernel asked, only for those.
#[inline(always)]
pub(crate) fn is_reply(ctx: &XdpContext, mut frame: Frame) -> bool {
    // SAFETY: a read-only global, read whole.
    let range = unsafe { core::ptr::read_volatile(&REPLIES) };
    if range == 0 {
        return false;
    }
    let (sport, dport) = match frame.peek(ctx) {
        Peek::Header { proto, l4, end } => {
            // The ports inside the datagram, not in a short frame's padding.
            if proto != PROTO_TCP || l4 + 4 > end {
                return false;
            }
            let Some(ports) = ptr_at::<[u16; 2]>(ctx, l4 & 0x3fff) else {
                return false;
            };
            // SAFETY: inside the checked 4 bytes.
            unsafe {
                let p = ports as *const u16;
                (load(p), load(p.add(1)))
            }
        }
        Peek::Nothing => return false,
        Peek::Parse => {
            frame.parse(ctx);
            if frame.kind() != PORTS || frame.proto() != PROTO_TCP {
                return false;
            }
            frame.ports()
        }
    };
    let port = u16::from_be(dport);
    if port < (range >> 16) as u16 || port > range as u16 {
        return false;
    }
    if frame.v6() {
        v6_reply(ctx, frame.l3(), sport, dport)
    } else {
        v4_reply(ctx, frame.l3(), sport, dport)
    }
}

/// [`opened_here`] for an IPv4 segment, from the packet's view (its source is the remote end).
#[inline(always)]
fn v4_reply(ctx: &XdpContext, l3: usize, sport: u16, dport: u16) -> bool {
    // The addresses: the parse read past them, but the verifier knows the offset only as a
    // number, so this is the one check of them the reply path makes.
    let Some(h) = ptr_at::<[u32; 5]>(ctx, l3) else {
        return false;
    };
    // Not zeroed first: the kernel reads only the member's bytes, all written below (a zeroed
    // tuple costs a `memset` call, a byte loop on this target: see `Match::new`).
    let mut tuple = MaybeUninit::<bpf_sock_tuple>::uninit();
    // SAFETY: the addresses lie inside the checked header; every field of the ipv4 member is
    // written, through a raw pointer (nothing reads the uninitialised rest).
    unsafe {
        let w = h as *const u32;
        let t = &raw mut (*tuple.as_mut_ptr()).__bindgen_anon_1.ipv4;
        (*t).saddr = load(w.add(3));
        (*t).daddr = load(w.add(4));
        (*t).sport = sport;
        (*t).dport = dport;
    }
    opened_here(ctx, tuple.as_mut_ptr(), size_of::<[u32; 3]>() as u32)
}

/// As [`v4_reply`], for IPv6 (the TCP header after the header chain the parse walked).
#[inline(always)]
fn v6_reply(ctx: &XdpContext, l3: usize, sport: u16, dport: u16) -> bool {
    let Some(h) = ptr_at::<[u32; 10]>(ctx, l3) else {
        return false;
    };
    // As in `v4_reply`: only the member, every byte of it.
    let mut tuple = MaybeUninit::<bpf_sock_tuple>::uninit();
    // SAFETY: the addresses lie inside the checked header; every field of the ipv6 member is
    // written, through a raw pointer.
    unsafe {
        let w = h as *const u32;
        let t = &raw mut (*tuple.as_mut_ptr()).__bindgen_anon_1.ipv6;
        for i in 0..4 {
            (*t).saddr[i] = load(w.add(2 + i));
            (*t).daddr[i] = load(w.add(6 + i));
        }
        (*t).sport = sport;
        (*t).dport = dport;
    }
    opened_here(ctx, tuple.as_mut_ptr(), size_of::<[u32; 9]>() as u32)
}

/// Whether the kernel holds a socket for the tuple that this host is connecting or connected
/// with. The reference the lookup takes is released before returning.
#[inline(always)]
fn opened_here(ctx: &XdpContext, tuple: *mut bpf_sock_tuple, size: u32) -> bool {
    // SAFETY: `tuple` lives on the caller's stack, its first `size` bytes written (the member
    // filled in, all the kernel reads); the flags are the documented ones for the receiving
    // device's namespace.
    let sk =
        unsafe { bpf_skc_lookup_tcp(ctx.as_ptr(), tuple, size, BPF_F_CURRENT_NETNS as u64, 0) };
    if sk.is_null() {
        return false;
    }
    // SAFETY: a socket the lookup returned, valid until released (below, on every path).
    let state = unsafe { (*sk).state };
    // SAFETY: releases the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    !matches!(
        state,
        TCP_LISTEN | TCP_NEW_SYN_RECV | TCP_TIME_WAIT | TCP_CLOSE
    )
}
