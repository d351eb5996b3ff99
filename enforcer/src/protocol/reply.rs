//! The daemon's answers: one [`Response`] per request, a [`Reply`] or an [`ErrorBody`].

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{BlockRequest, StatsReply, StatusReply};
use crate::{
    block::{Mode, Reason, Source},
    scope::ScopeSet,
    target::Target,
    time::WallMs,
};

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
    /// Answer to sync_source.
    SyncSource(SyncReply),
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
