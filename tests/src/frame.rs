//! Crafted Ethernet frames for `BPF_PROG_TEST_RUN`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A VLAN tag: TPID (0x8100 for 802.1Q, 0x88a8 for 802.1ad) and VLAN id.
#[derive(Clone, Copy, Debug)]
pub struct Tag {
    /// Tag protocol identifier.
    pub tpid: u16,
    /// VLAN id.
    pub vid: u16,
}

/// 802.1Q tag.
pub const fn dot1q(vid: u16) -> Tag {
    Tag { tpid: 0x8100, vid }
}

/// 802.1ad (QinQ outer) tag.
pub const fn dot1ad(vid: u16) -> Tag {
    Tag { tpid: 0x88a8, vid }
}

fn ethernet(tags: &[Tag], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2]); // dst
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]); // src
    for tag in tags {
        f.extend_from_slice(&tag.tpid.to_be_bytes());
        f.extend_from_slice(&tag.vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An IPv4 UDP frame from `src` to `dst`, with optional fragment offset (in 8-byte units) and
/// more-fragments flag.
pub fn ipv4_udp(
    tags: &[Tag],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    frag_offset: u16,
    more_fragments: bool,
) -> Vec<u8> {
    let mut f = ethernet(tags, 0x0800);
    let payload = b"enforcer-test-payload";
    let udp_len = 8 + payload.len() as u16;
    let total = 20 + udp_len;
    let flags_frag = (u16::from(more_fragments) << 13) | (frag_offset & 0x1fff);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0x12, 0x34]);
    ip.extend_from_slice(&flags_frag.to_be_bytes());
    ip.extend_from_slice(&[64, 17, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let csum = checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// An IPv6 UDP frame from `src` to `dst`.
pub fn ipv6_udp(tags: &[Tag], src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut f = ethernet(tags, 0x86dd);
    let payload = b"enforcer-test-payload";
    let udp_len = 8 + payload.len() as u16;
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[17, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

/// A UDP frame from `src` (either family) to a fixed documentation destination.
pub fn udp_from(tags: &[Tag], src: IpAddr) -> Vec<u8> {
    match src {
        IpAddr::V4(s) => ipv4_udp(tags, s, Ipv4Addr::new(203, 0, 113, 1), 0, false),
        IpAddr::V6(s) => ipv6_udp(tags, s, "2001:db8:ffff::1".parse().expect("valid")),
    }
}

/// An ARP request frame.
pub fn arp(tags: &[Tag]) -> Vec<u8> {
    let mut f = ethernet(tags, 0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 192, 0, 2, 1]);
    f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 192, 0, 2, 2]);
    f.resize(f.len().max(60), 0);
    f
}

/// The offsets at which a frame's headers end (Ethernet, each tag, the IP header): truncating a
/// frame anywhere before the end of the IP header must make it unparseable.
pub fn header_len(tags: usize, v6: bool) -> usize {
    14 + 4 * tags + if v6 { 40 } else { 20 }
}

/// The Internet checksum (RFC 1071) of `data`.
pub(crate) fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A raw IP packet (no link-layer header, as on a tun, WireGuard or GRE link) carrying a UDP
/// datagram from `src:40000` to `dst:dport`, with valid IPv4 header and UDP checksums (the stack
/// drops IPv6 UDP without one).
pub fn ip_udp(src: IpAddr, dst: IpAddr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len() as u16;
    let mut udp = Vec::with_capacity(usize::from(udp_len));
    udp.extend_from_slice(&40000u16.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::new();
    let mut packet = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut ip = vec![0x45, 0];
            ip.extend_from_slice(&(20 + udp_len).to_be_bytes());
            ip.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, 17, 0, 0]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            let csum = checksum(&ip);
            ip[10..12].copy_from_slice(&csum.to_be_bytes());
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&udp_len.to_be_bytes());
            ip
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend_from_slice(&udp_len.to_be_bytes());
            ip.extend_from_slice(&[17, 64]);
            ip.extend_from_slice(&s.octets());
            ip.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&u32::from(udp_len).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 17]);
            ip
        }
        _ => panic!("{src} and {dst} are of different families"),
    };
    pseudo.extend_from_slice(&udp);
    let csum = match checksum(&pseudo) {
        0 => 0xffff,
        c => c,
    };
    udp[6..8].copy_from_slice(&csum.to_be_bytes());
    packet.extend_from_slice(&udp);
    packet
}

/// A raw IP UDP packet from `src` (either family) to a fixed documentation destination.
pub fn raw_udp_from(src: IpAddr) -> Vec<u8> {
    let dst: IpAddr = match src {
        IpAddr::V4(_) => Ipv4Addr::new(203, 0, 113, 1).into(),
        IpAddr::V6(_) => "2001:db8:ffff::1"
            .parse::<Ipv6Addr>()
            .expect("valid")
            .into(),
    };
    ip_udp(src, dst, 9, b"enforcer-test-payload")
}

/// A frame with three VLAN tags (802.1ad, then two 802.1Q) around an IPv4 UDP datagram from
/// `src`: deeper than the data path parses.
pub fn three_tags_from(src: Ipv4Addr) -> Vec<u8> {
    ipv4_udp(
        &[dot1ad(10), dot1q(20), dot1q(30)],
        src,
        Ipv4Addr::new(203, 0, 113, 1),
        0,
        false,
    )
}

/// IPv4's protocol numbers used by the crafted frames.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 hop-by-hop options.
    pub const HOP_BY_HOP: u8 = 0;
    /// IPv6 routing header.
    pub const ROUTING: u8 = 43;
    /// IPv6 fragment header.
    pub const FRAGMENT: u8 = 44;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 destination options.
    pub const DEST_OPTS: u8 = 60;
}

/// The first bytes of a transport header: a TCP SYN or a UDP header to `dport` (from port
/// 40000), or an ICMP echo request.
pub fn transport(proto: u8, dport: u16) -> Vec<u8> {
    let mut h = Vec::new();
    match proto {
        proto::TCP => {
            h.extend_from_slice(&40000u16.to_be_bytes());
            h.extend_from_slice(&dport.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
        }
        proto::UDP => {
            h.extend_from_slice(&40000u16.to_be_bytes());
            h.extend_from_slice(&dport.to_be_bytes());
            h.extend_from_slice(&[0, 16, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
        }
        _ => h.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8]),
    }
    h
}

/// An IPv4 frame carrying `payload` as protocol `proto`, with a fragment offset (in 8-byte
/// units) and the more-fragments flag.
pub fn ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    frag_offset: u16,
    more_fragments: bool,
    payload: &[u8],
) -> Vec<u8> {
    ipv4_fragment(
        src,
        dst,
        proto,
        0x1234,
        frag_offset,
        more_fragments,
        payload,
    )
}

/// As [`ipv4`], with the datagram's identification `id`: fragments of one datagram share it,
/// and the receiver reassembles by it.
pub fn ipv4_fragment(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    id: u16,
    frag_offset: u16,
    more_fragments: bool,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = ethernet(&[], 0x0800);
    let total = 20 + payload.len() as u16;
    let flags_frag = (u16::from(more_fragments) << 13) | (frag_offset & 0x1fff);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(&flags_frag.to_be_bytes());
    ip.extend_from_slice(&[64, proto, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let csum = checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(payload);
    f
}

/// An IPv6 frame whose first next header is `next`, followed by `payload` (extension headers
/// and a transport header, as built by [`ipv6_ext`], [`ipv6_fragment`] and [`transport`]).
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = ethernet(&[], 0x86dd);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[next, 64]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(payload);
    f
}

/// An 8-byte IPv6 options or routing extension header naming `next`.
pub fn ipv6_ext(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

/// An IPv6 fragment header naming `next`, at `offset` (8-byte units).
pub fn ipv6_fragment(next: u8, offset: u16, more: bool) -> Vec<u8> {
    ipv6_fragment_of(0x1234, next, offset, more)
}

/// As [`ipv6_fragment`], of the datagram identified by `id` (the receiver reassembles by it).
pub fn ipv6_fragment_of(id: u32, next: u8, offset: u16, more: bool) -> Vec<u8> {
    let field = (offset << 3) | u16::from(more);
    let mut h = vec![next, 0];
    h.extend_from_slice(&field.to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h
}
