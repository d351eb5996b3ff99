//! `enforcer generate`: man pages and shell completions from the clap definitions, so they can
//! never drift from the real flags (the package build calls this; hidden from `--help`).

use std::path::PathBuf;

use clap::CommandFactory as _;

/// `enforcer generate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

/// What to generate.
#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// A man page (section 8) for `enforcer` and one per subcommand, into DIR.
    Man {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
    /// A completion script for SHELL, on stdout.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

pub(super) fn run(a: Args) -> anyhow::Result<()> {
    match a.what {
        What::Man { dir } => {
            std::fs::create_dir_all(&dir)?;
            let mut cmd = super::Cli::command().disable_help_subcommand(true);
            cmd.build();
            let written = man_pages(&cmd, &dir)?;
            println!("wrote {written} man pages to {}", dir.display());
        }
        What::Completions { shell } => {
            let mut cmd = super::Cli::command();
            clap_complete::generate(shell, &mut cmd, "enforcer", &mut std::io::stdout());
        }
    }
    Ok(())
}

/// Writes `cmd`'s page and its visible subcommands' pages; returns how many.
fn man_pages(cmd: &clap::Command, dir: &std::path::Path) -> std::io::Result<usize> {
    let mut written = 0;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        written += man_pages(sub, dir)?;
    }
    let man = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration")
        .source(format!("enforcer {}", env!("CARGO_PKG_VERSION")));
    let mut file = std::fs::File::create(dir.join(man.get_filename()))?;
    man.render(&mut file)?;
    Ok(written + 1)
}
