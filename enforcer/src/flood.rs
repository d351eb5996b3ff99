//! Flood response (issue 23): the `[flood]` configuration, and what a report of the data path's
//! detector becomes: a block request of source `flood`, which then passes the policy like any
//! other (allowlist, scope guard, TTLs, repeat offenders, breaker, shadow, approval, audit).
//!
//! The detector itself is in the XDP program; its layout and scheme in
//! [`enforcer_common::flood`].

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use enforcer_common::flood::{self as layout, FloodReport, LIMITS, class};
use serde::Deserialize;

use crate::{
    block::{Mode, Reason, Source},
    duration::HumanDuration,
    policy::PolicyConfig,
    protocol::{BlockRequest, FloodLimits},
    target::Target,
};

/// The source name of the blocks flood detection makes.
pub const SOURCE: &str = "flood";

/// The `[flood]` section.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FloodConfig {
    /// Detect floods in the data path (off by default).
    pub enabled: bool,
    /// The window rates are measured over.
    pub window: HumanDuration,
    /// Drop a source's packets over its limit in the current window until its block is in
    /// place (only while `flood` blocks are enforced, never in shadow mode).
    pub hold: bool,
    /// Reports the data path may send per window, over every source (more are counted, not
    /// sent).
    pub reports_per_window: u32,
    /// A report for a target is not turned into a request again for this long.
    pub repeat_after: HumanDuration,
    /// IPv4 limits (per source, per second).
    pub ipv4: FloodLimits,
    /// IPv6 limits (per source, per second).
    pub ipv6: FloodLimits,
}

impl Default for FloodLimits {
    fn default() -> Self {
        Self {
            packets: 50_000,
            syn: 1_000,
            icmp: 500,
        }
    }
}

impl FloodLimits {
    fn by_class(self) -> [u32; class::COUNT] {
        [self.packets, self.syn, self.icmp]
    }
}

impl Default for FloodConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            window: HumanDuration(Duration::from_secs(1)),
            hold: true,
            reports_per_window: 64,
            repeat_after: HumanDuration(Duration::from_secs(60)),
            ipv4: FloodLimits::default(),
            ipv6: FloodLimits::default(),
        }
    }
}

/// The shortest window (durations are written in whole seconds).
const MIN_WINDOW: Duration = Duration::from_secs(1);
/// The longest window.
const MAX_WINDOW: Duration = Duration::from_secs(60);
/// The most reports per window.
const MAX_REPORTS: u32 = 4096;
/// CPUs a source's packets are assumed to be spread over at most, for the level at which
/// a CPU starts counting it exactly (see [`FloodConfig::kernel`]).
const SPREAD: u32 = 16;

impl FloodConfig {
    /// Checks the values serde cannot; the error names the key (`ipv4.syn`...) and the fix.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let w = self.window.0;
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&w) {
            return Err((
                "window".into(),
                format!("flood.window must be from 1s to 60s, not {}", self.window),
            ));
        }
        if !(1..=MAX_REPORTS).contains(&self.reports_per_window) {
            return Err((
                "reports_per_window".into(),
                format!("flood.reports_per_window must be from 1 to {MAX_REPORTS}"),
            ));
        }
        for (family, limits) in [("ipv4", self.ipv4), ("ipv6", self.ipv6)] {
            for (name, pps) in class::NAMES.iter().zip(limits.by_class()) {
                let per_window = u128::from(pps) * w.as_millis() / 1000;
                if pps != 0 && per_window == 0 {
                    return Err((
                        format!("{family}.{name}"),
                        format!(
                            "flood.{family}.{name} = {pps} is less than one packet per window ({}): raise it or lengthen the window",
                            self.window
                        ),
                    ));
                }
                if per_window > u128::from(u32::MAX / 2) {
                    return Err((
                        format!("{family}.{name}"),
                        format!(
                            "flood.{family}.{name} = {pps} packets/s over a {} window is more than the data path counts: lower it or shorten the window",
                            self.window
                        ),
                    ));
                }
            }
        }
        if self.enabled && self.limits().iter().all(|&l| l == 0) {
            return Err((
                "enabled".into(),
                "flood.enabled = true with every limit 0 checks nothing: set a limit, or enabled = false".into(),
            ));
        }
        Ok(())
    }

    /// Limits per window, indexed as the data path indexes them (family × class).
    fn limits(&self) -> [u32; LIMITS] {
        let ms = self.window.0.as_millis();
        let mut out = [0; LIMITS];
        for (i, pps) in self
            .ipv4
            .by_class()
            .into_iter()
            .chain(self.ipv6.by_class())
            .enumerate()
        {
            out[i] = u32::try_from(u128::from(pps) * ms / 1000).unwrap_or(u32::MAX / 2);
        }
        out
    }

    /// What `flood` blocks are by configuration: the source's own mode, else the global one.
    pub fn mode(policy: &PolicyConfig) -> Mode {
        policy
            .sources
            .get(&source())
            .and_then(|s| s.mode)
            .unwrap_or(policy.mode)
    }

    /// The detector's configuration for the data path. The hold is on only where `flood`
    /// blocks are enforced. A CPU counts a source exactly once its own estimate reaches the
    /// limit divided by the CPUs it may be spread over (at most [`SPREAD`]), so a source whose
    /// packets the NIC spreads over every CPU is still seen.
    pub fn kernel(&self, policy: &PolicyConfig) -> layout::FloodConfig {
        if !self.enabled {
            return layout::FloodConfig::OFF;
        }
        let cpus = aya::util::nr_cpus()
            .ok()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(SPREAD)
            .clamp(1, SPREAD);
        let limit = self.limits();
        layout::FloodConfig {
            enabled: 1,
            hold: u32::from(self.hold && Self::mode(policy) == Mode::Enforce),
            window_ns: u64::try_from(self.window.0.as_nanos()).unwrap_or(u64::MAX),
            limit,
            suspect: limit.map(|l| (l / cpus).max(1)),
            reports_per_window: self.reports_per_window,
            pad: 0,
        }
    }
}

/// The `flood` source.
pub fn source() -> Source {
    SOURCE.parse().expect("a valid source name")
}

/// A report from the data path, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The source over its limit.
    pub address: IpAddr,
    /// Which limit (`packets`, `syn`, `icmp`).
    pub class: &'static str,
    /// Its measured rate (packets per second): at least this many on average since the window
    /// began.
    pub rate: u64,
    /// The limit, in packets per second.
    pub limit: u64,
    /// Packets counted in the window.
    pub count: u32,
    /// Within this much of the window's start.
    pub elapsed: Duration,
    /// When the limit was passed (boot clock, ns).
    pub at_ns: u64,
}

impl Candidate {
    /// Decodes a report (`None` for a malformed one).
    pub fn from_report(r: &FloodReport) -> Option<Self> {
        let address = match r.family {
            0 => IpAddr::V4(Ipv4Addr::new(r.addr[0], r.addr[1], r.addr[2], r.addr[3])),
            1 => IpAddr::V6(Ipv6Addr::from(r.addr)),
            _ => return None,
        };
        let class = *class::NAMES.get(r.class as usize)?;
        // The coarse clock moves by ticks: an elapsed time under one is read as one (10 ms),
        // so the rate is never overstated.
        let elapsed = Duration::from_nanos(r.elapsed_ns.max(10_000_000));
        let window = Duration::from_nanos(r.window_ns.max(1));
        let per_s = |n: u64, d: Duration| {
            u64::try_from(u128::from(n) * 1_000_000_000 / d.as_nanos().max(1)).unwrap_or(u64::MAX)
        };
        Some(Self {
            address,
            class,
            rate: per_s(u64::from(r.count), elapsed),
            limit: per_s(u64::from(r.limit), window),
            count: r.count,
            elapsed,
            at_ns: r.at_ns,
        })
    }

    /// The reason the block carries, with the measured rate.
    pub fn reason(&self) -> Reason {
        let what = match self.class {
            "syn" => "SYN",
            "icmp" => "ICMP",
            _ => "packets",
        };
        Reason {
            text: Some(format!(
                "flood: {} {what}/s, over the limit of {}/s ({} in {} ms)",
                self.rate,
                self.limit,
                self.count,
                self.elapsed.as_millis()
            )),
            rule_id: Some(format!("flood/{}", self.class)),
            ..Reason::default()
        }
    }

    /// The block request: TTL, mode and everything else from the policy of source `flood`.
    pub fn request(&self) -> BlockRequest {
        BlockRequest {
            target: Target::host(self.address),
            ttl_secs: None,
            permanent: false,
            source: source(),
            reason: self.reason(),
            shadow: false,
            force: false,
            scope: Default::default(),
        }
    }
}

/// Reports already turned into requests, so that a source reported again every window (one
/// in shadow mode, or refused by the policy) makes a request once per `repeat_after`, not once
/// per window. Bounded: past [`Repeats::MAX`] targets the oldest are forgotten.
#[derive(Debug, Default)]
pub struct Repeats {
    seen: HashMap<IpAddr, std::time::Instant>,
}

impl Repeats {
    /// Targets remembered at most.
    pub const MAX: usize = 65_536;

    /// Whether a candidate for `address` at `now` should become a request (and remembers it).
    pub fn fresh(
        &mut self,
        address: IpAddr,
        now: std::time::Instant,
        repeat_after: Duration,
    ) -> bool {
        if let Some(&at) = self.seen.get(&address)
            && now.duration_since(at) < repeat_after
        {
            return false;
        }
        if self.seen.len() >= Self::MAX {
            self.seen
                .retain(|_, &mut at| now.duration_since(at) < repeat_after);
            if self.seen.len() >= Self::MAX {
                self.seen.clear();
            }
        }
        self.seen.insert(address, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<crate::config::Config, String> {
        crate::config::Config::parse(text, "t.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn the_flood_section_parses_and_becomes_limits_per_window() {
        let mut c =
            parse("[flood]\nwindow = \"2s\"\n[flood.ipv4]\npackets = 2000\nsyn = 100\nicmp = 0\n")
                .unwrap();
        c.flood.enabled = true;
        let k = c.flood.kernel(&c.policy);
        assert_eq!(k.enabled, 1);
        assert_eq!(k.hold, 1, "enforce mode: hold on");
        assert_eq!(k.window_ns, 2_000_000_000);
        assert_eq!(&k.limit[..3], &[4000, 200, 0]);
        assert_eq!(&k.limit[3..], &[100_000, 2000, 1000], "IPv6 defaults");
        assert!(
            k.suspect
                .iter()
                .zip(k.limit)
                .all(|(&s, l)| s >= 1 && s <= l.max(1))
        );
    }

    #[test]
    fn the_shipped_example_documents_the_defaults() {
        let c = parse(include_str!("../../dist/enforcer.toml")).unwrap();
        assert_eq!(c.flood, FloodConfig::default());
    }

    #[test]
    fn hold_is_off_when_flood_blocks_are_shadow_and_detection_off_by_default() {
        let mut c = parse("[policy]\nmode = \"shadow\"\n").unwrap();
        c.flood.enabled = true;
        assert_eq!(c.flood.kernel(&c.policy).hold, 0);
        let mut c = parse("[policy.sources.flood]\nmode = \"shadow\"\n").unwrap();
        c.flood.enabled = true;
        assert_eq!(c.flood.kernel(&c.policy).hold, 0);
        let c = parse("").unwrap();
        assert_eq!(c.flood.kernel(&c.policy), layout::FloodConfig::OFF);
    }

    #[test]
    fn bad_flood_values_are_refused_in_one_line_naming_the_key() {
        for (text, needle) in [
            (
                "[flood]\nwindow = \"90s\"\n",
                "2:1: flood.window must be from 1s to 60s, not 1m30s",
            ),
            (
                "[flood]\nreports_per_window = 0\n",
                "2:1: flood.reports_per_window must be from 1",
            ),
            (
                "[flood]\nwindow = \"60s\"\n[flood.ipv4]\nsyn = 4000000000\n",
                "4:1: flood.ipv4.syn = 4000000000 packets/s over a 1m window is more than",
            ),
            (
                "[flood]\nenabled = true\n[flood.ipv4]\npackets = 0\nsyn = 0\nicmp = 0\n[flood.ipv6]\npackets = 0\nsyn = 0\nicmp = 0\n",
                "2:1: flood.enabled = true with every limit 0 checks nothing",
            ),
            ("[flood]\nenable = true\n", "unknown field `enable`"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn a_report_becomes_a_flood_block_request_with_its_measured_rate() {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[203, 0, 113, 7]);
        let r = FloodReport {
            addr,
            family: 0,
            class: class::SYN,
            count: 2001,
            limit: 2000,
            elapsed_ns: 100_000_000,
            window_ns: 1_000_000_000,
            at_ns: 5_100_000_000,
        };
        let c = Candidate::from_report(&r).unwrap();
        assert_eq!(c.address, "203.0.113.7".parse::<IpAddr>().unwrap());
        assert_eq!(c.rate, 20_010);
        let req = c.request();
        assert_eq!(req.source.as_str(), "flood");
        assert_eq!(req.target, "203.0.113.7".parse().unwrap());
        assert_eq!(req.ttl_secs, None, "the policy's TTL for `flood`");
        let text = req.reason.text.unwrap();
        assert!(
            text.contains("flood: 20010 SYN/s, over the limit of 2000/s (2001 in 100 ms)"),
            "{text}"
        );
        let bad = FloodReport { family: 7, ..r };
        assert_eq!(Candidate::from_report(&bad), None);
    }

    #[test]
    fn a_target_reported_every_window_makes_one_request_per_repeat_interval() {
        let mut seen = Repeats::default();
        let a: IpAddr = "198.51.100.9".parse().unwrap();
        let t0 = std::time::Instant::now();
        let every = Duration::from_secs(60);
        assert!(seen.fresh(a, t0, every));
        assert!(!seen.fresh(a, t0 + Duration::from_secs(1), every));
        assert!(seen.fresh(a, t0 + Duration::from_secs(61), every));
    }
}
