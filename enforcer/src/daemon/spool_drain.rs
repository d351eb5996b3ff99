//! The spool's drain: the daemon applies what hooks spooled ([`crate::spool`]) while no daemon
//! was answering, in order, through the engine, at start and every few seconds while it runs.
//! TTLs count from the spooling time; replays are charged at their spool time and applied once
//! (by request id). The file format, its order and the writer are in [`crate::spool`].

use std::{fs, path::Path, sync::mpsc::SyncSender, time::Duration};

use tokio::sync::oneshot;

use super::{backlog::Backlog, engine::Command, ledger::Replay, refusal::Refusal};
use crate::{
    protocol::{BatchRequest, BlockRequest, Request},
    spool::{Spooled, parse_entry, pending, replay_id, spool_dir},
    time::WallMs,
};

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
pub fn adjust(
    request: Request,
    spooled_ms: WallMs,
    now: WallMs,
    defaults: &DefaultTtls,
) -> Option<Request> {
    let elapsed = now.saturating_since(spooled_ms).as_millis() as u64;
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

/// How long before a drain's scan a file that scan missed may have been timed: a hook takes
/// the time, then writes and renames its file into place.
const SPOOL_WRITE_SLACK: Duration = Duration::from_secs(10);

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
/// answer is awaited, so they share durable rounds, and the channel keeps their order. Each
/// goes with its request id (a duplicate is answered, not applied again) and its spool time
/// (what the rate limiter charges it at); `backlog` holds the oldest of them until all are
/// judged.
pub async fn drain(
    state_dir: &Path,
    engine: &SyncSender<Command>,
    defaults: &DefaultTtls,
    backlog: &Backlog,
) -> Drained {
    let mut done = Drained::default();
    let scanned = WallMs::now().saturating_sub(SPOOL_WRITE_SLACK);
    let files = match pending(state_dir) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(dir = %spool_dir(state_dir).display(), error = %e, "cannot read the spool; spooled triggers are not applied");
            return done;
        }
    };
    let now = WallMs::now();
    let mut entries = Vec::with_capacity(files.len());
    for path in files {
        match read_entry(&path) {
            Ok(e) => entries.push((path, e)),
            Err(e) => {
                let bad = path.with_extension("json.bad");
                tracing::warn!(file = %path.display(), error = %e, moved_to = %bad.display(), "unreadable spool file");
                if let Err(e) = fs::rename(&path, &bad) {
                    tracing::warn!(
                        file = %path.display(),
                        error = %e,
                        "cannot move the unreadable spool file aside: it is read again at the next drain"
                    );
                }
                done.unreadable += 1;
            }
        }
    }
    // Before the engine sees the first of them: nothing they are judged against is forgotten.
    let oldest = entries.iter().map(|(_, e)| e.spooled_ms).min();
    backlog.hold_from(oldest.map_or(scanned, |o| o.min(scanned)));
    let mut waiting = Vec::new();
    for (path, entry) in entries {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let id = replay_id(entry.id, &name);
        let Some(request) = adjust(entry.request, entry.spooled_ms, now, defaults) else {
            tracing::info!(file = %path.display(), "spooled block ended while the daemon was down; dropped");
            // Left behind, it is dropped again at the next drain (its block has ended).
            fs::remove_file(&path).ok();
            done.expired += 1;
            continue;
        };
        let (reply, answer) = oneshot::channel();
        let replay = Replay {
            spooled_ms: entry.spooled_ms,
            file: name,
        };
        // Only root can write the spool directory (0700): its requests are applied as the daemon.
        let command = match id {
            Some(id) => Command::replay(request, id, replay, reply),
            None => Command {
                replay: Some(replay),
                ..Command::internal("spool", request, reply)
            },
        };
        if engine.send(command).is_err() {
            tracing::error!("the engine stopped while draining the spool; the rest stays spooled");
            break;
        }
        waiting.push((path, entry.spooled_ms, answer));
    }
    // Every file of this scan is judged now, or kept for the next drain: the oldest kept one
    // may still be judged.
    let mut from = scanned;
    for (path, spooled_ms, answer) in waiting {
        if settle(&path, answer.await, &mut done) == Settled::Kept {
            from = from.min(spooled_ms);
        }
    }
    backlog.hold_from(from);
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

/// Reads one spool file (block and unblock requests only).
fn read_entry(path: &Path) -> Result<Spooled, String> {
    fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| parse_entry(&bytes).map_err(|e| e.to_string()))
}

/// What became of a replayed file.
#[derive(Debug, PartialEq, Eq)]
enum Settled {
    /// Judged (applied or refused), or removed.
    Done,
    /// Kept for the next drain.
    Kept,
}

/// Removes a replayed file once the engine gave its verdict (applied, or refused and audited);
/// keeps it when the engine could not decide (store or kernel failure, no answer).
fn settle(
    path: &Path,
    answer: Result<Result<crate::protocol::Reply, Refusal>, oneshot::error::RecvError>,
    done: &mut Drained,
) -> Settled {
    match answer {
        Ok(Ok(_)) => done.applied += 1,
        Ok(Err(refusal))
            if matches!(
                refusal,
                Refusal::Store(_)
                    | Refusal::Kernel(_)
                    | Refusal::MapFull { .. }
                    | Refusal::ShareFull { .. }
                    | Refusal::Reserved { .. }
            ) =>
        {
            // Not a verdict on the request (the store failed, a map is full): keep it and
            // try again at the next drain.
            tracing::warn!(file = %path.display(), "spooled request not applied yet, kept for the next drain: {}", refusal.to_body().message);
            return Settled::Kept;
        }
        Ok(Err(refusal)) => {
            tracing::warn!(file = %path.display(), "spooled request refused (see the audit log): {}", refusal.to_body().message);
            done.refused += 1;
        }
        Err(_) => {
            tracing::error!(file = %path.display(), "no answer from the engine; left in the spool");
            return Settled::Kept;
        }
    }
    if let Err(e) = fs::remove_file(path) {
        tracing::error!(file = %path.display(), error = %e, "cannot remove a replayed spool file; at the next start it is recognised by its request id and not applied again");
    }
    Settled::Done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        block::{Reason, Source},
        protocol::BatchItem,
        spool::testing::{block, ttl},
        time::testing::wall,
    };

    const H: u64 = 3_600_000;

    #[test]
    fn a_blocks_ttl_counts_from_when_it_was_spooled() {
        let d = &DefaultTtls {
            global: Duration::from_secs(600),
            ..DefaultTtls::default()
        };
        assert_eq!(
            ttl(adjust(block(Some(3600)), wall(0), wall(H - 600_000), d)),
            Some(600)
        );
        assert_eq!(
            ttl(adjust(block(Some(3600)), wall(0), wall(1), d)),
            Some(3600),
            "rounded up, never to zero"
        );
        assert_eq!(
            ttl(adjust(block(Some(3600)), wall(0), wall(H), d)),
            None,
            "already over"
        );
        assert_eq!(
            ttl(adjust(block(Some(3600)), wall(0), wall(2 * H), d)),
            None
        );
        assert_eq!(
            ttl(adjust(block(None), wall(0), wall(60_000), d)),
            Some(540),
            "the daemon's default TTL"
        );
        assert_eq!(
            ttl(adjust(block(Some(60)), wall(10_000), wall(0), d)),
            Some(60),
            "a clock that went back"
        );
        // The source's own default wins over the global one.
        let source = match block(None) {
            Request::Block(b) => b.source,
            _ => unreachable!(),
        };
        let per_source = &DefaultTtls {
            global: Duration::from_secs(3600),
            per_source: [(source, Duration::from_secs(600))].into_iter().collect(),
        };
        assert_eq!(
            ttl(adjust(block(None), wall(0), wall(60_000), per_source)),
            Some(540)
        );
    }

    #[test]
    fn batches_lose_only_their_ended_items_and_unblocks_pass_through() {
        let batch = Request::BlockBatch(BatchRequest {
            items: vec![
                BatchItem {
                    target: "192.0.2.1".parse().unwrap(),
                    ttl_secs: Some(60),
                },
                BatchItem {
                    target: "192.0.2.2".parse().unwrap(),
                    ttl_secs: None,
                },
            ],
            ttl_secs: Some(3600),
            source: Source::cli(),
            reason: Reason::default(),
            shadow: false,
            scope: Default::default(),
        });
        let Some(Request::BlockBatch(b)) = adjust(
            batch,
            wall(0),
            wall(120_000),
            &DefaultTtls {
                global: Duration::from_secs(1),
                ..DefaultTtls::default()
            },
        ) else {
            panic!()
        };
        assert_eq!(b.items.len(), 1);
        assert_eq!(b.items[0].ttl_secs, Some(3480));
        let unblock = Request::Unblock {
            target: "192.0.2.1".parse().unwrap(),
            source: None,
            all: false,
            scope: Default::default(),
        };
        assert!(matches!(
            adjust(
                unblock,
                wall(0),
                wall(10 * H),
                &DefaultTtls {
                    global: Duration::from_secs(1),
                    ..DefaultTtls::default()
                }
            ),
            Some(Request::Unblock { .. })
        ));
    }
}
