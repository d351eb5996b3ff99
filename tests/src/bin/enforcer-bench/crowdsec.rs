//! Section 6, CrowdSec: the daemon as a bouncer of a real LAPI (Debian's `crowdsec` 1.4).
//!
//! - **Fleet latency**: two lab hosts (each its own namespaces, pins, state and daemon) pull
//!   one LAPI over a management link. Each round, `cscli decisions add --ip` bans a source that
//!   probes both hosts every 2 ms; latency = last probe received − `cscli` returning, per host
//!   and for the slower of the two. The baseline is the configured poll interval: a polling
//!   bouncer's expected latency is half of it, its worst case all of it.
//! - **Startup sync**: the LAPI is filled with N ban decisions (`cscli decisions import`), then
//!   a daemon starts; time from starting the process to all N enforced (in the kernel maps, as
//!   `status` counts them). The baseline is the LAPI's own answer to the same full pull
//!   (`curl`), which no bouncer can beat. With `--baseline-enforcer PATH`, the same sync is
//!   also run with that build, interleaved with this one's runs, for a before/after ratio.

use std::{
    io::Write as _,
    net::UdpSocket,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use enforcer_tests::{
    Lab, PinDir, RECEIVER_V4, SENDER_V4,
    crowdsec::{FleetLabs, Lapi},
    daemon::{Daemon, enforcer_bin},
    wait_for,
};
use serde::Serialize;

use crate::stats::Summary;

#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Settings {
    /// The bouncers' update_frequency, in seconds.
    pub poll_secs: u64,
    /// Decisions timed on the fleet.
    pub rounds: usize,
    /// Decisions in the startup sync.
    pub sync_decisions: usize,
    /// Startup syncs per build (the median is reported).
    pub sync_runs: usize,
}

impl Settings {
    pub(crate) const FULL: Self = Self {
        poll_secs: 2,
        rounds: 20,
        sync_decisions: 100_000,
        sync_runs: 3,
    };
    pub(crate) const QUICK: Self = Self {
        poll_secs: 1,
        rounds: 3,
        sync_decisions: 2_000,
        sync_runs: 1,
    };
}

#[derive(Debug, Serialize)]
pub(crate) struct Fleet {
    pub poll_ms: f64,
    pub host_a_ms: Summary,
    pub host_b_ms: Summary,
    /// Per decision, the later of the two hosts.
    pub both_ms: Summary,
}

#[derive(Debug, Serialize)]
pub(crate) struct Sync {
    pub decisions: usize,
    /// `cscli decisions import` (not part of the result; says what filling costs).
    pub import_s: f64,
    /// The LAPI answering the full pull to curl (median of 3): the baseline.
    pub lapi_answer_ms: f64,
    /// When the first byte of that answer arrived (median of the same 3): until then the LAPI
    /// is working and nothing can be decoded.
    pub lapi_first_byte_ms: f64,
    /// Daemon process start → every decision enforced (median over the runs).
    pub enforced_ms: f64,
    /// Each run of this build.
    pub enforced_runs_ms: Vec<f64>,
    /// The same with a baseline build (`--baseline-enforcer`), runs interleaved with ours.
    pub baseline: Option<BaselineSync>,
}

#[derive(Debug, Serialize)]
pub(crate) struct BaselineSync {
    /// The baseline binary's path (keep it in a directory named after its commit: the binary
    /// itself must be called `enforcer`, as its name selects what it runs as).
    pub build: String,
    /// Median over the runs.
    pub enforced_ms: f64,
    /// Each run.
    pub enforced_runs_ms: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Results {
    pub settings: Settings,
    pub fleet: Fleet,
    pub sync: Sync,
}

pub(crate) fn run(s: &Settings, baseline: Option<&Path>) -> Result<Results> {
    let fleet = fleet(s)?;
    let sync = sync(s, baseline)?;
    Ok(Results {
        settings: *s,
        fleet,
        sync,
    })
}

/// Receives probes and remembers when the last one arrived.
struct Probe {
    stop: Arc<AtomicBool>,
    last_rx_ns: Arc<AtomicU64>,
    epoch: Instant,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Probe {
    fn start(lab: &Lab, src: &str, epoch: Instant) -> Result<Self> {
        let rx = lab.udp_listener(RECEIVER_V4)?;
        let tx = lab.udp_sender(src)?;
        let dst = rx.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let last_rx_ns = Arc::new(AtomicU64::new(0));
        let (s1, s2, last) = (stop.clone(), stop.clone(), last_rx_ns.clone());
        let sender = std::thread::spawn(move || {
            while !s1.load(Ordering::Relaxed) {
                // A probe the link refuses is a probe not answered, which is what is measured.
                tx.send_to(b"probe", dst).ok();
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let receiver = std::thread::spawn(move || receive(&rx, &s2, &last, epoch));
        Ok(Self {
            stop,
            last_rx_ns,
            epoch,
            threads: vec![sender, receiver],
        })
    }

    /// Waits until probes stop (or resume) arriving; returns when the change happened.
    fn wait(&self, blocked: bool, timeout: Duration) -> Result<Instant> {
        wait_for(
            if blocked {
                "probes to stop"
            } else {
                "probes to pass"
            },
            timeout,
            || {
                let last =
                    self.epoch + Duration::from_nanos(self.last_rx_ns.load(Ordering::Relaxed));
                let quiet = last.elapsed() > Duration::from_millis(150);
                Ok((quiet == blocked).then_some(last))
            },
        )
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            // A panicked thread has printed its panic; stopping goes on.
            t.join().ok();
        }
    }
}

fn receive(rx: &UdpSocket, stop: &AtomicBool, last: &AtomicU64, epoch: Instant) {
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        if rx.recv(&mut buf).is_ok() {
            last.store(epoch.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }
}

fn fleet(s: &Settings) -> Result<Fleet> {
    let FleetLabs { lapi, a, b } = FleetLabs::new(None)?;
    let extra = format!(
        "update_frequency = \"{}s\"\ninsecure_http = true\n",
        s.poll_secs
    );
    let ca = lapi.daemon_config("bench-a", &lapi.url(), &extra)?;
    let cb = lapi.daemon_config("bench-b", &lapi.url(), &extra)?;
    let _da = Daemon::start(&a, &["--config", &ca.to_string_lossy()])?;
    let _db = Daemon::start(&b, &["--config", &cb.to_string_lossy()])?;
    let epoch = Instant::now();
    let src = SENDER_V4[1];
    let (pa, pb) = (Probe::start(&a, src, epoch)?, Probe::start(&b, src, epoch)?);
    let deadline = Duration::from_secs(s.poll_secs * 3 + 10);
    pa.wait(false, deadline)?;
    pb.wait(false, deadline)?;
    let (mut ta, mut tb, mut both) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..s.rounds {
        // Start at a random phase of the poll cycle.
        std::thread::sleep(Duration::from_millis(
            (round as u64 * 377) % (s.poll_secs * 1000),
        ));
        lapi.cscli(&["decisions", "add", "--ip", src, "--duration", "1h"])?;
        let t0 = Instant::now();
        let la = pa
            .wait(true, deadline)?
            .saturating_duration_since(t0)
            .as_secs_f64()
            * 1e3;
        let lb = pb
            .wait(true, deadline)?
            .saturating_duration_since(t0)
            .as_secs_f64()
            * 1e3;
        eprintln!(
            "  decision {}: host A {la:.0} ms, host B {lb:.0} ms",
            round + 1
        );
        ta.push(la);
        tb.push(lb);
        both.push(la.max(lb));
        lapi.cscli(&["decisions", "delete", "--ip", src])?;
        pa.wait(false, deadline)?;
        pb.wait(false, deadline)?;
    }
    Ok(Fleet {
        poll_ms: s.poll_secs as f64 * 1e3,
        host_a_ms: Summary::of(&ta).context("no rounds")?,
        host_b_ms: Summary::of(&tb).context("no rounds")?,
        both_ms: Summary::of(&both).context("no rounds")?,
    })
}

fn sync(s: &Settings, baseline: Option<&Path>) -> Result<Sync> {
    let n = s.sync_decisions;
    ensure!(
        n <= 131_072,
        "the sync uses 198.18.0.0/15 (the benchmarking range): at most 131072 decisions"
    );
    let mut lab = Lab::new()?;
    let lapi = Lapi::start(&lab.receiver, "127.0.0.1:8080")?;
    let import_s = fill(&lapi, n)?;
    eprintln!("  imported {n} decisions in {import_s:.1} s");
    let config = lapi.daemon_config("bench-sync", &lapi.url(), "update_frequency = \"1s\"\n")?;
    let key = lapi.add_bouncer("bench-curl")?;
    let (mut answers, mut first_bytes) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = Instant::now();
        let out = lab.receiver.exec(
            "curl",
            &[
                "-sf",
                "-o",
                "/dev/null",
                "-w",
                "%{time_starttransfer}",
                "-H",
                &format!("X-Api-Key: {key}"),
                &format!("{}v1/decisions/stream?startup=true", lapi.url()),
            ],
        )?;
        answers.push(t.elapsed().as_secs_f64() * 1e3);
        let first: f64 = out
            .trim()
            .parse()
            .with_context(|| format!("curl's time_starttransfer: {out}"))?;
        first_bytes.push(first * 1e3);
    }
    let lapi_answer_ms = crate::stats::median(&answers);
    let lapi_first_byte_ms = crate::stats::median(&first_bytes);
    eprintln!(
        "  LAPI full pull to curl: first byte {lapi_first_byte_ms:.0} ms, whole answer {lapi_answer_ms:.0} ms"
    );
    let current = enforcer_bin();
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..s.sync_runs {
        // Interleaved, each build first in turn, so a change in the machine's load hits both.
        let ours_first = run % 2 == 0;
        for this_build in [ours_first, !ours_first] {
            let (bin, times, name) = match (this_build, baseline) {
                (true, _) => (current.as_path(), &mut ours, "this build"),
                (false, Some(b)) => (b, &mut theirs, "baseline"),
                (false, None) => continue,
            };
            let ms = sync_once(&mut lab, bin, &config, n)?;
            eprintln!(
                "  {name}: {n} decisions enforced {ms:.0} ms after the daemon started (LAPI answer alone: {lapi_answer_ms:.0} ms)"
            );
            times.push(ms);
        }
    }
    Ok(Sync {
        decisions: n,
        import_s,
        lapi_answer_ms,
        lapi_first_byte_ms,
        enforced_ms: crate::stats::median(&ours),
        enforced_runs_ms: ours,
        baseline: baseline.map(|b| BaselineSync {
            build: b.display().to_string(),
            enforced_ms: crate::stats::median(&theirs),
            enforced_runs_ms: theirs,
        }),
    })
}

/// Fills the LAPI with `n` ban decisions (`cscli decisions import`); returns how long it took.
fn fill(lapi: &Lapi, n: usize) -> Result<f64> {
    let csv = lapi.path("decisions.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&csv)?);
    writeln!(f, "duration,scope,value,reason")?;
    for i in 0..n as u32 {
        let addr = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + i);
        writeln!(f, "4h,ip,{addr},bench/import")?;
    }
    f.into_inner()?.sync_all()?;
    let started = Instant::now();
    lapi.cscli(&["decisions", "import", "-i", &csv.to_string_lossy()])?;
    Ok(started.elapsed().as_secs_f64())
}

/// One startup sync with `bin`: daemon start → all `n` decisions in the kernel maps (as
/// `status` counts them). The daemon is stopped after, and its pins (maps, XDP link) removed,
/// so the next run starts from nothing.
fn sync_once(lab: &mut Lab, bin: &Path, config: &Path, n: usize) -> Result<f64> {
    let started = Instant::now();
    let mut daemon = Daemon::start_bin(
        bin,
        lab,
        &[
            "--config",
            &config.to_string_lossy(),
            "--max-addresses",
            "262144",
        ],
    )?;
    // Asked with the build's own CLI (builds may differ in protocol); a status asked while the
    // engine applies the pull is answered after that round.
    wait_for(
        "every decision to be enforced",
        Duration::from_secs(120),
        || {
            let out = std::process::Command::new(bin)
                .arg("--socket")
                .arg(&daemon.socket)
                .args(["status", "--json"])
                .output()?;
            let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            Ok((status["targets"].as_u64().unwrap_or(0) >= n as u64).then_some(()))
        },
    )?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    // The daemon's own account of the pull (fetch, parse, apply), for profiling.
    if let Ok(dir) = std::env::var("ENFORCER_BENCH_LOGS") {
        // Only for profiling: a log that cannot be written does not stop the measurement.
        std::fs::write(
            format!("{dir}/daemon-{}.log", enforcer_tests::unique_name("")),
            daemon.log(),
        )
        .ok();
    }
    if let Some(line) = daemon
        .log()
        .lines()
        .find(|l| l.contains("CrowdSec full pull applied"))
    {
        eprintln!("    daemon: {}", line.trim());
    }
    daemon.stop()?;
    drop(daemon);
    lab.pins = PinDir::new()?;
    Ok(ms)
}
