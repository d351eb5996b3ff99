//! The reaper: the loop sleeps until the next deadline (not a periodic scan) and removes what
//! expired. The data path has already stopped enforcing those entries at their deadline;
//! reaping is garbage collection and bookkeeping.

use std::time::Duration;

use super::{CLOCK_CHECK, Engine};
use crate::daemon::{ledger::Change, round};

/// Most expiries handled in one durable round.
const MAX_REAP: usize = 10_000;

impl Engine {
    /// How long to sleep: until the next deadline, but at most [`CLOCK_CHECK`], so that a
    /// wall-clock step is seen (and the deadlines moved) soon even when nothing else happens.
    pub(super) fn until_next_deadline(&mut self) -> Duration {
        let now = self.end_now();
        let until = match self.ledger.next_deadline() {
            Some(deadline) => deadline.max(self.reap_backoff_until).saturating_since(now),
            None => CLOCK_CHECK,
        };
        until.min(CLOCK_CHECK)
    }

    /// Removes what expired; on a store failure, tries again in a second.
    pub(super) fn reap(&mut self) {
        let now = self.end_now();
        if now < self.reap_backoff_until || self.ledger.next_deadline().is_none_or(|d| d > now) {
            return;
        }
        let mut change = Change::default();
        let expired = self.ledger.expire(&mut change, now, MAX_REAP);
        let (ledger, mut store, maps) = self.timed_store();
        match round::commit(ledger, &mut store, maps, change) {
            Ok(done) => {
                self.write_audit(done.events);
                self.tally(&done.before, &done.refused);
                self.metrics.expired(expired as u64);
                tracing::debug!(count = expired, "reaped expired blocks");
                if expired >= MAX_REAP {
                    release_freed_memory();
                }
            }
            Err(failed) => {
                // The kernel stopped enforcing them at their deadline anyway; retry the
                // bookkeeping in a second, with the same deadlines.
                tracing::error!(error = %failed.error, "removing expired blocks from the store failed; retrying in 1 s");
                self.write_audit(failed.events);
                self.reap_backoff_until = now + Duration::from_secs(1);
            }
        }
    }
}

/// After a large wave of expiries, hands freed heap back to the system (glibc keeps it
/// otherwise: a daemon that once held a million blocks would keep their memory for good).
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
