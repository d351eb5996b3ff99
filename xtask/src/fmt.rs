//! `cargo xtask fmt [--check]`: rustfmt with the stable options of rustfmt.toml, then the
//! import grouping aya uses (nightly rustfmt's unstable options, given on the command line so
//! that the stable `cargo fmt` stays quiet). Both run on the workspace and on the fuzz crate,
//! which is a workspace of its own. The lint step of `cargo xtask test` runs the check.

use std::path::PathBuf;

use anyhow::Result;

use crate::cmd;

/// The unstable options for the import grouping (std, external crates, this crate; one `use`
/// per crate).
pub(crate) const IMPORTS: &str = "group_imports=StdExternalCrate,imports_granularity=Crate";

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Only check: list what is not formatted and fail, changing nothing.
    #[arg(long)]
    check: bool,
}

pub(crate) fn run(args: &Args) -> Result<std::process::ExitCode> {
    let unformatted = format(args.check)?;
    for dir in &unformatted {
        eprintln!(
            "error: code in {} is not formatted: run `cargo xtask fmt`, then commit",
            dir.display()
        );
    }
    Ok(if unformatted.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// Formats (or with `check`, checks) both workspaces; returns the directories whose code was
/// not formatted (always empty without `check`, unless rustfmt itself fails).
pub(crate) fn format(check: bool) -> Result<Vec<PathBuf>> {
    let mut unformatted = Vec::new();
    for dir in [".", "fuzz"] {
        let dir = cmd::repo_root().join(dir);
        let mut stable = vec!["fmt", "--all"];
        let mut imports = vec!["+nightly", "fmt", "--all"];
        if check {
            stable.push("--check");
            imports.push("--check");
        }
        imports.extend(["--", "--config", IMPORTS]);
        let stable = cmd::status(cmd::cargo().current_dir(&dir).args(&stable))?;
        let imports = cmd::status(cmd::cargo().current_dir(&dir).args(&imports))?;
        if !stable.success() || !imports.success() {
            unformatted.push(dir);
        }
    }
    Ok(unformatted)
}
