//! `sync_source`: one source's blocks made to say what a feed (CrowdSec) says, in one change.

use std::{collections::HashSet, sync::Arc};

use super::{Change, Ledger};
use crate::{
    block::{Reason, Record, Source, SourceBlock, UnixMillis},
    protocol::{BatchFailure, BlockRequest, Outcome, Reply, SyncReply, SyncRequest},
    store::StoreOp,
    target::Target,
};

/// A synced block whose end is this close to the feed's is left as it is.
const SYNC_SLACK_MS: u64 = 2_000;

impl Ledger {
    /// Makes one source's blocks match a feed (see [`SyncRequest`]). Each item goes through the
    /// same block path and policy as any block; an item already in force as asked (same reason,
    /// end within [`SYNC_SLACK_MS`]) is left alone, so a periodic full resync of a large feed
    /// writes nothing. Unlike a block, a feed's item may shorten the source's block.
    pub fn sync_source(&mut self, c: &mut Change, req: SyncRequest, now: UnixMillis) -> (Reply, Vec<Target>) {
        let source = req.source;
        let mut reply = SyncReply::default();
        let mut touched = Vec::new();
        let gone: Vec<Target> = if req.replace {
            let keep: HashSet<Target> = req.items.iter().map(|i| i.target).collect();
            self.blocks
                .iter()
                .filter(|(t, b)| b.by_source.contains_key(&source) && !keep.contains(t))
                .map(|(t, _)| *t)
                .collect()
        } else {
            req.remove.into_iter().filter(|t| self.has_block(t, &source)).collect()
        };
        for target in gone {
            if self.unblock(c, target, Some(source.clone()), false).is_ok() {
                reply.removed += 1;
                touched.push(target);
            }
        }
        for (index, item) in req.items.into_iter().enumerate() {
            let wanted = now.saturating_add(item.ttl_ms);
            if self.in_force_as_asked(&item.target, &source, wanted, &item.reason) {
                reply.unchanged += 1;
                continue;
            }
            if self.pending.values().any(|p| p.request.target == item.target && p.request.source == source) {
                reply.pending += 1;
                continue;
            }
            let one = BlockRequest {
                target: item.target,
                ttl_secs: Some(item.ttl_ms.div_ceil(1000).max(1)),
                permanent: false,
                source: source.clone(),
                reason: Reason::default(),
                shadow: false,
                force: false,
            };
            match self.block_shared(c, one, item.reason, false, now) {
                Ok(r) if r.outcome == Outcome::Pending => reply.pending += 1,
                Ok(r) => {
                    if r.expires_ms.is_none_or(|e| e > wanted) {
                        self.shorten(c, &r.target, &source, wanted);
                    }
                    reply.applied += 1;
                    touched.push(r.target);
                }
                Err(e) => reply.failed.push(BatchFailure { index, target: item.target, error: e.to_body() }),
            }
        }
        (Reply::SyncSource(reply), touched)
    }

    fn has_block(&self, target: &Target, source: &Source) -> bool {
        self.blocks.get(target).is_some_and(|b| b.by_source.contains_key(source))
    }

    fn in_force_as_asked(&self, target: &Target, source: &Source, wanted: UnixMillis, reason: &Arc<Reason>) -> bool {
        self.blocks
            .get(target)
            .and_then(|b| b.by_source.get(source))
            .is_some_and(|b| b.expires_ms.is_some_and(|e| e.abs_diff(wanted) <= SYNC_SLACK_MS) && b.reason == *reason)
    }

    /// Ends `source`'s block of `target` at `expires_ms` (a feed's decision got shorter).
    fn shorten(&mut self, c: &mut Change, target: &Target, source: &Source, expires_ms: UnixMillis) {
        let Some(old) = self.blocks.get(target).and_then(|b| b.by_source.get(source)).cloned() else { return };
        self.unindex(target, &old);
        let block = SourceBlock { expires_ms: Some(expires_ms), ..old };
        self.index(target, &block);
        c.ops.push(StoreOp::Put(Record { target: *target, block: block.clone() }));
        if let Some(b) = self.blocks.get_mut(target) {
            b.by_source.insert(source.clone(), block);
        }
    }
}
