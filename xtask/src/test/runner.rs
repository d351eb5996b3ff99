//! xtask's own test runner: every test in a process of its own with a time limit, so a hung
//! test fails alone (its processes killed, its name in the summary) instead of hanging the run.
//! libtest has no per-test timeout, and cargo-nextest, which has one, is not on a fresh machine.
//!
//! The test binaries are those `cargo test` would run (built with `--no-run`); each is asked
//! for its tests with `--list`, and each test runs as `<binary> --exact <name>` in the
//! binary's package directory, as cargo runs them, `jobs` at a time.

use std::{
    collections::VecDeque,
    io::{self, Read as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, PoisonError, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// A test binary cargo built, and where cargo would run it.
pub(super) struct Binary {
    exe: PathBuf,
    /// The package's directory: cargo runs test binaries there.
    dir: PathBuf,
    /// `enforcer (lib)`, `labs (test)`: what the summary calls it.
    label: String,
}

impl Binary {
    /// Whether this is the lab binary (`tests/tests/labs`, the test target `labs`).
    pub(super) fn is_labs(&self) -> bool {
        self.label == "labs (test)"
    }
}

/// One test of one binary.
pub(super) struct Case {
    binary: Arc<Binary>,
    pub name: String,
}

impl Case {
    /// `labs::crowdsec::x`, `enforcer::store::tests::y`: the binary's target name, then the
    /// test's.
    pub(super) fn full_name(&self) -> String {
        let target = self.binary.label.split(' ').next().unwrap_or_default();
        format!("{target}::{}", self.name)
    }
}

/// How a test ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    Passed,
    Ignored,
    Failed,
    /// Killed at its time limit (it and every process it started).
    TimedOut(Duration),
    /// Ended without a result line: a signal, an abort, an exit from the test.
    Crashed(String),
}

/// A finished test: its verdict, how long it ran and everything it printed.
pub(super) struct Finished {
    pub case: Case,
    pub verdict: Verdict,
    pub elapsed: Duration,
    pub output: String,
}

#[cfg(test)]
impl Finished {
    /// A test named `name` of a made-up binary that passed, having printed `output`.
    pub(super) fn passed_for_test(name: &str, output: String) -> Self {
        Self {
            case: Case {
                binary: Arc::new(Binary {
                    exe: PathBuf::from("/nonexistent/labs"),
                    dir: PathBuf::from("/nonexistent"),
                    label: "labs (test)".to_owned(),
                }),
                name: name.to_owned(),
            },
            verdict: Verdict::Passed,
            elapsed: Duration::ZERO,
            output,
        }
    }
}

/// Builds the test binaries `cargo test <cargo_args>` would run and returns them.
pub(super) fn build(cargo_args: &[&str]) -> Result<Vec<Arc<Binary>>> {
    let mut build = cmd::cargo();
    build
        .arg("test")
        .args(cargo_args)
        .args(["--no-run", "--message-format=json-render-diagnostics"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd::echo(&build);
    let out = build
        .output()
        .with_context(|| format!("cannot start `{}`", cmd::display(&build)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}); see the errors above",
            cmd::display(&build),
            out.status
        );
    }
    Ok(test_binaries(&String::from_utf8_lossy(&out.stdout)))
}

/// The test executables in cargo's JSON messages (`compiler-artifact` with a test profile).
fn test_binaries(messages: &str) -> Vec<Arc<Binary>> {
    let mut found = Vec::new();
    for line in messages.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let (Some(exe), Some(manifest)) =
            (msg["executable"].as_str(), msg["manifest_path"].as_str())
        else {
            continue;
        };
        let name = msg["target"]["name"].as_str().unwrap_or("?");
        let kind = msg["target"]["kind"][0].as_str().unwrap_or("?");
        found.push(Arc::new(Binary {
            exe: exe.into(),
            dir: Path::new(manifest)
                .parent()
                .unwrap_or(Path::new("."))
                .to_path_buf(),
            label: format!("{name} ({kind})"),
        }));
    }
    found
}

/// The tests of `binary` that `filter_args` (libtest's own: a name filter, `--exact`,
/// `--skip`, `--ignored`...) select.
pub(super) fn list(binary: &Arc<Binary>, filter_args: &[String]) -> Result<Vec<Case>> {
    let out = Command::new(&binary.exe)
        .args(["--list", "--format", "terse"])
        .args(filter_args)
        .current_dir(&binary.dir)
        .output()
        .with_context(|| format!("cannot list the tests of {}", binary.exe.display()))?;
    if !out.status.success() {
        bail!(
            "`{} --list` failed ({}): {}",
            binary.exe.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(|name| Case {
            binary: Arc::clone(binary),
            name: name.to_owned(),
        })
        .collect())
}

/// What every test process gets.
pub(super) struct Plan {
    /// libtest options for each run (`--nocapture`, `--ignored`...), never a name filter.
    pub run_args: Vec<String>,
    /// Environment for each test and everything it starts.
    pub env: Vec<(String, String)>,
    /// How many tests run at once.
    pub jobs: usize,
    /// Print what passing tests printed too (`--nocapture`, `--show-output`).
    pub show_output: bool,
    /// How long a test may run.
    pub limit: Duration,
    /// Tests known to take longer: a name prefix and its limit (used when above `limit`).
    pub slow: &'static [(&'static str, Duration)],
}

impl Plan {
    /// The time limit of the test named `name`.
    fn limit_of(&self, name: &str) -> Duration {
        self.slow
            .iter()
            .filter(|(prefix, _)| name.starts_with(prefix))
            .map(|(_, limit)| *limit)
            .fold(self.limit, Duration::max)
    }
}

/// Runs every case, `plan.jobs` at a time, and hands each result to `done` as it finishes
/// (on this thread, in the order they finish).
pub(super) fn run(cases: Vec<Case>, plan: &Plan, mut done: impl FnMut(Finished)) {
    let queue = Mutex::new(cases.into_iter().enumerate().collect::<VecDeque<_>>());
    let (tx, rx) = mpsc::channel();
    thread::scope(|scope| {
        for _ in 0..plan.jobs.max(1) {
            let tx = tx.clone();
            let queue = &queue;
            scope.spawn(move || {
                while let Some((id, case)) = next(queue) {
                    if tx.send(run_case(case, id, plan)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        for finished in rx {
            done(finished);
        }
    });
}

fn next<T>(queue: &Mutex<VecDeque<T>>) -> Option<T> {
    queue
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop_front()
}

/// The environment variable marking every process one test started (inherited), so a test
/// killed at its limit takes them along.
const CASE_ENV: &str = "ENFORCER_TEST_CASE";

fn run_case(case: Case, id: usize, plan: &Plan) -> Finished {
    let started = Instant::now();
    let limit = plan.limit_of(&case.name);
    let marker = format!("{CASE_ENV}={}-{id}", std::process::id());
    let (verdict, output) = match spawn(&case, plan, &marker) {
        Ok((child, output)) => finish(child, &output, limit, &marker),
        Err(err) => (Verdict::Crashed(format!("{err:#}")), String::new()),
    };
    Finished {
        case,
        verdict,
        elapsed: started.elapsed(),
        output,
    }
}

/// Output read so far, and whether the pipe reached its end.
type Captured = Arc<Mutex<(Vec<u8>, bool)>>;

/// Starts one test with stdout and stderr in one pipe, read by a thread into `Captured`.
fn spawn(case: &Case, plan: &Plan, marker: &str) -> Result<(Child, Captured)> {
    let (mut reader, writer) = io::pipe().context("creating a pipe")?;
    let (key, value) = marker.split_once('=').expect("marker is NAME=value");
    let child = Command::new(&case.binary.exe)
        .arg("--exact")
        .arg(&case.name)
        .args(&plan.run_args)
        .current_dir(&case.binary.dir)
        .env("CARGO_MANIFEST_DIR", &case.binary.dir)
        .envs(plan.env.iter().map(|(k, v)| (k, v)))
        .env(key, value)
        .stdin(Stdio::null())
        .stdout(writer.try_clone().context("duplicating a pipe")?)
        .stderr(writer)
        .spawn()
        .with_context(|| format!("cannot start {}", case.binary.exe.display()))?;
    // The Command (and with it our copies of the pipe's write end) is gone here, so the
    // reader sees the end once the test and whatever inherited its output are gone.
    let captured: Captured = Arc::default();
    let sink = Arc::clone(&captured);
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            let n = reader.read(&mut buf).unwrap_or(0);
            let mut out = sink.lock().unwrap_or_else(PoisonError::into_inner);
            if n == 0 {
                out.1 = true;
                return;
            }
            out.0.extend_from_slice(&buf[..n]);
        }
    });
    Ok((child, captured))
}

/// Waits for the test to end or reach `limit` (then kills it and every process carrying
/// `marker`), and judges it from its status and its result line.
fn finish(mut child: Child, output: &Captured, limit: Duration, marker: &str) -> (Verdict, String) {
    const POLL: Duration = Duration::from_millis(10);
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => thread::sleep(POLL),
            Err(err) => return (Verdict::Crashed(format!("waiting: {err}")), String::new()),
        }
    };
    if status.is_none() {
        // It may have ended meanwhile; reaped either way.
        child.kill().ok();
        child.wait().ok();
        super::kill_processes_with_env(marker);
    }
    let text = drain(output);
    let verdict = match status {
        None => Verdict::TimedOut(limit),
        Some(status) => judge(status, &text),
    };
    (verdict, text)
}

/// Everything the test printed: up to its pipe's end, or what arrived within a second when a
/// process it left behind still holds the pipe open (the leftover check reports that process).
fn drain(output: &Captured) -> String {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let out = output.lock().unwrap_or_else(PoisonError::into_inner);
        if out.1 || Instant::now() >= deadline {
            return String::from_utf8_lossy(&out.0).into_owned();
        }
        drop(out);
        thread::sleep(Duration::from_millis(5));
    }
}

/// The verdict of a test that ended: from libtest's `test result:` line, which a test that
/// died before reporting does not have.
fn judge(status: ExitStatus, output: &str) -> Verdict {
    let Some(counts) = output
        .lines()
        .find_map(|l| l.strip_prefix("test result: "))
        .map(super::result_counts)
    else {
        return Verdict::Crashed(format!("ended without a result ({status})"));
    };
    match counts {
        (_, 1.., _) => Verdict::Failed,
        (1, 0, 0) if status.success() => Verdict::Passed,
        (0, 0, 1) if status.success() => Verdict::Ignored,
        _ => Verdict::Crashed(format!("ran no test, or more than one ({status})")),
    }
}

/// The libtest options among `args` that apply to running a test, without the name filters
/// (each test is run by its exact name): `--nocapture`, `--ignored`, `--skip x`...
pub(super) fn run_args(args: &[String]) -> Vec<String> {
    const TAKES_VALUE: &[&str] = &[
        "--skip",
        "--test-threads",
        "--format",
        "--color",
        "--logfile",
        "-Z",
    ];
    let mut kept = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if TAKES_VALUE.contains(&arg.as_str()) {
            kept.push(arg.clone());
            kept.extend(args.next().cloned());
        } else if arg.starts_with('-') && arg != "--exact" && arg != "--list" {
            kept.push(arg.clone());
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: i32) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt as _;
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn a_test_is_judged_by_its_result_line() {
        let ok = "running 1 test\ntest a ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 9 filtered out; finished in 0.00s\n";
        assert_eq!(judge(status(0), ok), Verdict::Passed);
        let bad = "test a ... FAILED\n\ntest result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 9 filtered out; finished in 0.00s\n";
        assert_eq!(judge(status(101), bad), Verdict::Failed);
        let ignored = "test result: ok. 0 passed; 0 failed; 1 ignored; 0 measured; 9 filtered out; finished in 0.00s\n";
        assert_eq!(judge(status(0), ignored), Verdict::Ignored);
        assert!(matches!(
            judge(status(0), "running 1 test\n"),
            Verdict::Crashed(_)
        ));
        // 11 passed is not 1 passed.
        let none = "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 11 filtered out; finished in 0.00s\n";
        assert!(matches!(judge(status(0), none), Verdict::Crashed(_)));
    }

    #[test]
    fn name_filters_are_not_passed_to_each_run() {
        let args = [
            "crowdsec",
            "--nocapture",
            "--skip",
            "slow",
            "--exact",
            "--ignored",
        ]
        .map(String::from);
        assert_eq!(
            run_args(&args),
            ["--nocapture", "--skip", "slow", "--ignored"]
        );
    }

    #[test]
    fn test_binaries_come_from_cargo_messages() {
        let messages = [
            r#"{"reason":"compiler-artifact","manifest_path":"/r/tests/Cargo.toml","target":{"name":"labs","kind":["test"]},"profile":{"test":true},"executable":"/r/target/debug/deps/labs-1"}"#,
            r#"{"reason":"compiler-artifact","manifest_path":"/r/enforcer/Cargo.toml","target":{"name":"enforcer","kind":["lib"]},"profile":{"test":false},"executable":null}"#,
            r#"{"reason":"build-finished","success":true}"#,
            "not json",
        ]
        .join("\n");
        let found = test_binaries(&messages);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].exe, Path::new("/r/target/debug/deps/labs-1"));
        assert_eq!(found[0].dir, Path::new("/r/tests"));
        assert_eq!(found[0].label, "labs (test)");
    }

    /// A test that never ends is killed at its limit, with the processes it started, and
    /// what it printed is kept.
    #[test]
    fn a_hung_test_is_killed_at_its_limit() {
        use std::os::unix::fs::PermissionsExt as _;
        const SLOW: &[(&str, Duration)] = &[("quick", Duration::from_secs(60))];
        // A script stands in for a test binary (it ignores `--exact <name>`).
        let dir = std::env::temp_dir().join(format!("xtask-runner-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("hangs");
        std::fs::write(&exe, "#!/bin/sh\necho started\nsleep 300 &\nsleep 300\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let case = Case {
            binary: Arc::new(Binary {
                exe,
                dir: dir.clone(),
                label: "hangs (test)".to_owned(),
            }),
            name: "hangs_forever".to_owned(),
        };
        let plan = Plan {
            run_args: Vec::new(),
            env: Vec::new(),
            jobs: 1,
            show_output: false,
            limit: Duration::from_millis(300),
            slow: SLOW,
        };
        let started = Instant::now();
        let mut results = Vec::new();
        run(vec![case], &plan, |f| results.push(f));
        let left = crate::test::processes_with_env(&format!("{CASE_ENV}={}-0", std::process::id()));
        // Cleanup: the asserts below are the test.
        std::fs::remove_dir_all(&dir).ok();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(results.len(), 1);
        assert_eq!(
            results[0].verdict,
            Verdict::TimedOut(Duration::from_millis(300))
        );
        assert!(
            results[0].output.contains("started"),
            "{}",
            results[0].output
        );
        assert!(left.is_empty(), "still running: {left:?}");
        assert_eq!(plan.limit_of("quick::x"), Duration::from_secs(60));
        assert_eq!(plan.limit_of("other"), Duration::from_millis(300));
    }
}
