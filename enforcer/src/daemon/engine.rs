//! The engine loop: the one owner of the ledger, the store and the kernel maps.
//!
//! It runs on its own thread and takes requests from a channel. Every request waiting in the
//! channel is handled in one [round](super::round): writes go to the [ledger](super::ledger),
//! are committed to the store in one fsynced transaction, written to the kernel maps, and only
//! then acknowledged; reads are answered after that, from the ledger ([`super::queries`]).
//!
//! The same loop is the reaper: it sleeps until the next deadline (not a periodic scan), then
//! removes what expired. The data path has already stopped enforcing those entries by itself at
//! their deadline; reaping is garbage collection and bookkeeping.

mod links;

pub use links::AttachFailure;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

use enforcer_common::BlockValue;
use tokio::sync::oneshot;

use super::{
    kernel_sync,
    ledger::{self, Capacity, Change, Ledger, Replay, Write},
    queries::View,
    refusal::Refusal,
    round::{self, BlockStore},
    systemd::{Heartbeat, TestStall},
};
use crate::{
    access::{AccessPolicy, Caller},
    audit::{Action, AuditLog, Event},
    block::{Source, TargetBlocks, UnixMillis},
    datapath::{Datapath, XdpModeRequest},
    interfaces::Interfaces,
    metrics::{BlockTally, Metrics, Snapshot},
    policy::{AllowOrigin, Policy, PolicyConfig, host},
    protocol::{Reply, Request, RequestId},
    store::{Store, StoreError, StoreOp},
    target::Target,
    time::{self, SystemClock, TimeKeeper},
};

/// A request, who sent it, and where to send its answer.
pub struct Command {
    /// The request.
    pub request: Request,
    /// Who sent it: a socket peer, or the daemon itself (checked against the access rules
    /// before anything else, see [`Engine::authorize`]).
    pub caller: Caller,
    /// The client's id for it: a write whose id was applied already is answered with the first
    /// answer and not applied again.
    pub id: Option<RequestId>,
    /// Set when the request is a spooled trigger being replayed.
    pub replay: Option<Replay>,
    /// The answer goes here.
    pub reply: oneshot::Sender<Result<Reply, Refusal>>,
}

impl Command {
    /// A request from the daemon itself (`what`: the part of it that asks).
    pub fn internal(what: &'static str, request: Request, reply: oneshot::Sender<Result<Reply, Refusal>>) -> Self {
        Self {
            request,
            caller: Caller::internal(what),
            id: None,
            replay: None,
            reply,
        }
    }

    /// A spooled trigger, replayed by the daemon with its id (charged to the rate limiter at
    /// `replay.spooled_ms`).
    pub fn replay(request: Request, id: RequestId, replay: Replay, reply: oneshot::Sender<Result<Reply, Refusal>>) -> Self {
        Self {
            request,
            caller: Caller::internal("spool"),
            id: Some(id),
            replay: Some(replay),
            reply,
        }
    }
}

/// Most requests handled in one durable round.
const MAX_ROUND: usize = 4096;
/// Most expiries handled in one durable round.
const MAX_REAP: usize = 10_000;
/// Longest the loop sleeps without reading the clock (a step is seen within this).
const CLOCK_CHECK: Duration = Duration::from_secs(1);

/// The engine.
pub struct Engine {
    ledger: Ledger,
    store: Store,
    dp: Datapath,
    audit: AuditLog,
    builtin_allowlist: bool,
    /// The configured interfaces and what is known of each.
    interfaces: Interfaces,
    /// The mode to attach in.
    xdp_mode: XdpModeRequest,
    /// The id of the program this daemon attaches (what "protected" means in the kernel).
    prog_id: u32,
    /// Whether the first dump of the links was followed (what appears later is news).
    links_followed: bool,
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
    /// Who may do what.
    access: AccessPolicy,
    /// The clocks, watched for wall-clock steps.
    clock: TimeKeeper<SystemClock>,
    /// Store operations still to commit (a clock step's, when its commit failed): they go first
    /// in the next commit.
    carry: Vec<StoreOp>,
}

/// The store, timing each commit for the metrics.
struct TimedStore<'a> {
    store: &'a mut Store,
    metrics: &'a Metrics,
    carry: &'a mut Vec<StoreOp>,
}

impl BlockStore for TimedStore<'_> {
    fn commit(&mut self, ops: &[StoreOp]) -> Result<(), StoreError> {
        let started = Instant::now();
        let result = if self.carry.is_empty() {
            self.store.commit(ops)
        } else {
            let all: Vec<StoreOp> = self.carry.iter().chain(ops).cloned().collect();
            self.store.commit(&all)
        };
        if result.is_ok() {
            self.carry.clear();
        }
        self.metrics.store_commit(started.elapsed());
        result
    }
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
    /// Who may do what on the control socket.
    pub access: AccessPolicy,
}

/// Whether a request only reads (answered after the round's writes).
fn is_read(request: &Request) -> bool {
    matches!(
        request,
        Request::Ping
            | Request::List { .. }
            | Request::Show { .. }
            | Request::Stats
            | Request::Status
            | Request::AllowList
            | Request::PendingList
    )
}

impl Engine {
    /// Builds the engine from the store, reconciling the kernel maps with it.
    pub fn start(store: Store, dp: Datapath, audit: AuditLog, config: EngineConfig) -> anyhow::Result<Self> {
        let capacity = Capacity::new(&dp.maps().capacities());
        let mut engine = Self {
            ledger: Ledger::new(Policy::new(config.policy, config.default_ttl), capacity),
            store,
            dp,
            audit,
            builtin_allowlist: config.builtin_allowlist,
            interfaces: Interfaces::default(),
            xdp_mode: XdpModeRequest::Auto,
            prog_id: 0,
            links_followed: false,
            started: Instant::now(),
            reap_backoff_until: 0,
            metrics: Arc::default(),
            tally: BlockTally::default(),
            heartbeat: None,
            stall: TestStall::from_env(),
            access: config.access,
            clock: TimeKeeper::new(SystemClock, time::boot_id()),
            carry: Vec::new(),
        };
        engine.ledger.set_time_base(engine.clock.base());
        engine.load_allowlist(&config.allowlist)?;
        let meta = engine.store.load_meta()?;
        let shift = engine.stored_time_shift(meta.time_base.as_ref());
        engine.ledger.load_side(engine.store.load_pending()?, engine.store.load_offenses()?, meta.next_pending_id);
        let forgotten = engine.ledger.load_requests(engine.store.load_requests()?, crate::block::now_ms());
        if !forgotten.is_empty() {
            engine.store.commit(&forgotten.into_iter().map(StoreOp::DeleteRequest).collect::<Vec<_>>())?;
        }
        engine.ledger.shift_deadlines(shift);
        engine.reconcile(shift)?;
        engine.store_time_base(shift, meta.time_base.as_ref())?;
        Ok(engine)
    }

    /// How far the stored deadlines must move to keep their boot-relative time: the wall
    /// clock's step while no daemon ran, on this boot. After a reboot (or in a store from
    /// before the time base was kept) there is no boot-relative time, and the stored
    /// wall-clock deadlines are taken as they are.
    fn stored_time_shift(&self, stored: Option<&time::TimeBase>) -> i64 {
        let Some(stored) = stored else { return 0 };
        match self.ledger.time_base().shift_from(stored) {
            Some(shift) if ledger::is_step(shift) => shift,
            Some(_) => 0,
            None => {
                tracing::info!("the machine booted since the store was written: block deadlines are taken as wall-clock times");
                0
            }
        }
    }

    /// Stores the time base the loaded deadlines are now expressed under, and after a step the
    /// moved deadlines with it (one commit), and audits the step.
    fn store_time_base(&mut self, shift: i64, stored: Option<&time::TimeBase>) -> anyhow::Result<()> {
        let mut ops = Vec::new();
        if shift != 0 {
            ops = self.ledger.timed_ops();
            let moved = self.ledger.blocks().values().flat_map(|b| b.by_source.values()).filter(|b| b.expires_ms.is_some()).count();
            tracing::warn!(
                step = %time::describe_jump(shift),
                moved,
                "the wall clock stepped while the daemon was not running; block deadlines moved with it and keep their remaining time"
            );
            self.audit.record(&ledger::jump_event(shift, moved, "while the daemon was not running"));
            self.audit.flush();
        }
        if stored != Some(self.ledger.time_base()) {
            ops.push(StoreOp::SetTimeBase(self.ledger.time_base().clone()));
        }
        if !ops.is_empty() {
            self.store.commit(&ops)?;
        }
        Ok(())
    }

    /// Now (Unix ms), after following the clock: a wall-clock step moves every deadline with
    /// it (stored, and audited once) before anything reads the time.
    fn now(&mut self) -> UnixMillis {
        let tick = self.clock.tick();
        if let Some(change) = self.ledger.follow_clock(&tick) {
            if let Some(event) = &change.event {
                self.audit.record(event);
                self.audit.flush();
            }
            self.carry.extend(change.ops);
            let (_, mut store, _) = self.timed_store();
            if let Err(e) = store.commit(&[]) {
                tracing::error!(error = %e, "storing the moved deadlines failed; they go with the next commit");
            }
        }
        tick.now
    }

    /// Builds the allowlist (config, stored CLI entries, the host) and makes the kernel match.
    fn load_allowlist(&mut self, from_config: &[Target]) -> anyhow::Result<()> {
        for t in from_config {
            self.ledger.init_allow(*t, AllowOrigin::Config);
        }
        for (target, origin) in self.store.load_allow()? {
            self.ledger.init_allow(target, origin);
        }
        if self.builtin_allowlist {
            for h in host::host_addresses()? {
                self.ledger.init_allow(h.target, AllowOrigin::Builtin { what: h.what.to_owned() });
            }
        }
        let allow = self.ledger.allowlist();
        let entries: Vec<(Target, u32)> = allow.iter().map(|(t, o)| (*t, o[0].to_kernel())).collect();
        let stale: Vec<Target> = self
            .dp
            .maps()
            .allows()?
            .into_iter()
            .map(|(t, _)| t)
            .filter(|t| allow.origins(t).is_none())
            .collect();
        // Insert before remove: nothing protected is unprotected in between.
        for (t, origin) in entries {
            self.dp.maps_mut().insert_allow(&t, origin)?;
        }
        for t in stale {
            self.dp.maps_mut().remove_allow(&t)?;
        }
        tracing::info!(entries = self.ledger.allowlist().len(), "allowlist loaded");
        Ok(())
    }

    /// The data path (to attach interfaces after reconciliation).
    pub fn datapath(&mut self) -> &mut Datapath {
        &mut self.dp
    }

    /// Feeds systemd's watchdog and status line from this engine's loop.
    pub fn set_heartbeat(&mut self, heartbeat: Option<Heartbeat>) {
        self.heartbeat = heartbeat;
    }

    /// The `STATUS=` line systemd shows.
    pub fn status_line(&self) -> String {
        let ifaces: Vec<&str> = self.interfaces.protected().map(|(name, _)| name).collect();
        let mut line = format!(
            "enforcing {} blocks on {}",
            self.ledger.blocks().len(),
            if ifaces.is_empty() { "no interface".to_owned() } else { ifaces.join(", ") }
        );
        let unprotected: Vec<&str> = self
            .interfaces
            .tracked()
            .filter(|(_, _, s)| !matches!(s, crate::interfaces::Tracked::Protected { .. }))
            .map(|(name, _, _)| name)
            .collect();
        if !unprotected.is_empty() {
            line.push_str(&format!("; NOT protected: {}", unprotected.join(", ")));
        }
        if !self.ledger.pending().is_empty() {
            line.push_str(&format!("; {} waiting for approval", self.ledger.pending().len()));
        }
        line
    }

    /// The counters and snapshot this engine keeps for the metrics endpoint.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Publishes the metrics snapshot: O(sources + maps), never a walk over the blocks.
    fn publish_metrics(&mut self) {
        let now = self.now();
        let open: std::collections::BTreeSet<Source> =
            self.ledger.policy_mut().open_breakers(now).into_iter().map(|b| b.source).collect();
        let mut breakers: BTreeMap<Source, bool> =
            self.ledger.policy().config.sources.keys().map(|s| (s.clone(), false)).collect();
        for s in open {
            breakers.insert(s, true);
        }
        let capacity = self.ledger.capacity();
        let maps = self
            .dp
            .maps()
            .capacities()
            .into_iter()
            .map(|(name, cap)| (name, capacity.used(name), cap))
            .collect();
        self.metrics.publish(Snapshot {
            blocks: self.tally.entries(),
            targets: self.ledger.blocks().len() as u64,
            maps,
            breakers: breakers.into_iter().collect(),
            pending: self.ledger.pending().len() as u64,
            oldest_deadline_ms: self.ledger.next_block_deadline(),
            interfaces: self.interfaces.protected().map(|(n, i)| (n.to_owned(), i)).collect(),
            interface_states: self.interfaces.tracked().map(|(n, _, s)| (n.to_owned(), s.label())).collect(),
        });
    }

    /// After a durable change: the tally follows every target it touched.
    fn tally(&mut self, before: &BTreeMap<Target, Option<TargetBlocks>>, refused: &[(&'static str, Source)]) {
        for (target, was) in before {
            self.tally.replace(was.as_ref(), self.ledger.blocks().get(target));
        }
        for (rule, source) in refused {
            self.metrics.refusal(rule, source);
        }
    }

    fn timed_store(&mut self) -> (&mut Ledger, TimedStore<'_>, &mut crate::datapath::BlockMaps) {
        let store = TimedStore {
            store: &mut self.store,
            metrics: &self.metrics,
            carry: &mut self.carry,
        };
        (&mut self.ledger, store, self.dp.maps_mut())
    }

    /// Loads the store and makes the kernel maps say exactly what it says.
    /// `shift`: how far the stored deadlines move (see [`Engine::stored_time_shift`]).
    fn reconcile(&mut self, shift: i64) -> anyhow::Result<()> {
        let mut records = self.store.load_all()?;
        if shift != 0 {
            for r in &mut records {
                r.block.expires_ms = r.block.expires_ms.map(|e| e.saturating_add_signed(shift));
            }
        }
        let now = self.now();
        let expired = self.ledger.load_blocks(records, now);
        for t in self.ledger.blocks().values() {
            self.tally.add(t);
        }
        if !expired.is_empty() {
            let ops: Vec<_> = expired
                .iter()
                .map(|r| StoreOp::Delete(r.target, r.block.source.clone()))
                .collect();
            self.store.commit(&ops)?;
            for r in &expired {
                let e = Event::new(Action::Expire, r.target)
                    .source(&r.block.source)
                    .detail("expired while the daemon was not running");
                self.audit.record(&e);
            }
        }
        let in_kernel: BTreeMap<Target, BlockValue> = self.dp.maps().blocks()?.into_iter().collect();
        let removed = self.remove_unknown(&in_kernel)?;
        let mut restored = 0usize;
        let targets: Vec<Target> = self.ledger.blocks().keys().copied().collect();
        let base = self.ledger.time_base().clone();
        for target in &targets {
            let had = in_kernel.get(target);
            let entry = self.ledger.kernel_entry(target).expect("a loaded target has blocks");
            if !kernel_sync::is_current(&entry, had, &base) {
                self.dp.maps_mut().insert_block(target, &kernel_sync::value_for(&entry, had.copied(), &base))?;
            }
            if had.is_none() {
                restored += 1;
                self.audit.record(&Event::new(Action::Restore, *target).detail("restored into the kernel from the store"));
            }
        }
        self.audit.flush();
        tracing::info!(
            targets = targets.len(),
            restored,
            removed_unknown = removed,
            expired = expired.len(),
            "reconciled the kernel maps with the store"
        );
        Ok(())
    }

    /// Removes kernel entries the store does not know.
    fn remove_unknown(&mut self, in_kernel: &BTreeMap<Target, BlockValue>) -> anyhow::Result<usize> {
        let mut removed = 0;
        for target in in_kernel.keys() {
            if !self.ledger.blocks().contains_key(target) {
                self.dp.maps_mut().remove_block(target)?;
                self.audit
                    .record(&Event::new(Action::RemoveUnknown, *target).detail("in the kernel map but not in the store"));
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Runs until the channel closes or `stop` is set (and a command wakes it).
    pub fn run(mut self, rx: Receiver<Command>, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::Relaxed) {
            self.stall.wait();
            let until = self.until_next_deadline();
            let wait = match &self.heartbeat {
                Some(h) => until.min(h.every()),
                None => until,
            };
            match rx.recv_timeout(wait) {
                Ok(first) => {
                    let mut batch = vec![first];
                    while batch.len() < MAX_ROUND {
                        match rx.try_recv() {
                            Ok(c) => batch.push(c),
                            Err(_) => break,
                        }
                    }
                    self.handle(batch);
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

    /// How long to sleep: until the next deadline, but at most [`CLOCK_CHECK`], so that a
    /// wall-clock step is seen (and the deadlines moved) soon even when nothing else happens.
    fn until_next_deadline(&mut self) -> Duration {
        let now = self.now();
        let until = match self.ledger.next_deadline() {
            Some(deadline) => Duration::from_millis(deadline.max(self.reap_backoff_until).saturating_sub(now)),
            None => CLOCK_CHECK,
        };
        until.min(CLOCK_CHECK)
    }

    /// One round: the writes (in order), then the reads, which see every write before them.
    fn handle(&mut self, batch: Vec<Command>) {
        // Follow the clock first: what this round writes and reads sees moved deadlines.
        let now = self.now();
        let mut writes = Vec::new();
        let mut write_replies = Vec::new();
        let mut reads = Vec::new();
        let mut denied = false;
        for c in &batch {
            super::critical::test_fault(&c.request);
        }
        for Command { request, caller, id, replay, reply } in batch {
            if let Err(refusal) = self.authorize(&caller, &request) {
                denied = true;
                let _ = reply.send(Err(refusal));
            } else if let Request::HostChanged(now) = request {
                self.refresh_host(now);
                let _ = reply.send(Ok(Reply::Refreshed));
            } else if let Request::LinksChanged(links) = request {
                self.follow_links(&links);
                let _ = reply.send(Ok(Reply::Refreshed));
            } else if is_read(&request) {
                reads.push((request, reply));
            } else {
                writes.push(Write { request, caller, id, replay });
                write_replies.push(reply);
            }
        }
        if denied {
            self.audit.flush();
        }
        if !writes.is_empty() {
            let (ledger, mut store, maps) = self.timed_store();
            let answered = round::run(ledger, &mut store, maps, writes, now);
            self.write_audit(&answered.events);
            self.tally(&answered.before, &answered.refused);
            for (reply, answer) in write_replies.into_iter().zip(answered.answers) {
                let _ = reply.send(answer);
            }
        }
        for (request, reply) in reads {
            let _ = reply.send(self.view().answer(request));
        }
    }

    /// The one access check every request passes, whatever path it came by (socket, CrowdSec,
    /// spool, host watcher): refused requests are audited with their caller and change nothing.
    /// A pending id is looked up as the round starts, so an id created later in the same round
    /// is not found yet (the caller asks again).
    fn authorize(&mut self, caller: &Caller, request: &Request) -> Result<(), Refusal> {
        let requester = match request {
            Request::Approve { id } => match self.ledger.pending().get(id) {
                Some(p) => p.requested_by.as_ref(),
                None if caller.is_root() => None,
                None => return Err(Refusal::NotFound(format!("no pending block with id {id} (see `enforcer pending`)"))),
            },
            _ => None,
        };
        let Err(denied) = self.access.check(caller, request, requester) else { return Ok(()) };
        let (target, source) = request_subject(request, &self.ledger);
        tracing::warn!("{denied}");
        self.audit.record(&Event::denied(&denied, target, source.as_ref()));
        if let Some(source) = &source {
            self.metrics.refusal("access", source);
        }
        Err(Refusal::Denied(Box::new(denied)))
    }

    fn view(&mut self) -> View<'_> {
        View {
            ledger: &mut self.ledger,
            maps: self.dp.maps(),
            interfaces: &self.interfaces,
            prog_id: self.prog_id,
            started: self.started,
            store_path: self.store.path(),
            pins: self.dp.pins(),
            audit_log: self.audit.path(),
        }
    }

    fn write_audit(&mut self, events: &[Event]) {
        for e in events {
            self.audit.record(e);
        }
        self.audit.flush();
    }

    /// The host's addresses and gateways changed to `now` (read on the watcher's thread, never
    /// here); the allowlist follows them.
    fn refresh_host(&mut self, now: Vec<host::HostAddress>) {
        if !self.builtin_allowlist {
            return;
        }
        let wanted = now.into_iter().map(|h| (h.target, h.what.to_owned())).collect();
        let mut change = Change::default();
        self.ledger.refresh_builtin(&mut change, &wanted);
        // Builtin entries are not stored: this commit only writes the kernel allowlist.
        let (ledger, mut store, maps) = self.timed_store();
        if let Ok(done) = round::commit(ledger, &mut store, maps, change) {
            self.write_audit(&done.events);
        }
    }

    /// Removes what expired; on a store failure, tries again in a second.
    fn reap(&mut self) {
        let now = self.now();
        if now < self.reap_backoff_until || self.ledger.next_deadline().is_none_or(|d| d > now) {
            return;
        }
        let mut change = Change::default();
        let expired = self.ledger.expire(&mut change, now, MAX_REAP);
        let (ledger, mut store, maps) = self.timed_store();
        match round::commit(ledger, &mut store, maps, change) {
            Ok(done) => {
                self.write_audit(&done.events);
                self.tally(&done.before, &done.refused);
                self.metrics.expired(expired as u64);
                tracing::debug!(count = expired, "reaped expired blocks");
                if expired >= MAX_REAP {
                    release_freed_memory();
                }
            }
            Err(failed) => {
                // The kernel stopped enforcing them at their deadline anyway; retry the
                // bookkeeping in a second, with the same deadlines.
                tracing::error!(error = %failed.error, "removing expired blocks from the store failed; retrying in 1 s");
                self.write_audit(&failed.events);
                self.reap_backoff_until = now + 1000;
            }
        }
    }
}

/// The target and source a request concerns, for its audit line (a pending block's, for
/// approve and reject).
fn request_subject(request: &Request, ledger: &Ledger) -> (Option<Target>, Option<Source>) {
    match request {
        Request::Block(b) => (Some(b.target), Some(b.source.clone())),
        Request::BlockBatch(b) => (None, Some(b.source.clone())),
        Request::SyncSource(s) => (None, Some(s.source.clone())),
        Request::Unblock { target, source, .. } => (Some(*target), source.clone()),
        Request::Show { target } | Request::AllowAdd { target, .. } | Request::AllowRemove { target } => (Some(*target), None),
        Request::Promote { target, source } => (*target, source.clone()),
        Request::BreakerReset { source } | Request::List { source, .. } => (None, source.clone()),
        Request::Approve { id } | Request::Reject { id } => ledger
            .pending()
            .get(id)
            .map_or((None, None), |p| (Some(p.request.target), Some(p.request.source.clone()))),
        _ => (None, None),
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
