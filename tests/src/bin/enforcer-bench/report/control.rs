//! Section 3 in the report: triggers, imports and the latencies of a block.

use std::fmt::Write as _;

use super::{
    count, ms,
    svg::{Bar, Chart, render},
    thousands,
};
use crate::{
    control::{Results, Trigger, TriggerRun},
    stats::Summary,
};

#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
pub(super) fn markdown(w: &mut String, c: &Results) {
    let _ = writeln!(w, "## 3. Control plane\n");
    let floor = c.triggers.iter().find(|t| t.trigger == Trigger::SpawnFloor);
    let floor_ms = floor.map_or(f64::NAN, TriggerRun::ms_each);
    let _ = writeln!(
        w,
        "Blocks applied one process each, in a row, as the tools that trigger them work (iptables \
         and nft inside a namespace of their own, via `setns`; the enforcer against a daemon in \
         the lab). The baseline is spawning `/bin/true`: **{} ms** per process. The daemon \
         acknowledges a block once it is fsynced to its store ({}) and in the kernel map. iptables \
         is `{}` ({}).\n",
        ms(floor_ms),
        c.store_fs,
        c.iptables.command,
        c.iptables.backend
    );
    let _ = writeln!(
        w,
        "| trigger | blocks | total | ms per block | × spawn floor | first 1k | first tenth, ms each | last tenth, ms each | blocks/s |"
    );
    let _ = writeln!(w, "|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    for t in &c.triggers {
        let _ = writeln!(
            w,
            "| {} | {} | {:.2} s | {} | {:.2} | {} | {} | {} | {} |",
            t.trigger.label(),
            count(t.blocks),
            t.seconds,
            ms(t.ms_each()),
            t.ms_each() / floor_ms,
            t.first_1k_seconds
                .map_or("–".to_owned(), |s| format!("{s:.2} s")),
            t.tenths_ms.first().map_or("–".to_owned(), |v| ms(*v)),
            t.tenths_ms.last().map_or("–".to_owned(), |v| ms(*v)),
            thousands(t.per_second() as usize),
        );
    }
    if let Some(why) = &c.wazuh_skipped {
        let _ = writeln!(w, "\nThe Wazuh hook was not measured: {why}");
    }
    let cli = c
        .triggers
        .iter()
        .find(|t| t.trigger == Trigger::EnforcerCli);
    let ipt = c.triggers.iter().find(|t| t.trigger == Trigger::Iptables);
    if let (Some(cli), Some(ipt)) = (cli, ipt) {
        let _ = writeln!(
            w,
            "\nOver {} blocks the enforcer CLI takes {:.2}× the time of iptables per block; in the \
             last tenth of the run, {:.2}× (iptables-legacy rewrites its whole table on every \
             insert, so its cost grows with the chain).",
            count(cli.blocks),
            cli.ms_each() / ipt.ms_each(),
            cli.tenths_ms.last().unwrap_or(&f64::NAN) / ipt.tenths_ms.last().unwrap_or(&f64::NAN)
        );
    }

    let _ = writeln!(w, "\n### Batch import (`enforcer import FILE`)\n");
    let cli_rate = cli.map_or(f64::NAN, TriggerRun::per_second);
    let _ = writeln!(
        w,
        "From spawning the CLI to its exit: parsing the file, requests of 5,000 targets, each \
         fsynced and written to the kernel. Baseline: the per-process CLI rate above ({} blocks/s).\n",
        thousands(cli_rate as usize)
    );
    let _ = writeln!(w, "| targets | time | blocks/s | × per-process CLI |");
    let _ = writeln!(w, "|--:|--:|--:|--:|");
    for i in &c.imports {
        let _ = writeln!(
            w,
            "| {} | {:.2} s | {} | {:.0} |",
            count(i.blocks),
            i.seconds,
            thousands(i.per_second() as usize),
            i.per_second() / cli_rate
        );
    }
    if let Some(b) = &c.baseline {
        let _ = writeln!(
            w,
            "\nThe same imports with the baseline build `{}`, in the same run:\n",
            b.build
        );
        let _ = writeln!(w, "| targets | baseline | this build | × baseline rate |");
        let _ = writeln!(w, "|--:|--:|--:|--:|");
        for (ours, theirs) in c.imports.iter().zip(&b.imports) {
            let _ = writeln!(
                w,
                "| {} | {} blocks/s ({:.2} s) | {} blocks/s ({:.2} s) | {:.2} |",
                count(ours.blocks),
                thousands(theirs.per_second() as usize),
                theirs.seconds,
                thousands(ours.per_second() as usize),
                ours.seconds,
                ours.per_second() / theirs.per_second()
            );
        }
    }

    if let Some(si) = &c.scraped_import {
        scraped(w, si);
    }
    latency(w, c, floor_ms);
}

#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
fn scraped(w: &mut String, si: &crate::control::ScrapedImport) {
    let _ = writeln!(w, "\n### Import while Prometheus scrapes\n");
    let _ = writeln!(
        w,
        "`enforcer import` of {} targets with `--metrics-listen` on, in alternating fresh daemons: \
         idle, and with a client scraping `/metrics` every {} ms ({} scrapes in all; Prometheus \
         scrapes every 15 s by default). Baseline: the idle runs.\n",
        count(si.blocks),
        crate::control::SCRAPE_EVERY.as_millis(),
        thousands(si.scrapes as usize)
    );
    let secs = |v: &[f64]| {
        v.iter()
            .map(|s| format!("{s:.2} s"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(w, "| runs | import times | median |");
    let _ = writeln!(w, "|--|--|--:|");
    let _ = writeln!(
        w,
        "| idle (baseline) | {} | {:.2} s |",
        secs(&si.idle_seconds),
        crate::stats::median(&si.idle_seconds)
    );
    let _ = writeln!(
        w,
        "| scraped | {} | {:.2} s |",
        secs(&si.scraped_seconds),
        crate::stats::median(&si.scraped_seconds)
    );
    let _ = writeln!(w, "\nScraped / idle: **{:.3}×**.", si.ratio());
    if let Some(s) = &si.scrape_ms {
        let _ = writeln!(
            w,
            " One scrape during the import: p50 {:.2} ms, p99 {:.2} ms (client side, whole answer).",
            s.p50, s.p99
        );
    }
}

#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
fn latency(w: &mut String, c: &Results, floor_ms: f64) {
    let _ = writeln!(w, "\n### Latency of one block\n");
    let _ = writeln!(
        w,
        "**CLI → kernel**: from spawning `enforcer block X --ttl 1h` until the entry can be read \
         from the pinned map (polled every few tens of µs). **CLI exit**: until the CLI has its answer and \
         exits. **Trigger → drop**: on traffic, a lab source sends a stamped probe every {:.2} ms \
         (measured mean); from spawning `enforcer block` to the send time of the last probe that \
         still got through. Each trial blocks a new source. p99 is the nearest rank, so with \
         fewer than 100 trials it is the maximum.\n",
        c.probe_interval_ms
    );
    let _ = writeln!(
        w,
        "| from spawning `enforcer block` to | n | min | p50 | p99 | max | p50 × spawn floor |"
    );
    let _ = writeln!(w, "|---|--:|--:|--:|--:|--:|--:|");
    let row = |w: &mut String, name: &str, s: &Summary| {
        let _ = writeln!(
            w,
            "| {name} | {} | {} ms | {} ms | {} ms | {} ms | {:.2} |",
            s.n,
            ms(s.min),
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
            s.p50 / floor_ms
        );
    };
    row(w, "the entry in the kernel map", &c.cli_to_kernel);
    row(w, "the CLI's exit", &c.cli_exit);
    row(
        w,
        "the last probe through (trigger → drop)",
        &c.trigger_to_drop,
    );
    if let Some(b) = &c.baseline {
        let _ = writeln!(
            w,
            "\nThe baseline build `{}`, in the same run (its daemon and its CLI):\n",
            b.build
        );
        let _ = writeln!(
            w,
            "| from spawning `enforcer block` to | n | min | p50 | p99 | max | p50 × spawn floor |"
        );
        let _ = writeln!(w, "|---|--:|--:|--:|--:|--:|--:|");
        row(w, "the entry in the kernel map", &b.cli_to_kernel);
        row(w, "the CLI's exit", &b.cli_exit);
        row(
            w,
            "the last probe through (trigger → drop)",
            &b.trigger_to_drop,
        );
        let _ = writeln!(
            w,
            "\nTrigger → drop p50, this build ÷ baseline: **{:.2}×**; p99: **{:.2}×**.",
            c.trigger_to_drop.p50 / b.trigger_to_drop.p50,
            c.trigger_to_drop.p99 / b.trigger_to_drop.p99
        );
    }
    let _ = writeln!(
        w,
        "\n![milliseconds per block, one process each](control.svg)\n"
    );
}

fn colour(t: Trigger) -> &'static str {
    match t {
        Trigger::SpawnFloor => "#bab0ac",
        Trigger::Iptables => "#e45756",
        Trigger::NftAddElement => "#54a24b",
        Trigger::EnforcerCli => "#4c78a8",
        Trigger::WazuhHook => "#72b7b2",
    }
}

pub(super) fn svg(c: &Results) -> String {
    let mut bars = Vec::new();
    for t in &c.triggers {
        for (which, v) in [
            ("first tenth", t.tenths_ms.first()),
            ("last tenth", t.tenths_ms.last()),
        ] {
            let Some(&v) = v else { continue };
            bars.push(Bar {
                label: format!("{} · {which} of {}", t.trigger.label(), count(t.blocks)),
                value: v,
                colour: colour(t.trigger),
                text: format!("{} ms", ms(v)),
            });
        }
    }
    for (name, s) in [
        ("CLI → kernel entry, p99", &c.cli_to_kernel),
        ("trigger → drop, p99", &c.trigger_to_drop),
    ] {
        bars.push(Bar {
            label: name.to_owned(),
            value: s.p99,
            colour: "#b279a2",
            text: format!("{} ms", ms(s.p99)),
        });
    }
    render(&Chart {
        title: "Applying one block: milliseconds per process, and latencies",
        axis: "milliseconds",
        bars,
        reference: c
            .triggers
            .iter()
            .find(|t| t.trigger == Trigger::SpawnFloor)
            .map(|f| {
                (
                    f.ms_each(),
                    format!("spawn /bin/true {} ms", ms(f.ms_each())),
                )
            }),
        log: false,
        legend: vec![
            (colour(Trigger::Iptables), "iptables"),
            (colour(Trigger::NftAddElement), "nft"),
            (colour(Trigger::EnforcerCli), "enforcer CLI"),
            (colour(Trigger::WazuhHook), "Wazuh hook"),
            ("#b279a2", "latency"),
        ],
    })
}
