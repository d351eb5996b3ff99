//! Section 5, memory: what a block costs to hold, and what it costs to let go of.
//!
//! - **Kernel memory per entry**: the `memlock` the kernel accounts to each block map (from
//!   `/proc/self/fdinfo` of the map's descriptor), before and after filling it with 1M single
//!   addresses or 100k prefixes. The exact-match maps are created without preallocation and
//!   kernels since 6.4 account the memory actually in use, so the difference divided by the
//!   entries is the cost of one entry. Next to it: the entry's own bytes (key + value, the floor)
//!   and ipset's `Size in memory` for the same entries (`hash:ip` and `hash:net`, with timeouts).
//! - **Daemon RSS**: `VmRSS` empty, with 1M blocks imported, and after they have all expired.
//! - **Reaper cost**: 1M blocks made to expire within about a second of each other; how long
//!   until the daemon has removed them all (from its store, its index and the kernel), and the
//!   CPU time (`utime + stime`) it spent doing so. The kernel stops enforcing each block at its
//!   deadline by itself; the reaper's work is bookkeeping, and this is its price.

use std::{
    fmt::Write as _,
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, bail, ensure};
use aya::maps::MapData;
use enforcer::{
    Target,
    block::Source,
    client::Client,
    datapath::{Capacity, Datapath, DatapathOptions, PinLayout},
    protocol::{BatchItem, BatchRequest, Reply, Request, StatusReply},
};
use enforcer_common::{BlockEntry, BlockValue, MODE_ENFORCE, map_names};
use enforcer_tests::{
    Lab, Netns, PinDir,
    daemon::{Daemon, enforcer_bin},
};
use serde::Serialize;

use crate::{
    datapath::{Family, Fill, background},
    firewall::{self, NsExec},
};

#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Settings {
    /// Single addresses per family in the kernel maps.
    pub addresses: usize,
    /// Prefixes per family in the kernel maps.
    pub prefixes: usize,
    /// Blocks in the daemon (RSS and reaper).
    pub daemon_blocks: usize,
}

impl Settings {
    pub(crate) const FULL: Self = Self {
        addresses: 1_000_000,
        prefixes: 100_000,
        daemon_blocks: 1_000_000,
    };
    pub(crate) const QUICK: Self = Self {
        addresses: 10_000,
        prefixes: 10_000,
        daemon_blocks: 10_000,
    };
}

/// One map's memory before and after filling.
#[derive(Debug, Serialize)]
pub(crate) struct MapMemory {
    /// The enforcer's map, or the ipset set type.
    pub map: String,
    pub family: Family,
    pub fill: Fill,
    pub entries: usize,
    pub bytes_empty: u64,
    pub bytes_full: u64,
    /// Key + value: what an entry holds.
    pub payload_bytes: usize,
}

impl MapMemory {
    pub(crate) fn per_entry(&self) -> f64 {
        (self.bytes_full - self.bytes_empty) as f64 / self.entries as f64
    }
}

/// The daemon's resident memory.
#[derive(Debug, Serialize)]
pub(crate) struct Rss {
    pub blocks: usize,
    pub empty_kib: u64,
    /// Right after the import.
    pub loaded_kib: u64,
    /// After a `stats` answer, for which the daemon counts the drops by origin over every
    /// kernel block, as it does every 10 s anyway: what a running daemon holds.
    pub counted_kib: u64,
    /// After every block has expired and been reaped.
    pub drained_kib: Option<u64>,
}

impl Rss {
    /// Per block right after the import.
    pub(crate) fn bytes_per_block(&self) -> f64 {
        self.per_block(self.loaded_kib)
    }

    /// Per block once the drops by origin were counted.
    pub(crate) fn counted_per_block(&self) -> f64 {
        self.per_block(self.counted_kib)
    }

    fn per_block(&self, kib: u64) -> f64 {
        (kib.saturating_sub(self.empty_kib)) as f64 * 1024.0 / self.blocks as f64
    }
}

/// The reaper removing blocks that expired together.
#[derive(Debug, Serialize)]
pub(crate) struct Reaper {
    pub blocks: usize,
    /// Seconds between the earliest and the latest deadline (an upper bound).
    pub deadline_window_s: f64,
    /// Seconds from the earliest deadline until the daemon held no blocks.
    pub from_first_deadline_s: f64,
    /// Seconds from the latest deadline until the daemon held no blocks.
    pub after_last_deadline_s: f64,
    /// The daemon's CPU time (user + system) from before the first deadline until done.
    pub cpu_s: f64,
}

impl Reaper {
    pub(crate) fn per_second(&self) -> f64 {
        self.blocks as f64 / self.from_first_deadline_s
    }

    pub(crate) fn cpu_us_each(&self) -> f64 {
        self.cpu_s * 1e6 / self.blocks as f64
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Results {
    pub settings: Settings,
    pub maps: Vec<MapMemory>,
    /// ipset with the same entries, for comparison.
    pub ipset: Vec<MapMemory>,
    pub rss: Rss,
    /// The same with another build (`--baseline-enforcer`), in the same run: its path, and
    /// its RSS (no reaper run).
    pub baseline_rss: Option<(String, Rss)>,
    pub reaper: Reaper,
}

pub(crate) fn run(settings: &Settings, baseline: Option<&Path>) -> Result<Results> {
    let (maps, ipset) = kernel(settings)?;
    eprintln!("memory: daemon RSS with {} blocks", settings.daemon_blocks);
    let (mut rss, import_seconds) = daemon_rss(&enforcer_bin(), settings.daemon_blocks)?;
    let baseline_rss = match baseline {
        Some(b) => {
            eprintln!(
                "memory: daemon RSS with {} blocks, baseline build",
                settings.daemon_blocks
            );
            Some((
                b.display().to_string(),
                daemon_rss(b, settings.daemon_blocks)?.0,
            ))
        }
        None => None,
    };
    eprintln!("memory: reaping {} blocks", settings.daemon_blocks);
    let (reaper, drained) = reaper(settings.daemon_blocks, import_seconds)?;
    rss.drained_kib = Some(drained);
    Ok(Results {
        settings: *settings,
        maps,
        ipset,
        rss,
        baseline_rss,
        reaper,
    })
}

/// Fills each block map of a loaded (not attached) program and reads its `memlock`; then the
/// same entries in ipset.
fn kernel(settings: &Settings) -> Result<(Vec<MapMemory>, Vec<MapMemory>)> {
    let pins = PinDir::new()?;
    let mut dp = Datapath::open(&DatapathOptions {
        bpffs_dir: pins.path().to_owned(),
        capacity: Capacity {
            addresses: (settings.addresses + 1024) as u32,
            prefixes: (settings.prefixes + 1024) as u32,
            allow: 64,
        },
        count_block_hits: true,
        ..Default::default()
    })
    .context("loading the XDP program")?;
    let maps_dir = PinLayout::new(pins.path()).maps_dir();
    let value = size_of::<BlockEntry>();
    let plan = [
        (
            map_names::BLOCK_V4,
            Family::Ipv4,
            Fill::Addresses,
            settings.addresses,
            4 + value,
        ),
        (
            map_names::BLOCK_V6,
            Family::Ipv6,
            Fill::Addresses,
            settings.addresses,
            16 + value,
        ),
        // LPM trie keys: a 4-byte prefix length, then the data (IPv4 padded to 8 bytes).
        (
            map_names::BLOCK_NET_V4,
            Family::Ipv4,
            Fill::Prefixes,
            settings.prefixes,
            4 + 8 + value,
        ),
        (
            map_names::BLOCK_NET_V6,
            Family::Ipv6,
            Fill::Prefixes,
            settings.prefixes,
            4 + 16 + value,
        ),
    ];
    let mut maps = Vec::new();
    let mut ipset = Vec::new();
    for (name, family, fill, entries, payload_bytes) in plan {
        eprintln!("memory: {name} with {entries} entries");
        let path = maps_dir.join(name);
        let bytes_empty = memlock(&path)?;
        let targets = background(family, fill, entries);
        for t in &targets {
            dp.maps_mut()
                .insert_block(t, &BlockValue::new(0, MODE_ENFORCE))
                .with_context(|| format!("inserting {t}"))?;
        }
        maps.push(MapMemory {
            map: name.to_owned(),
            family,
            fill,
            entries,
            bytes_empty,
            bytes_full: memlock(&path)?,
            payload_bytes,
        });
        if family == Family::Ipv4 {
            ipset.push(ipset_memory(fill, &targets)?);
        }
    }
    Ok((maps, ipset))
}

/// The `memlock:` line of a pinned map's fdinfo.
fn memlock(pin: &Path) -> Result<u64> {
    let map = MapData::from_pin(pin).with_context(|| format!("opening {}", pin.display()))?;
    let fd = map.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .context("no memlock in fdinfo")?
        .trim()
        .parse()
        .context("memlock is not a number")
}

/// ipset's own account of a set holding `targets` (`hash:ip` or `hash:net`, with timeouts as
/// fail2ban creates them), in a namespace of its own.
#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
fn ipset_memory(fill: Fill, targets: &[Target]) -> Result<MapMemory> {
    let ns = Netns::new("enfm")?;
    let exec = NsExec::new(&ns)?;
    let kind = if fill == Fill::Prefixes {
        "hash:net"
    } else {
        "hash:ip"
    };
    let max = targets.len().max(65_536).next_power_of_two();
    let size = |exec: &NsExec| -> Result<u64> {
        let out = exec.run("ipset", &["list", "-t", "m"])?;
        out.lines()
            .find_map(|l| l.strip_prefix("Size in memory:"))
            .context("no `Size in memory` in ipset list")?
            .trim()
            .parse()
            .context("ipset's size is not a number")
    };
    exec.run(
        "ipset",
        &[
            "create",
            "m",
            kind,
            "family",
            "inet",
            "maxelem",
            &max.to_string(),
            "timeout",
            "3600",
        ],
    )?;
    let bytes_empty = size(&exec)?;
    let mut text = String::with_capacity(targets.len() * 24);
    for t in targets {
        let _ = writeln!(text, "add m {}", t.net());
    }
    exec.feed("ipset", &["restore"], &text)?;
    let bytes_full = size(&exec)?;
    exec.run("ipset", &["destroy", "m"])?;
    Ok(MapMemory {
        map: format!("ipset {kind} timeout"),
        family: Family::Ipv4,
        fill,
        entries: targets.len(),
        bytes_empty,
        bytes_full,
        // ipset's element (`hash_ip4_elem`: the address; `hash_net4_elem`: address, flags and
        // prefix length) and its timeout extension (an unsigned long).
        payload_bytes: if fill == Fill::Prefixes { 8 + 8 } else { 4 + 8 },
    })
}

fn status(d: &Daemon) -> Result<StatusReply> {
    match Client::connect(&d.socket, Duration::from_secs(30))?.call(&Request::Status)? {
        Reply::Status(s) => Ok(*s),
        other => bail!("unexpected reply {other:?}"),
    }
}

/// `VmRSS` in KiB.
fn vm_rss(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// User + system CPU seconds of a process.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces; the fields after it are space-separated.
    let after = text.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// A daemon of the build `bin` with room for `n` blocks.
fn daemon_for(bin: &Path, lab: &Lab, n: usize) -> Result<Daemon> {
    Daemon::start_bin(bin, lab, &["--max-addresses", &(n + 1024).to_string()])
}

/// RSS of an empty daemon of the build `bin` and of one holding `n` imported blocks, before
/// and after a `stats` answer. Also returns how long the import took (the reaper run sizes its
/// margin by it).
fn daemon_rss(bin: &Path, n: usize) -> Result<(Rss, f64)> {
    let lab = Lab::new()?;
    let d = daemon_for(bin, &lab, n)?;
    let pid = status(&d)?.pid;
    let empty_kib = vm_rss(pid)?;
    let started = Instant::now();
    let mut client = Client::connect(&d.socket, Duration::from_secs(300))?;
    for chunk in firewall::filler(n).chunks(IMPORT_CHUNK) {
        let items = chunk.iter().map(|a| item(*a, None)).collect();
        apply(&mut client, items, Some(3600))?;
    }
    let import_seconds = started.elapsed().as_secs_f64();
    let loaded = status(&d)?;
    ensure!(
        loaded.targets == n,
        "the daemon holds {} blocks, not {n}",
        loaded.targets
    );
    let loaded_kib = vm_rss(pid)?;
    match Client::connect(&d.socket, Duration::from_secs(300))?.call(&Request::Stats)? {
        Reply::Stats(_) => {}
        other => bail!("unexpected reply {other:?}"),
    }
    Ok((
        Rss {
            blocks: n,
            empty_kib,
            loaded_kib,
            counted_kib: vm_rss(pid)?,
            drained_kib: None,
        },
        import_seconds,
    ))
}

/// What `enforcer import` sends per request.
const IMPORT_CHUNK: usize = 5000;

fn item(a: std::net::Ipv4Addr, ttl_secs: Option<u64>) -> BatchItem {
    BatchItem {
        target: Target::new(IpAddr::V4(a).into()),
        ttl_secs,
    }
}

fn apply(client: &mut Client, items: Vec<BatchItem>, ttl_secs: Option<u64>) -> Result<()> {
    let n = items.len();
    let reply = client.call(&Request::BlockBatch(BatchRequest {
        items,
        ttl_secs,
        source: Source::cli(),
        reason: Default::default(),
        shadow: false,
        scope: Default::default(),
    }))?;
    let Reply::BlockBatch {
        applied, failed, ..
    } = reply
    else {
        bail!("unexpected reply")
    };
    ensure!(
        applied == n,
        "{} of {n} refused: {:?}",
        failed.len(),
        failed.first()
    );
    Ok(())
}

/// Imports `n` blocks whose deadlines all fall within about a second (each chunk's TTL is the
/// whole seconds left until one common deadline), then watches the daemon remove them.
/// Returns the measurements and the RSS once they are gone.
fn reaper(n: usize, import_seconds: f64) -> Result<(Reaper, u64)> {
    let lab = Lab::new()?;
    let d = daemon_for(&enforcer_bin(), &lab, n)?;
    let pid = status(&d)?.pid;
    let margin = Duration::from_secs_f64(import_seconds * 1.5 + 5.0);
    let target = SystemTime::now() + margin;
    let mut client = Client::connect(&d.socket, Duration::from_secs(300))?;
    let (mut first, mut last) = (
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::MAX / 4),
        SystemTime::UNIX_EPOCH,
    );
    for chunk in firewall::filler(n).chunks(IMPORT_CHUNK) {
        let sent = SystemTime::now();
        let left = target.duration_since(sent).unwrap_or_default();
        let ttl = left.as_secs_f64().round().max(1.0) as u64;
        let items = chunk.iter().map(|a| item(*a, Some(ttl))).collect();
        apply(&mut client, items, None)?;
        // The daemon's deadline lies between sending and the answer, plus the TTL.
        first = first.min(sent + Duration::from_secs(ttl));
        last = last.max(SystemTime::now() + Duration::from_secs(ttl));
    }
    ensure!(
        SystemTime::now() < first,
        "the import outlasted its margin of {margin:?}: the first blocks expired while importing"
    );
    let cpu_before = cpu_seconds(pid)?;
    let wait =
        last.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_secs(300);
    let deadline = Instant::now() + wait;
    loop {
        if status(&d)?.targets == 0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the daemon still holds blocks {wait:?} later"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let done = SystemTime::now();
    let cpu_s = cpu_seconds(pid)? - cpu_before;
    let secs = |a: SystemTime, b: SystemTime| {
        b.duration_since(a)
            .map_or_else(|e| -e.duration().as_secs_f64(), |d| d.as_secs_f64())
    };
    Ok((
        Reaper {
            blocks: n,
            deadline_window_s: secs(first, last),
            from_first_deadline_s: secs(first, done),
            after_last_deadline_s: secs(last, done),
            cpu_s,
        },
        vm_rss(pid)?,
    ))
}
