//! Who may ask the daemon what: the caller behind each request, the `[[access]]` grants of the
//! configuration, and the one check every request passes before the engine acts on it.
//!
//! The control socket reads each peer's uid (SO_PEERCRED) and looks up its user name and login
//! groups (root's name, which grants nothing, is reused for [`ROOT_NAME_FRESH`]); the engine then checks every request against the caller's grants
//! ([`AccessPolicy::check`]), whatever path it came by:
//! - **root** (uid 0) may do everything, and so may **the daemon itself** (the CrowdSec bouncer,
//!   the spool replay, the host watcher);
//! - a caller matching `[[access]]` entries (by `user`, or by one of its groups) may use the
//!   union of their `operations`, acting as the union of their `sources`;
//! - a member of `socket_group` matching no entry may only read (list, show, stats, status,
//!   allow_list, pending_list): the socket group used to give full access, which let any member
//!   claim any source, force, approve its own requests and allowlist everything;
//! - anyone else may not connect.
//!
//! ```toml
//! [[access]]
//! group = "wazuh"                 # or user = "name"
//! sources = ["wazuh"]             # sources this caller may block/unblock as ("*": any)
//! operations = ["block", "unblock", "list", "show", "stats", "status"]
//! ```
//!
//! Spooled requests are applied as the daemon: only root can write the spool directory (0700).

use std::{
    collections::BTreeSet,
    ffi::CString,
    fmt,
    str::FromStr,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use nix::unistd::{Gid, Group, Uid, User, getgrouplist};
use serde::{Deserialize, Serialize};

use crate::{
    block::Source,
    protocol::{CallerId, Request},
};

/// What a request does, as grants name it: one per request kind, plus the flags that widen a
/// block (`force`, `permanent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    /// `block`, `block_batch` (and `import`): block as a granted source.
    Block,
    /// `unblock`: remove a granted source's block (`--all` needs every source).
    Unblock,
    /// `list`.
    List,
    /// `show`.
    Show,
    /// `stats`.
    Stats,
    /// `status`.
    Status,
    /// `allow list`.
    AllowList,
    /// `allow add`.
    AllowAdd,
    /// `allow remove`.
    AllowRemove,
    /// `promote` (of a granted source; without `--source`, of every source).
    Promote,
    /// `breaker reset` (of a granted source; without `--source`, of every source).
    BreakerReset,
    /// `pending`.
    PendingList,
    /// `approve` (never of the caller's own request, unless root).
    Approve,
    /// `reject`.
    Reject,
    /// `sync_source`: replace a source's blocks with a feed's (the CrowdSec bouncer's request).
    SyncSource,
    /// The `force` flag of `block` and `allow add` (past the scope guard and allowlist rules).
    Force,
    /// The `permanent` flag of `block`.
    Permanent,
}

impl Operation {
    /// Every operation, in the order the documentation lists them.
    pub const ALL: [Self; 17] = [
        Self::Block,
        Self::Unblock,
        Self::List,
        Self::Show,
        Self::Stats,
        Self::Status,
        Self::AllowList,
        Self::AllowAdd,
        Self::AllowRemove,
        Self::Promote,
        Self::BreakerReset,
        Self::PendingList,
        Self::Approve,
        Self::Reject,
        Self::SyncSource,
        Self::Force,
        Self::Permanent,
    ];

    /// What a socket-group member with no `[[access]]` entry may do.
    pub const READ_ONLY: [Self; 6] = [
        Self::List,
        Self::Show,
        Self::Stats,
        Self::Status,
        Self::AllowList,
        Self::PendingList,
    ];

    /// The name grants use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::Unblock => "unblock",
            Self::List => "list",
            Self::Show => "show",
            Self::Stats => "stats",
            Self::Status => "status",
            Self::AllowList => "allow_list",
            Self::AllowAdd => "allow_add",
            Self::AllowRemove => "allow_remove",
            Self::Promote => "promote",
            Self::BreakerReset => "breaker_reset",
            Self::PendingList => "pending_list",
            Self::Approve => "approve",
            Self::Reject => "reject",
            Self::SyncSource => "sync_source",
            Self::Force => "force",
            Self::Permanent => "permanent",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Operation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|o| o.as_str()).collect();
                format!(
                    "unknown operation `{s}` (known: {}, or \"*\" for all)",
                    names.join(", ")
                )
            })
    }
}

/// One item of a grant list: a name, or `"*"` for all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant<T> {
    /// `"*"`.
    Any,
    /// One name.
    Only(T),
}

impl<T: PartialEq> Grant<T> {
    fn covers(&self, x: &T) -> bool {
        match self {
            Self::Any => true,
            Self::Only(y) => y == x,
        }
    }
}

impl<'de, T> Deserialize<'de> for Grant<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "*" {
            return Ok(Self::Any);
        }
        s.parse().map(Self::Only).map_err(serde::de::Error::custom)
    }
}

/// One `[[access]]` entry: who (a user or a group) may do what, as which sources.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessEntry {
    /// A user name.
    #[serde(default)]
    pub user: Option<String>,
    /// A group name (the caller's primary or supplementary group).
    #[serde(default)]
    pub group: Option<String>,
    /// Sources the caller may act as (`"*"`: any).
    #[serde(default)]
    pub sources: Vec<Grant<Source>>,
    /// Operations the caller may use (`"*"`: all).
    #[serde(default)]
    pub operations: Vec<Grant<Operation>>,
}

impl AccessEntry {
    /// Exactly one of `user` and `group`.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.user, &self.group) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err("an [[access]] entry names exactly one of `user` or `group`".into()),
        }
    }

    fn matches(&self, caller: &Caller) -> bool {
        self.user
            .as_ref()
            .is_some_and(|u| caller.id.user.as_ref() == Some(u))
            || self
                .group
                .as_ref()
                .is_some_and(|g| caller.groups.contains(g))
    }
}

/// A group name this host does not know, or could not look up.
#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// No such group.
    #[error("no group named `{0}` (create it with `groupadd {0}`, or unset socket_group)")]
    Unknown(String),
    /// The group database failed.
    #[error("looking up group `{name}`: {source}")]
    Lookup { name: String, source: nix::Error },
}

/// Resolves a group name to its id (the socket's group, an installer's file group).
pub fn group_id(name: &str) -> Result<u32, GroupError> {
    match Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(GroupError::Unknown(name.to_owned())),
        Err(source) => Err(GroupError::Lookup {
            name: name.to_owned(),
            source,
        }),
    }
}

/// How long root's name from a lookup is used without another ([`Caller::root_if_named`]).
pub const ROOT_NAME_FRESH: Duration = Duration::from_secs(60);

/// Root's name as the last lookup found it, and when.
static ROOT_NAME: Mutex<Option<(Instant, Option<String>)>> = Mutex::new(None);

/// Who sent a request: a socket peer, or the daemon itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Caller {
    /// Its uid and user name.
    #[serde(flatten)]
    pub id: CallerId,
    /// Its login groups' names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Its login groups' ids.
    #[serde(skip)]
    pub gids: Vec<u32>,
    /// For the daemon itself: which part of it (`crowdsec`, `spool`, `host watcher`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal: Option<&'static str>,
}

impl Caller {
    /// The daemon itself.
    pub fn internal(what: &'static str) -> Self {
        Self {
            id: CallerId { uid: 0, user: None },
            groups: Vec::new(),
            gids: Vec::new(),
            internal: Some(what),
        }
    }

    /// A peer with these ids and names (see [`Caller::lookup`] for the real thing).
    pub fn peer(uid: u32, user: Option<&str>, groups: &[(u32, &str)]) -> Self {
        Self {
            id: CallerId {
                uid,
                user: user.map(str::to_owned),
            },
            groups: groups.iter().map(|(_, n)| (*n).to_owned()).collect(),
            gids: groups.iter().map(|(g, _)| *g).collect(),
            internal: None,
        }
    }

    /// A socket peer: its user name and login groups from the user and group databases
    /// (getgrouplist(3), as a login sets them). Blocking: NSS may be remote.
    /// Root's groups are not looked up: root may do everything whatever its groups.
    pub fn lookup(uid: u32, primary_gid: u32) -> Self {
        let user = User::from_uid(Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name);
        if uid == 0 {
            *ROOT_NAME.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((Instant::now(), user.clone()));
            return Self {
                id: CallerId { uid, user },
                groups: Vec::new(),
                gids: vec![primary_gid],
                internal: None,
            };
        }
        let gids: Vec<u32> = user
            .as_deref()
            .and_then(|n| CString::new(n).ok())
            .and_then(|n| getgrouplist(&n, Gid::from_raw(primary_gid)).ok())
            .map_or_else(
                || vec![primary_gid],
                |g| g.into_iter().map(Gid::as_raw).collect(),
            );
        let groups = gids
            .iter()
            .filter_map(|g| Group::from_gid(Gid::from_raw(*g)).ok().flatten())
            .map(|g| g.name)
            .collect();
        Self {
            id: CallerId { uid, user },
            groups,
            gids,
            internal: None,
        }
    }

    /// Root, named as the last [`Caller::lookup`] of root found it if that was less than
    /// [`ROOT_NAME_FRESH`] ago (`None`: look it up). Nothing blocks, so a trigger run as root
    /// waits for no lookup thread; root's rights come from its uid, and its name is only what
    /// audit lines show. Its groups are not looked up either way.
    pub fn root_if_named(primary_gid: u32) -> Option<Self> {
        let cached = ROOT_NAME.lock().unwrap_or_else(PoisonError::into_inner);
        Self::root_named(cached.as_ref()?, primary_gid)
    }

    /// Root named `user` at `at`, if that is recent.
    fn root_named((at, user): &(Instant, Option<String>), primary_gid: u32) -> Option<Self> {
        (at.elapsed() < ROOT_NAME_FRESH).then(|| Self {
            id: CallerId {
                uid: 0,
                user: user.clone(),
            },
            groups: Vec::new(),
            gids: vec![primary_gid],
            internal: None,
        })
    }

    /// Root or the daemon itself: every operation, every source.
    pub fn is_root(&self) -> bool {
        self.id.uid == 0
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(what) = self.internal {
            return write!(f, "the daemon ({what})");
        }
        write!(f, "uid {}", self.id.uid)?;
        match &self.id.user {
            Some(u) => write!(f, " ({u}")?,
            None => f.write_str(" (no user name")?,
        }
        if !self.groups.is_empty() {
            write!(f, "; groups {}", self.groups.join(", "))?;
        }
        f.write_str(")")
    }
}

/// Why a request was refused to its caller.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Why {
    /// The operation (or flag) is not granted.
    #[error("may not use `{0}` (grant it in an [[access]] entry's operations)")]
    Operation(Operation),
    /// The source is not granted.
    #[error("may not act as source `{0}` (grant it in an [[access]] entry's sources)")]
    Source(Source),
    /// The request acts for every source, and not every source is granted.
    #[error("may not `{0}` for every source (name one with --source, or grant sources = [\"*\"])")]
    EverySource(Operation),
    /// Approving one's own pending request.
    #[error(
        "may not approve pending block {0}: it is its own request; another caller, or root, must approve it"
    )]
    OwnRequest(u64),
}

/// A refused request: who asked, and why it was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("permission denied: {caller} {why}")]
pub struct Denied {
    /// Who asked.
    pub caller: Caller,
    /// Why not.
    pub why: Why,
}

/// What a request needs from its caller's grants.
struct Needs<'a> {
    operations: Vec<Operation>,
    sources: SourceNeed<'a>,
}

/// The sources a request acts as.
enum SourceNeed<'a> {
    None,
    One(&'a Source),
    Every(Operation),
}

/// The operations and sources `request` needs; `None` for requests anyone connected may send.
fn needs(request: &Request) -> Option<Needs<'_>> {
    use Operation as O;
    let plain = |op| Needs {
        operations: vec![op],
        sources: SourceNeed::None,
    };
    Some(match request {
        Request::Ping => return None,
        Request::Block(b) => {
            let mut operations = vec![O::Block];
            operations.extend(b.force.then_some(O::Force));
            operations.extend(b.permanent.then_some(O::Permanent));
            Needs {
                operations,
                sources: SourceNeed::One(&b.source),
            }
        }
        Request::BlockBatch(b) => by_source_need(O::Block, Some(&b.source)),
        Request::SyncSource(s) => by_source_need(O::SyncSource, Some(&s.source)),
        Request::Unblock { all: true, .. } => by_source_need(O::Unblock, None),
        Request::Unblock { source, .. } => Needs {
            operations: vec![O::Unblock],
            sources: source
                .as_ref()
                .map_or(SourceNeed::One(cli()), SourceNeed::One),
        },
        Request::Promote { source, .. } => by_source_need(O::Promote, source.as_ref()),
        Request::BreakerReset { source } => by_source_need(O::BreakerReset, source.as_ref()),
        Request::AllowAdd { force, .. } => Needs {
            operations: if *force {
                vec![O::AllowAdd, O::Force]
            } else {
                vec![O::AllowAdd]
            },
            sources: SourceNeed::None,
        },
        Request::AllowRemove { .. } => plain(O::AllowRemove),
        Request::List { .. } => plain(O::List),
        Request::Show { .. } => plain(O::Show),
        Request::Stats => plain(O::Stats),
        Request::Status => plain(O::Status),
        Request::AllowList => plain(O::AllowList),
        Request::PendingList => plain(O::PendingList),
        Request::Approve { .. } => plain(O::Approve),
        Request::Reject { .. } => plain(O::Reject),
    })
}

/// `op` as `source`, or as every source when none is named.
fn by_source_need(op: Operation, source: Option<&Source>) -> Needs<'_> {
    Needs {
        operations: vec![op],
        sources: source.map_or(SourceNeed::Every(op), SourceNeed::One),
    }
}

/// The default source of `unblock`.
fn cli() -> &'static Source {
    static CLI: std::sync::LazyLock<Source> = std::sync::LazyLock::new(Source::cli);
    &CLI
}

/// What one caller may do: the union of its matching entries.
struct Grants<'a> {
    operations: Vec<&'a Grant<Operation>>,
    sources: Vec<&'a Grant<Source>>,
    read_only: bool,
}

impl Grants<'_> {
    fn operation(&self, op: Operation) -> bool {
        (self.read_only && Operation::READ_ONLY.contains(&op))
            || self.operations.iter().any(|g| g.covers(&op))
    }

    fn source(&self, s: &Source) -> bool {
        self.sources.iter().any(|g| g.covers(s))
    }

    fn every_source(&self) -> bool {
        self.sources.iter().any(|g| **g == Grant::Any)
    }
}

/// The access rules: the `[[access]]` entries and the socket group.
#[derive(Clone, Debug, Default)]
pub struct AccessPolicy {
    entries: Vec<AccessEntry>,
    socket_gid: Option<u32>,
}

impl AccessPolicy {
    /// Rules from the configuration's entries and the socket group's id.
    pub fn new(entries: Vec<AccessEntry>, socket_gid: Option<u32>) -> Self {
        Self {
            entries,
            socket_gid,
        }
    }

    /// Whether `caller` may connect at all: root, a socket-group member, or a caller some entry
    /// names.
    pub fn may_connect(&self, caller: &Caller) -> bool {
        caller.is_root()
            || self.in_socket_group(caller)
            || self.entries.iter().any(|e| e.matches(caller))
    }

    fn in_socket_group(&self, caller: &Caller) -> bool {
        self.socket_gid.is_some_and(|g| caller.gids.contains(&g))
    }

    fn grants(&self, caller: &Caller) -> Grants<'_> {
        let matching: Vec<&AccessEntry> =
            self.entries.iter().filter(|e| e.matches(caller)).collect();
        Grants {
            operations: matching.iter().flat_map(|e| &e.operations).collect(),
            sources: matching.iter().flat_map(|e| &e.sources).collect(),
            read_only: matching.is_empty() && self.in_socket_group(caller),
        }
    }

    /// Whether `caller` may send `request`. For `approve`, `requester` is who made the pending
    /// request (`None`: unknown, from before callers were recorded, or not pending).
    pub fn check(
        &self,
        caller: &Caller,
        request: &Request,
        requester: Option<&CallerId>,
    ) -> Result<(), Denied> {
        let deny = |why| {
            Err(Denied {
                caller: caller.clone(),
                why,
            })
        };
        if caller.is_root() {
            return Ok(());
        }
        let Some(needs) = needs(request) else {
            return Ok(());
        };
        let grants = self.grants(caller);
        if let Some(op) = needs.operations.iter().find(|op| !grants.operation(**op)) {
            return deny(Why::Operation(*op));
        }
        match needs.sources {
            SourceNeed::One(s) if !grants.source(s) => return deny(Why::Source(s.clone())),
            SourceNeed::Every(op) if !grants.every_source() => return deny(Why::EverySource(op)),
            _ => {}
        }
        if let Request::Approve { id } = request
            && requester.is_some_and(|r| r.uid == caller.id.uid)
        {
            return deny(Why::OwnRequest(*id));
        }
        Ok(())
    }

    /// The users and groups the entries name that this host does not know (a warning at start:
    /// such an entry matches nobody).
    pub fn unknown_names(&self) -> Vec<String> {
        let mut unknown = BTreeSet::new();
        for e in &self.entries {
            if let Some(u) = &e.user
                && !matches!(User::from_name(u), Ok(Some(_)))
            {
                unknown.insert(format!("user `{u}`"));
            }
            if let Some(g) = &e.group
                && !matches!(Group::from_name(g), Ok(Some(_)))
            {
                unknown.insert(format!("group `{g}`"));
            }
        }
        unknown.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_known_without_a_lookup_is_the_root_a_lookup_finds() {
        let looked_up = Caller::lookup(0, 7);
        assert_eq!(looked_up.id.user.as_deref(), Some("root"));
        assert_eq!(Caller::root_if_named(7), Some(looked_up));
        let stale = (Instant::now() - ROOT_NAME_FRESH, Some("root".to_owned()));
        assert_eq!(
            Caller::root_named(&stale, 7),
            None,
            "a stale name is looked up again"
        );
    }

    #[test]
    fn an_unknown_group_name_says_how_to_fix_it() {
        let err = group_id("enforcer-no-such-group").unwrap_err().to_string();
        assert!(err.contains("groupadd enforcer-no-such-group"), "{err}");
        assert_eq!(group_id("root").unwrap(), 0);
    }
    use crate::{
        block::Reason,
        protocol::{BatchRequest, BlockRequest, SyncRequest},
    };

    fn src(s: &str) -> Source {
        s.parse().unwrap()
    }

    fn block(source: &str, force: bool, permanent: bool) -> Request {
        Request::Block(BlockRequest {
            target: "192.0.2.7".parse().unwrap(),
            ttl_secs: Some(60),
            permanent,
            source: src(source),
            reason: Reason::default(),
            shadow: false,
            force,
            scope: Default::default(),
        })
    }

    fn entry(toml_text: &str) -> AccessEntry {
        toml::from_str(toml_text).unwrap()
    }

    /// Group `wazuh` (gid 500) may block and unblock as `wazuh` and read; group `ops` (gid 600)
    /// may do everything as any source; the socket group is gid 700.
    fn policy() -> AccessPolicy {
        AccessPolicy::new(
            vec![
                entry(
                    r#"group = "wazuh"
                    sources = ["wazuh"]
                    operations = ["block", "unblock", "list", "show", "stats", "status", "approve"]"#,
                ),
                entry(
                    r#"group = "ops"
                    sources = ["*"]
                    operations = ["*"]"#,
                ),
                entry(
                    r#"user = "f2b"
                    sources = ["fail2ban"]
                    operations = ["block", "unblock"]"#,
                ),
            ],
            Some(700),
        )
    }

    fn wazuh() -> Caller {
        Caller::peer(998, Some("wazuh"), &[(500, "wazuh"), (700, "enforcer")])
    }

    fn why(p: &AccessPolicy, c: &Caller, r: &Request) -> Option<Why> {
        p.check(c, r, None).err().map(|d| d.why)
    }

    #[test]
    fn a_limited_caller_acts_only_as_its_sources_and_never_forces() {
        let p = policy();
        let w = wazuh();
        assert_eq!(why(&p, &w, &block("wazuh", false, false)), None);
        assert_eq!(
            why(&p, &w, &block("cli", false, false)),
            Some(Why::Source(src("cli")))
        );
        assert_eq!(
            why(&p, &w, &block("wazuh", true, false)),
            Some(Why::Operation(Operation::Force))
        );
        assert_eq!(
            why(&p, &w, &block("wazuh", false, true)),
            Some(Why::Operation(Operation::Permanent))
        );
        let batch = Request::BlockBatch(BatchRequest {
            items: vec![],
            ttl_secs: None,
            source: src("crowdsec"),
            reason: Reason::default(),
            shadow: false,
            scope: Default::default(),
        });
        assert_eq!(why(&p, &w, &batch), Some(Why::Source(src("crowdsec"))));
        let sync = Request::SyncSource(SyncRequest {
            source: src("wazuh"),
            replace: true,
            items: vec![],
            remove: vec![],
        });
        assert_eq!(
            why(&p, &w, &sync),
            Some(Why::Operation(Operation::SyncSource)),
            "sync_source is not implied by block"
        );
    }

    #[test]
    fn unblock_promote_and_reset_name_their_source_or_need_every_source() {
        let p = policy();
        let w = wazuh();
        let unblock = |source: Option<&str>, all| Request::Unblock {
            target: "192.0.2.7".parse().unwrap(),
            source: source.map(src),
            all,
            scope: Default::default(),
        };
        assert_eq!(why(&p, &w, &unblock(Some("wazuh"), false)), None);
        assert_eq!(
            why(&p, &w, &unblock(None, false)),
            Some(Why::Source(Source::cli())),
            "the default source is cli"
        );
        assert_eq!(
            why(&p, &w, &unblock(Some("wazuh"), true)),
            Some(Why::EverySource(Operation::Unblock))
        );
        let promote = Request::Promote {
            target: None,
            source: Some(src("wazuh")),
        };
        assert_eq!(
            why(&p, &w, &promote),
            Some(Why::Operation(Operation::Promote))
        );
        assert_eq!(
            why(&p, &w, &Request::BreakerReset { source: None }),
            Some(Why::Operation(Operation::BreakerReset))
        );
        let ops = Caller::peer(1000, Some("alice"), &[(600, "ops")]);
        assert_eq!(why(&p, &ops, &Request::BreakerReset { source: None }), None);
        assert_eq!(why(&p, &ops, &unblock(Some("wazuh"), true)), None);
    }

    #[test]
    fn approval_comes_from_another_caller_or_from_root() {
        let p = policy();
        let w = wazuh();
        let approve = Request::Approve { id: 3 };
        assert_eq!(
            p.check(&w, &approve, Some(&w.id)).unwrap_err().why,
            Why::OwnRequest(3)
        );
        let other = CallerId {
            uid: 0,
            user: Some("root".into()),
        };
        assert!(
            p.check(&w, &approve, Some(&other)).is_ok(),
            "another caller's request"
        );
        let root = Caller::peer(0, Some("root"), &[(0, "root")]);
        assert!(
            p.check(&root, &approve, Some(&root.id)).is_ok(),
            "root approves even its own"
        );
        let f2b = Caller::peer(997, Some("f2b"), &[(997, "f2b")]);
        assert_eq!(
            why(&p, &f2b, &approve),
            Some(Why::Operation(Operation::Approve))
        );
    }

    #[test]
    fn socket_group_members_without_an_entry_may_only_read() {
        let p = policy();
        let member = Caller::peer(1001, Some("bob"), &[(1001, "bob"), (700, "enforcer")]);
        assert!(p.may_connect(&member));
        for r in [
            Request::Status,
            Request::Stats,
            Request::AllowList,
            Request::PendingList,
            Request::Ping,
        ] {
            assert_eq!(why(&p, &member, &r), None, "{r:?}");
        }
        assert_eq!(
            why(&p, &member, &block("cli", false, false)),
            Some(Why::Operation(Operation::Block))
        );
        let allow = Request::AllowAdd {
            target: "0.0.0.0/0".parse().unwrap(),
            comment: None,
            force: false,
        };
        assert_eq!(
            why(&p, &member, &allow),
            Some(Why::Operation(Operation::AllowAdd))
        );
        assert_eq!(
            why(&p, &member, &Request::Approve { id: 1 }),
            Some(Why::Operation(Operation::Approve))
        );
        let stranger = Caller::peer(1002, Some("eve"), &[(1002, "eve")]);
        assert!(!p.may_connect(&stranger));
        assert_eq!(
            why(&p, &stranger, &Request::Status),
            Some(Why::Operation(Operation::Status))
        );
    }

    #[test]
    fn entries_match_by_user_or_group_and_add_up() {
        let p = policy();
        let f2b = Caller::peer(997, Some("f2b"), &[(997, "f2b"), (500, "wazuh")]);
        assert!(
            p.may_connect(&f2b),
            "named by an entry, not in the socket group"
        );
        assert_eq!(why(&p, &f2b, &block("fail2ban", false, false)), None);
        assert_eq!(
            why(&p, &f2b, &block("wazuh", false, false)),
            None,
            "the group entry adds its sources"
        );
        assert_eq!(why(&p, &f2b, &Request::Status), None);
        let force_allow = Request::AllowAdd {
            target: "0.0.0.0/0".parse().unwrap(),
            comment: None,
            force: true,
        };
        let ops = Caller::peer(1000, Some("alice"), &[(600, "ops")]);
        assert_eq!(why(&p, &ops, &force_allow), None);
        assert_eq!(
            why(&p, &f2b, &force_allow),
            Some(Why::Operation(Operation::AllowAdd))
        );
    }

    #[test]
    fn root_and_the_daemon_may_do_everything() {
        let p = AccessPolicy::default();
        let root = Caller::peer(0, Some("root"), &[(0, "root")]);
        assert!(p.may_connect(&root));
        assert_eq!(why(&p, &root, &block("anything", true, true)), None);
        // The daemon's own asks (host and link changes, the publisher's queue) are not
        // protocol requests at all (`daemon::engine::Ask`): no caller can send one.
        assert_eq!(
            why(
                &p,
                &Caller::internal("crowdsec"),
                &block("anything", true, true)
            ),
            None
        );
    }

    #[test]
    fn refusals_name_the_caller_and_what_to_grant() {
        let d = policy()
            .check(&wazuh(), &block("cli", false, false), None)
            .unwrap_err();
        assert_eq!(
            d.to_string(),
            "permission denied: uid 998 (wazuh; groups wazuh, enforcer) may not act as source `cli` (grant it in an [[access]] entry's sources)"
        );
        assert_eq!(Caller::internal("spool").to_string(), "the daemon (spool)");
    }

    #[test]
    fn grant_lists_are_checked_when_the_configuration_is_read() {
        let e =
            toml::from_str::<AccessEntry>("group = \"x\"\noperations = [\"blok\"]\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("unknown operation `blok` (known: block, unblock"),
            "{e}"
        );
        let e = toml::from_str::<AccessEntry>("group = \"x\"\nsources = [\"not a source\"]\n")
            .unwrap_err();
        assert!(e.to_string().contains("source"), "{e}");
        assert!(entry("user = \"a\"\ngroup = \"b\"\n").validate().is_err());
        assert!(entry("sources = [\"*\"]\n").validate().is_err());
        assert!(entry("group = \"b\"\n").validate().is_ok());
    }

    #[test]
    fn the_current_process_is_looked_up_with_its_name_and_groups() {
        let root = Caller::lookup(0, 0);
        assert_eq!(root.id.user.as_deref(), Some("root"));
        let nobody = Caller::lookup(65534, 65534);
        assert_eq!(nobody.gids, [65534], "{nobody:?}");
        assert!(
            nobody.id.user.is_some() && !nobody.groups.is_empty(),
            "{nobody:?}"
        );
        let nobody = Caller::lookup(0x7fff_0000, 4242);
        assert_eq!((nobody.id.user, nobody.gids), (None, vec![4242]));
    }
}
