//! The daemon as a CrowdSec remediation component ("bouncer").
//!
//! A task inside the daemon pulls the Local API's decision stream: a full (`startup=true`) pull
//! first, after any error, and every `resync`; deltas in between, every `update_frequency`.
//! Each pull becomes one [`SyncRequest`](crate::protocol::SyncRequest) to the engine, so it is
//! judged by the same safety policy as every other block and applied in one durable round.
//! The task is an ordinary client of the engine: it never touches the store or the maps. While
//! the LAPI is unreachable, blocks stay in force until their own end and pulls back off.
//!
//! Blocks carry the source `crowdsec`; their reason names scenario, origin and decision id.

mod config;
pub mod decision;
pub mod go_duration;
mod lapi;
pub mod ledger;
pub mod publish;

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

pub use config::{Credentials, CrowdsecConfig, MachineLogin, PublishConfig};
pub use lapi::{Lapi, LapiError};

use self::{
    decision::{Ban, DecisionKey, RawDecision, Skip, StreamBody},
    ledger::Ledger,
};
use crate::{
    block::Source,
    error::Chain,
    protocol::{CrowdsecStatus, Reply, Request, Response, SyncReply},
    time::WallMs,
};

/// The source name of CrowdSec's blocks.
pub const SOURCE: &str = "crowdsec";
/// How often usage metrics are pushed.
const METRICS_EVERY: Duration = Duration::from_secs(15 * 60);
/// The longest wait between retries while the LAPI fails.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Kinds of skipped decisions logged one by one (a LAPI can invent any number of types and
/// scopes); past this, one line says the rest are only counted.
const MAX_LOGGED_KINDS: usize = 32;

/// The bouncer's state as `enforcer status` shows it; shared with the control socket.
pub type StatusHandle = Arc<Mutex<CrowdsecStatus>>;

/// Why a pull did not change anything.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The LAPI failed or answered something unusable.
    #[error(transparent)]
    Lapi(#[from] LapiError),
    /// The engine could not apply the pull (the store or the kernel failed).
    #[error("applying the decisions failed: {0}")]
    Apply(String),
}

/// What the bouncer needs of the engine: it sends requests (a source sync, the counters) and
/// reads the replies, as any client of the control socket does. The daemon implements it over
/// its engine channel, with the same access check as a socket request; tests may fake it.
pub trait Engine: Send + Sync + 'static {
    /// Sends one request and waits for its reply.
    fn ask(&self, request: Request) -> impl Future<Output = Response> + Send;
    /// The publisher takes queued publications or reports sent ones (a daemon-internal ask, not
    /// a protocol request); `Err` says why the engine did not answer.
    fn outbox(
        &self,
        request: crate::outbox::OutboxRequest,
    ) -> impl Future<Output = Result<crate::outbox::OutboxBatch, String>> + Send;
}

/// The bouncer task.
pub struct Bouncer<E> {
    lapi: Lapi,
    engine: E,
    source: Source,
    update_frequency: Duration,
    resync: Duration,
    ledger: Ledger,
    status: StatusHandle,
    /// The next pull must be a full one (at start, after any error, when a resync is due).
    need_full: bool,
    last_full: Option<Instant>,
    /// Skip reasons already logged (each kind is logged once, up to [`MAX_LOGGED_KINDS`]).
    logged: HashSet<String>,
    /// Decisions of the LAPI's current state that are not enforced (not a ban, another scope,
    /// simulated): what the last full pull ignored plus what deltas added since, less what they
    /// deleted. A full pull starts it again, so it holds no more than the LAPI does.
    ignored: HashSet<DecisionKey>,
    refused: HashSet<crate::target::Target>,
    metrics: Metrics,
    /// Until the engine is ready: the first pull is made while the daemon starts, and applied
    /// once this says so.
    engine_ready: Option<tokio::sync::watch::Receiver<bool>>,
    /// Decisions this host published (`[crowdsec.publish]`): never imported back.
    echo: Option<crate::outbox::SharedEcho>,
}

/// Usage-metrics bookkeeping.
struct Metrics {
    on: bool,
    last_push: Option<Instant>,
    started: u64,
    /// The kernel's counters at the last successful push (each push sends what came since).
    counted_before: Traffic,
}

/// Packets and bytes dropped (by origin) and seen, over every protected interface.
#[derive(Clone, Debug, Default)]
struct Traffic {
    dropped: BTreeMap<String, (u64, u64)>,
    seen: (u64, u64),
}

impl Traffic {
    fn since(&self, before: &Self) -> Self {
        let d = |a: (u64, u64), b: (u64, u64)| (a.0.saturating_sub(b.0), a.1.saturating_sub(b.1));
        Self {
            dropped: self
                .dropped
                .iter()
                .map(|(o, n)| {
                    let b = before.dropped.get(o).copied().unwrap_or_default();
                    (o.clone(), d(*n, b))
                })
                .collect(),
            seen: d(self.seen, before.seen),
        }
    }
}

impl<E: Engine> Bouncer<E> {
    /// Builds the bouncer; fails only on local setup (TLS files, credentials). Its first pull
    /// may start at once; it is applied once `engine_ready` says `true`.
    pub fn new(
        config: &CrowdsecConfig,
        engine: E,
        engine_ready: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Self, LapiError> {
        let status = CrowdsecStatus {
            api_url: config.api_url.clone(),
            usage_metrics: if config.usage_metrics {
                "on".into()
            } else {
                "off: disabled in the configuration".into()
            },
            ..CrowdsecStatus::default()
        };
        Ok(Self {
            lapi: Lapi::new(config)?,
            engine,
            source: SOURCE.parse().expect("a valid source name"),
            update_frequency: config.update_frequency.0,
            resync: config.resync.0,
            ledger: Ledger::default(),
            status: Arc::new(Mutex::new(status)),
            need_full: true,
            last_full: None,
            logged: HashSet::new(),
            ignored: HashSet::new(),
            refused: HashSet::new(),
            metrics: Metrics {
                on: config.usage_metrics,
                last_push: None,
                started: WallMs::now().unix_secs(),
                counted_before: Traffic::default(),
            },
            engine_ready: Some(engine_ready),
            echo: None,
        })
    }

    /// Skips the decisions this host published itself (see [`crate::outbox::Echo`]).
    pub fn skip_own(&mut self, echo: crate::outbox::SharedEcho) {
        self.echo = Some(echo);
    }

    /// The status, for the control socket.
    pub fn status(&self) -> StatusHandle {
        self.status.clone()
    }

    /// Pulls forever (the daemon aborts the task when it stops).
    pub async fn run(mut self) {
        let mut backoff = self.update_frequency;
        loop {
            let started = Instant::now();
            match self.pull_once().await {
                Ok(()) => {
                    backoff = self.update_frequency;
                    self.push_metrics().await;
                    tokio::time::sleep(self.update_frequency.saturating_sub(started.elapsed()))
                        .await;
                }
                Err(e) => {
                    tracing::warn!(error = %Chain(&e), retry_in = ?backoff, "CrowdSec pull failed; blocks stay in force, the next pull is a full one");
                    self.need_full = true;
                    {
                        let mut s = self.status.lock().expect("status lock");
                        s.errors += 1;
                        s.last_error = Some(Chain(&e).to_string());
                        s.last_error_ms = Some(WallMs::now());
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF.max(self.update_frequency));
                }
            }
        }
    }

    /// One pull, applied. A full pull replaces the crowdsec set; a delta changes what it names.
    pub async fn pull_once(&mut self) -> Result<(), PullError> {
        let full = self.need_full || self.last_full.is_none_or(|t| t.elapsed() >= self.resync);
        let started = Instant::now();
        let bytes = self.lapi.pull(full).await?;
        // The LAPI's durations are the time left when it answered: they count from here. Ends
        // are kept on the boot clock, so a wall-clock step does not end them.
        let answered = crate::time::BootMs::now();
        let fetched = started.elapsed();
        let body = StreamBody::parse(&bytes).map_err(|e| LapiError::Garbage(e.to_string()))?;
        let now = WallMs::now();
        let decisions = body.new.len();
        let (new, deleted) = if full {
            self.ignored.clear();
            (self.map_new(&body.new), Vec::new())
        } else {
            for d in &body.deleted {
                if let Some(id) = d.id() {
                    self.ignored.remove(&DecisionKey::Id(id));
                }
            }
            let deleted = body
                .deleted
                .iter()
                .filter_map(|d| decision::map(d).ok())
                .collect();
            (self.map_new(&body.new), deleted)
        };
        drop(body);
        drop(bytes);
        let mapped = started.elapsed();
        // The first pull is answered while the daemon starts (seconds, on a loaded machine):
        // the request's TTLs, which the engine counts from when it applies them, are taken
        // only once it can, or every block would end later by the start's length.
        self.wait_engine_ready().await?;
        let applied_at = crate::time::BootMs::now();
        let request = if full {
            self.ledger.startup(&self.source, new, answered, applied_at)
        } else {
            self.ledger
                .delta(&self.source, new, deleted, answered, applied_at)
        };
        let reply = if full || !request.items.is_empty() || !request.remove.is_empty() {
            self.apply(request).await?
        } else {
            SyncReply::default()
        };
        if full {
            self.need_full = false;
            self.last_full = Some(Instant::now());
            tracing::info!(
                decisions,
                applied = reply.applied,
                fetch_ms = fetched.as_millis() as u64,
                parse_ms = (mapped - fetched).as_millis() as u64,
                apply_ms = (started.elapsed() - mapped).as_millis() as u64,
                "CrowdSec full pull applied"
            );
        }
        let mut s = self.status.lock().expect("status lock");
        s.pulls += 1;
        s.last_pull_ms = Some(now);
        if full {
            s.last_full_pull_ms = Some(now);
        }
        s.active = self.ledger.active(crate::time::BootMs::now());
        s.applied += reply.applied as u64;
        s.pending += reply.pending as u64;
        s.refused = self.refused.len() as u64;
        s.ignored = self.ignored.len() as u64;
        Ok(())
    }

    /// Maps a pull's new decisions, counting and logging what is skipped.
    fn map_new(&mut self, new: &[RawDecision<'_>]) -> Vec<Ban> {
        let mut bans = Vec::with_capacity(new.len());
        let mut invalid = 0u64;
        let mut own = 0u64;
        for raw in new {
            let key = raw.id().map(DecisionKey::Id);
            match decision::map(raw) {
                Ok(ban) if self.is_own(raw.id(), &ban) => own += 1,
                Ok(ban) => bans.push(ban),
                Err(skip @ Skip::Invalid(_)) => {
                    if invalid == 0 {
                        tracing::warn!(reason = %skip, "skipping a malformed CrowdSec decision");
                    }
                    invalid += 1;
                }
                Err(skip) => {
                    if let Some(k) = key {
                        self.ignored.insert(k);
                    }
                    self.log_skip(&skip);
                }
            }
        }
        if invalid > 0 {
            tracing::warn!(count = invalid, "skipped malformed CrowdSec decisions");
            self.status.lock().expect("status lock").invalid += invalid;
        }
        if own > 0 {
            tracing::debug!(count = own, "skipped decisions this host published");
            self.status.lock().expect("status lock").own += own;
        }
        bans
    }

    /// Logs the first decision of each kind skipped, for the first [`MAX_LOGGED_KINDS`] kinds.
    fn log_skip(&mut self, skip: &Skip) {
        let text = skip.to_string();
        if self.logged.contains(&text) || self.logged.len() > MAX_LOGGED_KINDS {
            return;
        }
        if self.logged.len() < MAX_LOGGED_KINDS {
            tracing::info!(reason = %skip, "ignoring CrowdSec decisions of this kind (counted in status; logged once)");
            self.logged.insert(text);
        } else {
            tracing::info!(
                kinds = MAX_LOGGED_KINDS,
                "more kinds of ignored CrowdSec decisions: counted in status, no longer logged"
            );
            // A text no skip has: the set is full for good.
            self.logged.insert(String::new());
        }
    }

    /// Whether `ban` is a decision this host published.
    fn is_own(&self, id: Option<i64>, ban: &Ban) -> bool {
        self.echo.as_ref().is_some_and(|echo| {
            let scenario = ban.reason.rule_id.as_deref().unwrap_or_default();
            echo.lock()
                .expect("echo lock")
                .is_own(id, scenario, &ban.target)
        })
    }

    /// Until the engine takes requests (only the first pull waits).
    async fn wait_engine_ready(&mut self) -> Result<(), PullError> {
        if let Some(mut ready) = self.engine_ready.take()
            && ready.wait_for(|r| *r).await.is_err()
        {
            return Err(PullError::Apply(
                "the daemon stopped before its engine was ready".into(),
            ));
        }
        Ok(())
    }

    async fn apply(
        &mut self,
        request: crate::protocol::SyncRequest,
    ) -> Result<SyncReply, PullError> {
        let items = request.items.len();
        match self.engine.ask(Request::SyncSource(request)).await {
            Response::Ok {
                result: Reply::SyncSource(reply),
                ..
            } => {
                for f in &reply.failed {
                    if self.refused.insert(f.target) {
                        tracing::warn!(target = %f.target, error = %f.error.message, "CrowdSec decision refused by the safety policy");
                    }
                }
                tracing::debug!(
                    items,
                    applied = reply.applied,
                    unchanged = reply.unchanged,
                    removed = reply.removed,
                    "CrowdSec pull applied"
                );
                Ok(reply)
            }
            Response::Ok { result, .. } => {
                Err(PullError::Apply(format!("unexpected reply {result:?}")))
            }
            Response::Err { error, .. } => Err(PullError::Apply(error.message)),
        }
    }

    /// Pushes usage metrics every 15 minutes, starting after the first successful pull.
    async fn push_metrics(&mut self) {
        if !self.metrics.on
            || self
                .metrics
                .last_push
                .is_some_and(|t| t.elapsed() < METRICS_EVERY)
        {
            return;
        }
        let window = self.metrics.last_push.map_or(0, |t| t.elapsed().as_secs());
        self.metrics.last_push = Some(Instant::now());
        let counted = match self.engine.ask(Request::Stats).await {
            Response::Ok {
                result: Reply::Stats(s),
                ..
            } => Traffic {
                dropped: s
                    .dropped_by_origin
                    .iter()
                    .map(|d| (d.origin.clone(), (d.packets, d.bytes)))
                    .collect(),
                seen: (s.total.seen.packets, s.total.seen.bytes),
            },
            _ => self.metrics.counted_before.clone(),
        };
        let body = usage_metrics(
            &self.ledger.active_by_origin(crate::time::BootMs::now()),
            &counted.since(&self.metrics.counted_before),
            self.metrics.started,
            window,
        );
        match self.lapi.push_metrics(&body).await {
            Ok(true) => self.metrics.counted_before = counted,
            Ok(false) => {
                tracing::info!(
                    "this LAPI has no usage-metrics endpoint (before 1.6.3); not pushing metrics"
                );
                self.metrics.on = false;
                self.status.lock().expect("status lock").usage_metrics =
                    "off: the LAPI has no /v1/usage-metrics (before 1.6.3)".into();
            }
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "pushing usage metrics failed; retrying in 15 minutes")
            }
        }
    }
}

/// The usage-metrics body of CrowdSec's API (`AllMetrics.remediation_components`, LAPI ≥ 1.6.3):
/// the live bans per origin (unit `ip`), the packets and bytes dropped since the last push by the
/// origin of the block holding each target (a CrowdSec decision's origin, or a local source), as
/// cs-firewall-bouncer reports them, and the frames processed since the last push.
fn usage_metrics(
    active_by_origin: &BTreeMap<String, u64>,
    traffic: &Traffic,
    started: u64,
    window_secs: u64,
) -> serde_json::Value {
    let mut items: Vec<serde_json::Value> = active_by_origin
        .iter()
        .map(|(origin, n)| serde_json::json!({"name": "active_decisions", "unit": "ip", "value": n, "labels": {"origin": origin}}))
        .collect();
    // Every origin with live bans or drops, zero included (a push says what each one did).
    let mut dropped = traffic.dropped.clone();
    for origin in active_by_origin.keys() {
        dropped.entry(origin.clone()).or_default();
    }
    for (origin, (packets, bytes)) in &dropped {
        let labels = serde_json::json!({"origin": origin, "remediation": "ban"});
        items.push(serde_json::json!({"name": "dropped", "unit": "packet", "value": packets, "labels": labels}));
        items.push(serde_json::json!({"name": "dropped", "unit": "byte", "value": bytes, "labels": labels}));
    }
    items.push(serde_json::json!({"name": "processed", "unit": "packet", "value": traffic.seen.0}));
    items.push(serde_json::json!({"name": "processed", "unit": "byte", "value": traffic.seen.1}));
    serde_json::json!({
        "remediation_components": [{
            "name": "enforcer",
            "type": "enforcer",
            "version": env!("CARGO_PKG_VERSION"),
            "feature_flags": [],
            "utc_startup_timestamp": started,
            "os": {"name": "linux", "version": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()},
            "metrics": [{
                "meta": {"window_size_seconds": window_secs, "utc_now_timestamp": WallMs::now().unix_secs()},
                "items": items,
            }],
        }]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_metrics_split_drops_by_origin_since_the_last_push() {
        let before = Traffic {
            dropped: [("cscli".to_owned(), (10, 600))].into_iter().collect(),
            seen: (100, 6000),
        };
        let now = Traffic {
            dropped: [
                ("cscli".to_owned(), (15, 900)),
                ("fail2ban".to_owned(), (2, 120)),
            ]
            .into_iter()
            .collect(),
            seen: (130, 7800),
        };
        let active = [("cscli".to_owned(), 1), ("CAPI".to_owned(), 4)]
            .into_iter()
            .collect();
        let body = usage_metrics(&active, &now.since(&before), 1, 900);
        let items = body["remediation_components"][0]["metrics"][0]["items"]
            .as_array()
            .unwrap()
            .clone();
        let dropped = |origin: &str, unit: &str| {
            items
                .iter()
                .find(|i| {
                    i["name"] == "dropped" && i["unit"] == unit && i["labels"]["origin"] == origin
                })
                .map(|i| i["value"].as_u64().unwrap())
        };
        assert_eq!(dropped("cscli", "packet"), Some(5));
        assert_eq!(dropped("cscli", "byte"), Some(300));
        assert_eq!(dropped("fail2ban", "packet"), Some(2));
        assert_eq!(
            dropped("CAPI", "packet"),
            Some(0),
            "an active origin with no drops"
        );
        assert_eq!(dropped("lists:x", "packet"), None);
        let processed = items
            .iter()
            .find(|i| i["name"] == "processed" && i["unit"] == "packet")
            .unwrap();
        assert_eq!(processed["value"], 30);
    }
}
