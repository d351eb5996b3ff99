//! The host's own addresses and default gateways: always allowlisted, so that no automated
//! block can cut the host off its own network.

use std::time::Duration;

use netlink_packet_route::RouteNetlinkMessage;

use crate::{
    netlink::{self, Batch, Groups, Notifications},
    target::Target,
};

/// An address the host depends on, and what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostAddress {
    /// The address (a single-address target).
    pub target: Target,
    /// "loopback", "host address", "default gateway".
    pub what: &'static str,
}

/// Loopback, the host's addresses and its default gateways, in the calling thread's namespace.
pub fn host_addresses() -> std::io::Result<Vec<HostAddress>> {
    let mut out = vec![
        HostAddress {
            target: "127.0.0.0/8".parse().expect("valid"),
            what: "loopback",
        },
        HostAddress {
            target: "::1".parse().expect("valid"),
            what: "loopback",
        },
    ];
    for a in netlink::addresses()?
        .into_iter()
        .filter(|a| !a.is_loopback())
    {
        out.push(HostAddress {
            target: Target::host(a),
            what: "host address",
        });
    }
    for a in netlink::default_gateways()? {
        out.push(HostAddress {
            target: Target::host(a),
            what: "default gateway",
        });
    }
    out.sort_by(|a, b| (a.target, a.what).cmp(&(b.target, b.what)));
    out.dedup_by(|a, b| a.target == b.target);
    Ok(out)
}

/// Whenever the host's addresses or default routes change (rtnetlink multicast), reads them
/// again, here on the watcher's thread, and hands them to `changed`, at most every 200 ms.
/// Returns when `changed` returns false or the socket fails.
pub fn watch(mut changed: impl FnMut(Vec<HostAddress>) -> bool) {
    let notifications = match Notifications::subscribe(Groups::ADDRESSES | Groups::ROUTES) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!("cannot watch address changes: {e}");
            return;
        }
    };
    loop {
        // Wait for something that matters: an address, or a default route, changing. A full
        // routing table churning (BGP) must not make us re-read everything each time.
        match notifications.recv() {
            Ok(batch) if !relevant(&batch) => continue,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "watching address changes failed; the host allowlist is no longer kept current");
                return;
            }
        }
        // Coalesce bursts (an interface going up changes many things at once).
        std::thread::sleep(Duration::from_millis(200));
        notifications.discard_queued();
        match host_addresses() {
            Ok(now) => {
                if !changed(now) {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the host's addresses failed; the builtin allowlist was not refreshed")
            }
        }
    }
}

/// Whether notifications touch an address or a default route (or were lost: then they may).
fn relevant(batch: &Batch) -> bool {
    batch.lost
        || batch.messages.iter().any(|m| match m {
            RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_) => true,
            RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
                netlink::is_default(&r.header)
            }
            _ => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_always_there() {
        let all = host_addresses().unwrap();
        assert!(all.iter().any(|h| h.target.to_string() == "127.0.0.0/8"));
    }
}
