//! Bounds on what clients may hold of the daemon, end to end with the real daemon and CLI: the
//! connection cap, the idle timeout, the size of stored text, the approval queue, running out
//! of file descriptors, a dying engine thread, and a trigger sent while the daemon stops.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::{Duration, Instant},
};

use enforcer::protocol::Outcome;
use enforcer_tests::{
    Lab,
    daemon::{Daemon, fails, ok},
    require_root, wait_for,
};
use serde_json::Value;

/// A raw connection to the daemon's socket.
fn connect(socket: &Path) -> UnixStream {
    let s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// The next answer on `s`, or `None` on end of file or after its read timeout. (Read as JSON
/// values, not the protocol's types, so that this file also runs against builds without the
/// `unavailable` code.)
fn answer(s: &UnixStream) -> Option<Value> {
    let mut line = String::new();
    match BufReader::new(s).read_line(&mut line) {
        Ok(n) if n > 0 => Some(serde_json::from_str(&line).expect("an answer")),
        _ => None,
    }
}

fn ping(s: &mut UnixStream) -> Option<Value> {
    s.write_all(b"{\"v\":1,\"op\":\"ping\"}\n").ok()?;
    answer(s)
}

fn is_ok(r: Option<Value>) -> bool {
    r.is_some_and(|v| v["ok"] == true)
}

/// An error answer's code and message.
fn error(r: Option<Value>) -> (String, String) {
    match r {
        Some(v) if v["ok"] == false => (
            v["error"]["code"].as_str().unwrap().to_owned(),
            v["error"]["message"].as_str().unwrap().to_owned(),
        ),
        other => panic!("expected an error answer, got {other:?}"),
    }
}

fn listed(d: &Daemon, target: &str) -> bool {
    d.list(&[]).iter().any(|e| e.target.to_string() == target)
}

fn spool_flags(d: &Daemon) -> [String; 3] {
    [
        "--spool-if-down".into(),
        "--state-dir".into(),
        d.state_dir.display().to_string(),
    ]
}

#[test]
fn connections_past_the_cap_are_turned_away_and_a_trigger_then_spools_while_earlier_ones_are_still_served()
 {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &["--max-connections", "4"]).unwrap();
    // The start's own `status` calls may still hold a slot for a moment after they hang up (the
    // daemon frees it once it reads their end): each held connection is retried until served.
    let held: Vec<UnixStream> = (0..4)
        .map(|i| {
            wait_for(
                &format!("held connection {i} to be served"),
                Duration::from_secs(10),
                || {
                    let mut s = connect(&d.socket);
                    Ok(is_ok(ping(&mut s)).then_some(s))
                },
            )
            .unwrap()
        })
        .collect();
    let mut held = held;

    let extra = connect(&d.socket);
    let (code, message) = error(answer(&extra));
    assert_eq!(code, "unavailable");
    assert!(
        message.contains("too many connections") && message.contains("max_connections"),
        "{message}"
    );
    assert!(
        answer(&extra).is_none(),
        "the turned-away connection stays open"
    );
    fails(&d.cli(&["list"]), 3, "too many connections");
    // A trigger is never lost: it spools, as when the daemon is not running.
    let mut block = vec!["block".to_owned(), "192.0.2.50".into()];
    block.extend(spool_flags(&d));
    let out = d.cli(&block.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        ok(&out)
            .contains("the daemon is unavailable (stopping, or at its connection cap); spooled to"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // The connections served before the excess still are.
    assert!(is_ok(ping(&mut held[0])));
    held.truncate(1);
    // The running daemon drains the spool (every 5 s). Until it has seen the three closes, a
    // `list` may still be turned away at the cap: that is "not yet", not a failure.
    wait_for(
        "the spooled block to be applied",
        Duration::from_secs(20),
        || {
            let out = d.cli(&["list", "--json"]);
            if !out.status.success() {
                assert!(
                    String::from_utf8_lossy(&out.stderr).contains("too many connections"),
                    "{out:?}"
                );
                return Ok(None);
            }
            let blocks: Vec<enforcer::protocol::ListEntry> = serde_json::from_slice(&out.stdout)?;
            Ok(blocks
                .iter()
                .any(|e| e.target.to_string() == "192.0.2.50")
                .then_some(()))
        },
    )
    .unwrap();
    assert!(is_ok(ping(&mut held[0])));
}

#[test]
fn an_idle_connection_is_closed_after_the_idle_timeout_and_a_busy_one_is_not() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &["--idle-timeout", "1s"]).unwrap();
    for partial in [&b""[..], b"{\"v\":1,"] {
        let mut s = connect(&d.socket);
        s.write_all(partial).unwrap();
        let started = Instant::now();
        let (code, message) = error(answer(&s));
        let took = started.elapsed();
        assert_eq!(code, "invalid_request");
        assert!(
            message.contains("no complete request within 1s"),
            "{message}"
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "closed after {took:?}"
        );
        assert!(answer(&s).is_none(), "still open after the idle error");
    }
    // A client that keeps asking is served past the timeout.
    let mut s = connect(&d.socket);
    for _ in 0..4 {
        assert!(is_ok(ping(&mut s)));
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn an_oversized_reason_or_comment_is_refused_with_its_size_and_nothing_is_stored() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    let reason = "x".repeat(2000);
    d.fails_cleanly(
        &["block", "192.0.2.60", "--reason", &reason],
        2,
        "reason is 2000 bytes; the limit is 1024",
    );
    let comment = "c".repeat(300);
    d.fails_cleanly(
        &["allow", "add", "198.51.100.60", "--comment", &comment],
        2,
        "comment is 300 bytes; the limit is 256",
    );
    // At the limit is fine.
    ok(&d.cli(&[
        "allow",
        "add",
        "198.51.100.60",
        "--comment",
        &"c".repeat(256),
    ]));
}

/// A daemon with `config`, where 203.0.113.1 and .2 from `source` wait for approval and .3 from
/// it is refused (exit 7, `refusal`, state unchanged) and audited naming `limit`.
fn two_pending_and_one_refused(
    lab: &Lab,
    config: &str,
    source: &str,
    refusal: &str,
    limit: &str,
) -> (Daemon, tempfile::TempDir) {
    let (d, dir) = Daemon::with_config(lab, config).unwrap();
    for i in 1..=2 {
        let r = d.block(&[&format!("203.0.113.{i}"), "--source", source]);
        assert_eq!(r.outcome, Outcome::Pending, "{r:?}");
    }
    d.fails_cleanly(&["block", "203.0.113.3", "--source", source], 7, refusal);
    let audit = d.audit_text();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("203.0.113.3") && l.contains(limit)),
        "{audit}"
    );
    (d, dir)
}

#[test]
fn the_approval_queue_is_capped_and_a_request_past_it_is_refused() {
    require_root();
    let lab = Lab::new().unwrap();
    let (d, _dir) = two_pending_and_one_refused(
        &lab,
        "[policy.approval]\nmax_pending = 2\ncaller_share = 100\n[policy.sources.review]\nrequire_approval = true\n",
        "review",
        "2 requests already wait for it",
        "max_pending",
    );
    let id = d.pending()[0].id.to_string();
    ok(&d.cli(&["reject", &id]));
    assert_eq!(
        d.block(&["203.0.113.3", "--source", "review"]).outcome,
        Outcome::Pending
    );
}

/// One caller cannot take every slot of the approval queue: a noisy integration fills its own
/// share (`caller_share`, 25% of `max_pending` by default) and the others still queue. Run as
/// root, each source is a caller of its own (the hooks all run as root).
#[test]
fn one_source_fills_only_its_share_of_the_approval_queue_and_the_others_still_queue() {
    require_root();
    let lab = Lab::new().unwrap();
    let (d, _dir) = two_pending_and_one_refused(
        &lab,
        "[policy.approval]\nmax_pending = 8\n[policy.sources.noisy]\nrequire_approval = true\n[policy.sources.review]\nrequire_approval = true\n",
        "noisy",
        "source `noisy` already has 2 requests waiting",
        "caller_share",
    );
    assert_eq!(
        d.block(&["203.0.113.4", "--source", "review"]).outcome,
        Outcome::Pending,
        "another caller still queues"
    );
    assert_eq!(d.pending().len(), 3);
}

#[test]
fn a_daemon_whose_engine_thread_dies_exits_non_zero_naming_it_and_starts_again() {
    if !enforcer_tests::test_hooks_or_skip() {
        return;
    }
    require_root();
    let lab = Lab::new().unwrap();
    // Debug builds only: blocking this target panics the engine thread.
    let mut d = Daemon::start_with_env(
        &lab,
        &[],
        vec![("ENFORCER_TEST_PANIC_ENGINE".into(), "192.0.2.66".into())],
    )
    .unwrap();
    ok(&d.cli(&["block", "192.0.2.65"]));
    let out = d.cli(&["block", "192.0.2.66"]);
    assert!(
        !out.status.success(),
        "the block that killed the engine was acknowledged"
    );
    let status = d
        .wait_exit(Duration::from_secs(20))
        .expect("the daemon kept running with a dead engine");
    assert!(!status.success(), "exited with {status}");
    let log = d.log();
    assert!(log.contains("the engine thread panicked"), "{log}");
    // What a supervisor does next: start it again; every acknowledged block is there.
    d.spawn().unwrap();
    assert!(listed(&d, "192.0.2.65"));
    ok(&d.cli(&["block", "192.0.2.67"]));
}

#[test]
fn a_block_sent_while_the_daemon_stops_is_spooled_and_applied_at_the_next_start() {
    if !enforcer_tests::test_hooks_or_skip() {
        return;
    }
    require_root();
    let lab = Lab::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let stall = tmp.path().join("stall");
    let mut d = Daemon::start_with_env(
        &lab,
        &[],
        vec![(
            "ENFORCER_TEST_STALL_ENGINE".into(),
            stall.display().to_string(),
        )],
    )
    .unwrap();
    // Hold the engine (debug builds), so that the stop takes as long as the test needs.
    std::fs::write(&stall, "").unwrap();
    let mut probe = connect(&d.socket);
    probe
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    wait_for("the engine to stall", Duration::from_secs(10), || {
        Ok(ping(&mut probe).is_none().then_some(()))
    })
    .unwrap();
    d.sigterm();
    wait_for(
        "the stopping daemon to answer `unavailable`",
        Duration::from_secs(10),
        || {
            let Ok(s) = UnixStream::connect(&d.socket) else {
                return Ok(None);
            };
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            Ok(answer(&s)
                .is_some_and(|v| v["error"]["code"] == "unavailable")
                .then_some(()))
        },
    )
    .unwrap();
    let mut block = vec!["block".to_owned(), "192.0.2.70".into()];
    block.extend(spool_flags(&d));
    let out = d.cli(&block.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        ok(&out)
            .contains("the daemon is unavailable (stopping, or at its connection cap); spooled to"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    fails(&d.cli(&["list"]), 3, "shutting down");

    std::fs::remove_file(&stall).unwrap();
    let status = d
        .wait_exit(Duration::from_secs(30))
        .expect("the daemon did not stop");
    assert!(status.success(), "exited with {status}: {}", d.log());
    assert!(!d.socket.exists(), "the socket outlived the daemon");
    d.spawn().unwrap();
    assert!(
        listed(&d, "192.0.2.70"),
        "the spooled block was not applied at the start"
    );
}

/// CPU time (user + system) the process has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // utime and stime are fields 14 and 15 of stat(5); 3 is the first after the name.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

#[test]
fn a_daemon_out_of_file_descriptors_backs_off_without_spinning_and_answers_again() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    let pid = d.pid().unwrap();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count() as u64;
    let limit = libc::rlimit {
        rlim_cur: open + 6,
        rlim_max: open + 6,
    };
    // SAFETY: prlimit(2) on our own child, with a valid rlimit and no old-value pointer.
    let rc = unsafe {
        libc::prlimit(
            pid as i32,
            libc::RLIMIT_NOFILE,
            &limit,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0);

    let held: Vec<UnixStream> = (0..40).map(|_| connect(&d.socket)).collect();
    // Out of descriptors, the daemon cannot accept: a new client gets no answer.
    wait_for(
        "the daemon to run out of descriptors",
        Duration::from_secs(10),
        || {
            let mut s = connect(&d.socket);
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            Ok(ping(&mut s).is_none().then_some(()))
        },
    )
    .unwrap();
    let before = cpu_time(pid);
    let measured = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_time(pid) - before;
    println!(
        "CPU used while out of descriptors: {used:?} in {:?}",
        measured.elapsed()
    );
    assert!(
        used < Duration::from_millis(400),
        "the accept loop spins: {used:?} of CPU in 2 s"
    );

    drop(held);
    wait_for(
        "the daemon to answer again",
        Duration::from_secs(10),
        || {
            Ok(d.cli(&["status"])
                .status
                .code()
                .is_some_and(|c| c == 0 || c == 8)
                .then_some(()))
        },
    )
    .unwrap();
    let log = d.log();
    assert_eq!(
        log.matches("accepting control connections fails").count(),
        1,
        "logged more than once per burst: {log}"
    );
}
