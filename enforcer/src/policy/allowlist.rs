//! The allowlist: prefixes that are never blocked. It always wins, in policy and in the kernel.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::target::Target;

/// Where an allowlist entry comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AllowOrigin {
    /// The configuration file.
    Config,
    /// `enforcer allow add`.
    Cli {
        /// Operator's note.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        comment: Option<String>,
    },
    /// Found on the host: loopback, its own addresses, its default gateways.
    Builtin {
        /// What it is.
        what: String,
    },
}

impl AllowOrigin {
    /// The data path's encoding.
    pub fn to_kernel(&self) -> u32 {
        match self {
            Self::Builtin { .. } => enforcer_common::ALLOW_ORIGIN_BUILTIN,
            _ => enforcer_common::ALLOW_ORIGIN_CONFIG,
        }
    }
}

impl fmt::Display for AllowOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Config => f.write_str("config"),
            Self::Cli { comment: None } => f.write_str("cli"),
            Self::Cli { comment: Some(c) } => write!(f, "cli: {c}"),
            Self::Builtin { what } => write!(f, "builtin: {what}"),
        }
    }
}

/// The allowlist, with every entry's origins (one prefix can have several).
#[derive(Clone, Debug, Default)]
pub struct Allowlist {
    entries: imbl::OrdMap<Target, Vec<AllowOrigin>>,
}

impl Allowlist {
    /// Adds an origin for a prefix. Returns whether the prefix is new.
    pub fn insert(&mut self, target: Target, origin: AllowOrigin) -> bool {
        let origins = self.entries.entry(target).or_default();
        let new = origins.is_empty();
        if !origins.contains(&origin) {
            origins.push(origin);
        }
        new
    }

    /// Removes the origins `keep` rejects. Returns whether the prefix is gone.
    pub fn remove_where(&mut self, target: &Target, drop: impl Fn(&AllowOrigin) -> bool) -> bool {
        let Some(origins) = self.entries.get_mut(target) else {
            return false;
        };
        origins.retain(|o| !drop(o));
        if origins.is_empty() {
            self.entries.remove(target);
            true
        } else {
            false
        }
    }

    /// The origins of one prefix.
    pub fn origins(&self, target: &Target) -> Option<&[AllowOrigin]> {
        self.entries.get(target).map(Vec::as_slice)
    }

    /// The most specific entry that covers all of `target`.
    pub fn covering(&self, target: &Target) -> Option<(Target, &AllowOrigin)> {
        self.entries
            .iter()
            .filter(|(p, _)| p.net().contains(&target.net()))
            .max_by_key(|(p, _)| p.prefix_len())
            .map(|(p, o)| (*p, &o[0]))
    }

    /// Entries strictly inside `target`.
    pub fn inside(&self, target: &Target) -> Vec<(Target, &AllowOrigin)> {
        self.entries
            .iter()
            .filter(|(p, _)| target.net().contains(&p.net()) && **p != *target)
            .map(|(p, o)| (*p, &o[0]))
            .collect()
    }

    /// Every entry.
    pub fn iter(&self) -> impl Iterator<Item = (&Target, &[AllowOrigin])> {
        self.entries.iter().map(|(t, o)| (t, o.as_slice()))
    }

    /// How many prefixes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covering_and_inside() {
        let mut a = Allowlist::default();
        a.insert("192.0.2.0/24".parse().unwrap(), AllowOrigin::Config);
        a.insert(
            "192.0.2.7".parse().unwrap(),
            AllowOrigin::Builtin {
                what: "host".into(),
            },
        );
        let (p, o) = a.covering(&"192.0.2.7".parse().unwrap()).unwrap();
        assert_eq!(p.to_string(), "192.0.2.7");
        assert_eq!(o.to_string(), "builtin: host");
        assert!(a.covering(&"192.0.0.0/16".parse().unwrap()).is_none());
        assert_eq!(a.inside(&"192.0.0.0/16".parse().unwrap()).len(), 2);
        assert!(a.remove_where(&"192.0.2.7".parse().unwrap(), |o| matches!(
            o,
            AllowOrigin::Builtin { .. }
        )));
    }
}
