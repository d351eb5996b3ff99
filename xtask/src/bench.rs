//! `cargo xtask bench`: build release binaries and run the benchmark driver.

use std::process::ExitCode;

use anyhow::Result;

use crate::{cmd, setup};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Arguments passed to `enforcer-bench` unchanged (e.g. `--quick`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub(crate) fn run(args: &Args) -> Result<ExitCode> {
    setup::run()?;
    // The bench drives the daemon, the CLI and the hook too, so all binaries must be fresh.
    cmd::build_and_run_release_bin(
        &["enforcer", "enforcer-tests"],
        "enforcer-bench",
        &args.args,
    )
}
