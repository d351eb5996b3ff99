//! Section 8, flood detection (issue 23): what detection costs a legitimate packet, on ÷ off,
//! in the same run.
//!
//! Two objects of this build are loaded, detection off and on. With it on the limits are out of
//! reach (half of u32 per 60 s window), so the measured source stays what a legitimate one is:
//! counted in the per-CPU sketch, never a suspect. First `BPF_PROG_TEST_RUN` as in section 1
//! (each case right after the floor, the same rounds for both), then the veth pair as in
//! section 2: each round floods an unfiltered lab, the lab with detection off and the lab with
//! it on, from the legitimate source, back to back; a run reports medians over rounds of the
//! per-round ratios.

use std::{net::IpAddr, time::Duration};

use anyhow::{Context as _, Result};
use enforcer::datapath::{Datapath, DatapathOptions, XdpModeRequest};
use enforcer_common::flood::{FloodConfig, LIMITS};
use enforcer_tests::{Lab, RECEIVER_IF};
use serde::Serialize;

use crate::{
    datapath::{self, Case, CaseId, Family, Fixtures, Loaded, Packet, Probe},
    stats::median,
    traffic::{self, Phase},
    wire::Wire,
};

/// How many of everything.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Settings {
    /// `BPF_PROG_TEST_RUN`: rounds and runs per measurement.
    pub test_run: datapath::Settings,
    /// veth: rounds, and how long each flood lasts.
    pub veth_rounds: usize,
    pub flood_ms: u64,
}

impl Settings {
    pub(crate) const FULL: Self = Self {
        test_run: datapath::Settings {
            rounds: 9,
            repeat: 1_000_000,
            largest: 0,
        },
        veth_rounds: 20,
        flood_ms: 100,
    };
    pub(crate) const QUICK: Self = Self {
        test_run: datapath::Settings {
            rounds: 5,
            repeat: 200_000,
            largest: 0,
        },
        veth_rounds: 8,
        flood_ms: 100,
    };
}

/// One packet, detection off and on, in the same rounds.
#[derive(Debug, Serialize)]
pub(crate) struct Pair {
    pub family: Family,
    pub off: Case,
    pub on: Case,
    /// on ÷ off of the floor ratios (kernel ns), and of the userspace timings.
    pub on_vs_off: f64,
    pub wall_on_vs_off: f64,
}

/// One veth round: the legitimate source's flood in each lab.
#[derive(Debug, Serialize)]
pub(crate) struct VethRound {
    pub baseline: Phase,
    pub off: Phase,
    pub on: Phase,
}

#[derive(Debug, Serialize)]
pub(crate) struct Results {
    pub settings: Settings,
    pub test_run: Vec<Pair>,
    pub veth: Vec<VethRound>,
    /// Medians over rounds: delivered pps with detection off, on, and the per-round on ÷ off.
    pub veth_off_pps: f64,
    pub veth_on_pps: f64,
    pub veth_on_vs_off: f64,
    /// The legitimate source's datagrams lost before the socket with detection on (not counting
    /// the socket's own overflow), over every round.
    pub veth_on_lost: u64,
}

/// Detection on, with limits no source reaches.
pub(crate) fn unreachable_limits() -> FloodConfig {
    let high = [u32::MAX / 2; LIMITS];
    FloodConfig {
        enabled: 1,
        hold: 1,
        window_ns: 60_000_000_000,
        limit: high,
        suspect: high,
        reports_per_window: 64,
        pad: 0,
    }
}

pub(crate) fn run(settings: &Settings) -> Result<Results> {
    let test_run = test_run(&settings.test_run)?;
    let veth = veth(settings)?;
    let pps = |f: fn(&VethRound) -> &Phase| -> f64 {
        median(
            &veth
                .iter()
                .map(|r| f(r).delivered_pps())
                .collect::<Vec<_>>(),
        )
    };
    let ratios: Vec<f64> = veth
        .iter()
        .map(|r| r.on.delivered_pps() / r.off.delivered_pps().max(1.0))
        .collect();
    let veth_on_lost = veth
        .iter()
        .map(|r| r.on.sent.saturating_sub(r.on.delivered + r.on.overflowed))
        .sum();
    Ok(Results {
        settings: *settings,
        veth_off_pps: pps(|r| &r.off),
        veth_on_pps: pps(|r| &r.on),
        veth_on_vs_off: median(&ratios),
        veth_on_lost,
        test_run,
        veth,
    })
}

/// A legitimate packet (a miss: no block matches) of each family, detection off and on.
fn test_run(settings: &datapath::Settings) -> Result<Vec<Pair>> {
    let mut loaded = [
        Loaded::with(DatapathOptions::default())?,
        Loaded::with(DatapathOptions {
            flood: unreachable_limits(),
            ..Default::default()
        })?,
    ];
    let mut probes = Vec::new();
    for family in [Family::Ipv4, Family::Ipv6] {
        let fixtures = Fixtures::of(family);
        for program in [0, 1] {
            let id = CaseId::plain(family, Packet::Miss);
            probes.push(Probe::new(&fixtures, id, program));
        }
    }
    eprintln!("flood detection off and on (BPF_PROG_TEST_RUN): measuring");
    let cases = datapath::measure(&mut loaded, &probes, settings)?;
    let mut pairs = Vec::new();
    let mut cases = cases.into_iter();
    while let (Some(off), Some(on)) = (cases.next(), cases.next()) {
        let pair = Pair {
            family: off.id.family,
            on_vs_off: on.vs_floor / off.vs_floor,
            wall_on_vs_off: on.wall_vs_floor / off.wall_vs_floor,
            off,
            on,
        };
        eprintln!(
            "flood: {} legitimate packet, detection off {:.1} ns, on {:.1} ns: on ÷ off {:.3} (wall {:.3})",
            pair.family, pair.off.median_ns, pair.on.median_ns, pair.on_vs_off, pair.wall_on_vs_off
        );
        pairs.push(pair);
    }
    Ok(pairs)
}

/// A lab whose receiver runs the program with `flood`.
struct Filtered {
    lab: Lab,
    wire: Wire,
    dp: Datapath,
}

impl Filtered {
    fn new(flood: FloodConfig) -> Result<Self> {
        let lab = Lab::new()?;
        let wire = Wire::new(&lab)?;
        let opts = DatapathOptions {
            bpffs_dir: lab.pins.path().to_owned(),
            flood,
            ..Default::default()
        };
        let mut dp = lab
            .receiver
            .run(move || Datapath::open(&opts).context("loading the XDP program"))??;
        lab.receiver
            .run(|| dp.attach(RECEIVER_IF, XdpModeRequest::Auto))??;
        Ok(Self { lab, wire, dp })
    }
}

impl Drop for Filtered {
    fn drop(&mut self) {
        let dp = &mut self.dp;
        // Best effort in drop: the lab's namespace goes, and the attachment with it.
        self.lab.receiver.run(|| dp.detach(RECEIVER_IF)).ok();
    }
}

fn veth(settings: &Settings) -> Result<Vec<VethRound>> {
    let base_lab = Lab::new()?;
    let base = Wire::new(&base_lab)?;
    let off = Filtered::new(FloodConfig::OFF)?;
    let on = Filtered::new(unreachable_limits())?;
    let d = Duration::from_millis(settings.flood_ms);
    let src = traffic::legit();
    let mut rounds = Vec::new();
    for _ in 0..settings.veth_rounds {
        rounds.push(VethRound {
            baseline: traffic::flood(&base, src, d)?,
            off: traffic::flood(&off.wire, src, d)?,
            on: traffic::flood(&on.wire, src, d)?,
        });
    }
    let legit: IpAddr = src.into();
    eprintln!(
        "flood: veth, {legit} flooding at full speed: {} rounds",
        rounds.len()
    );
    Ok(rounds)
}

#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
pub(crate) fn markdown(w: &mut String, r: &Results) {
    use std::fmt::Write as _;
    let _ = writeln!(
        w,
        "\n## 8. Flood detection: a legitimate packet, detection on ÷ off\n"
    );
    let _ = writeln!(
        w,
        "Two objects of this build, detection off and on (limits out of reach, so the source stays \
         legitimate: counted in the sketch, never a suspect), timed in the same rounds.\n"
    );
    let _ = writeln!(
        w,
        "| family | off ns | on ns | floor ns | on ÷ off | on ÷ off (wall) |"
    );
    let _ = writeln!(w, "|---|--:|--:|--:|--:|--:|");
    for p in &r.test_run {
        let _ = writeln!(
            w,
            "| {} | {:.1} | {:.1} | {:.1} | {:.3} | {:.3} |",
            p.family,
            p.off.median_ns,
            p.on.median_ns,
            p.off.floor_median_ns,
            p.on_vs_off,
            p.wall_on_vs_off
        );
    }
    let _ = writeln!(
        w,
        "\nveth pair, the legitimate source flooding at full speed, {} rounds of {} ms: detection \
         off {:.0} pps, on {:.0} pps delivered, on ÷ off **{:.3}** (median of the rounds' ratios); \
         datagrams lost with detection on: {}.",
        r.veth.len(),
        r.settings.flood_ms,
        r.veth_off_pps,
        r.veth_on_pps,
        r.veth_on_vs_off,
        r.veth_on_lost
    );
}
