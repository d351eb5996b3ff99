//! Prometheus metrics: what the daemon counts, and how a scrape reads it without the engine.
//!
//! Three kinds of data, none of which costs the engine anything at scrape time:
//! - counters the engine and the control socket bump as things happen ([`Metrics`]: a few
//!   atomics and small maps behind uncontended locks);
//! - a [`Snapshot`] of the engine's state (blocks by source and mode, map use, breakers,
//!   pending approvals, the oldest deadline) that the engine publishes after each round, built
//!   from tallies it keeps up to date incrementally, never by walking the blocks;
//! - the data path's per-CPU packet counters, which the HTTP task reads from the pinned map
//!   itself ([`http`]).
//!
//! Labels are bounded: actions, ops, results, rules, map and interface names, and sources
//! (capped at [`MAX_SOURCE_LABELS`]; the rest are summed as `other`). Never an address.
//!
//! Integrations with metrics of their own (CrowdSec, issue 12) add a family in [`render`]
//! next to the "integrations" comment, fed from counters in [`Metrics`].

pub mod exposition;
pub mod http;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use enforcer_common::{Stats, Unjudged};
use exposition::{Exposition, Kind, bound_label};

use crate::{
    block::{Mode, Source, TargetBlocks},
    datapath::MapId,
    time::WallMs,
};

/// Most distinct `source` label values per family; further sources are summed as `other`.
pub const MAX_SOURCE_LABELS: usize = 64;

/// Upper bounds of the duration histograms' buckets (store commits, flood report to block), in
/// seconds.
pub const COMMIT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Live counters, shared by the engine, the control socket and the HTTP task.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    refusals: Mutex<BTreeMap<(&'static str, Source), u64>>,
    commit: Histogram,
    /// From a flood report's crossing to its block's kernel entry written.
    flood_to_block: Histogram,
    expired: AtomicU64,
    interface_changes: Mutex<BTreeMap<(String, &'static str), u64>>,
    snapshot: Published<Snapshot>,
    dropped_by_origin: Mutex<Vec<crate::protocol::OriginDrops>>,
    connections: AtomicU64,
    connections_refused: AtomicU64,
    accept_errors: Mutex<BTreeMap<&'static str, u64>>,
    /// Control requests in the engine's queue or round, not answered yet.
    engine_waiting: AtomicU64,
    /// The store's own count of durable commits ([`crate::store::Store::commits`]).
    store_commits: Arc<AtomicU64>,
    /// Flood detection, as its watcher last published it.
    flood: Mutex<Option<crate::protocol::FloodStatus>>,
}

/// What the engine publishes after each round.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Active source blocks by source and mode.
    pub blocks: Vec<(Source, Mode, u64)>,
    /// Blocked targets (addresses and prefixes) in the kernel maps.
    pub targets: u64,
    /// Kernel maps: (map, entries, capacity).
    pub maps: Vec<(MapId, u64, u32)>,
    /// Every source with a breaker, and whether it is open.
    pub breakers: Vec<(Source, bool)>,
    /// Blocks waiting for approval.
    pub pending: u64,
    /// The earliest block deadline (Unix ms), for the reaper's lag.
    pub oldest_deadline_ms: Option<WallMs>,
    /// Attached interfaces: (name, ifindex).
    pub interfaces: Vec<(String, u32)>,
    /// Every configured interface and its state (`protected`, `waiting`, `gone`, `unprotected`).
    pub interface_states: Vec<(String, &'static str)>,
    /// Wall-clock steps followed since start.
    pub clock_steps: u64,
    /// The CrowdSec publish queue, when publishing is on.
    pub publish: Option<crate::outbox::OutboxCounters>,
}

/// A value one thread publishes and others read without waiting for it: the last `Arc`
/// published, swapped (or cloned) under a lock held for nothing else. The engine publishes the
/// metrics [`Snapshot`] and the state reads are answered from this way.
#[derive(Debug, Default)]
pub struct Published<T>(Mutex<Arc<T>>);

impl<T> Published<T> {
    /// Starts with `value`.
    pub fn new(value: T) -> Self {
        Self(Mutex::new(Arc::new(value)))
    }

    /// Replaces the published value.
    pub fn publish(&self, value: T) {
        let old = std::mem::replace(&mut *lock(&self.0), Arc::new(value));
        // The old value is freed (if this was its last reader) after the lock is released.
        drop(old);
    }

    /// The last published value.
    pub fn get(&self) -> Arc<T> {
        lock(&self.0).clone()
    }
}

impl Metrics {
    /// Metrics that show `store_commits`, the store's own count of its durable commits.
    pub fn new(store_commits: Arc<AtomicU64>) -> Self {
        Self {
            store_commits,
            ..Self::default()
        }
    }

    /// Publishes flood detection's state (its watcher does, as it changes).
    pub fn set_flood(&self, status: crate::protocol::FloodStatus) {
        *lock(&self.flood) = Some(status);
    }

    /// Flood detection's state, once its watcher published it.
    pub fn flood(&self) -> Option<crate::protocol::FloodStatus> {
        lock(&self.flood).clone()
    }

    /// Counts one control request and its outcome (`ok` or an error code).
    pub fn request(&self, op: &'static str, result: &'static str) {
        *lock(&self.requests).entry((op, result)).or_default() += 1;
    }

    /// Counts one policy refusal.
    pub fn refusal(&self, rule: &'static str, source: &Source) {
        let mut r = lock(&self.refusals);
        let distinct = r.len();
        let source = if distinct < MAX_SOURCE_LABELS || r.contains_key(&(rule, source.clone())) {
            source.clone()
        } else {
            other()
        };
        *r.entry((rule, source)).or_default() += 1;
    }

    /// Records how soon a flood block's kernel entry was written after its source passed its
    /// limit (the data path's time of it).
    pub fn flood_report_to_block(&self, took: Duration) {
        self.flood_to_block.observe(took);
    }

    /// Records how long one store commit took.
    pub fn store_commit(&self, took: Duration) {
        self.commit.observe(took);
    }

    /// Counts blocks the reaper removed at their deadline.
    pub fn expired(&self, n: u64) {
        self.expired.fetch_add(n, Relaxed);
    }

    /// Counts one change of a configured interface's state.
    pub fn interface_change(&self, iface: &str, action: crate::audit::Action) {
        use crate::audit::Action;
        let to = match action {
            Action::InterfaceProtected => "protected",
            Action::InterfaceGone => "gone",
            _ => "unprotected",
        };
        *lock(&self.interface_changes)
            .entry((iface.to_owned(), to))
            .or_default() += 1;
    }

    /// A control connection opened (`true`) or closed.
    pub fn connection(&self, opened: bool) {
        if opened {
            self.connections.fetch_add(1, Relaxed);
        } else {
            self.connections.fetch_sub(1, Relaxed);
        }
    }

    /// Counts a control request as waiting for the engine (it is in the engine's queue) until
    /// the returned guard is dropped (its answer came).
    pub fn engine_waiting(&self) -> Waiting<'_> {
        self.engine_waiting.fetch_add(1, Relaxed);
        Waiting(&self.engine_waiting)
    }

    /// Counts one control connection turned away at the connection cap.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Relaxed);
    }

    /// Counts one failed accept (`kind`: `emfile`, `enfile`, `other`).
    pub fn accept_error(&self, kind: &'static str) {
        *lock(&self.accept_errors).entry(kind).or_default() += 1;
    }

    /// Replaces the published snapshot (the engine, after each round).
    pub fn publish(&self, s: Snapshot) {
        self.snapshot.publish(s);
    }

    /// The last published snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.get()
    }

    /// Replaces the drops by origin (the reader, after each count: `daemon::origins`).
    pub fn set_dropped_by_origin(&self, totals: Vec<crate::protocol::OriginDrops>) {
        *lock(&self.dropped_by_origin) = totals;
    }

    /// Dropped packets and bytes by the origin of the block holding each target, as last
    /// counted.
    pub fn dropped_by_origin(&self) -> Vec<crate::protocol::OriginDrops> {
        lock(&self.dropped_by_origin).clone()
    }
}

/// One control request waiting for the engine ([`Metrics::engine_waiting`]).
pub struct Waiting<'a>(&'a AtomicU64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding a counter lock leaves a valid map: keep counting.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn other() -> Source {
    "other".parse().expect("a valid source name")
}

/// A fixed-bucket histogram of durations.
#[derive(Default)]
struct Histogram {
    /// Per bucket (not cumulative), plus one for above the last bound.
    buckets: [AtomicU64; COMMIT_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = COMMIT_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(COMMIT_BUCKETS.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
        self.count.fetch_add(1, Relaxed);
    }
}

/// Source blocks counted by source and mode, kept up to date from each round's before/after.
#[derive(Default)]
pub struct BlockTally(HashMap<(Source, Mode), u64>);

impl BlockTally {
    /// Counts a target's source blocks in.
    pub fn add(&mut self, t: &TargetBlocks) {
        for b in t.by_source.values() {
            *self.0.entry((b.source.clone(), b.mode)).or_default() += 1;
        }
    }

    /// Counts a target's source blocks out.
    pub fn remove(&mut self, t: &TargetBlocks) {
        for b in t.by_source.values() {
            let key = (b.source.clone(), b.mode);
            if let Some(n) = self.0.get_mut(&key) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.0.remove(&key);
                }
            }
        }
    }

    /// Replaces a target's contribution: `before` out, `after` in.
    pub fn replace(&mut self, before: Option<&TargetBlocks>, after: Option<&TargetBlocks>) {
        if let Some(b) = before {
            self.remove(b);
        }
        if let Some(a) = after {
            self.add(a);
        }
    }

    /// Source blocks by source (every mode), uncapped: for `stats`.
    pub fn by_source(&self) -> Vec<(Source, usize)> {
        let mut out: BTreeMap<Source, usize> = BTreeMap::new();
        for ((s, _), n) in &self.0 {
            *out.entry(s.clone()).or_default() += usize::try_from(*n).unwrap_or(usize::MAX);
        }
        out.into_iter().collect()
    }

    /// Every source block counted (all sources and modes).
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// The counts, largest first, with sources past [`MAX_SOURCE_LABELS`] summed as `other`.
    pub fn entries(&self) -> Vec<(Source, Mode, u64)> {
        let mut all: Vec<(Source, Mode, u64)> = self
            .0
            .iter()
            .map(|((s, m), n)| (s.clone(), *m, *n))
            .collect();
        all.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        let mut sources = std::collections::BTreeSet::new();
        let mut out: BTreeMap<(Source, Mode), u64> = BTreeMap::new();
        for (s, m, n) in all {
            let s = if sources.contains(&s) || sources.len() < MAX_SOURCE_LABELS {
                sources.insert(s.clone());
                s
            } else {
                other()
            };
            *out.entry((s, m)).or_default() += n;
        }
        out.into_iter().map(|((s, m), n)| (s, m, n)).collect()
    }
}

/// What a scrape read outside the engine.
#[derive(Debug, Default)]
pub struct Outside {
    /// The data path's counters per attached interface.
    pub interfaces: Vec<(String, Stats)>,
    /// The frames each attached interface's parser gave up on, by reason.
    pub unjudged: Vec<(String, Unjudged)>,
    /// Requests waiting in the spool directory.
    pub spool_depth: u64,
    /// Now (Unix ms), for the reaper's lag.
    pub now_ms: WallMs,
}

fn mode_label(m: Mode) -> &'static str {
    match m {
        Mode::Enforce => "enforce",
        Mode::Shadow => "shadow",
    }
}

/// The whole exposition.
pub fn render(m: &Metrics, s: &Snapshot, o: &Outside) -> String {
    let mut e = Exposition::default();
    render_datapath(&mut e, o);
    render_unjudged(&mut e, o);
    render_state(&mut e, s, o, &m.dropped_by_origin());
    render_counters(&mut e, m);
    if let Some(f) = m.flood() {
        render_flood(&mut e, &f);
        render_histogram(
            &mut e,
            "enforcer_flood_report_to_block_seconds",
            "From the data path seeing a flood source pass its limit (the report's boot-clock time) to its block's entry written into the kernel map.",
            &m.flood_to_block,
        );
    }
    // integrations (CrowdSec: last successful pull, decisions) go here.
    e.family(
        "enforcer_build_info",
        Kind::Gauge,
        "Always 1; the labels say which build is running.",
    )
    .sample(
        "enforcer_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1.0,
    );
    e.finish()
}

/// Flood detection: on or off, its limits, and what became of its reports.
fn render_flood(e: &mut Exposition, f: &crate::protocol::FloodStatus) {
    e.family(
        "enforcer_flood_enabled",
        Kind::Gauge,
        "1 when the data path detects floods ([flood] enabled), else 0.",
    )
    .sample(
        "enforcer_flood_enabled",
        &[],
        f64::from(u8::from(f.enabled)),
    );
    e.family(
        "enforcer_flood_limit_packets_per_second",
        Kind::Gauge,
        "Per-source limits of flood detection, by family and class (0 = not checked).",
    );
    for (family, l) in [("ipv4", f.ipv4), ("ipv6", f.ipv6)] {
        for (class, v) in [("packets", l.packets), ("syn", l.syn), ("icmp", l.icmp)] {
            e.sample(
                "enforcer_flood_limit_packets_per_second",
                &[("family", family), ("class", class)],
                f64::from(v),
            );
        }
    }
    e.family(
        "enforcer_flood_candidates_total",
        Kind::Counter,
        "Sources over a limit reported by the data path, by what became of the report: block (a block request the policy accepted), refused (refused by the policy: allowlist, scope, breaker...), repeat (already asked within repeat_after).",
    );
    for (outcome, n) in [
        ("block", f.blocks),
        ("refused", f.refused),
        ("repeat", f.repeats),
    ] {
        e.sample(
            "enforcer_flood_candidates_total",
            &[("outcome", outcome)],
            n as f64,
        );
    }
    e.family(
        "enforcer_flood_reports_dropped_total",
        Kind::Counter,
        "Reports the data path did not send, by why: cap (reports_per_window reached), ring_full (the ring buffer was full).",
    );
    for (reason, n) in [("cap", f.kernel.capped), ("ring_full", f.kernel.lost)] {
        e.sample(
            "enforcer_flood_reports_dropped_total",
            &[("reason", reason)],
            n as f64,
        );
    }
    e.family(
        "enforcer_flood_packets_total",
        Kind::Counter,
        "Packets of sources over their limit before their block: held (dropped by the hold) or over (passed: hold off, shadow mode, or allowlisted).",
    );
    for (action, n) in [("held", f.kernel.held), ("over", f.kernel.over)] {
        e.sample(
            "enforcer_flood_packets_total",
            &[("action", action)],
            n as f64,
        );
    }
    e.family(
        "enforcer_flood_suspects_total",
        Kind::Counter,
        "Sources the data path started counting exactly (their estimate on a CPU reached its share of a limit).",
    )
    .sample("enforcer_flood_suspects_total", &[], f.kernel.suspects as f64);
    e.family(
        "enforcer_flood_last_block_latency_seconds",
        Kind::Gauge,
        "From the data path seeing the last blocked flood source pass its limit to its block's entry written into the kernel map (0 before the first).",
    )
    .sample(
        "enforcer_flood_last_block_latency_seconds",
        &[],
        f.last_latency_us as f64 / 1e6,
    );
}

fn render_datapath(e: &mut Exposition, o: &Outside) {
    let actions = |s: &Stats| {
        [
            ("seen", s.seen),
            ("passed", s.passed),
            ("dropped", s.dropped),
            ("allowlisted", s.allowlisted),
            ("shadow", s.shadow),
            ("expired", s.expired),
            ("not_ip", s.not_ip),
        ]
    };
    e.family(
        "enforcer_packets_total",
        Kind::Counter,
        "Frames the XDP program saw, by what it did (seen = passed + dropped; allowlisted, shadow, expired and not_ip are kinds of passed; not_ip counts every frame the parser gave up on, enforcer_unjudged_packets_total says why).",
    );
    for (iface, s) in &o.interfaces {
        for (action, c) in actions(s) {
            e.sample(
                "enforcer_packets_total",
                &[("action", action), ("interface", iface)],
                c.packets as f64,
            );
        }
    }
    e.family(
        "enforcer_bytes_total",
        Kind::Counter,
        "Bytes of those frames, by action.",
    );
    for (iface, s) in &o.interfaces {
        for (action, c) in actions(s) {
            e.sample(
                "enforcer_bytes_total",
                &[("action", action), ("interface", iface)],
                c.bytes as f64,
            );
        }
    }
}

/// Frames the parser gave up on (passed without a verdict), by reason: traffic the enforcer
/// never judged.
fn render_unjudged(e: &mut Exposition, o: &Outside) {
    e.family(
        "enforcer_unjudged_packets_total",
        Kind::Counter,
        "Frames the XDP program passed without judging them, by why: not-ip (not IPv4/IPv6), vlan-depth (more than two VLAN tags), truncated (shorter than its headers), split-headers (headers past the first buffer of a multi-buffer frame).",
    );
    for (iface, u) in &o.unjudged {
        for (i, reason) in enforcer_common::unjudged::NAMES.iter().enumerate() {
            e.sample(
                "enforcer_unjudged_packets_total",
                &[("reason", reason), ("interface", iface)],
                u.reasons[i].packets as f64,
            );
        }
    }
}

fn render_state(
    e: &mut Exposition,
    s: &Snapshot,
    o: &Outside,
    dropped_by_origin: &[crate::protocol::OriginDrops],
) {
    e.family("enforcer_blocks", Kind::Gauge, "Active blocks, by the source that asked and mode (a target blocked by two sources counts twice).");
    for (source, mode, n) in &s.blocks {
        e.sample(
            "enforcer_blocks",
            &[("source", source.as_str()), ("mode", mode_label(*mode))],
            *n as f64,
        );
    }
    e.family(
        "enforcer_block_targets",
        Kind::Gauge,
        "Blocked addresses and prefixes in the kernel maps.",
    )
    .sample("enforcer_block_targets", &[], s.targets as f64);
    e.family(
        "enforcer_map_entries",
        Kind::Gauge,
        "Entries in each kernel map.",
    );
    for (map, used, _) in &s.maps {
        e.sample("enforcer_map_entries", &[("map", map.name())], *used as f64);
    }
    e.family(
        "enforcer_map_capacity",
        Kind::Gauge,
        "Capacity of each kernel map (fixed when it was created).",
    );
    for (map, _, cap) in &s.maps {
        e.sample(
            "enforcer_map_capacity",
            &[("map", map.name())],
            f64::from(*cap),
        );
    }
    e.family(
        "enforcer_breaker_open",
        Kind::Gauge,
        "1 while the source's circuit breaker is open.",
    );
    for (source, open) in &s.breakers {
        e.sample(
            "enforcer_breaker_open",
            &[("source", source.as_str())],
            if *open { 1.0 } else { 0.0 },
        );
    }
    e.family(
        "enforcer_pending_approvals",
        Kind::Gauge,
        "Blocks waiting for an operator's approval.",
    )
    .sample("enforcer_pending_approvals", &[], s.pending as f64);
    let lag = s
        .oldest_deadline_ms
        .map_or(0, |d| o.now_ms.saturating_since(d).as_millis() as u64);
    e.family(
        "enforcer_reaper_lag_seconds",
        Kind::Gauge,
        "How far the reaper is behind the oldest block deadline (0 when nothing is overdue).",
    )
    .sample("enforcer_reaper_lag_seconds", &[], lag as f64 / 1000.0);
    e.family(
        "enforcer_interface_protected",
        Kind::Gauge,
        "1 while the program runs on the configured interface, 0 while it is waiting, gone or unprotected.",
    );
    for (iface, state) in &s.interface_states {
        e.sample(
            "enforcer_interface_protected",
            &[("interface", iface)],
            if *state == "protected" { 1.0 } else { 0.0 },
        );
    }
    e.family(
        "enforcer_spool_depth",
        Kind::Gauge,
        "Requests spooled while the daemon did not answer, not yet applied.",
    )
    .sample("enforcer_spool_depth", &[], o.spool_depth as f64);
    e.family(
        "enforcer_clock_steps_total",
        Kind::Counter,
        "Wall-clock steps the daemon followed (every block deadline moved with the clock, keeping its remaining time).",
    )
    .sample("enforcer_clock_steps_total", &[], s.clock_steps as f64);
    if let Some(p) = &s.publish {
        render_publish(e, p);
    }
    for (name, help, value) in [
        (
            "enforcer_dropped_by_origin_packets_total",
            "Packets dropped, by the origin of the block holding the target (a local source, or a CrowdSec decision's origin: crowdsec, cscli, CAPI, lists:NAME).",
            (|d: &crate::protocol::OriginDrops| d.packets)
                as fn(&crate::protocol::OriginDrops) -> u64,
        ),
        (
            "enforcer_dropped_by_origin_bytes_total",
            "Bytes of those packets.",
            |d: &crate::protocol::OriginDrops| d.bytes,
        ),
    ] {
        e.family(name, Kind::Counter, help);
        for d in dropped_by_origin {
            e.sample(name, &[("origin", d.origin.as_str())], value(d) as f64);
        }
    }
}

/// The CrowdSec publish queue (`[crowdsec.publish]`).
fn render_publish(e: &mut Exposition, p: &crate::outbox::OutboxCounters) {
    for (name, kind, help, value) in [
        (
            "enforcer_publish_queue_depth",
            Kind::Gauge,
            "Block changes waiting to be published to the CrowdSec LAPI.",
            p.depth,
        ),
        (
            "enforcer_publish_queue_max",
            Kind::Gauge,
            "The publish queue's bound (crowdsec.publish.queue_max).",
            p.max,
        ),
        (
            "enforcer_publish_dropped_total",
            Kind::Counter,
            "Block changes not published because the queue was full (enforced on this host only).",
            p.dropped,
        ),
        (
            "enforcer_published_blocks",
            Kind::Gauge,
            "Blocks whose ban decisions the CrowdSec LAPI holds for this host.",
            p.published,
        ),
    ] {
        e.family(name, kind, help).sample(name, &[], value as f64);
    }
}

fn render_counters(e: &mut Exposition, m: &Metrics) {
    e.family(
        "enforcer_requests_total",
        Kind::Counter,
        "Control requests, by operation and result (ok or the error code).",
    );
    for ((op, result), n) in lock(&m.requests).iter() {
        e.sample(
            "enforcer_requests_total",
            &[("op", op), ("result", result)],
            *n as f64,
        );
    }
    e.family(
        "enforcer_policy_refusals_total",
        Kind::Counter,
        "Blocks the policy refused, by rule and source.",
    );
    for ((rule, source), n) in lock(&m.refusals).iter() {
        e.sample(
            "enforcer_policy_refusals_total",
            &[("rule", rule), ("source", source.as_str())],
            *n as f64,
        );
    }
    e.family(
        "enforcer_interface_changes_total",
        Kind::Counter,
        "Changes of a configured interface's state, by the state it changed to (protected, gone, unprotected).",
    );
    for ((iface, state), n) in lock(&m.interface_changes).iter() {
        e.sample(
            "enforcer_interface_changes_total",
            &[("interface", iface), ("state", state)],
            *n as f64,
        );
    }
    e.family(
        "enforcer_control_connections",
        Kind::Gauge,
        "Open control socket connections.",
    )
    .sample(
        "enforcer_control_connections",
        &[],
        m.connections.load(Relaxed) as f64,
    );
    e.family(
        "enforcer_control_requests_waiting",
        Kind::Gauge,
        "Control requests in the engine's queue or round, not answered yet (the engine's backlog as its clients see it).",
    )
    .sample(
        "enforcer_control_requests_waiting",
        &[],
        m.engine_waiting.load(Relaxed) as f64,
    );
    e.family(
        "enforcer_control_connections_refused_total",
        Kind::Counter,
        "Control connections turned away because [control_socket] max_connections were open.",
    )
    .sample(
        "enforcer_control_connections_refused_total",
        &[],
        m.connections_refused.load(Relaxed) as f64,
    );
    e.family(
        "enforcer_accept_errors_total",
        Kind::Counter,
        "Failed accepts on the control socket, by error (emfile, enfile: out of file descriptors; the loop backs off).",
    );
    for (kind, n) in lock(&m.accept_errors).iter() {
        e.sample(
            "enforcer_accept_errors_total",
            &[("error", kind)],
            *n as f64,
        );
    }
    e.family(
        "enforcer_expired_total",
        Kind::Counter,
        "Blocks removed by the reaper at their deadline.",
    )
    .sample(
        "enforcer_expired_total",
        &[],
        m.expired.load(Relaxed) as f64,
    );
    e.family(
        "enforcer_store_commits_total",
        Kind::Counter,
        "Durable transactions the store committed (one fsynced commit record each; requests that arrive together share one).",
    )
    .sample(
        "enforcer_store_commits_total",
        &[],
        m.store_commits.load(Relaxed) as f64,
    );
    render_histogram(
        e,
        "enforcer_store_commit_seconds",
        "Time to commit one round to the durable store (fsync included).",
        &m.commit,
    );
}

/// A histogram of durations in seconds, as the exposition format has them: cumulative buckets,
/// sum and count.
fn render_histogram(e: &mut Exposition, name: &str, help: &str, h: &Histogram) {
    e.family(name, Kind::Histogram, help);
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0;
    for (i, bound) in COMMIT_BUCKETS.iter().enumerate() {
        cumulative += h.buckets[i].load(Relaxed);
        e.sample(&bucket, &[("le", &bound_label(*bound))], cumulative as f64);
    }
    let count = h.count.load(Relaxed);
    e.sample(&bucket, &[("le", "+Inf")], count as f64)
        .sample(
            &format!("{name}_sum"),
            &[],
            h.sum_ns.load(Relaxed) as f64 / 1e9,
        )
        .sample(&format!("{name}_count"), &[], count as f64);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::testing::wall;

    fn src(s: &str) -> Source {
        s.parse().unwrap()
    }

    #[test]
    fn a_scrape_shows_every_family_with_bounded_labels() {
        let m = Metrics::new(Arc::new(AtomicU64::new(5)));
        m.request("block", "ok");
        m.request("block", "ok");
        m.request("block", "refused");
        m.refusal("scope", &src("wazuh"));
        m.store_commit(Duration::from_micros(700));
        m.store_commit(Duration::from_secs(5));
        m.expired(3);
        m.interface_change("eth0", crate::audit::Action::InterfaceGone);
        m.interface_change("eth0", crate::audit::Action::InterfaceProtected);
        m.connection(true);
        m.connection(true);
        m.connection(false);
        m.connection_refused();
        let _waiting = m.engine_waiting();
        m.accept_error("emfile");
        m.accept_error("emfile");
        m.publish(Snapshot {
            blocks: vec![(src("wazuh"), Mode::Enforce, 2)],
            targets: 2,
            maps: vec![(MapId::BlockV4, 2, 1024)],
            breakers: vec![(src("wazuh"), false)],
            pending: 1,
            oldest_deadline_ms: Some(wall(1_000)),
            interfaces: vec![("eth0".into(), 2)],
            interface_states: vec![("eth0".into(), "protected"), ("eth1".into(), "waiting")],
            clock_steps: 2,
            publish: None,
        });
        m.set_dropped_by_origin(vec![crate::protocol::OriginDrops {
            origin: "lists:firehol".into(),
            packets: 3,
            bytes: 180,
        }]);
        let mut stats = Stats::default();
        stats.dropped.add(60);
        let mut unjudged = Unjudged::default();
        unjudged.reasons[enforcer_common::unjudged::VLAN_DEPTH as usize].add(70);
        let o = Outside {
            interfaces: vec![("eth0".into(), stats)],
            unjudged: vec![("eth0".into(), unjudged)],
            spool_depth: 4,
            now_ms: wall(3_500),
        };
        let text = render(&m, &m.snapshot(), &o);
        for line in [
            "enforcer_packets_total{action=\"dropped\",interface=\"eth0\"} 1",
            "enforcer_bytes_total{action=\"dropped\",interface=\"eth0\"} 60",
            "enforcer_unjudged_packets_total{reason=\"vlan-depth\",interface=\"eth0\"} 1",
            "enforcer_unjudged_packets_total{reason=\"truncated\",interface=\"eth0\"} 0",
            "enforcer_blocks{source=\"wazuh\",mode=\"enforce\"} 2",
            "enforcer_map_capacity{map=\"BLOCK_V4\"} 1024",
            "enforcer_requests_total{op=\"block\",result=\"ok\"} 2",
            "enforcer_policy_refusals_total{rule=\"scope\",source=\"wazuh\"} 1",
            "enforcer_store_commit_seconds_bucket{le=\"0.001\"} 1",
            "enforcer_store_commit_seconds_bucket{le=\"2.5\"} 1",
            "enforcer_store_commit_seconds_bucket{le=\"+Inf\"} 2",
            "enforcer_store_commit_seconds_count 2",
            "enforcer_store_commits_total 5",
            "enforcer_expired_total 3",
            "enforcer_control_connections 1",
            "enforcer_control_requests_waiting 1",
            "enforcer_control_connections_refused_total 1",
            "enforcer_accept_errors_total{error=\"emfile\"} 2",
            "enforcer_reaper_lag_seconds 2.5",
            "enforcer_dropped_by_origin_packets_total{origin=\"lists:firehol\"} 3",
            "enforcer_dropped_by_origin_bytes_total{origin=\"lists:firehol\"} 180",
            "enforcer_spool_depth 4",
            "enforcer_clock_steps_total 2",
            "enforcer_pending_approvals 1",
            "enforcer_interface_protected{interface=\"eth0\"} 1",
            "enforcer_interface_protected{interface=\"eth1\"} 0",
            "enforcer_interface_changes_total{interface=\"eth0\",state=\"gone\"} 1",
            "enforcer_interface_changes_total{interface=\"eth0\",state=\"protected\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.contains("enforcer_build_info{version=\""), "{text}");
    }

    #[test]
    fn sources_past_the_label_cap_are_summed_as_other() {
        let m = Metrics::default();
        for i in 0..MAX_SOURCE_LABELS + 10 {
            m.refusal("scope", &src(&format!("s{i}")));
        }
        let r = lock(&m.refusals);
        assert_eq!(r.len(), MAX_SOURCE_LABELS + 1);
        assert_eq!(r[&("scope", other())], 10);
    }

    #[test]
    fn the_tally_follows_before_and_after_and_caps_sources() {
        use crate::block::SourceBlock;
        let mut tally = BlockTally::default();
        let mut t = TargetBlocks::default();
        let mut b = SourceBlock {
            source: src("wazuh"),
            reason: Default::default(),
            created_ms: wall(0),
            updated_ms: wall(0),
            expires_ms: None,
            mode: Mode::Enforce,
            scope: Default::default(),
        };
        t.by_source.insert(b.source.clone(), b.clone());
        tally.replace(None, Some(&t));
        let before = t.clone();
        b.mode = Mode::Shadow;
        t.by_source.insert(b.source.clone(), b);
        tally.replace(Some(&before), Some(&t));
        assert_eq!(tally.entries(), vec![(src("wazuh"), Mode::Shadow, 1)]);
        tally.replace(Some(&t), None);
        assert!(tally.entries().is_empty());
    }
}
