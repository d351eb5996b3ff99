use std::path::Path;

use super::output::{ago, bytes, count, table, time_left};
use crate::{
    block::Source,
    protocol::{ListEntry, Reply, Request},
    target::Target,
};

/// Sort orders for `list`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Sort {
    /// Soonest expiry first.
    Expires,
    /// Most packets first.
    Hits,
    /// By address.
    Target,
}

/// `enforcer list`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this source's blocks.
    #[arg(long)]
    pub source: Option<Source>,
    /// Order.
    #[arg(long, value_enum, default_value = "expires")]
    pub sort: Sort,
    /// JSON (stable; see the README).
    #[arg(long)]
    pub json: bool,
    /// At most this many targets (a page, in address order; the page is then sorted).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Only targets after this one, in address order (the `--after` a previous page printed).
    #[arg(long, value_name = "TARGET")]
    pub after: Option<Target>,
}

pub fn run(socket: &Path, a: Args) -> anyhow::Result<()> {
    let request = Request::List {
        source: a.source,
        limit: a.limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        after: a.after,
    };
    let Reply::List { mut blocks, next } = super::call(socket, &request)? else {
        anyhow::bail!("unexpected reply from the daemon")
    };
    sort(&mut blocks, a.sort);
    if a.json {
        super::output::json(&blocks)?;
    } else {
        print_table(&blocks);
    }
    if let Some(next) = next {
        eprintln!("more blocks follow: enforcer list --after {next}{}", a.limit.map(|n| format!(" --limit {n}")).unwrap_or_default());
    }
    Ok(())
}

pub fn sort(blocks: &mut [ListEntry], by: Sort) {
    match by {
        Sort::Expires => blocks.sort_by_key(|b| (b.expires_ms.unwrap_or(u64::MAX), b.target)),
        Sort::Hits => blocks.sort_by_key(|b| (std::cmp::Reverse(b.packets), b.target)),
        Sort::Target => blocks.sort_by_key(|b| b.target),
    }
}

pub fn print_table(blocks: &[ListEntry]) {
    if blocks.is_empty() {
        println!("no blocks");
        return;
    }
    let mut rows = vec![
        ["TARGET", "SOURCES", "TIME LEFT", "MODE", "PACKETS", "BYTES", "LAST HIT", "REASON"]
            .map(String::from)
            .to_vec(),
    ];
    for b in blocks {
        let reason = b
            .sources
            .iter()
            .map(|s| s.reason.summary())
            .filter(|r| !r.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        rows.push(vec![
            b.target.to_string(),
            b.sources.iter().map(|s| s.source.as_str()).collect::<Vec<_>>().join(","),
            time_left(b.expires_ms),
            b.mode.to_string(),
            count(b.packets),
            bytes(b.bytes),
            ago(b.last_hit_ms),
            reason,
        ]);
    }
    table(&rows);
}
