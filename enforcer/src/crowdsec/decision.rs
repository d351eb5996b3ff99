//! The LAPI's decisions as they arrive, and what each one means here.
//!
//! A stream answer is parsed in two steps so that one odd decision cannot spoil a pull: the
//! envelope (`{"new": [...], "deleted": [...]}`) must be right or the whole answer is rejected;
//! each decision is then mapped on its own, and one that is malformed, not a ban, or of a scope
//! we do not enforce is skipped with a reason.

use std::sync::Arc;

use serde::Deserialize;

use super::go_duration;
use crate::{block::Reason, target::Target};

/// The body of `GET /v1/decisions/stream`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamBody {
    /// Decisions that started (or, in a startup pull, every live one).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub new: Vec<serde_json::Value>,
    /// Decisions that ended or were deleted.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub deleted: Vec<serde_json::Value>,
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<serde_json::Value>, D::Error> {
    Ok(Option::<Vec<serde_json::Value>>::deserialize(d)?.unwrap_or_default())
}

/// One decision, as the LAPI writes it (fields we do not use are ignored).
#[derive(Debug, Deserialize)]
struct WireDecision {
    #[serde(default)]
    id: Option<i64>,
    #[serde(default)]
    origin: String,
    #[serde(rename = "type")]
    kind: String,
    scope: String,
    value: String,
    duration: String,
    #[serde(default)]
    scenario: String,
    #[serde(default)]
    simulated: Option<bool>,
}

/// Identifies a decision across pulls: the LAPI's id, or (when a LAPI sends none) what the
/// decision is about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DecisionKey {
    /// The LAPI's decision id.
    Id(i64),
    /// Origin and scenario of a decision without an id.
    Anonymous(String, String),
}

/// A ban decision, mapped to our types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    /// Which decision.
    pub key: DecisionKey,
    /// The address or prefix.
    pub target: Target,
    /// Time left when the LAPI answered, in ms (zero or negative: already over).
    pub remaining_ms: i64,
    /// Origin, scenario and id, for `enforcer list` and the audit log.
    pub reason: Arc<Reason>,
    /// Where it came from (`crowdsec`, `cscli`, `CAPI`, `lists`, ...).
    pub origin: String,
}

/// Why a decision is not enforced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    /// A type other than `ban` (`captcha`, `throttle`, ...): counted, not enforced.
    #[error("decision type `{0}` is not enforced (only `ban` is)")]
    NotBan(String),
    /// A scope other than `Ip` or `Range` (`Country`, `AS`, `Username`, ...).
    #[error("decision scope `{0}` is not enforced (only Ip and Range are)")]
    Scope(String),
    /// A decision in simulation mode.
    #[error("simulated decision: not enforced")]
    Simulated,
    /// The decision is malformed: a missing field, a wrong type, a bad value or duration.
    #[error("malformed decision: {0}")]
    Invalid(String),
}

impl Skip {
    /// Whether the LAPI sent something broken (as opposed to something we choose to ignore).
    pub const fn is_invalid(&self) -> bool {
        matches!(self, Self::Invalid(_))
    }
}

/// Maps one decision of a stream answer.
pub fn map(value: serde_json::Value) -> Result<Ban, Skip> {
    let d: WireDecision = serde_json::from_value(value).map_err(|e| Skip::Invalid(e.to_string()))?;
    if d.simulated == Some(true) {
        return Err(Skip::Simulated);
    }
    if !d.kind.eq_ignore_ascii_case("ban") {
        return Err(Skip::NotBan(d.kind));
    }
    let target = map_target(&d.scope, &d.value)?;
    let remaining_ms = go_duration::parse_millis(&d.duration).map_err(|e| Skip::Invalid(e.to_string()))?;
    let key = match d.id {
        Some(id) => DecisionKey::Id(id),
        None => DecisionKey::Anonymous(d.origin.clone(), d.scenario.clone()),
    };
    let reason = Arc::new(reason(&d));
    Ok(Ban {
        key,
        target,
        remaining_ms,
        reason,
        origin: d.origin,
    })
}

/// `Ip` → one address (a `/32` or `/128` suffix is allowed); `Range` → a prefix (a `/32` or
/// `/128` range is one address). Scope names are compared without case, as LAPIs vary.
fn map_target(scope: &str, value: &str) -> Result<Target, Skip> {
    let is_ip = scope.eq_ignore_ascii_case("ip");
    if !is_ip && !scope.eq_ignore_ascii_case("range") {
        return Err(Skip::Scope(scope.to_owned()));
    }
    let target: Target = value
        .parse()
        .map_err(|e: crate::target::TargetError| Skip::Invalid(e.to_string()))?;
    if is_ip && !target.is_host() {
        return Err(Skip::Invalid(format!("an Ip decision holds the prefix `{value}`")));
    }
    Ok(target)
}

/// The reason recorded with the block: scenario, origin and decision id.
fn reason(d: &WireDecision) -> Reason {
    let id = d.id.map_or_else(|| "no id".to_owned(), |id| format!("decision {id}"));
    Reason {
        text: Some(clip(&format!("{} (origin {}, {id})", d.scenario, d.origin), 1024)),
        rule_id: (!d.scenario.is_empty()).then(|| clip(&d.scenario, 128)),
        alert_id: d.id.map(|id| id.to_string()),
        ..Reason::default()
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn clip(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn decision(scope: &str, value: &str, duration: &str) -> serde_json::Value {
        json!({"id": 7, "origin": "cscli", "type": "ban", "scope": scope, "value": value,
               "duration": duration, "scenario": "crowdsecurity/ssh-bf"})
    }

    #[test]
    fn ip_and_range_of_both_families() {
        let cases = [
            ("Ip", "203.0.113.9", "203.0.113.9"),
            ("ip", "203.0.113.9/32", "203.0.113.9"),
            ("Ip", "2001:db8::5", "2001:db8::5"),
            ("Ip", "2001:db8::5/128", "2001:db8::5"),
            ("Range", "198.51.100.0/24", "198.51.100.0/24"),
            ("range", "198.51.100.7/32", "198.51.100.7"),
            ("RANGE", "2001:db8:1::/48", "2001:db8:1::/48"),
            ("Range", "2001:db8:1::7/128", "2001:db8:1::7"),
            ("Ip", "::ffff:192.0.2.9", "192.0.2.9"),
        ];
        for (scope, value, want) in cases {
            let ban = map(decision(scope, value, "4m")).unwrap_or_else(|e| panic!("{scope} {value}: {e}"));
            assert_eq!(ban.target.to_string(), want, "{scope} {value}");
            assert_eq!(ban.remaining_ms, 240_000);
        }
    }

    #[test]
    fn reason_names_scenario_origin_and_decision() {
        let ban = map(decision("Ip", "192.0.2.9", "9m59.381971686s")).unwrap();
        assert_eq!(ban.reason.rule_id.as_deref(), Some("crowdsecurity/ssh-bf"));
        assert_eq!(ban.reason.alert_id.as_deref(), Some("7"));
        assert_eq!(ban.reason.summary(), "crowdsecurity/ssh-bf (origin cscli, decision 7)");
        assert_eq!(ban.key, DecisionKey::Id(7));
        assert_eq!(ban.remaining_ms, 599_381);
    }

    #[test]
    fn what_is_skipped_and_why() {
        let mut captcha = decision("Ip", "192.0.2.9", "4m");
        captcha["type"] = json!("captcha");
        assert_eq!(map(captcha), Err(Skip::NotBan("captcha".into())));
        assert_eq!(map(decision("Country", "FR", "4m")), Err(Skip::Scope("Country".into())));
        let mut sim = decision("Ip", "192.0.2.9", "4m");
        sim["simulated"] = json!(true);
        assert_eq!(map(sim), Err(Skip::Simulated));
        for bad in [
            decision("Ip", "192.0.2.0/24", "4m"),
            decision("Ip", "evil.example", "4m"),
            decision("Range", "192.0.2.0/33", "4m"),
            decision("Ip", "192.0.2.9", "4 days"),
            json!({"type": "ban", "scope": "Ip", "value": 5, "duration": "4m"}),
            json!({"type": "ban", "scope": "Ip", "value": "192.0.2.9"}),
            json!("192.0.2.9"),
            json!(null),
        ] {
            assert!(map(bad.clone()).is_err_and(|s| s.is_invalid()), "{bad} should be invalid");
        }
    }

    #[test]
    fn null_lists_are_empty() {
        let body: StreamBody = serde_json::from_str(r#"{"new":null,"deleted":null}"#).unwrap();
        assert!(body.new.is_empty() && body.deleted.is_empty());
        let body: StreamBody = serde_json::from_str("{}").unwrap();
        assert!(body.new.is_empty());
        assert!(serde_json::from_str::<StreamBody>(r#"{"new":{"a":1}}"#).is_err());
        assert!(serde_json::from_str::<StreamBody>("[1,2]").is_err());
    }
}
