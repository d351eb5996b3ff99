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

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

/// A wall-clock instant: milliseconds since the Unix epoch, how times are stored, sent and
/// shown. It steps when the wall clock does; compare deadlines on the boot clock ([`BootNs`]).
///
/// Serialized as the bare number (the store, the wire protocol and the spool hold `u64`s).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WallMs(u64);

impl WallMs {
    /// The Unix epoch.
    pub const EPOCH: Self = Self(0);

    /// The latest instant there is (an end that never comes, in orderings).
    pub const MAX: Self = Self(u64::MAX);

    /// The wall clock now.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// An instant given in Unix milliseconds.
    pub const fn from_unix_ms(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the Unix epoch.
    pub const fn unix_ms(self) -> u64 {
        self.0
    }

    /// Seconds since the Unix epoch (rounded down).
    pub const fn unix_secs(self) -> u64 {
        self.0 / 1000
    }

    /// A `SystemTime`, to the millisecond (before the epoch: the epoch).
    pub fn from_system_time(t: SystemTime) -> Self {
        Self(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        )
    }

    /// As a `SystemTime`.
    pub fn to_system_time(self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// `d` later (saturating).
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(duration_ms(d)))
    }

    /// `d` earlier (saturating at the epoch).
    pub fn saturating_sub(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(duration_ms(d)))
    }

    /// Moved by `by_ms` (a wall-clock step, signed; saturating).
    pub fn shifted(self, by_ms: i64) -> Self {
        Self(self.0.saturating_add_signed(by_ms))
    }

    /// How long after `earlier` this is (zero if it is not after).
    pub fn saturating_since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// The distance between two instants, either way round.
    pub fn abs_diff(self, other: Self) -> Duration {
        Duration::from_millis(self.0.abs_diff(other.0))
    }

    /// Milliseconds from `earlier` to this, signed.
    pub fn signed_ms_since(self, earlier: Self) -> i64 {
        self.0 as i64 - earlier.0 as i64
    }
}

impl std::ops::Add<Duration> for WallMs {
    type Output = Self;

    fn add(self, d: Duration) -> Self {
        self.saturating_add(d)
    }
}

impl std::ops::Sub<Duration> for WallMs {
    type Output = Self;

    fn sub(self, d: Duration) -> Self {
        self.saturating_sub(d)
    }
}

// Shown as the number it is stored as, so logs read as before.
impl fmt::Debug for WallMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for WallMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A boot-clock instant in milliseconds: `CLOCK_BOOTTIME`, which counts suspend, never steps,
/// and starts again at zero on every boot. For durations that must not follow the wall clock.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BootMs(u64);

impl BootMs {
    /// The boot clock now.
    pub fn now() -> Self {
        BootNs::now().to_boot_ms()
    }

    /// An instant given in milliseconds since boot.
    pub const fn from_ms(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds since boot.
    pub const fn ms(self) -> u64 {
        self.0
    }

    /// `d` later (saturating).
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(duration_ms(d)))
    }

    /// How long after `earlier` this is (zero if it is not after).
    pub fn saturating_since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl std::ops::Add<Duration> for BootMs {
    type Output = Self;

    fn add(self, d: Duration) -> Self {
        self.saturating_add(d)
    }
}

impl fmt::Debug for BootMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A boot-clock instant in nanoseconds: what the kernel's maps hold and the data path
/// compares with. `0` in a map means "never"; [`BootNs::NEVER`].
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BootNs(u64);

impl BootNs {
    /// A map's "no deadline".
    pub const NEVER: Self = Self(0);

    /// The boot clock now (`CLOCK_BOOTTIME`).
    pub fn now() -> Self {
        // The boot clock exists on every kernel we support.
        let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .expect("clock_gettime(CLOCK_BOOTTIME) cannot fail");
        Self(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64)
    }

    /// A value as the kernel holds it (ns since boot).
    pub const fn from_kernel(ns: u64) -> Self {
        Self(ns)
    }

    /// The value as the kernel holds it (ns since boot).
    pub const fn kernel(self) -> u64 {
        self.0
    }

    /// To the millisecond (rounded down).
    pub const fn to_boot_ms(self) -> BootMs {
        BootMs(self.0 / 1_000_000)
    }

    /// `d` later (saturating).
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }

    /// `d` earlier (saturating at boot).
    pub fn saturating_sub(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_sub(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }

    /// The distance between two instants, either way round.
    pub fn abs_diff(self, other: Self) -> Duration {
        Duration::from_nanos(self.0.abs_diff(other.0))
    }

    /// The wall-clock time of this instant, by the clocks now (for counters' "last hit").
    pub fn to_wall(self) -> WallMs {
        let now_wall = SystemTime::now();
        let now_boot = Self::now();
        let wall = if self >= now_boot {
            now_wall + self.abs_diff(now_boot)
        } else {
            now_wall - self.abs_diff(now_boot)
        };
        WallMs::from_system_time(wall)
    }
}

impl std::ops::Add<Duration> for BootNs {
    type Output = Self;

    fn add(self, d: Duration) -> Self {
        self.saturating_add(d)
    }
}

impl std::ops::Sub<Duration> for BootNs {
    type Output = Self;

    fn sub(self, d: Duration) -> Self {
        self.saturating_sub(d)
    }
}

impl fmt::Debug for BootNs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Whole milliseconds of `d` (saturating).
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One reading of both clocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reading {
    /// The wall clock.
    pub wall_ms: WallMs,
    /// `CLOCK_BOOTTIME` (suspend included).
    pub boot_ms: BootMs,
}

impl Reading {
    /// The wall clock minus the boot clock.
    pub fn offset_ms(&self) -> i64 {
        self.wall_ms.unix_ms() as i64 - self.boot_ms.ms() as i64
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
        let boot_ms = BootMs::now();
        Reading {
            wall_ms: WallMs::now(),
            boot_ms,
        }
    }
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
    pub fn boot_deadline_ns(&self, deadline: WallMs) -> BootNs {
        let boot_ms = deadline.unix_ms() as i64 - self.wall_minus_boot_ms;
        BootNs::from_kernel(
            u64::try_from(boot_ms).map_or(1, |ms| ms.saturating_mul(1_000_000).max(1)),
        )
    }

    /// The time a deadline that starts now counts from: the later of the wall clock and the
    /// boot clock read through this base, rounded up. A deadline `now + ttl` then ends in the
    /// kernel ([`Self::boot_deadline_ns`]) no earlier than `ttl` after this reading, however the
    /// wall clock has slewed since the base was set and however the milliseconds fell.
    pub fn start_now(&self, tick: &Tick) -> WallMs {
        tick.now.max(self.through_base(tick).shifted(1))
    }

    /// The time deadlines are judged to have passed at: the earlier of the wall clock and the
    /// boot clock read through this base (rounded down). A deadline at or before it has passed
    /// on the wall clock and in the kernel, so taking its entry out never ends a block early.
    pub fn end_now(&self, tick: &Tick) -> WallMs {
        tick.now.min(self.through_base(tick))
    }

    /// The reading's boot clock, as a wall-clock time under this base.
    fn through_base(&self, tick: &Tick) -> WallMs {
        tick.now.shifted(self.wall_minus_boot_ms - tick.offset_ms)
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
    /// The wall clock.
    pub now: WallMs,
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
        let elapsed = now.boot_ms.saturating_since(self.last.boot_ms).as_millis();
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
pub mod testing {
    //! Short names for the instants and durations unit tests write as numbers.

    use std::time::Duration;

    use super::{BootMs, WallMs};

    /// The wall-clock instant `ms` Unix milliseconds.
    pub const fn wall(ms: u64) -> WallMs {
        WallMs::from_unix_ms(ms)
    }

    /// The boot-clock instant `ms` milliseconds after boot.
    pub const fn boot(ms: u64) -> BootMs {
        BootMs::from_ms(ms)
    }

    /// `n` milliseconds.
    pub const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
}

#[cfg(test)]
pub mod fake {
    //! A clock tests move by hand.

    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use super::{BootMs, Clock, Reading, WallMs};

    /// Shared: the test keeps one handle, the code under test another.
    #[derive(Clone, Debug)]
    pub struct FakeClock(Arc<Mutex<Reading>>);

    impl FakeClock {
        /// Wall time `wall_ms`, boot time `boot_ms`.
        pub fn new(wall_ms: WallMs, boot_ms: BootMs) -> Self {
            Self(Arc::new(Mutex::new(Reading { wall_ms, boot_ms })))
        }

        /// Time passes: both clocks move.
        pub fn advance(&self, ms: u64) {
            let mut r = self.0.lock().unwrap();
            r.wall_ms = r.wall_ms + Duration::from_millis(ms);
            r.boot_ms = r.boot_ms + Duration::from_millis(ms);
        }

        /// The wall clock alone steps.
        pub fn step_wall(&self, ms: i64) {
            let mut r = self.0.lock().unwrap();
            r.wall_ms = r.wall_ms.shifted(ms);
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
        let clock = FakeClock::new(testing::wall(1_000_000_000), testing::boot(50_000));
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
    fn a_wall_instant_is_stored_and_sent_as_the_bare_number() {
        let t = WallMs::from_unix_ms(1_764_262_800_000);
        assert_eq!(serde_json::to_string(&t).unwrap(), "1764262800000");
        assert_eq!(serde_json::from_str::<WallMs>("1764262800000").unwrap(), t);
        assert_eq!(serde_json::to_string(&Some(t)).unwrap(), "1764262800000");
        assert_eq!(
            format!("{t:020}"),
            "00000001764262800000",
            "spool file names"
        );
    }

    #[test]
    fn a_boot_instant_reads_as_the_wall_time_it_is() {
        // Each try reads both clocks several times; a preemption between two reads (a loaded
        // machine) adds its length to that try's skew, so the best of a few tries is judged.
        let minute = Duration::from_secs(60);
        let skew = |_| {
            let later = BootNs::now() + minute;
            let expected = WallMs::now() + minute;
            later.to_wall().signed_ms_since(expected).unsigned_abs()
        };
        let best = (0..20).map(skew).min().expect("twenty tries");
        assert!(
            best < 5,
            "round trip skew {best} ms in the best of 20 tries"
        );
    }

    proptest::proptest! {
        /// Under any base the wall clock has slewed from (less than the rebase drift), at any
        /// phase of the milliseconds: a block made at a reading ends in the kernel no earlier
        /// than its TTL after it, and a deadline the reaper sees passed has passed in the
        /// kernel too.
        #[test]
        fn deadlines_never_end_early_in_the_kernel(
            boot_ns in 1_000_000_000u64..1_000_000_000_000,
            offset_ns in 1_000_000_000_000_000u64..2_000_000_000_000_000,
            drift_ms in -249i64..250,
            ttl_ms in 1u64..100_000,
            back_ms in 0u64..2_000,
        ) {
            let wall_ns = boot_ns + offset_ns;
            let reading = Reading {
                wall_ms: WallMs::from_unix_ms(wall_ns / 1_000_000),
                boot_ms: BootMs::from_ms(boot_ns / 1_000_000),
            };
            let tick = Tick { now: reading.wall_ms, offset_ms: reading.offset_ms(), jump_ms: 0 };
            let base = TimeBase { boot_id: "a".into(), wall_minus_boot_ms: tick.offset_ms + drift_ms };
            let start = base.start_now(&tick) + Duration::from_millis(ttl_ms);
            proptest::prop_assert!(
                base.boot_deadline_ns(start).kernel() >= boot_ns + ttl_ms * 1_000_000,
                "a {ttl_ms} ms block ends {} ns early in the kernel",
                (boot_ns + ttl_ms * 1_000_000) as i64 - base.boot_deadline_ns(start).kernel() as i64
            );
            let passed = base.end_now(&tick).shifted(-(back_ms as i64));
            proptest::prop_assert!(
                base.boot_deadline_ns(passed).kernel() <= boot_ns,
                "the reaper takes out an entry {} ns before its kernel deadline",
                base.boot_deadline_ns(passed).kernel() - boot_ns
            );
        }
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
        let deadline = WallMs::from_unix_ms(5_000_000);
        assert_eq!(
            after.boot_deadline_ns(deadline.shifted(shift)),
            before.boot_deadline_ns(deadline)
        );
        assert_eq!(
            before.boot_deadline_ns(WallMs::EPOCH),
            BootNs::from_kernel(1),
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
