//! The lab's wire: a fast sender and a counting receiver, shared by the traffic, control-plane
//! and expiry sections.
//!
//! The sender writes pre-built Ethernet frames to a packet socket on the sender's end of the
//! veth pair, in batches with `sendmmsg` and with `PACKET_QDISC_BYPASS`. No UDP, routing or
//! neighbour work happens per packet on the sending side, so more of the sending CPU goes to the
//! receive path being measured: on the reference VM it delivers 1.4× what a UDP socket with
//! `sendmmsg` does (median of 20 paired 100 ms floods). On a veth pair the receive path (XDP,
//! netfilter, UDP delivery) runs in the softirq of the sending CPU, so the rate the sender
//! reaches *is* the cost of that path.
//!
//! Every datagram carries a magic and the `CLOCK_BOOTTIME` time it was sent: the clock the XDP
//! program judges expiry by. The receiver can then tell when a source started or stopped getting
//! through with the sender's precision rather than with its own wake-ups.
//!
//! The receiver is one UDP socket read with `recvmmsg`. Every source lives in the lab's
//! 192.0.2.0/24, so callers index per-source state by the last octet.

use std::{
    io,
    mem::{size_of, size_of_val, zeroed},
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use enforcer::datapath::clock::boottime_ns;
use enforcer_tests::{
    Lab, Netns, RECEIVER_IF, RECEIVER_V4, SENDER_IF,
    packet::{Sender, is_transient, mac, set_int},
};

/// Marks the harness's datagrams (anything else arriving is ignored).
const MAGIC: [u8; 8] = *b"enfbench";
/// Ethernet + IPv4 + UDP headers.
const HEADERS: usize = 14 + 20 + 8;
/// Magic and send time.
const PAYLOAD: usize = 16;
/// Frames per `sendmmsg`.
const BATCH: usize = 64;
/// Datagrams per `recvmmsg`.
const RECV_BATCH: usize = 256;

/// The receiver socket's buffer: large enough that a slow wake-up of the reading thread is not
/// mistaken for filtering.
const RCVBUF: libc::c_int = 64 << 20;

/// The addresses and port frames are built for.
struct Link {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    dst: Ipv4Addr,
    port: u16,
}

/// A sender and a receiver on one lab.
pub(crate) struct Wire {
    pub sender: Sender,
    pub receiver: Receiver,
    link: Link,
}

impl Wire {
    /// Opens a packet socket on the sender's veth end and a UDP socket on the receiver's address.
    pub(crate) fn new(lab: &Lab) -> Result<Self> {
        let receiver = Receiver::open(&lab.receiver, RECEIVER_V4.parse()?)?;
        let link = Link {
            src_mac: mac(&lab.sender, SENDER_IF)?,
            dst_mac: mac(&lab.receiver, RECEIVER_IF)?,
            dst: RECEIVER_V4.parse()?,
            port: receiver.port,
        };
        let sender = Sender::open(&lab.sender, SENDER_IF)?;
        sender.bypass_qdisc()?;
        Ok(Self {
            sender,
            receiver,
            link,
        })
    }

    /// A UDP datagram from `src` to the receiver's socket, as an Ethernet frame.
    pub(crate) fn frame(&self, src: Ipv4Addr) -> Vec<u8> {
        let l = &self.link;
        let mut f = Vec::with_capacity(HEADERS + PAYLOAD);
        f.extend_from_slice(&l.dst_mac);
        f.extend_from_slice(&l.src_mac);
        f.extend_from_slice(&0x0800u16.to_be_bytes());
        let total = (20 + 8 + PAYLOAD) as u16;
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[6] = 0x40; // don't fragment
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&l.dst.octets());
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&l.port.to_be_bytes());
        f.extend_from_slice(&((8 + PAYLOAD) as u16).to_be_bytes());
        // UDP checksum 0: none (allowed for IPv4), so stamping the payload needs no fix-up.
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(&MAGIC);
        f.extend_from_slice(&0u64.to_ne_bytes());
        f
    }
}

/// Writes the send time into a frame made by [`Wire::frame`].
pub(crate) fn stamp(frame: &mut [u8], boot_ns: u64) {
    frame[HEADERS + 8..].copy_from_slice(&boot_ns.to_ne_bytes());
}

/// One's-complement sum of 16-bit words (the IPv4 header checksum).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A UDP socket on the receiver's address.
pub(crate) struct Receiver {
    sock: UdpSocket,
    port: u16,
}

/// How the reading thread waits for datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Poll without sleeping (floods: the reader has a CPU of its own).
    Spin,
    /// Sleep until something arrives (probes: the CPU is shared with the daemon).
    Block,
}

/// One datagram as the receiver saw it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Arrival {
    /// The source address's last octet (every source is in 192.0.2.0/24).
    pub source: u8,
    /// The `CLOCK_BOOTTIME` time the sender stamped.
    pub sent_ns: u64,
}

impl Receiver {
    fn open(ns: &Netns, addr: Ipv4Addr) -> Result<Self> {
        let sock = ns.run(move || UdpSocket::bind(SocketAddr::from((addr, 0))))??;
        // SO_RCVBUFFORCE (root) is not capped by net.core.rmem_max.
        set_int(&sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, RCVBUF)?;
        // Bounded waits, so the reading thread notices when it should stop.
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        let port = sock.local_addr()?.port();
        Ok(Self { sock, port })
    }

    /// How many datagrams the socket has dropped since it was opened because its buffer was
    /// full (`SK_MEMINFO_DROPS`): loss that is the reader's, not a filter's.
    pub(crate) fn overflows(&self) -> Result<u64> {
        let mut info = [0u32; 16];
        let mut len = size_of_val(&info) as libc::socklen_t;
        // SAFETY: the buffer and its length are valid; the kernel writes at most `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MEMINFO,
                info.as_mut_ptr().cast(),
                &raw mut len,
            )
        };
        ensure!(
            rc == 0,
            "getsockopt(SO_MEMINFO): {}",
            io::Error::last_os_error()
        );
        Ok(u64::from(info[libc::SK_MEMINFO_DROPS as usize]))
    }

    /// Calls `on` for every datagram of the harness until `stop` is set, then for what is still
    /// queued. Stray datagrams (no magic) are skipped.
    ///
    /// [`Wait::Spin`] never sleeps: a sleeping reader must be woken for each datagram, and that
    /// wake-up is paid on the *sending* CPU, by the receive path being measured, unevenly.
    pub(crate) fn run(
        &self,
        stop: &AtomicBool,
        wait: Wait,
        mut on: impl FnMut(Arrival),
    ) -> Result<()> {
        let mut bufs = [[0u8; 64]; RECV_BATCH];
        // SAFETY: all-zero sockaddr_in is valid.
        let mut names: [libc::sockaddr_in; RECV_BATCH] = unsafe { zeroed() };
        let mut iov: Vec<libc::iovec> = bufs
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: all-zero mmsghdr is valid.
        let mut msgs: [libc::mmsghdr; RECV_BATCH] = unsafe { zeroed() };
        for ((m, iov), name) in msgs.iter_mut().zip(iov.iter_mut()).zip(names.iter_mut()) {
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m.msg_hdr.msg_name = (name as *mut libc::sockaddr_in).cast();
        }
        let mut draining = false;
        loop {
            if !draining && stop.load(Ordering::Relaxed) {
                draining = true;
            }
            for m in &mut msgs {
                m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
            }
            let flags = if draining || wait == Wait::Spin {
                libc::MSG_DONTWAIT
            } else {
                libc::MSG_WAITFORONE
            };
            // SAFETY: every header points at live buffers and address slots of the stated sizes.
            let n = unsafe {
                libc::recvmmsg(
                    self.sock.as_raw_fd(),
                    msgs.as_mut_ptr(),
                    RECV_BATCH as u32,
                    flags,
                    std::ptr::null_mut(),
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN | libc::EINTR) if draining => return Ok(()),
                    Some(libc::EAGAIN | libc::EINTR) => continue,
                    _ => return Err(e).context("recvmmsg"),
                }
            }
            for i in 0..n as usize {
                let len = msgs[i].msg_len as usize;
                let data = &bufs[i][..len.min(64)];
                if len < PAYLOAD || data[..8] != MAGIC {
                    continue;
                }
                let sent_ns = u64::from_ne_bytes(data[8..16].try_into().expect("8 bytes"));
                let source = u32::from_be(names[i].sin_addr.s_addr).to_be_bytes()[3];
                on(Arrival { source, sent_ns });
            }
        }
    }
}

/// Pins the calling thread to one CPU, so the sender and the receiver do not trade places
/// between measurements.
pub(crate) fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes inside it; 0 means this thread.
    unsafe {
        let mut set: libc::cpu_set_t = zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// `CLOCK_BOOTTIME` now, re-exported for the sections that stamp and compare.
pub(crate) fn now_ns() -> u64 {
    boottime_ns()
}

/// Adds 192.0.2.`octets` to the sender's veth, so that probes come from addresses the lab
/// owns. The namespace goes away with the lab, and the addresses with it.
pub(crate) fn add_sources(lab: &Lab, octets: std::ops::Range<u8>) -> Result<Vec<Ipv4Addr>> {
    use std::io::Write as _;
    let addrs: Vec<Ipv4Addr> = octets.map(|o| Ipv4Addr::new(192, 0, 2, o)).collect();
    let mut batch = String::new();
    for a in &addrs {
        batch.push_str(&format!("address add {a}/24 dev {SENDER_IF}\n"));
    }
    let mut child = std::process::Command::new("ip")
        .args(["-n", lab.sender.name(), "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("running ip -batch")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(batch.as_bytes())?;
    ensure!(
        child.wait()?.success(),
        "adding probe sources to {SENDER_IF} failed"
    );
    Ok(addrs)
}

/// Periodic probes: every interval, one stamped datagram from each active source, in one
/// `sendmmsg`. Run [`Probes::run`] on a thread of its own and steer it from another.
pub(crate) struct Probes {
    active: [AtomicBool; 256],
    stop: AtomicBool,
    /// Probes sent so far.
    pub sent: std::sync::atomic::AtomicU64,
}

impl Probes {
    pub(crate) fn new() -> Self {
        Self {
            active: std::array::from_fn(|_| AtomicBool::new(false)),
            stop: AtomicBool::new(false),
            sent: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Starts or stops probing from 192.0.2.`octet`.
    pub(crate) fn set(&self, octet: u8, on: bool) {
        self.active[usize::from(octet)].store(on, Ordering::Relaxed);
    }

    /// Ends [`Probes::run`].
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Sends until [`Probes::stop`]. The interval is a target: a late tick sends at once and
    /// does not try to catch up.
    pub(crate) fn run(&self, wire: &Wire, interval: Duration) -> Result<()> {
        let mut frames: Vec<Vec<u8>> = (0..=255u8)
            .map(|o| wire.frame(Ipv4Addr::new(192, 0, 2, o)))
            .collect();
        let mut next = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let now = now_ns();
            let mut batch: Vec<&[u8]> = Vec::new();
            for (octet, frame) in frames.iter_mut().enumerate() {
                if self.active[octet].load(Ordering::Relaxed) {
                    stamp(frame, now);
                    batch.push(frame);
                }
            }
            for chunk in batch.chunks(BATCH) {
                match wire.sender.send(chunk) {
                    Ok(n) => {
                        self.sent.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if is_transient(&e) => {}
                    Err(e) => return Err(e).context("sending probes"),
                }
            }
            next += interval;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                next = now;
            }
        }
        Ok(())
    }
}
