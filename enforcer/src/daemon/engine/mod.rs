//! The engine loop: the one owner of the ledger, the store and the kernel maps.
//!
//! It runs on its own thread and takes requests from a channel. Every request waiting in the
//! channel is handled in one [round](super::round): writes go to the [ledger](super::ledger),
//! are committed to the store in one fsynced transaction, written to the kernel maps, and only
//! then acknowledged; reads are answered after that, from the ledger ([`super::queries`]).
//!
//! The same loop is the [reaper]: it sleeps until the next deadline, then removes what expired.
//! Around the loop: [startup] (the kernel made to match the store), [access] (the one check
//! every request passes), [status] (systemd's line and the metrics snapshot), [timed_store],
//! [links] (interfaces that come and go) and [command] (what the channel carries).

mod access;
mod command;
mod denials;
mod held;
mod links;
mod reaper;
mod startup;
mod status;
mod timed_store;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, RecvTimeoutError},
    },
    time::{Duration, Instant},
};

pub use command::{Ask, Command};
pub use links::AttachFailure;
pub use startup::EngineConfig;

use super::{
    ledger::{Change, Ledger, Write},
    queries::{ReadState, View},
    round::{self, BlockStore},
    systemd::{Heartbeat, TestStall},
};
use crate::{
    access::AccessPolicy,
    audit::{AuditLog, Event},
    datapath::{Datapath, Programs, XdpModeRequest},
    interfaces::Interfaces,
    metrics::{BlockTally, Metrics, Published},
    policy::host,
    protocol::Request,
    store::{Store, StoreOp},
    time::{SystemClock, Tick, TimeKeeper, WallMs},
};

/// Most requests handled in one durable round.
const MAX_ROUND: usize = 4096;

/// Most requests in one round. Debug builds: `ENFORCER_TEST_MAX_ROUND=N` makes rounds smaller,
/// so a test can have a backlog judged over many rounds, as a loaded machine does (release
/// builds never read it).
fn max_round() -> usize {
    #[cfg(debug_assertions)]
    {
        static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        *MAX.get_or_init(|| {
            std::env::var("ENFORCER_TEST_MAX_ROUND")
                .ok()
                .and_then(|n| n.parse().ok())
                .map_or(MAX_ROUND, |n: usize| n.clamp(1, MAX_ROUND))
        })
    }
    #[cfg(not(debug_assertions))]
    MAX_ROUND
}
/// Longest the loop sleeps without reading the clock (a step is seen within this).
const CLOCK_CHECK: Duration = Duration::from_secs(1);

/// The engine.
pub struct Engine {
    ledger: Ledger,
    store: Store,
    dp: Datapath,
    audit: AuditLog,
    builtin_allowlist: bool,
    /// Addresses allowlisted with the host's (the CrowdSec LAPI's).
    also_builtin: Vec<host::HostAddress>,
    /// The configured interfaces and what is known of each.
    interfaces: Interfaces,
    /// The mode to attach in.
    xdp_mode: XdpModeRequest,
    /// The ids of the programs this daemon attaches (what "protected" means in the kernel).
    programs: Programs,
    /// Whether the first dump of the links was followed (what appears later is news).
    links_followed: bool,
    started: Instant,
    /// After a failed expiry commit: no reaping before this (Unix ms).
    reap_backoff_until: WallMs,
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
    /// Rows that looked expired at load while the clock was unsettled after a reboot: in the
    /// store, not loaded, judged again once the clock can be trusted ([`held`]).
    held: Vec<crate::block::Record>,
    /// What reads are answered from, published after each round ([`super::reads`]).
    reads: Arc<Published<ReadState>>,
    /// Denied requests per caller, for the audit log.
    denials: denials::Denials,
    /// The oldest time a spooled trigger may still be judged at (breakers are kept for it).
    backlog: super::backlog::Backlog,
}

/// Whether a request only reads (answered after the round's writes).
fn is_read(request: &Request) -> bool {
    matches!(request, Request::Ping) || super::queries::is_read(request)
}

impl Engine {
    /// The flood detector's maps, for their watcher (once).
    pub fn take_flood(&mut self) -> Option<crate::datapath::FloodMaps> {
        self.dp.take_flood()
    }

    /// Now (Unix ms) for what starts now, after following the clock: a block's TTL counts from
    /// it and never ends early in the kernel ([`crate::time::TimeBase::start_now`]).
    fn now(&mut self) -> WallMs {
        let tick = self.follow_clock();
        self.ledger.time_base().start_now(&tick)
    }

    /// Now (Unix ms) for judging what has ended, after following the clock: a deadline at or
    /// before it has passed in the kernel too ([`crate::time::TimeBase::end_now`]).
    fn end_now(&mut self) -> WallMs {
        let tick = self.follow_clock();
        self.ledger.time_base().end_now(&tick)
    }

    /// Reads the clocks: a wall-clock step moves every deadline with it (stored, and audited
    /// once) before anything reads the time.
    fn follow_clock(&mut self) -> Tick {
        let tick = self.clock.tick();
        if let Some(change) = self.ledger.follow_clock(&tick) {
            if let Some(event) = change.event {
                self.audit.write(vec![event]);
            }
            self.carry.extend(change.ops);
            let (_, mut store, _) = self.timed_store();
            if let Err(e) = store.commit(&[]) {
                tracing::error!(error = %e, "storing the moved deadlines failed; they go with the next commit");
            }
        }
        tick
    }

    /// The data path (to attach interfaces after reconciliation).
    pub fn datapath(&mut self) -> &mut Datapath {
        &mut self.dp
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
                    while batch.len() < max_round() {
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
            self.judge_held();
            self.denials.flush(&mut self.audit, false);
            self.publish();
            if let Some(mut h) = self.heartbeat.take() {
                h.beat(|| self.status_line());
                self.heartbeat = Some(h);
            }
        }
        // Every audit line, the writer thread's too, is in the file before the daemon exits.
        self.denials.flush(&mut self.audit, true);
        self.audit.close();
        tracing::info!("engine stopped; blocks stay in force in the kernel");
    }

    /// One round: the writes (in order), then the reads, which see every write before them.
    fn handle(&mut self, batch: Vec<Command>) {
        // Follow the clock first: what this round writes and reads sees moved deadlines.
        let now = self.now();
        let mut writes = Vec::new();
        let mut write_replies = Vec::new();
        let mut in_kernel = Vec::new();
        let mut reads = Vec::new();
        let mut denied = false;
        for c in &batch {
            if let Ask::Client(request) = &c.request {
                super::critical::test_fault(request);
            }
        }
        for Command {
            request,
            caller,
            id,
            replay,
            reply,
            in_kernel: in_kernel_tx,
        } in batch
        {
            let request = match request {
                Ask::Client(request) => request,
                Ask::HostChanged(now) => {
                    self.refresh_host(now);
                    continue;
                }
                Ask::LinksChanged(links) => {
                    self.follow_links(&links);
                    continue;
                }
                Ask::Outbox(o, answer) => {
                    // An asker that left needs no answer.
                    answer.send(self.outbox(o)).ok();
                    continue;
                }
            };
            if let Err(refusal) = self.authorize(&caller, &request) {
                denied = true;
                // A caller that left (its connection closed) needs no answer.
                reply.send(Err(refusal)).ok();
            } else if is_read(&request) {
                reads.push((request, reply));
            } else {
                writes.push(Write {
                    request,
                    caller,
                    id,
                    replay,
                });
                write_replies.push(reply);
                in_kernel.push(in_kernel_tx);
            }
        }
        if denied {
            self.audit.flush();
        }
        if !writes.is_empty() {
            let (ledger, mut store, maps) = self.timed_store();
            let answered = round::run(ledger, &mut store, maps, writes, now);
            for (tx, at) in in_kernel.into_iter().zip(&answered.in_kernel) {
                if let (Some(tx), Some(at)) = (tx, at) {
                    // A requester that left needs no time.
                    tx.send(*at).ok();
                }
            }
            self.write_audit(answered.events);
            self.tally(&answered.before, &answered.refused);
            // Readers see this round before its answers go out: a client reads its writes.
            self.publish();
            for (reply, answer) in write_replies.into_iter().zip(answered.answers) {
                // A caller that left needs no answer: what it asked is done.
                reply.send(answer).ok();
            }
        }
        // Reads reach the engine only from the daemon itself, when the access rules refuse
        // them (refused above) or when the reader is not running.
        if !reads.is_empty() {
            let state = self.read_state(now);
            let view = View {
                state: &state,
                maps: self.dp.maps(),
                dropped_by_origin: self.metrics.dropped_by_origin(),
            };
            for (request, reply) in reads {
                // A caller that left needs no answer.
                reply.send(view.answer(request)).ok();
            }
        }
    }

    fn write_audit(&mut self, events: Vec<Event>) {
        self.audit.write(events);
    }

    /// The publisher takes queued publications, or reports sent ones (their queue rows go and
    /// their decision ids are kept, in one commit).
    fn outbox(
        &mut self,
        request: crate::outbox::OutboxRequest,
    ) -> Result<crate::outbox::OutboxBatch, super::refusal::Refusal> {
        use crate::outbox::OutboxRequest;
        match request {
            OutboxRequest::Take { max } => Ok(crate::outbox::OutboxBatch {
                items: self.ledger.outbox().take(max),
                counters: self.ledger.outbox().counters(),
            }),
            OutboxRequest::Sent(sent) => {
                let ops = self.ledger.outbox().sent_ops(&sent);
                let (ledger, mut store, _) = self.timed_store();
                store
                    .commit(&ops)
                    .map_err(|e| super::refusal::Refusal::Store(Arc::new(e)))?;
                ledger.outbox_mut().apply_sent(&ops, &sent);
                Ok(crate::outbox::OutboxBatch {
                    items: Vec::new(),
                    counters: ledger.outbox().counters(),
                })
            }
        }
    }

    /// The host's addresses and gateways changed to `now` (read on the watcher's thread, never
    /// here); the allowlist follows them.
    fn refresh_host(&mut self, now: Vec<host::HostAddress>) {
        if !self.builtin_allowlist {
            return;
        }
        let wanted = now
            .into_iter()
            .chain(self.also_builtin.iter().cloned())
            .map(|h| (h.target, h.what.to_owned()))
            .collect();
        let mut change = Change::default();
        self.ledger.refresh_builtin(&mut change, &wanted);
        // Builtin entries are not stored: this commit only writes the kernel allowlist.
        let (ledger, mut store, maps) = self.timed_store();
        if let Ok(done) = round::commit(ledger, &mut store, maps, change) {
            self.write_audit(done.events);
        }
    }
}
