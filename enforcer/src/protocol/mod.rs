//! The control socket's protocol, version 1.
//!
//! One JSON object per line, each way, over a Unix stream socket. A client sends a [`Request`];
//! the daemon answers each with exactly one [`Response`], in order. A connection may carry many
//! requests. Unknown fields are ignored, so clients and daemons of later minor versions
//! interoperate; a change that breaks that bumps [`PROTOCOL_VERSION`].
//!
//! ```text
//! > {"v":1,"op":"block","target":"192.0.2.7","ttl_secs":600,"source":"cli","reason":{"text":"ssh brute force"}}
//! < {"v":1,"ok":true,"result":{"op":"block","target":"192.0.2.7","outcome":"created",...}}
//! < {"v":1,"ok":false,"error":{"code":"map_full","message":"the BLOCK_V4 map is full ..."}}
//! ```
//!
//! The schema in three parts: [`request`] (what a client sends), [`reply`] (the daemon's
//! answers) and [`status`] (the stats and status reports). It names only the crate's value
//! types ([`Target`](crate::target::Target), scopes, sources and reasons, wall-clock instants),
//! never the daemon's internals, so a client depends on the wire and nothing behind it.

use serde::{Deserialize, Serialize};

pub mod reply;
pub mod request;
pub mod status;

pub use self::{reply::*, request::*, status::*};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default control socket path.
pub const DEFAULT_SOCKET: &str = "/run/enforcer/enforcer.sock";

/// The largest request line the daemon reads (a batch of a few thousand targets fits).
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// The longest `allow add` comment, in bytes (stored with the entry).
pub const MAX_COMMENT: usize = 256;

/// A request with its version.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Protocol version.
    pub v: u32,
    /// The client's id for this request (optional; see [`RequestId`]). On the wire
    /// `request_id` (`id` is the pending id of `approve` and `reject`).
    #[serde(
        default,
        rename = "request_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<RequestId>,
    /// The request or response.
    #[serde(flatten)]
    pub body: T,
}

impl<T> Envelope<T> {
    /// `body` in this protocol version, without a request id.
    pub const fn new(body: T) -> Self {
        Self {
            v: PROTOCOL_VERSION,
            id: None,
            body,
        }
    }
}

#[cfg(test)]
mod tests;
