//! The ledger: every block, deadline, pending approval, offense and allowlist entry, in memory,
//! with the rules that change them. No I/O.
//!
//! Each operation takes a request and the time, and either records what it changed in a
//! [`Change`] (store operations, audit events, the targets whose kernel entry may differ, and
//! what to put back if the store refuses the round) or returns a [`Refusal`] having changed
//! nothing. The round ([`super::round`]) commits a change, or hands it back to
//! [`Ledger::undo`].
//!
//! The merge rules live in [`merge`]: a re-block extends to the later end, keeps the earlier
//! reason when it gives none, and never demotes an enforced block to shadow; several sources
//! block a target independently and the target stays blocked until the last one ends.

mod allow;
mod capacity;
mod clock;
mod networks;
mod offenses;
mod outbox;
mod requests;
mod sync;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    ops::Bound,
    sync::Arc,
    time::Duration,
};

pub use capacity::{Capacity, Shares};
pub use clock::{ClockChange, REBASE_DRIFT_MS, is_step};
pub use offenses::MAX_OFFENDERS;
use offenses::Offenses;
pub use outbox::{Outbox, Plan};
pub use requests::{AppliedIds, MAX_REQUEST_IDS, REQUEST_ID_RETENTION};

use super::refusal::Refusal;
use crate::{
    access::Caller,
    audit::{Action, Event},
    block::{KernelEntry, Mode, Reason, Record, Source, SourceBlock, TargetBlocks},
    policy::{Allowlist, Ask, BreakerEvent, Decision, Policy},
    protocol::{
        BatchFailure, BatchRequest, BlockReply, BlockRequest, CallerId, Outcome, PendingBlock,
        Reply, Request, RequestId,
    },
    scope::{Scope, ScopeError, ScopeSet},
    store::StoreOp,
    target::Target,
    time::{TimeBase, WallMs},
};

/// What a round changed, and how to put it back.
#[derive(Debug, Default)]
pub struct Change {
    /// Store operations, in order.
    pub ops: Vec<StoreOp>,
    /// Audit lines, written once the change is durable (refusals are written either way).
    pub events: Vec<Event>,
    /// Allowlist prefixes whose kernel entry may differ from the ledger. After the commit the
    /// round writes each one's final state: every insert before any removal, so nothing
    /// protected is ever unprotected in between (not even a prefix removed and added back in
    /// one round, or a /24 narrowed to a /25).
    pub allow_kernel: BTreeSet<Target>,
    /// Policy refusals (rule, or `capacity`, and source), for the metrics.
    pub refused: Vec<(&'static str, Source)>,
    /// Each touched target's blocks before its first change in this change.
    blocks_before: BTreeMap<Target, Option<TargetBlocks>>,
    pending_before: Option<(imbl::OrdMap<u64, PendingBlock>, u64)>,
    offenses_before: BTreeMap<Target, Option<Vec<WallMs>>>,
    allow_before: Option<Allowlist>,
    ids: requests::IdsUndo,
}

impl Change {
    /// The targets whose kernel entry may have changed, each with whether it had blocks before.
    pub fn touched(&self) -> impl ExactSizeIterator<Item = (&Target, bool)> {
        self.blocks_before.iter().map(|(t, b)| (t, b.is_some()))
    }

    /// The kernel entry `target` called for before this change (`None` for an untouched target,
    /// too).
    pub fn kernel_entry_before(&self, target: &Target) -> Option<KernelEntry> {
        self.blocks_before
            .get(target)
            .and_then(|b| b.as_ref())
            .and_then(TargetBlocks::kernel_entry)
    }

    /// Each touched target's blocks before this change (for tallies kept outside the ledger).
    pub fn take_before(&mut self) -> BTreeMap<Target, Option<TargetBlocks>> {
        std::mem::take(&mut self.blocks_before)
    }

    /// Whether there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.allow_kernel.is_empty()
    }
}

/// A write request as the engine hands it to the ledger: the request, who made it, its id and,
/// for a spooled trigger, where it was spooled.
#[derive(Debug)]
pub struct Write {
    /// The request.
    pub request: Request,
    /// Who made it (its access was checked already).
    pub caller: Caller,
    /// The client's id for it, if it gave one.
    pub id: Option<RequestId>,
    /// Set when it is a spooled trigger being replayed.
    pub replay: Option<Replay>,
}

impl Write {
    /// A request with no id, not from the spool.
    pub fn new(request: Request, caller: Caller) -> Self {
        Self {
            request,
            caller,
            id: None,
            replay: None,
        }
    }
}

/// A spooled trigger being replayed: when it was made, and its file (for the audit log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replay {
    /// When the trigger was spooled (Unix ms): the time the rate limiter charges it at.
    pub spooled_ms: WallMs,
    /// Its spool file's name.
    pub file: String,
}

/// A request's answer and the targets it touched (a kernel failure on one fails the answer).
#[derive(Debug)]
pub struct Applied {
    /// The answer, if the round commits.
    pub answer: Result<Reply, Refusal>,
    /// Targets whose kernel entries this request changed.
    pub touched: Vec<Target>,
    /// Whether this request changed durable state (so a failed commit fails it).
    pub wrote: bool,
}

impl Applied {
    fn new(answer: Result<Reply, Refusal>, touched: Vec<Target>) -> Self {
        Self {
            wrote: answer.is_ok(),
            answer,
            touched,
        }
    }
}

/// Every block and the state the rules need.
pub struct Ledger {
    blocks: imbl::OrdMap<Target, TargetBlocks>,
    deadlines: BTreeSet<(WallMs, Target, Source)>,
    pending: imbl::OrdMap<u64, PendingBlock>,
    next_pending: u64,
    offenses: Offenses,
    policy: Policy,
    /// What the deadlines' wall-clock times are relative to.
    time_base: TimeBase,
    allow: Allowlist,
    capacity: Capacity,
    /// Who made the request being applied (recorded with the pending blocks it creates).
    asking: Option<CallerId>,
    /// The spooled trigger being replayed, while it is applied.
    replaying: Option<Replay>,
    /// The ids of applied requests.
    requests: AppliedIds,
    /// Wall-clock steps followed since start.
    clock_steps: crate::protocol::ClockSteps,
    /// Blocks on their way to the CrowdSec LAPI.
    outbox: Outbox,
    /// Feed items refused, so that a resync does not audit the same refusal again.
    feed_refusals: sync::FeedRefusals,
    /// Whether the data path enforces port and protocol scopes: until it does, a scoped block
    /// is refused, never widened to the whole address.
    scopes_enforced: bool,
}

/// Whose share of the approval queue a waiting request counts against
/// (`policy.approval.caller_share`): a user on the socket, by uid; root and the daemon's own
/// parts, which act for every source (the Wazuh hook, the fail2ban action, CrowdSec, the
/// spool), by the source they block for, so that one integration cannot crowd out another.
#[derive(Debug)]
enum PendingOwner<'a> {
    User(&'a CallerId),
    Source(&'a Source),
}

impl<'a> PendingOwner<'a> {
    fn of(asking: Option<&'a CallerId>, source: &'a Source) -> Self {
        match asking {
            Some(id) if id.uid != 0 => Self::User(id),
            _ => Self::Source(source),
        }
    }
}

impl PartialEq for PendingOwner<'_> {
    /// A user is its uid (its name may or may not have been found).
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::User(a), Self::User(b)) => a.uid == b.uid,
            (Self::Source(a), Self::Source(b)) => a == b,
            _ => false,
        }
    }
}

impl std::fmt::Display for PendingOwner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::User(id) => write!(f, "{id}"),
            Self::Source(s) => write!(f, "source `{s}`"),
        }
    }
}

/// A block as a request asks for it, after policy.
struct Fresh {
    source: Source,
    reason: Arc<Reason>,
    expires_ms: Option<WallMs>,
    mode: Mode,
    /// The source's scope of the target after this block (its earlier one and the new one).
    scope: ScopeSet,
}

/// The merge rules: what a source's block becomes when it blocks the target (again).
fn merge(old: Option<&SourceBlock>, new: Fresh, now: WallMs) -> (Outcome, SourceBlock) {
    let Some(old) = old else {
        let block = SourceBlock {
            source: new.source,
            reason: new.reason,
            created_ms: now,
            updated_ms: now,
            expires_ms: new.expires_ms,
            mode: new.mode,
            scope: new.scope,
        };
        return (Outcome::Created, block);
    };
    // Never shorter: extend to the later end (permanent is the latest of all).
    let expires_ms = match (old.expires_ms, new.expires_ms) {
        (None, _) | (_, None) => None,
        (Some(a), Some(b)) => Some(a.max(b)),
    };
    // A block that now covers more of the target's traffic was extended too.
    let outcome = if expires_ms == old.expires_ms && new.scope == old.scope {
        Outcome::Unchanged
    } else {
        Outcome::Extended
    };
    // A re-block without a reason keeps the earlier one; it never turns an enforced block back
    // into a shadow one (say, a promoted block re-triggered by a source still in rollout).
    let reason = if *new.reason == Reason::default() {
        old.reason.clone()
    } else {
        new.reason
    };
    let mode = if old.mode == Mode::Enforce {
        Mode::Enforce
    } else {
        new.mode
    };
    let block = SourceBlock {
        reason,
        updated_ms: now,
        expires_ms,
        mode,
        scope: new.scope,
        ..old.clone()
    };
    (outcome, block)
}

/// A merged block ended no later than `cap`; the outcome says what changed against `old`.
fn cap_end(
    old: Option<&SourceBlock>,
    (outcome, mut block): (Outcome, SourceBlock),
    cap: Option<WallMs>,
) -> (Outcome, SourceBlock) {
    let Some(cap) = cap.filter(|&cap| block.expires_ms.is_none_or(|e| e > cap)) else {
        return (outcome, block);
    };
    block.expires_ms = Some(cap);
    let outcome = match old {
        None => Outcome::Created,
        Some(old) if old.expires_ms == block.expires_ms => Outcome::Unchanged,
        Some(_) => Outcome::Extended,
    };
    (outcome, block)
}

impl Ledger {
    /// An empty ledger under `policy`, counting map use against `capacity`.
    pub fn new(policy: Policy, capacity: Capacity) -> Self {
        Self {
            blocks: imbl::OrdMap::new(),
            deadlines: BTreeSet::new(),
            pending: imbl::OrdMap::new(),
            next_pending: 1,
            offenses: Offenses::default(),
            policy,
            time_base: TimeBase::default(),
            allow: Allowlist::default(),
            capacity,
            asking: None,
            replaying: None,
            requests: AppliedIds::default(),
            clock_steps: crate::protocol::ClockSteps::default(),
            outbox: Outbox::default(),
            feed_refusals: sync::FeedRefusals::default(),
            scopes_enforced: false,
        }
    }

    /// Accepts port and protocol scopes (the data path enforces them).
    pub fn enforce_scopes(&mut self, on: bool) {
        self.scopes_enforced = on;
    }

    /// Publishes blocks through `outbox` (off by default).
    pub fn set_outbox(&mut self, outbox: Outbox) {
        self.outbox = outbox;
    }

    /// Loads stored blocks; returns those that ended before `now` (not loaded).
    pub fn load_blocks(&mut self, records: Vec<Record>, now: WallMs) -> Vec<Record> {
        let mut expired = Vec::new();
        for record in records {
            if record.block.is_expired(now) {
                expired.push(record);
                continue;
            }
            let Record { target, block } = record;
            self.index(&target, &block);
            let blocks = self.blocks.entry(target).or_default();
            if blocks.by_source.is_empty() {
                self.capacity.add(&target, 1);
            }
            if !blocks.by_source.contains_key(&block.source) {
                self.capacity.add_held(&target, &block.source, 1);
            }
            blocks.by_source.insert(block.source.clone(), block);
        }
        expired
    }

    /// Loads stored pending blocks, offense histories and the next pending id (ids are never
    /// reused: a store from before it was kept continues after its highest stored id).
    pub fn load_side(
        &mut self,
        pending: Vec<PendingBlock>,
        offenses: Vec<(Target, Vec<WallMs>)>,
        next_pending: Option<u64>,
    ) {
        self.next_pending = self.next_pending.max(next_pending.unwrap_or(1));
        for p in pending {
            self.next_pending = self.next_pending.max(p.id + 1);
            self.pending.insert(p.id, p);
        }
        for (target, times) in offenses {
            self.offenses.set(target, Some(times));
        }
    }

    /// Every blocked target, in order.
    pub fn blocks(&self) -> &imbl::OrdMap<Target, TargetBlocks> {
        &self.blocks
    }

    /// Blocked targets after `after` (exclusive), in order: a page of `list`.
    pub fn blocks_after(
        &self,
        after: Option<Target>,
    ) -> impl Iterator<Item = (&Target, &TargetBlocks)> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        self.blocks.range((start, Bound::Unbounded))
    }

    /// The kernel entry `target`'s blocks call for.
    pub fn kernel_entry(&self, target: &Target) -> Option<KernelEntry> {
        self.blocks.get(target).and_then(TargetBlocks::kernel_entry)
    }

    /// Blocks waiting for approval.
    pub fn pending(&self) -> &imbl::OrdMap<u64, PendingBlock> {
        &self.pending
    }

    /// The allowlist.
    pub fn allowlist(&self) -> &Allowlist {
        &self.allow
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The policy (its breakers change as requests arrive).
    pub fn policy_mut(&mut self) -> &mut Policy {
        &mut self.policy
    }

    /// Map use against capacity.
    pub fn capacity(&self) -> &Capacity {
        &self.capacity
    }

    /// The earliest block deadline.
    pub fn next_block_deadline(&self) -> Option<WallMs> {
        self.deadlines.first().map(|(d, _, _)| *d)
    }

    /// The earliest deadline of anything (a block, a pending request, an offense history
    /// leaving its window).
    pub fn next_deadline(&self) -> Option<WallMs> {
        let pending = self.pending.values().map(|p| p.expires_ms).min();
        self.next_block_deadline()
            .into_iter()
            .chain(pending)
            .chain(self.next_offense_deadline())
            .min()
    }

    /// Applies one write request (whose access was checked already). A request whose id was
    /// applied already gets the first answer and changes nothing. The events of a replayed
    /// trigger name its spool time and file.
    pub fn apply(&mut self, c: &mut Change, write: Write, now: WallMs) -> Applied {
        let Write {
            request,
            caller,
            id,
            replay,
        } = write;
        let key = id.map(|id| crate::store::RequestKey {
            uid: caller.id.uid,
            id,
        });
        if let Some(reply) = key.as_ref().and_then(|k| self.answered(k)) {
            tracing::info!(id = %key.as_ref().map(|k| k.id.as_str()).unwrap_or_default(), op = request.op(), "request already applied; answered with its first answer");
            return Applied {
                answer: Ok(reply.clone()),
                touched: vec![],
                wrote: false,
            };
        }
        let first_event = c.events.len();
        let subject = replay.as_ref().map(|_| replay_subject(&request));
        self.asking = Some(caller.id.clone());
        self.replaying = replay;
        // The one size check of stored free text, whatever path the request came by.
        if let Err(e) = request.validate() {
            return Applied::new(Err(Refusal::Invalid(e.to_string())), vec![]);
        }
        let applied = self.apply_request(c, request, now);
        self.asking = None;
        // Every line of a person's (or a hook's) request names who asked; the daemon's own
        // parts are named by the source they block for.
        if caller.internal.is_none() {
            for e in &mut c.events[first_event..] {
                e.caller.get_or_insert_with(|| caller.clone());
            }
        }
        if let (Some(replay), Some(subject)) = (self.replaying.take(), subject) {
            // Every refused replay is audited, even one no rule had a line for (an unblock of
            // a target no longer blocked, an invalid value), and every line of a replay names
            // its spool time and file.
            if let Err(refusal) = &applied.answer
                && c.events.len() == first_event
            {
                let (target, source) = subject;
                let mut e = Event::untargeted(Action::Refuse).detail(refusal.to_string());
                e.target = target;
                e.source = source;
                c.events.push(e);
            }
            for e in &mut c.events[first_event..] {
                e.spooled_ms = Some(replay.spooled_ms);
                e.spool_file = Some(replay.file.clone());
            }
        }
        if let (Some(key), Ok(reply)) = (key, &applied.answer) {
            self.remember_request(c, key, reply.clone(), now);
        }
        applied
    }

    fn apply_request(&mut self, c: &mut Change, request: Request, now: WallMs) -> Applied {
        match request {
            Request::Block(b) => {
                let asked = b.target;
                let answer = self.block(c, b, now);
                let target = answer.as_ref().map_or(asked, |r| r.target);
                Applied::new(answer.map(Reply::Block), vec![target])
            }
            Request::BlockBatch(b) => {
                let (reply, touched) = self.block_batch(c, b, now);
                Applied::new(Ok(reply), touched)
            }
            Request::SyncSource(s) => {
                let (reply, touched) = self.sync_source(c, s, now);
                Applied::new(Ok(reply), touched)
            }
            Request::Unblock {
                target,
                source,
                all,
                scope,
            } => {
                let answer = self.unblock_scope(c, target, source, all, &scope);
                let lifted = match &answer {
                    Ok(Reply::Unblock { target, .. }) => *target,
                    _ => target,
                };
                Applied::new(answer, vec![lifted])
            }
            Request::Promote { target, source } => {
                match self.promote(c, target, source.as_ref(), now) {
                    Ok(promoted) => {
                        let touched = promoted.iter().map(|(t, _)| *t).collect();
                        Applied::new(Ok(Reply::Promote { promoted }), touched)
                    }
                    Err(e) => Applied::new(Err(e), vec![]),
                }
            }
            Request::Approve { id } => match self.approve(c, id, now) {
                Ok(r) => {
                    let target = r.target;
                    Applied::new(Ok(Reply::Block(r)), vec![target])
                }
                Err(e) => Applied::new(Err(e), vec![]),
            },
            Request::Reject { id } => Applied::new(self.reject(c, id), vec![]),
            Request::AllowAdd {
                target,
                comment,
                force,
            } => Applied::new(self.allow_add(c, target, comment, force), vec![target]),
            Request::AllowRemove { target } => {
                Applied::new(self.allow_remove(c, target), vec![target])
            }
            Request::BreakerReset { source } => {
                let reset = self.policy.reset_breakers(source.as_ref());
                Applied {
                    answer: Ok(Reply::BreakerReset { reset }),
                    touched: vec![],
                    wrote: false,
                }
            }
            other => Applied {
                answer: Err(Refusal::Invalid(format!(
                    "{other:?} is not a write request"
                ))),
                touched: vec![],
                wrote: false,
            },
        }
    }

    /// Blocks `req.target` for `req.source`.
    pub fn block(
        &mut self,
        c: &mut Change,
        mut req: BlockRequest,
        now: WallMs,
    ) -> Result<BlockReply, Refusal> {
        let reason = Arc::new(std::mem::take(&mut req.reason));
        self.block_widened(c, req, reason, now)
    }

    /// [`Ledger::block`] with the reason already shared (a batch shares one), ending the
    /// source's block no later than `cap` when one is given (a feed's decision ends when the feed
    /// says, even before the block it already had): the block is decided, stored and audited
    /// once, with its final end.
    fn block_until(
        &mut self,
        c: &mut Change,
        req: BlockRequest,
        reason: Arc<Reason>,
        approved: bool,
        now: WallMs,
        cap: Option<WallMs>,
    ) -> Result<BlockReply, Refusal> {
        // Whole requests were checked by `Request::validate`; a feed's item is checked here.
        reason
            .validate()
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
        // Every block passes here (socket, spool, batch, approval, feed): until the data path
        // enforces scopes, a scoped request is refused rather than widened to the whole address.
        if !req.scope.is_whole() && !self.scopes_enforced {
            return Err(Refusal::Invalid(format!(
                "{} for {}: this daemon's data path cannot enforce a port or protocol scope yet; \
                 block the whole address (drop --proto/--port), or upgrade the daemon",
                req.scope, req.target
            )));
        }
        if let Some(why) = req.target.not_a_block_target() {
            return Err(Refusal::Invalid(format!(
                "{} is not a block target: {why}",
                req.target
            )));
        }
        if req.ttl_secs == Some(0) {
            return Err(Refusal::Invalid("the TTL must be at least 1 second".into()));
        }
        // The target's blocks, looked up once (an import asks for a million targets).
        let held = self.blocks.get(&req.target).cloned();
        let (ttl, mode, notes) = match self.decide(c, &req, held.as_ref(), approved, now) {
            Decision::Apply { ttl, mode, notes } => (ttl, mode, notes),
            Decision::Pending { why } => return self.add_pending(c, req, &reason, why, now),
            Decision::Refuse { rule, message } => {
                return Err(self.refuse(c, &req, &reason, Refusal::Policy { rule, message }));
            }
        };
        let target = req.target;
        let scope = match Self::scope_after_block(&req, held.as_ref()) {
            Ok(scope) => scope,
            Err(refusal) => return Err(self.refuse(c, &req, &reason, refusal)),
        };
        let old = held
            .as_ref()
            .and_then(|t| t.by_source.get(&req.source))
            .cloned();
        let is_new_target = held.is_none();
        let is_new_for_source = old.is_none();
        // `cli` and the force sources keep the reserve and have no share (see capacity.rs).
        let exempt = req.force || req.source == Source::cli() || self.policy.may_force(&req.source);
        let fits = if is_new_target {
            self.capacity.check(&target, &req.source, exempt)
        } else {
            Ok(())
        }
        .and_then(|()| {
            if is_new_for_source {
                self.capacity.check_share(&target, &req.source, exempt)
            } else {
                Ok(())
            }
        });
        if let Err(full) = fits {
            return Err(self.refuse(c, &req, &reason, full));
        }
        let fresh = Fresh {
            source: req.source,
            reason,
            expires_ms: ttl.map(|t| now.saturating_add(t)),
            mode,
            scope,
        };
        c.blocks_before.entry(target).or_insert(held);
        if let Some(old) = &old {
            self.unindex(&target, old);
        }
        let (outcome, block) = cap_end(old.as_ref(), merge(old.as_ref(), fresh, now), cap);
        self.index(&target, &block);
        if is_new_target {
            self.capacity.add(&target, 1);
            self.record_offense(c, &target, now);
        }
        if is_new_for_source {
            self.capacity.add_held(&target, &block.source, 1);
        }
        c.ops.push(StoreOp::Put(Record {
            target,
            block: block.clone(),
        }));
        c.events.push(block_event(target, &block, outcome, &notes));
        let reply = BlockReply {
            target,
            outcome,
            expires_ms: block.expires_ms,
            mode: block.mode,
            notes,
            pending_id: None,
            requested: None,
        };
        self.blocks
            .entry(target)
            .or_default()
            .by_source
            .insert(block.source.clone(), block);
        Ok(reply)
    }

    /// What `req.source`'s block of the target covers once `req` is applied: its earlier scope
    /// and the new one. Refused when the target's scopes together (the verdict is their union)
    /// would need more port ranges than its kernel entry holds.
    fn scope_after_block(
        req: &BlockRequest,
        held: Option<&TargetBlocks>,
    ) -> Result<ScopeSet, Refusal> {
        let old = held.and_then(|t| t.by_source.get(&req.source));
        let too_many = |e: ScopeError| {
            Refusal::Invalid(format!(
                "{}: {e} (counting every source's scope of it); block the whole protocol or address",
                req.target
            ))
        };
        let scope = match old {
            None => ScopeSet::of(&req.scope),
            Some(b) => b.scope.union(&req.scope).map_err(too_many)?,
        };
        union_with(held, &req.source, &scope).map_err(too_many)?;
        Ok(scope)
    }

    /// Checks that the target's scopes, with `source`'s replaced by `scope`, fit its kernel
    /// entry.
    fn check_union(
        &self,
        target: &Target,
        source: &Source,
        scope: &ScopeSet,
    ) -> Result<(), ScopeError> {
        union_with(self.blocks.get(target), source, scope)
    }

    /// Asks the policy, auditing a breaker that opens.
    fn decide(
        &mut self,
        c: &mut Change,
        req: &BlockRequest,
        held: Option<&TargetBlocks>,
        approved: bool,
        now: WallMs,
    ) -> Decision {
        let existing = held.is_some_and(|t| t.by_source.contains_key(&req.source));
        let offenses = self.offense_count(&req.target, now);
        let ask = Ask {
            target: req.target,
            source: &req.source,
            ttl: req.ttl_secs.map(Duration::from_secs),
            permanent: req.permanent,
            shadow: req.shadow,
            force: req.force,
            approved,
            existing,
            // A replay is charged at its spool time (never later than now: a clock that went
            // back), so a backlog drained at once meets the rate it arrived at.
            at: self
                .replaying
                .as_ref()
                .map_or(now, |r| r.spooled_ms.min(now)),
        };
        let (decision, event) = self.policy.decide(&ask, &self.allow, offenses);
        if let BreakerEvent::Opened = event {
            tracing::warn!(source = %req.source, "circuit breaker opened");
            c.events.push(
                Event::new(Action::BreakerOpen, req.target)
                    .source(&req.source)
                    .detail("rate of new blocks exceeded; breaker open"),
            );
        }
        decision
    }

    /// Audits a refusal (with the reason the request gave) and hands it back.
    fn refuse(
        &self,
        c: &mut Change,
        req: &BlockRequest,
        reason: &Arc<Reason>,
        refusal: Refusal,
    ) -> Refusal {
        let detail = match &refusal {
            Refusal::MapFull { .. } | Refusal::ShareFull { .. } | Refusal::Reserved { .. } => {
                format!("rule `capacity`: {refusal}")
            }
            other => other.to_string(),
        };
        match &refusal {
            Refusal::MapFull { .. } | Refusal::ShareFull { .. } | Refusal::Reserved { .. } => {
                c.refused.push(("capacity", req.source.clone()));
            }
            Refusal::PendingFull { .. } | Refusal::PendingShareFull { .. } => {
                c.refused.push(("pending_full", req.source.clone()));
            }
            Refusal::Policy { rule, .. } => c.refused.push((rule.as_str(), req.source.clone())),
            _ => {}
        }
        let mut e = Event::new(Action::Refuse, req.target)
            .source(&req.source)
            .detail(detail);
        if **reason != Reason::default() {
            e.reason = Some(reason.clone());
        }
        c.events.push(e);
        refusal
    }

    /// Why `req` cannot wait for approval, if it cannot: the queue is full, or its caller
    /// already holds its share of it.
    fn pending_room(&self, req: &BlockRequest) -> Option<Refusal> {
        if self.pending.len() >= self.policy.max_pending() {
            return Some(Refusal::PendingFull {
                limit: self.policy.max_pending(),
            });
        }
        let owner = PendingOwner::of(self.asking.as_ref(), &req.source);
        let held = self
            .pending
            .values()
            .filter(|p| PendingOwner::of(p.requested_by.as_ref(), &p.request.source) == owner)
            .count();
        let share = self.policy.caller_share();
        (held >= share).then(|| Refusal::PendingShareFull {
            caller: owner.to_string(),
            share,
            percent: self.policy.config.approval.caller_share,
        })
    }

    fn add_pending(
        &mut self,
        c: &mut Change,
        req: BlockRequest,
        reason: &Reason,
        why: String,
        now: WallMs,
    ) -> Result<BlockReply, Refusal> {
        if let Some(full) = self.pending_room(&req) {
            return Err(self.refuse(c, &req, &Arc::new(reason.clone()), full));
        }
        self.remember_pending(c);
        let id = self.next_pending;
        self.next_pending += 1;
        c.ops.push(StoreOp::SetNextPending(self.next_pending));
        let target = req.target;
        let mode = if req.shadow {
            Mode::Shadow
        } else {
            Mode::Enforce
        };
        let mut request = req;
        request.reason = reason.clone();
        let p = PendingBlock {
            id,
            request,
            why: why.clone(),
            created_ms: now,
            expires_ms: now + self.policy.pending_ttl(),
            requested_by: self.asking.clone(),
        };
        c.ops.push(StoreOp::PutPending(p.clone()));
        let mut e = Event::new(Action::Pending, target)
            .source(&p.request.source)
            .detail(format!("pending approval (id {id}): {why}"));
        e.reason = Some(Arc::new(reason.clone()));
        c.events.push(e);
        self.pending.insert(id, p);
        Ok(BlockReply {
            target,
            outcome: Outcome::Pending,
            expires_ms: None,
            mode,
            notes: vec![why],
            pending_id: Some(id),
            requested: None,
        })
    }

    /// Blocks many targets for one source with one reason.
    pub fn block_batch(
        &mut self,
        c: &mut Change,
        req: BatchRequest,
        now: WallMs,
    ) -> (Reply, Vec<Target>) {
        let (mut applied, mut pending) = (0, 0);
        let mut failed = Vec::new();
        let mut touched = Vec::with_capacity(req.items.len());
        // A store row and an audit line per item, at most (an escalation adds one more).
        c.ops.reserve(req.items.len());
        c.events.reserve(req.items.len());
        let reason = Arc::new(req.reason);
        for (index, item) in req.items.into_iter().enumerate() {
            let one = BlockRequest {
                target: item.target,
                ttl_secs: item.ttl_secs.or(req.ttl_secs),
                permanent: false,
                source: req.source.clone(),
                reason: Reason::default(),
                shadow: req.shadow,
                force: false,
                scope: req.scope.clone(),
            };
            match self.block_widened(c, one, reason.clone(), now) {
                Ok(r) if r.outcome == Outcome::Pending => pending += 1,
                Ok(r) => {
                    applied += 1;
                    touched.push(r.target);
                }
                Err(e) => failed.push(BatchFailure {
                    index,
                    target: item.target,
                    error: e.to_body(),
                }),
            }
        }
        (
            Reply::BlockBatch {
                applied,
                pending,
                failed,
            },
            touched,
        )
    }

    /// Removes one source's block of `target` (default `cli`), or every block with `all`. A
    /// single IPv6 address blocked as its network (a widening source) lifts that network's
    /// block.
    pub fn unblock(
        &mut self,
        c: &mut Change,
        target: Target,
        source: Option<Source>,
        all: bool,
    ) -> Result<Reply, Refusal> {
        self.unblock_scope(c, target, source, all, &Scope::WHOLE)
    }

    /// [`Ledger::unblock`] of one scope: the source's block keeps its other scopes (and is
    /// removed when none is left); the whole scope removes the block.
    pub fn unblock_scope(
        &mut self,
        c: &mut Change,
        target: Target,
        source: Option<Source>,
        all: bool,
        scope: &Scope,
    ) -> Result<Reply, Refusal> {
        let (target, requested) = self.unblock_target(target, source.as_ref(), all);
        let Some(current) = self.blocks.get(&target) else {
            return Err(Refusal::NotFound(format!(
                "{target} is not blocked (see `enforcer list`){}",
                self.widened_hint(target)
            )));
        };
        let source = source.unwrap_or_else(Source::cli);
        let removed: Vec<Source> = if all {
            current.by_source.keys().cloned().collect()
        } else if current.by_source.contains_key(&source) {
            vec![source]
        } else {
            return Err(Refusal::NotFound(format!(
                "{target} has no block from source `{source}` (blocked by: {}); use --source NAME or --all{}",
                current.sources(),
                self.widened_hint(target)
            )));
        };
        if !scope.is_whole() {
            return self.unblock_part(c, target, &removed, scope, requested);
        }
        for s in &removed {
            self.remove_block(c, &target, s);
            let mut e = Event::new(Action::Unblock, target).source(s);
            e.requested = requested;
            c.events.push(e);
        }
        let lifted = !self.blocks.contains_key(&target);
        Ok(Reply::Unblock {
            target,
            removed,
            lifted,
            requested,
        })
    }

    /// Takes `scope` off each of `sources`' blocks of `target` (all of them must hold it); a
    /// block left with no scope is removed.
    fn unblock_part(
        &mut self,
        c: &mut Change,
        target: Target,
        sources: &[Source],
        scope: &Scope,
        requested: Option<Target>,
    ) -> Result<Reply, Refusal> {
        let mut after = Vec::with_capacity(sources.len());
        for s in sources {
            let block = self
                .blocks
                .get(&target)
                .and_then(|t| t.by_source.get(s))
                .expect("listed by unblock");
            let left = block.scope.minus(scope).map_err(|_| {
                Refusal::NotFound(if block.scope.is_whole() {
                    format!(
                        "{target}'s block from `{s}` covers the whole address, not {scope} alone; \
                         unblock it whole (drop --proto/--port) and block what should stay"
                    )
                } else {
                    format!(
                        "{target}'s block from `{s}` covers {}, not {scope}; name a scope it holds",
                        block.scope
                    )
                })
            })?;
            if let Some(left) = &left {
                self.check_union(&target, s, left).map_err(|e| {
                    Refusal::Invalid(format!("{target}: {e}; unblock the whole protocol"))
                })?;
            }
            after.push((s.clone(), left));
        }
        for (s, left) in after {
            match left {
                None => {
                    self.remove_block(c, &target, &s);
                }
                Some(left) => {
                    self.remember(c, &target);
                    let b = self
                        .blocks
                        .get_mut(&target)
                        .and_then(|t| t.by_source.get_mut(&s))
                        .expect("checked above");
                    b.scope = left;
                    c.ops.push(StoreOp::Put(Record {
                        target,
                        block: b.clone(),
                    }));
                }
            }
            // The audit line says what was lifted; `scope` says what the block still covers.
            let mut e = Event::new(Action::Unblock, target)
                .source(&s)
                .detail(format!("lifted {scope}"));
            if let Some(b) = self.blocks.get(&target).and_then(|t| t.by_source.get(&s)) {
                e.scope = b.scope.clone();
            }
            e.requested = requested;
            c.events.push(e);
        }
        let lifted = !self.blocks.contains_key(&target);
        Ok(Reply::Unblock {
            target,
            removed: sources.to_vec(),
            lifted,
            requested,
        })
    }

    /// Removes one source's block, dropping the target when it was the last.
    fn remove_block(
        &mut self,
        c: &mut Change,
        target: &Target,
        source: &Source,
    ) -> Option<SourceBlock> {
        self.remember(c, target);
        let blocks = self.blocks.get_mut(target)?;
        let removed = blocks.by_source.remove(source)?;
        if blocks.by_source.is_empty() {
            self.blocks.remove(target);
            self.capacity.add(target, -1);
        }
        self.capacity.add_held(target, source, -1);
        self.unindex(target, &removed);
        c.ops.push(StoreOp::Delete(*target, source.clone()));
        Some(removed)
    }

    /// Turns shadow blocks into enforced ones: of one target, of one source, or all.
    pub fn promote(
        &mut self,
        c: &mut Change,
        target: Option<Target>,
        source: Option<&Source>,
        now: WallMs,
    ) -> Result<Vec<(Target, Source)>, Refusal> {
        let candidates: Vec<(Target, Source)> = self
            .blocks
            .range(target.map_or((Bound::Unbounded, Bound::Unbounded), |t| {
                (Bound::Included(t), Bound::Included(t))
            }))
            .flat_map(|(t, b)| b.by_source.values().map(move |s| (t, s)))
            .filter(|(_, b)| b.mode == Mode::Shadow && source.is_none_or(|s| *s == b.source))
            .map(|(t, b)| (*t, b.source.clone()))
            .collect();
        if candidates.is_empty() {
            return Err(Refusal::NotFound(match (target, source) {
                (Some(t), _) => format!("{t} has no shadow block"),
                (None, Some(s)) => format!("source `{s}` has no shadow blocks"),
                (None, None) => "there are no shadow blocks".to_owned(),
            }));
        }
        for (t, s) in &candidates {
            self.remember(c, t);
            let b = self
                .blocks
                .get_mut(t)
                .and_then(|x| x.by_source.get_mut(s))
                .expect("listed above");
            b.mode = Mode::Enforce;
            b.updated_ms = now;
            c.ops.push(StoreOp::Put(Record {
                target: *t,
                block: b.clone(),
            }));
            let mut e = Event::new(Action::Promote, *t).source(s);
            e.mode = Some(Mode::Enforce);
            c.events.push(e);
        }
        Ok(candidates)
    }

    /// Applies a pending block as approved. A refused one stays pending.
    pub fn approve(&mut self, c: &mut Change, id: u64, now: WallMs) -> Result<BlockReply, Refusal> {
        let Some(p) = self.pending.get(&id).cloned() else {
            return Err(Refusal::NotFound(format!(
                "no pending block with id {id} (see `enforcer pending`)"
            )));
        };
        let mut request = p.request;
        let reason = Arc::new(std::mem::take(&mut request.reason));
        let source = request.source.clone();
        let reply = self.block_until(c, request, reason, true, now, None)?;
        self.remember_pending(c);
        self.pending.remove(&id);
        c.ops.push(StoreOp::DeletePending(id));
        let by = self
            .asking
            .as_ref()
            .map(|a| format!(" by {a}"))
            .unwrap_or_default();
        c.events.push(
            Event::new(Action::Approve, reply.target)
                .source(&source)
                .detail(format!("approved pending block {id}{by}")),
        );
        Ok(reply)
    }

    /// Drops a pending block.
    pub fn reject(&mut self, c: &mut Change, id: u64) -> Result<Reply, Refusal> {
        if !self.pending.contains_key(&id) {
            return Err(Refusal::NotFound(format!(
                "no pending block with id {id} (see `enforcer pending`)"
            )));
        }
        self.remember_pending(c);
        let p = self.pending.remove(&id).expect("checked above");
        c.ops.push(StoreOp::DeletePending(id));
        c.events.push(
            Event::new(Action::Reject, p.request.target)
                .source(&p.request.source)
                .detail(format!("rejected pending block {id}")),
        );
        Ok(Reply::Rejected { id })
    }

    /// Removes what ended by `now`: pending requests nobody approved in time, and at most
    /// `max` blocks. Only the block a deadline belongs to is removed: a block extended since
    /// has a later deadline of its own. Returns how many blocks expired.
    pub fn expire(&mut self, c: &mut Change, now: WallMs, max: usize) -> usize {
        self.expire_pending(c, now);
        self.prune_offenses(c, now, max);
        let mut expired = 0;
        while expired < max {
            let Some((deadline, target, source)) = self.deadlines.first().cloned() else {
                break;
            };
            if deadline > now {
                break;
            }
            let current = self
                .blocks
                .get(&target)
                .and_then(|b| b.by_source.get(&source));
            if current.is_none_or(|b| b.expires_ms != Some(deadline)) {
                // Stale (cannot happen while index and blocks agree); drop it.
                self.deadlines.pop_first();
                continue;
            }
            self.remove_block(c, &target, &source);
            c.events
                .push(Event::new(Action::Expire, target).source(&source));
            expired += 1;
        }
        expired
    }

    fn expire_pending(&mut self, c: &mut Change, now: WallMs) {
        let due: Vec<u64> = self
            .pending
            .values()
            .filter(|p| p.expires_ms <= now)
            .map(|p| p.id)
            .collect();
        if due.is_empty() {
            return;
        }
        self.remember_pending(c);
        for id in due {
            let p = self.pending.remove(&id).expect("listed above");
            c.ops.push(StoreOp::DeletePending(id));
            c.events.push(
                Event::new(Action::PendingExpire, p.request.target)
                    .source(&p.request.source)
                    .detail(format!("pending block {id} was not approved in time")),
            );
        }
    }

    /// Puts back everything `c` changed (the store refused it). Breaker state is not undone:
    /// the requests did arrive.
    pub fn undo(&mut self, c: Change) {
        for (target, before) in c.blocks_before {
            if let Some(now) = self.blocks.remove(&target) {
                for b in now.by_source.values() {
                    self.unindex(&target, b);
                    self.capacity.add_held(&target, &b.source, -1);
                }
                self.capacity.add(&target, -1);
            }
            if let Some(before) = before {
                for b in before.by_source.values() {
                    self.index(&target, b);
                    self.capacity.add_held(&target, &b.source, 1);
                }
                self.capacity.add(&target, 1);
                self.blocks.insert(target, before);
            }
        }
        if let Some((pending, next)) = c.pending_before {
            self.pending = pending;
            self.next_pending = next;
        }
        for (target, before) in c.offenses_before {
            self.offenses.set(target, before);
        }
        if let Some(allow) = c.allow_before {
            self.capacity.set_allow(&allow);
            self.allow = allow;
        }
        self.undo_ids(c.ids);
    }

    fn remember(&self, c: &mut Change, target: &Target) {
        c.blocks_before
            .entry(*target)
            .or_insert_with(|| self.blocks.get(target).cloned());
    }

    fn remember_pending(&self, c: &mut Change) {
        c.pending_before
            .get_or_insert_with(|| (self.pending.clone(), self.next_pending));
    }

    fn index(&mut self, target: &Target, block: &SourceBlock) {
        if let Some(e) = block.expires_ms {
            self.deadlines.insert((e, *target, block.source.clone()));
        }
    }

    fn unindex(&mut self, target: &Target, block: &SourceBlock) {
        if let Some(e) = block.expires_ms {
            self.deadlines.remove(&(e, *target, block.source.clone()));
        }
    }
}

/// Checks that a target's scopes (`held`), with `source`'s replaced by `scope`, fit its kernel
/// entry.
fn union_with(
    held: Option<&TargetBlocks>,
    source: &Source,
    scope: &ScopeSet,
) -> Result<(), ScopeError> {
    let others = held
        .into_iter()
        .flat_map(|t| t.by_source.values())
        .filter(|b| b.source != *source)
        .map(|b| &b.scope);
    ScopeSet::union_all(others.chain([scope])).map(drop)
}

/// The target and source of a spooled request, for the audit line of its refusal.
fn replay_subject(request: &Request) -> (Option<Target>, Option<Source>) {
    match request {
        Request::Block(b) => (Some(b.target), Some(b.source.clone())),
        Request::BlockBatch(b) => (None, Some(b.source.clone())),
        Request::Unblock { target, source, .. } => (Some(*target), source.clone()),
        _ => (None, None),
    }
}

/// The audit line of an applied block.
fn block_event(target: Target, block: &SourceBlock, outcome: Outcome, notes: &[String]) -> Event {
    let action = match outcome {
        Outcome::Created => Action::Block,
        Outcome::Extended => Action::Extend,
        Outcome::Unchanged | Outcome::Pending => Action::Reblock,
    };
    let mut e = Event::new(action, target).source(&block.source);
    e.reason = Some(block.reason.clone());
    e.expires_ms = block.expires_ms;
    e.mode = Some(block.mode);
    e.scope = block.scope.clone();
    if !notes.is_empty() {
        e.detail = Some(notes.join("; "));
    }
    e
}
