//! What the engine's channel carries: a request, its caller, and where its answer goes.

use tokio::sync::oneshot;

use crate::{
    access::Caller,
    daemon::{ledger::Replay, refusal::Refusal},
    protocol::{Reply, Request, RequestId},
};

/// A request, who sent it, and where to send its answer.
pub struct Command {
    /// The request.
    pub request: Request,
    /// Who sent it: a socket peer, or the daemon itself (checked against the access rules
    /// before anything else, see [`Engine::authorize`]).
    pub caller: Caller,
    /// The client's id for it: a write whose id was applied already is answered with the first
    /// answer and not applied again.
    pub id: Option<RequestId>,
    /// Set when the request is a spooled trigger being replayed.
    pub replay: Option<Replay>,
    /// The answer goes here.
    pub reply: oneshot::Sender<Result<Reply, Refusal>>,
}

impl Command {
    /// A request from the daemon itself (`what`: the part of it that asks).
    pub fn internal(
        what: &'static str,
        request: Request,
        reply: oneshot::Sender<Result<Reply, Refusal>>,
    ) -> Self {
        Self {
            request,
            caller: Caller::internal(what),
            id: None,
            replay: None,
            reply,
        }
    }

    /// A spooled trigger, replayed by the daemon with its id (charged to the rate limiter at
    /// `replay.spooled_ms`).
    pub fn replay(
        request: Request,
        id: RequestId,
        replay: Replay,
        reply: oneshot::Sender<Result<Reply, Refusal>>,
    ) -> Self {
        Self {
            request,
            caller: Caller::internal("spool"),
            id: Some(id),
            replay: Some(replay),
            reply,
        }
    }
}
