//! The systemd notify protocol: readiness, status lines and the watchdog.
//!
//! A hand-written client (a datagram to `$NOTIFY_SOCKET`, as sd_notify(3) describes): the whole
//! protocol is `KEY=value` lines in one datagram. Without `$NOTIFY_SOCKET` every call is a no-op.
//!
//! The watchdog is fed by the engine loop itself ([`Heartbeat::beat`]), not by a timer thread,
//! so an engine that hangs stops the pings and systemd restarts the daemon.

use std::{
    os::{
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixDatagram},
    },
    time::{Duration, Instant},
};

/// Where to send notifications, from the environment systemd sets.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    pub fn from_env() -> Self {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            let addr = match path.strip_prefix('@') {
                Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
                None => SocketAddr::from_pathname(&path),
            };
            match (UnixDatagram::unbound(), addr) {
                (Ok(s), Ok(a)) => Some((s, a)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(socket = %path, error = %e, "NOTIFY_SOCKET is unusable; not notifying systemd");
                    None
                }
            }
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|p| p == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us)
            .map(Duration::from_micros);
        Self { target, watchdog }
    }

    /// Sends one notification (newline-separated `KEY=value` lines). Failures are logged once
    /// per call and otherwise ignored: systemd going away must not stop the daemon.
    pub fn notify(&self, message: &str) {
        if let Some((socket, addr)) = &self.target
            && let Err(e) = socket.send_to_addr(message.as_bytes(), addr)
        {
            tracing::debug!(error = %e, "notifying systemd failed");
        }
    }

    /// Whether anyone listens.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The engine's heartbeat, or `None` when there is neither a watchdog nor a listener.
    pub fn heartbeat(self: &std::sync::Arc<Self>) -> Option<Heartbeat> {
        if !self.enabled() {
            return None;
        }
        // Ping at half the watchdog interval, as sd_watchdog_enabled(3) advises; without a
        // watchdog, refresh the status line every few seconds.
        let every = self.watchdog.map_or(Duration::from_secs(5), |w| w / 2);
        Some(Heartbeat {
            notifier: self.clone(),
            every,
            watchdog: self.watchdog.is_some(),
            last: None,
            last_status: String::new(),
        })
    }
}

/// Fed once per engine loop iteration: watchdog pings and `STATUS=` updates.
pub struct Heartbeat {
    notifier: std::sync::Arc<Notifier>,
    every: Duration,
    watchdog: bool,
    last: Option<Instant>,
    last_status: String,
}

impl Heartbeat {
    /// The longest the engine may wait before it beats again.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// Pings the watchdog (at most every [`Heartbeat::every`]) and sends the status line when
    /// it changed.
    pub fn beat(&mut self, status: impl FnOnce() -> String) {
        let due = self.last.is_none_or(|l| l.elapsed() >= self.every / 2);
        if !due {
            return;
        }
        self.last = Some(Instant::now());
        let status = status();
        let mut message = String::new();
        if self.watchdog {
            message.push_str("WATCHDOG=1\n");
        }
        if status != self.last_status {
            message.push_str(&format!("STATUS={status}\n"));
            self.last_status = status;
        }
        if !message.is_empty() {
            self.notifier.notify(&message);
        }
    }
}

/// Test builds only: the engine loop stalls while the file named by
/// `ENFORCER_TEST_STALL_ENGINE` exists, so a test can see the watchdog pings stop; the start
/// stalls before it opens the store while the file named by `ENFORCER_TEST_STALL_START`
/// exists (the CrowdSec bouncer's first pull is already on its way). Release builds do not
/// contain this.
#[cfg(debug_assertions)]
pub struct TestStall(Option<std::path::PathBuf>);

#[cfg(debug_assertions)]
impl TestStall {
    /// Reads the variable.
    pub fn from_env() -> Self {
        Self::named("ENFORCER_TEST_STALL_ENGINE")
    }

    /// Reads the variable `var` (another place to hold).
    pub fn named(var: &str) -> Self {
        Self(std::env::var_os(var).map(std::path::PathBuf::from))
    }

    /// Blocks while the file exists (logging once that it holds, so a test knows).
    pub fn wait(&self) {
        if let Some(path) = &self.0 {
            if path.exists() {
                tracing::info!(file = %path.display(), "held by the test stall hook");
            }
            while path.exists() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Release builds: never stalls.
#[cfg(not(debug_assertions))]
pub struct TestStall;

#[cfg(not(debug_assertions))]
impl TestStall {
    /// Nothing to read.
    pub fn from_env() -> Self {
        Self
    }

    /// Nothing to read.
    pub fn named(_var: &str) -> Self {
        Self
    }

    /// Never blocks.
    pub fn wait(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_pings_and_sends_the_status_only_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let notifier = std::sync::Arc::new(Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                SocketAddr::from_pathname(&path).unwrap(),
            )),
            watchdog: Some(Duration::from_millis(2)),
        });
        let mut hb = notifier.heartbeat().unwrap();
        let mut buf = [0u8; 256];
        hb.beat(|| "enforcing 1 block".into());
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1\nSTATUS=enforcing 1 block\n");
        std::thread::sleep(hb.every());
        hb.beat(|| "enforcing 1 block".into());
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1\n");
    }
}
