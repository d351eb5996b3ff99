//! Why the engine did not do what a request asked, in the language of the domain.
//!
//! The ledger and the round answer with a [`Refusal`]; the control socket turns it into the
//! protocol's error body in one place ([`Refusal::to_body`]), with its stable code.

use std::sync::Arc;

use crate::{
    datapath::{MapId, MapsError},
    policy::Rule,
    protocol::{ErrorBody, ErrorCode},
    store::StoreError,
};

/// A request the engine refused or could not carry out. Nothing was changed, except where a
/// variant says otherwise ([`Refusal::Kernel`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// A safety policy rule refused the block.
    #[error("refused by policy rule `{rule}`: {message}")]
    Policy {
        /// The rule.
        rule: Rule,
        /// Why, and what to do.
        message: String,
    },
    /// The kernel map the target belongs in is full.
    #[error(
        "the {map} map is full ({capacity} entries); nothing was evicted. Raise [capacity] in the configuration or unblock targets"
    )]
    MapFull {
        /// The map.
        map: MapId,
        /// Its capacity.
        capacity: u32,
    },
    /// The source holds its share of the map already.
    #[error(
        "source `{by}` holds its share of the {map} map ({share} of {capacity} entries: capacity.source_share = {percent}%); nothing was evicted. Unblock some of its targets, or raise source_share"
    )]
    ShareFull {
        /// The source (not `source`: thiserror takes a field of that name for the cause).
        by: crate::block::Source,
        /// The map.
        map: MapId,
        /// Entries one source may hold.
        share: u64,
        /// The map's capacity.
        capacity: u32,
        /// `capacity.source_share`.
        percent: u8,
    },
    /// Only the entries kept for `cli` and forced blocks are left.
    #[error(
        "the {map} map is full for source `{by}`: its last {reserved} of {capacity} entries are kept for `cli` and forced blocks (capacity.reserved_share); nothing was evicted. Raise [capacity] or unblock targets"
    )]
    Reserved {
        /// The source (not `source`: thiserror takes a field of that name for the cause).
        by: crate::block::Source,
        /// The map.
        map: MapId,
        /// The map's capacity.
        capacity: u32,
        /// Entries kept.
        reserved: u64,
    },
    /// Approval is required, but as many requests as allowed already wait for it.
    #[error(
        "approval is required, but {limit} requests already wait for it (the limit); approve or reject some (`enforcer pending`), or raise policy.approval.max_pending"
    )]
    PendingFull {
        /// `policy.approval.max_pending`.
        limit: usize,
    },
    /// Approval is required, but this caller already has its share of the queue waiting.
    #[error(
        "approval is required, but {caller} already has {share} requests waiting for it (its share: policy.approval.caller_share = {percent}% of max_pending); approve or reject some (`enforcer pending`), or raise caller_share"
    )]
    PendingShareFull {
        /// Who asked: `uid N (name)`, or `source `NAME`` for root and the daemon's own parts.
        caller: String,
        /// Requests one caller may have waiting.
        share: usize,
        /// `policy.approval.caller_share`.
        percent: u8,
    },
    /// A value in the request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// There is nothing of that name (block, pending id, allowlist entry).
    #[error("{0}")]
    NotFound(String),
    /// The allowlist entry comes from somewhere the CLI does not own.
    #[error(
        "{target} comes from {origins}; remove it there (the configuration file), not with the CLI"
    )]
    NotRemovable {
        /// The prefix.
        target: crate::Target,
        /// Its origins, comma-separated.
        origins: String,
    },
    /// The caller may not make this request (see [`crate::access`]).
    #[error(transparent)]
    Denied(Box<crate::access::Denied>),
    /// The durable store failed; the round was undone.
    #[error("the block store failed; nothing was changed")]
    Store(#[source] Arc<StoreError>),
    /// Stored, but writing the kernel map failed.
    #[error("stored, but the kernel map update failed; it is retried at the next start")]
    Kernel(#[source] Arc<MapsError>),
}

impl Refusal {
    /// The protocol's stable error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Policy { .. }
            | Self::NotRemovable { .. }
            | Self::PendingFull { .. }
            | Self::PendingShareFull { .. } => ErrorCode::Refused,
            Self::MapFull { .. } | Self::ShareFull { .. } | Self::Reserved { .. } => {
                ErrorCode::MapFull
            }
            Self::Invalid(_) => ErrorCode::InvalidRequest,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::Denied(_) => ErrorCode::PermissionDenied,
            Self::Store(_) | Self::Kernel(_) => ErrorCode::Internal,
        }
    }

    /// The protocol's error body: the code, and the message with its causes.
    pub fn to_body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code(),
            message: crate::error::Chain(self).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_names_the_rule_and_the_cause_once() {
        let r = Refusal::Policy {
            rule: Rule::Scope,
            message: "too broad".into(),
        };
        assert_eq!(r.to_body().code, ErrorCode::Refused);
        assert_eq!(
            r.to_body().message,
            "refused by policy rule `scope`: too broad"
        );
        let e = Refusal::Store(Arc::new(StoreError::Db {
            path: "/x".into(),
            message: "disk full".into(),
        }));
        let body = e.to_body();
        assert_eq!(body.code, ErrorCode::Internal);
        assert_eq!(
            body.message,
            "the block store failed; nothing was changed: block store /x: disk full"
        );
    }

    #[test]
    fn a_kernel_refusal_names_the_map_the_syscall_and_the_errno_once_each() {
        let e = Refusal::Kernel(Arc::new(MapsError::Kernel {
            op: "insert",
            map: "BLOCK_V4",
            source: aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                call: "bpf_map_update_elem",
                io_error: std::io::Error::from_raw_os_error(libc::ENOMEM),
            }),
        }));
        let body = e.to_body();
        assert_eq!(
            body.message,
            "stored, but the kernel map update failed; it is retried at the next start: \
             insert on map BLOCK_V4 failed: `bpf_map_update_elem` failed: Cannot allocate memory (os error 12)"
        );
    }
}
