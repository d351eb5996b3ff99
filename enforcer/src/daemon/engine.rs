//! The engine: the one owner of block state, the store and the kernel maps.
//!
//! It runs on its own thread and takes requests from a channel. Every write request waiting in
//! the channel is handled in one round: changes are made in memory, committed to the store in
//! one fsynced transaction, written to the kernel maps, and only then acknowledged. So a block
//! is acknowledged only once it is durable and in force, and concurrent triggers share fsyncs.
//!
//! The same loop is the reaper: it sleeps until the next deadline (not a periodic scan), then
//! removes what expired. The data path has already stopped enforcing those entries by itself at
//! their deadline; reaping is garbage collection and bookkeeping.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::{
        Arc,
        mpsc::{Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use enforcer_common::{BlockValue, map_names};
use tokio::sync::oneshot;

use crate::{
    audit::{Action, AuditLog, Event},
    policy::{AllowOrigin, Allowlist, Ask, BreakerEvent, Decision, Policy, PolicyConfig, host},
    block::{Mode, Record, Source, SourceBlock, TargetBlocks, UnixMillis, from_ms, now_ms},
    datapath::{Attachment, Datapath, clock},
    daemon::systemd::{Heartbeat, TestStall},
    metrics::{BlockTally, Metrics, Snapshot},
    protocol::*,
    store::{Store, StoreOp},
    target::Target,
};

/// A request and where to send its answer.
pub struct Command {
    /// The request.
    pub request: Request,
    /// The answer goes here.
    pub reply: oneshot::Sender<Response>,
}

/// Most requests handled in one durable round.
const MAX_ROUND: usize = 4096;
/// Most expiries handled in one durable round.
const MAX_REAP: usize = 10_000;

/// Engine state.
pub struct Engine {
    blocks: BTreeMap<Target, TargetBlocks>,
    deadlines: BTreeSet<(UnixMillis, Target, Source)>,
    used: HashMap<&'static str, u64>,
    store: Store,
    dp: Datapath,
    audit: AuditLog,
    policy: Policy,
    allow: Allowlist,
    builtin_allowlist: bool,
    pending: BTreeMap<u64, PendingBlock>,
    next_pending: u64,
    offenses: HashMap<Target, Vec<UnixMillis>>,
    attachments: Vec<Attachment>,
    started: Instant,
    /// After a failed expiry commit: no reaping before this (Unix ms).
    reap_backoff_until: UnixMillis,
    /// Counters and the snapshot the metrics endpoint reads.
    metrics: Arc<Metrics>,
    /// Source blocks by source and mode, for the snapshot (updated per round, never recounted).
    tally: BlockTally,
    /// systemd's watchdog and status line, fed by this loop.
    heartbeat: Option<Heartbeat>,
    /// Debug builds: lets a test hang this loop.
    stall: TestStall,
}

/// What the engine is configured with.
pub struct EngineConfig {
    /// TTL for requests without one (and sources without their own).
    pub default_ttl: Duration,
    /// The safety policy.
    pub policy: PolicyConfig,
    /// Allowlist prefixes from the configuration file.
    pub allowlist: Vec<Target>,
    /// Allowlist loopback, the host's addresses and its default gateways.
    pub builtin_allowlist: bool,
}

/// Undo information for one round.
struct Round {
    ops: Vec<StoreOp>,
    before: BTreeMap<Target, Option<TargetBlocks>>,
    /// The pending list before its first change in this round.
    pending_before: Option<BTreeMap<u64, PendingBlock>>,
    /// Offense histories before their first change in this round.
    offenses_before: BTreeMap<Target, Option<Vec<UnixMillis>>>,
}

impl Round {
    fn new() -> Self {
        Self {
            ops: Vec::new(),
            before: BTreeMap::new(),
            pending_before: None,
            offenses_before: BTreeMap::new(),
        }
    }
}

/// A reply to send once the round is durable: (channel, response, targets touched, whether
/// the request wrote anything in this round, so that a failed commit turns it into an error).
type Pending = (oneshot::Sender<Response>, Response, Vec<Target>, bool);

impl Engine {
    /// Builds the engine from the store, reconciling the kernel maps with it.
    pub fn start(store: Store, dp: Datapath, audit: AuditLog, config: EngineConfig) -> anyhow::Result<Self> {
        let mut engine = Self {
            blocks: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            used: HashMap::new(),
            store,
            dp,
            audit,
            policy: Policy::new(config.policy, config.default_ttl),
            allow: Allowlist::default(),
            builtin_allowlist: config.builtin_allowlist,
            pending: BTreeMap::new(),
            next_pending: 1,
            offenses: HashMap::new(),
            attachments: Vec::new(),
            started: Instant::now(),
            reap_backoff_until: 0,
            metrics: Arc::default(),
            tally: BlockTally::default(),
            heartbeat: None,
            stall: TestStall::from_env(),
        };
        engine.load_allowlist(&config.allowlist)?;
        engine.load_side_tables()?;
        engine.reconcile()?;
        Ok(engine)
    }

    /// Builds the allowlist (config, stored CLI entries, the host) and makes the kernel match.
    fn load_allowlist(&mut self, from_config: &[Target]) -> anyhow::Result<()> {
        for t in from_config {
            self.allow.insert(*t, AllowOrigin::Config);
        }
        for (key, value) in self.store.load_side("allow")? {
            let target: Target = key.parse()?;
            let origin: AllowOrigin = serde_json::from_value(value)?;
            self.allow.insert(target, origin);
        }
        if self.builtin_allowlist {
            for h in host::host_addresses()? {
                self.allow.insert(h.target, AllowOrigin::Builtin { what: h.what.to_owned() });
            }
        }
        let in_kernel: Vec<Target> = self.dp.maps().allows()?.into_iter().map(|(t, _)| t).collect();
        for t in in_kernel {
            if self.allow.origins(&t).is_none() {
                self.dp.maps_mut().remove_allow(&t)?;
            }
        }
        let entries: Vec<(Target, u32)> = self.allow.iter().map(|(t, o)| (*t, o[0].to_kernel())).collect();
        for (t, origin) in entries {
            self.dp.maps_mut().insert_allow(&t, origin)?;
        }
        tracing::info!(entries = self.allow.len(), "allowlist loaded");
        Ok(())
    }

    fn load_side_tables(&mut self) -> anyhow::Result<()> {
        for (_, value) in self.store.load_side("pending")? {
            let p: PendingBlock = serde_json::from_value(value)?;
            self.next_pending = self.next_pending.max(p.id + 1);
            self.pending.insert(p.id, p);
        }
        for (key, value) in self.store.load_side("offenses")? {
            self.offenses.insert(key.parse()?, serde_json::from_value(value)?);
        }
        Ok(())
    }

    /// The data path (to attach interfaces after reconciliation).
    pub fn datapath(&mut self) -> &mut Datapath {
        &mut self.dp
    }

    /// Records the interfaces attached, for status.
    pub fn set_attachments(&mut self, a: Vec<Attachment>) {
        self.attachments = a;
        self.publish_metrics();
    }

    /// Feeds systemd's watchdog and status line from this engine's loop.
    pub fn set_heartbeat(&mut self, heartbeat: Option<Heartbeat>) {
        self.heartbeat = heartbeat;
    }

    /// The `STATUS=` line systemd shows.
    pub fn status_line(&self) -> String {
        let ifaces: Vec<&str> = self.attachments.iter().map(|a| a.iface.as_str()).collect();
        let mut line = format!(
            "enforcing {} blocks on {}",
            self.blocks.len(),
            if ifaces.is_empty() { "no interface".to_owned() } else { ifaces.join(", ") }
        );
        if !self.pending.is_empty() {
            line.push_str(&format!("; {} waiting for approval", self.pending.len()));
        }
        line
    }

    /// The counters and snapshot this engine keeps for the metrics endpoint.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Publishes the metrics snapshot: O(sources + maps), never a walk over the blocks.
    fn publish_metrics(&mut self) {
        let now = now_ms();
        let open: BTreeSet<Source> = self.policy.open_breakers(now).into_iter().map(|b| b.source).collect();
        let mut breakers: BTreeMap<Source, bool> = self.policy.config.sources.keys().map(|s| (s.clone(), false)).collect();
        for s in open {
            breakers.insert(s, true);
        }
        let (allow_v4, allow_v6) = self.allow.iter().fold((0u64, 0u64), |(a, b), (t, _)| if t.is_v4() { (a + 1, b) } else { (a, b + 1) });
        let maps = self
            .dp
            .maps()
            .capacities()
            .into_iter()
            .map(|(name, cap)| {
                let used = match name {
                    map_names::ALLOW_V4 => allow_v4,
                    map_names::ALLOW_V6 => allow_v6,
                    _ => self.used.get(name).copied().unwrap_or(0),
                };
                (name, used, cap)
            })
            .collect();
        self.metrics.publish(Snapshot {
            blocks: self.tally.entries(),
            targets: self.blocks.len() as u64,
            maps,
            breakers: breakers.into_iter().collect(),
            pending: self.pending.len() as u64,
            oldest_deadline_ms: self.deadlines.first().map(|(d, _, _)| *d),
            interfaces: self.attachments.iter().map(|a| (a.iface.clone(), a.ifindex)).collect(),
        });
    }

    /// Commits to the store, timing it for the metrics.
    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), crate::store::StoreError> {
        let started = Instant::now();
        let result = self.store.commit(ops);
        self.metrics.store_commit(started.elapsed());
        result
    }

    /// After a durable round: the tally follows every target it touched.
    fn tally_round(&mut self, round: &Round) {
        for (target, before) in &round.before {
            self.tally.replace(before.as_ref(), self.blocks.get(target));
        }
    }

    /// Loads the store and makes the kernel maps say exactly what it says.
    fn reconcile(&mut self) -> anyhow::Result<()> {
        let now = now_ms();
        let records = self.store.load_all()?;
        let mut expired = Vec::new();
        for Record { target, block } in records {
            if block.is_expired(now) {
                expired.push((target, block));
                continue;
            }
            self.index(&target, &block);
            self.blocks.entry(target).or_default().by_source.insert(block.source.clone(), block);
        }
        for t in self.blocks.values() {
            self.tally.add(t);
        }
        if !expired.is_empty() {
            let ops: Vec<_> = expired
                .iter()
                .map(|(t, b)| StoreOp::Delete(*t, b.source.clone()))
                .collect();
            self.store.commit(&ops)?;
            for (t, b) in &expired {
                let mut e = Event::new(Action::Expire, t);
                e.source = Some(&b.source);
                e.detail = Some("expired while the daemon was not running".into());
                self.audit.record(&e);
            }
        }
        let in_kernel: BTreeMap<Target, BlockValue> = self.dp.maps().blocks()?.into_iter().collect();
        let mut removed = 0usize;
        for target in in_kernel.keys() {
            if !self.blocks.contains_key(target) {
                self.dp.maps_mut().remove_block(target)?;
                let mut e = Event::new(Action::RemoveUnknown, target);
                e.detail = Some("in the kernel map but not in the store".into());
                self.audit.record(&e);
                removed += 1;
            }
        }
        let mut restored = 0usize;
        let targets: Vec<Target> = self.blocks.keys().copied().collect();
        for target in &targets {
            let had = in_kernel.get(target).copied();
            self.count(target, 1);
            if !self.kernel_is_current(target, had) {
                self.sync_kernel(target, had)?;
            }
            if had.is_none() {
                restored += 1;
                let mut e = Event::new(Action::Restore, target);
                e.detail = Some("restored into the kernel from the store".into());
                self.audit.record(&e);
            }
        }
        self.audit.flush();
        tracing::info!(
            targets = self.blocks.len(),
            restored,
            removed_unknown = removed,
            expired = expired.len(),
            "reconciled the kernel maps with the store"
        );
        Ok(())
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

    fn count(&mut self, target: &Target, delta: i64) {
        let (map, _) = self.dp.maps().capacity_for(target);
        let used = self.used.entry(map).or_default();
        *used = used.saturating_add_signed(delta);
    }

    /// Whether the kernel already holds the entry the store calls for (within clock jitter), so
    /// that a restart with a million blocks does not rewrite a million entries.
    fn kernel_is_current(&self, target: &Target, current: Option<BlockValue>) -> bool {
        let (Some(v), Some(entry)) = (current, self.blocks.get(target).and_then(TargetBlocks::kernel_entry)) else {
            return false;
        };
        let wanted = entry.expires_ms.map_or(0, |ms| clock::deadline_to_boot_ns(from_ms(ms)));
        let close = if wanted == 0 || v.expires_ns == 0 {
            wanted == v.expires_ns
        } else {
            wanted.abs_diff(v.expires_ns) < 5_000_000
        };
        close && v.mode == entry.mode.to_kernel()
    }

    /// Writes the kernel entry `target`'s blocks call for (or removes it), keeping counters.
    fn sync_kernel(&mut self, target: &Target, current: Option<BlockValue>) -> Result<(), crate::datapath::MapsError> {
        let Some(entry) = self.blocks.get(target).and_then(TargetBlocks::kernel_entry) else {
            self.dp.maps_mut().remove_block(target)?;
            return Ok(());
        };
        let expires_ns = entry.expires_ms.map_or(0, |ms| clock::deadline_to_boot_ns(from_ms(ms)));
        let mut value = current.unwrap_or_default();
        value.expires_ns = expires_ns;
        value.mode = entry.mode.to_kernel();
        self.dp.maps_mut().insert_block(target, &value)
    }

    /// Runs until the channel closes or `stop` is set (and a command wakes it).
    pub fn run(mut self, rx: Receiver<Command>, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            self.stall.wait();
            let wait = match &self.heartbeat {
                Some(h) => self.until_next_deadline().min(h.every()),
                None => self.until_next_deadline(),
            };
            match rx.recv_timeout(wait) {
                Ok(first) => {
                    let mut round = vec![first];
                    while round.len() < MAX_ROUND {
                        match rx.try_recv() {
                            Ok(c) => round.push(c),
                            Err(_) => break,
                        }
                    }
                    self.handle_round(round);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.reap();
            self.publish_metrics();
            if let Some(mut h) = self.heartbeat.take() {
                h.beat(|| self.status_line());
                self.heartbeat = Some(h);
            }
        }
        self.audit.flush();
        tracing::info!("engine stopped; blocks stay in force in the kernel");
    }

    fn until_next_deadline(&self) -> Duration {
        let block = self.deadlines.first().map(|(d, _, _)| *d);
        let pending = self.pending.values().map(|p| p.expires_ms).min();
        match block.into_iter().chain(pending).min() {
            Some(deadline) => Duration::from_millis(deadline.max(self.reap_backoff_until).saturating_sub(now_ms())),
            None => Duration::from_secs(3600),
        }
    }

    fn handle_round(&mut self, commands: Vec<Command>) {
        let mut round = Round::new();
        let mut pending: Vec<Pending> = Vec::new();
        for Command { request, reply } in commands {
            match request {
                Request::Block(b) => {
                    let resp = match self.block(&mut round, b, false) {
                        Ok((r, t)) => (Response::ok(Reply::Block(r)), vec![t]),
                        Err(e) => (e, vec![]),
                    };
                    pending.push((reply, resp.0, resp.1, true));
                }
                Request::BlockBatch(b) => {
                    let (resp, touched) = self.block_batch(&mut round, b);
                    pending.push((reply, resp, touched, true));
                }
                Request::Unblock { target, source, all } => {
                    let resp = match self.unblock(&mut round, target, source, all) {
                        Ok(r) => (r, vec![target]),
                        Err(e) => (e, vec![]),
                    };
                    pending.push((reply, resp.0, resp.1, true));
                }
                Request::Promote { target, source } => {
                    let (resp, touched) = self.promote(&mut round, target, source);
                    pending.push((reply, resp, touched, true));
                }
                Request::Approve { id } => {
                    let resp = match self.approve(&mut round, id) {
                        Ok((r, t)) => (Response::ok(Reply::Block(r)), vec![t]),
                        Err(e) => (e, vec![]),
                    };
                    pending.push((reply, resp.0, resp.1, true));
                }
                Request::Reject { id } => {
                    let resp = self.reject(&mut round, id);
                    pending.push((reply, resp, vec![], true));
                }
                // These commit on their own, at once (rare, and not part of a round's batch).
                Request::AllowAdd { target, comment } => {
                    let resp = self.allow_add(target, comment);
                    pending.push((reply, resp, vec![], false));
                }
                Request::AllowRemove { target } => {
                    let resp = self.allow_remove(target);
                    pending.push((reply, resp, vec![], false));
                }
                Request::RefreshHost => {
                    self.refresh_host();
                    pending.push((reply, Response::ok(Reply::Refreshed), vec![], false));
                }
                Request::BreakerReset { source } => {
                    let reset = self.policy.reset_breakers(source.as_ref());
                    for s in &reset {
                        tracing::info!(source = %s, "breaker reset by the operator");
                    }
                    pending.push((reply, Response::ok(Reply::BreakerReset { reset }), vec![], false));
                }
                read => {
                    // Reads see every write before them in this round once it is committed;
                    // answer them after the commit, in order.
                    let resp = self.read(read);
                    pending.push((reply, resp, vec![], false));
                }
            }
        }
        if !round.ops.is_empty()
            && let Err(e) = self.commit(&round.ops)
        {
            tracing::error!(error = %e, "committing to the store failed; rolling back this round");
            for (target, before) in std::mem::take(&mut round.before) {
                self.restore(target, before);
            }
            if let Some(before) = round.pending_before.take() {
                self.pending = before;
            }
            for (target, before) in std::mem::take(&mut round.offenses_before) {
                match before {
                    Some(times) => self.offenses.insert(target, times),
                    None => self.offenses.remove(&target),
                };
            }
            for (reply, resp, _, wrote) in pending {
                let resp = if !wrote || matches!(resp, Response::Err { .. }) {
                    resp
                } else {
                    Response::err(ErrorCode::Internal, format!("the block store failed: {e}; nothing was changed"))
                };
                let _ = reply.send(resp);
            }
            return;
        }
        self.tally_round(&round);
        // Durable: now make it so in the kernel.
        let mut failed: BTreeMap<Target, String> = BTreeMap::new();
        for (target, before) in &round.before {
            let current = if before.is_some() {
                self.dp.maps().get_block(target).ok().flatten()
            } else {
                None
            };
            if let Err(e) = self.sync_kernel(target, current) {
                tracing::error!(%target, error = %e, "writing the kernel map failed");
                failed.insert(*target, e.to_string());
            }
        }
        self.audit.flush();
        for (reply, resp, touched, _) in pending {
            let resp = match touched.iter().find_map(|t| failed.get(t)) {
                Some(e) => Response::err(
                    ErrorCode::Internal,
                    format!("stored but the kernel map update failed ({e}); it is retried at the next start"),
                ),
                None => resp,
            };
            let _ = reply.send(resp);
        }
    }

    /// Puts a target's blocks back as they were before this round.
    fn restore(&mut self, target: Target, before: Option<TargetBlocks>) {
        if let Some(now) = self.blocks.remove(&target) {
            for b in now.by_source.values() {
                self.unindex(&target, b);
            }
            self.count(&target, -1);
        }
        if let Some(before) = before {
            for b in before.by_source.values() {
                self.index(&target, b);
            }
            self.count(&target, 1);
            self.blocks.insert(target, before);
        }
    }

    fn remember(&self, round: &mut Round, target: &Target) {
        round
            .before
            .entry(*target)
            .or_insert_with(|| self.blocks.get(target).cloned());
    }

    #[expect(clippy::result_large_err, reason = "a refusal is answered at once, never propagated far; boxing would add an allocation per refusal")]
    fn block(&mut self, round: &mut Round, mut req: BlockRequest, approved: bool) -> Result<(BlockReply, Target), Response> {
        let reason = std::sync::Arc::new(std::mem::take(&mut req.reason));
        self.block_shared(round, req, reason, approved)
    }

    /// [`Engine::block`] with the reason already shared (a batch shares one).
    #[expect(clippy::result_large_err, reason = "a refusal is answered at once, never propagated far; boxing would add an allocation per refusal")]
    fn block_shared(
        &mut self,
        round: &mut Round,
        req: BlockRequest,
        reason: std::sync::Arc<crate::block::Reason>,
        approved: bool,
    ) -> Result<(BlockReply, Target), Response> {
        if let Err(e) = reason.validate() {
            return Err(Response::err(ErrorCode::InvalidRequest, e));
        }
        if req.ttl_secs == Some(0) {
            return Err(Response::err(ErrorCode::InvalidRequest, "the TTL must be at least 1 second"));
        }
        let target = req.target;
        let now = now_ms();
        let has_block = self.blocks.get(&target).is_some_and(|t| t.by_source.contains_key(&req.source));
        let offenses = self.offense_count(&target, now);
        let ask = Ask {
            target,
            source: &req.source,
            ttl: req.ttl_secs.map(Duration::from_secs),
            permanent: req.permanent,
            shadow: req.shadow,
            force: req.force,
            approved,
            existing: has_block,
        };
        let (decision, event) = self.policy.decide(&ask, &self.allow, offenses, now);
        if let BreakerEvent::Opened = event {
            tracing::warn!(source = %req.source, "circuit breaker opened");
            let mut e = Event::new(Action::BreakerOpen, &target);
            e.source = Some(&req.source);
            e.detail = Some("rate of new blocks exceeded; breaker open".into());
            self.audit.record(&e);
        }
        let (ttl, mode, notes) = match decision {
            Decision::Refuse { rule, message } => {
                self.metrics.refusal(rule, &req.source);
                let msg = format!("refused by policy rule `{rule}`: {message}");
                self.refuse(&target, &req.source, &msg);
                return Err(Response::err(ErrorCode::Refused, msg));
            }
            Decision::Pending { why } => {
                let id = self.next_pending;
                self.next_pending += 1;
                let mut request = req.clone();
                request.reason = (*reason).clone();
                let p = PendingBlock {
                    id,
                    request,
                    why: why.clone(),
                    created_ms: now,
                    expires_ms: now + self.policy.pending_ttl().as_millis() as u64,
                };
                round.pending_before.get_or_insert_with(|| self.pending.clone());
                round.ops.push(StoreOp::PutPending(id, serde_json::to_value(&p).expect("serialisable")));
                let mut e = Event::new(Action::Pending, &target);
                e.source = Some(&req.source);
                e.reason = Some(&reason);
                e.detail = Some(format!("pending approval (id {id}): {why}"));
                self.audit.record(&e);
                self.pending.insert(id, p);
                return Ok((
                    BlockReply {
                        target,
                        outcome: Outcome::Pending,
                        expires_ms: None,
                        mode: if req.shadow { Mode::Shadow } else { Mode::Enforce },
                        notes: vec![why],
                        pending_id: Some(id),
                    },
                    target,
                ));
            }
            Decision::Apply { ttl, mode, notes } => (ttl, mode, notes),
        };
        let expires_ms = ttl.map(|t| now.saturating_add(t.as_millis() as u64));
        let is_new_target = !self.blocks.contains_key(&target);
        if is_new_target {
            let (map, capacity) = self.dp.maps().capacity_for(&target);
            if self.used.get(map).copied().unwrap_or(0) >= u64::from(capacity) {
                let msg = format!(
                    "the {map} map is full ({capacity} entries); nothing was evicted. Raise [capacity] in the configuration or unblock targets"
                );
                self.metrics.refusal("capacity", &req.source);
                self.refuse(&target, &req.source, &format!("rule `capacity`: {msg}"));
                return Err(Response::err(ErrorCode::MapFull, msg));
            }
        }
        self.remember(round, &target);
        let existing = self.blocks.get(&target).and_then(|t| t.by_source.get(&req.source)).cloned();
        let (outcome, block) = match existing {
            None => (
                Outcome::Created,
                SourceBlock {
                    source: req.source.clone(),
                    reason: reason.clone(),
                    created_ms: now,
                    updated_ms: now,
                    expires_ms,
                    mode,
                },
            ),
            Some(old) => {
                self.unindex(&target, &old);
                // Re-blocking never shortens a block: it extends to the later end.
                let later = match (old.expires_ms, expires_ms) {
                    (None, _) => None,
                    (_, None) => None,
                    (Some(a), Some(b)) => Some(a.max(b)),
                };
                let outcome = if later != old.expires_ms { Outcome::Extended } else { Outcome::Unchanged };
                // A re-block without a reason keeps the one given before; one with a reason
                // replaces it. It never turns an enforced block back into a shadow one (say, a
                // promoted block re-triggered by a source still in shadow rollout).
                let reason = if *reason == crate::block::Reason::default() { old.reason.clone() } else { reason.clone() };
                let mode = if old.mode == Mode::Enforce { Mode::Enforce } else { mode };
                (
                    outcome,
                    SourceBlock {
                        reason,
                        updated_ms: now,
                        expires_ms: later,
                        mode,
                        ..old
                    },
                )
            }
        };
        self.index(&target, &block);
        if is_new_target {
            self.count(&target, 1);
            self.record_offense(round, &target, now);
        }
        round.ops.push(StoreOp::Put(Record {
            target,
            block: block.clone(),
        }));
        let entry = self.blocks.entry(target).or_default();
        entry.by_source.insert(block.source.clone(), block.clone());
        let action = match outcome {
            Outcome::Created => Action::Block,
            Outcome::Extended => Action::Extend,
            Outcome::Unchanged => Action::Reblock,
            Outcome::Pending => unreachable!("pending requests return early"),
        };
        let mut e = Event::new(action, &target);
        e.source = Some(&block.source);
        e.reason = Some(&block.reason);
        e.expires_ms = block.expires_ms;
        e.mode = Some(block.mode);
        if !notes.is_empty() {
            e.detail = Some(notes.join("; "));
        }
        self.audit.record(&e);
        Ok((
            BlockReply {
                target,
                outcome,
                expires_ms: block.expires_ms,
                mode: block.mode,
                notes,
                pending_id: None,
            },
            target,
        ))
    }

    fn offense_count(&self, target: &Target, now: UnixMillis) -> usize {
        let Some(window) = self.policy.offense_window() else { return 0 };
        let since = now.saturating_sub(window.as_millis() as u64);
        self.offenses.get(target).map_or(0, |t| t.iter().filter(|&&x| x >= since).count())
    }

    fn record_offense(&mut self, round: &mut Round, target: &Target, now: UnixMillis) {
        let Some(window) = self.policy.offense_window() else { return };
        let since = now.saturating_sub(window.as_millis() as u64);
        round
            .offenses_before
            .entry(*target)
            .or_insert_with(|| self.offenses.get(target).cloned());
        let times = self.offenses.entry(*target).or_default();
        times.retain(|&t| t >= since);
        times.push(now);
        round.ops.push(StoreOp::PutOffenses(*target, times.clone()));
    }

    fn promote(&mut self, round: &mut Round, target: Option<Target>, source: Option<Source>) -> (Response, Vec<Target>) {
        let mut promoted = Vec::new();
        let targets: Vec<Target> = match target {
            Some(t) => vec![t],
            None => self.blocks.keys().copied().collect(),
        };
        for t in targets {
            let Some(blocks) = self.blocks.get(&t) else { continue };
            let sources: Vec<Source> = blocks
                .by_source
                .values()
                .filter(|b| b.mode == Mode::Shadow && source.as_ref().is_none_or(|s| *s == b.source))
                .map(|b| b.source.clone())
                .collect();
            if sources.is_empty() {
                continue;
            }
            self.remember(round, &t);
            for s in sources {
                let b = self.blocks.get_mut(&t).and_then(|x| x.by_source.get_mut(&s)).expect("present");
                b.mode = Mode::Enforce;
                b.updated_ms = now_ms();
                round.ops.push(StoreOp::Put(Record { target: t, block: b.clone() }));
                let mut e = Event::new(Action::Promote, &t);
                e.source = Some(&s);
                e.mode = Some(Mode::Enforce);
                self.audit.record(&e);
                promoted.push((t, s));
            }
        }
        if promoted.is_empty() {
            let what = match (target, &source) {
                (Some(t), _) => format!("{t} has no shadow block"),
                (None, Some(s)) => format!("source `{s}` has no shadow blocks"),
                (None, None) => "there are no shadow blocks".to_owned(),
            };
            return (Response::err(ErrorCode::NotFound, what), vec![]);
        }
        let touched = promoted.iter().map(|(t, _)| *t).collect();
        (Response::ok(Reply::Promote { promoted }), touched)
    }

    #[expect(clippy::result_large_err, reason = "a refusal is answered at once, never propagated far; boxing would add an allocation per refusal")]
    fn approve(&mut self, round: &mut Round, id: u64) -> Result<(BlockReply, Target), Response> {
        round.pending_before.get_or_insert_with(|| self.pending.clone());
        let Some(p) = self.pending.remove(&id) else {
            return Err(Response::err(ErrorCode::NotFound, format!("no pending block with id {id} (see `enforcer pending`)")));
        };
        round.ops.push(StoreOp::DeletePending(id));
        let mut e = Event::new(Action::Approve, &p.request.target);
        e.source = Some(&p.request.source);
        e.detail = Some(format!("approved pending block {id}"));
        self.audit.record(&e);
        let result = self.block(round, p.request.clone(), true);
        if result.is_err() {
            // Keep it pending so the operator can see why and decide again.
            round.ops.pop();
            self.pending.insert(id, p);
        }
        result
    }

    fn reject(&mut self, round: &mut Round, id: u64) -> Response {
        round.pending_before.get_or_insert_with(|| self.pending.clone());
        let Some(p) = self.pending.remove(&id) else {
            return Response::err(ErrorCode::NotFound, format!("no pending block with id {id} (see `enforcer pending`)"));
        };
        round.ops.push(StoreOp::DeletePending(id));
        let mut e = Event::new(Action::Reject, &p.request.target);
        e.source = Some(&p.request.source);
        e.detail = Some(format!("rejected pending block {id}"));
        self.audit.record(&e);
        Response::ok(Reply::Rejected { id })
    }

    fn allow_add(&mut self, target: Target, comment: Option<String>) -> Response {
        let origin = AllowOrigin::Cli { comment };
        if self.allow.origins(&target).is_some_and(|o| o.iter().any(|x| matches!(x, AllowOrigin::Cli { .. }))) {
            return Response::ok(Reply::Allow { target, changed: false });
        }
        let value = serde_json::to_value(&origin).expect("serialisable");
        if let Err(e) = self.store.commit(&[StoreOp::PutAllow(target, value)]) {
            return Response::err(ErrorCode::Internal, format!("the block store failed: {e}; nothing was changed"));
        }
        if let Err(e) = self.dp.maps_mut().insert_allow(&target, origin.to_kernel()) {
            let _ = self.store.commit(&[StoreOp::DeleteAllow(target)]);
            let code = if matches!(e, crate::datapath::MapsError::Full { .. }) { ErrorCode::MapFull } else { ErrorCode::Internal };
            return Response::err(code, e.to_string());
        }
        self.allow.insert(target, origin);
        let mut e = Event::new(Action::AllowAdd, &target);
        e.detail = Some("allowlisted with the CLI".into());
        self.audit.record(&e);
        self.audit.flush();
        Response::ok(Reply::Allow { target, changed: true })
    }

    fn allow_remove(&mut self, target: Target) -> Response {
        let Some(origins) = self.allow.origins(&target) else {
            return Response::err(ErrorCode::NotFound, format!("{target} is not on the allowlist (see `enforcer allow list`)"));
        };
        if !origins.iter().any(|o| matches!(o, AllowOrigin::Cli { .. })) {
            let from: Vec<String> = origins.iter().map(ToString::to_string).collect();
            return Response::err(
                ErrorCode::Refused,
                format!("{target} comes from {}; remove it there (the configuration file), not with the CLI", from.join(", ")),
            );
        }
        if let Err(e) = self.store.commit(&[StoreOp::DeleteAllow(target)]) {
            return Response::err(ErrorCode::Internal, format!("the block store failed: {e}; nothing was changed"));
        }
        if self.allow.remove_where(&target, |o| matches!(o, AllowOrigin::Cli { .. }))
            && let Err(e) = self.dp.maps_mut().remove_allow(&target)
        {
            return Response::err(ErrorCode::Internal, e.to_string());
        }
        let mut e = Event::new(Action::AllowRemove, &target);
        e.detail = Some("removed from the allowlist with the CLI".into());
        self.audit.record(&e);
        self.audit.flush();
        Response::ok(Reply::Allow { target, changed: true })
    }

    /// Re-reads the host's addresses and gateways; the allowlist follows them.
    fn refresh_host(&mut self) {
        if !self.builtin_allowlist {
            return;
        }
        let now = match host::host_addresses() {
            Ok(now) => now,
            Err(e) => {
                tracing::error!(error = %e, "reading the host's addresses failed; the builtin allowlist was not refreshed");
                return;
            }
        };
        let current: BTreeSet<Target> = self
            .allow
            .iter()
            .filter(|(_, o)| o.iter().any(|x| matches!(x, AllowOrigin::Builtin { .. })))
            .map(|(t, _)| *t)
            .collect();
        let wanted: BTreeMap<Target, &str> = now.iter().map(|h| (h.target, h.what)).collect();
        for t in current.iter().filter(|t| !wanted.contains_key(t)) {
            if self.allow.remove_where(t, |o| matches!(o, AllowOrigin::Builtin { .. })) {
                let _ = self.dp.maps_mut().remove_allow(t);
            }
            tracing::info!(target = %t, "no longer a host address or gateway: removed from the allowlist");
        }
        for (t, what) in wanted.iter().filter(|(t, _)| !current.contains(t)) {
            if self.allow.insert(*t, AllowOrigin::Builtin { what: (*what).to_owned() })
                && let Err(e) = self.dp.maps_mut().insert_allow(t, enforcer_common::ALLOW_ORIGIN_BUILTIN)
            {
                tracing::error!(target = %t, error = %e, "allowlisting a host address failed");
            }
            tracing::info!(target = %t, what, "allowlisted");
        }
    }

    fn block_batch(&mut self, round: &mut Round, req: BatchRequest) -> (Response, Vec<Target>) {
        let mut applied = 0;
        let mut pending = 0;
        let mut failed = Vec::new();
        let mut touched = Vec::with_capacity(req.items.len());
        let reason = std::sync::Arc::new(req.reason);
        for (index, item) in req.items.into_iter().enumerate() {
            let one = BlockRequest {
                target: item.target,
                ttl_secs: item.ttl_secs.or(req.ttl_secs),
                permanent: false,
                source: req.source.clone(),
                reason: crate::block::Reason::default(),
                shadow: req.shadow,
                force: false,
            };
            match self.block_shared(round, one, reason.clone(), false) {
                Ok((r, _)) if r.outcome == Outcome::Pending => pending += 1,
                Ok((_, t)) => {
                    applied += 1;
                    touched.push(t);
                }
                Err(Response::Err { error, .. }) => failed.push(BatchFailure {
                    index,
                    target: item.target,
                    error,
                }),
                Err(Response::Ok { .. }) => unreachable!("block errors are errors"),
            }
        }
        (Response::ok(Reply::BlockBatch { applied, pending, failed }), touched)
    }

    #[expect(clippy::result_large_err, reason = "a refusal is answered at once, never propagated far; boxing would add an allocation per refusal")]
    fn unblock(&mut self, round: &mut Round, target: Target, source: Option<Source>, all: bool) -> Result<Response, Response> {
        let Some(current) = self.blocks.get(&target) else {
            return Err(Response::err(ErrorCode::NotFound, format!("{target} is not blocked (see `enforcer list`)")));
        };
        let source = source.unwrap_or_else(Source::cli);
        let removed: Vec<Source> = if all {
            current.by_source.keys().cloned().collect()
        } else if current.by_source.contains_key(&source) {
            vec![source.clone()]
        } else {
            return Err(Response::err(
                ErrorCode::NotFound,
                format!(
                    "{target} has no block from source `{source}` (blocked by: {}); use --source NAME or --all",
                    current.sources()
                ),
            ));
        };
        self.remember(round, &target);
        for s in &removed {
            if let Some(b) = self.blocks.get_mut(&target).and_then(|t| t.by_source.remove(s)) {
                self.unindex(&target, &b);
                round.ops.push(StoreOp::Delete(target, s.clone()));
                let mut e = Event::new(Action::Unblock, &target);
                e.source = Some(s);
                self.audit.record(&e);
            }
        }
        let lifted = self.blocks.get(&target).is_some_and(|t| t.by_source.is_empty());
        if lifted {
            self.blocks.remove(&target);
            self.count(&target, -1);
        }
        Ok(Response::ok(Reply::Unblock { target, removed, lifted }))
    }

    fn refuse(&mut self, target: &Target, source: &Source, detail: &str) {
        let mut e = Event::new(Action::Refuse, target);
        e.source = Some(source);
        e.detail = Some(detail.to_owned());
        self.audit.record(&e);
    }

    /// Drops pending requests nobody approved in time.
    fn expire_pending(&mut self, now: UnixMillis) {
        let due: Vec<u64> = self.pending.values().filter(|p| p.expires_ms <= now).map(|p| p.id).collect();
        if due.is_empty() {
            return;
        }
        let ops: Vec<StoreOp> = due.iter().map(|id| StoreOp::DeletePending(*id)).collect();
        if let Err(e) = self.commit(&ops) {
            tracing::error!(error = %e, "dropping expired pending blocks failed; retrying in 1 s");
            self.reap_backoff_until = now_ms() + 1000;
            return;
        }
        for id in due {
            if let Some(p) = self.pending.remove(&id) {
                let mut e = Event::new(Action::PendingExpire, &p.request.target);
                e.source = Some(&p.request.source);
                e.detail = Some(format!("pending block {id} was not approved in time"));
                self.audit.record(&e);
            }
        }
        self.audit.flush();
    }

    /// Removes every source block whose deadline has passed.
    fn reap(&mut self) {
        let now = now_ms();
        if now < self.reap_backoff_until {
            return;
        }
        self.expire_pending(now);
        let mut due = Vec::new();
        while let Some((deadline, _, _)) = self.deadlines.first() {
            if *deadline > now || due.len() >= MAX_REAP {
                break;
            }
            due.push(self.deadlines.pop_first().expect("not empty"));
        }
        if due.is_empty() {
            return;
        }
        let mut round = Round::new();
        let mut expired = Vec::new();
        for (deadline, target, source) in &due {
            // Only the block this deadline belongs to: a block extended or re-made since has
            // its own deadline entry.
            let current = self.blocks.get(target).and_then(|b| b.by_source.get(source));
            if current.is_none_or(|b| b.expires_ms != Some(*deadline)) {
                continue;
            }
            self.remember(&mut round, target);
            let blocks = self.blocks.get_mut(target).expect("checked above");
            blocks.by_source.remove(source);
            round.ops.push(StoreOp::Delete(*target, source.clone()));
            expired.push((*target, source.clone()));
            if blocks.by_source.is_empty() {
                self.blocks.remove(target);
                self.count(target, -1);
            }
        }
        if round.ops.is_empty() {
            return;
        }
        if let Err(e) = self.commit(&round.ops) {
            // The kernel stopped enforcing them at their deadline anyway; retry the bookkeeping
            // in a second, with the same deadlines.
            tracing::error!(error = %e, "removing expired blocks from the store failed; retrying in 1 s");
            for (target, before) in std::mem::take(&mut round.before) {
                self.restore(target, before);
            }
            self.reap_backoff_until = now_ms() + 1000;
            return;
        }
        self.tally_round(&round);
        self.metrics.expired(expired.len() as u64);
        for (target, source) in &expired {
            let mut e = Event::new(Action::Expire, target);
            e.source = Some(source);
            self.audit.record(&e);
        }
        for target in round.before.keys() {
            let current = self.dp.maps().get_block(target).ok().flatten();
            if let Err(e) = self.sync_kernel(target, current) {
                tracing::error!(%target, error = %e, "updating the kernel map after expiry failed");
            }
        }
        self.audit.flush();
        tracing::debug!(count = expired.len(), "reaped expired blocks");
        if due.len() >= MAX_REAP {
            release_freed_memory();
        }
    }

    fn read(&mut self, request: Request) -> Response {
        match request {
            Request::Ping => Response::ok(Reply::Pong {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                protocol: PROTOCOL_VERSION,
            }),
            Request::List { source } => {
                let blocks = self
                    .blocks
                    .iter()
                    .filter(|(_, b)| source.as_ref().is_none_or(|s| b.by_source.contains_key(s)))
                    .map(|(t, b)| self.list_entry(t, b))
                    .collect();
                Response::ok(Reply::List { blocks })
            }
            Request::Show { target } => Response::ok(Reply::Show(self.show(target))),
            Request::Stats => self.stats(),
            Request::Status => Response::ok(Reply::Status(self.status())),
            Request::AllowList => Response::ok(Reply::AllowList {
                entries: self
                    .allow
                    .iter()
                    .map(|(t, o)| AllowEntry {
                        target: *t,
                        origin: o.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    })
                    .collect(),
            }),
            Request::PendingList => Response::ok(Reply::PendingList {
                pending: self.pending.values().cloned().collect(),
            }),
            _ => unreachable!("writes are not reads"),
        }
    }

    fn list_entry(&self, target: &Target, blocks: &TargetBlocks) -> ListEntry {
        let kernel = self.dp.maps().get_block(target).ok().flatten().unwrap_or_default();
        let entry = blocks.kernel_entry();
        ListEntry {
            target: *target,
            mode: entry.map_or(Mode::Enforce, |e| e.mode),
            expires_ms: entry.and_then(|e| e.expires_ms),
            sources: blocks
                .by_source
                .values()
                .map(|b| ListSource {
                    source: b.source.clone(),
                    reason: b.reason.clone(),
                    created_ms: b.created_ms,
                    expires_ms: b.expires_ms,
                    mode: b.mode,
                })
                .collect(),
            packets: kernel.hit_packets,
            bytes: kernel.hit_bytes,
            last_hit_ms: (kernel.last_hit_ns != 0).then(|| crate::block::to_ms(clock::boot_ns_to_wall(kernel.last_hit_ns))),
        }
    }

    fn show(&self, target: Target) -> ShowReply {
        let addr: IpAddr = target.addr();
        let mut blocks: Vec<ListEntry> = self
            .blocks
            .iter()
            .filter(|(t, _)| t.overlaps(&target))
            .map(|(t, b)| self.list_entry(t, b))
            .collect();
        blocks.sort_by_key(|e| std::cmp::Reverse(e.target.prefix_len()));
        let allowlist: Vec<AllowEntry> = self
            .allow
            .iter()
            .filter(|(t, _)| t.contains(addr))
            .map(|(t, o)| AllowEntry {
                target: *t,
                origin: o.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            })
            .collect();
        let covering: Vec<&ListEntry> = blocks.iter().filter(|e| e.target.contains(addr)).collect();
        let verdict = if covering.is_empty() {
            "pass"
        } else if !allowlist.is_empty() {
            "pass (allowlisted)"
        } else if covering.iter().any(|e| e.mode == Mode::Enforce) {
            "drop"
        } else {
            "pass (shadow)"
        };
        ShowReply {
            target,
            blocks,
            allowlist,
            verdict: verdict.to_owned(),
        }
    }

    fn stats(&self) -> Response {
        let maps = self.dp.maps();
        let total = match maps.stats_total() {
            Ok(t) => t,
            Err(e) => return Response::err(ErrorCode::Internal, e.to_string()),
        };
        let interfaces = self
            .attachments
            .iter()
            .filter_map(|a| {
                maps.stats_for_ifindex(a.ifindex).ok().map(|s| InterfaceCounters {
                    iface: a.iface.clone(),
                    counters: s.into(),
                })
            })
            .collect();
        let mut by_source: BTreeMap<Source, usize> = BTreeMap::new();
        for b in self.blocks.values() {
            for s in b.by_source.keys() {
                *by_source.entry(s.clone()).or_default() += 1;
            }
        }
        Response::ok(Reply::Stats(StatsReply {
            total: total.into(),
            interfaces,
            blocks_by_source: by_source.into_iter().collect(),
        }))
    }

    fn status(&mut self) -> StatusReply {
        let breakers = self.policy.open_breakers(now_ms());
        let maps = self.dp.maps();
        let allow_used = maps.allows().map(|a| a.len()).unwrap_or(0);
        let map_use = maps
            .capacities()
            .into_iter()
            .map(|(name, capacity)| MapUse {
                map: name.to_owned(),
                used: match name {
                    map_names::ALLOW_V4 | map_names::ALLOW_V6 => maps
                        .allows()
                        .map(|a| {
                            a.iter()
                                .filter(|(t, _)| t.is_v4() == (name == map_names::ALLOW_V4))
                                .count() as u64
                        })
                        .unwrap_or(allow_used as u64),
                    _ => self.used.get(name).copied().unwrap_or(0),
                },
                capacity,
            })
            .collect();
        StatusReply {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            interfaces: self
                .attachments
                .iter()
                .map(|a| InterfaceStatus {
                    iface: a.iface.clone(),
                    ifindex: a.ifindex,
                    mode: a.mode,
                    prog_id: a.prog_id,
                })
                .collect(),
            maps: map_use,
            targets: self.blocks.len(),
            source_blocks: self.blocks.values().map(|b| b.by_source.len()).sum(),
            store_path: self.store.path().display().to_string(),
            bpffs_dir: self.dp.layout().base().display().to_string(),
            audit_log: self.audit.path().display().to_string(),
            next_expiry_ms: self.deadlines.first().map(|(d, _, _)| *d),
            policy_mode: self.policy.config.mode,
            breakers,
            pending: self.pending.len(),
            allowlist: self.allow.len(),
        }
    }
}

/// After a large wave of expiries, hands freed heap back to the system (glibc keeps it
/// otherwise: a daemon that once held a million blocks would keep their memory for good).
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
