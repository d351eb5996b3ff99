//! The audit log: one JSON line for every decision, in the state directory.
//!
//! `audit.log` grows to `max_bytes`, then is renamed `audit.log.1` (older files shift up to
//! `audit.log.<keep>`, the oldest is deleted). Lines are flushed per engine round; a round with
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
    block::{Mode, Reason, Source, UnixMillis, now_ms},
    target::Target,
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
                        let _ = done.send(());
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
            let _ = written.recv();
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
        })
    }

    /// Appends the lines and flushes them to the file.
    fn write(&mut self, batch: &[Event]) {
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
