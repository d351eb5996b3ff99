use std::path::Path;

use crate::{
    protocol::{Reply, Request},
    target::Target,
};

/// `enforcer show`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// An address (or prefix).
    pub address: Target,
    /// JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run(socket: &Path, a: Args) -> anyhow::Result<()> {
    let Reply::Show(r) = super::call(socket, &Request::Show { target: a.address })? else {
        anyhow::bail!("unexpected reply from the daemon")
    };
    if a.json {
        return super::output::json(&r);
    }
    println!("{}: verdict now: {}", r.target, r.verdict);
    if r.allowlist.is_empty() {
        println!("allowlist: no entry covers it");
    } else {
        for e in &r.allowlist {
            println!("allowlist: {} ({})", e.target, e.origin);
        }
    }
    if r.more > 0 {
        println!(
            "({} more blocks inside {} are not shown: `enforcer list` lists every block)",
            r.more, r.target
        );
    }
    if r.blocks.is_empty() {
        println!("blocks: none");
    } else {
        println!("blocks:");
        for b in &r.blocks {
            for s in &b.sources {
                println!(
                    "  {}  {}  source {}  {}  {}  created {}  {}",
                    b.target,
                    s.scope,
                    s.source,
                    s.mode,
                    super::output::time_left(s.expires_ms),
                    super::output::timestamp(s.created_ms),
                    super::output::printable(&s.reason.summary())
                );
            }
            println!(
                "  {}  hits: {} packets, {}, last {}",
                b.target,
                b.packets,
                super::output::bytes(b.bytes),
                super::output::ago(b.last_hit_ms)
            );
        }
    }
    Ok(())
}
