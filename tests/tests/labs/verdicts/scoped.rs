//! Port- and protocol-scoped blocks on crafted frames (issue 22): a scoped block drops only its
//! protocol and ports, fragments and extension headers never slip past it, and scoped and
//! whole-address entries of nested prefixes combine as the longest live match says.

use std::net::{Ipv4Addr, Ipv6Addr};

use enforcer_common::scope::{PortRange, ScopeValue, Scopes};
use enforcer_tests::frame::{self, proto};

use super::*;

const V4_DST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

fn v6_dst() -> Ipv6Addr {
    "2001:db8:ffff::1".parse().unwrap()
}

fn ports(ranges: &[(u16, u16)]) -> ScopeValue {
    let mut v = ScopeValue {
        count: ranges.len() as u8,
        ..ScopeValue::default()
    };
    for (slot, &(lo, hi)) in v.ranges.iter_mut().zip(ranges) {
        *slot = PortRange { lo, hi };
    }
    v
}

fn all() -> ScopeValue {
    ScopeValue {
        all: 1,
        ..ScopeValue::default()
    }
}

/// tcp/22 and tcp/8000-8080.
fn ssh_and_web() -> Scopes {
    Scopes {
        tcp: Some(ports(&[(22, 22), (8000, 8080)])),
        ..Scopes::default()
    }
}

impl Fixture {
    fn block_scoped(&mut self, target: &str, mode: u32, scopes: Option<Scopes>) {
        let t: Target = target.parse().expect("target");
        let value = BlockValue {
            scopes,
            ..BlockValue::new(0, mode)
        };
        self.dp
            .maps_mut()
            .insert_block(&t, &value)
            .expect("insert block");
    }

    fn v4(&mut self, src: &str, p: u8, dport: u16) -> u32 {
        let src: Ipv4Addr = src.parse().unwrap();
        self.verdict(&frame::ipv4(
            src,
            V4_DST,
            p,
            0,
            false,
            &frame::transport(p, dport),
        ))
    }

    fn v6(&mut self, src: &str, p: u8, dport: u16) -> u32 {
        let src: Ipv6Addr = src.parse().unwrap();
        self.verdict(&frame::ipv6(src, v6_dst(), p, &frame::transport(p, dport)))
    }

    fn v6_chain(&mut self, src: &str, next: u8, chain: &[Vec<u8>]) -> u32 {
        let src: Ipv6Addr = src.parse().unwrap();
        self.verdict(&frame::ipv6(src, v6_dst(), next, &chain.concat()))
    }
}

#[test]
fn a_port_scoped_block_drops_only_its_protocol_and_ports_in_both_families() {
    let mut f = Fixture::new();
    f.block_scoped("198.51.100.7", MODE_ENFORCE, Some(ssh_and_web()));
    f.block_scoped("2001:db8::7", MODE_ENFORCE, Some(ssh_and_web()));
    for port in [22, 8000, 8042, 8080] {
        assert_eq!(
            f.v4("198.51.100.7", proto::TCP, port),
            XDP_DROP,
            "tcp/{port}"
        );
        assert_eq!(
            f.v6("2001:db8::7", proto::TCP, port),
            XDP_DROP,
            "tcp/{port}"
        );
    }
    for port in [21, 23, 80, 7999, 8081] {
        assert_eq!(
            f.v4("198.51.100.7", proto::TCP, port),
            XDP_PASS,
            "tcp/{port}"
        );
        assert_eq!(
            f.v6("2001:db8::7", proto::TCP, port),
            XDP_PASS,
            "tcp/{port}"
        );
    }
    assert_eq!(f.v4("198.51.100.7", proto::UDP, 22), XDP_PASS, "udp/22");
    assert_eq!(f.v6("2001:db8::7", proto::UDP, 22), XDP_PASS, "udp/22");
    assert_eq!(f.v4("198.51.100.7", proto::ICMP, 0), XDP_PASS, "icmp");
    assert_eq!(f.v6("2001:db8::7", proto::ICMPV6, 0), XDP_PASS, "icmpv6");
    assert_eq!(
        f.v4("198.51.100.8", proto::TCP, 22),
        XDP_PASS,
        "another source"
    );
    assert_eq!(
        f.hits("198.51.100.7"),
        4,
        "only the dropped frames are hits"
    );
}

#[test]
fn an_icmp_scope_covers_icmp_and_icmpv6_and_nothing_else() {
    let mut f = Fixture::new();
    let icmp = Scopes {
        icmp: Some(all()),
        ..Scopes::default()
    };
    f.block_scoped("198.51.100.7", MODE_ENFORCE, Some(icmp));
    f.block_scoped("2001:db8::7", MODE_ENFORCE, Some(icmp));
    assert_eq!(f.v4("198.51.100.7", proto::ICMP, 0), XDP_DROP);
    assert_eq!(f.v6("2001:db8::7", proto::ICMPV6, 0), XDP_DROP);
    assert_eq!(f.v4("198.51.100.7", proto::TCP, 22), XDP_PASS);
    assert_eq!(f.v6("2001:db8::7", proto::UDP, 53), XDP_PASS);
}

#[test]
fn ipv4_fragments_never_slip_past_a_port_scoped_block() {
    let mut f = Fixture::new();
    f.block_scoped("198.51.100.7", MODE_ENFORCE, Some(ssh_and_web()));
    let src: Ipv4Addr = "198.51.100.7".parse().unwrap();
    let frag = |f: &mut Fixture, p, offset, more, payload: &[u8]| {
        f.verdict(&frame::ipv4(src, V4_DST, p, offset, more, payload))
    };
    let tcp_22 = frame::transport(proto::TCP, 22);
    let tcp_80 = frame::transport(proto::TCP, 80);
    // A first fragment is judged by its own ports.
    assert_eq!(frag(&mut f, proto::TCP, 0, true, &tcp_22), XDP_DROP);
    assert_eq!(frag(&mut f, proto::TCP, 0, true, &tcp_80), XDP_PASS);
    // Tiny first fragments (RFC 1858): too short to hold the destination port.
    assert_eq!(frag(&mut f, proto::TCP, 0, true, &tcp_80[..2]), XDP_DROP);
    assert_eq!(frag(&mut f, proto::TCP, 0, true, &[]), XDP_DROP);
    // Later fragments carry no ports, whatever their bytes look like (an overlapping fragment
    // at offset 1 that would rewrite the header, RFC 3128, included): their protocol decides.
    for offset in [1, 2, 100, 0x1fff] {
        assert_eq!(frag(&mut f, proto::TCP, offset, true, &tcp_80), XDP_DROP);
        assert_eq!(frag(&mut f, proto::TCP, offset, false, &tcp_80), XDP_DROP);
        assert_eq!(frag(&mut f, proto::UDP, offset, false, &tcp_80), XDP_PASS);
    }
}

#[test]
fn ipv6_extension_headers_are_walked_and_fragments_never_slip_past_a_port_scoped_block() {
    let mut f = Fixture::new();
    f.block_scoped("2001:db8::7", MODE_ENFORCE, Some(ssh_and_web()));
    let x = "2001:db8::7";
    let tcp = |port| frame::transport(proto::TCP, port);
    // Hop-by-hop, destination options and routing headers before TCP.
    let chain = |port| {
        vec![
            frame::ipv6_ext(proto::DEST_OPTS),
            frame::ipv6_ext(proto::ROUTING),
            frame::ipv6_ext(proto::TCP),
            tcp(port),
        ]
    };
    assert_eq!(f.v6_chain(x, proto::HOP_BY_HOP, &chain(22)), XDP_DROP);
    assert_eq!(f.v6_chain(x, proto::HOP_BY_HOP, &chain(80)), XDP_PASS);
    // A first fragment is judged by its ports; a later one by its protocol.
    let first = |port| vec![frame::ipv6_fragment(proto::TCP, 0, true), tcp(port)];
    assert_eq!(f.v6_chain(x, proto::FRAGMENT, &first(22)), XDP_DROP);
    assert_eq!(f.v6_chain(x, proto::FRAGMENT, &first(80)), XDP_PASS);
    let later = |p, offset| vec![frame::ipv6_fragment(p, offset, false), tcp(80)];
    for offset in [1, 2, 0x1fff] {
        assert_eq!(
            f.v6_chain(x, proto::FRAGMENT, &later(proto::TCP, offset)),
            XDP_DROP
        );
        assert_eq!(
            f.v6_chain(x, proto::FRAGMENT, &later(proto::UDP, offset)),
            XDP_PASS
        );
        // What follows a later fragment's header cannot be told: judged as matching.
        assert_eq!(
            f.v6_chain(x, proto::FRAGMENT, &later(proto::DEST_OPTS, offset)),
            XDP_DROP
        );
    }
    // A tiny first fragment (the port cut off), and a chain longer than the walk.
    let tiny = vec![
        frame::ipv6_fragment(proto::TCP, 0, true),
        tcp(80)[..2].to_vec(),
    ];
    assert_eq!(f.v6_chain(x, proto::FRAGMENT, &tiny), XDP_DROP);
    let mut long: Vec<Vec<u8>> = (0..7).map(|_| frame::ipv6_ext(proto::DEST_OPTS)).collect();
    long.push(tcp(80));
    assert_eq!(f.v6_chain(x, proto::DEST_OPTS, &long), XDP_DROP);
    // Cut short inside an extension header.
    let cut = vec![frame::ipv6_ext(proto::TCP)[..1].to_vec()];
    assert_eq!(f.v6_chain(x, proto::DEST_OPTS, &cut), XDP_DROP);
}

/// `frame` with `n` zero bytes after the IP datagram: what a NIC that pads short frames to
/// Ethernet's 60 bytes hands the program (the IP lengths do not count the padding).
fn padded(mut frame: Vec<u8>, n: usize) -> Vec<u8> {
    frame.resize(frame.len() + n, 0);
    frame
}

/// The ports are read inside the IP datagram (IPv4's total length, IPv6's payload length), never
/// from bytes after it: a tiny first fragment or a cut TCP header padded out to 60 bytes would
/// otherwise show destination port 0 (not the scoped one) and pass, where its ports cannot be
/// read and it is judged as matching.
#[test]
fn ports_are_read_inside_the_ip_length_not_from_the_padding_after_it() {
    let mut f = Fixture::new();
    f.block_scoped("198.51.100.7", MODE_ENFORCE, Some(ssh_and_web()));
    f.block_scoped("2001:db8::7", MODE_ENFORCE, Some(ssh_and_web()));
    let src4: Ipv4Addr = "198.51.100.7".parse().unwrap();
    let src6: Ipv6Addr = "2001:db8::7".parse().unwrap();
    let tcp = |port| frame::transport(proto::TCP, port);
    let v4 = |more, payload: &[u8]| frame::ipv4(src4, V4_DST, proto::TCP, 0, more, payload);
    let v6 = |next, payload: &[Vec<u8>]| frame::ipv6(src6, v6_dst(), next, &payload.concat());
    // Short frames padded to 60 bytes; IPv6 frames are 60 bytes or more without padding, so
    // its tiny first fragment carries an 8-byte trailer.
    let tiny6 = [
        frame::ipv6_fragment(proto::TCP, 0, true),
        tcp(80)[..2].to_vec(),
    ];
    let cut = [
        ("IPv4 tiny first fragment", v4(true, &tcp(80)[..2])),
        (
            "IPv4 TCP header cut after the source port",
            v4(false, &tcp(80)[..2]),
        ),
        ("IPv4 first fragment without transport bytes", v4(true, &[])),
        (
            "IPv6 TCP header cut after the source port",
            v6(proto::TCP, &[tcp(80)[..2].to_vec()]),
        ),
        (
            "IPv6 tiny first fragment",
            padded(v6(proto::FRAGMENT, &tiny6), 8),
        ),
    ];
    let verdicts: Vec<(&str, u32)> = cut
        .into_iter()
        .map(|(what, frame)| {
            let n = 60usize.saturating_sub(frame.len());
            (what, f.verdict(&padded(frame, n)))
        })
        .collect();
    assert_eq!(
        verdicts,
        verdicts
            .iter()
            .map(|&(what, _)| (what, XDP_DROP))
            .collect::<Vec<_>>(),
        "frames whose ports lie past the IP length are judged as matching (1 = drop, 2 = pass)"
    );
    // Whole headers are read as before, padded or not.
    for n in [0, 6] {
        assert_eq!(f.verdict(&padded(v4(false, &tcp(80)), n)), XDP_PASS);
        assert_eq!(f.verdict(&padded(v4(false, &tcp(22)), n)), XDP_DROP);
        assert_eq!(f.verdict(&padded(v6(proto::TCP, &[tcp(80)]), n)), XDP_PASS);
        assert_eq!(f.verdict(&padded(v6(proto::TCP, &[tcp(22)]), n)), XDP_DROP);
    }
}

#[test]
fn a_scoped_entry_that_does_not_cover_a_frame_leaves_it_to_a_wider_whole_block() {
    let mut f = Fixture::new();
    f.block_scoped("198.51.100.0/24", MODE_ENFORCE, None);
    f.block_scoped("198.51.100.7", MODE_ENFORCE, Some(ssh_and_web()));
    assert_eq!(
        f.v4("198.51.100.7", proto::TCP, 80),
        XDP_DROP,
        "the /24 drops it"
    );
    assert_eq!(f.v4("198.51.100.7", proto::TCP, 22), XDP_DROP);
    // A scoped prefix under a whole address: the address decides.
    f.block_scoped("2001:db8::/64", MODE_ENFORCE, Some(ssh_and_web()));
    f.block_scoped("2001:db8::7", MODE_ENFORCE, None);
    assert_eq!(f.v6("2001:db8::7", proto::UDP, 53), XDP_DROP);
    assert_eq!(f.v6("2001:db8::8", proto::UDP, 53), XDP_PASS);
    assert_eq!(f.v6("2001:db8::8", proto::TCP, 8080), XDP_DROP);
    // A scoped enforced address over a shadow /24: outside the scope, the shadow counts it.
    let mut f = Fixture::new();
    f.block_scoped("198.51.100.0/24", MODE_SHADOW, None);
    f.block_scoped("198.51.100.7", MODE_ENFORCE, Some(ssh_and_web()));
    assert_eq!(f.v4("198.51.100.7", proto::TCP, 80), XDP_PASS);
    assert_eq!(f.hits("198.51.100.0/24"), 1);
    assert_eq!(f.v4("198.51.100.7", proto::TCP, 22), XDP_DROP);
    assert_eq!(f.hits("198.51.100.7"), 1);
}

#[test]
fn rewriting_a_block_changes_its_scope_and_reads_back_what_the_kernel_holds() {
    let mut f = Fixture::new();
    let x = "198.51.100.7";
    let t: Target = x.parse().unwrap();
    f.block_scoped(x, MODE_ENFORCE, Some(ssh_and_web()));
    let read = |f: &Fixture| f.dp.maps().get_block(&t).unwrap().unwrap().scopes;
    assert_eq!(read(&f), Some(ssh_and_web()));
    // Narrowed to udp/53: tcp/22 passes again (its entry is gone), udp/53 drops.
    let dns = Scopes {
        udp: Some(ports(&[(53, 53)])),
        ..Scopes::default()
    };
    f.block_scoped(x, MODE_ENFORCE, Some(dns));
    assert_eq!(read(&f), Some(dns));
    assert_eq!(f.v4(x, proto::TCP, 22), XDP_PASS);
    assert_eq!(f.v4(x, proto::UDP, 53), XDP_DROP);
    // Widened to the whole address, then removed: nothing scoped is left behind.
    f.block_scoped(x, MODE_ENFORCE, None);
    assert_eq!(read(&f), None);
    assert_eq!(f.v4(x, proto::TCP, 80), XDP_DROP);
    f.dp.maps_mut().remove_block(&t).unwrap();
    assert_eq!(f.v4(x, proto::UDP, 53), XDP_PASS);
    f.block_scoped(x, MODE_ENFORCE, Some(dns));
    assert_eq!(
        f.v4(x, proto::TCP, 22),
        XDP_PASS,
        "no stale tcp entry came back"
    );
}
