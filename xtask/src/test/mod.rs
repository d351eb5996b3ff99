//! `cargo xtask test`: setup, build, run every test, lint every crate, and summarise.
//!
//! Each test runs in a process of its own with a time limit ([`runner`]): a hung test is
//! killed and fails alone instead of hanging the run.
//!
//! The last line printed is always `N passed, N failed` (plus `, N skipped` when tests
//! were ignored), so CI logs and scripts can read the outcome from one place. A step that
//! fails without a failing test (setup, the build, clippy, a test binary that crashed, a
//! filter that matched no test) counts as one failure in that line, so it never reads
//! `0 failed` when something failed.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    path::Path,
    process::{Command, ExitCode, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{cmd, setup};

mod runner;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Skip clippy (userspace crates, and the eBPF crate with nightly for bpfel-unknown-none;
    /// both with -D warnings).
    #[arg(long)]
    no_lint: bool,
    /// Build and test the release profile: the labs then run `target/release/enforcer`, the
    /// binary that ships. Tests that need the daemon's debug-build test hooks say so in one
    /// line and are skipped.
    #[arg(long)]
    release: bool,
    /// Skip the second run of the release labs (`RELEASE_LABS`) against
    /// `target/release/enforcer`, which builds the release binaries first.
    #[arg(long)]
    no_release_labs: bool,
    /// How long one test may run before it is killed (with every process it started) and
    /// counted as failed. Tests known to be slower (the package build, the upgrade lab's
    /// build of the previous release) get more.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    timeout: u64,
    /// A step run before this one that failed (`.ci/run` passes its benchmark and fuzz
    /// steps' failures here), counted in the summary so that it stays the last line.
    #[arg(long, value_name = "WHAT")]
    prior_failure: Vec<String>,
    /// Arguments for the test binaries, e.g. a name filter or `--nocapture`
    /// (`cargo xtask test -- some_filter`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    test_args: Vec<String>,
}

/// Test counts summed over every `test result:` line, and what else went wrong.
#[derive(Default)]
struct Summary {
    passed: u64,
    failed: u64,
    ignored: u64,
    failed_tests: Vec<String>,
    /// Failures that are not a failing test: setup, build, lint, crashed test binaries.
    problems: Vec<String>,
    /// Test binaries cargo reported as failed (`error: test failed, to rerun pass ...`).
    failed_binaries: u64,
    /// Test binaries whose results said FAILED (the rest of `failed_binaries` crashed).
    failed_results: u64,
}

pub(crate) fn run(args: &Args) -> ExitCode {
    let mut summary = Summary::default();
    for what in &args.prior_failure {
        summary.problems.push(format!("{what} failed (see above)"));
    }
    if let Err(err) = run_steps(args, &mut summary) {
        summary.problems.push(format!("{err:#}"));
    }
    summary.print();
    if summary.failed == 0 && summary.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs every step it can; a step that fails is recorded and later steps still run
/// when they do not depend on it, so one run reports as much as possible.
fn run_steps(args: &Args, summary: &mut Summary) -> Result<()> {
    setup::run().context("setup failed")?;

    // `--workspace` alone would include the eBPF crate, which only builds for the BPF
    // target; enforcer/build.rs builds it, and the lint below checks it.
    let build = cmd::status(
        cmd::cargo()
            .args([
                "build",
                "--workspace",
                "--exclude",
                "enforcer-ebpf",
                "--all-targets",
            ])
            .args(args.release.then_some("--release")),
    )?;
    if build.success() {
        run_tests(args, summary)?;
    } else {
        summary
            .problems
            .push(format!("cargo build failed ({build}); tests not run"));
    }

    if args.no_lint {
        println!("skipping clippy on the userspace crates and enforcer-ebpf (--no-lint)");
    } else {
        lint(summary)?;
    }
    Ok(())
}

/// Tests slower than `--timeout` allows by design: the package test builds the release
/// binaries, and the upgrade lab the previous release's daemon on its first run (several
/// minutes each on a fresh two-core machine).
const SLOW_TESTS: &[(&str, Duration)] = &[
    ("package::", Duration::from_secs(1800)),
    ("layout_upgrade::", Duration::from_secs(1800)),
];

/// The workspace's tests as `cargo test` selects them (without the eBPF crate).
const CARGO_TEST_ARGS: &[&str] = &["--workspace", "--exclude", "enforcer-ebpf"];

/// `cargo test`'s arguments: the workspace without the eBPF crate, in the chosen profile.
fn cargo_test_args(args: &Args) -> Vec<&'static str> {
    let mut all = CARGO_TEST_ARGS.to_vec();
    if args.release {
        all.push("--release");
    }
    all
}

/// Runs every test in its own process with its time limit, then the doc tests, and checks
/// that nothing a test created is left behind.
fn run_tests(args: &Args, summary: &mut Summary) -> Result<()> {
    // Fixtures note what they create here (tests/src/lib.rs, `record_created`).
    let ledger = cmd::target_dir().join(format!("test-ledger-{}.txt", std::process::id()));
    // A leftover of an earlier run with this pid, if any.
    std::fs::remove_file(&ledger).ok();
    match runner::build(&cargo_test_args(args)) {
        Ok(binaries) => {
            run_each_test(&binaries, args, &ledger, summary)?;
            if !args.release && !args.no_release_labs {
                run_release_labs(&binaries, args, &ledger, summary)?;
            }
        }
        Err(err) => summary.problems.push(format!("{err:#}; tests not run")),
    }
    let mut doc = cmd::cargo();
    doc.arg("test").args(cargo_test_args(args)).arg("--doc");
    if !args.test_args.is_empty() {
        doc.arg("--").args(&args.test_args);
    }
    doc.env(LEDGER_ENV, &ledger);
    let (status, lines) = run_tee(&mut doc)?;
    for line in &lines {
        summary.record(line);
    }
    summary.judge_test_run(status.success(), &args.test_args);
    let left = leftovers(&ledger);
    println!(
        "checked that every namespace, pin and process the tests created is gone: {}",
        if left.is_empty() {
            "yes".to_owned()
        } else {
            format!("{} left behind", left.len())
        }
    );
    for what in left {
        summary
            .problems
            .push(format!("a test left {what} behind (removed now)"));
    }
    // Read above; a leftover is harmless (each run names its own).
    std::fs::remove_file(&ledger).ok();
    Ok(())
}

/// Lists the tests of every binary (with the name filters given) and runs them.
fn run_each_test(
    binaries: &[std::sync::Arc<runner::Binary>],
    args: &Args,
    ledger: &Path,
    summary: &mut Summary,
) -> Result<()> {
    let mut cases = Vec::new();
    for binary in binaries {
        cases.extend(runner::list(binary, &args.test_args)?);
    }
    let plan = plan(args, ledger, Vec::new());
    println!(
        "running {} tests of {} test binaries, {} at a time, each in its own process and \
         killed after {} s (--timeout)",
        cases.len(),
        binaries.len(),
        plan.jobs,
        args.timeout
    );
    runner::run(cases, &plan, |finished| {
        summary.finished(&finished, plan.show_output, "")
    });
    Ok(())
}

/// The labs run a second time against the release daemon, `target/release/enforcer` (the
/// binary that ships), by their module: the daemon and CLI with real packets (block, expiry,
/// reaping, restart, reboot, import, sources), the spool's replay, the data path on every link
/// type it parses (raw IP, VLAN tags, jumbo frames, attach modes), the unit's sandbox with
/// exactly its capabilities, and batched map writes. The test binaries stay the debug ones
/// (`ENFORCER_TEST_DAEMON_PROFILE` makes them run the release `enforcer`), so this costs the
/// release build of `enforcer` (the one `cargo xtask bench` and `package` make: CI, whose quick
/// bench goes first, builds nothing more) and these tests' time. Tests that need the daemon's
/// debug-build hooks are skipped, which is why `enforce_first` (both of its tests) is not here.
const RELEASE_LABS: &[&str] = &[
    "daemon_lab::",
    "spool_lab::",
    "links_lab::",
    "sandbox_lab::",
    "batch_lab::",
];

/// Must match `enforcer_tests::daemon::DAEMON_PROFILE_ENV`.
const DAEMON_PROFILE_ENV: &str = "ENFORCER_TEST_DAEMON_PROFILE";

/// Builds the release binaries and runs [`RELEASE_LABS`] (those the name filters select)
/// against them; each test is reported with ` [release daemon]` after its name.
fn run_release_labs(
    binaries: &[std::sync::Arc<runner::Binary>],
    args: &Args,
    ledger: &Path,
    summary: &mut Summary,
) -> Result<()> {
    let mut cases = Vec::new();
    for binary in binaries.iter().filter(|b| b.is_labs()) {
        cases.extend(
            runner::list(binary, &args.test_args)?
                .into_iter()
                .filter(|c| RELEASE_LABS.iter().any(|m| c.name.starts_with(m))),
        );
    }
    if cases.is_empty() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    // The package set of `cargo xtask bench` and `package`: another set would unify
    // dependency features differently and rebuild everything.
    let build = cmd::status(cmd::cargo().args([
        "build",
        "--release",
        "--bins",
        "-p",
        "enforcer",
        "-p",
        "enforcer-tests",
    ]))?;
    if !build.success() {
        summary.problems.push(format!(
            "cargo build --release failed ({build}); the release labs not run"
        ));
        return Ok(());
    }
    let plan = plan(
        args,
        ledger,
        vec![(DAEMON_PROFILE_ENV.to_owned(), "release".to_owned())],
    );
    println!(
        "running {} lab tests again against target/release/enforcer ({}; --no-release-labs \
         skips them)",
        cases.len(),
        RELEASE_LABS.join(" ")
    );
    let count = cases.len();
    runner::run(cases, &plan, |finished| {
        summary.finished(&finished, plan.show_output, " [release daemon]")
    });
    println!(
        "ran {count} lab tests against the release daemon in {:.0} s (its build included)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// How each test runs: libtest's options, the ledger and `env` in its environment, its limit.
fn plan(args: &Args, ledger: &Path, env: Vec<(String, String)>) -> runner::Plan {
    let run_args = runner::run_args(&args.test_args);
    let mut env = env;
    env.push((LEDGER_ENV.to_owned(), ledger.display().to_string()));
    runner::Plan {
        jobs: test_threads(&run_args),
        show_output: run_args
            .iter()
            .any(|a| a == "--nocapture" || a == "--show-output"),
        run_args,
        env,
        limit: Duration::from_secs(args.timeout),
        slow: SLOW_TESTS,
    }
}

/// `--test-threads N` among libtest's options, else one test per core (libtest's default).
fn test_threads(run_args: &[String]) -> usize {
    let given = run_args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix("--test-threads=")
            .or_else(|| (a == "--test-threads").then(|| run_args.get(i + 1).map(String::as_str))?)
            .and_then(|n| n.parse().ok())
    });
    given.unwrap_or_else(|| thread::available_parallelism().map_or(1, usize::from))
}

/// Kills every process whose environment holds `entry` (`NAME=value`).
fn kill_processes_with_env(entry: &str) -> Vec<(i32, String)> {
    let found = processes_with_env(entry);
    for (pid, _) in &found {
        // SAFETY: kill(2) on a process id we just read; its environment carries our marker,
        // so this run started it.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    found
}

/// Must match `enforcer_tests::LEDGER_ENV`.
const LEDGER_ENV: &str = "ENFORCER_TEST_LEDGER";

/// What the ledger lists that still exists, plus every process still running with the
/// ledger in its environment (started by a test, directly or not). Each is removed (killed)
/// so the next run starts clean.
fn leftovers(ledger: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(ledger).unwrap_or_default();
    let mut left = Vec::new();
    for (kind, what) in ledger_entries(&text) {
        match kind {
            "netns" if Path::new("/run/netns").join(what).exists() => {
                left.push(format!("network namespace {what}"));
                // Best effort: it is reported as left behind either way.
                Command::new("ip")
                    .args(["netns", "del", what])
                    .status()
                    .ok();
            }
            "pin" if Path::new(what).exists() => {
                left.push(format!("bpffs pin directory {what}"));
                std::fs::remove_dir_all(what).ok();
            }
            "user" if account_exists("passwd", what) => {
                left.push(format!("user {what}"));
                Command::new("userdel").arg(what).status().ok();
            }
            "group" if account_exists("group", what) => {
                left.push(format!("group {what}"));
                Command::new("groupdel").arg(what).status().ok();
            }
            _ => {}
        }
    }
    let marker = format!("{LEDGER_ENV}={}", ledger.display());
    for (pid, cmdline) in kill_processes_with_env(&marker) {
        left.push(format!("process {pid} ({cmdline})"));
    }
    left
}

/// Whether `name` is in the `passwd` or `group` database.
fn account_exists(database: &str, name: &str) -> bool {
    Command::new("getent")
        .args([database, name])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `(kind, what)` for each ledger line.
fn ledger_entries(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.lines().filter_map(|l| l.split_once(' '))
}

/// Processes whose environment holds `entry` (`NAME=value`), with their command lines.
fn processes_with_env(entry: &str) -> Vec<(i32, String)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|v| v == entry.as_bytes()) {
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .trim()
                .to_owned();
            found.push((pid, cmdline));
        }
    }
    found
}

/// Clippy with `-D warnings`: the userspace crates, then the eBPF crate, which the workspace
/// build cannot lint (it only builds for bpfel-unknown-none with nightly and `build-std`).
fn lint(summary: &mut Summary) -> Result<()> {
    format_check(summary)?;
    layering_check(summary)?;
    let userspace: &[&str] = &[
        "clippy",
        "--workspace",
        "--exclude",
        "enforcer-ebpf",
        "--all-targets",
    ];
    let ebpf: &[&str] = &[
        "+nightly",
        "clippy",
        "-p",
        "enforcer-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
    ];
    for (what, args) in [("the userspace crates", userspace), ("enforcer-ebpf", ebpf)] {
        let status = cmd::status(cmd::cargo().args(args).args(["--", "-D", "warnings"]))?;
        if !status.success() {
            summary
                .problems
                .push(format!("clippy on {what} failed ({status})"));
        }
    }
    Ok(())
}

/// No import cycle between sibling modules of the enforcer crate (see [`crate::layering`]).
fn layering_check(summary: &mut Summary) -> Result<()> {
    let src = cmd::repo_root().join("enforcer/src");
    let cycles = crate::layering::cycles(&src)?;
    for cycle in &cycles {
        eprintln!("{cycle}");
    }
    if !cycles.is_empty() {
        summary.problems.push(format!(
            "{} import cycle(s) between modules of enforcer/src (printed above): move the shared \
             item to the module both use, or to a new leaf module",
            cycles.len()
        ));
    }
    let breaches = crate::layering::leaf_breaches(&src)?;
    for breach in &breaches {
        eprintln!("{breach}");
    }
    if !breaches.is_empty() {
        summary.problems.push(format!(
            "{} leaf module(s) of enforcer/src reach modules behind them (printed above): move \
             the type they need into the leaf, or keep it out of the leaf's types",
            breaches.len()
        ));
    }
    Ok(())
}

/// `cargo xtask fmt --check` (see [`crate::fmt`]).
fn format_check(summary: &mut Summary) -> Result<()> {
    for dir in crate::fmt::format(true)? {
        summary.problems.push(format!(
            "code in {} is not formatted: run `cargo xtask fmt`, then commit",
            dir.display()
        ));
    }
    Ok(())
}

/// Runs `cmd`, copying its stdout and stderr to ours line by line as they arrive, and
/// returns its status with every line it printed (both streams; order between them is
/// not kept, which does not matter for counting).
fn run_tee(cmd: &mut Command) -> Result<(std::process::ExitStatus, Vec<String>)> {
    cmd::echo(cmd);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start `{}`", cmd::display(cmd)))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    // One thread per stream: reading both from one thread could deadlock when the
    // child fills the pipe we are not reading.
    let out = thread::spawn(move || tee(stdout, io::stdout()));
    let err = thread::spawn(move || tee(stderr, io::stderr()));
    let mut lines = out.join().expect("stdout reader panicked")?;
    lines.extend(err.join().expect("stderr reader panicked")?);
    let status = child.wait().context("waiting for cargo test")?;
    Ok((status, lines))
}

/// Copies `input` to `output` line by line and returns the lines (lossy UTF-8, since
/// test output can contain anything).
fn tee(input: impl Read, mut output: impl Write) -> io::Result<Vec<String>> {
    let mut reader = BufReader::new(input);
    let mut lines = Vec::new();
    let mut buf = Vec::new();
    while reader.read_until(b'\n', &mut buf)? > 0 {
        output.write_all(&buf)?;
        output.flush()?;
        let line = String::from_utf8_lossy(&buf);
        lines.push(line.trim_end_matches(['\n', '\r']).to_owned());
        buf.clear();
    }
    Ok(lines)
}

impl Summary {
    /// Takes in one line of libtest or cargo output.
    fn record(&mut self, line: &str) {
        if line.starts_with("error: test failed, to rerun pass")
            || line.starts_with("error: doctest failed, to rerun pass")
        {
            self.failed_binaries += 1;
        } else if line.starts_with("test result: FAILED") {
            self.failed_results += 1;
        }
        if let Some(result) = line.strip_prefix("test result: ") {
            let (passed, failed, ignored) = result_counts(result);
            self.passed += passed;
            self.failed += failed;
            self.ignored += ignored;
        } else if let Some(name) = failed_test_name(line) {
            self.failed_tests.push(name.to_owned());
        }
    }

    /// Takes in one test the runner ran, and prints its line (and its output when it failed,
    /// or when `show_output`).
    fn finished(&mut self, f: &runner::Finished, show_output: bool, tag: &str) {
        let name = format!("{}{tag}", f.case.full_name());
        let skipped = f.verdict == runner::Verdict::Passed && needed_test_hooks(&f.output);
        let why = match &f.verdict {
            runner::Verdict::Passed if skipped => {
                self.ignored += 1;
                None
            }
            runner::Verdict::Passed => {
                self.passed += 1;
                None
            }
            runner::Verdict::Ignored => {
                self.ignored += 1;
                None
            }
            runner::Verdict::Failed => Some(String::new()),
            runner::Verdict::TimedOut(limit) => Some(format!(
                " (timed out: killed after {} s with every process it started)",
                limit.as_secs_f64()
            )),
            runner::Verdict::Crashed(how) => Some(format!(" ({how})")),
        };
        if why.is_some() || show_output {
            println!("---- {name} output ----");
            print!("{}", f.output);
            println!("---- end of {name} ----");
        }
        let secs = f.elapsed.as_secs_f64();
        match why {
            None if f.verdict == runner::Verdict::Ignored => println!("test {name} ... ignored"),
            None if skipped => println!(
                "test {name} ... skipped: it needs the daemon's debug-build test hooks ({secs:.1} s)"
            ),
            None => println!("test {name} ... ok ({secs:.1} s)"),
            Some(why) => {
                println!("test {name} ... FAILED{why} ({secs:.1} s)");
                self.failed += 1;
                self.failed_tests.push(format!("{name}{why}"));
            }
        }
    }

    /// After `cargo test` ended: what went wrong that no failing test accounts for.
    fn judge_test_run(&mut self, success: bool, test_args: &[String]) {
        let crashed = self.failed_binaries.saturating_sub(self.failed_results);
        for _ in 0..crashed {
            self.problems.push(
                "a test binary crashed or was killed before reporting its results; see \
                 `error: test failed` above"
                    .to_owned(),
            );
        }
        if !success && self.failed == 0 && crashed == 0 {
            // No test failed, yet cargo did: a test binary did not build.
            self.problems.push(
                "cargo test failed without a failing test: a test binary did not build; see \
                 the output above"
                    .to_owned(),
            );
        }
        if success && self.passed + self.failed + self.ignored == 0 {
            let filter = test_args
                .iter()
                .filter(|a| !a.starts_with('-'))
                .cloned()
                .collect::<Vec<_>>();
            self.problems.push(if filter.is_empty() {
                "no test ran".to_owned()
            } else {
                format!(
                    "no test matches `{}`: check the name (`cargo test -- --list` lists them)",
                    filter.join(" ")
                )
            });
        }
    }

    /// `N passed, N failed[, N skipped]`, where failures that are not a failing test (a step
    /// that failed, a crashed binary) count as one each.
    fn counts(&self) -> String {
        let failed = self.failed + self.problems.len() as u64;
        let mut counts = format!("{} passed, {failed} failed", self.passed);
        if self.ignored > 0 {
            counts += &format!(", {} skipped", self.ignored);
        }
        counts
    }

    fn print(&self) {
        println!();
        println!("==== summary ====");
        if !self.failed_tests.is_empty() {
            println!("failed tests:");
            for name in &self.failed_tests {
                println!("    {name}");
            }
        }
        for problem in &self.problems {
            println!("error: {problem}");
        }
        println!("{}", self.counts());
    }
}

/// Whether a test that passed returned early because the daemon under test is a release build
/// (`enforcer_tests::test_hooks_or_skip` printed its line, which starts with `skipped NAME: `
/// and names the hooks): it is counted as skipped, not passed.
fn needed_test_hooks(output: &str) -> bool {
    output.lines().any(|l| {
        l.starts_with("skipped ") && l.contains(": it needs the daemon's debug-build test hooks")
    })
}

/// `(passed, failed, ignored)` in libtest's result line (after `test result: `):
/// `ok. 3 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.01s`.
fn result_counts(result: &str) -> (u64, u64, u64) {
    let mut counts = (0, 0, 0);
    for part in result.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(label), Some(count)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(count) = count.parse::<u64>() else {
            continue;
        };
        match label {
            "passed" => counts.0 += count,
            "failed" => counts.1 += count,
            "ignored" => counts.2 += count,
            _ => {}
        }
    }
    counts
}

/// The name in `test <name> ... FAILED`. Doc tests have spaces in their names
/// (`src/lib.rs - f (line 3)`), so the name is everything between the markers.
fn failed_test_name(line: &str) -> Option<&str> {
    let name = line.strip_prefix("test ")?.strip_suffix(" ... FAILED")?;
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_results_and_collects_failures() {
        let mut summary = Summary::default();
        for line in [
            "test a::ok ... ok",
            "test a::bad ... FAILED",
            "test src/lib.rs - f (line 3) ... FAILED",
            "test result: FAILED. 3 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 2 filtered out; finished in 0.00s",
        ] {
            summary.record(line);
        }
        assert_eq!((summary.passed, summary.failed, summary.ignored), (7, 2, 1));
        assert_eq!(summary.failed_tests, ["a::bad", "src/lib.rs - f (line 3)"]);
    }

    #[test]
    fn a_failed_step_is_counted_in_the_last_line() {
        let mut summary = Summary::default();
        summary.record("test result: ok. 4 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s");
        summary
            .problems
            .push("clippy on the userspace crates failed".to_owned());
        assert_eq!(summary.counts(), "4 passed, 1 failed");
        let mut setup = Summary::default();
        setup.problems.push("setup failed".to_owned());
        assert_eq!(setup.counts(), "0 passed, 1 failed");
    }

    #[test]
    fn a_crashed_binary_counts_even_when_another_binary_had_a_failing_test() {
        let mut summary = Summary::default();
        for line in [
            "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "error: test failed, to rerun pass `-p enforcer-tests --test daemon_lab`",
            // This one died of a signal: no `test result` line.
            "error: test failed, to rerun pass `-p enforcer-tests --test verdicts`",
        ] {
            summary.record(line);
        }
        summary.judge_test_run(false, &[]);
        assert_eq!(summary.problems.len(), 1, "{:?}", summary.problems);
        assert_eq!(summary.counts(), "3 passed, 2 failed");
    }

    #[test]
    fn a_filter_matching_no_test_is_an_error() {
        let mut summary = Summary::default();
        summary.record("test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 12 filtered out; finished in 0.00s");
        summary.judge_test_run(true, &["no_such_test".to_owned(), "--nocapture".to_owned()]);
        assert!(
            summary.problems[0].contains("no test matches `no_such_test`"),
            "{:?}",
            summary.problems
        );
        assert_eq!(summary.counts(), "0 passed, 1 failed");
    }

    #[test]
    fn a_test_that_skipped_for_want_of_the_debug_hooks_is_counted_as_skipped() {
        let passed = "running 1 test\ntest a ... ok\n\ntest result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 9 filtered out; finished in 0.00s\n";
        let skipped = format!(
            "running 1 test\nskipped a: it needs the daemon's debug-build test hooks, which a \
             release build does not have\n{}",
            &passed["running 1 test\n".len()..]
        );
        let mut summary = Summary::default();
        for output in [passed.to_owned(), skipped] {
            let finished = runner::Finished::passed_for_test("a", output);
            summary.finished(&finished, false, "");
        }
        assert_eq!(summary.counts(), "1 passed, 0 failed, 1 skipped");
    }

    #[test]
    fn a_build_failure_without_results_is_a_failure() {
        let mut summary = Summary::default();
        summary.judge_test_run(false, &[]);
        assert_eq!(summary.counts(), "0 passed, 1 failed");
    }

    #[test]
    fn leftovers_are_found_by_the_ledger_and_by_the_environment() {
        let dir = std::env::temp_dir().join(format!("xtask-ledger-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("pin")).unwrap();
        let ledger = dir.join("ledger.txt");
        let gone = dir.join("gone");
        std::fs::write(
            &ledger,
            format!(
                "pin {}\npin {}\n",
                dir.join("pin").display(),
                gone.display()
            ),
        )
        .unwrap();
        // A process started with the ledger in its environment and still running. Wait until
        // /proc shows it with that environment (a loaded machine may not have exec'd it yet).
        let mut child = Command::new("sleep")
            .arg("30")
            .env(LEDGER_ENV, &ledger)
            .spawn()
            .unwrap();
        let marker = format!("{LEDGER_ENV}={}", ledger.display());
        let pid = i32::try_from(child.id()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !processes_with_env(&marker)
            .iter()
            .any(|(p, cmd)| *p == pid && cmd.contains("sleep"))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "/proc never showed `sleep 30` with the ledger in its environment"
            );
            thread::sleep(Duration::from_millis(10));
        }
        let left = leftovers(&ledger);
        // Cleanup (leftovers() killed it already): the asserts below are the test.
        child.kill().ok();
        child.wait().ok();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(
            left[0].contains("pin directory") && left[0].ends_with("/pin"),
            "{left:?}"
        );
        assert!(
            left[1].contains(&format!("process {}", child.id())) && left[1].contains("sleep 30"),
            "{left:?}"
        );
    }
}
