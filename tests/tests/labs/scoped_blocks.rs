//! Blocks scoped as the attack is (issue 22): a bad `--proto`/`--port` is one line naming the
//! fix and changes nothing; a port-scoped block drops its protocol and ports of real traffic
//! and nothing else, from the CLI, the spool and several sources at once.

use std::{net::SocketAddr, time::Duration};

use enforcer_tests::{
    Lab, RECEIVER_V4, RECEIVER_V6, SENDER_V4, SENDER_V6,
    daemon::{Daemon, ok},
    require_root, wait_for,
};

#[test]
fn a_bad_scope_is_one_line_naming_the_fix_and_changes_nothing() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    ok(&d.cli(&["block", SENDER_V4[1], "--ttl", "1h"]));
    let x = SENDER_V4[2];
    for (args, says) in [
        (
            &["--proto", "tcp", "--port", "0"][..],
            "port 0 is not a destination port",
        ),
        (
            &["--proto", "tcp", "--port", "70000"][..],
            "port 70000 is out of range",
        ),
        (
            &["--proto", "tcp", "--port", "2000-1000"][..],
            "write it low-high (1000-2000)",
        ),
        (&["--proto", "sctp"][..], "use tcp, udp, icmp or any"),
        (
            &["--proto", "icmp", "--port", "22"][..],
            "ports apply to tcp and udp only",
        ),
        (&["--port", "22"][..], "use --proto tcp or --proto udp"),
        (
            &["--proto", "udp", "--port", "nosuchservice"][..],
            "is not a port",
        ),
    ] {
        let mut all = vec!["block", x, "--ttl", "1h"];
        all.extend_from_slice(args);
        d.fails_cleanly(&all, 2, says);
    }
    assert!(d.list(&[]).iter().all(|e| e.target.to_string() != x));
    assert_eq!(lab.passes(x), 10, "a refused block leaves {x} reachable");
}

/// How long a TCP connect that should succeed may take; one that is dropped times out.
const CONNECT: Duration = Duration::from_secs(2);

/// Listeners on ports 22 and 80 of the receiver's address of `x`'s family.
struct Services {
    dst: &'static str,
    _ssh: std::net::TcpListener,
    _web: std::net::TcpListener,
}

impl Services {
    fn new(lab: &Lab, x: &str) -> Self {
        let dst = if x.contains(':') {
            RECEIVER_V6
        } else {
            RECEIVER_V4
        };
        Self {
            dst,
            _ssh: lab.tcp_listener_on(dst, 22).unwrap(),
            _web: lab.tcp_listener_on(dst, 80).unwrap(),
        }
    }

    /// Whether `src` completes a TCP connection to `port`.
    fn connects(&self, lab: &Lab, src: &str, port: u16) -> bool {
        let dst = SocketAddr::new(self.dst.parse().unwrap(), port);
        lab.tcp_connect(src, dst, CONNECT).unwrap()
    }

    /// What `x`'s traffic gets: (tcp/22, tcp/80, udp datagrams of 10, icmp echo).
    fn reach(&self, lab: &Lab, x: &str) -> (bool, bool, u32, bool) {
        (
            self.connects(lab, x, 22),
            self.connects(lab, x, 80),
            lab.passes(x),
            lab.echo(x, self.dst, CONNECT).unwrap(),
        )
    }
}

/// `block X --proto tcp --port 22` on real traffic of both families: X's TCP to port 22 is
/// dropped while its TCP to port 80, its UDP and its ICMP pass, and another source's TCP to 22
/// passes; `list` shows the scope and counts the dropped SYNs; unblocking the scope lifts it.
#[test]
fn a_port_scoped_block_drops_only_its_port_of_real_traffic() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    for (x, other) in [(SENDER_V4[1], SENDER_V4[2]), (SENDER_V6[1], SENDER_V6[2])] {
        let s = Services::new(&lab, x);
        assert_eq!(
            s.reach(&lab, x),
            (true, true, 10, true),
            "{x} before the block"
        );
        ok(&d.cli(&["block", x, "--proto", "tcp", "--port", "22", "--ttl", "1h"]));
        assert_eq!(
            s.reach(&lab, x),
            (false, true, 10, true),
            "{x} with tcp/22 blocked"
        );
        assert!(s.connects(&lab, other, 22), "{other} is not blocked");
        let list = d.list(&[]);
        let e = enforcer_tests::daemon::entry(&list, x);
        assert_eq!(e.scope.to_string(), "tcp/22");
        assert!(e.packets >= 1, "the dropped SYNs are counted: {e:?}");
        ok(&d.cli(&["unblock", x, "--proto", "tcp", "--port", "22"]));
        assert_eq!(
            s.reach(&lab, x),
            (true, true, 10, true),
            "{x} after the unblock"
        );
    }
}

/// Two sources scope one address differently: the verdict is their union, and lifting one
/// source's scope leaves the other's; a whole-address block from a third covers everything
/// until it goes.
#[test]
fn several_sources_scopes_on_one_address_are_their_union() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    let x = SENDER_V4[1];
    let s = Services::new(&lab, x);
    let block = |args: &[&str]| {
        let mut all = vec!["block", x, "--ttl", "1h"];
        all.extend_from_slice(args);
        ok(&d.cli(&all));
    };
    block(&["--proto", "tcp", "--port", "22", "--source", "fail2ban"]);
    block(&["--proto", "tcp", "--port", "80", "--source", "wazuh"]);
    assert_eq!(s.reach(&lab, x), (false, false, 10, true));
    block(&["--source", "cli"]);
    assert_eq!(
        s.reach(&lab, x),
        (false, false, 0, false),
        "the whole address"
    );
    ok(&d.cli(&["unblock", x, "--source", "cli"]));
    ok(&d.cli(&[
        "unblock", x, "--source", "wazuh", "--proto", "tcp", "--port", "80",
    ]));
    assert_eq!(
        s.reach(&lab, x),
        (false, true, 10, true),
        "fail2ban's tcp/22 is left"
    );
}

/// A scoped trigger spooled while the daemon was down (the fail2ban action's and the hooks'
/// path) is replayed with its scope: applied as tcp/22, never widened to the whole address.
#[test]
fn a_spooled_scoped_block_is_applied_with_its_scope_at_replay() {
    require_root();
    let lab = Lab::new().unwrap();
    let mut d = Daemon::start(&lab, &[]).unwrap();
    d.stop().unwrap();
    let x = SENDER_V4[1];
    let state = d.state_dir.to_str().unwrap().to_owned();
    let out = ok(&d.cli(&[
        "block",
        x,
        "--proto",
        "tcp",
        "--port",
        "22",
        "--ttl",
        "1h",
        "--source",
        "fail2ban",
        "--spool-if-down",
        "--state-dir",
        &state,
    ]));
    assert!(out.contains("spooled to"), "{out}");
    d.spawn().unwrap();
    wait_for("the spooled block", Duration::from_secs(20), || {
        Ok(d.list(&[])
            .into_iter()
            .find(|e| e.target.to_string() == x)
            .map(|e| e.scope.to_string()))
    })
    .map(|scope| assert_eq!(scope, "tcp/22"))
    .unwrap();
    let s = Services::new(&lab, x);
    assert_eq!(s.reach(&lab, x), (false, true, 10, true));
}
