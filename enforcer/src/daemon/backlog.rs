//! How far back the spool's drain may still hand triggers to the engine: the oldest time a
//! trigger may still be judged at. The drain sets it, the engine reads it before it forgets
//! breaker state; a module of its own so that neither names the other for it.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use crate::time::WallMs;

/// The oldest time a trigger may still be judged at, as far as the spool knows: a spooled
/// trigger is judged at its spool time, earlier than now. The drain lowers it to its oldest
/// file before it hands any over, and raises it once every one is judged (to its scan's start,
/// less `SPOOL_WRITE_SLACK`: a file it missed was written after that). The engine forgets no
/// breaker state that a trigger of that time needs ([`crate::policy::Policy::open_breakers`]).
/// Before the first drain, any time may still come.
#[derive(Clone, Debug, Default)]
pub struct Backlog(Arc<AtomicU64>);

impl Backlog {
    /// The oldest time a trigger may still be judged at: `now` or earlier.
    pub fn judged_from(&self, now: WallMs) -> WallMs {
        WallMs::from_unix_ms(self.0.load(Ordering::Acquire)).min(now)
    }

    /// From now on, triggers as old as `at` may still come (the drain's call).
    pub(super) fn hold_from(&self, at: WallMs) {
        self.0.store(at.unix_ms(), Ordering::Release);
    }
}
