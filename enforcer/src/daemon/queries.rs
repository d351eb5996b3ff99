//! Read requests (list, show, stats, status, the allowlist, pending), answered from the state
//! the engine publishes after each round ([`ReadState`]) and the kernel's counters: off the
//! engine thread ([`super::reads`]), so a read never holds up a block.

use std::{net::IpAddr, ops::Bound, path::PathBuf, time::Instant};

use enforcer_common::BlockValue;

use super::refusal::Refusal;
use crate::{
    block::{Mode, Source, TargetBlocks},
    datapath::BlockMaps,
    interfaces::{Interfaces, Origin, Tracked},
    policy::{Allowlist, BreakerState},
    protocol::{
        AllowEntry, ClockSteps, Counters, InterfaceCounters, InterfaceState, InterfaceStatus,
        ListEntry, ListSource, MAX_LIST_PAGE, MapUse, OriginDrops, PROTOCOL_VERSION, PendingBlock,
        Reply, Request, ShowReply, StatsReply, StatusReply,
    },
    scope::ScopeSet,
    target::Target,
    time::{BootNs, WallMs},
};

/// A `list` page holds the limit the request names, at most [`MAX_LIST_PAGE`] (its default):
/// a request for everything gets the first page and where the next one starts.
fn page_size(limit: Option<usize>) -> usize {
    limit.map_or(MAX_LIST_PAGE, |l| l.min(MAX_LIST_PAGE))
}

/// Whether a request is answered from the published state alone (off the engine thread).
pub fn is_read(request: &Request) -> bool {
    matches!(
        request,
        Request::List { .. }
            | Request::Show { .. }
            | Request::Stats
            | Request::Status
            | Request::AllowList
            | Request::PendingList
    )
}

/// What reads see: the engine's state after its last round. The engine publishes it after
/// every round, before that round's answers go out, so a client reads its own writes. The
/// maps are persistent (`imbl`): publishing one is O(1), whatever the number of blocks.
#[derive(Clone, Debug)]
pub struct ReadState {
    /// Every blocked target.
    pub blocks: imbl::OrdMap<Target, TargetBlocks>,
    /// The allowlist.
    pub allowlist: Allowlist,
    /// Blocks waiting for approval.
    pub pending: imbl::OrdMap<u64, PendingBlock>,
    /// The configured interfaces and what the engine knows of them.
    pub interfaces: Interfaces,
    /// The ids of the programs this daemon attaches.
    pub programs: crate::datapath::Programs,
    /// When the daemon started.
    pub started: Instant,
    /// The store file.
    pub store_path: PathBuf,
    /// Where the pins are and whether they outlive the daemon.
    pub pins: crate::datapath::PinsInfo,
    /// The audit log.
    pub audit_log: PathBuf,
    /// Source blocks by source, from the engine's tally (a target blocked by two sources
    /// counts once for each).
    pub blocks_by_source: Vec<(Source, usize)>,
    /// Every kernel map: name, entries, capacity.
    pub maps: Vec<MapUse>,
    /// The earliest block deadline.
    pub next_expiry_ms: Option<WallMs>,
    /// The policy's mode.
    pub policy_mode: Mode,
    /// Open breakers.
    pub breakers: Vec<BreakerState>,
    /// Wall-clock steps followed.
    pub clock_steps: ClockSteps,
}

impl ReadState {
    /// Before the first round: the daemon's own facts, nothing blocked.
    pub fn empty(
        started: Instant,
        store_path: &std::path::Path,
        pins: &crate::datapath::PinsInfo,
        audit_log: &std::path::Path,
    ) -> Self {
        Self {
            blocks: imbl::OrdMap::new(),
            allowlist: Allowlist::default(),
            pending: imbl::OrdMap::new(),
            interfaces: Interfaces::default(),
            programs: crate::datapath::Programs::default(),
            started,
            store_path: store_path.to_owned(),
            pins: pins.clone(),
            audit_log: audit_log.to_owned(),
            blocks_by_source: Vec::new(),
            maps: Vec::new(),
            next_expiry_ms: None,
            policy_mode: Mode::default(),
            breakers: Vec::new(),
            clock_steps: ClockSteps::default(),
        }
    }
}

/// What a read sees.
pub struct View<'a> {
    /// The engine's published state.
    pub state: &'a ReadState,
    /// The kernel maps (hit counters, data path counters), read only.
    pub maps: &'a BlockMaps,
    /// Drops by origin (see [`super::origins`]).
    pub dropped_by_origin: Vec<OriginDrops>,
}

impl View<'_> {
    /// Answers a read request.
    pub fn answer(&self, request: Request) -> Result<Reply, Refusal> {
        match request {
            Request::Ping => Ok(Reply::Pong {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                protocol: PROTOCOL_VERSION,
            }),
            Request::List {
                source,
                limit,
                after,
            } => Ok(self.list(source.as_ref(), limit, after)),
            Request::Show { target } => Ok(Reply::Show(self.show(target))),
            Request::Stats => self.stats(),
            Request::Status => Ok(Reply::Status(Box::new(self.status()))),
            Request::AllowList => Ok(Reply::AllowList {
                entries: self
                    .state
                    .allowlist
                    .iter()
                    .map(|(t, o)| allow_entry(*t, o))
                    .collect(),
            }),
            Request::PendingList => Ok(Reply::PendingList {
                pending: self.state.pending.values().cloned().collect(),
            }),
            other => Err(Refusal::Invalid(format!("{other:?} is not a read request"))),
        }
    }

    /// One page of blocks, in target order, after `after`.
    fn list(&self, source: Option<&Source>, limit: Option<usize>, after: Option<Target>) -> Reply {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut matching = self
            .state
            .blocks
            .range((start, Bound::Unbounded))
            .filter(|(_, b)| source.is_none_or(|s| b.by_source.contains_key(s)));
        let blocks: Vec<ListEntry> = matching
            .by_ref()
            .take(page_size(limit))
            .map(|(t, b)| self.list_entry(t, b))
            .collect();
        let more = matching.next().is_some();
        let next = if more {
            blocks.last().map(|e| e.target)
        } else {
            None
        };
        Reply::List { blocks, next }
    }

    fn list_entry(&self, target: &Target, blocks: &TargetBlocks) -> ListEntry {
        let kernel: BlockValue = self
            .maps
            .get_block(target)
            .ok()
            .flatten()
            .unwrap_or_default();
        let entry = blocks.kernel_entry();
        ListEntry {
            target: *target,
            mode: entry.map_or(Mode::Enforce, |e| e.mode),
            expires_ms: entry.and_then(|e| e.expires_ms),
            sources: blocks
                .by_source
                .values()
                .map(|b| ListSource {
                    source: b.source.clone(),
                    reason: b.reason.clone(),
                    created_ms: b.created_ms,
                    expires_ms: b.expires_ms,
                    mode: b.mode,
                    scope: b.scope.clone(),
                })
                .collect(),
            scope: blocks.kernel_scope(),
            packets: kernel.hit_packets,
            bytes: kernel.hit_bytes,
            last_hit_ms: (kernel.last_hit_ns != 0)
                .then(|| BootNs::from_kernel(kernel.last_hit_ns).to_wall()),
        }
    }

    fn show(&self, target: Target) -> ShowReply {
        let addr: IpAddr = target.addr();
        // Every block covering the address (the verdict needs them: at most one per prefix
        // length), and the blocks inside a broad target up to a page (`show 0.0.0.0/0` must
        // not read a million kernel entries on the engine thread).
        let mut blocks: Vec<ListEntry> = Vec::new();
        let mut more = 0;
        for (t, b) in self
            .state
            .blocks
            .iter()
            .filter(|(t, _)| t.overlaps(&target))
        {
            if t.contains(addr) || blocks.len() < MAX_LIST_PAGE {
                blocks.push(self.list_entry(t, b));
            } else {
                more += 1;
            }
        }
        blocks.sort_by_key(|e| std::cmp::Reverse(e.target.prefix_len()));
        let allowlist: Vec<AllowEntry> = self
            .state
            .allowlist
            .iter()
            .filter(|(t, _)| t.contains(addr))
            .map(|(t, o)| allow_entry(*t, o))
            .collect();
        let covering: Vec<&ListEntry> = blocks.iter().filter(|e| e.target.contains(addr)).collect();
        let enforcing: Vec<&ScopeSet> = covering
            .iter()
            .filter(|e| e.mode == Mode::Enforce)
            .map(|e| &e.scope)
            .collect();
        let verdict = if covering.is_empty() {
            "pass".to_owned()
        } else if !allowlist.is_empty() {
            "pass (allowlisted)".to_owned()
        } else if enforcing.is_empty() {
            "pass (shadow)".to_owned()
        } else {
            match ScopeSet::union_all(enforcing) {
                Ok(scope) if !scope.is_whole() => format!("drop ({scope} only)"),
                _ => "drop".to_owned(),
            }
        };
        ShowReply {
            target,
            blocks,
            allowlist,
            verdict,
            more,
        }
    }

    fn stats(&self) -> Result<Reply, Refusal> {
        let total = self
            .maps
            .stats_total()
            .map_err(|e| Refusal::Kernel(e.into()))?;
        let unjudged = self
            .maps
            .unjudged_total()
            .map_err(|e| Refusal::Kernel(e.into()))?;
        let replies = self
            .maps
            .replies_total()
            .map_err(|e| Refusal::Kernel(e.into()))?;
        let interfaces = self
            .state
            .interfaces
            .protected()
            .filter_map(|(iface, ifindex)| {
                let stats = self.maps.stats_for_ifindex(ifindex).ok()?;
                let unjudged = self.maps.unjudged_for_ifindex(ifindex).ok()?;
                let replies = self.maps.replies_for_ifindex(ifindex).ok()?;
                Some(InterfaceCounters {
                    iface: iface.to_owned(),
                    counters: Counters::from(stats)
                        .with_unjudged(unjudged)
                        .with_replies(replies),
                })
            })
            .collect();
        Ok(Reply::Stats(Box::new(StatsReply {
            total: Counters::from(total)
                .with_unjudged(unjudged)
                .with_replies(replies),
            interfaces,
            blocks_by_source: self.state.blocks_by_source.clone(),
            dropped_by_origin: self.dropped_by_origin.clone(),
        })))
    }

    /// The tally's count (no walk over every target); debug builds check it against the walk,
    /// so a tally that drifts fails the tests.
    fn counted_source_blocks(&self) -> usize {
        let counted = self.state.blocks_by_source.iter().map(|(_, n)| n).sum();
        debug_assert_eq!(
            counted,
            self.state
                .blocks
                .values()
                .map(|b| b.by_source.len())
                .sum::<usize>(),
            "the block tally drifted from the ledger"
        );
        counted
    }

    fn status(&self) -> StatusReply {
        let s = self.state;
        StatusReply {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_secs: s.started.elapsed().as_secs(),
            interfaces: interface_rows(&s.interfaces, s.programs),
            maps: s.maps.clone(),
            targets: s.blocks.len(),
            source_blocks: self.counted_source_blocks(),
            store_path: s.store_path.display().to_string(),
            bpffs_dir: s.pins.dir.clone(),
            pins: s.pins.clone(),
            audit_log: s.audit_log.display().to_string(),
            next_expiry_ms: s.next_expiry_ms,
            policy_mode: s.policy_mode,
            breakers: s.breakers.clone(),
            pending: s.pending.len(),
            allowlist: s.allowlist.len(),
            crowdsec: None,
            clock_steps: s.clock_steps.clone(),
            flood: None,
        }
    }
}

/// Every configured interface as the kernel shows it now (one `RTM_GETLINK` each, never a
/// cached value), then each pattern that matches none.
fn interface_rows(
    interfaces: &Interfaces,
    ours: crate::datapath::Programs,
) -> Vec<InterfaceStatus> {
    let mut rows: Vec<InterfaceStatus> = interfaces
        .tracked()
        .map(|(name, origin, tracked)| {
            let ifindex = nix::net::if_::if_nametoindex(name).ok();
            let link = ifindex.and_then(|i| crate::netlink::query_link(i).ok());
            let xdp = link.map(|(x, _)| x);
            let link_type = link.map(|(_, t)| t);
            // Protected means the program for the link's type runs there: an Ethernet parse on
            // a raw-IP link would judge nothing.
            let state = match (ifindex, link) {
                (None, _) if *tracked == Tracked::Waiting => InterfaceState::Waiting,
                (None, _) => InterfaceState::Gone,
                (Some(_), Some((x, t))) if ours.protects(t, x.prog_id) => InterfaceState::Protected,
                (Some(_), _) => InterfaceState::Unprotected,
            };
            InterfaceStatus {
                iface: name.to_owned(),
                state,
                ifindex,
                mode: xdp.and_then(|x| x.mode),
                native_refused: match xdp.and_then(|x| x.mode) {
                    Some(crate::netlink::AttachedMode::Skb)
                        if state == InterfaceState::Protected =>
                    {
                        interfaces.native_refused(name).map(str::to_owned)
                    }
                    _ => None,
                },
                prog_id: xdp.and_then(|x| x.prog_id),
                link_type,
                parse: link_type.and_then(crate::datapath::LinkType::parse),
                pattern: match origin {
                    Origin::Pattern(p) => Some(p.clone()),
                    Origin::Named => None,
                },
                error: match tracked {
                    Tracked::Failed { error, .. } if state != InterfaceState::Protected => {
                        Some(error.clone())
                    }
                    _ => None,
                },
            }
        })
        .collect();
    rows.extend(interfaces.idle_patterns().map(|p| InterfaceStatus {
        iface: p.to_owned(),
        state: InterfaceState::Waiting,
        ifindex: None,
        mode: None,
        native_refused: None,
        prog_id: None,
        link_type: None,
        parse: None,
        pattern: Some(p.to_owned()),
        error: None,
    }));
    rows
}

fn allow_entry(target: Target, origins: &[crate::policy::AllowOrigin]) -> AllowEntry {
    AllowEntry {
        target,
        origin: origins
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    }
}
