//! A daemon in a private mount namespace (`ip netns exec`, a container, a unit with a private
//! /sys): its pins must not die with it.

use std::time::{Duration, Instant};

use enforcer::protocol::{PinsDurability, StatusReply};
use enforcer_tests::{
    Lab, RECEIVER_IF, SENDER_V4,
    daemon::{Daemon, DaemonBuilder, enforcer_bin, ok},
    require_root,
};

/// `ip netns exec <receiver> enforcer daemon --iface vb …`: no `--netns`, so the daemon runs in
/// the mount namespace `ip netns exec` makes (with its own /sys and no bpffs).
fn under_ip_netns_exec(lab: &Lab) -> DaemonBuilder {
    Daemon::builder(lab).launched_by([
        "ip".into(),
        "netns".into(),
        "exec".into(),
        lab.receiver.name().into(),
        enforcer_bin().into_os_string(),
    ])
}

#[test]
fn a_block_made_by_a_daemon_under_ip_netns_exec_stays_in_force_after_kill_9() {
    require_root();
    let lab = Lab::new().unwrap();
    let mut d = under_ip_netns_exec(&lab).start().unwrap();
    ok(&d.cli(&["block", SENDER_V4[1], "--ttl", "1h"]));
    assert_eq!(lab.passes(SENDER_V4[1]), 0, "blocked while the daemon runs");
    let status = d.cli(&["status", "--json"]);
    let text = ok(&d.cli(&["status"]));

    d.kill();
    // The pins live in the host's bpffs: nothing goes away with the daemon's mount namespace.
    // Watch for two seconds that the blocked source stays dropped.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_eq!(
            lab.passes(SENDER_V4[1]),
            0,
            "the blocked source got through after kill -9"
        );
    }
    assert_eq!(lab.passes(SENDER_V4[2]), 10, "other sources pass");
    assert_eq!(
        enforcer::datapath::pinned_interfaces(&enforcer::datapath::PinLayout::new(lab.pins.path())),
        [RECEIVER_IF],
        "the link is pinned in the host's bpffs"
    );

    let status: StatusReply = serde_json::from_slice(&ok_bytes(&status)).unwrap();
    assert_eq!(
        status.pins.durability,
        PinsDurability::HostThroughReference,
        "{:?}",
        status.pins
    );
    assert!(status.pins.outlive_daemon);
    assert_eq!(status.pins.dir, lab.pins.path().display().to_string());
    assert!(text.contains("(outlive the daemon)"), "{text}");
    // Started again the same way, it finds its pins in the host's bpffs and takes them over.
    d.spawn().unwrap();
    assert!(ok(&d.cli(&["list"])).contains(SENDER_V4[1]));
    assert_eq!(
        lab.passes(SENDER_V4[1]),
        0,
        "still dropped after the restart"
    );
    d.kill();
    // `enforcer detach` run the same way finds the pins in the host's bpffs and removes them.
    let out = lab
        .receiver
        .command(enforcer_bin())
        .args(["detach", "--bpffs-dir"])
        .arg(lab.pins.path())
        .output()
        .unwrap();
    assert!(
        ok(&out).contains(&format!("detached from {RECEIVER_IF}")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !lab.pins.path().exists(),
        "no pins left in the host's bpffs"
    );
    assert_eq!(
        lab.passes(SENDER_V4[1]),
        10,
        "detached: the source passes again"
    );
}

#[test]
fn status_says_the_pins_of_a_daemon_on_the_host_outlive_it() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    let s = d.status();
    assert_eq!(s.pins.durability, PinsDurability::Host, "{:?}", s.pins);
    assert!(s.pins.outlive_daemon);
    let text = ok(&d.cli(&["status"]));
    assert!(
        text.contains(&format!(
            "pins: host bpffs {} (outlive the daemon)",
            lab.pins.path().display()
        )),
        "{text}"
    );
}

fn ok_bytes(out: &std::process::Output) -> Vec<u8> {
    ok(out).into_bytes()
}

#[test]
fn under_ip_netns_exec_without_a_host_bpffs_for_the_pins_the_daemon_refuses_in_one_line() {
    require_root();
    let lab = Lab::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Not on a bpffs, in the daemon's namespace or the host's: pins there would not outlive it.
    let pins = dir.path().join("not-bpffs/enforcer");
    let out = under_ip_netns_exec(&lab)
        .pins(&pins)
        .args(&["--max-addresses", "1024", "--max-prefixes", "64"])
        .refused(Duration::from_secs(20));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let refusal: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("private mount namespace"))
        .collect();
    assert_eq!(refusal.len(), 1, "{stderr}");
    assert!(
        refusal[0].contains("--netns") && refusal[0].contains("mount -t bpf bpf /sys/fs/bpf"),
        "{stderr}"
    );
    assert!(!stderr.contains("mounting one"), "{stderr}");
    assert!(!pins.exists(), "nothing pinned");
    assert_eq!(lab.passes(SENDER_V4[1]), 10, "nothing attached");
}
