//! Threads the daemon cannot run without: the engine, the host watcher, the link watchers.
//!
//! If one ends while the daemon runs (a panic, or a return after an error), the daemon stops
//! and exits non-zero, naming the thread, so that its supervisor (systemd's `Restart=`) starts
//! it again. A daemon whose engine is gone must not keep a socket that answers: blocks sent to
//! it would be lost while systemd sees a live process.

use std::thread::JoinHandle;

/// Where the critical threads report their end.
pub type Deaths = tokio::sync::mpsc::UnboundedSender<Death>;

/// A critical thread ended.
#[derive(Debug, thiserror::Error)]
#[error(
    "the {thread} thread {how}; the daemon cannot run without it and exits so that its supervisor restarts it"
)]
pub struct Death {
    /// The thread's name.
    pub thread: &'static str,
    /// `panicked` or `ended`.
    pub how: &'static str,
}

/// Runs `f` on a thread named `name` that reports to `deaths` when it ends, however it ends.
pub fn spawn<T: Send + 'static>(
    name: &'static str,
    deaths: &Deaths,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<JoinHandle<T>> {
    let deaths = deaths.clone();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let _watch = Watch { name, deaths };
            f()
        })
}

/// Reports its thread's end when dropped (also while unwinding from a panic).
struct Watch {
    name: &'static str,
    deaths: Deaths,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let how = if std::thread::panicking() {
            "panicked"
        } else {
            "ended"
        };
        // Nobody listens once the daemon is stopping: then the end is expected.
        self.deaths
            .send(Death {
                thread: self.name,
                how,
            })
            .ok();
    }
}

/// Debug builds: `ENFORCER_TEST_PANIC_ENGINE=TARGET` makes the engine panic when asked to
/// block TARGET (lets a test kill the engine thread; release builds never read it).
#[cfg(debug_assertions)]
pub fn test_fault(request: &crate::protocol::Request) {
    static TARGET: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let target = TARGET.get_or_init(|| std::env::var("ENFORCER_TEST_PANIC_ENGINE").ok());
    if let (Some(t), crate::protocol::Request::Block(b)) = (target, request)
        && b.target.to_string() == *t
    {
        panic!("ENFORCER_TEST_PANIC_ENGINE: asked to block {t}");
    }
}

/// Release builds: no fault injection.
#[cfg(not(debug_assertions))]
pub fn test_fault(_request: &crate::protocol::Request) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_reports_its_end_whether_it_returns_or_panics() {
        let (deaths, mut died) = tokio::sync::mpsc::unbounded_channel();
        spawn("returns", &deaths, || ()).unwrap().join().unwrap();
        let d = died.try_recv().unwrap();
        assert_eq!((d.thread, d.how), ("returns", "ended"));
        assert!(
            spawn("panics", &deaths, || panic!("boom"))
                .unwrap()
                .join()
                .is_err()
        );
        let d = died.try_recv().unwrap();
        assert_eq!((d.thread, d.how), ("panics", "panicked"));
        assert!(d.to_string().contains("the panics thread panicked"), "{d}");
    }
}
