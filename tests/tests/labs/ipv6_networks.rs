//! IPv6 networks (issue 22, part 4), end to end: a source whose policy says `ipv6_prefix = 64`
//! blocks a single IPv6 address's whole /64, real packets from the rest of that /64 are dropped,
//! an unblock of the address lifts the /64, the allowlist still wins, and several /64s of one
//! /48 blocked within the window escalate to the /48 within the scope guard and approval rules.
//!
//! The lab's shared /64 (2001:db8::/64) holds the receiver's own (allowlisted) address, so the
//! attackers here live in other /64s, added to the sender's interface.

use std::time::Duration;

use enforcer_tests::{
    Lab, RECEIVER_V6,
    daemon::{Daemon, ok, targets},
    execd::{Execd, WazuhHome, sshd_brute_force},
    require_root, wait_for,
};
use serde_json::Value;

/// Wazuh's `<timeout>` here: short, so the scheduled delete comes quickly.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The attacker, one address of 2001:db8:0:1::/64.
const ATTACKER: &str = "2001:db8:0:1::10";
/// Another address of the attacker's /64: never named by any trigger.
const NEIGHBOUR: &str = "2001:db8:0:1::20";
/// An address of the attacker's /64 the operator allowlists.
const FRIEND: &str = "2001:db8:0:1::30";
/// An address of another /64.
const ELSEWHERE: &str = "2001:db8:0:2::10";

/// Four /64s of 2001:db8:1::/48: the first three are blocked in turn, the fourth never is.
const ROTATING: [&str; 4] = [
    "2001:db8:1:1::10",
    "2001:db8:1:2::10",
    "2001:db8:1:3::10",
    "2001:db8:1:4::10",
];
/// An address of another /48.
const OTHER_48: &str = "2001:db8:2:1::10";

const POLICY: &str = r#"
[policy.sources.wazuh]
ipv6_prefix = 64

[policy.ipv6_escalate]
window = "1h"
after = 3
to = 48
"#;

/// The sender gets `addrs` too (static, no duplicate address detection).
fn add_senders(lab: &Lab, addrs: &[&str]) {
    for a in addrs {
        lab.sender
            .ip(&["addr", "add", &format!("{a}/64"), "dev", "va", "nodad"])
            .unwrap();
    }
}

fn passes(lab: &Lab, src: &str) -> u32 {
    lab.passes_to(src, RECEIVER_V6)
}

/// The audit lines of `action` whose target is `target`.
fn audited(d: &Daemon, action: &str, target: &str) -> Vec<Value> {
    d.audit_events()
        .into_iter()
        .filter(|e| e["action"] == action && e["target"] == target)
        .collect()
}

#[test]
fn a_wazuh_trigger_for_one_ipv6_address_drops_its_whole_64() {
    require_root();
    let lab = Lab::new().unwrap();
    add_senders(&lab, &[ATTACKER, NEIGHBOUR, FRIEND, ELSEWHERE]);
    let (d, _config) = Daemon::with_config(&lab, POLICY).unwrap();
    let home = WazuhHome::install("firewall-drop").unwrap();
    let mut execd = Execd::new(&home, &["--ttl", "1h"], TIMEOUT).daemon_at(&d.socket, &d.state_dir);
    for src in [ATTACKER, NEIGHBOUR, ELSEWHERE] {
        assert_eq!(passes(&lab, src), 10, "{src} passes before any block");
    }

    let run = execd.add(&sshd_brute_force(ATTACKER)).unwrap();
    assert_eq!(run.code(), 0, "{:?}", home.log());
    assert_eq!(passes(&lab, ATTACKER), 0, "the attacker is dropped");
    assert_eq!(
        passes(&lab, NEIGHBOUR),
        0,
        "another address of its /64, named by no trigger, is dropped"
    );
    assert_eq!(passes(&lab, ELSEWHERE), 10, "another /64 passes");
    assert_eq!(
        targets(&d.list(&["--source", "wazuh"])),
        ["2001:db8:0:1::/64"]
    );
    let blocks = audited(&d, "block", "2001:db8:0:1::/64");
    assert_eq!(blocks.len(), 1, "{:#?}", d.audit_events());
    assert_eq!(blocks[0]["requested"], ATTACKER, "{:#}", blocks[0]);
    assert_eq!(blocks[0]["source"], "wazuh");
    let hook_log = home.log().join("\n");
    assert!(
        hook_log.contains("blocked 2001:db8:0:1::/64") && hook_log.contains(ATTACKER),
        "{hook_log}"
    );

    // execd's timer runs out: the delete names the address, and lifts the /64.
    let mut deletes = Vec::new();
    wait_for("execd's timed delete", TIMEOUT * 5, || {
        deletes.extend(execd.run_due_deletes()?);
        Ok((!deletes.is_empty()).then_some(()))
    })
    .unwrap();
    assert_eq!(deletes[0].code(), 0, "{:?}", home.log());
    assert!(d.list(&["--source", "wazuh"]).is_empty());
    assert_eq!(passes(&lab, ATTACKER), 10, "the unblock lifted the /64");
    assert_eq!(passes(&lab, NEIGHBOUR), 10);
    let unblocks = audited(&d, "unblock", "2001:db8:0:1::/64");
    assert_eq!(unblocks.len(), 1, "{:#?}", d.audit_events());
    assert_eq!(unblocks[0]["requested"], ATTACKER);

    // An allowlisted address inside the /64: the block falls back to the single address, and
    // says so.
    ok(&d.cli(&["allow", "add", FRIEND]));
    let r = d.json(&["block", ATTACKER, "--source", "wazuh", "--ttl", "1h"]);
    assert_eq!(r["target"], ATTACKER, "{r:#}");
    assert!(
        r["notes"]
            .to_string()
            .contains("allowlisted 2001:db8:0:1::30"),
        "{r:#}"
    );
    assert_eq!(passes(&lab, ATTACKER), 0);
    assert_eq!(passes(&lab, FRIEND), 10, "the allowlisted address passes");
    assert_eq!(
        passes(&lab, NEIGHBOUR),
        10,
        "only the single address is blocked"
    );
    let line = audited(&d, "block", ATTACKER);
    assert!(
        line[0]["detail"]
            .as_str()
            .is_some_and(|s| s.contains("not widened")),
        "{line:#?}"
    );
}

#[test]
fn three_64s_of_one_48_blocked_within_the_window_escalate_to_the_48() {
    require_root();
    let lab = Lab::new().unwrap();
    add_senders(&lab, &[&ROTATING[..], &[OTHER_48]].concat());
    let (d, _config) = Daemon::with_config(&lab, POLICY).unwrap();
    for (i, src) in ROTATING[..3].iter().enumerate() {
        let r = d.json(&["block", src, "--source", "wazuh", "--ttl", "1h"]);
        assert_eq!(r["requested"], *src, "{r:#}");
        if i < 2 {
            assert_eq!(
                passes(&lab, ROTATING[3]),
                10,
                "not yet escalated after {}",
                i + 1
            );
        } else {
            assert!(r["notes"].to_string().contains("2001:db8:1::/48"), "{r:#}");
        }
    }
    assert_eq!(
        passes(&lab, ROTATING[3]),
        0,
        "a /64 of the /48 that no trigger named is dropped"
    );
    assert_eq!(passes(&lab, OTHER_48), 10, "another /48 passes");
    let escalated = audited(&d, "block", "2001:db8:1::/48");
    assert_eq!(escalated.len(), 1, "{:#?}", d.audit_events());
    assert!(
        escalated[0]["detail"]
            .as_str()
            .is_some_and(|s| s.contains("escalat")),
        "{:#}",
        escalated[0]
    );
    let mut listed = targets(&d.list(&["--source", "wazuh"]));
    listed.sort();
    assert_eq!(
        listed,
        [
            "2001:db8:1:1::/64",
            "2001:db8:1:2::/64",
            "2001:db8:1:3::/64",
            "2001:db8:1::/48",
        ]
    );
}

#[test]
fn an_escalation_past_the_approval_threshold_waits_and_one_past_the_scope_guard_is_refused() {
    require_root();
    let lab = Lab::new().unwrap();
    add_senders(&lab, &ROTATING);
    // Escalations broader than /56 wait for approval.
    let pending = format!("{POLICY}\n[policy.approval]\nbroader_than_v6 = 56\n");
    let (d, _config) = Daemon::with_config(&lab, &pending).unwrap();
    for src in &ROTATING[..3] {
        ok(&d.cli(&["block", src, "--source", "wazuh", "--ttl", "1h"]));
    }
    assert_eq!(passes(&lab, ROTATING[2]), 0, "the third /64 is blocked");
    assert_eq!(passes(&lab, ROTATING[3]), 10, "the /48 is not blocked yet");
    let waiting = d.json(&["pending"]);
    assert_eq!(
        waiting[0]["request"]["target"], "2001:db8:1::/48",
        "{waiting:#}"
    );
    let id = waiting[0]["id"].to_string();
    ok(&d.cli(&["approve", &id]));
    assert_eq!(passes(&lab, ROTATING[3]), 0, "approved, the /48 is dropped");
    drop(d);

    // The scope guard allows nothing broader than /56: the escalation is refused (audited), the
    // /64s stay blocked.
    let lab = Lab::new().unwrap();
    add_senders(&lab, &ROTATING);
    let narrow = POLICY.replace(
        "[policy.sources.wazuh]",
        "[policy]\nmin_prefix_v6 = 56\n\n[policy.sources.wazuh]",
    );
    let (d, _config) = Daemon::with_config(&lab, &narrow).unwrap();
    for src in &ROTATING[..3] {
        ok(&d.cli(&["block", src, "--source", "wazuh", "--ttl", "1h"]));
    }
    assert_eq!(passes(&lab, ROTATING[2]), 0);
    assert_eq!(passes(&lab, ROTATING[3]), 10, "the escalation was refused");
    let refused = audited(&d, "refuse", "2001:db8:1::/48");
    assert_eq!(refused.len(), 1, "{:#?}", d.audit_events());
    assert!(
        refused[0]["detail"]
            .as_str()
            .is_some_and(|s| s.contains("min_prefix_v6")),
        "{:#}",
        refused[0]
    );
    assert!(d.json(&["pending"]).as_array().unwrap().is_empty());
}
