//! `cargo xtask demo`: build release binaries and run the end-to-end demo.

use std::process::ExitCode;

use anyhow::Result;

use crate::{cmd, setup};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Arguments passed to `enforcer-demo` unchanged.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

pub(crate) fn run(args: &Args) -> Result<ExitCode> {
    setup::run()?;
    // The demo drives the daemon binary, so both crates' binaries must be fresh.
    cmd::build_and_run_release_bin(&["enforcer", "enforcer-tests"], "enforcer-demo", &args.args)
}
