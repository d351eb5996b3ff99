//! Section 4, expiry precision: how late a block ends, measured on traffic.
//!
//! N sources (lab addresses 192.0.2.100 and up on the sender's veth) are blocked one after the
//! other, spread over one second, with TTLs of 1, 2 and 3 s in turn, so the deadlines fall at
//! every phase of a second. From the moment its block is acknowledged each source sends a
//! stamped probe every millisecond. The lateness of a block is the send time of the first probe
//! that gets through, minus the block's deadline; one probe interval is the resolution. A probe
//! that *arrived* before its block's deadline was let through early: it was judged before it
//! arrived. (Its send time cannot tell: a probe sent just before the deadline is judged after
//! it, once the receiving softirq runs; those are counted apart, as on time.)
//!
//! - **enforcer**: blocks asked of the daemon over its control socket; the deadline is the one
//!   in the kernel entry (read from the pinned map once acknowledged), which the XDP program
//!   compares with the clock, so no timer is involved in ending a block.
//! - **userspace timer** (the baseline): what Wazuh's execd and fail2ban do. One iptables rule
//!   per block, inserted by a process (`iptables -w -I`); a loop that wakes once a second
//!   removes the rules whose deadline has passed, one `iptables -w -D` process each. Deadlines
//!   are exact (execd compares whole seconds, which would add up to another second).
//!
//! More than [`BATCH`] blocks (`--expiry-blocks`) run as consecutive batches of at most that many,
//! each in a fresh lab (and daemon), at the same pace; the lateness is summarised over all.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use enforcer::{
    Target,
    block::Source,
    client::Client,
    protocol::{BlockRequest, Reply, Request},
};
use enforcer_tests::{Lab, daemon::Daemon};
use serde::Serialize;

use crate::{
    firewall::{FlushInput, Iptables, NsExec},
    stats::Summary,
    wire::{Probes, Wait, Wire, add_sources, now_ns},
};

#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Settings {
    /// Blocks (and sources) per variant.
    pub blocks: usize,
}

impl Settings {
    pub(crate) const FULL: Self = Self { blocks: 100 };
    pub(crate) const QUICK: Self = Self { blocks: 20 };
}

/// The most blocks one batch spreads over its second (sources' last octets from
/// [`FIRST_SOURCE`]; the full run's density).
const BATCH: usize = 100;

/// The sizes of the batches that make up `n` blocks.
fn batches(n: usize) -> impl Iterator<Item = usize> {
    (0..n.div_ceil(BATCH)).map(move |i| BATCH.min(n - i * BATCH))
}

/// One batch's outcome: lateness of the blocks that ended (ms), early, sent-before and
/// never-ended counts.
#[derive(Default)]
struct Batch {
    late: Vec<f64>,
    early: usize,
    sent_before: usize,
    never_ended: usize,
}

impl Batch {
    fn add(&mut self, other: Self) {
        self.late.extend(other.late);
        self.early += other.early;
        self.sent_before += other.sent_before;
        self.never_ended += other.never_ended;
    }

    fn variant(self) -> Result<Variant> {
        Ok(Variant {
            lateness_ms: Summary::of(&self.late).context("no block ended")?,
            early: self.early,
            sent_before_deadline: self.sent_before,
            never_ended: self.never_ended,
        })
    }
}

/// Each source's probe interval: the resolution of the lateness.
const PROBE_INTERVAL: Duration = Duration::from_millis(1);
/// The first octet of the sources.
const FIRST_SOURCE: u8 = 100;

/// How late one way of ending blocks is.
#[derive(Debug, Serialize)]
pub(crate) struct Variant {
    /// First probe through − deadline, in ms, over the blocks that ended.
    pub lateness_ms: Summary,
    /// Blocks whose first probe through arrived before the deadline (judged early).
    pub early: usize,
    /// Blocks whose first probe through was sent before the deadline but arrived after it
    /// (judged on time, after the deadline: the send time's resolution).
    pub sent_before_deadline: usize,
    /// Blocks whose source never got through within the wait.
    pub never_ended: usize,
}

#[derive(Debug, Serialize)]
pub(crate) struct Results {
    pub settings: Settings,
    pub probe_interval_ms: f64,
    pub enforcer: Variant,
    pub userspace_timer: Variant,
}

impl Results {
    /// What fails the run: a block of enforcer's that let a probe through before its deadline
    /// (by the probe's arrival time, which follows the kernel's judgement). The baseline's count
    /// is reported, not judged.
    pub(crate) fn failures(&self) -> Vec<String> {
        let early = self.enforcer.early;
        if early == 0 {
            return Vec::new();
        }
        vec![format!(
            "expiry: {early} of enforcer's blocks let a probe through that arrived before the \
             deadline (an early expiry)"
        )]
    }
}

pub(crate) fn run(settings: &Settings) -> Result<Results> {
    let n = settings.blocks;
    eprintln!("expiry: {n} enforcer blocks");
    let mut enforcer = Batch::default();
    for size in batches(n) {
        enforcer.add(enforcer_batch(size)?);
    }
    eprintln!("expiry: {n} iptables rules and a once-a-second timer");
    let mut userspace_timer = Batch::default();
    for size in batches(n) {
        userspace_timer.add(timer_batch(size)?);
    }
    Ok(Results {
        settings: *settings,
        probe_interval_ms: PROBE_INTERVAL.as_secs_f64() * 1e3,
        enforcer: enforcer.variant()?,
        userspace_timer: userspace_timer.variant()?,
    })
}

/// `n` blocks asked of a fresh daemon.
fn enforcer_batch(n: usize) -> Result<Batch> {
    let lab = Lab::new()?;
    let d = Daemon::start(&lab, &[])?;
    let mut client = Client::connect(&d.socket, Duration::from_secs(10))?;
    let maps = crate::control::pinned_maps(&lab)?;
    measure(&lab, n, |addr, ttl| {
        let target = Target::new(IpAddr::V4(addr).into());
        let reply = client.call(&Request::Block(BlockRequest {
            target,
            ttl_secs: Some(ttl),
            permanent: false,
            source: Source::cli(),
            reason: Default::default(),
            shadow: false,
            force: false,
            scope: Default::default(),
        }))?;
        let Reply::Block(_) = reply else {
            bail!("unexpected reply {reply:?}")
        };
        let entry = maps.get_block(&target)?;
        Ok(entry
            .context("an acknowledged block is in the kernel")?
            .expires_ns)
    })
}

/// `n` iptables rules, ended by a once-a-second timer.
fn timer_batch(n: usize) -> Result<Batch> {
    let lab = Lab::new()?;
    let ipt = Iptables::detect()?;
    let exec = NsExec::new(&lab.receiver)?;
    let _flush = FlushInput {
        exec: &exec,
        ipt: &ipt,
    };
    let due: Mutex<Vec<(u64, Ipv4Addr)>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let timer = s.spawn(|| once_a_second(&exec, &ipt, &due, &stop));
        let result = measure(&lab, n, |addr, ttl| {
            let a = addr.to_string();
            let out = exec
                .command(&ipt.command)
                .args(["-w", "-I", "INPUT", "-s", &a, "-j", "DROP"])
                .output()?;
            ensure!(out.status.success(), "iptables -I {a} failed");
            // As execd: the timer starts when the block is in.
            let deadline = now_ns() + ttl * 1_000_000_000;
            due.lock().expect("not poisoned").push((deadline, addr));
            Ok(deadline)
        });
        stop.store(true, Ordering::Relaxed);
        timer.join().expect("the timer does not panic")?;
        result
    })
}

/// The userspace expiry loop: wake once a second, remove every rule whose deadline passed.
fn once_a_second(
    exec: &NsExec,
    ipt: &Iptables,
    due: &Mutex<Vec<(u64, Ipv4Addr)>>,
    stop: &AtomicBool,
) -> Result<()> {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_secs(1));
        let now = now_ns();
        let expired: Vec<Ipv4Addr> = {
            let mut due = due.lock().expect("not poisoned");
            let (gone, kept) = due.drain(..).partition(|(deadline, _)| *deadline <= now);
            *due = kept;
            gone.into_iter().map(|(_, a)| a).collect()
        };
        for a in expired {
            let a = a.to_string();
            exec.run(&ipt.command, &["-w", "-D", "INPUT", "-s", &a, "-j", "DROP"])?;
        }
    }
    Ok(())
}

/// Blocks `n` sources with `block(source, ttl) → deadline (CLOCK_BOOTTIME ns)`, probes each from
/// its acknowledgement on, and measures when each gets through again.
fn measure(
    lab: &Lab,
    n: usize,
    mut block: impl FnMut(Ipv4Addr, u64) -> Result<u64>,
) -> Result<Batch> {
    let sources = add_sources(lab, FIRST_SOURCE..FIRST_SOURCE + n as u8)?;
    let wire = Wire::new(lab)?;
    let probes = Probes::new();
    let stop = AtomicBool::new(false);
    // Per source (by last octet): when its block was acknowledged, and the send and arrival
    // times of its first probe through after that.
    let blocked_at: [AtomicU64; 256] = std::array::from_fn(|_| AtomicU64::new(0));
    let first_through: [AtomicU64; 256] = std::array::from_fn(|_| AtomicU64::new(0));
    let first_arrived: [AtomicU64; 256] = std::array::from_fn(|_| AtomicU64::new(0));
    let mut deadlines = Vec::with_capacity(n);
    std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            wire.receiver.run(&stop, Wait::Block, |a| {
                // Read once the datagram is in hand: after the kernel judged it.
                let arrived = now_ns();
                let o = usize::from(a.source);
                let since = blocked_at[o].load(Ordering::Relaxed);
                if since != 0
                    && a.sent_ns > since
                    && first_through[o]
                        .compare_exchange(0, a.sent_ns, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                {
                    first_arrived[o].store(arrived, Ordering::Relaxed);
                    probes.set(a.source, false);
                }
            })
        });
        let sender = s.spawn(|| probes.run(&wire, PROBE_INTERVAL));
        let blocking = (|| -> Result<()> {
            let start = Instant::now();
            for (i, src) in sources.iter().enumerate() {
                // Spread over one second: deadlines at every phase of the clock's second.
                let at = start + Duration::from_secs(1) * i as u32 / n as u32;
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
                let ttl = 1 + (i % 3) as u64;
                let deadline = block(*src, ttl).with_context(|| format!("blocking {src}"))?;
                let o = src.octets()[3];
                blocked_at[usize::from(o)].store(now_ns(), Ordering::Relaxed);
                probes.set(o, true);
                deadlines.push((o, deadline));
            }
            // Wait for every source to get through, or three seconds past the last deadline.
            let last = deadlines.iter().map(|&(_, d)| d).max().unwrap_or(0);
            while now_ns() < last + 3_000_000_000
                && deadlines
                    .iter()
                    .any(|&(o, _)| first_through[usize::from(o)].load(Ordering::Relaxed) == 0)
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Ok(())
        })();
        probes.stop();
        stop.store(true, Ordering::Relaxed);
        sender.join().expect("the probe sender does not panic")?;
        receiver.join().expect("the receiver does not panic")?;
        blocking
    })?;
    let mut batch = Batch::default();
    for (o, deadline) in deadlines {
        match first_through[usize::from(o)].load(Ordering::Relaxed) {
            0 => batch.never_ended += 1,
            t => {
                let arrived = first_arrived[usize::from(o)].load(Ordering::Relaxed);
                if arrived < deadline {
                    batch.early += 1;
                } else if t < deadline {
                    batch.sent_before += 1;
                }
                batch.late.push((t as f64 - deadline as f64) / 1e6);
            }
        }
    }
    Ok(batch)
}
