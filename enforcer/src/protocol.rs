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

use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::datapath::{PinsDurability, PinsInfo};
use crate::{
    block::{Mode, Reason, Source},
    datapath::AttachedMode,
    scope::{Scope, ScopeSet},
    target::Target,
    time::WallMs,
};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Default control socket path.
pub const DEFAULT_SOCKET: &str = "/run/enforcer/enforcer.sock";

/// The largest request line the daemon reads (a batch of a few thousand targets fits).
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// The longest `allow add` comment, in bytes (stored with the entry).
pub const MAX_COMMENT: usize = 256;

/// Parses one request line as the daemon reads it from the control socket: JSON, the protocol
/// version `v` checked first (so an old client gets `unsupported_version`, not a field error),
/// then the request and its `request_id`, when the client gave one. Every failure is an
/// [`ErrorBody`] with code `invalid_request` or `unsupported_version` and a message saying what
/// was wrong; the daemon's internal requests never parse.
pub fn parse_request(line: &[u8]) -> Result<(Request, Option<RequestId>), ErrorBody> {
    let invalid = |message: String| ErrorBody {
        code: ErrorCode::InvalidRequest,
        message,
    };
    let value: serde_json::Value =
        serde_json::from_slice(line).map_err(|e| invalid(format!("not JSON: {e}")))?;
    match value.get("v").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(ErrorBody {
                code: ErrorCode::UnsupportedVersion,
                message: format!(
                    "protocol version {v} is not supported; this daemon speaks {PROTOCOL_VERSION}"
                ),
            });
        }
        None => return Err(invalid("missing protocol version field `v`".into())),
    }
    let id = match value.get("request_id") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(
            s.parse::<RequestId>()
                .map_err(|e| invalid(format!("invalid request_id: {e}")))?,
        ),
        Some(other) => {
            return Err(invalid(format!(
                "invalid request_id {other}: it must be a string"
            )));
        }
    };
    let request =
        serde_json::from_value(value).map_err(|e| invalid(format!("invalid request: {e}")))?;
    Ok((request, id))
}

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

/// The longest request id.
pub const MAX_REQUEST_ID: usize = 128;

/// A client's name for one request, so that the daemon applies it at most once.
///
/// The daemon remembers the ids of the write requests it applied (in the store, for
/// `REQUEST_ID_RETENTION`, a week) and answers a request whose id it has seen
/// with the first answer, applying nothing. A client that sends a request again (after a
/// timeout, or from the spool) sends it with the same id. Ids are compared across callers, so
/// they must be unique: [`RequestId::generate`] makes 128 random bits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId(String);

/// Why a string is not a request id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestIdError {
    /// Empty, or too long.
    #[error("a request id has 1 to {MAX_REQUEST_ID} characters, not {0}")]
    Length(usize),
    /// A character outside the allowed set.
    #[error("a request id may contain only letters, digits and `.`, `_`, `:`, `-`, not {0:?}")]
    Character(char),
}

impl RequestId {
    /// A fresh id: 32 hex digits of the kernel's randomness, from getrandom(2), which needs no
    /// descriptor (so a process out of them still gets one), then `/dev/urandom`. There is no
    /// predictable fallback (time, pid): another caller could guess it and send it first.
    ///
    /// # Panics
    /// If the kernel gives no randomness at all (getrandom(2) exists since Linux 3.17).
    pub fn generate() -> Self {
        use std::io::Read as _;
        let mut bytes = [0u8; 16];
        let from_syscall = loop {
            // SAFETY: getrandom(2) writes at most `bytes.len()` bytes into the buffer we own.
            let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
            if n == bytes.len() as isize {
                break true;
            }
            if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break false;
        };
        if !from_syscall {
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut bytes))
                .expect("the kernel's randomness (getrandom(2) or /dev/urandom) for a request id");
        }
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The id as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RequestId {
    type Error = RequestIdError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.is_empty() || s.len() > MAX_REQUEST_ID {
            return Err(RequestIdError::Length(s.chars().count()));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
        {
            return Err(RequestIdError::Character(c));
        }
        Ok(Self(s))
    }
}

impl std::str::FromStr for RequestId {
    type Err = RequestIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::try_from(s.to_owned())
    }
}

impl From<RequestId> for String {
    fn from(id: RequestId) -> Self {
        id.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a client can ask.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness and version.
    Ping,
    /// Block a target for one source.
    Block(BlockRequest),
    /// Block many targets in one durable write.
    BlockBatch(BatchRequest),
    /// Remove one source's block, or every block, of a target.
    Unblock {
        /// The target.
        target: Target,
        /// The source whose block to remove (default `cli`).
        #[serde(default)]
        source: Option<Source>,
        /// Remove every source's block.
        #[serde(default)]
        all: bool,
        /// Only this scope of the block(s) (`proto`, `ports`); absent: the whole block.
        #[serde(flatten)]
        scope: Scope,
    },
    /// The blocks, with counters, in target order; a page of them with `limit`.
    List {
        /// Only this source's blocks.
        #[serde(default)]
        source: Option<Source>,
        /// At most this many targets (default and most: [`MAX_LIST_PAGE`]; `next` then says
        /// where the next page starts).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<usize>,
        /// Only targets after this one (the previous page's `next`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<Target>,
    },
    /// Everything that covers an address, and the verdict its packets get now.
    Show {
        /// An address (or prefix).
        target: Target,
    },
    /// Data path counters.
    Stats,
    /// Daemon state.
    Status,
    /// Add an allowlist prefix (durable).
    AllowAdd {
        /// The prefix.
        target: Target,
        /// A note.
        #[serde(default)]
        comment: Option<String>,
        /// Allowlist a prefix broader than the scope guard (policy.min_prefix_v4/v6); needs the
        /// `force` operation.
        #[serde(default)]
        force: bool,
    },
    /// Remove an allowlist prefix added with `allow add`.
    AllowRemove {
        /// The prefix.
        target: Target,
    },
    /// The allowlist, with origins.
    AllowList,
    /// Turn shadow blocks into enforced ones (of one target, or of one source).
    Promote {
        /// Only this target.
        #[serde(default)]
        target: Option<Target>,
        /// Only this source's blocks.
        #[serde(default)]
        source: Option<Source>,
    },
    /// Close open circuit breakers.
    BreakerReset {
        /// Only this source's.
        #[serde(default)]
        source: Option<Source>,
    },
    /// Blocks waiting for approval.
    PendingList,
    /// Approve a pending block.
    Approve {
        /// Its id.
        id: u64,
    },
    /// Reject a pending block.
    Reject {
        /// Its id.
        id: u64,
    },
    /// The host's addresses and gateways now, read by the daemon's own address watcher on its
    /// thread (never on the engine's); the allowlist follows them. Internal: not on the wire.
    #[serde(skip)]
    HostChanged(Vec<crate::policy::host::HostAddress>),
    /// The links now, with their XDP programs, read by the daemon's link watcher on its thread
    /// (after link events, and twice a second); protection follows them. Internal: not on the
    /// wire.
    #[serde(skip)]
    LinksChanged(Vec<crate::netlink::LinkState>),
    /// Make one source's blocks match a feed (CrowdSec), in one durable round.
    SyncSource(SyncRequest),
    /// The CrowdSec publisher takes queued publications or reports sent ones. Internal: not on
    /// the wire.
    #[serde(skip)]
    Outbox(crate::outbox::OutboxRequest),
}

impl Request {
    /// The request's `op` as it appears on the wire (and as a metrics label).
    pub const fn op(&self) -> &'static str {
        match self {
            Self::Ping => "ping",
            Self::Block(_) => "block",
            Self::BlockBatch(_) => "block_batch",
            Self::Unblock { .. } => "unblock",
            Self::List { .. } => "list",
            Self::Show { .. } => "show",
            Self::Stats => "stats",
            Self::Status => "status",
            Self::AllowAdd { .. } => "allow_add",
            Self::AllowRemove { .. } => "allow_remove",
            Self::AllowList => "allow_list",
            Self::Promote { .. } => "promote",
            Self::BreakerReset { .. } => "breaker_reset",
            Self::PendingList => "pending_list",
            Self::Approve { .. } => "approve",
            Self::Reject { .. } => "reject",
            Self::HostChanged(_) => "refresh_host",
            Self::LinksChanged(_) => "links_changed",
            Self::SyncSource(_) => "sync_source",
            Self::Outbox(_) => "outbox",
        }
    }

    /// Checks the size of every free-text field the request would store (reasons, the
    /// allowlist comment; source names are bounded by their type). The engine calls it once,
    /// before a write is applied, whatever path the request came by: an oversized request is
    /// refused whole and changes nothing.
    pub fn validate(&self) -> Result<(), crate::block::TextTooLong> {
        match self {
            Self::Block(b) => b.reason.validate(),
            Self::BlockBatch(b) => b.reason.validate(),
            Self::AllowAdd { comment, .. } => {
                crate::block::TextTooLong::check("comment", comment.as_deref(), MAX_COMMENT)
            }
            // A feed's items are checked one by one (a long one fails alone, as any refused item).
            _ => Ok(()),
        }
    }
}

/// A block request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlockRequest {
    /// The target.
    pub target: Target,
    /// Time to live in seconds; `None` takes the default TTL.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// A block with no end (only sources allowed to make them).
    #[serde(default)]
    pub permanent: bool,
    /// Who asks.
    pub source: Source,
    /// Why.
    #[serde(default)]
    pub reason: Reason,
    /// Count instead of drop.
    #[serde(default)]
    pub shadow: bool,
    /// Block a prefix even though it is broad or contains allowlisted addresses (only for
    /// sources allowed to force; the allowlisted part stays reachable).
    #[serde(default)]
    pub force: bool,
    /// What of the target's traffic to block (`proto`, `ports`); absent: the whole address.
    #[serde(flatten)]
    pub scope: Scope,
}

/// One line of a batch.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchItem {
    /// The target.
    pub target: Target,
    /// TTL in seconds, else the batch's.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
}

/// Many blocks from one source with one reason.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchRequest {
    /// The targets.
    pub items: Vec<BatchItem>,
    /// TTL for items without their own; `None` = the default TTL.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// Who asks.
    pub source: Source,
    /// Why.
    #[serde(default)]
    pub reason: Reason,
    /// Count instead of drop.
    #[serde(default)]
    pub shadow: bool,
    /// What of each target's traffic to block (`proto`, `ports`); absent: the whole address.
    #[serde(flatten)]
    pub scope: Scope,
}

/// One target of a [`SyncRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncItem {
    /// The target.
    pub target: Target,
    /// How long the source's block should last from now, in ms. Unlike a block request, this
    /// may shorten the source's block: a feed says how long its decision lasts, not a minimum.
    pub ttl_ms: u64,
    /// Why.
    #[serde(default)]
    pub reason: std::sync::Arc<Reason>,
}

/// Make one source's blocks say what a feed says: each item is blocked (through the same policy
/// as any block) until its end; with `replace`, the source's blocks of every other target are
/// removed; `remove` lists targets whose block from this source ends now. Other sources' blocks
/// of the same targets are never touched. All of it is one round: one fsync, and the kernel
/// sees only the final state (a target kept by the sync is never lifted in between).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncRequest {
    /// The feed's source name.
    pub source: Source,
    /// `items` is the source's whole set: remove the source's blocks of every other target.
    #[serde(default)]
    pub replace: bool,
    /// Targets to block.
    pub items: Vec<SyncItem>,
    /// Targets whose block from this source to remove.
    #[serde(default)]
    pub remove: Vec<Target>,
}

/// The daemon's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    /// Success.
    Ok {
        /// Always true.
        ok: bool,
        /// The result.
        result: Reply,
    },
    /// Failure.
    Err {
        /// Always false.
        ok: bool,
        /// What went wrong.
        error: ErrorBody,
    },
}

impl Response {
    /// A success.
    pub fn ok(result: Reply) -> Self {
        Self::Ok { ok: true, result }
    }

    /// A failure.
    pub fn err(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Err {
            ok: false,
            error: ErrorBody {
                code,
                message: message.into(),
            },
        }
    }
}

/// An error: a stable code for scripts, a sentence for people.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// Stable code.
    pub code: ErrorCode,
    /// What was wrong and what to do.
    pub message: String,
}

/// Stable error codes. Each maps to one CLI exit code (documented in docs/cli.md).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request was malformed or a value invalid.
    InvalidRequest,
    /// The protocol version is not supported.
    UnsupportedVersion,
    /// No such block.
    NotFound,
    /// A kernel map is full; nothing was evicted.
    MapFull,
    /// Policy refused the block (allowlist, scope, time bounds...).
    Refused,
    /// The peer may not use the socket.
    PermissionDenied,
    /// The daemon failed internally (store or kernel error).
    Internal,
    /// The daemon did not take the request: it is shutting down, or serving as many
    /// connections as it allows. Nothing was applied: a trigger spools it, as when the daemon
    /// is not running.
    Unavailable,
}

impl ErrorCode {
    /// The code as it appears on the wire (and as a metrics label).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::UnsupportedVersion => "unsupported_version",
            Self::NotFound => "not_found",
            Self::MapFull => "map_full",
            Self::Refused => "refused",
            Self::PermissionDenied => "permission_denied",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
        }
    }

    /// The CLI's exit code for this error.
    pub const fn exit_code(self) -> i32 {
        match self {
            Self::InvalidRequest | Self::UnsupportedVersion => 2,
            Self::PermissionDenied => 4,
            Self::NotFound => 5,
            Self::MapFull => 6,
            Self::Refused => 7,
            Self::Internal => 1,
            // As when the daemon is not running (crate::client::EXIT_NOT_RUNNING).
            Self::Unavailable => 3,
        }
    }
}

/// What a block request did.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A new block for this source.
    Created,
    /// The source's block now ends later.
    Extended,
    /// The source's block already ended later; its expiry is kept (reason and mode updated).
    Unchanged,
    /// Policy requires approval: the block waits in `enforcer pending`.
    Pending,
}

/// Success payloads.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Reply {
    /// Answer to ping.
    Pong {
        /// Daemon version.
        version: String,
        /// Protocol version.
        protocol: u32,
    },
    /// Answer to block.
    Block(BlockReply),
    /// Answer to block_batch.
    BlockBatch {
        /// How many were applied.
        applied: usize,
        /// How many wait for approval (see `pending_list`).
        #[serde(default)]
        pending: usize,
        /// Which were refused, and why.
        failed: Vec<BatchFailure>,
    },
    /// Answer to unblock.
    Unblock {
        /// The target.
        target: Target,
        /// The sources whose blocks were removed.
        removed: Vec<Source>,
        /// Whether the target is now unblocked in the kernel.
        lifted: bool,
        /// The single address asked for, when it was not blocked itself but `target`, its
        /// network, was (a block the policy widened).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requested: Option<Target>,
    },
    /// Answer to list.
    List {
        /// The blocks.
        blocks: Vec<ListEntry>,
        /// When more blocks follow: the `after` of the next page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<Target>,
    },
    /// Answer to show.
    Show(ShowReply),
    /// Answer to stats.
    Stats(Box<StatsReply>),
    /// Answer to status.
    Status(Box<StatusReply>),
    /// Answer to allow add/remove.
    Allow {
        /// The prefix.
        target: Target,
        /// Whether something changed.
        changed: bool,
    },
    /// Answer to allow list.
    AllowList {
        /// Entries.
        entries: Vec<AllowEntry>,
    },
    /// Answer to promote.
    Promote {
        /// (target, source) pairs now enforced.
        promoted: Vec<(Target, Source)>,
    },
    /// Answer to breaker reset.
    BreakerReset {
        /// Sources whose breaker was open and is now closed.
        reset: Vec<Source>,
    },
    /// Answer to pending.
    PendingList {
        /// Waiting blocks.
        pending: Vec<PendingBlock>,
    },
    /// Answer to reject (approve answers with `block`).
    Rejected {
        /// The id.
        id: u64,
    },
    /// Answer to HostChanged and LinksChanged.
    Refreshed,
    /// Answer to sync_source.
    SyncSource(SyncReply),
    /// Answer to the publisher's take (queued publications, in order) and sent (empty).
    #[serde(skip)]
    Outbox(crate::outbox::OutboxBatch),
}

/// What a sync did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SyncReply {
    /// Items blocked, extended or shortened.
    pub applied: usize,
    /// Items already in force as asked (nothing written).
    pub unchanged: usize,
    /// Items waiting for approval.
    pub pending: usize,
    /// The source's blocks removed.
    pub removed: usize,
    /// Items refused, and why (index into `items`).
    pub failed: Vec<BatchFailure>,
}

/// Answer to one block.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlockReply {
    /// The canonical target.
    pub target: Target,
    /// What happened.
    pub outcome: Outcome,
    /// This source's expiry (Unix ms); `None` = permanent.
    pub expires_ms: Option<WallMs>,
    /// This source's mode.
    pub mode: Mode,
    /// What the policy changed (capped TTL, escalation, shadow...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The pending request's id, when approval is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_id: Option<u64>,
    /// The single address asked for, when the policy widened it to its network (`target`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<Target>,
}

/// A caller as records keep it (the requester of a pending block).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallerId {
    /// The user id.
    pub uid: u32,
    /// The user name, when the user database has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl fmt::Display for CallerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            Some(u) => write!(f, "uid {} ({u})", self.uid),
            None => write!(f, "uid {}", self.uid),
        }
    }
}

/// A block waiting for approval.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingBlock {
    /// Id for approve/reject.
    pub id: u64,
    /// The request as made.
    pub request: BlockRequest,
    /// Why approval is needed.
    pub why: String,
    /// When it was asked (Unix ms).
    pub created_ms: WallMs,
    /// When it is dropped unless approved (Unix ms).
    pub expires_ms: WallMs,
    /// Who asked (absent in records from before callers were recorded). Only another caller,
    /// or root, may approve it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<CallerId>,
}

/// A refused batch item.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BatchFailure {
    /// Index in the batch.
    pub index: usize,
    /// The target.
    pub target: Target,
    /// Why.
    pub error: ErrorBody,
}

/// One source's block in a listing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListSource {
    /// Source.
    pub source: Source,
    /// Reason.
    pub reason: std::sync::Arc<Reason>,
    /// Created (Unix ms).
    pub created_ms: WallMs,
    /// Expires (Unix ms); `None` = permanent.
    pub expires_ms: Option<WallMs>,
    /// Mode.
    pub mode: Mode,
    /// What of the target's traffic this block covers: `[{proto, ports?}]`; absent or empty:
    /// the whole address.
    #[serde(default, skip_serializing_if = "ScopeSet::is_whole")]
    pub scope: ScopeSet,
}

/// A blocked target in a listing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListEntry {
    /// The target.
    pub target: Target,
    /// Effective mode in the kernel.
    pub mode: Mode,
    /// Effective expiry in the kernel (Unix ms); `None` = permanent.
    pub expires_ms: Option<WallMs>,
    /// Each source's block.
    pub sources: Vec<ListSource>,
    /// What the kernel entry covers: the union of the sources' scopes (absent: the whole
    /// address). `packets` and `bytes` count the packets it matched.
    #[serde(default, skip_serializing_if = "ScopeSet::is_whole")]
    pub scope: ScopeSet,
    /// Packets the entry dropped (or, in shadow mode, would have dropped).
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
    /// Last hit (Unix ms); `None` = never.
    pub last_hit_ms: Option<WallMs>,
}

/// Answer to show.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShowReply {
    /// What was asked.
    pub target: Target,
    /// Blocks whose target covers it (most specific first).
    pub blocks: Vec<ListEntry>,
    /// Allowlist entries that cover it.
    pub allowlist: Vec<AllowEntry>,
    /// What a packet from it gets now: `drop`, `pass`, `pass (allowlisted)`, `pass (shadow)`.
    pub verdict: String,
    /// Blocks inside it not listed (past [`MAX_LIST_PAGE`]; the blocks covering the address
    /// itself are always listed): `list` pages through them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The most blocks one `list` page or `show` answer holds: each is one short stint on the
/// daemon's engine thread, so listing every block, however many, never holds up a block for
/// longer than one page takes.
pub const MAX_LIST_PAGE: usize = 1000;

/// An allowlist entry.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AllowEntry {
    /// The prefix.
    pub target: Target,
    /// Where it came from (`config`, `cli`, `builtin: loopback`, ...).
    pub origin: String,
}

/// Packet and byte counts.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Count {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Counters of one scope (an interface, or all).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Every frame seen.
    pub seen: Count,
    /// Passed to the stack.
    pub passed: Count,
    /// Dropped by an enforced block.
    pub dropped: Count,
    /// Matched a block but allowlisted.
    pub allowlisted: Count,
    /// Matched a shadow block (passed).
    pub shadow: Count,
    /// Matched only expired entries.
    pub expired: Count,
    /// Not judged: the parser gave up (see `unjudged` for why).
    pub not_ip: Count,
    /// The frames the parser gave up on, by reason (they passed).
    #[serde(default)]
    pub unjudged: UnjudgedCounts,
}

/// Frames the data path did not judge, by why (see `enforcer_common::unjudged`).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnjudgedCounts {
    /// Neither IPv4 nor IPv6 (ARP, LLDP...; on a raw-IP link, a first nibble not 4 or 6).
    pub not_ip: Count,
    /// More than two VLAN tags.
    pub vlan_depth: Count,
    /// Shorter than its headers.
    pub truncated: Count,
    /// Headers past the first buffer of a multi-buffer frame.
    pub split_headers: Count,
}

impl UnjudgedCounts {
    /// `(name, count)` in the order and with the names `stats` and the metrics use.
    pub fn by_reason(&self) -> [(&'static str, Count); 4] {
        let n = enforcer_common::unjudged::NAMES;
        [
            (n[0], self.not_ip),
            (n[1], self.vlan_depth),
            (n[2], self.truncated),
            (n[3], self.split_headers),
        ]
    }
}

impl From<enforcer_common::Unjudged> for UnjudgedCounts {
    fn from(u: enforcer_common::Unjudged) -> Self {
        use enforcer_common::unjudged::{NOT_IP, SPLIT_HEADERS, TRUNCATED, VLAN_DEPTH};
        let c = |i: u32| {
            let c = u.reasons[i as usize];
            Count {
                packets: c.packets,
                bytes: c.bytes,
            }
        };
        Self {
            not_ip: c(NOT_IP),
            vlan_depth: c(VLAN_DEPTH),
            truncated: c(TRUNCATED),
            split_headers: c(SPLIT_HEADERS),
        }
    }
}

impl Counters {
    /// With the reasons of the frames that were not judged.
    pub fn with_unjudged(self, u: enforcer_common::Unjudged) -> Self {
        Self {
            unjudged: u.into(),
            ..self
        }
    }
}

impl From<enforcer_common::Stats> for Counters {
    fn from(s: enforcer_common::Stats) -> Self {
        let c = |c: enforcer_common::Counter| Count {
            packets: c.packets,
            bytes: c.bytes,
        };
        Self {
            seen: c(s.seen),
            passed: c(s.passed),
            dropped: c(s.dropped),
            allowlisted: c(s.allowlisted),
            shadow: c(s.shadow),
            expired: c(s.expired),
            not_ip: c(s.not_ip),
            unjudged: UnjudgedCounts::default(),
        }
    }
}

/// Answer to stats.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatsReply {
    /// Over every interface.
    pub total: Counters,
    /// Per protected interface.
    pub interfaces: Vec<InterfaceCounters>,
    /// Blocks per source.
    pub blocks_by_source: Vec<(Source, usize)>,
    /// Dropped packets and bytes by the origin of the block that held each target.
    #[serde(default)]
    pub dropped_by_origin: Vec<OriginDrops>,
}

/// Drops of the blocks of one origin: a local source (`wazuh`, `fail2ban`, `cli`, ...) or, for
/// CrowdSec's blocks, the decision's origin (`crowdsec`, `cscli`, `CAPI`, `lists:NAME`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginDrops {
    /// The origin.
    pub origin: String,
    /// Packets dropped.
    pub packets: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Counters of one interface.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InterfaceCounters {
    /// Interface name.
    pub iface: String,
    /// Counters.
    pub counters: Counters,
}

/// A configured interface in status, as the kernel shows it when status is asked (never a
/// cached value).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InterfaceStatus {
    /// Name (or, for a pattern that matches no interface, the pattern).
    pub iface: String,
    /// `protected`: our program runs there now; `waiting`: named (or a pattern) but never seen
    /// since the start; `gone`: was there, is not now; `unprotected`: there, but our program
    /// does not run on it (re-attaching, or the attach failed: see `error`).
    pub state: InterfaceState,
    /// Its index now, when it exists.
    pub ifindex: Option<u32>,
    /// The XDP mode the kernel reports now, when a program is attached.
    pub mode: Option<AttachedMode>,
    /// Why the kernel refused native mode when `auto` attached it in skb mode: its words and
    /// what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_refused: Option<String>,
    /// The id of the XDP program the kernel runs there now (ours when protected).
    pub prog_id: Option<u32>,
    /// The link's type (`ARPHRD_*`), when it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_type: Option<crate::datapath::LinkType>,
    /// The parse its type needs (none: a type the data path cannot read, never protected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parse: Option<crate::datapath::Parse>,
    /// The pattern that selected it, when not named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Why the last attach failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The state of a configured interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterfaceState {
    /// Our program runs on it.
    Protected,
    /// Not seen since the daemon started.
    Waiting,
    /// Was there, is not now.
    Gone,
    /// There, without our program.
    Unprotected,
}

impl fmt::Display for InterfaceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Protected => "protected",
            Self::Waiting => "waiting",
            Self::Gone => "gone",
            Self::Unprotected => "unprotected",
        })
    }
}

/// Use of one map.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MapUse {
    /// Map name.
    pub map: String,
    /// Entries in use.
    pub used: u64,
    /// Capacity.
    pub capacity: u32,
}

/// Answer to status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReply {
    /// Daemon version.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Every configured interface (and each pattern that matches none), read from the kernel.
    pub interfaces: Vec<InterfaceStatus>,
    /// Map use.
    pub maps: Vec<MapUse>,
    /// Blocked targets.
    pub targets: usize,
    /// Source blocks (a target blocked by two sources counts twice).
    pub source_blocks: usize,
    /// The store file.
    pub store_path: String,
    /// The bpffs directory (as configured; the host's path).
    pub bpffs_dir: String,
    /// Where the pins are and whether they outlive the daemon (a daemon in a private mount
    /// namespace pins into the host's bpffs).
    pub pins: PinsInfo,
    /// The audit log.
    pub audit_log: String,
    /// Next expiry (Unix ms), if any.
    pub next_expiry_ms: Option<WallMs>,
    /// Global rollout mode.
    pub policy_mode: Mode,
    /// Open circuit breakers.
    pub breakers: Vec<crate::policy::BreakerState>,
    /// Blocks waiting for approval.
    pub pending: usize,
    /// Allowlist prefixes.
    pub allowlist: usize,
    /// The CrowdSec bouncer, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crowdsec: Option<CrowdsecStatus>,
    /// Wall-clock steps followed since the daemon started.
    #[serde(default)]
    pub clock_steps: ClockSteps,
}

/// Wall-clock steps the daemon followed since it started (each moved every deadline with the
/// clock, so blocks kept their remaining time), in status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockSteps {
    /// Steps since start (one made while the daemon was down, found at its start, counts too).
    pub count: u64,
    /// The latest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<ClockStep>,
}

/// One wall-clock step the daemon followed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockStep {
    /// When the daemon saw it (Unix ms, on the stepped clock).
    pub seen_ms: WallMs,
    /// How far the wall clock stepped, in ms (negative: backwards).
    pub by_ms: i64,
    /// Block deadlines moved with it.
    pub moved: usize,
    /// Whether the daemon was running at the step (false: made while it was down, found at start).
    pub while_running: bool,
}

/// The CrowdSec bouncer's state, in status.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CrowdsecStatus {
    /// The LAPI.
    pub api_url: String,
    /// Last successful pull (Unix ms).
    pub last_pull_ms: Option<WallMs>,
    /// Last successful full (startup) pull (Unix ms).
    pub last_full_pull_ms: Option<WallMs>,
    /// Successful pulls since start.
    pub pulls: u64,
    /// Targets with a live ban decision.
    pub active: usize,
    /// Decisions applied as blocks (created, extended or shortened) since start.
    pub applied: u64,
    /// Decisions the safety policy refused since start (see the audit log).
    pub refused: u64,
    /// Decisions waiting for approval since start.
    pub pending: u64,
    /// Decisions not enforced by design (not `ban`, another scope, simulated) since start.
    pub ignored: u64,
    /// Malformed decisions skipped since start.
    pub invalid: u64,
    /// Failed pulls since start.
    #[serde(default)]
    pub errors: u64,
    /// The last error (pull or apply); it is current when newer than `last_pull_ms`.
    pub last_error: Option<String>,
    /// When it happened (Unix ms).
    pub last_error_ms: Option<WallMs>,
    /// Usage metrics: `on`, `off: ...` with the reason.
    pub usage_metrics: String,
    /// Decisions this host published itself, seen in pulls and not imported back.
    #[serde(default)]
    pub own: u64,
    /// Publishing local blocks to the LAPI, when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish: Option<PublishStatus>,
}

/// The publisher's state (`[crowdsec.publish]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishStatus {
    /// The machine it logs in as.
    pub login: String,
    /// The queue.
    pub queue: crate::outbox::OutboxCounters,
    /// Publications sent since start (bans pushed and withdrawn).
    pub sent: u64,
    /// Last successful send (Unix ms).
    pub last_sent_ms: Option<WallMs>,
    /// Failed sends since start.
    pub errors: u64,
    /// The last error; current while newer than `last_sent_ms`.
    pub last_error: Option<String>,
    /// When it happened (Unix ms).
    pub last_error_ms: Option<WallMs>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Out of descriptors, a request id is still 128 random bits, not the time and pid (which
    /// another caller could predict and send first). Runs in a child process (the descriptors
    /// are the process's, and other tests run beside it).
    #[test]
    fn a_request_id_made_without_a_free_descriptor_is_still_random() {
        const CHILD: &str = "ENFORCER_REQUEST_ID_EMFILE";
        if std::env::var_os(CHILD).is_none() {
            crate::test_support::run_in_child(
                "protocol::tests::a_request_id_made_without_a_free_descriptor_is_still_random",
                CHILD,
                "1".as_ref(),
            );
            return;
        }
        let mut taken = Vec::new();
        while let Ok(f) = std::fs::File::open("/dev/null") {
            taken.push(f);
        }
        let ids = [RequestId::generate(), RequestId::generate()];
        drop(taken);
        for id in &ids {
            assert!(
                id.as_str().len() == 32 && id.as_str().bytes().all(|b| b.is_ascii_hexdigit()),
                "a predictable id: {}",
                id.as_str()
            );
        }
        assert_ne!(ids[0], ids[1]);
    }

    #[test]
    fn request_lines_are_checked_as_json_then_version_then_fields() {
        let err = |line: &[u8]| parse_request(line).unwrap_err();
        assert_eq!(err(b"{\"v\":1,").code, ErrorCode::InvalidRequest);
        assert!(err(b"{\"v\":1,").message.starts_with("not JSON"));
        let e = err(br#"{"v":2,"op":"nonsense"}"#);
        assert_eq!(
            e.code,
            ErrorCode::UnsupportedVersion,
            "the version is checked first: {e:?}"
        );
        assert!(err(br#"{"op":"ping"}"#).message.contains("`v`"));
        let e = err(br#"{"v":1,"op":"block","source":"cli"}"#);
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains("target"), "{e:?}");
        assert!(matches!(
            parse_request(br#"{"v":1,"op":"ping","new_field":true}"#),
            Ok((Request::Ping, None))
        ));
        assert!(
            err(br#"{"v":1,"op":"ping","request_id":7}"#)
                .message
                .contains("request_id")
        );
    }

    #[test]
    fn a_block_carries_its_scope_and_a_bad_scope_is_one_line_naming_the_fix() {
        let (request, _) = parse_request(
            br#"{"v":1,"op":"block","target":"192.0.2.7","source":"cli","proto":"tcp","ports":"22,2222"}"#,
        )
        .unwrap();
        let Request::Block(b) = request else {
            panic!("not a block: {request:?}")
        };
        assert_eq!(b.scope.to_string(), "tcp/22,2222");
        let line = serde_json::to_string(&Request::Block(b)).unwrap();
        assert!(
            line.contains(r#""proto":"tcp","ports":"22,2222""#),
            "{line}"
        );
        let (plain, _) =
            parse_request(br#"{"v":1,"op":"block","target":"192.0.2.7","source":"cli"}"#).unwrap();
        let Request::Block(b) = plain else { panic!() };
        assert!(b.scope.is_whole());
        for (bad, says) in [
            (r#""proto":"tcp","ports":"0""#, "port 0"),
            (r#""proto":"tcp","ports":"70000""#, "out of range"),
            (r#""proto":"tcp","ports":"2000-1000""#, "reversed"),
            (r#""proto":"sctp""#, "unknown protocol"),
            (r#""proto":"icmp","ports":"22""#, "tcp and udp only"),
        ] {
            let line =
                format!(r#"{{"v":1,"op":"block","target":"192.0.2.7","source":"cli",{bad}}}"#);
            let e = parse_request(line.as_bytes()).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{bad}");
            assert!(e.message.contains(says), "{bad}: {}", e.message);
            assert!(!e.message.contains('\n'), "{}", e.message);
        }
    }

    #[test]
    fn the_daemons_internal_requests_cannot_be_sent_over_the_socket() {
        for op in ["links_changed", "refresh_host", "host_changed"] {
            let line = format!("{{\"v\":1,\"op\":\"{op}\"}}");
            assert!(
                serde_json::from_str::<Envelope<Request>>(&line).is_err(),
                "`{op}` was accepted from the wire"
            );
        }
        let ping = serde_json::from_str::<Envelope<Request>>("{\"v\":1,\"op\":\"ping\"}").unwrap();
        assert!(matches!(ping.body, Request::Ping));
    }

    #[test]
    fn request_ids_are_short_plain_tokens_and_generated_ones_differ() {
        for ok in [
            "a",
            "wazuh-7f3a9c1e",
            "spool:00000001764262800000-0000004242-0.json",
            &"x".repeat(MAX_REQUEST_ID),
        ] {
            assert_eq!(ok.parse::<RequestId>().unwrap().as_str(), ok);
        }
        assert_eq!("".parse::<RequestId>(), Err(RequestIdError::Length(0)));
        assert_eq!(
            "x".repeat(MAX_REQUEST_ID + 1).parse::<RequestId>(),
            Err(RequestIdError::Length(MAX_REQUEST_ID + 1))
        );
        assert_eq!(
            "no spaces".parse::<RequestId>(),
            Err(RequestIdError::Character(' '))
        );
        assert_eq!(
            "quote\"".parse::<RequestId>(),
            Err(RequestIdError::Character('"'))
        );
        let (a, b) = (RequestId::generate(), RequestId::generate());
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        // On the wire: an optional field beside `v`; a bad one does not parse.
        let line = serde_json::to_string(&Envelope {
            v: 1,
            id: Some(a.clone()),
            body: Request::Ping,
        })
        .unwrap();
        let back: Envelope<Request> = serde_json::from_str(&line).unwrap();
        assert_eq!(back.id, Some(a));
        assert!(line.contains("\"request_id\""), "{line}");
        assert!(
            serde_json::from_str::<Envelope<Request>>(
                "{\"v\":1,\"request_id\":\"a b\",\"op\":\"ping\"}"
            )
            .is_err()
        );
        // `id` stays the pending id of approve.
        let approve: Envelope<Request> =
            serde_json::from_str("{\"v\":1,\"request_id\":\"r1\",\"op\":\"approve\",\"id\":7}")
                .unwrap();
        assert!(matches!(approve.body, Request::Approve { id: 7 }));
        assert_eq!(approve.id.unwrap().as_str(), "r1");
    }
}
