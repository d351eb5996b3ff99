//! The reader: answers read requests off the engine thread, from the state the engine
//! publishes after each round ([`ReadState`]) and its own read-only handle on the pinned maps.
//!
//! With a million blocks a page of `list` reads a thousand kernel entries and `show 0.0.0.0/0`
//! looks at every block; on the engine thread either held up every block behind it, and a few
//! clients listing in a loop passed systemd's watchdog. Here they wait for each other instead:
//! one thread answers reads one at a time (one core at most, the engine keeps the other), and
//! between reads it brings the drops by origin up to date ([`super::origins`]), which walks
//! every kernel block.

use std::{
    path::Path,
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use tokio::sync::oneshot;

use super::{
    origins::DropsByOrigin,
    queries::{ReadState, View},
    refusal::Refusal,
};
use crate::{
    datapath::{BlockMaps, MapsError},
    metrics::{Metrics, Published},
    protocol::{Reply, Request},
};

/// The reader could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    /// The pinned maps could not be opened for reading.
    #[error("cannot open the pinned maps for reading")]
    Maps(#[source] MapsError),
    /// The thread could not be started.
    #[error("cannot start the reader thread")]
    Thread(#[source] std::io::Error),
}

/// A read waiting for the reader.
struct Job {
    request: Request,
    reply: oneshot::Sender<Result<Reply, Refusal>>,
}

/// The way to the reader thread.
#[derive(Clone)]
pub struct Reader {
    jobs: mpsc::Sender<Job>,
}

impl Reader {
    /// Opens the pinned maps in `maps_dir` for reading and starts the reader thread.
    pub fn start(
        maps_dir: &Path,
        state: Arc<Published<ReadState>>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ReaderError> {
        let reading = Reading {
            maps: BlockMaps::open_pinned(maps_dir).map_err(ReaderError::Maps)?,
            state,
            metrics,
            origins: Mutex::new(DropsByOrigin::default()),
        };
        let (jobs, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("reader".into())
            .spawn(move || reading.run(&rx))
            .map_err(ReaderError::Thread)?;
        Ok(Self { jobs })
    }

    /// Answers a read request (waiting for the reads before it, never for the engine);
    /// `None` if the reader thread is gone (the engine answers then).
    pub async fn answer(&self, request: Request) -> Option<Result<Reply, Refusal>> {
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job { request, reply }).ok()?;
        answer.await.ok()
    }
}

/// What the reader thread holds.
struct Reading {
    maps: BlockMaps,
    state: Arc<Published<ReadState>>,
    metrics: Arc<Metrics>,
    origins: Mutex<DropsByOrigin>,
}

impl Reading {
    fn run(self, jobs: &mpsc::Receiver<Job>) {
        loop {
            let wait = self.origins().until_due().max(Duration::from_millis(10));
            match jobs.recv_timeout(wait) {
                Ok(job) => {
                    let answer = self.answer(job.request);
                    // A caller that left needs no answer.
                    job.reply.send(answer).ok();
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if self.origins().due() {
                self.count_origins();
            }
        }
    }

    fn origins(&self) -> std::sync::MutexGuard<'_, DropsByOrigin> {
        self.origins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn answer(&self, request: Request) -> Result<Reply, Refusal> {
        if matches!(request, Request::Stats) {
            self.count_origins();
        }
        let state = self.state.get();
        View {
            state: &state,
            maps: &self.maps,
            dropped_by_origin: self.metrics.dropped_by_origin(),
        }
        .answer(request)
    }

    /// Brings the drops by origin up to date and hands them to the metrics.
    fn count_origins(&self) {
        let state = self.state.get();
        let mut origins = self.origins();
        match origins.count(&self.maps, &state.blocks) {
            Ok(()) => self.metrics.set_dropped_by_origin(origins.totals()),
            Err(e) => {
                tracing::warn!(error = %crate::error::Chain(&e), "reading the block counters for drops by origin failed");
            }
        }
    }
}
