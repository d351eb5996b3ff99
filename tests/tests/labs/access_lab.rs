//! The access model, end to end: real unprivileged users (created for the test) run the real CLI
//! against the real daemon; real packets show what was (not) blocked.

use std::{os::unix::fs::PermissionsExt as _, process::Output};

use enforcer_tests::{
    Lab, SENDER_V4,
    accounts::Account,
    daemon::{Daemon, enforcer_bin, fails, ok},
    require_root,
};

/// A daemon with `config` (TOML) whose socket directory others may traverse (the socket itself
/// stays 0660 root:socket_group).
fn daemon_with(lab: &Lab, config: &str) -> (Daemon, tempfile::TempDir) {
    let (d, dir) = Daemon::with_config(lab, config).unwrap();
    std::fs::set_permissions(
        d.socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    (d, dir)
}

/// The CLI run as `who` against `d`.
fn as_user(who: &Account, d: &Daemon, args: &[&str]) -> Output {
    let mut full = vec!["--socket", d.socket.to_str().unwrap()];
    full.extend_from_slice(args);
    who.run(&enforcer_bin(), &full)
}

/// The audit lines that refused `who` (they name its uid and user name).
fn denials_of(d: &Daemon, who: &Account) -> Vec<String> {
    d.audit_text()
        .lines()
        .filter(|l| {
            l.contains("\"action\":\"deny\"")
                && l.contains(&format!("\"uid\":{}", who.uid()))
                && l.contains(who.name())
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_group_limited_caller_acts_only_as_its_own_sources_and_cannot_approve_itself() {
    require_root();
    let lab = Lab::new().unwrap();
    let wazuh = Account::new("enfw").unwrap();
    let config = format!(
        "socket_group = \"{g}\"\n\
         [policy.sources.review]\nrequire_approval = true\n\
         [[access]]\ngroup = \"{g}\"\nsources = [\"wazuh\", \"review\"]\n\
         operations = [\"block\", \"unblock\", \"list\", \"show\", \"stats\", \"status\", \"pending_list\", \"approve\"]\n",
        g = wazuh.name()
    );
    let (d, _dir) = daemon_with(&lab, &config);
    let target = SENDER_V4[1];

    // Another source's name, force and permanent are refused with exit 4, audited with the
    // caller, and nothing is blocked: real packets still pass.
    for args in [
        &["block", target, "--source", "cli"][..],
        &["block", target, "--source", "crowdsec", "--ttl", "10m"],
        &["block", "198.51.100.0/24", "--source", "wazuh", "--force"],
        &["block", target, "--source", "wazuh", "--permanent"],
        &["promote", "--source", "wazuh"],
        &["breaker", "reset"],
        &["allow", "add", "0.0.0.0/0"],
    ] {
        let out = as_user(&wazuh, &d, args);
        fails(&out, 4, "permission denied");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(wazuh.name()),
            "the refusal names the caller: {out:?}"
        );
    }
    assert_eq!(
        lab.passes(target),
        10,
        "nothing was blocked by the refused requests"
    );
    assert!(d.list(&[]).is_empty());
    assert!(
        !d.allowlist()
            .iter()
            .any(|e| e.target.to_string() == "0.0.0.0/0")
    );
    assert_eq!(denials_of(&d, &wazuh).len(), 7, "{}", d.audit_text());

    // Its own source: allowed, and real packets are dropped.
    ok(&as_user(
        &wazuh,
        &d,
        &["block", target, "--source", "wazuh", "--ttl", "10m"],
    ));
    assert_eq!(lab.passes(target), 0, "the permitted block drops packets");
    let who = format!("\"uid\":{},\"user\":\"{}\"", wazuh.uid(), wazuh.name());
    assert!(
        d.audit_text()
            .lines()
            .any(|l| l.contains("\"action\":\"block\"") && l.contains(&who)),
        "the block's audit line names who asked: {}",
        d.audit_text()
    );
    ok(&as_user(&wazuh, &d, &["list"]));

    // A request that waits for approval cannot be approved by the caller who made it; root can.
    let pending = as_user(
        &wazuh,
        &d,
        &[
            "block",
            SENDER_V4[2],
            "--source",
            "review",
            "--ttl",
            "10m",
            "--json",
        ],
    );
    let reply: enforcer::protocol::BlockReply =
        serde_json::from_slice(&ok(&pending).into_bytes()).unwrap();
    let id = reply.pending_id.expect("a pending id").to_string();
    let listed = d.pending();
    assert_eq!(
        listed[0].requested_by.as_ref().map(|c| c.uid),
        Some(wazuh.uid()),
        "the pending record remembers who asked: {listed:?}"
    );
    fails(
        &as_user(&wazuh, &d, &["approve", &id]),
        4,
        "its own request",
    );
    assert_eq!(lab.passes(SENDER_V4[2]), 10, "still pending");
    ok(&d.cli(&["approve", &id]));
    assert_eq!(lab.passes(SENDER_V4[2]), 0, "approved by root");
    assert_eq!(denials_of(&d, &wazuh).len(), 8);
}

#[test]
fn a_socket_group_member_without_an_access_entry_may_only_read() {
    require_root();
    let lab = Lab::new().unwrap();
    let member = Account::new("enfr").unwrap();
    let (d, _dir) = daemon_with(&lab, &format!("socket_group = \"{}\"\n", member.name()));
    ok(&d.cli(&["block", SENDER_V4[2], "--ttl", "10m"]));
    for args in [
        &["status"][..],
        &["list"],
        &["show", SENDER_V4[2]],
        &["stats"],
        &["allow", "list"],
        &["pending"],
    ] {
        ok(&as_user(&member, &d, args));
    }
    for args in [
        &["block", SENDER_V4[1], "--force", "--permanent"][..],
        &["block", SENDER_V4[1], "--source", "wazuh"],
        &["unblock", SENDER_V4[2]],
        &["allow", "add", "0.0.0.0/0"],
    ] {
        fails(&as_user(&member, &d, args), 4, "permission denied");
    }
    assert_eq!(lab.passes(SENDER_V4[1]), 10, "not blocked");
    assert_eq!(
        lab.passes(SENDER_V4[2]),
        0,
        "neither unblocked nor allowlisted"
    );
    assert_eq!(denials_of(&d, &member).len(), 4, "{}", d.audit_text());
}

#[test]
fn allowlisting_everything_needs_force_and_unspecified_addresses_are_no_targets() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    ok(&d.cli(&["block", SENDER_V4[1], "--ttl", "10m"]));
    d.fails_cleanly(&["allow", "add", "0.0.0.0/0"], 7, "--force");
    d.fails_cleanly(&["allow", "add", "::/0"], 7, "--force");
    d.fails_cleanly(&["allow", "add", "192.0.0.0/16"], 7, "policy.min_prefix_v4");
    assert_eq!(lab.passes(SENDER_V4[1]), 0, "the block still drops");
    ok(&d.cli(&["allow", "add", "198.51.100.0/24"]));
    for target in ["0.0.0.0", "::", "255.255.255.255", "224.0.0.1", "ff02::1"] {
        d.fails_cleanly(&["block", target], 2, "not a block target");
    }
}

/// A caller repeating denied requests cannot flood the audit log (and rotate the history away):
/// the first denials of each caller in an interval are written in full, the rest are counted
/// in one line when the interval ends (here: when the daemon stops), so none goes unrecorded.
#[test]
fn a_flood_of_denied_requests_is_audited_in_a_few_lines_that_count_them_all() {
    require_root();
    const N: usize = 60;
    let lab = Lab::new().unwrap();
    let member = Account::new("enff").unwrap();
    let (mut d, _dir) = daemon_with(&lab, &format!("socket_group = \"{}\"\n", member.name()));
    for i in 0..N {
        let target = format!("198.51.100.{}", i + 1);
        fails(
            &as_user(&member, &d, &["block", &target, "--ttl", "10m"]),
            4,
            "permission denied",
        );
    }
    d.stop().unwrap();
    let lines = denials_of(&d, &member);
    assert!(
        lines.len() <= 12,
        "{} lines for {N} denials:\n{}",
        lines.len(),
        lines.join("\n")
    );
    let counted: usize = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["count"].as_u64().map_or(1, |c| c as usize)
        })
        .sum();
    assert_eq!(counted, N, "every denial is counted:\n{}", lines.join("\n"));
}
