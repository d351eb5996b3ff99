//! What `stats` and `status` report: counters, interfaces, maps, pins, clock steps and the
//! integrations.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{
    block::{Mode, Source},
    time::WallMs,
};

/// Packet and byte counts.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Count {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Counters of one scope (an interface, or all).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Every frame seen.
    pub seen: Count,
    /// Passed to the stack.
    pub passed: Count,
    /// Dropped by an enforced block.
    pub dropped: Count,
    /// Matched a block but allowlisted.
    pub allowlisted: Count,
    /// Matched a shadow block (passed).
    pub shadow: Count,
    /// Matched only expired entries.
    pub expired: Count,
    /// Not judged: the parser gave up (see `unjudged` for why).
    pub not_ip: Count,
    /// The frames the parser gave up on, by reason (they passed).
    #[serde(default)]
    pub unjudged: UnjudgedCounts,
    /// Frames from blocked sources passed as replies to connections this host opened
    /// (counted in `passed` too).
    #[serde(default)]
    pub reply_passed: Count,
}

/// Frames the data path did not judge, by why (see `enforcer_common::unjudged`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnjudgedCounts {
    /// Neither IPv4 nor IPv6 (ARP, LLDP...; on a raw-IP link, a first nibble not 4 or 6).
    pub not_ip: Count,
    /// More than two VLAN tags.
    pub vlan_depth: Count,
    /// Shorter than its headers.
    pub truncated: Count,
    /// Headers past the first buffer of a multi-buffer frame.
    pub split_headers: Count,
}

impl UnjudgedCounts {
    /// `(name, count)` in the order and with the names `stats` and the metrics use.
    pub fn by_reason(&self) -> [(&'static str, Count); 4] {
        let n = enforcer_common::unjudged::NAMES;
        [
            (n[0], self.not_ip),
            (n[1], self.vlan_depth),
            (n[2], self.truncated),
            (n[3], self.split_headers),
        ]
    }
}

impl From<enforcer_common::Unjudged> for UnjudgedCounts {
    fn from(u: enforcer_common::Unjudged) -> Self {
        use enforcer_common::unjudged::{NOT_IP, SPLIT_HEADERS, TRUNCATED, VLAN_DEPTH};
        let c = |i: u32| {
            let c = u.reasons[i as usize];
            Count {
                packets: c.packets,
                bytes: c.bytes,
            }
        };
        Self {
            not_ip: c(NOT_IP),
            vlan_depth: c(VLAN_DEPTH),
            truncated: c(TRUNCATED),
            split_headers: c(SPLIT_HEADERS),
        }
    }
}

impl Counters {
    /// With the reasons of the frames that were not judged.
    pub fn with_unjudged(self, u: enforcer_common::Unjudged) -> Self {
        Self {
            unjudged: u.into(),
            ..self
        }
    }

    /// With the replies to the host's own connections that passed.
    pub fn with_replies(self, c: enforcer_common::Counter) -> Self {
        Self {
            reply_passed: Count {
                packets: c.packets,
                bytes: c.bytes,
            },
            ..self
        }
    }
}

impl From<enforcer_common::Stats> for Counters {
    fn from(s: enforcer_common::Stats) -> Self {
        let c = |c: enforcer_common::Counter| Count {
            packets: c.packets,
            bytes: c.bytes,
        };
        Self {
            seen: c(s.seen),
            passed: c(s.passed),
            dropped: c(s.dropped),
            allowlisted: c(s.allowlisted),
            shadow: c(s.shadow),
            expired: c(s.expired),
            not_ip: c(s.not_ip),
            unjudged: UnjudgedCounts::default(),
            reply_passed: Count::default(),
        }
    }
}

/// Answer to stats.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatsReply {
    /// Over every interface.
    pub total: Counters,
    /// Per protected interface.
    pub interfaces: Vec<InterfaceCounters>,
    /// Blocks per source.
    pub blocks_by_source: Vec<(Source, usize)>,
    /// Dropped packets and bytes by the origin of the block that held each target.
    #[serde(default)]
    pub dropped_by_origin: Vec<OriginDrops>,
}

/// Drops of the blocks of one origin: a local source (`wazuh`, `fail2ban`, `cli`, ...) or, for
/// CrowdSec's blocks, the decision's origin (`crowdsec`, `cscli`, `CAPI`, `lists:NAME`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginDrops {
    /// The origin.
    pub origin: String,
    /// Packets dropped.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Counters of one interface.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InterfaceCounters {
    /// Interface name.
    pub iface: String,
    /// Counters.
    pub counters: Counters,
}

/// A configured interface in status, as the kernel shows it when status is asked (never a
/// cached value).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InterfaceStatus {
    /// Name (or, for a pattern that matches no interface, the pattern).
    pub iface: String,
    /// `protected`: our program runs there now; `waiting`: named (or a pattern) but never seen
    /// since the start; `gone`: was there, is not now; `unprotected`: there, but our program
    /// does not run on it (re-attaching, or the attach failed: see `error`).
    pub state: InterfaceState,
    /// Its index now, when it exists.
    pub ifindex: Option<u32>,
    /// The XDP mode the kernel reports now, when a program is attached.
    pub mode: Option<AttachedMode>,
    /// Why the kernel refused native mode when `auto` attached it in skb mode: its words and
    /// what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_refused: Option<String>,
    /// The id of the XDP program the kernel runs there now (ours when protected).
    pub prog_id: Option<u32>,
    /// The link's type (`ARPHRD_*`), when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_type: Option<LinkType>,
    /// The parse its type needs (none: a type the data path cannot read, never protected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parse: Option<Parse>,
    /// The pattern that selected it, when not named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Why the last attach failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The state of a configured interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterfaceState {
    /// Our program runs on it.
    Protected,
    /// Not seen since the daemon started.
    Waiting,
    /// Was there, is not now.
    Gone,
    /// There, without our program.
    Unprotected,
}

impl fmt::Display for InterfaceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Protected => "protected",
            Self::Waiting => "waiting",
            Self::Gone => "gone",
            Self::Unprotected => "unprotected",
        })
    }
}

/// Use of one map.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MapUse {
    /// Map name.
    pub map: String,
    /// Entries in use.
    pub used: u64,
    /// Capacity.
    pub capacity: u32,
}

/// Answer to status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReply {
    /// Daemon version.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Every configured interface (and each pattern that matches none), read from the kernel.
    pub interfaces: Vec<InterfaceStatus>,
    /// Map use.
    pub maps: Vec<MapUse>,
    /// Blocked targets.
    pub targets: usize,
    /// Source blocks (a target blocked by two sources counts twice).
    pub source_blocks: usize,
    /// The store file.
    pub store_path: String,
    /// The bpffs directory (as configured; the host's path).
    pub bpffs_dir: String,
    /// Where the pins are and whether they outlive the daemon (a daemon in a private mount
    /// namespace pins into the host's bpffs).
    pub pins: PinsInfo,
    /// The audit log.
    pub audit_log: String,
    /// Next expiry (Unix ms), if any.
    pub next_expiry_ms: Option<WallMs>,
    /// Global rollout mode.
    pub policy_mode: Mode,
    /// Open circuit breakers.
    pub breakers: Vec<BreakerState>,
    /// Blocks waiting for approval.
    pub pending: usize,
    /// Allowlist prefixes.
    pub allowlist: usize,
    /// The CrowdSec bouncer, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crowdsec: Option<CrowdsecStatus>,
    /// Wall-clock steps followed since the daemon started.
    #[serde(default)]
    pub clock_steps: ClockSteps,
    /// Flood detection (absent from daemons that predate it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flood: Option<FloodStatus>,
}

/// Flood detection in status and metrics (docs/flood.md).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloodStatus {
    /// Whether the data path detects floods.
    pub enabled: bool,
    /// Whether the data path holds a source over its limit until its block (enforce only).
    pub hold: bool,
    /// The window rates are measured over (ms).
    pub window_ms: u64,
    /// IPv4 limits, packets per second per source (0 = not checked).
    pub ipv4: FloodLimits,
    /// IPv6 limits.
    pub ipv6: FloodLimits,
    /// Reports of sources over a limit read from the data path.
    pub candidates: u64,
    /// Reports of a target already turned into a request within `repeat_after`: not asked again.
    pub repeats: u64,
    /// Block requests made of reports.
    pub requests: u64,
    /// Of those, accepted (a block made, extended or held for approval).
    pub blocks: u64,
    /// Of those, refused by the policy (allowlist, scope, breaker...) or failed.
    pub refused: u64,
    /// The data path's own counters.
    pub kernel: FloodKernelCounters,
    /// From the data path seeing the last accepted candidate pass its limit (the report's
    /// boot-clock time) to its block's kernel entry being written (the map update returned),
    /// in µs. 0 before the first.
    #[serde(default)]
    pub last_latency_us: u64,
    /// The same candidate, to the policy's answer, which waits for the store's commit (µs).
    #[serde(default)]
    pub last_answered_us: u64,
    /// When that block's kernel entry was written (boot clock, ns), to compare with other
    /// observations of the maps. 0 before the first.
    #[serde(default)]
    pub last_in_kernel_ns: u64,
}

/// Per-source limits of one family, in packets per second; 0 = not checked (`[flood.ipv4]`,
/// `[flood.ipv6]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FloodLimits {
    /// Every packet.
    pub packets: u32,
    /// TCP SYN without ACK.
    pub syn: u32,
    /// ICMP / ICMPv6.
    pub icmp: u32,
}

/// The flood detector's counters in the data path, summed over CPUs (since the program was
/// loaded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FloodKernelCounters {
    /// Sources that started being counted exactly.
    pub suspects: u64,
    /// Reports sent.
    pub reports: u64,
    /// Reports not sent: the per-window cap (`reports_per_window`) was reached.
    pub capped: u64,
    /// Reports not sent: the ring buffer was full.
    pub lost: u64,
    /// Packets dropped by the hold.
    pub held: u64,
    /// Packets over their source's limit that passed (hold off, or allowlisted).
    pub over: u64,
}

impl From<enforcer_common::flood::FloodStats> for FloodKernelCounters {
    fn from(s: enforcer_common::flood::FloodStats) -> Self {
        Self {
            suspects: s.suspects,
            reports: s.reports,
            capped: s.capped,
            lost: s.lost,
            held: s.held,
            over: s.over,
        }
    }
}

/// Wall-clock steps the daemon followed since it started (each moved every deadline with the
/// clock, so blocks kept their remaining time), in status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockSteps {
    /// Steps since start (one made while the daemon was down, found at its start, counts too).
    pub count: u64,
    /// The latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<ClockStep>,
}

/// One wall-clock step the daemon followed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockStep {
    /// When the daemon saw it (Unix ms, on the stepped clock).
    pub seen_ms: WallMs,
    /// How far the wall clock stepped, in ms (negative: backwards).
    pub by_ms: i64,
    /// Block deadlines moved with it.
    pub moved: usize,
    /// Whether the daemon was running at the step (false: made while it was down, found at start).
    pub while_running: bool,
}

/// The CrowdSec bouncer's state, in status.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CrowdsecStatus {
    /// The LAPI.
    pub api_url: String,
    /// Last successful pull (Unix ms).
    pub last_pull_ms: Option<WallMs>,
    /// Last successful full (startup) pull (Unix ms).
    pub last_full_pull_ms: Option<WallMs>,
    /// Successful pulls since start.
    pub pulls: u64,
    /// Targets with a live ban decision.
    pub active: usize,
    /// Decisions applied as blocks (created, extended or shortened) since start.
    pub applied: u64,
    /// Decisions the safety policy refused since start (see the audit log).
    pub refused: u64,
    /// Decisions waiting for approval since start.
    pub pending: u64,
    /// Decisions not enforced by design (not `ban`, another scope, simulated) since start.
    pub ignored: u64,
    /// Malformed decisions skipped since start.
    pub invalid: u64,
    /// Failed pulls since start.
    #[serde(default)]
    pub errors: u64,
    /// The last error (pull or apply); it is current when newer than `last_pull_ms`.
    pub last_error: Option<String>,
    /// When it happened (Unix ms).
    pub last_error_ms: Option<WallMs>,
    /// Usage metrics: `on`, `off: ...` with the reason.
    pub usage_metrics: String,
    /// Decisions this host published itself, seen in pulls and not imported back.
    #[serde(default)]
    pub own: u64,
    /// Publishing local blocks to the LAPI, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishStatus>,
}

/// The publisher's state (`[crowdsec.publish]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishStatus {
    /// The machine it logs in as.
    pub login: String,
    /// The queue.
    pub queue: OutboxCounters,
    /// Publications sent since start (bans pushed and withdrawn).
    pub sent: u64,
    /// Last successful send (Unix ms).
    pub last_sent_ms: Option<WallMs>,
    /// Failed sends since start.
    pub errors: u64,
    /// The last error; current while newer than `last_sent_ms`.
    pub last_error: Option<String>,
    /// When it happened (Unix ms).
    pub last_error_ms: Option<WallMs>,
}

/// Whether the pins outlive the daemon, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinsDurability {
    /// The host's bpffs, in the host's mount namespace (or one sharing its bpffs).
    Host,
    /// The host's bpffs, reached from a private mount namespace through the host's root.
    HostThroughReference,
    /// No other process's mount namespace could be inspected (a unit without `CAP_SYS_PTRACE`),
    /// but the bpffs mount receives propagation from another namespace (`master:N` in
    /// mountinfo, as in a systemd unit with `PrivateMounts=yes`): that namespace holds the same
    /// filesystem, so it outlives the daemon.
    Propagated,
    /// A bpffs the daemon found already mounted, but it could not inspect any other process's
    /// mount namespace to tell whether that bpffs is the host's.
    Unverified,
}

/// Where the pins are and whether they outlive the daemon (shown by `enforcer status`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PinsInfo {
    /// The bpffs directory as configured (`--bpffs-dir`), as the host sees it.
    pub dir: String,
    /// How it was reached.
    pub durability: PinsDurability,
    /// Whether blocks stay in force when the daemon is killed.
    pub outlive_daemon: bool,
    /// The process whose mount namespace stands for the host's (`PID 1`, or the outermost
    /// ancestor the daemon may inspect), when one could be inspected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

impl PinsInfo {
    /// One line for `enforcer status`.
    pub fn describe(&self) -> String {
        match self.durability {
            PinsDurability::Host => format!("host bpffs {} (outlive the daemon)", self.dir),
            PinsDurability::HostThroughReference => format!(
                "host bpffs {}, reached from the daemon's private mount namespace through {}'s root (outlive the daemon)",
                self.dir,
                self.reference.as_deref().unwrap_or("the host")
            ),
            PinsDurability::Propagated => format!(
                "host bpffs {}, a mount propagated from another mount namespace (outlive the daemon)",
                self.dir
            ),
            PinsDurability::Unverified => format!(
                "{} -- WARNING: cannot tell whether they outlive the daemon (no other process's mount namespace could be inspected); make sure this is the host's bpffs",
                self.dir
            ),
        }
    }
}

/// How an XDP program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachedMode {
    /// In the driver, before any socket buffer exists.
    Native,
    /// Generic XDP, after the kernel built a socket buffer (slower; works everywhere).
    Skb,
    /// Offloaded to the NIC.
    Hw,
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Skb => "skb",
            Self::Hw => "hw",
        })
    }
}

/// A link's type as the kernel reports it (`ifinfomsg.ifi_type`, `/sys/class/net/X/type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct LinkType(pub u16);

/// How the data path reads a link's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Parse {
    /// Ethernet header, up to two VLAN tags, then IPv4/IPv6 (`enforcer_xdp`).
    Ethernet,
    /// The frame starts with the IP header; the version nibble says which (`enforcer_xdp_ip`).
    RawIp,
}

impl fmt::Display for Parse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ethernet => "ethernet",
            Self::RawIp => "raw-ip",
        })
    }
}

/// What to do with a source's new blocks once its breaker is open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BreakerAction {
    /// Put them in shadow mode (counted, not enforced).
    #[default]
    Shadow,
    /// Refuse them.
    Refuse,
}

/// An open breaker, for status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BreakerState {
    /// Source.
    pub source: Source,
    /// Opened at (Unix ms).
    pub opened_ms: WallMs,
    /// Closes at (Unix ms).
    pub closes_ms: WallMs,
    /// What it does to new blocks.
    pub action: BreakerAction,
}

/// The queue's counters, for `status` and `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxCounters {
    /// Publications waiting.
    pub depth: u64,
    /// The bound (`queue_max`).
    pub max: u64,
    /// Publications not queued because the queue was full.
    pub dropped: u64,
    /// Blocks whose decisions the LAPI holds.
    pub published: u64,
}
