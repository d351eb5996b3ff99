//! Which parse a link needs, from its type (`ARPHRD_*`, what `ip link` shows as `link/...`).
//!
//! The data path has two programs: one for frames that start with an Ethernet header, one for
//! frames that start with the IP header. Attaching the wrong one would judge nothing (every
//! frame "not IP") while the link looked protected, so the type decides, and a type neither
//! reads is refused.

use crate::netlink::arphrd;
pub use crate::{netlink::LinkType, protocol::Parse};

impl LinkType {
    /// The parse this type needs, or `None` when the data path cannot read its frames.
    ///
    /// - Ethernet: `ARPHRD_ETHER` (physical NICs, veth, bridges, bonds, VLAN and macvlan
    ///   devices, tap) and the loopback (its frames carry a zeroed Ethernet header).
    /// - Raw IP: `ARPHRD_NONE` (tun in `IFF_TUN` mode: WireGuard, OpenVPN, tailscale, xfrm
    ///   interfaces), `ARPHRD_RAWIP` (LTE/5G modems in raw-IP mode), the IP tunnels
    ///   (`ARPHRD_TUNNEL` ipip/vti, `ARPHRD_TUNNEL6` ip6tnl/vti6, `ARPHRD_SIT`, `ARPHRD_IPGRE`,
    ///   `ARPHRD_IP6GRE`) and `ARPHRD_PPP` (the PPP layer strips its protocol field before the
    ///   stack sees the frame, so XDP, generic on PPP, sees the IP header first).
    pub const fn parse(self) -> Option<Parse> {
        match self.0 {
            arphrd::ETHER | arphrd::LOOPBACK => Some(Parse::Ethernet),
            arphrd::NONE
            | arphrd::RAWIP
            | arphrd::PPP
            | arphrd::TUNNEL
            | arphrd::TUNNEL6
            | arphrd::SIT
            | arphrd::IPGRE
            | arphrd::IP6GRE => Some(Parse::RawIp),
            _ => None,
        }
    }
}

/// The ids of this build's two programs in the kernel: what "protected" means on a link is
/// that the program for its type runs there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Programs {
    /// `enforcer_xdp`.
    pub ethernet: u32,
    /// `enforcer_xdp_ip`.
    pub raw_ip: u32,
}

impl Programs {
    /// The program that protects a link of this type (none for a type the data path cannot
    /// read: such a link is never protected, whatever runs there).
    pub const fn for_link(&self, link_type: LinkType) -> Option<u32> {
        match link_type.parse() {
            Some(Parse::Ethernet) => Some(self.ethernet),
            Some(Parse::RawIp) => Some(self.raw_ip),
            None => None,
        }
    }

    /// Whether `prog_id` is one of ours, the right one for `link_type`.
    pub fn protects(&self, link_type: LinkType, prog_id: Option<u32>) -> bool {
        prog_id.is_some() && prog_id == self.for_link(link_type)
    }
}

#[cfg(test)]
mod tests {
    use super::{LinkType, Parse, Programs};

    #[test]
    fn a_link_is_protected_only_by_the_program_for_its_type() {
        let ours = Programs {
            ethernet: 7,
            raw_ip: 8,
        };
        assert!(ours.protects(LinkType(1), Some(7)));
        assert!(!ours.protects(LinkType(1), Some(8)));
        assert!(ours.protects(LinkType(0xfffe), Some(8)));
        assert!(
            !ours.protects(LinkType(0xfffe), Some(7)),
            "Ethernet parse on a tun link"
        );
        assert!(!ours.protects(LinkType(803), Some(7)));
        assert!(!ours.protects(LinkType(1), None));
    }

    #[test]
    fn each_link_type_gets_the_parse_its_frames_need_or_none() {
        for (t, parse) in [
            (1, Some(Parse::Ethernet)),
            (772, Some(Parse::Ethernet)),
            (0xfffe, Some(Parse::RawIp)),
            (512, Some(Parse::RawIp)),
            (519, Some(Parse::RawIp)),
            (768, Some(Parse::RawIp)),
            (769, Some(Parse::RawIp)),
            (776, Some(Parse::RawIp)),
            (778, Some(Parse::RawIp)),
            (823, Some(Parse::RawIp)),
            (32, None),
            (280, None),
            (803, None),
            (824, None),
            (0xffff, None),
        ] {
            assert_eq!(LinkType(t).parse(), parse, "ARPHRD {t}");
        }
    }

    #[test]
    fn a_link_type_is_shown_by_name_and_number() {
        assert_eq!(LinkType(0xfffe).to_string(), "none (ARPHRD 65534)");
        assert_eq!(
            LinkType(803).to_string(),
            "ieee802.11/radiotap (ARPHRD 803)"
        );
        assert_eq!(LinkType(9999).to_string(), "ARPHRD 9999");
    }
}
