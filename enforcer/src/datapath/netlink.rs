//! Asks the kernel (rtnetlink `RTM_GETLINK`) which XDP program an interface runs, and in which mode.
//!
//! aya attaches and replaces programs but cannot say what is already attached. We need that to
//! report the mode in use and to refuse, naming it, to touch a program we did not attach.

use std::{io, mem, os::fd::FromRawFd as _, os::fd::OwnedFd, os::fd::AsRawFd as _};

/// How an XDP program runs on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachedMode {
    /// In the driver, before any socket buffer exists.
    Native,
    /// Generic XDP, after the kernel built a socket buffer (slower; works everywhere).
    Skb,
    /// Offloaded to the NIC.
    Hw,
}

impl std::fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Native => "native",
            Self::Skb => "skb",
            Self::Hw => "hw",
        })
    }
}

/// The XDP state of one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpState {
    /// Id of the attached program, if any.
    pub prog_id: Option<u32>,
    /// Mode of the attached program, if any.
    pub mode: Option<AttachedMode>,
}

const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_PROG_ID: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

#[repr(C)]
struct Request {
    nlh: libc::nlmsghdr,
    ifi: libc::ifinfomsg,
}

/// Queries the XDP program attached to `ifindex` in the calling thread's network namespace.
pub fn query_xdp(ifindex: u32) -> io::Result<XdpState> {
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, valid descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };

    // SAFETY: all-zero is a valid value for these C structs.
    let mut req: Request = unsafe { mem::zeroed() };
    req.nlh.nlmsg_len = mem::size_of::<Request>() as u32;
    req.nlh.nlmsg_type = libc::RTM_GETLINK;
    req.nlh.nlmsg_flags = libc::NLM_F_REQUEST as u16;
    req.nlh.nlmsg_seq = 1;
    req.ifi.ifi_family = libc::AF_UNSPEC as u8;
    req.ifi.ifi_index = ifindex as i32;
    // SAFETY: sending a fully initialised, correctly sized buffer.
    let sent = unsafe {
        libc::send(fd.as_raw_fd(), (&raw const req).cast(), mem::size_of::<Request>(), 0)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }

    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: receiving into a buffer of the given length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    parse_reply(&buf[..n as usize])
}

/// Sends a dump request (`NLM_F_DUMP`) of `kind` with the family header `header`, and returns
/// every reply message as (type, payload after the netlink header).
pub(crate) fn dump(kind: u16, header: &[u8]) -> io::Result<Vec<(u16, Vec<u8>)>> {
    // SAFETY: plain socket(2) call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let nlh_len = mem::size_of::<libc::nlmsghdr>();
    let mut req = vec![0u8; nlh_len + header.len()];
    let total = req.len() as u32;
    req[0..4].copy_from_slice(&total.to_ne_bytes());
    req[4..6].copy_from_slice(&kind.to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[nlh_len..].copy_from_slice(header);
    // SAFETY: valid buffer.
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receiving into a buffer of the given length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut msg = &buf[..n as usize];
        while msg.len() >= nlh_len {
            let len = read_u32(msg, 0).unwrap_or(0) as usize;
            let kind = read_u16(msg, 4).unwrap_or(0);
            if len < nlh_len || len > msg.len() {
                return Err(bad("truncated message"));
            }
            if kind == libc::NLMSG_DONE as u16 {
                return Ok(out);
            }
            if kind == libc::NLMSG_ERROR as u16 {
                let errno = read_u32(msg, nlh_len).unwrap_or(0) as i32;
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(-errno));
                }
            } else {
                out.push((kind, msg[nlh_len..len].to_vec()));
            }
            msg = &msg[((len + 3) & !3).min(msg.len())..];
        }
    }
}

fn read_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed rtnetlink reply: {what}"))
}

fn parse_reply(msg: &[u8]) -> io::Result<XdpState> {
    let nlh_len = mem::size_of::<libc::nlmsghdr>();
    let len = read_u32(msg, 0).ok_or_else(|| bad("short header"))? as usize;
    let kind = read_u16(msg, 4).ok_or_else(|| bad("short header"))?;
    if kind == libc::NLMSG_ERROR as u16 {
        let errno = read_u32(msg, nlh_len).ok_or_else(|| bad("short error"))? as i32;
        return Err(io::Error::from_raw_os_error(-errno));
    }
    if kind != libc::RTM_NEWLINK {
        return Err(bad("unexpected message type"));
    }
    let attrs_start = nlh_len + mem::size_of::<libc::ifinfomsg>();
    let attrs = msg.get(attrs_start..len.min(msg.len())).ok_or_else(|| bad("short message"))?;
    let mut state = XdpState { prog_id: None, mode: None };
    for (kind, payload) in Attrs(attrs) {
        if kind != IFLA_XDP {
            continue;
        }
        for (kind, value) in Attrs(payload) {
            match kind {
                IFLA_XDP_ATTACHED => {
                    state.mode = match value.first() {
                        Some(1) => Some(AttachedMode::Native),
                        Some(2) => Some(AttachedMode::Skb),
                        Some(3) => Some(AttachedMode::Hw),
                        _ => None,
                    }
                }
                IFLA_XDP_PROG_ID => state.prog_id = read_u32(value, 0).filter(|id| *id != 0),
                _ => {}
            }
        }
    }
    Ok(state)
}

/// Iterator over netlink attributes: (type, payload).
pub(crate) struct Attrs<'a>(pub(crate) &'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let len = read_u16(self.0, 0)? as usize;
        let kind = read_u16(self.0, 2)? & NLA_TYPE_MASK;
        if len < 4 || len > self.0.len() {
            return None;
        }
        let payload = &self.0[4..len];
        let aligned = (len + 3) & !3;
        self.0 = self.0.get(aligned..).unwrap_or(&[]);
        Some((kind, payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_no_xdp_program() {
        // Loopback is ifindex 1 in every network namespace.
        let state = query_xdp(1).expect("RTM_GETLINK on lo");
        assert_eq!(state, XdpState { prog_id: None, mode: None });
    }
}
