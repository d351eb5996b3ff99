//! Flood response (issue 23): reads the data path's reports of sources over their limit and
//! asks the engine to block each, as source `flood`, through the same door as every other
//! internal requester ([`super::control_socket::run_timed`], which also says when the block
//! was written into the kernel map): the policy decides (allowlist, scope guard,
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
    time::BootNs,
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

    /// Asks the engine to block the candidate; counts the outcome and, for a block, times it.
    async fn request(&mut self, candidate: &Candidate) {
        self.status.requests += 1;
        let request = Request::Block(candidate.request());
        let (in_kernel, written) = tokio::sync::oneshot::channel();
        let caller = crate::access::Caller::internal(SOURCE);
        match super::control_socket::run_timed(request, caller, &self.engine, in_kernel).await {
            Response::Ok { .. } => {
                self.status.blocks += 1;
                // The engine sends the time before the answer: it is there now, or never was
                // (a request that changed no kernel entry).
                let timing = Timing::of(candidate, written.await.ok(), BootNs::now());
                self.time(candidate, &timing);
            }
            Response::Err { error, .. } => {
                self.status.refused += 1;
                tracing::info!(address = %candidate.address, class = candidate.class, rate = candidate.rate, error = %error.message, "flood: block refused");
            }
        }
    }

    /// Publishes how soon a block followed its report.
    fn time(&mut self, candidate: &Candidate, timing: &Timing) {
        if let Some(in_kernel) = timing.in_kernel {
            self.metrics.flood_report_to_block(in_kernel);
            self.status.last_latency_us = micros(in_kernel);
            self.status.last_in_kernel_ns = timing.in_kernel_at.kernel();
        }
        self.status.last_answered_us = micros(timing.answered);
        tracing::info!(
            address = %candidate.address,
            class = candidate.class,
            rate = candidate.rate,
            in_kernel_us = timing.in_kernel.map(micros),
            answered_us = micros(timing.answered),
            "flood: block requested"
        );
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

/// How soon a block followed the data path's report (its source passing its limit).
#[derive(Debug, PartialEq, Eq)]
struct Timing {
    /// To its kernel entry written (`None`: the request wrote no entry, the block was there).
    in_kernel: Option<Duration>,
    /// When that was (boot clock).
    in_kernel_at: BootNs,
    /// To the engine's answer, after the store's commit.
    answered: Duration,
}

impl Timing {
    fn of(candidate: &Candidate, in_kernel: Option<BootNs>, answered: BootNs) -> Self {
        let crossed = BootNs::from_kernel(candidate.at_ns);
        let since = |t: BootNs| Duration::from_nanos(t.kernel().saturating_sub(crossed.kernel()));
        Self {
            in_kernel: in_kernel.map(since),
            in_kernel_at: in_kernel.unwrap_or_default(),
            answered: since(answered),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
