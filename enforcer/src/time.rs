//! The daemon's time: the wall clock for what people read and what outlives a reboot, the boot
//! clock (`CLOCK_BOOTTIME`) for how long a block has left.
//!
//! A block's deadline is kept as a wall-clock time, but the wall clock can step (a bad RTC at
//! boot, an NTP step, an operator's `date -s`). Taken at its word, a step of a day forward ends
//! every block at once. So the daemon watches the wall clock's offset from the boot clock (which
//! never steps, and keeps counting across suspend): on one boot that offset only drifts as NTP
//! slews; a change faster than any slew is a step, and every deadline moves with it, keeping
//! its remaining time ([`TimeKeeper`]). The kernel compares boot-clock deadlines, converted
//! with the same offset ([`TimeBase::boot_deadline_ns`]), so the reaper and the data path agree.
//!
//! The store records the boot id and offset its deadlines were written under: a daemon started
//! again on the same boot turns them back into boot-relative time, whatever the wall clock did
//! meanwhile. Across a reboot the boot clock starts again at zero, and the wall clock is all
//! there is.

use serde::{Deserialize, Serialize};

use crate::block::{UnixMillis, now_ms};

/// One reading of both clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// The wall clock (Unix ms).
    pub wall_ms: UnixMillis,
    /// `CLOCK_BOOTTIME` (ms since boot, suspend included).
    pub boot_ms: u64,
}

impl Reading {
    /// The wall clock minus the boot clock.
    pub fn offset_ms(&self) -> i64 {
        self.wall_ms as i64 - self.boot_ms as i64
    }
}

/// Where the daemon reads the time (a fake one in tests).
pub trait Clock: Send {
    /// Both clocks, now.
    fn read(&self) -> Reading;
}

/// The system's clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn read(&self) -> Reading {
        // The boot clock first: a wall step between the two reads is seen at the next one.
        let boot_ms = crate::datapath::clock::boottime_ns() / 1_000_000;
        Reading {
            wall_ms: now_ms(),
            boot_ms,
        }
    }
}

/// `CLOCK_BOOTTIME` in ms: for durations that must not follow wall-clock steps.
pub fn boot_ms() -> u64 {
    SystemClock.read().boot_ms
}

/// Where the kernel says which boot this is.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// The environment variable the unit sets to systemd's `%b` (the boot id), for when `/proc`
/// shows only processes (`ProcSubset=pid` hides `/proc/sys`).
pub const BOOT_ID_ENV: &str = "ENFORCER_BOOT_ID";

/// This boot's id, as `/proc/sys/kernel/random/boot_id` writes it: read there, or, where
/// `/proc/sys` is hidden (the unit's `ProcSubset=pid`), from [`BOOT_ID_ENV`]. Empty if neither
/// holds one, which no stored id matches, so the wall clock is used.
pub fn boot_id() -> String {
    std::fs::read_to_string(BOOT_ID_PATH)
        .ok()
        .and_then(|s| canonical_boot_id(&s))
        .or_else(|| {
            std::env::var(BOOT_ID_ENV)
                .ok()
                .and_then(|s| canonical_boot_id(&s))
        })
        .unwrap_or_default()
}

/// A boot id in the kernel's form (`8-4-4-4-12` lowercase hex), from that form or systemd's
/// 32 hex digits; `None` if it is neither.
fn canonical_boot_id(s: &str) -> Option<String> {
    let hex: String = s
        .trim()
        .chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    (hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| {
        format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    })
}

/// The boot and wall-minus-boot offset that wall-clock deadlines are expressed under.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeBase {
    /// The boot (see [`boot_id`]).
    pub boot_id: String,
    /// The wall clock minus the boot clock, in ms.
    pub wall_minus_boot_ms: i64,
}

impl TimeBase {
    /// The boot-clock time (ns) the data path compares with, for a wall-clock deadline. A
    /// deadline before boot maps to 1 (expired; 0 means "never").
    pub fn boot_deadline_ns(&self, deadline_ms: UnixMillis) -> u64 {
        let boot_ms = deadline_ms as i64 - self.wall_minus_boot_ms;
        u64::try_from(boot_ms).map_or(1, |ms| ms.saturating_mul(1_000_000).max(1))
    }

    /// How far `stored`'s deadlines must move to keep their boot-relative time under this base:
    /// `None` on another boot (or an unknown one), where only the wall clock is left.
    pub fn shift_from(&self, stored: &Self) -> Option<i64> {
        (!self.boot_id.is_empty() && stored.boot_id == self.boot_id)
            .then(|| self.wall_minus_boot_ms - stored.wall_minus_boot_ms)
    }
}

/// A wall-clock step smaller than this is not one (reads are not atomic; NTP slews).
pub const JUMP_MIN_MS: i64 = 1_000;

/// A reading as the daemon uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tick {
    /// The wall clock (Unix ms).
    pub now: UnixMillis,
    /// The wall clock minus the boot clock now.
    pub offset_ms: i64,
    /// How far the wall clock stepped since the last tick (0: it did not).
    pub jump_ms: i64,
}

/// Reads a [`Clock`] and notices wall-clock steps.
pub struct TimeKeeper<C> {
    clock: C,
    boot_id: String,
    last: Reading,
}

impl<C: Clock> TimeKeeper<C> {
    /// Starts following `clock` on the boot `boot_id`.
    pub fn new(clock: C, boot_id: String) -> Self {
        let last = clock.read();
        Self {
            clock,
            boot_id,
            last,
        }
    }

    /// The base deadlines are expressed under, as of the last tick.
    pub fn base(&self) -> TimeBase {
        TimeBase {
            boot_id: self.boot_id.clone(),
            wall_minus_boot_ms: self.last.offset_ms(),
        }
    }

    /// Reads the clocks. A change of the wall-minus-boot offset beyond [`JUMP_MIN_MS`] plus
    /// 1000 ppm of the time since the last tick (twice the most NTP slews) is a step.
    pub fn tick(&mut self) -> Tick {
        let now = self.clock.read();
        let drift = now.offset_ms() - self.last.offset_ms();
        let elapsed = now.boot_ms.saturating_sub(self.last.boot_ms);
        let allowed = JUMP_MIN_MS + i64::try_from(elapsed / 1000).unwrap_or(i64::MAX);
        self.last = now;
        Tick {
            now: now.wall_ms,
            offset_ms: now.offset_ms(),
            jump_ms: if drift.abs() > allowed { drift } else { 0 },
        }
    }
}

/// Formats a step for people: `+86400.0 s`.
pub fn describe_jump(ms: i64) -> String {
    format!(
        "{}{:.1} s",
        if ms >= 0 { "+" } else { "-" },
        ms.unsigned_abs() as f64 / 1000.0
    )
}

#[cfg(test)]
pub mod fake {
    //! A clock tests move by hand.

    use std::sync::{Arc, Mutex};

    use super::{Clock, Reading};

    /// Shared: the test keeps one handle, the code under test another.
    #[derive(Clone, Debug)]
    pub struct FakeClock(Arc<Mutex<Reading>>);

    impl FakeClock {
        /// Wall time `wall_ms`, boot time `boot_ms`.
        pub fn new(wall_ms: u64, boot_ms: u64) -> Self {
            Self(Arc::new(Mutex::new(Reading { wall_ms, boot_ms })))
        }

        /// Time passes: both clocks move.
        pub fn advance(&self, ms: u64) {
            let mut r = self.0.lock().unwrap();
            r.wall_ms += ms;
            r.boot_ms += ms;
        }

        /// The wall clock alone steps.
        pub fn step_wall(&self, ms: i64) {
            let mut r = self.0.lock().unwrap();
            r.wall_ms = r.wall_ms.checked_add_signed(ms).unwrap();
        }
    }

    impl Clock for FakeClock {
        fn read(&self) -> Reading {
            *self.0.lock().unwrap()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fake::FakeClock, *};

    const DAY: i64 = 86_400_000;

    #[test]
    fn a_step_is_seen_once_and_slewing_is_not_a_step() {
        let clock = FakeClock::new(1_000_000_000, 50_000);
        let mut keeper = TimeKeeper::new(clock.clone(), "a".into());
        clock.advance(3_600_000);
        clock.step_wall(2_000); // an hour of the fastest slew is 1.8 s
        assert_eq!(keeper.tick().jump_ms, 0);
        clock.advance(1000);
        clock.step_wall(DAY);
        assert_eq!(keeper.tick().jump_ms, DAY);
        clock.advance(1000);
        assert_eq!(keeper.tick().jump_ms, 0, "seen once");
        clock.step_wall(-DAY);
        assert_eq!(keeper.tick().jump_ms, -DAY);
    }

    #[test]
    fn systemds_boot_id_reads_as_the_kernels() {
        let kernel = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
        assert_eq!(
            canonical_boot_id(&format!("{kernel}\n")).as_deref(),
            Some(kernel)
        );
        assert_eq!(
            canonical_boot_id("0F1E2D3C4B5A69788796A5B4C3D2E1F0").as_deref(),
            Some(kernel)
        );
        assert_eq!(canonical_boot_id(""), None);
        assert_eq!(canonical_boot_id("%b"), None);
        assert_eq!(canonical_boot_id("0f1e2d3c4b5a69788796a5b4c3d2e1fz"), None);
    }

    #[test]
    fn boot_deadlines_do_not_move_with_the_wall_clock() {
        let before = TimeBase {
            boot_id: "a".into(),
            wall_minus_boot_ms: 1_000_000,
        };
        let after = TimeBase {
            boot_id: "a".into(),
            wall_minus_boot_ms: 1_000_000 + DAY,
        };
        let shift = after.shift_from(&before).unwrap();
        assert_eq!(shift, DAY);
        let deadline = 5_000_000;
        assert_eq!(
            after.boot_deadline_ns(deadline + shift as u64),
            before.boot_deadline_ns(deadline)
        );
        assert_eq!(
            before.boot_deadline_ns(0),
            1,
            "before boot is expired, not permanent"
        );
        let other_boot = TimeBase {
            boot_id: "b".into(),
            ..after.clone()
        };
        assert_eq!(other_boot.shift_from(&before), None);
        assert_eq!(
            TimeBase::default().shift_from(&TimeBase::default()),
            None,
            "an unknown boot is not this one"
        );
    }
}
