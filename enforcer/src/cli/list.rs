use std::path::Path;

use super::output::{ago, bytes, count, table, time_left};
use crate::{
    block::Source,
    protocol::{ListEntry, Reply, Request},
    target::Target,
    time::WallMs,
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
    /// JSON (stable; see docs/cli.md).
    #[arg(long)]
    pub json: bool,
    /// At most this many targets (a page, in address order; the page is then sorted).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Only targets after this one, in address order (the `--after` a previous page printed).
    #[arg(long, value_name = "TARGET")]
    pub after: Option<Target>,
}

/// Blocks per request: the daemon's largest page. Each page is one short stint on its engine
/// thread, so listing a million blocks never holds up blocks being written.
pub const PAGE: usize = crate::protocol::MAX_LIST_PAGE;

pub fn run(socket: &Path, a: Args) -> anyhow::Result<()> {
    let limit = a.limit.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let (mut blocks, next) = every_page(socket, a.source.as_ref(), a.after, limit)?;
    sort(&mut blocks, a.sort);
    if a.json {
        super::output::json(&blocks)?;
    } else {
        print_table(&blocks);
    }
    if let Some(next) = next {
        eprintln!(
            "more blocks follow: enforcer list --after {next}{}",
            a.limit.map(|n| format!(" --limit {n}")).unwrap_or_default()
        );
    }
    Ok(())
}

/// One `list` request: a page of blocks and where the next page starts.
fn page(
    socket: &Path,
    source: Option<&Source>,
    limit: Option<usize>,
    after: Option<Target>,
) -> anyhow::Result<(Vec<ListEntry>, Option<Target>)> {
    let request = Request::List {
        source: source.cloned(),
        limit,
        after,
    };
    let Reply::List { blocks, next } = super::call(socket, &request)? else {
        anyhow::bail!("unexpected reply from the daemon")
    };
    Ok((blocks, next))
}

/// Every block after `after` (at most `limit`), fetched [`PAGE`] at a time. Pages are read one
/// after another, so a block added or removed meanwhile may be missing or shown; each page is
/// consistent. Returns where the next block starts, if `limit` stopped it.
fn every_page(
    socket: &Path,
    source: Option<&Source>,
    mut after: Option<Target>,
    limit: Option<usize>,
) -> anyhow::Result<(Vec<ListEntry>, Option<Target>)> {
    let mut all = Vec::new();
    loop {
        let want = limit.map_or(PAGE, |l| l.saturating_sub(all.len()).min(PAGE));
        let (blocks, next) = page(socket, source, Some(want), after)?;
        all.extend(blocks);
        match next {
            Some(next) if limit.is_none_or(|l| all.len() < l) => after = Some(next),
            next => return Ok((all, next)),
        }
    }
}

pub fn sort(blocks: &mut [ListEntry], by: Sort) {
    match by {
        Sort::Expires => blocks.sort_by_key(|b| (b.expires_ms.unwrap_or(WallMs::MAX), b.target)),
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
        [
            "TARGET",
            "SCOPE",
            "SOURCES",
            "TIME LEFT",
            "MODE",
            "PACKETS",
            "BYTES",
            "LAST HIT",
            "REASON",
        ]
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
            b.scope.to_string(),
            b.sources
                .iter()
                .map(|s| s.source.as_str())
                .collect::<Vec<_>>()
                .join(","),
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
