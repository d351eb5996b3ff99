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

/// Capacity of the scope map: (scoped block, protocol) entries, for both families.
pub const MAX_SCOPE_ENTRIES: u32 = 65_536;

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

impl ScopeKey {
    /// The key as three words in memory order (little-endian, as on every target the data
    /// path runs on): the address words, then `prefix_len`, `v6` and `proto` in the low bytes
    /// of the third, the padding zero. The data path builds its keys this way: three stores,
    /// where zeroing the struct's padding costs it a `memset` call.
    #[inline(always)]
    pub const fn words(addr: [u64; 2], prefix_len: u8, v6: u8, proto: u8) -> [u64; 3] {
        [
            addr[0],
            addr[1],
            prefix_len as u64 | (v6 as u64) << 8 | (proto as u64) << 16,
        ]
    }
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

/// The scope entries of one block entry as userspace reads and writes them, one per protocol
/// (keyed by [`PROTO_TCP`], [`PROTO_UDP`], [`PROTO_ICMP`]); a protocol without an entry is not
/// covered. A block entry with scopes is flagged [`FLAG_SCOPED`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scopes {
    /// TCP destination ports.
    pub tcp: Option<ScopeValue>,
    /// UDP destination ports.
    pub udp: Option<ScopeValue>,
    /// ICMP and ICMPv6.
    pub icmp: Option<ScopeValue>,
}

impl Scopes {
    /// Each protocol's key with its entry, if any.
    pub const fn entries(&self) -> [(u8, Option<ScopeValue>); 3] {
        [
            (PROTO_TCP, self.tcp),
            (PROTO_UDP, self.udp),
            (PROTO_ICMP, self.icmp),
        ]
    }

    /// The entry for a protocol key.
    pub fn get_mut(&mut self, proto: u8) -> Option<&mut Option<ScopeValue>> {
        match proto {
            PROTO_TCP => Some(&mut self.tcp),
            PROTO_UDP => Some(&mut self.udp),
            PROTO_ICMP => Some(&mut self.icmp),
            _ => None,
        }
    }

    /// Whether every packet `other` covers is covered by these scopes too.
    pub fn covers(&self, other: &Self) -> bool {
        self.entries()
            .iter()
            .zip(other.entries())
            .all(|((_, mine), (_, theirs))| match (mine, theirs) {
                (_, None) => true,
                (None, Some(_)) => false,
                (Some(m), Some(t)) => m.covers(&t),
            })
    }
}

impl ScopeValue {
    /// The ranges in use.
    pub fn used(&self) -> &[PortRange] {
        &self.ranges[..usize::from(self.count).min(MAX_PORT_RANGES)]
    }

    /// Whether every port `other` covers is covered here too.
    pub fn covers(&self, other: &Self) -> bool {
        if self.all != 0 {
            return true;
        }
        other.all == 0
            && other
                .used()
                .iter()
                .all(|r| self.used().iter().any(|m| m.lo <= r.lo && r.hi <= m.hi))
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

impl Transport {
    /// As one word whose every bit is defined (kind, protocol, port), for the data path to
    /// carry around: an enum's unused payload bytes are undefined, which the verifier refuses
    /// to let a program copy.
    #[inline(always)]
    pub const fn pack(self) -> u32 {
        match self {
            Self::Unknown => 0,
            Self::Ports { proto, port } => 1 << 24 | (proto as u32) << 16 | port as u32,
            Self::NoPorts { proto } => 2 << 24 | (proto as u32) << 16,
            Self::PortsUnknown { proto } => 3 << 24 | (proto as u32) << 16,
        }
    }

    /// What [`Transport::pack`] made.
    #[inline(always)]
    pub const fn unpack(word: u32) -> Self {
        let proto = (word >> 16) as u8;
        match word >> 24 {
            1 => Self::Ports {
                proto,
                port: word as u16,
            },
            2 => Self::NoPorts { proto },
            3 => Self::PortsUnknown { proto },
            _ => Self::Unknown,
        }
    }
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
pub fn in_scope<'a>(transport: Transport, entry: impl Fn(u8) -> Option<&'a ScopeValue>) -> bool {
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
    extern crate std;

    use core::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn a_key_s_words_lay_its_fields_out_as_the_struct_does() {
        assert_eq!(size_of::<ScopeKey>(), 24);
        assert_eq!(offset_of!(ScopeKey, addr), 0);
        assert_eq!(offset_of!(ScopeKey, prefix_len), 16);
        assert_eq!(offset_of!(ScopeKey, v6), 17);
        assert_eq!(offset_of!(ScopeKey, proto), 18);
        assert_eq!(offset_of!(ScopeKey, pad), 19);
        let words = ScopeKey::words([0x0102, 0x0304], 48, 1, PROTO_UDP);
        let tail = words[2].to_le_bytes();
        assert_eq!(tail, [48, 1, PROTO_UDP, 0, 0, 0, 0, 0]);
        assert_eq!(&words[..2], &[0x0102, 0x0304]);
    }

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
    fn tcp_22(proto: u8) -> Option<&'static ScopeValue> {
        static V: std::sync::LazyLock<ScopeValue> =
            std::sync::LazyLock::new(|| ports(&[(22, 22), (8000, 8080)]));
        (proto == PROTO_TCP).then(|| &*V)
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
        let all = ScopeValue {
            all: 1,
            ..ScopeValue::default()
        };
        let icmp = |proto| (proto == PROTO_ICMP).then_some(&all);
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
    fn a_packed_transport_unpacks_to_itself() {
        for t in [
            Transport::Unknown,
            Transport::Ports {
                proto: PROTO_TCP,
                port: 65535,
            },
            Transport::Ports {
                proto: PROTO_UDP,
                port: 0,
            },
            Transport::NoPorts { proto: 255 },
            Transport::PortsUnknown { proto: 0 },
        ] {
            assert_eq!(Transport::unpack(t.pack()), t);
        }
    }

    #[test]
    fn scopes_cover_what_they_hold_and_nothing_wider() {
        let wide = Scopes {
            tcp: Some(ports(&[(20, 30), (80, 80)])),
            ..Scopes::default()
        };
        let narrow = Scopes {
            tcp: Some(ports(&[(22, 22), (80, 80)])),
            ..Scopes::default()
        };
        assert!(wide.covers(&narrow) && !narrow.covers(&wide));
        let udp = Scopes {
            udp: Some(ports(&[(53, 53)])),
            ..Scopes::default()
        };
        assert!(!wide.covers(&udp));
        let all_tcp = ScopeValue {
            all: 1,
            ..ScopeValue::default()
        };
        assert!(all_tcp.covers(&ports(&[(1, 65535)])) && !ports(&[(1, 65534)]).covers(&all_tcp));
    }

    #[test]
    fn the_layout_is_what_the_maps_are_created_with() {
        assert_eq!(core::mem::size_of::<ScopeKey>(), 24);
        assert_eq!(core::mem::size_of::<ScopeValue>(), 68);
    }
}
