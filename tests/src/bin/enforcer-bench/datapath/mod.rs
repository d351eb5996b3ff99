//! Section 1, data path cost: what the XDP program costs per packet.
//!
//! `BPF_PROG_TEST_RUN` runs a loaded program `repeat` times on one crafted frame inside the kernel
//! and reports the mean time per run. No NIC, driver or stack is involved, so it isolates the
//! program's own work: parsing the headers and the map lookups.
//!
//! The machine is a noisy VM. Each case is therefore measured in several rounds, and in every
//! round straight after the do-nothing floor program on the same frame: a slow moment slows both,
//! and the ratio of the pair cancels it. A case reports the median over rounds. The kernel gives
//! whole nanoseconds (truncated), one more reason to read ratios rather than absolute numbers.
//! So each run is also timed from userspace: the `BPF_PROG_TEST_RUN` syscall on the calling
//! thread's CPU-time clock (`CLOCK_THREAD_CPUTIME_ID`), divided by the repeat count. It includes
//! the syscall's fixed cost (a few µs over a million runs) but is not truncated: with a floor of
//! 5–6 ns the kernel's figure moves ratios in steps of ~17%, this one does not. Not the monotonic
//! clock: on a shared machine the thread is preempted inside the syscall (the kernel pauses its
//! own timer then), and the monotonic time per run measured 80–200 ns against the kernel's 6–15.
//!
//! Map states grow in place (0 → 1k → 100k → 1M entries), so each size costs only its new
//! inserts, and the insert rate is recorded on the way. The probes' own blocks (the fixtures) go
//! in after the misses are measured and come out again before the next size, so "no blocks"
//! means empty maps.

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Instant,
};

use anyhow::{Context as _, Result, ensure};
use aya::programs::{ProgramError, TestRun as _, TestRunOptions, Xdp};
use enforcer::{
    Target,
    datapath::{Capacity, Datapath, DatapathOptions, Parse},
};
use enforcer_common::{ALLOW_ORIGIN_CONFIG, BlockValue, MODE_ENFORCE};
use enforcer_tests::{PinDir, frame};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;

mod lengths;
mod scoped;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// Room for the largest fill plus the fixtures.
const CAPACITY: Capacity = Capacity {
    addresses: (1 << 20) + 1024,
    prefixes: 100_000 + 1024,
    allow: 64,
};

/// The map states measured: family, what fills the maps, and the sizes it grows through.
const PLAN: [(Family, Fill, &[usize]); 4] = [
    (
        Family::Ipv4,
        Fill::Addresses,
        &[0, 1_000, 100_000, 1_000_000],
    ),
    (Family::Ipv6, Fill::Addresses, &[0, 1_000_000]),
    (Family::Ipv4, Fill::Prefixes, &[10_000, 100_000]),
    (Family::Ipv6, Fill::Prefixes, &[10_000, 100_000]),
];

/// How many rounds, how many runs per measurement, and how big the maps get.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct Settings {
    /// Measurements per case; the median is reported.
    pub rounds: usize,
    /// Program runs per measurement; the kernel reports their mean.
    pub repeat: u32,
    /// Sizes in the plan above this are cut to it.
    pub largest: usize,
}

impl Settings {
    /// The full run (about a minute or two of measuring, plus filling 1M-entry maps).
    pub(crate) const FULL: Self = Self {
        rounds: 5,
        repeat: 1_000_000,
        largest: 1_000_000,
    };
    /// A smoke run: fewer, shorter rounds and nothing above 100k entries.
    pub(crate) const QUICK: Self = Self {
        rounds: 3,
        repeat: 200_000,
        largest: 100_000,
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) enum Family {
    #[serde(rename = "IPv4")]
    Ipv4,
    #[serde(rename = "IPv6")]
    Ipv6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ipv4 => "IPv4",
            Self::Ipv6 => "IPv6",
        })
    }
}

/// What the block maps hold besides the probes' own entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Fill {
    None,
    /// Single addresses (the exact-match hash).
    Addresses,
    /// Prefixes of mixed lengths (the LPM trie).
    Prefixes,
}

/// Which path through the program a frame takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Packet {
    /// The source is not blocked: legitimate traffic, passed.
    Miss,
    /// The source is a blocked single address: dropped.
    HitAddress,
    /// The source lies in a blocked prefix: dropped.
    HitPrefix,
    /// The source lies in a blocked prefix and on the allowlist: passed.
    Allowlisted,
    /// The source shares a blocked prefix's prefilter bit but lies outside every block: passed
    /// after a trie walk that finds nothing. Against a plain miss, what the walk itself costs.
    TrieMiss,
    /// A legitimate source while another address has a port-scoped block: the transport header
    /// is read (issue 22), and passed.
    MissScopesLoaded,
    /// The source's block is scoped to tcp/22 and the frame is TCP to port 22: dropped.
    ScopedHit,
    /// The source's block is scoped to tcp/22 and the frame is TCP to port 80: passed.
    ScopedOtherPort,
    /// A blocked address's TCP to an ephemeral port: the reply check asks the kernel for a
    /// socket (there is none), then drops.
    HitReplyChecked,
    /// The source lies in N nested prefixes of N distinct lengths: the longest drops it.
    LengthsHit,
    /// The source shares its /16 (/32) with N prefixes of N distinct lengths and lies in none:
    /// every length's filter bit is checked, then passed.
    LengthsMiss,
    /// The source lies in N nested prefixes of N distinct lengths, all expired: every length
    /// is looked up and passed over, then passed.
    LengthsExpired,
}

impl Packet {
    fn verdict(self) -> u32 {
        match self {
            Self::Miss
            | Self::Allowlisted
            | Self::TrieMiss
            | Self::MissScopesLoaded
            | Self::ScopedOtherPort
            | Self::LengthsMiss
            | Self::LengthsExpired => XDP_PASS,
            Self::HitAddress
            | Self::HitPrefix
            | Self::ScopedHit
            | Self::HitReplyChecked
            | Self::LengthsHit => XDP_DROP,
        }
    }

    /// Whether the program must drop it.
    pub(crate) fn verdict_is_drop(self) -> bool {
        self.verdict() == XDP_DROP
    }
}

/// What one case measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct CaseId {
    pub family: Family,
    pub fill: Fill,
    /// Background entries in the maps (the fixtures not counted).
    pub entries: usize,
    pub packet: Packet,
    /// Whether the frame carries one 802.1Q tag.
    pub vlan: bool,
    /// Whether per-block hit counters are compiled in.
    pub counters: bool,
    /// The link's parse: Ethernet (every case but the raw-IP ones) or raw IP.
    pub link: Parse,
}

impl CaseId {
    /// `packet` of `family` on empty maps (the fixtures only), untagged, on Ethernet, with
    /// the per-block counters compiled in: the plain case most comparisons start from.
    pub(crate) const fn plain(family: Family, packet: Packet) -> Self {
        Self {
            family,
            fill: Fill::None,
            entries: 0,
            packet,
            vlan: false,
            counters: true,
            link: Parse::Ethernet,
        }
    }
}

/// One case's measurements and what they say.
#[derive(Debug, Serialize)]
pub(crate) struct Case {
    #[serde(flatten)]
    pub id: CaseId,
    pub median_ns: f64,
    pub min_ns: u32,
    pub max_ns: u32,
    /// The floor measured in the same rounds.
    pub floor_median_ns: f64,
    /// Median over rounds of ours ÷ the floor of that round.
    pub vs_floor: f64,
    /// `vs_floor` ÷ that of the same packet with no blocks: what the fill adds.
    pub vs_empty: Option<f64>,
    /// Per round, in order.
    pub ours_ns: Vec<u32>,
    pub floor_ns: Vec<u32>,
    /// The same runs timed from userspace (the syscall's thread CPU time ÷ repeat), ns: median
    /// of ours, median of the floor, and the median over rounds of the pair's ratio.
    pub wall_median_ns: f64,
    pub wall_floor_median_ns: f64,
    pub wall_vs_floor: f64,
    pub wall_ns: Vec<f64>,
    pub wall_floor_ns: Vec<f64>,
}

/// The cost of filling the maps, one syscall per entry.
#[derive(Debug, Serialize)]
pub(crate) struct InsertRun {
    pub family: Family,
    pub fill: Fill,
    /// Entries before and after.
    pub from: usize,
    pub to: usize,
    pub seconds: f64,
}

impl InsertRun {
    pub(crate) fn micros_each(&self) -> f64 {
        self.seconds * 1e6 / (self.to - self.from) as f64
    }
}

/// Everything section 1 measured.
#[derive(Debug, Serialize)]
pub(crate) struct Results {
    pub settings: Settings,
    /// Median of every floor measurement: the reference line.
    pub floor_median_ns: f64,
    /// The same, timed from userspace (see [`Case::wall_median_ns`]).
    pub wall_floor_median_ns: f64,
    /// Every packet path at every fill, with counters on.
    pub cases: Vec<Case>,
    /// Hits with per-block counters on and off, measured in the same rounds.
    pub counters: Vec<Case>,
    pub inserts: Vec<InsertRun>,
    /// Every CPU on one block at once, against one CPU.
    pub multi_cpu: Vec<crate::multicpu::MultiCpuCase>,
    /// Misses and hits on a raw-IP link (tun, WireGuard...) beside the same packets on
    /// Ethernet, one loaded object, the same rounds.
    pub raw_ip: Vec<Case>,
    /// This build's Ethernet program against an earlier build's object, the same frames and
    /// maps, the same rounds (with `--baseline-object`).
    pub baseline: Vec<BaselineCase>,
    /// Port-scoped blocks beside whole-address ones, TCP frames, the same rounds (issue 22).
    #[serde(default)]
    pub scoped: Vec<Case>,
    /// N distinct prefix lengths over one source beside an address hit and a plain miss, the
    /// same rounds (issue 25, item 1).
    #[serde(default)]
    pub lengths: Vec<Case>,
    /// The lengths a random source's word holds with the section's largest prefix fill.
    #[serde(default)]
    pub lengths_census: Vec<lengths::Census>,
}

/// One packet through this build's Ethernet program and an earlier build's, in the same rounds.
#[derive(Debug, Serialize)]
pub(crate) struct BaselineCase {
    pub family: Family,
    pub packet: Packet,
    /// This build (floor-relative, as in [`Case`]).
    pub new: Case,
    /// The earlier object's `enforcer_xdp` on the same maps.
    pub old: Case,
    /// Median over rounds of new ÷ old (kernel ns; each round's pair ran back to back).
    pub new_vs_old: f64,
    /// The same from the userspace timings.
    pub wall_new_vs_old: f64,
}

/// Which part of the section a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// Everything (and the comparison when there is a baseline object).
    All,
    /// Only the comparison with the baseline object.
    Baseline,
    /// Only the prefix-lengths cases.
    Lengths,
}

/// Runs the section, or one `part` of it; with `baseline`, an earlier build's XDP object, also
/// compares this build's Ethernet path with it.
pub(crate) fn run(settings: &Settings, baseline: Option<&Path>, part: Part) -> Result<Results> {
    let census = || {
        [Family::Ipv4, Family::Ipv6].map(|f| lengths::Census::of(f, settings.largest.min(100_000)))
    };
    let only = |baseline, lengths| Results {
        settings: *settings,
        floor_median_ns: f64::NAN,
        wall_floor_median_ns: f64::NAN,
        cases: Vec::new(),
        counters: Vec::new(),
        inserts: Vec::new(),
        multi_cpu: Vec::new(),
        raw_ip: Vec::new(),
        baseline,
        scoped: Vec::new(),
        lengths,
        lengths_census: Vec::new(),
    };
    match (part, baseline) {
        (Part::Baseline, Some(object)) => {
            return Ok(only(compare_with(object, settings)?, Vec::new()));
        }
        (Part::Lengths, _) => {
            return Ok(Results {
                lengths_census: census().into(),
                ..only(Vec::new(), lengths::run(settings)?)
            });
        }
        _ => {}
    }
    let mut cases = Vec::new();
    let mut inserts = Vec::new();
    for (family, fill, sizes) in PLAN {
        let mut sizes: Vec<usize> = sizes.iter().map(|&n| n.min(settings.largest)).collect();
        sizes.dedup();
        grow(family, fill, &sizes, settings, &mut cases, &mut inserts)?;
    }
    link_to_empty(&mut cases);
    let counters = counters(settings)?;
    let raw_ip = raw_ip(settings)?;
    let scoped = scoped::run(settings)?;
    let lengths = lengths::run(settings)?;
    let baseline = match baseline {
        Some(object) => compare_with(object, settings)?,
        None => Vec::new(),
    };
    let multi_cpu = crate::multicpu::run(settings.rounds, settings.repeat)?;
    let mut floors: Vec<u32> = cases
        .iter()
        .chain(&counters)
        .flat_map(|c| c.floor_ns.iter().copied())
        .collect();
    let mut wall_floors: Vec<f64> = cases
        .iter()
        .chain(&counters)
        .flat_map(|c| c.wall_floor_ns.iter().copied())
        .collect();
    wall_floors.sort_by(f64::total_cmp);
    Ok(Results {
        settings: *settings,
        floor_median_ns: median(&mut floors),
        wall_floor_median_ns: middle(&wall_floors),
        cases,
        counters,
        inserts,
        multi_cpu,
        raw_ip,
        baseline,
        scoped,
        lengths,
        lengths_census: census().into(),
    })
}

/// Misses and address hits, Ethernet and raw IP, both families, the fixtures' blocks loaded.
fn raw_ip(settings: &Settings) -> Result<Vec<Case>> {
    let mut loaded = [Loaded::new(true)?];
    let mut probes = Vec::new();
    for family in [Family::Ipv4, Family::Ipv6] {
        let fixtures = Fixtures::of(family);
        fixtures.install(&mut loaded[0].dp)?;
        for packet in [Packet::Miss, Packet::HitAddress] {
            for link in [Parse::Ethernet, Parse::RawIp] {
                let id = CaseId {
                    link,
                    ..CaseId::plain(family, packet)
                };
                probes.push(Probe::new(&fixtures, id, 0));
            }
        }
    }
    eprintln!("raw-IP and Ethernet parses: measuring");
    measure(&mut loaded, &probes, settings)
}

/// This build's Ethernet program and `object`'s (an earlier build) on the same fixtures: misses,
/// address and prefix hits and misses that the prefilter sends to the prefix lookup, each pair
/// back to back in every round. An object of layout 5 (the last with LPM tries) runs on maps of
/// its own layout; one of this build's layout runs on this build's maps (a change to the program
/// alone: the same entries, the same memory).
fn compare_with(object: &Path, settings: &Settings) -> Result<Vec<BaselineCase>> {
    let bytes = std::fs::read(object).with_context(|| format!("reading {}", object.display()))?;
    let mut new = Loaded::new(true)?;
    let old_pins = PinDir::new()?;
    std::fs::create_dir_all(old_pins.path())
        .with_context(|| format!("creating {}", old_pins.path().display()))?;
    let mut old = aya::EbpfLoader::new()
        .default_map_pin_directory(old_pins.path())
        .load(&bytes)
        .with_context(|| format!("loading {} on maps of its own", object.display()))?;
    let layout5 = old.map("PREFIX_FILTER").is_some();
    if !layout5 {
        ensure!(
            old.map("BLOCK_FILTER").is_some(),
            "{} is neither of layout 5 (PREFIX_FILTER) nor of this build's (BLOCK_FILTER)",
            object.display()
        );
        drop(old);
        let maps = new.dp.layout().maps_dir();
        old = aya::EbpfLoader::new()
            .default_map_pin_directory(&maps)
            .load(&bytes)
            .with_context(|| format!("loading {} on this build's maps", object.display()))?;
    }
    let old_program: &mut Xdp = old
        .program_mut(enforcer_common::PROGRAM_NAME)
        .context("the earlier object has no enforcer_xdp")?
        .try_into()?;
    old_program.load()?;
    let mut out = Vec::new();
    for family in [Family::Ipv4, Family::Ipv6] {
        let fixtures = Fixtures::of(family);
        fixtures.install(&mut new.dp)?;
        if layout5 {
            for block in &fixtures.blocks {
                crate::layout5::insert(&mut old, block)?;
            }
        }
        for packet in [
            Packet::Miss,
            Packet::HitAddress,
            Packet::HitPrefix,
            Packet::TrieMiss,
        ] {
            let id = CaseId::plain(family, packet);
            let frame = frame::udp_from(&[], fixtures.source(packet));
            let (mut floor, mut ours, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..settings.rounds {
                // Alternate which goes first, so neither always runs on a warmer cache.
                let (t, _) = test_run(new.dp.floor_program()?, &frame, settings.repeat)?;
                floor.push(t);
                let old_program: &mut Xdp = old
                    .program_mut(enforcer_common::PROGRAM_NAME)
                    .expect("loaded above")
                    .try_into()?;
                let (t_old, v_old) = test_run(old_program, &frame, settings.repeat)?;
                let (t_new, v_new) = test_run(new.dp.program(), &frame, settings.repeat)?;
                ensure!(
                    v_old == packet.verdict() && v_new == packet.verdict(),
                    "{id:?}: verdicts old {v_old}, new {v_new}"
                );
                ours.push(t_new);
                theirs.push(t_old);
            }
            let ratio = |a: &[Timing], b: &[Timing], f: fn(&Timing) -> f64| {
                let mut r: Vec<f64> = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| f(x) / f(y).max(1e-9))
                    .collect();
                r.sort_by(f64::total_cmp);
                middle(&r)
            };
            eprintln!("{family} {packet:?}: this build vs the earlier object measured");
            out.push(BaselineCase {
                family,
                packet,
                new_vs_old: ratio(&ours, &theirs, |t| f64::from(t.kernel_ns)),
                wall_new_vs_old: ratio(&ours, &theirs, |t| t.wall_ns),
                new: Case::new(id, &ours, &floor),
                old: Case::new(id, &theirs, &floor),
            });
        }
        fixtures.remove(&mut new.dp)?;
    }
    Ok(out)
}

/// Measures one family and fill at each size, growing the maps in place.
fn grow(
    family: Family,
    fill: Fill,
    sizes: &[usize],
    settings: &Settings,
    cases: &mut Vec<Case>,
    inserts: &mut Vec<InsertRun>,
) -> Result<()> {
    let fixtures = Fixtures::of(family);
    let mut loaded = [Loaded::new(true)?];
    let mut background = Background::new(family, fill, &fixtures);
    let mut have = 0;
    for &entries in sizes {
        if entries > have {
            let targets = background.take(entries - have);
            eprintln!("{family} {fill:?}: inserting {} entries", targets.len());
            let start = Instant::now();
            let maps = loaded[0].dp.maps_mut();
            for target in &targets {
                maps.insert_block(target, &BlockValue::new(0, MODE_ENFORCE))
                    .with_context(|| format!("inserting {target}"))?;
            }
            inserts.push(InsertRun {
                family,
                fill,
                from: have,
                to: entries,
                seconds: start.elapsed().as_secs_f64(),
            });
            have = entries;
        }
        let fill = if entries == 0 { Fill::None } else { fill };
        let packets: &[Packet] = match fill {
            Fill::None => &[
                Packet::HitAddress,
                Packet::HitPrefix,
                Packet::Allowlisted,
                Packet::TrieMiss,
            ],
            Fill::Addresses => &[Packet::HitAddress, Packet::Allowlisted],
            Fill::Prefixes => &[Packet::HitPrefix, Packet::Allowlisted, Packet::TrieMiss],
        };
        let probe = |packet, vlan| {
            Probe::new(
                &fixtures,
                CaseId {
                    family,
                    fill,
                    entries,
                    packet,
                    vlan,
                    counters: true,
                    link: Parse::Ethernet,
                },
                0,
            )
        };
        let both_tags = |packets: &[Packet]| -> Vec<Probe> {
            packets
                .iter()
                .flat_map(|&p| [probe(p, false), probe(p, true)])
                .collect()
        };
        eprintln!("{family} {fill:?} ({entries} entries): measuring");
        cases.extend(measure(&mut loaded, &both_tags(&[Packet::Miss]), settings)?);
        fixtures.install(&mut loaded[0].dp)?;
        cases.extend(measure(&mut loaded, &both_tags(packets), settings)?);
        fixtures.remove(&mut loaded[0].dp)?;
    }
    Ok(())
}

/// Hits with per-block counters on and off: two programs, the same fixtures, the same rounds.
fn counters(settings: &Settings) -> Result<Vec<Case>> {
    let mut loaded = [Loaded::new(true)?, Loaded::new(false)?];
    let mut probes = Vec::new();
    for family in [Family::Ipv4, Family::Ipv6] {
        let fixtures = Fixtures::of(family);
        for l in &mut loaded {
            fixtures.install(&mut l.dp)?;
        }
        for packet in [Packet::HitAddress, Packet::HitPrefix] {
            for (on, counters) in [(0, true), (1, false)] {
                let id = CaseId {
                    counters,
                    ..CaseId::plain(family, packet)
                };
                probes.push(Probe::new(&fixtures, id, on));
            }
        }
    }
    eprintln!("per-block counters on and off: measuring");
    measure(&mut loaded, &probes, settings)
}

/// A loaded program with its maps, in a pin directory of its own that goes away on drop.
pub(crate) struct Loaded {
    dp: Datapath,
    _pins: PinDir,
}

impl Loaded {
    fn new(count_block_hits: bool) -> Result<Self> {
        Self::with(DatapathOptions {
            count_block_hits,
            ..Default::default()
        })
    }

    /// Loaded with `opts`, in a pin directory of its own and with this section's capacity.
    pub(crate) fn with(opts: DatapathOptions) -> Result<Self> {
        let pins = PinDir::new()?;
        let dp = Datapath::open(&DatapathOptions {
            bpffs_dir: pins.path().to_owned(),
            capacity: CAPACITY,
            ..opts
        })
        .context("loading the XDP program")?;
        Ok(Self { dp, _pins: pins })
    }
}

/// A frame to time, the verdict it must get, and which of the loaded programs judges it.
pub(crate) struct Probe {
    id: CaseId,
    frame: Vec<u8>,
    program: usize,
}

impl Probe {
    /// A frame of `id`'s packet from `fixtures`, for the `program`-th loaded object.
    pub(crate) fn new(fixtures: &Fixtures, id: CaseId, program: usize) -> Self {
        let tags: &[frame::Tag] = if id.vlan { &[frame::dot1q(100)] } else { &[] };
        let source = fixtures.source(id.packet);
        Self {
            id,
            frame: match id.link {
                Parse::Ethernet => frame::udp_from(tags, source),
                Parse::RawIp => frame::raw_udp_from(source),
            },
            program,
        }
    }
}

/// Times every probe in `rounds` rounds, each right after the floor on the same frame.
/// The floor runs from the first loaded object; all objects are the same build.
pub(crate) fn measure(
    loaded: &mut [Loaded],
    probes: &[Probe],
    settings: &Settings,
) -> Result<Vec<Case>> {
    let mut samples: Vec<(Vec<Timing>, Vec<Timing>)> = vec![(Vec::new(), Vec::new()); probes.len()];
    for _ in 0..settings.rounds {
        for (probe, (ours, floor)) in probes.iter().zip(&mut samples) {
            let (t, verdict) =
                test_run(loaded[0].dp.floor_program()?, &probe.frame, settings.repeat)?;
            ensure!(verdict == XDP_PASS, "the floor program returned {verdict}");
            floor.push(t);
            let (t, verdict) = test_run(
                loaded[probe.program].dp.program_for(probe.id.link)?,
                &probe.frame,
                settings.repeat,
            )?;
            let want = probe.id.packet.verdict();
            ensure!(
                verdict == want,
                "{:?}: verdict {verdict}, expected {want}",
                probe.id
            );
            ours.push(t);
        }
    }
    Ok(probes
        .iter()
        .zip(samples)
        .map(|(probe, (ours, floor))| Case::new(probe.id, &ours, &floor))
        .collect())
}

/// This thread's CPU time, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    debug_assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One measurement: the kernel's mean ns per run (whole ns), and the syscall's thread CPU time
/// ÷ repeat.
#[derive(Clone, Copy, Debug)]
struct Timing {
    kernel_ns: u32,
    wall_ns: f64,
}

/// One `BPF_PROG_TEST_RUN`: its timing and the last run's verdict.
fn test_run(program: &mut Xdp, frame: &[u8], repeat: u32) -> Result<(Timing, u32)> {
    loop {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        };
        let started = thread_cpu_ns();
        let run = program.test_run(opts);
        let wall_ns = (thread_cpu_ns() - started) as f64 / f64::from(repeat.max(1));
        match run {
            Ok(r) => {
                let kernel_ns = u32::try_from(r.duration.as_nanos()).unwrap_or(u32::MAX);
                return Ok((Timing { kernel_ns, wall_ns }, r.return_value));
            }
            // The kernel stops a long run when a signal is pending; run it again.
            Err(ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) => return Err(e).context("BPF_PROG_TEST_RUN"),
        }
    }
}

impl Case {
    fn new(id: CaseId, ours: &[Timing], floor: &[Timing]) -> Self {
        let ours_ns: Vec<u32> = ours.iter().map(|t| t.kernel_ns).collect();
        let floor_ns: Vec<u32> = floor.iter().map(|t| t.kernel_ns).collect();
        let wall_ns: Vec<f64> = ours.iter().map(|t| t.wall_ns).collect();
        let wall_floor_ns: Vec<f64> = floor.iter().map(|t| t.wall_ns).collect();
        let mut ratios: Vec<f64> = ours_ns
            .iter()
            .zip(&floor_ns)
            .map(|(&o, &f)| f64::from(o) / f64::from(f.max(1)))
            .collect();
        ratios.sort_by(f64::total_cmp);
        let mut wall_ratios: Vec<f64> = wall_ns
            .iter()
            .zip(&wall_floor_ns)
            .map(|(o, f)| o / f)
            .collect();
        wall_ratios.sort_by(f64::total_cmp);
        let sorted = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            middle(&v)
        };
        Self {
            wall_median_ns: sorted(&wall_ns),
            wall_floor_median_ns: sorted(&wall_floor_ns),
            wall_vs_floor: middle(&wall_ratios),
            wall_ns,
            wall_floor_ns,
            id,
            median_ns: median(&mut ours_ns.clone()),
            min_ns: ours_ns.iter().copied().min().unwrap_or_default(),
            max_ns: ours_ns.iter().copied().max().unwrap_or_default(),
            floor_median_ns: median(&mut floor_ns.clone()),
            vs_floor: middle(&ratios),
            vs_empty: None,
            ours_ns,
            floor_ns,
        }
    }
}

/// Sets `vs_empty` from the same packet, family and tag with no blocks. Comparing floor ratios
/// rather than raw times cancels drift between the two measurements.
fn link_to_empty(cases: &mut [Case]) {
    let empty: Vec<(CaseId, f64)> = cases
        .iter()
        .filter(|c| c.id.fill == Fill::None)
        .map(|c| (c.id, c.vs_floor))
        .collect();
    for case in cases {
        let base = empty.iter().find(|(id, _)| {
            (id.family, id.packet, id.vlan, id.counters)
                == (
                    case.id.family,
                    case.id.packet,
                    case.id.vlan,
                    case.id.counters,
                )
        });
        case.vs_empty = base.map(|&(_, ratio)| case.vs_floor / ratio);
    }
}

fn median(values: &mut [u32]) -> f64 {
    values.sort_unstable();
    let values: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
    middle(&values)
}

/// The median of sorted values.
fn middle(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The probes' sources (documentation addresses) and the entries that give each its verdict.
pub(crate) struct Fixtures {
    miss: IpAddr,
    hit_address: IpAddr,
    hit_prefix: IpAddr,
    allowlisted: IpAddr,
    trie_miss: IpAddr,
    blocks: [Target; 3],
    allow: Target,
}

impl Fixtures {
    pub(crate) fn of(family: Family) -> Self {
        let ip = |s: &str| -> IpAddr { s.parse().expect("valid address") };
        let net = |s: &str| -> Target { s.parse().expect("valid target") };
        match family {
            Family::Ipv4 => Self {
                miss: ip("192.0.2.1"),
                hit_address: ip("198.51.100.7"),
                hit_prefix: ip("198.51.100.200"),
                allowlisted: ip("203.0.113.9"),
                // In the /24 of the /25 block (its prefilter bit), outside every block.
                trie_miss: ip("198.51.100.9"),
                blocks: [
                    net("198.51.100.7"),
                    net("198.51.100.128/25"),
                    net("203.0.113.0/24"),
                ],
                allow: net("203.0.113.9"),
            },
            Family::Ipv6 => Self {
                miss: ip("2001:db8:ffff::1"),
                hit_address: ip("2001:db8:7::7"),
                hit_prefix: ip("2001:db8:8::8"),
                allowlisted: ip("2001:db8:9::9"),
                // In the /32 of the /48 blocks (their prefilter bit), outside every block.
                trie_miss: ip("2001:db8:a::1"),
                blocks: [
                    net("2001:db8:7::7"),
                    net("2001:db8:8::/48"),
                    net("2001:db8:9::/48"),
                ],
                allow: net("2001:db8:9::9"),
            },
        }
    }

    fn source(&self, packet: Packet) -> IpAddr {
        match packet {
            Packet::Miss => self.miss,
            Packet::HitAddress => self.hit_address,
            Packet::HitPrefix => self.hit_prefix,
            Packet::Allowlisted => self.allowlisted,
            Packet::TrieMiss => self.trie_miss,
            Packet::MissScopesLoaded => self.miss,
            Packet::ScopedHit | Packet::ScopedOtherPort | Packet::HitReplyChecked => {
                self.hit_address
            }
            Packet::LengthsHit | Packet::LengthsMiss | Packet::LengthsExpired => {
                unreachable!("the prefix-lengths cases choose their own sources")
            }
        }
    }

    /// Whether a background entry would change a probe's verdict or collide with a fixture.
    fn touched_by(&self, target: &Target) -> bool {
        [
            self.miss,
            self.hit_address,
            self.hit_prefix,
            self.allowlisted,
            self.trie_miss,
        ]
        .into_iter()
        .any(|a| target.contains(a))
            || self.blocks.contains(target)
    }

    fn install(&self, dp: &mut Datapath) -> Result<()> {
        let maps = dp.maps_mut();
        for block in &self.blocks {
            maps.insert_block(block, &BlockValue::new(0, MODE_ENFORCE))?;
        }
        maps.insert_allow(&self.allow, ALLOW_ORIGIN_CONFIG)?;
        Ok(())
    }

    fn remove(&self, dp: &mut Datapath) -> Result<()> {
        let maps = dp.maps_mut();
        for block in &self.blocks {
            maps.remove_block(block)?;
        }
        maps.remove_allow(&self.allow)?;
        Ok(())
    }
}

/// `n` background entries of one family and fill, as the data path cases use (section 5
/// measures what they cost in kernel memory).
pub(crate) fn background(family: Family, fill: Fill, n: usize) -> Vec<Target> {
    let fixtures = Fixtures::of(family);
    Background::new(family, fill, &fixtures).take(n)
}

/// Random but repeatable background entries, all distinct, none touching a probe:
/// addresses in 10.0.0.0/8 or 2001:db8::/32; prefixes /8../31 anywhere in IPv4, /32../127 in
/// 2000::/3.
struct Background<'a> {
    family: Family,
    fill: Fill,
    fixtures: &'a Fixtures,
    rng: XorShift,
    seen: HashSet<Target>,
}

impl<'a> Background<'a> {
    fn new(family: Family, fill: Fill, fixtures: &'a Fixtures) -> Self {
        Self {
            family,
            fill,
            fixtures,
            rng: XorShift(0x9e37_79b9_7f4a_7c15),
            seen: HashSet::new(),
        }
    }

    fn take(&mut self, n: usize) -> Vec<Target> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let target = self.random();
            if !self.fixtures.touched_by(&target) && self.seen.insert(target) {
                out.push(target);
            }
        }
        out
    }

    fn random(&mut self) -> Target {
        let r = self.rng.next();
        let wide = (u128::from(r) << 64) | u128::from(self.rng.next());
        let net = match (self.family, self.fill) {
            (Family::Ipv4, Fill::Prefixes) => IpNet::V4(
                Ipv4Net::new(Ipv4Addr::from((r >> 32) as u32), 8 + (r % 24) as u8)
                    .expect("length ≤ 32"),
            ),
            (Family::Ipv4, _) => IpNet::from(IpAddr::V4(Ipv4Addr::from(
                0x0a00_0000 | (r as u32 & 0x00ff_ffff),
            ))),
            (Family::Ipv6, Fill::Prefixes) => {
                let addr = (1u128 << 125) | (wide >> 3);
                IpNet::V6(
                    Ipv6Net::new(Ipv6Addr::from(addr), 32 + (r % 96) as u8).expect("length ≤ 128"),
                )
            }
            (Family::Ipv6, _) => {
                let addr = (0x2001_0db8u128 << 96) | (wide & ((1u128 << 96) - 1));
                IpNet::from(IpAddr::V6(Ipv6Addr::from(addr)))
            }
        };
        Target::new(net)
    }
}

/// Marsaglia's xorshift64: repeatable pseudo-random numbers without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}
