//! Project automation: `cargo xtask <setup|test|demo|bench|fuzz|fmt|package>`.
//!
//! Everything lives in Rust (no shell scripts beyond `.ci/run`) so that a fresh machine
//! needs only rustup and cargo to get from clone to green tests.

mod bench;
mod cmd;
mod demo;
mod fmt;
mod fuzz;
mod layering;
mod package;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, test and demo helpers for enforcer"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check and install what builds and tests need (idempotent; needs root).
    Setup,
    /// Run setup, build the workspace, run all tests and lint every crate with clippy.
    Test(test::Args),
    /// Run setup, build in release mode and run `enforcer-demo`.
    Demo(demo::Args),
    /// Run setup, build in release mode and run `enforcer-bench`.
    Bench(bench::Args),
    /// Build the fuzz targets (cargo-fuzz, nightly) and run each for a while (docs/fuzzing.md).
    Fuzz(fuzz::Args),
    /// Format the workspace and the fuzz crate as the lint step checks them (rustfmt.toml,
    /// then nightly rustfmt's import grouping); `--check` only reports.
    Fmt(fmt::Args),
    /// Build a Debian package (.deb) of the release build.
    Package(package::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Setup => setup::run().map(|()| ExitCode::SUCCESS),
        // `test` reports its own errors so that its summary stays the last line printed.
        Command::Test(args) => Ok(test::run(&args)),
        Command::Demo(args) => demo::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Fuzz(args) => fuzz::run(&args),
        Command::Fmt(args) => fmt::run(&args),
        Command::Package(args) => package::run(&args).map(|()| ExitCode::SUCCESS),
    };
    result.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::FAILURE
    })
}
