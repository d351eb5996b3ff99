//! The data path's clock: `CLOCK_BOOTTIME`, in nanoseconds.
//!
//! Boot time keeps counting across suspend but starts again at zero on every boot. Deadlines are
//! therefore stored as wall-clock time and translated to boot time whenever they are written
//! into a map, with the daemon's time base (`crate::time::TimeBase`), which follows wall-clock
//! steps, rather than the wall clock of the moment.
//!
//! The XDP program does not read the boot clock itself on a hit (a clock-source read, ~40 ns on
//! a VM): it reads the coarse monotonic clock (`bpf_ktime_get_coarse_ns`, the time of the last
//! tick, no clock-source read) and adds `CLOCK_BOOTTIME − CLOCK_MONOTONIC`, which the daemon
//! writes into the CLOCK map ([`boot_offset_ns`]). The two clocks differ only by the time spent
//! suspended, so the offset changes only at a resume; the daemon checks it every
//! [`OFFSET_CHECK`] and rewrites it. Both halves err late, never early: the coarse clock trails
//! the true one by up to one tick (4 ms at HZ=250), and the offset is measured low. While no
//! daemon runs, a suspend delays every expiry by the time suspended, until a daemon starts.

use std::time::{Duration, SystemTime};

/// Nanoseconds of `CLOCK_BOOTTIME` now.
pub fn boottime_ns() -> u64 {
    read_clock(nix::time::ClockId::CLOCK_BOOTTIME)
}

/// How often the daemon re-reads [`boot_offset_ns`] for the data path (it changes at resume).
pub const OFFSET_CHECK: Duration = Duration::from_millis(100);

fn read_clock(id: nix::time::ClockId) -> u64 {
    // The clocks used here exist on every kernel we support.
    let ts = nix::time::clock_gettime(id).expect("clock_gettime cannot fail");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// `CLOCK_BOOTTIME − CLOCK_MONOTONIC` in ns: the time spent suspended since boot.
///
/// Boot time is read first, so the result is low by the time between the two reads: added to
/// the monotonic clock it never runs ahead of boot time.
pub fn boot_offset_ns() -> u64 {
    let boot = read_clock(nix::time::ClockId::CLOCK_BOOTTIME);
    let mono = read_clock(nix::time::ClockId::CLOCK_MONOTONIC);
    boot.saturating_sub(mono)
}

/// The boot-time value the data path compares with, for a wall-clock `deadline`.
///
/// A deadline already past maps to 1 (expired for the kernel; 0 would mean "never").
pub fn deadline_to_boot_ns(deadline: SystemTime) -> u64 {
    let now_wall = SystemTime::now();
    let now_boot = boottime_ns();
    match deadline.duration_since(now_wall) {
        Ok(left) => now_boot.saturating_add(duration_ns(left)),
        Err(_) => 1,
    }
}

/// The wall-clock time of a boot-time value (for showing counters' "last hit").
pub fn boot_ns_to_wall(boot_ns: u64) -> SystemTime {
    let now_wall = SystemTime::now();
    let now_boot = boottime_ns();
    if boot_ns >= now_boot {
        now_wall + Duration::from_nanos(boot_ns - now_boot)
    } else {
        now_wall - Duration::from_nanos(now_boot - boot_ns)
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_translate_both_ways() {
        let deadline = SystemTime::now() + Duration::from_secs(60);
        let boot = deadline_to_boot_ns(deadline);
        let back = boot_ns_to_wall(boot);
        let skew = back
            .duration_since(deadline)
            .unwrap_or_else(|e| e.duration());
        assert!(skew < Duration::from_millis(5), "round trip skew {skew:?}");
    }

    #[test]
    fn past_deadline_is_expired_not_permanent() {
        assert_eq!(deadline_to_boot_ns(SystemTime::UNIX_EPOCH), 1);
    }
}
