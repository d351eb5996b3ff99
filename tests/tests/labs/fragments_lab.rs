//! Fragments against a port-scoped block, on the wire (issue 22): the rule of
//! docs/architecture.md ("Scoped blocks in the data path"), which the verdict tests prove on
//! frames handed to the program, proven here with real datagrams of both families crossing the
//! lab's veth pair to the daemon's program. The source blocked for udp/5353 sends datagrams its
//! own kernel fragments, and fragments crafted on a packet socket (tiny first fragments,
//! overlapping ones, IPv6 fragment headers behind a long extension chain or in front of another
//! extension header). What the receiver's sockets get and the block's own drop counter
//! (`enforcer list`) say what the program did, in the same window as an unblocked source's
//! frames, which arrive whole.

use std::net::{IpAddr, UdpSocket};

use enforcer_tests::{
    Lab, RECEIVER_V4, RECEIVER_V6, SENDER_IF, SENDER_V4, SENDER_V6, Tally,
    daemon::{Daemon, entry, ok},
    flood::{Frames, burst},
    frame::{self, proto},
    require_root,
};

/// The blocked sources' scoped port, and another port of the receiver.
const SCOPED: u16 = 5353;
const OTHER: u16 = 5354;
/// The sender's MTU: a larger datagram leaves its kernel in fragments.
const MTU: usize = 1280;
/// A datagram the sender fragments (4 fragments of either family at [`MTU`]).
const LARGE: usize = 4000;
/// A datagram that fits in one frame.
const SMALL: usize = 100;
/// Datagrams of each kind per window.
const COUNT: u32 = 3;
/// Room for a UDP payload in a crafted frame: the tally's tag, padded.
const CRAFTED: usize = 40;

/// A lab whose daemon blocks the second sender address of each family for udp/5353 only.
fn lab_with_scoped_blocks() -> (Lab, Daemon) {
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    for x in [SENDER_V4[1], SENDER_V6[1]] {
        let port = SCOPED.to_string();
        ok(&d.cli(&["block", x, "--proto", "udp", "--port", &port, "--ttl", "1h"]));
    }
    (lab, d)
}

/// Each family's blocked source, an unblocked one, and the receiver's address.
fn families() -> [(&'static str, &'static str, &'static str); 2] {
    [
        (SENDER_V4[1], SENDER_V4[2], RECEIVER_V4),
        (SENDER_V6[1], SENDER_V6[2], RECEIVER_V6),
    ]
}

/// Packets the block of `x` dropped so far (its kernel counter, as `enforcer list` sums it).
fn dropped(d: &Daemon, x: &str) -> u64 {
    entry(&d.list(&[]), x).packets
}

/// How many fragments the sender's kernel makes of a UDP datagram with `payload` bytes.
fn fragments(payload: usize, v6: bool) -> u64 {
    // Every fragment but the last carries a multiple of 8 bytes after the IP header (and, for
    // IPv6, the fragment header).
    let per = (MTU - if v6 { 48 } else { 20 }) & !7;
    (payload + 8).div_ceil(per) as u64
}

/// The sender fragments a large datagram itself (its MTU is 1280): to the scoped port no
/// fragment of it passes, so it never arrives, while an unblocked source's same datagram arrives
/// whole in the same window. To another port it does not arrive either: its first fragment
/// passes (its port is not scoped) but the later ones carry no port and are judged by their
/// protocol, UDP, which is scoped (the documented cost); an unfragmented datagram to that port
/// arrives. The block's counter holds exactly the fragments dropped.
#[test]
fn datagrams_the_sender_fragments_never_pass_a_port_scoped_block() {
    require_root();
    let (lab, d) = lab_with_scoped_blocks();
    let mtu = MTU.to_string();
    lab.sender
        .ip(&["link", "set", SENDER_IF, "mtu", &mtu])
        .unwrap();
    for (x, y, dst) in families() {
        let scoped = lab.udp_listener_on(dst, SCOPED).unwrap();
        let other = lab.udp_listener_on(dst, OTHER).unwrap();
        let (from_x, from_y) = (lab.udp_sender(x).unwrap(), lab.udp_sender(y).unwrap());
        let flows: [(&UdpSocket, &UdpSocket, usize); 4] = [
            (&from_x, &scoped, LARGE),
            (&from_x, &other, LARGE),
            (&from_x, &other, SMALL),
            (&from_y, &scoped, LARGE),
        ];
        let tallies: Vec<Tally<'_>> = flows.iter().map(|f| Tally::new(f.1, f.2)).collect();
        let send = || -> anyhow::Result<()> {
            for _ in 0..COUNT {
                for ((from, to, _), tally) in flows.iter().zip(&tallies) {
                    from.send_to(&tally.payload(), to.local_addr()?)?;
                }
            }
            Ok(())
        };
        let before = dropped(&d, x);
        let got = lab.window(send, &tallies, u32::MAX).unwrap();
        assert_eq!(
            got,
            [0, 0, COUNT, COUNT],
            "datagrams arrived whole of: {x}'s {LARGE} B to udp/{SCOPED} (scoped), {x}'s \
             {LARGE} B to udp/{OTHER}, {x}'s {SMALL} B to udp/{OTHER}, {y}'s {LARGE} B to \
             udp/{SCOPED} (not blocked)"
        );
        let n = fragments(LARGE, x.contains(':'));
        assert_eq!(
            dropped(&d, x) - before,
            u64::from(COUNT) * (n + n - 1),
            "{x}'s block counts every fragment to udp/{SCOPED} ({n} each) and the later ones \
             to udp/{OTHER} ({} each)",
            n - 1
        );
    }
}

/// One datagram to be crafted: its UDP segment (header and payload, checksum set) and where it
/// goes.
struct Craft {
    src: IpAddr,
    dst: IpAddr,
    id: u16,
    udp: Vec<u8>,
}

impl Craft {
    fn new(src: &str, dst: &str, id: u16, dport: u16, payload: &[u8]) -> Self {
        let (src, dst): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        let packet = frame::ip_udp(src, dst, dport, payload);
        let header = if src.is_ipv4() { 20 } else { 40 };
        Self {
            src,
            dst,
            id,
            udp: packet[header..].to_vec(),
        }
    }

    /// An IPv4 fragment of this datagram at `offset` (8-byte units) carrying `bytes`.
    fn v4(&self, offset: u16, more: bool, bytes: &[u8]) -> Vec<u8> {
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (self.src, self.dst) else {
            panic!("{} is not IPv4", self.src);
        };
        frame::ipv4_fragment(src, dst, proto::UDP, self.id, offset, more, bytes)
    }

    /// An IPv6 fragment of this datagram: `chain` destination options headers, then a fragment
    /// header at `offset` (8-byte units) naming `next`, then `bytes`.
    fn v6(&self, chain: usize, next: u8, offset: u16, more: bool, bytes: &[u8]) -> Vec<u8> {
        let (IpAddr::V6(src), IpAddr::V6(dst)) = (self.src, self.dst) else {
            panic!("{} is not IPv6", self.src);
        };
        let mut payload = Vec::new();
        for i in 0..chain {
            let next = if i + 1 == chain {
                proto::FRAGMENT
            } else {
                proto::DEST_OPTS
            };
            payload.extend(frame::ipv6_ext(next));
        }
        payload.extend(frame::ipv6_fragment_of(
            u32::from(self.id),
            next,
            offset,
            more,
        ));
        payload.extend_from_slice(bytes);
        let first = if chain > 0 {
            proto::DEST_OPTS
        } else {
            proto::FRAGMENT
        };
        frame::ipv6(src, dst, first, &payload)
    }

    /// The datagram in two fragments, split after 16 bytes: how a sender fragments it.
    fn split(&self) -> Vec<Vec<u8>> {
        let u = &self.udp;
        if self.src.is_ipv4() {
            vec![self.v4(0, true, &u[..16]), self.v4(2, false, &u[16..])]
        } else {
            vec![
                self.v6(0, proto::UDP, 0, true, &u[..16]),
                self.v6(0, proto::UDP, 2, false, &u[16..]),
            ]
        }
    }
}

/// A crafted attempt on the block: the blocked source's frames of a datagram to udp/5354 (a
/// port outside the scope), how many of them the program must drop, and an unblocked source's
/// frames of the same datagram that must arrive.
struct Attempt {
    what: &'static str,
    v6: bool,
    /// The blocked source's frames, from its datagram to udp/5354 and, for an overlap, another
    /// to the scoped port with the same identification.
    attack: fn(&Craft, &Craft) -> Vec<Vec<u8>>,
    drops: u64,
    /// The unblocked source's frames of its datagram to udp/5354 (a `Craft` of its own).
    control: fn(&Craft) -> Vec<Vec<u8>>,
}

fn attempts() -> [Attempt; 7] {
    [
        Attempt {
            what: "IPv4 split: the first fragment judged by its port, the second by UDP",
            v6: false,
            attack: |c, _| c.split(),
            drops: 1,
            control: Craft::split,
        },
        Attempt {
            what: "IPv4 tiny first fragments (RFC 1858: 2 and 0 bytes of the UDP header), \
                   then the rest",
            v6: false,
            attack: |c, _| {
                let u = &c.udp;
                vec![
                    c.v4(0, true, &u[..2]),
                    c.v4(0, true, &[]),
                    c.v4(1, false, &u[8..]),
                ]
            },
            drops: 3,
            control: Craft::split,
        },
        Attempt {
            what: "IPv4 overlapping first fragments (RFC 3128): port 5354, then port 5353 \
                   over it, then the rest",
            v6: false,
            attack: |c, scoped| {
                let (u, s) = (&c.udp, &scoped.udp);
                vec![
                    c.v4(0, true, &u[..16]),
                    scoped.v4(0, true, &s[..16]),
                    c.v4(2, false, &u[16..]),
                ]
            },
            drops: 2,
            control: Craft::split,
        },
        Attempt {
            what: "IPv6 split: the first fragment judged by its port, the second by UDP",
            v6: true,
            attack: |c, _| c.split(),
            drops: 1,
            control: Craft::split,
        },
        Attempt {
            what: "IPv6 tiny first fragment (2 bytes of the UDP header), then the rest",
            v6: true,
            attack: |c, _| {
                let u = &c.udp;
                vec![
                    c.v6(0, proto::UDP, 0, true, &u[..2]),
                    c.v6(0, proto::UDP, 1, false, &u[8..]),
                ]
            },
            drops: 2,
            control: Craft::split,
        },
        Attempt {
            what: "IPv6 fragments behind 6 destination options headers (7 extension headers, \
                   longer than the walk)",
            v6: true,
            attack: |c, _| behind_long_chain(c),
            drops: 2,
            control: behind_long_chain,
        },
        Attempt {
            what: "IPv6 fragments whose fragmentable part starts with a destination options \
                   header (a later fragment cannot name its protocol)",
            v6: true,
            attack: |c, _| options_after_fragment_header(c),
            drops: 1,
            control: options_after_fragment_header,
        },
    ]
}

/// The datagram split after 16 bytes, each fragment behind 6 destination options headers.
fn behind_long_chain(c: &Craft) -> Vec<Vec<u8>> {
    let u = &c.udp;
    vec![
        c.v6(6, proto::UDP, 0, true, &u[..16]),
        c.v6(6, proto::UDP, 2, false, &u[16..]),
    ]
}

/// The datagram behind a destination options header that follows the fragment header, so that
/// it is fragmentable: the first fragment holds the options header and the UDP header (ports
/// readable), the second names the options header as its next header.
fn options_after_fragment_header(c: &Craft) -> Vec<Vec<u8>> {
    let mut part = frame::ipv6_ext(proto::UDP);
    part.extend_from_slice(&c.udp);
    vec![
        c.v6(0, proto::DEST_OPTS, 0, true, &part[..16]),
        c.v6(0, proto::DEST_OPTS, 2, false, &part[16..]),
    ]
}

/// Fragments crafted to slip past a udp/5353 block, sent from a packet socket on the sender's
/// end of the link: every one the rule says is dropped is counted by the block, and the
/// blocked source's datagram never reaches the receiver's socket, while the unblocked source's
/// frames (the same crafted fragments where the receiver's kernel reassembles them, a plain
/// split where it refuses them: tiny and overlapping fragments) arrive whole in the same window.
#[test]
fn crafted_fragments_never_slip_past_a_port_scoped_block() {
    require_root();
    let (lab, d) = lab_with_scoped_blocks();
    let frames = Frames::new(&lab).unwrap();
    // One pair of sockets per family for every attempt (each attempt's tallies have their own
    // tags): binding the fixed ports again at each attempt failed with EADDRINUSE when another
    // test's process spawn (fork) still held the closed socket's descriptor until its exec.
    let listeners = families().map(|(_, _, dst)| {
        (
            lab.udp_listener_on(dst, SCOPED).unwrap(),
            lab.udp_listener_on(dst, OTHER).unwrap(),
        )
    });
    for (n, attempt) in attempts().iter().enumerate() {
        let (x, y, dst) = families()[usize::from(attempt.v6)];
        let (scoped, other) = &listeners[usize::from(attempt.v6)];
        let tallies = [
            Tally::new(other, CRAFTED),
            Tally::new(scoped, CRAFTED),
            Tally::new(other, CRAFTED),
        ];
        // Identifications of this attempt's own (the blocked and the unblocked source's).
        let id = 0x4000 + 2 * n as u16;
        let attack = (attempt.attack)(
            &Craft::new(x, dst, id, OTHER, &tallies[0].payload()),
            &Craft::new(x, dst, id, SCOPED, &tallies[1].payload()),
        );
        let control = (attempt.control)(&Craft::new(y, dst, id + 1, OTHER, &tallies[2].payload()));
        let all: Vec<Vec<u8>> = attack
            .into_iter()
            .chain(control)
            .map(|f| frames.on_link(f))
            .collect();
        let before = dropped(&d, x);
        let send = || burst(&lab, &all).map(drop);
        let got = lab.window(send, &tallies, u32::MAX).unwrap();
        assert_eq!(
            got,
            [0, 0, 1],
            "{}: datagrams arrived from {x} to udp/{OTHER}, from {x} to udp/{SCOPED} and from \
             {y} (not blocked) to udp/{OTHER}",
            attempt.what
        );
        assert_eq!(
            dropped(&d, x) - before,
            attempt.drops,
            "{}: frames of {x} dropped by its block",
            attempt.what
        );
    }
}
