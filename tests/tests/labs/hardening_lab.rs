//! The daemon as the shipped unit runs it, and as a careless or hostile neighbour treats it: a
//! `/proc` showing only processes (`ProcSubset=pid`), a restart that races the previous daemon's
//! exit, and idle connections to the metrics port.

use std::{
    net::{SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::{Duration, Instant},
};

use enforcer::time::WallMs;
use enforcer_tests::{
    Lab, SENDER_V4,
    daemon::{Daemon, enforcer_bin, ok},
    require_root, unique_name, wait_for,
};

const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

/// The unit file the package ships.
fn unit_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/enforcer.service")
}

/// The unit's `Environment=` settings, with the specifiers systemd expands (`%b`, the boot id
/// as 32 hex digits) expanded the same way.
fn unit_environment() -> Vec<(String, String)> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .replace('-', "");
    std::fs::read_to_string(unit_file())
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Environment="))
        .flat_map(|v| v.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|kv| {
            let kv = kv.trim_matches('"').replace("%b", &boot_id);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// A program that runs `enforcer` with the unit's `ProcSubset=pid`: in a private mount
/// namespace whose `/proc` is a new instance mounted `subset=pid` (processes only; no
/// `/proc/sys`, `/proc/stat` or `/proc/locks`).
fn proc_subset_wrapper(dir: &Path) -> PathBuf {
    let path = dir.join("enforcer-procsubset");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nexec unshare -m --propagation private -- sh -c 'mount -t proc -o subset=pid proc /proc && exec \"$0\" \"$@\"' {} \"$@\"\n",
            enforcer_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The daemon's wall clock: the real one plus an offset (libfaketime, as in clock_lab).
struct FakeWall(tempfile::TempDir);

impl FakeWall {
    fn new() -> Self {
        assert!(
            Path::new(LIBFAKETIME).exists(),
            "{LIBFAKETIME} is missing: install the Debian package libfaketime (`cargo xtask setup` does)"
        );
        let wall = Self(tempfile::tempdir().unwrap());
        wall.step("+0");
        wall
    }

    fn step(&self, offset: &str) {
        let tmp = self.0.path().join("offset.tmp");
        std::fs::write(&tmp, format!("{offset}\n")).unwrap();
        std::fs::rename(&tmp, self.0.path().join("offset")).unwrap();
    }

    fn env(&self) -> Vec<(String, String)> {
        [
            ("LD_PRELOAD", LIBFAKETIME.to_owned()),
            (
                "FAKETIME_TIMESTAMP_FILE",
                self.0.path().join("offset").display().to_string(),
            ),
            ("FAKETIME_NO_CACHE", "1".to_owned()),
            ("DONT_FAKE_MONOTONIC", "1".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

#[test]
fn under_the_units_proc_subset_a_restart_after_a_wall_clock_step_keeps_a_one_hour_block() {
    require_root();
    let lab = Lab::new().unwrap();
    let wall = FakeWall::new();
    let bin_dir = tempfile::tempdir().unwrap();
    let wrapper = proc_subset_wrapper(bin_dir.path());
    let mut env = unit_environment();
    env.extend(wall.env());
    let mut d = Daemon::start_bin_with_env(&wrapper, &lab, &[], env).unwrap();
    let blocked = SENDER_V4[0];
    ok(&d.cli(&["block", blocked, "--ttl", "1h"]));
    assert_eq!(lab.passes(blocked), 0, "blocked before the restart");

    // The same boot: a step while no daemon runs keeps the block's remaining hour.
    d.stop().unwrap();
    wall.step("+1d");
    d.spawn().unwrap();
    let row = d
        .list(&[])
        .into_iter()
        .find(|b| b.target.to_string() == blocked)
        .unwrap_or_else(|| {
            panic!(
                "the block did not survive the restart under ProcSubset=pid; log:\n{}",
                d.log()
            )
        });
    let left =
        row.expires_ms.expect("a timed block").unix_ms() as i64 - WallMs::now().unix_ms() as i64;
    assert!(
        left.abs_diff((DAY_MS + HOUR_MS) as i64) < 120_000,
        "the block ends {left} ms from the real now, not a day and an hour (the daemon's clock is a day ahead)"
    );
    assert_eq!(lab.passes(blocked), 0, "still dropped after the restart");
    assert!(
        !d.log().contains("the machine booted since"),
        "a restart was taken for a reboot: {}",
        d.log()
    );
}

#[test]
fn sigterm_then_an_immediate_start_on_the_same_state_directory_starts() {
    require_root();
    let lab = Lab::new().unwrap();
    let mut d = Daemon::start(&lab, &[]).unwrap();
    ok(&d.cli(&["block", SENDER_V4[0], "--ttl", "1h"]));
    for round in 0..3 {
        let old = d
            .sigterm_and_start_at_once()
            .unwrap_or_else(|e| panic!("round {round}: the new daemon did not start: {e:#}"));
        assert!(old.success(), "round {round}: the old daemon exited {old}");
        assert_eq!(lab.passes(SENDER_V4[0]), 0, "round {round}: still dropped");
    }
    let list = d.list(&[]);
    assert_eq!(list.len(), 1, "{list:?}");
}

#[test]
fn a_daemon_on_a_state_directory_another_daemon_holds_fails_in_one_line_naming_it() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    let holder = d.pid().unwrap();
    let started = Instant::now();
    let out = Daemon::builder(&lab)
        .state_dir(&d.state_dir)
        .refused(Duration::from_secs(60));
    let waited = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second daemon ran: {stderr}");
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap();
    assert!(
        last.contains(&format!("pid {holder}")) && last.contains("blocks.redb"),
        "the error names the store and its holder: {stderr}"
    );
    assert!(last.contains("stop"), "the error says what to do: {last}");
    println!("refused after {waited:?}: {last}");
    assert!(
        waited >= Duration::from_secs(5),
        "it waited for the holder to go first (only {waited:?})"
    );
    assert_eq!(d.list(&[]).len(), 0, "the running daemon is untouched");
    ok(&d.cli(&["block", SENDER_V4[1], "--ttl", "1h"]));
}

/// Runs the CLI, giving up after `within`.
fn cli_within(d: &Daemon, args: &[&str], within: Duration) -> Option<Output> {
    let child = d
        .cli_command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let deadline = Instant::now() + within;
    let waiter = std::thread::spawn(move || child.wait_with_output());
    while !waiter.is_finished() {
        if Instant::now() > deadline {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            // Killed: its output is not wanted.
            waiter.join().ok();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    waiter.join().unwrap().ok()
}

fn scrape(lab: &Lab, addr: SocketAddr) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    lab.receiver
        .run(|| {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text)
        })
        .unwrap()
}

#[test]
fn idle_connections_to_the_metrics_port_leave_the_daemon_descriptors_to_protect_with() {
    require_root();
    let lab = Lab::new().unwrap();
    lab.receiver.ip(&["link", "set", "lo", "up"]).unwrap();
    let port = lab
        .receiver
        .run(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let late = unique_name("hd").chars().take(12).collect::<String>();
    let d = Daemon::start(
        &lab,
        &["--metrics-listen", &addr.to_string(), "--iface", &late],
    )
    .unwrap();
    // Room for the daemon's own work, not for 300 idle clients.
    d.limit_open_files(d.open_files() + 64);

    // As many as the listen queue takes, up to 300 (far past the daemon's descriptors).
    let idle: Vec<TcpStream> = lab
        .receiver
        .run(|| {
            (0..300)
                .map_while(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
                .collect()
        })
        .unwrap();
    println!("{} idle connections open", idle.len());
    assert!(idle.len() >= 100, "only {} connections", idle.len());
    let held = Instant::now();
    // The daemon had a moment to accept them all.
    std::thread::sleep(Duration::from_millis(300));

    // A block through the control socket still answers, and drops real packets.
    let out = cli_within(
        &d,
        &["block", SENDER_V4[1], "--ttl", "10m"],
        Duration::from_secs(3),
    )
    .unwrap_or_else(|| {
        panic!(
            "the control socket did not answer within 3 s; log:\n{}",
            d.log()
        )
    });
    ok(&out);
    assert_eq!(lab.passes(SENDER_V4[1]), 0, "the block drops packets");
    // An interface that appears now is read (RTM_GETLINK) and protected.
    lab.receiver
        .ip(&[
            "link",
            "add",
            &late,
            "type",
            "veth",
            "peer",
            "name",
            &format!("{late}p"),
        ])
        .unwrap();
    lab.receiver.ip(&["link", "set", &late, "up"]).unwrap();
    wait_for(
        "the new interface to be protected",
        Duration::from_secs(5),
        || {
            let Some(out) = cli_within(&d, &["status", "--json"], Duration::from_secs(3)) else {
                return Ok(None);
            };
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            Ok(v["interfaces"]
                .as_array()
                .is_some_and(|rows| {
                    rows.iter()
                        .any(|r| r["iface"] == late.as_str() && r["state"] == "protected")
                })
                .then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", d.log()));
    println!(
        "with {} idle metrics connections: block answered and {late} protected within {:?}",
        idle.len(),
        held.elapsed()
    );
    let log = d.log();
    assert!(
        !log.contains("Too many open files"),
        "the daemon ran out of descriptors: {log}"
    );

    drop(idle);
    let text = wait_for("a scrape", Duration::from_secs(30), || {
        Ok(scrape(&lab, addr)
            .ok()
            .filter(|t| t.starts_with("HTTP/1.1 200")))
    })
    .unwrap();
    assert!(text.contains("enforcer_blocks"), "{text}");
}

#[test]
fn escape_sequences_in_a_reason_reach_the_terminal_escaped_in_list_and_show() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    // A title change, a colour and a carriage return that would overwrite the line.
    let reason = "brute\u{1b}]0;owned\u{7}force\u{1b}[31m\rcleared";
    ok(&d.cli(&["block", SENDER_V4[0], "--ttl", "1h", "--reason", reason]));
    for args in [&["list"][..], &["show", SENDER_V4[0]][..]] {
        let out = d.cli(args);
        let text = ok(&out);
        assert!(
            !text.bytes().any(|b| b == 0x1b || b == 0x07 || b == b'\r'),
            "`enforcer {}` writes the reason's control characters raw: {text:?}",
            args.join(" ")
        );
        assert!(
            text.contains("brute") && text.contains("force") && text.contains("cleared"),
            "the reason is still shown: {text}"
        );
    }
    // --json keeps the reason exactly (JSON escapes it).
    let list = d.list(&[]);
    assert_eq!(list[0].sources[0].reason.summary(), reason);
}

/// The boot clock, in ms (what the daemon counts the boot's age by).
fn boot_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

#[test]
fn after_a_reboot_with_the_clock_ahead_a_block_that_looks_expired_is_held_until_ntp_sets_it() {
    if !enforcer_tests::test_hooks_or_skip() {
        return;
    }
    require_root();
    let lab = Lab::new().unwrap();
    let wall = FakeWall::new();
    let bin_dir = tempfile::tempdir().unwrap();
    let wrapper = proc_subset_wrapper(bin_dir.path());
    let boot = |id: &str| {
        let mut env = vec![("ENFORCER_BOOT_ID".to_owned(), id.to_owned())];
        env.extend(wall.env());
        env
    };
    let mut d = Daemon::start_bin_with_env(
        &wrapper,
        &lab,
        &[],
        boot("0f1e2d3c4b5a69788796a5b4c3d2e1f0"),
    )
    .unwrap();
    let blocked = SENDER_V4[0];
    ok(&d.cli(&["block", blocked, "--ttl", "1h"]));
    d.stop().unwrap();

    // A reboot (another boot id), the machine's clock two hours ahead, and the boot 9 min 20 s
    // old as far as the daemon's check is concerned (a debug-build hook): the stored block looks
    // expired, but the clock is not to be trusted yet. (The 40 s left are the daemon's start
    // under load: with 10 s, a start that took longer found the boot settled and was seen
    // deleting the block at load.)
    wall.step("+2h");
    d.env = boot("1f1e2d3c4b5a69788796a5b4c3d2e1f0");
    d.env.push((
        "ENFORCER_TEST_BOOT_AGE_OFFSET_MS".to_owned(),
        (boot_ms() - 560_000).to_string(),
    ));
    d.spawn().unwrap();
    assert!(
        !d.audit_text()
            .contains("expired while the daemon was not running"),
        "deleted at load: {}",
        d.audit_text()
    );
    // NTP sets the clock right; once the boot is 10 min old the block is judged again.
    wall.step("+0");
    wait_for(
        "the held block to be restored",
        Duration::from_secs(90),
        || {
            Ok(d.list(&[])
                .iter()
                .any(|b| b.target.to_string() == blocked)
                .then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e}; log:\n{}", d.log()));
    assert_eq!(lab.passes(blocked), 0, "dropped again, with its hour");
}
