//! Section 6 in the report: the daemon as a CrowdSec bouncer.

use std::fmt::Write as _;

use super::{
    ms,
    svg::{Bar, Chart, render},
    thousands,
};
use crate::crowdsec::Results;

#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
pub(super) fn markdown(w: &mut String, c: &Results) {
    let f = &c.fleet;
    let _ = writeln!(w, "## 6. CrowdSec: fleet latency and startup sync\n");
    let _ = writeln!(
        w,
        "A real LAPI (Debian's crowdsec 1.4.6, Central API off). **Fleet**: two lab hosts, each \
         with its own daemon registered as its own bouncer (`update_frequency = \"{}s\"`), pull \
         one LAPI over a management link; {} times, `cscli decisions add --ip` bans a source \
         that probes both hosts every 2 ms. Latency = last probe received − `cscli` returning. \
         Baseline: the poll interval (a polling bouncer waits half of it on average, all of it \
         at worst).\n",
        c.settings.poll_secs, f.both_ms.n
    );
    let _ = writeln!(
        w,
        "| decision → drop | p50 | p99 | max | p50 ÷ poll interval | p99 ÷ poll interval |"
    );
    let _ = writeln!(w, "|---|--:|--:|--:|--:|--:|");
    for (name, s) in [
        ("host A", &f.host_a_ms),
        ("host B", &f.host_b_ms),
        ("both hosts (the later)", &f.both_ms),
    ] {
        let _ = writeln!(
            w,
            "| {name} | {} ms | {} ms | {} ms | {:.2} | {:.2} |",
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
            s.p50 / f.poll_ms,
            s.p99 / f.poll_ms
        );
    }
    let s = &c.sync;
    let _ = writeln!(
        w,
        "\n**Startup sync**: the LAPI holds {} ban decisions (`cscli decisions import`, {:.0} s); \
         a daemon starts and makes its first, full pull. Baseline: the LAPI answering the same \
         full pull to `curl`.\n",
        thousands(s.decisions),
        s.import_s
    );
    let _ = writeln!(
        w,
        "| startup sync of {} decisions | time | beyond the LAPI's answer | ÷ LAPI answer alone |",
        thousands(s.decisions)
    );
    let _ = writeln!(w, "|---|--:|--:|--:|");
    let _ = writeln!(
        w,
        "| LAPI answers the full pull (curl, median of 3, its first byte at {} ms; baseline) | {} ms | 0 ms | 1.00 |",
        ms(s.lapi_first_byte_ms),
        ms(s.lapi_answer_ms)
    );
    let beyond = |v: f64| format!("{:+} ms", (v - s.lapi_answer_ms).round() as i64);
    let runs = |r: &[f64]| r.iter().map(|&v| ms(v)).collect::<Vec<_>>().join(", ");
    if let Some(b) = &s.baseline {
        let _ = writeln!(
            w,
            "| build `{}`: daemon start → every decision enforced (median; runs {}) | {} ms | {} | {:.2} |",
            b.build,
            runs(&b.enforced_runs_ms),
            ms(b.enforced_ms),
            beyond(b.enforced_ms),
            b.enforced_ms / s.lapi_answer_ms
        );
    }
    let _ = writeln!(
        w,
        "| this build: daemon start → every decision enforced in the kernel (median; runs {}) | {} ms | {} | {:.2} |",
        runs(&s.enforced_runs_ms),
        ms(s.enforced_ms),
        beyond(s.enforced_ms),
        s.enforced_ms / s.lapi_answer_ms
    );
    if let Some(b) = &s.baseline {
        let _ = writeln!(
            w,
            "\nThis build against `{}`, runs interleaved in one benchmark run: {:.2}× the time ({:.1}× faster).",
            b.build,
            s.enforced_ms / b.enforced_ms,
            b.enforced_ms / s.enforced_ms
        );
    }
    let _ = writeln!(w, "\n![CrowdSec](crowdsec.svg)\n");
}

pub(super) fn svg(c: &Results) -> String {
    let f = &c.fleet;
    let mut bars = Vec::new();
    for (p, v) in [("p50", f.both_ms.p50), ("p99", f.both_ms.p99)] {
        bars.push(Bar {
            label: format!("decision → drop on both hosts · {p}"),
            value: v,
            colour: "#4c78a8",
            text: format!("{} ms", ms(v)),
        });
    }
    bars.push(Bar {
        label: format!("startup sync of {} decisions", thousands(c.sync.decisions)),
        value: c.sync.enforced_ms,
        colour: "#4c78a8",
        text: format!("{} ms", ms(c.sync.enforced_ms)),
    });
    if let Some(b) = &c.sync.baseline {
        bars.push(Bar {
            label: format!("the same with build {}", b.build),
            value: b.enforced_ms,
            colour: "#bab0ac",
            text: format!("{} ms", ms(b.enforced_ms)),
        });
    }
    bars.push(Bar {
        label: "LAPI answering that pull alone".to_owned(),
        value: c.sync.lapi_answer_ms,
        colour: "#e45756",
        text: format!("{} ms", ms(c.sync.lapi_answer_ms)),
    });
    render(&Chart {
        title: "CrowdSec: decision to drop on a fleet of two, and a full sync",
        axis: "milliseconds",
        bars,
        reference: Some((f.poll_ms, "poll interval".to_owned())),
        log: false,
        legend: vec![
            ("#4c78a8", "enforcer"),
            ("#bab0ac", "an earlier build"),
            ("#e45756", "baseline (the LAPI's answer)"),
        ],
    })
}
