//! The audit log: one JSON line for every decision, in the state directory.
//!
//! `audit.log` grows to `max_bytes`, then is renamed `audit.log.1` (older files shift up to
//! `audit.log.<keep>`, the oldest is deleted). Lines are flushed per engine batch; they are a
//! record for people and SIEMs, the store is the source of truth.

use std::{
    fs::{self, File},
    io::{self, BufWriter, Write as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Serialize;

use crate::block::{Mode, Reason, Source, UnixMillis, now_ms};
use crate::target::Target;

/// What happened.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A new block.
    Block,
    /// A block now ends later.
    Extend,
    /// A re-block that changed nothing but reason or mode.
    Reblock,
    /// A block removed on request.
    Unblock,
    /// A block reached its end.
    Expire,
    /// A request refused.
    Refuse,
    /// A kernel entry the store did not know, removed at start.
    RemoveUnknown,
    /// A block restored into the kernel at start.
    Restore,
    /// A block waits for approval.
    Pending,
    /// A pending block approved.
    Approve,
    /// A pending block rejected.
    Reject,
    /// A pending block expired unapproved.
    PendingExpire,
    /// Shadow blocks turned into enforced ones.
    Promote,
    /// An allowlist entry added.
    AllowAdd,
    /// An allowlist entry removed.
    AllowRemove,
    /// A source's circuit breaker opened.
    BreakerOpen,
    /// The program runs on a configured interface (attached, re-attached, or found at start).
    InterfaceProtected,
    /// A configured interface disappeared (deleted, renamed away, moved to another namespace).
    InterfaceGone,
    /// A configured interface exists but the program does not run on it (detached behind the
    /// daemon's back, or an attach failed).
    InterfaceUnprotected,
    /// A request its caller may not make (see `crate::access`).
    Deny,
    /// The wall clock stepped (see `crate::time`); deadlines moved with it.
    ClockJump,
}

/// One audit line. Owned, so the block engine can collect the lines of a round and write them
/// once the round is durable.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// When (Unix ms).
    pub ts_ms: UnixMillis,
    /// What.
    pub action: Action,
    /// Target (absent for interface events and requests without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// Interface, for interface events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Source, when one is involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// Reason given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Arc<Reason>>,
    /// Expiry (Unix ms) after the action; absent = permanent or not applicable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<UnixMillis>,
    /// Mode after the action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// For refusals: why, and the rule that decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Who asked (uid, user name, groups): on denials, and on every line of a request a client
    /// made over the socket (not on lines of the daemon's own parts: CrowdSec, the spool, the
    /// reaper).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<crate::access::Caller>,
    /// For a spooled trigger replayed by the daemon: when it was spooled (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spooled_ms: Option<UnixMillis>,
    /// For a spooled trigger replayed by the daemon: its spool file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool_file: Option<String>,
}

impl Event {
    /// An event with only the essentials.
    pub fn new(action: Action, target: Target) -> Self {
        Self::untargeted(action).on(target)
    }

    /// An event about no one target (a denied `stats`, `breaker reset`...).
    pub fn untargeted(action: Action) -> Self {
        Self {
            ts_ms: now_ms(),
            action,
            target: None,
            interface: None,
            caller: None,
            source: None,
            reason: None,
            expires_ms: None,
            mode: None,
            detail: None,
            spooled_ms: None,
            spool_file: None,
        }
    }

    /// An event about an interface (no target).
    pub fn interface(action: Action, iface: &str, detail: impl Into<String>) -> Self {
        let mut e = Self::untargeted(action).detail(detail);
        e.interface = Some(iface.to_owned());
        e
    }

    /// About `target`.
    #[must_use]
    pub fn on(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    /// A denial of `caller`'s request.
    pub fn denied(denied: &crate::access::Denied, target: Option<Target>, source: Option<&Source>) -> Self {
        let mut e = Self::untargeted(Action::Deny).detail(denied.why.to_string());
        e.target = target;
        e.source = source.cloned();
        e.caller = Some(denied.caller.clone());
        e
    }

    /// With the source.
    #[must_use]
    pub fn source(mut self, source: &Source) -> Self {
        self.source = Some(source.clone());
        self
    }

    /// With a detail.
    #[must_use]
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }
}

/// The audit log writer.
pub struct AuditLog {
    path: PathBuf,
    out: BufWriter<File>,
    size: u64,
    max_bytes: u64,
    keep: u32,
}

impl AuditLog {
    /// Opens (appending) `dir/audit.log`.
    pub fn open(dir: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        let path = dir.join("audit.log");
        let file = crate::safe_fs::open_append(&path, 0o640)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path,
            out: BufWriter::new(file),
            size,
            max_bytes: max_bytes.max(4096),
            keep: keep.max(1),
        })
    }

    /// The current file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event (buffered; see [`AuditLog::flush`]).
    pub fn record(&mut self, event: &Event) {
        let Ok(mut line) = serde_json::to_vec(event) else {
            return;
        };
        line.push(b'\n');
        if self.size + line.len() as u64 > self.max_bytes
            && self.size > 0
            && let Err(e) = self.rotate()
        {
            tracing::error!(error = %e, "rotating the audit log failed");
        }
        match self.out.write_all(&line) {
            Ok(()) => self.size += line.len() as u64,
            Err(e) => tracing::error!(error = %e, "writing the audit log failed"),
        }
    }

    /// Writes buffered lines to the file.
    pub fn flush(&mut self) {
        if let Err(e) = self.out.flush() {
            tracing::error!(error = %e, "flushing the audit log failed");
        }
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        let _ = fs::remove_file(numbered(self.keep));
        for n in (1..self.keep).rev() {
            let _ = fs::rename(numbered(n), numbered(n + 1));
        }
        fs::rename(&self.path, numbered(1))?;
        let file = crate::safe_fs::open_append(&self.path, 0o640)?;
        self.out = BufWriter::new(file);
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_at_the_size_bound_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path(), 4096, 2).unwrap();
        let t: Target = "192.0.2.1".parse().unwrap();
        for _ in 0..500 {
            log.record(&Event::new(Action::Block, t));
        }
        log.flush();
        assert!(dir.path().join("audit.log").metadata().unwrap().len() <= 4096);
        assert!(dir.path().join("audit.log.1").exists());
        assert!(dir.path().join("audit.log.2").exists());
        assert!(!dir.path().join("audit.log.3").exists());
        let text = fs::read_to_string(dir.path().join("audit.log")).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["action"], "block");
        assert_eq!(first["target"], "192.0.2.1");
    }
}
