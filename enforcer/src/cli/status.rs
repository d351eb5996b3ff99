use std::path::Path;

use super::output::table;
use crate::{
    duration::format_secs,
    protocol::{Reply, Request},
};

/// `enforcer status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(socket: &Path, a: Args) -> anyhow::Result<()> {
    let Reply::Status(s) = super::call(socket, &Request::Status)? else {
        anyhow::bail!("unexpected reply from the daemon")
    };
    if a.json {
        return super::output::json(&s);
    }
    println!("enforcer {} (pid {}), up {}", s.version, s.pid, format_secs(s.uptime_secs));
    println!("blocks: {} targets, {} source blocks; next expiry: {}", s.targets, s.source_blocks,
        s.next_expiry_ms.map_or("none".to_owned(), |e| format!("in {}", super::output::time_left(Some(e)))));
    println!("store: {}\naudit log: {}\npins: {}", s.store_path, s.audit_log, s.bpffs_dir);
    println!("policy: rollout mode {}; {} allowlist prefixes; {} pending approval", s.policy_mode, s.allowlist, s.pending);
    for b in &s.breakers {
        println!(
            "BREAKER OPEN: source {} since {} (new blocks: {:?}); closes in {} or with `enforcer breaker reset --source {}`",
            b.source,
            super::output::timestamp(b.opened_ms),
            b.action,
            super::output::time_left(Some(b.closes_ms)),
            b.source
        );
    }
    if let Some(cs) = &s.crowdsec {
        print_crowdsec(cs);
    }
    println!();
    if s.interfaces.is_empty() {
        println!("interfaces: none attached (nothing is filtered)");
    } else {
        let mut t = vec![["INTERFACE", "IFINDEX", "XDP MODE", "PROGRAM ID"].map(String::from).to_vec()];
        for i in &s.interfaces {
            t.push(vec![i.iface.clone(), i.ifindex.to_string(), i.mode.to_string(), i.prog_id.to_string()]);
        }
        table(&t);
    }
    println!();
    let mut t = vec![["MAP", "USED", "CAPACITY", "USE"].map(String::from).to_vec()];
    for m in &s.maps {
        t.push(vec![
            m.map.clone(),
            m.used.to_string(),
            m.capacity.to_string(),
            format!("{:.1}%", 100.0 * m.used as f64 / f64::from(m.capacity.max(1))),
        ]);
    }
    table(&t);
    Ok(())
}

fn print_crowdsec(cs: &crate::protocol::CrowdsecStatus) {
    let ago = super::output::ago;
    println!(
        "crowdsec: LAPI {}; last pull {} (full {}); {} targets with live ban decisions",
        cs.api_url,
        ago(cs.last_pull_ms),
        ago(cs.last_full_pull_ms),
        cs.active
    );
    println!(
        "crowdsec: decisions applied {}, refused {} (see the audit log), pending approval {}, ignored {} (not ban, other scopes), malformed {}; usage metrics {}",
        cs.applied, cs.refused, cs.pending, cs.ignored, cs.invalid, cs.usage_metrics
    );
    if let Some(e) = &cs.last_error {
        if cs.last_error_ms > cs.last_pull_ms {
            println!("crowdsec: FAILING since {} ({} failed pulls since start): {e}", ago(cs.last_error_ms), cs.errors);
        } else {
            println!("crowdsec: recovered; last error {} ({} failed pulls since start): {e}", ago(cs.last_error_ms), cs.errors);
        }
    }
}
