//! Which interfaces the daemon protects, as they come and go.
//!
//! The configuration names interfaces exactly (`eth0`) or by pattern (`bond0.*`). The daemon
//! follows the kernel's links (events, and a dump twice a second) and keeps one [`Tracked`] state
//! per interface name. This module is the functional core: it takes a dump of the links (names,
//! indexes, XDP programs) and says what to attach and which states changed; the engine does the
//! attaching, the logging and the audit.
//!
//! Pattern semantics (documented in docs/operations.md, "Interfaces that come and go"):
//! - `*` matches any run of characters, the empty one included, dots included (`eth*` matches
//!   `eth0`, `eth0.100` and `eth`); `?` matches exactly one character. No other character is
//!   special; there are no classes or escapes. A pattern must match the whole name.
//! - A pattern is matched against an interface's name *now*: a link renamed to a matching name
//!   is protected, one renamed away is released (protection belongs to names, not indexes).
//! - The loopback (`IFF_LOOPBACK`) never matches a pattern; it is protected only if named.
//! - Names and patterns combine as a union; an interface both named and matched is tracked once,
//!   as named. A named interface is always listed (`waiting` or `gone` while absent); a pattern
//!   lists the interfaces it matches now, and itself as `waiting` while it matches none.

use std::{collections::BTreeMap, fmt, str::FromStr};

use crate::{datapath::Programs, netlink::LinkState};

/// The longest interface name Linux accepts (`IFNAMSIZ` − 1).
pub const MAX_NAME: usize = 15;

/// One entry of `interfaces = [...]`: an exact name, or a pattern (it contains `*` or `?`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum InterfaceSpec {
    /// Exactly this interface.
    Name(String),
    /// Every interface (but the loopback) whose name matches.
    Pattern(String),
}

/// Why an interface name or pattern is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// Empty, `.`/`..`, or a character Linux refuses in names.
    #[error(
        "`{0}` is not a valid interface name or pattern: names are 1 to 15 characters, without `/`, `:` or spaces, and not `.` or `..` (see `ip link`)"
    )]
    Invalid(String),
    /// Longer than any interface name can be.
    #[error("`{0}` is longer than 15 characters: no interface has such a name (see `ip link`)")]
    TooLong(String),
}

impl FromStr for InterfaceSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        if s.is_empty()
            || s == "."
            || s == ".."
            || s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
        {
            return Err(SpecError::Invalid(s.to_owned()));
        }
        if s.contains(['*', '?']) {
            // `*` may match nothing: what else the pattern needs must fit in a name.
            if s.chars().filter(|c| *c != '*').count() > MAX_NAME {
                return Err(SpecError::TooLong(s.to_owned()));
            }
            return Ok(Self::Pattern(s.to_owned()));
        }
        if s.len() > MAX_NAME {
            return Err(SpecError::TooLong(s.to_owned()));
        }
        Ok(Self::Name(s.to_owned()))
    }
}

impl TryFrom<String> for InterfaceSpec {
    type Error = SpecError;

    fn try_from(s: String) -> Result<Self, SpecError> {
        s.parse()
    }
}

impl From<InterfaceSpec> for String {
    fn from(s: InterfaceSpec) -> Self {
        s.as_str().to_owned()
    }
}

impl fmt::Display for InterfaceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl InterfaceSpec {
    /// As written.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Name(s) | Self::Pattern(s) => s,
        }
    }

    /// Whether this entry selects the interface called `name`.
    pub fn matches(&self, name: &str, loopback: bool) -> bool {
        match self {
            Self::Name(n) => n == name,
            Self::Pattern(p) => !loopback && glob(p, name),
        }
    }
}

/// Whole-name glob match: `*` any run (empty included), `?` one character.
fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matching with one backtrack point (the last `*`): linear in practice.
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Where a tracked interface comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Named in the configuration.
    Named,
    /// Matched by this pattern.
    Pattern(String),
}

/// What the daemon knows of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tracked {
    /// Our program runs on it (as of the last dump or attach).
    Protected {
        /// Its index when attached.
        ifindex: u32,
    },
    /// Named, not seen since the daemon started.
    Waiting,
    /// Named, was there, is not now.
    Gone,
    /// Present, but the last attach failed.
    Failed {
        /// Its index.
        ifindex: u32,
        /// The attach error.
        error: String,
    },
}

impl Tracked {
    /// The state's name in status, logs and metrics.
    pub const fn label(&self) -> &'static str {
        match self {
            Self::Protected { .. } => "protected",
            Self::Waiting => "waiting",
            Self::Gone => "gone",
            Self::Failed { .. } => "unprotected",
        }
    }
}

/// Why an attach is needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// First seen (at start, created, or renamed to a selected name).
    Appeared,
    /// Gone earlier, back now (a new index).
    Reappeared,
    /// Still there, but our program no longer runs on it.
    DetachedBehindOurBack,
    /// The last attempt failed; trying again.
    Retry,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Appeared => "the interface appeared",
            Self::Reappeared => "the interface came back",
            Self::DetachedBehindOurBack => "the program was detached behind the daemon's back",
            Self::Retry => "retrying a failed attach",
        })
    }
}

/// One thing to do after a dump.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Attach (or re-attach) to this interface; report the outcome with [`Interfaces::attached`]
    /// or [`Interfaces::failed`].
    Attach {
        /// Name.
        iface: String,
        /// Why.
        why: Why,
    },
    /// The interface is gone (deleted, renamed away, or no longer matching): release its pin.
    Release {
        /// Name.
        iface: String,
        /// What it was, for the log.
        was: &'static str,
        /// Still listed (`gone`), or forgotten (pattern-matched).
        listed: bool,
    },
    /// Our program runs there already (attached at start, or by an earlier run).
    Confirmed {
        /// Name.
        iface: String,
        /// Its index.
        ifindex: u32,
    },
}

/// The configured selection and what the daemon knows of each selected interface.
#[derive(Clone, Debug, Default)]
pub struct Interfaces {
    specs: Vec<InterfaceSpec>,
    tracked: BTreeMap<String, (Origin, Tracked)>,
    /// Why the kernel refused native mode at an interface's last attach (`auto` fell back).
    native_refused: BTreeMap<String, String>,
}

impl Interfaces {
    /// Every named interface waiting, nothing matched yet.
    pub fn new(specs: Vec<InterfaceSpec>) -> Self {
        let tracked = specs
            .iter()
            .filter_map(|s| match s {
                InterfaceSpec::Name(n) => Some((n.clone(), (Origin::Named, Tracked::Waiting))),
                InterfaceSpec::Pattern(_) => None,
            })
            .collect();
        Self {
            specs,
            tracked,
            native_refused: BTreeMap::new(),
        }
    }

    /// The configuration.
    pub fn specs(&self) -> &[InterfaceSpec] {
        &self.specs
    }

    /// Which entry selects a link: a name before any pattern.
    fn origin_of(&self, link: &LinkState) -> Option<Origin> {
        if self
            .specs
            .iter()
            .any(|s| matches!(s, InterfaceSpec::Name(n) if *n == link.name))
        {
            return Some(Origin::Named);
        }
        self.specs
            .iter()
            .find(|s| s.matches(&link.name, link.loopback))
            .map(|s| Origin::Pattern(s.as_str().to_owned()))
    }

    /// Compares a dump of the links with what is tracked: what to attach, release or confirm.
    /// `ours` are the programs this daemon attaches: a link is ours when the one for its type
    /// runs there.
    pub fn plan(&mut self, links: &[LinkState], ours: Programs) -> Vec<Step> {
        let mut steps = Vec::new();
        let selected: BTreeMap<&str, (Origin, &LinkState)> = links
            .iter()
            .filter_map(|l| self.origin_of(l).map(|o| (l.name.as_str(), (o, l))))
            .collect();
        // Tracked interfaces no longer present (or no longer selected).
        let absent: Vec<String> = self
            .tracked
            .keys()
            .filter(|n| !selected.contains_key(n.as_str()))
            .cloned()
            .collect();
        for name in absent {
            let (origin, state) = self.tracked.remove(&name).expect("tracked");
            let was = state.label();
            match origin {
                Origin::Named if matches!(state, Tracked::Waiting | Tracked::Gone) => {
                    self.tracked.insert(name, (origin, state));
                }
                Origin::Named => {
                    self.tracked.insert(name.clone(), (origin, Tracked::Gone));
                    steps.push(Step::Release {
                        iface: name,
                        was,
                        listed: true,
                    });
                }
                Origin::Pattern(_) => steps.push(Step::Release {
                    iface: name,
                    was,
                    listed: false,
                }),
            }
        }
        for (name, (origin, link)) in selected {
            let state = self.tracked.get(name).map(|(_, s)| s.clone());
            if ours.protects(link.link_type, link.xdp.prog_id) {
                if state
                    != Some(Tracked::Protected {
                        ifindex: link.index,
                    })
                {
                    self.tracked.insert(
                        name.to_owned(),
                        (
                            origin,
                            Tracked::Protected {
                                ifindex: link.index,
                            },
                        ),
                    );
                    steps.push(Step::Confirmed {
                        iface: name.to_owned(),
                        ifindex: link.index,
                    });
                }
                continue;
            }
            let why = match state {
                None | Some(Tracked::Waiting) => Why::Appeared,
                Some(Tracked::Gone) => Why::Reappeared,
                Some(Tracked::Protected { ifindex }) if ifindex == link.index => {
                    Why::DetachedBehindOurBack
                }
                Some(Tracked::Protected { .. }) => Why::Reappeared,
                Some(Tracked::Failed { .. }) => Why::Retry,
            };
            self.tracked
                .entry(name.to_owned())
                .or_insert((origin, Tracked::Waiting));
            steps.push(Step::Attach {
                iface: name.to_owned(),
                why,
            });
        }
        steps
    }

    /// An attach succeeded.
    pub fn attached(&mut self, iface: &str, ifindex: u32) {
        if let Some((_, state)) = self.tracked.get_mut(iface) {
            *state = Tracked::Protected { ifindex };
        }
    }

    /// Records why native mode was refused at `iface`'s attach (`None`: it was not).
    pub fn set_native_refused(&mut self, iface: &str, why: Option<String>) {
        match why {
            Some(why) => self.native_refused.insert(iface.to_owned(), why),
            None => self.native_refused.remove(iface),
        };
    }

    /// Why native mode was refused at `iface`'s last attach, if it was.
    pub fn native_refused(&self, iface: &str) -> Option<&str> {
        self.native_refused.get(iface).map(String::as_str)
    }

    /// An attach failed; returns whether the error is new (worth logging).
    pub fn failed(&mut self, iface: &str, ifindex: u32, error: String) -> bool {
        let Some((_, state)) = self.tracked.get_mut(iface) else {
            return false;
        };
        let new = !matches!(state, Tracked::Failed { error: e, .. } if *e == error);
        *state = Tracked::Failed { ifindex, error };
        new
    }

    /// Every tracked interface, by name.
    pub fn tracked(&self) -> impl Iterator<Item = (&str, &Origin, &Tracked)> {
        self.tracked.iter().map(|(n, (o, s))| (n.as_str(), o, s))
    }

    /// The patterns that select no tracked interface now.
    pub fn idle_patterns(&self) -> impl Iterator<Item = &str> {
        self.specs.iter().filter_map(|s| match s {
            InterfaceSpec::Pattern(p)
                if !self
                    .tracked
                    .values()
                    .any(|(o, _)| *o == Origin::Pattern(p.clone())) =>
            {
                Some(p.as_str())
            }
            _ => None,
        })
    }

    /// The interfaces our program runs on: (name, ifindex).
    pub fn protected(&self) -> impl Iterator<Item = (&str, u32)> {
        self.tracked.iter().filter_map(|(n, (_, s))| match s {
            Tracked::Protected { ifindex } => Some((n.as_str(), *ifindex)),
            _ => None,
        })
    }

    /// The named interfaces that do not exist in `links`.
    pub fn missing_names<'a>(&'a self, links: &'a [LinkState]) -> impl Iterator<Item = &'a str> {
        self.specs.iter().filter_map(move |s| match s {
            InterfaceSpec::Name(n) if !links.iter().any(|l| l.name == *n) => Some(n.as_str()),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests;
