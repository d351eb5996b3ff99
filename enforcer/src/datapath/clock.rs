//! The data path's clock: `CLOCK_BOOTTIME`, in nanoseconds.
//!
//! Boot time keeps counting across suspend but starts again at zero on every boot. Deadlines are
//! therefore stored as wall-clock time and translated to boot time whenever they are written
//! into a map, with the daemon's time base (`crate::time::TimeBase`), which follows wall-clock
//! steps, rather than the wall clock of the moment. The types and their conversions
//! (`WallMs`, `BootMs`, `BootNs`) live in `crate::time`.
//!
//! The XDP program does not read the boot clock itself on a hit (a clock-source read, ~40 ns on
//! a VM): it reads the coarse monotonic clock (`bpf_ktime_get_coarse_ns`, the time of the last
//! tick, no clock-source read) and adds `CLOCK_BOOTTIME − CLOCK_MONOTONIC`, which the daemon
//! writes into the CLOCK map ([`boot_offset_ns`]). The two clocks differ only by the time spent
//! suspended, so the offset changes only at a resume; the daemon checks it every
//! [`OFFSET_CHECK`] and rewrites it. Both halves err late, never early: the coarse clock trails
//! the true one by up to one tick (4 ms at HZ=250), and the offset is measured low. While no
//! daemon runs, a suspend delays every expiry by the time suspended, until a daemon starts.

use std::time::Duration;

/// Nanoseconds of `CLOCK_BOOTTIME` now, as the kernel's maps hold them (typed:
/// `crate::time::BootNs::now`).
pub fn boottime_ns() -> u64 {
    crate::time::BootNs::now().kernel()
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
