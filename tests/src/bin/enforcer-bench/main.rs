//! `enforcer-bench`: measures the enforcer and writes the results (run it with
//! `cargo xtask bench [--quick]`).
//!
//! Section 1 ([`datapath`]) times the XDP program per packet with `BPF_PROG_TEST_RUN`.
//! [`report`] writes `results.json`, `results.md` and `datapath.svg`, and the Markdown is printed.
//! Progress goes to stderr, so stdout is only the table.

mod datapath;
mod report;

use std::{path::PathBuf, time::Instant};

use anyhow::{Result, ensure};
use clap::Parser;

#[derive(Parser)]
#[command(about = "Benchmark the enforcer's data path and write the results")]
struct Args {
    /// A smoke run: fewer and shorter rounds, no map larger than 100k entries (under a minute).
    #[arg(long)]
    quick: bool,
    /// Where to write results.json, results.md and datapath.svg [default: <repo>/bench-results/latest].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "the benchmark loads XDP programs and pins maps: run it as root (`cargo xtask bench`)"
    );
    // The tests crate sits one level below the repository root.
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_owned();
    let out = args
        .out
        .unwrap_or_else(|| repo.join("bench-results/latest"));
    let settings = if args.quick {
        datapath::Settings::QUICK
    } else {
        datapath::Settings::FULL
    };

    let started = Instant::now();
    let machine = report::Machine::detect(&repo);
    let datapath = datapath::run(&settings)?;
    let report = report::Report {
        machine,
        settings,
        elapsed_seconds: started.elapsed().as_secs_f64(),
        datapath,
    };
    let markdown = report::write(&out, &report)?;
    print!("{markdown}");
    eprintln!("results in {}", out.display());
    Ok(())
}
