//! Loads the XDP program, owns its pinned maps, and attaches it to interfaces.
//!
//! Everything the data path needs to keep working without us lives under one bpffs directory
//! (default `/sys/fs/bpf/enforcer`):
//!
//! ```text
//! <bpffs-dir>/maps-v<LAYOUT>/BLOCK_V4 ...   the maps, pinned by name
//! <bpffs-dir>/maps-v<LAYOUT>/prog-<name>-<identity>   the verified programs (see pinned_program)
//! <bpffs-dir>/links/<interface>             one pinned XDP link per protected interface
//! ```
//!
//! The pinned links keep the program attached after the process exits, and the pinned maps keep
//! the blocks, so a restart or a crash never opens a window in which blocked traffic passes.
//! A new build reuses the pinned maps (after checking their layout) and swaps its program into
//! the existing links atomically (`BPF_LINK_UPDATE`). Fresh maps are created in a temporary
//! directory and renamed into place, so a half-made state is never visible.

use std::{
    ffi::CString,
    fs::{self, File},
    io,
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapInfo, MapType},
    programs::{
        Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
    },
};
use enforcer_common::{
    AllowValue, BlockEntry, DEFAULT_MAX_ADDRESSES, DEFAULT_MAX_ALLOW, DEFAULT_MAX_PREFIXES,
    GLOBAL_COUNT_BLOCK_HITS, HIT_SLOTS, HitSlot, LAYOUT_VERSION, PROGRAM_NAME, PROGRAM_NAME_IP,
    STATS_SLOTS, Stats, Unjudged,
    flood::{FloodConfig, FloodReport, FloodStats, GLOBAL_FLOOD},
    lookup, map_names,
};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};

use super::{
    AttachedMode,
    bpffs::{PinLayout, decode_pin_name},
    error::{DatapathError, XdpModeRequest},
    link::{LinkType, Parse, Programs},
    maps::BlockMaps,
    pinned_program::{self, Identity},
    query_xdp,
};

/// The XDP object built from `enforcer-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer-xdp"));

/// Default bpffs directory for pins.
pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/enforcer";

/// Name of the do-nothing program in the same object: the benchmarks' floor.
pub const FLOOR_PROGRAM_NAME: &str = "xdp_pass_floor";

/// How many entries each map holds, per address family. Fixed when the maps are created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Capacity {
    /// Single-address blocks (/32 or /128).
    pub addresses: u32,
    /// Prefix blocks.
    pub prefixes: u32,
    /// Allowlist prefixes.
    pub allow: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            addresses: DEFAULT_MAX_ADDRESSES,
            prefixes: DEFAULT_MAX_PREFIXES,
            allow: DEFAULT_MAX_ALLOW,
        }
    }
}

impl Capacity {
    /// The configured capacity of the map called `name`.
    pub fn of(&self, name: &str) -> u32 {
        match name {
            map_names::BLOCK_V4 | map_names::BLOCK_V6 => self.addresses,
            map_names::BLOCK_NET_V4 | map_names::BLOCK_NET_V6 => self.prefixes,
            map_names::ALLOW_V4 | map_names::ALLOW_V6 => self.allow,
            map_names::PREFIX_LENS => lookup::LENS_WORDS,
            map_names::BLOCK_FILTER => lookup::FILTER_WORDS,
            map_names::HITS => HIT_SLOTS,
            map_names::CLOCK | map_names::SCOPED => 1,
            map_names::SCOPES => enforcer_common::scope::MAX_SCOPE_ENTRIES,
            _ => STATS_SLOTS,
        }
    }
}

fn link_err(iface: &str) -> impl FnOnce(aya::programs::links::LinkError) -> DatapathError {
    let iface = iface.to_owned();
    move |source| DatapathError::Link { iface, source }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DatapathError {
    let path = path.to_owned();
    move |source| DatapathError::Io {
        action,
        path,
        source,
    }
}

/// Options for [`Datapath::open`].
#[derive(Clone, Debug)]
pub struct DatapathOptions {
    /// The bpffs directory holding maps and links.
    pub bpffs_dir: PathBuf,
    /// Map capacities (used when the maps are created; checked when they are reused).
    pub capacity: Capacity,
    /// Count per-block hits (on by default; off only to measure what they cost).
    pub count_block_hits: bool,
    /// Flood detection in the data path (off by default; see [`enforcer_common::flood`]).
    pub flood: FloodConfig,
    /// Pass replies to connections this host opened, from blocked sources (on by default).
    pub replies: bool,
}

impl Default for DatapathOptions {
    fn default() -> Self {
        Self {
            bpffs_dir: DEFAULT_BPFFS_DIR.into(),
            capacity: Capacity::default(),
            count_block_hits: true,
            flood: FloodConfig::OFF,
            replies: true,
        }
    }
}

/// The data path's `REPLIES` global: the host's ephemeral port range as `low << 16 | high`
/// (from `ip_local_port_range`, read once per process; Linux's default when it cannot be
/// read), or 0 when replies are not to pass.
pub fn replies_word(on: bool) -> &'static u32 {
    static RANGE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    if !on {
        return &0;
    }
    RANGE.get_or_init(|| {
        let range = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
                Some((it.next()??, it.next()??))
            })
            .unwrap_or((32768, 60999));
        u32::from(range.0) << 16 | u32::from(range.1)
    })
}

/// One interface the program is attached to.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    /// Interface name.
    pub iface: String,
    /// Interface index.
    pub ifindex: u32,
    /// The mode the kernel reports.
    pub mode: AttachedMode,
    /// Id of the program now attached.
    pub prog_id: u32,
    /// Whether an earlier enforcer program was replaced in place (no gap) rather than attached.
    pub replaced: bool,
    /// The link's type.
    pub link_type: LinkType,
    /// The parse (program) chosen for it.
    pub parse: Parse,
    /// Why the kernel refused native mode when `auto` fell back to skb: its words and what to
    /// do (see [`native_refusal`]).
    pub native_refused: Option<String>,
}

/// The flood detector's report ring buffer and counters (see [`enforcer_common::flood`]).
pub struct FloodMaps {
    /// Reports of sources over their limit.
    pub events: aya::maps::RingBuf<aya::maps::MapData>,
    /// Per-CPU counters, one slot.
    pub stats: aya::maps::PerCpuArray<aya::maps::MapData, FloodStats>,
}

impl FloodMaps {
    /// The counters summed over every CPU.
    pub fn stats_total(&self) -> Result<FloodStats, aya::maps::MapError> {
        Ok(self
            .stats
            .get(&0, 0)?
            .iter()
            .fold(FloodStats::default(), |a, b| a.plus(*b)))
    }

    /// The reports waiting in the ring buffer, decoded.
    pub fn drain(&mut self) -> Vec<FloodReport> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() >= size_of::<FloodReport>() {
                // SAFETY: the data path writes whole `FloodReport`s (repr(C), integers only);
                // the read is unaligned-safe.
                out.push(unsafe { item.as_ptr().cast::<FloodReport>().read_unaligned() });
            }
        }
        out
    }
}

/// The loaded program and its pinned maps. One process at a time holds this (a lock enforces it).
pub struct Datapath {
    ebpf: Ebpf,
    /// Programs taken back from an earlier run's pins, in place of the object's.
    reused: Reused,
    /// What this build's programs are, to find and leave their pins (`None`: not pinned).
    identity: Option<Identity>,
    layout: PinLayout,
    pins: super::bpffs::PinsInfo,
    maps: BlockMaps,
    /// Keeps the data path's clock offset current (see [`super::clock`]); stops on drop.
    _clock_keeper: ClockKeeper,
    /// flock on the base directory: the maps have a single writer.
    _lock: Flock<File>,
}

/// A thread that rewrites the CLOCK map when `CLOCK_BOOTTIME − CLOCK_MONOTONIC` changes (after
/// a resume from suspend), so that expiry in the kernel stays on boot time.
struct ClockKeeper {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClockKeeper {
    fn start(maps_dir: &Path) -> Result<Self, DatapathError> {
        let path = maps_dir.join(map_names::CLOCK);
        let data = aya::maps::MapData::from_pin(&path).map_err(|e| DatapathError::Io {
            action: "opening",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        let mut map: aya::maps::Array<_, u64> =
            aya::maps::Array::try_from(aya::maps::Map::Array(data)).map_err(|e| {
                DatapathError::Io {
                    action: "opening",
                    path,
                    source: io::Error::other(e),
                }
            })?;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("clock-keeper".into())
            .spawn(move || {
                let mut written = map.get(&0, 0).unwrap_or(0);
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(super::clock::OFFSET_CHECK) {
                    let offset = super::clock::boot_offset_ns();
                    // The two reads are a few µs apart: rewrite only on a real change.
                    if offset.abs_diff(written) > 1_000_000 {
                        match super::maps::write_clock_offset(&mut map) {
                            Ok(()) => {
                                tracing::info!(suspended_ms = (offset.saturating_sub(written)) / 1_000_000, "the boot clock moved ahead of the monotonic clock (resume from suspend); updated the data path's clock");
                                written = offset;
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot update the data path's clock"),
                        }
                    }
                }
            })
            .map_err(io_err("starting the clock keeper for", maps_dir))?;
        Ok(Self {
            stop: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for ClockKeeper {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            // A panic in the keeper was already reported by the panic hook; nothing to add on drop.
            t.join().ok();
        }
    }
}

impl Datapath {
    /// Loads the program, reusing the pinned maps when they exist and match this build, or creating
    /// them otherwise. Does not attach anything.
    pub fn open(opts: &DatapathOptions) -> Result<Self, DatapathError> {
        let super::bpffs::ResolvedPins { layout, info: pins } =
            super::bpffs::resolve(&opts.bpffs_dir)?;
        fs::create_dir_all(layout.links_dir()).map_err(io_err("creating", &layout.links_dir()))?;
        let lock = lock_dir(layout.base())?;

        let maps_dir = layout.maps_dir();
        let fresh = !maps_dir.exists();
        let ebpf = if !fresh {
            check_pinned_layout(&maps_dir, &opts.capacity)?;
            loader(opts)
                .default_map_pin_directory(&maps_dir)
                .load(OBJECT)?
        } else {
            // Create and pin the maps in a private directory, then publish them with one rename.
            // (bpffs refuses names with dots.)
            let tmp = layout
                .base()
                .join(format!("tmp-maps-v{LAYOUT_VERSION}-{}", std::process::id()));
            // A leftover of an earlier attempt, if any; the create below fails if it stays.
            remove_pin_dir(&tmp).ok();
            fs::create_dir(&tmp).map_err(io_err("creating", &tmp))?;
            let ebpf = loader(opts).default_map_pin_directory(&tmp).load(OBJECT);
            let ebpf = match ebpf {
                Ok(ebpf) => ebpf,
                Err(e) => {
                    // Best effort: the load's error is the one to report.
                    remove_pin_dir(&tmp).ok();
                    return Err(e.into());
                }
            };
            fs::rename(&tmp, &maps_dir).map_err(io_err("publishing the maps at", &maps_dir))?;
            ebpf
        };
        // The writer's own descriptors of the pinned maps: the object keeps its descriptors,
        // which the instructions of a program loaded later (see `program_for`) refer to.
        let mut maps = BlockMaps::open_pinned(&maps_dir)?;
        maps.refresh_prefix_flags()?;
        if fresh {
            super::migrate::carry_over(&layout, &mut maps);
        }
        let clock_keeper = ClockKeeper::start(&maps_dir)?;
        let mut dp = Self {
            ebpf,
            reused: Reused::default(),
            identity: identity(opts),
            layout,
            pins,
            maps,
            _clock_keeper: clock_keeper,
            _lock: lock,
        };
        // A restart of the same build takes its verified program back from the pins (see
        // `pinned_program`). The raw-IP program is loaded when a link first needs it: the
        // verifier takes about a CPU-second per program, at a start that may also pull 100k
        // CrowdSec decisions. The
        // flood detector's report ring goes to its reader (`take_flood`), out of the object a
        // later load relocates against: with detection on, both are loaded now.
        dp.program_for(Parse::Ethernet)?;
        if opts.flood.enabled != 0 {
            dp.program_for(Parse::RawIp)?;
        }
        Ok(dp)
    }

    /// The pin layout in use.
    pub fn layout(&self) -> &PinLayout {
        &self.layout
    }

    /// Where the pins are and whether they outlive this process.
    pub fn pins(&self) -> &super::bpffs::PinsInfo {
        &self.pins
    }

    /// The maps (this process is their only writer).
    pub fn maps(&self) -> &BlockMaps {
        &self.maps
    }

    /// The maps, for writing.
    pub fn maps_mut(&mut self) -> &mut BlockMaps {
        &mut self.maps
    }

    /// The flood detector's maps, taken out for their reader (once: `None` after).
    pub fn take_flood(&mut self) -> Option<FloodMaps> {
        let events = self.ebpf.take_map(map_names::FLOOD_EVENTS)?;
        let stats = self.ebpf.take_map(map_names::FLOOD_STATS)?;
        Some(FloodMaps {
            events: aya::maps::RingBuf::try_from(events).ok()?,
            stats: aya::maps::PerCpuArray::try_from(stats).ok()?,
        })
    }

    /// The loaded XDP program for Ethernet links (for `BPF_PROG_TEST_RUN`).
    pub fn program(&mut self) -> &mut Xdp {
        self.xdp(Parse::Ethernet)
    }

    /// The XDP program for links that need `parse`, loaded (verified) on first use: a host
    /// with Ethernet links only never pays the verifier for the raw-IP one.
    pub fn program_for(&mut self, parse: Parse) -> Result<&mut Xdp, DatapathError> {
        if self.xdp(parse).fd().is_err() {
            self.load(parse)?;
        }
        Ok(self.xdp(parse))
    }

    /// Takes the program back from an earlier run's pin, or loads (verifies) and pins it.
    fn load(&mut self, parse: Parse) -> Result<(), DatapathError> {
        let name = name_of(parse);
        let Some(identity) = self.identity else {
            return Ok(self.xdp(parse).load()?);
        };
        let maps_dir = self.layout.maps_dir();
        if let Some(program) = pinned_program::reuse(&maps_dir, name, identity)? {
            tracing::info!(
                program = name,
                "took back the verified program an earlier run of this build pinned"
            );
            *self.reused.slot(parse) = Some(program);
            return Ok(());
        }
        let program = self.xdp(parse);
        program.load()?;
        pinned_program::pin(program, &maps_dir, name, identity)
    }

    /// The program for `parse`: the one taken back from a pin, or else the object's.
    fn xdp(&mut self, parse: Parse) -> &mut Xdp {
        if self.reused.slot(parse).is_some() {
            return self
                .reused
                .slot(parse)
                .as_mut()
                .expect("checked just above");
        }
        self.ebpf
            .program_mut(name_of(parse))
            .expect("the object defines both programs")
            .try_into()
            .expect("the program is XDP")
    }

    /// The kernel ids of the programs loaded so far (0 for one no link has needed yet: no
    /// program has that id, so no link counts as protected by it).
    pub fn programs(&mut self) -> Result<Programs, DatapathError> {
        let mut id = |parse| -> Result<u32, DatapathError> {
            let program = self.xdp(parse);
            if program.fd().is_err() {
                return Ok(0);
            }
            Ok(program.info()?.id())
        };
        Ok(Programs {
            ethernet: id(Parse::Ethernet)?,
            raw_ip: id(Parse::RawIp)?,
        })
    }

    /// Loads the do-nothing XDP program from the same object: the cost floor for benchmarks.
    pub fn floor_program(&mut self) -> Result<&mut Xdp, DatapathError> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(FLOOR_PROGRAM_NAME)
            .expect("the object defines the floor program")
            .try_into()
            .expect("the floor program is XDP");
        if program.fd().is_err() {
            program.load()?;
        }
        Ok(program)
    }

    /// Attaches to `iface` (in the calling thread's network namespace) the program its link
    /// type needs, or swaps it into the link an earlier enforcer pinned there, without a gap.
    ///
    /// Refuses, naming it, when another program that enforcer did not attach owns the hook, and
    /// a link whose frames neither program can parse.
    pub fn attach(
        &mut self,
        iface: &str,
        mode: XdpModeRequest,
    ) -> Result<Attachment, DatapathError> {
        let ifindex = ifindex(iface)?;
        let link_path = self.layout.link_path(iface);
        let (state, link_type) = crate::netlink::query_link(ifindex)
            .map_err(io_err("querying XDP state of", Path::new(iface)))?;
        let parse = link_type
            .parse()
            .ok_or_else(|| DatapathError::UnsupportedLink {
                iface: iface.to_owned(),
                link_type,
            })?;
        let link = (link_type, parse);
        if link_path.exists()
            && let Some(replaced) =
                self.replace_in_pinned_link(iface, ifindex, &link_path, state.prog_id, link)?
        {
            return Ok(replaced);
        }
        if let Some(prog_id) = state.prog_id {
            return Err(DatapathError::ForeignProgram {
                iface: iface.to_owned(),
                prog_id,
                prog_name: program_name(prog_id),
            });
        }
        self.attach_new_link(iface, ifindex, &link_path, mode, link)
    }

    /// Our link is pinned for `iface`. If it still holds the interface's hook (`running` is its
    /// program), this build's program goes into it in place, so traffic is never unfiltered.
    /// Otherwise the interface went away (and maybe came back): the link is defunct, its pin is
    /// removed, and `None` says to attach afresh.
    fn replace_in_pinned_link(
        &mut self,
        iface: &str,
        ifindex: u32,
        link_path: &Path,
        running: Option<u32>,
        (link_type, parse): (LinkType, Parse),
    ) -> Result<Option<Attachment>, DatapathError> {
        let pinned = PinnedLink::from_pin(link_path).map_err(link_err(iface))?;
        let fd_link: FdLink = pinned.into();
        let info = fd_link.info().map_err(link_err(iface))?;
        if running != Some(info.program_id()) {
            fs::remove_file(link_path).map_err(io_err("removing stale link", link_path))?;
            return Ok(None);
        }
        let link = XdpLink::try_from(fd_link).map_err(link_err(iface))?;
        self.program_for(parse)?.attach_to_link(link)?;
        let after =
            query_xdp(ifindex).map_err(io_err("querying XDP state of", Path::new(iface)))?;
        Ok(Some(Attachment {
            iface: iface.to_owned(),
            ifindex,
            mode: after.mode.unwrap_or(AttachedMode::Skb),
            prog_id: after.prog_id.unwrap_or_default(),
            replaced: true,
            link_type,
            parse,
            native_refused: None,
        }))
    }

    /// Attaches to a hook nothing runs on, in the first of `mode`'s XDP modes the driver
    /// accepts, and pins the link so the program outlives this process.
    fn attach_new_link(
        &mut self,
        iface: &str,
        ifindex: u32,
        link_path: &Path,
        mode: XdpModeRequest,
        (link_type, parse): (LinkType, Parse),
    ) -> Result<Attachment, DatapathError> {
        let attempts: &[XdpMode] = match mode {
            XdpModeRequest::Auto => &[XdpMode::Driver, XdpMode::Skb],
            XdpModeRequest::Native => &[XdpMode::Driver],
            XdpModeRequest::Skb => &[XdpMode::Skb],
        };
        let mut last_err = None;
        let mut native_refused = None;
        for &attempt in attempts {
            match self
                .program_for(parse)?
                .attach_to_if_index(ifindex, attempt)
            {
                Ok(id) => {
                    let link = self.xdp(parse).take_link(id)?;
                    let fd_link = FdLink::try_from(link).map_err(link_err(iface))?;
                    fd_link.pin(link_path).map_err(|e| DatapathError::Io {
                        action: "pinning the XDP link at",
                        path: link_path.to_owned(),
                        source: io::Error::other(e),
                    })?;
                    let after = query_xdp(ifindex)
                        .map_err(io_err("querying XDP state of", Path::new(iface)))?;
                    return Ok(Attachment {
                        iface: iface.to_owned(),
                        ifindex,
                        mode: after.mode.unwrap_or(match attempt {
                            XdpMode::Driver => AttachedMode::Native,
                            _ => AttachedMode::Skb,
                        }),
                        prog_id: after.prog_id.unwrap_or_default(),
                        replaced: false,
                        link_type,
                        parse,
                        native_refused,
                    });
                }
                Err(e) => {
                    if attempt == XdpMode::Driver {
                        native_refused = self.why_native_refused(parse, ifindex);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(DatapathError::Attach {
            iface: iface.to_owned(),
            mode,
            native_refused: native_refused
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
                .into(),
            source: last_err.expect("at least one attempt"),
        })
    }

    /// The kernel's reason for refusing native mode, and what to do, when it gives one.
    fn why_native_refused(&mut self, parse: Parse, ifindex: u32) -> Option<String> {
        let fd = self.xdp(parse).fd().ok()?.as_fd();
        match crate::netlink::native_refusal(ifindex, fd) {
            Ok(text) => text.map(|t| native_refusal(&t)),
            Err(e) => {
                tracing::debug!(ifindex, error = %e, "could not ask the kernel why native mode was refused");
                None
            }
        }
    }

    /// Removes the pinned maps of other layout versions (left by an older build whose program
    /// this one replaced). Call once every interface runs this build's program.
    pub fn remove_stale_layouts(&self) {
        let current = self.layout.maps_dir();
        let Ok(entries) = fs::read_dir(self.layout.base()) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path != current && (name.starts_with("maps-v") || name.starts_with("tmp-maps-v")) {
                match remove_pin_dir(&path) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "removed the pinned maps of an older layout")
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove old pinned maps")
                    }
                }
            }
        }
    }

    /// Detaches from one interface (only if enforcer's pinned link is what is attached).
    pub fn detach(&mut self, iface: &str) -> Result<(), DatapathError> {
        detach_link(&self.layout, iface)
    }
}

/// Detaches enforcer's pinned link from `iface`, refusing to touch anything else.
pub fn detach_link(layout: &PinLayout, iface: &str) -> Result<(), DatapathError> {
    let link_path = layout.link_path(iface);
    if link_path.exists() {
        detach_pinned_link(&link_path)?;
        return Ok(());
    }
    if let Ok(ifindex) = ifindex(iface)
        && let Ok(state) = query_xdp(ifindex)
        && let Some(prog_id) = state.prog_id
    {
        return Err(DatapathError::ForeignProgram {
            iface: iface.to_owned(),
            prog_id,
            prog_name: program_name(prog_id),
        });
    }
    Ok(())
}

/// Removes every link and map enforcer pinned under `base`: the deliberate "switch it all off".
///
/// Returns the interfaces it detached from.
pub fn detach_all(base: &Path) -> Result<Vec<String>, DatapathError> {
    let layout = PinLayout::new(base);
    let mut detached = Vec::new();
    if let Ok(entries) = fs::read_dir(layout.links_dir()) {
        for entry in entries.flatten() {
            detach_pinned_link(&entry.path())?;
            detached.push(decode_pin_name(&entry.file_name().to_string_lossy()));
        }
    }
    if base.exists() {
        remove_pin_dir(base).map_err(io_err("removing", base))?;
    }
    detached.sort();
    Ok(detached)
}

/// Detaches a pinned XDP link now (`BPF_LINK_DETACH`) and removes its pin.
///
/// Just removing the pin would detach it too, but only once the kernel frees the link after an
/// RCU grace period; an explicit detach makes "detached" true when this returns, from any
/// network namespace.
fn detach_pinned_link(path: &Path) -> Result<(), DatapathError> {
    if let Ok(link) = bpf_obj_get(path)
        && let Err(e) = bpf_link_detach(&link)
    {
        tracing::debug!(path = %path.display(), error = %e, "BPF_LINK_DETACH failed; unpinning only");
    }
    fs::remove_file(path).map_err(io_err("removing", path))
}

/// Opens a pinned object (`BPF_OBJ_GET`). aya 0.14 does this only inside types that do not
/// hand out their descriptor, and it has no `BPF_LINK_DETACH` at all.
fn bpf_obj_get(path: &Path) -> io::Result<OwnedFd> {
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // union bpf_attr for BPF_OBJ_GET: { u64 pathname; u32 bpf_fd; u32 file_flags; ... }
    let mut attr = [0u64; 8];
    attr[0] = c.as_ptr() as u64;
    let fd = RawFd::try_from(bpf(BPF_OBJ_GET, &mut attr)?)
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Detaches a link now (`BPF_LINK_DETACH`), whoever holds it.
fn bpf_link_detach(link: &OwnedFd) -> io::Result<()> {
    const BPF_LINK_DETACH: libc::c_long = 34;
    // union bpf_attr for BPF_LINK_DETACH: { u32 link_fd; }
    let mut attr = [0u64; 8];
    attr[0] = link.as_raw_fd() as u64;
    bpf(BPF_LINK_DETACH, &mut attr).map(drop)
}

/// bpf(2) with a zero-padded `union bpf_attr`.
fn bpf(cmd: libc::c_long, attr: &mut [u64; 8]) -> io::Result<libc::c_long> {
    // SAFETY: the kernel reads at most size_of_val(attr) bytes from `attr`, which outlives the
    // call; the commands used here hold no pointer but a path that the caller keeps alive.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of_val(attr)) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The names of the interfaces with a pinned enforcer link.
pub fn pinned_interfaces(layout: &PinLayout) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(layout.links_dir())
        .map(|entries| {
            entries
                .flatten()
                .map(|e| decode_pin_name(&e.file_name().to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The programs taken back from pins, by the parse they serve.
#[derive(Default)]
struct Reused {
    ethernet: Option<Xdp>,
    raw_ip: Option<Xdp>,
}

impl Reused {
    fn slot(&mut self, parse: Parse) -> &mut Option<Xdp> {
        match parse {
            Parse::Ethernet => &mut self.ethernet,
            Parse::RawIp => &mut self.raw_ip,
        }
    }
}

const fn name_of(parse: Parse) -> &'static str {
    match parse {
        Parse::Ethernet => PROGRAM_NAME,
        Parse::RawIp => PROGRAM_NAME_IP,
    }
}

/// Which program this build loads with `opts`, for its pin; `None` with flood detection on
/// (see [`pinned_program`]). Everything that [`loader`] puts into the program is in it.
fn identity(opts: &DatapathOptions) -> Option<Identity> {
    (opts.flood.enabled == 0).then(|| {
        let options = format!(
            "hits {} flood {:?} replies {} capacity {:?}",
            opts.count_block_hits,
            opts.flood,
            replies_word(opts.replies),
            opts.capacity
        );
        Identity::of(OBJECT, &options)
    })
}

fn loader(opts: &DatapathOptions) -> EbpfLoader<'_> {
    let mut loader = EbpfLoader::new();
    for name in map_names::ALL.into_iter().chain(map_names::ADDED) {
        loader.map_max_entries(name, opts.capacity.of(name));
    }
    let count: &'static u8 = if opts.count_block_hits { &1 } else { &0 };
    loader.override_global(GLOBAL_COUNT_BLOCK_HITS, count, true);
    loader.override_global(GLOBAL_FLOOD, &opts.flood, false);
    loader.override_global("REPLIES", replies_word(opts.replies), true);
    if opts.flood.enabled == 0 {
        // Detection off: no memory for its sketch and its exact counts.
        loader.map_max_entries(map_names::FLOOD_SKETCH, 1);
        loader.map_max_entries(map_names::FLOOD_TRACK, 1);
    }
    loader
}

/// Checks every pinned map against what this build expects, before aya reuses them blindly.
/// A map added within the layout ([`map_names::ADDED`]) may be missing (an earlier build of the
/// layout made the pins; the loader creates it), and is checked when present.
fn check_pinned_layout(dir: &Path, capacity: &Capacity) -> Result<(), DatapathError> {
    let missing: Vec<&str> = map_names::ALL
        .into_iter()
        .filter(|name| !dir.join(name).exists())
        .collect();
    if !missing.is_empty() {
        return Err(DatapathError::IncompletePins {
            path: dir.to_owned(),
            missing: missing.join(", "),
        });
    }
    let added = map_names::ADDED
        .into_iter()
        .filter(|name| dir.join(name).exists());
    for name in map_names::ALL.into_iter().chain(added) {
        let path = dir.join(name);
        let info = MapInfo::from_pin(&path).map_err(|e| DatapathError::LayoutMismatch {
            path: path.clone(),
            what: format!("cannot read it: {e}"),
        })?;
        let (map_type, key, value) = expected(name);
        let found_type = info.map_type().ok();
        let mut problems = Vec::new();
        if found_type != Some(map_type) {
            problems.push(format!("type {found_type:?}, expected {map_type:?}"));
        }
        if info.key_size() != key {
            problems.push(format!("key size {}, expected {key}", info.key_size()));
        }
        if info.value_size() != value {
            problems.push(format!(
                "value size {}, expected {value}",
                info.value_size()
            ));
        }
        if info.max_entries() != capacity.of(name) {
            problems.push(format!(
                "capacity {}, configured {}",
                info.max_entries(),
                capacity.of(name)
            ));
        }
        if !problems.is_empty() {
            return Err(DatapathError::LayoutMismatch {
                path,
                what: problems.join("; "),
            });
        }
    }
    Ok(())
}

fn expected(name: &str) -> (MapType, u32, u32) {
    use std::mem::size_of;
    let block = size_of::<BlockEntry>() as u32;
    let allow = size_of::<AllowValue>() as u32;
    match name {
        map_names::BLOCK_V4 => (MapType::Hash, 4, block),
        map_names::BLOCK_V6 => (MapType::Hash, 16, block),
        map_names::BLOCK_NET_V4 => (MapType::Hash, 8, block),
        map_names::BLOCK_NET_V6 => (MapType::Hash, 24, block),
        map_names::ALLOW_V4 => (MapType::LpmTrie, 8, allow),
        map_names::ALLOW_V6 => (MapType::LpmTrie, 20, allow),
        map_names::PREFIX_LENS | map_names::BLOCK_FILTER | map_names::CLOCK | map_names::SCOPED => {
            (MapType::Array, 4, 8)
        }
        map_names::SCOPES => (
            MapType::Hash,
            size_of::<enforcer_common::scope::ScopeKey>() as u32,
            size_of::<enforcer_common::scope::ScopeValue>() as u32,
        ),
        map_names::HITS => (MapType::PerCpuArray, 4, size_of::<HitSlot>() as u32),
        map_names::UNJUDGED => (MapType::PerCpuArray, 4, size_of::<Unjudged>() as u32),
        map_names::REPLY_PASSED => (
            MapType::PerCpuArray,
            4,
            size_of::<enforcer_common::Counter>() as u32,
        ),
        _ => (MapType::PerCpuArray, 4, size_of::<Stats>() as u32),
    }
}

/// The kernel's reason for refusing native XDP and what to do about it, for the cases whose
/// remedy is known (`dev_xdp_attach` and the drivers' `ndo_bpf` say them in the extended ack).
pub fn native_refusal(kernel: &str) -> String {
    let lower = kernel.to_ascii_lowercase();
    let hint = if lower.contains("does not support xdp") {
        "this driver has no native XDP: set xdp_mode = \"skb\" (or \"auto\"), or use a NIC whose driver has it"
    } else if lower.contains("rings") || lower.contains("queue") {
        "native XDP needs a transmit queue per CPU: raise the NIC's queue count (`ethtool -L <iface> combined <CPUs>`; for virtio-net, give the VM as many queue pairs as vCPUs), or set xdp_mode = \"skb\""
    } else if lower.contains("mtu") {
        "lower the MTU (`ip link set <iface> mtu 1500`) or disable LRO/GRO_HW, or set xdp_mode = \"skb\""
    } else {
        "set xdp_mode = \"skb\" where the driver cannot run it natively"
    };
    format!("the kernel says \"{kernel}\"; {hint}")
}

fn ifindex(iface: &str) -> Result<u32, DatapathError> {
    nix::net::if_::if_nametoindex(iface)
        .map_err(|_| DatapathError::UnknownInterface(iface.to_owned()))
}

fn program_name(prog_id: u32) -> String {
    aya::programs::loaded_programs()
        .flatten()
        .find(|p| p.id() == prog_id)
        .and_then(|p| p.name_as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Takes the directory's lock (`flock`, exclusive, not waiting), held until the value drops.
fn lock_dir(dir: &Path) -> Result<Flock<File>, DatapathError> {
    let file = File::open(dir).map_err(io_err("opening", dir))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| match errno {
        Errno::EWOULDBLOCK => DatapathError::Locked {
            path: dir.to_owned(),
        },
        errno => DatapathError::Io {
            action: "locking",
            path: dir.to_owned(),
            source: errno.into(),
        },
    })
}

/// Removes a directory of pins (bpffs has no recursive delete of its own).
fn remove_pin_dir(dir: &Path) -> io::Result<()> {
    fs::remove_dir_all(dir)
}
