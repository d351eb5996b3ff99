//! Drops by origin: the kernel counts hits per blocked target; this splits them by the origin
//! of the block that holds each target (the one that ends last): a `crowdsec` block by its
//! decision's origin (`crowdsec`, `cscli`, `CAPI`, `lists:NAME`, a fleet peer's `enforcer`),
//! any other block by its source (`wazuh`, `fail2ban`, `cli`, ...), as cs-firewall-bouncer
//! reports them.
//!
//! Counted by the [reader](super::reads), never on the engine thread: walking every kernel
//! block takes seconds with a million of them. The targets' counters are read every [`EVERY`]
//! (and for each `stats` answer), each target's increase is added to the origin of its block in
//! the state the engine published last, so the totals only grow, as Prometheus counters must.
//! Drops of a target lifted between two reads since the last read are not in the split (they
//! are in the interface totals).

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use crate::{
    block::{Mode, TargetBlocks},
    datapath::{BlockMaps, MapsError},
    protocol::OriginDrops,
    target::Target,
    time::WallMs,
};

/// How often the split is brought up to date.
pub const EVERY: Duration = Duration::from_secs(10);
/// Most origin labels; later ones are counted as `other`.
const MAX_ORIGINS: usize = 64;

/// The running totals.
#[derive(Debug, Default)]
pub(super) struct DropsByOrigin {
    /// Each enforced target's counters at the last read.
    last: HashMap<Target, (u64, u64)>,
    totals: BTreeMap<String, (u64, u64)>,
    read: Option<Instant>,
}

impl DropsByOrigin {
    /// The totals, by origin.
    pub(super) fn totals(&self) -> Vec<OriginDrops> {
        self.totals
            .iter()
            .map(|(origin, (packets, bytes))| OriginDrops {
                origin: origin.clone(),
                packets: *packets,
                bytes: *bytes,
            })
            .collect()
    }

    /// Whether the split is due (never read, or read [`EVERY`] ago).
    pub(crate) fn due(&self) -> bool {
        self.read.is_none_or(|t| t.elapsed() >= EVERY)
    }

    /// Time until the split is due.
    pub(crate) fn until_due(&self) -> Duration {
        self.read
            .map_or(Duration::ZERO, |t| EVERY.saturating_sub(t.elapsed()))
    }

    fn add(&mut self, origin: String, packets: u64, bytes: u64) {
        let key = if self.totals.len() < MAX_ORIGINS || self.totals.contains_key(&origin) {
            origin
        } else {
            "other".to_owned()
        };
        let t = self.totals.entry(key).or_default();
        t.0 += packets;
        t.1 += bytes;
    }

    /// Reads every kernel block's counters and adds each target's increase to the origin of its
    /// block in `blocks` (the engine's published blocks).
    pub(crate) fn count(
        &mut self,
        maps: &BlockMaps,
        blocks: &imbl::OrdMap<Target, TargetBlocks>,
    ) -> Result<(), MapsError> {
        self.read = Some(Instant::now());
        let entries = maps.blocks()?;
        let mut seen = HashMap::with_capacity(entries.len());
        for (target, value) in entries {
            if value.mode != enforcer_common::MODE_ENFORCE {
                continue;
            }
            let now = (value.hit_packets, value.hit_bytes);
            // A counter lower than before: a new kernel entry, counting from zero.
            let before = self
                .last
                .get(&target)
                .copied()
                .filter(|b| b.0 <= now.0 && b.1 <= now.1)
                .unwrap_or_default();
            let (packets, bytes) = (now.0 - before.0, now.1 - before.1);
            seen.insert(target, now);
            if packets == 0 {
                continue;
            }
            let origin = blocks
                .get(&target)
                .and_then(origin_of)
                .unwrap_or_else(|| "unknown".to_owned());
            self.add(origin, packets, bytes);
        }
        self.last = seen;
        Ok(())
    }
}

/// The origin of the block holding `blocks`' target.
pub(super) fn origin_of(blocks: &TargetBlocks) -> Option<String> {
    let holder = blocks
        .by_source
        .values()
        .filter(|b| b.mode == Mode::Enforce)
        .max_by_key(|b| b.expires_ms.unwrap_or(WallMs::MAX))?;
    if holder.source.as_str() == crate::crowdsec::SOURCE {
        Some(crate::crowdsec::decision::origin_label(&holder.reason))
    } else {
        Some(holder.source.to_string())
    }
}
