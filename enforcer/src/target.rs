//! What a block applies to: one address or one prefix, in canonical form.
//!
//! Every address that enters the enforcer, from the CLI, a hook or a file, is parsed once into a
//! [`Target`]: host bits masked, IPv4-mapped IPv6 (`::ffff:a.b.c.d`) folded to IPv4, zone ids and
//! host names refused. Everything further in works with this type, never with strings.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A canonical address or prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target(IpNet);

/// Why a string is not a valid target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Empty input.
    #[error("empty address")]
    Empty,
    /// An IPv6 zone id (`fe80::1%eth0`): scoped to one link, meaningless as a block.
    #[error("`{0}` has a zone id (%...); link-scoped addresses cannot be blocked")]
    Zone(String),
    /// Something that is not an IP address or prefix (a host name, garbage).
    #[error("`{0}` is not an IP address or prefix (host names are not accepted)")]
    NotAnAddress(String),
    /// A prefix length out of range for the family.
    #[error("`{0}` has an invalid prefix length")]
    BadPrefixLength(String),
}

impl Target {
    /// Wraps a prefix, masking host bits and folding v4-mapped IPv6 to IPv4.
    pub fn new(net: IpNet) -> Self {
        let net = match net {
            IpNet::V6(v6) => match v6.addr().to_ipv4_mapped() {
                Some(v4) if v6.prefix_len() >= 96 => IpNet::V4(
                    Ipv4Net::new(v4, v6.prefix_len() - 96)
                        .expect("96..=128 - 96 is a valid v4 length"),
                ),
                _ => IpNet::V6(v6),
            },
            v4 => v4,
        };
        Self(net.trunc())
    }

    /// A single address (/32 or /128).
    pub fn host(addr: IpAddr) -> Self {
        Self::new(IpNet::from(addr))
    }

    /// The prefix.
    pub const fn net(&self) -> IpNet {
        self.0
    }

    /// The first address of the prefix (the address itself for a host).
    pub fn addr(&self) -> IpAddr {
        self.0.network()
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    /// Whether this is a single address (/32 or /128).
    pub fn is_host(&self) -> bool {
        self.0.prefix_len() == self.0.max_prefix_len()
    }

    /// Whether this is IPv4.
    pub const fn is_v4(&self) -> bool {
        matches!(self.0, IpNet::V4(_))
    }

    /// Whether `addr` lies inside this target.
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.contains(&canonical_addr(addr))
    }

    /// Whether the two prefixes share any address.
    pub fn overlaps(&self, other: &Target) -> bool {
        self.0.contains(&other.0) || other.0.contains(&self.0)
    }

    /// Why this cannot be a block target, if it cannot: it lies inside a range no packet is
    /// sent from (unspecified, multicast, broadcast). Blocking `0.0.0.0` does not block
    /// "everything" (it would only drop DHCP clients still without an address), so it is
    /// refused rather than accepted as a no-op.
    pub fn not_a_block_target(&self) -> Option<&'static str> {
        // Built at compile time: this runs for every target a request or a feed names.
        const RANGES: [(IpNet, &str); 5] = [
            (
                IpNet::new_assert(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8),
                "0.0.0.0/8 is the unspecified (\"this network\") range, not a sender",
            ),
            (
                IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(224, 0, 0, 0)), 4),
                "multicast addresses (224.0.0.0/4) never send packets",
            ),
            (
                IpNet::new_assert(IpAddr::V4(Ipv4Addr::BROADCAST), 32),
                "255.255.255.255 is the broadcast address, not a sender",
            ),
            (
                IpNet::new_assert(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 128),
                ":: is the unspecified address, not a sender",
            ),
            (
                IpNet::new_assert(IpAddr::V6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)), 8),
                "multicast addresses (ff00::/8) never send packets",
            ),
        ];
        RANGES
            .iter()
            .find_map(|(range, why)| range.contains(&self.0).then_some(*why))
    }
}

/// Folds `::ffff:a.b.c.d` to `a.b.c.d`; other addresses are returned as they are.
pub fn canonical_addr(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod block_target_tests {
    use super::*;

    #[test]
    fn unspecified_multicast_and_broadcast_addresses_are_not_block_targets() {
        let why = |s: &str| s.parse::<Target>().unwrap().not_a_block_target();
        for bad in [
            "0.0.0.0",
            "0.1.2.3",
            "0.0.0.0/8",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "::",
            "ff02::1",
            "::ffff:0.0.0.0",
        ] {
            assert!(why(bad).is_some(), "{bad}");
        }
        for good in [
            "192.0.2.7",
            "0.0.0.0/0",
            "::/0",
            "2001:db8::1",
            "198.51.100.0/24",
            "::1",
        ] {
            assert_eq!(why(good), None, "{good}");
        }
        assert!(why("0.0.0.0").unwrap().contains("unspecified"));
    }
}

impl FromStr for Target {
    type Err = TargetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(TargetError::Empty);
        }
        if s.contains('%') {
            return Err(TargetError::Zone(s.to_owned()));
        }
        if let Some((addr, len)) = s.split_once('/') {
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| TargetError::NotAnAddress(s.to_owned()))?;
            // Only plain decimal lengths: "+24" or " 24" are typos, not prefixes.
            if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
                return Err(TargetError::BadPrefixLength(s.to_owned()));
            }
            let len: u8 = len
                .parse()
                .map_err(|_| TargetError::BadPrefixLength(s.to_owned()))?;
            let net = match addr {
                IpAddr::V4(a) => Ipv4Net::new(a, len).map(IpNet::V4),
                IpAddr::V6(a) => Ipv6Net::new(a, len).map(IpNet::V6),
            }
            .map_err(|_| TargetError::BadPrefixLength(s.to_owned()))?;
            return Ok(Self::new(net));
        }
        let addr: IpAddr = s
            .parse()
            .map_err(|_| TargetError::NotAnAddress(s.to_owned()))?;
        Ok(Self::host(addr))
    }
}

impl fmt::Display for Target {
    /// Hosts print as a bare address (`192.0.2.1`), prefixes with their length.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr())
        } else {
            write!(f, "{}", self.0)
        }
    }
}

impl serde::Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The address bytes as the data path keys them (network order).
pub(crate) fn v4_bytes(a: Ipv4Addr) -> [u8; 4] {
    a.octets()
}

/// The address bytes as the data path keys them (network order).
pub(crate) fn v6_bytes(a: Ipv6Addr) -> [u8; 16] {
    a.octets()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Result<String, TargetError> {
        s.parse::<Target>().map(|t| t.to_string())
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(t("192.0.2.7").unwrap(), "192.0.2.7");
        assert_eq!(t("192.0.2.7/32").unwrap(), "192.0.2.7");
        assert_eq!(t("192.0.2.77/24").unwrap(), "192.0.2.0/24");
        assert_eq!(t("::ffff:198.51.100.23").unwrap(), "198.51.100.23");
        assert_eq!(t("::ffff:198.51.100.0/120").unwrap(), "198.51.100.0/24");
        assert_eq!(t("2001:DB8::1").unwrap(), "2001:db8::1");
        assert_eq!(t("2001:db8:1:2::5/48").unwrap(), "2001:db8:1::/48");
        assert_eq!(t(" 203.0.113.9 ").unwrap(), "203.0.113.9");
    }

    #[test]
    fn rejects_what_is_not_an_address() {
        assert!(matches!(t("fe80::1%eth0"), Err(TargetError::Zone(_))));
        assert!(matches!(
            t("example.com"),
            Err(TargetError::NotAnAddress(_))
        ));
        assert!(matches!(
            t("192.0.2.1/33"),
            Err(TargetError::BadPrefixLength(_))
        ));
        assert!(matches!(
            t("192.0.2.1/"),
            Err(TargetError::BadPrefixLength(_))
        ));
        assert!(matches!(
            t("192.0.2.1/+8"),
            Err(TargetError::BadPrefixLength(_))
        ));
        assert!(matches!(
            t("2001:db8::/129"),
            Err(TargetError::BadPrefixLength(_))
        ));
        assert!(matches!(t("300.1.1.1"), Err(TargetError::NotAnAddress(_))));
        assert!(matches!(t(""), Err(TargetError::Empty)));
    }

    #[test]
    fn containment_folds_mapped_addresses() {
        let net: Target = "198.51.100.0/24".parse().unwrap();
        assert!(net.contains("::ffff:198.51.100.9".parse().unwrap()));
        assert!(!net.contains("198.51.101.9".parse().unwrap()));
    }
}
