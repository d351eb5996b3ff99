//! What part of a target's traffic a block covers: a protocol and destination ports.
//!
//! The default scope is the whole address (every protocol, every port). A scoped block names a
//! protocol (`tcp`, `udp`, `icmp`) and, for TCP and UDP, destination ports: single ports, lists
//! and ranges (`22,2222,8000-8080`). A scope is checked once, where it is parsed (the CLI, the
//! wire, the spool), so everything inward holds a valid one: ports 1-65535, ranges low-high,
//! ports only with tcp or udp, at most [`MAX_RANGES`] ranges.

use std::{fmt, ops::RangeInclusive, str::FromStr};

use serde::{Deserialize, Serialize};

/// Resolves a service name (`ssh`) to its port, for the protocol being parsed.
pub type Services<'a> = &'a dyn Fn(&str) -> Option<u16>;

/// The most port ranges one block may name (the kernel entry holds that many).
pub const MAX_RANGES: usize = enforcer_common::scope::MAX_PORT_RANGES;

/// The IP protocol a block covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// Every protocol (the whole address).
    #[default]
    Any,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP (ICMPv6 for IPv6 sources).
    Icmp,
}

impl Proto {
    /// Whether destination ports mean anything for this protocol.
    pub const fn has_ports(self) -> bool {
        matches!(self, Self::Tcp | Self::Udp)
    }

    /// The name, as written on the command line and the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Proto {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "any" | "all" | "" => Ok(Self::Any),
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            "icmp" | "icmpv6" | "ipv6-icmp" => Ok(Self::Icmp),
            _ => Err(ScopeError::UnknownProto(s.to_owned())),
        }
    }
}

impl<'de> Deserialize<'de> for Proto {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Why a scope is invalid: one line saying what was wrong and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// Not a protocol we scope by.
    #[error("unknown protocol `{0}`: use tcp, udp, icmp or any")]
    UnknownProto(String),
    /// Not a port number (or a service name the resolver does not know).
    #[error("`{0}` is not a port: use numbers 1-65535 (22), lists (22,2222) or ranges (8000-8080)")]
    NotAPort(String),
    /// Port 0.
    #[error("port 0 is not a destination port: use 1-65535")]
    PortZero,
    /// Above 65535.
    #[error("port {0} is out of range: use 1-65535")]
    OutOfRange(u64),
    /// High before low.
    #[error("port range {lo}-{hi} is reversed: write it low-high ({hi}-{lo})")]
    Reversed {
        /// The first number written.
        lo: u16,
        /// The second.
        hi: u16,
    },
    /// An empty port list (`--port ""`, `--port 22,,`).
    #[error("empty port list: name at least one port (22) or drop --port for every port")]
    Empty,
    /// Too many ranges for one kernel entry.
    #[error(
        "{0} port ranges; a block may name at most {MAX_RANGES}: merge them into ranges or block the whole protocol"
    )]
    TooManyRanges(usize),
    /// Ports with a protocol that has none.
    #[error(
        "ports apply to tcp and udp only (this block is {0}): use --proto tcp or --proto udp, or drop --port"
    )]
    PortsWithoutPortProto(Proto),
}

/// Destination ports: sorted, merged, non-overlapping inclusive ranges; never empty.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Ports(Vec<RangeInclusive<u16>>);

impl Ports {
    /// Parses `22,2222,8000-8080` (`8000:8080`, fail2ban's and iptables' form, too), with
    /// `service` resolving names (`ssh`, `ftp-data`: a name's own '-' is no range) to a port;
    /// `None` resolves no names.
    pub fn parse_with(s: &str, service: Option<Services<'_>>) -> Result<Self, ScopeError> {
        let mut ranges = Vec::new();
        for part in s.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(ScopeError::Empty);
            }
            let (lo, hi) = match range_ends(part, service) {
                // `0:65535`, fail2ban's default `port`, means every port: a range may start
                // at 0 (no packet goes to port 0), a single port may not.
                Some((lo, hi)) if lo.trim() == "0" => (1, port(hi, service)?),
                Some((lo, hi)) => (port(lo, service)?, port(hi, service)?),
                None => {
                    let p = port(part, service)?;
                    (p, p)
                }
            };
            if lo > hi {
                return Err(ScopeError::Reversed { lo, hi });
            }
            ranges.push(lo..=hi);
        }
        Self::from_ranges(ranges)
    }

    /// Sorts and merges `ranges` (overlapping or adjacent ones become one).
    pub fn from_ranges(mut ranges: Vec<RangeInclusive<u16>>) -> Result<Self, ScopeError> {
        if ranges.is_empty() {
            return Err(ScopeError::Empty);
        }
        ranges.sort_by_key(|r| *r.start());
        let mut merged: Vec<RangeInclusive<u16>> = Vec::with_capacity(ranges.len());
        for r in ranges {
            match merged.last_mut() {
                Some(last) if u32::from(*r.start()) <= u32::from(*last.end()) + 1 => {
                    let end = (*last.end()).max(*r.end());
                    *last = *last.start()..=end;
                }
                _ => merged.push(r),
            }
        }
        if merged.len() > MAX_RANGES {
            return Err(ScopeError::TooManyRanges(merged.len()));
        }
        Ok(Self(merged))
    }

    /// Every port, 1-65535.
    pub fn full() -> Self {
        Self(vec![1..=u16::MAX])
    }

    /// The ranges, in order.
    pub fn ranges(&self) -> &[RangeInclusive<u16>] {
        &self.0
    }

    /// Whether `port` is one of them.
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|r| r.contains(&port))
    }

    /// Whether every port of `other` is one of these.
    pub fn covers(&self, other: &Self) -> bool {
        other.0.iter().all(|o| {
            self.0
                .iter()
                .any(|r| r.start() <= o.start() && o.end() <= r.end())
        })
    }

    /// These ports and `other`'s.
    pub fn union(&self, other: &Self) -> Result<Self, ScopeError> {
        Self::from_ranges(self.0.iter().chain(&other.0).cloned().collect())
    }

    /// These ports without `other`'s; `None` when nothing is left.
    pub fn minus(&self, other: &Self) -> Option<Self> {
        let mut left = Vec::new();
        for r in &self.0 {
            let mut pieces = vec![(u32::from(*r.start()), u32::from(*r.end()))];
            for o in &other.0 {
                let (olo, ohi) = (u32::from(*o.start()), u32::from(*o.end()));
                pieces = pieces
                    .into_iter()
                    .flat_map(|(lo, hi)| {
                        let mut out = Vec::new();
                        if olo > lo {
                            out.push((lo, hi.min(olo - 1)));
                        }
                        if ohi < hi {
                            out.push((lo.max(ohi + 1), hi));
                        }
                        out.into_iter().filter(|(a, b)| a <= b)
                    })
                    .collect();
            }
            left.extend(pieces);
        }
        let left: Vec<RangeInclusive<u16>> = left
            .into_iter()
            .map(|(lo, hi)| narrow(lo)..=narrow(hi))
            .collect();
        Self::from_ranges(left).ok()
    }
}

/// A range's two ends: `lo:hi`, or `lo-hi` unless the whole part is a service name with a
/// hyphen in it (`ftp-data`, as fail2ban's ftp jails write it); `None` for a single port.
fn range_ends<'a>(part: &'a str, service: Option<Services<'_>>) -> Option<(&'a str, &'a str)> {
    if let Some(ends) = part.split_once(':') {
        return Some(ends);
    }
    let named = service.is_some_and(|resolve| resolve(part).is_some());
    if named { None } else { part.split_once('-') }
}

/// A value taken from `u16` ranges, back into `u16`.
fn narrow(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

fn port(s: &str, service: Option<Services<'_>>) -> Result<u16, ScopeError> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let n: u64 = s.parse().map_err(|_| ScopeError::OutOfRange(u64::MAX))?;
        return match n {
            0 => Err(ScopeError::PortZero),
            1..=65535 => Ok(u16::try_from(n).unwrap_or(u16::MAX)),
            _ => Err(ScopeError::OutOfRange(n)),
        };
    }
    service
        .and_then(|resolve| resolve(s))
        .ok_or_else(|| ScopeError::NotAPort(s.to_owned()))
}

impl FromStr for Ports {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_with(s, None)
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if r.start() == r.end() {
                write!(f, "{}", r.start())?;
            } else {
                write!(f, "{}-{}", r.start(), r.end())?;
            }
        }
        Ok(())
    }
}

impl Serialize for Ports {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What a block covers: a protocol and, for tcp and udp, destination ports (`None`: all).
/// The default, `any` with no ports, is the whole address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawScope")]
pub struct Scope {
    /// The protocol (`any`: every one).
    #[serde(default, skip_serializing_if = "is_any")]
    pub proto: Proto,
    /// Destination ports (only with tcp or udp); `None`: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Ports>,
}

fn is_any(p: &Proto) -> bool {
    *p == Proto::Any
}

/// A scope as it arrives, checked into a [`Scope`].
#[derive(Deserialize)]
struct RawScope {
    #[serde(default)]
    proto: Proto,
    #[serde(default)]
    ports: Option<Ports>,
}

impl TryFrom<RawScope> for Scope {
    type Error = ScopeError;

    fn try_from(raw: RawScope) -> Result<Self, Self::Error> {
        Self::new(raw.proto, raw.ports)
    }
}

impl Scope {
    /// The whole address: every protocol, every port.
    pub const WHOLE: Self = Self {
        proto: Proto::Any,
        ports: None,
    };

    /// A checked scope: ports only with tcp or udp.
    pub fn new(proto: Proto, ports: Option<Ports>) -> Result<Self, ScopeError> {
        if ports.is_some() && !proto.has_ports() {
            return Err(ScopeError::PortsWithoutPortProto(proto));
        }
        Ok(Self { proto, ports })
    }

    /// Parses the command line's `--proto` and `--port` (names resolved by `service`). A list
    /// of every port (`1-65535`, or fail2ban's default `0:65535`) limits nothing, so it is no
    /// list: `tcp` with it is all of tcp, and with `icmp` or `any` (no ports) it adds nothing.
    pub fn parse(
        proto: Option<&str>,
        ports: Option<&str>,
        service: Option<Services<'_>>,
    ) -> Result<Self, ScopeError> {
        let proto: Proto = proto.map(str::parse).transpose()?.unwrap_or_default();
        let ports = match ports.map(|p| Ports::parse_with(p, service)).transpose() {
            // `ssh` with icmp: that it names no icmp port is not the mistake.
            Err(_) if !proto.has_ports() => return Err(ScopeError::PortsWithoutPortProto(proto)),
            ports => ports?.filter(|p| *p != Ports::full()),
        };
        Self::new(proto, ports)
    }

    /// Whether this is the whole address (no protocol, no ports).
    pub fn is_whole(&self) -> bool {
        self.proto == Proto::Any
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.proto, &self.ports) {
            (Proto::Any, _) => f.write_str("all"),
            (p, None) => write!(f, "{p}"),
            (p, Some(ports)) => write!(f, "{p}/{ports}"),
        }
    }
}

/// A scope to take off a block that does not hold all of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the block does not hold that scope")]
pub struct NotHeld;

/// The ports of one protocol a [`ScopeSet`] covers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Cover {
    /// None of them.
    #[default]
    None,
    /// Every port.
    All,
    /// These ports.
    Ports(Ports),
}

impl Cover {
    fn union(&self, other: Option<&Ports>) -> Result<Self, ScopeError> {
        Ok(match (self, other) {
            (Self::All, _) | (_, None) => Self::All,
            (Self::None, Some(p)) => Self::Ports(p.clone()),
            (Self::Ports(a), Some(b)) => Self::Ports(a.union(b)?),
        })
    }

    /// Without `other` (`None`: every port); `Err` when `other` names ports this does not cover.
    fn minus(&self, other: Option<&Ports>) -> Result<Self, NotHeld> {
        match (self, other) {
            (Self::None, _) => Err(NotHeld),
            (_, None) => Ok(Self::None),
            (Self::All, Some(p)) => Ok(Ports::full().minus(p).map_or(Self::None, Self::Ports)),
            (Self::Ports(a), Some(b)) if a.covers(b) => {
                Ok(a.minus(b).map_or(Self::None, Self::Ports))
            }
            (Self::Ports(_), Some(_)) => Err(NotHeld),
        }
    }

    fn covers(&self, other: Option<&Ports>) -> bool {
        match (self, other) {
            (Self::All, _) => true,
            (Self::Ports(a), Some(b)) => a.covers(b),
            _ => false,
        }
    }

    fn scope(&self, proto: Proto) -> Option<Scope> {
        match self {
            Self::None => None,
            Self::All => Some(Scope { proto, ports: None }),
            Self::Ports(p) => Some(Scope {
                proto,
                ports: Some(p.clone()),
            }),
        }
    }
}

/// What one source's block of a target covers: the whole address, or the union of scopes
/// (`tcp/22` and `udp/53`, say) that source asked for. Stored and sent as a list of scopes;
/// absent or empty: the whole address (so a block stored before scopes existed reads whole).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(Option<Box<Parts>>);

/// The parts of a scoped [`ScopeSet`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Parts {
    /// TCP destination ports.
    pub tcp: Cover,
    /// UDP destination ports.
    pub udp: Cover,
    /// ICMP (ICMPv6 for IPv6 sources).
    pub icmp: bool,
}

impl ScopeSet {
    /// The whole address.
    pub const WHOLE: Self = Self(None);

    /// Whether it covers the whole address.
    pub fn is_whole(&self) -> bool {
        self.0.is_none()
    }

    /// The parts, when scoped.
    pub fn parts(&self) -> Option<&Parts> {
        self.0.as_deref()
    }

    /// The set covering `scope` alone.
    pub fn of(scope: &Scope) -> Self {
        // One scope holds at most MAX_RANGES ranges already, so the union cannot fail.
        Self(Some(Box::default()))
            .union(scope)
            .unwrap_or(Self::WHOLE)
    }

    /// This and `scope` (whole wins over everything).
    pub fn union(&self, scope: &Scope) -> Result<Self, ScopeError> {
        let Some(parts) = &self.0 else {
            return Ok(Self::WHOLE);
        };
        let mut parts = (**parts).clone();
        match scope.proto {
            Proto::Any => return Ok(Self::WHOLE),
            Proto::Tcp => parts.tcp = parts.tcp.union(scope.ports.as_ref())?,
            Proto::Udp => parts.udp = parts.udp.union(scope.ports.as_ref())?,
            Proto::Icmp => parts.icmp = true,
        }
        Ok(Self(Some(Box::new(parts))))
    }

    /// Whether every packet `scope` covers is covered by this set.
    pub fn covers(&self, scope: &Scope) -> bool {
        let Some(parts) = &self.0 else { return true };
        match scope.proto {
            Proto::Any => false,
            Proto::Tcp => parts.tcp.covers(scope.ports.as_ref()),
            Proto::Udp => parts.udp.covers(scope.ports.as_ref()),
            Proto::Icmp => parts.icmp,
        }
    }

    /// This set without `scope`: `Ok(None)` when nothing is left, `Err` when `scope` is not
    /// part of it (a whole-address block cannot lose one scope: it has no way to say "all but").
    pub fn minus(&self, scope: &Scope) -> Result<Option<Self>, NotHeld> {
        if scope.is_whole() {
            return Ok(None);
        }
        let Some(parts) = &self.0 else {
            return Err(NotHeld);
        };
        let mut parts = (**parts).clone();
        match scope.proto {
            Proto::Any => return Ok(None),
            Proto::Tcp => parts.tcp = parts.tcp.minus(scope.ports.as_ref())?,
            Proto::Udp => parts.udp = parts.udp.minus(scope.ports.as_ref())?,
            Proto::Icmp if parts.icmp => parts.icmp = false,
            Proto::Icmp => return Err(NotHeld),
        }
        let empty = parts == Parts::default();
        Ok((!empty).then(|| Self(Some(Box::new(parts)))))
    }

    /// The union of several sets (the kernel entry's: the verdict is the union).
    pub fn union_all<'a>(sets: impl IntoIterator<Item = &'a Self>) -> Result<Self, ScopeError> {
        let mut out: Option<Self> = None;
        for set in sets {
            let mut acc = out.take().unwrap_or_else(|| set.clone());
            for scope in set.scopes() {
                acc = acc.union(&scope)?;
            }
            if set.is_whole() {
                acc = Self::WHOLE;
            }
            out = Some(acc);
        }
        Ok(out.unwrap_or(Self::WHOLE))
    }

    /// The scopes, in order (tcp, udp, icmp); empty for the whole address.
    pub fn scopes(&self) -> Vec<Scope> {
        let Some(p) = &self.0 else { return vec![] };
        [p.tcp.scope(Proto::Tcp), p.udp.scope(Proto::Udp)]
            .into_iter()
            .flatten()
            .chain(p.icmp.then_some(Scope {
                proto: Proto::Icmp,
                ports: None,
            }))
            .collect()
    }
}

impl ScopeSet {
    /// The data path's scope entries for this set, one per protocol it covers (empty for the
    /// whole address, whose block entry is not flagged scoped).
    pub fn kernel_entries(&self) -> Vec<(u8, KernelScope)> {
        use enforcer_common::scope::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
        let Some(p) = &self.0 else { return vec![] };
        let mut out = Vec::new();
        for (proto, cover) in [(PROTO_TCP, &p.tcp), (PROTO_UDP, &p.udp)] {
            match cover {
                Cover::None => {}
                Cover::All => out.push((proto, KernelScope::all())),
                Cover::Ports(ports) => out.push((proto, KernelScope::ports(ports))),
            }
        }
        if p.icmp {
            out.push((PROTO_ICMP, KernelScope::all()));
        }
        out
    }
}

impl ScopeSet {
    /// The data path's scopes for this set: `None` for the whole address.
    pub fn kernel_scopes(&self) -> Option<enforcer_common::scope::Scopes> {
        if self.is_whole() {
            return None;
        }
        let mut out = enforcer_common::scope::Scopes::default();
        for (proto, value) in self.kernel_entries() {
            if let Some(slot) = out.get_mut(proto) {
                *slot = Some(value);
            }
        }
        Some(out)
    }
}

/// A scope entry as the data path holds it.
pub type KernelScope = enforcer_common::scope::ScopeValue;

trait KernelScopeExt {
    fn all() -> Self;
    fn ports(ports: &Ports) -> Self;
}

impl KernelScopeExt for KernelScope {
    fn all() -> Self {
        Self {
            all: 1,
            ..Self::default()
        }
    }

    fn ports(ports: &Ports) -> Self {
        let mut v = Self::default();
        // Ports hold at most MAX_RANGES (= the entry's room) ranges.
        for (slot, r) in v.ranges.iter_mut().zip(ports.ranges()) {
            *slot = enforcer_common::scope::PortRange {
                lo: *r.start(),
                hi: *r.end(),
            };
            v.count += 1;
        }
        v
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_whole() {
            return f.write_str("all");
        }
        let parts: Vec<String> = self.scopes().iter().map(Scope::to_string).collect();
        f.write_str(&parts.join(" "))
    }
}

impl Serialize for ScopeSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.scopes().serialize(s)
    }
}

impl<'de> Deserialize<'de> for ScopeSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let scopes = Vec::<Scope>::deserialize(d)?;
        if scopes.is_empty() {
            return Ok(Self::WHOLE);
        }
        let mut set = Self(Some(Box::default()));
        for scope in &scopes {
            set = set.union(scope).map_err(serde::de::Error::custom)?;
        }
        Ok(set)
    }
}

/// Resolves a service name (`ssh`, `https`) to its port for `proto` from `/etc/services`,
/// as fail2ban's jails name ports (`port = ssh`).
pub fn service_port(name: &str, proto: Proto) -> Option<u16> {
    let text = std::fs::read_to_string("/etc/services").ok()?;
    services_lookup(&text, name, proto)
}

fn services_lookup(text: &str, name: &str, proto: Proto) -> Option<u16> {
    text.lines().find_map(|line| {
        let line = line.split('#').next()?;
        let mut fields = line.split_whitespace();
        let service = fields.next()?;
        let (port, p) = fields.next()?.split_once('/')?;
        let matches = service == name || fields.any(|alias| alias == name);
        (matches && p == proto.as_str()).then(|| port.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(s: &str) -> Ports {
        s.parse().unwrap()
    }

    #[test]
    fn ports_parse_lists_and_ranges_sorted_and_merged() {
        assert_eq!(ports("2222,22,8000-8080").to_string(), "22,2222,8000-8080");
        assert_eq!(ports("22,23,24").to_string(), "22-24");
        assert_eq!(ports("1000:2000,1500-2500").to_string(), "1000-2500");
        assert_eq!(ports("65535").to_string(), "65535");
        assert_eq!(ports("0:65535").to_string(), "1-65535");
        assert!(ports("22,8000-8080").contains(8042));
        assert!(!ports("22,8000-8080").contains(80));
    }

    #[test]
    fn bad_ports_say_what_to_write() {
        let err = |s: &str| s.parse::<Ports>().unwrap_err().to_string();
        assert_eq!(err("0"), "port 0 is not a destination port: use 1-65535");
        assert_eq!(err("70000"), "port 70000 is out of range: use 1-65535");
        assert_eq!(
            err("2000-1000"),
            "port range 2000-1000 is reversed: write it low-high (1000-2000)"
        );
        assert!(err("ssh").contains("is not a port"));
        assert!(err("22,,23").contains("empty port list"));
        let many: Vec<String> = (1..=17).map(|i| (i * 2).to_string()).collect();
        assert!(err(&many.join(",")).contains("at most 16"));
        assert!(!err("99999999999999999999999").contains('\n'));
    }

    #[test]
    fn scope_refuses_ports_without_tcp_or_udp_and_unknown_protocols() {
        let err = |p: Option<&str>, ports: Option<&str>| {
            Scope::parse(p, ports, None).unwrap_err().to_string()
        };
        assert!(err(Some("icmp"), Some("22")).contains("ports apply to tcp and udp only"));
        assert!(err(None, Some("22")).contains("use --proto tcp"));
        assert_eq!(
            err(Some("sctp"), None),
            "unknown protocol `sctp`: use tcp, udp, icmp or any"
        );
        assert!(Scope::parse(None, None, None).unwrap().is_whole());
        let s = Scope::parse(Some("tcp"), Some("22,2222"), None).unwrap();
        assert_eq!(s.to_string(), "tcp/22,2222");
    }

    #[test]
    fn every_port_is_no_port_list_as_fail2bans_default_port_means() {
        let parse = |p: &str, ports: &str| Scope::parse(Some(p), Some(ports), None).unwrap();
        assert_eq!(parse("tcp", "0:65535").to_string(), "tcp");
        assert_eq!(parse("udp", "1-65535").to_string(), "udp");
        assert_eq!(parse("udp", "1-100,101-65535").to_string(), "udp");
        assert_eq!(parse("icmp", "0:65535").to_string(), "icmp");
        assert!(parse("all", "0:65535").is_whole());
        assert_eq!(parse("tcp", "2-65535").to_string(), "tcp/2-65535");
        assert!(Scope::parse(Some("icmp"), Some("1-65534"), None).is_err());
        assert!(Scope::parse(Some("all"), Some("22"), None).is_err());
        let resolve = |_: &str| None;
        assert_eq!(
            Scope::parse(Some("all"), Some("ssh"), Some(&resolve)),
            Err(ScopeError::PortsWithoutPortProto(Proto::Any)),
            "the protocol is the mistake, not the name"
        );
    }

    #[test]
    fn scope_round_trips_on_the_wire_and_checks_what_arrives() {
        let s = Scope::parse(Some("udp"), Some("53"), None).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"proto":"udp","ports":"53"}"#);
        assert_eq!(serde_json::from_str::<Scope>(&json).unwrap(), s);
        assert_eq!(serde_json::to_string(&Scope::WHOLE).unwrap(), "{}");
        assert!(serde_json::from_str::<Scope>(r#"{"proto":"icmp","ports":"1"}"#).is_err());
        assert!(serde_json::from_str::<Scope>(r#"{"proto":"tcp","ports":"0"}"#).is_err());
    }

    #[test]
    fn union_and_difference_of_ports() {
        let a = ports("22,80");
        assert_eq!(a.union(&ports("81-90")).unwrap().to_string(), "22,80-90");
        assert_eq!(
            ports("1-100").minus(&ports("22")).unwrap().to_string(),
            "1-21,23-100"
        );
        assert_eq!(ports("22").minus(&ports("1-100")), None);
        assert!(ports("1-100").covers(&ports("22,50-60")));
        assert!(!ports("1-100").covers(&ports("22,99-101")));
    }

    fn scope(p: &str, ports: Option<&str>) -> Scope {
        Scope::parse(Some(p), ports, None).unwrap()
    }

    #[test]
    fn a_sources_scopes_add_up_and_come_off_one_by_one() {
        let set = ScopeSet::of(&scope("tcp", Some("22")));
        let set = set.union(&scope("udp", Some("53"))).unwrap();
        let set = set.union(&scope("tcp", Some("2222"))).unwrap();
        assert_eq!(set.to_string(), "tcp/22,2222 udp/53");
        assert!(set.covers(&scope("tcp", Some("2222"))));
        assert!(!set.covers(&scope("tcp", Some("80"))));
        assert!(!set.covers(&Scope::WHOLE));
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(
            json,
            r#"[{"proto":"tcp","ports":"22,2222"},{"proto":"udp","ports":"53"}]"#
        );
        assert_eq!(serde_json::from_str::<ScopeSet>(&json).unwrap(), set);
        let left = set.minus(&scope("tcp", Some("22"))).unwrap().unwrap();
        assert_eq!(left.to_string(), "tcp/2222 udp/53");
        let left = left.minus(&scope("tcp", None)).unwrap().unwrap();
        assert_eq!(left.to_string(), "udp/53");
        assert_eq!(left.minus(&scope("udp", Some("53"))), Ok(None));
        assert_eq!(left.minus(&scope("udp", Some("54"))), Err(NotHeld));
        assert_eq!(
            ScopeSet::WHOLE.minus(&scope("tcp", Some("22"))),
            Err(NotHeld)
        );
        let all_tcp = ScopeSet::of(&scope("tcp", None));
        let but_22 = all_tcp.minus(&scope("tcp", Some("22"))).unwrap().unwrap();
        assert_eq!(but_22.to_string(), "tcp/1-21,23-65535");
        assert!(set.union(&Scope::WHOLE).unwrap().is_whole());
        assert_eq!(
            serde_json::from_str::<ScopeSet>("[]").unwrap(),
            ScopeSet::WHOLE
        );
    }

    #[test]
    fn the_kernel_scope_is_the_union_and_whole_wins() {
        let a = ScopeSet::of(&scope("tcp", Some("22")));
        let b = ScopeSet::of(&scope("tcp", Some("80")))
            .union(&scope("icmp", None))
            .unwrap();
        let u = ScopeSet::union_all([&a, &b]).unwrap();
        assert_eq!(u.to_string(), "tcp/22,80 icmp");
        assert!(
            ScopeSet::union_all([&a, &ScopeSet::WHOLE])
                .unwrap()
                .is_whole()
        );
        assert!(
            ScopeSet::union_all([&ScopeSet::WHOLE, &a])
                .unwrap()
                .is_whole()
        );
    }

    #[test]
    fn the_kernel_entries_of_a_set_cover_what_it_says_and_nothing_else() {
        use enforcer_common::scope::{PROTO_ICMP, PROTO_TCP, PROTO_UDP, Transport, in_scope};
        assert!(ScopeSet::WHOLE.kernel_entries().is_empty());
        let set = ScopeSet::of(&scope("tcp", Some("22,8000-8080")))
            .union(&scope("udp", None))
            .unwrap()
            .union(&scope("icmp", None))
            .unwrap();
        let entries = set.kernel_entries();
        let entry = |proto: u8| entries.iter().find(|(p, _)| *p == proto).map(|(_, v)| v);
        let hits = |proto, port| in_scope(Transport::Ports { proto, port }, entry);
        assert!(hits(PROTO_TCP, 22) && hits(PROTO_TCP, 8080) && !hits(PROTO_TCP, 80));
        assert!(hits(PROTO_UDP, 1) && hits(PROTO_UDP, 65535));
        assert!(in_scope(Transport::NoPorts { proto: PROTO_ICMP }, entry));
        let only_tcp = ScopeSet::of(&scope("tcp", Some("22"))).kernel_entries();
        assert_eq!(only_tcp.len(), 1);
        assert_eq!(only_tcp[0].1.count, 1);
    }

    #[test]
    fn service_names_resolve_from_the_services_file() {
        let text = "ssh\t\t22/tcp\t\t\t# SSH\nhttps 443/tcp\nhttps 443/udp\nsubmission 587/tcp smtp-sub\n\
                    ftp-data 20/tcp\nftp 21/tcp\n";
        assert_eq!(services_lookup(text, "ssh", Proto::Tcp), Some(22));
        assert_eq!(services_lookup(text, "smtp-sub", Proto::Tcp), Some(587));
        assert_eq!(services_lookup(text, "ssh", Proto::Udp), None);
        let resolve = |n: &str| services_lookup(text, n, Proto::Tcp);
        let p = Ports::parse_with("ssh,https,8000:8080", Some(&resolve)).unwrap();
        assert_eq!(p.to_string(), "22,443,8000-8080");
        // fail2ban's ftp jails: a name with a hyphen is one port, and a range of names works.
        let p = Ports::parse_with("ftp,ftp-data,ssh-443,ftp-data:ssh", Some(&resolve)).unwrap();
        assert_eq!(p.to_string(), "20-443");
        let p = Ports::parse_with("ftp-data", Some(&resolve)).unwrap();
        assert_eq!(p.to_string(), "20");
    }
}
