//! The spool: triggers that arrived while no daemon was answering, kept on disk until it starts.
//!
//! A hook that cannot reach the daemon (stopped, restarting, not yet started at boot) writes its
//! request to `<state dir>/spool/` instead of dropping it: one JSON file per trigger, holding the
//! request and the time it was made, written under a temporary name, fsynced and renamed into
//! place, so the daemon never reads half a file. The directory is mode 0700: what is in it is
//! applied with the daemon's authority.
//!
//! The daemon drains the spool at start (and every few seconds while it runs, for hooks that
//! timed out against a busy daemon), after reconciling the maps with the store and before
//! serving anyone else: each request is applied in the order it was spooled, then its file is
//! deleted. A block's TTL counts from when it was spooled, not from when it is applied (a block
//! spooled 50 minutes ago with a one-hour TTL gets ten minutes; one already past its end is
//! dropped). A file that cannot be read is renamed to `*.bad` and left for a person to look at.
//!
//! The socket is bound before the drain starts, so a hook that runs meanwhile queues on it
//! instead of spooling a file the drain might no longer see.
//!
//! ```text
//! {"v":1,"spooled_ms":1764262800000,"request":{"op":"block","target":"192.0.2.10","ttl_secs":600,"source":"wazuh",...}}
//! ```

use std::{
    fs, io,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc::SyncSender,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{engine::Command, refusal::Refusal};
use crate::{
    block::{UnixMillis, now_ms},
    protocol::{BatchRequest, BlockRequest, Request},
};

/// The spool's directory under the state directory.
pub const SPOOL_DIR: &str = "spool";

/// The version of the file format.
pub const SPOOL_VERSION: u32 = 1;

/// Leftover temporary files older than this belong to a writer that died; they are removed.
const STALE_TMP: Duration = Duration::from_secs(60);

/// One spooled trigger.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Spooled {
    /// Format version.
    pub v: u32,
    /// When the trigger was made (Unix ms).
    pub spooled_ms: UnixMillis,
    /// What it asked for.
    pub request: Request,
}

/// The spool directory of a state directory.
pub fn spool_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(SPOOL_DIR)
}

/// Spools `request`, made now. Returns the file written.
pub fn write(state_dir: &Path, request: &Request) -> io::Result<PathBuf> {
    write_entry(
        state_dir,
        &Spooled {
            v: SPOOL_VERSION,
            spooled_ms: now_ms(),
            request: request.clone(),
        },
    )
}

/// Spools one entry atomically (temporary file, fsync, rename, fsync of the directory).
pub fn write_entry(state_dir: &Path, entry: &Spooled) -> io::Result<PathBuf> {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let dir = spool_dir(state_dir);
    fs::DirBuilder::new().recursive(true).mode(0o750).create(state_dir)?;
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    // Names sort in spooling order: the time first, zero-padded.
    let name = format!(
        "{:016}-{}-{}.json",
        entry.spooled_ms,
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let tmp = dir.join(format!(".tmp-{name}"));
    let path = dir.join(&name);
    let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
    line.push(b'\n');
    let result = (|| {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(&line)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| path)
}

/// The spooled files, oldest first.
pub fn pending(state_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = spool_dir(state_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".tmp-") {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > STALE_TMP);
            if stale {
                let _ = fs::remove_file(entry.path());
            }
        } else if name.ends_with(".json") {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

/// How many requests wait in the spool (read-only: for the metrics endpoint).
pub fn depth(state_dir: &Path) -> io::Result<u64> {
    match fs::read_dir(spool_dir(state_dir)) {
        Ok(entries) => Ok(entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .count() as u64),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// The TTL a block gets when its request names none: the source's own default, else the
/// global one (as the policy would choose).
#[derive(Clone, Debug, Default)]
pub struct DefaultTtls {
    /// The daemon's `default_ttl`.
    pub global: Duration,
    /// `[policy.sources.NAME] default_ttl`.
    pub per_source: std::collections::BTreeMap<crate::block::Source, Duration>,
}

impl DefaultTtls {
    /// The default TTL of `source`.
    pub fn for_source(&self, source: &crate::block::Source) -> Duration {
        self.per_source.get(source).copied().unwrap_or(self.global)
    }
}

/// The request to apply now for a trigger spooled at `spooled_ms`, or `None` when every block
/// in it has already ended. TTLs count from the spooling time; the source's default TTL stands
/// in for a request that left the TTL to the daemon.
pub fn adjust(request: Request, spooled_ms: UnixMillis, now: UnixMillis, defaults: &DefaultTtls) -> Option<Request> {
    let elapsed = now.saturating_sub(spooled_ms);
    let source = match &request {
        Request::Block(b) => Some(b.source.clone()),
        Request::BlockBatch(b) => Some(b.source.clone()),
        _ => None,
    };
    let default_ttl = source.map_or(defaults.global, |s| defaults.for_source(&s));
    let left = |ttl_secs: Option<u64>| -> Option<u64> {
        let ttl_ms = ttl_secs.map_or(default_ttl.as_millis() as u64, |s| s.saturating_mul(1000));
        let left_ms = ttl_ms.checked_sub(elapsed).filter(|&ms| ms > 0)?;
        Some(left_ms.div_ceil(1000))
    };
    match request {
        Request::Block(b) if b.permanent => Some(Request::Block(b)),
        Request::Block(b) => left(b.ttl_secs).map(|ttl| {
            Request::Block(BlockRequest {
                ttl_secs: Some(ttl),
                ..b
            })
        }),
        Request::BlockBatch(b) => {
            let items: Vec<_> = b
                .items
                .into_iter()
                .filter_map(|mut item| {
                    item.ttl_secs = Some(left(item.ttl_secs.or(b.ttl_secs))?);
                    Some(item)
                })
                .collect();
            (!items.is_empty()).then_some(Request::BlockBatch(BatchRequest { items, ..b }))
        }
        other => Some(other),
    }
}

/// What a drain did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Requests the engine accepted.
    pub applied: usize,
    /// Blocks whose TTL ran out while spooled (dropped).
    pub expired: usize,
    /// Requests the engine answered with an error (the file is removed all the same).
    pub refused: usize,
    /// Files that could not be read (renamed to `*.bad`).
    pub unreadable: usize,
}

/// Applies every spooled request through the engine, in order, and removes the files.
///
/// The engine is running; nobody else is served yet. All requests are queued before the first
/// answer is awaited, so they share durable rounds, and the channel keeps their order.
pub async fn drain(state_dir: &Path, engine: &SyncSender<Command>, defaults: &DefaultTtls) -> Drained {
    let mut done = Drained::default();
    let files = match pending(state_dir) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(dir = %spool_dir(state_dir).display(), error = %e, "cannot read the spool; spooled triggers are not applied");
            return done;
        }
    };
    let now = now_ms();
    let mut waiting = Vec::new();
    for path in files {
        let entry = fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| serde_json::from_slice::<Spooled>(&bytes).map_err(|e| e.to_string()))
            .and_then(|s| match s.request {
                Request::Block(_) | Request::BlockBatch(_) | Request::Unblock { .. } => Ok(s),
                _ => Err("only block and unblock requests can be spooled".to_owned()),
            });
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let bad = path.with_extension("json.bad");
                tracing::warn!(file = %path.display(), error = %e, moved_to = %bad.display(), "unreadable spool file");
                let _ = fs::rename(&path, &bad);
                done.unreadable += 1;
                continue;
            }
        };
        let Some(request) = adjust(entry.request, entry.spooled_ms, now, defaults) else {
            tracing::info!(file = %path.display(), "spooled block ended while the daemon was down; dropped");
            let _ = fs::remove_file(&path);
            done.expired += 1;
            continue;
        };
        let (reply, answer) = oneshot::channel();
        // Only root can write the spool directory (0700): its requests are applied as the daemon.
        if engine.send(Command::internal("spool", request, reply)).is_err() {
            tracing::error!("the engine stopped while draining the spool; the rest stays spooled");
            break;
        }
        waiting.push((path, answer));
    }
    for (path, answer) in waiting {
        match answer.await {
            Ok(Ok(_)) => done.applied += 1,
            Ok(Err(refusal)) if matches!(refusal, Refusal::Store(_) | Refusal::Kernel(_) | Refusal::MapFull { .. }) => {
                // Not a verdict on the request (the store failed, a map is full): keep it and
                // try again at the next drain.
                tracing::warn!(file = %path.display(), "spooled request not applied yet, kept for the next drain: {}", refusal.to_body().message);
                continue;
            }
            Ok(Err(refusal)) => {
                tracing::warn!(file = %path.display(), "spooled request refused: {}", refusal.to_body().message);
                done.refused += 1;
            }
            Err(_) => {
                tracing::error!(file = %path.display(), "no answer from the engine; left in the spool");
                continue;
            }
        }
        if let Err(e) = fs::remove_file(&path) {
            tracing::error!(file = %path.display(), error = %e, "cannot remove an applied spool file; it will be applied again at the next start");
        }
    }
    if done != Drained::default() {
        tracing::info!(
            applied = done.applied,
            expired = done.expired,
            refused = done.refused,
            unreadable = done.unreadable,
            "drained the spool"
        );
    }
    done
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::{
        block::{Reason, Source},
        protocol::BatchItem,
    };

    const H: u64 = 3_600_000;

    fn block(ttl_secs: Option<u64>) -> Request {
        Request::Block(BlockRequest {
            target: "192.0.2.10".parse().unwrap(),
            ttl_secs,
            permanent: false,
            source: "wazuh".parse().unwrap(),
            reason: Reason::default(),
            shadow: false,
            force: false,
        })
    }

    fn ttl(r: Option<Request>) -> Option<u64> {
        match r? {
            Request::Block(b) => b.ttl_secs,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_blocks_ttl_counts_from_when_it_was_spooled() {
        let d = &DefaultTtls {
            global: Duration::from_secs(600),
            ..DefaultTtls::default()
        };
        assert_eq!(ttl(adjust(block(Some(3600)), 0, H - 600_000, d)), Some(600));
        assert_eq!(ttl(adjust(block(Some(3600)), 0, 1, d)), Some(3600), "rounded up, never to zero");
        assert_eq!(ttl(adjust(block(Some(3600)), 0, H, d)), None, "already over");
        assert_eq!(ttl(adjust(block(Some(3600)), 0, 2 * H, d)), None);
        assert_eq!(ttl(adjust(block(None), 0, 60_000, d)), Some(540), "the daemon's default TTL");
        assert_eq!(ttl(adjust(block(Some(60)), 10_000, 0, d)), Some(60), "a clock that went back");
        // The source's own default wins over the global one.
        let source = match block(None) {
            Request::Block(b) => b.source,
            _ => unreachable!(),
        };
        let per_source = &DefaultTtls {
            global: Duration::from_secs(3600),
            per_source: [(source, Duration::from_secs(600))].into_iter().collect(),
        };
        assert_eq!(ttl(adjust(block(None), 0, 60_000, per_source)), Some(540));
    }

    #[test]
    fn batches_lose_only_their_ended_items_and_unblocks_pass_through() {
        let batch = Request::BlockBatch(BatchRequest {
            items: vec![
                BatchItem { target: "192.0.2.1".parse().unwrap(), ttl_secs: Some(60) },
                BatchItem { target: "192.0.2.2".parse().unwrap(), ttl_secs: None },
            ],
            ttl_secs: Some(3600),
            source: Source::cli(),
            reason: Reason::default(),
            shadow: false,
        });
        let Some(Request::BlockBatch(b)) = adjust(batch, 0, 120_000, &DefaultTtls { global: Duration::from_secs(1), ..DefaultTtls::default() }) else { panic!() };
        assert_eq!(b.items.len(), 1);
        assert_eq!(b.items[0].ttl_secs, Some(3480));
        let unblock = Request::Unblock { target: "192.0.2.1".parse().unwrap(), source: None, all: false };
        assert!(matches!(adjust(unblock, 0, 10 * H, &DefaultTtls { global: Duration::from_secs(1), ..DefaultTtls::default() }), Some(Request::Unblock { .. })));
    }

    #[test]
    fn entries_are_written_whole_in_order_in_a_private_directory() {
        let state = tempfile::tempdir().unwrap();
        let state_dir = state.path().join("state");
        for (ms, t) in [(2000, Some(2)), (1000, Some(1)), (3000, Some(3))] {
            write_entry(&state_dir, &Spooled { v: 1, spooled_ms: ms, request: block(t) }).unwrap();
        }
        let mode = fs::metadata(spool_dir(&state_dir)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let files = pending(&state_dir).unwrap();
        let ttls: Vec<_> = files
            .iter()
            .map(|f| serde_json::from_slice::<Spooled>(&fs::read(f).unwrap()).unwrap())
            .map(|s| ttl(Some(s.request)))
            .collect();
        assert_eq!(ttls, [Some(1), Some(2), Some(3)]);
        // No temporary file is left behind, and a fresh one (a writer at work) is not touched.
        fs::write(spool_dir(&state_dir).join(".tmp-x.json"), b"{").unwrap();
        assert_eq!(pending(&state_dir).unwrap().len(), 3);
        assert!(spool_dir(&state_dir).join(".tmp-x.json").exists());
        assert_eq!(pending(&state.path().join("none")).unwrap(), Vec::<PathBuf>::new());
    }
}
