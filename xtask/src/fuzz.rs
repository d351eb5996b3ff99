//! `cargo xtask fuzz`: build the cargo-fuzz targets in `fuzz/` and run each for a while.
//!
//! Installs cargo-fuzz when it is missing (as `setup` installs bpf-linker), builds every target
//! with the nightly toolchain, then runs them one at a time, one libFuzzer worker each, from the
//! committed seed corpus (`fuzz/seeds/<target>`) plus the working corpus libFuzzer grows
//! (`fuzz/corpus/<target>`, not committed). Each target's libFuzzer output goes to
//! `fuzz/logs/<target>.log`; one line per target is printed: executions, executions per
//! second, coverage. A crash (a panic, a failed property, a timeout, running out of memory)
//! fails the run with the path of the input that caused it, under `fuzz/artifacts/<target>/`.
//! See docs/fuzzing.md.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// What `cargo install` gets when cargo-fuzz is missing.
const CARGO_FUZZ_INSTALL: &str = "cargo-fuzz@0.13.2";
/// The toolchain cargo-fuzz builds with (the one that builds the eBPF crate).
const NIGHTLY: &str = "nightly";

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Seconds each target runs.
    #[arg(long, value_name = "S", default_value_t = 60)]
    time: u64,
    /// Run only this target (repeatable; default: every target in fuzz/).
    #[arg(long = "target", value_name = "T")]
    targets: Vec<String>,
    /// Stop a target after this many executions, if that comes before --time.
    #[arg(long, value_name = "N")]
    runs: Option<u64>,
}

/// How one target's run went.
struct Outcome {
    target: String,
    stats: Stats,
    /// The input that crashed it, if it crashed.
    crash: Option<PathBuf>,
    log: PathBuf,
    success: bool,
}

/// What libFuzzer reports at the end of a run (`-print_final_stats=1`) and on its last status
/// line.
#[derive(Debug, Default, PartialEq, Eq)]
struct Stats {
    executions: u64,
    per_sec: u64,
    seconds: u64,
    coverage: u64,
    corpus: u64,
}

pub(crate) fn run(args: &Args) -> Result<ExitCode> {
    ensure_cargo_fuzz()?;
    let dir = cmd::repo_root().join("fuzz");
    let all = list_targets(&dir)?;
    let targets = if args.targets.is_empty() {
        all.clone()
    } else {
        args.targets.clone()
    };
    if let Some(unknown) = targets.iter().find(|t| !all.contains(t)) {
        bail!(
            "no fuzz target `{unknown}` in fuzz/ (targets: {})",
            all.join(", ")
        );
    }
    cmd::run(fuzz_cmd(&dir).args(["build", "-s", "none"]))?;
    let mut outcomes = Vec::new();
    for target in &targets {
        let outcome = run_target(&dir, target, args)?;
        println!("{}", summary_line(&outcome));
        outcomes.push(outcome);
    }
    let failed: Vec<_> = outcomes.iter().filter(|o| !o.success).collect();
    for o in &failed {
        match &o.crash {
            Some(crash) => eprintln!(
                "fuzz target {} crashed on {} (reproduce: cd fuzz && cargo +{NIGHTLY} fuzz run -s none {} {}); log: {}",
                o.target,
                crash.display(),
                o.target,
                crash.display(),
                o.log.display()
            ),
            None => eprintln!(
                "fuzz target {} failed without a crash file; see {}",
                o.target,
                o.log.display()
            ),
        }
    }
    println!(
        "fuzz: {} targets, {} executions, {} failed",
        outcomes.len(),
        outcomes.iter().map(|o| o.stats.executions).sum::<u64>(),
        failed.len()
    );
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `cargo fuzz` on the nightly, in `dir`, never with the variables of the stable cargo that
/// runs xtask (which would make cargo-fuzz build with it) and never into the workspace's
/// target directory. The eBPF object is not built: no target loads it.
fn fuzz_cmd(dir: &Path) -> Command {
    let mut c = Command::new("cargo");
    c.arg("fuzz")
        .current_dir(dir)
        .env("RUSTUP_TOOLCHAIN", NIGHTLY)
        .env("AYA_BUILD_SKIP", "1");
    for var in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
    ] {
        c.env_remove(var);
    }
    c
}

/// Installs cargo-fuzz if `cargo fuzz` does not run.
fn ensure_cargo_fuzz() -> Result<()> {
    if !cargo_fuzz_runs()? {
        println!("installing: {CARGO_FUZZ_INSTALL} (`cargo fuzz` does not run)");
        cmd::run(cmd::cargo().args(["install", CARGO_FUZZ_INSTALL, "--locked"]))?;
        if !cargo_fuzz_runs()? {
            bail!(
                "`cargo fuzz` still does not run after installing {CARGO_FUZZ_INSTALL}; is ~/.cargo/bin on PATH?"
            );
        }
    }
    let nightly = cmd::probe(Command::new("rustup").args(["run", NIGHTLY, "rustc", "--version"]))?;
    if !nightly.is_some_and(|o| o.status.success()) {
        bail!(
            "the {NIGHTLY} toolchain is missing: run `cargo xtask setup` (or `rustup toolchain install {NIGHTLY}`)"
        );
    }
    Ok(())
}

/// Whether `cargo fuzz --version` runs.
fn cargo_fuzz_runs() -> Result<bool> {
    Ok(
        cmd::probe(Command::new("cargo").args(["fuzz", "--version"]))?
            .is_some_and(|o| o.status.success()),
    )
}

/// The targets `cargo fuzz list` reports.
fn list_targets(dir: &Path) -> Result<Vec<String>> {
    let out = cmd::probe_stdout(fuzz_cmd(dir).arg("list"))?;
    let targets: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        bail!("`cargo fuzz list` found no targets in {}", dir.display());
    }
    Ok(targets)
}

/// Runs one target for `args.time` seconds (or `args.runs` executions) with one worker.
fn run_target(dir: &Path, target: &str, args: &Args) -> Result<Outcome> {
    let corpus = dir.join("corpus").join(target);
    let seeds = dir.join("seeds").join(target);
    let logs = dir.join("logs");
    for d in [&corpus, &logs] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let log = logs.join(format!("{target}.log"));
    let log_file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut c = fuzz_cmd(dir);
    c.args(["run", "-s", "none", target])
        .arg(&corpus)
        .arg(&seeds)
        .args([
            "--",
            "-print_final_stats=1",
            "-timeout=10",
            "-rss_limit_mb=2048",
        ])
        .arg(format!("-max_total_time={}", args.time));
    if let Some(runs) = args.runs {
        c.arg(format!("-runs={runs}"));
    }
    c.stdout(log_file.try_clone()?).stderr(log_file);
    let status = cmd::status(&mut c)?;
    let text = fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
    Ok(Outcome {
        target: target.to_owned(),
        stats: parse_stats(&text),
        crash: crash_file(&text).map(|p| if p.is_absolute() { p } else { dir.join(p) }),
        log,
        success: status.success(),
    })
}

fn summary_line(o: &Outcome) -> String {
    let s = &o.stats;
    let verdict = match (&o.crash, o.success) {
        (_, true) => "no crash".to_owned(),
        (Some(crash), false) => format!("CRASH {}", crash.display()),
        (None, false) => format!("FAILED (see {})", o.log.display()),
    };
    format!(
        "fuzz {}: {} executions in {} s ({}/s), coverage {}, corpus {}; {verdict}",
        o.target, s.executions, s.seconds, s.per_sec, s.coverage, s.corpus
    )
}

/// The final statistics, the `Done` line and the last status line
/// (`#N ... cov: C ft: F corp: K/...`).
fn parse_stats(log: &str) -> Stats {
    let mut stats = Stats::default();
    for line in log.lines() {
        let number = |prefix: &str| {
            line.strip_prefix(prefix)
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let Some(n) = number("stat::number_of_executed_units:") {
            stats.executions = n;
        } else if let Some(n) = number("stat::average_exec_per_sec:") {
            stats.per_sec = n;
        } else if let Some(rest) = line.strip_prefix("Done ") {
            // `Done 1200000 runs in 60 second(s)`
            stats.seconds = rest
                .split_whitespace()
                .nth(3)
                .and_then(|w| w.parse().ok())
                .unwrap_or(stats.seconds);
        } else if line.starts_with('#') {
            let field = |name: &str| {
                let mut words = line.split_whitespace();
                words.find(|w| *w == name)?;
                words.next()?.split('/').next()?.parse::<u64>().ok()
            };
            stats.coverage = field("cov:").unwrap_or(stats.coverage);
            stats.corpus = field("corp:").unwrap_or(stats.corpus);
        }
    }
    stats
}

/// The input libFuzzer saved when the target crashed (`Test unit written to PATH`).
fn crash_file(log: &str) -> Option<PathBuf> {
    log.lines()
        .filter_map(|l| {
            l.split_once("Test unit written to ")
                .map(|(_, p)| PathBuf::from(p.trim()))
        })
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "INFO: Seed: 1\n\
        #2\tINITED cov: 120 ft: 130 corp: 8/512b exec/s: 0 rss: 40Mb\n\
        #65536\tpulse  cov: 361 ft: 902 corp: 95/4096b lim: 652 exec/s: 21845 rss: 52Mb\n\
        #1200000\tDONE   cov: 380 ft: 950 corp: 101/5Kb lim: 4096 exec/s: 20000 rss: 60Mb\n\
        Done 1200000 runs in 60 second(s)\n\
        stat::number_of_executed_units: 1200000\n\
        stat::average_exec_per_sec:     20000\n\
        stat::new_units_added:          93\n";

    #[test]
    fn reads_libfuzzers_final_statistics() {
        let s = parse_stats(LOG);
        assert_eq!(
            s,
            Stats {
                executions: 1_200_000,
                per_sec: 20_000,
                seconds: 60,
                coverage: 380,
                corpus: 101,
            }
        );
    }

    #[test]
    fn finds_the_crash_file() {
        let log = "thread '<unnamed>' panicked at fuzz_targets/config.rs:3:5\n\
            ==1== ERROR: libFuzzer: deadly signal\n\
            artifact_prefix='/r/fuzz/artifacts/config/'; Test unit written to /r/fuzz/artifacts/config/crash-ab12\n\
            Base64: YQ==\n";
        assert_eq!(
            crash_file(log),
            Some(PathBuf::from("/r/fuzz/artifacts/config/crash-ab12"))
        );
        assert_eq!(crash_file(LOG), None);
    }
}
