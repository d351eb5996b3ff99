//! The CLI's trigger fast path (`enforcer/src/cli/fast.rs`): `block` and `unblock` in their
//! simple forms are read without clap, and must do and say exactly what the full parser does.
//! Each command line runs twice, on the fast path and on the full parser (the debug-build hook
//! `ENFORCER_TEST_CLI_PATH`: `fast` exits 70 for a command line the fast path does not take,
//! `full` never takes it), and the two runs' exit codes and output are compared, with the
//! daemon up, refusing, unreachable (spooled) and for a caller it does not let in.

use std::{
    path::Path,
    process::{Command, Output},
};

use enforcer::spool::{self, Spooled};
use enforcer_tests::{
    Lab, RECEIVER_V4, SENDER_V4,
    daemon::{Daemon, enforcer_bin},
    require_root,
};

/// Which parser a run must take.
#[derive(Clone, Copy, Debug)]
enum Parser {
    Fast,
    Full,
}

/// `enforcer ARGS` on the parser `path`, with `pre` (e.g. setpriv) in front of it.
fn run(path: Parser, pre: &[&str], args: &[&str]) -> Output {
    let mut cmd = match pre.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(enforcer_bin());
            c
        }
        None => Command::new(enforcer_bin()),
    };
    let which = match path {
        Parser::Fast => "fast",
        Parser::Full => "full",
    };
    cmd.env("ENFORCER_TEST_CLI_PATH", which)
        .env_remove("ENFORCER_SOCKET")
        .env_remove("ENFORCER_STATE_DIR")
        .args(args)
        .output()
        .expect("run enforcer")
}

/// What a user sees of a run: exit code, stdout, stderr.
fn seen(out: &Output) -> (Option<i32>, String, String) {
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `text` with what differs between two runs of one command cut out: the time a block is
/// left and its end (`for 10m (until ...)`), the spool file's name (`spooled to ... (`).
fn without_times(text: &str) -> String {
    let cut = |text: &str, from: &str, to: &str| match text.find(from) {
        Some(i) => match text[i + from.len()..].find(to) {
            Some(j) => format!("{}{from}…{}", &text[..i], &text[i + from.len() + j..]),
            None => text.to_owned(),
        },
        None => text.to_owned(),
    };
    cut(&cut(text, " for ", " ["), "spooled to ", " (")
}

/// Runs `args` on both parsers (the fast one must take them); asserts that a user sees the
/// same of both, and returns what the fast run showed.
fn both_alike(pre: &[&str], args: &[&str], between: impl FnOnce()) -> (Option<i32>, String) {
    let fast = seen(&run(Parser::Fast, pre, args));
    between();
    let full = seen(&run(Parser::Full, pre, args));
    assert_ne!(
        fast.0,
        Some(70),
        "the fast path did not take {args:?}: {}",
        fast.2
    );
    assert_eq!(
        (fast.0, without_times(&fast.1), &fast.2),
        (full.0, without_times(&full.1), &full.2),
        "fast path (left) and full parser (right) differ for {args:?}"
    );
    (fast.0, format!("{}{}", fast.1, fast.2))
}

/// Runs `args` as a user does and on the full parser: the same; and the fast path declines.
fn left_to_clap(args: &[&str]) -> (Option<i32>, String) {
    let declined = seen(&run(Parser::Fast, &[], args));
    assert_eq!(declined.0, Some(70), "the fast path took {args:?}");
    let as_user = Command::new(enforcer_bin())
        .env_remove("ENFORCER_TEST_CLI_PATH")
        .args(args)
        .output()
        .unwrap();
    let full = seen(&run(Parser::Full, &[], args));
    assert_eq!(seen(&as_user), full, "{args:?}");
    (full.0, format!("{}{}", full.1, full.2))
}

/// `--socket SOCKET` and `rest`.
fn argv<'a>(socket: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    ["--socket", socket]
        .into_iter()
        .chain(rest.iter().copied())
        .collect()
}

/// Asserts a run exited 0.
fn ok(out: &Output) {
    assert_eq!(out.status.code(), Some(0), "{:?}", seen(out));
}

#[test]
fn the_fast_path_blocks_refuses_and_fails_exactly_as_the_full_parser() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    let socket = d.socket.to_str().unwrap();

    // fail2ban's ban and unban (dist/fail2ban/action.d/enforcer-allports.conf; enforcer.conf
    // adds --proto and --port, read by the fast path alike): the sender's packets are
    // dropped after the fast path's ban and pass after its unban; between the two runs of
    // each, the state is put back.
    let ban = argv(
        socket,
        &[
            "block",
            SENDER_V4[1],
            "--ttl",
            "600s",
            "--source",
            "fail2ban",
            "--reason",
            "fail2ban sshd: 5 failures",
            "--spool-if-down",
        ],
    );
    let unban = argv(
        socket,
        &[
            "unblock",
            SENDER_V4[1],
            "--source",
            "fail2ban",
            "--spool-if-down",
        ],
    );
    let (code, out) = both_alike(&[], &ban, || {
        assert_eq!(lab.passes_to(SENDER_V4[1], RECEIVER_V4), 0);
        ok(&run(Parser::Full, &[], &unban));
    });
    assert_eq!(code, Some(0), "{out}");
    assert!(out.starts_with("blocked 192.0.2.10 for 10m"), "{out}");
    let (code, out) = both_alike(&[], &unban, || {
        assert!(lab.passes_to(SENDER_V4[1], RECEIVER_V4) > 0);
        ok(&run(Parser::Full, &[], &ban));
    });
    assert_eq!(
        (code, out.trim()),
        (Some(0), "unblocked 192.0.2.10 (removed: fail2ban)")
    );
    assert!(lab.passes_to(SENDER_V4[1], RECEIVER_V4) > 0);

    // Refused by the daemon, by the command, and not blocked: one line each, their exit codes.
    let (code, out) = both_alike(&[], &argv(socket, &["block", RECEIVER_V4]), || {});
    assert_eq!(code, Some(7), "{out}");
    assert!(out.contains("refused by policy rule `allowlist`"), "{out}");
    let bad_scope = argv(socket, &["block", "198.51.100.7", "--proto", "bogus"]);
    let (code, out) = both_alike(&[], &bad_scope, || {});
    assert_eq!(code, Some(2), "{out}");
    let (code, out) = both_alike(&[], &argv(socket, &["unblock", "198.51.100.99"]), || {});
    assert_eq!(code, Some(5), "{out}");
    assert!(out.contains("is not blocked"), "{out}");

    // A caller the daemon does not let in is refused on both paths alike: the fast path only
    // reads the command line, the daemon still decides.
    let nobody = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ];
    let block = argv(socket, &["block", "198.51.100.9", "--ttl", "1h"]);
    let (code, out) = both_alike(&nobody, &block, || {});
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("permission denied"), "{out}");
    assert!(d.list(&[]).is_empty(), "{:?}", d.list(&[]));

    // Mistakes and --help go to clap, as a user runs them.
    let (code, out) = left_to_clap(&argv(socket, &["block", "192.0.2.300"]));
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("not an IP address"), "{out}");
    let (code, out) = left_to_clap(&["block", "--help"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("--spool-if-down"), "{out}");
    let twice = argv(
        socket,
        &["block", "198.51.100.7", "--ttl", "1h", "--ttl", "2h"],
    );
    let (code, out) = left_to_clap(&twice);
    assert_eq!(code, Some(2), "{out}");
    assert!(d.list(&[]).is_empty(), "{:?}", d.list(&[]));
}

#[test]
fn with_the_daemon_down_the_fast_path_fails_and_spools_as_the_full_parser() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nothing-here.sock");
    let socket = socket.to_str().unwrap();
    let (code, out) = both_alike(&[], &["--socket", socket, "block", "198.51.100.7"], || {});
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("daemon is not running"), "{out}");

    let (fast_dir, full_dir) = (dir.path().join("fast"), dir.path().join("full"));
    let spooled = |state: &Path| -> (String, String) {
        let args = [
            "--socket",
            socket,
            "block",
            "198.51.100.7",
            "--ttl",
            "1h",
            "--source",
            "fail2ban",
            "--spool-if-down",
            "--state-dir",
            state.to_str().unwrap(),
        ];
        let path = if state == fast_dir {
            Parser::Fast
        } else {
            Parser::Full
        };
        let out = run(path, &[], &args);
        assert_eq!(out.status.code(), Some(0), "{}", seen(&out).2);
        let [file] = &spool::pending(state).unwrap()[..] else {
            panic!("not one spool file in {}", state.display())
        };
        let entry: Spooled = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        let stdout = seen(&out).1.replace(state.to_str().unwrap(), "STATE");
        (without_times(&stdout), format!("{:?}", entry.request))
    };
    let (fast, full) = (spooled(&fast_dir), spooled(&full_dir));
    assert!(
        fast.0.starts_with("the daemon is not running; spooled to"),
        "{}",
        fast.0
    );
    assert_eq!(fast, full, "fast path (left) and full parser (right)");
}

/// The libraries the loader starts in a process of `enforcer ARGS` (`LD_DEBUG=libs`: its
/// `calling init:` lines), by file name, and the run's exit code and own stderr.
fn libraries_started(args: &[&str]) -> (std::collections::BTreeSet<String>, Option<i32>, String) {
    let out = Command::new(enforcer_bin())
        .env("LD_DEBUG", "libs")
        .env_remove("ENFORCER_TEST_CLI_PATH")
        .args(args)
        .output()
        .expect("run enforcer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (loader, own): (Vec<&str>, Vec<&str>) = stderr.lines().partition(|l| {
        l.trim_start()
            .split(':')
            .next()
            .is_some_and(|pid| pid.parse::<u32>().is_ok())
    });
    let started = loader
        .iter()
        .filter_map(|l| l.split_once("calling init: ").map(|(_, path)| path.trim()))
        .filter_map(|path| Path::new(path).file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    (started, out.status.code(), own.join("\n"))
}

/// A trigger pays its process's start whole, so the binary starts nothing beyond the C
/// library (the loader, libc, libm): libgcc_s, which the standard library links for its
/// unwinder, ran a constructor that probes the CPU (`cpuid`, a VM exit each under a
/// hypervisor), 0.12–0.15 ms of a 1 ms process spawn on the reference VM. The unwinder is
/// linked into the binary instead (`enforcer/src/main.rs`); panics still unwind (bounds_lab's
/// engine panic).
#[test]
fn a_trigger_process_starts_no_library_beyond_the_c_library() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-daemon.sock");
    let (started, code, stderr) = libraries_started(&[
        "--socket",
        socket.to_str().unwrap(),
        "block",
        "192.0.2.7",
        "--ttl",
        "1h",
    ]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("the enforcer daemon is not running"),
        "{stderr}"
    );
    assert!(
        started.contains("libc.so.6"),
        "LD_DEBUG=libs showed no libc: {started:?}"
    );
    let beyond: Vec<&String> = started
        .iter()
        .filter(|lib| !lib.starts_with("ld-linux") && *lib != "libc.so.6" && *lib != "libm.so.6")
        .collect();
    assert!(
        beyond.is_empty(),
        "a trigger process starts {beyond:?} beyond the C library (all: {started:?})"
    );
}
