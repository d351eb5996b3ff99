//! A flood for the lab (issue 23): a packet socket on the sender's end of the veth pair that
//! sends pre-built Ethernet frames with `sendmmsg`, in its own thread, at a set rate or as fast
//! as it can, until stopped (or dropped). Frames carry the real MAC addresses of the pair, so
//! the receiver's stack takes them as it would a real attacker's.

use std::{
    io,
    mem::{size_of, zeroed},
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};

use crate::{Lab, Netns, RECEIVER_IF, RECEIVER_V4, RECEIVER_V6, SENDER_IF, frame};

/// Frames per `sendmmsg`.
const BATCH: usize = 32;

/// The MAC address of `iface` in `ns`.
fn mac(ns: &Netns, iface: &str) -> Result<[u8; 6]> {
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

/// Builds frames for the lab's link: from the sender's MAC to the receiver's.
pub struct Frames {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
}

impl Frames {
    /// The lab's MAC addresses.
    pub fn new(lab: &Lab) -> Result<Self> {
        Ok(Self {
            src_mac: mac(&lab.sender, SENDER_IF)?,
            dst_mac: mac(&lab.receiver, RECEIVER_IF)?,
        })
    }

    /// A UDP datagram from `src` to the receiver's address of its family (port 9, discard).
    pub fn udp(&self, src: IpAddr) -> Vec<u8> {
        let mut f = match src {
            IpAddr::V4(s) => frame::ipv4_udp(&[], s, RECEIVER_V4.parse().expect("valid"), 0, false),
            IpAddr::V6(s) => frame::ipv6_udp(&[], s, RECEIVER_V6.parse().expect("valid")),
        };
        f[..6].copy_from_slice(&self.dst_mac);
        f[6..12].copy_from_slice(&self.src_mac);
        f
    }
}

/// A packet socket bound to the sender's end of the pair (in the sender's namespace).
fn packet_socket(ns: &Netns) -> Result<OwnedFd> {
    let iface = std::ffi::CString::new(SENDER_IF)?;
    ns.run(move || -> Result<OwnedFd> {
        // SAFETY: plain socket(2); the descriptor is owned right away. Protocol 0: it receives
        // nothing.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        ensure!(fd >= 0, "packet socket: {}", io::Error::last_os_error());
        // SAFETY: a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: valid C string.
        let ifindex = unsafe { libc::if_nametoindex(iface.as_ptr()) };
        ensure!(ifindex != 0, "no interface {iface:?}");
        // SAFETY: all-zero sockaddr_ll is valid; the fields that matter are set.
        let mut addr: libc::sockaddr_ll = unsafe { zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: a valid address of the right length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        ensure!(
            rc == 0,
            "binding the packet socket: {}",
            io::Error::last_os_error()
        );
        Ok(fd)
    })?
}

/// Sends `frames[first..]` in one `sendmmsg` (at most [`BATCH`]); returns how many went.
fn send_batch(fd: &OwnedFd, frames: &[Vec<u8>]) -> io::Result<usize> {
    let mut iov: Vec<libc::iovec> = frames
        .iter()
        .take(BATCH)
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
    // SAFETY: every header points to a live iovec over a live frame.
    let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as u32, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Sends every frame once, as fast as the link takes them; returns how many went.
pub fn burst(lab: &Lab, frames: &[Vec<u8>]) -> Result<u64> {
    let fd = packet_socket(&lab.sender)?;
    let mut sent = 0;
    while sent < frames.len() {
        match send_batch(&fd, &frames[sent..]) {
            Ok(n) => sent += n,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR)
                ) =>
            {
                std::thread::yield_now();
            }
            Err(e) => return Err(e).context("sendmmsg"),
        }
    }
    Ok(sent as u64)
}

/// A flood running in its own thread until [`Flood::stop`] or drop.
pub struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    started: Instant,
    thread: Option<JoinHandle<Result<()>>>,
}

impl Flood {
    /// Sends `frame` from the lab's sender at `rate` frames per second (in batches, paced
    /// against the clock), until stopped.
    pub fn start(lab: &Lab, frame: Vec<u8>, rate: u64) -> Result<Self> {
        let fd = packet_socket(&lab.sender)?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let thread = {
            let (stop, sent) = (stop.clone(), sent.clone());
            std::thread::spawn(move || -> Result<()> {
                let frames = vec![frame; BATCH];
                while !stop.load(Ordering::Relaxed) {
                    let due = u128::from(rate) * started.elapsed().as_micros() / 1_000_000;
                    if u128::from(sent.load(Ordering::Relaxed)) >= due {
                        std::thread::sleep(Duration::from_micros(200));
                        continue;
                    }
                    match send_batch(&fd, &frames) {
                        Ok(n) => {
                            sent.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(e)
                            if matches!(
                                e.raw_os_error(),
                                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR)
                            ) => {}
                        Err(e) => return Err(e).context("sendmmsg"),
                    }
                }
                Ok(())
            })
        };
        Ok(Self {
            stop,
            sent,
            started,
            thread: Some(thread),
        })
    }

    /// When the flood started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Frames sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the flood; returns how many frames it sent.
    pub fn stop(mut self) -> Result<u64> {
        self.halt()?;
        Ok(self.sent())
    }

    fn halt(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|_| anyhow::anyhow!("the flood's thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        // Nowhere to report in drop: `Flood::stop` returns the error.
        self.halt().ok();
    }
}
