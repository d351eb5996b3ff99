//! `cargo xtask bench`: build release binaries and run the benchmark driver.

use std::process::ExitCode;

use anyhow::Result;

use crate::{cmd, setup};

#[derive(clap::Args)]
pub struct Args {
    /// Arguments passed to `enforcer-bench` unchanged (e.g. `--quick`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub fn run(args: &Args) -> Result<ExitCode> {
    setup::run()?;
    // `--workspace` would include the eBPF crate, which only builds for the BPF target
    // (enforcer/build.rs builds it), hence the exclude.
    cmd::run(cmd::cargo().args([
        "build",
        "--release",
        "--workspace",
        "--exclude",
        "enforcer-ebpf",
        "--bins",
    ]))?;
    cmd::run_release_bin("enforcer-bench", &args.args)
}
