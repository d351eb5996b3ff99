//! Applied request ids: a write request whose id was applied already is answered with its first
//! answer and changes nothing, so a client (or the spool) may send it again safely.
//!
//! An id is remembered in the same store transaction as what its request changed: it is
//! durable exactly when the effect is. Ids are kept for [`REQUEST_ID_RETENTION`], at most
//! [`MAX_REQUEST_IDS`] of them (the oldest go first); only successful writes are remembered
//! (a refused request changed nothing, and sending it again meets the same rules).

use std::time::Duration;

use super::{Change, Ledger};
use crate::{
    protocol::{Reply, RequestId},
    store::{AppliedRequest, StoreOp},
    time::WallMs,
};

/// How long an applied request's id is remembered: longer than any spool backlog a block's TTL
/// survives in practice, and longer than any client retries.
pub const REQUEST_ID_RETENTION: Duration = Duration::from_secs(7 * 86_400);

/// The most ids remembered (about 200 bytes each in the store).
pub const MAX_REQUEST_IDS: usize = 100_000;

/// Applied requests by id, and the same ordered by when they were applied.
#[derive(Debug, Default)]
pub struct AppliedIds {
    by_id: std::collections::HashMap<RequestId, AppliedRequest>,
    by_time: std::collections::BTreeSet<(WallMs, RequestId)>,
}

impl AppliedIds {
    fn insert(&mut self, r: AppliedRequest) {
        self.by_time.insert((r.applied_ms, r.id.clone()));
        if let Some(old) = self.by_id.insert(r.id.clone(), r) {
            self.by_time.remove(&(old.applied_ms, old.id));
        }
    }

    fn remove(&mut self, id: &RequestId) -> Option<AppliedRequest> {
        let r = self.by_id.remove(id)?;
        self.by_time.remove(&(r.applied_ms, r.id.clone()));
        Some(r)
    }

    /// The oldest id, if it is due to go: older than the retention, or past the cap.
    fn due(&self, now: WallMs) -> Option<RequestId> {
        let (at, id) = self.by_time.first()?;
        let old = at.saturating_add(REQUEST_ID_RETENTION) <= now;
        (old || self.by_id.len() > MAX_REQUEST_IDS).then(|| id.clone())
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// What a change did to the remembered ids, to put back if the store refuses it.
#[derive(Debug, Default)]
pub struct IdsUndo {
    added: Vec<RequestId>,
    forgotten: Vec<AppliedRequest>,
}

impl Ledger {
    /// Loads the stored ids; returns those past their retention (to delete from the store).
    pub fn load_requests(&mut self, stored: Vec<AppliedRequest>, now: WallMs) -> Vec<RequestId> {
        for r in stored {
            self.requests.insert(r);
        }
        let mut forgotten = Vec::new();
        while let Some(id) = self.requests.due(now) {
            self.requests.remove(&id);
            forgotten.push(id);
        }
        forgotten
    }

    /// The remembered ids.
    pub fn applied_ids(&self) -> &AppliedIds {
        &self.requests
    }

    /// The first answer to `id`, if a request with it was applied.
    pub(super) fn answered(&self, id: &RequestId) -> Option<&Reply> {
        self.requests.by_id.get(id).map(|r| &r.reply)
    }

    /// Remembers that the request `id` was applied with `reply`, forgetting what is due.
    pub(super) fn remember_request(
        &mut self,
        c: &mut Change,
        id: RequestId,
        reply: Reply,
        now: WallMs,
    ) {
        let r = AppliedRequest {
            id: id.clone(),
            applied_ms: now,
            reply,
        };
        c.ops.push(StoreOp::PutRequest(r.clone()));
        self.requests.insert(r);
        c.ids.added.push(id);
        while let Some(old) = self.requests.due(now) {
            let r = self.requests.remove(&old).expect("listed as due");
            c.ops.push(StoreOp::DeleteRequest(old));
            c.ids.forgotten.push(r);
        }
    }

    /// Puts the ids back as they were before `undo`.
    pub(super) fn undo_ids(&mut self, undo: IdsUndo) {
        for id in undo.added.iter().rev() {
            self.requests.remove(id);
        }
        for r in undo.forgotten {
            self.requests.insert(r);
        }
    }
}
