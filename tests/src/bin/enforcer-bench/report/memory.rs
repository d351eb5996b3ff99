//! Section 5 in the report: memory per block, and the reaper's cost.

use std::fmt::Write as _;

use super::{
    bytes, count,
    svg::{Bar, Chart, render},
    thousands,
};
use crate::{
    datapath::Fill,
    memory::{MapMemory, Results},
};

#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
pub(super) fn markdown(w: &mut String, m: &Results) {
    let _ = writeln!(w, "## 5. Memory\n");
    let _ = writeln!(
        w,
        "Kernel memory is the `memlock` the kernel accounts to each map (`/proc/<pid>/fdinfo`), \
         before and after filling it; the exact-match maps are not preallocated, so this is memory \
         in use. Baseline: an entry's own bytes (key + value). For comparison, ipset's `Size in \
         memory` for the same IPv4 entries (`timeout` sets, as fail2ban makes them).\n"
    );
    let _ = writeln!(
        w,
        "| map | entries | empty | full | per entry | key + value | × key + value |"
    );
    let _ = writeln!(w, "|---|--:|--:|--:|--:|--:|--:|");
    for r in m.maps.iter().chain(&m.ipset) {
        let _ = writeln!(
            w,
            "| {} ({} {}) | {} | {} | {} | {:.0} B | {} B | {:.1} |",
            r.map,
            r.family,
            what(r),
            count(r.entries),
            bytes(r.bytes_empty as f64),
            bytes(r.bytes_full as f64),
            r.per_entry(),
            r.payload_bytes,
            r.per_entry() / r.payload_bytes as f64
        );
    }

    let r = &m.rss;
    let _ = writeln!(w, "\n### The daemon\n");
    let _ = writeln!(
        w,
        "`VmRSS` of the daemon empty (the baseline), holding {} blocks (imported in requests of \
         5,000), then after a `stats` answer (for which the daemon counts the drops by origin \
         over every kernel block, as it does every 10 s anyway: what a running daemon holds), \
         and once they have all expired and been reaped.\n",
        count(r.blocks)
    );
    let _ = writeln!(
        w,
        "| build | blocks | RSS empty | RSS loaded | per block | after `stats` | per block | RSS after expiry |"
    );
    let _ = writeln!(w, "|---|--:|--:|--:|--:|--:|--:|--:|");
    let mut builds = vec![("this build".to_owned(), r)];
    if let Some((b, rss)) = &m.baseline_rss {
        builds.push((format!("baseline `{b}`"), rss));
    }
    for (build, r) in builds {
        let _ = writeln!(
            w,
            "| {build} | {} | {} | {} | {:.0} B | {} | {:.0} B | {} |",
            count(r.blocks),
            bytes(r.empty_kib as f64 * 1024.0),
            bytes(r.loaded_kib as f64 * 1024.0),
            r.bytes_per_block(),
            bytes(r.counted_kib as f64 * 1024.0),
            r.counted_per_block(),
            r.drained_kib
                .map_or("–".to_owned(), |k| bytes(k as f64 * 1024.0))
        );
    }

    let p = &m.reaper;
    let _ = writeln!(w, "\n### The reaper\n");
    let _ = writeln!(
        w,
        "{} blocks imported with TTLs chosen so that their deadlines fall within {:.2} s of each \
         other; then the daemon's block count is polled every 100 ms until it is zero. CPU time \
         is the daemon's `utime + stime` over that span. The data path stops enforcing each entry \
         at its deadline whatever the reaper does; this is the cost of the bookkeeping (store \
         transactions, audit log, map deletions).\n",
        count(p.blocks),
        p.deadline_window_s
    );
    let _ = writeln!(
        w,
        "| blocks | deadline window | all gone after the first deadline | after the last | removals/s | CPU | CPU per block |"
    );
    let _ = writeln!(w, "|--:|--:|--:|--:|--:|--:|--:|");
    let _ = writeln!(
        w,
        "| {} | {:.2} s | {:.2} s | {:.2} s | {} | {:.2} s | {:.1} µs |",
        count(p.blocks),
        p.deadline_window_s,
        p.from_first_deadline_s,
        p.after_last_deadline_s,
        thousands(p.per_second() as usize),
        p.cpu_s,
        p.cpu_us_each()
    );
    let _ = writeln!(w, "\n![kernel bytes per entry](memory.svg)\n");
}

fn what(r: &MapMemory) -> &'static str {
    if r.fill == Fill::Prefixes {
        "prefixes"
    } else {
        "addresses"
    }
}

pub(super) fn svg(m: &Results) -> String {
    let mut bars = Vec::new();
    for r in m.maps.iter().chain(&m.ipset) {
        let ipset = r.map.starts_with("ipset");
        bars.push(Bar {
            label: format!("{} · {} {} {}", r.map, count(r.entries), r.family, what(r)),
            value: r.per_entry(),
            colour: if ipset { "#f58518" } else { "#4c78a8" },
            text: format!(
                "{:.0} B ({:.1}× key + value)",
                r.per_entry(),
                r.per_entry() / r.payload_bytes as f64
            ),
        });
    }
    render(&Chart {
        title: "Kernel memory per block",
        axis: "bytes per entry",
        bars,
        reference: None,
        log: false,
        legend: vec![
            ("#4c78a8", "enforcer maps"),
            ("#f58518", "ipset, same entries"),
        ],
    })
}
