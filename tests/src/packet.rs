//! Packet sockets on a lab's veth ends: a sender of pre-built Ethernet frames (the flood's and
//! the bench's), the socket and bind every packet socket here shares, and the MAC addresses
//! frames are built for.

use std::{
    ffi::CString,
    io,
    mem::{size_of, zeroed},
    os::fd::{AsRawFd, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use crate::Netns;

/// The MAC address of `iface` in `ns`, from `ip -j link`.
pub fn mac(ns: &Netns, iface: &str) -> Result<[u8; 6]> {
    let out = ns.ip(&["-j", "link", "show", "dev", iface])?;
    let json: serde_json::Value = serde_json::from_str(&out)?;
    let text = json[0]["address"]
        .as_str()
        .with_context(|| format!("no MAC address for {iface}"))?;
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

/// A packet socket of `kind` (`SOCK_RAW` or `SOCK_DGRAM`, with flags) bound to `iface` in the
/// calling thread's namespace, for frames of `ethertype` (0: none, so it receives nothing and
/// never queues copies of the traffic).
pub(crate) fn bound_socket(iface: &str, kind: libc::c_int, ethertype: u16) -> Result<OwnedFd> {
    let name = CString::new(iface)?;
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(ifindex != 0, "no interface {iface}");
    let protocol = ethertype.to_be();
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, kind, i32::from(protocol)) };
    ensure!(fd >= 0, "packet socket: {}", io::Error::last_os_error());
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
    let mut addr: libc::sockaddr_ll = unsafe { zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: a valid address of the right size on our socket.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    ensure!(
        rc == 0,
        "binding the packet socket to {iface}: {}",
        io::Error::last_os_error()
    );
    Ok(fd)
}

/// Sets an `int` socket option.
pub fn set_int(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> Result<()> {
    // SAFETY: a valid int option value of the right size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as u32,
        )
    };
    ensure!(
        rc == 0,
        "setsockopt({level}, {name}): {}",
        io::Error::last_os_error()
    );
    Ok(())
}

/// A packet socket bound to one interface that sends pre-built Ethernet frames with
/// `sendmmsg`: no UDP, routing or neighbour work per frame on the sending side.
pub struct Sender {
    fd: OwnedFd,
}

impl Sender {
    /// Frames per `sendmmsg` in [`Sender::blast`].
    const BLAST_BATCH: usize = 64;

    /// A sender on `iface` in `ns`.
    pub fn open(ns: &Netns, iface: &str) -> Result<Self> {
        let iface = iface.to_owned();
        let fd = ns.run(move || bound_socket(&iface, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0))??;
        Ok(Self { fd })
    }

    /// Hands frames to the driver directly, past the interface's queueing discipline
    /// (`PACKET_QDISC_BYPASS`): more of the sending CPU goes to the receive path.
    pub fn bypass_qdisc(&self) -> Result<()> {
        set_int(&self.fd, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, 1)
    }

    /// Sends the frames with one `sendmmsg`; returns how many the kernel took.
    pub fn send(&self, frames: &[&[u8]]) -> io::Result<usize> {
        let mut iov: Vec<libc::iovec> = frames
            .iter()
            .map(|f| libc::iovec {
                iov_base: f.as_ptr().cast_mut().cast(),
                iov_len: f.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iov
            .iter_mut()
            .map(|iov| {
                // SAFETY: all-zero mmsghdr is valid (no name, no control data).
                let mut m: libc::mmsghdr = unsafe { zeroed() };
                m.msg_hdr.msg_iov = iov;
                m.msg_hdr.msg_iovlen = 1;
                m
            })
            .collect();
        self.sendmmsg(&mut msgs)
    }

    fn sendmmsg(&self, msgs: &mut [libc::mmsghdr]) -> io::Result<usize> {
        // SAFETY: every header points to a live iovec over a live frame.
        let n =
            unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Sends `frame` as fast as possible for `duration`; returns how many frames the kernel took.
    pub fn blast(&self, frame: &[u8], duration: Duration) -> Result<u64> {
        let mut iov = [libc::iovec {
            iov_base: frame.as_ptr().cast_mut().cast(),
            iov_len: frame.len(),
        }; Self::BLAST_BATCH];
        // SAFETY: all-zero mmsghdr is valid.
        let mut msgs: [libc::mmsghdr; Self::BLAST_BATCH] = unsafe { zeroed() };
        for (m, iov) in msgs.iter_mut().zip(iov.iter_mut()) {
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        let end = Instant::now() + duration;
        let mut sent = 0u64;
        while Instant::now() < end {
            match self.sendmmsg(&mut msgs) {
                Ok(n) => sent += n as u64,
                Err(e) if is_transient(&e) => {}
                Err(e) => return Err(e).context("sendmmsg"),
            }
        }
        Ok(sent)
    }
}

/// A full queue or a signal: the send is worth trying again.
pub fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR)
    )
}
