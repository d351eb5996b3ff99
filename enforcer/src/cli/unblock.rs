use std::path::Path;

use crate::{
    block::Source,
    protocol::{Reply, Request},
    target::Target,
};

/// What `enforcer unblock --json` prints.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct UnblockOutput {
    /// The target.
    pub target: Target,
    /// The sources whose blocks were removed.
    pub removed: Vec<Source>,
    /// Whether the target is now unblocked in the kernel (false: other sources still block it).
    pub lifted: bool,
    /// The single address named, when it was not blocked itself but `target`, its network, was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<Target>,
}

/// `enforcer unblock`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address or prefix.
    pub target: Target,
    /// Remove only this source's block (default: cli).
    #[arg(long, conflicts_with = "all")]
    pub source: Option<Source>,
    /// Remove every source's block.
    #[arg(long)]
    pub all: bool,
    // Only this scope of the block (`--proto tcp --port 22`): its other scopes stay.
    #[command(flatten)]
    pub scope: super::ScopeFlags,
    #[command(flatten)]
    pub spool: super::SpoolFlags,
    /// Print the daemon's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run(socket: &Path, a: Args) -> anyhow::Result<()> {
    let scope = a.scope.scope()?;
    let Some(reply) = super::call_or_spool(
        socket,
        &Request::Unblock {
            target: a.target,
            source: a.source,
            all: a.all,
            scope,
        },
        &a.spool,
    )?
    else {
        return Ok(());
    };
    let Reply::Unblock {
        target,
        removed,
        lifted,
        requested,
    } = reply
    else {
        anyhow::bail!("unexpected reply from the daemon")
    };
    if a.json {
        return super::output::json(&UnblockOutput {
            target,
            removed,
            lifted,
            requested,
        });
    }
    if let Some(addr) = requested {
        println!("{addr} was blocked as its network {target}");
    }
    let names: Vec<&str> = removed.iter().map(Source::as_str).collect();
    if lifted {
        println!("unblocked {target} (removed: {})", names.join(", "));
    } else {
        println!(
            "removed {}'s block of {target}; other sources still block it",
            names.join(", ")
        );
    }
    Ok(())
}
