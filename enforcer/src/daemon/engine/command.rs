//! What the engine's channel carries: a request, its caller, and where its answer goes.

use tokio::sync::oneshot;

use crate::{
    access::Caller,
    daemon::{ledger::Replay, refusal::Refusal},
    netlink::LinkState,
    outbox::{OutboxBatch, OutboxRequest},
    policy::host::HostAddress,
    protocol::{Reply, Request, RequestId},
    time::BootNs,
};

/// What the engine is asked: a request of the protocol, or one only the daemon itself makes.
/// The daemon's own asks are not protocol requests, so no socket, spool file or feed can carry
/// one.
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every ask is a client request, moved once through the channel: boxing it would allocate for each"
)]
pub enum Ask {
    /// A protocol request (from a socket client, the spool, or the CrowdSec bouncer).
    Client(Request),
    /// The host's addresses and gateways now, read by the daemon's own address watcher on its
    /// thread (never on the engine's); the allowlist follows them.
    HostChanged(Vec<HostAddress>),
    /// The links now, with their XDP programs, read by the daemon's link watcher on its thread
    /// (after link events, and twice a second); protection follows them.
    LinksChanged(Vec<LinkState>),
    /// The CrowdSec publisher takes queued publications or reports sent ones; the queue's
    /// answer goes to its own channel (no protocol reply carries it).
    Outbox(OutboxRequest, oneshot::Sender<Result<OutboxBatch, Refusal>>),
}

/// A request, who sent it, and where to send its answer.
pub struct Command {
    /// The request.
    pub request: Ask,
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
    /// For a requester that measures how soon its request is in force (the flood watcher):
    /// when the request is accepted and its kernel entries are written, the boot-clock time the
    /// last write returned goes here (before the answer, which waits for the store's commit).
    pub in_kernel: Option<oneshot::Sender<BootNs>>,
}

impl Command {
    /// A request from the daemon itself (`what`: the part of it that asks).
    pub fn internal(
        what: &'static str,
        request: Request,
        reply: oneshot::Sender<Result<Reply, Refusal>>,
    ) -> Self {
        Self {
            request: Ask::Client(request),
            caller: Caller::internal(what),
            id: None,
            replay: None,
            reply,
            in_kernel: None,
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
            request: Ask::Client(request),
            caller: Caller::internal("spool"),
            id: Some(id),
            replay: Some(replay),
            reply,
            in_kernel: None,
        }
    }

    /// One of the daemon's own asks (`what`: the part of it that asks); nothing waits for a
    /// protocol reply to it.
    pub fn daemon(what: &'static str, ask: Ask) -> Self {
        let (reply, _) = oneshot::channel();
        Self {
            request: ask,
            caller: Caller::internal(what),
            id: None,
            replay: None,
            reply,
            in_kernel: None,
        }
    }
}
