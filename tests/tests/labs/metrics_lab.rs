//! Every `/metrics` family read from a running daemon whose state makes it non-trivial: an
//! interface gone, a breaker open, a request pending approval, spooled requests waiting, the
//! reaper behind, connections held, refused and failed to accept, drops by origin. A family
//! the daemon exposes and no lab checks fails the test until one does.

use std::{os::unix::net::UnixStream, path::Path, time::Duration};

use enforcer::{
    block::Reason,
    protocol::{BlockRequest, Request},
    spool::{self, Spooled},
    time::WallMs,
};
use enforcer_tests::{
    Lab, RECEIVER_IF, SENDER_V4,
    daemon::{Daemon, ok},
    metrics::Scrape,
    require_root, unique_name, wait_for,
};

/// Families a lab of another file checks on a running daemon.
const CHECKED_ELSEWHERE: &[(&str, &str)] = &[
    (
        "enforcer_clock_steps_total",
        "clock_lab::a_backward_wall_clock_step_does_not_lengthen_a_block",
    ),
    ("enforcer_flood_enabled", FLOOD_LAB),
    ("enforcer_flood_limit_packets_per_second", FLOOD_LAB),
    ("enforcer_flood_candidates_total", FLOOD_LAB),
    ("enforcer_flood_reports_dropped_total", FLOOD_LAB),
    ("enforcer_flood_packets_total", FLOOD_LAB),
    ("enforcer_flood_suspects_total", FLOOD_LAB),
    ("enforcer_flood_last_block_latency_seconds", FLOOD_LAB),
    ("enforcer_flood_report_to_block_seconds", FLOOD_LAB),
];

/// Flood detection's families need a flood: that lab checks them on its running daemon.
const FLOOD_LAB: &str = "flood_lab::daemon::a_flooding_source_is_blocked_as_flood_with_its_rate_and_a_legitimate_one_loses_nothing";

const CONFIG: &str = r#"
[policy]
min_prefix_v4 = 16

[policy.sources.wazuh]
rate_limit = 2
on_rate_limit = "shadow"

[policy.approval]
broader_than_v4 = 24

[control_socket]
max_connections = 4
"#;

/// Scrapes until `check` holds (the engine publishes its snapshot after each round, just
/// after it answers); the scrape it held on.
fn eventually(d: &Daemon, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
    wait_for(what, Duration::from_secs(20), || {
        let s = d.scrape()?;
        Ok(check(&s).then_some(s))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}; last scrape:\n{}",
            d.scrape().map(|s| s.0).unwrap_or_default()
        )
    })
}

fn spooled_block(target: &str) -> Spooled {
    Spooled {
        v: spool::SPOOL_VERSION,
        spooled_ms: WallMs::now(),
        id: None,
        request: Request::Block(BlockRequest {
            target: target.parse().unwrap(),
            ttl_secs: Some(3600),
            permanent: false,
            source: "fail2ban".parse().unwrap(),
            reason: Reason::text("spooled"),
            shadow: false,
            force: false,
            scope: Default::default(),
        }),
    }
}

/// The engine held (debug-build stall hook) while spooled requests, a CLI request and an
/// overdue block wait: the gauges show the backlog, then drain to 0 once it runs.
fn backlog_while_the_engine_is_held(d: &Daemon, stall: &Path) {
    const HELD: &str = "held by the test stall hook";
    let before = d.log().matches(HELD).count();
    std::fs::write(stall, b"").unwrap();
    std::thread::scope(|s| {
        // The engine holds at the top of its loop: within a second (its clock check), or
        // after the round this request starts.
        s.spawn(|| d.cli(&["status"]));
        wait_for("the engine to hold", Duration::from_secs(20), || {
            Ok((d.log().matches(HELD).count() > before).then_some(()))
        })
        .unwrap();
        let waiting = s.spawn(|| ok(&d.cli(&["block", "198.51.100.60", "--ttl", "1h"])));
        for i in 70..73 {
            spool::write_entry(&d.state_dir, &spooled_block(&format!("198.51.100.{i}"))).unwrap();
        }
        let held = eventually(d, "the backlog to show while the engine is held", |s| {
            s.value("enforcer_spool_depth") == Some(3.0)
                && s.value("enforcer_control_requests_waiting") >= Some(1.0)
                && s.value("enforcer_reaper_lag_seconds")
                    .is_some_and(|l| l > 0.2)
        });
        assert_eq!(held.get("enforcer_expired_total"), 0.0, "{}", held.0);
        std::fs::remove_file(stall).unwrap();
        waiting.join().unwrap();
    });
    eventually(d, "the backlog to drain", |s| {
        s.value("enforcer_spool_depth") == Some(0.0)
            && s.value("enforcer_control_requests_waiting") == Some(0.0)
            && s.value("enforcer_reaper_lag_seconds") == Some(0.0)
            && s.value("enforcer_expired_total") == Some(1.0)
    });
}

/// Four connections held (the configured most), a fifth turned away, then one accept failed
/// for want of a descriptor.
fn connections_held_refused_and_failed(d: &Daemon) {
    let held: Vec<UnixStream> = (0..4)
        .map(|_| UnixStream::connect(&d.socket).unwrap())
        .collect();
    eventually(d, "four open connections", |s| {
        s.value("enforcer_control_connections") == Some(4.0)
    });
    let turned_away = UnixStream::connect(&d.socket).unwrap();
    eventually(d, "the fifth connection turned away", |s| {
        s.value("enforcer_control_connections_refused_total") == Some(1.0)
    });
    drop((held, turned_away));
    eventually(d, "the connections closed", |s| {
        s.value("enforcer_control_connections") == Some(0.0)
    });
    // Below what is open (descriptors being closed could free a few): no new one fits.
    let old = d.limit_open_files(d.open_files() / 2);
    let starved = UnixStream::connect(&d.socket).unwrap();
    let seen = wait_for("an accept to fail", Duration::from_secs(20), || {
        Ok(d.log()
            .contains("accepting control connections fails")
            .then_some(()))
    });
    d.limit_open_files(old);
    seen.unwrap();
    drop(starved);
}

#[test]
fn every_metric_family_shows_the_running_daemons_state() {
    if !enforcer_tests::test_hooks_or_skip() {
        return;
    }
    require_root();
    let lab = Lab::new().unwrap();
    let extra_if = unique_name("mx");
    let peer = unique_name("my");
    lab.receiver
        .ip(&[
            "link", "add", &extra_if, "type", "veth", "peer", "name", &peer,
        ])
        .unwrap();
    for link in [&extra_if, &peer] {
        lab.receiver.ip(&["link", "set", link, "up"]).unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let (config, stall) = (tmp.path().join("enforcer.toml"), tmp.path().join("stall"));
    std::fs::write(&config, CONFIG).unwrap();
    let env = vec![(
        "ENFORCER_TEST_STALL_ENGINE".to_owned(),
        stall.to_string_lossy().into_owned(),
    )];
    let d = Daemon::start_with_metrics(
        &lab,
        &["--config", config.to_str().unwrap(), "--iface", &extra_if],
        env,
    )
    .unwrap();
    let protected = |i: &str| format!("enforcer_interface_protected{{interface=\"{i}\"}}");
    eventually(&d, "both interfaces protected", |s| {
        s.value(&protected(RECEIVER_IF)) == Some(1.0) && s.value(&protected(&extra_if)) == Some(1.0)
    });

    // Drops by a CLI block; a wazuh breaker opened by its third block in a minute, which
    // goes to shadow (its traffic passes, counted as shadow); a refusal; a pending request.
    ok(&d.cli(&["block", SENDER_V4[1], "--ttl", "1h"]));
    assert_eq!(lab.passes(SENDER_V4[1]), 0);
    for t in ["198.51.100.1", "198.51.100.2", SENDER_V4[2]] {
        ok(&d.cli(&["block", t, "--ttl", "1h", "--source", "wazuh"]));
    }
    assert_eq!(lab.passes(SENDER_V4[2]), 10, "a shadow block passes");
    assert!(!d.cli(&["block", "198.51.100.0/8"]).status.success());
    let _ = d.cli(&["block", "203.0.113.0/23"]);
    ok(&d.cli(&["block", "198.51.100.50", "--ttl", "2s"]));

    backlog_while_the_engine_is_held(&d, &stall);
    connections_held_refused_and_failed(&d);
    lab.receiver.ip(&["link", "del", &extra_if]).unwrap();

    let gone =
        format!("enforcer_interface_changes_total{{interface=\"{extra_if}\",state=\"gone\"}}");
    // Drops by origin are read from the kernel every 10 s, or at once for `stats`.
    ok(&d.cli(&["stats"]));
    let by_origin = "enforcer_dropped_by_origin_packets_total{origin=\"cli\"}";
    let s = eventually(
        &d,
        "the extra interface gone, the drops by origin read",
        |s| {
            s.value(&protected(&extra_if)) == Some(0.0)
                && s.value(&gone) == Some(1.0)
                && s.value(by_origin).is_some()
        },
    );
    let vb = |name: &str, label: &str, value: &str| {
        format!("{name}{{{label}=\"{value}\",interface=\"{RECEIVER_IF}\"}}")
    };
    let at_least = |series: &str, min: f64| {
        let v = s.get(series);
        assert!(v >= min, "{series} is {v}, want at least {min}:\n{}", s.0);
    };
    let exactly = [
        (protected(RECEIVER_IF), 1.0),
        (
            "enforcer_blocks{source=\"wazuh\",mode=\"enforce\"}".into(),
            2.0,
        ),
        (
            "enforcer_blocks{source=\"wazuh\",mode=\"shadow\"}".into(),
            1.0,
        ),
        (
            "enforcer_blocks{source=\"cli\",mode=\"enforce\"}".into(),
            2.0,
        ),
        (
            "enforcer_blocks{source=\"fail2ban\",mode=\"enforce\"}".into(),
            3.0,
        ),
        ("enforcer_block_targets".into(), 8.0),
        ("enforcer_map_entries{map=\"BLOCK_V4\"}".into(), 8.0),
        ("enforcer_map_capacity{map=\"BLOCK_V4\"}".into(), 65536.0),
        ("enforcer_breaker_open{source=\"wazuh\"}".into(), 1.0),
        ("enforcer_pending_approvals".into(), 1.0),
        (
            "enforcer_policy_refusals_total{rule=\"scope\",source=\"cli\"}".into(),
            1.0,
        ),
        ("enforcer_control_connections_refused_total".into(), 1.0),
        ("enforcer_expired_total".into(), 1.0),
        ("enforcer_spool_depth".into(), 0.0),
        ("enforcer_reaper_lag_seconds".into(), 0.0),
        ("enforcer_clock_steps_total".into(), 0.0),
        (
            format!(
                "enforcer_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            ),
            1.0,
        ),
    ];
    for (series, want) in &exactly {
        assert_eq!(s.get(series), *want, "{series}:\n{}", s.0);
    }
    at_least(&vb("enforcer_packets_total", "action", "dropped"), 10.0);
    at_least(&vb("enforcer_packets_total", "action", "shadow"), 10.0);
    at_least(
        &vb("enforcer_bytes_total", "action", "dropped"),
        10.0 * 28.0,
    );
    at_least(
        &vb("enforcer_unjudged_packets_total", "reason", "not-ip"),
        2.0,
    );
    at_least(
        "enforcer_dropped_by_origin_packets_total{origin=\"cli\"}",
        10.0,
    );
    at_least(
        "enforcer_dropped_by_origin_bytes_total{origin=\"cli\"}",
        280.0,
    );
    at_least("enforcer_requests_total{op=\"block\",result=\"ok\"}", 6.0);
    at_least("enforcer_accept_errors_total{error=\"emfile\"}", 1.0);
    at_least("enforcer_store_commits_total", 9.0);
    at_least("enforcer_store_commit_seconds_count", 9.0);
    // (the connections and requests-waiting gauges were seen at 4 and 1, then 0, above)

    let checked: Vec<String> = exactly
        .iter()
        .map(|(series, _)| series.clone())
        .chain(
            [
                "enforcer_packets_total",
                "enforcer_bytes_total",
                "enforcer_unjudged_packets_total",
                "enforcer_interface_changes_total",
                "enforcer_dropped_by_origin_packets_total",
                "enforcer_dropped_by_origin_bytes_total",
                "enforcer_requests_total",
                "enforcer_accept_errors_total",
                "enforcer_store_commits_total",
                "enforcer_store_commit_seconds",
                "enforcer_control_connections",
                "enforcer_control_requests_waiting",
            ]
            .map(str::to_owned),
        )
        .chain(CHECKED_ELSEWHERE.iter().map(|(f, _)| (*f).to_owned()))
        .collect();
    let unchecked: Vec<String> = s
        .families()
        .into_iter()
        .filter(|f| {
            !checked
                .iter()
                .any(|c| c == f || c.starts_with(&format!("{f}{{")))
        })
        .collect();
    assert!(
        unchecked.is_empty(),
        "families no lab checks on a running daemon: {unchecked:?}"
    );
}
