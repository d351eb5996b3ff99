//! A round: apply a batch of requests to the ledger, write the kernel entries that only add
//! enforcement, commit the store operations once (undoing the ledger and those entries if the
//! commit fails), then write the rest of the kernel and answer.
//!
//! So a trigger drops traffic before its fsync, a block is acknowledged only once it is durable
//! and in force, and concurrent triggers share one fsync. The reaper's expiries go through the
//! same [`commit`].

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use super::{
    kernel_sync::{self, KernelMap},
    ledger::{Applied, Change, Ledger, Write},
    refusal::Refusal,
};
use crate::{
    audit::{Action, Event},
    datapath::MapsError,
    error::Chain,
    protocol::Reply,
    store::{Store, StoreError, StoreOp},
    target::Target,
    time::{BootNs, WallMs},
};

/// The durable store, as a round uses it (an in-memory one stands in for it in unit tests).
pub trait BlockStore {
    /// Applies `ops` atomically and durably, or not at all.
    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError>;
}

impl BlockStore for Store {
    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        Self::commit(self, ops)
    }
}

/// What a committed change did.
#[derive(Debug, Default)]
pub struct Committed {
    /// Targets whose kernel entry could not be written, with why.
    pub failed: BTreeMap<Target, Arc<MapsError>>,
    /// Audit lines to write.
    pub events: Vec<Event>,
    /// Policy refusals (rule, source).
    pub refused: Vec<(&'static str, crate::block::Source)>,
    /// Each touched target's blocks before the change.
    pub before: BTreeMap<Target, Option<crate::block::TargetBlocks>>,
    /// Each touched target whose kernel entry was written, with the boot-clock time its write
    /// returned (before the commit for an early write): when its block was in force.
    pub in_kernel: BTreeMap<Target, BootNs>,
}

/// A change the store refused (the ledger is back as it was).
#[derive(Debug)]
pub struct Failed {
    /// Why.
    pub error: Arc<StoreError>,
    /// The refusal lines, still to audit.
    pub events: Vec<Event>,
    /// Policy refusals (rule, source).
    pub refused: Vec<(&'static str, crate::block::Source)>,
}

/// Commits `change` and makes the kernel match the ledger for every target it touched.
///
/// Enforce first: a write that only adds enforcement (a new block, a longer one, shadow to
/// enforce: [`kernel_sync::only_strengthens`]) goes into the kernel before the commit ends (a
/// large round commits on another thread meanwhile), so a trigger drops traffic without waiting
/// for the fsync; it is acknowledged only after both. Writes
/// that remove or weaken a block, and every round that changes the allowlist, wait for the
/// commit (a block stays in force until its end is durable, and the allowlist always wins).
/// If the store refuses, the ledger is put back, the early kernel writes are taken out again, and
/// only refusal lines are kept for the audit. A crash between the early write and the commit
/// leaves an entry the store does not know; the next start removes it.
pub fn commit<S, K>(
    ledger: &mut Ledger,
    store: &mut S,
    kernel: &mut K,
    mut change: Change,
) -> Result<Committed, Failed>
where
    S: BlockStore + Send + ?Sized,
    K: KernelMap + ?Sized,
{
    // Publications go in the same commit as the block changes they come from.
    let plan = ledger.plan_publications(&change, WallMs::now());
    change.ops.extend(plan.ops());
    let mut failed = BTreeMap::new();
    let (early, early_at, committed) =
        write_early_and_commit(ledger, store, kernel, &change, &mut failed);
    if let Err(e) = committed {
        let events = std::mem::take(&mut change.events)
            .into_iter()
            .filter(|e| matches!(e.action, Action::Refuse | Action::BreakerOpen))
            .collect();
        let refused = std::mem::take(&mut change.refused);
        ledger.undo(change);
        take_back(ledger, kernel, &early);
        return Err(Failed {
            error: Arc::new(e),
            events,
            refused,
        });
    }
    ledger.outbox_mut().apply(plan);
    // Allowlist first: it always wins, so it goes in before the blocks it may cover.
    failed.extend(write_allowlist(ledger, kernel, &change.allow_kernel));
    let base = ledger.time_base().clone();
    let late: Vec<_> = change
        .touched()
        .filter(|(t, _)| !early.contains(*t))
        .map(|(target, known)| wanted(ledger, target, known))
        .collect();
    let late_targets: Vec<Target> = late.iter().map(|w| w.target).collect();
    failed.extend(logged(kernel_sync::sync(kernel, late, &base)));
    let late_at = BootNs::now();
    let in_kernel = early
        .iter()
        .map(|t| (*t, early_at))
        .chain(late_targets.into_iter().map(|t| (t, late_at)))
        .filter(|(t, _)| !failed.contains_key(t))
        .collect();
    Ok(Committed {
        failed,
        before: change.take_before(),
        refused: change.refused,
        events: change.events,
        in_kernel,
    })
}

/// Rounds with at least this many store operations commit on a thread of their own while the
/// kernel is written (an import's request, a feed's sync); smaller ones, a trigger's, do both
/// on the engine thread, which costs less than starting a thread.
const PARALLEL_COMMIT_OPS: usize = 512;

/// Writes the early kernel entries ([`write_early`]) and commits the store; returns when the early
/// entries were in the kernel, and the commit's result. Side by side, for a large round, on two
/// threads (neither reads what the other writes: the kernel writes read
/// the ledger, the commit only `change.ops`). Either way both are done when it returns, so
/// nothing is acknowledged before its commit, and a refused commit still finds every early
/// entry written, to take out again.
fn write_early_and_commit<S, K>(
    ledger: &Ledger,
    store: &mut S,
    kernel: &mut K,
    change: &Change,
    failed: &mut BTreeMap<Target, Arc<MapsError>>,
) -> (BTreeSet<Target>, BootNs, Result<(), StoreError>)
where
    S: BlockStore + Send + ?Sized,
    K: KernelMap + ?Sized,
{
    let ops = &change.ops;
    if ops.len() < PARALLEL_COMMIT_OPS {
        let early = write_early(ledger, kernel, change, failed);
        let early_at = BootNs::now();
        let committed = if ops.is_empty() {
            Ok(())
        } else {
            store.commit(ops)
        };
        return (early, early_at, committed);
    }
    let side_by_side = std::thread::scope(|s| {
        // No thread to be had: one after the other, as a small round does (below).
        let commit = std::thread::Builder::new()
            .name("commit".into())
            .spawn_scoped(s, || store.commit(ops))
            .ok()?;
        let early = write_early(ledger, kernel, change, failed);
        let early_at = BootNs::now();
        // A panic in the commit is the engine's, as when it ran on the engine's thread.
        let committed = commit
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Some((early, early_at, committed))
    });
    side_by_side.unwrap_or_else(|| {
        let early = write_early(ledger, kernel, change, failed);
        let early_at = BootNs::now();
        (early, early_at, store.commit(ops))
    })
}

/// Writes, before the commit, the kernel entries of `change` that only add enforcement; returns
/// the targets it wrote (or tried to: a failure is in `failed`, as after a commit). Nothing when
/// there is no commit to wait for, or when the change touches the allowlist.
fn write_early<K: KernelMap + ?Sized>(
    ledger: &Ledger,
    kernel: &mut K,
    change: &Change,
    failed: &mut BTreeMap<Target, Arc<MapsError>>,
) -> BTreeSet<Target> {
    let mut early = BTreeSet::new();
    if change.ops.is_empty() || !change.allow_kernel.is_empty() {
        return early;
    }
    let base = ledger.time_base().clone();
    let mut writes = Vec::with_capacity(change.touched().len());
    for (target, known) in change.touched() {
        let w = wanted(ledger, target, known);
        if kernel_sync::only_strengthens(
            change.kernel_entry_before(target).as_ref(),
            w.entry.as_ref(),
        ) {
            early.insert(*target);
            writes.push(w);
        }
    }
    failed.extend(logged(kernel_sync::sync(kernel, writes, &base)));
    early
}

/// What the ledger wants `target`'s kernel entry to say.
fn wanted(ledger: &Ledger, target: &Target, known: bool) -> kernel_sync::Wanted {
    kernel_sync::Wanted {
        target: *target,
        entry: ledger.kernel_entry(target),
        known,
    }
}

/// Logs each kernel write that failed, and keeps why.
fn logged(failed: Vec<(Target, MapsError)>) -> impl Iterator<Item = (Target, Arc<MapsError>)> {
    failed.into_iter().map(|(target, e)| {
        tracing::error!(%target, error = %Chain(&e), "writing the kernel map failed");
        (target, Arc::new(e))
    })
}

/// After a refused commit (the ledger already undone): puts each early-written target's kernel
/// entry back to what the ledger says. What cannot be put back is logged; the next start
/// removes it (the store does not know it).
fn take_back<K: KernelMap + ?Sized>(ledger: &Ledger, kernel: &mut K, early: &BTreeSet<Target>) {
    let base = ledger.time_base().clone();
    let back = early.iter().map(|target| wanted(ledger, target, true));
    for (target, e) in kernel_sync::sync(kernel, back, &base) {
        tracing::error!(%target, error = %Chain(&e), "taking an uncommitted block out of the kernel failed; the next start removes it");
    }
}

/// Makes the kernel allowlist match the ledger for `touched` prefixes: every insert first, then
/// the removals, so a prefix the ledger protects is never missing from the kernel in between.
fn write_allowlist<K: KernelMap + ?Sized>(
    ledger: &Ledger,
    kernel: &mut K,
    touched: &BTreeSet<Target>,
) -> BTreeMap<Target, Arc<MapsError>> {
    let mut failed = BTreeMap::new();
    let allow = ledger.allowlist();
    let (kept, gone): (Vec<&Target>, Vec<&Target>) =
        touched.iter().partition(|t| allow.origins(t).is_some());
    for target in kept {
        let origin = allow.origins(target).map_or(0, |o| o[0].to_kernel());
        if let Err(e) = kernel.insert_allow(target, origin) {
            tracing::error!(%target, error = %Chain(&e), "writing the kernel allowlist failed");
            failed.insert(*target, Arc::new(e));
        }
    }
    for target in gone {
        if let Err(e) = kernel.remove_allow(target) {
            tracing::error!(%target, error = %Chain(&e), "writing the kernel allowlist failed");
            failed.insert(*target, Arc::new(e));
        }
    }
    failed
}

/// What a round answers: one result per request, in order, and what it did.
#[derive(Debug)]
pub struct Answered {
    /// The answers.
    pub answers: Vec<Result<Reply, Refusal>>,
    /// Audit lines.
    pub events: Vec<Event>,
    /// Policy refusals (rule, source).
    pub refused: Vec<(&'static str, crate::block::Source)>,
    /// Each touched target's blocks before the round (empty if it was undone).
    pub before: BTreeMap<Target, Option<crate::block::TargetBlocks>>,
    /// Per request, in order: for an accepted one whose kernel entries were written, when the
    /// last of them was in place (boot clock; see [`Committed::in_kernel`]).
    pub in_kernel: Vec<Option<BootNs>>,
}

/// When the last of `touched` was in the kernel; `None` if one was not written (or none was
/// touched).
fn last_in(in_kernel: &BTreeMap<Target, BootNs>, touched: &[Target]) -> Option<BootNs> {
    let at: Option<Vec<BootNs>> = touched.iter().map(|t| in_kernel.get(t).copied()).collect();
    at?.into_iter().max()
}

/// Runs one round over write requests, each with its (already authorized) caller.
pub fn run<S, K>(
    ledger: &mut Ledger,
    store: &mut S,
    kernel: &mut K,
    requests: Vec<Write>,
    now: WallMs,
) -> Answered
where
    S: BlockStore + Send + ?Sized,
    K: KernelMap + ?Sized,
{
    let mut change = Change::default();
    let applied: Vec<Applied> = requests
        .into_iter()
        .map(|w| ledger.apply(&mut change, w, now))
        .collect();
    match commit(ledger, store, kernel, change) {
        Err(Failed {
            error,
            events,
            refused,
        }) => {
            tracing::error!(error = %Chain(&*error), "committing to the store failed; the round was undone");
            let answers: Vec<_> = applied
                .into_iter()
                .map(|a| {
                    if a.wrote {
                        Err(Refusal::Store(error.clone()))
                    } else {
                        a.answer
                    }
                })
                .collect();
            Answered {
                in_kernel: vec![None; answers.len()],
                answers,
                events,
                refused,
                before: BTreeMap::new(),
            }
        }
        Ok(Committed {
            failed,
            events,
            refused,
            before,
            in_kernel,
        }) => {
            let (answers, in_kernel) = applied
                .into_iter()
                .map(|a| match a.touched.iter().find_map(|t| failed.get(t)) {
                    Some(e) if a.answer.is_ok() => (Err(Refusal::Kernel(e.clone())), None),
                    _ => {
                        let at = a.answer.is_ok().then(|| last_in(&in_kernel, &a.touched));
                        (a.answer, at.flatten())
                    }
                })
                .unzip();
            Answered {
                answers,
                events,
                refused,
                before,
                in_kernel,
            }
        }
    }
}
