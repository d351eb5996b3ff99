use std::path::Path;

use crate::{
    duration::HumanDuration,
    protocol::{BlockRequest, Outcome, Reply, Request},
    target::Target,
};

/// `enforcer block`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address or prefix (192.0.2.7, 198.51.100.0/24, 2001:db8::/48).
    pub target: Target,
    /// How long (90s, 10m, 1h, 7d); default: the daemon's default TTL.
    #[arg(long, conflicts_with = "permanent")]
    pub ttl: Option<HumanDuration>,
    /// No expiry (only for sources allowed to make permanent blocks).
    #[arg(long)]
    pub permanent: bool,
    #[command(flatten)]
    pub flags: super::BlockFlags,
    #[command(flatten)]
    pub scope: super::ScopeFlags,
    /// Block a broad prefix or one containing allowlisted addresses (sources allowed to force
    /// only; the allowlisted part stays reachable).
    #[arg(long)]
    pub force: bool,
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
        &Request::Block(BlockRequest {
            target: a.target,
            ttl_secs: a.ttl.map(|d| d.0.as_secs()),
            permanent: a.permanent,
            source: a.flags.source.clone(),
            reason: a.flags.reason(),
            shadow: a.flags.shadow,
            force: a.force,
            scope,
        }),
        &a.spool,
    )?
    else {
        return Ok(());
    };
    let Reply::Block(r) = reply else {
        anyhow::bail!("unexpected reply from the daemon")
    };
    if a.json {
        return super::output::json(&r);
    }
    if r.outcome == Outcome::Pending {
        println!(
            "{} waits for approval (id {}): {}; run `enforcer approve {}` or `enforcer reject {}`",
            r.target,
            r.pending_id.unwrap_or_default(),
            r.notes.join("; "),
            r.pending_id.unwrap_or_default(),
            r.pending_id.unwrap_or_default()
        );
        return Ok(());
    }
    let verb = match r.outcome {
        Outcome::Pending => unreachable!("handled above"),
        Outcome::Created => "blocked",
        Outcome::Extended => "extended",
        Outcome::Unchanged => "already blocked (expiry kept)",
    };
    let until = match r.expires_ms {
        None => "permanently".to_owned(),
        Some(e) => format!(
            "for {} (until {})",
            super::output::time_left(Some(e)),
            super::output::timestamp(e)
        ),
    };
    println!(
        "{verb} {} {until} [{}, source {}]",
        r.target, r.mode, a.flags.source
    );
    for n in &r.notes {
        println!("  policy: {n}");
    }
    Ok(())
}
