//! The safety policy every block passes through, whatever its source.
//!
//! In order, a block request meets:
//! 1. the **allowlist** (a target inside an allowlisted prefix is refused; a prefix that contains
//!    allowlisted addresses is refused unless forced, and then the kernel allowlist still wins);
//! 2. the **scope guard** (prefixes broader than /24 or /48 need force);
//! 3. **time bounds** (default and maximum TTL per source; permanent blocks only from sources
//!    allowed to make them);
//! 4. **repeat offenders** (a target blocked again within a window gets an escalated TTL);
//! 5. the **circuit breaker** (past a source's rate, its new blocks go to shadow or are refused);
//! 6. the **rollout mode** (global and per-source shadow);
//! 7. **approval** (by source or prefix breadth, blocks wait for a human).
//!
//! Every refusal names the rule that made it; the daemon writes it to the audit log.

pub mod allowlist;
pub mod host;
pub mod networks;

use std::{
    collections::{BTreeMap, VecDeque},
    fmt,
    time::Duration,
};

pub use allowlist::{AllowOrigin, Allowlist};
pub use networks::{Escalation, Ipv6Escalate, Widened};
use serde::{Deserialize, Serialize};

pub use crate::protocol::{BreakerAction, BreakerState};
use crate::{
    block::{Mode, Source},
    duration::HumanDuration,
    target::Target,
    time::WallMs,
};

/// Per-source policy; unset fields fall back to the global ones.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourcePolicy {
    /// Rollout mode for this source.
    pub mode: Option<Mode>,
    /// TTL when a request names none.
    pub default_ttl: Option<HumanDuration>,
    /// Longest TTL; longer requests are capped.
    pub max_ttl: Option<HumanDuration>,
    /// Whether this source may make permanent blocks.
    pub allow_permanent: Option<bool>,
    /// Whether this source may force past the allowlist-containment and scope rules.
    pub allow_force: Option<bool>,
    /// New blocks per minute before the breaker opens.
    pub rate_limit: Option<u32>,
    /// What the open breaker does.
    pub on_rate_limit: Option<BreakerAction>,
    /// How long the breaker stays open.
    pub breaker_cooldown: Option<HumanDuration>,
    /// Every block from this source waits for approval.
    pub require_approval: Option<bool>,
    /// A single IPv6 address this source blocks is widened to its network of this length
    /// (`None` or 128: not widened; never for `cli` or the CrowdSec feed).
    pub ipv6_prefix: Option<u8>,
}

/// Escalation for targets blocked again.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepeatOffenders {
    /// How far back earlier blocks count.
    pub window: HumanDuration,
    /// TTL of the 1st, 2nd, 3rd... block within the window (the last repeats).
    pub ttls: Vec<HumanDuration>,
}

/// Approval rules.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Approval {
    /// Prefixes broader than this (IPv4) wait for approval.
    pub broader_than_v4: Option<u8>,
    /// Prefixes broader than this (IPv6) wait for approval.
    pub broader_than_v6: Option<u8>,
    /// Unapproved requests expire after this.
    pub pending_ttl: HumanDuration,
    /// Most requests waiting for approval at once; a request past it is refused
    /// ([`crate::daemon::refusal::Refusal::PendingFull`]) until some are approved, rejected or
    /// expire.
    pub max_pending: usize,
    /// Percent of `max_pending` one caller may hold ([`Approval::caller_share`]), so that one
    /// caller cannot take every slot.
    pub caller_share: u8,
}

/// Default [`Approval::max_pending`].
pub const DEFAULT_MAX_PENDING: usize = 1000;

/// Default [`Approval::caller_share`] (percent).
pub const DEFAULT_CALLER_SHARE: u8 = 25;

impl Approval {
    /// Most requests one caller may have waiting: `caller_share` percent of `max_pending`,
    /// rounded up (at least one).
    pub fn caller_share(&self) -> usize {
        (self.max_pending * usize::from(self.caller_share))
            .div_ceil(100)
            .max(1)
    }
}

impl Default for Approval {
    fn default() -> Self {
        Self {
            broader_than_v4: None,
            broader_than_v6: None,
            pending_ttl: HumanDuration(Duration::from_secs(3600)),
            max_pending: DEFAULT_MAX_PENDING,
            caller_share: DEFAULT_CALLER_SHARE,
        }
    }
}

/// The `[policy]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Global rollout mode: `shadow` puts every new block in shadow mode.
    pub mode: Mode,
    /// Narrowest prefix an unforced IPv4 block may have.
    pub min_prefix_v4: u8,
    /// Narrowest prefix an unforced IPv6 block may have.
    pub min_prefix_v6: u8,
    /// Longest TTL for any source.
    pub max_ttl: HumanDuration,
    /// Sources that may make permanent blocks.
    pub permanent_sources: Vec<Source>,
    /// Sources that may force.
    pub force_sources: Vec<Source>,
    /// Default rate limit (new blocks per minute per source); 0 = none.
    pub rate_limit: u32,
    /// Default breaker action.
    pub on_rate_limit: BreakerAction,
    /// Default breaker cooldown.
    pub breaker_cooldown: HumanDuration,
    /// Repeat-offender escalation.
    pub repeat_offenders: Option<RepeatOffenders>,
    /// Approval rules.
    pub approval: Approval,
    /// Escalation from widened IPv6 networks to a broader one.
    pub ipv6_escalate: Option<Ipv6Escalate>,
    /// Per-source overrides.
    pub sources: BTreeMap<Source, SourcePolicy>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            min_prefix_v4: 24,
            min_prefix_v6: 48,
            max_ttl: HumanDuration(Duration::from_secs(30 * 86_400)),
            permanent_sources: vec![Source::cli()],
            force_sources: vec![Source::cli()],
            rate_limit: 0,
            on_rate_limit: BreakerAction::Shadow,
            breaker_cooldown: HumanDuration(Duration::from_secs(600)),
            repeat_offenders: None,
            approval: Approval::default(),
            ipv6_escalate: None,
            sources: BTreeMap::new(),
        }
    }
}

impl PolicyConfig {
    /// Checks values serde cannot; returns the offending key and why.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.min_prefix_v4 > 32 {
            return Err((
                "min_prefix_v4".into(),
                format!("{} is more than 32", self.min_prefix_v4),
            ));
        }
        if self.min_prefix_v6 > 128 {
            return Err((
                "min_prefix_v6".into(),
                format!("{} is more than 128", self.min_prefix_v6),
            ));
        }
        if let Some(r) = &self.repeat_offenders
            && r.ttls.is_empty()
        {
            return Err((
                "ttls".into(),
                "repeat_offenders.ttls needs at least one duration".into(),
            ));
        }
        if self.approval.broader_than_v4.is_some_and(|v| v > 32) {
            return Err(("broader_than_v4".into(), "must be at most 32".into()));
        }
        if self.approval.broader_than_v6.is_some_and(|v| v > 128) {
            return Err(("broader_than_v6".into(), "must be at most 128".into()));
        }
        if self.approval.max_pending == 0 {
            return Err(("max_pending".into(), "must be at least 1".into()));
        }
        if !(1..=100).contains(&self.approval.caller_share) {
            return Err((
                "caller_share".into(),
                "must be a percent from 1 to 100".into(),
            ));
        }
        self.validate_networks()?;
        for (name, s) in &self.sources {
            if let (Some(d), Some(m)) = (s.default_ttl, s.max_ttl.or(Some(self.max_ttl)))
                && d > m
            {
                return Err((
                    "default_ttl".into(),
                    format!("source {name}: default_ttl {d} exceeds max_ttl {m}"),
                ));
            }
            if s.rate_limit == Some(0) {
                return Err((
                    "rate_limit".into(),
                    format!("source {name}: rate_limit must be at least 1 (omit it for no limit)"),
                ));
            }
        }
        Ok(())
    }

    /// Checks `ipv6_prefix` and `[policy.ipv6_escalate]`.
    fn validate_networks(&self) -> Result<(), (String, String)> {
        let key = |k: &str, m: String| Err((k.to_owned(), m));
        for (name, s) in &self.sources {
            let Some(len) = s.ipv6_prefix else { continue };
            if len > 128 {
                return key(
                    "ipv6_prefix",
                    format!("source {name}: ipv6_prefix {len} must be at most 128"),
                );
            }
            if len < 128 && networks::never_widened(name) {
                return key(
                    "ipv6_prefix",
                    format!(
                        "source {name}: its blocks are never widened (an operator or a feed names the prefix it means); remove ipv6_prefix"
                    ),
                );
            }
            if len < self.min_prefix_v6 {
                return key(
                    "ipv6_prefix",
                    format!(
                        "source {name}: ipv6_prefix {len} is broader than min_prefix_v6 {}, so every widened block would be refused",
                        self.min_prefix_v6
                    ),
                );
            }
        }
        let Some(e) = &self.ipv6_escalate else {
            return Ok(());
        };
        if e.after < 2 {
            return key(
                "after",
                format!("ipv6_escalate.after {} must be at least 2", e.after),
            );
        }
        let narrowest = self
            .sources
            .iter()
            .filter(|(n, _)| !networks::never_widened(n))
            .filter_map(|(_, s)| s.ipv6_prefix)
            .filter(|&l| l < 128)
            .min();
        if let Some(len) = narrowest
            && e.to >= len
        {
            return key(
                "to",
                format!(
                    "ipv6_escalate.to /{} must be broader than the widened networks (/{len})",
                    e.to
                ),
            );
        }
        Ok(())
    }

    fn source(&self, s: &Source) -> SourcePolicy {
        self.sources.get(s).cloned().unwrap_or_default()
    }
}

/// A block request as the policy sees it.
#[derive(Clone, Debug)]
pub struct Ask<'a> {
    /// Target.
    pub target: Target,
    /// Source.
    pub source: &'a Source,
    /// Requested TTL (`None` = default).
    pub ttl: Option<Duration>,
    /// Permanent requested.
    pub permanent: bool,
    /// Shadow requested.
    pub shadow: bool,
    /// Force requested.
    pub force: bool,
    /// Approved by a human (skips the approval rule).
    pub approved: bool,
    /// Whether the source already blocks this target (extensions do not count against the rate).
    pub existing: bool,
    /// When the trigger was made (Unix ms): now, or a spooled trigger's spool time. The rate
    /// limiter charges it then, so a backlog replayed at once meets the rate it arrived at.
    pub at: WallMs,
}

/// The policy's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Apply with this TTL (`None` = permanent) and mode; `notes` say what the policy changed.
    Apply {
        /// TTL.
        ttl: Option<Duration>,
        /// Mode.
        mode: Mode,
        /// What the policy adjusted, for the audit log and the reply.
        notes: Vec<String>,
    },
    /// Wait for approval.
    Pending {
        /// Why approval is needed.
        why: String,
    },
    /// Refused.
    Refuse {
        /// The rule.
        rule: Rule,
        /// Why.
        message: String,
    },
}

/// A policy rule that can refuse a block (its name appears in refusals and the audit log).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Only sources allowed to force may force.
    Force,
    /// Allowlisted addresses are never blocked.
    Allowlist,
    /// Prefixes broader than the scope guard need force.
    Scope,
    /// TTL bounds and permanent blocks.
    TimeBounds,
    /// The circuit breaker of a source past its rate.
    Breaker,
}

impl Rule {
    /// The rule's name, as refusals, the audit log and the metrics say it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Force => "force",
            Self::Allowlist => "allowlist",
            Self::Scope => "scope",
            Self::TimeBounds => "time_bounds",
            Self::Breaker => "breaker",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the breaker says about one request.
enum BreakerCheck {
    /// Closed: the block proceeds.
    Closed,
    /// Open (`opened`: by this request), with what to do and the rate it guards.
    Open {
        opened: bool,
        action: BreakerAction,
        limit: u32,
    },
}

/// The window a source's rate of new blocks is counted over.
const BREAKER_WINDOW: Duration = Duration::from_secs(60);

/// A source's circuit breaker.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Breaker {
    /// Times of recent new blocks (last minute).
    #[serde(skip)]
    recent: VecDeque<WallMs>,
    /// Open until (Unix ms).
    pub open_until: Option<WallMs>,
    /// When it opened.
    pub opened_at: Option<WallMs>,
}

/// Runtime policy: the configuration plus breakers.
pub struct Policy {
    /// Configuration.
    pub config: PolicyConfig,
    default_ttl: Duration,
    breakers: BTreeMap<Source, Breaker>,
    /// Widened IPv6 networks blocked lately, for escalation (in memory, as the breakers).
    networks: networks::NetworkHistory,
}

/// Result of a breaker check.
pub enum BreakerEvent {
    /// Nothing changed.
    None,
    /// The breaker just opened.
    Opened,
}

impl Policy {
    /// A policy with `default_ttl` for sources without their own.
    pub fn new(config: PolicyConfig, default_ttl: Duration) -> Self {
        Self {
            config,
            default_ttl,
            breakers: BTreeMap::new(),
            networks: networks::NetworkHistory::default(),
        }
    }

    /// Decides a block request. `offenses` is how many earlier blocks of this target fall in the
    /// repeat-offender window. Updates breaker state (at the trigger's time, `ask.at`); returns
    /// whether a breaker opened.
    pub fn decide(
        &mut self,
        ask: &Ask<'_>,
        allow: &Allowlist,
        offenses: usize,
    ) -> (Decision, BreakerEvent) {
        let sp = self.config.source(ask.source);
        let refused = |(rule, message)| (Decision::Refuse { rule, message }, BreakerEvent::None);
        if let Err(r) = self.check_scope(ask, &sp, allow) {
            return refused(r);
        }
        let mut notes = Vec::new();
        let ttl = match self.time_bounds(ask, &sp, offenses, &mut notes) {
            Ok(ttl) => ttl,
            Err(r) => return refused(r),
        };
        let mut mode = if ask.shadow {
            Mode::Shadow
        } else {
            Mode::Enforce
        };
        let event = match self.breaker(ask, &sp) {
            BreakerCheck::Closed => BreakerEvent::None,
            BreakerCheck::Open {
                opened,
                action,
                limit,
            } => {
                let event = if opened {
                    BreakerEvent::Opened
                } else {
                    BreakerEvent::None
                };
                if action == BreakerAction::Refuse {
                    let message = format!(
                        "source `{}` passed its rate of {limit} new blocks a minute; its breaker is open (see `enforcer status`, `enforcer breaker reset`)",
                        ask.source
                    );
                    return (
                        Decision::Refuse {
                            rule: Rule::Breaker,
                            message,
                        },
                        event,
                    );
                }
                notes.push(format!("breaker open for `{}`: shadow mode", ask.source));
                mode = Mode::Shadow;
                event
            }
        };
        // 6. Rollout mode.
        if self.config.mode == Mode::Shadow || sp.mode == Some(Mode::Shadow) {
            if mode != Mode::Shadow {
                notes.push("rollout mode is shadow".into());
            }
            mode = Mode::Shadow;
        }
        match self.approval(ask, &sp) {
            Some(why) => (Decision::Pending { why }, event),
            None => (Decision::Apply { ttl, mode, notes }, event),
        }
    }

    /// Rules 1 and 2: force, the allowlist and the scope guard.
    fn check_scope(
        &self,
        ask: &Ask<'_>,
        sp: &SourcePolicy,
        allow: &Allowlist,
    ) -> Result<(), (Rule, String)> {
        let may_force = sp
            .allow_force
            .unwrap_or_else(|| self.config.force_sources.contains(ask.source));
        let forced = ask.force && may_force;
        if ask.force && !may_force {
            return Err((
                Rule::Force,
                format!(
                    "source `{}` may not force (policy.force_sources)",
                    ask.source
                ),
            ));
        }
        if let Some((prefix, origin)) = allow.covering(&ask.target) {
            return Err((
                Rule::Allowlist,
                format!("{} is inside allowlisted {prefix} ({origin})", ask.target),
            ));
        }
        let inside = allow.inside(&ask.target);
        if !inside.is_empty() && !forced {
            let (p, o) = &inside[0];
            let more = if inside.len() > 1 {
                format!(" and {} more", inside.len() - 1)
            } else {
                String::new()
            };
            return Err((
                Rule::Allowlist,
                format!(
                    "{} contains allowlisted {p} ({o}){more}; use --force to block the rest (the allowlisted part stays reachable)",
                    ask.target
                ),
            ));
        }
        let min = if ask.target.is_v4() {
            self.config.min_prefix_v4
        } else {
            self.config.min_prefix_v6
        };
        if ask.target.prefix_len() < min && !forced {
            return Err((
                Rule::Scope,
                format!(
                    "{} is broader than /{min} (policy.min_prefix_{}); a narrower prefix, or --force from a source allowed to force",
                    ask.target,
                    if ask.target.is_v4() { "v4" } else { "v6" }
                ),
            ));
        }
        Ok(())
    }

    /// Rules 3 and 4: the TTL (`None` = permanent), escalated for repeat offenders and capped.
    fn time_bounds(
        &self,
        ask: &Ask<'_>,
        sp: &SourcePolicy,
        offenses: usize,
        notes: &mut Vec<String>,
    ) -> Result<Option<Duration>, (Rule, String)> {
        let max_ttl = sp
            .max_ttl
            .map_or(self.config.max_ttl.0, |d| d.0)
            .min(self.config.max_ttl.0);
        let may_permanent = sp
            .allow_permanent
            .unwrap_or_else(|| self.config.permanent_sources.contains(ask.source));
        if ask.permanent {
            if !may_permanent {
                return Err((
                    Rule::TimeBounds,
                    format!(
                        "source `{}` may not make permanent blocks (policy.permanent_sources); give a --ttl",
                        ask.source
                    ),
                ));
            }
            return Ok(None);
        }
        let mut ttl = ask
            .ttl
            .unwrap_or_else(|| sp.default_ttl.map_or(self.default_ttl, |d| d.0));
        if let Some(r) = &self.config.repeat_offenders
            && offenses > 0
        {
            let step = r.ttls[offenses.min(r.ttls.len() - 1)].0;
            if step > ttl {
                notes.push(format!(
                    "repeat offender ({} earlier in {}): TTL escalated to {}",
                    offenses,
                    r.window,
                    HumanDuration(step)
                ));
                ttl = step;
            }
        }
        if ttl > max_ttl {
            notes.push(format!(
                "TTL capped at the maximum {}",
                HumanDuration(max_ttl)
            ));
            ttl = max_ttl;
        }
        Ok(Some(ttl))
    }

    /// Rule 5: the circuit breaker. New blocks count against the rate; an open breaker applies
    /// to re-blocks by its source too, so repeats cannot undo it (a shadowed block is not
    /// enforced by its repeats while the breaker is open).
    ///
    /// Everything is judged at the trigger's time `ask.at`, not at the time it is applied: a
    /// spooled backlog is charged as it arrived (eight triggers over ten minutes stay within a
    /// rate of three a minute; six in one second do not, and the breaker opens at the fourth's
    /// spool time, its cooldown running from then). Triggers are charged in the order they
    /// come; one older than the newest charged counts against the minute before its own time.
    fn breaker(&mut self, ask: &Ask<'_>, sp: &SourcePolicy) -> BreakerCheck {
        let limit = sp.rate_limit.unwrap_or(self.config.rate_limit);
        if limit == 0 {
            return BreakerCheck::Closed;
        }
        let action = sp.on_rate_limit.unwrap_or(self.config.on_rate_limit);
        let cooldown = sp
            .breaker_cooldown
            .map_or(self.config.breaker_cooldown.0, |d| d.0);
        let at = ask.at;
        let b = self.breakers.entry(ask.source.clone()).or_default();
        if b.open_until.is_some_and(|u| u <= at) {
            *b = Breaker::default();
        }
        while b.recent.front().is_some_and(|t| *t + BREAKER_WINDOW <= at) {
            b.recent.pop_front();
        }
        let in_window = b
            .recent
            .iter()
            .filter(|&&t| t + BREAKER_WINDOW > at && t <= at)
            .count();
        let mut opened = false;
        if !ask.existing && b.open_until.is_none() && in_window >= limit as usize {
            b.open_until = Some(at + cooldown);
            b.opened_at = Some(at);
            opened = true;
        }
        if b.open_until.is_some() {
            return BreakerCheck::Open {
                opened,
                action,
                limit,
            };
        }
        if !ask.existing {
            // Kept in time order, whatever order the triggers came in.
            let i = b.recent.partition_point(|&t| t <= at);
            b.recent.insert(i, at);
        }
        BreakerCheck::Closed
    }

    /// Rule 7: why this block must wait for a human, if it must.
    fn approval(&self, ask: &Ask<'_>, sp: &SourcePolicy) -> Option<String> {
        if ask.approved {
            return None;
        }
        if sp.require_approval == Some(true) {
            return Some(format!("source `{}` requires approval", ask.source));
        }
        let broad = if ask.target.is_v4() {
            self.config.approval.broader_than_v4
        } else {
            self.config.approval.broader_than_v6
        };
        broad
            .filter(|b| ask.target.prefix_len() < *b)
            .map(|b| format!("{} is broader than /{b} (policy.approval)", ask.target))
    }

    /// The breakers open at `now`. Triggers are judged at their own time, and a spooled backlog
    /// at earlier times than now: `judged_from` is the oldest time a trigger may still be
    /// judged at ([`crate::daemon::backlog::Backlog`]). A breaker is closed, and a source
    /// forgotten, only once that time is past its cooldown and its last new block's minute:
    /// the map holds only the sources that made a new block in the minute before it or whose
    /// breaker is open then, however many sources came and went, and a trigger still to be
    /// judged meets the state of its own time. The engine calls this after every round.
    pub fn open_breakers(&mut self, now: WallMs, judged_from: WallMs) -> Vec<BreakerState> {
        let from = judged_from.min(now);
        self.breakers.retain(|_, b| {
            b.open_until.is_some_and(|u| u > from)
                || b.recent
                    .back()
                    .is_some_and(|t| t.saturating_add(BREAKER_WINDOW) > from)
        });
        let mut out = Vec::new();
        for (s, b) in &mut self.breakers {
            if b.open_until.is_some_and(|u| u <= from) {
                b.open_until = None;
                b.opened_at = None;
                b.recent.clear();
            }
            if let (Some(until), Some(at)) = (b.open_until, b.opened_at)
                && until > now
            {
                let sp = self.config.sources.get(s);
                out.push(BreakerState {
                    source: s.clone(),
                    opened_ms: at,
                    closes_ms: until,
                    action: sp
                        .and_then(|p| p.on_rate_limit)
                        .unwrap_or(self.config.on_rate_limit),
                });
            }
        }
        out
    }

    /// How many sources have breaker state (see [`Policy::open_breakers`]).
    pub fn breaker_count(&self) -> usize {
        self.breakers.len()
    }

    /// Closes a source's breaker (or all). Returns the sources reset.
    pub fn reset_breakers(&mut self, source: Option<&Source>) -> Vec<Source> {
        let mut reset = Vec::new();
        for (s, b) in &mut self.breakers {
            if source.is_none_or(|x| x == s) && b.open_until.is_some() {
                reset.push(s.clone());
            }
            if source.is_none_or(|x| x == s) {
                *b = Breaker::default();
            }
        }
        reset
    }

    /// The repeat-offender window, if configured.
    pub fn offense_window(&self) -> Option<Duration> {
        self.config.repeat_offenders.as_ref().map(|r| r.window.0)
    }

    /// How many earlier offenses within the window can change a TTL (past the last step of
    /// `ttls`, more change nothing, so no more are kept); 0 without repeat-offender escalation.
    pub fn offense_depth(&self) -> usize {
        self.config
            .repeat_offenders
            .as_ref()
            .map_or(0, |r| r.ttls.len())
    }

    /// The wall clock stepped by `by_ms`: the breakers' times move with it, so a step neither
    /// closes an open breaker nor forgets the rate.
    pub fn shift_clock(&mut self, by_ms: i64) {
        let shift = |t: &mut WallMs| *t = t.shifted(by_ms);
        for b in self.breakers.values_mut() {
            b.recent
                .iter_mut()
                .chain(b.open_until.as_mut())
                .chain(b.opened_at.as_mut())
                .for_each(shift);
        }
        self.networks.shift(by_ms);
    }

    /// Whether `source` may force (`policy.force_sources`, or its own `allow_force`): such
    /// sources, like `cli`, keep the kernel maps' reserve and have no share of them.
    pub fn may_force(&self, source: &Source) -> bool {
        self.config
            .source(source)
            .allow_force
            .unwrap_or_else(|| self.config.force_sources.contains(source))
    }

    /// The longest TTL `source` may give (its own `max_ttl`, within the global one).
    pub fn max_ttl(&self, source: &Source) -> Duration {
        self.config
            .source(source)
            .max_ttl
            .map_or(self.config.max_ttl.0, |d| d.0)
            .min(self.config.max_ttl.0)
    }

    /// How long pending requests wait.
    pub fn pending_ttl(&self) -> Duration {
        self.config.approval.pending_ttl.0
    }

    /// Most requests waiting for approval at once.
    pub fn max_pending(&self) -> usize {
        self.config.approval.max_pending
    }

    /// Most requests one caller may have waiting for approval at once.
    pub fn caller_share(&self) -> usize {
        self.config.approval.caller_share()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::testing::wall;

    fn ask<'a>(target: &str, source: &'a Source) -> Ask<'a> {
        Ask {
            target: target.parse().unwrap(),
            source,
            ttl: None,
            permanent: false,
            shadow: false,
            force: false,
            approved: false,
            existing: false,
            at: wall(0),
        }
    }

    fn at(ask: Ask<'_>, ms: WallMs) -> Ask<'_> {
        Ask { at: ms, ..ask }
    }

    fn allow(prefixes: &[&str]) -> Allowlist {
        let mut a = Allowlist::default();
        for p in prefixes {
            a.insert(p.parse().unwrap(), AllowOrigin::Config);
        }
        a
    }

    fn refused(d: &Decision) -> String {
        match d {
            Decision::Refuse { rule, .. } => rule.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn allowlist_and_scope() {
        let mut p = Policy::new(PolicyConfig::default(), Duration::from_secs(3600));
        let cli = Source::cli();
        let wazuh: Source = "wazuh".parse().unwrap();
        let a = allow(&["192.0.2.0/28"]);
        assert_eq!(
            refused(&p.decide(&ask("192.0.2.5", &wazuh), &a, 0).0),
            "allowlist"
        );
        assert_eq!(
            refused(&p.decide(&ask("192.0.2.0/24", &wazuh), &a, 0).0),
            "allowlist"
        );
        let mut forced = ask("192.0.2.0/24", &cli);
        forced.force = true;
        assert!(matches!(p.decide(&forced, &a, 0).0, Decision::Apply { .. }));
        let mut not_allowed = ask("192.0.2.0/24", &wazuh);
        not_allowed.force = true;
        assert_eq!(refused(&p.decide(&not_allowed, &a, 0).0), "force");
        assert_eq!(
            refused(&p.decide(&ask("198.51.0.0/16", &wazuh), &a, 0).0),
            "scope"
        );
        assert_eq!(
            refused(&p.decide(&ask("2001:db8::/32", &wazuh), &a, 0).0),
            "scope"
        );
        assert!(matches!(
            p.decide(&ask("2001:db8::/48", &wazuh), &a, 0).0,
            Decision::Apply { .. }
        ));
    }

    #[test]
    fn time_bounds_and_repeat_offenders() {
        let mut cfg = PolicyConfig {
            repeat_offenders: Some(RepeatOffenders {
                window: HumanDuration(Duration::from_secs(86400)),
                ttls: vec![
                    "10m".parse().unwrap(),
                    "1h".parse().unwrap(),
                    "1d".parse().unwrap(),
                ],
            }),
            ..PolicyConfig::default()
        };
        cfg.sources.insert(
            "wazuh".parse().unwrap(),
            SourcePolicy {
                max_ttl: Some("2h".parse().unwrap()),
                ..SourcePolicy::default()
            },
        );
        let mut p = Policy::new(cfg, Duration::from_secs(600));
        let wazuh: Source = "wazuh".parse().unwrap();
        let none = Allowlist::default();
        let ttl = |d: Decision| match d {
            Decision::Apply { ttl, .. } => ttl.map(|t| t.as_secs()),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            ttl(p.decide(&ask("192.0.2.1", &wazuh), &none, 0).0),
            Some(600)
        );
        assert_eq!(
            ttl(p.decide(&ask("192.0.2.1", &wazuh), &none, 1).0),
            Some(3600)
        );
        assert_eq!(
            ttl(p.decide(&ask("192.0.2.1", &wazuh), &none, 5).0),
            Some(7200),
            "capped by max_ttl"
        );
        let mut perm = ask("192.0.2.1", &wazuh);
        perm.permanent = true;
        assert_eq!(refused(&p.decide(&perm, &none, 0).0), "time_bounds");
        let cli = Source::cli();
        let mut perm = ask("192.0.2.1", &cli);
        perm.permanent = true;
        assert_eq!(ttl(p.decide(&perm, &none, 0).0), None);
    }

    /// A breaker is state kept per source: one quiet for a minute with its breaker closed is
    /// forgotten, so the map holds only the sources that made a new block in the last minute or
    /// whose breaker is open, however many came and went.
    #[test]
    fn breakers_of_sources_quiet_for_a_minute_are_forgotten() {
        let cfg = PolicyConfig {
            rate_limit: 3,
            breaker_cooldown: "1m".parse().unwrap(),
            ..PolicyConfig::default()
        };
        let mut p = Policy::new(cfg, Duration::from_secs(600));
        let none = Allowlist::default();
        for i in 0..2000 {
            let s: Source = format!("feed{i}").parse().unwrap();
            p.decide(&at(ask("192.0.2.1", &s), wall(1000)), &none, 0);
        }
        let busy: Source = "busy".parse().unwrap();
        for i in 0..4 {
            p.decide(
                &at(ask(&format!("192.0.2.{i}"), &busy), wall(30_000)),
                &none,
                0,
            );
        }
        assert_eq!(p.breaker_count(), 2001);
        assert_eq!(
            p.open_breakers(wall(61_001), wall(61_001)).len(),
            1,
            "busy's breaker is open"
        );
        assert_eq!(
            p.breaker_count(),
            1,
            "only the open breaker is kept; the quiet sources are forgotten"
        );
        assert!(
            p.open_breakers(wall(30_000 + 60_001), wall(30_000 + 60_001))
                .is_empty()
        );
        assert_eq!(p.breaker_count(), 0, "closed and quiet: forgotten");
    }

    /// A backlog is judged at its own, earlier times: while a trigger of time T may still come,
    /// a source's new blocks of the minute before T count, and a breaker open at T stays open
    /// for it, whatever the wall clock says; once nothing older can come, both go.
    #[test]
    fn breakers_are_kept_for_the_oldest_trigger_still_to_be_judged() {
        let cfg = PolicyConfig {
            rate_limit: 3,
            breaker_cooldown: "10m".parse().unwrap(),
            on_rate_limit: BreakerAction::Refuse,
            ..PolicyConfig::default()
        };
        let mut p = Policy::new(cfg, Duration::from_secs(600));
        let none = Allowlist::default();
        let (quiet, busy): (Source, Source) = ("quiet".parse().unwrap(), "busy".parse().unwrap());
        let refused = |d: (Decision, BreakerEvent)| {
            matches!(
                d.0,
                Decision::Refuse {
                    rule: Rule::Breaker,
                    ..
                }
            )
        };
        let now = wall(3_600_000);
        // Twenty minutes ago: three of quiet's, four of busy's (its breaker opens at the 4th).
        for i in 0..3 {
            p.decide(
                &at(ask(&format!("192.0.2.{i}"), &quiet), wall(1000 + i)),
                &none,
                0,
            );
        }
        for i in 0..4 {
            p.decide(
                &at(ask(&format!("198.51.100.{i}"), &busy), wall(1000 + i)),
                &none,
                0,
            );
        }
        // The engine's round ends; triggers of time 1,010 on are still to be judged.
        assert!(
            p.open_breakers(now, wall(1010)).is_empty(),
            "by the wall clock nothing is open"
        );
        assert_eq!(p.breaker_count(), 2);
        assert!(
            refused(p.decide(&at(ask("192.0.2.9", &quiet), wall(1010)), &none, 0)),
            "quiet's three count: its fourth in the minute is past the rate"
        );
        assert!(
            refused(p.decide(&at(ask("198.51.100.9", &busy), wall(1010)), &none, 0)),
            "busy's breaker was open at that time"
        );
        // Nothing older than now can come any more: both are forgotten.
        assert!(p.open_breakers(now, now).is_empty());
        assert_eq!(p.breaker_count(), 0);
    }

    #[test]
    fn breaker_opens_at_the_rate_and_closes_after_cooldown() {
        let cfg = PolicyConfig {
            rate_limit: 3,
            breaker_cooldown: "1m".parse().unwrap(),
            ..PolicyConfig::default()
        };
        let mut p = Policy::new(cfg, Duration::from_secs(600));
        let s: Source = "feed".parse().unwrap();
        let none = Allowlist::default();
        let mode = |d: Decision| match d {
            Decision::Apply { mode, .. } => mode,
            other => panic!("{other:?}"),
        };
        for i in 0..3 {
            assert_eq!(
                mode(
                    p.decide(&at(ask(&format!("192.0.2.{i}"), &s), wall(1000)), &none, 0)
                        .0
                ),
                Mode::Enforce
            );
        }
        let (d, ev) = p.decide(&at(ask("192.0.2.9", &s), wall(1000)), &none, 0);
        assert!(matches!(ev, BreakerEvent::Opened));
        assert_eq!(mode(d), Mode::Shadow);
        assert_eq!(p.open_breakers(wall(2000), wall(2000)).len(), 1);
        assert!(p.open_breakers(wall(61_001), wall(61_001)).is_empty());
        assert_eq!(
            mode(
                p.decide(&at(ask("192.0.2.10", &s), wall(61_001)), &none, 0)
                    .0
            ),
            Mode::Enforce
        );
    }

    #[test]
    fn the_breaker_charges_each_trigger_at_its_own_time() {
        let cfg = PolicyConfig {
            rate_limit: 3,
            on_rate_limit: BreakerAction::Refuse,
            breaker_cooldown: "10m".parse().unwrap(),
            ..PolicyConfig::default()
        };
        let s: Source = "wazuh".parse().unwrap();
        let none = Allowlist::default();
        let applied = |d: &Decision| matches!(d, Decision::Apply { .. });
        // Eight triggers spread over ten minutes, decided one after the other (a backlog):
        // never more than one a minute, so the breaker stays closed.
        let mut p = Policy::new(cfg.clone(), Duration::from_secs(600));
        for i in 0..8u64 {
            let (d, _) = p.decide(
                &at(ask(&format!("192.0.2.{i}"), &s), wall(i * 75_000)),
                &none,
                0,
            );
            assert!(applied(&d), "trigger {i}: {d:?}");
        }
        assert!(
            p.open_breakers(wall(10 * 60_000), wall(10 * 60_000))
                .is_empty()
        );
        // Six within five seconds: the fourth opens it at its own time, and the cooldown runs
        // from then (closed again ten minutes later, whenever the backlog is decided).
        let mut p = Policy::new(cfg.clone(), Duration::from_secs(600));
        let decided: Vec<_> = (0..6u64)
            .map(|i| {
                p.decide(
                    &at(ask(&format!("192.0.2.{i}"), &s), wall(1000 + i * 1000)),
                    &none,
                    0,
                )
            })
            .collect();
        assert!(decided[..3].iter().all(|(d, _)| applied(d)));
        assert_eq!(
            decided[3..]
                .iter()
                .map(|(d, _)| refused(d))
                .collect::<Vec<_>>(),
            ["breaker"; 3]
        );
        assert!(matches!(decided[3].1, BreakerEvent::Opened));
        let open = p.open_breakers(wall(4000), wall(4000));
        assert_eq!(
            (open[0].opened_ms, open[0].closes_ms),
            (wall(4000), wall(4000 + 600_000))
        );
        assert!(
            p.open_breakers(wall(4000 + 600_000), wall(4000 + 600_000))
                .is_empty()
        );
        // A trigger older than the newest charged counts against the minute before its time.
        let mut p = Policy::new(cfg, Duration::from_secs(600));
        for (i, t) in [200_000u64, 100_000, 100_500, 150_000]
            .into_iter()
            .enumerate()
        {
            let (d, _) = p.decide(&at(ask(&format!("192.0.2.{i}"), &s), wall(t)), &none, 0);
            assert!(applied(&d), "{t}: {d:?}");
        }
        let (d, _) = p.decide(&at(ask("192.0.2.9", &s), wall(151_000)), &none, 0);
        assert_eq!(refused(&d), "breaker", "three in the minute before 151 s");
    }
}
