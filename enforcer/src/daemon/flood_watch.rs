//! Flood response (issue 23): reads the data path's reports of sources over their limit and
//! asks the engine to block each, as source `flood`, through the same door as every other
//! internal requester ([`super::ask_engine`]): the policy decides (allowlist, scope guard,
//! TTLs, repeat offenders, breaker, shadow, approval) and the audit log records it, with the
//! measured rate in the reason. Nothing here writes a map.

use std::{
    os::fd::{AsFd as _, OwnedFd},
    sync::{Arc, mpsc::SyncSender},
    time::{Duration, Instant},
};

use tokio::io::unix::AsyncFd;

use super::engine::Command;
use crate::{
    datapath::FloodMaps,
    flood::{Candidate, FloodConfig, Repeats, SOURCE},
    metrics::Metrics,
    protocol::{FloodStatus, Request, Response},
};

/// How often the data path's counters are read into status and metrics.
const COUNTERS_EVERY: Duration = Duration::from_secs(1);

/// Why the watcher cannot run.
#[derive(Debug, thiserror::Error)]
#[error("watching the flood detector's ring buffer")]
pub struct WatchError(#[source] std::io::Error);

/// Publishes the state of detection when it is off (status and metrics say so).
pub fn publish_off(config: &FloodConfig, metrics: &Metrics) {
    metrics.set_flood(FloodStatus {
        enabled: false,
        ..status(config, false)
    });
}

/// The configured part of the status.
fn status(config: &FloodConfig, hold: bool) -> FloodStatus {
    FloodStatus {
        enabled: config.enabled,
        hold,
        window_ms: u64::try_from(config.window.0.as_millis()).unwrap_or(u64::MAX),
        ipv4: config.ipv4,
        ipv6: config.ipv6,
        ..FloodStatus::default()
    }
}

/// Starts the watcher on the current runtime.
pub fn spawn(
    config: FloodConfig,
    hold: bool,
    maps: FloodMaps,
    engine: SyncSender<Command>,
    metrics: Arc<Metrics>,
) -> Result<tokio::task::JoinHandle<()>, WatchError> {
    let fd = maps
        .events
        .as_fd()
        .try_clone_to_owned()
        .map_err(WatchError)?;
    // SAFETY: the descriptor is owned by the `OwnedFd` the `AsyncFd` takes, so it stays open
    // and the same for the `AsyncFd`'s whole life.
    let ready = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| WatchError(e.into_parts().1))?;
    let mut watcher = Watcher {
        status: status(&config, hold),
        config,
        maps,
        engine,
        metrics,
        repeats: Repeats::default(),
    };
    watcher.publish();
    Ok(tokio::spawn(async move { watcher.run(ready).await }))
}

struct Watcher {
    config: FloodConfig,
    status: FloodStatus,
    maps: FloodMaps,
    engine: SyncSender<Command>,
    metrics: Arc<Metrics>,
    repeats: Repeats,
}

impl Watcher {
    async fn run(&mut self, ready: AsyncFd<OwnedFd>) {
        let mut counters = tokio::time::interval(COUNTERS_EVERY);
        loop {
            tokio::select! {
                guard = ready.readable() => {
                    let Ok(mut guard) = guard else {
                        tracing::error!("the flood detector's ring buffer cannot be polled; flood reports are no longer read");
                        return;
                    };
                    guard.clear_ready();
                    self.handle_reports().await;
                }
                _ = counters.tick() => {}
            }
            self.publish();
        }
    }

    /// Every report waiting, in order.
    async fn handle_reports(&mut self) {
        for report in self.maps.drain() {
            self.status.candidates += 1;
            let Some(candidate) = Candidate::from_report(&report) else {
                tracing::warn!(?report, "a malformed flood report; ignored");
                continue;
            };
            if !self.repeats.fresh(
                candidate.address,
                Instant::now(),
                self.config.repeat_after.0,
            ) {
                self.status.repeats += 1;
                continue;
            }
            self.request(&candidate).await;
        }
    }

    /// Asks the engine to block the candidate; counts the outcome.
    async fn request(&mut self, candidate: &Candidate) {
        self.status.requests += 1;
        let request = Request::Block(candidate.request());
        match super::ask_engine(SOURCE, request, &self.engine).await {
            Response::Ok { .. } => {
                self.status.blocks += 1;
                let latency_us =
                    crate::datapath::clock::boottime_ns().saturating_sub(candidate.at_ns) / 1000;
                self.status.last_latency_us = latency_us;
                tracing::info!(address = %candidate.address, class = candidate.class, rate = candidate.rate, latency_us, "flood: block requested");
            }
            Response::Err { error, .. } => {
                self.status.refused += 1;
                tracing::info!(address = %candidate.address, class = candidate.class, rate = candidate.rate, error = %error.message, "flood: block refused");
            }
        }
    }

    /// Reads the data path's counters and publishes the status.
    fn publish(&mut self) {
        match self.maps.stats_total() {
            Ok(k) => self.status.kernel = k.into(),
            Err(e) => tracing::debug!(error = %e, "reading the flood detector's counters"),
        }
        self.metrics.set_flood(self.status.clone());
    }
}
