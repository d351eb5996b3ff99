//! The link watcher: reads the kernel's links and hands them to the engine, which attaches.
//!
//! Two threads, both in the daemon's network namespace, both sending the same thing (a dump of
//! every link with its XDP program, [`Request::LinksChanged`]), never touching the program:
//! - `link-watch` waits for rtnetlink link events (created, renamed, deleted; a resync after
//!   lost notifications) and sends a fresh dump at once: an interface that appears is attached
//!   within milliseconds;
//! - `link-poll` sends a dump every [`POLL`] (half a second, so a detach is undone within a
//!   second): a program detached behind the daemon's back (`bpftool link detach`) changes no
//!   link, so only looking notices it.
//!
//! Both are [critical](super::critical): if either ends while the daemon runs (the events
//! become unreadable, or a panic), the daemon exits non-zero and its supervisor restarts it.

use std::{
    sync::mpsc::{SyncSender, TrySendError},
    time::Duration,
};

use super::engine::Command;
use crate::netlink;

/// How often the kernel's XDP state is compared with what the daemon attached.
pub const POLL: Duration = Duration::from_millis(500);

/// Starts both threads.
pub fn spawn(tx: &SyncSender<Command>, deaths: &super::critical::Deaths) -> anyhow::Result<()> {
    // Subscribed here, before returning: nothing created from now on is missed.
    let mut watch = netlink::LinkWatch::new()?;
    let events = tx.clone();
    super::critical::spawn("link-watch", deaths, move || {
        loop {
            match watch.next_events() {
                Ok(changes) => tracing::debug!(?changes, "link events"),
                Err(e) => {
                    tracing::error!(error = %e, "link events unreadable");
                    return;
                }
            }
            if !send(&events, true) {
                return;
            }
        }
    })?;
    let poll = tx.clone();
    super::critical::spawn("link-poll", deaths, move || {
        loop {
            std::thread::sleep(POLL);
            if !send(&poll, false) {
                return;
            }
        }
    })?;
    Ok(())
}

/// Sends a dump of the links; returns false once the engine is gone. A poll skips its turn
/// when the engine's queue is full (the next one comes in a second); an event waits.
fn send(tx: &SyncSender<Command>, wait: bool) -> bool {
    let links = match netlink::link_states() {
        Ok(links) => links,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the interfaces (RTM_GETLINK); trying again");
            return true;
        }
    };
    let command = Command::daemon("link watcher", super::engine::Ask::LinksChanged(links));
    if wait {
        return tx.send(command).is_ok();
    }
    !matches!(tx.try_send(command), Err(TrySendError::Disconnected(_)))
}
