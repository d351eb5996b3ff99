//! Test fixtures: network-namespace labs joined by veth pairs, bpffs pin directories, crafted
//! frames, and traffic helpers.
//!
//! Every fixture is a guard that removes what it created when dropped, pass or fail, and every
//! name is unique, so tests run in parallel. Traffic only ever flows between the namespaces a
//! lab creates, on documentation addresses.

pub mod accounts;
pub mod crowdsec;
pub mod daemon;
pub mod execd;
pub mod flood;
pub mod frame;
pub mod metrics;
pub mod packet;
pub mod previous;
pub mod tun;

use std::{
    fs::File,
    io,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

/// A name no other fixture in any process uses: `<prefix><pid>x<counter>` (short: interface and
/// namespace names are limited).
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The environment variable naming the file where fixtures note what they create
/// (`cargo xtask test` sets it and checks, once every test has run, that all of it is gone;
/// every process started under it inherits it, which is how leftover processes are found).
pub const LEDGER_ENV: &str = "ENFORCER_TEST_LEDGER";

/// Notes in the ledger (when there is one) that a fixture created `what` of `kind`
/// (`netns NAME`, `pin PATH`), one line appended in one write.
pub fn record_created(kind: &str, what: &str) {
    use std::io::Write as _;
    let Some(path) = std::env::var_os(LEDGER_ENV) else {
        return;
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path);
    if let Ok(mut file) = file {
        // The ledger is a check after the run; a fixture does not fail over it.
        file.write_all(format!("{kind} {what}\n").as_bytes()).ok();
    }
}

/// Runs a command, failing with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the daemon under test has the debug-build test hooks (`ENFORCER_TEST_*`: engine and
/// commit stalls, failed commits, a young boot): the labs run `target/<profile>/enforcer` of
/// their own profile (or of `ENFORCER_TEST_DAEMON_PROFILE`'s), and a release build
/// (`cargo xtask test --release`, or the release labs of `cargo xtask test`) has none. A test
/// that needs them prints one line saying so, naming itself (libtest names the thread that runs
/// a test after it), and returns.
#[must_use]
pub fn test_hooks_or_skip() -> bool {
    use std::io::Write as _;
    if daemon::daemon_is_debug_build() {
        return true;
    }
    let thread = std::thread::current();
    // Straight to stderr, past libtest's capture of a passing test's output: `cargo test` shows
    // the line, and `cargo xtask test` counts the test as skipped by it.
    writeln!(
        io::stderr(),
        "skipped {}: it needs the daemon's debug-build test hooks, which a release build does not have",
        thread.name().unwrap_or("this test")
    )
    .ok(); // Nowhere to say that stderr is gone.
    false
}

/// Whether this process may do what the kernel tests need (root: BPF, netns, XDP).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests load XDP programs and create network namespaces: run them as root (`cargo xtask test`)"
    );
}

/// A network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace with a unique name and loopback up.
    pub fn new(prefix: &str) -> Result<Self> {
        let name = unique_name(prefix);
        run("ip", &["netns", "add", &name])?;
        record_created("netns", &name);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs a command inside the namespace (`ip netns exec`).
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut full = vec!["netns", "exec", self.name.as_str(), program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered the namespace. Sockets created there stay in the
    /// namespace and can be used from any thread afterwards.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        in_netns(&self.name, f)
    }
}

/// Runs `f` on a thread that has entered the network namespace `name` (`ip netns` names it).
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = format!("/run/netns/{name}");
    std::thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            let file = File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: setns on a valid namespace fd; affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(io::Error::last_os_error()).context("setns");
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in namespace {name} panicked"))?
    })
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Best effort in drop: `cargo xtask test` reports (and removes) what stays.
        Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
            .ok();
    }
}

/// A directory on bpffs for one test's pins, removed (with everything pinned in it) on drop.
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// A fresh directory under /sys/fs/bpf.
    pub fn new() -> Result<Self> {
        let path = PathBuf::from("/sys/fs/bpf").join(unique_name("enforcer-test-"));
        record_created("pin", &path.display().to_string());
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// An XDP program and its maps, loaded (not attached) in a pin directory of their own; both
/// are gone when it is dropped, pass or fail.
pub struct LoadedDatapath {
    /// The program and its maps (dropped before the pins).
    pub dp: enforcer::datapath::Datapath,
    _pins: PinDir,
}

impl LoadedDatapath {
    /// Small maps (1,024 addresses and prefixes per family, 64 allowlist entries), block hits
    /// counted: enough for a property test or a microbenchmark.
    pub fn small() -> Result<Self> {
        Self::with(
            enforcer::datapath::Capacity {
                addresses: 1024,
                prefixes: 1024,
                allow: 64,
            },
            true,
        )
    }

    /// Maps of `capacity`, with or without the per-block hit counters.
    pub fn with(capacity: enforcer::datapath::Capacity, count_block_hits: bool) -> Result<Self> {
        let pins = PinDir::new()?;
        let dp = enforcer::datapath::Datapath::open(&enforcer::datapath::DatapathOptions {
            bpffs_dir: pins.path().to_owned(),
            capacity,
            count_block_hits,
            ..Default::default()
        })
        .context("loading the XDP program")?;
        Ok(Self { dp, _pins: pins })
    }
}

/// A child process killed (and reaped) when dropped, pass or fail.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // It may have exited already; reaped either way.
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        // Best effort in drop: `cargo xtask test` reports (and removes) what stays.
        std::fs::remove_dir_all(&self.path).ok();
    }
}

/// The standard two-host lab.
///
/// ```text
///   sender ns  [va] 192.0.2.1/24, .10, .11, 2001:db8::1/64, ::10, ::11
///        |  veth
///   receiver ns [vb] 192.0.2.2/24, 2001:db8::2/64    <- XDP attaches here
/// ```
pub struct Lab {
    /// Where traffic comes from.
    pub sender: Netns,
    /// Where the XDP program runs.
    pub receiver: Netns,
    /// Pins of this lab.
    pub pins: PinDir,
}

/// The sender-side interface.
pub const SENDER_IF: &str = "va";
/// The receiver-side interface (XDP attaches here).
pub const RECEIVER_IF: &str = "vb";
/// The receiver's IPv4 address.
pub const RECEIVER_V4: &str = "192.0.2.2";
/// The receiver's IPv6 address.
pub const RECEIVER_V6: &str = "2001:db8::2";
/// How long [`Lab::passes`] waits for its control frame, which follows the datagrams on the
/// link: far above any delay seen under load, since a pass normally ends as soon as the last
/// datagram (or the control) is in.
const CONTROL_WAIT: Duration = Duration::from_secs(10);
/// How long [`Lab::passes`] keeps counting after the control frame arrived, for datagrams the
/// receiver's stack handled on another CPU (without native XDP the veth queues per CPU).
const CONTROL_GRACE: Duration = Duration::from_millis(100);
/// Sender addresses: index 0 is primary; the others are extra sources tests can block.
pub const SENDER_V4: [&str; 3] = ["192.0.2.1", "192.0.2.10", "192.0.2.11"];
/// Sender IPv6 addresses.
pub const SENDER_V6: [&str; 3] = ["2001:db8::1", "2001:db8::10", "2001:db8::11"];

impl Lab {
    /// Builds the lab: two namespaces, a veth pair, addresses, static neighbours (no ARP/ND
    /// traffic muddles packet counts).
    pub fn new() -> Result<Self> {
        let sender = Netns::new("enfs")?;
        let receiver = Netns::new("enfr")?;
        sender.ip(&[
            "link",
            "add",
            SENDER_IF,
            "type",
            "veth",
            "peer",
            "name",
            RECEIVER_IF,
            "netns",
            receiver.name(),
        ])?;
        for a in SENDER_V4 {
            sender.ip(&["addr", "add", &format!("{a}/24"), "dev", SENDER_IF])?;
        }
        for a in SENDER_V6 {
            sender.ip(&["addr", "add", &format!("{a}/64"), "dev", SENDER_IF, "nodad"])?;
        }
        receiver.ip(&[
            "addr",
            "add",
            &format!("{RECEIVER_V4}/24"),
            "dev",
            RECEIVER_IF,
        ])?;
        receiver.ip(&[
            "addr",
            "add",
            &format!("{RECEIVER_V6}/64"),
            "dev",
            RECEIVER_IF,
            "nodad",
        ])?;
        sender.ip(&["link", "set", SENDER_IF, "up"])?;
        receiver.ip(&["link", "set", RECEIVER_IF, "up"])?;
        let mac = |ns: &Netns, dev: &str| -> Result<String> {
            let out = ns.ip(&["-br", "link", "show", dev])?;
            out.split_whitespace()
                .nth(2)
                .map(str::to_owned)
                .context("no MAC address in `ip -br link`")
        };
        let sender_mac = mac(&sender, SENDER_IF)?;
        let receiver_mac = mac(&receiver, RECEIVER_IF)?;
        sender.ip(&[
            "neigh",
            "replace",
            RECEIVER_V4,
            "lladdr",
            &receiver_mac,
            "dev",
            SENDER_IF,
            "nud",
            "permanent",
        ])?;
        sender.ip(&[
            "neigh",
            "replace",
            RECEIVER_V6,
            "lladdr",
            &receiver_mac,
            "dev",
            SENDER_IF,
            "nud",
            "permanent",
        ])?;
        for a in SENDER_V4.iter().chain(SENDER_V6.iter()) {
            receiver.ip(&[
                "neigh",
                "replace",
                a,
                "lladdr",
                &sender_mac,
                "dev",
                RECEIVER_IF,
                "nud",
                "permanent",
            ])?;
        }
        Ok(Self {
            sender,
            receiver,
            pins: PinDir::new()?,
        })
    }

    /// A UDP socket bound in the receiver namespace on `addr` (any port).
    pub fn udp_listener(&self, addr: &str) -> Result<UdpSocket> {
        let addr: IpAddr = addr.parse()?;
        let sock = self
            .receiver
            .run(move || UdpSocket::bind(SocketAddr::new(addr, 0)))??;
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        Ok(sock)
    }

    /// A UDP socket bound in the receiver namespace on `addr`, port `port`.
    pub fn udp_listener_on(&self, addr: &str, port: u16) -> Result<UdpSocket> {
        let addr: IpAddr = addr.parse()?;
        let sock = self
            .receiver
            .run(move || UdpSocket::bind(SocketAddr::new(addr, port)))??;
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        Ok(sock)
    }

    /// A UDP socket in the sender namespace bound to source `src`.
    pub fn udp_sender(&self, src: &str) -> Result<UdpSocket> {
        let src: IpAddr = src.parse()?;
        Ok(self
            .sender
            .run(move || UdpSocket::bind(SocketAddr::new(src, 0)))??)
    }

    /// How many of 10 tagged datagrams sent from `src` reach the receiver's address of the same
    /// family: 10 when `src` passes, 0 when it is dropped. A control frame sent after them on
    /// the same link (not IP, so no block drops it) marks the end of the window: a datagram
    /// still missing once the control arrived was dropped, not delayed by a loaded machine.
    pub fn passes(&self, src: &str) -> u32 {
        let dst = if src.contains(':') {
            RECEIVER_V6
        } else {
            RECEIVER_V4
        };
        self.passes_to(src, dst)
    }

    /// Like [`Lab::passes`], to the receiver's address `dst`.
    pub fn passes_to(&self, src: &str, dst: &str) -> u32 {
        let exchange = || -> Result<u32> {
            let rx = self.udp_listener(dst)?;
            self.exchange(&self.udp_sender(src)?, &rx, 10)
        };
        exchange().unwrap_or_else(|e| panic!("sending 10 datagrams from {src} to {dst}: {e:#}"))
    }

    /// Sends `count` tagged datagrams from `from` (a sender socket of this lab) to `to` (a
    /// receiver socket), then a control frame on the lab's link, and returns how many datagrams
    /// arrived before the control did (see [`Lab::passes`]). Fails when the control itself
    /// does not arrive within 10 s: the lab is then not delivering, and no count means anything.
    pub fn exchange(&self, from: &UdpSocket, to: &UdpSocket, count: u32) -> Result<u32> {
        let tally = Tally::new(to, 0);
        let dst = to.local_addr()?;
        let send = || -> Result<()> {
            for _ in 0..count {
                from.send_to(&tally.payload(), dst)?;
            }
            Ok(())
        };
        Ok(self.window(send, std::slice::from_ref(&tally), count)?[0])
    }

    /// Runs `send`, then sends a control frame on the lab's link, and returns what each tally
    /// counted before the control arrived (and [`CONTROL_GRACE`] after it), or as soon as every
    /// tally has `enough`. The control crosses the link after every frame `send` put on it, so
    /// a datagram still missing then was dropped, not delayed. Fails when the control does not
    /// arrive within 10 s: the lab is then not delivering, and no count means anything.
    pub fn window(
        &self,
        send: impl FnOnce() -> Result<()>,
        tallies: &[Tally<'_>],
        enough: u32,
    ) -> Result<Vec<u32>> {
        let control = self.receiver.run(|| Control::listen(RECEIVER_IF))??;
        let tag = unique_name("c");
        send()?;
        let frame = Control::frame(&tag);
        self.sender
            .run(|| inject(SENDER_IF, [frame.as_slice()]))??;
        let deadline = Instant::now() + CONTROL_WAIT;
        let mut control_at = None;
        let mut got = vec![0; tallies.len()];
        loop {
            // The control first: once it is in, every datagram sent before it and not dropped
            // is already queued on its socket, and the receive below counts it.
            if control_at.is_none() && control.seen(&tag)? {
                control_at = Some(Instant::now());
            }
            receive_tallied(tallies, &mut got)?;
            match control_at {
                _ if got.iter().all(|&n| n >= enough) => return Ok(got),
                Some(at) if at.elapsed() >= CONTROL_GRACE => return Ok(got),
                None if Instant::now() >= deadline => bail!(
                    "the control frame sent after the datagrams did not arrive within \
                     {CONTROL_WAIT:?} ({got:?} of them did): the lab's link is not \
                     delivering, so this count would not say whether they were dropped"
                ),
                _ => {}
            }
        }
    }

    /// A TCP listener in the receiver namespace.
    pub fn tcp_listener(&self, addr: &str) -> Result<TcpListener> {
        let addr: IpAddr = addr.parse()?;
        Ok(self
            .receiver
            .run(move || TcpListener::bind(SocketAddr::new(addr, 0)))??)
    }

    /// A TCP listener in the receiver namespace on `addr`, port `port`.
    pub fn tcp_listener_on(&self, addr: &str, port: u16) -> Result<TcpListener> {
        let addr: IpAddr = addr.parse()?;
        Ok(self
            .receiver
            .run(move || TcpListener::bind(SocketAddr::new(addr, port)))??)
    }

    /// Whether an ICMP (ICMPv6) echo request from `src` to `dst` gets its reply within
    /// `timeout`.
    pub fn echo(&self, src: &str, dst: &str, timeout: Duration) -> Result<bool> {
        let (src, dst): (IpAddr, IpAddr) = (src.parse()?, dst.parse()?);
        self.sender.run(move || echo_from(src, dst, timeout))?
    }

    /// Tries a TCP connect from source `src` to `dst` within `timeout`.
    pub fn tcp_connect(&self, src: &str, dst: SocketAddr, timeout: Duration) -> Result<bool> {
        let src: IpAddr = src.parse()?;
        self.sender
            .run(move || tcp_connect_from(src, dst, timeout))?
    }
}

fn tcp_connect_from(src: IpAddr, dst: SocketAddr, timeout: Duration) -> Result<bool> {
    let domain = if src.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.bind(&SocketAddr::new(src, 0).into())?;
    match sock.connect_timeout(&dst.into(), timeout) {
        Ok(()) => {
            drop(TcpStream::from(sock));
            Ok(true)
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e).context("tcp connect"),
    }
}

/// Sends one echo request from `src` to `dst` on a raw socket and waits for its reply (same
/// identifier and sequence) until `timeout`.
fn echo_from(src: IpAddr, dst: IpAddr, timeout: Duration) -> Result<bool> {
    use socket2::{Domain, Protocol, Socket, Type};
    let v6 = src.is_ipv6();
    let (domain, protocol, request, reply) = if v6 {
        (Domain::IPV6, Protocol::ICMPV6, 128u8, 129u8)
    } else {
        (Domain::IPV4, Protocol::ICMPV4, 8, 0)
    };
    let sock = Socket::new(domain, Type::RAW, Some(protocol))?;
    sock.bind(&SocketAddr::new(src, 0).into())?;
    // The process tells its requests from other tests' (each runs in a process of its own);
    // the sequence number tells this request from its earlier ones.
    let id = std::process::id() as u16;
    let seq = next_echo_seq();
    let mut msg = vec![request, 0, 0, 0];
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&seq.to_be_bytes());
    msg.extend_from_slice(b"enforcer-echo");
    if !v6 {
        // ICMPv6 raw sockets have the kernel fill the checksum in; ICMP ones do not.
        let sum = frame::checksum(&msg);
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    sock.send_to(&msg, &SocketAddr::new(dst, 0).into())?;
    let deadline = Instant::now() + timeout;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1500];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        // SAFETY: `recv` initialised the first `n` bytes.
        let got: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        // An IPv4 raw socket receives the IP header too; an IPv6 one does not.
        let icmp = if v6 {
            &got[..]
        } else {
            &got[usize::from(got[0] & 0x0f) * 4..]
        };
        if icmp.len() >= 8
            && icmp[0] == reply
            && icmp[4..6] == id.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn next_echo_seq() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What one receiving socket counts in a [`Lab::window`]: the datagrams that carry its tag
/// and are at least `size` bytes long, so that a datagram counts only when it arrived whole.
pub struct Tally<'a> {
    /// The receiving socket (several tallies may share one).
    pub to: &'a UdpSocket,
    tag: String,
    size: usize,
}

impl<'a> Tally<'a> {
    /// A tally of datagrams of `size` bytes (at least the tag's) on `to`, with a fresh tag.
    pub fn new(to: &'a UdpSocket, size: usize) -> Self {
        Self {
            to,
            tag: format!("{}:", unique_name("t")),
            size,
        }
    }

    /// A datagram this tally counts: its tag, padded to its size.
    pub fn payload(&self) -> Vec<u8> {
        let mut p = self.tag.as_bytes().to_vec();
        p.resize(p.len().max(self.size), b'.');
        p
    }

    fn counts(&self, datagram: &[u8]) -> bool {
        datagram.starts_with(self.tag.as_bytes()) && datagram.len() >= self.size
    }
}

/// Adds to `got` what each tally's socket has queued, reading each socket until it has none
/// (each empty read waits for the socket's read timeout).
fn receive_tallied(tallies: &[Tally<'_>], got: &mut [u32]) -> Result<()> {
    let mut buf = vec![0u8; 65_536];
    for (i, tally) in tallies.iter().enumerate() {
        let fd = tally.to.as_raw_fd();
        if tallies[..i].iter().any(|t| t.to.as_raw_fd() == fd) {
            continue; // Read with the first tally on this socket.
        }
        loop {
            match tally.to.recv(&mut buf) {
                Ok(n) => {
                    let on_socket = tallies.iter().zip(got.iter_mut());
                    for (t, count) in on_socket.filter(|(t, _)| t.to.as_raw_fd() == fd) {
                        *count += u32::from(t.counts(&buf[..n]));
                    }
                }
                // A signal for another thread of the test (a child process ending) is no
                // reason to stop counting.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// The control frame of [`Lab::window`]: an Ethernet broadcast of the IEEE local
/// experimental ethertype, carrying the exchange's tag, and a packet socket that catches it.
/// The data path passes every frame that is not IP, and the control crosses the same veth
/// queue as the datagrams before it, so it arrives after each of them that was not dropped.
struct Control {
    fd: std::os::fd::OwnedFd,
}

impl Control {
    const ETHERTYPE: u16 = 0x88b5;

    /// A packet socket for control frames arriving on `iface` (in the calling thread's
    /// namespace).
    fn listen(iface: &str) -> Result<Self> {
        let kind = libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
        Ok(Self {
            fd: packet::bound_socket(iface, kind, Self::ETHERTYPE)?,
        })
    }

    /// The control frame for `tag`: broadcast, padded to Ethernet's minimum.
    fn frame(tag: &str) -> Vec<u8> {
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        frame.extend_from_slice(&Self::ETHERTYPE.to_be_bytes());
        frame.extend_from_slice(tag.as_bytes());
        frame.resize(frame.len().max(60), 0);
        frame
    }

    /// Whether a control frame for `tag` has arrived (reads every queued one).
    fn seen(&self, tag: &str) -> Result<bool> {
        let mut seen = false;
        let mut buf = [0u8; 128];
        loop {
            // SAFETY: recv into a buffer we own, of its length.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::WouldBlock {
                    return Ok(seen);
                }
                return Err(err).context("reading control frames");
            }
            seen |= buf[..n as usize].starts_with(tag.as_bytes());
        }
    }
}

/// Polls `check` until it returns `Some`, or fails after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check()? {
            return Ok(v);
        }
        ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends raw Ethernet frames out of `iface` (in the calling thread's namespace) with a packet
/// socket. Returns how many were sent.
pub fn inject<'a>(iface: &str, frames: impl IntoIterator<Item = &'a [u8]>) -> Result<usize> {
    let fd = packet::bound_socket(iface, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0)?;
    let mut sent = 0;
    for frame in frames {
        // SAFETY: a valid buffer of its length, on a socket bound to `iface`.
        let n = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        ensure!(
            n == frame.len() as isize,
            "send: {}",
            io::Error::last_os_error()
        );
        sent += 1;
    }
    Ok(sent)
}
