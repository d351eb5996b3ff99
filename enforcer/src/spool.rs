//! The spool: triggers that arrived while no daemon was answering, kept on disk until it starts.
//!
//! A hook that cannot reach the daemon (stopped, restarting, not yet started at boot) writes its
//! request to `<state dir>/spool/` instead of dropping it: one JSON file per trigger, holding the
//! request and the time it was made, written under a temporary name, fsynced and renamed into
//! place, so the daemon never reads half a file. The directory is mode 0700: what is in it is
//! applied with the daemon's authority.
//!
//! The daemon drains the spool ([`crate::daemon::spool_drain`]) at start (and every few seconds while it runs, for hooks that
//! timed out against a busy daemon), after reconciling the maps with the store and before
//! serving anyone else: each request is applied in the order it was spooled, then its file is
//! deleted. A block's TTL counts from when it was spooled, not from when it is applied (a block
//! spooled 50 minutes ago with a one-hour TTL gets ten minutes; one already past its end is
//! dropped). A file that cannot be read is renamed to `*.bad` and left for a person to look at.
//!
//! **Order.** A file is named `<spooled_ms>-<pid>-<seq>.json`, each part a zero-padded decimal
//! (20, 10 and 10 digits): the time, the writing process and a counter in that process. The
//! drain sorts on the parsed numbers, never on the strings (hooks before zero-padding wrote the
//! pid and counter unpadded; their files sort right too), so the entries one process wrote in
//! one millisecond are applied in the order it wrote them. Entries of different processes in
//! the same millisecond were made concurrently; they go by pid.
//!
//! **Replays are charged at their spool time.** The rate limiter sees a replayed trigger at the
//! time it was spooled, not at the drain: a backlog of ten minutes meets the rate it arrived
//! at, and a backlog that really passed the rate opens the breaker as it would have then. A
//! replay the policy refuses is audited with its reason, spool time and file
//! (`"spooled_ms"`, `"spool_file"` in the audit line), then its file is removed.
//!
//! **Replays are idempotent.** Every entry carries the request id of the attempt that could not
//! be delivered (entries from older hooks are named by their file name instead). The daemon
//! remembers the ids it applied, in the store, in the same transaction as their effect: a file
//! that could not be deleted after it was applied, or a request that a timed-out hook spooled
//! but that reached the daemon after all, is answered as already applied and changes nothing.
//!
//! The socket is bound before the drain starts, so a hook that runs meanwhile queues on it
//! instead of spooling a file the drain might no longer see.
//!
//! ```text
//! {"v":1,"spooled_ms":1764262800000,"request_id":"9f0c...","request":{"op":"block","target":"192.0.2.10","ttl_secs":600,"source":"wazuh",...}}
//! ```

use std::{
    fs, io,
    io::Write as _,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    protocol::{Request, RequestId},
    time::WallMs,
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
    pub spooled_ms: WallMs,
    /// The request id of the attempt that could not be delivered (absent in entries of older
    /// hooks: the file name stands in for it). `request_id` in the file, as on the wire.
    #[serde(
        default,
        rename = "request_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<RequestId>,
    /// What it asked for.
    pub request: Request,
}

/// Where a spool file sorts: its time, the process that wrote it and that process's counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpoolKey {
    /// When it was spooled (Unix ms).
    pub spooled_ms: WallMs,
    /// The writer's pid.
    pub pid: u32,
    /// The writer's counter.
    pub seq: u64,
}

impl SpoolKey {
    /// The file name of this key: every part zero-padded, so names also sort as strings.
    pub fn file_name(&self) -> String {
        format!(
            "{:020}-{:010}-{:010}.json",
            self.spooled_ms.unix_ms(),
            self.pid,
            self.seq
        )
    }

    /// The key of a spool file's name (padded or not); `None` if it is not one.
    pub fn parse(name: &str) -> Option<Self> {
        let mut parts = name.strip_suffix(".json")?.split('-');
        let number = |p: Option<&str>| -> Option<u64> {
            p.filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))?
                .parse()
                .ok()
        };
        let key = Self {
            spooled_ms: WallMs::from_unix_ms(number(parts.next())?),
            pid: number(parts.next())?.try_into().ok()?,
            seq: number(parts.next())?,
        };
        parts.next().is_none().then_some(key)
    }
}

/// The id a spooled entry is applied under: its own, or one made of its file name (entries of
/// older hooks), so that a file applied twice is still applied once.
pub fn replay_id(entry_id: Option<RequestId>, file_name: &str) -> Option<RequestId> {
    entry_id.or_else(|| format!("spool:{file_name}").parse().ok())
}

/// Why a spool file's contents cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// Not a spool entry: not JSON, or fields missing or invalid.
    #[error("not a spool entry: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A request other than block, block_batch or unblock.
    #[error("only block and unblock requests can be spooled, not `{0}`")]
    NotSpoolable(&'static str),
}

/// Parses the contents of one spool file, as the drain reads it.
pub fn parse_entry(bytes: &[u8]) -> Result<Spooled, EntryError> {
    let entry: Spooled = serde_json::from_slice(bytes)?;
    match entry.request {
        Request::Block(_) | Request::BlockBatch(_) | Request::Unblock { .. } => Ok(entry),
        ref other => Err(EntryError::NotSpoolable(other.op())),
    }
}

/// The spool directory of a state directory.
pub fn spool_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(SPOOL_DIR)
}

/// Refuses a spool directory that is a symbolic link, that others may write, or that another
/// user owns (its files are applied as root's requests). Used by the writer and at start.
pub fn check_dir(state_dir: &Path) -> Result<(), crate::safe_fs::SafeFsError> {
    crate::safe_fs::check_private_dir_no_follow(&spool_dir(state_dir))
}

/// Spools `request`, made now, under the id of the attempt that could not deliver it. Returns
/// the file written.
pub fn write(state_dir: &Path, request: &Request, id: &RequestId) -> io::Result<PathBuf> {
    write_entry(
        state_dir,
        &Spooled {
            v: SPOOL_VERSION,
            spooled_ms: WallMs::now(),
            id: Some(id.clone()),
            request: request.clone(),
        },
    )
}

/// Spools one entry atomically (temporary file, fsync, rename, fsync of the directory).
pub fn write_entry(state_dir: &Path, entry: &Spooled) -> io::Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = spool_dir(state_dir);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(state_dir)?;
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    check_dir(state_dir)?;
    let name = SpoolKey {
        spooled_ms: entry.spooled_ms,
        pid: std::process::id(),
        seq: SEQ.fetch_add(1, Ordering::Relaxed),
    }
    .file_name();
    let mut line = serde_json::to_vec(entry).map_err(io::Error::other)?;
    line.push(b'\n');
    let new = crate::safe_fs::NewFile {
        mode: 0o600,
        owner: None,
    };
    Ok(crate::safe_fs::replace_file(&dir, &name, new, |f| {
        f.write_all(&line)
    })?)
}

/// The spooled files, oldest first: in the order of their parsed [`SpoolKey`]s (files with
/// names of another form last, by name).
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
                // Best effort: a stale temporary file is tried again at the next scan.
                fs::remove_file(entry.path()).ok();
            }
        } else if name.ends_with(".json") {
            files.push(entry.path());
        }
    }
    Ok(in_spool_order(files))
}

/// Sorts spool files on their parsed keys, never on the strings.
fn in_spool_order(files: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut keyed: Vec<(Option<SpoolKey>, PathBuf)> = files
        .into_iter()
        .map(|f| {
            (
                f.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(SpoolKey::parse),
                f,
            )
        })
        .collect();
    // `None` sorts first; files without a key go last.
    keyed.sort_by(|(ka, a), (kb, b)| (ka.is_none(), ka, a).cmp(&(kb.is_none(), kb, b)));
    keyed.into_iter().map(|(_, f)| f).collect()
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

/// Spooled requests for the unit tests of the spool and its drain.
#[cfg(test)]
pub(crate) mod testing {
    use crate::{
        block::Reason,
        protocol::{BlockRequest, Request},
    };

    /// A Wazuh block of 192.0.2.10 for `ttl_secs`.
    pub(crate) fn block(ttl_secs: Option<u64>) -> Request {
        Request::Block(BlockRequest {
            target: "192.0.2.10".parse().unwrap(),
            ttl_secs,
            permanent: false,
            source: "wazuh".parse().unwrap(),
            reason: Reason::default(),
            shadow: false,
            force: false,
            scope: Default::default(),
        })
    }

    /// The TTL of a block request (`None`: no request, or one without a TTL).
    pub(crate) fn ttl(r: Option<Request>) -> Option<u64> {
        match r? {
            Request::Block(b) => b.ttl_secs,
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::{
        testing::{block, ttl},
        *,
    };
    use crate::time::testing::wall;

    #[test]
    fn only_block_and_unblock_entries_are_read_from_a_spool_file() {
        let e =
            parse_entry(br#"{"v":1,"spooled_ms":5,"request":{"v":1,"op":"ping"}}"#).unwrap_err();
        assert!(matches!(e, EntryError::NotSpoolable("ping")), "{e:?}");
        assert!(e.to_string().contains("`ping`"), "{e}");
        assert!(matches!(
            parse_entry(b"{\"v\":1,"),
            Err(EntryError::Malformed(_))
        ));
        assert!(matches!(
            parse_entry(br#"{"v":1,"spooled_ms":5}"#),
            Err(EntryError::Malformed(_))
        ));
        let unblock = parse_entry(
            br#"{"v":1,"spooled_ms":5,"request":{"op":"unblock","target":"192.0.2.1"}}"#,
        )
        .unwrap();
        assert_eq!(
            (unblock.spooled_ms, unblock.request.op()),
            (wall(5), "unblock")
        );
    }

    #[test]
    fn entries_are_written_whole_in_order_in_a_private_directory() {
        let state = tempfile::tempdir().unwrap();
        let state_dir = state.path().join("state");
        for (ms, t) in [(2000, Some(2)), (1000, Some(1)), (3000, Some(3))] {
            write_entry(
                &state_dir,
                &Spooled {
                    v: 1,
                    spooled_ms: wall(ms),
                    id: None,
                    request: block(t),
                },
            )
            .unwrap();
        }
        let mode = fs::metadata(spool_dir(&state_dir))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
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
        assert_eq!(
            pending(&state.path().join("none")).unwrap(),
            Vec::<PathBuf>::new()
        );
    }

    #[test]
    fn spool_files_sort_on_their_parsed_keys_padded_or_not() {
        let key = |ms, pid, seq| SpoolKey {
            spooled_ms: ms,
            pid,
            seq,
        };
        assert_eq!(
            key(wall(1_764_262_800_000), 4242, 7).file_name(),
            "00000001764262800000-0000004242-0000000007.json"
        );
        for k in [
            key(wall(0), 0, 0),
            key(wall(u64::MAX), u32::MAX, u64::MAX),
            key(wall(1_764_262_800_000), 4242, 10),
        ] {
            assert_eq!(SpoolKey::parse(&k.file_name()), Some(k));
        }
        // Names of hooks before zero-padding: the pid and counter unpadded.
        assert_eq!(
            SpoolKey::parse("0001764262800000-4242-10.json"),
            Some(key(wall(1_764_262_800_000), 4242, 10))
        );
        for bad in [
            "x.json",
            "1-2.json",
            "1-2-3-4.json",
            "1--3.json",
            "1-2-3",
            "1-+2-3.json",
            "1-99999999999-3.json",
            ".tmp-1-2-3.json",
        ] {
            assert_eq!(SpoolKey::parse(bad), None, "{bad}");
        }
        // One process, one millisecond: the counter decides, as a number ("10" after "9").
        let dir = Path::new("/spool");
        let names = [
            "0001764262800000-4242-10.json",
            "zz-not-a-key.json",
            "0001764262800000-4242-9.json",
            "00000001764262800000-0000004242-0000000011.json",
            "0001764262799999-99999-0.json",
            "0001764262800000-999-12.json",
        ];
        let sorted = in_spool_order(names.iter().map(|n| dir.join(n)).collect());
        let sorted: Vec<_> = sorted
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(
            sorted,
            [
                "0001764262799999-99999-0.json",
                "0001764262800000-999-12.json",
                "0001764262800000-4242-9.json",
                "0001764262800000-4242-10.json",
                "00000001764262800000-0000004242-0000000011.json",
                "zz-not-a-key.json",
            ]
        );
    }

    #[test]
    fn one_process_writes_many_entries_in_one_millisecond_and_they_come_back_in_order() {
        let state = tempfile::tempdir().unwrap();
        for ttl in 1..=25 {
            write_entry(
                state.path(),
                &Spooled {
                    v: 1,
                    spooled_ms: wall(5),
                    id: None,
                    request: block(Some(ttl)),
                },
            )
            .unwrap();
        }
        let ttls: Vec<_> = pending(state.path())
            .unwrap()
            .iter()
            .map(|f| {
                ttl(Some(
                    serde_json::from_slice::<Spooled>(&fs::read(f).unwrap())
                        .unwrap()
                        .request,
                ))
            })
            .collect();
        assert_eq!(ttls, (1..=25).map(Some).collect::<Vec<_>>());
    }

    #[test]
    fn an_entry_is_replayed_under_its_own_id_or_else_one_made_of_its_file_name() {
        let own: RequestId = "9f0c".parse().unwrap();
        assert_eq!(replay_id(Some(own.clone()), "0001-2-3.json"), Some(own));
        assert_eq!(
            replay_id(None, "0001-2-3.json").unwrap().as_str(),
            "spool:0001-2-3.json"
        );
        assert_eq!(replay_id(None, "with space.json"), None);
        // `write` records the id it is given.
        let state = tempfile::tempdir().unwrap();
        let id = RequestId::generate();
        let file = write(state.path(), &block(Some(60)), &id).unwrap();
        let back: Spooled = serde_json::from_slice(&fs::read(file).unwrap()).unwrap();
        assert_eq!(back.id, Some(id));
    }
}
