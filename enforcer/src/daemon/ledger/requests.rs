//! Applied request ids: a write request whose id was applied already is answered with its first
//! answer and changes nothing, so a client (or the spool) may send it again safely. Ids are
//! each caller's own (keyed by its uid; the spool, which only root may write, replays as root):
//! one caller's id is never taken for another's, so no caller can replay another's request,
//! learn its answer, or have its own request dropped as a duplicate of another's.
//!
//! An id is remembered in the same store transaction as what its request changed: it is
//! durable exactly when the effect is. Ids are kept for [`REQUEST_ID_RETENTION`], at most
//! [`MAX_REQUEST_IDS`] of them (the oldest go first); only successful writes are remembered
//! (a refused request changed nothing, and sending it again meets the same rules).

use std::time::Duration;

use super::{Change, Ledger};
use crate::{
    protocol::Reply,
    store::{AppliedRequest, RequestKey, StoreOp},
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
    by_id: std::collections::HashMap<RequestKey, AppliedRequest>,
    by_time: std::collections::BTreeSet<(WallMs, RequestKey)>,
}

impl AppliedIds {
    fn insert(&mut self, r: AppliedRequest) {
        self.by_time.insert((r.applied_ms, r.key()));
        if let Some(old) = self.by_id.insert(r.key(), r) {
            self.by_time.remove(&(old.applied_ms, old.key()));
        }
    }

    fn remove(&mut self, key: &RequestKey) -> Option<AppliedRequest> {
        let r = self.by_id.remove(key)?;
        self.by_time.remove(&(r.applied_ms, r.key()));
        Some(r)
    }

    /// The oldest id, if it is due to go: older than the retention, or past the cap.
    fn due(&self, now: WallMs) -> Option<RequestKey> {
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
pub(super) struct IdsUndo {
    added: Vec<RequestKey>,
    forgotten: Vec<AppliedRequest>,
}

impl Ledger {
    /// Loads the stored ids; returns those past their retention (to delete from the store).
    pub fn load_requests(&mut self, stored: Vec<AppliedRequest>, now: WallMs) -> Vec<RequestKey> {
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

    /// The first answer to the caller's request `key`, if it was applied.
    pub(super) fn answered(&self, key: &RequestKey) -> Option<&Reply> {
        self.requests.by_id.get(key).map(|r| &r.reply)
    }

    /// Remembers that the caller's request `key` was applied with `reply`, forgetting what is
    /// due.
    pub(super) fn remember_request(
        &mut self,
        c: &mut Change,
        key: RequestKey,
        reply: Reply,
        now: WallMs,
    ) {
        let r = AppliedRequest {
            id: key.id.clone(),
            uid: key.uid,
            applied_ms: now,
            reply,
        };
        c.ops.push(StoreOp::PutRequest(r.clone()));
        self.requests.insert(r);
        c.ids.added.push(key);
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
