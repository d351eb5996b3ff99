//! Section 2 in the report: real traffic through each filter.

use std::fmt::Write as _;

use super::{
    count,
    svg::{Bar, Chart, render},
    thousands,
};
use crate::{
    firewall::Peer,
    traffic::{Filter, Results},
};

#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
pub(super) fn markdown(w: &mut String, t: &Results) {
    let s = &t.settings;
    let _ = writeln!(w, "## 2. Real traffic over a veth pair\n");
    let _ = writeln!(
        w,
        "A packet socket in the sender's namespace floods small UDP datagrams (`sendmmsg`, \
         `PACKET_QDISC_BYPASS`) to a UDP socket in the receiver's namespace. Per filter and list \
         size: {} rounds, each a {} ms flood through an **unfiltered lab (the baseline)**, then \
         {} ms from a legitimate source (never on the list) and {} ms from a blocked one (on it) \
         through the filtered lab. **× baseline** is the median over rounds of legit ÷ that \
         round's baseline; packets per second are medians too. On a veth the receive path runs in \
         the sender's softirq, so the rate is what one CPU gets through the whole path. iptables: \
         `{}` ({}), {}. The enforcer's program is attached in **{}** mode. Baseline: **{} \
         packets/s** (median of all baseline floods).\n",
        s.rounds,
        s.flood_ms,
        s.flood_ms,
        s.flood_ms,
        t.iptables.command,
        t.iptables.backend,
        t.iptables.version,
        t.xdp_mode,
        thousands(t.baseline_pps as usize)
    );
    let _ = writeln!(
        w,
        "| filter | blocks | legit packets/s | × baseline | blocked source dropped | blocked source packets/s |"
    );
    let _ = writeln!(w, "|---|--:|--:|--:|--:|--:|");
    for r in &t.runs {
        let dropped = if r.blocks == 0 {
            format!("{:.2}% (not listed)", r.drop_rate * 100.0)
        } else {
            format!("{:.2}%", r.drop_rate * 100.0)
        };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {:.2} | {} | {} |",
            r.filter.label(),
            count(r.blocks),
            thousands(r.legit_pps as usize),
            r.vs_baseline,
            dropped,
            thousands(r.blocked_pps as usize),
        );
    }
    let _ = writeln!(w);
    let failures = t.failures();
    if !failures.is_empty() {
        let _ = writeln!(w, "**Failed cases** (these fail the run):\n");
        for f in failures {
            let _ = writeln!(w, "- {f}");
        }
        let _ = writeln!(w);
    }
    if let (Some(floor), Some(empty)) = (t.find(Filter::XdpFloor, 0), t.find(Filter::Xdp, 0)) {
        let _ = writeln!(
            w,
            "Attaching *any* XDP program to the veth costs {:.0}% of the baseline: the do-nothing \
             floor program passes {:.2}× of it. The veth driver then takes every packet through its \
             XDP path (NAPI, and a copy into a fresh page when the packet lacks XDP's headroom). \
             The enforcer's program itself costs {:.0}% more than the floor with an empty list. On \
             a NIC with native XDP the program runs before any socket buffer exists, and this \
             overhead is not paid.\n",
            (1.0 - floor.vs_baseline) * 100.0,
            floor.vs_baseline,
            (1.0 - empty.vs_baseline / floor.vs_baseline) * 100.0
        );
    }
    if let (Some(x), Some(i)) = (
        t.find(Filter::Xdp, 10_000),
        t.find(Filter::Peer(Peer::IptablesPerAddress), 10_000),
    ) {
        let _ = writeln!(
            w,
            "With 10k blocks, legitimate traffic gets **{:.1}×** the packets per second through \
             the enforcer that it gets through one iptables rule per address ({:.2} vs {:.2} × \
             baseline; each ratio from its own paired rounds).\n",
            x.vs_baseline / i.vs_baseline,
            x.vs_baseline,
            i.vs_baseline
        );
    }
    let _ = writeln!(
        w,
        "![legitimate packets per second, × baseline](traffic.svg)\n"
    );
}

fn colour(f: Filter) -> &'static str {
    match f {
        Filter::XdpFloor => "#9ecae9",
        Filter::Xdp => "#4c78a8",
        Filter::Peer(Peer::IptablesPerAddress) => "#e45756",
        Filter::Peer(Peer::Ipset) => "#f58518",
        Filter::Peer(Peer::NftSet) => "#54a24b",
    }
}

pub(super) fn svg(t: &Results) -> String {
    let bars = t
        .runs
        .iter()
        .map(|r| Bar {
            label: format!("{} · {} blocks", r.filter.label(), count(r.blocks)),
            value: r.vs_baseline,
            colour: colour(r.filter),
            text: format!(
                "{:.2}× ({} pps)",
                r.vs_baseline,
                thousands(r.legit_pps as usize)
            ),
        })
        .collect();
    render(&Chart {
        title: "Legitimate traffic through a filter, × the unfiltered baseline (veth, one CPU)",
        axis: "legitimate packets/s ÷ baseline packets/s (median of paired rounds)",
        bars,
        reference: Some((
            1.0,
            format!("baseline {} pps", thousands(t.baseline_pps as usize)),
        )),
        log: false,
        legend: vec![
            (colour(Filter::Xdp), "enforcer XDP"),
            (colour(Filter::XdpFloor), "XDP_PASS floor"),
            (
                colour(Filter::Peer(Peer::IptablesPerAddress)),
                "iptables per address",
            ),
            (colour(Filter::Peer(Peer::Ipset)), "ipset"),
            (colour(Filter::Peer(Peer::NftSet)), "nftables set"),
        ],
    })
}
