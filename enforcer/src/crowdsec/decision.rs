//! The LAPI's decisions as they arrive, and what each one means here.
//!
//! A stream answer is read in one pass, straight from the body's bytes (strings are borrowed,
//! not copied, and no intermediate JSON tree is built: a startup pull can hold hundreds of
//! thousands of decisions). The envelope (`{"new": [...], "deleted": [...]}`) must be right or
//! the whole answer is rejected; each decision inside it is read leniently, whatever its shape,
//! and then mapped on its own, so one that is malformed, not a ban, or of a scope we do not
//! enforce is skipped with a reason without spoiling the pull.

use std::{borrow::Cow, fmt, sync::Arc};

use serde::{
    Deserialize,
    de::{IgnoredAny, MapAccess, SeqAccess, Visitor},
};

use super::go_duration;
use crate::{block::Reason, target::Target};

/// The body of `GET /v1/decisions/stream`, borrowing from the body's bytes.
#[derive(Debug, Default, Deserialize)]
pub struct StreamBody<'a> {
    /// Decisions that started (or, in a startup pull, every live one).
    #[serde(default, borrow, deserialize_with = "null_as_empty")]
    pub new: Vec<RawDecision<'a>>,
    /// Decisions that ended or were deleted.
    #[serde(default, borrow, deserialize_with = "null_as_empty")]
    pub deleted: Vec<RawDecision<'a>>,
}

impl<'a> StreamBody<'a> {
    /// Reads a stream answer; fails only when the envelope is wrong (not JSON, not an object,
    /// `new` or `deleted` not a list).
    pub fn parse(body: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

fn null_as_empty<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<RawDecision<'de>>, D::Error> {
    Ok(Option::<Vec<RawDecision<'de>>>::deserialize(d)?.unwrap_or_default())
}

/// One JSON value of a decision's field, as far as mapping cares.
#[derive(Clone, Debug, PartialEq)]
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Bool(bool),
    Null,
    /// Anything else (a float, a list, an object): its JSON type, for the message.
    Other(&'static str),
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v).map_or(Scalar::Other("an integer out of range"), Scalar::Int))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Other("a number with a fraction"))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other("a list"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other("an object"))
    }
}

/// One element of `new` or `deleted`, read whatever its shape: the fields mapping uses (others
/// are skipped), or what the element was instead of an object. [`map`] says what is wrong.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawDecision<'a> {
    id: Option<Scalar<'a>>,
    origin: Option<Scalar<'a>>,
    kind: Option<Scalar<'a>>,
    scope: Option<Scalar<'a>>,
    value: Option<Scalar<'a>>,
    duration: Option<Scalar<'a>>,
    scenario: Option<Scalar<'a>>,
    simulated: Option<Scalar<'a>>,
    /// Set when the element is not an object (its JSON type).
    not_an_object: Option<&'static str>,
}

impl<'de> Deserialize<'de> for RawDecision<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(RawVisitor)
    }
}

struct RawVisitor;

impl RawVisitor {
    fn not(what: &'static str) -> RawDecision<'static> {
        RawDecision {
            not_an_object: Some(what),
            ..RawDecision::default()
        }
    }
}

impl<'de> Visitor<'de> for RawVisitor {
    type Value = RawDecision<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a decision")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut d = RawDecision::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let slot = match key.as_ref() {
                "id" => &mut d.id,
                "origin" => &mut d.origin,
                "type" => &mut d.kind,
                "scope" => &mut d.scope,
                "value" => &mut d.value,
                "duration" => &mut d.duration,
                "scenario" => &mut d.scenario,
                "simulated" => &mut d.simulated,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = Some(map.next_value()?);
        }
        Ok(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Self::not("a list"))
    }
    fn visit_borrowed_str<E>(self, _: &'de str) -> Result<Self::Value, E> {
        Ok(Self::not("a string"))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Self::not("a string"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Self::not("a number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Self::not("a number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Self::not("a number"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Self::not("a boolean"))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Self::not("null"))
    }
}

/// A field that must be a string.
fn string<'r, 'a>(field: &'static str, v: &'r Option<Scalar<'a>>) -> Result<&'r str, Skip> {
    match v {
        Some(Scalar::Str(s)) => Ok(s),
        None | Some(Scalar::Null) => Err(Skip::Invalid(format!("missing field `{field}`"))),
        Some(other) => Err(Skip::Invalid(format!(
            "`{field}` is {}, not a string",
            kind_of(other)
        ))),
    }
}

/// A field that may be missing (or null), else must be a string.
fn string_or_empty<'r, 'a>(
    field: &'static str,
    v: &'r Option<Scalar<'a>>,
) -> Result<&'r str, Skip> {
    match v {
        None | Some(Scalar::Null) => Ok(""),
        _ => string(field, v),
    }
}

fn kind_of(s: &Scalar<'_>) -> &'static str {
    match s {
        Scalar::Str(_) => "a string",
        Scalar::Int(_) => "an integer",
        Scalar::Bool(_) => "a boolean",
        Scalar::Null => "null",
        Scalar::Other(what) => what,
    }
}

/// A decision's fields, checked.
struct Checked<'r> {
    id: Option<i64>,
    origin: &'r str,
    kind: &'r str,
    scope: &'r str,
    value: &'r str,
    duration: &'r str,
    scenario: &'r str,
    simulated: bool,
}

impl<'a> RawDecision<'a> {
    fn check(&self) -> Result<Checked<'_>, Skip> {
        if let Some(what) = self.not_an_object {
            return Err(Skip::Invalid(format!(
                "a decision is {what}, not an object"
            )));
        }
        let id = match &self.id {
            None | Some(Scalar::Null) => None,
            Some(Scalar::Int(id)) => Some(*id),
            Some(other) => {
                return Err(Skip::Invalid(format!(
                    "`id` is {}, not an integer",
                    kind_of(other)
                )));
            }
        };
        let simulated = match &self.simulated {
            None | Some(Scalar::Null) => false,
            Some(Scalar::Bool(b)) => *b,
            Some(other) => {
                return Err(Skip::Invalid(format!(
                    "`simulated` is {}, not a boolean",
                    kind_of(other)
                )));
            }
        };
        Ok(Checked {
            id,
            origin: string_or_empty("origin", &self.origin)?,
            kind: string("type", &self.kind)?,
            scope: string("scope", &self.scope)?,
            value: string("value", &self.value)?,
            duration: string("duration", &self.duration)?,
            scenario: string_or_empty("scenario", &self.scenario)?,
            simulated,
        })
    }

    /// The LAPI's id, if the decision has a well-formed one (to count what is ignored).
    pub fn id(&self) -> Option<i64> {
        match self.id {
            Some(Scalar::Int(id)) => Some(id),
            _ => None,
        }
    }
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
pub fn map(raw: &RawDecision<'_>) -> Result<Ban, Skip> {
    let d = raw.check()?;
    if d.simulated {
        return Err(Skip::Simulated);
    }
    if !d.kind.eq_ignore_ascii_case("ban") {
        return Err(Skip::NotBan(d.kind.to_owned()));
    }
    let target = map_target(d.scope, d.value)?;
    let remaining_ms =
        go_duration::parse_millis(d.duration).map_err(|e| Skip::Invalid(e.to_string()))?;
    let key = match d.id {
        Some(id) => DecisionKey::Id(id),
        None => DecisionKey::Anonymous(d.origin.to_owned(), d.scenario.to_owned()),
    };
    Ok(Ban {
        key,
        target,
        remaining_ms,
        reason: Arc::new(reason(&d)),
        origin: d.origin.to_owned(),
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
        return Err(Skip::Invalid(format!(
            "an Ip decision holds the prefix `{value}`"
        )));
    }
    Ok(target)
}

/// The reason recorded with the block: scenario, origin and decision id.
#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
fn reason(d: &Checked<'_>) -> Reason {
    use std::fmt::Write as _;
    // One allocation: a large pull maps a hundred thousand of these.
    let mut text = String::with_capacity(d.scenario.len() + d.origin.len() + 40);
    let _ = match d.id {
        Some(id) => write!(text, "{} (origin {}, decision {id})", d.scenario, d.origin),
        None => write!(text, "{} (origin {}, no id)", d.scenario, d.origin),
    };
    truncate(&mut text, 1024);
    Reason {
        text: Some(text),
        rule_id: (!d.scenario.is_empty()).then(|| clip(d.scenario, 128)),
        alert_id: d.id.map(|id| id.to_string()),
        ..Reason::default()
    }
}

/// The origin a block made by [`reason`] reports its drops under: the decision's origin, and
/// for a blocklist's (`lists`) its name, as `lists:NAME` (as cs-firewall-bouncer does).
pub fn origin_label(reason: &Reason) -> String {
    let origin = reason
        .text
        .as_deref()
        .and_then(|t| t.rsplit_once(" (origin "))
        .and_then(|(_, rest)| rest.split([',', ')']).next())
        .filter(|o| !o.is_empty())
        .unwrap_or(super::SOURCE);
    match (origin, reason.rule_id.as_deref()) {
        ("lists", Some(list)) => format!("lists:{list}"),
        _ => origin.to_owned(),
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

/// Cuts `s` to at most `max` bytes, at a character boundary.
fn truncate(s: &mut String, max: usize) {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Maps one decision given as a JSON value, read the way a stream answer is.
    fn map_json(v: serde_json::Value) -> Result<Ban, Skip> {
        let text = json!({ "new": [v] }).to_string();
        let body = StreamBody::parse(text.as_bytes()).expect("a valid envelope");
        map(&body.new[0])
    }

    #[test]
    fn drops_are_labelled_with_the_decisions_origin_and_a_lists_name() {
        let label = |origin: &str, scenario: &str| {
            let mut d = decision("Ip", "192.0.2.1", "1h");
            d["origin"] = json!(origin);
            d["scenario"] = json!(scenario);
            origin_label(&map_json(d).unwrap().reason)
        };
        assert_eq!(label("cscli", "manual ban (really)"), "cscli");
        assert_eq!(label("CAPI", "crowdsecurity/ssh-bf"), "CAPI");
        assert_eq!(label("lists", "firehol_level1"), "lists:firehol_level1");
        assert_eq!(label("enforcer", "enforcer/fail2ban"), "enforcer");
        assert_eq!(origin_label(&Reason::text("no origin here")), "crowdsec");
    }

    fn decision(scope: &str, value: &str, duration: &str) -> serde_json::Value {
        json!({"id": 7, "origin": "cscli", "type": "ban", "scope": scope, "value": value,
               "duration": duration, "scenario": "crowdsecurity/ssh-bf", "until": "2026-01-01T00:00:00Z",
               "uuid": "x", "extra": {"nested": [1, 2, {"a": null}]}})
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
            let ban = map_json(decision(scope, value, "4m"))
                .unwrap_or_else(|e| panic!("{scope} {value}: {e}"));
            assert_eq!(ban.target.to_string(), want, "{scope} {value}");
            assert_eq!(ban.remaining_ms, 240_000);
        }
    }

    #[test]
    fn reason_names_scenario_origin_and_decision() {
        let ban = map_json(decision("Ip", "192.0.2.9", "9m59.381971686s")).unwrap();
        assert_eq!(ban.reason.rule_id.as_deref(), Some("crowdsecurity/ssh-bf"));
        assert_eq!(ban.reason.alert_id.as_deref(), Some("7"));
        assert_eq!(
            ban.reason.summary(),
            "crowdsecurity/ssh-bf (origin cscli, decision 7)"
        );
        assert_eq!(ban.key, DecisionKey::Id(7));
        assert_eq!(ban.remaining_ms, 599_381);
        // Escaped strings are read too (they cannot be borrowed from the body).
        let mut escaped = decision("Ip", "192.0.2.9", "4m");
        escaped["scenario"] = json!("crowdsecurity/\"quoted\"é");
        assert_eq!(
            map_json(escaped).unwrap().reason.rule_id.as_deref(),
            Some("crowdsecurity/\"quoted\"é")
        );
        let mut anonymous = decision("Ip", "192.0.2.9", "4m");
        anonymous.as_object_mut().unwrap().remove("id");
        assert_eq!(
            map_json(anonymous.clone()).unwrap().key,
            DecisionKey::Anonymous("cscli".into(), "crowdsecurity/ssh-bf".into())
        );
        assert_eq!(
            map_json(anonymous).unwrap().reason.summary(),
            "crowdsecurity/ssh-bf (origin cscli, no id)"
        );
        // A long scenario is cut to the reason's limit, at a character boundary.
        let mut long = decision("Ip", "192.0.2.9", "4m");
        long["scenario"] = json!(format!("a{}", "é".repeat(600)));
        let ban = map_json(long).unwrap();
        let text = ban.reason.text.as_deref().unwrap();
        assert_eq!(text.len(), 1023, "1 + 511 two-byte characters");
        assert!(ban.reason.validate().is_ok());
    }

    #[test]
    fn what_is_skipped_and_why() {
        let mut captcha = decision("Ip", "192.0.2.9", "4m");
        captcha["type"] = json!("captcha");
        assert_eq!(map_json(captcha), Err(Skip::NotBan("captcha".into())));
        assert_eq!(
            map_json(decision("Country", "FR", "4m")),
            Err(Skip::Scope("Country".into()))
        );
        let mut sim = decision("Ip", "192.0.2.9", "4m");
        sim["simulated"] = json!(true);
        assert_eq!(map_json(sim), Err(Skip::Simulated));
        for (bad, says) in [
            (decision("Ip", "192.0.2.0/24", "4m"), "prefix"),
            (decision("Ip", "evil.example", "4m"), ""),
            (decision("Range", "192.0.2.0/33", "4m"), ""),
            (decision("Ip", "192.0.2.9", "4 days"), ""),
            (
                json!({"type": "ban", "scope": "Ip", "value": 5, "duration": "4m"}),
                "`value` is an integer, not a string",
            ),
            (
                json!({"type": "ban", "scope": "Ip", "value": "192.0.2.9"}),
                "missing field `duration`",
            ),
            (
                json!({"id": "7", "type": "ban", "scope": "Ip", "value": "192.0.2.9", "duration": "4m"}),
                "`id` is a string",
            ),
            (
                json!({"id": 1.5, "type": "ban", "scope": "Ip", "value": "192.0.2.9", "duration": "4m"}),
                "a number with a fraction",
            ),
            (
                json!({"type": ["ban"], "scope": "Ip", "value": "192.0.2.9", "duration": "4m"}),
                "`type` is a list",
            ),
            (
                json!({"simulated": "no", "type": "ban", "scope": "Ip", "value": "192.0.2.9", "duration": "4m"}),
                "`simulated` is a string",
            ),
            (json!("192.0.2.9"), "a decision is a string, not an object"),
            (json!(null), "a decision is null"),
            (json!([1, 2]), "a decision is a list"),
        ] {
            let got = map_json(bad.clone());
            assert!(
                got.as_ref().is_err_and(Skip::is_invalid),
                "{bad} should be invalid: {got:?}"
            );
            assert!(
                got.unwrap_err().to_string().contains(says),
                "{bad}: should say {says}"
            );
        }
    }

    #[test]
    fn one_odd_decision_does_not_spoil_the_answer_but_a_bad_envelope_does() {
        let text = r#"{"new":[{"id":1,"type":"ban","scope":"Ip","value":"192.0.2.1","duration":"1h","origin":"cscli"},
            "junk", 5, null, {"value": {"deep": [1, {"x": "y"}]}}, [], {"id":2,"type":"ban","scope":"Ip","value":"192.0.2.2","duration":"1h"}],
            "deleted":[{"id":3,"type":"ban","scope":"Ip","value":"192.0.2.3","duration":"-1s"}], "other": {"ignored": true}}"#;
        let body = StreamBody::parse(text.as_bytes()).unwrap();
        let ok: Vec<String> = body
            .new
            .iter()
            .filter_map(|d| map(d).ok())
            .map(|b| b.target.to_string())
            .collect();
        assert_eq!(ok, ["192.0.2.1", "192.0.2.2"]);
        assert_eq!(body.new.len(), 7);
        assert_eq!(map(&body.deleted[0]).unwrap().remaining_ms, -1000);
        assert_eq!(body.new[6].id(), Some(2));
        for bad in [
            r#"{"new": [garbage"#,
            "[1, 2]",
            r#"{"new": "203.0.113.9"}"#,
            r#"{"deleted": 5}"#,
            r#"{"new":{"a":1}}"#,
            "",
        ] {
            assert!(
                StreamBody::parse(bad.as_bytes()).is_err(),
                "{bad} is not a stream answer"
            );
        }
    }

    #[test]
    fn null_lists_are_empty() {
        let body = StreamBody::parse(br#"{"new":null,"deleted":null}"#).unwrap();
        assert!(body.new.is_empty() && body.deleted.is_empty());
        let body = StreamBody::parse(b"{}").unwrap();
        assert!(body.new.is_empty());
    }
}
