//! Section 2, real traffic: what a block list costs the packets that are *not* blocked, and
//! whether the blocked ones are all dropped, on a veth pair between two namespaces.
//!
//! For each filter and each number of blocks, the sender floods the receiver's UDP socket, first
//! from a legitimate source (192.0.2.1, never blocked: it pays for the list without being on
//! it), then from a blocked one (192.0.2.10, one of the N entries). The legitimate floods give
//! packets per second delivered to the socket; the blocked ones give the drop rate
//! (1 − delivered ÷ sent) and how fast drops go.
//!
//! Filters: the enforcer's XDP program (loaded with [`Datapath`] directly: the daemon writes
//! the same maps), preceded by the do-nothing `XDP_PASS` program from the same object (what
//! putting the veth into XDP mode costs by itself); one iptables rule per address, ipset, and an
//! nftables set ([`crate::firewall`]). Each filter gets a fresh lab, so no hook registered by an
//! earlier one (an iptables table, say) taxes the next. Within a filter the list grows in place;
//! for the per-address rules the blocked source's rule is the last in the chain, the worst case,
//! which is also what every legitimate packet pays.
//!
//! Every case is also a functional check, and a failed one fails the run: the blocked source's
//! floods must be dropped entirely (not one datagram delivered) whenever it is on the list, and
//! the legitimate source's must be delivered entirely (every frame sent reached the socket, or,
//! when some did not, the socket's own overflow counter accounts for it: see [`Run::failures`]).
//!
//! A veth pair between namespaces on a 2-vCPU VM is CPU-bound, and the VM's speed drifts by as
//! much as 2× from one minute to the next, in bursts of about a second. So, as in section 1,
//! every measurement is paired: each round floods a second, unfiltered lab (the baseline) right
//! before the filtered one, and a run reports the median over rounds of that round's ratio.
//! Floods are short and rounds many, so that a burst spoils few pairs: with 100 ms floods in
//! 20 rounds, two identical unfiltered labs measure 1.000 ± 0.003 against each other, where
//! 500 ms floods in 4 rounds were off by up to 18%. The sender runs on CPU 0 (with the receive
//! softirq), the reading thread spins on CPU 1.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::programs::XdpMode;
use enforcer::{
    Target,
    datapath::{Capacity, Datapath, DatapathOptions, XdpModeRequest},
};
use enforcer_common::MODE_ENFORCE;
use enforcer_tests::{Lab, RECEIVER_IF, SENDER_V4};
use serde::Serialize;

use crate::{
    firewall::{self, Iptables, NsExec, Peer},
    stats::median,
    wire::{Wait, Wire, pin_to_cpu},
};

/// How long each flood lasts, how many rounds, and the largest list.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Settings {
    pub flood_ms: u64,
    pub rounds: usize,
    pub largest: usize,
}

impl Settings {
    pub(crate) const FULL: Self = Self {
        flood_ms: 100,
        rounds: 20,
        largest: 1_000_000,
    };
    pub(crate) const QUICK: Self = Self {
        flood_ms: 100,
        rounds: 8,
        largest: 10_000,
    };
}

/// What filters the receiver's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Filter {
    /// The do-nothing program (`XDP_PASS`) from the same object: what putting the veth in XDP
    /// mode costs before the program does anything.
    XdpFloor,
    /// The enforcer's XDP program.
    Xdp,
    /// One of the peers.
    Peer(Peer),
}

impl Filter {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::XdpFloor => "XDP_PASS program (floor)",
            Self::Xdp => "enforcer XDP",
            Self::Peer(p) => p.label(),
        }
    }

    /// The list sizes measured: the per-address rules stop at 10k (each packet walks them all),
    /// the indexed ones go on.
    fn sizes(self, largest: usize) -> Vec<usize> {
        let all: &[usize] = match self {
            Self::XdpFloor => &[0],
            Self::Xdp => &[0, 1_000, 10_000, 100_000, 1_000_000],
            Self::Peer(Peer::IptablesPerAddress) => &[0, 1_000, 10_000],
            Self::Peer(_) => &[0, 1_000, 10_000, 100_000],
        };
        all.iter().copied().filter(|&n| n <= largest).collect()
    }
}

/// One flood.
#[derive(Debug, Serialize)]
pub(crate) struct Phase {
    /// Frames the sender's socket took.
    pub sent: u64,
    /// Datagrams of that source the receiver's socket got.
    pub delivered: u64,
    /// Datagrams the receiving socket dropped itself, its buffer full (the reader's loss, not
    /// the filter's).
    pub overflowed: u64,
    pub seconds: f64,
}

impl Phase {
    pub(crate) fn delivered_pps(&self) -> f64 {
        self.delivered as f64 / self.seconds
    }

    pub(crate) fn sent_pps(&self) -> f64 {
        self.sent as f64 / self.seconds
    }
}

/// One round: the unfiltered lab, then the filtered one from both sources.
#[derive(Debug, Serialize)]
pub(crate) struct Round {
    /// The legitimate source in the unfiltered lab.
    pub baseline: Phase,
    /// From 192.0.2.1, never on the list.
    pub legit: Phase,
    /// From 192.0.2.10, on the list whenever the list is not empty.
    pub blocked: Phase,
}

/// One filter with one list size.
#[derive(Debug, Serialize)]
pub(crate) struct Run {
    pub filter: Filter,
    pub blocks: usize,
    /// Median over rounds of the legitimate source's delivered packets per second.
    pub legit_pps: f64,
    /// Median over rounds of the baseline's.
    pub baseline_pps: f64,
    /// Median over rounds of legit ÷ baseline of that round.
    pub vs_baseline: f64,
    /// Share of the blocked source's frames that never reached the socket, over all rounds.
    pub drop_rate: f64,
    /// Median over rounds of the rate at which the blocked source's frames were sent (and,
    /// when the list holds it, dropped): what the filter lets an attacker cost.
    pub blocked_pps: f64,
    pub rounds: Vec<Round>,
    /// Why this case fails the run (empty: it passed). See [`Run::failures`].
    pub failures: Vec<String>,
}

impl Run {
    fn new(filter: Filter, blocks: usize, rounds: Vec<Round>) -> Self {
        let legit: Vec<f64> = rounds.iter().map(|r| r.legit.delivered_pps()).collect();
        let base: Vec<f64> = rounds.iter().map(|r| r.baseline.delivered_pps()).collect();
        let ratio: Vec<f64> = rounds
            .iter()
            .map(|r| r.legit.delivered_pps() / r.baseline.delivered_pps().max(1.0))
            .collect();
        let blocked: Vec<f64> = rounds.iter().map(|r| r.blocked.sent_pps()).collect();
        let sent: u64 = rounds.iter().map(|r| r.blocked.sent).sum();
        let delivered: u64 = rounds.iter().map(|r| r.blocked.delivered).sum();
        Self {
            filter,
            blocks,
            legit_pps: median(&legit),
            baseline_pps: median(&base),
            vs_baseline: median(&ratio),
            drop_rate: if sent == 0 {
                f64::NAN
            } else {
                1.0 - delivered as f64 / sent as f64
            },
            blocked_pps: median(&blocked),
            failures: Self::failures(blocks, &rounds),
            rounds,
        }
    }

    /// What makes a case fail: a blocked source on the list that got even one datagram through,
    /// a legitimate source that lost one to anything but the socket's own overflow, or, with
    /// an empty list, a blocked source that lost one (nothing should filter it then).
    pub(crate) fn failures(blocks: usize, rounds: &[Round]) -> Vec<String> {
        let sum = |f: fn(&Round) -> &Phase, g: fn(&Phase) -> u64| -> u64 {
            rounds.iter().map(|r| g(f(r))).sum()
        };
        let mut out = Vec::new();
        let (b_sent, b_delivered) = (
            sum(|r| &r.blocked, |p| p.sent),
            sum(|r| &r.blocked, |p| p.delivered),
        );
        if blocks > 0 && b_delivered > 0 {
            out.push(format!(
                "the blocked source is on the list, yet {b_delivered} of its {b_sent} datagrams were delivered \
                 (dropped {:.4}%, not 100%)",
                (1.0 - b_delivered as f64 / b_sent.max(1) as f64) * 100.0
            ));
        }
        if blocks == 0 {
            let lost = b_sent.saturating_sub(b_delivered + sum(|r| &r.blocked, |p| p.overflowed));
            if lost > 0 {
                out.push(format!("with an empty list, {lost} of {b_sent} datagrams from the second source were dropped"));
            }
        }
        let (sent, delivered, overflowed) = (
            sum(|r| &r.legit, |p| p.sent),
            sum(|r| &r.legit, |p| p.delivered),
            sum(|r| &r.legit, |p| p.overflowed),
        );
        let lost = sent.saturating_sub(delivered + overflowed);
        if lost > 0 {
            out.push(format!(
                "the legitimate source lost {lost} of its {sent} datagrams before the socket \
                 ({overflowed} more overflowed the socket's buffer)"
            ));
        }
        out
    }
}

/// Everything section 2 measured.
#[derive(Debug, Serialize)]
pub(crate) struct Results {
    pub settings: Settings,
    pub iptables: Iptables,
    /// The XDP mode the kernel reported for the enforcer's program on the veth.
    pub xdp_mode: String,
    /// Median of every baseline flood.
    pub baseline_pps: f64,
    pub runs: Vec<Run>,
}

impl Results {
    /// Every failed case, one line each.
    pub(crate) fn failures(&self) -> Vec<String> {
        self.runs
            .iter()
            .flat_map(|r| {
                r.failures
                    .iter()
                    .map(move |f| format!("{} with {} blocks: {f}", r.filter.label(), r.blocks))
            })
            .collect()
    }

    pub(crate) fn find(&self, filter: Filter, blocks: usize) -> Option<&Run> {
        self.runs
            .iter()
            .find(|r| r.filter == filter && r.blocks == blocks)
    }
}

pub(crate) fn legit() -> Ipv4Addr {
    SENDER_V4[0].parse().expect("valid address")
}

fn attacker() -> Ipv4Addr {
    SENDER_V4[1].parse().expect("valid address")
}

/// The list of `n` blocks: `n − 1` filler addresses, then the attacker.
fn block_list(n: usize) -> Vec<Ipv4Addr> {
    let mut list = firewall::filler(n.saturating_sub(1));
    if n > 0 {
        list.push(attacker());
    }
    list
}

/// The unfiltered lab every measurement is paired with.
struct Baseline {
    _lab: Lab,
    wire: Wire,
}

pub(crate) fn run(settings: &Settings) -> Result<Results> {
    let iptables = Iptables::detect()?;
    let lab = Lab::new()?;
    let base = Baseline {
        wire: Wire::new(&lab)?,
        _lab: lab,
    };
    let mut runs = Vec::new();
    let xdp_mode = xdp(&base, settings, &mut runs)?;
    for peer in [Peer::IptablesPerAddress, Peer::Ipset, Peer::NftSet] {
        peers(&base, settings, &iptables, peer, &mut runs)?;
    }
    let all: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.rounds.iter().map(|x| x.baseline.delivered_pps()))
        .collect();
    Ok(Results {
        settings: *settings,
        iptables,
        xdp_mode,
        baseline_pps: median(&all),
        runs,
    })
}

/// The enforcer's program attached to the receiver's veth, its maps growing in place.
/// Returns the attach mode.
fn xdp(base: &Baseline, settings: &Settings, runs: &mut Vec<Run>) -> Result<String> {
    let lab = Lab::new()?;
    let wire = Wire::new(&lab)?;
    let opts = DatapathOptions {
        bpffs_dir: lab.pins.path().to_owned(),
        capacity: Capacity {
            addresses: (1 << 20) + 1024,
            prefixes: 1024,
            allow: 64,
        },
        count_block_hits: true,
        ..Default::default()
    };
    let mut dp = lab
        .receiver
        .run(move || Datapath::open(&opts).context("loading the XDP program"))??;
    // First the floor alone, then the enforcer's program in its place.
    let floor = lab.receiver.run(|| {
        dp.floor_program()?
            .attach(RECEIVER_IF, XdpMode::Driver)
            .map_err(anyhow::Error::from)
    })??;
    let measured = measure(base, &wire, Filter::XdpFloor, 0, settings);
    dp.floor_program()?.detach(floor)?;
    runs.push(measured?);
    let attachment = lab
        .receiver
        .run(|| dp.attach(RECEIVER_IF, XdpModeRequest::Auto))??;
    let mut have: usize = 0;
    let result = (|| -> Result<()> {
        for n in Filter::Xdp.sizes(settings.largest) {
            let list = block_list(n);
            // The attacker comes last in the list and moves as it grows: insert what is new,
            // and the attacker again (an update in place).
            for a in list.iter().skip(have.saturating_sub(1)) {
                let target = Target::new(IpAddr::V4(*a).into());
                dp.maps_mut()
                    .upsert_block(&target, 0, MODE_ENFORCE)
                    .with_context(|| format!("inserting {target}"))?;
            }
            have = n;
            runs.push(measure(base, &wire, Filter::Xdp, n, settings)?);
        }
        Ok(())
    })();
    // Best effort: the measurement's result is what counts, and the lab's namespace takes the
    // attachment along.
    lab.receiver.run(|| dp.detach(RECEIVER_IF)).ok();
    result?;
    Ok(attachment.mode.to_string())
}

/// One peer, rebuilt at each size with its bulk loader.
fn peers(
    base: &Baseline,
    settings: &Settings,
    ipt: &Iptables,
    peer: Peer,
    runs: &mut Vec<Run>,
) -> Result<()> {
    let lab = Lab::new()?;
    let wire = Wire::new(&lab)?;
    let exec = NsExec::new(&lab.receiver)?;
    for n in Filter::Peer(peer).sizes(settings.largest) {
        let _installed = firewall::install(&exec, ipt, peer, &block_list(n))?;
        runs.push(measure(base, &wire, Filter::Peer(peer), n, settings)?);
    }
    Ok(())
}

fn measure(
    base: &Baseline,
    wire: &Wire,
    filter: Filter,
    blocks: usize,
    settings: &Settings,
) -> Result<Run> {
    let seconds = Duration::from_millis(settings.flood_ms);
    let mut rounds = Vec::new();
    for _ in 0..settings.rounds {
        rounds.push(Round {
            baseline: flood(&base.wire, legit(), seconds)?,
            legit: flood(wire, legit(), seconds)?,
            blocked: flood(wire, attacker(), seconds)?,
        });
    }
    let run = Run::new(filter, blocks, rounds);
    eprintln!(
        "traffic: {} with {blocks} blocks: legit {:.0} pps ({:.2}× baseline), blocked source dropped {:.2}%",
        filter.label(),
        run.legit_pps,
        run.vs_baseline,
        run.drop_rate * 100.0
    );
    for f in &run.failures {
        eprintln!("traffic: FAILED: {f}");
    }
    Ok(run)
}

/// Floods from `src` for `duration` and counts what the socket got from it.
pub(crate) fn flood(wire: &Wire, src: Ipv4Addr, duration: Duration) -> Result<Phase> {
    let frame = wire.frame(src);
    let octet = src.octets()[3];
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            pin_to_cpu(1);
            let mut delivered = 0u64;
            wire.receiver.run(&stop, Wait::Spin, |a| {
                if a.source == octet {
                    delivered += 1;
                }
            })?;
            anyhow::Ok(delivered)
        });
        let overflows_before = wire.receiver.overflows()?;
        let sender = s.spawn(|| {
            pin_to_cpu(0);
            wire.sender.blast(&frame, duration)
        });
        let sent = sender.join().expect("the sender does not panic");
        // What is in flight lands within microseconds on a veth; then the reader drains.
        std::thread::sleep(Duration::from_millis(10));
        stop.store(true, Ordering::Relaxed);
        let delivered = receiver.join().expect("the receiver does not panic");
        Ok(Phase {
            sent: sent?,
            delivered: delivered?,
            overflowed: wire.receiver.overflows()? - overflows_before,
            seconds: duration.as_secs_f64(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(sent: u64, delivered: u64, overflowed: u64) -> Phase {
        Phase {
            sent,
            delivered,
            overflowed,
            seconds: 0.1,
        }
    }

    fn round(legit: Phase, blocked: Phase) -> Round {
        Round {
            baseline: phase(100, 100, 0),
            legit,
            blocked,
        }
    }

    #[test]
    fn a_case_passes_only_when_the_block_drops_everything_and_legit_traffic_nothing() {
        let good = [round(phase(100, 100, 0), phase(100, 0, 0))];
        assert!(Run::failures(10, &good).is_empty());
        // One blocked datagram delivered: 99% is not 100%.
        let leak = [round(phase(100, 100, 0), phase(100, 1, 0))];
        let f = Run::failures(10, &leak);
        assert!(
            f.len() == 1 && f[0].contains("1 of its 100 datagrams were delivered"),
            "{f:?}"
        );
        // One legitimate datagram dropped before the socket.
        let lost = [round(phase(100, 99, 0), phase(100, 0, 0))];
        let f = Run::failures(10, &lost);
        assert!(f.len() == 1 && f[0].contains("lost 1 of its 100"), "{f:?}");
        // The socket's own overflow is not the filter's doing.
        let overflow = [round(phase(100, 90, 10), phase(100, 0, 0))];
        assert!(Run::failures(10, &overflow).is_empty());
        // With an empty list nothing may be dropped, from either source.
        let empty = [round(phase(100, 100, 0), phase(100, 100, 0))];
        assert!(Run::failures(0, &empty).is_empty());
        let dropped = [round(phase(100, 100, 0), phase(100, 0, 0))];
        assert_eq!(Run::failures(0, &dropped).len(), 1);
    }
}
