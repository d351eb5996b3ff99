//! Drops by origin: the kernel counts hits per blocked target; this splits them by the origin
//! of the block that holds each target (the one that ends last): a `crowdsec` block by its
//! decision's origin (`crowdsec`, `cscli`, `CAPI`, `lists:NAME`, a fleet peer's `enforcer`),
//! any other block by its source (`wazuh`, `fail2ban`, `cli`, ...), as cs-firewall-bouncer
//! reports them.
//!
//! The targets' counters are read every [`EVERY`] (and before usage metrics are pushed) and
//! each target's increase is added to its origin's totals, so the totals only grow, as
//! Prometheus counters must. Drops of a target lifted between two reads since the last read
//! are not in the split (they are in the interface totals).

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use super::Engine;
use crate::{
    block::{Mode, TargetBlocks},
    protocol::OriginDrops,
    target::Target,
    time::WallMs,
};

/// How often the split is brought up to date.
const EVERY: Duration = Duration::from_secs(10);
/// Most origin labels; later ones are counted as `other`.
const MAX_ORIGINS: usize = 64;

/// The running totals.
#[derive(Debug, Default)]
pub struct DropsByOrigin {
    /// Each enforced target's counters at the last read.
    last: HashMap<Target, (u64, u64)>,
    totals: BTreeMap<String, (u64, u64)>,
    read: Option<Instant>,
}

impl DropsByOrigin {
    /// The totals, by origin.
    pub fn totals(&self) -> Vec<OriginDrops> {
        self.totals
            .iter()
            .map(|(origin, (packets, bytes))| OriginDrops {
                origin: origin.clone(),
                packets: *packets,
                bytes: *bytes,
            })
            .collect()
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
}

/// The origin of the block holding `blocks`' target.
pub fn origin_of(blocks: &TargetBlocks) -> Option<String> {
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

impl Engine {
    /// Brings the split up to date, at most every [`EVERY`] unless `now`.
    pub(super) fn count_origins(&mut self, now: bool) {
        if !now && self.origins.read.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        self.origins.read = Some(Instant::now());
        let entries = match self.dp.maps().blocks() {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "reading the block counters for drops by origin failed");
                return;
            }
        };
        let mut seen = HashMap::with_capacity(entries.len());
        for (target, value) in entries {
            if value.mode != enforcer_common::MODE_ENFORCE {
                continue;
            }
            let now = (value.hit_packets, value.hit_bytes);
            // A counter lower than before: a new kernel entry, counting from zero.
            let before = self
                .origins
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
            let origin = self
                .ledger
                .blocks()
                .get(&target)
                .and_then(origin_of)
                .unwrap_or_else(|| "unknown".to_owned());
            self.origins.add(origin, packets, bytes);
        }
        self.origins.last = seen;
    }
}
