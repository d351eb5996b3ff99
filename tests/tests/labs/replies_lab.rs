//! Replies to the host's own connections (issue 22): with a blocked source, a TCP connection
//! the host opened to it completes when replies pass (the default) and fails when
//! `replies = "drop"`; what the blocked source starts stays blocked either way.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use enforcer_tests::{
    Lab, RECEIVER_V4, RECEIVER_V6, SENDER_V4, SENDER_V6,
    daemon::{Daemon, ok},
    require_root,
};

const CONNECT: Duration = Duration::from_secs(2);

/// A TCP service of the blocked source `x`, in the sender namespace, that echoes one line.
fn service(lab: &Lab, x: &str) -> (TcpListener, SocketAddr) {
    let addr: IpAddr = x.parse().unwrap();
    let l = lab
        .sender
        .run(move || TcpListener::bind(SocketAddr::new(addr, 0)))
        .unwrap()
        .unwrap();
    let at = l.local_addr().unwrap();
    (l, at)
}

/// Whether the host (the receiver namespace, where XDP runs) connects from `local` to `to`
/// and gets its line echoed back.
fn host_talks(lab: &Lab, listener: &TcpListener, local: &str, to: SocketAddr) -> bool {
    let local: IpAddr = local.parse().unwrap();
    let l = listener.try_clone().unwrap();
    let echo = std::thread::spawn(move || {
        l.set_nonblocking(false).ok();
        if let Ok((mut s, _)) = l.accept() {
            let mut buf = [0u8; 5];
            if s.read_exact(&mut buf).is_ok() {
                s.write_all(&buf).ok();
            }
        }
    });
    let talked = lab
        .receiver
        .run(move || -> std::io::Result<bool> {
            let domain = if local.is_ipv4() {
                socket2::Domain::IPV4
            } else {
                socket2::Domain::IPV6
            };
            let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
            sock.bind(&SocketAddr::new(local, 0).into())?;
            if sock.connect_timeout(&to.into(), CONNECT).is_err() {
                return Ok(false);
            }
            let mut s = TcpStream::from(sock);
            s.set_read_timeout(Some(CONNECT))?;
            s.write_all(b"hello")?;
            let mut buf = [0u8; 5];
            Ok(s.read_exact(&mut buf).is_ok() && &buf == b"hello")
        })
        .unwrap()
        .unwrap_or(false);
    if !talked {
        // Wake the accept up so the thread ends.
        let _unblock = lab
            .sender
            .run(move || TcpStream::connect_timeout(&to, CONNECT));
    }
    echo.join().unwrap();
    talked
}

#[test]
fn a_connection_the_host_opened_to_a_blocked_address_completes_and_the_address_stays_blocked() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    for (x, local) in [(SENDER_V4[1], RECEIVER_V4), (SENDER_V6[1], RECEIVER_V6)] {
        let (listener, at) = service(&lab, x);
        ok(&d.cli(&["block", x, "--ttl", "1h"]));
        assert_eq!(lab.passes(x), 0, "{x}'s own traffic is dropped");
        assert!(
            host_talks(&lab, &listener, local, at),
            "the host's connection to {x}"
        );
        let inbound = lab.tcp_listener(local).unwrap();
        let port = inbound.local_addr().unwrap().port();
        let dst = SocketAddr::new(local.parse().unwrap(), port);
        assert!(
            !lab.tcp_connect(x, dst, CONNECT).unwrap(),
            "{x} cannot connect in"
        );
    }
    let replies = d.stats().total.reply_passed.packets;
    assert!(replies >= 4, "the replies are counted: {replies}");
}

#[test]
fn with_replies_dropped_the_hosts_connection_to_a_blocked_address_fails() {
    require_root();
    let lab = Lab::new().unwrap();
    let (d, _dir) = Daemon::with_config(&lab, "replies = \"drop\"\n").unwrap();
    let x = SENDER_V4[1];
    let (listener, at) = service(&lab, x);
    assert!(
        host_talks(&lab, &listener, RECEIVER_V4, at),
        "before the block"
    );
    ok(&d.cli(&["block", x, "--ttl", "1h"]));
    assert!(
        !host_talks(&lab, &listener, RECEIVER_V4, at),
        "with the block"
    );
    assert_eq!(d.stats().total.reply_passed.packets, 0);
}
