use std::path::{Path, PathBuf};

use crate::install::wazuh::{
    DEFAULT_NAME, DEFAULT_WAZUH_HOME, InstallOptions, Replaced, install, ossec_snippet,
};

/// `enforcer install-wazuh-hook`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The Wazuh installation (manager or agent) that runs the response.
    #[arg(long, default_value = DEFAULT_WAZUH_HOME)]
    pub wazuh_home: PathBuf,
    /// The program's name in active-response/bin/ (and in ossec.conf). The default sits beside
    /// Wazuh's firewall-drop; a name containing `firewall-drop` keeps rules 651/652 matching.
    #[arg(long, default_value = DEFAULT_NAME)]
    pub name: String,
    /// Replace a file of that name that is not an enforcer hook (such as Wazuh's firewall-drop).
    #[arg(long)]
    pub force: bool,
}

pub(super) fn run(a: Args, socket: Option<&Path>) -> anyhow::Result<()> {
    let done = install(&InstallOptions {
        wazuh_home: a.wazuh_home.clone(),
        name: a.name.clone(),
        force: a.force,
    })?;
    let note = match done.replaced {
        None => "",
        Some(Replaced::Enforcer) => " (replaced an earlier copy)",
        Some(Replaced::Other) => " (replaced the program that was there)",
    };
    println!(
        "installed {} (root:{}, 0750), a copy of {} {}{note}",
        done.path.display(),
        done.group,
        done.from.display(),
        env!("CARGO_PKG_VERSION")
    );
    println!("run this again after upgrading enforcer, so the hook stays the daemon's version");
    println!();
    println!(
        "Add to {} where the response runs, then restart Wazuh:",
        a.wazuh_home.join("etc/ossec.conf").display()
    );
    println!();
    print!("{}", ossec_snippet(&a.name));
    if let Some(s) = socket {
        println!();
        println!(
            "The hook never takes the socket from Wazuh's message: set `socket = \"{}\"` in {} (the hook reads it there).",
            s.display(),
            crate::config::DEFAULT_CONFIG
        );
    }
    if !a.name.contains("firewall-drop") {
        println!();
        println!(
            "Wazuh rules 651/652 (\"Host Blocked/Unblocked by firewall-drop\") match programs named \
             *firewall-drop*; with `{}` rule 657 (\"Active response: ... - add\") fires instead. \
             Install with --name enforcer-firewall-drop to keep 651/652.",
            a.name
        );
    }
    Ok(())
}
