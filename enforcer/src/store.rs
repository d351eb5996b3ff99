//! The durable block store.
//!
//! redb: an embedded, crash-safe (copy-on-write B-tree with checksummed commits), pure-Rust
//! key-value store. Each commit is fsynced before it returns, so a block acknowledged after a
//! commit survives a crash or power loss. Writes are grouped: the engine commits every request
//! that is waiting in one transaction (one fsync), which keeps single blocks fast and batch
//! imports at hundreds of thousands of records per second.
//!
//! One row per (target, source): key `(target, source)`, value the [`SourceBlock`] as JSON
//! (readable, and tolerant of added fields). Deadlines are wall-clock times, so a block keeps
//! its remaining time across reboots. The `meta` table says which boot and wall-minus-boot
//! offset they were written under ([`crate::time::TimeBase`]), so that on the same boot they
//! are boot-relative and a wall-clock step changes nothing; a store from before it has none,
//! and its deadlines are read as wall-clock times (as they were written).

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};

use crate::{
    block::{Record, Source, SourceBlock},
    outbox::Publication,
    policy::AllowOrigin,
    protocol::{PendingBlock, Reply, RequestId},
    target::Target,
    time::{TimeBase, WallMs},
};

const BLOCKS: TableDefinition<'static, (&str, &str), &[u8]> = TableDefinition::new("blocks_v1");
/// Allowlist entries added with the CLI (config and builtin entries are not stored).
const ALLOW: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("allow_v1");
/// Blocks waiting for approval, by id.
const PENDING: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("pending_v1");
/// When each target was last blocked (for repeat-offender escalation).
const OFFENSES: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("offenses_v1");
/// Single values by name (see [`StoreMeta`]).
const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("meta_v1");
/// Publications waiting for the CrowdSec LAPI, by queue position ([`crate::outbox`]).
const OUTBOX: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("outbox_v1");
/// The LAPI decision ids that stand for each published block, by (target, source).
const PUBLISHED: TableDefinition<'static, (&str, &str), &[u8]> =
    TableDefinition::new("published_v1");
const META_NEXT_PENDING: &str = "next_pending_id";
const META_TIME_BASE: &str = "time_base";

/// The store's single values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreMeta {
    /// The id the next pending block gets (ids are never reused, even after a restart).
    pub next_pending_id: Option<u64>,
    /// The boot and offset the stored deadlines were written under.
    pub time_base: Option<TimeBase>,
}

/// The ids of applied write requests, with their answers (a duplicate gets the same answer).
const REQUESTS: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("requests_v1");

/// A write request the daemon applied, remembered by the id its client gave it, with the
/// answer it got. Written in the same transaction as what the request changed, so the id is
/// durable exactly when its effect is.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AppliedRequest {
    /// The client's id.
    pub id: RequestId,
    /// The uid of the caller that sent it (0 for the daemon's own parts, the spool included,
    /// and for ids stored before the caller was kept).
    #[serde(default)]
    pub uid: u32,
    /// When it was applied (Unix ms).
    pub applied_ms: WallMs,
    /// The answer it got.
    pub reply: Reply,
}

impl AppliedRequest {
    /// Whose id this is.
    pub fn key(&self) -> RequestKey {
        RequestKey {
            uid: self.uid,
            id: self.id.clone(),
        }
    }
}

/// A request id and the caller it belongs to: ids are each caller's own, so one caller can
/// neither replay another's request nor have its own taken for a duplicate of another's.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey {
    /// The caller's uid.
    pub uid: u32,
    /// Its id.
    pub id: RequestId,
}

impl RequestKey {
    /// The store row's key: `uid:id`.
    fn row(&self) -> String {
        format!("{}:{}", self.uid, self.id.as_str())
    }
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb failed.
    #[error("block store {path}: {message}")]
    Db { path: PathBuf, message: String },
    /// Another process (a daemon still stopping, or a second one on this state directory)
    /// held the store for longer than [`LOCK_WAIT`].
    #[error(
        "block store {path} is held by another process ({holder}) and was not released within {waited_s} s: stop it (`systemctl stop enforcer`{kill}) and start again, or give this daemon another --state-dir"
    )]
    Held {
        path: PathBuf,
        /// `pid N, from PIDFILE`, or what is known of the holder.
        holder: String,
        /// `, or kill N`, when the holder is known.
        kill: String,
        waited_s: u64,
    },
    /// A row could not be decoded.
    #[error("block store {path}: unreadable row for {key}: {message}")]
    Corrupt {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// redb's page cache. Its default (1 GiB) would make the daemon's memory grow with the store up
/// to that; reads are rare (start-up), so a small cache costs nothing measurable.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

fn open_db(path: &Path) -> Result<Database, redb::DatabaseError> {
    Database::builder().set_cache_size(CACHE_BYTES).create(path)
}

/// How long a starting daemon waits for the store's lock: a daemon stopping (a restart, a
/// supervisor's quick start) releases it within this; a second daemon on the same state
/// directory does not.
pub const LOCK_WAIT: Duration = Duration::from_secs(20);

/// The file naming the process that holds the store (written once the lock is taken).
fn pid_file(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".pid");
    PathBuf::from(name)
}

/// Opens the database, waiting up to [`LOCK_WAIT`] while another process holds it.
fn open_waiting(path: &Path) -> Result<Database, StoreError> {
    let started = Instant::now();
    let mut told = false;
    loop {
        match open_db(path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if started.elapsed() < LOCK_WAIT => {
                if !std::mem::replace(&mut told, true) {
                    tracing::warn!(path = %path.display(), holder = %holder(path).0, "the block store is held by another process (a daemon still stopping?); waiting up to {} s for it", LOCK_WAIT.as_secs());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                let (holder, pid) = holder(path);
                return Err(StoreError::Held {
                    path: path.to_owned(),
                    holder,
                    kill: pid.map(|p| format!(", or kill {p}")).unwrap_or_default(),
                    waited_s: LOCK_WAIT.as_secs(),
                });
            }
            Err(e) => {
                return Err(StoreError::Db {
                    path: path.to_owned(),
                    message: e.to_string(),
                });
            }
            Ok(db) => return Ok(db),
        }
    }
}

/// Who holds the store, as its pid file says: a description and the pid.
fn holder(path: &Path) -> (String, Option<u32>) {
    let file = pid_file(path);
    match std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    {
        Some(pid) => (format!("pid {pid}, from {}", file.display()), Some(pid)),
        None => (format!("unknown: no pid in {}", file.display()), None),
    }
}

/// Notes this process as the store's holder, for the next one that finds it held.
fn write_pid_file(path: &Path) {
    let (Some(dir), Some(name)) = (
        path.parent(),
        pid_file(path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned()),
    ) else {
        return;
    };
    let new = crate::safe_fs::NewFile {
        mode: 0o644,
        owner: None,
    };
    if let Err(e) = crate::safe_fs::replace_file(dir, &name, new, |f| {
        use std::io::Write as _;
        writeln!(f, "{}", std::process::id())
    }) {
        tracing::warn!(error = %crate::error::Chain(&e), "cannot note this daemon's pid beside the block store");
    }
}

/// One change to the store.
#[derive(Clone, Debug)]
pub enum StoreOp {
    /// Insert or replace a source's block.
    Put(Record),
    /// Remove a source's block.
    Delete(Target, Source),
    /// Insert or replace a CLI allowlist entry.
    PutAllow(Target, AllowOrigin),
    /// Remove a CLI allowlist entry.
    DeleteAllow(Target),
    /// Insert or replace a pending block.
    PutPending(PendingBlock),
    /// Remove a pending block.
    DeletePending(u64),
    /// Record a target's offense times (empty = forget).
    PutOffenses(Target, Vec<WallMs>),
    /// The id the next pending block gets.
    SetNextPending(u64),
    /// The time base of the stored deadlines.
    SetTimeBase(TimeBase),
    /// Remember an applied request's id.
    PutRequest(AppliedRequest),
    /// Forget an id.
    DeleteRequest(RequestKey),
    /// Queue a publication at this position.
    PutOutbox(u64, Publication),
    /// Remove a publication from the queue.
    DeleteOutbox(u64),
    /// The LAPI decision ids of a published block (empty: forget it).
    PutPublished(Target, Source, Vec<i64>),
}

/// The source of a block row's operation (the second half of its key).
fn block_source(op: &StoreOp) -> &str {
    match op {
        StoreOp::Put(r) => r.block.source.as_str(),
        StoreOp::Delete(_, source) => source.as_str(),
        _ => "",
    }
}

/// The tables a commit writes besides the blocks.
struct SideTables<'txn> {
    allow: redb::Table<'txn, &'static str, &'static [u8]>,
    pending: redb::Table<'txn, u64, &'static [u8]>,
    offenses: redb::Table<'txn, &'static str, &'static [u8]>,
    meta: redb::Table<'txn, &'static str, &'static [u8]>,
    requests: redb::Table<'txn, &'static str, &'static [u8]>,
    outbox: redb::Table<'txn, u64, &'static [u8]>,
    published: redb::Table<'txn, (&'static str, &'static str), &'static [u8]>,
}

/// The block store.
pub struct Store {
    db: Database,
    path: PathBuf,
    /// A commit failed (disk full, I/O error): redb refuses further writes on this handle, so
    /// the next commit reopens the database first, and the daemon recovers without a restart.
    poisoned: bool,
    /// Durable transactions committed through this handle: one fsync'd commit record each.
    /// Shared, so that the metrics read it at scrape time without asking the engine.
    commits: Arc<AtomicU64>,
}

impl Store {
    /// Opens (or creates) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = open_waiting(path)?;
        write_pid_file(path);
        let mut store = Self {
            db,
            path: path.to_owned(),
            poisoned: false,
            commits: Arc::default(),
        };
        // Create the table so that reads of an empty store work.
        store.commit(&[])?;
        Ok(store)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db_err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Applies `ops` in one durable transaction (fsynced before this returns). Either all of
    /// them are durable, or none.
    pub fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        if self.poisoned {
            // Drop the old handle first: redb locks the file.
            let placeholder = Database::builder()
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .map_err(|e| self.db_err(e))?;
            drop(std::mem::replace(&mut self.db, placeholder));
            self.db = open_db(&self.path).map_err(|e| self.db_err(e))?;
            self.poisoned = false;
            tracing::info!(path = %self.path.display(), "reopened the block store after an earlier failure");
        }
        let result = self.commit_inner(ops);
        match result {
            Ok(()) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => self.poisoned = true,
        }
        result
    }

    /// The count of durable commits made through this handle (each one fsync of a commit
    /// record), counted where the commit returns: what `enforcer_store_commits_total` shows.
    pub fn commits(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.commits)
    }

    fn commit_inner(&self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut table = txn.open_table(BLOCKS).map_err(|e| self.db_err(e))?;
            self.write_blocks(&mut table, ops)?;
            let mut tables = SideTables {
                allow: txn.open_table(ALLOW).map_err(|e| self.db_err(e))?,
                pending: txn.open_table(PENDING).map_err(|e| self.db_err(e))?,
                offenses: txn.open_table(OFFENSES).map_err(|e| self.db_err(e))?,
                meta: txn.open_table(META).map_err(|e| self.db_err(e))?,
                requests: txn.open_table(REQUESTS).map_err(|e| self.db_err(e))?,
                outbox: txn.open_table(OUTBOX).map_err(|e| self.db_err(e))?,
                published: txn.open_table(PUBLISHED).map_err(|e| self.db_err(e))?,
            };
            for op in ops {
                self.write_side(&mut tables, op)?;
            }
        }
        if let Err(e) = self.before_fsync() {
            // As a failed fsync leaves it: nothing of this transaction is durable.
            txn.abort().ok();
            return Err(e);
        }
        txn.commit().map_err(|e| self.db_err(e))
    }

    /// Debug builds: fault injection between a commit's writes and its fsync. While the file
    /// named by `ENFORCER_TEST_STALL_COMMIT` exists the commit waits (a test can `kill -9` the
    /// daemon there); while the file named by `ENFORCER_TEST_FAIL_COMMIT` exists it fails as a
    /// failed fsync does. Release builds never read them.
    #[cfg(debug_assertions)]
    fn before_fsync(&self) -> Result<(), StoreError> {
        use std::sync::OnceLock;
        static STALL: OnceLock<Option<PathBuf>> = OnceLock::new();
        static FAIL: OnceLock<Option<PathBuf>> = OnceLock::new();
        let named = |var| std::env::var_os(var).map(PathBuf::from);
        if let Some(stall) = STALL.get_or_init(|| named("ENFORCER_TEST_STALL_COMMIT")) {
            while stall.exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        match FAIL.get_or_init(|| named("ENFORCER_TEST_FAIL_COMMIT")) {
            Some(fail) if fail.exists() => {
                Err(self.db_err("fsync failed (injected by ENFORCER_TEST_FAIL_COMMIT)"))
            }
            _ => Ok(()),
        }
    }

    /// Release builds: no fault injection.
    #[cfg(not(debug_assertions))]
    fn before_fsync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Writes the block rows of `ops` in key order. A key's own operations keep their order
    /// (the sort is stable), and rows of different keys are independent. In order, redb fills
    /// each leaf page once; in the order a feed's targets come (hashed), a large commit spills
    /// pages from its write buffer and reads them back, several times as slow.
    fn write_blocks(
        &self,
        table: &mut redb::Table<'_, (&str, &str), &[u8]>,
        ops: &[StoreOp],
    ) -> Result<(), StoreError> {
        let mut rows: Vec<(String, &StoreOp)> = ops
            .iter()
            .filter_map(|op| match op {
                StoreOp::Put(r) => Some((r.target.to_string(), op)),
                StoreOp::Delete(target, _) => Some((target.to_string(), op)),
                _ => None,
            })
            .collect();
        rows.sort_by(|(a, x), (b, y)| {
            (a.as_str(), block_source(x)).cmp(&(b.as_str(), block_source(y)))
        });
        // One buffer for every row's value, not an allocation each.
        let mut value = Vec::with_capacity(256);
        for (key, op) in rows {
            match op {
                StoreOp::Put(r) => {
                    value.clear();
                    serde_json::to_writer(&mut value, &r.block).map_err(|e| self.db_err(e))?;
                    table
                        .insert((key.as_str(), r.block.source.as_str()), value.as_slice())
                        .map_err(|e| self.db_err(e))?;
                }
                StoreOp::Delete(_, source) => {
                    table
                        .remove((key.as_str(), source.as_str()))
                        .map_err(|e| self.db_err(e))?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn json<V: serde::Serialize + ?Sized>(&self, v: &V) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(v).map_err(|e| self.db_err(e))
    }

    /// Writes one operation on the tables other than the blocks.
    fn write_side(&self, t: &mut SideTables<'_>, op: &StoreOp) -> Result<(), StoreError> {
        match op {
            StoreOp::Put(_) | StoreOp::Delete(..) => {}
            StoreOp::SetNextPending(id) => {
                t.meta
                    .insert(META_NEXT_PENDING, self.json(id)?.as_slice())
                    .map_err(|e| self.db_err(e))?;
            }
            StoreOp::SetTimeBase(base) => {
                t.meta
                    .insert(META_TIME_BASE, self.json(base)?.as_slice())
                    .map_err(|e| self.db_err(e))?;
            }
            StoreOp::PutRequest(r) => {
                t.requests
                    .insert(r.key().row().as_str(), self.json(r)?.as_slice())
                    .map_err(|e| self.db_err(e))?;
            }
            StoreOp::PutOutbox(seq, p) => {
                t.outbox
                    .insert(*seq, self.json(p)?.as_slice())
                    .map_err(|e| self.db_err(e))?;
            }
            StoreOp::DeleteOutbox(seq) => {
                t.outbox.remove(*seq).map_err(|e| self.db_err(e))?;
            }
            StoreOp::PutPublished(target, source, ids) => {
                let target = target.to_string();
                let key = (target.as_str(), source.as_str());
                if ids.is_empty() {
                    t.published.remove(key).map_err(|e| self.db_err(e))?;
                } else {
                    t.published
                        .insert(key, self.json(ids)?.as_slice())
                        .map_err(|e| self.db_err(e))?;
                }
            }
            StoreOp::DeleteRequest(key) => {
                t.requests
                    .remove(key.row().as_str())
                    .map_err(|e| self.db_err(e))?;
                if key.uid == 0 {
                    // A row from before the caller was kept, under the bare id.
                    t.requests
                        .remove(key.id.as_str())
                        .map_err(|e| self.db_err(e))?;
                }
            }
            StoreOp::PutAllow(target, v) => {
                t.allow
                    .insert(target.to_string().as_str(), self.json(v)?.as_slice())
                    .map_err(|e| self.db_err(e))?;
            }
            StoreOp::DeleteAllow(target) => {
                t.allow
                    .remove(target.to_string().as_str())
                    .map_err(|e| self.db_err(e))?;
            }
            StoreOp::PutPending(p) => {
                t.pending
                    .insert(p.id, self.json(p)?.as_slice())
                    .map_err(|e| self.db_err(e))?;
            }
            StoreOp::DeletePending(id) => {
                t.pending.remove(*id).map_err(|e| self.db_err(e))?;
            }
            StoreOp::PutOffenses(target, times) if times.is_empty() => {
                t.offenses
                    .remove(target.to_string().as_str())
                    .map_err(|e| self.db_err(e))?;
            }
            StoreOp::PutOffenses(target, times) => {
                t.offenses
                    .insert(target.to_string().as_str(), self.json(times)?.as_slice())
                    .map_err(|e| self.db_err(e))?;
            }
        }
        Ok(())
    }

    /// The CLI allowlist entries.
    pub fn load_allow(&self) -> Result<Vec<(Target, AllowOrigin)>, StoreError> {
        self.load_keyed(ALLOW, "allow")
    }

    /// The offense histories (repeat-offender escalation).
    pub fn load_offenses(&self) -> Result<Vec<(Target, Vec<WallMs>)>, StoreError> {
        self.load_keyed(OFFENSES, "offenses")
    }

    /// The single values (all `None` in a store from before they were kept).
    pub fn load_meta(&self) -> Result<StoreMeta, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let t = txn.open_table(META).map_err(|e| self.db_err(e))?;
        let next_pending_id = match t.get(META_NEXT_PENDING).map_err(|e| self.db_err(e))? {
            Some(v) => Some(self.decode(&format!("meta/{META_NEXT_PENDING}"), v.value())?),
            None => None,
        };
        let time_base = match t.get(META_TIME_BASE).map_err(|e| self.db_err(e))? {
            Some(v) => Some(self.decode(&format!("meta/{META_TIME_BASE}"), v.value())?),
            None => None,
        };
        Ok(StoreMeta {
            next_pending_id,
            time_base,
        })
    }

    /// The remembered request ids.
    pub fn load_requests(&self) -> Result<Vec<AppliedRequest>, StoreError> {
        self.load_values(REQUESTS, "requests")
    }

    /// The publish queue, in order.
    pub fn load_outbox(&self) -> Result<Vec<(u64, Publication)>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let t = txn.open_table(OUTBOX).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            let seq = k.value();
            out.push((seq, self.decode(&format!("outbox/{seq}"), v.value())?));
        }
        Ok(out)
    }

    /// The published blocks' LAPI decision ids.
    pub fn load_published(&self) -> Result<Vec<(Target, Source, Vec<i64>)>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let t = txn.open_table(PUBLISHED).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            let (target, source) = k.value();
            let key = format!("published/{target}/{source}");
            let target: Target = target
                .parse()
                .map_err(|e: crate::TargetError| self.corrupt(&key, e))?;
            let source: Source = source.parse().map_err(|e| self.corrupt(&key, e))?;
            out.push((target, source, self.decode(&key, v.value())?));
        }
        Ok(out)
    }

    /// The blocks waiting for approval.
    pub fn load_pending(&self) -> Result<Vec<PendingBlock>, StoreError> {
        self.load_values(PENDING, "pending")
    }

    /// Every value of a table, decoded as `V` (a bad row is named `name/<key>`).
    fn load_values<K, V>(
        &self,
        def: TableDefinition<'_, K, &[u8]>,
        name: &str,
    ) -> Result<Vec<V>, StoreError>
    where
        K: redb::Key + 'static,
        for<'a> K::SelfType<'a>: std::fmt::Display,
        V: serde::de::DeserializeOwned,
    {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let t = txn.open_table(def).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            out.push(self.decode(&format!("{name}/{}", k.value()), v.value())?);
        }
        Ok(out)
    }

    /// A table keyed by target, each value decoded as `V`.
    fn load_keyed<V: serde::de::DeserializeOwned>(
        &self,
        def: TableDefinition<'_, &str, &[u8]>,
        name: &str,
    ) -> Result<Vec<(Target, V)>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let t = txn.open_table(def).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for row in t.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            let key = format!("{name}/{}", k.value());
            let target: Target = k
                .value()
                .parse()
                .map_err(|e: crate::TargetError| self.corrupt(&key, e))?;
            out.push((target, self.decode(&key, v.value())?));
        }
        Ok(out)
    }

    fn decode<V: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        bytes: &[u8],
    ) -> Result<V, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| self.corrupt(key, e))
    }

    fn corrupt(&self, key: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            key: key.to_owned(),
            message: e.to_string(),
        }
    }

    /// Every stored block.
    pub fn load_all(&self) -> Result<Vec<Record>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = txn.open_table(BLOCKS).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            let (target, source) = k.value();
            let corrupt = |message: String| StoreError::Corrupt {
                path: self.path.clone(),
                key: format!("{target}/{source}"),
                message,
            };
            let target: Target = target
                .parse()
                .map_err(|e: crate::TargetError| corrupt(e.to_string()))?;
            let block: SourceBlock =
                serde_json::from_slice(v.value()).map_err(|e| corrupt(e.to_string()))?;
            out.push(Record { target, block });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        block::{Mode, Reason},
        time::testing::wall,
    };

    fn record(target: &str, source: &str, expires: Option<u64>) -> Record {
        Record {
            target: target.parse().unwrap(),
            block: SourceBlock {
                source: source.parse().unwrap(),
                reason: Arc::new(Reason::text("test")),
                created_ms: wall(1),
                updated_ms: wall(1),
                expires_ms: expires.map(wall),
                mode: Mode::Enforce,
                scope: Default::default(),
            },
        }
    }

    #[test]
    fn records_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blocks.redb");
        {
            let mut store = Store::open(&path).unwrap();
            store
                .commit(&[
                    StoreOp::Put(record("192.0.2.1", "cli", Some(10))),
                    StoreOp::Put(record("192.0.2.1", "wazuh", None)),
                    StoreOp::Put(record("2001:db8::/48", "cli", Some(20))),
                ])
                .unwrap();
            store
                .commit(&[StoreOp::Delete("192.0.2.1".parse().unwrap(), Source::cli())])
                .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let mut all = store.load_all().unwrap();
        all.sort_by(|a, b| (a.target, &a.block.source).cmp(&(b.target, &b.block.source)));
        assert_eq!(
            all,
            vec![
                record("192.0.2.1", "wazuh", None),
                record("2001:db8::/48", "cli", Some(20))
            ]
        );
    }

    #[test]
    fn one_commit_keeps_the_order_of_each_rows_operations_in_any_order_of_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("blocks.redb")).unwrap();
        let gone: Target = "192.0.2.10".parse().unwrap();
        store
            .commit(&[
                StoreOp::Put(record("198.51.100.7", "cli", Some(1))),
                StoreOp::Put(record("192.0.2.10", "cli", Some(1))),
                StoreOp::Delete(gone, Source::cli()),
                StoreOp::Delete("192.0.2.9".parse().unwrap(), Source::cli()),
                StoreOp::Put(record("192.0.2.9", "cli", Some(2))),
                StoreOp::Put(record("198.51.100.7", "cli", Some(3))),
                StoreOp::SetNextPending(4),
                StoreOp::Put(record("2001:db8::1", "wazuh", None)),
            ])
            .unwrap();
        let mut all = store.load_all().unwrap();
        all.sort_by(|a, b| (a.target, &a.block.source).cmp(&(b.target, &b.block.source)));
        assert_eq!(
            all,
            vec![
                record("192.0.2.9", "cli", Some(2)),
                record("198.51.100.7", "cli", Some(3)),
                record("2001:db8::1", "wazuh", None)
            ]
        );
        assert_eq!(store.load_meta().unwrap().next_pending_id, Some(4));
    }

    #[test]
    fn a_store_from_before_the_meta_table_opens_with_its_blocks_and_no_meta() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blocks.redb");
        {
            // What an older daemon wrote: the blocks table alone.
            let db = open_db(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(BLOCKS).unwrap();
                let r = record("192.0.2.1", "cli", Some(10));
                let v = serde_json::to_vec(&r.block).unwrap();
                t.insert(("192.0.2.1", "cli"), v.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.load_meta().unwrap(), StoreMeta::default());
        assert_eq!(
            store.load_all().unwrap(),
            vec![record("192.0.2.1", "cli", Some(10))]
        );
        let base = TimeBase {
            boot_id: "b".into(),
            wall_minus_boot_ms: -5,
        };
        store
            .commit(&[
                StoreOp::SetNextPending(7),
                StoreOp::SetTimeBase(base.clone()),
            ])
            .unwrap();
        drop(store);
        let meta = Store::open(&path).unwrap().load_meta().unwrap();
        assert_eq!(
            meta,
            StoreMeta {
                next_pending_id: Some(7),
                time_base: Some(base)
            }
        );
    }

    #[test]
    fn a_block_stored_before_scopes_reads_as_the_whole_address_and_a_scoped_one_keeps_its_scope() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blocks.redb");
        {
            // The bytes a daemon from before scopes (ea8eb6c and older) wrote for a block.
            let db = open_db(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(BLOCKS).unwrap();
                let v = br#"{"source":"fail2ban","reason":{"text":"sshd"},"created_ms":1,"updated_ms":1,"expires_ms":10,"mode":"enforce"}"#;
                t.insert(("192.0.2.1", "fail2ban"), v.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let mut store = Store::open(&path).unwrap();
        let all = store.load_all().unwrap();
        assert_eq!(all.len(), 1);
        assert!(all[0].block.scope.is_whole(), "{all:?}");
        let mut scoped = record("192.0.2.2", "fail2ban", Some(10));
        scoped.block.scope = crate::scope::ScopeSet::of(
            &crate::scope::Scope::parse(Some("tcp"), Some("22,2222"), None).unwrap(),
        );
        store.commit(&[StoreOp::Put(scoped.clone())]).unwrap();
        drop(store);
        let all = Store::open(&path).unwrap().load_all().unwrap();
        assert_eq!(all[1], scoped);
        assert_eq!(all[1].block.scope.to_string(), "tcp/22,2222");
    }
}
