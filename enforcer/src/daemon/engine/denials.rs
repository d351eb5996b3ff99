//! Denied requests in the audit log, bounded per caller: a member of the socket group repeating
//! a request it may not make (a misconfigured script, or on purpose) must not rotate the audit
//! history away. Per caller and [`INTERVAL`], the first [`IN_FULL`] denials are written as they
//! come; the rest are counted and written as one line (`count`, the last of them shown) when the
//! interval ends (the engine's loop looks every second), or when the daemon stops. Every denial is still answered and counted in the
//! metrics.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::audit::{AuditLog, Event};

/// Denials of one caller written in full per interval.
pub(super) const IN_FULL: u32 = 10;
/// The interval.
pub(super) const INTERVAL: Duration = Duration::from_secs(60);
/// Callers followed at once; past this, a new caller's denials are written as they come
/// (callers are the users of the socket group: a handful).
const MAX_CALLERS: usize = 1024;

/// Denials per caller (uid) in the current interval.
#[derive(Debug, Default)]
pub(super) struct Denials(HashMap<u32, Window>);

#[derive(Debug)]
struct Window {
    started: Instant,
    written: u32,
    /// Denials not written, and the last of them.
    held: Option<(u64, Event)>,
}

impl Denials {
    /// Writes `event` (a denial of the caller `uid`), or counts it when the caller had its share.
    pub(super) fn record(&mut self, audit: &mut AuditLog, uid: u32, event: Event) {
        self.flush(audit, false);
        if !self.0.contains_key(&uid) && self.0.len() >= MAX_CALLERS {
            // Extremely many distinct callers: write it (bounded by the number of users).
            audit.record(event);
            return;
        }
        let window = self.0.entry(uid).or_insert_with(|| Window {
            started: Instant::now(),
            written: 0,
            held: None,
        });
        if window.written < IN_FULL {
            window.written += 1;
            audit.record(event);
        } else {
            let count = window.held.as_ref().map_or(0, |(n, _)| *n) + 1;
            window.held = Some((count, event));
        }
    }

    /// Ends the intervals that are over (all of them with `all`), writing their counts.
    pub(super) fn flush(&mut self, audit: &mut AuditLog, all: bool) {
        self.0.retain(|_, w| {
            if !all && w.started.elapsed() < INTERVAL {
                return true;
            }
            if let Some((count, last)) = w.held.take() {
                audit.record(summary(count, last, w.started.elapsed()));
            }
            false
        });
    }
}

/// The line for `count` denials not written: the last one, counted.
fn summary(count: u64, mut last: Event, over: Duration) -> Event {
    let why = last.detail.take().unwrap_or_default();
    last.detail = Some(format!(
        "{count} denied requests of this caller not written one by one in the last {}s (at most {IN_FULL} per caller and {}s are); the last: {why}",
        over.as_secs(),
        INTERVAL.as_secs()
    ));
    last.count = Some(count);
    last
}
