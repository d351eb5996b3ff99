//! The safety policy, end to end: the real daemon with a policy file, the real CLI, real traffic.

use std::time::Duration;

use enforcer::{
    Target,
    block::{Mode, Source},
    protocol::{BlockReply, Outcome},
    time::WallMs,
};
use enforcer_tests::{
    Lab, RECEIVER_V4, SENDER_V4,
    daemon::{Daemon, cli, fails, ok, targets},
    require_root, wait_for,
};

/// A daemon with `config` (TOML) as its configuration file.
fn daemon_with(lab: &Lab, config: &str) -> (Daemon, tempfile::TempDir) {
    Daemon::with_config(lab, config).unwrap()
}

#[test]
fn the_hosts_own_address_and_its_gateway_cannot_be_blocked() {
    require_root();
    let lab = Lab::new().unwrap();
    // The receiver routes everything through the sender's primary address.
    lab.receiver
        .ip(&["route", "add", "default", "via", SENDER_V4[0]])
        .unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();

    fails(
        &d.cli(&["block", RECEIVER_V4]),
        7,
        "refused by policy rule `allowlist`: 192.0.2.2 is inside allowlisted 192.0.2.2 (builtin: host address)",
    );
    fails(
        &d.cli(&["block", SENDER_V4[0]]),
        7,
        "(builtin: default gateway)",
    );
    fails(&d.cli(&["block", "127.0.0.1"]), 7, "builtin: loopback");
    // A prefix holding them is refused unless forced; forced, the allowlisted part stays reachable.
    fails(
        &d.cli(&["block", "192.0.2.0/24"]),
        7,
        "contains allowlisted",
    );
    ok(&d.cli(&[
        "block",
        "192.0.2.0/24",
        "--force",
        "--reason",
        "forced for the test",
    ]));
    assert_eq!(
        lab.passes(SENDER_V4[1]),
        0,
        "the rest of the prefix is blocked"
    );
    assert_eq!(lab.passes(SENDER_V4[0]), 10, "the gateway stays reachable");
    // Only sources allowed to force may.
    fails(
        &d.cli(&["block", "192.0.2.0/25", "--force", "--source", "wazuh"]),
        7,
        "may not force",
    );

    let origins: Vec<String> = d
        .allowlist()
        .iter()
        .map(|e| format!("{} {}", e.target, e.origin))
        .collect();
    assert!(
        origins
            .iter()
            .any(|o| o.contains("192.0.2.2") && o.contains("host address")),
        "{origins:?}"
    );

    // A new address on the host is allowlisted as soon as it appears.
    lab.receiver
        .ip(&["addr", "add", "192.0.2.3/24", "dev", "vb"])
        .unwrap();
    wait_for(
        "the new host address on the allowlist",
        Duration::from_secs(5),
        || {
            Ok(d.allowlist()
                .iter()
                .any(|e| e.target.to_string() == "192.0.2.3")
                .then_some(()))
        },
    )
    .unwrap();
    fails(&d.cli(&["block", "192.0.2.3"]), 7, "builtin: host address");
    assert!(d.audit_text().contains("\"action\":\"refuse\""));

    // The default route moves to another gateway: the new one is allowlisted, the old one no
    // longer is; an address removed from the host leaves the allowlist too.
    let allowlisted = |what: &str, addr: &str| {
        d.allowlist()
            .iter()
            .any(|e| e.target.to_string() == addr && e.origin.contains(what))
    };
    lab.receiver
        .ip(&["route", "replace", "default", "via", SENDER_V4[1]])
        .unwrap();
    lab.receiver
        .ip(&["addr", "del", "192.0.2.3/24", "dev", "vb"])
        .unwrap();
    wait_for(
        "the allowlist to follow the new route and the removed address",
        Duration::from_secs(5),
        || {
            let followed = allowlisted("default gateway", SENDER_V4[1])
                && !allowlisted("default gateway", SENDER_V4[0])
                && !allowlisted("host address", "192.0.2.3");
            Ok(followed.then_some(()))
        },
    )
    .unwrap();
    fails(
        &d.cli(&["block", SENDER_V4[1]]),
        7,
        "(builtin: default gateway)",
    );
    ok(&d.cli(&["block", SENDER_V4[0], "--reason", "no longer the gateway"]));
    ok(&d.cli(&["block", "192.0.2.3", "--reason", "no longer a host address"]));
    // An IPv6 default route counts the same.
    lab.receiver
        .ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8::1",
            "dev",
            "vb",
        ])
        .unwrap();
    wait_for(
        "the IPv6 gateway on the allowlist",
        Duration::from_secs(5),
        || Ok(allowlisted("default gateway", "2001:db8::1").then_some(())),
    )
    .unwrap();
}

#[test]
fn shadow_rollout_counts_without_dropping_and_promote_enforces() {
    require_root();
    let lab = Lab::new().unwrap();
    let (d, _cfg) = daemon_with(&lab, "[policy]\nmode = \"shadow\"\n");
    let r = d.block(&[SENDER_V4[1], "--ttl", "10m"]);
    assert_eq!(r.mode, Mode::Shadow);
    assert!(
        r.notes.iter().any(|n| n.contains("rollout mode is shadow")),
        "{:?}",
        r.notes
    );
    assert_eq!(lab.passes(SENDER_V4[1]), 10, "shadow lets packets through");
    let list = d.list(&[]);
    assert_eq!(list[0].mode, Mode::Shadow);
    assert_eq!(list[0].packets, 10, "what it would have dropped");
    assert_eq!(d.show(SENDER_V4[1]).verdict, "pass (shadow)");
    let p: Vec<(Target, Source)> = d.reply(&["promote", SENDER_V4[1]]);
    assert_eq!(p[0].0.to_string(), SENDER_V4[1]);
    assert_eq!(lab.passes(SENDER_V4[1]), 0, "promoted: enforced");
    assert_eq!(d.list(&[])[0].mode, Mode::Enforce);
    fails(
        &d.cli(&["promote", "--source", "cli"]),
        5,
        "no shadow blocks",
    );
}

#[test]
fn the_breaker_opens_at_its_rate_and_closes_again() {
    require_root();
    let lab = Lab::new().unwrap();
    let (d, _cfg) = daemon_with(
        &lab,
        "[policy.sources.feed]\nrate_limit = 3\nbreaker_cooldown = \"3s\"\non_rate_limit = \"shadow\"\n\n\
         [policy.sources.strict]\nrate_limit = 2\nbreaker_cooldown = \"1h\"\non_rate_limit = \"refuse\"\n",
    );
    for i in 1..=3 {
        let r = d.block(&[&format!("198.51.100.{i}"), "--source", "feed"]);
        assert_eq!(r.mode, Mode::Enforce);
    }
    let asked = WallMs::now().unix_ms();
    let r = d.block(&["198.51.100.4", "--source", "feed"]);
    assert_eq!(r.mode, Mode::Shadow, "past the rate: shadow");
    let status = d.status();
    assert_eq!(status.breakers[0].source.as_str(), "feed");
    let closes = status.breakers[0].closes_ms.unix_ms();
    assert!(
        closes >= asked + 3000,
        "the breaker closes after its 3 s cooldown, not at {}",
        closes - asked
    );
    assert!(d.audit_text().contains("\"action\":\"breaker_open\""));
    // Other sources are not affected.
    assert_eq!(d.block(&[SENDER_V4[1]]).mode, Mode::Enforce);
    // It closes by time: not before its cooldown, and soon after.
    let closed = wait_for("the breaker to close", Duration::from_secs(8), || {
        Ok(d.status()
            .breakers
            .is_empty()
            .then(|| WallMs::now().unix_ms()))
    })
    .unwrap();
    assert!(
        closed >= asked + 3000,
        "the breaker closed {} ms after opening, before its 3 s cooldown",
        closed - asked
    );
    assert!(
        closed <= closes + 2000,
        "the breaker closed {} ms late",
        closed - closes
    );
    assert_eq!(
        d.block(&["198.51.100.5", "--source", "feed"]).mode,
        Mode::Enforce
    );

    // A refusing breaker, closed by hand.
    ok(&d.cli(&["block", "203.0.113.1", "--source", "strict"]));
    ok(&d.cli(&["block", "203.0.113.2", "--source", "strict"]));
    fails(
        &d.cli(&["block", "203.0.113.3", "--source", "strict"]),
        7,
        "refused by policy rule `breaker`",
    );
    assert!(
        ok(&d.cli(&["breaker", "reset", "--source", "strict"]))
            .contains("closed the breaker of strict")
    );
    ok(&d.cli(&["block", "203.0.113.3", "--source", "strict"]));
}

/// Issue 10, problem 1: Wazuh re-blocks on every repeated alert and fail2ban restores every ban
/// on restart, so an open breaker must hold for repeats too: the shadowed target stays shadowed
/// (its packets pass) however often its source blocks it again while the breaker is open.
#[test]
fn an_open_breaker_holds_when_its_source_blocks_the_same_target_again() {
    require_root();
    let lab = Lab::new().unwrap();
    let (d, _cfg) = daemon_with(
        &lab,
        "[policy.sources.noisy]\nrate_limit = 2\nbreaker_cooldown = \"1h\"\non_rate_limit = \"shadow\"\n",
    );
    for target in ["203.0.113.1", "203.0.113.2"] {
        assert_eq!(d.block(&[target, "--source", "noisy"]).mode, Mode::Enforce);
    }
    let r = d.block(&[SENDER_V4[1], "--source", "noisy", "--ttl", "10m"]);
    assert_eq!(r.mode, Mode::Shadow, "past the rate: shadow");
    for repeat in 1..=3 {
        let r = d.block(&[SENDER_V4[1], "--source", "noisy", "--ttl", "20m"]);
        assert_eq!(r.outcome, Outcome::Extended, "repeat {repeat}");
        assert_eq!(
            r.mode,
            Mode::Shadow,
            "repeat {repeat} while the breaker is open must not enforce"
        );
    }
    assert_eq!(
        d.status().breakers[0].source.as_str(),
        "noisy",
        "the breaker is still open"
    );
    assert_eq!(
        d.list(&["--source", "noisy"])
            .iter()
            .filter(|e| e.mode == Mode::Enforce)
            .count(),
        2
    );
    assert_eq!(
        lab.passes(SENDER_V4[1]),
        10,
        "a shadowed target's packets pass"
    );
    // Once a person closes the breaker, a repeat may enforce again.
    ok(&d.cli(&["breaker", "reset", "--source", "noisy"]));
    ok(&d.cli(&["promote", SENDER_V4[1]]));
    assert_eq!(lab.passes(SENDER_V4[1]), 0, "promoted by hand: enforced");
}

#[test]
fn repeat_offenders_get_escalated_ttls() {
    require_root();
    let lab = Lab::new().unwrap();
    let (d, _cfg) = daemon_with(
        &lab,
        "default_ttl = \"1m\"\n[policy]\nmax_ttl = \"2d\"\n[policy.repeat_offenders]\nwindow = \"1d\"\nttls = [\"1m\", \"1h\", \"1d\", \"7d\"]\n",
    );
    let left = |r: &BlockReply| (r.expires_ms.unwrap().unix_ms() - WallMs::now().unix_ms()) / 1000;
    let mut ttls = Vec::new();
    for _ in 0..4 {
        let r = d.block(&[SENDER_V4[1], "--source", "wazuh"]);
        ttls.push(left(&r));
        ok(&d.cli(&["unblock", SENDER_V4[1], "--source", "wazuh"]));
    }
    let close = |got: u64, want: u64| got + 5 >= want && got <= want;
    assert!(close(ttls[0], 60), "{ttls:?}");
    assert!(close(ttls[1], 3600), "{ttls:?}");
    assert!(close(ttls[2], 86_400), "{ttls:?}");
    assert!(close(ttls[3], 2 * 86_400), "capped by max_ttl: {ttls:?}");
    assert!(d.audit_text().contains("repeat offender"));
}

#[test]
fn broad_blocks_wait_for_approval_and_expire_unapproved() {
    require_root();
    let lab = Lab::new().unwrap();
    let (d, _cfg) = daemon_with(
        &lab,
        "[policy]\nmin_prefix_v4 = 16\n[policy.approval]\nbroader_than_v4 = 24\npending_ttl = \"3s\"\n",
    );
    let r = d.block(&["198.51.100.0/23", "--ttl", "1h"]);
    assert_eq!(r.outcome, Outcome::Pending);
    let id = r.pending_id.unwrap();
    let pending = d.pending();
    assert_eq!(pending[0].id, id);
    assert_eq!(pending[0].request.target.to_string(), "198.51.100.0/23");
    assert!(d.list(&[]).is_empty(), "nothing is blocked before approval");
    let approved: BlockReply = d.reply(&["approve", &id.to_string()]);
    assert_eq!(approved.outcome, Outcome::Created);
    assert_eq!(targets(&d.list(&[])), ["198.51.100.0/23"]);

    let r = d.block(&["203.0.112.0/23"]);
    let rejected = r.pending_id.unwrap();
    ok(&d.cli(&["reject", &rejected.to_string()]));
    fails(
        &d.cli(&["approve", &rejected.to_string()]),
        5,
        "no pending block",
    );

    let asked = WallMs::now().unix_ms();
    d.block(&["203.0.112.0/22"]);
    let expires = d.pending()[0].expires_ms.unix_ms();
    assert!(
        expires >= asked + 3000,
        "pending_ttl is 3 s, yet it expires {} ms after the request",
        expires - asked
    );
    let gone = wait_for(
        "the pending block to expire",
        Duration::from_secs(8),
        || Ok(d.pending().is_empty().then(|| WallMs::now().unix_ms())),
    )
    .unwrap();
    assert!(
        gone >= asked + 3000,
        "the pending block expired {} ms after it was asked, before its 3 s",
        gone - asked
    );
    assert!(
        gone <= expires + 2000,
        "the pending block expired {} ms late",
        gone - expires
    );
    assert!(d.audit_text().contains("\"action\":\"pending_expire\""));
    assert_eq!(d.list(&[]).len(), 1, "only the approved block");
}

#[test]
fn pending_ids_are_never_reused_after_a_restart() {
    require_root();
    let lab = Lab::new().unwrap();
    let (mut d, _cfg) = daemon_with(&lab, "[policy.sources.manual]\nrequire_approval = true\n");
    let ask = |d: &Daemon, target: &str| {
        d.block(&[target, "--ttl", "1h", "--source", "manual"])
            .pending_id
            .unwrap()
    };
    let waiting = ask(&d, "198.51.100.7");
    let rejected = ask(&d, "203.0.113.7");
    ok(&d.cli(&["reject", &rejected.to_string()]));
    d.stop().unwrap();
    d.spawn().unwrap();
    let after = ask(&d, "192.0.2.77");
    assert!(
        after != waiting && after != rejected,
        "after a restart the new pending block got id {after}, already used by {} before it",
        if after == waiting {
            "the block still waiting"
        } else {
            "the rejected block"
        }
    );
    let approve = |id: u64| d.reply::<BlockReply>(&["approve", &id.to_string()]).outcome;
    assert_eq!(
        approve(waiting),
        Outcome::Created,
        "the block pending across the restart"
    );
    assert_eq!(
        approve(after),
        Outcome::Created,
        "the block pending since the restart"
    );
    let listed = targets(&d.list(&[]));
    assert_eq!(
        listed.len(),
        2,
        "both approved blocks are in force: {listed:?}"
    );
    assert!(
        d.audit_text()
            .contains(&format!("approved pending block {after}"))
    );
}

#[test]
fn allowlist_changes_reach_the_kernel_at_once() {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    ok(&d.cli(&["block", SENDER_V4[1]]));
    assert_eq!(lab.passes(SENDER_V4[1]), 0);
    ok(&d.cli(&["allow", "add", SENDER_V4[1], "--comment", "monitoring host"]));
    assert_eq!(
        lab.passes(SENDER_V4[1]),
        10,
        "the allowlist wins over the existing block"
    );
    assert_eq!(d.show(SENDER_V4[1]).verdict, "pass (allowlisted)");
    fails(
        &d.cli(&["block", SENDER_V4[1], "--source", "wazuh"]),
        7,
        "cli: monitoring host",
    );
    ok(&d.cli(&["allow", "remove", SENDER_V4[1]]));
    assert_eq!(lab.passes(SENDER_V4[1]), 0);
    fails(
        &d.cli(&["allow", "remove", RECEIVER_V4]),
        7,
        "comes from builtin: host address",
    );
    fails(
        &d.cli(&["allow", "remove", "203.0.113.9"]),
        5,
        "not on the allowlist",
    );
}

#[test]
fn check_config_reports_policy_mistakes_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("enforcer.toml");
    let check = |text: &str| {
        std::fs::write(&path, text).unwrap();
        let out = cli(
            std::path::Path::new("/nonexistent"),
            &[
                "daemon",
                "--config",
                path.to_str().unwrap(),
                "--check-config",
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(1),
            "a configuration mistake exits 1: {stderr}"
        );
        assert!(
            out.stdout.is_empty(),
            "nothing on stdout for a bad configuration"
        );
        stderr
    };
    let p = path.display().to_string();
    let e = check("[policy]\nmode = \"enforce\"\nmin_prefix_v4 = 40\n");
    assert!(
        e.contains(&format!("{p}:3:")) && e.contains("more than 32"),
        "{e}"
    );
    let e = check("[policy]\nmode = \"block-everything\"\n");
    assert!(e.contains(&format!("{p}:2:")), "{e}");
    let e = check("[policy.sources.wazuh]\nrate_limt = 5\n");
    assert!(
        e.contains(&format!("{p}:2:")) && e.contains("unknown field"),
        "{e}"
    );
    let e = check("[policy.repeat_offenders]\nwindow = \"1d\"\nttls = []\n");
    assert!(
        e.contains(&format!("{p}:3:")) && e.contains("at least one"),
        "{e}"
    );
    let e = check("[allowlist]\nprefixes = [\"10.0.0.0/33\"]\n");
    assert!(
        e.contains(&format!("{p}:2:")) && e.contains("invalid prefix length"),
        "{e}"
    );
}

#[test]
fn a_capped_ttl_is_noted_in_the_reply_and_the_audit_log() {
    require_root();
    let lab = Lab::new().unwrap();
    let (d, _cfg) = daemon_with(&lab, "[policy]\nmax_ttl = \"1h\"\n");
    let asked = WallMs::now().unix_ms();
    let r = d.block(&[SENDER_V4[1], "--ttl", "2h", "--reason", "capped"]);
    let left = r.expires_ms.unwrap().unix_ms() - asked;
    assert!(
        (3_595_000..=3_605_000).contains(&left),
        "capped at 1 h, got {left} ms"
    );
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("TTL capped at the maximum 1h")),
        "{r:?}"
    );
    let line = d
        .audit_text()
        .lines()
        .find(|l| l.contains("\"action\":\"block\"") && l.contains(SENDER_V4[1]))
        .map(str::to_owned);
    let line = line.expect("the block is audited");
    assert!(line.contains("TTL capped at the maximum 1h"), "{line}");
    assert_eq!(lab.passes(SENDER_V4[1]), 0);
}

#[test]
fn scope_and_time_bounds_refusals_exit_7_and_change_nothing() {
    require_root();
    let lab = Lab::new().unwrap();
    let (d, _cfg) = daemon_with(&lab, "[policy]\nmax_ttl = \"1d\"\n");
    ok(&d.cli(&["block", SENDER_V4[1], "--source", "wazuh"]));
    d.fails_cleanly(
        &["block", "198.51.0.0/16", "--source", "wazuh"],
        7,
        "refused by policy rule `scope`",
    );
    d.fails_cleanly(
        &["block", "2001:db8:8000::/33", "--source", "wazuh"],
        7,
        "refused by policy rule `scope`",
    );
    d.fails_cleanly(
        &["block", "198.51.100.7", "--permanent", "--source", "wazuh"],
        7,
        "refused by policy rule `time_bounds`",
    );
    let log = d.audit_text();
    let refusal = |target: &str, rule: &str| {
        log.lines().any(|l| {
            l.contains("\"action\":\"refuse\"")
                && l.contains(&format!("\"target\":\"{target}\""))
                && l.contains(rule)
        })
    };
    assert!(
        refusal("198.51.0.0/16", "scope") && refusal("198.51.100.7", "time_bounds"),
        "{log}"
    );
    assert_eq!(lab.passes(SENDER_V4[2]), 10, "nothing else is blocked");
}
