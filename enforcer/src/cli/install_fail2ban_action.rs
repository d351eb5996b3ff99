use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::{
    install::fail2ban::{
        DEFAULT_ACTION_DIR, DEFAULT_NAME, InstallOptions, Outcome, install, jail_snippet,
    },
    protocol::DEFAULT_SOCKET,
};

/// `enforcer install-fail2ban-action`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// fail2ban's action directory.
    #[arg(long, default_value = DEFAULT_ACTION_DIR)]
    pub dir: PathBuf,
    /// The action's name: the files are <dir>/<name>.conf (the jail's ports: `banaction =
    /// <name>`) and <dir>/<name>-allports.conf (the whole address: `banaction_allports =
    /// <name>-allports`).
    #[arg(long, default_value = DEFAULT_NAME)]
    pub name: String,
    /// Replace different files of those names.
    #[arg(long)]
    pub force: bool,
}

pub(super) fn run(a: Args, socket: Option<&Path>) -> anyhow::Result<()> {
    let enforcer = std::env::current_exe().context("finding the running binary")?;
    let socket = socket.unwrap_or(Path::new(DEFAULT_SOCKET)).to_owned();
    let installed = install(&InstallOptions {
        dir: a.dir,
        name: a.name.clone(),
        enforcer: enforcer.clone(),
        socket: socket.clone(),
        force: a.force,
    })?;
    for file in &installed {
        let done = match file.outcome {
            Outcome::Created => "installed",
            Outcome::Unchanged => "already installed (unchanged)",
            Outcome::Replaced => "installed (replaced the file that was there)",
        };
        println!("{done} {} (0644)", file.path.display());
    }
    println!(
        "they run {} --socket {}",
        enforcer.display(),
        socket.display()
    );
    println!();
    println!(
        "Select them in /etc/fail2ban/jail.local, then run `fail2ban-client reload` \
         (`restart` when an action in use was replaced: see docs/fail2ban.md):"
    );
    println!();
    print!("{}", jail_snippet(&a.name));
    println!();
    println!("Check bans with `enforcer list --source fail2ban`. See docs/fail2ban.md.");
    Ok(())
}
