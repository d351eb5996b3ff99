//! Interfaces that come and go under a running daemon (issue 14): protection follows them, and
//! `enforcer status` never claims protection that is not there.
//!
//! Every check here is what an operator or an attacker sees: datagrams from a blocked source
//! arriving or not, `enforcer status` and its exit code, the kernel's own XDP state (`ip -j link`).

use std::{
    net::UdpSocket,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use enforcer_tests::{
    Lab, Netns, RECEIVER_IF, RECEIVER_V4, SENDER_IF, SENDER_V4,
    daemon::{Daemon, EXIT_UNPROTECTED, ok},
    require_root, run, wait_for,
};

/// One veth pair between the lab's namespaces, on one /24.
struct Pair<'a> {
    sender_if: &'a str,
    receiver_if: &'a str,
    /// The sender's addresses: the first is the control source, the second the one to block.
    senders: [&'a str; 2],
    receiver: &'a str,
}

/// The lab's own pair (`va` ↔ `vb`, 192.0.2.0/24).
const MAIN: Pair<'static> = Pair {
    sender_if: SENDER_IF,
    receiver_if: RECEIVER_IF,
    senders: [SENDER_V4[0], SENDER_V4[1]],
    receiver: RECEIVER_V4,
};

fn mac(ns: &Netns, dev: &str) -> Result<String> {
    let out = ns.ip(&["-br", "link", "show", dev])?;
    out.split_whitespace()
        .nth(2)
        .map(str::to_owned)
        .context("no MAC address in `ip -br link`")
}

impl Pair<'_> {
    /// Creates the pair (addresses, static neighbours) and brings it up; returns when both ends
    /// are up.
    fn create(&self, lab: &Lab) -> Result<()> {
        let (s, r) = (&lab.sender, &lab.receiver);
        s.ip(&[
            "link",
            "add",
            self.sender_if,
            "type",
            "veth",
            "peer",
            "name",
            self.receiver_if,
            "netns",
            r.name(),
        ])?;
        self.configure(lab)
    }

    /// Addresses, neighbours and link state of an existing pair.
    fn configure(&self, lab: &Lab) -> Result<()> {
        let (s, r) = (&lab.sender, &lab.receiver);
        for a in self.senders {
            s.ip(&["addr", "add", &format!("{a}/24"), "dev", self.sender_if])?;
        }
        r.ip(&[
            "addr",
            "add",
            &format!("{}/24", self.receiver),
            "dev",
            self.receiver_if,
        ])?;
        let (smac, rmac) = (mac(s, self.sender_if)?, mac(r, self.receiver_if)?);
        s.ip(&[
            "neigh",
            "replace",
            self.receiver,
            "lladdr",
            &rmac,
            "dev",
            self.sender_if,
            "nud",
            "permanent",
        ])?;
        for a in self.senders {
            r.ip(&[
                "neigh",
                "replace",
                a,
                "lladdr",
                &smac,
                "dev",
                self.receiver_if,
                "nud",
                "permanent",
            ])?;
        }
        s.ip(&["link", "set", self.sender_if, "up"])?;
        r.ip(&["link", "set", self.receiver_if, "up"])?;
        Ok(())
    }

    /// Deletes the pair (both ends).
    fn delete(&self, lab: &Lab) -> Result<()> {
        lab.sender.ip(&["link", "del", self.sender_if]).map(drop)
    }

    fn blocked(&self) -> &str {
        self.senders[1]
    }

    /// Sockets for [`Probe`]: (blocked source, control source, receiver).
    fn probe(&self, lab: &Lab) -> Result<Probe> {
        Ok(Probe {
            blocked: lab.udp_sender(self.senders[1])?,
            control: lab.udp_sender(self.senders[0])?,
            rx: lab.udp_listener(self.receiver)?,
        })
    }
}

/// Datagrams from a blocked and a control source, in that order, over one link.
struct Probe {
    blocked: UdpSocket,
    control: UdpSocket,
    rx: UdpSocket,
}

impl Probe {
    /// One round: `Some(true)` when the control datagram arrived and the blocked one (sent
    /// first, over the same link) did not, `Some(false)` when the blocked one arrived, `None`
    /// when nothing arrived (the link is not passing traffic yet).
    fn dropped(&self) -> Result<Option<bool>> {
        static ROUND: AtomicU32 = AtomicU32::new(0);
        let round = ROUND.fetch_add(1, Ordering::Relaxed);
        let (b, c) = (format!("b{round}"), format!("c{round}"));
        let dst = self.rx.local_addr()?;
        if self.blocked.send_to(b.as_bytes(), dst).is_err()
            || self.control.send_to(c.as_bytes(), dst).is_err()
        {
            return Ok(None);
        }
        let deadline = Instant::now() + Duration::from_millis(60);
        let mut buf = [0u8; 64];
        while Instant::now() < deadline {
            if let Ok(n) = self.rx.recv(&mut buf) {
                match &buf[..n] {
                    got if got == b.as_bytes() => return Ok(Some(false)),
                    got if got == c.as_bytes() => return Ok(Some(true)),
                    _ => {}
                }
            }
        }
        Ok(None)
    }

    /// Waits until the blocked source is dropped; returns when (the instant of the first round
    /// that saw it dropped).
    fn until_dropped(&self, timeout: Duration) -> Result<Instant> {
        wait_for("the blocked source to be dropped", timeout, || {
            let started = Instant::now();
            Ok((self.dropped()? == Some(true)).then_some(started))
        })
    }
}

/// What the kernel says about an interface in the receiver namespace: (ifindex, XDP program id).
fn kernel_view(lab: &Lab, iface: &str) -> Result<(u64, Option<u64>)> {
    let out = lab.receiver.ip(&["-j", "link", "show", "dev", iface])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let link = &v[0];
    let ifindex = link["ifindex"].as_u64().context("no ifindex")?;
    Ok((ifindex, link["xdp"]["prog"]["id"].as_u64()))
}

/// `enforcer status --json`: (exit code, the row of `iface`).
fn status_of(d: &Daemon, iface: &str) -> (Option<i32>, serde_json::Value) {
    let out = d.cli(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let row = v["interfaces"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["iface"] == iface))
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    (out.status.code(), row)
}

fn wait_state(d: &Daemon, iface: &str, state: &str, timeout: Duration) -> serde_json::Value {
    wait_for(&format!("{iface} to be reported {state}"), timeout, || {
        let (_, row) = status_of(d, iface);
        Ok((row["state"] == state).then_some(row))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}; last status: {}; log: {}",
            status_of(d, iface).1,
            d.log()
        )
    })
}

fn block(d: &Daemon, target: &str) {
    ok(&d.cli(&["block", target, "--ttl", "1h"]));
}

#[test]
fn a_recreated_interface_is_protected_again_within_a_second_and_status_says_gone_in_between() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    block(&d, MAIN.blocked());
    let probe = MAIN.probe(&lab).unwrap();
    probe.until_dropped(Duration::from_secs(2)).unwrap();
    let (old_index, _) = kernel_view(&lab, RECEIVER_IF).unwrap();

    MAIN.delete(&lab).unwrap();
    let gone = wait_state(&d, RECEIVER_IF, "gone", Duration::from_secs(1));
    assert!(
        gone["ifindex"].is_null() && gone["prog_id"].is_null(),
        "a gone interface has no ifindex or program: {gone}"
    );
    assert_eq!(status_of(&d, RECEIVER_IF).0, Some(EXIT_UNPROTECTED));
    assert!(d.log().contains("WARN"), "no warning logged: {}", d.log());

    MAIN.create(&lab).unwrap();
    let up = Instant::now();
    let probe = MAIN.probe(&lab).unwrap();
    let dropped = probe.until_dropped(Duration::from_secs(3)).unwrap();
    assert!(
        dropped - up < Duration::from_secs(1),
        "dropped again only {:?} after the interface came up",
        dropped - up
    );

    let row = wait_state(&d, RECEIVER_IF, "protected", Duration::from_secs(1));
    let (new_index, prog) = kernel_view(&lab, RECEIVER_IF).unwrap();
    assert_ne!(new_index, old_index);
    assert_eq!(row["ifindex"], new_index, "{row}");
    assert_eq!(row["prog_id"].as_u64(), prog, "{row}");
    assert_eq!(row["mode"], "native", "{row}");
    assert_eq!(status_of(&d, RECEIVER_IF).0, Some(0));

    // Every block and counter applies again: the same pinned maps count the new drops.
    let list = d.list(&[]);
    assert!(list[0].packets >= 2, "{list:?}");
    let audit = d.audit_text();
    assert!(
        audit.contains("\"interface_gone\"") && audit.contains("\"interface_protected\""),
        "{audit}"
    );
}

/// A second pair, for an interface the daemon is told about before it exists.
const LATE: Pair<'static> = Pair {
    sender_if: "vd",
    receiver_if: "vc",
    senders: ["198.51.100.1", "198.51.100.10"],
    receiver: "198.51.100.2",
};

#[test]
fn a_missing_interface_waits_while_the_others_are_protected_and_is_protected_once_created() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &["--iface", LATE.receiver_if]).unwrap();
    let (code, vb) = status_of(&d, RECEIVER_IF);
    assert_eq!(vb["state"], "protected", "{vb}");
    assert_eq!(
        code,
        Some(EXIT_UNPROTECTED),
        "one interface is only waiting"
    );
    let (_, vc) = status_of(&d, LATE.receiver_if);
    assert_eq!(vc["state"], "waiting", "{vc}");
    block(&d, MAIN.blocked());
    block(&d, LATE.blocked());
    MAIN.probe(&lab)
        .unwrap()
        .until_dropped(Duration::from_secs(1))
        .unwrap();

    LATE.create(&lab).unwrap();
    let up = Instant::now();
    let dropped = LATE
        .probe(&lab)
        .unwrap()
        .until_dropped(Duration::from_secs(3))
        .unwrap();
    assert!(
        dropped - up < Duration::from_secs(1),
        "protected only {:?} after it came up",
        dropped - up
    );
    let row = wait_state(&d, LATE.receiver_if, "protected", Duration::from_secs(1));
    assert_eq!(
        row["ifindex"],
        kernel_view(&lab, LATE.receiver_if).unwrap().0
    );
    assert_eq!(
        status_of(&d, RECEIVER_IF).0,
        Some(0),
        "everything is protected now"
    );
}

#[test]
fn require_all_interfaces_fails_fast_when_one_is_missing() {
    require_root();
    let lab = Lab::new().unwrap();
    let err = Daemon::start(&lab, &["--iface", "vmissing", "--require-all-interfaces"])
        .err()
        .expect("the daemon must not start");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("vmissing") && msg.contains("require_all_interfaces"),
        "{msg}"
    );
}

#[test]
fn a_pattern_protects_interfaces_created_or_renamed_to_match_it() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &["--iface", "vp*"]).unwrap();
    let (_, pattern) = status_of(&d, "vp*");
    assert_eq!(
        pattern["state"], "waiting",
        "a pattern that matches nothing yet waits: {pattern}"
    );
    let created = Pair {
        sender_if: "vq7",
        receiver_if: "vp7",
        senders: ["203.0.113.1", "203.0.113.10"],
        receiver: "203.0.113.2",
    };
    block(&d, created.blocked());
    created.create(&lab).unwrap();
    let up = Instant::now();
    let dropped = created
        .probe(&lab)
        .unwrap()
        .until_dropped(Duration::from_secs(3))
        .unwrap();
    assert!(
        dropped - up < Duration::from_secs(1),
        "protected only {:?} after it came up",
        dropped - up
    );
    let row = wait_state(&d, "vp7", "protected", Duration::from_secs(1));
    assert_eq!(row["pattern"], "vp*", "{row}");
    assert!(
        status_of(&d, "vp*").1.is_null(),
        "a pattern with a match is shown through its interfaces"
    );

    // A link that does not match is left alone, until it is renamed to match.
    lab.receiver
        .ip(&["link", "add", "xq1", "type", "veth", "peer", "name", "xq2"])
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        kernel_view(&lab, "xq1").unwrap().1,
        None,
        "a link outside the pattern got a program"
    );
    assert!(status_of(&d, "xq1").1.is_null());
    lab.receiver
        .ip(&["link", "set", "xq1", "name", "vp9"])
        .unwrap();
    let row = wait_state(&d, "vp9", "protected", Duration::from_secs(1));
    assert_eq!(row["prog_id"].as_u64(), kernel_view(&lab, "vp9").unwrap().1);
    // The loopback never matches a pattern, even one that would match its name.
    assert!(status_of(&d, "lo").1.is_null());
}

#[test]
fn a_named_interface_renamed_away_is_released_and_protected_again_when_the_name_returns() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    block(&d, MAIN.blocked());
    let probe = MAIN.probe(&lab).unwrap();
    probe.until_dropped(Duration::from_secs(1)).unwrap();

    // Protection belongs to the name: the renamed link is released, the name reported gone.
    lab.receiver
        .ip(&["link", "set", RECEIVER_IF, "down"])
        .unwrap();
    lab.receiver
        .ip(&["link", "set", RECEIVER_IF, "name", "vrenamed"])
        .unwrap();
    wait_state(&d, RECEIVER_IF, "gone", Duration::from_secs(1));
    wait_for(
        "the renamed link to lose the program",
        Duration::from_secs(1),
        || Ok(kernel_view(&lab, "vrenamed")?.1.is_none().then_some(())),
    )
    .unwrap();
    assert_eq!(status_of(&d, RECEIVER_IF).0, Some(EXIT_UNPROTECTED));

    lab.receiver
        .ip(&["link", "set", "vrenamed", "name", RECEIVER_IF])
        .unwrap();
    lab.receiver
        .ip(&["link", "set", RECEIVER_IF, "up"])
        .unwrap();
    let row = wait_state(&d, RECEIVER_IF, "protected", Duration::from_secs(1));
    assert_eq!(
        row["prog_id"].as_u64(),
        kernel_view(&lab, RECEIVER_IF).unwrap().1
    );
    probe.until_dropped(Duration::from_secs(2)).unwrap();
}

#[test]
fn check_config_refuses_a_bad_name_or_pattern_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("enforcer.toml");
    std::fs::write(
        &file,
        "default_ttl = \"1h\"\ninterfaces = [\"eth*\", \"bond0 .*\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(enforcer_tests::daemon::enforcer_bin())
        .args([
            "daemon",
            "--config",
            file.to_str().unwrap(),
            "--check-config",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("enforcer.toml:2:")
            && stderr.contains("`bond0 .*` is not a valid interface name or pattern"),
        "{stderr}"
    );
    std::fs::write(
        &file,
        "interfaces = [\"eth*\", \"bond0.*\", \"eth0\"]\nrequire_all_interfaces = true\n",
    )
    .unwrap();
    let out = std::process::Command::new(enforcer_tests::daemon::enforcer_bin())
        .args([
            "daemon",
            "--config",
            file.to_str().unwrap(),
            "--check-config",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_link_detached_behind_the_daemons_back_is_attached_again_with_a_warning() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    block(&d, MAIN.blocked());
    let probe = MAIN.probe(&lab).unwrap();
    probe.until_dropped(Duration::from_secs(1)).unwrap();
    let (_, before) = kernel_view(&lab, RECEIVER_IF).unwrap();

    // `ip link set dev X xdp off` cannot remove a program attached through a BPF link.
    assert!(
        lab.receiver
            .ip(&["link", "set", "dev", RECEIVER_IF, "xdp", "off"])
            .is_err()
    );
    assert_eq!(kernel_view(&lab, RECEIVER_IF).unwrap().1, before);

    let pin = lab.pins.path().join("links").join(RECEIVER_IF);
    let shown: serde_json::Value = serde_json::from_str(
        &run(
            "bpftool",
            &["-j", "link", "show", "pinned", pin.to_str().unwrap()],
        )
        .unwrap(),
    )
    .unwrap();
    let id = shown["id"].as_u64().expect("link id").to_string();
    run("bpftool", &["link", "detach", "id", &id]).unwrap();
    let detached = Instant::now();
    assert_eq!(
        kernel_view(&lab, RECEIVER_IF).unwrap().1,
        None,
        "bpftool detached it"
    );

    let dropped = probe.until_dropped(Duration::from_secs(3)).unwrap();
    eprintln!("re-attached {:?} after the detach", dropped - detached);
    assert!(
        dropped - detached < Duration::from_secs(1),
        "re-attached only {:?} after the detach",
        dropped - detached
    );
    let row = wait_state(&d, RECEIVER_IF, "protected", Duration::from_secs(1));
    assert_eq!(
        row["prog_id"].as_u64(),
        kernel_view(&lab, RECEIVER_IF).unwrap().1
    );
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("detached")),
        "{log}"
    );
}

#[test]
fn status_exits_0_when_every_interface_is_protected_and_8_when_one_is_not() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    let out = d.cli(&["status"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with(RECEIVER_IF) && l.contains("protected")),
        "{text}"
    );

    let lab2 = Lab::new().unwrap();
    let d2 = Daemon::start(&lab2, &["--iface", "vnothere"]).unwrap();
    let out = d2.cli(&["status"]);
    assert_eq!(out.status.code(), Some(EXIT_UNPROTECTED));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("vnothere") && l.contains("waiting")),
        "{text}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("vnothere") && stderr.lines().count() == 1,
        "one line on stderr naming it: {stderr}"
    );
    assert_eq!(
        d2.cli(&["status", "--json"]).status.code(),
        Some(EXIT_UNPROTECTED)
    );
}

#[test]
fn reattach_latency_over_20_trials() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    block(&d, MAIN.blocked());
    let (mut from_up, mut from_created) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        MAIN.delete(&lab).unwrap();
        wait_state(&d, RECEIVER_IF, "gone", Duration::from_secs(1));
        let created = Instant::now();
        MAIN.create(&lab).unwrap();
        let up = Instant::now();
        let dropped = MAIN
            .probe(&lab)
            .unwrap()
            .until_dropped(Duration::from_secs(3))
            .unwrap();
        from_up.push(dropped.saturating_duration_since(up));
        from_created.push(dropped.saturating_duration_since(created));
    }
    for (what, mut v) in [("interface up", from_up), ("`ip link add`", from_created)] {
        v.sort();
        let pct = |p: usize| v[(v.len() * p).div_ceil(100).saturating_sub(1)];
        eprintln!(
            "re-attach latency, {what} -> first drop, {} trials: p50 {:?}, p99 {:?}, max {:?}",
            v.len(),
            pct(50),
            pct(99),
            v[v.len() - 1]
        );
        assert!(v[v.len() - 1] < Duration::from_secs(1), "{what}: {v:?}");
    }
}
