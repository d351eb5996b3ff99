//! `enforcer-bench`: measures the enforcer against its peers and writes the results (run it
//! with `cargo xtask bench [--quick]`).
//!
//! 1. [`datapath`]: the XDP program's cost per packet (`BPF_PROG_TEST_RUN`).
//! 2. [`traffic`]: real traffic between two namespaces through the enforcer, iptables, ipset
//!    and nftables.
//! 3. [`control`]: how fast blocks get into force: per-process triggers, batch import, latency.
//! 4. [`expiry`]: how late blocks end, against a once-a-second userspace timer.
//! 5. [`memory`]: kernel and daemon memory per block, and the reaper's cost.
//! 6. [`crowdsec`]: decision → drop on a fleet of two bouncers, and a full sync from a real LAPI.
//!
//! [`report`] writes `results.json`, `results.md` and one SVG per section, and the Markdown is
//! printed. Progress goes to stderr, so stdout is only the report. Everything the run creates
//! (namespaces, pins, firewall rules inside the namespaces, daemons) is removed when it ends,
//! pass or fail.

mod control;
mod crowdsec;
mod datapath;
mod expiry;
mod firewall;
mod flood;
mod hook;
mod layout5;
mod memory;
mod multicpu;
mod reads;
mod report;
mod stats;
mod traffic;
mod wire;

use std::{path::PathBuf, time::Instant};

use anyhow::{Result, ensure};
use clap::{Parser, ValueEnum};

#[derive(Parser)]
#[command(about = "Benchmark the enforcer against its peers and write the results")]
struct Args {
    /// A smoke run: fewer and shorter rounds, nothing above 10k–100k entries (under 3 minutes).
    #[arg(long)]
    quick: bool,
    /// Run only these sections (comma-separated) [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Section>,
    /// Where to write results.json, results.md and the charts [default: <repo>/bench-results/latest].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Another build of `enforcer` (e.g. an earlier commit's `target/release/enforcer`, copied
    /// to `target/baseline/<commit>/enforcer`: the file must keep its name): the CrowdSec
    /// startup sync, the control plane's imports and latencies, the daemon's RSS and reads
    /// against writes are then run with both builds in the same run, and the report compares
    /// them.
    #[arg(long, value_name = "PATH")]
    baseline_enforcer: Option<PathBuf>,
    /// An earlier build's XDP object (`target/<profile>/build/enforcer-*/out/enforcer-xdp`, of
    /// map layout 5, as tests/fixtures/enforcer-xdp-layout5.o, or of this build's layout): the
    /// data path section then times its Ethernet program beside this build's, on the same
    /// frames (and for this build's layout the same maps), in the same rounds, and reports the
    /// ratio.
    #[arg(long, value_name = "PATH")]
    baseline_object: Option<PathBuf>,
    /// Data path: measure only the comparison with `--baseline-object` (a quick A/B run of a
    /// data path change, about a minute), not the map fills, counters, parses and CPUs.
    #[arg(long, requires = "baseline_object")]
    baseline_only: bool,
    /// Data path: measure only the cases of many prefix lengths over one source (a minute or
    /// two), not the rest of the section.
    #[arg(long, conflicts_with = "baseline_only")]
    lengths_only: bool,
    /// Control plane: leave these parts out (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    control_skip: Vec<control::Skip>,
    /// Control plane: import sizes, overriding the run's default (comma-separated).
    #[arg(long, value_name = "N", value_delimiter = ',')]
    imports: Vec<usize>,
    /// CrowdSec: decisions timed on the fleet, overriding the run's default (for profiling).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    crowdsec_rounds: Option<u64>,
    /// Expiry: blocks per variant, overriding the run's default (more than 100 run as batches of
    /// 100; e.g. 500 for a tail that a p99 can stand on).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    expiry_blocks: Option<u64>,
    /// CrowdSec: startup syncs per build, overriding the run's default.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    crowdsec_sync_runs: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Section {
    Datapath,
    Traffic,
    Control,
    Expiry,
    Memory,
    Crowdsec,
    Reads,
    Flood,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    ensure!(
        euid == 0,
        "the benchmark loads XDP programs, creates namespaces and pins maps: run it as root \
         (`cargo xtask bench`)"
    );
    // The tests crate (or xtask, which starts the bench) sits one level below the repository
    // root; read at run time first, so a binary built in another checkout reports here.
    let repo = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_owned();
    let out = args
        .out
        .unwrap_or_else(|| repo.join("bench-results/latest"));
    let runs = |s: Section| args.only.is_empty() || args.only.contains(&s);
    let q = args.quick;

    let started = Instant::now();
    let mut report = report::Report {
        machine: report::Machine::detect(&repo),
        quick: q,
        elapsed_seconds: 0.0,
        section_seconds: Vec::new(),
        targets: Vec::new(),
        datapath: None,
        traffic: None,
        control: None,
        expiry: None,
        memory: None,
        crowdsec: None,
        reads: None,
        flood: None,
    };
    let times = &mut report.section_seconds;
    if runs(Section::Datapath) {
        let s = if q {
            datapath::Settings::QUICK
        } else {
            datapath::Settings::FULL
        };
        let part = match (args.baseline_only, args.lengths_only) {
            (true, _) => datapath::Part::Baseline,
            (_, true) => datapath::Part::Lengths,
            _ => datapath::Part::All,
        };
        report.datapath = Some(timed(times, "data path", || {
            datapath::run(&s, args.baseline_object.as_deref(), part)
        })?);
    }
    if runs(Section::Traffic) {
        let s = if q {
            traffic::Settings::QUICK
        } else {
            traffic::Settings::FULL
        };
        report.traffic = Some(timed(times, "traffic", || traffic::run(&s))?);
    }
    if runs(Section::Control) {
        let s = if q {
            control::Settings::QUICK
        } else {
            control::Settings::FULL
        };
        report.control = Some(timed(times, "control plane", || {
            control::run(
                &s,
                &args.control_skip,
                &args.imports,
                args.baseline_enforcer.as_deref(),
            )
        })?);
    }
    if runs(Section::Expiry) {
        let mut s = if q {
            expiry::Settings::QUICK
        } else {
            expiry::Settings::FULL
        };
        s.blocks = args.expiry_blocks.map_or(s.blocks, |n| n as usize);
        report.expiry = Some(timed(times, "expiry", || expiry::run(&s))?);
    }
    if runs(Section::Memory) {
        let s = if q {
            memory::Settings::QUICK
        } else {
            memory::Settings::FULL
        };
        report.memory = Some(timed(times, "memory", || {
            memory::run(&s, args.baseline_enforcer.as_deref())
        })?);
    }
    if runs(Section::Crowdsec) {
        let mut s = if q {
            crowdsec::Settings::QUICK
        } else {
            crowdsec::Settings::FULL
        };
        s.rounds = args.crowdsec_rounds.map_or(s.rounds, |n| n as usize);
        s.sync_runs = args.crowdsec_sync_runs.map_or(s.sync_runs, |n| n as usize);
        report.crowdsec = Some(timed(times, "crowdsec", || {
            crowdsec::run(&s, args.baseline_enforcer.as_deref())
        })?);
    }
    if runs(Section::Reads) {
        let s = if q {
            reads::Settings::QUICK
        } else {
            reads::Settings::FULL
        };
        report.reads = Some(timed(times, "reads", || {
            reads::run(&s, args.baseline_enforcer.as_deref())
        })?);
    }
    if runs(Section::Flood) {
        let s = if q {
            flood::Settings::QUICK
        } else {
            flood::Settings::FULL
        };
        report.flood = Some(timed(times, "flood", || flood::run(&s))?);
    }
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    report.judge();
    let markdown = report::write(&out, &report)?;
    print!("{markdown}");
    eprintln!("results in {}", out.display());
    // A case whose filter did not filter measured nothing worth reporting, and a block that
    // ended before its deadline broke a promise: either fails the run.
    let mut failures = report
        .traffic
        .as_ref()
        .map(traffic::Results::failures)
        .unwrap_or_default();
    failures.extend(
        report
            .expiry
            .as_ref()
            .map(expiry::Results::failures)
            .unwrap_or_default(),
    );
    ensure!(
        failures.is_empty(),
        "{} case(s) failed their functional check:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    Ok(())
}

/// Runs one section, noting how long it took.
fn timed<T>(
    times: &mut Vec<(String, f64)>,
    name: &str,
    section: impl FnOnce() -> Result<T>,
) -> Result<T> {
    eprintln!("== {name}");
    let started = Instant::now();
    let results = section()?;
    times.push((name.to_owned(), started.elapsed().as_secs_f64()));
    Ok(results)
}
