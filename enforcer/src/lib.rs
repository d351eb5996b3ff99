//! enforcer: blocks attacking IP addresses in the kernel with XDP, and lifts each block on time.
//!
//! The layout follows the data: trigger sources → control plane (policy, durable store, kernel
//! maps, reaper) → data plane (the XDP program in `enforcer-ebpf`, driven by [`datapath`]).

pub mod access;
pub mod audit;
pub mod block;
pub mod cli;
pub mod client;
pub mod config;
pub mod crowdsec;
pub mod daemon;
pub mod datapath;
pub mod duration;
pub mod error;
pub mod flood;
pub mod hooks;
pub mod install;
pub mod interfaces;
pub mod metrics;
pub mod netlink;
pub mod outbox;
pub mod policy;
pub mod protocol;
pub mod safe_fs;
pub mod scope;
pub mod spool;
pub mod store;
pub mod target;
#[cfg(test)]
mod test_support;
pub mod time;

pub use target::{Target, TargetError};
