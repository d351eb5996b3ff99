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

use enforcer_common::flood::FloodReport;
use tokio::{io::unix::AsyncFd, task::JoinSet};

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
        maps,
        requests: Requests::new(config, hold, engine, metrics),
    };
    watcher.publish();
    Ok(tokio::spawn(async move { watcher.run(ready).await }))
}

/// The ring buffer and its counters, and what becomes of their reports.
struct Watcher {
    maps: FloodMaps,
    requests: Requests,
}

/// Turns reports into block requests and counts what became of them.
struct Requests {
    config: FloodConfig,
    status: FloodStatus,
    engine: SyncSender<Command>,
    metrics: Arc<Metrics>,
    repeats: Repeats,
    /// The requests asked and not answered yet. Each is asked as soon as its report is read;
    /// none waits for an earlier one's answer, which comes after the store's commit (the
    /// engine puts them into the kernel before it, together when they arrive together).
    answers: JoinSet<Answer>,
}

/// A request's answer, and when the engine wrote its kernel entry.
struct Answer {
    candidate: Candidate,
    response: Response,
    /// When its report was read (boot clock).
    read: BootNs,
    /// When its kernel entry was written (boot clock); `None` when none was.
    in_kernel: Option<BootNs>,
    /// When the answer came.
    answered: BootNs,
}

impl Watcher {
    async fn run(&mut self, ready: AsyncFd<OwnedFd>) {
        let mut counters = tokio::time::interval(COUNTERS_EVERY);
        loop {
            tokio::select! {
                guard = ready.readable(), if self.requests.has_room() => {
                    let Ok(mut guard) = guard else {
                        tracing::error!("the flood detector's ring buffer cannot be polled; flood reports are no longer read");
                        return;
                    };
                    guard.clear_ready();
                    let reports = self.maps.drain();
                    self.requests.handle(reports, BootNs::now());
                }
                Some(done) = self.requests.answers.join_next(), if !self.requests.answers.is_empty() => {
                    match done {
                        Ok(answer) => self.requests.finish(&answer),
                        Err(e) => tracing::error!(error = %e, "a flood block request's task ended without its answer"),
                    }
                }
                _ = counters.tick() => {}
            }
            self.publish();
        }
    }

    /// Reads the data path's counters and publishes the status.
    fn publish(&mut self) {
        match self.maps.stats_total() {
            Ok(k) => self.requests.status.kernel = k.into(),
            Err(e) => tracing::debug!(error = %e, "reading the flood detector's counters"),
        }
        self.requests
            .metrics
            .set_flood(self.requests.status.clone());
    }
}

impl Requests {
    fn new(
        config: FloodConfig,
        hold: bool,
        engine: SyncSender<Command>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            status: status(&config, hold),
            config,
            engine,
            metrics,
            repeats: Repeats::default(),
            answers: JoinSet::new(),
        }
    }

    /// Whether more reports may be read: fewer than a window's worth of reports
    /// (`reports_per_window`) wait for their answers. While the engine does not answer, the
    /// rest stay in the ring buffer, and once it is full the data path counts them
    /// (`ring_full`).
    fn has_room(&self) -> bool {
        self.answers.len() < self.config.reports_per_window as usize
    }

    /// Every report read (at `read`, boot clock), in order: each new one is asked for at once.
    fn handle(&mut self, reports: Vec<FloodReport>, read: BootNs) {
        for report in reports {
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
            self.request(candidate, read);
        }
    }

    /// Asks the engine to block the candidate; its answer comes to [`Self::finish`].
    fn request(&mut self, candidate: Candidate, read: BootNs) {
        self.status.requests += 1;
        let request = Request::Block(candidate.request());
        let caller = crate::access::Caller::internal(SOURCE);
        let engine = self.engine.clone();
        self.answers.spawn(async move {
            let (in_kernel, written) = tokio::sync::oneshot::channel();
            let response =
                super::control_socket::run_timed(request, caller, &engine, in_kernel).await;
            let answered = BootNs::now();
            // The engine sends the time before the answer, or drops the sender with the
            // request (no kernel entry written): it is there now, or never.
            let in_kernel = written.await.ok();
            Answer {
                candidate,
                response,
                read,
                in_kernel,
                answered,
            }
        });
    }

    /// Counts an answer and, for a block, times it.
    fn finish(&mut self, answer: &Answer) {
        let candidate = &answer.candidate;
        match &answer.response {
            Response::Ok { .. } => {
                self.status.blocks += 1;
                let timing = Timing::of(candidate, answer);
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
            read_us = micros(timing.read),
            in_kernel_us = timing.in_kernel.map(micros),
            answered_us = micros(timing.answered),
            "flood: block requested"
        );
    }
}

/// How soon a block followed the data path's report (its source passing its limit).
#[derive(Debug)]
struct Timing {
    /// To the report read by the watcher.
    read: Duration,
    /// To its kernel entry written (`None`: the request wrote no entry, the block was there).
    in_kernel: Option<Duration>,
    /// When that was (boot clock).
    in_kernel_at: BootNs,
    /// To the engine's answer, after the store's commit.
    answered: Duration,
}

impl Timing {
    fn of(candidate: &Candidate, answer: &Answer) -> Self {
        let crossed = candidate.at_ns;
        let since = |t: BootNs| Duration::from_nanos(t.kernel().saturating_sub(crossed));
        Self {
            read: since(answer.read),
            in_kernel: answer.in_kernel.map(since),
            in_kernel_at: answer.in_kernel.unwrap_or_default(),
            answered: since(answer.answered),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// A report of `203.0.113.<host>` over the IPv4 packet limit.
    fn report(host: u8) -> FloodReport {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[203, 0, 113, host]);
        FloodReport {
            addr,
            family: 0,
            class: 0,
            count: 2001,
            limit: 2000,
            elapsed_ns: 100_000_000,
            window_ns: 1_000_000_000,
            at_ns: BootNs::now().kernel(),
        }
    }

    fn requests(engine: SyncSender<Command>) -> Requests {
        let config = FloodConfig {
            enabled: true,
            reports_per_window: 2,
            ..FloodConfig::default()
        };
        Requests::new(config, true, engine, Arc::new(Metrics::default()))
    }

    /// The engine answers a block after its store's commit (an fsync): a report read with an
    /// earlier one must not wait for that answer to be asked for, or each source of a flood
    /// from many waits for the commits of all before it.
    #[tokio::test]
    async fn a_report_is_asked_for_while_an_earlier_one_waits_for_its_answer() {
        let (engine, asked) = mpsc::sync_channel(16);
        let mut requests = requests(engine);
        let handling = tokio::spawn(async move {
            requests.handle(vec![report(1), report(2)], BootNs::now());
            requests
        });
        // This test is the engine, and answers nothing until both are asked for.
        let (first, second, asked) = tokio::task::spawn_blocking(move || {
            let wait = Duration::from_secs(5);
            let first = asked.recv_timeout(wait).ok();
            let second = asked.recv_timeout(wait).ok();
            (first, second, asked)
        })
        .await
        .unwrap();
        assert!(first.is_some(), "the first report was not asked for");
        assert!(
            second.is_some(),
            "the second report was not asked for while the first waited for its answer"
        );
        drop((first, second, asked));
        let requests = handling.await.unwrap();
        assert_eq!(requests.status.requests, 2);
    }

    /// While the engine answers nothing, the requests waiting are bounded (a window's worth of
    /// reports); the watcher takes more reports once answers come.
    #[tokio::test]
    async fn no_more_reports_are_taken_while_a_windows_worth_wait_for_their_answers() {
        let (engine, asked) = mpsc::sync_channel(16);
        let mut requests = requests(engine);
        assert!(requests.has_room());
        requests.handle(vec![report(1)], BootNs::now());
        assert!(requests.has_room(), "one of two waits");
        requests.handle(vec![report(2)], BootNs::now());
        assert!(!requests.has_room(), "two of two wait");
        let first = tokio::task::spawn_blocking(move || asked.recv_timeout(Duration::from_secs(5)))
            .await
            .unwrap()
            .expect("asked");
        // The engine ends without answering: the request comes back refused.
        drop(first);
        let answer = requests.answers.join_next().await.unwrap().unwrap();
        requests.finish(&answer);
        assert!(requests.has_room(), "an answer came");
        assert_eq!(requests.status.refused, 1);
    }
}
