//! What a client sends: one [`Request`] per line, in an [`Envelope`](super::Envelope).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{ErrorBody, ErrorCode, MAX_COMMENT, PROTOCOL_VERSION};
use crate::{
    block::{Reason, Source},
    scope::Scope,
    target::Target,
};

/// Parses one request line as the daemon reads it from the control socket: JSON, the protocol
/// version `v` checked first (so an old client gets `unsupported_version`, not a field error),
/// then the request and its `request_id`, when the client gave one. Every failure is an
/// [`ErrorBody`] with code `invalid_request` or `unsupported_version` and a message saying what
/// was wrong; the daemon's internal requests never parse.
pub fn parse_request(line: &[u8]) -> Result<(Request, Option<RequestId>), ErrorBody> {
    parse_valid(line).map_or_else(|| parse_or_say_why(line), Ok)
}

/// The fields of a request line read before the request itself.
#[derive(Deserialize)]
struct Head {
    v: Option<u64>,
    request_id: Option<String>,
}

/// A request line decoded straight into a [`Request`] (an import's 5,000 items are not built as
/// a JSON tree first); `None` for any line that is not a valid request, which
/// [`parse_or_say_why`] then reads again to say what is wrong. Only lines it accepts whole
/// are taken from here, so the two agree on every line.
fn parse_valid(line: &[u8]) -> Option<(Request, Option<RequestId>)> {
    let head: Head = serde_json::from_slice(line).ok()?;
    if head.v != Some(u64::from(PROTOCOL_VERSION)) {
        return None;
    }
    let id = match head.request_id {
        None => None,
        Some(s) => Some(s.parse::<RequestId>().ok()?),
    };
    let request = serde_json::from_slice(line).ok()?;
    Some((request, id))
}

/// [`parse_request`] through a JSON tree, with a message for each thing that can be wrong.
fn parse_or_say_why(line: &[u8]) -> Result<(Request, Option<RequestId>), ErrorBody> {
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
    /// Make one source's blocks match a feed (CrowdSec), in one durable round.
    SyncSource(SyncRequest),
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
            Self::SyncSource(_) => "sync_source",
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
