//! The targets the project set itself, judged against what this run measured.

use std::fmt::Write as _;

use serde::Serialize;

use super::{Report, count, ms, thousands};
use crate::{
    datapath::{Case, Fill, Packet},
    firewall::Peer,
    traffic::Filter,
};

/// The entries the data path targets are stated for.
const DATAPATH_AT: usize = 1_000_000;

#[derive(Debug, Serialize)]
pub(crate) struct Target {
    pub goal: String,
    /// The figure, with what it was measured on.
    pub measured: String,
    pub verdict: Verdict,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Verdict {
    Met,
    /// Missed; by how much, in words.
    Missed(String),
    /// The section did not run, or not at the size the target names.
    NotMeasured(String),
}

/// At most `goal`.
fn at_most(value: f64, goal: f64) -> Verdict {
    if value <= goal {
        Verdict::Met
    } else {
        Verdict::Missed(format!("by {:.0}%", (value / goal - 1.0) * 100.0))
    }
}

/// At least `goal`.
fn at_least(value: f64, goal: f64) -> Verdict {
    if value >= goal {
        Verdict::Met
    } else {
        Verdict::Missed(format!(
            "by {:.0}% (reached {:.0}% of it)",
            (1.0 - value / goal) * 100.0,
            value / goal * 100.0
        ))
    }
}

fn case_name(c: &Case) -> String {
    format!(
        "{} {}{}",
        c.id.family,
        super::datapath::packet_name(c.id.packet),
        if c.id.vlan { ", 802.1Q" } else { "" }
    )
}

pub(super) fn judge(r: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    let missing = |what: &str| Verdict::NotMeasured(format!("the {what} section did not run"));

    // 1. The data path at 1M blocks: against its own empty cost, and against the floor.
    let (empty_goal, floor_goal) = (
        "data path with 1M blocks ≤ 1.3× its cost with none",
        "data path with 1M blocks ≤ 3× the trivial program (XDP_PASS)",
    );
    match &r.datapath {
        Some(d) => {
            let largest = d
                .cases
                .iter()
                .filter(|c| c.id.fill == Fill::Addresses)
                .map(|c| c.id.entries)
                .max()
                .unwrap_or(0);
            let at: Vec<&Case> = d
                .cases
                .iter()
                .filter(|c| c.id.fill == Fill::Addresses && c.id.entries == largest)
                .collect();
            let worst =
                |f: fn(&Case) -> f64| at.iter().copied().max_by(|a, b| f(a).total_cmp(&f(b)));
            let partial = (largest < DATAPATH_AT)
                .then(|| format!("the run stopped at {} entries", count(largest)));
            if let Some(c) = worst(|c| c.vs_empty.unwrap_or(f64::NAN)) {
                let v = c.vs_empty.unwrap_or(f64::NAN);
                out.push(Target {
                    goal: empty_goal.to_owned(),
                    measured: format!(
                        "worst {v:.2}× ({}, {} addresses)",
                        case_name(c),
                        count(largest)
                    ),
                    verdict: partial
                        .clone()
                        .map_or_else(|| at_most(v, 1.3), Verdict::NotMeasured),
                });
            }
            if let Some(c) = worst(|c| c.vs_floor) {
                // The miss path is what legitimate traffic pays; hits and allowlisted packets
                // also read the clock and bump counters. Say both.
                let miss = at
                    .iter()
                    .filter(|c| c.id.packet == Packet::Miss)
                    .map(|c| c.vs_floor)
                    .fold(f64::NAN, f64::max);
                out.push(Target {
                    goal: floor_goal.to_owned(),
                    measured: format!(
                        "misses (legitimate traffic) ≤ {miss:.2}×; worst {:.2}× ({}; timed from userspace {:.2}×); {} addresses",
                        c.vs_floor,
                        case_name(c),
                        c.wall_vs_floor,
                        count(largest)
                    ),
                    verdict: partial.map_or_else(|| at_most(c.vs_floor, 3.0), Verdict::NotMeasured),
                });
            }
        }
        None => {
            for goal in [empty_goal, floor_goal] {
                out.push(Target {
                    goal: goal.to_owned(),
                    measured: "–".to_owned(),
                    verdict: missing("data path"),
                });
            }
        }
    }

    out.extend(line_rate_targets(r));

    // 2. Legitimate traffic with 10k blocks against iptables, one rule per address.
    let goal =
        "legitimate packets/s with 10k blocks ≥ 5× iptables with one rule per address".to_owned();
    let pair = r.traffic.as_ref().and_then(|t| {
        Some((
            t.find(Filter::Xdp, 10_000)?,
            t.find(Filter::Peer(Peer::IptablesPerAddress), 10_000)?,
        ))
    });
    out.push(match pair {
        Some((x, i)) => {
            let v = x.vs_baseline / i.vs_baseline;
            Target {
                goal,
                measured: format!(
                    "{v:.1}× ({} vs {} packets/s; {:.2} vs {:.2} × baseline)",
                    thousands(x.legit_pps as usize),
                    thousands(i.legit_pps as usize),
                    x.vs_baseline,
                    i.vs_baseline
                ),
                verdict: at_least(v, 5.0),
            }
        }
        None => Target {
            goal,
            measured: "–".to_owned(),
            verdict: missing("traffic"),
        },
    });

    // 3. Trigger to drop.
    let goal = "trigger → drop p99 < 10 ms".to_owned();
    out.push(match &r.control {
        Some(c) => {
            let s = &c.trigger_to_drop;
            Target {
                goal,
                measured: format!(
                    "p99 {} ms (p50 {} ms, {} trials)",
                    ms(s.p99),
                    ms(s.p50),
                    s.n
                ),
                verdict: if s.p99 < 10.0 {
                    Verdict::Met
                } else {
                    at_most(s.p99, 10.0)
                },
            }
        }
        None => Target {
            goal,
            measured: "–".to_owned(),
            verdict: missing("control-plane"),
        },
    });

    // 4. Batch import.
    let goal = "batch import ≥ 100k blocks/s".to_owned();
    out.push(
        match r
            .control
            .as_ref()
            .and_then(|c| c.imports.iter().max_by_key(|i| i.blocks))
        {
            Some(i) => Target {
                goal,
                measured: format!(
                    "{} blocks/s ({} targets in {:.2} s)",
                    thousands(i.per_second() as usize),
                    count(i.blocks),
                    i.seconds
                ),
                verdict: at_least(i.per_second(), 100_000.0),
            },
            None => Target {
                goal,
                measured: "–".to_owned(),
                verdict: missing("control-plane"),
            },
        },
    );

    // 5. Expiry.
    let goal = "expiry p99 ≤ 10 ms late".to_owned();
    out.push(match &r.expiry {
        Some(e) => {
            let s = &e.enforcer.lateness_ms;
            Target {
                goal,
                measured: format!(
                    "p99 {} ms late ({} blocks; the 1-second userspace timer: p99 {} ms)",
                    ms(s.p99),
                    s.n,
                    ms(e.userspace_timer.lateness_ms.p99)
                ),
                verdict: if e.enforcer.early > 0 || e.enforcer.never_ended > 0 {
                    Verdict::Missed(format!(
                        "{} ended early, {} never ended",
                        e.enforcer.early, e.enforcer.never_ended
                    ))
                } else {
                    at_most(s.p99, 10.0)
                },
            }
        }
        None => Target {
            goal,
            measured: "–".to_owned(),
            verdict: missing("expiry"),
        },
    });

    // 6. CrowdSec: a full sync of 100k decisions from the real LAPI.
    let goal = "startup sync of 100k CrowdSec decisions from the real LAPI < 2 s".to_owned();
    out.push(match &r.crowdsec {
        Some(c) => Target {
            goal,
            measured: format!(
                "{} ms for {} decisions (the LAPI's answer alone: {} ms)",
                ms(c.sync.enforced_ms),
                thousands(c.sync.decisions),
                ms(c.sync.lapi_answer_ms)
            ),
            verdict: if c.sync.decisions < 100_000 {
                Verdict::NotMeasured(format!(
                    "the run synced {} decisions",
                    thousands(c.sync.decisions)
                ))
            } else {
                at_most(c.sync.enforced_ms, 2_000.0)
            },
        },
        None => Target {
            goal,
            measured: "–".to_owned(),
            verdict: missing("crowdsec"),
        },
    });

    // 7. Reads against writes: a block while clients list every one of 1M blocks.
    let goal =
        "trigger → drop p99 while clients list every block of 1M ≤ 2× its idle p99".to_owned();
    out.push(match &r.reads {
        Some(reads) => Target {
            goal,
            measured: format!(
                "{:.2}× (p99 {} ms while {} clients list, {} ms idle; {} blocks)",
                reads.phases.p99_ratio(),
                ms(reads.phases.listing.p99),
                reads.settings.listers,
                ms(reads.phases.idle.p99),
                count(reads.settings.blocks)
            ),
            verdict: if reads.settings.blocks < DATAPATH_AT {
                Verdict::NotMeasured(format!(
                    "the run held {} blocks",
                    count(reads.settings.blocks)
                ))
            } else {
                at_most(reads.phases.p99_ratio(), 2.0)
            },
        },
        None => Target {
            goal,
            measured: "–".to_owned(),
            verdict: missing("reads"),
        },
    });
    out
}

/// The targets of "line rate under attack": the drop path against a miss and the floor, every
/// CPU on one block, legitimate traffic with many prefixes, kernel bytes per address.
fn line_rate_targets(r: &Report) -> Vec<Target> {
    let mut out = Vec::new();
    let not_run = |goal: &str, what: &str| Target {
        goal: goal.to_owned(),
        measured: "–".to_owned(),
        verdict: Verdict::NotMeasured(format!("the {what} section did not run")),
    };
    let goals = [
        "drop (hit) ÷ miss with 1M addresses ≤ 1.3",
        "drop (hit) ÷ the trivial program (XDP_PASS) ≤ 2.6",
        "per-CPU hit cost with every CPU on one block ÷ one CPU, over the same for a miss ≤ 1.15",
        "legitimate traffic (miss) with 100k prefixes ≤ 1.2× its cost with none",
    ];
    match &r.datapath {
        Some(d) => {
            let plain = |c: &&Case| !c.id.vlan;
            let largest = |fill: Fill| {
                d.cases
                    .iter()
                    .filter(|c| c.id.fill == fill)
                    .map(|c| c.id.entries)
                    .max()
                    .unwrap_or(0)
            };
            let at = |fill: Fill, family, packet| {
                let n = largest(fill);
                d.cases.iter().filter(plain).find(|c| {
                    c.id.fill == fill
                        && c.id.entries == n
                        && c.id.family == family
                        && c.id.packet == packet
                })
            };
            // Drop ÷ miss at the largest address fill, per family.
            let n = largest(Fill::Addresses);
            let pairs: Vec<(String, f64, f64)> =
                [crate::datapath::Family::Ipv4, crate::datapath::Family::Ipv6]
                    .into_iter()
                    .filter_map(|f| {
                        let hit = at(Fill::Addresses, f, Packet::HitAddress)?;
                        let miss = at(Fill::Addresses, f, Packet::Miss)?;
                        Some((
                            f.to_string(),
                            hit.vs_floor / miss.vs_floor,
                            hit.wall_vs_floor / miss.wall_vs_floor,
                        ))
                    })
                    .collect();
            let partial =
                (n < DATAPATH_AT).then(|| format!("the run stopped at {} entries", count(n)));
            if let Some((fam, v, _)) = pairs.iter().cloned().max_by(|a, b| a.1.total_cmp(&b.1)) {
                out.push(Target {
                    goal: goals[0].to_owned(),
                    measured: format!(
                        "worst {v:.2}× ({fam}; {}; {} addresses, the same run's floor ratios; timed from userspace: {})",
                        pairs.iter().map(|(f, v, _)| format!("{f} {v:.2}×")).collect::<Vec<_>>().join(", "),
                        count(n),
                        pairs.iter().map(|(f, _, w)| format!("{f} {w:.2}×")).collect::<Vec<_>>().join(", "),
                    ),
                    verdict: partial.clone().map_or_else(|| at_most(v, 1.3), Verdict::NotMeasured),
                });
            }
            // Every plain hit (address and prefix, any fill up to 1M addresses) against the floor.
            let hits: Vec<&Case> = d
                .cases
                .iter()
                .filter(plain)
                .filter(|c| matches!(c.id.packet, Packet::HitAddress | Packet::HitPrefix))
                .filter(|c| c.id.fill != Fill::Prefixes)
                .collect();
            if let Some(c) = hits.iter().max_by(|a, b| a.vs_floor.total_cmp(&b.vs_floor)) {
                out.push(Target {
                    goal: goals[1].to_owned(),
                    measured: format!(
                        "worst {:.2}× ({}, {}; timed from userspace {:.2}×); hits with 100k prefixes in the trie are in section 1",
                        c.vs_floor,
                        case_name(c),
                        match c.id.fill {
                            Fill::None => "no other blocks".to_owned(),
                            _ => format!("{} addresses", count(c.id.entries)),
                        },
                        c.wall_vs_floor,
                    ),
                    verdict: at_most(c.vs_floor, 2.6),
                });
            }
            let cpus = d.multi_cpu.iter().map(|c| c.cpus).max().unwrap_or(0);
            let all: Vec<_> = d
                .multi_cpu
                .iter()
                .filter(|c| c.cpus == cpus && c.packet != Packet::Miss)
                .collect();
            if let Some(worst) = all.iter().max_by(|a, b| a.vs_miss.total_cmp(&b.vs_miss)) {
                out.push(Target {
                    goal: goals[2].to_owned(),
                    measured: format!(
                        "{} at {cpus} CPUs (the miss: {:.2}× one CPU)",
                        all.iter()
                            .map(|c| format!("{} {:.2}", case_name_packet(c.packet), c.vs_miss))
                            .collect::<Vec<_>>()
                            .join(", "),
                        d.multi_cpu
                            .iter()
                            .find(|c| c.cpus == cpus && c.packet == Packet::Miss)
                            .map_or(f64::NAN, |c| c.vs_one_cpu)
                    ),
                    verdict: if cpus < 2 {
                        Verdict::NotMeasured("one CPU only".to_owned())
                    } else {
                        at_most(worst.vs_miss, 1.15)
                    },
                });
            }
            let n = largest(Fill::Prefixes);
            let misses: Vec<&Case> = d
                .cases
                .iter()
                .filter(|c| {
                    c.id.fill == Fill::Prefixes && c.id.entries == n && c.id.packet == Packet::Miss
                })
                .collect();
            if let Some(c) = misses.iter().max_by(|a, b| {
                a.vs_empty
                    .unwrap_or(f64::NAN)
                    .total_cmp(&b.vs_empty.unwrap_or(f64::NAN))
            }) {
                let v = c.vs_empty.unwrap_or(f64::NAN);
                out.push(Target {
                    goal: goals[3].to_owned(),
                    measured: format!(
                        "worst {v:.2}× ({}; {}); {} prefixes",
                        case_name(c),
                        misses
                            .iter()
                            .map(|c| format!(
                                "{} {:.2}×",
                                case_name(c),
                                c.vs_empty.unwrap_or(f64::NAN)
                            ))
                            .collect::<Vec<_>>()
                            .join(", "),
                        count(n)
                    ),
                    verdict: if n < 100_000 {
                        Verdict::NotMeasured(format!("the run stopped at {} prefixes", count(n)))
                    } else {
                        at_most(v, 1.2)
                    },
                });
            }
        }
        None => out.extend(goals.iter().map(|g| not_run(g, "data path"))),
    }
    let goal = "kernel bytes per IPv4 address with 1M addresses ≤ 96";
    match r.memory.as_ref().and_then(|m| {
        m.maps.iter().find(|m| {
            m.map == enforcer_common::map_names::BLOCK_V4 || m.map.starts_with("BLOCK_V4 ")
        })
    }) {
        Some(m) => out.push(Target {
            goal: goal.to_owned(),
            measured: format!(
                "{:.0} B ({} entries; key + value {} B)",
                m.per_entry(),
                count(m.entries),
                m.payload_bytes
            ),
            verdict: if m.entries < DATAPATH_AT {
                Verdict::NotMeasured(format!("the run stopped at {} entries", count(m.entries)))
            } else {
                at_most(m.per_entry(), 96.0)
            },
        }),
        None => out.push(not_run(goal, "memory")),
    }
    out
}

fn case_name_packet(p: Packet) -> &'static str {
    super::datapath::packet_name(p)
}

#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
pub(super) fn markdown(w: &mut String, targets: &[Target]) {
    let _ = writeln!(w, "## Targets\n");
    let _ = writeln!(w, "| target | measured | verdict |");
    let _ = writeln!(w, "|---|---|---|");
    for t in targets {
        let verdict = match &t.verdict {
            Verdict::Met => "**met**".to_owned(),
            Verdict::Missed(by) => format!("**missed** {by}"),
            Verdict::NotMeasured(why) => format!("not judged: {why}"),
        };
        let _ = writeln!(w, "| {} | {} | {} |", t.goal, t.measured, verdict);
    }
    let _ = writeln!(w);
}
