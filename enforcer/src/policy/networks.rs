//! IPv6 networks: a single IPv6 address widened to its network (an IPv6 attacker holds at least
//! a /64, so a /128 block is stepped around for free), and escalation to a broader network when
//! several networks of one /48 (or /56) are blocked within a window.
//!
//! Widening is per source (`[policy.sources.NAME] ipv6_prefix`, default 128: off) and never
//! applies to `cli` blocks (an operator names the prefix they mean) nor to feeds (a feed's
//! decision is kept as the feed says it). The allowlist still wins: a network holding an
//! allowlisted address is not widened to; the single address is blocked instead, and the
//! reply and audit line say so.

use std::{collections::BTreeMap, time::Duration};

use ipnet::{IpNet, Ipv6Net};
use serde::Deserialize;

use super::{Allowlist, Policy};
use crate::{block::Source, duration::HumanDuration, target::Target, time::WallMs};

/// `[policy.ipv6_escalate]`: when `after` distinct widened networks of one `/to` network are
/// blocked within `window`, the `/to` network is blocked too (through the whole policy: the
/// scope guard may refuse it, approval may hold it).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ipv6Escalate {
    /// How far back blocked networks count.
    pub window: HumanDuration,
    /// How many distinct networks of one `/to` network escalate.
    pub after: usize,
    /// The prefix length escalated to (48 or 56, say).
    pub to: u8,
}

/// Most `/to` networks with a history of blocked networks at once; past it, those whose
/// networks all left the window are forgotten first, then the lowest.
pub const MAX_ESCALATION_GROUPS: usize = 10_000;

/// The CrowdSec feed's source name (the bouncer's `SOURCE`; named here so that the policy does
/// not depend on the bouncer, which depends on the daemon, which depends on the policy).
const CROWDSEC: &str = "crowdsec";

/// The sources whose blocks are never widened: blocks made by hand, and the CrowdSec feed.
pub fn never_widened(source: &Source) -> bool {
    *source == Source::cli() || source.as_str() == CROWDSEC
}

/// `target`'s network of length `len` (`target` itself when it is no narrower).
pub fn network(target: Target, len: u8) -> Target {
    match target.net() {
        IpNet::V6(v6) if v6.prefix_len() > len => Target::new(IpNet::V6(
            Ipv6Net::new(v6.addr(), len).expect("narrower than the address's own length"),
        )),
        _ => target,
    }
}

/// What widening made of a block's target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Widened {
    /// The target to block.
    pub target: Target,
    /// The address asked for, when `target` is its network.
    pub requested: Option<Target>,
    /// What widening did or did not do, for the reply and the audit line.
    pub note: Option<String>,
}

impl Widened {
    fn unchanged(target: Target) -> Self {
        Self {
            target,
            requested: None,
            note: None,
        }
    }
}

/// A `/to` network's recently blocked networks, oldest first, each once.
#[derive(Clone, Debug, Default)]
pub struct NetworkHistory {
    by_group: BTreeMap<Target, Vec<(WallMs, Target)>>,
}

impl NetworkHistory {
    /// Moves every time by `by_ms` (the wall clock stepped).
    pub fn shift(&mut self, by_ms: i64) {
        for (t, _) in self.by_group.values_mut().flatten() {
            *t = t.shifted(by_ms);
        }
    }

    /// Records `net`, blocked at `now`, in `group`; returns how many distinct networks of the
    /// group were blocked within `window_ms` (at most `keep` are kept).
    fn record(
        &mut self,
        group: Target,
        net: Target,
        now: WallMs,
        window_ms: u64,
        keep: usize,
    ) -> usize {
        let since = now.saturating_sub(Duration::from_millis(window_ms));
        let seen = self.by_group.entry(group).or_default();
        seen.retain(|&(t, n)| t >= since && n != net);
        seen.push((now, net));
        if seen.len() > keep {
            seen.drain(..seen.len() - keep);
        }
        let count = seen.len();
        if self.by_group.len() > MAX_ESCALATION_GROUPS {
            self.by_group
                .retain(|_, seen| seen.last().is_some_and(|&(t, _)| t >= since));
        }
        while self.by_group.len() > MAX_ESCALATION_GROUPS {
            self.by_group.pop_first();
        }
        count
    }

    /// Forgets `group`'s history (it escalated).
    fn forget(&mut self, group: &Target) {
        self.by_group.remove(group);
    }
}

/// An escalation the policy asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Escalation {
    /// The network to block.
    pub target: Target,
    /// Why, for the audit line and the reply.
    pub why: String,
}

impl Policy {
    /// The prefix length `source`'s single IPv6 addresses are widened to (128: not widened).
    pub fn ipv6_prefix(&self, source: &Source) -> u8 {
        if never_widened(source) {
            return 128;
        }
        self.config
            .sources
            .get(source)
            .and_then(|s| s.ipv6_prefix)
            .unwrap_or(128)
    }

    /// The sources that widen, with their prefix lengths.
    pub fn widening_sources(&self) -> impl Iterator<Item = (&Source, u8)> {
        self.config
            .sources
            .keys()
            .map(|s| (s, self.ipv6_prefix(s)))
            .filter(|(_, len)| *len < 128)
    }

    /// Widens a single IPv6 `target` of `source` to its network, unless the network holds an
    /// allowlisted address (then the single address is blocked, and the note says why).
    pub fn widen(&self, target: Target, source: &Source, allow: &Allowlist) -> Widened {
        let len = self.ipv6_prefix(source);
        if target.is_v4() || !target.is_host() || len >= 128 {
            return Widened::unchanged(target);
        }
        let net = network(target, len);
        let held = allow
            .covering(&net)
            .or_else(|| allow.inside(&net).into_iter().next());
        if let Some((allowed, origin)) = held {
            return Widened {
                target,
                requested: None,
                note: Some(format!(
                    "not widened to {net}: it holds allowlisted {allowed} ({origin}); the single address is blocked"
                )),
            };
        }
        Widened {
            target: net,
            requested: Some(target),
            note: Some(format!(
                "{target} widened to {net} (policy.sources.{source}.ipv6_prefix)"
            )),
        }
    }

    /// Records that the widened network `net` was blocked at `now`; returns the broader network
    /// to block when `[policy.ipv6_escalate]` says so (its history then starts over).
    pub fn escalation(&mut self, net: Target, now: WallMs) -> Option<Escalation> {
        let e = self.config.ipv6_escalate.as_ref()?;
        if net.is_v4() || net.prefix_len() <= e.to {
            return None;
        }
        let group = network(net, e.to);
        let window_ms = u64::try_from(e.window.0.as_millis()).unwrap_or(u64::MAX);
        let count = self
            .networks
            .record(group, net, now, window_ms, e.after.max(1));
        if count < e.after {
            return None;
        }
        let why = format!(
            "{count} networks of {group} blocked within {} (policy.ipv6_escalate)",
            e.window
        );
        self.networks.forget(&group);
        Some(Escalation { target: group, why })
    }
}

/// A policy that widens `wazuh`'s IPv6 addresses to their /64 and escalates to a /48 after
/// three of them within an hour: the tests of widening (here and in the ledger) share it.
#[cfg(test)]
pub(crate) const WIDENING: &str = r#"
    [sources.wazuh]
    ipv6_prefix = 64
    [ipv6_escalate]
    window = "1h"
    after = 3
    to = 48
"#;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        policy::{AllowOrigin, PolicyConfig, SourcePolicy},
        time::testing::wall,
    };

    fn t(s: &str) -> Target {
        s.parse().unwrap()
    }

    fn policy(toml_text: &str) -> Policy {
        let config: PolicyConfig = toml::from_str(toml_text).unwrap();
        config.validate().unwrap();
        Policy::new(config, Duration::from_secs(600))
    }

    #[test]
    fn a_single_ipv6_address_is_widened_to_its_network_for_a_widening_source_only() {
        // Even past validation (which refuses it), `cli` and `crowdsec` are never widened.
        let unchecked = format!(
            "{WIDENING}\n[sources.cli]\nipv6_prefix = 64\n[sources.crowdsec]\nipv6_prefix = 64"
        );
        let p = Policy::new(
            toml::from_str(&unchecked).unwrap(),
            Duration::from_secs(600),
        );
        let none = Allowlist::default();
        let wazuh: Source = "wazuh".parse().unwrap();
        let w = p.widen(t("2001:db8:0:1::10"), &wazuh, &none);
        assert_eq!(w.target, t("2001:db8:0:1::/64"));
        assert_eq!(w.requested, Some(t("2001:db8:0:1::10")));
        assert!(w.note.unwrap().contains("ipv6_prefix"));
        for (target, source) in [
            ("2001:db8:0:1::10", "cli"),
            ("2001:db8:0:1::10", "crowdsec"),
            ("2001:db8:0:1::10", "fail2ban"),
            ("192.0.2.7", "wazuh"),
            ("2001:db8:0:1::/80", "wazuh"),
        ] {
            let w = p.widen(t(target), &source.parse().unwrap(), &none);
            assert_eq!(w, Widened::unchanged(t(target)), "{target} from {source}");
        }
    }

    #[test]
    fn a_network_holding_an_allowlisted_address_is_not_widened_to() {
        let p = policy(WIDENING);
        let mut allow = Allowlist::default();
        allow.insert(t("2001:db8:0:1::30"), AllowOrigin::Config);
        let w = p.widen(t("2001:db8:0:1::10"), &"wazuh".parse().unwrap(), &allow);
        assert_eq!(w.target, t("2001:db8:0:1::10"));
        assert_eq!(w.requested, None);
        assert!(
            w.note.unwrap().contains("allowlisted 2001:db8:0:1::30"),
            "the note names the allowlisted address"
        );
    }

    #[test]
    fn escalation_needs_after_distinct_networks_of_one_group_within_the_window() {
        let mut p = policy(WIDENING);
        let hour = 3_600_000;
        assert_eq!(p.escalation(t("2001:db8:1:1::/64"), wall(0)), None);
        assert_eq!(
            p.escalation(t("2001:db8:1:1::/64"), wall(10)),
            None,
            "the same one again"
        );
        assert_eq!(
            p.escalation(t("2001:db8:2:1::/64"), wall(20)),
            None,
            "another /48"
        );
        assert_eq!(p.escalation(t("2001:db8:1:2::/64"), wall(30)), None);
        let e = p.escalation(t("2001:db8:1:3::/64"), wall(40)).unwrap();
        assert_eq!(e.target, t("2001:db8:1::/48"));
        assert!(
            e.why.starts_with("3 networks of 2001:db8:1::/48"),
            "{}",
            e.why
        );
        // The history starts over after an escalation.
        assert_eq!(p.escalation(t("2001:db8:1:4::/64"), wall(50)), None);
        // Outside the window, earlier networks no longer count.
        assert_eq!(p.escalation(t("2001:db8:2:2::/64"), wall(hour + 21)), None);
        assert_eq!(p.escalation(t("2001:db8:2:3::/64"), wall(hour + 22)), None);
    }

    #[test]
    fn widening_options_are_checked() {
        let bad = |text: &str| {
            toml::from_str::<PolicyConfig>(text)
                .map_err(|e| e.to_string())
                .and_then(|c| c.validate().map_err(|(k, m)| format!("{k}: {m}")))
                .unwrap_err()
        };
        assert!(bad("[sources.cli]\nipv6_prefix = 64").contains("never widened"));
        assert!(bad("[sources.wazuh]\nipv6_prefix = 129").contains("at most 128"));
        assert!(bad("[sources.wazuh]\nipv6_prefix = 40").contains("min_prefix_v6"));
        assert!(bad("[ipv6_escalate]\nwindow = \"1h\"\nafter = 1\nto = 48").contains("at least 2"));
        assert!(
            bad("[sources.wazuh]\nipv6_prefix = 64\n[ipv6_escalate]\nwindow = \"1h\"\nafter = 3\nto = 64")
                .contains("broader")
        );
        let p = policy("");
        assert_eq!(
            p.ipv6_prefix(&"wazuh".parse().unwrap()),
            128,
            "off by default"
        );
        let _ = SourcePolicy::default();
    }
}
