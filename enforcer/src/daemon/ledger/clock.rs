//! Following the wall clock: deadlines keep their boot-relative time when it steps.

use super::Ledger;
use crate::{
    audit::{Action, Event},
    block::Record,
    protocol::{ClockStep, ClockSteps},
    store::StoreOp,
    time::{JUMP_MIN_MS, Tick, TimeBase, WallMs, describe_jump},
};

/// How far the wall clock may slew from the ledger's base before the base follows it (and is
/// stored): the most a deadline restored on the same boot can be off by.
pub const REBASE_DRIFT_MS: i64 = 250;

/// What following the clock changed, to store and audit.
#[derive(Debug)]
pub struct ClockChange {
    /// Store operations (every moved deadline, then the new base).
    pub ops: Vec<StoreOp>,
    /// The audit line of a step (none for a slew).
    pub event: Option<Event>,
}

fn shifted(ms: WallMs, by_ms: i64) -> WallMs {
    ms.shifted(by_ms)
}

impl Ledger {
    /// The boot and offset the deadlines are expressed under; the kernel's boot-clock deadlines
    /// are converted with it, so the data path and the reaper agree.
    pub fn time_base(&self) -> &TimeBase {
        &self.time_base
    }

    /// Sets the base (at start, before anything is loaded).
    pub fn set_time_base(&mut self, base: TimeBase) {
        self.time_base = base;
    }

    /// Follows a clock reading. A step moves every deadline (blocks, pending requests, offense
    /// and breaker times) with the wall clock, so each keeps its boot-relative time; a slew past
    /// [`REBASE_DRIFT_MS`] only moves the base. `None`: nothing to store.
    pub fn follow_clock(&mut self, tick: &Tick) -> Option<ClockChange> {
        let by_ms = tick.offset_ms - self.time_base.wall_minus_boot_ms;
        if tick.jump_ms == 0 && by_ms.abs() < REBASE_DRIFT_MS {
            return None;
        }
        self.time_base.wall_minus_boot_ms = tick.offset_ms;
        let mut ops = Vec::new();
        let mut event = None;
        if tick.jump_ms != 0 {
            let moved = self.shift_deadlines(by_ms, tick.now);
            ops = self.timed_ops();
            tracing::warn!(
                step = %describe_jump(tick.jump_ms),
                moved,
                "the wall clock stepped; block deadlines moved with it and keep their remaining time"
            );
            event = Some(self.step_seen(ClockStep {
                seen_ms: tick.now,
                by_ms: tick.jump_ms,
                moved,
                while_running: true,
            }));
        }
        ops.push(StoreOp::SetTimeBase(self.time_base.clone()));
        Some(ClockChange { ops, event })
    }

    /// Counts a step the deadlines were moved for (status shows the latest); its audit line.
    pub fn step_seen(&mut self, step: ClockStep) -> Event {
        let event = jump_event(&step);
        self.clock_steps.count += 1;
        self.clock_steps.last = Some(step);
        event
    }

    /// Wall-clock steps followed since start.
    pub fn clock_steps(&self) -> &ClockSteps {
        &self.clock_steps
    }

    /// Moves every deadline and offense time by `by_ms`; returns how many block deadlines moved.
    /// A forward step never carries a block past its source's `max_ttl` from `now` (the time after the
    /// step): a block restored under a clock that was behind (a bad RTC at boot) would keep the
    /// whole step as extra time at the first NTP step. A block that already ended later before
    /// the step (a forced one) keeps its deadline.
    pub fn shift_deadlines(&mut self, by_ms: i64, now: WallMs) -> usize {
        let timed: Vec<_> = std::mem::take(&mut self.deadlines).into_iter().collect();
        for (_, target, source) in &timed {
            let cap = now.saturating_add(self.policy.max_ttl(source));
            if let Some(b) = self
                .blocks
                .get_mut(target)
                .and_then(|b| b.by_source.get_mut(source))
            {
                b.expires_ms = b.expires_ms.map(|e| {
                    let moved = shifted(e, by_ms);
                    if by_ms > 0 {
                        moved.min(cap.max(e))
                    } else {
                        moved
                    }
                });
                let block = b.clone();
                self.index(target, &block);
            }
        }
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        for id in ids {
            if let Some(p) = self.pending.get_mut(&id) {
                p.expires_ms = shifted(p.expires_ms, by_ms);
            }
        }
        self.offenses.shift(by_ms);
        self.policy.shift_clock(by_ms);
        timed.len()
    }

    /// Store operations writing every timed block, pending request and offense history as the
    /// ledger has them (after [`Ledger::shift_deadlines`]).
    pub fn timed_ops(&self) -> Vec<StoreOp> {
        let blocks = self.deadlines.iter().filter_map(|(_, target, source)| {
            let block = self.blocks.get(target)?.by_source.get(source)?.clone();
            Some(StoreOp::Put(Record {
                target: *target,
                block,
            }))
        });
        let pending = self
            .pending
            .values()
            .map(|p| StoreOp::PutPending(p.clone()));
        let offenses = self
            .offenses
            .iter()
            .map(|(t, times)| StoreOp::PutOffenses(*t, times.clone()));
        blocks.chain(pending).chain(offenses).collect()
    }
}

/// The audit line of a wall-clock step.
fn jump_event(step: &ClockStep) -> Event {
    let when = if step.while_running {
        "while the daemon was running"
    } else {
        "while the daemon was not running"
    };
    Event::untargeted(Action::ClockJump).detail(format!(
        "the wall clock stepped by {} {when}; {} block deadlines moved with it, keeping their remaining time",
        describe_jump(step.by_ms),
        step.moved
    ))
}

/// Whether a stored base differs from this one by a step (not a slew).
pub fn is_step(by_ms: i64) -> bool {
    by_ms.abs() > JUMP_MIN_MS
}
