//! Wall-clock steps (a bad RTC, an NTP step), as the real daemon sees them.
//!
//! Only the daemon's wall clock moves: libfaketime (LD_PRELOAD) shifts `CLOCK_REALTIME` for the
//! daemon process alone, by the offset written in a file it re-reads, and leaves the boot and
//! monotonic clocks (and the kernel's) alone. The machine's clock is never touched.

use std::path::PathBuf;

use enforcer::time::WallMs;
use enforcer_tests::{
    Lab, SENDER_V4,
    daemon::{Daemon, ok},
    require_root,
};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// The daemon's wall clock: an offset from the real one, changed at any time.
struct FakeWall {
    dir: tempfile::TempDir,
}

impl FakeWall {
    fn new() -> Self {
        assert!(
            std::path::Path::new(LIBFAKETIME).exists(),
            "{LIBFAKETIME} is missing: install the Debian package libfaketime (`cargo xtask setup` does)"
        );
        let wall = Self {
            dir: tempfile::tempdir().unwrap(),
        };
        wall.step("+0");
        wall
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("offset")
    }

    /// Sets the daemon's wall clock to the real one plus `offset` (libfaketime syntax: `+1d`).
    fn step(&self, offset: &str) {
        let tmp = self.dir.path().join("offset.tmp");
        std::fs::write(&tmp, format!("{offset}\n")).unwrap();
        std::fs::rename(&tmp, self.file()).unwrap();
    }

    fn env(&self) -> Vec<(String, String)> {
        [
            ("LD_PRELOAD", LIBFAKETIME.to_owned()),
            ("FAKETIME_TIMESTAMP_FILE", self.file().display().to_string()),
            ("FAKETIME_NO_CACHE", "1".to_owned()),
            ("DONT_FAKE_MONOTONIC", "1".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// `target`'s deadline as the daemon reports it, minus the real wall clock now.
fn left_ms(d: &Daemon, target: &str) -> Option<i64> {
    let list = d.list(&[]);
    let row = list.iter().find(|b| b.target.to_string() == target)?;
    Some(row.expires_ms.expect("a timed block").unix_ms() as i64 - WallMs::now().unix_ms() as i64)
}

fn assert_left_about(d: &Daemon, target: &str, wanted_ms: u64, when: &str) {
    let left = left_ms(d, target)
        .unwrap_or_else(|| panic!("{when}: {target} is no longer blocked; log:\n{}", d.log()));
    let off = left.abs_diff(wanted_ms as i64);
    assert!(
        off < 120_000,
        "{when}: {target} ends {left} ms from the real now, not about {wanted_ms} ms"
    );
}

/// `enforcer status` counts one step since the daemon started, of about `by_ms`.
fn assert_step_in_status(d: &Daemon, by_ms: u64, while_running: bool) {
    let steps = d.status().clock_steps;
    assert_eq!(steps.count, 1, "one step since this start: {steps:?}");
    let last = steps.last.expect("the last step");
    assert!(
        last.by_ms.abs_diff(by_ms as i64) < 60_000,
        "stepped by {} ms, not about {by_ms}",
        last.by_ms
    );
    assert_eq!(last.while_running, while_running, "{last:?}");
    let text = ok(&d.cli(&["status"]));
    assert!(
        text.contains("the wall clock stepped 1 time(s) since start"),
        "{text}"
    );
}

#[test]
fn a_wall_clock_step_of_a_day_neither_expires_nor_shortens_a_one_hour_block() {
    require_root();
    let lab = Lab::new().unwrap();
    let wall = FakeWall::new();
    let mut d = Daemon::start_with_env(&lab, &[], wall.env()).unwrap();
    let blocked = SENDER_V4[0];
    ok(&d.cli(&["block", blocked, "--ttl", "1h"]));
    assert_eq!(lab.passes(blocked), 0, "blocked before the step");

    wall.step("+1d");
    // A write makes the daemon read its clock and reap: on a wall clock taken at its word, the
    // one-hour block ends there.
    ok(&d.cli(&["block", SENDER_V4[1], "--ttl", "1h"]));
    assert_left_about(&d, blocked, DAY_MS + HOUR_MS, "after a +1 day step");
    assert_eq!(lab.passes(blocked), 0, "still dropped after the step");
    let log = d.audit_text();
    assert_eq!(
        log.matches("\"action\":\"clock_jump\"").count(),
        1,
        "the step is audited once: {log}"
    );
    assert!(
        d.log().contains("wall clock"),
        "the step is logged: {}",
        d.log()
    );
    assert_step_in_status(&d, DAY_MS, true);

    // A step while the daemon is down, on the same boot: the stored deadlines are boot-relative.
    d.stop().unwrap();
    wall.step("+2d");
    d.spawn().unwrap();
    assert_left_about(
        &d,
        blocked,
        2 * DAY_MS + HOUR_MS,
        "after a restart and another +1 day step",
    );
    assert_eq!(lab.passes(blocked), 0, "still dropped after the restart");
    let log = d.audit_text();
    assert_eq!(
        log.matches("\"action\":\"clock_jump\"").count(),
        2,
        "each step is audited once: {log}"
    );
    assert_step_in_status(&d, DAY_MS, false);
    assert_eq!(lab.passes(SENDER_V4[2]), 10, "an unblocked source passes");
}

#[test]
fn a_backward_wall_clock_step_does_not_lengthen_a_block() {
    require_root();
    let lab = Lab::new().unwrap();
    let wall = FakeWall::new();
    let d = Daemon::start_with_metrics(&lab, &[], wall.env()).unwrap();
    let blocked = SENDER_V4[0];
    ok(&d.cli(&["block", blocked, "--ttl", "1h"]));
    let steps = || d.scrape().unwrap().get("enforcer_clock_steps_total");
    assert_eq!(steps(), 0.0);
    wall.step("-1d");
    ok(&d.cli(&["block", SENDER_V4[1], "--ttl", "1h"]));
    // The metric follows the step (published after the round that saw it).
    enforcer_tests::wait_for(
        "enforcer_clock_steps_total to count the step",
        std::time::Duration::from_secs(10),
        || Ok((steps() == 1.0).then_some(())),
    )
    .unwrap();
    // The daemon's clock is a day behind the real one: an hour from its now.
    let left = left_ms(&d, blocked).expect("still blocked");
    let off = left.abs_diff(HOUR_MS as i64 - DAY_MS as i64);
    assert!(
        off < 120_000,
        "after a -1 day step the block ends {left} ms from the real now, not an hour after the daemon's"
    );
    assert_eq!(lab.passes(blocked), 0);
}
