//! The Wazuh hook run exactly as wazuh-execd runs it (the emulator in `tests/src/execd.rs`),
//! installed with `enforcer install-wazuh-hook`, against the real daemon in the namespace lab:
//! what execd sees, what active-responses.log says, and what the attacker's traffic gets.

use std::{
    os::unix::fs::PermissionsExt as _,
    time::{Duration, Instant},
};

use enforcer::{
    block::Reason,
    protocol::{BlockRequest, ListEntry, Request},
    spool::{self, Spooled},
    time::WallMs,
};
use enforcer_tests::{
    Lab, RECEIVER_V4, RECEIVER_V6, SENDER_V4, SENDER_V6,
    daemon::Daemon,
    execd::{Answer, EtcOverlay, Execd, WazuhHome, check_log_format, rule_65x, sshd_brute_force},
    require_root, wait_for,
};
use serde_json::{Value, json};

/// Wazuh's `<timeout>` in these tests: short, so the scheduled delete comes quickly.
const TIMEOUT: Duration = Duration::from_secs(2);

/// An execd running the hook against this test's daemon (its environment names the socket and
/// state directory), with `<extra_args>--ttl 1h</extra_args>`.
fn execd<'h>(home: &'h WazuhHome, d: &Daemon) -> Execd<'h> {
    Execd::new(home, &["--ttl", "1h"], TIMEOUT).daemon_at(&d.socket, &d.state_dir)
}

/// The log's messages from line `from` on, each line checked against Wazuh's decoder format.
fn log_since(home: &WazuhHome, from: usize) -> Vec<String> {
    let all = check_log_format(&home.log()).unwrap();
    all[from..].to_vec()
}

fn wazuh_blocks(d: &Daemon) -> Vec<ListEntry> {
    d.list(&["--source", "wazuh"])
}

#[test]
fn an_sshd_brute_force_alert_blocks_the_source_until_execds_delete() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    // Named like the original, so Wazuh's rules 651/652 match its log lines.
    let home = WazuhHome::install("firewall-drop").unwrap();
    let mut execd = execd(&home, &d);
    assert_eq!(lab.passes_to(SENDER_V4[1], RECEIVER_V4), 10);
    assert_eq!(lab.passes_to(SENDER_V6[1], RECEIVER_V6), 10);

    for (src, dst) in [(SENDER_V4[1], RECEIVER_V4), (SENDER_V6[1], RECEIVER_V6)] {
        let from = home.log().len();
        let alert = sshd_brute_force(src);
        let run = execd.add(&alert).unwrap();
        assert_eq!(run.code(), 0, "{:?}", log_since(&home, from));
        assert_eq!(
            run.first_line.as_deref(),
            Some(
                format!(
                    r#"{{"version":1,"origin":{{"name":"firewall-drop","module":"active-response"}},"command":"check_keys","parameters":{{"keys":["{src}"]}}}}"#
                )
                .as_str()
            )
        );
        assert_eq!(run.more_stdout, "", "nothing but check_keys on stdout");
        assert_eq!(run.key, Some(format!("firewall-drop-{src}")));
        assert_eq!(run.verdict, Some("continue"));

        // Starting, the message verbatim, check_keys, the reply, what was done, Ended.
        let log = log_since(&home, from);
        assert_eq!(log[0], "Starting");
        assert_eq!(
            serde_json::from_str::<Value>(&log[1]).unwrap(),
            execd.message("add", &alert)
        );
        assert_eq!(Some(&log[2]), run.first_line.as_ref());
        assert_eq!(
            serde_json::from_str::<Value>(&log[3]).unwrap()["command"],
            "continue"
        );
        assert!(
            log[4].starts_with(&format!("enforcer: blocked {src} for 1h")),
            "{log:#?}"
        );
        assert_eq!(log.last().unwrap(), "Ended");
        assert_eq!(log.len(), 6, "{log:#?}");
        assert_eq!(rule_65x(&log[1]), Some(651));

        assert_eq!(lab.passes_to(src, dst), 0, "{src} is dropped");
    }
    assert_eq!(
        lab.passes_to(SENDER_V4[2], RECEIVER_V4),
        10,
        "other sources still pass"
    );

    let blocks = wazuh_blocks(&d);
    assert_eq!(blocks.len(), 2);
    for b in &blocks {
        let s = &b.sources[0];
        assert_eq!(s.source.as_str(), "wazuh");
        let reason = &s.reason;
        assert_eq!(reason.rule_id.as_deref(), Some("5763"));
        assert_eq!(reason.rule_level, Some(10));
        assert_eq!(
            reason.rule_description.as_deref(),
            Some("sshd: brute force trying to get access to the system. Authentication failed.")
        );
        assert_eq!(reason.alert_id.as_deref(), Some("1764266400.4242"));
        assert_eq!(
            (reason.agent_id.as_deref(), reason.agent_name.as_deref()),
            (Some("001"), Some("web-01"))
        );
        let left = s.expires_ms.unwrap().unix_ms() - WallMs::now().unix_ms();
        assert!(
            left > 3500 * 1000 && left <= 3600 * 1000,
            "--ttl 1h from extra_args: {left} ms"
        );
    }

    // execd's timer runs out: it runs the program again with the first message, as delete.
    let from = home.log().len();
    let mut deletes = Vec::new();
    wait_for("execd's timed deletes", TIMEOUT * 5, || {
        deletes.extend(execd.run_due_deletes()?);
        Ok((deletes.len() == 2).then_some(()))
    })
    .unwrap();
    assert!(deletes.iter().all(|r| r.code() == 0));
    assert!(wazuh_blocks(&d).is_empty());
    assert_eq!(lab.passes_to(SENDER_V4[1], RECEIVER_V4), 10);
    assert_eq!(lab.passes_to(SENDER_V6[1], RECEIVER_V6), 10);
    let log = log_since(&home, from);
    let rules: Vec<_> = log.iter().filter_map(|m| rule_65x(m)).collect();
    assert_eq!(rules, [652, 652]);
    assert_eq!(log.iter().filter(|m| m.as_str() == "Starting").count(), 2);
    assert_eq!(log.iter().filter(|m| m.as_str() == "Ended").count(), 2);
    assert!(
        log.iter()
            .any(|m| m == &format!("enforcer: unblocked {}", SENDER_V4[1])),
        "{log:#?}"
    );

    // A delete for a block that is already gone (lifted by hand, expired) is not an error.
    let again = execd.message("delete", &sshd_brute_force(SENDER_V4[1]));
    let run = execd.delete_raw(again.to_string().as_bytes()).unwrap();
    assert_eq!(run.code(), 0);
    assert!(home.log().last().unwrap().ends_with("Ended"));
    assert!(home.log().iter().any(|l| l.contains("has no wazuh block")));
}

#[test]
fn a_socket_and_state_dir_in_the_message_are_ignored_with_a_warning() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    let home = WazuhHome::install("firewall-drop").unwrap();
    // Someone who can shape the message points the hook at their own socket and spool.
    let elsewhere = tempfile::tempdir().unwrap();
    let (socket, state) = (
        elsewhere.path().join("evil.sock"),
        elsewhere.path().join("state"),
    );
    let args = [
        "--ttl",
        "1h",
        "--socket",
        socket.to_str().unwrap(),
        &format!("--state-dir={}", state.display()),
    ];
    let mut execd = Execd::new(&home, &args, TIMEOUT).daemon_at(&d.socket, &d.state_dir);
    let from = home.log().len();
    let run = execd.add(&sshd_brute_force(SENDER_V4[1])).unwrap();
    let log = log_since(&home, from);
    assert_eq!(run.code(), 0, "{log:#?}");
    assert_eq!(
        lab.passes_to(SENDER_V4[1], RECEIVER_V4),
        0,
        "blocked through the daemon the environment names"
    );
    let warnings: Vec<&String> = log
        .iter()
        .filter(|l| l.starts_with("enforcer: warning: ignored"))
        .collect();
    assert_eq!(warnings.len(), 2, "{log:#?}");
    assert!(
        warnings[0].contains(&format!("--socket {}", socket.display())),
        "{log:#?}"
    );
    assert!(
        !state.exists(),
        "nothing was spooled where the message said"
    );
}

#[test]
fn a_second_alert_for_an_active_key_is_aborted_and_keeps_the_block_as_long_as_execd_does() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    let home = WazuhHome::install("enforcer-firewall-drop").unwrap();
    let mut execd = execd(&home, &d);
    let alert = sshd_brute_force(SENDER_V4[1]);
    assert_eq!(execd.add(&alert).unwrap().verdict, Some("continue"));
    let first = wazuh_blocks(&d)[0].expires_ms.unwrap().unix_ms();
    std::thread::sleep(Duration::from_millis(50));

    let from = home.log().len();
    let run = execd.add(&alert).unwrap();
    assert_eq!(run.verdict, Some("abort"));
    assert_eq!(run.code(), 0);
    assert_eq!(execd.active_keys(), ["enforcer-firewall-drop-192.0.2.10"]);
    let log = log_since(&home, from);
    assert_eq!(
        serde_json::from_str::<Value>(&log[3]).unwrap()["command"],
        "abort"
    );
    assert_eq!(log.last().unwrap(), "Aborted", "{log:#?}");
    assert!(!log.iter().any(|m| m == "Ended"));
    // execd restarted its timer; the block now ends a full TTL from now too.
    let blocks = wazuh_blocks(&d);
    assert_eq!(blocks.len(), 1);
    assert!(
        blocks[0].expires_ms.unwrap().unix_ms() > first,
        "refreshed on abort"
    );
    assert_eq!(lab.passes_to(SENDER_V4[1], RECEIVER_V4), 0);
}

#[test]
fn mapped_ipv6_folds_to_ipv4_and_the_wazuh_5_shape_works_too() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    let home = WazuhHome::install("enforcer-firewall-drop").unwrap();
    let mut execd = execd(&home, &d);

    let run = execd
        .add(&json!({"data": {"srcip": format!("::ffff:{}", SENDER_V4[2])}}))
        .unwrap();
    assert_eq!(run.code(), 0);
    assert_eq!(
        run.key,
        Some(format!("enforcer-firewall-drop-{}", SENDER_V4[2])),
        "the canonical IPv4 is the key"
    );
    assert_eq!(lab.passes_to(SENDER_V4[2], RECEIVER_V4), 0);

    // Wazuh 5.0: enable/disable, the address in source.ip, metadata under wazuh.*.
    let event = json!({
        "source": {"ip": SENDER_V6[2]},
        "rule": {"title": "SSH brute force", "level": "high"},
        "wazuh": {"agent": {"id": "004", "name": "web-02"},
                  "active_response": {"name": "block-ip", "executable": "enforcer-firewall-drop", "type": "stateful", "stateful_timeout": 2}}
    });
    let mut enable = execd.message("enable", &event);
    let run = execd
        .add_raw(Some(enable.to_string().as_bytes()), &Answer::Execd)
        .unwrap();
    assert_eq!((run.code(), run.verdict), (0, Some("continue")));
    assert_eq!(lab.passes_to(SENDER_V6[2], RECEIVER_V6), 0);
    let b = wazuh_blocks(&d)
        .into_iter()
        .find(|b| b.target.to_string() == SENDER_V6[2])
        .unwrap();
    assert_eq!(b.sources[0].reason.agent_name.as_deref(), Some("web-02"));
    enable["command"] = json!("disable");
    assert_eq!(
        execd
            .delete_raw(enable.to_string().as_bytes())
            .unwrap()
            .code(),
        0
    );
    assert_eq!(lab.passes_to(SENDER_V6[2], RECEIVER_V6), 10);
    check_log_format(&home.log()).unwrap();
}

/// Stops (`STOP`) or resumes (`CONT`) the daemon process: a hung daemon that still holds its
/// socket, so connects succeed and requests are written, but nothing answers.
fn signal(d: &Daemon, sig: &str) {
    let pid = d.pid().expect("the daemon runs").to_string();
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid}");
}

/// The audit lines about `target`.
fn audited(d: &Daemon, target: &str) -> Vec<Value> {
    d.audit_events()
        .into_iter()
        .filter(|e| e["target"] == target)
        .collect()
}

#[test]
fn a_trigger_the_daemon_takes_but_never_answers_is_spooled_and_applied_exactly_once() {
    require_root();
    let lab = Lab::new().unwrap();
    let mut d = Daemon::start(&lab, &[]).unwrap();
    let home = WazuhHome::install("enforcer-firewall-drop").unwrap();
    let mut execd = execd(&home, &d);

    // Hung, then killed before it read the request: the request was sent, never applied.
    signal(&d, "STOP");
    let from = home.log().len();
    let run = execd.add(&sshd_brute_force(SENDER_V4[1])).unwrap();
    assert_eq!(run.code(), 0, "the block is not lost: exit 0");
    let log = log_since(&home, from);
    assert!(
        log.iter()
            .any(|m| m.contains("did not answer in time") && m.contains("spooled to")),
        "{log:#?}"
    );
    assert_eq!(spool::pending(&d.state_dir).unwrap().len(), 1, "spooled");
    d.kill();
    d.spawn().unwrap();
    assert_eq!(
        lab.passes_to(SENDER_V4[1], RECEIVER_V4),
        0,
        "applied from the spool after the crash"
    );
    assert!(spool::pending(&d.state_dir).unwrap().is_empty(), "drained");

    // Hung, then resumed: it reads the request it was sent after all, and the spooled copy
    // (same request id) is a duplicate: one block, one audit line, whichever came first.
    signal(&d, "STOP");
    let run = execd.add(&sshd_brute_force(SENDER_V4[2])).unwrap();
    assert_eq!(run.code(), 0);
    assert_eq!(spool::pending(&d.state_dir).unwrap().len(), 1, "spooled");
    signal(&d, "CONT");
    wait_for("the spool to drain", Duration::from_secs(30), || {
        Ok(spool::pending(&d.state_dir)?.is_empty().then_some(()))
    })
    .unwrap();
    assert_eq!(lab.passes_to(SENDER_V4[2], RECEIVER_V4), 0);
    let events = audited(&d, SENDER_V4[2]);
    assert_eq!(events.len(), 1, "applied once: {events:#?}");
    assert_eq!(wazuh_blocks(&d).len(), 2);
    check_log_format(&home.log()).unwrap();
}

#[test]
fn a_trigger_while_the_daemon_is_down_is_spooled_and_applied_when_it_starts() {
    require_root();
    let lab = Lab::new().unwrap();
    let mut d = Daemon::start(&lab, &[]).unwrap();
    d.stop().unwrap();
    let home = WazuhHome::install("enforcer-firewall-drop").unwrap();
    let mut execd = execd(&home, &d);

    let from = home.log().len();
    let spooled_at = WallMs::now().unix_ms();
    let run = execd.add(&sshd_brute_force(SENDER_V4[1])).unwrap();
    assert_eq!(run.code(), 0, "the block is not lost: exit 0");
    assert_eq!(run.verdict, Some("continue"));
    let log = log_since(&home, from);
    assert!(
        log.iter()
            .any(|m| m.contains("the daemon is not running (") && m.contains("spooled to")),
        "{log:#?}"
    );
    assert_eq!(log.last().unwrap(), "Ended");
    let files = spool::pending(&d.state_dir).unwrap();
    assert_eq!(files.len(), 1);
    let mode = std::fs::metadata(spool::spool_dir(&d.state_dir))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);

    // A trigger spooled two hours ago with a one-hour TTL has already ended: it is dropped.
    let old = Spooled {
        v: spool::SPOOL_VERSION,
        spooled_ms: WallMs::now() - Duration::from_secs(2 * 3600),
        id: None,
        request: Request::Block(BlockRequest {
            target: SENDER_V4[2].parse().unwrap(),
            ttl_secs: Some(3600),
            permanent: false,
            source: "wazuh".parse().unwrap(),
            reason: Reason::text("long ago"),
            shadow: false,
            force: false,
            scope: Default::default(),
        }),
    };
    spool::write_entry(&d.state_dir, &old).unwrap();

    d.spawn().unwrap();
    let blocks = wazuh_blocks(&d);
    assert_eq!(blocks.len(), 1, "{blocks:#?}");
    assert_eq!(blocks[0].target.to_string(), SENDER_V4[1]);
    let s = &blocks[0].sources[0];
    assert_eq!(s.reason.rule_id.as_deref(), Some("5763"));
    // The TTL counts from when the trigger was spooled, not from the drain.
    let expires = s.expires_ms.unwrap().unix_ms();
    assert!(
        expires <= spooled_at + 3_600_000 + 2000 && expires >= spooled_at + 3_600_000 - 2000,
        "{expires} vs {spooled_at}"
    );
    assert!(spool::pending(&d.state_dir).unwrap().is_empty(), "drained");
    assert_eq!(lab.passes_to(SENDER_V4[1], RECEIVER_V4), 0);
    assert_eq!(lab.passes_to(SENDER_V4[2], RECEIVER_V4), 10);

    // A delete while the daemon is down is spooled too, and lifts the block at the next start.
    d.stop().unwrap();
    let delete = execd.message("delete", &sshd_brute_force(SENDER_V4[1]));
    assert_eq!(
        execd
            .delete_raw(delete.to_string().as_bytes())
            .unwrap()
            .code(),
        0
    );
    d.spawn().unwrap();
    assert!(wazuh_blocks(&d).is_empty());
    check_log_format(&home.log()).unwrap();
}

#[test]
fn malformed_input_exits_255_logs_why_and_changes_nothing() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    let home = WazuhHome::install("enforcer-firewall-drop").unwrap();
    let mut execd = execd(&home, &d);
    let valid = execd.message("add", &sshd_brute_force(SENDER_V4[1]));
    let without = |key: &str| {
        let mut m = valid.clone();
        m.as_object_mut().unwrap().remove(key);
        m.to_string().into_bytes()
    };
    let with_srcip = |srcip: Value| {
        let mut m = valid.clone();
        m["parameters"]["alert"]["data"]["srcip"] = srcip;
        m.to_string().into_bytes()
    };
    let mut unknown = valid.clone();
    unknown["command"] = json!("restart");
    let mut no_srcip = valid.clone();
    no_srcip["parameters"]["alert"]["data"]
        .as_object_mut()
        .unwrap()
        .remove("srcip");
    // A valid message padded to exactly 64 KiB before its newline: one byte too many.
    let mut long = valid.clone();
    long["parameters"]["alert"]["full_log"] = json!("");
    let pad = 64 * 1024 - long.to_string().len();
    long["parameters"]["alert"]["full_log"] = json!("x".repeat(pad));
    let long = long.to_string().into_bytes();
    assert_eq!(long.len(), 64 * 1024);

    let cases: Vec<(&str, Option<Vec<u8>>, Answer, &str)> = vec![
        (
            "not JSON",
            Some(b"add - 192.0.2.10 1764266400.4242 5763".to_vec()),
            Answer::Execd,
            "not JSON",
        ),
        (
            "no version",
            Some(without("version")),
            Answer::Execd,
            "`version` is missing",
        ),
        (
            "no origin",
            Some(without("origin")),
            Answer::Execd,
            "`origin` is missing",
        ),
        (
            "no command",
            Some(without("command")),
            Answer::Execd,
            "`command` is missing",
        ),
        (
            "no parameters",
            Some(without("parameters")),
            Answer::Execd,
            "`parameters` is missing",
        ),
        (
            "unknown command",
            Some(unknown.to_string().into_bytes()),
            Answer::Execd,
            "unknown command `restart`",
        ),
        (
            "no srcip",
            Some(no_srcip.to_string().into_bytes()),
            Answer::Execd,
            "Cannot read the address",
        ),
        (
            "a host name",
            Some(with_srcip(json!("attacker.example.com"))),
            Answer::Execd,
            "host names are not accepted",
        ),
        (
            "an IPv6 zone",
            Some(with_srcip(json!("fe80::1%eth0"))),
            Answer::Execd,
            "zone id",
        ),
        (
            "a prefix",
            Some(with_srcip(json!("192.0.2.0/24"))),
            Answer::Execd,
            "is a prefix",
        ),
        (
            "a 64 KiB line",
            Some(long),
            Answer::Execd,
            "longer than 65536 bytes",
        ),
        ("empty stdin", None, Answer::Execd, "end of input"),
        (
            "garbage after the handshake",
            Some(valid.to_string().into_bytes()),
            Answer::Line("garbage".into()),
            "Invalid answer to check_keys: not JSON",
        ),
    ];
    for (what, line, answer, why) in cases {
        let from = home.log().len();
        let run = execd.add_raw(line.as_deref(), &answer).unwrap();
        let log = log_since(&home, from);
        assert_eq!(run.code(), 255, "{what}: {log:#?}");
        assert_eq!(log[0], "Starting", "{what}");
        assert!(
            log.last().unwrap().contains(why),
            "{what}: expected {why:?} in {log:#?}"
        );
        assert!(!log.iter().any(|m| m == "Ended"), "{what}");
        assert_eq!(run.more_stdout, "", "{what}");
        if matches!(answer, Answer::Line(_)) {
            assert!(run.first_line.unwrap().contains("check_keys"), "{what}");
        } else {
            assert_eq!(run.first_line, None, "{what}: nothing on stdout");
        }
    }
    assert!(d.list(&[]).is_empty(), "nothing was blocked");
    assert!(
        spool::pending(&d.state_dir).unwrap().is_empty(),
        "nothing was spooled"
    );
    assert_eq!(lab.passes_to(SENDER_V4[1], RECEIVER_V4), 10);
}

#[test]
fn a_handshake_reply_that_never_comes_cannot_hang_execd() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    let home = WazuhHome::install("enforcer-firewall-drop").unwrap();
    let mut execd = execd(&home, &d);
    let line = execd
        .message("add", &sshd_brute_force(SENDER_V4[1]))
        .to_string();
    let started = Instant::now();
    let run = execd
        .add_raw(Some(line.as_bytes()), &Answer::Never)
        .unwrap();
    let took = started.elapsed();
    assert_eq!(run.code(), 255);
    assert!(took < Duration::from_secs(10), "exited after {took:?}");
    let last = home.log().last().cloned().unwrap();
    assert!(
        last.contains("Invalid answer to check_keys: no complete line within 5s"),
        "{last}"
    );
    assert!(d.list(&[]).is_empty());
    println!("a hook with no handshake reply exited after {took:?}");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Wall time of one add as execd sees it (spawn to exit), and triggers per second with 16
/// hooks at once. Run by hand: `cargo test -p enforcer-tests --test wazuh_hook -- --ignored
/// --nocapture`.
#[test]
#[ignore = "a measurement, not a check; run by hand"]
fn hook_latency_and_throughput() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    let home = WazuhHome::install("enforcer-firewall-drop").unwrap();
    let mut execd = execd(&home, &d);
    let mut times = Vec::new();
    for i in 0..200u32 {
        let run = execd
            .add(&sshd_brute_force(&format!("198.51.100.{}", i + 1)))
            .unwrap();
        assert_eq!(run.code(), 0);
        times.push(run.elapsed);
    }
    times.sort();
    println!(
        "one add, spawn to exit, {} runs: p50 {:?}, p99 {:?}, max {:?}",
        times.len(),
        percentile(&times, 0.50),
        percentile(&times, 0.99),
        times.last().unwrap()
    );

    let (threads, each) = (16u32, 50u32);
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (home, d) = (&home, &d);
            s.spawn(move || {
                let mut execd = self::execd(home, d);
                for i in 0..each {
                    let run = execd
                        .add(&sshd_brute_force(&format!("10.99.{t}.{}", i + 1)))
                        .unwrap();
                    assert_eq!(run.code(), 0);
                }
            });
        }
    });
    let took = started.elapsed();
    let total = threads * each;
    println!(
        "{total} adds by {threads} concurrent hooks in {took:?}: {:.0} triggers/s",
        f64::from(total) / took.as_secs_f64()
    );
    assert_eq!(wazuh_blocks(&d).len(), 200 + total as usize);
    check_log_format(&home.log()).unwrap();
}

/// The production path: real wazuh-execd gives its programs no environment, so the hook finds
/// the daemon's socket and state directory in /etc/enforcer/enforcer.toml. Here that file is
/// in an overlay of /etc in the hook's own mount namespace (the real /etc is untouched): a
/// block goes through the socket it names, and while the daemon is down the trigger is spooled
/// in the state directory it names and applied when the daemon starts.
#[test]
fn with_no_environment_the_hook_reaches_the_daemon_through_etc_enforcer() {
    require_root();
    let lab = Lab::new().unwrap();
    let mut d = Daemon::start(&lab, &[]).unwrap();
    let real_etc = std::fs::read_dir("/etc/enforcer").map(|e| e.count()).ok();
    let etc = EtcOverlay::with_config(&format!(
        "socket = \"{}\"\nstate_dir = \"{}\"\n",
        d.socket.display(),
        d.state_dir.display()
    ))
    .unwrap();
    let home = WazuhHome::install("firewall-drop").unwrap();
    let mut execd = Execd::new(&home, &["--ttl", "1h"], TIMEOUT).production(etc);

    let from = home.log().len();
    let run = execd.add(&sshd_brute_force(SENDER_V4[1])).unwrap();
    assert_eq!(run.code(), 0, "{:?}", log_since(&home, from));
    let targets = |d: &Daemon| -> Vec<String> {
        wazuh_blocks(d)
            .iter()
            .map(|b| b.target.to_string())
            .collect()
    };
    assert_eq!(targets(&d), [SENDER_V4[1]]);
    assert_eq!(lab.passes_to(SENDER_V4[1], RECEIVER_V4), 0);

    d.stop().unwrap();
    let from = home.log().len();
    let run = execd.add(&sshd_brute_force(SENDER_V4[2])).unwrap();
    assert_eq!(run.code(), 0, "{:?}", log_since(&home, from));
    assert_eq!(
        spool::depth(&d.state_dir).unwrap(),
        1,
        "spooled in the configured state directory"
    );
    d.spawn().unwrap();
    wait_for(
        "the spooled trigger to apply",
        Duration::from_secs(20),
        || Ok((targets(&d).len() == 2).then_some(())),
    )
    .unwrap();
    assert_eq!(lab.passes_to(SENDER_V4[2], RECEIVER_V4), 0);
    assert_eq!(
        std::fs::read_dir("/etc/enforcer").map(|e| e.count()).ok(),
        real_etc,
        "the real /etc/enforcer is untouched"
    );
}
