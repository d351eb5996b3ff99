use std::path::Path;

use super::output::table;
use crate::{
    protocol::{Reply, Request},
    target::Target,
};

/// `enforcer allow`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: AllowCommand,
}

/// Allowlist subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum AllowCommand {
    /// Never block this prefix (takes effect in the kernel at once; kept across restarts).
    Add {
        /// Address or prefix.
        target: Target,
        /// A note for the list.
        #[arg(long)]
        comment: Option<String>,
        /// Allowlist a prefix broader than the scope guard (policy.min_prefix_v4/v6): it lifts
        /// every block inside it. Needs the `force` operation (root has it).
        #[arg(long)]
        force: bool,
    },
    /// Remove a prefix added with `allow add`.
    Remove {
        /// Address or prefix.
        target: Target,
    },
    /// The allowlist, with where each entry comes from.
    List {
        /// JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(socket: &Path, a: Args) -> anyhow::Result<()> {
    match a.command {
        AllowCommand::Add {
            target,
            comment,
            force,
        } => {
            let Reply::Allow { target, changed } = super::call(
                socket,
                &Request::AllowAdd {
                    target,
                    comment,
                    force,
                },
            )?
            else {
                anyhow::bail!("unexpected reply from the daemon")
            };
            println!(
                "{} {target}",
                if changed {
                    "allowlisted"
                } else {
                    "already allowlisted:"
                }
            );
        }
        AllowCommand::Remove { target } => {
            super::call(socket, &Request::AllowRemove { target })?;
            println!("removed {target} from the allowlist");
        }
        AllowCommand::List { json } => {
            let Reply::AllowList { entries } = super::call(socket, &Request::AllowList)? else {
                anyhow::bail!("unexpected reply from the daemon")
            };
            if json {
                return super::output::json(&entries);
            }
            let mut rows = vec![["PREFIX", "ORIGIN"].map(String::from).to_vec()];
            rows.extend(
                entries
                    .iter()
                    .map(|e| vec![e.target.to_string(), e.origin.clone()]),
            );
            table(&rows);
        }
    }
    Ok(())
}
