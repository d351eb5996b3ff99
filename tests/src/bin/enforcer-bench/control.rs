//! Section 3, control plane: how fast blocks get into force.
//!
//! - **Triggers, one process each**, as the tools that call them work: Wazuh's firewall-drop
//!   runs `iptables -w -I INPUT -s X -j DROP`, fail2ban's nftables action runs
//!   `nft add element`, and the enforcer is asked with its CLI (`enforcer block X --ttl 1h`) or
//!   with its Wazuh hook, spawned exactly as wazuh-execd spawns active-response programs. Each
//!   is timed from spawn to exit over N blocks in a row, and the first and last tenth of the run
//!   show whether the cost grows with the number of blocks. The floor is spawning `/bin/true`.
//! - **Batch import** (`enforcer import FILE`) of 100k and 1M targets: blocks per second, from
//!   spawn to exit, parsing included.
//! - **CLI call to kernel entry**: from spawning `enforcer block` to the entry being readable in
//!   the pinned kernel map.
//! - **Trigger to drop**, on traffic: a source sends a probe every ~0.2 ms; the time from
//!   spawning `enforcer block` to the send time of the last probe that still got through.
//!
//! - **Import under scraping**: the same import with the metrics endpoint on, once idle and once
//!   with a client scraping `/metrics` every [`SCRAPE_EVERY`] (150× Prometheus's default 15 s),
//!   in alternating runs: the ratio of the medians is what monitoring costs an import.
//!
//! The daemon acknowledges a block only once it is in its store (fsynced) and in the kernel map,
//! so every acknowledged figure includes an fsync; the report says what file system that hits.
//! With `--baseline-enforcer PATH` the imports and the latencies are measured with that build
//! too, in the same run (its daemon and its CLI), so a change is read as a ratio.

use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use enforcer::{
    Target,
    datapath::{BlockMaps, PinLayout},
};
use enforcer_tests::{
    Lab, Netns,
    daemon::{Daemon, enforcer_bin},
};
use serde::Serialize;

use crate::{
    firewall::{self, FlushInput, Iptables, NsExec},
    hook,
    stats::{Summary, median},
    wire::{Probes, Wait, Wire, add_sources, now_ns},
};

/// How many of everything.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Settings {
    /// Blocks per per-process trigger.
    pub triggers: usize,
    /// Sizes of the batch imports.
    pub imports: &'static [usize],
    /// CLI calls timed to the kernel entry.
    pub latency_calls: usize,
    /// Blocks timed on traffic. 150 in a full run, so that its p99 (nearest rank) is the
    /// second largest trial, not the largest as with 50.
    pub drop_trials: usize,
    /// Targets of the import timed with and without a scrape loop.
    pub scrape_import: usize,
}

impl Settings {
    pub(crate) const FULL: Self = Self {
        triggers: 10_000,
        imports: &[100_000, 1_000_000],
        latency_calls: 200,
        drop_trials: 150,
        scrape_import: 100_000,
    };
    pub(crate) const QUICK: Self = Self {
        triggers: 1_000,
        imports: &[10_000],
        latency_calls: 100,
        drop_trials: 20,
        scrape_import: 100_000,
    };
}

/// Who asks for a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Trigger {
    /// `/bin/true`: what spawning a process costs, the floor of every per-process trigger.
    SpawnFloor,
    /// `iptables -w -I INPUT -s X -j DROP` (Wazuh's firewall-drop).
    Iptables,
    /// `nft add element inet T S { X timeout 1h }` (fail2ban's nftables action).
    NftAddElement,
    /// `enforcer block X --ttl 1h`.
    EnforcerCli,
    /// The enforcer's Wazuh hook, as execd runs it (stdin message, check_keys handshake).
    WazuhHook,
}

impl Trigger {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::SpawnFloor => "spawn /bin/true (floor)",
            Self::Iptables => "iptables -w -I INPUT -s X -j DROP",
            Self::NftAddElement => "nft add element … timeout 1h",
            Self::EnforcerCli => "enforcer block X --ttl 1h",
            Self::WazuhHook => "enforcer Wazuh hook (execd protocol)",
        }
    }
}

/// N blocks, one process each.
#[derive(Debug, Serialize)]
pub(crate) struct TriggerRun {
    pub trigger: Trigger,
    pub blocks: usize,
    pub seconds: f64,
    /// Mean milliseconds per block in each tenth of the run, in order.
    pub tenths_ms: Vec<f64>,
    /// Seconds for the first 1,000 blocks, when the run had that many.
    pub first_1k_seconds: Option<f64>,
}

impl TriggerRun {
    pub(crate) fn ms_each(&self) -> f64 {
        self.seconds * 1e3 / self.blocks as f64
    }

    pub(crate) fn per_second(&self) -> f64 {
        self.blocks as f64 / self.seconds
    }
}

/// One `enforcer import`.
#[derive(Debug, Serialize)]
pub(crate) struct ImportRun {
    pub blocks: usize,
    pub seconds: f64,
}

impl ImportRun {
    pub(crate) fn per_second(&self) -> f64 {
        self.blocks as f64 / self.seconds
    }
}

/// Everything section 3 measured (times in milliseconds unless named otherwise).
#[derive(Debug, Serialize)]
pub(crate) struct Results {
    pub settings: Settings,
    pub iptables: Iptables,
    /// The file system under the daemon's store (where its fsyncs go).
    pub store_fs: String,
    pub triggers: Vec<TriggerRun>,
    /// Why the Wazuh hook was not measured, if it was not.
    pub wazuh_skipped: Option<String>,
    pub imports: Vec<ImportRun>,
    /// The import with and without a scrape loop (not when skipped).
    pub scraped_import: Option<ScrapedImport>,
    /// Spawning `enforcer block` → the entry is in the kernel map.
    pub cli_to_kernel: Summary,
    /// Spawning `enforcer block` → the CLI exits (the daemon has acknowledged).
    pub cli_exit: Summary,
    /// Spawning `enforcer block` → the last probe that got through was sent.
    pub trigger_to_drop: Summary,
    /// The probes' mean interval: the resolution of `trigger_to_drop`.
    pub probe_interval_ms: f64,
    /// The imports and latencies again with another build (`--baseline-enforcer`), in the
    /// same run.
    pub baseline: Option<Baseline>,
}

/// The imports and latencies measured with a baseline build.
#[derive(Debug, Serialize)]
pub(crate) struct Baseline {
    /// The baseline binary's path.
    pub build: String,
    pub imports: Vec<ImportRun>,
    pub cli_to_kernel: Summary,
    pub cli_exit: Summary,
    pub trigger_to_drop: Summary,
}

/// Parts of the section that can be left out (`--control-skip`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Skip {
    /// The per-process triggers (iptables, nft, the CLI, the Wazuh hook); the spawn floor is
    /// still measured.
    Triggers,
    /// The import while `/metrics` is scraped.
    Scraped,
}

pub(crate) fn run(
    settings: &Settings,
    skip: &[Skip],
    imports_override: &[usize],
    baseline: Option<&Path>,
) -> Result<Results> {
    let iptables = Iptables::detect()?;
    let n = settings.triggers;
    let targets = firewall::filler(n);
    let mut triggers = vec![per_process(Trigger::SpawnFloor, n.min(1_000), |_| {
        check(Command::new("true").output()?)
    })?];
    let mut wazuh_skipped = Some("skipped (--control-skip triggers)".to_owned());
    if !skip.contains(&Skip::Triggers) {
        triggers.push(iptables_inserts(&iptables, &targets)?);
        triggers.push(nft_add_elements(&targets)?);
        triggers.push(cli_blocks(&targets)?);
        wazuh_skipped = match wazuh_hook(&targets)? {
            Ok(run) => {
                triggers.push(run);
                None
            }
            Err(why) => Some(why),
        };
    }
    // Where the daemons' stores live (each in a temporary directory): where their fsyncs go.
    let store_fs = filesystem(&std::env::temp_dir());

    let current = enforcer_bin();
    let sizes = if imports_override.is_empty() {
        settings.imports
    } else {
        imports_override
    };
    let (mut imports, mut baseline_imports) = (Vec::new(), Vec::new());
    for &size in sizes {
        eprintln!("control: enforcer import of {size} targets");
        imports.push(import(&current, size)?);
        if let Some(b) = baseline {
            eprintln!("control: enforcer import of {size} targets, baseline build");
            baseline_imports.push(import(b, size)?);
        }
    }

    let scraped_import = if skip.contains(&Skip::Scraped) {
        None
    } else {
        eprintln!(
            "control: import of {} targets while /metrics is scraped",
            settings.scrape_import
        );
        Some(scraped_import(settings.scrape_import)?)
    };

    eprintln!("control: latencies");
    let ours = latencies(&current, settings)?;
    let baseline = match baseline {
        Some(b) => {
            eprintln!("control: latencies, baseline build");
            let theirs = latencies(b, settings)?;
            Some(Baseline {
                build: b.display().to_string(),
                imports: baseline_imports,
                cli_to_kernel: theirs.cli_to_kernel,
                cli_exit: theirs.cli_exit,
                trigger_to_drop: theirs.trigger_to_drop,
            })
        }
        None => None,
    };

    Ok(Results {
        settings: *settings,
        iptables,
        store_fs,
        triggers,
        wazuh_skipped,
        imports,
        scraped_import,
        cli_to_kernel: ours.cli_to_kernel,
        cli_exit: ours.cli_exit,
        trigger_to_drop: ours.trigger_to_drop,
        probe_interval_ms: ours.probe_interval_ms,
        baseline,
    })
}

/// The latencies of one block with one build.
struct Latencies {
    cli_to_kernel: Summary,
    cli_exit: Summary,
    trigger_to_drop: Summary,
    probe_interval_ms: f64,
}

/// CLI → kernel entry and trigger → drop against a fresh daemon of `bin` (its own CLI too).
fn latencies(bin: &Path, settings: &Settings) -> Result<Latencies> {
    let lab = Lab::new()?;
    let d = Daemon::start_bin(bin, &lab, &[])?;
    let (cli_to_kernel, cli_exit) = cli_to_kernel(&lab, &d, bin, settings.latency_calls)?;
    let (trigger_to_drop, probe_interval_ms) =
        trigger_to_drop_with(&lab, &d, bin, settings.drop_trials, 100)?;
    Ok(Latencies {
        cli_to_kernel,
        cli_exit,
        trigger_to_drop,
        probe_interval_ms,
    })
}

/// `iptables -w -I INPUT -s X -j DROP` per block, in a namespace of its own.
fn iptables_inserts(iptables: &Iptables, targets: &[Ipv4Addr]) -> Result<TriggerRun> {
    let ns = Netns::new("enfc")?;
    let exec = NsExec::new(&ns)?;
    let _flush = FlushInput {
        exec: &exec,
        ipt: iptables,
    };
    per_process(Trigger::Iptables, targets.len(), |i| {
        let a = targets[i].to_string();
        check(
            exec.command(&iptables.command)
                .args(["-w", "-I", "INPUT", "-s", &a, "-j", "DROP"])
                .output()?,
        )
    })
}

/// `nft add element` per block into a set with timeouts, in a namespace of its own.
fn nft_add_elements(targets: &[Ipv4Addr]) -> Result<TriggerRun> {
    let ns = Netns::new("enfc")?;
    let exec = NsExec::new(&ns)?;
    let _table = firewall::nft_empty_set(&exec)?;
    per_process(Trigger::NftAddElement, targets.len(), |i| {
        check(
            exec.command("nft")
                .args(firewall::nft_add_element_args(targets[i]))
                .output()?,
        )
    })
}

/// `enforcer block` per block against a fresh daemon.
fn cli_blocks(targets: &[Ipv4Addr]) -> Result<TriggerRun> {
    let lab = Lab::new()?;
    let d = Daemon::start(&lab, &[])?;
    per_process(Trigger::EnforcerCli, targets.len(), |i| {
        check(
            cli(&d.socket)
                .args(["block", &targets[i].to_string(), "--ttl", "1h"])
                .output()?,
        )
    })
}

/// The Wazuh hook per block against a fresh daemon, or why it could not be measured (a build
/// without the hook).
fn wazuh_hook(targets: &[Ipv4Addr]) -> Result<Result<TriggerRun, String>> {
    let lab = Lab::new()?;
    let d = Daemon::start(&lab, &[])?;
    let hook = hook::WazuhHook::new(&d)?;
    // One block first, to see whether this build has the hook at all.
    if let Err(e) = hook.add(Ipv4Addr::new(198, 51, 100, 1)) {
        eprintln!("control: the Wazuh hook is not measured: {e:#}");
        return Ok(Err(format!("{e:#}")));
    }
    Ok(Ok(per_process(Trigger::WazuhHook, targets.len(), |i| {
        hook.add(targets[i])
    })?))
}

/// Runs `block(i)` for i in 0..n, one after the other, timing each.
fn per_process(
    trigger: Trigger,
    n: usize,
    mut block: impl FnMut(usize) -> Result<()>,
) -> Result<TriggerRun> {
    eprintln!("control: {n} × {}", trigger.label());
    let mut each = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        block(i).with_context(|| format!("{} (block {i})", trigger.label()))?;
        each.push(started.elapsed().as_secs_f64());
    }
    let tenth = n.div_ceil(10).max(1);
    Ok(TriggerRun {
        trigger,
        blocks: n,
        seconds: each.iter().sum(),
        tenths_ms: each
            .chunks(tenth)
            .map(|c| c.iter().sum::<f64>() * 1e3 / c.len() as f64)
            .collect(),
        first_1k_seconds: (n >= 1_000).then(|| each[..1_000].iter().sum()),
    })
}

pub(crate) fn check(out: std::process::Output) -> Result<()> {
    ensure!(
        out.status.success(),
        "exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The CLI, talking to one daemon.
pub(crate) fn cli(socket: &Path) -> Command {
    cli_of(&enforcer_bin(), socket)
}

/// The CLI of the build `bin`, talking to one daemon.
pub(crate) fn cli_of(bin: &Path, socket: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--socket").arg(socket);
    cmd
}

/// The file system and device a directory is on (where its fsyncs go), e.g. `ext4 on /dev/vda`.
fn filesystem(dir: &Path) -> String {
    Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE,SOURCE", "--target"])
        .arg(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" on ")
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// `enforcer import` of `n` targets into a fresh daemon of the build `bin` with room for them.
fn import(bin: &Path, n: usize) -> Result<ImportRun> {
    let lab = Lab::new()?;
    let capacity = (n + 1024).to_string();
    let d = Daemon::start_bin(bin, &lab, &["--max-addresses", &capacity])?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("targets.txt");
    let mut text = String::with_capacity(n * 14);
    for a in firewall::filler(n) {
        text.push_str(&a.to_string());
        text.push('\n');
    }
    std::fs::write(&file, text)?;
    let started = Instant::now();
    let out = cli_of(bin, &d.socket)
        .arg("import")
        .arg(&file)
        .args(["--ttl", "1h", "--json"])
        .output()?;
    let seconds = started.elapsed().as_secs_f64();
    check(out).context("enforcer import")?;
    Ok(ImportRun { blocks: n, seconds })
}

/// How often the scrape loop scrapes during an import.
pub(crate) const SCRAPE_EVERY: Duration = Duration::from_millis(100);

/// Imports with the metrics endpoint on: idle vs. scraped every [`SCRAPE_EVERY`].
#[derive(Debug, Serialize)]
pub(crate) struct ScrapedImport {
    pub blocks: usize,
    /// Seconds of each idle run.
    pub idle_seconds: Vec<f64>,
    /// Seconds of each scraped run.
    pub scraped_seconds: Vec<f64>,
    /// Scrapes answered during the scraped runs.
    pub scrapes: u64,
    /// Time for one scrape (request to full answer), over every scrape.
    pub scrape_ms: Option<Summary>,
}

impl ScrapedImport {
    /// Median scraped time over median idle time (1.0 = no cost).
    pub(crate) fn ratio(&self) -> f64 {
        median(&self.scraped_seconds) / median(&self.idle_seconds)
    }
}

/// Alternating idle and scraped imports of `n` targets into fresh daemons (three of each).
fn scraped_import(n: usize) -> Result<ScrapedImport> {
    let mut out = ScrapedImport {
        blocks: n,
        idle_seconds: Vec::new(),
        scraped_seconds: Vec::new(),
        scrapes: 0,
        scrape_ms: None,
    };
    let mut scrape_ms = Vec::new();
    for round in 0..6 {
        let scraped = round % 2 == 1;
        let lab = Lab::new()?;
        lab.receiver.ip(&["link", "set", "lo", "up"])?;
        let port = lab.receiver.run(|| {
            std::net::TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr().map(|a| a.port()))
        })???;
        let capacity = (n + 1024).to_string();
        let d = Daemon::start(
            &lab,
            &[
                "--max-addresses",
                &capacity,
                "--metrics-listen",
                &format!("127.0.0.1:{port}"),
            ],
        )?;
        let file = targets_file(n)?;
        let stop = AtomicBool::new(false);
        let (seconds, times) = std::thread::scope(|s| -> Result<(f64, Vec<f64>)> {
            let scraper =
                scraped.then(|| s.spawn(|| lab.receiver.run(|| scrape_until(port, &stop))));
            let started = Instant::now();
            let result = cli(&d.socket)
                .arg("import")
                .arg(file.1.as_path())
                .args(["--ttl", "1h", "--json"])
                .output();
            let seconds = started.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            let times = match scraper {
                Some(h) => h
                    .join()
                    .map_err(|_| anyhow::anyhow!("the scraper panicked"))???,
                None => Vec::new(),
            };
            check(result?).context("enforcer import")?;
            Ok((seconds, times))
        })?;
        if scraped {
            ensure!(
                !times.is_empty(),
                "no scrape was answered during the import"
            );
            out.scrapes += times.len() as u64;
            scrape_ms.extend(times);
            out.scraped_seconds.push(seconds);
        } else {
            out.idle_seconds.push(seconds);
        }
    }
    out.scrape_ms = Summary::of(&scrape_ms);
    Ok(out)
}

/// A file of `n` targets (the directory guard and the path).
fn targets_file(n: usize) -> Result<(tempfile::TempDir, std::path::PathBuf)> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("targets.txt");
    let mut text = String::with_capacity(n * 14);
    for a in firewall::filler(n) {
        text.push_str(&a.to_string());
        text.push('\n');
    }
    std::fs::write(&file, text)?;
    Ok((dir, file))
}

/// Scrapes `/metrics` every [`SCRAPE_EVERY`] until `stop`; returns each scrape's milliseconds.
fn scrape_until(port: u16, stop: &AtomicBool) -> Result<Vec<f64>> {
    use std::io::{Read as _, Write as _};
    let mut times = Vec::new();
    let mut body = Vec::with_capacity(16 * 1024);
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        // Pacing, not waiting for a condition: the loop's rate is what is measured.
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += SCRAPE_EVERY;
        let started = Instant::now();
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        body.clear();
        s.read_to_end(&mut body)?;
        ensure!(
            body.starts_with(b"HTTP/1.1 200"),
            "scrape failed: {}",
            String::from_utf8_lossy(&body)
        );
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(times)
}

/// The pinned maps of a lab's daemon, read-only.
pub(crate) fn pinned_maps(lab: &Lab) -> Result<BlockMaps> {
    Ok(BlockMaps::open_pinned(
        &PinLayout::new(lab.pins.path()).maps_dir(),
    )?)
}

/// Spawns `enforcer block` `calls` times and polls the pinned map until the entry is there.
/// Returns (spawn → entry visible, spawn → CLI exit).
fn cli_to_kernel(lab: &Lab, d: &Daemon, bin: &Path, calls: usize) -> Result<(Summary, Summary)> {
    let maps = pinned_maps(lab)?;
    let (mut visible, mut exited) = (Vec::new(), Vec::new());
    for i in 0..calls {
        let addr = Ipv4Addr::from(0x0ac8_0000 + i as u32); // 10.200.0.0/16: rule contents only
        let target = Target::new(std::net::IpAddr::V4(addr).into());
        let started = Instant::now();
        let child = cli_of(bin, &d.socket)
            .args(["block", &addr.to_string(), "--ttl", "1h"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let deadline = started + Duration::from_secs(10);
        while maps.get_block(&target)?.is_none() {
            ensure!(
                Instant::now() < deadline,
                "{addr} never reached the kernel map"
            );
            std::thread::sleep(Duration::from_micros(20));
        }
        visible.push(started.elapsed().as_secs_f64() * 1e3);
        let out = hook::wait_bounded(child, Duration::from_secs(10))?;
        exited.push(started.elapsed().as_secs_f64() * 1e3);
        check(out)?;
    }
    Ok((
        Summary::of(&visible).expect("calls > 0"),
        Summary::of(&exited).expect("calls > 0"),
    ))
}

/// Probe interval for the trigger-to-drop trials.
const PROBE_INTERVAL: Duration = Duration::from_micros(200);

/// For each trial, a fresh lab source (192.0.2.`first`, and on) probes every 0.2 ms;
/// `enforcer block` (of the build `bin`) is spawned; the latency is the send time of the
/// source's last probe that got through, minus the spawn time. Returns the latencies and the
/// probes' measured mean interval.
pub(crate) fn trigger_to_drop_with(
    lab: &Lab,
    d: &Daemon,
    bin: &Path,
    trials: usize,
    first: u8,
) -> Result<(Summary, f64)> {
    ensure!(
        usize::from(first) + trials < 256,
        "{trials} trials from 192.0.2.{first} run past the /24's last address"
    );
    let sources = add_sources(lab, first..first + trials as u8)?;
    let wire = Wire::new(lab)?;
    let probes = Probes::new();
    let stop = AtomicBool::new(false);
    let last_sent: [AtomicU64; 256] = std::array::from_fn(|_| AtomicU64::new(0));
    let seen: [AtomicU64; 256] = std::array::from_fn(|_| AtomicU64::new(0));
    let started = Instant::now();
    let result = std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            wire.receiver.run(&stop, Wait::Block, |a| {
                last_sent[usize::from(a.source)].fetch_max(a.sent_ns, Ordering::Relaxed);
                seen[usize::from(a.source)].fetch_add(1, Ordering::Relaxed);
            })
        });
        let sender = s.spawn(|| probes.run(&wire, PROBE_INTERVAL));
        let trials = (|| -> Result<Vec<f64>> {
            let mut latencies = Vec::new();
            for src in &sources {
                let o = usize::from(src.octets()[3]);
                probes.set(src.octets()[3], true);
                let deadline = Instant::now() + Duration::from_secs(2);
                while seen[o].load(Ordering::Relaxed) < 5 {
                    ensure!(Instant::now() < deadline, "probes from {src} do not arrive");
                    std::thread::sleep(Duration::from_millis(1));
                }
                let t0 = now_ns();
                let spawned = Instant::now();
                check(
                    cli_of(bin, &d.socket)
                        .args(["block", &src.to_string(), "--ttl", "1h"])
                        .output()?,
                )?;
                // Keep probing well past the acknowledgement, so a late drop would show.
                std::thread::sleep(Duration::from_millis(50).max(spawned.elapsed()));
                probes.set(src.octets()[3], false);
                let last = last_sent[o].load(Ordering::Relaxed);
                latencies.push(last.saturating_sub(t0) as f64 / 1e6);
            }
            Ok(latencies)
        })();
        probes.stop();
        stop.store(true, Ordering::Relaxed);
        sender.join().expect("the probe sender does not panic")?;
        receiver.join().expect("the receiver does not panic")?;
        trials
    })?;
    let interval_ms =
        started.elapsed().as_secs_f64() * 1e3 / probes.sent.load(Ordering::Relaxed).max(1) as f64;
    Ok((Summary::of(&result).context("no trials")?, interval_ms))
}
