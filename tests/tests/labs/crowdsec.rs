//! The daemon as a CrowdSec bouncer, against the real LAPI (Debian's `crowdsec` 1.4, unpacked,
//! Central API off) running on loopback inside the lab's receiver namespace, and against a small
//! fake LAPI for answers a real one would not give.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Result;
use enforcer::{
    protocol::{CrowdsecStatus, ListEntry, StatusReply},
    time::WallMs,
};
use enforcer_tests::{
    Lab, RECEIVER_V4, SENDER_V4, SENDER_V6,
    crowdsec::{FleetLabs, Lapi, Pki},
    daemon::{Daemon, ok},
    require_root, wait_for,
};

/// The poll interval the tests configure (`update_frequency`).
pub(crate) const POLL: &str = "1s";
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// What a pull (fetch, apply) and seeing its effect add to one poll interval, from the moment
/// the LAPI has the change. Measured at load 17-20 on two cores: the change enforced 145-730 ms
/// after it was made right after a pull (within_one_poll), a fleet's two hosts both dropping
/// 0.79-1.27 s after cscli returned (at any point of the poll). Under the poll interval, so a
/// bouncer that polls less often or applies a poll late fails.
const APPLY_MARGIN: Duration = Duration::from_millis(800);
/// The README's claim: a LAPI decision is enforced (or lifted) within one poll.
pub(crate) const WITHIN_ONE_POLL: Duration = POLL_INTERVAL.saturating_add(APPLY_MARGIN);
/// How late a decision may lift after its end: the kernel's deadline is exact, so this is how
/// often `Lab::passes` can look (its control frame and grace) on a loaded machine. Measured at
/// load 17-20: the first datagrams through were sent 9.66-10.16 s after cscli was started for
/// a 10 s decision, never after the latest possible end.
const EXPIRY_MARGIN: Duration = Duration::from_millis(600);
/// How early a lift may seem: the LAPI keeps a decision's end to the second (a 10 s decision
/// was seen to lift 340 ms before the moment cscli was started plus 10 s).
const EXPIRY_SLACK: Duration = Duration::from_secs(1);
/// How much later than the LAPI's end (the time its answer was seen plus the `duration` it
/// gave) a block may end: the daemon reads the answer, maps it and applies it after the test
/// sees the request (the test looks every 5 ms). Measured at load 10-16 (13 runs): -18 to +20 ms.
const CONVERSION_MARGIN: Duration = Duration::from_millis(500);
/// How far a block's end may be from the LAPI's, beyond the time it takes to ask the LAPI:
/// its `duration` is written to the nanosecond and read to the millisecond. Measured against
/// LAPI 1.4 at load 10-16 (10 runs): the block's end lay within the interval asking took
/// (66-551 ms), to 1 ms.
const LAPI_ROUNDING: Duration = Duration::from_millis(100);
/// For what the tests wait on that no claim bounds (a status change, a LAPI coming back, a
/// large pull): long enough for a loaded CI machine.
pub(crate) const PATIENCE: Duration = Duration::from_secs(8);

fn wait_dropped(lab: &Lab, src: &str, dropped: bool, timeout: Duration) -> Duration {
    let start = Instant::now();
    wait_for(
        &format!("{src} to be {}", if dropped { "dropped" } else { "passed" }),
        timeout,
        || Ok(((lab.passes(src) == 0) == dropped).then_some(())),
    )
    .unwrap();
    start.elapsed()
}

/// Makes `change` to the LAPI's decisions right after a pull, then checks the claim "within
/// one poll" both ways: the change is enforced for every source in `srcs` (dropped, or passing
/// again when `!dropped`) no later than by the first pull that surely started after it (seen
/// with `Lab::passes` as each pull is counted, so no timing is involved), and that pull came
/// within one poll interval plus the margin of the change. Returns how long it took.
pub(crate) fn within_one_poll(
    lab: &Lab,
    daemon: &Daemon,
    srcs: &[&str],
    dropped: bool,
    change: impl FnOnce() -> Result<()>,
) -> Result<Duration> {
    let before = crowdsec(daemon).pulls;
    let after_pull = wait_for("a pull", PATIENCE, || {
        let pulls = crowdsec(daemon).pulls;
        Ok((pulls > before).then_some(pulls))
    })?;
    let pulled = Instant::now();
    change()?;
    let changed = Instant::now();
    // Pulls start one interval apart (or later), and the one just counted began at most half
    // an interval before it was counted (fetch, apply, the status call). So pull
    // `after_pull + k` started after the change when k intervals exceed the change's duration
    // plus that half: the first such k.
    let took_change = changed - pulled;
    let intervals = (took_change + POLL_INTERVAL / 2).as_millis() / POLL_INTERVAL.as_millis();
    let first_after = after_pull + 1 + u64::try_from(intervals).expect("a few intervals");
    let mut seen = after_pull;
    let (pull, took) = loop {
        seen = wait_for("the next pull", PATIENCE, || {
            let pulls = crowdsec(daemon).pulls;
            Ok((pulls > seen).then_some(pulls))
        })?;
        let took = changed.elapsed();
        let got: Vec<u32> = srcs.iter().map(|src| lab.passes(src)).collect();
        if got.iter().all(|n| (*n == 0) == dropped) {
            break (seen, took);
        }
        assert!(
            seen < first_after,
            "{srcs:?}: {got:?} of 10 datagrams passed after pull {seen}, the first that started \
             after the change (it took {took_change:?} after pull {after_pull}): not applied by \
             that pull"
        );
    };
    eprintln!(
        "the change was enforced by pull {pull} (it took {took_change:?} after pull \
         {after_pull}; the first pull surely after it is {first_after}), {took:?} after the LAPI \
         had it"
    );
    assert!(
        took <= WITHIN_ONE_POLL,
        "the pull that enforced the change came {took:?} after it, more than one poll \
         ({POLL_INTERVAL:?}) and the margin ({APPLY_MARGIN:?})"
    );
    Ok(took)
}

fn status(d: &Daemon) -> StatusReply {
    serde_json::from_value(d.json(&["status"])).expect("status JSON")
}

fn crowdsec(d: &Daemon) -> CrowdsecStatus {
    status(d)
        .crowdsec
        .expect("status shows the crowdsec bouncer")
}

fn list(d: &Daemon, source: Option<&str>) -> Vec<ListEntry> {
    let mut args = vec!["list"];
    if let Some(s) = source {
        args.extend(["--source", s]);
    }
    serde_json::from_value(d.json(&args)).expect("list JSON")
}

fn sources_of(d: &Daemon, target: &str) -> Vec<String> {
    list(d, None)
        .into_iter()
        .find(|e| e.target.to_string() == target)
        .map(|e| e.sources.iter().map(|s| s.source.to_string()).collect())
        .unwrap_or_default()
}

/// A lab, a LAPI on loopback in its receiver namespace, and a daemon pulling from it.
fn setup(extra_config: &str) -> Result<(Lab, Lapi, Daemon)> {
    let lab = Lab::new()?;
    let lapi = Lapi::start(&lab.receiver, "127.0.0.1:8080")?;
    let config = lapi.daemon_config(
        "host-a",
        &lapi.url(),
        &format!("update_frequency = \"{POLL}\"\n{extra_config}"),
    )?;
    let daemon = Daemon::start(&lab, &["--config", &config.to_string_lossy()])?;
    Ok((lab, lapi, daemon))
}

#[test]
fn lapi_bans_of_both_families_are_dropped_within_one_poll_and_lifted_by_delete_or_expiry()
-> Result<()> {
    require_root();
    let (lab, lapi, daemon) = setup("")?;
    for src in [SENDER_V4[1], SENDER_V6[1], SENDER_V4[2], SENDER_V6[2]] {
        assert_eq!(lab.passes(src), 10, "{src} passes before any decision");
    }
    // Single addresses, both families.
    within_one_poll(&lab, &daemon, &[SENDER_V4[1], SENDER_V6[1]], true, || {
        lapi.cscli(&[
            "decisions",
            "add",
            "--ip",
            SENDER_V4[1],
            "--duration",
            "1h",
            "--reason",
            "test/ssh-bf",
        ])?;
        lapi.cscli(&["decisions", "add", "--ip", SENDER_V6[1], "--duration", "1h"])?;
        Ok(())
    })?;
    assert_eq!(
        lab.passes(SENDER_V4[0]),
        10,
        "an unrelated source still passes"
    );
    // `list --source crowdsec` shows the scenario, origin and decision id.
    let entries = list(&daemon, Some("crowdsec"));
    let v4 = entries
        .iter()
        .find(|e| e.target.to_string() == SENDER_V4[1])
        .expect("listed");
    let reason = &v4.sources[0].reason;
    assert_eq!(reason.rule_id.as_deref(), Some("test/ssh-bf"));
    assert!(reason.summary().contains("origin cscli"), "{reason:?}");
    let table = ok(&daemon.cli(&["list", "--source", "crowdsec"]));
    assert!(
        table.contains("test/ssh-bf (origin cscli, decision"),
        "{table}"
    );
    // The bouncer is registered under its own name and version.
    let bouncers = lapi.cscli(&["bouncers", "list", "-o", "json"])?;
    assert!(
        bouncers.contains("enforcer"),
        "cscli bouncers list shows the user agent: {bouncers}"
    );
    // Deleting the decisions lifts the blocks.
    within_one_poll(&lab, &daemon, &[SENDER_V4[1], SENDER_V6[1]], false, || {
        // Both decisions (the only ones) in one cscli call: the change is quick.
        lapi.cscli(&["decisions", "delete", "--all"]).map(drop)
    })?;
    // Ranges, both families: .8/29 holds .10 and .11; ::10/124 holds ::10 and ::11.
    within_one_poll(&lab, &daemon, &[SENDER_V4[2], SENDER_V6[2]], true, || {
        lapi.cscli(&[
            "decisions",
            "add",
            "--range",
            "192.0.2.8/29",
            "--duration",
            "1h",
        ])?;
        lapi.cscli(&[
            "decisions",
            "add",
            "--range",
            "2001:db8::10/124",
            "--duration",
            "1h",
        ])?;
        Ok(())
    })?;
    assert_eq!(lab.passes(SENDER_V4[0]), 10, "the range does not reach .1");
    let targets: Vec<String> = list(&daemon, Some("crowdsec"))
        .iter()
        .map(|e| e.target.to_string())
        .collect();
    assert_eq!(targets.len(), 2, "{targets:?}");
    assert!(
        targets.contains(&"192.0.2.8/29".to_owned())
            && targets.contains(&"2001:db8::10/124".to_owned()),
        "{targets:?}"
    );
    within_one_poll(&lab, &daemon, &[SENDER_V4[2], SENDER_V6[2]], false, || {
        lapi.cscli(&["decisions", "delete", "--all"]).map(drop)
    })?;
    // The safety policy judges every decision: the host's own address is refused, counted and
    // audited.
    lapi.cscli(&["decisions", "add", "--ip", RECEIVER_V4, "--duration", "1h"])?;
    wait_for("the refusal to be counted", PATIENCE, || {
        Ok((crowdsec(&daemon).refused == 1).then_some(()))
    })?;
    let audit = std::fs::read_to_string(daemon.state_dir.join("audit.log"))?;
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"refuse\"") && l.contains(RECEIVER_V4) && l.contains("crowdsec")),
        "the refusal is audited: {audit}"
    );
    let cs = crowdsec(&daemon);
    assert_eq!(cs.api_url, lapi.url());
    assert!(cs.last_pull_ms.is_some() && cs.errors == 0, "{cs:?}");
    assert!(cs.applied >= 4, "{cs:?}");
    assert!(
        cs.usage_metrics.starts_with("off"),
        "LAPI 1.4 has no usage-metrics endpoint: {cs:?}"
    );
    let text = ok(&daemon.cli(&["status"]));
    assert!(
        text.contains(&format!("crowdsec: LAPI {}", lapi.url())) && text.contains("refused 1"),
        "{text}"
    );
    Ok(())
}

/// An expiring decision lifts at its end in the kernel, not at a later pull: once it is
/// enforced the LAPI is stopped, so no pull can lift it (a bouncer that lifts at the next pull
/// never does here), and it still lifts on time: never before the decision's end, and within
/// the margin after it.
#[test]
fn an_expiring_decision_lifts_at_its_end_with_no_pull_to_lift_it() -> Result<()> {
    require_root();
    let (lab, mut lapi, daemon) = setup("")?;
    const DURATION: Duration = Duration::from_secs(10);
    let asked = Instant::now();
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        SENDER_V4[2],
        "--duration",
        "10s",
    ])?;
    let added = Instant::now();
    // The decision's end, as the LAPI sets it (its creation time plus the duration), lies
    // between these two.
    let (earliest_end, latest_end) = (asked + DURATION, added + DURATION);
    wait_dropped(&lab, SENDER_V4[2], true, PATIENCE);
    lapi.stop();
    wait_for("a failed pull", PATIENCE, || {
        Ok((crowdsec(&daemon).errors > 0).then_some(()))
    })?;
    assert_eq!(
        lab.passes(SENDER_V4[2]),
        0,
        "still dropped with the LAPI gone"
    );
    // The start of the first exchange that got through: its datagrams were sent after the
    // block lifted.
    let lifted = wait_for("the block to lift", DURATION + PATIENCE, || {
        let sent = Instant::now();
        Ok((lab.passes(SENDER_V4[2]) == 10).then_some(sent))
    })?;
    let late = lifted.saturating_duration_since(latest_end);
    eprintln!(
        "lifted {:?} after cscli was started, {late:?} after the latest possible end, with no \
         pull",
        lifted - asked
    );
    assert!(
        lifted + EXPIRY_SLACK >= earliest_end,
        "lifted {:?} before the decision's end",
        earliest_end - lifted
    );
    assert!(
        late <= EXPIRY_MARGIN,
        "lifted {late:?} after the decision's end (margin {EXPIRY_MARGIN:?})"
    );
    Ok(())
}

#[test]
fn a_cli_block_of_the_same_target_survives_the_crowdsec_deletion() -> Result<()> {
    require_root();
    let (lab, lapi, daemon) = setup("")?;
    lapi.cscli(&["decisions", "add", "--ip", SENDER_V4[1], "--duration", "1h"])?;
    wait_dropped(&lab, SENDER_V4[1], true, PATIENCE);
    ok(&daemon.cli(&["block", SENDER_V4[1], "--ttl", "1h", "--reason", "by hand"]));
    assert_eq!(sources_of(&daemon, SENDER_V4[1]), ["cli", "crowdsec"]);
    lapi.cscli(&["decisions", "delete", "--ip", SENDER_V4[1]])?;
    wait_for("the crowdsec block to go", PATIENCE, || {
        Ok((sources_of(&daemon, SENDER_V4[1]) == ["cli"]).then_some(()))
    })?;
    assert_eq!(lab.passes(SENDER_V4[1]), 0, "the CLI block still drops");
    Ok(())
}

/// When the LAPI says `value`'s longest decision ends: the time left it reports to a bouncer,
/// counted from just before it was asked, and how long asking took (the end is at most that
/// later).
fn lapi_end(lapi: &Lapi, value: &str) -> Result<(WallMs, Duration)> {
    let before = WallMs::now();
    let decisions = lapi.decisions(value)?;
    let asking = WallMs::now().saturating_since(before);
    let left = decisions
        .iter()
        .filter_map(|d| d["duration"].as_str())
        .map(enforcer::crowdsec::go_duration::parse_millis)
        .collect::<Result<Vec<i64>, _>>()?
        .into_iter()
        .max()
        .and_then(|ms| u64::try_from(ms).ok())
        .ok_or_else(|| anyhow::anyhow!("no live decision for {value}: {decisions:?}"))?;
    Ok((before + Duration::from_millis(left), asking))
}

/// A decision the LAPI still holds unchanged keeps its end across the restart: the startup
/// pull asks for the same end (the LAPI's `until`, counted from its answer), so the block is
/// left as it is, with no audit line. One whose end moved on the LAPI gets the new end. (The start of a daemon takes seconds here; the first pull
/// once counted the LAPI's time left from when the engine was ready, and lengthened every kept
/// block by that much at each restart.)
#[test]
fn decisions_changed_while_the_daemon_is_down_are_applied_at_restart_and_nothing_else_is_touched()
-> Result<()> {
    require_root();
    /// An address whose decision is made longer while the daemon is down (no packets needed).
    const MOVED: &str = "203.0.113.77";
    let (lab, lapi, mut daemon) = setup("")?;
    lapi.cscli(&["decisions", "add", "--ip", SENDER_V4[1], "--duration", "1h"])?;
    lapi.cscli(&["decisions", "add", "--ip", SENDER_V6[1], "--duration", "1h"])?;
    wait_dropped(&lab, SENDER_V4[1], true, PATIENCE);
    wait_dropped(&lab, SENDER_V6[1], true, PATIENCE);
    lapi.cscli(&["decisions", "add", "--ip", MOVED, "--duration", "1h"])?;
    ok(&daemon.cli(&["block", SENDER_V6[2], "--ttl", "1h", "--source", "wazuh"]));
    let moved_before = wait_for("the decision to move to be pulled", PATIENCE, || {
        Ok(crowdsec_end(&daemon, MOVED))
    })?;
    let kept_before = list(&daemon, Some("crowdsec"))
        .into_iter()
        .find(|e| e.target.to_string() == SENDER_V6[1])
        .unwrap();
    let (lapi_says, asking) = lapi_end(&lapi, SENDER_V6[1])?;
    let off = kept_before.expires_ms.unwrap().signed_ms_since(lapi_says);
    eprintln!(
        "the block ends {off} ms after the LAPI's end as a bouncer reads it (asking took {} ms)",
        asking.as_millis()
    );
    assert!(
        off.unsigned_abs() <= (asking + LAPI_ROUNDING).as_millis() as u64,
        "the block ends {off} ms after the LAPI's end"
    );
    daemon.stop()?;
    lapi.cscli(&["decisions", "delete", "--ip", SENDER_V4[1]])?;
    lapi.cscli(&["decisions", "add", "--ip", SENDER_V4[2], "--duration", "1h"])?;
    // A longer decision for MOVED: LAPI 1.4 reports the longest one, so its end moves by ~1 h.
    lapi.cscli(&["decisions", "add", "--ip", MOVED, "--duration", "2h"])?;
    // While the daemon is down the kernel keeps enforcing what it had.
    assert_eq!(lab.passes(SENDER_V4[1]), 0);
    daemon.spawn()?;
    wait_dropped(&lab, SENDER_V4[1], false, PATIENCE);
    wait_dropped(&lab, SENDER_V4[2], true, PATIENCE);
    assert_eq!(
        lab.passes(SENDER_V6[1]),
        0,
        "a decision still live stayed enforced across the restart"
    );
    assert_eq!(lab.passes(SENDER_V6[2]), 0, "the wazuh block is untouched");
    assert_eq!(sources_of(&daemon, SENDER_V6[2]), ["wazuh"]);
    let kept = list(&daemon, Some("crowdsec"))
        .into_iter()
        .find(|e| e.target.to_string() == SENDER_V6[1])
        .unwrap();
    assert_eq!(
        kept.sources[0].created_ms, kept_before.sources[0].created_ms,
        "the kept block was not re-made"
    );
    assert_eq!(
        kept.expires_ms,
        kept_before.expires_ms,
        "kept with its end: the restart moved it by {} ms",
        kept.expires_ms
            .unwrap()
            .signed_ms_since(kept_before.expires_ms.unwrap())
    );
    let touched: Vec<_> = daemon
        .audit_events()
        .into_iter()
        .filter(|e| e["target"] == SENDER_V6[1] && e["action"] != "block")
        .collect();
    assert!(
        touched.is_empty(),
        "the kept block was changed: {touched:?}"
    );
    let moved = crowdsec_end(&daemon, MOVED).unwrap();
    let (lapi_says, asking) = lapi_end(&lapi, MOVED)?;
    let off = moved.signed_ms_since(lapi_says);
    assert!(
        off.unsigned_abs() <= (asking + LAPI_ROUNDING).as_millis() as u64
            && moved.saturating_since(moved_before) > Duration::from_secs(3500),
        "the moved decision's block ends {off} ms after its new end on the LAPI, {} ms after its old one",
        moved.signed_ms_since(moved_before)
    );
    assert!(
        daemon
            .audit_events()
            .iter()
            .any(|e| e["target"] == MOVED && e["action"] == "extend"),
        "the moved decision's block was extended and audited"
    );
    Ok(())
}

/// The end of `target`'s crowdsec block, if it has one.
fn crowdsec_end(daemon: &Daemon, target: &str) -> Option<WallMs> {
    list(daemon, Some("crowdsec"))
        .into_iter()
        .find(|e| e.target.to_string() == target)
        .and_then(|e| e.expires_ms)
}

#[test]
fn a_lapi_outage_keeps_blocks_shows_the_error_and_recovers_with_a_full_pull() -> Result<()> {
    require_root();
    let (lab, mut lapi, daemon) = setup("")?;
    lapi.cscli(&["decisions", "add", "--ip", SENDER_V4[1], "--duration", "1h"])?;
    wait_dropped(&lab, SENDER_V4[1], true, PATIENCE);
    lapi.stop();
    let cs = wait_for("status to show the outage", PATIENCE, || {
        let cs = crowdsec(&daemon);
        Ok((cs.errors > 0).then_some(cs))
    })?;
    assert!(
        cs.last_error
            .as_deref()
            .unwrap()
            .contains("does not answer"),
        "{cs:?}"
    );
    let text = ok(&daemon.cli(&["status"]));
    assert!(text.contains("crowdsec: FAILING since"), "{text}");
    assert_eq!(
        lab.passes(SENDER_V4[1]),
        0,
        "blocks stay in force during the outage"
    );
    let full_before = cs.last_full_pull_ms;
    lapi.spawn()?;
    lapi.cscli(&["decisions", "add", "--ip", SENDER_V6[1], "--duration", "1h"])?;
    // Backoff doubles from 1 s: recovery comes within a few seconds.
    wait_dropped(&lab, SENDER_V6[1], true, Duration::from_secs(20));
    let cs = crowdsec(&daemon);
    assert!(cs.last_pull_ms > cs.last_error_ms, "recovered: {cs:?}");
    assert!(ok(&daemon.cli(&["status"])).contains("crowdsec: recovered; last error"));
    assert!(
        cs.last_full_pull_ms > full_before,
        "the first pull after the outage is a full one: {cs:?}"
    );
    assert_eq!(lab.passes(SENDER_V4[1]), 0);
    Ok(())
}

#[test]
fn a_fleet_of_two_daemons_on_one_lapi_enforces_one_decision_within_one_poll() -> Result<()> {
    require_root();
    // The hosts' management link: the LAPI runs on host A and listens there.
    let FleetLabs { a, b, lapi } = FleetLabs::new(None)?;
    // A lab network stands in for the fleet's: plain http across it is accepted only so.
    let extra = format!("update_frequency = \"{POLL}\"\ninsecure_http = true\n");
    let config_a = lapi.daemon_config("host-a", &lapi.url(), &extra)?;
    let config_b = lapi.daemon_config("host-b", &lapi.url(), &extra)?;
    let da = Daemon::start(&a, &["--config", &config_a.to_string_lossy()])?;
    let db = Daemon::start(&b, &["--config", &config_b.to_string_lossy()])?;
    wait_for("both bouncers to pull", PATIENCE, || {
        Ok((crowdsec(&da).pulls > 0 && crowdsec(&db).pulls > 0).then_some(()))
    })?;
    lapi.cscli(&["decisions", "add", "--ip", SENDER_V4[1], "--duration", "1h"])?;
    let added = Instant::now();
    wait_dropped(&a, SENDER_V4[1], true, WITHIN_ONE_POLL);
    wait_dropped(
        &b,
        SENDER_V4[1],
        true,
        WITHIN_ONE_POLL.saturating_sub(added.elapsed()),
    );
    eprintln!(
        "decision enforced on both hosts {:?} after cscli returned",
        added.elapsed()
    );
    let bouncers = lapi.cscli(&["bouncers", "list", "-o", "json"])?;
    assert!(
        bouncers.contains("host-a") && bouncers.contains("host-b"),
        "{bouncers}"
    );
    lapi.cscli(&["decisions", "delete", "--ip", SENDER_V4[1]])?;
    let deleted = Instant::now();
    wait_dropped(&a, SENDER_V4[1], false, WITHIN_ONE_POLL);
    wait_dropped(
        &b,
        SENDER_V4[1],
        false,
        WITHIN_ONE_POLL.saturating_sub(deleted.elapsed()),
    );
    Ok(())
}

/// Scripted answers: (HTTP status, body).
type Script = Arc<Mutex<Vec<(u16, Vec<u8>)>>>;

/// A scripted HTTP server standing in for the LAPI: answers each request with the next script
/// entry (the last one repeats; a 3xx entry's body is its `Location`) and records request lines
/// and headers.
struct FakeLapi {
    port: u16,
    script: Script,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeLapi {
    /// Answers usage-metrics pushes 404, like a LAPI before 1.6.3.
    fn start(lab: &Lab) -> Result<Self> {
        Self::start_with_metrics(lab, 404)
    }

    /// Answers usage-metrics pushes with `metrics_status` (201: a LAPI 1.6.3 or newer).
    fn start_with_metrics(lab: &Lab, metrics_status: u16) -> Result<Self> {
        Self::start_in(&lab.receiver, "127.0.0.1:0", metrics_status)
    }

    /// Listens on `addr` in namespace `ns`.
    fn start_in(ns: &enforcer_tests::Netns, addr: &str, metrics_status: u16) -> Result<Self> {
        let addr = addr.to_owned();
        let listener = ns.run(move || TcpListener::bind(addr))??;
        let port = listener.local_addr()?.port();
        let script: Script = Arc::new(Mutex::new(vec![(
            200,
            b"{\"new\":null,\"deleted\":null}".to_vec(),
        )]));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (script.clone(), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                head.push_str("\r\n");
                if let Some(len) = head.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                }) {
                    let mut body = vec![0; len];
                    // A short body is recorded as it came: the test reads the requests.
                    reader.read_exact(&mut body).ok();
                    head.push_str(&String::from_utf8_lossy(&body));
                }
                let is_metrics = head.starts_with("POST");
                r.lock().unwrap().push(head);
                let (status, body) = if is_metrics {
                    (
                        metrics_status,
                        if metrics_status == 404 {
                            b"{\"message\":\"page not found\"}".to_vec()
                        } else {
                            Vec::new()
                        },
                    )
                } else {
                    let mut script = s.lock().unwrap();
                    if script.len() > 1 {
                        script.remove(0)
                    } else {
                        script[0].clone()
                    }
                };
                let body = counted_down(body);
                let mut stream = reader.into_inner();
                // A 3xx entry's body is where it redirects to.
                let (location, body) = if (300..400).contains(&status) {
                    (
                        format!("Location: {}\r\n", String::from_utf8_lossy(&body)),
                        Vec::new(),
                    )
                } else {
                    (String::new(), body)
                };
                // A client that left needs no answer.
                write!(
                    stream,
                    "HTTP/1.1 {status} X\r\n{location}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                ).ok();
                stream.write_all(&body).ok();
            }
        });
        Ok(Self {
            port,
            script,
            requests,
        })
    }

    /// The first answer (the startup pull): these decisions, as `new`.
    fn first_answer(&self, decisions: &[String]) {
        self.script.lock().unwrap()[0] = (
            200,
            format!(r#"{{"new":[{}],"deleted":null}}"#, decisions.join(",")).into_bytes(),
        );
    }

    fn then(&self, status: u16, body: impl Into<Vec<u8>>) {
        self.script.lock().unwrap().push((status, body.into()));
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn decision(id: u32, value: &str, duration: &str) -> String {
    format!(
        r#"{{"id":{id},"origin":"cscli","type":"ban","scope":"Ip","value":"{value}","duration":"{duration}","scenario":"fake"}}"#
    )
}

/// A decision's `duration` that the fake LAPI counts down from now plus `left` at each answer,
/// as a LAPI reports the time left of a decision that ends at a fixed time (a plain "1h" in a
/// script is one hour from every answer: an end that moves).
fn counting_down(left: Duration) -> String {
    format!("@UNTIL{}@", (WallMs::now() + left).unix_ms())
}

/// `body` with each [`counting_down`] mark replaced by the time left now, in Go's syntax.
fn counted_down(body: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8_lossy(&body);
    if !text.contains("@UNTIL") {
        return body;
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_ref();
    while let Some(start) = rest.find("@UNTIL") {
        out.push_str(&rest[..start]);
        let mark = &rest[start + "@UNTIL".len()..];
        let end = mark.find('@').expect("a closed mark");
        let until: i64 = mark[..end].parse().expect("an end in Unix ms");
        out.push_str(&format!("{}ms", until - WallMs::now().unix_ms() as i64));
        rest = &mark[end + 1..];
    }
    out.push_str(rest);
    out.into_bytes()
}

fn fake_config(dir: &Path, port: u16, extra: &str) -> Result<String> {
    let path = dir.join("enforcer.toml");
    std::fs::write(
        &path,
        format!(
            "[crowdsec]\napi_url = \"http://127.0.0.1:{port}\"\napi_key = \"fakekey\"\nupdate_frequency = \"1s\"\nmax_response_bytes = 65536\n{extra}"
        ),
    )?;
    // An inline key is refused in a file others can read.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(path.to_string_lossy().into_owned())
}

#[test]
fn bad_lapi_answers_are_logged_and_skipped_without_touching_existing_blocks() -> Result<()> {
    require_root();
    let lab = Lab::new()?;
    let fake = FakeLapi::start(&lab)?;
    fake.first_answer(&[decision(1, SENDER_V4[1], "1h")]);
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start(
        &lab,
        &["--config", &fake_config(dir.path(), fake.port, "")?],
    )?;
    wait_dropped(&lab, SENDER_V4[1], true, PATIENCE);
    let pulls = |d: &Daemon| crowdsec(d).pulls;
    let mut seen_errors = 0;
    let bad_answers: Vec<(u16, Vec<u8>, &str)> = vec![
        (200, b"{\"new\": [garbage".to_vec(), "not a decision stream"),
        (200, b"[1, 2, 3]".to_vec(), "not a decision stream"),
        (
            200,
            br#"{"new": "203.0.113.9", "deleted": 5}"#.to_vec(),
            "not a decision stream",
        ),
        (200, vec![b' '; 70_000], "larger than max_response_bytes"),
        (
            500,
            b"{\"message\":\"database locked\"}".to_vec(),
            "HTTP 500",
        ),
        (
            403,
            b"{\"message\":\"access forbidden\"}".to_vec(),
            "refused the bouncer's credentials",
        ),
    ];
    for (status, body, says) in bad_answers {
        fake.then(status, body);
        // After the bad answer, the same good state again (a full pull, as after any error).
        fake.then(
            200,
            format!(
                r#"{{"new":[{}],"deleted":null}}"#,
                decision(1, SENDER_V4[1], "1h")
            ),
        );
        let err = wait_for(&format!("the error `{says}`"), PATIENCE, || {
            let cs = crowdsec(&daemon);
            Ok(cs
                .last_error
                .filter(|e| cs.errors > seen_errors && e.contains(says)))
        })?;
        seen_errors += 1;
        assert_eq!(
            lab.passes(SENDER_V4[1]),
            0,
            "after `{err}` the block is still in force"
        );
        assert_eq!(sources_of(&daemon, SENDER_V4[1]), ["crowdsec"]);
    }
    assert_eq!(seen_errors, 6);
    let before = pulls(&daemon);
    wait_for("a good pull again", PATIENCE, || {
        Ok((pulls(&daemon) > before).then_some(()))
    })?;
    // Malformed decisions inside a good answer are skipped one by one; unknown scopes and other
    // types are counted as ignored.
    fake.then(
        200,
        format!(
            r#"{{"new":[{},{},{},{},{},{}],"deleted":null}}"#,
            decision(1, SENDER_V4[1], "1h"),
            decision(2, SENDER_V4[2], "forever"),
            decision(3, "not-an-ip", "1h"),
            r#"{"id":4,"origin":"cscli","type":"ban","scope":"Country","value":"FR","duration":"1h"}"#,
            r#"{"id":5,"origin":"cscli","type":"captcha","scope":"Ip","value":"198.51.100.9","duration":"1h"}"#,
            r#"{"id":6,"type":"ban","scope":"Ip","value":42,"duration":"1h"}"#,
        ),
    );
    let cs = wait_for("the skipped decisions to be counted", PATIENCE, || {
        let cs = crowdsec(&daemon);
        Ok((cs.invalid >= 3 && cs.ignored == 2).then_some(cs))
    })?;
    assert_eq!(cs.errors, 6, "{cs:?}");
    assert_eq!(lab.passes(SENDER_V4[1]), 0);
    assert_eq!(
        lab.passes(SENDER_V4[2]),
        10,
        "a decision with a bad duration is not enforced"
    );
    let log = daemon.log();
    assert_eq!(
        log.matches("decision type `captcha` is not enforced")
            .count(),
        1,
        "logged once: {log}"
    );
    // Every request carried the key and our user agent; the first after each error was a full pull.
    let requests = fake.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.contains("X-Api-Key: fakekey") || r.contains("x-api-key: fakekey")),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .all(|r| r.to_ascii_lowercase().contains(&format!(
                "user-agent: enforcer/{}",
                env!("CARGO_PKG_VERSION")
            ))),
        "{requests:?}"
    );
    assert!(requests[0].contains("startup=true"), "{}", requests[0]);
    // Usage metrics were pushed once after the first good pull; the 404 turned them off.
    let pushes: Vec<&String> = requests
        .iter()
        .filter(|r| r.starts_with("POST /v1/usage-metrics"))
        .collect();
    assert_eq!(pushes.len(), 1, "{requests:#?}");
    assert!(
        pushes[0].contains(r#""remediation_components""#)
            && pushes[0].contains(r#""name":"active_decisions""#),
        "{}",
        pushes[0]
    );
    assert!(cs.usage_metrics.contains("before 1.6.3"), "{cs:?}");
    let startups = requests
        .iter()
        .filter(|r| r.starts_with("GET") && r.contains("startup=true"))
        .count();
    assert!(
        startups >= 7,
        "a full pull at start and after each of the 6 errors: {startups} in {requests:#?}"
    );
    Ok(())
}

/// A LAPI that takes the connection and never answers (a hung or overloaded LAPI; a refused
/// connection fails at once and would prove nothing): the daemon is READY while its startup
/// pull still hangs, enforces the CLI's blocks, and reports the LAPI as failing once the
/// connection dies. A daemon that waited for the pull would be READY only after the pull's
/// 120 s timeout had closed the connection, which the hung LAPI sees.
#[test]
fn the_daemon_starts_without_waiting_for_an_unreachable_lapi() -> Result<()> {
    require_root();
    let lab = Lab::new()?;
    let dir = tempfile::tempdir()?;
    let hung = HungLapi::start(&lab)?;
    let daemon = Daemon::start(
        &lab,
        &["--config", &fake_config(dir.path(), hung.port, "")?],
    )?;
    assert_eq!(
        hung.closed(),
        0,
        "a pull to the hung LAPI ended before the daemon was READY: the start waited for it"
    );
    ok(&daemon.cli(&["block", SENDER_V4[1], "--ttl", "1h"]));
    assert_eq!(lab.passes(SENDER_V4[1]), 0);
    wait_for("the startup pull to reach the hung LAPI", PATIENCE, || {
        Ok((hung.accepted() > 0).then_some(()))
    })?;
    assert_eq!(crowdsec(&daemon).pulls, 0, "no pull can have succeeded");
    hung.hang_up();
    wait_for("status to show the error", PATIENCE, || {
        Ok(crowdsec(&daemon).last_error)
    })?;
    assert!(ok(&daemon.cli(&["status"])).contains("crowdsec: FAILING since"));
    Ok(())
}

/// A listener that accepts connections, reads nothing and answers nothing, counting the
/// connections it took and those the other end closed, until [`HungLapi::hang_up`].
struct HungLapi {
    port: u16,
    streams: Arc<Mutex<Vec<std::net::TcpStream>>>,
    closed: Arc<std::sync::atomic::AtomicUsize>,
}

impl HungLapi {
    fn start(lab: &Lab) -> Result<Self> {
        let listener = lab.receiver.run(|| TcpListener::bind("127.0.0.1:0"))??;
        let port = listener.local_addr()?.port();
        let streams = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (kept, ends) = (streams.clone(), closed.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let Ok(mut reader) = stream.try_clone() else {
                    continue;
                };
                kept.lock().unwrap().push(stream);
                let ends = ends.clone();
                // Drains what the daemon sends; a read of 0 is the daemon closing its end.
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
                    ends.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        Ok(Self {
            port,
            streams,
            closed,
        })
    }

    fn accepted(&self) -> usize {
        self.streams.lock().unwrap().len()
    }

    /// Connections the daemon closed (a pull that gave up), not counting [`HungLapi::hang_up`]'s.
    fn closed(&self) -> usize {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Resets every connection taken so far: the pulls in flight fail.
    fn hang_up(&self) {
        for stream in self.streams.lock().unwrap().drain(..) {
            stream.shutdown(std::net::Shutdown::Both).ok();
        }
    }
}

/// The first pull starts as the daemon starts, before the store is opened and the interfaces
/// attached, so the LAPI's answer overlaps the start; it is applied once the engine is ready.
/// A debug-build hook holds the start before the store opens: the LAPI gets the startup pull
/// meanwhile, and the decision is enforced once the start goes on.
#[test]
fn the_first_pull_is_made_while_the_daemon_is_still_starting() -> Result<()> {
    if !enforcer_tests::test_hooks_or_skip() {
        return Ok(());
    }
    require_root();
    let lab = Lab::new()?;
    let fake = FakeLapi::start(&lab)?;
    fake.first_answer(&[decision(
        1,
        SENDER_V4[1],
        &counting_down(Duration::from_secs(3600)),
    )]);
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let stall = dir.path().join("stall-start");
    std::fs::write(&stall, "")?;
    let watcher = {
        let (requests, store, stall) = (
            fake.requests.clone(),
            state.join("blocks.redb"),
            stall.clone(),
        );
        std::thread::spawn(move || {
            let store_was_open = wait_for("the first pull", Duration::from_secs(20), || {
                Ok(requests.lock().unwrap().first().map(|_| store.exists()))
            });
            // Releases the stall, if the daemon has not removed it.
            std::fs::remove_file(&stall).ok();
            store_was_open
        })
    };
    let config = fake_config(dir.path(), fake.port, "")?;
    let env = vec![(
        "ENFORCER_TEST_STALL_START".to_owned(),
        stall.display().to_string(),
    )];
    let daemon = Daemon::start_with_env(
        &lab,
        &["--config", &config, "--state-dir", &state.to_string_lossy()],
        env,
    )?;
    let store_was_open = watcher.join().expect("the watcher thread")?;
    assert!(
        !store_was_open,
        "the startup pull was made before the store was opened"
    );
    assert!(
        fake.requests()[0].contains("startup=true"),
        "{}",
        fake.requests()[0]
    );
    wait_dropped(&lab, SENDER_V4[1], true, PATIENCE);
    assert_eq!(crowdsec(&daemon).applied, 1);
    Ok(())
}

/// A decision's end is the LAPI's, however long the daemon takes to start after its startup
/// pull: the LAPI's `duration` is the time left when it answered, and counts from then, not
/// from when the engine, ready at last, applies it. The start is held after the pull (the
/// debug-build hook) for longer than the feed's slack, so a bouncer that counts from the apply
/// gives a block that ends that much later.
#[test]
fn a_decision_pulled_while_the_daemon_starts_ends_when_the_lapi_says_however_long_the_start()
-> Result<()> {
    if !enforcer_tests::test_hooks_or_skip() {
        return Ok(());
    }
    require_root();
    const HOUR: Duration = Duration::from_secs(3600);
    /// How long the start is held after the LAPI answered: more than the feed's 2 s slack.
    const HELD: Duration = Duration::from_secs(5);
    let lab = Lab::new()?;
    let fake = FakeLapi::start(&lab)?;
    fake.first_answer(&[decision(1, SENDER_V4[1], "1h")]);
    // The deltas after it are empty: only the startup pull names the decision.
    fake.then(200, r#"{"new":null,"deleted":null}"#);
    let dir = tempfile::tempdir()?;
    let stall = dir.path().join("stall-start");
    std::fs::write(&stall, "")?;
    let watcher = {
        let (requests, stall) = (fake.requests.clone(), stall.clone());
        std::thread::spawn(move || {
            let answered = wait_for("the startup pull", Duration::from_secs(20), || {
                Ok((!requests.lock().unwrap().is_empty()).then(WallMs::now))
            });
            std::thread::sleep(HELD);
            std::fs::remove_file(&stall).ok();
            answered
        })
    };
    let config = fake_config(dir.path(), fake.port, "")?;
    let env = vec![(
        "ENFORCER_TEST_STALL_START".to_owned(),
        stall.display().to_string(),
    )];
    let started = WallMs::now();
    let daemon = Daemon::start_with_env(&lab, &["--config", &config], env)?;
    let answered = watcher.join().expect("the watcher thread")?;
    wait_dropped(&lab, SENDER_V4[1], true, PATIENCE);
    let end = list(&daemon, Some("crowdsec"))[0].expires_ms.unwrap();
    let lapi_end = answered + HOUR;
    eprintln!(
        "block ends {} ms after the startup pull's answer was seen plus its hour",
        end.signed_ms_since(lapi_end)
    );
    assert!(
        end >= started + HOUR,
        "the block ends before the LAPI's end: {end:?} < {:?}",
        started + HOUR
    );
    assert!(
        end <= lapi_end + CONVERSION_MARGIN,
        "the block ends {} ms after the LAPI's end: the start held {HELD:?} after the pull was added to it",
        end.signed_ms_since(lapi_end)
    );
    Ok(())
}

#[test]
fn check_config_locates_crowdsec_errors_and_refuses_a_key_file_others_can_read() -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("crowdsec.key");
    std::fs::write(&key, "abc123\n")?;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))?;
    let config = dir.path().join("enforcer.toml");
    std::fs::write(
        &config,
        format!(
            "default_ttl = \"1h\"\n\n[crowdsec]\napi_url = \"http://127.0.0.1:8080/\"\napi_key_file = \"{}\"\n",
            key.display()
        ),
    )?;
    let run = || {
        enforcer_tests::daemon::cli(
            Path::new("/nonexistent"),
            &[
                "daemon",
                "--check-config",
                "--config",
                &config.to_string_lossy(),
            ],
        )
    };
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{}:5:1:", config.display())) && stderr.contains("chmod 600"),
        "{stderr}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    ok(&run());
    Ok(())
}

/// LAPI 1.4 reports only the longest decision per value, and when that one is deleted while a
/// shorter one remains, its delta says nothing at all; the periodic full pull then shortens the
/// block to the remaining decision's end.
#[test]
fn several_decisions_for_one_address_block_as_long_as_the_longest_live_one() -> Result<()> {
    require_root();
    let (lab, lapi, daemon) = setup("resync = \"3s\"\n")?;
    let expiry = |d: &Daemon| {
        list(d, Some("crowdsec"))
            .into_iter()
            .find(|e| e.target.to_string() == SENDER_V4[1])
            .and_then(|e| e.expires_ms.map(|t| t.unix_ms()))
    };
    let left = |d: &Daemon| expiry(d).map(|e| e.saturating_sub(WallMs::now().unix_ms()));
    // A fresh LAPI numbers decisions from 1.
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        SENDER_V4[1],
        "--duration",
        "5m",
        "--reason",
        "short",
    ])?;
    lapi.cscli(&[
        "decisions",
        "add",
        "--ip",
        SENDER_V4[1],
        "--duration",
        "1h",
        "--reason",
        "long",
    ])?;
    wait_for("the block to last an hour", PATIENCE, || {
        Ok(left(&daemon).filter(|l| *l > 50 * 60_000))
    })?;
    assert_eq!(lab.passes(SENDER_V4[1]), 0);
    lapi.cscli(&["decisions", "delete", "--id", "2"])?;
    let l = wait_for(
        "the next full pull to shorten the block to the 5-minute decision",
        Duration::from_secs(15),
        || Ok(left(&daemon).filter(|l| *l <= 5 * 60_000)),
    )?;
    assert!(l > 4 * 60_000, "{l} ms left");
    let entry = list(&daemon, Some("crowdsec"))
        .into_iter()
        .find(|e| e.target.to_string() == SENDER_V4[1])
        .unwrap();
    assert_eq!(entry.sources[0].reason.rule_id.as_deref(), Some("short"));
    assert_eq!(
        lab.passes(SENDER_V4[1]),
        0,
        "still blocked by the remaining decision"
    );
    lapi.cscli(&["decisions", "delete", "--id", "1"])?;
    wait_dropped(&lab, SENDER_V4[1], false, PATIENCE);
    Ok(())
}

/// One pull is one round, however many decisions it brings: one durable commit of the store.
/// Counted by the real daemon's store (`enforcer_store_commits_total`): a full pull of 1,000
/// decisions makes one commit, like a single CLI block.
#[test]
fn one_pull_of_a_thousand_decisions_costs_one_store_commit() -> Result<()> {
    require_root();
    const N: usize = 1000;
    let lab = Lab::new()?;
    let mut lapi = Lapi::start(&lab.receiver, "127.0.0.1:8080")?;
    let mut values: Vec<String> = (1..N).map(|i| format!("2001:db8:5::{i:x}")).collect();
    values.push(SENDER_V6[1].to_owned());
    lapi.import(&values, "1h")?;
    let config = lapi.daemon_config(
        "host-a",
        &lapi.url(),
        &format!("update_frequency = \"{POLL}\"\n"),
    )?;
    // The LAPI is down while the daemon starts: the whole set comes in the first pull that
    // works.
    lapi.stop();
    let daemon =
        Daemon::start_with_metrics(&lab, &["--config", &config.to_string_lossy()], Vec::new())?;
    wait_for("a failed pull", PATIENCE, || {
        Ok(crowdsec(&daemon).last_error)
    })?;
    let before = daemon.store_commits();
    ok(&daemon.cli(&["block", SENDER_V4[1], "--ttl", "1h"]));
    let one_block = daemon.store_commits() - before;
    assert_eq!(one_block, 1, "a block is durable before it is acknowledged");
    let before = daemon.store_commits();
    lapi.spawn().expect("the LAPI restarts");
    wait_for(
        "every decision to be enforced",
        Duration::from_secs(60),
        || Ok((status(&daemon).targets > N).then_some(())),
    )?;
    let pull = daemon.store_commits() - before;
    eprintln!("commits: {one_block} for one CLI block, {pull} for a full pull of {N} decisions");
    assert_eq!(pull, 1, "a pull of {N} decisions is one store commit");
    let cs = crowdsec(&daemon);
    assert_eq!(cs.applied, N as u64, "{cs:?}");
    assert_eq!(lab.passes(SENDER_V6[1]), 0, "the decisions are in force");
    Ok(())
}

/// A pull of more than `INLINE_MAX` decisions is answered before its audit lines are written
/// (the audit's writer thread writes them, so the engine is free sooner); none is lost: once the
/// daemon has stopped on SIGTERM, every block of the pull has its line, and a request made right
/// after the pull still has its line before its answer.
#[test]
fn every_decision_of_a_large_pull_is_audited_once_the_daemon_stops() -> Result<()> {
    require_root();
    const N: usize = 3000;
    const {
        assert!(
            N > enforcer::audit::INLINE_MAX,
            "the pull must take the writer thread"
        )
    };
    let lab = Lab::new()?;
    let lapi = Lapi::start(&lab.receiver, "127.0.0.1:8080")?;
    let values: Vec<String> = (1..=N).map(|i| format!("2001:db8:6::{i:x}")).collect();
    lapi.import(&values, "1h")?;
    let config = lapi.daemon_config(
        "host-a",
        &lapi.url(),
        &format!("update_frequency = \"{POLL}\"\n"),
    )?;
    let mut daemon = Daemon::start(&lab, &["--config", &config.to_string_lossy()])?;
    wait_for(
        "every decision to be enforced",
        Duration::from_secs(60),
        || Ok((status(&daemon).targets >= N).then_some(())),
    )?;
    ok(&daemon.cli(&["block", SENDER_V4[1], "--ttl", "1h"]));
    assert!(
        daemon
            .audit_text()
            .lines()
            .any(|l| l.contains("\"action\":\"block\"") && l.contains(SENDER_V4[1])),
        "a small round's line is written before its answer, after the pull's lines"
    );
    daemon.stop()?;
    let events = daemon.audit_events();
    let audited: std::collections::HashSet<&str> = events
        .iter()
        .filter(|e| e["action"] == "block" && e["source"] == "crowdsec")
        .filter_map(|e| e["target"].as_str())
        .collect();
    let missing: Vec<&String> = values
        .iter()
        .filter(|v| !audited.contains(v.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {N} blocks have no audit line, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let cli_line = events
        .iter()
        .position(|e| e["target"] == SENDER_V4[1])
        .expect("the CLI block is audited");
    let last_pull_line = events
        .iter()
        .rposition(|e| e["source"] == "crowdsec")
        .expect("the pull is audited");
    assert!(
        last_pull_line < cli_line,
        "lines are in the order of the rounds"
    );
    Ok(())
}

/// mTLS instead of a key, against the real LAPI serving HTTPS and verifying client
/// certificates: a bouncer certificate from the LAPI's CA (OU `bouncer-ou`) pulls and
/// enforces; a certificate from another CA, and one with an OU the LAPI does not take from
/// bouncers, are refused, and `status` says which and what to check.
#[test]
fn mtls_with_the_real_lapi_enforces_decisions_and_refuses_wrong_certificates() -> Result<()> {
    require_root();
    let pki = Pki::new()?;
    let lab = Lab::new()?;
    let lapi = Lapi::start_tls(&lab.receiver, "127.0.0.1:8080", &pki)?;
    assert!(lapi.url().starts_with("https://"));
    let dir = tempfile::tempdir()?;
    let config = |cert: &str| -> Result<String> {
        let path = dir.path().join(format!("{cert}.toml"));
        std::fs::write(
            &path,
            format!(
                "[crowdsec]\napi_url = \"{}\"\nupdate_frequency = \"{POLL}\"\nca_cert_path = \"{}\"\ncert_path = \"{}\"\nkey_path = \"{}\"\n",
                lapi.url(),
                pki.path("ca.pem").display(),
                pki.path(&format!("{cert}.pem")).display(),
                pki.path(&format!("{cert}.key")).display()
            ),
        )?;
        Ok(path.to_string_lossy().into_owned())
    };
    let mut daemon = Daemon::start(&lab, &["--config", &config("bouncer")?])?;
    lapi.cscli(&["decisions", "add", "--ip", SENDER_V4[1], "--duration", "1h"])?;
    lapi.cscli(&[
        "decisions",
        "add",
        "--range",
        "2001:db8::10/127",
        "--duration",
        "1h",
    ])?;
    wait_dropped(&lab, SENDER_V4[1], true, PATIENCE);
    wait_dropped(&lab, SENDER_V6[1], true, PATIENCE);
    assert_eq!(lab.passes(SENDER_V4[2]), 10, "nothing else is dropped");
    let cs = crowdsec(&daemon);
    assert!(cs.last_error.is_none() && cs.errors == 0, "{cs:?}");
    // The LAPI knows the bouncer by its certificate's CN (no key was ever made).
    let bouncers = lapi.cscli(&["bouncers", "list", "-o", "json"])?;
    assert!(bouncers.contains("enforcer-mtls"), "{bouncers}");
    daemon.stop()?;
    for (cert, says) in [
        ("rogue", "rejected the client certificate"),
        ("agent", "bouncers_allowed_ou"),
    ] {
        let daemon = Daemon::start(&lab, &["--config", &config(cert)?])?;
        let err = wait_for(
            &format!("the {cert} certificate to be refused"),
            PATIENCE,
            || Ok(crowdsec(&daemon).last_error),
        )?;
        assert!(err.contains(says), "the {cert} certificate: {err}");
        assert!(ok(&daemon.cli(&["status"])).contains(says));
        assert_eq!(crowdsec(&daemon).applied, 0);
    }
    Ok(())
}

/// What is wrong with a usage-metrics body, checked against CrowdSec's documented schema: the
/// LAPI's swagger (`AllMetrics` → `remediation_components`: `RemediationComponentsMetrics` =
/// `BaseMetrics` (required `version`, `utc_startup_timestamp`; `os` {name, version},
/// `feature_flags`, `metrics`: `DetailedMetrics` {required `meta` {window_size_seconds,
/// utc_now_timestamp}, required `items`: `MetricsDetailItem` {required name, unit, value;
/// labels: string → string}}) + `name`, `type`), and the remediation-component metrics spec
/// (docs.crowdsec.net, "Remediation Component Metrics": `active_decisions` in unit `ip`,
/// `dropped` and `processed` in byte, packet or request).
fn usage_metrics_problems(body: &serde_json::Value) -> Vec<String> {
    use serde_json::Value;
    let mut problems = Vec::new();
    let mut need = |ok: bool, what: &str| {
        if !ok {
            problems.push(what.to_owned());
        }
    };
    let Some(rcs) = body["remediation_components"].as_array() else {
        return vec!["remediation_components is not a list".into()];
    };
    need(!rcs.is_empty(), "remediation_components is empty");
    need(
        body.get("log_processors").is_none_or(Value::is_array),
        "log_processors is not a list",
    );
    for rc in rcs {
        need(
            rc["version"].is_string(),
            "version (required) is not a string",
        );
        need(
            rc["utc_startup_timestamp"].is_i64(),
            "utc_startup_timestamp (required) is not an integer",
        );
        need(
            rc.get("name").is_none_or(Value::is_string),
            "name is not a string",
        );
        need(
            rc.get("type").is_none_or(Value::is_string),
            "type is not a string",
        );
        need(
            rc.get("os")
                .is_none_or(|os| os["name"].is_string() && os["version"].is_string()),
            "os lacks name or version",
        );
        need(
            rc.get("feature_flags")
                .is_none_or(|f| f.as_array().is_some_and(|f| f.iter().all(Value::is_string))),
            "feature_flags is not a list of strings",
        );
        for m in rc["metrics"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            need(
                m["meta"]["window_size_seconds"].is_i64()
                    && m["meta"]["utc_now_timestamp"].is_i64(),
                "meta lacks an integer window_size_seconds or utc_now_timestamp",
            );
            let Some(items) = m["items"].as_array() else {
                need(false, "items (required) is not a list");
                continue;
            };
            for item in items {
                need(
                    item["name"].is_string()
                        && item["unit"].is_string()
                        && item["value"].is_number(),
                    "an item lacks name, unit or a numeric value",
                );
                need(
                    item.get("labels").is_none_or(|l| {
                        l.as_object()
                            .is_some_and(|l| l.values().all(Value::is_string))
                    }),
                    "labels are not string to string",
                );
                let unit = item["unit"].as_str().unwrap_or_default();
                match item["name"].as_str().unwrap_or_default() {
                    "active_decisions" => need(unit == "ip", "active_decisions is not in unit ip"),
                    "dropped" | "processed" => need(
                        ["byte", "packet", "request"].contains(&unit),
                        "dropped/processed not in byte, packet or request",
                    ),
                    _ => {}
                }
            }
        }
    }
    problems
}

/// Against a LAPI that takes usage metrics (1.6.3 or newer; a fake server, as Debian's LAPI is
/// 1.4), the push follows the documented schema, counts the active decisions per origin, and
/// metrics stay on.
#[test]
fn usage_metrics_follow_the_lapi_schema() -> Result<()> {
    require_root();
    let lab = Lab::new()?;
    let fake = FakeLapi::start_with_metrics(&lab, 201)?;
    let capi = r#"{"id":2,"origin":"CAPI","type":"ban","scope":"Ip","value":"2001:db8::10","duration":"1h","scenario":"crowdsecurity/ssh-bf"}"#;
    fake.script.lock().unwrap()[0] = (
        200,
        format!(
            r#"{{"new":[{},{capi}],"deleted":null}}"#,
            decision(1, SENDER_V4[1], "1h")
        )
        .into_bytes(),
    );
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start(
        &lab,
        &["--config", &fake_config(dir.path(), fake.port, "")?],
    )?;
    wait_dropped(&lab, SENDER_V4[1], true, PATIENCE);
    let push = wait_for("a usage-metrics push", PATIENCE, || {
        Ok(fake
            .requests()
            .into_iter()
            .find(|r| r.starts_with("POST /v1/usage-metrics")))
    })?;
    assert!(
        push.to_ascii_lowercase().contains("x-api-key: fakekey"),
        "{push}"
    );
    let body: serde_json::Value =
        serde_json::from_str(&push[push.find("\r\n\r\n").expect("a body") + 4..])?;
    assert_eq!(
        usage_metrics_problems(&body),
        Vec::<String>::new(),
        "{body:#}"
    );
    let rc = &body["remediation_components"][0];
    assert_eq!(rc["version"], env!("CARGO_PKG_VERSION"));
    let items = rc["metrics"][0]["items"].as_array().unwrap();
    let active = |origin: &str| {
        items
            .iter()
            .find(|i| i["name"] == "active_decisions" && i["labels"]["origin"] == origin)
            .map(|i| i["value"].clone())
    };
    assert_eq!(active("cscli"), Some(serde_json::json!(1)), "{body:#}");
    assert_eq!(active("CAPI"), Some(serde_json::json!(1)), "{body:#}");
    for (name, unit) in [
        ("dropped", "packet"),
        ("dropped", "byte"),
        ("processed", "packet"),
        ("processed", "byte"),
    ] {
        assert!(
            items.iter().any(|i| i["name"] == name && i["unit"] == unit),
            "no {name} in {unit}: {body:#}"
        );
    }
    assert_eq!(crowdsec(&daemon).usage_metrics, "on");
    // The schema check itself catches what a LAPI would refuse.
    let mut broken = body.clone();
    broken["remediation_components"][0]
        .as_object_mut()
        .unwrap()
        .remove("utc_startup_timestamp");
    broken["remediation_components"][0]["metrics"][0]["items"][0]["value"] = serde_json::json!("1");
    assert_eq!(
        usage_metrics_problems(&broken).len(),
        2,
        "{:?}",
        usage_metrics_problems(&broken)
    );
    Ok(())
}

/// Debian's LAPI 1.4 has no `/v1/usage-metrics`: its 404 turns the push off after one quiet
/// log line, status says so, and pulling goes on untouched.
#[test]
fn the_real_lapi_1_4_turns_usage_metrics_off_quietly() -> Result<()> {
    require_root();
    let (lab, lapi, daemon) = setup("")?;
    wait_for("usage metrics to be turned off", PATIENCE, || {
        Ok(crowdsec(&daemon)
            .usage_metrics
            .contains("before 1.6.3")
            .then_some(()))
    })?;
    lapi.cscli(&["decisions", "add", "--ip", SENDER_V4[1], "--duration", "1h"])?;
    wait_dropped(&lab, SENDER_V4[1], true, PATIENCE);
    let cs = crowdsec(&daemon);
    assert!(
        cs.last_error.is_none() && cs.errors == 0,
        "the 404 is not an error: {cs:?}"
    );
    let log = daemon.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("usage-metrics") || l.contains("usage metrics"))
        .collect();
    assert_eq!(lines.len(), 1, "one log line: {lines:#?}");
    assert!(lines[0].contains("INFO"), "{}", lines[0]);
    assert!(ok(&daemon.cli(&["status"])).contains("before 1.6.3"));
    Ok(())
}

/// The LAPI is trusted with the key, not with where it sends it: a redirect is an error, never
/// followed, so another listener never sees `X-Api-Key` (reqwest's default policy forwards it to
/// any host, https to http included).
#[test]
fn a_redirecting_lapi_is_not_followed_and_the_key_goes_nowhere_else() -> Result<()> {
    require_root();
    let lab = Lab::new()?;
    let lapi = FakeLapi::start(&lab)?;
    let elsewhere = FakeLapi::start(&lab)?;
    lapi.script.lock().unwrap()[0] = (
        302,
        format!("http://127.0.0.1:{}/v1/decisions/stream", elsewhere.port).into_bytes(),
    );
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start(
        &lab,
        &["--config", &fake_config(dir.path(), lapi.port, "")?],
    )?;
    let cs = wait_for("the first pull to end", WITHIN_ONE_POLL, || {
        let cs = crowdsec(&daemon);
        Ok((cs.pulls + cs.errors > 0).then_some(cs))
    })?;
    let leaked: Vec<String> = elsewhere
        .requests()
        .into_iter()
        .filter(|r| r.to_ascii_lowercase().contains("x-api-key"))
        .collect();
    assert!(
        leaked.is_empty(),
        "the redirect target received the key: {leaked:#?}"
    );
    assert_eq!(cs.pulls, 0, "a redirect is not a successful pull: {cs:?}");
    let error = cs.last_error.unwrap_or_default();
    assert!(
        error.contains("HTTP 302") && error.contains("redirect"),
        "{error}"
    );
    Ok(())
}

/// A hostile answer, within max_response_bytes: one target named by 100,000 decisions, each of
/// its own origin, then 100,000 decisions of as many unknown types. The first is applied in
/// linear time (a quadratic lookup takes minutes here), and the skip bookkeeping stays bounded:
/// a few log lines, not one per invented type, and `ignored` counts what the LAPI holds now,
/// not every id ever seen.
#[test]
fn a_hostile_lapi_answer_is_handled_in_linear_time_with_bounded_bookkeeping() -> Result<()> {
    require_root();
    const N: u32 = 100_000;
    let lab = Lab::new()?;
    let fake = FakeLapi::start(&lab)?;
    let one_target: Vec<String> = (1..=N)
        .map(|i| {
            format!(
                r#"{{"id":{i},"origin":"o{i}","type":"ban","scope":"Ip","value":"{}","duration":"1h","scenario":"s"}}"#,
                SENDER_V4[1]
            )
        })
        .collect();
    let body = format!(r#"{{"new":[{}],"deleted":null}}"#, one_target.join(","));
    fake.script.lock().unwrap()[0] = (200, body.into_bytes());
    let kinds = |from: u32| {
        let new: Vec<String> = (from..from + N)
            .map(|i| {
                format!(
                    r#"{{"id":{i},"origin":"o","type":"t{i}","scope":"Ip","value":"{}","duration":"1h"}}"#,
                    SENDER_V4[2]
                )
            })
            .collect();
        format!(r#"{{"new":[{}],"deleted":null}}"#, new.join(","))
    };
    fake.then(200, kinds(N + 1));
    fake.then(200, kinds(2 * N + 1));
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("enforcer.toml");
    std::fs::write(
        &config,
        format!(
            "[crowdsec]\napi_url = \"http://127.0.0.1:{}\"\napi_key = \"fakekey\"\nupdate_frequency = \"1s\"\nresync = \"1s\"\n",
            fake.port
        ),
    )?;
    // An inline key is refused in a file others can read.
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let daemon = Daemon::start(&lab, &["--config", &config.to_string_lossy()])?;
    let took = wait_dropped(&lab, SENDER_V4[1], true, Duration::from_secs(30));
    eprintln!("{N} decisions for one target applied within {took:?} of the daemon's start");
    // Both answers of invented types were pulled in full (resync every pull).
    let cs = wait_for(
        "both answers of invented types",
        Duration::from_secs(60),
        || {
            let cs = crowdsec(&daemon);
            Ok((fake.requests().len() >= 4 && cs.pulls >= 3).then_some(cs))
        },
    )?;
    assert_eq!(
        cs.ignored,
        u64::from(N),
        "what the last full pull ignored: {cs:?}"
    );
    let logged = daemon
        .log()
        .matches("ignoring CrowdSec decisions of this kind")
        .count();
    assert!(logged <= 64, "{logged} lines for invented decision types");
    Ok(())
}

/// `http://` to another host sends the key in clear: refused at load with the way out named,
/// unless the operator says so with `insecure_http = true`; loopback and https are fine.
#[test]
fn plain_http_to_a_remote_lapi_is_refused_unless_configured_insecure() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("enforcer.toml");
    let check = |url: &str, extra: &str| {
        std::fs::write(
            &config,
            format!("[crowdsec]\napi_url = \"{url}\"\napi_key = \"abc123\"\n{extra}"),
        )
        .unwrap();
        std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        enforcer_tests::daemon::cli(
            Path::new("/nonexistent"),
            &[
                "daemon",
                "--check-config",
                "--config",
                &config.to_string_lossy(),
            ],
        )
    };
    for url in ["http://192.0.2.10:8080/", "http://lapi.example.net/"] {
        let out = check(url, "");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{url} accepted");
        assert!(
            stderr.contains(&format!("{}:2:1:", config.display()))
                && stderr.contains("in clear")
                && stderr.contains("insecure_http = true"),
            "{stderr}"
        );
        ok(&check(url, "insecure_http = true\n"));
    }
    for url in [
        "http://127.0.0.1:8080/",
        "http://[::1]:8080/",
        "http://localhost:8080/",
        "https://192.0.2.10:8080/",
    ] {
        ok(&check(url, ""));
    }
    Ok(())
}

/// A decision against the LAPI's own address would cut the bouncer off the LAPI for good (the
/// deletion could never arrive): the LAPI's address is in the builtin allowlist, so the policy
/// refuses that decision and the pulls go on. The LAPI here is across the protected interface,
/// so a block of its address would drop its answers.
#[test]
fn a_decision_against_the_lapi_itself_is_refused_and_pulls_go_on() -> Result<()> {
    require_root();
    let lab = Lab::new()?;
    let lapi_addr = SENDER_V4[2];
    let fake = FakeLapi::start_in(&lab.sender, &format!("{lapi_addr}:0"), 404)?;
    fake.first_answer(&[
        decision(1, lapi_addr, "1h"),
        decision(2, SENDER_V4[1], "1h"),
    ]);
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("enforcer.toml");
    std::fs::write(
        &config,
        format!(
            "[crowdsec]\napi_url = \"http://{lapi_addr}:{}\"\napi_key = \"fakekey\"\nupdate_frequency = \"1s\"\ninsecure_http = true\n",
            fake.port
        ),
    )?;
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let daemon = Daemon::start(&lab, &["--config", &config.to_string_lossy()])?;
    wait_dropped(&lab, SENDER_V4[1], true, WITHIN_ONE_POLL);
    let pulls = crowdsec(&daemon).pulls;
    let cs = wait_for("three more pulls", WITHIN_ONE_POLL * 2, || {
        let cs = crowdsec(&daemon);
        Ok((cs.pulls >= pulls + 3).then_some(cs))
    })
    .map_err(|e| anyhow::anyhow!("{e}: {:?}", crowdsec(&daemon)))?;
    assert_eq!(cs.refused, 1, "the decision against the LAPI: {cs:?}");
    assert!(
        sources_of(&daemon, lapi_addr).is_empty(),
        "{lapi_addr} is not blocked"
    );
    let allow = daemon.allowlist();
    assert!(
        allow
            .iter()
            .any(|a| a.target.to_string() == lapi_addr && a.origin.contains("crowdsec LAPI")),
        "{allow:?}"
    );
    Ok(())
}

/// Full resyncs (every pull here) of a decision longer than max_ttl and of one the allowlist
/// refuses: the first is blocked once for max_ttl and not re-extended (one audit line, not one
/// per resync); the refusal is audited once and remembered while the decision stays the same.
/// The fake reports the time left as a LAPI does, counting down to a fixed end.
#[test]
fn resyncs_neither_re_extend_capped_decisions_nor_re_audit_refusals() -> Result<()> {
    require_root();
    let lab = Lab::new()?;
    let fake = FakeLapi::start(&lab)?;
    let allowed = "198.51.100.7";
    fake.first_answer(&[
        decision(
            1,
            SENDER_V4[1],
            &counting_down(Duration::from_secs(48 * 3600)),
        ),
        decision(2, allowed, &counting_down(Duration::from_secs(3600))),
    ]);
    let dir = tempfile::tempdir()?;
    let config = fake_config(dir.path(), fake.port, "resync = \"1s\"\n")?;
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        format!(
            "[allowlist]\nprefixes = [\"198.51.100.0/24\"]\n\n[policy]\nmax_ttl = \"1h\"\n\n{text}"
        ),
    )?;
    let daemon = Daemon::start(&lab, &["--config", &config])?;
    wait_dropped(&lab, SENDER_V4[1], true, WITHIN_ONE_POLL);
    let full = || {
        fake.requests()
            .iter()
            .filter(|r| r.starts_with("GET") && r.contains("startup=true"))
            .count()
    };
    wait_for("six full pulls", Duration::from_secs(30), || {
        Ok((full() >= 6).then_some(()))
    })?;
    // The last one applied too.
    let pulls = crowdsec(&daemon).pulls;
    wait_for("one more pull", WITHIN_ONE_POLL, || {
        Ok((crowdsec(&daemon).pulls > pulls).then_some(()))
    })?;
    let events = daemon.audit_events();
    let about = |target: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["target"] == target)
            .map(|e| e["action"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(about(SENDER_V4[1]), ["block"], "{events:#?}");
    assert_eq!(about(allowed), ["refuse"], "{events:#?}");
    let cs = crowdsec(&daemon);
    assert_eq!(cs.refused, 1, "{cs:?}");
    Ok(())
}
