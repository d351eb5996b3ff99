//! The audit log: one JSON line for every decision, in the state directory.
//!
//! `audit.log` grows to `max_bytes`, then is renamed `audit.log.1` (older files shift up to
//! `audit.log.<keep>`, the oldest is deleted); the new file is opened before anything moves, so a
//! failed rotation keeps the history and writes on into the current file. Lines are flushed per engine round; a round with
//! more than [`INLINE_MAX`] lines (a large import or feed sync) is written by a writer thread
//! after the round answers. They are a record for people and SIEMs, the store is the source of
//! truth.

use std::{
    fs::{self, File},
    io::{self, BufWriter, Write as _},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, SyncSender, TrySendError},
    },
    thread::JoinHandle,
};

use serde::Serialize;

use crate::{
    block::{Mode, Reason, Source},
    scope::ScopeSet,
    target::Target,
    time::WallMs,
};

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
    pub ts_ms: WallMs,
    /// What.
    pub action: Action,
    /// Target (absent for interface events and requests without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// Interface, for interface events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The single address a request named, when the policy widened it to its network
    /// (`target`), or when an unblock of it lifted that network's block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested: Option<Target>,
    /// Source, when one is involved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
    /// Reason given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Arc<Reason>>,
    /// Expiry (Unix ms) after the action; absent = permanent or not applicable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<WallMs>,
    /// Mode after the action.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// What of the target's traffic the source's block covers after the action (absent: the
    /// whole address).
    #[serde(skip_serializing_if = "ScopeSet::is_whole")]
    pub scope: ScopeSet,
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
    pub spooled_ms: Option<WallMs>,
    /// For a spooled trigger replayed by the daemon: its spool file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool_file: Option<String>,
    /// For a line that stands for several events (denials of one caller over an interval):
    /// how many.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

impl Event {
    /// An event with only the essentials.
    pub fn new(action: Action, target: Target) -> Self {
        Self::untargeted(action).on(target)
    }

    /// An event about no one target (a denied `stats`, `breaker reset`...).
    pub fn untargeted(action: Action) -> Self {
        Self {
            ts_ms: WallMs::now(),
            action,
            target: None,
            requested: None,
            interface: None,
            caller: None,
            source: None,
            reason: None,
            expires_ms: None,
            mode: None,
            scope: ScopeSet::WHOLE,
            detail: None,
            spooled_ms: None,
            spool_file: None,
            count: None,
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
    pub fn denied(
        denied: &crate::access::Denied,
        target: Option<Target>,
        source: Option<&Source>,
    ) -> Self {
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

/// A round with more lines than this hands them to the writer thread and answers at once (a
/// large import or feed sync); smaller ones are written before the round answers.
pub const INLINE_MAX: usize = 1000;
/// Batches the writer thread may have waiting; past it the engine waits for the writer.
const QUEUE_BATCHES: usize = 64;

/// The audit log.
///
/// Lines are written in the order they are recorded. A batch of up to [`INLINE_MAX`] lines (an
/// ordinary round) is in the file, flushed, when [`AuditLog::write`] returns: written on the
/// caller's thread, or, while earlier lines wait for the writer thread, queued behind them and
/// waited for. A larger batch (a large import or feed sync) is handed to the writer thread and
/// `write` returns at once, so the engine answers without serializing a hundred thousand lines
/// first. The queue is bounded: when the writer falls [`QUEUE_BATCHES`] batches behind, the
/// engine waits for it (logged once); no line is dropped. [`AuditLog::close`] (also on drop)
/// writes everything still queued; a crash loses at most the lines of large batches queued and
/// not yet written.
pub struct AuditLog {
    path: PathBuf,
    file: Arc<Mutex<AuditFile>>,
    /// Batches handed to the writer thread and not yet written.
    queued: Arc<AtomicUsize>,
    queue: Option<SyncSender<Queued>>,
    writer: Option<JoinHandle<()>>,
    /// Lines recorded since the last [`AuditLog::flush`].
    held: Vec<Event>,
    /// Whether waiting for a full queue was logged already.
    told_full: bool,
}

impl AuditLog {
    /// Opens (appending) `dir/audit.log` and starts its writer thread.
    pub fn open(dir: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        let file = AuditFile::open(dir, max_bytes, keep)?;
        let path = file.path.clone();
        let file = Arc::new(Mutex::new(file));
        let queued = Arc::new(AtomicUsize::new(0));
        let (queue, batches) = mpsc::sync_channel::<Queued>(QUEUE_BATCHES);
        let (f, q) = (file.clone(), queued.clone());
        let writer = std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || {
                for batch in batches {
                    lock(&f).write(&batch.events);
                    q.fetch_sub(1, Ordering::AcqRel);
                    if let Some(done) = batch.done {
                        // A waiter that is gone (its thread ended) needs no word.
                        done.send(()).ok();
                    }
                }
            })?;
        Ok(Self {
            path,
            file,
            queued,
            queue: Some(queue),
            writer: Some(writer),
            held: Vec::new(),
            told_full: false,
        })
    }

    /// The current file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records one line (written at the next [`AuditLog::flush`]).
    pub fn record(&mut self, event: Event) {
        self.held.push(event);
    }

    /// Writes the recorded lines: see [`AuditLog`] for when and by whom.
    pub fn flush(&mut self) {
        let batch = std::mem::take(&mut self.held);
        self.write(batch);
    }

    /// Writes `batch` after every line recorded before it: see [`AuditLog`] for when and by whom.
    pub fn write(&mut self, batch: Vec<Event>) {
        if batch.is_empty() {
            return;
        }
        let small = batch.len() <= INLINE_MAX;
        // Only this handle queues: nothing queued means every earlier line is in the file.
        if small && self.queued.load(Ordering::Acquire) == 0 {
            lock(&self.file).write(&batch);
            return;
        }
        // A small batch behind queued ones waits until it is written, like an inline one.
        let (done, written) = if small {
            let (tx, rx) = mpsc::sync_channel(1);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        self.queue(Queued {
            events: batch,
            done,
        });
        if let Some(written) = written {
            // An error means the writer thread ended without it: nothing left to wait for.
            written.recv().ok();
        }
    }

    fn queue(&mut self, batch: Queued) {
        let Some(queue) = &self.queue else {
            lock(&self.file).write(&batch.events);
            return;
        };
        self.queued.fetch_add(1, Ordering::AcqRel);
        match queue.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(batch)) => {
                if !std::mem::replace(&mut self.told_full, true) {
                    tracing::warn!(
                        "the audit writer is behind by {QUEUE_BATCHES} batches; the engine waits for it (no line is dropped)"
                    );
                }
                if let Err(mpsc::SendError(batch)) = queue.send(batch) {
                    self.write_here(&batch);
                }
            }
            Err(TrySendError::Disconnected(batch)) => self.write_here(&batch),
        }
    }

    /// Writes a batch the writer thread cannot take (it panicked) on this thread.
    fn write_here(&self, batch: &Queued) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        lock(&self.file).write(&batch.events);
    }

    /// Writes every recorded and queued line, then stops the writer thread.
    pub fn close(&mut self) {
        self.flush();
        drop(self.queue.take());
        if let Some(w) = self.writer.take()
            && w.join().is_err()
        {
            tracing::error!("the audit writer thread panicked; lines it held are lost");
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

/// Lines for the writer thread, and whom to tell once they are written.
struct Queued {
    events: Vec<Event>,
    done: Option<SyncSender<()>>,
}

/// The file, even if a writer panicked while holding it (lines are whole or absent).
fn lock(file: &Mutex<AuditFile>) -> std::sync::MutexGuard<'_, AuditFile> {
    file.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The file and its rotation.
struct AuditFile {
    path: PathBuf,
    out: BufWriter<File>,
    size: u64,
    max_bytes: u64,
    keep: u32,
    /// Whether the last rotation failed (logged once until one succeeds).
    rotation_failing: bool,
}

impl AuditFile {
    fn open(dir: &Path, max_bytes: u64, keep: u32) -> io::Result<Self> {
        let path = dir.join("audit.log");
        let file = crate::safe_fs::open_append(&path, 0o640)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path,
            out: BufWriter::new(file),
            size,
            max_bytes: max_bytes.max(4096),
            keep: keep.max(1),
            rotation_failing: false,
        })
    }

    /// Appends the lines and flushes them to the file.
    fn write(&mut self, batch: &[Event]) {
        self.reopen_if_gone();
        for event in batch {
            self.record(event);
        }
        if let Err(e) = self.out.flush() {
            tracing::error!(error = %e, "flushing the audit log failed");
        }
    }

    fn record(&mut self, event: &Event) {
        let Ok(mut line) = serde_json::to_vec(event) else {
            return;
        };
        line.push(b'\n');
        if self.size + line.len() as u64 > self.max_bytes && self.size > 0 {
            match self.rotate() {
                Ok(()) => self.rotation_failing = false,
                // The lines go on into the current file; the next line tries again.
                Err(e) if !std::mem::replace(&mut self.rotation_failing, true) => {
                    tracing::error!(error = %e, "rotating the audit log failed; lines go on into the current file, and the history is kept");
                }
                Err(_) => {}
            }
        }
        match self.out.write_all(&line) {
            Ok(()) => self.size += line.len() as u64,
            Err(e) => tracing::error!(error = %e, "writing the audit log failed"),
        }
    }

    /// Whether the file written to is still `audit.log` (not deleted or renamed away).
    fn is_current(&self) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        match (
            fs::symlink_metadata(&self.path),
            self.out.get_ref().metadata(),
        ) {
            (Ok(named), Ok(open)) => named.dev() == open.dev() && named.ino() == open.ino(),
            _ => false,
        }
    }

    /// Someone deleted or moved `audit.log` (an operator, logrotate): lines written to the old
    /// file would be lost or land in the history, so a new `audit.log` is started, without
    /// shifting the history.
    fn reopen_if_gone(&mut self) {
        if self.is_current() {
            return;
        }
        // The file was removed or replaced: its buffer goes to it, or is lost with it.
        self.out.flush().ok();
        match crate::safe_fs::open_append(&self.path, 0o640) {
            Ok(file) => {
                tracing::warn!(path = %self.path.display(), "the audit log was deleted or moved away; started a new one");
                self.size = file.metadata().map_or(0, |m| m.len());
                self.out = BufWriter::new(file);
            }
            Err(e) => {
                tracing::error!(error = %crate::error::Chain(&e), "the audit log was deleted or moved away and cannot be created again; lines go on into the old file");
            }
        }
    }

    /// Opens the next file first, then shifts the history: if the new file cannot be opened
    /// (out of descriptors, a read-only directory) nothing moves, so the history is never
    /// shifted without a new `audit.log` to take the lines. A missing `audit.log` is started
    /// again without shifting.
    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        if !self.is_current() {
            self.reopen_if_gone();
            return Ok(());
        }
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        let next = PathBuf::from(format!("{}.new", self.path.display()));
        // A leftover from a rotation interrupted by a crash holds no line: replaced.
        fs::remove_file(&next).ok();
        let file = crate::safe_fs::open_append(&next, 0o640)?;
        // The oldest file, if there is one, makes room; so does each shift below (missing ones
        // are skipped).
        fs::remove_file(numbered(self.keep)).ok();
        for n in (1..self.keep).rev() {
            fs::rename(numbered(n), numbered(n + 1)).ok();
        }
        fs::rename(&self.path, numbered(1))?;
        fs::rename(&next, &self.path)?;
        self.out = BufWriter::new(file);
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(dir: &Path) -> Vec<String> {
        fs::read_to_string(dir.join("audit.log"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["target"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    fn nth(i: u32) -> Event {
        Event::new(
            Action::Block,
            Target::host(std::net::Ipv4Addr::from(0xc612_0000 + i).into()),
        )
    }

    #[test]
    fn a_small_batch_is_in_the_file_when_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path(), 1 << 30, 2).unwrap();
        log.write(vec![nth(0), nth(1)]);
        assert_eq!(lines(dir.path()), vec!["198.18.0.0", "198.18.0.1"]);
    }

    #[test]
    fn a_large_batch_goes_to_the_writer_and_every_line_keeps_its_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path(), 1 << 30, 2).unwrap();
        let big = INLINE_MAX as u32 * 3;
        log.write((0..big).map(nth).collect());
        // A small batch behind it waits its turn, and is in the file when written.
        log.write(vec![nth(big)]);
        assert_eq!(lines(dir.path()).len(), big as usize + 1);
        log.record(nth(big + 1));
        log.flush();
        for i in 0..(QUEUE_BATCHES as u32 + 10) {
            log.write(
                (0..INLINE_MAX as u32 + 1)
                    .map(|j| nth(big + 2 + i * 10_000 + j))
                    .collect(),
            );
        }
        log.close();
        let got = lines(dir.path());
        let want: Vec<String> =
            (0..big + 2)
                .chain((0..(QUEUE_BATCHES as u32 + 10)).flat_map(|i| {
                    (0..INLINE_MAX as u32 + 1).map(move |j| big + 2 + i * 10_000 + j)
                }))
                .map(|i| nth(i).target.unwrap().to_string())
                .collect();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the lines are in the order they were written");
    }

    /// Numbers of the lines in `dir/name` (their targets' last octets), or none if it is gone.
    fn numbers(dir: &Path, name: &str) -> Vec<u32> {
        fs::read_to_string(dir.join(name))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let t: std::net::Ipv4Addr = v["target"].as_str().unwrap().parse().unwrap();
                u32::from(t) - 0xc612_0000
            })
            .collect()
    }

    /// 100 lines of about 60 bytes: a 4096-byte file holds some 60 of them.
    fn fill(log: &mut AuditLog, from: u32) -> u32 {
        for i in from..from + 100 {
            log.write(vec![nth(i)]);
        }
        from + 100
    }

    #[test]
    fn a_deleted_audit_log_does_not_rotate_the_history_away() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path(), 4096, 3).unwrap();
        let next = fill(&mut log, 0);
        let (one, two) = (
            numbers(dir.path(), "audit.log.1"),
            numbers(dir.path(), "audit.log.2"),
        );
        assert!(!one.is_empty(), "rotated once before the deletion");
        // Someone (logrotate, an operator) removes the live file.
        fs::remove_file(dir.path().join("audit.log")).unwrap();
        let last = fill(&mut log, next);
        log.close();
        assert_eq!(
            numbers(dir.path(), "audit.log.2"),
            one,
            "the history shifted once, when the new file filled up"
        );
        assert_eq!(numbers(dir.path(), "audit.log.3"), two);
        let mut after: Vec<u32> = numbers(dir.path(), "audit.log.1");
        after.extend(numbers(dir.path(), "audit.log"));
        assert_eq!(after.last(), Some(&(last - 1)), "the last line is on disk");
        assert!(
            after.windows(2).all(|w| w[1] == w[0] + 1),
            "no line written after the deletion is lost: {after:?}"
        );
    }

    /// With every descriptor taken, the new file cannot be opened: the rotation waits, the
    /// history is kept, and no line is lost. Runs in a child process (the descriptors are the
    /// process's, and other tests run beside it).
    #[test]
    fn a_rotation_that_cannot_open_the_new_file_keeps_the_history() {
        const CHILD: &str = "ENFORCER_AUDIT_EMFILE_DIR";
        let Some(dir) = std::env::var_os(CHILD) else {
            let dir = tempfile::tempdir().unwrap();
            crate::test_support::run_in_child(
                "audit::tests::a_rotation_that_cannot_open_the_new_file_keeps_the_history",
                CHILD,
                dir.path().as_os_str(),
            );
            return;
        };
        let dir = Path::new(&dir);
        let mut log = AuditLog::open(dir, 4096, 2).unwrap();
        let mut next = fill(&mut log, 0);
        next = fill(&mut log, next);
        let history = (numbers(dir, "audit.log.1"), numbers(dir, "audit.log.2"));
        assert!(
            !history.1.is_empty(),
            "rotated twice before the descriptors ran out"
        );
        let mut taken = Vec::new();
        while let Ok(f) = File::open("/dev/null") {
            taken.push(f);
        }
        let during = fill(&mut log, next);
        drop(taken);
        assert_eq!(
            (numbers(dir, "audit.log.1"), numbers(dir, "audit.log.2")),
            history,
            "no rotation without a new file"
        );
        let last = fill(&mut log, during);
        log.close();
        let mut all = numbers(dir, "audit.log.2");
        all.extend(numbers(dir, "audit.log.1"));
        all.extend(numbers(dir, "audit.log"));
        assert_eq!(all.last(), Some(&(last - 1)));
        assert!(
            all.windows(2).all(|w| w[1] == w[0] + 1),
            "the kept files hold every line since their first, in order: {all:?}"
        );
        assert!(
            all[0] <= next,
            "the lines written while rotation failed are kept"
        );
    }

    #[test]
    fn rotates_at_the_size_bound_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path(), 4096, 2).unwrap();
        let t: Target = "192.0.2.1".parse().unwrap();
        for _ in 0..500 {
            log.record(Event::new(Action::Block, t));
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
