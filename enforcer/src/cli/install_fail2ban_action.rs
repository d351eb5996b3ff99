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
    /// The action's name: the file is <dir>/<name>.conf, jails select it with `banaction = <name>`.
    #[arg(long, default_value = DEFAULT_NAME)]
    pub name: String,
    /// Replace a different file of that name.
    #[arg(long)]
    pub force: bool,
}

pub(super) fn run(a: Args, socket: Option<&Path>) -> anyhow::Result<()> {
    let enforcer = std::env::current_exe().context("finding the running binary")?;
    let socket = socket.unwrap_or(Path::new(DEFAULT_SOCKET)).to_owned();
    let (path, outcome) = install(&InstallOptions {
        dir: a.dir,
        name: a.name.clone(),
        enforcer: enforcer.clone(),
        socket: socket.clone(),
        force: a.force,
    })?;
    let done = match outcome {
        Outcome::Created => "installed",
        Outcome::Unchanged => "already installed (unchanged)",
        Outcome::Replaced => "installed (replaced the file that was there)",
    };
    println!(
        "{done} {} (0644): runs {} --socket {}",
        path.display(),
        enforcer.display(),
        socket.display()
    );
    println!();
    println!("Select it in /etc/fail2ban/jail.local, then run `fail2ban-client reload`:");
    println!();
    print!("{}", jail_snippet(&a.name));
    println!();
    println!("Check bans with `enforcer list --source fail2ban`. See docs/fail2ban.md.");
    Ok(())
}
