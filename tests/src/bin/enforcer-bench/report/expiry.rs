//! Section 4 in the report: how late blocks end.

use std::fmt::Write as _;

use super::{
    ms,
    svg::{Bar, Chart, render},
};
use crate::expiry::{Results, Variant};

#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
pub(super) fn markdown(w: &mut String, e: &Results) {
    let _ = writeln!(w, "## 4. Expiry precision\n");
    let _ = writeln!(
        w,
        "{} sources (lab addresses on the sender's veth) are blocked one after another over one \
         second{}, with TTLs of 1, 2 and 3 s in turn; from its acknowledgement on, each sends a \
         stamped probe every {} ms. Lateness = send time of the first probe through − the block's \
         deadline (resolution: one probe interval). **Early** = that probe *arrived* before the \
         deadline, so the kernel judged it before; **sent before** = it was sent before the \
         deadline but arrived after it (judged after the deadline: on time, a negative lateness \
         no larger than the delivery time). **enforcer**: blocks asked of the daemon on its \
         control socket, the deadline read from the kernel entry; the XDP program stops matching \
         an entry at its deadline. \
         **userspace timer** (the baseline, as Wazuh's execd and fail2ban work): one iptables rule \
         per block, inserted by a process; a loop wakes once a second and deletes the expired \
         rules with one `iptables -D` process each (with exact deadlines: execd compares whole \
         seconds, which adds up to another second).\n",
        e.settings.blocks,
        if e.settings.blocks > 100 {
            " (in batches of at most 100, one second each, each in a fresh lab)"
        } else {
            ""
        },
        e.probe_interval_ms
    );
    let _ = writeln!(
        w,
        "| how blocks end | blocks | min | p50 | p99 | max | early | sent before | never ended | p99 ÷ baseline p99 |"
    );
    let _ = writeln!(w, "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    let base = e.userspace_timer.lateness_ms.p99;
    let row = |w: &mut String, name: &str, v: &Variant| {
        let s = &v.lateness_ms;
        let _ = writeln!(
            w,
            "| {name} | {} | {} ms | {} ms | {} ms | {} ms | {} | {} | {} | {:.4} |",
            s.n,
            ms(s.min),
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
            v.early,
            v.sent_before_deadline,
            v.never_ended,
            s.p99 / base
        );
    };
    row(w, "enforcer (deadline in the kernel entry)", &e.enforcer);
    row(
        w,
        "userspace timer, once a second (baseline)",
        &e.userspace_timer,
    );
    if e.enforcer.lateness_ms.max < e.probe_interval_ms {
        let _ = writeln!(
            w,
            "\nEvery enforcer block ended within one probe interval of its deadline: what is left \
             is the phase between the daemon's millisecond deadlines and the probe clock."
        );
    }
    let _ = writeln!(w, "\n![lateness of expiry](expiry.svg)\n");
}

pub(super) fn svg(e: &Results) -> String {
    let mut bars = Vec::new();
    for (name, v, colour) in [
        ("enforcer", &e.enforcer, "#4c78a8"),
        ("userspace timer", &e.userspace_timer, "#e45756"),
    ] {
        let s = &v.lateness_ms;
        for (p, value) in [("p50", s.p50), ("p99", s.p99), ("max", s.max)] {
            bars.push(Bar {
                label: format!("{name} · {p}"),
                value: value.max(0.001),
                colour,
                text: format!("{} ms", ms(value)),
            });
        }
    }
    render(&Chart {
        title: "How late a block ends: first packet through − deadline",
        axis: "milliseconds (log scale)",
        bars,
        reference: Some((e.probe_interval_ms, "probe interval".to_owned())),
        log: true,
        legend: vec![
            ("#4c78a8", "enforcer (kernel deadline)"),
            ("#e45756", "1-second userspace timer + iptables -D"),
        ],
    })
}
