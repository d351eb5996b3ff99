//! Read requests (list, show, stats, status, the allowlist, pending), answered from the ledger
//! and the kernel's counters after the round's writes.

use std::{collections::BTreeMap, net::IpAddr, path::Path, time::Instant};

use enforcer_common::BlockValue;

use super::{ledger::Ledger, refusal::Refusal};
use crate::{
    block::{Mode, Source, TargetBlocks},
    datapath::BlockMaps,
    interfaces::{Interfaces, Origin, Tracked},
    protocol::{
        AllowEntry, Counters, InterfaceCounters, InterfaceState, InterfaceStatus, ListEntry,
        ListSource, MAX_LIST_PAGE, MapUse, PROTOCOL_VERSION, Reply, Request, ShowReply, StatsReply,
        StatusReply,
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

/// What a read sees.
pub struct View<'a> {
    /// The ledger.
    pub ledger: &'a mut Ledger,
    /// The kernel maps (hit counters, data path counters).
    pub maps: &'a BlockMaps,
    /// The configured interfaces and what the engine knows of them.
    pub interfaces: &'a Interfaces,
    /// The ids of the programs this daemon attaches.
    pub programs: crate::datapath::Programs,
    /// When the daemon started.
    pub started: Instant,
    /// The store file.
    pub store_path: &'a Path,
    /// Where the pins are and whether they outlive the daemon.
    pub pins: &'a crate::datapath::PinsInfo,
    /// The audit log.
    pub audit_log: &'a Path,
    /// Source blocks, from the engine's tally (a target blocked by two sources counts twice).
    pub source_blocks: u64,
    /// Drops by origin (see `engine::origins`).
    pub dropped_by_origin: Vec<crate::protocol::OriginDrops>,
}

impl View<'_> {
    /// Answers a read request.
    pub fn answer(&mut self, request: Request) -> Result<Reply, Refusal> {
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
                    .ledger
                    .allowlist()
                    .iter()
                    .map(|(t, o)| allow_entry(*t, o))
                    .collect(),
            }),
            Request::PendingList => Ok(Reply::PendingList {
                pending: self.ledger.pending().values().cloned().collect(),
            }),
            other => Err(Refusal::Invalid(format!("{other:?} is not a read request"))),
        }
    }

    /// One page of blocks, in target order, after `after`.
    fn list(&self, source: Option<&Source>, limit: Option<usize>, after: Option<Target>) -> Reply {
        let mut matching = self
            .ledger
            .blocks_after(after)
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
            .ledger
            .blocks()
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
            .ledger
            .allowlist()
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
        let interfaces = self
            .interfaces
            .protected()
            .filter_map(|(iface, ifindex)| {
                let stats = self.maps.stats_for_ifindex(ifindex).ok()?;
                let unjudged = self.maps.unjudged_for_ifindex(ifindex).ok()?;
                Some(InterfaceCounters {
                    iface: iface.to_owned(),
                    counters: Counters::from(stats).with_unjudged(unjudged),
                })
            })
            .collect();
        let mut by_source: BTreeMap<Source, usize> = BTreeMap::new();
        for b in self.ledger.blocks().values() {
            for s in b.by_source.keys() {
                *by_source.entry(s.clone()).or_default() += 1;
            }
        }
        Ok(Reply::Stats(Box::new(StatsReply {
            total: Counters::from(total).with_unjudged(unjudged),
            interfaces,
            blocks_by_source: by_source.into_iter().collect(),
            dropped_by_origin: self.dropped_by_origin.clone(),
        })))
    }

    /// The tally's count (no walk over every target on the engine thread); debug builds check it
    /// against the walk, so a tally that drifts fails the tests.
    fn counted_source_blocks(&self) -> usize {
        let counted = usize::try_from(self.source_blocks).unwrap_or(usize::MAX);
        debug_assert_eq!(
            counted,
            self.ledger
                .blocks()
                .values()
                .map(|b| b.by_source.len())
                .sum::<usize>(),
            "the block tally drifted from the ledger"
        );
        counted
    }

    fn status(&mut self) -> StatusReply {
        let breakers = self.ledger.policy_mut().open_breakers(WallMs::now());
        let ledger = &*self.ledger;
        let maps = self
            .maps
            .capacities()
            .iter()
            .map(|(map, capacity)| MapUse {
                map: map.name().to_owned(),
                used: ledger.capacity().used(map),
                capacity: *capacity,
            })
            .collect();
        StatusReply {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            uptime_secs: self.started.elapsed().as_secs(),
            interfaces: interface_rows(self.interfaces, self.programs),
            maps,
            targets: ledger.blocks().len(),
            source_blocks: self.counted_source_blocks(),
            store_path: self.store_path.display().to_string(),
            bpffs_dir: self.pins.dir.clone(),
            pins: self.pins.clone(),
            audit_log: self.audit_log.display().to_string(),
            next_expiry_ms: ledger.next_block_deadline(),
            policy_mode: ledger.policy().config.mode,
            breakers,
            pending: ledger.pending().len(),
            allowlist: ledger.allowlist().len(),
            crowdsec: None,
            clock_steps: ledger.clock_steps().clone(),
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
