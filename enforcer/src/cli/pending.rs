use std::path::Path;

use super::output::{table, time_left, timestamp};
use crate::protocol::{Reply, Request};

/// `enforcer pending`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSON.
    #[arg(long)]
    pub json: bool,
}

/// `enforcer approve` / `enforcer reject`.
#[derive(Debug, clap::Args)]
pub struct IdArgs {
    /// The pending block's id (see `enforcer pending`).
    pub id: u64,
    /// JSON.
    #[arg(long)]
    pub json: bool,
}

pub(super) fn list(socket: &Path, a: Args) -> anyhow::Result<()> {
    let Reply::PendingList { pending } = super::call(socket, &Request::PendingList)? else {
        anyhow::bail!("unexpected reply from the daemon")
    };
    if a.json {
        return super::output::json(&pending);
    }
    if pending.is_empty() {
        println!("nothing waits for approval");
        return Ok(());
    }
    let mut rows = vec![
        [
            "ID",
            "TARGET",
            "SOURCE",
            "ASKED",
            "ASKED BY",
            "EXPIRES IN",
            "WHY",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for p in &pending {
        rows.push(vec![
            p.id.to_string(),
            p.request.target.to_string(),
            p.request.source.to_string(),
            timestamp(p.created_ms),
            p.requested_by
                .as_ref()
                .map_or_else(|| "-".to_owned(), ToString::to_string),
            time_left(Some(p.expires_ms)),
            p.why.clone(),
        ]);
    }
    table(&rows);
    Ok(())
}

pub(super) fn approve(socket: &Path, a: IdArgs) -> anyhow::Result<()> {
    let Reply::Block(r) = super::call(socket, &Request::Approve { id: a.id })? else {
        anyhow::bail!("unexpected reply from the daemon")
    };
    if a.json {
        return super::output::json(&r);
    }
    println!(
        "approved {}: blocked {} for {} [{}]",
        a.id,
        r.target,
        time_left(r.expires_ms),
        r.mode
    );
    Ok(())
}

pub(super) fn reject(socket: &Path, a: IdArgs) -> anyhow::Result<()> {
    super::call(socket, &Request::Reject { id: a.id })?;
    if a.json {
        return super::output::json(&serde_json::json!({"rejected": a.id}));
    }
    println!("rejected {}", a.id);
    Ok(())
}
