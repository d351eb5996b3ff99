//! Blocks scoped as the attack is (issue 22, part 1): a bad `--proto`/`--port` is one line
//! naming the fix and changes nothing; until the data path enforces scopes, a scoped block is
//! refused (never widened to the whole address) and the address stays reachable.

use std::time::Duration;

use enforcer_tests::{
    Lab, SENDER_V4,
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
    d.fails_cleanly(
        &["block", x, "--proto", "tcp", "--port", "22", "--ttl", "1h"],
        2,
        "cannot enforce a port or protocol scope yet",
    );
    assert_eq!(
        lab.passes(x),
        10,
        "a refused scoped block leaves {x} reachable"
    );
}

/// A scoped trigger spooled while the daemon was down (the fail2ban action's and the hooks'
/// path) is replayed through the same rule: refused and audited, never applied to the whole
/// address.
#[test]
fn a_spooled_scoped_block_is_refused_at_replay_not_widened_to_the_whole_address() {
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
    wait_for(
        "the spooled request's refusal",
        Duration::from_secs(20),
        || {
            Ok(d.audit_events()
                .into_iter()
                .any(|e| e["action"] == "refuse" && e["target"] == x)
                .then_some(()))
        },
    )
    .unwrap();
    assert!(d.list(&[]).is_empty(), "nothing was blocked");
    assert_eq!(lab.passes(x), 10, "{x} is not blocked as a whole address");
    let refusal = d
        .audit_events()
        .into_iter()
        .find(|e| e["action"] == "refuse" && e["target"] == x)
        .unwrap();
    assert!(
        refusal["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot enforce a port or protocol scope yet"),
        "{refusal:#}"
    );
}
