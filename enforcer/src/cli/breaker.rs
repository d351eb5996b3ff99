use std::path::Path;

use crate::{
    block::Source,
    protocol::{Reply, Request},
};

/// `enforcer breaker`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub command: BreakerCommand,
}

/// Breaker subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum BreakerCommand {
    /// Close open circuit breakers (all, or one source's).
    Reset {
        /// Only this source's breaker.
        #[arg(long)]
        source: Option<Source>,
    },
}

pub(super) fn run(socket: &Path, a: Args) -> anyhow::Result<()> {
    let BreakerCommand::Reset { source } = a.command;
    let Reply::BreakerReset { reset } = super::call(socket, &Request::BreakerReset { source })?
    else {
        anyhow::bail!("unexpected reply from the daemon")
    };
    if reset.is_empty() {
        println!("no breaker was open");
    } else {
        let names: Vec<&str> = reset.iter().map(Source::as_str).collect();
        println!("closed the breaker of {}", names.join(", "));
    }
    Ok(())
}
