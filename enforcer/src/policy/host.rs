//! The host's own addresses and default gateways: always allowlisted, so that no automated
//! block can cut the host off its own network.

use std::net::IpAddr;

use crate::{
    datapath::netlink::{Attrs, dump},
    target::Target,
};

const RTM_GETADDR: u16 = 22;
const RTM_NEWADDR: u16 = 20;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWROUTE: u16 = 24;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_GATEWAY: u16 = 5;
const RTA_MULTIPATH: u16 = 9;
const RT_TABLE_MAIN: u8 = 254;

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
    for family in [libc::AF_INET, libc::AF_INET6] {
        // struct ifaddrmsg { family, prefixlen, flags, scope, index }
        let header = [family as u8, 0, 0, 0, 0, 0, 0, 0];
        for (kind, payload) in dump(RTM_GETADDR, &header)? {
            if kind != RTM_NEWADDR || payload.len() < 8 {
                continue;
            }
            let mut addr = None;
            for (t, v) in Attrs(&payload[8..]) {
                if t == IFA_LOCAL || (t == IFA_ADDRESS && addr.is_none()) {
                    addr = ip_from(v);
                }
            }
            if let Some(a) = addr
                && !a.is_loopback()
            {
                out.push(HostAddress {
                    target: Target::host(a),
                    what: "host address",
                });
            }
        }
        // struct rtmsg { family, dst_len, src_len, tos, table, protocol, scope, type, flags(4) }
        let header = [family as u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        for (kind, payload) in dump(RTM_GETROUTE, &header)? {
            if kind != RTM_NEWROUTE || payload.len() < 12 || payload[1] != 0 || payload[4] != RT_TABLE_MAIN {
                continue;
            }
            for (t, v) in Attrs(&payload[12..]) {
                if t == RTA_GATEWAY
                    && let Some(a) = ip_from(v)
                {
                    out.push(HostAddress {
                        target: Target::host(a),
                        what: "default gateway",
                    });
                }
                if t == RTA_MULTIPATH {
                    // struct rtnexthop { len u16, flags u8, hops u8, ifindex i32 } + attrs
                    let mut rest = v;
                    while rest.len() >= 8 {
                        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
                        if len < 8 || len > rest.len() {
                            break;
                        }
                        for (nt, nv) in Attrs(&rest[8..len]) {
                            if nt == RTA_GATEWAY
                                && let Some(a) = ip_from(nv)
                            {
                                out.push(HostAddress {
                                    target: Target::host(a),
                                    what: "default gateway",
                                });
                            }
                        }
                        rest = &rest[(len + 3) & !3..];
                    }
                }
            }
        }
    }
    out.sort_by(|a, b| (a.target, a.what).cmp(&(b.target, b.what)));
    out.dedup_by(|a, b| a.target == b.target);
    Ok(out)
}

fn ip_from(v: &[u8]) -> Option<IpAddr> {
    match v.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(v).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(v).ok()?)),
        _ => None,
    }
}

/// Calls `changed` whenever the host's addresses or routes change (rtnetlink multicast), at
/// most every 200 ms. Returns when `changed` returns false or the socket fails.
pub fn watch(mut changed: impl FnMut() -> bool) {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    // Route notifications are filtered below to default routes; addresses always count.
    const GROUPS: u32 = 0x10 | 0x40 | 0x100 | 0x400; // IPv4/IPv6 addresses and routes
    // SAFETY: plain socket(2); owned right away.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        tracing::error!("cannot watch address changes: {}", std::io::Error::last_os_error());
        return;
    }
    // SAFETY: fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero sockaddr_nl is valid.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = GROUPS;
    // SAFETY: valid address of the right size.
    let rc = unsafe {
        libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), std::mem::size_of::<libc::sockaddr_nl>() as u32)
    };
    if rc != 0 {
        tracing::error!("cannot watch address changes: {}", std::io::Error::last_os_error());
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Wait for something that matters: an address, or a default route, changing. A full
        // routing table churning (BGP) must not make us re-read everything each time.
        match recv(&fd, &mut buf, 0) {
            Ok(n) if !relevant(&buf[..n]) => continue,
            Ok(_) => {}
            // The kernel dropped notifications (ENOBUFS): something changed, we can't know what.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "watching address changes failed; the host allowlist is no longer kept current");
                return;
            }
        }
        // Coalesce bursts (an interface going up changes many things at once).
        std::thread::sleep(std::time::Duration::from_millis(200));
        while recv(&fd, &mut buf, libc::MSG_DONTWAIT).is_ok_and(|n| n > 0) {}
        if !changed() {
            return;
        }
    }
}

fn recv(fd: &std::os::fd::OwnedFd, buf: &mut [u8], flags: i32) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: receiving into a buffer of the given length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// Whether a batch of rtnetlink notifications touches an address or a default route.
fn relevant(mut msgs: &[u8]) -> bool {
    const RTM_DELADDR: u16 = 21;
    const RTM_DELROUTE: u16 = 25;
    const NLH: usize = 16;
    while msgs.len() >= NLH {
        let len = u32::from_ne_bytes([msgs[0], msgs[1], msgs[2], msgs[3]]) as usize;
        let kind = u16::from_ne_bytes([msgs[4], msgs[5]]);
        if len < NLH || len > msgs.len() {
            return true;
        }
        match kind {
            RTM_NEWADDR | RTM_DELADDR => return true,
            // struct rtmsg: family, dst_len, ...: a default route has dst_len 0.
            RTM_NEWROUTE | RTM_DELROUTE if msgs.get(NLH + 1) == Some(&0) => return true,
            _ => {}
        }
        msgs = &msgs[((len + 3) & !3).min(msgs.len())..];
    }
    false
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
