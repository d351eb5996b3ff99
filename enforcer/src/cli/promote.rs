use std::path::Path;

use crate::{
    block::Source,
    protocol::{Reply, Request},
    target::Target,
};

/// `enforcer promote`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["target", "source"])))]
pub struct Args {
    /// Turn this target's shadow blocks into enforced ones.
    pub target: Option<Target>,
    /// Turn every shadow block of this source into an enforced one.
    #[arg(long)]
    pub source: Option<Source>,
    /// JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run(socket: &Path, a: Args) -> anyhow::Result<()> {
    let Reply::Promote { promoted } = super::call(
        socket,
        &Request::Promote {
            target: a.target,
            source: a.source,
        },
    )?
    else {
        anyhow::bail!("unexpected reply from the daemon")
    };
    if a.json {
        return super::output::json(&promoted);
    }
    for (t, s) in &promoted {
        println!("enforcing {t} (source {s})");
    }
    Ok(())
}
