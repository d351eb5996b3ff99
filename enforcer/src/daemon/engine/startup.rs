//! Starting the engine: the allowlist, the store and the kernel maps made to agree before the
//! first request (every block restored with its remaining time, unknown kernel entries
//! removed, a wall-clock step while no daemon ran followed).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::{Duration, Instant},
};

use enforcer_common::BlockValue;

use super::Engine;
use crate::{
    access::AccessPolicy,
    audit::{Action, AuditLog, Event},
    daemon::{
        kernel_sync,
        ledger::{self, Capacity, Ledger},
        queries::ReadState,
        systemd::TestStall,
    },
    datapath::{Datapath, MapsError, XdpModeRequest},
    interfaces::Interfaces,
    metrics::{BlockTally, Published},
    policy::{AllowOrigin, Policy, PolicyConfig, host},
    protocol::ClockStep,
    store::{Store, StoreOp},
    target::Target,
    time::{self, SystemClock, TimeKeeper, WallMs},
};

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
    /// Addresses the daemon depends on beyond the host's, allowlisted with them (the CrowdSec
    /// LAPI's).
    pub also_builtin: Vec<host::HostAddress>,
    /// Who may do what on the control socket.
    pub access: AccessPolicy,
    /// Blocks to publish to the CrowdSec LAPI (off when no source is published).
    pub outbox: ledger::Outbox,
    /// How the block maps are divided between sources.
    pub shares: ledger::Shares,
}

impl Engine {
    /// Builds the engine from the store, reconciling the kernel maps with it.
    pub fn start(
        store: Store,
        dp: Datapath,
        audit: AuditLog,
        config: EngineConfig,
    ) -> anyhow::Result<Self> {
        let capacity = Capacity::new(dp.maps().capacities(), config.shares);
        let metrics = Arc::new(crate::metrics::Metrics::new(store.commits()));
        let started = Instant::now();
        let reads = Arc::new(Published::new(ReadState::empty(
            started,
            store.path(),
            dp.pins(),
            audit.path(),
        )));
        let mut engine = Self {
            ledger: Ledger::new(Policy::new(config.policy, config.default_ttl), capacity),
            store,
            dp,
            audit,
            builtin_allowlist: config.builtin_allowlist,
            also_builtin: config.also_builtin,
            interfaces: Interfaces::default(),
            xdp_mode: XdpModeRequest::Auto,
            programs: crate::datapath::Programs::default(),
            links_followed: false,
            started,
            reap_backoff_until: WallMs::EPOCH,
            metrics,
            tally: BlockTally::default(),
            heartbeat: None,
            stall: TestStall::from_env(),
            access: config.access,
            clock: TimeKeeper::new(SystemClock, time::boot_id()),
            carry: Vec::new(),
            held: Vec::new(),
            reads,
            denials: super::denials::Denials::default(),
            backlog: crate::daemon::backlog::Backlog::default(),
        };
        engine.ledger.set_time_base(engine.clock.base());
        // Scoped blocks are accepted once the data path has the maps that enforce them.
        engine.ledger.enforce_scopes(engine.dp.maps().has_scopes());
        let mut outbox = config.outbox;
        outbox.load(engine.store.load_outbox()?, engine.store.load_published()?);
        engine.ledger.set_outbox(outbox);
        engine.load_allowlist(&config.allowlist)?;
        let meta = engine.store.load_meta()?;
        let shift = engine.stored_time_shift(meta.time_base.as_ref());
        let other_boot = meta
            .time_base
            .as_ref()
            .is_some_and(|s| engine.ledger.time_base().shift_from(s).is_none());
        engine.ledger.load_side(
            engine.store.load_pending()?,
            engine.store.load_offenses()?,
            meta.next_pending_id,
        );
        let forgotten = engine
            .ledger
            .load_requests(engine.store.load_requests()?, WallMs::now());
        if !forgotten.is_empty() {
            engine.store.commit(
                &forgotten
                    .into_iter()
                    .map(StoreOp::DeleteRequest)
                    .collect::<Vec<_>>(),
            )?;
        }
        engine.ledger.shift_deadlines(shift, WallMs::now());
        engine.reconcile(shift, other_boot)?;
        engine.publish_catch_up()?;
        engine.store_time_base(shift, meta.time_base.as_ref())?;
        Ok(engine)
    }

    /// Brings the publish queue up to date with the loaded blocks
    /// ([`ledger::Ledger::plan_catch_up`]), in one commit.
    fn publish_catch_up(&mut self) -> anyhow::Result<()> {
        let plan = self.ledger.plan_catch_up(WallMs::now());
        let ops: Vec<StoreOp> = plan.ops().collect();
        if !ops.is_empty() {
            self.store.commit(&ops)?;
            let (queued, forgotten) = plan.counts();
            tracing::info!(
                queued,
                forgotten,
                "the CrowdSec publish queue caught up with the stored blocks: blocks not published yet are queued, ids of blocks that ended are forgotten"
            );
        }
        self.ledger.outbox_mut().apply(plan);
        Ok(())
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
                tracing::info!(
                    "the machine booted since the store was written: block deadlines are taken as wall-clock times"
                );
                0
            }
        }
    }

    /// Stores the time base the loaded deadlines are now expressed under, and after a step the
    /// moved deadlines with it (one commit), and audits the step.
    fn store_time_base(
        &mut self,
        shift: i64,
        stored: Option<&time::TimeBase>,
    ) -> anyhow::Result<()> {
        let mut ops = Vec::new();
        if shift != 0 {
            ops = self.ledger.timed_ops();
            let moved = self
                .ledger
                .blocks()
                .values()
                .flat_map(|b| b.by_source.values())
                .filter(|b| b.expires_ms.is_some())
                .count();
            tracing::warn!(
                step = %time::describe_jump(shift),
                moved,
                "the wall clock stepped while the daemon was not running; block deadlines moved with it and keep their remaining time"
            );
            let step = ClockStep {
                seen_ms: WallMs::now(),
                by_ms: shift,
                moved,
                while_running: false,
            };
            let event = self.ledger.step_seen(step);
            self.audit.write(vec![event]);
        }
        if stored != Some(self.ledger.time_base()) {
            ops.push(StoreOp::SetTimeBase(self.ledger.time_base().clone()));
        }
        if !ops.is_empty() {
            self.store.commit(&ops)?;
        }
        Ok(())
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
            for h in host::host_addresses()?
                .into_iter()
                .chain(self.also_builtin.iter().cloned())
            {
                self.ledger.init_allow(
                    h.target,
                    AllowOrigin::Builtin {
                        what: h.what.to_owned(),
                    },
                );
            }
        }
        let allow = self.ledger.allowlist();
        let entries: Vec<(Target, u32)> =
            allow.iter().map(|(t, o)| (*t, o[0].to_kernel())).collect();
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

    /// Loads the store and makes the kernel maps say exactly what it says.
    /// `shift`: how far the stored deadlines move (see [`Engine::stored_time_shift`]);
    /// `other_boot`: the store was written on another boot.
    fn reconcile(&mut self, shift: i64, other_boot: bool) -> anyhow::Result<()> {
        let mut records = self.store.load_all()?;
        if shift != 0 {
            for r in &mut records {
                r.block.expires_ms = r.block.expires_ms.map(|e| e.shifted(shift));
            }
        }
        let now = self.end_now();
        let expired = self.ledger.load_blocks(records, now);
        let expired = self.hold_if_unsettled(expired, other_boot);
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
                self.audit.record(e);
            }
        }
        let in_kernel: BTreeMap<Target, BlockValue> =
            self.dp.maps().blocks()?.into_iter().collect();
        let removed = self.remove_unknown(&in_kernel)?;
        let targets = self.ledger.blocks().len();
        let restored = self.restore(&in_kernel)?;
        tracing::info!(
            targets,
            restored,
            removed_unknown = removed,
            expired = expired.len(),
            "reconciled the kernel maps with the store"
        );
        Ok(())
    }

    /// Writes every stored block whose kernel entry is missing or says something else, in one
    /// batched write; audits the ones that were missing. Returns how many were.
    fn restore(&mut self, in_kernel: &BTreeMap<Target, BlockValue>) -> anyhow::Result<usize> {
        let base = self.ledger.time_base().clone();
        let mut writes = Vec::new();
        let mut missing = Vec::new();
        for target in self.ledger.blocks().keys() {
            let had = in_kernel.get(target);
            let entry = self
                .ledger
                .kernel_entry(target)
                .expect("a loaded target has blocks");
            if !kernel_sync::is_current(&entry, had, &base) {
                writes.push((*target, kernel_sync::value_for(&entry, had.copied(), &base)));
            }
            if had.is_none() {
                missing.push(*target);
            }
        }
        let failed = self.dp.maps_mut().insert_blocks(&writes);
        let not_written: BTreeSet<Target> = failed.iter().map(|(t, _)| *t).collect();
        let restored: Vec<Target> = missing
            .into_iter()
            .filter(|t| !not_written.contains(t))
            .collect();
        for target in &restored {
            self.audit.record(
                Event::new(Action::Restore, *target)
                    .detail("restored into the kernel from the store"),
            );
        }
        self.audit.flush();
        first_failure(failed)?;
        Ok(restored.len())
    }

    /// Removes kernel entries the store does not know.
    fn remove_unknown(
        &mut self,
        in_kernel: &BTreeMap<Target, BlockValue>,
    ) -> anyhow::Result<usize> {
        let unknown: Vec<Target> = in_kernel
            .keys()
            .filter(|t| !self.ledger.blocks().contains_key(*t))
            .copied()
            .collect();
        let failed = self.dp.maps_mut().remove_blocks(&unknown);
        let kept: BTreeSet<Target> = failed.iter().map(|(t, _)| *t).collect();
        for target in unknown.iter().filter(|t| !kept.contains(t)) {
            self.audit.record(
                Event::new(Action::RemoveUnknown, *target)
                    .detail("in the kernel map but not in the store"),
            );
        }
        first_failure(failed)?;
        Ok(unknown.len())
    }
}

/// The first of a batched write's failures, as the start's error (each failure is logged).
fn first_failure(failed: Vec<(Target, MapsError)>) -> anyhow::Result<()> {
    let mut first = None;
    for (target, e) in failed {
        tracing::error!(%target, error = %crate::error::Chain(&e), "writing the kernel map failed");
        first.get_or_insert((target, e));
    }
    match first {
        Some((target, e)) => {
            Err(anyhow::Error::new(e).context(format!("writing {target} to the kernel maps")))
        }
        None => Ok(()),
    }
}
