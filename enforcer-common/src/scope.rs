//! Port and protocol scopes in the data path (issue 22): the layout of the scope map and the
//! rule that says whether a packet falls in a scoped block.
//!
//! A block entry whose [`FLAG_SCOPED`] is set covers only what its scope entries say: one entry
//! per (target, protocol) in the scope map, keyed by [`ScopeKey`], holding the destination
//! ports ([`ScopeValue`]). Entries without the flag (every whole-address block) never look at
//! the scope map nor at the transport header, so whole-address blocks and a miss keep their
//! cost; only a hit on a scoped entry parses the transport header and does one more lookup.
//!
//! The rule for what the transport header cannot tell ([`Transport`]): a packet whose ports
//! cannot be read (a non-first fragment, a first fragment too short to hold them, RFC 1858; a
//! truncated header) is judged as if its ports matched, so it is dropped when its protocol is
//! scoped at all; a packet whose protocol cannot be found (more IPv6 extension headers than the
//! data path walks, a non-first IPv6 fragment whose fragmentable part starts with an extension
//! header) is judged as matching any scope of the block. Every fragment with offset 0 is judged
//! by its own ports, and ports lie in the first 4 bytes of the transport header, which only an
//! offset-0 fragment carries: a reassembled datagram's ports therefore come from a fragment that
//! was judged, whatever later fragments overlap (RFC 3128). The cost: a scoped source's
//! fragmented datagrams of a scoped protocol do not get through to any port.

/// [`crate::BlockEntry::flags`]: the block covers only its scope entries (see the module).
pub const FLAG_SCOPED: u8 = 2;

/// The most port ranges one scope entry holds.
pub const MAX_PORT_RANGES: usize = 16;

/// TCP's protocol number.
pub const PROTO_TCP: u8 = 6;
/// UDP's protocol number.
pub const PROTO_UDP: u8 = 17;
/// ICMP's protocol number; scope entries key ICMPv6 under it too.
pub const PROTO_ICMP: u8 = 1;
/// ICMPv6's protocol number (keyed as [`PROTO_ICMP`]).
pub const PROTO_ICMPV6: u8 = 58;

/// The scope map's key: the block entry's target (address words as the block maps hold them,
/// masked to `prefix_len`) and the protocol. 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScopeKey {
    /// The target's address as two little-endian words of its 16 bytes (IPv4 in the first 4).
    pub addr: [u64; 2],
    /// The target's prefix length (32/128 for single addresses).
    pub prefix_len: u8,
    /// 1 for IPv6.
    pub v6: u8,
    /// [`PROTO_TCP`], [`PROTO_UDP`] or [`PROTO_ICMP`].
    pub proto: u8,
    /// Zero.
    pub pad: [u8; 5],
}

/// An inclusive range of destination ports, in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port.
    pub hi: u16,
}

/// What one (target, protocol) of a scoped block covers. 68 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScopeValue {
    /// 1: every packet of the protocol (ICMP, or TCP/UDP without ports).
    pub all: u8,
    /// How many of `ranges` are used.
    pub count: u8,
    /// Zero.
    pub pad: [u8; 2],
    /// Sorted, disjoint ranges.
    pub ranges: [PortRange; MAX_PORT_RANGES],
}

impl ScopeValue {
    /// Whether it covers destination port `port`.
    #[inline(always)]
    pub fn covers_port(&self, port: u16) -> bool {
        if self.all != 0 {
            return true;
        }
        // Bounded, so the verifier sees the loop end.
        let mut i = 0;
        while i < MAX_PORT_RANGES {
            if i >= usize::from(self.count) {
                return false;
            }
            let r = self.ranges[i];
            if r.lo <= port && port <= r.hi {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// What the data path read of a packet's transport header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// The protocol and, for TCP and UDP, the destination port (host order).
    Ports {
        /// Protocol number.
        proto: u8,
        /// Destination port.
        port: u16,
    },
    /// A protocol without ports (ICMP, ICMPv6, ...).
    NoPorts {
        /// Protocol number.
        proto: u8,
    },
    /// The protocol is known, its ports are not (a non-first fragment, a tiny first fragment,
    /// a truncated header): judged as if the ports matched.
    PortsUnknown {
        /// Protocol number.
        proto: u8,
    },
    /// The protocol could not be found: judged as matching any scope.
    Unknown,
}

/// The protocol a scope entry is keyed by.
#[inline(always)]
pub const fn scope_proto(proto: u8) -> u8 {
    if proto == PROTO_ICMPV6 {
        PROTO_ICMP
    } else {
        proto
    }
}

/// Whether a packet whose transport header says `transport` falls in a scoped block whose scope
/// entry for a protocol is `entry(proto)` (see the module for the rule).
#[inline(always)]
pub fn in_scope(transport: Transport, entry: impl Fn(u8) -> Option<ScopeValue>) -> bool {
    match transport {
        Transport::Ports { proto, port } => {
            entry(scope_proto(proto)).is_some_and(|v| v.covers_port(port))
        }
        Transport::NoPorts { proto } | Transport::PortsUnknown { proto } => {
            entry(scope_proto(proto)).is_some()
        }
        Transport::Unknown => {
            entry(PROTO_TCP).is_some() || entry(PROTO_UDP).is_some() || entry(PROTO_ICMP).is_some()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(ranges: &[(u16, u16)]) -> ScopeValue {
        let mut v = ScopeValue {
            count: ranges.len() as u8,
            ..ScopeValue::default()
        };
        for (i, &(lo, hi)) in ranges.iter().enumerate() {
            v.ranges[i] = PortRange { lo, hi };
        }
        v
    }

    /// A block on tcp/22 and tcp/8000-8080.
    fn tcp_22(proto: u8) -> Option<ScopeValue> {
        (proto == PROTO_TCP).then(|| ports(&[(22, 22), (8000, 8080)]))
    }

    #[test]
    fn only_the_scoped_protocol_and_ports_match() {
        let t = |proto, port| in_scope(Transport::Ports { proto, port }, tcp_22);
        assert!(t(PROTO_TCP, 22));
        assert!(t(PROTO_TCP, 8042));
        assert!(!t(PROTO_TCP, 80));
        assert!(!t(PROTO_UDP, 22));
        assert!(!in_scope(Transport::NoPorts { proto: PROTO_ICMP }, tcp_22));
    }

    #[test]
    fn a_packet_whose_ports_cannot_be_read_is_judged_as_matching_its_protocol() {
        assert!(in_scope(
            Transport::PortsUnknown { proto: PROTO_TCP },
            tcp_22
        ));
        assert!(!in_scope(
            Transport::PortsUnknown { proto: PROTO_UDP },
            tcp_22
        ));
        assert!(in_scope(Transport::Unknown, tcp_22));
        assert!(!in_scope(Transport::Unknown, |_| None));
    }

    #[test]
    fn icmpv6_is_keyed_as_icmp_and_an_all_ports_entry_covers_every_port() {
        let icmp = |proto| {
            (proto == PROTO_ICMP).then(|| ScopeValue {
                all: 1,
                ..ScopeValue::default()
            })
        };
        assert!(in_scope(
            Transport::NoPorts {
                proto: PROTO_ICMPV6
            },
            icmp
        ));
        assert!(in_scope(Transport::NoPorts { proto: PROTO_ICMP }, icmp));
        let all_udp = ScopeValue {
            all: 1,
            ..ScopeValue::default()
        };
        assert!(all_udp.covers_port(1) && all_udp.covers_port(65535));
        assert!(!ports(&[]).covers_port(22));
        let full = ports(&[(1, 1); MAX_PORT_RANGES]);
        assert!(full.covers_port(1) && !full.covers_port(2));
    }

    #[test]
    fn the_layout_is_what_the_maps_are_created_with() {
        assert_eq!(core::mem::size_of::<ScopeKey>(), 24);
        assert_eq!(core::mem::size_of::<ScopeValue>(), 68);
    }
}
