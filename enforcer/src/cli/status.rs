use std::path::Path;

use super::output::table;
use crate::{
    duration::format_secs,
    protocol::{InterfaceState, InterfaceStatus, Reply, Request},
};

/// `enforcer status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSON.
    #[arg(long)]
    pub json: bool,
}

/// `enforcer status`'s exit code when a configured interface is not protected (or none is
/// configured): monitoring alerts on it.
pub(super) const EXIT_UNPROTECTED: i32 = 8;

/// Some configured interface is not protected; the message names each.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct Unprotected(String);

pub(super) fn run(socket: &Path, a: Args) -> anyhow::Result<()> {
    let Reply::Status(s) = super::call(socket, &Request::Status)? else {
        anyhow::bail!("unexpected reply from the daemon")
    };
    if a.json {
        super::output::json(&s)?;
    } else {
        print(&s);
    }
    unprotected(&s.interfaces).map_or(Ok(()), |e| Err(e.into()))
}

/// The error to exit with when something configured is not protected now.
fn unprotected(interfaces: &[InterfaceStatus]) -> Option<Unprotected> {
    if interfaces.is_empty() {
        return Some(Unprotected(
            "no interface is configured: nothing is filtered (set `interfaces` or use --iface)"
                .to_owned(),
        ));
    }
    let not: Vec<String> = interfaces
        .iter()
        .filter(|i| i.state != InterfaceState::Protected)
        .map(|i| format!("{} ({})", i.iface, i.state))
        .collect();
    (!not.is_empty()).then(|| {
        Unprotected(format!(
            "NOT protected: {}; see the interfaces in `enforcer status`",
            not.join(", ")
        ))
    })
}

fn print(s: &crate::protocol::StatusReply) {
    println!(
        "enforcer {} (pid {}), up {}",
        s.version,
        s.pid,
        format_secs(s.uptime_secs)
    );
    println!(
        "blocks: {} targets, {} source blocks; next expiry: {}",
        s.targets,
        s.source_blocks,
        s.next_expiry_ms.map_or("none".to_owned(), |e| format!(
            "in {}",
            super::output::time_left(Some(e))
        ))
    );
    println!(
        "store: {}\naudit log: {}\npins: {}",
        s.store_path,
        s.audit_log,
        s.pins.describe()
    );
    println!(
        "policy: rollout mode {}; {} allowlist prefixes; {} pending approval",
        s.policy_mode, s.allowlist, s.pending
    );
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
    if let Some(step) = &s.clock_steps.last {
        println!(
            "clock: the wall clock stepped {} time(s) since start; the last, by {} {}, was seen {}; {} block deadlines moved with it",
            s.clock_steps.count,
            crate::time::describe_jump(step.by_ms),
            if step.while_running {
                "while running"
            } else {
                "while the daemon was down"
            },
            super::output::timestamp(step.seen_ms),
            step.moved
        );
    }
    if let Some(cs) = &s.crowdsec {
        print_crowdsec(cs);
    }
    if let Some(f) = &s.flood {
        print_flood(f);
    }
    println!();
    if s.interfaces.is_empty() {
        println!("interfaces: none configured (nothing is filtered)");
    } else {
        print_interfaces(&s.interfaces);
    }
    println!();
    let mut t = vec![
        ["MAP", "USED", "CAPACITY", "USE"]
            .map(String::from)
            .to_vec(),
    ];
    for m in &s.maps {
        t.push(vec![
            m.map.clone(),
            m.used.to_string(),
            m.capacity.to_string(),
            format!(
                "{:.1}%",
                100.0 * m.used as f64 / f64::from(m.capacity.max(1))
            ),
        ]);
    }
    table(&t);
}

/// What the kernel showed when the daemon answered: state, index, mode, program.
fn print_interfaces(interfaces: &[InterfaceStatus]) {
    let dash = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
    let mut t = vec![
        [
            "INTERFACE",
            "STATE",
            "IFINDEX",
            "XDP MODE",
            "LINK",
            "PROGRAM ID",
            "NOTE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for i in interfaces {
        let note = match (&i.error, &i.pattern) {
            (Some(e), _) => format!("attach failed: {e}"),
            (None, Some(p)) if *p == i.iface => "pattern; matches no interface yet".to_owned(),
            (None, Some(p)) => format!("matched by {p}"),
            (None, None) => String::new(),
        };
        t.push(vec![
            i.iface.clone(),
            i.state.to_string(),
            dash(i.ifindex.map(|x| x.to_string())),
            dash(i.mode.map(|m| match &i.native_refused {
                Some(why) => format!("{m} (native refused: {why})"),
                None => m.to_string(),
            })),
            dash(i.link_type.map(|t| {
                let name = t.name().map_or_else(|| t.to_string(), str::to_owned);
                match i.parse {
                    Some(p) => format!("{name}: {p}"),
                    None => format!("{name}: cannot parse"),
                }
            })),
            dash(i.prog_id.map(|p| p.to_string())),
            note,
        ]);
    }
    table(&t);
}

fn print_flood(f: &crate::protocol::FloodStatus) {
    if !f.enabled {
        println!("flood detection: off ([flood] enabled = false)");
        return;
    }
    let limits = |l: crate::protocol::FloodLimits| {
        format!("{} packets, {} SYN, {} ICMP", l.packets, l.syn, l.icmp)
    };
    println!(
        "flood detection: on, per source per second: IPv4 {}, IPv6 {} (0 = not checked; window {} ms); hold {}",
        limits(f.ipv4),
        limits(f.ipv6),
        f.window_ms,
        if f.hold {
            "on"
        } else {
            "off (shadow or hold = false)"
        },
    );
    let k = &f.kernel;
    println!(
        "flood detection: candidates {} (blocks {}, refused {}, repeats {}); reports dropped {} (cap {}, ring buffer full {}); packets held {}, over the limit and passed {}",
        f.candidates,
        f.blocks,
        f.refused,
        f.repeats,
        k.capped + k.lost,
        k.capped,
        k.lost,
        k.held,
        k.over,
    );
    if f.last_latency_us > 0 {
        println!(
            "flood detection: the last block was in the kernel {:.1} ms after its source passed its limit (acknowledged after the store's commit at {:.1} ms)",
            f.last_latency_us as f64 / 1000.0,
            f.last_answered_us as f64 / 1000.0
        );
    }
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
        // The LAPI's answer, quoted: shown escaped.
        let e = super::output::printable(e);
        if cs.last_error_ms > cs.last_pull_ms {
            println!(
                "crowdsec: FAILING since {} ({} failed pulls since start): {e}",
                ago(cs.last_error_ms),
                cs.errors
            );
        } else {
            println!(
                "crowdsec: recovered; last error {} ({} failed pulls since start): {e}",
                ago(cs.last_error_ms),
                cs.errors
            );
        }
    }
}
