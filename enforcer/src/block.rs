//! The block model: who blocked what, why, and until when.
//!
//! Several sources can block one target. Each source's block is kept on its own; the target
//! stays blocked until the last of them ends, and the kernel entry carries the latest expiry.

use std::{fmt, str::FromStr, sync::Arc};

use serde::{Deserialize, Serialize};

use crate::{scope::ScopeSet, target::Target, time::WallMs};

/// The name of a trigger source (`cli`, `wazuh`, `fail2ban`, ...): 1-32 of `[a-z0-9_-]`.
///
/// Shared (`Arc<str>`): a million blocks from one source hold one copy of its name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source(Arc<str>);

impl Serialize for Source {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Why a source name is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid source `{0}`: use 1 to 32 characters of a-z, 0-9, '-' and '_'")]
pub struct SourceError(pub String);

impl Source {
    /// The source of blocks made by hand with the CLI.
    pub fn cli() -> Self {
        Self("cli".into())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Source {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 32
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(s.into()))
        } else {
            Err(SourceError(s.to_owned()))
        }
    }
}

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Enforce (drop) or shadow (count and pass).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Matching packets are dropped.
    #[default]
    Enforce,
    /// Matching packets are counted and passed (alert-only rollout).
    Shadow,
}

impl Mode {
    /// The data path's encoding.
    pub const fn to_kernel(self) -> u32 {
        match self {
            Self::Enforce => enforcer_common::MODE_ENFORCE,
            Self::Shadow => enforcer_common::MODE_SHADOW,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Enforce => "enforce",
            Self::Shadow => "shadow",
        })
    }
}

/// Why a block exists: free text plus the structured fields alert sources provide.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reason {
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Detection rule id (Wazuh `rule.id`, a CrowdSec scenario, a fail2ban jail).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    /// Detection rule description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_description: Option<String>,
    /// Rule level / severity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_level: Option<u32>,
    /// The alert's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_id: Option<String>,
    /// Agent id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Agent name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_name: Option<String>,
}

impl Reason {
    /// A reason with only free text.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: Some(text.into()),
            ..Self::default()
        }
    }

    /// One line for tables: the text, else the rule.
    pub fn summary(&self) -> String {
        if let Some(t) = &self.text {
            return t.clone();
        }
        match (&self.rule_id, &self.rule_description) {
            (Some(id), Some(d)) => format!("rule {id}: {d}"),
            (Some(id), None) => format!("rule {id}"),
            (None, Some(d)) => d.clone(),
            (None, None) => String::new(),
        }
    }

    /// Checks sizes, so that a hostile alert cannot bloat the store (the limits are
    /// documented in docs/protocol.md).
    pub fn validate(&self) -> Result<(), TextTooLong> {
        let fields = [
            ("reason", &self.text, 1024),
            ("rule id", &self.rule_id, 128),
            ("rule description", &self.rule_description, 512),
            ("alert id", &self.alert_id, 128),
            ("agent id", &self.agent_id, 128),
            ("agent name", &self.agent_name, 256),
        ];
        for (field, value, limit) in fields {
            TextTooLong::check(field, value.as_deref(), limit)?;
        }
        Ok(())
    }
}

/// A free-text field longer than its limit: refused before anything is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} is {len} bytes; the limit is {limit} (shorten it)")]
pub struct TextTooLong {
    /// The field (`reason`, `comment`, ...).
    pub field: &'static str,
    /// Its length in bytes.
    pub len: usize,
    /// The most it may have.
    pub limit: usize,
}

impl TextTooLong {
    /// Checks one field against its limit.
    pub fn check(field: &'static str, value: Option<&str>, limit: usize) -> Result<(), Self> {
        match value {
            Some(v) if v.len() > limit => Err(Self {
                field,
                len: v.len(),
                limit,
            }),
            _ => Ok(()),
        }
    }
}

/// One source's block of one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceBlock {
    /// Who asked.
    pub source: Source,
    /// Why (shared: a batch of a million blocks holds one reason).
    #[serde(default)]
    pub reason: Arc<Reason>,
    /// When it was first made (Unix ms).
    pub created_ms: WallMs,
    /// When it was last extended or changed (Unix ms).
    pub updated_ms: WallMs,
    /// When it ends (Unix ms, wall clock); `None` = permanent.
    pub expires_ms: Option<WallMs>,
    /// Enforce or shadow.
    pub mode: Mode,
    /// What of the target's traffic it covers (absent: the whole address, as every block
    /// stored before scopes existed).
    #[serde(default, skip_serializing_if = "ScopeSet::is_whole")]
    pub scope: ScopeSet,
}

impl SourceBlock {
    /// Whether it has ended at `now`.
    pub fn is_expired(&self, now: WallMs) -> bool {
        self.expires_ms.is_some_and(|e| e <= now)
    }
}

/// Every source's block of one target.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetBlocks {
    /// One entry per source.
    pub by_source: SourceMap,
}

/// One block per source, sorted by source.
///
/// A small vector, not a `BTreeMap`: a target almost always has one or two sources, and a
/// `BTreeMap` allocates a whole node (eleven slots) for one entry: with a million targets that
/// is gigabytes instead of a few hundred megabytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceMap(Vec<SourceBlock>);

impl SourceMap {
    fn find(&self, s: &Source) -> Result<usize, usize> {
        self.0.binary_search_by(|b| b.source.cmp(s))
    }

    /// The block of `s`.
    pub fn get(&self, s: &Source) -> Option<&SourceBlock> {
        self.find(s).ok().map(|i| &self.0[i])
    }

    /// The block of `s`, for changing.
    pub fn get_mut(&mut self, s: &Source) -> Option<&mut SourceBlock> {
        self.find(s).ok().map(|i| &mut self.0[i])
    }

    /// Inserts or replaces the block of `s`.
    pub fn insert(&mut self, s: Source, block: SourceBlock) -> Option<SourceBlock> {
        debug_assert_eq!(s, block.source);
        match self.find(&s) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i], block)),
            Err(i) => {
                self.0.insert(i, block);
                self.0.shrink_to_fit();
                None
            }
        }
    }

    /// Removes the block of `s`.
    pub fn remove(&mut self, s: &Source) -> Option<SourceBlock> {
        self.find(s).ok().map(|i| self.0.remove(i))
    }

    /// Whether `s` has a block.
    pub fn contains_key(&self, s: &Source) -> bool {
        self.find(s).is_ok()
    }

    /// The sources.
    pub fn keys(&self) -> impl Iterator<Item = &Source> {
        self.0.iter().map(|b| &b.source)
    }

    /// The blocks.
    pub fn values(&self) -> impl Iterator<Item = &SourceBlock> {
        self.0.iter()
    }

    /// How many sources.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no source blocks.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(Source, SourceBlock)> for SourceMap {
    fn from_iter<I: IntoIterator<Item = (Source, SourceBlock)>>(iter: I) -> Self {
        let mut m = Self::default();
        for (s, b) in iter {
            m.insert(s, b);
        }
        m
    }
}

/// What the kernel entry for a target should say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelEntry {
    /// Wall-clock expiry (Unix ms); `None` = never.
    pub expires_ms: Option<WallMs>,
    /// Mode.
    pub mode: Mode,
    /// What it covers (see [`TargetBlocks::kernel_scope`]); `None`: the whole address.
    pub scopes: Option<enforcer_common::scope::Scopes>,
}

impl TargetBlocks {
    /// The kernel entry these blocks call for.
    ///
    /// If any source enforces, the entry enforces until the latest enforcing block ends; the
    /// reaper then rewrites it for what remains (say a longer shadow block). So even with no
    /// daemon running, an enforced block never outlives every enforcing source.
    pub fn kernel_entry(&self) -> Option<KernelEntry> {
        let latest = |mode: Mode| {
            let mut any = false;
            let mut latest: Option<WallMs> = Some(WallMs::EPOCH);
            for b in self.by_source.values().filter(|b| b.mode == mode) {
                any = true;
                latest = match (latest, b.expires_ms) {
                    (None, _) | (_, None) => None,
                    (Some(a), Some(e)) => Some(a.max(e)),
                };
            }
            any.then(|| KernelEntry {
                expires_ms: latest,
                mode,
                scopes: self.scope_of(mode).kernel_scopes(),
            })
        };
        latest(Mode::Enforce).or_else(|| latest(Mode::Shadow))
    }

    /// What the kernel entry covers: the union of the scopes of the blocks that make it (the
    /// enforcing ones if any enforces, else the shadow ones); whole when any of them is.
    pub fn kernel_scope(&self) -> ScopeSet {
        self.scope_of(self.kernel_entry().map_or(Mode::Enforce, |e| e.mode))
    }

    /// The union of the scopes of the blocks in `mode`.
    fn scope_of(&self, mode: Mode) -> ScopeSet {
        let sets = self
            .by_source
            .values()
            .filter(|b| b.mode == mode)
            .map(|b| &b.scope);
        // Each set was merged within the limits; a union past them covers the whole address
        // only in the data path's eyes, so the ledger refuses it before it is made.
        ScopeSet::union_all(sets).unwrap_or(ScopeSet::WHOLE)
    }

    /// The sources, comma-separated.
    pub fn sources(&self) -> String {
        self.by_source
            .keys()
            .map(Source::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A target and its blocks, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The target.
    pub target: Target,
    /// The block of one source.
    pub block: SourceBlock,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::testing::wall;

    fn sb(source: &str, expires: Option<u64>, mode: Mode) -> SourceBlock {
        SourceBlock {
            source: source.parse().unwrap(),
            reason: Arc::default(),
            created_ms: wall(0),
            updated_ms: wall(0),
            expires_ms: expires.map(wall),
            mode,
            scope: Default::default(),
        }
    }

    fn blocks(items: &[SourceBlock]) -> TargetBlocks {
        TargetBlocks {
            by_source: items
                .iter()
                .map(|b| (b.source.clone(), b.clone()))
                .collect(),
        }
    }

    #[test]
    fn the_latest_enforcing_expiry_wins() {
        let t = blocks(&[
            sb("cli", Some(100), Mode::Enforce),
            sb("wazuh", Some(300), Mode::Enforce),
        ]);
        assert_eq!(
            t.kernel_entry(),
            Some(KernelEntry {
                expires_ms: Some(wall(300)),
                mode: Mode::Enforce,
                scopes: None,
            })
        );
        let t = blocks(&[
            sb("cli", None, Mode::Enforce),
            sb("wazuh", Some(300), Mode::Enforce),
        ]);
        assert_eq!(t.kernel_entry().unwrap().expires_ms, None);
    }

    #[test]
    fn enforce_outranks_a_longer_shadow() {
        let t = blocks(&[
            sb("cli", Some(100), Mode::Enforce),
            sb("wazuh", Some(300), Mode::Shadow),
        ]);
        assert_eq!(
            t.kernel_entry(),
            Some(KernelEntry {
                expires_ms: Some(wall(100)),
                mode: Mode::Enforce,
                scopes: None,
            })
        );
        let t = blocks(&[sb("wazuh", Some(300), Mode::Shadow)]);
        assert_eq!(t.kernel_entry().unwrap().mode, Mode::Shadow);
        assert_eq!(blocks(&[]).kernel_entry(), None);
    }

    #[test]
    fn source_names_are_validated() {
        assert!("wazuh".parse::<Source>().is_ok());
        assert!("fail2ban-sshd".parse::<Source>().is_ok());
        assert!("".parse::<Source>().is_err());
        assert!("Wazuh".parse::<Source>().is_err());
        assert!("a b".parse::<Source>().is_err());
        assert!("x".repeat(33).parse::<Source>().is_err());
    }
}
