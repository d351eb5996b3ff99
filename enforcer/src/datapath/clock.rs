//! The data path's clock: `CLOCK_BOOTTIME`, in nanoseconds.
//!
//! The XDP program compares expiries with `bpf_ktime_get_boot_ns()`, which keeps counting across
//! suspend but starts again at zero on every boot. Deadlines are therefore stored as wall-clock
//! time and translated to boot time whenever they are written into a map.

use std::time::{Duration, SystemTime};

/// Nanoseconds of `CLOCK_BOOTTIME` now.
pub fn boottime_ns() -> u64 {
    // CLOCK_BOOTTIME exists on every kernel we support.
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).expect("clock_gettime(CLOCK_BOOTTIME) cannot fail");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
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
