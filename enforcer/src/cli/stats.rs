use std::path::Path;

use super::output::{bytes, table};
use crate::protocol::{Counters, Reply, Request};

/// `enforcer stats`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSON.
    #[arg(long)]
    pub json: bool,
}

fn rows(scope: &str, c: &Counters, rows: &mut Vec<Vec<String>>) {
    for (name, v) in [
        ("seen", c.seen),
        ("passed", c.passed),
        ("  reply_passed", c.reply_passed),
        ("dropped", c.dropped),
        ("allowlisted", c.allowlisted),
        ("shadow", c.shadow),
        ("expired", c.expired),
        ("unjudged", c.not_ip),
    ] {
        rows.push(vec![
            scope.to_owned(),
            name.to_owned(),
            v.packets.to_string(),
            bytes(v.bytes),
        ]);
    }
    // Why the frames above were not judged (they passed).
    for (reason, v) in c.unjudged.by_reason() {
        rows.push(vec![
            scope.to_owned(),
            format!("  {reason}"),
            v.packets.to_string(),
            bytes(v.bytes),
        ]);
    }
}

pub(super) fn run(socket: &Path, a: Args) -> anyhow::Result<()> {
    let Reply::Stats(s) = super::call(socket, &Request::Stats)? else {
        anyhow::bail!("unexpected reply from the daemon")
    };
    if a.json {
        return super::output::json(&s);
    }
    let mut t = vec![
        ["SCOPE", "ACTION", "PACKETS", "BYTES"]
            .map(String::from)
            .to_vec(),
    ];
    rows("total", &s.total, &mut t);
    for i in &s.interfaces {
        rows(&i.iface, &i.counters, &mut t);
    }
    table(&t);
    if !s.blocks_by_source.is_empty() {
        println!();
        let mut t = vec![["SOURCE", "BLOCKS"].map(String::from).to_vec()];
        for (src, n) in &s.blocks_by_source {
            t.push(vec![src.to_string(), n.to_string()]);
        }
        table(&t);
    }
    Ok(())
}
