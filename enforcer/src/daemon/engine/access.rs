//! The one access check every request passes on its way into a round.

use super::Engine;
use crate::{
    access::Caller,
    audit::Event,
    block::Source,
    daemon::{ledger::Ledger, refusal::Refusal},
    protocol::Request,
    target::Target,
};

impl Engine {
    /// The one access check every request passes, whatever path it came by (socket, CrowdSec,
    /// spool, host watcher): refused requests are audited with their caller and change nothing.
    /// A pending id is looked up as the round starts, so an id created later in the same round
    /// is not found yet (the caller asks again).
    pub(super) fn authorize(&mut self, caller: &Caller, request: &Request) -> Result<(), Refusal> {
        let requester = match request {
            Request::Approve { id } => match self.ledger.pending().get(id) {
                Some(p) => p.requested_by.as_ref(),
                None if caller.is_root() => None,
                None => {
                    return Err(Refusal::NotFound(format!(
                        "no pending block with id {id} (see `enforcer pending`)"
                    )));
                }
            },
            _ => None,
        };
        let Err(denied) = self.access.check(caller, request, requester) else {
            return Ok(());
        };
        let (target, source) = request_subject(request, &self.ledger);
        tracing::warn!("{denied}");
        let event = Event::denied(&denied, target, source.as_ref());
        self.denials
            .record(&mut self.audit, denied.caller.id.uid, event);
        if let Some(source) = &source {
            self.metrics.refusal("access", source);
        }
        Err(Refusal::Denied(Box::new(denied)))
    }
}

/// The target and source a request concerns, for its audit line (a pending block's, for
/// approve and reject).
fn request_subject(request: &Request, ledger: &Ledger) -> (Option<Target>, Option<Source>) {
    match request {
        Request::Block(b) => (Some(b.target), Some(b.source.clone())),
        Request::BlockBatch(b) => (None, Some(b.source.clone())),
        Request::SyncSource(s) => (None, Some(s.source.clone())),
        Request::Unblock { target, source, .. } => (Some(*target), source.clone()),
        Request::Show { target }
        | Request::AllowAdd { target, .. }
        | Request::AllowRemove { target } => (Some(*target), None),
        Request::Promote { target, source } => (*target, source.clone()),
        Request::BreakerReset { source } | Request::List { source, .. } => (None, source.clone()),
        Request::Approve { id } | Request::Reject { id } => {
            ledger.pending().get(id).map_or((None, None), |p| {
                (Some(p.request.target), Some(p.request.source.clone()))
            })
        }
        _ => (None, None),
    }
}
