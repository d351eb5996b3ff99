//! Section 1 in the report: the data path's cost per packet, and its chart.

use std::fmt::Write as _;

use super::{count, ns, thousands};
use crate::datapath::{self, Case, Fill, Packet};

#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
pub(super) fn markdown(w: &mut String, d: &datapath::Results) {
    let s = &d.settings;
    let _ = writeln!(w, "## 1. Data path cost per packet (BPF_PROG_TEST_RUN)\n");
    let _ = writeln!(
        w,
        "The floor is a do-nothing XDP program (`XDP_PASS`) from the same object: {} ns per packet \
         (median of all rounds). Each case is timed right after the floor on the same frame; \
         **× floor** is the median over rounds of that pair's ratio, **× empty** divides it by the \
         same packet's ratio with no blocks loaded. ns are the kernel's whole-nanosecond means; \
         min–max spans the rounds. **wall ns** and **× floor (wall)** time the same runs from \
         userspace (the syscall's thread CPU time ÷ runs; floor {:.2} ns): not truncated to whole \
         ns, and including the syscall's fixed cost. {} rounds of {} runs per case.\n",
        ns(d.floor_median_ns),
        d.wall_floor_median_ns,
        s.rounds,
        thousands(s.repeat as usize)
    );
    let _ = writeln!(
        w,
        "| family | blocks | packet | VLAN | ns/packet | min–max | floor ns | × floor | × empty | wall ns | wall floor ns | × floor (wall) |"
    );
    let _ = writeln!(w, "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    for c in &d.cases {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {}–{} | {} | {:.2} | {} | {:.2} | {:.2} | {:.2} |",
            c.id.family,
            blocks(c),
            packet(c.id.packet),
            if c.id.vlan { "802.1Q" } else { "none" },
            ns(c.median_ns),
            c.min_ns,
            c.max_ns,
            ns(c.floor_median_ns),
            c.vs_floor,
            c.vs_empty.map_or("–".to_owned(), |v| format!("{v:.2}")),
            c.wall_median_ns,
            c.wall_floor_median_ns,
            c.wall_vs_floor,
        );
    }

    raw_ip_markdown(w, d);
    scoped_markdown(w, d);
    lengths_markdown(w, d);

    let _ = writeln!(w, "\n### What per-block hit counters cost\n");
    let _ = writeln!(
        w,
        "The same hit with the counters compiled in and out (no blocks besides the probe's own, no \
         VLAN tag), both programs timed in the same rounds.\n"
    );
    let _ = writeln!(
        w,
        "| family | packet | counters on ns | counters off ns | floor ns | on ÷ off | difference ns | difference, wall ns |"
    );
    let _ = writeln!(w, "|---|---|--:|--:|--:|--:|--:|--:|");
    for pair in d.counters.chunks(2) {
        let [on, off] = pair else { continue };
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} | {:.2} | {} | {:.2} |",
            on.id.family,
            packet(on.id.packet),
            ns(on.median_ns),
            ns(off.median_ns),
            ns(on.floor_median_ns),
            on.vs_floor / off.vs_floor,
            ns(on.median_ns - off.median_ns),
            on.wall_median_ns - off.wall_median_ns,
        );
    }

    multi_cpu_markdown(w, d);

    let _ = writeln!(
        w,
        "\n### Filling the maps (one `BPF_MAP_UPDATE_ELEM` per entry)\n"
    );
    let _ = writeln!(
        w,
        "| family | blocks | entries | time | per insert | inserts/s |"
    );
    let _ = writeln!(w, "|---|---|--:|--:|--:|--:|");
    for i in &d.inserts {
        let _ = writeln!(
            w,
            "| {} | {} | {} → {} | {:.3} s | {:.2} µs | {} |",
            i.family,
            if i.fill == Fill::Prefixes {
                "prefixes"
            } else {
                "addresses"
            },
            count(i.from),
            count(i.to),
            i.seconds,
            i.micros_each(),
            thousands((1e6 / i.micros_each()) as usize),
        );
    }
}

/// Port-scoped blocks beside whole-address blocks and misses (issue 22).
#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
fn scoped_markdown(w: &mut String, d: &datapath::Results) {
    if d.scoped.is_empty() {
        return;
    }
    let _ = writeln!(w, "\n### Port-scoped blocks\n");
    let _ = writeln!(
        w,
        "TCP frames; the miss and the address hit run on a program whose maps hold no scoped \
         block (the transport header is not read), the others on one where another address has a \
         tcp/22 block; the reply-checked hit is TCP to an ephemeral port (40000), for which the \
         program asks the kernel for a socket before it drops. **÷ base** divides a case's \
         × floor by that of the whole-address hit (for hits) or of the plain miss (for passes) \
         in this run.\n"
    );
    let _ = writeln!(w, "| family | packet | ns/packet | × floor | ÷ base |");
    let _ = writeln!(w, "|---|---|--:|--:|--:|");
    for c in &d.scoped {
        let ratio = vs_base(&d.scoped, c);
        let _ = writeln!(
            w,
            "| {} | {} | {} | {:.2} | {} |",
            c.id.family,
            packet(c.id.packet),
            ns(c.median_ns),
            c.vs_floor,
            ratio
        );
    }
}

/// A case's × floor over its base's in `cases` (the same family's address hit for a drop, its
/// plain miss for a pass), for the **÷ base** columns; "–" without a base.
fn vs_base(cases: &[Case], c: &Case) -> String {
    let base = if c.id.packet.verdict_is_drop() {
        Packet::HitAddress
    } else {
        Packet::Miss
    };
    cases
        .iter()
        .find(|b| b.id.family == c.id.family && b.id.packet == base)
        .map_or("–".to_owned(), |b| {
            format!("{:.2}", c.vs_floor / b.vs_floor)
        })
}

/// N distinct prefix lengths over one source beside an address hit and a plain miss (issue 25,
/// item 1: would binary search on lengths pay?).
#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
fn lengths_markdown(w: &mut String, d: &datapath::Results) {
    if d.lengths.is_empty() {
        return;
    }
    let _ = writeln!(w, "\n### Many prefix lengths over one source\n");
    let _ = writeln!(
        w,
        "N nested prefixes of N distinct lengths around one source (IPv4 /17–/31 in its /16, \
         IPv6 /33–/127 in its /32, spread evenly), each N on programs of its own: the hit is \
         the source (the longest length decides at once), the miss a source of the same /16 \
         (/32) outside all of them (each length's filter bit checked), the expired miss the \
         source with all N expired (each length looked up). **÷ base** divides a case's × floor \
         by that of the address hit (for hits) or of the plain miss (for passes) in the same \
         rounds.\n"
    );
    let _ = writeln!(w, "| family | N | packet | ns/packet | × floor | ÷ base |");
    let _ = writeln!(w, "|---|--:|---|--:|--:|--:|");
    for c in &d.lengths {
        let ratio = vs_base(&d.lengths, c);
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {:.2} | {} |",
            c.id.family,
            c.id.entries,
            packet(c.id.packet),
            ns(c.median_ns),
            c.vs_floor,
            ratio
        );
    }
    for c in &d.lengths_census {
        let _ = writeln!(
            w,
            "\n{}, {} random prefixes (the section's fill): a random source's word holds {:.2} \
             lengths a miss walks on average, {} at the 99th percentile, {} at most; {:.3}% of \
             sources more than 3.",
            c.family,
            thousands(c.prefixes),
            c.mean,
            c.p99,
            c.max,
            c.over_3 * 100.0
        );
    }
}

/// Raw-IP beside Ethernet, and this build beside an earlier object.
#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
fn raw_ip_markdown(w: &mut String, d: &datapath::Results) {
    if !d.raw_ip.is_empty() {
        let _ = writeln!(
            w,
            "\n### Raw-IP links (tun, WireGuard, GRE, PPP) beside Ethernet\n"
        );
        let _ = writeln!(
            w,
            "The same program logic after the other parse, the fixtures' blocks loaded, the same rounds.\n"
        );
        let _ = writeln!(
            w,
            "| family | packet | link | ns/packet | × floor | × floor (wall) |"
        );
        let _ = writeln!(w, "|---|---|---|--:|--:|--:|");
        for c in &d.raw_ip {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {:.2} | {:.2} |",
                c.id.family,
                packet(c.id.packet),
                c.id.link,
                ns(c.median_ns),
                c.vs_floor,
                c.wall_vs_floor
            );
        }
    }
    if !d.baseline.is_empty() {
        let _ = writeln!(
            w,
            "\n### This build's Ethernet path against an earlier object\n"
        );
        let _ = writeln!(
            w,
            "Each pair ran back to back in every round; **÷ miss** divides a packet's × floor by \
             that of the same program's miss of the same family in this run.\n"
        );
        let _ = writeln!(
            w,
            "| family | packet | new ns | old ns | new × floor | old × floor | new ÷ miss | old ÷ miss | new ÷ old | new ÷ old (wall) |"
        );
        let _ = writeln!(w, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|");
        for b in &d.baseline {
            let miss = d
                .baseline
                .iter()
                .find(|m| m.family == b.family && m.packet == Packet::Miss);
            let per_miss = |of: fn(&datapath::BaselineCase) -> &Case| {
                miss.map_or("–".to_owned(), |m| {
                    format!("{:.2}", of(b).vs_floor / of(m).vs_floor)
                })
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {:.2} | {:.2} | {} | {} | {:.3} | {:.3} |",
                b.family,
                packet(b.packet),
                ns(b.new.median_ns),
                ns(b.old.median_ns),
                b.new.vs_floor,
                b.old.vs_floor,
                per_miss(|c| &c.new),
                per_miss(|c| &c.old),
                b.new_vs_old,
                b.wall_new_vs_old
            );
        }
    }
}

fn blocks(c: &Case) -> String {
    match c.id.fill {
        Fill::None => "none".to_owned(),
        Fill::Addresses => format!("{} addresses", count(c.id.entries)),
        Fill::Prefixes => format!("{} prefixes", count(c.id.entries)),
    }
}

fn packet(p: Packet) -> &'static str {
    packet_name(p)
}

/// How the report names a packet path.
pub(super) fn packet_name(p: Packet) -> &'static str {
    match p {
        Packet::Miss => "miss",
        Packet::HitAddress => "hit (address)",
        Packet::HitPrefix => "hit (prefix)",
        Packet::Allowlisted => "allowlisted",
        Packet::TrieMiss => "miss (trie walked)",
        Packet::MissScopesLoaded => "miss (scoped blocks loaded)",
        Packet::ScopedHit => "hit (tcp/22 block, port 22)",
        Packet::ScopedOtherPort => "pass (tcp/22 block, port 80)",
        Packet::HitReplyChecked => "hit (address), reply checked",
        Packet::LengthsHit => "hit (longest of N lengths)",
        Packet::LengthsMiss => "miss (N lengths' filter bits checked)",
        Packet::LengthsExpired => "miss (N lengths looked up, all expired)",
    }
}

/// A horizontal bar per case (median, with a min–max whisker), coloured by packet, and the
/// floor as a dashed line, so the program's cost reads as the distance past the floor.
///
/// The axis ends a little past the 90th percentile, so that one pathological case does not
/// squash the rest; bars beyond it are cut at the edge and marked with `»`.
#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
pub(super) fn svg(d: &datapath::Results) -> String {
    const ROW: f64 = 18.0;
    const LABEL: f64 = 330.0;
    const PLOT: f64 = 520.0;
    const TOP: f64 = 64.0;
    let mut maxima: Vec<f64> = d.cases.iter().map(|c| f64::from(c.max_ns)).collect();
    maxima.sort_by(f64::total_cmp);
    let typical = maxima
        .get(maxima.len() * 9 / 10)
        .copied()
        .unwrap_or_default();
    let max = (typical * 1.25).max(d.floor_median_ns);
    let step = [5.0, 10.0, 20.0, 25.0, 50.0, 100.0, 200.0, 500.0]
        .into_iter()
        .find(|s| max / s <= 10.0)
        .unwrap_or(1000.0);
    let scale_max = (max / step).ceil() * step;
    let x = |v: f64| LABEL + v.min(scale_max) / scale_max * PLOT;
    let height = TOP + ROW * d.cases.len() as f64 + 20.0;
    let width = LABEL + PLOT + 70.0;
    let colour = |p: Packet| match p {
        Packet::Miss => "#4c78a8",
        Packet::HitAddress => "#e45756",
        Packet::HitPrefix => "#f58518",
        Packet::Allowlisted => "#54a24b",
        Packet::TrieMiss => "#72b7b2",
        Packet::MissScopesLoaded => "#9d755d",
        Packet::ScopedHit | Packet::ScopedOtherPort | Packet::HitReplyChecked => "#b279a2",
        Packet::LengthsHit | Packet::LengthsMiss | Packet::LengthsExpired => "#ff9da6",
    };

    let mut out = super::svg::open(
        width,
        height,
        "XDP data path: ns per packet (BPF_PROG_TEST_RUN, median; whisker = min–max)",
    );
    let w = &mut out;
    let mut lx = 10.0;
    for p in [
        Packet::Miss,
        Packet::HitAddress,
        Packet::HitPrefix,
        Packet::Allowlisted,
        Packet::TrieMiss,
    ] {
        let _ = writeln!(
            w,
            r#"<rect x="{lx}" y="28" width="10" height="10" fill="{}"/><text x="{}" y="37">{}</text>"#,
            colour(p),
            lx + 14.0,
            packet(p)
        );
        lx += 110.0;
    }
    let mut tick = 0.0;
    while tick <= scale_max {
        let _ = writeln!(
            w,
            r##"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}" stroke="#ddd"/><text x="{0}" y="{3}" text-anchor="middle" fill="#666">{4}</text>"##,
            x(tick),
            TOP - 6.0,
            height - 20.0,
            TOP - 9.0,
            tick
        );
        tick += step;
    }
    for (i, c) in d.cases.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        let mid = y + ROW / 2.0;
        let tag = if c.id.vlan { ", 802.1Q" } else { "" };
        let _ = writeln!(
            w,
            r#"<text x="{}" y="{}" text-anchor="end">{} · {} · {}{tag}</text>"#,
            LABEL - 6.0,
            mid + 4.0,
            c.id.family,
            blocks(c),
            packet(c.id.packet)
        );
        let _ = writeln!(
            w,
            r#"<rect x="{LABEL}" y="{}" width="{:.1}" height="{}" fill="{}"/>"#,
            y + 3.0,
            x(c.median_ns) - LABEL,
            ROW - 6.0,
            colour(c.id.packet)
        );
        let _ = writeln!(
            w,
            r#"<line x1="{:.1}" y1="{mid}" x2="{:.1}" y2="{mid}" stroke="black"/><text x="{:.1}" y="{}">{}</text>"#,
            x(f64::from(c.min_ns)),
            x(f64::from(c.max_ns)),
            x(f64::from(c.max_ns)) + 4.0,
            mid + 4.0,
            if c.median_ns > scale_max {
                format!("» {}", ns(c.median_ns))
            } else {
                ns(c.median_ns)
            }
        );
    }
    let fx = x(d.floor_median_ns);
    let _ = writeln!(
        w,
        r#"<line x1="{fx:.1}" y1="{}" x2="{fx:.1}" y2="{}" stroke="black" stroke-dasharray="4 3"/><text x="{fx:.1}" y="{}" text-anchor="middle">floor (XDP_PASS) {} ns</text>"#,
        TOP - 4.0,
        height - 20.0,
        height - 6.0,
        ns(d.floor_median_ns)
    );
    let _ = writeln!(w, "</svg>");
    out
}

#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
fn multi_cpu_markdown(w: &mut String, d: &datapath::Results) {
    if d.multi_cpu.is_empty() {
        return;
    }
    let _ = writeln!(w, "\n### Every CPU on one block\n");
    let _ = writeln!(
        w,
        "One thread per CPU, each pinned to its CPU, runs `BPF_PROG_TEST_RUN` on the same program \
         and frame at the same moment (a barrier starts each round): a flood that RSS spreads over \
         every queue, all on one blocked address (`hit (address)`) or one blocked /24 \
         (`hit (prefix)`). **per CPU ns** is the mean over the CPUs of each one's ns per packet \
         (median over rounds); **× 1 CPU** divides it by the same packet on one CPU; CPUs slow \
         each other down on a VM whatever the program does, so **× miss** divides that by a \
         miss's (which writes nothing shared) at the same number of CPUs: what sharing the block \
         costs.\n"
    );
    let _ = writeln!(w, "| CPUs | packet | per CPU ns | × 1 CPU | × miss |");
    let _ = writeln!(w, "|--:|---|--:|--:|--:|");
    for c in &d.multi_cpu {
        let _ = writeln!(
            w,
            "| {} | {} | {:.1} | {:.2} | {:.2} |",
            c.cpus,
            packet(c.packet),
            c.per_cpu_ns,
            c.vs_one_cpu,
            c.vs_miss
        );
    }
    let _ = writeln!(w, "\n![per-CPU cost, every CPU on one block](multicpu.svg)");
}

/// The multi-CPU cases as bars: × one CPU per packet and number of CPUs.
pub(super) fn multi_cpu_svg(d: &datapath::Results) -> String {
    let colour = |p: Packet| match p {
        Packet::Miss => "#4c78a8",
        Packet::HitAddress => "#e45756",
        Packet::HitPrefix => "#f58518",
        Packet::Allowlisted => "#54a24b",
        Packet::TrieMiss => "#72b7b2",
        Packet::MissScopesLoaded => "#9d755d",
        Packet::ScopedHit | Packet::ScopedOtherPort | Packet::HitReplyChecked => "#b279a2",
        Packet::LengthsHit | Packet::LengthsMiss | Packet::LengthsExpired => "#ff9da6",
    };
    let bars = d
        .multi_cpu
        .iter()
        .map(|c| super::svg::Bar {
            label: format!(
                "{} CPU{} · {}",
                c.cpus,
                if c.cpus == 1 { "" } else { "s" },
                packet(c.packet)
            ),
            value: c.vs_one_cpu,
            colour: colour(c.packet),
            text: format!(
                "{:.2}× ({:.0} ns; × miss {:.2})",
                c.vs_one_cpu, c.per_cpu_ns, c.vs_miss
            ),
        })
        .collect();
    super::svg::render(&super::svg::Chart {
        title: "Every CPU on one block: per-CPU cost per packet ÷ one CPU",
        axis: "× the same packet on one CPU",
        bars,
        reference: Some((1.0, "one CPU".to_owned())),
        log: false,
        legend: vec![
            (colour(Packet::Miss), "miss"),
            (colour(Packet::HitAddress), "hit (address)"),
            (colour(Packet::HitPrefix), "hit (prefix)"),
        ],
    })
}
