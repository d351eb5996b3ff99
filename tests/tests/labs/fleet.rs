//! A fleet of two hosts sharing one CrowdSec Local API (Debian's `crowdsec` 1.4, unpacked):
//! host A publishes its local blocks (`[crowdsec.publish]`), host B pulls them as any bouncer
//! does. The real fail2ban bans an attacker on A; B drops the attacker's packets within one of
//! its polls; the unban lifts it on B; with the LAPI down A enforces at once and B follows when
//! the LAPI is back; A never imports its own decisions back as `crowdsec` blocks.

use std::time::{Duration, Instant};

use anyhow::Result;
use enforcer::protocol::{CrowdsecStatus, PublishStatus};
use enforcer_tests::{
    Lab, SENDER_V4,
    crowdsec::Lapi,
    daemon::{Daemon, ok},
    require_root, wait_for,
};

use crate::fail2ban::{Fail2ban, JAIL};

/// B's poll interval.
const POLL: &str = "1s";
/// One poll interval, plus the time a loaded machine needs to publish, pull and apply.
const WITHIN_ONE_POLL: Duration = Duration::from_secs(8);
/// fail2ban's polling backend reads its log every second; a ban takes a few.
const BAN_DEADLINE: Duration = Duration::from_secs(30);

/// Two labs joined by a management link (198.51.100.1 on A, .2 on B), the LAPI on A's side.
struct Fleet {
    a: Lab,
    b: Lab,
    lapi: Lapi,
}

impl Fleet {
    fn new() -> Result<Self> {
        let a = Lab::new()?;
        let b = Lab::new()?;
        a.receiver.ip(&[
            "link",
            "add",
            "mg",
            "type",
            "veth",
            "peer",
            "name",
            "mg",
            "netns",
            b.receiver.name(),
        ])?;
        a.receiver
            .ip(&["addr", "add", "198.51.100.1/30", "dev", "mg"])?;
        b.receiver
            .ip(&["addr", "add", "198.51.100.2/30", "dev", "mg"])?;
        a.receiver.ip(&["link", "set", "mg", "up"])?;
        b.receiver.ip(&["link", "set", "mg", "up"])?;
        let lapi = Lapi::start(&a.receiver, "198.51.100.1:8080")?;
        Ok(Self { a, b, lapi })
    }

    /// Host A's configuration: a bouncer that also publishes `sources` as machine `host-a`.
    fn publisher_config(&self, sources: &str) -> Result<String> {
        let password = self.lapi.add_machine("host-a")?;
        let extra = format!(
            "update_frequency = \"{POLL}\"\ninsecure_http = true\n\n[crowdsec.publish]\nlogin = \"host-a\"\n\
             password_file = \"{}\"\nsources = [{sources}]\n",
            password.display()
        );
        Ok(self
            .lapi
            .daemon_config("host-a", &self.lapi.url(), &extra)?
            .to_string_lossy()
            .into_owned())
    }

    /// Host B's configuration: a plain bouncer.
    fn bouncer_config(&self) -> Result<String> {
        Ok(self
            .lapi
            .daemon_config(
                "host-b",
                &self.lapi.url(),
                &format!("update_frequency = \"{POLL}\"\ninsecure_http = true\n"),
            )?
            .to_string_lossy()
            .into_owned())
    }
}

fn crowdsec(d: &Daemon) -> CrowdsecStatus {
    d.status().crowdsec.expect("status shows the bouncer")
}

fn publish(d: &Daemon) -> PublishStatus {
    crowdsec(d).publish.expect("status shows the publisher")
}

/// Waits until `src`'s packets are dropped (or pass) on `lab`; returns how long it took.
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

/// The sources of `target`'s blocks on `d`.
fn sources_of(d: &Daemon, target: &str) -> Vec<String> {
    d.list(&[])
        .into_iter()
        .find(|e| e.target.to_string() == target)
        .map(|e| e.sources.iter().map(|s| s.source.to_string()).collect())
        .unwrap_or_default()
}

/// The LAPI's live decisions for `value` published by the enforcer.
fn published(lapi: &Lapi, value: &str) -> Vec<serde_json::Value> {
    lapi.decisions(value)
        .unwrap()
        .into_iter()
        .filter(|d| d["origin"] == "enforcer")
        .collect()
}

#[test]
fn a_fail2ban_ban_on_one_host_is_enforced_by_the_fleet_and_lifted_with_it() -> Result<()> {
    require_root();
    let fleet = Fleet::new()?;
    let config_a = fleet.publisher_config("\"fail2ban\"")?;
    let config_b = fleet.bouncer_config()?;
    let mut da = Daemon::start(&fleet.a, &["--config", &config_a])?;
    let db = Daemon::start(&fleet.b, &["--config", &config_b])?;
    wait_for("both bouncers to pull", WITHIN_ONE_POLL, || {
        Ok((crowdsec(&da).pulls > 0 && crowdsec(&db).pulls > 0).then_some(()))
    })?;
    let f2b = Fail2ban::start(&da)?;
    let attacker = SENDER_V4[1];
    assert_eq!(
        fleet.b.passes(attacker),
        10,
        "B lets the attacker in before"
    );

    // fail2ban bans on A; A drops; B drops within one of its polls.
    f2b.log_line(&format!("Failed login from {attacker}"), 3);
    wait_dropped(&fleet.a, attacker, true, BAN_DEADLINE);
    let on_b = wait_dropped(&fleet.b, attacker, true, WITHIN_ONE_POLL);
    eprintln!("fail2ban's ban on A dropped on B {on_b:?} after A enforced it");
    assert_eq!(sources_of(&db, attacker), ["crowdsec"]);
    let decisions = published(&fleet.lapi, attacker);
    assert_eq!(decisions.len(), 1, "one decision: {decisions:?}");
    assert_eq!(decisions[0]["scenario"], "enforcer/fail2ban");
    assert_eq!(decisions[0]["type"], "ban");
    // B's block lasts as long as A's (fail2ban's bantime, 600 s), give or take a poll.
    let b_entry = db.list(&["--source", "crowdsec"]);
    let left = b_entry[0].sources[0].expires_ms.unwrap().unix_ms()
        - enforcer::time::WallMs::now().unix_ms();
    assert!(
        (590_000..=600_000).contains(&left),
        "B's block ends in {left} ms"
    );

    // No echo: A pulls its own decision back and does not import it.
    let pulls = crowdsec(&da).pulls;
    wait_for("two more pulls on A", WITHIN_ONE_POLL, || {
        Ok((crowdsec(&da).pulls >= pulls + 2).then_some(()))
    })?;
    assert_eq!(
        sources_of(&da, attacker),
        ["fail2ban"],
        "no crowdsec block on A"
    );
    assert!(
        crowdsec(&da).own > 0,
        "A saw its own decision: {:?}",
        crowdsec(&da)
    );

    // Drops are split by origin: a local source on A, the publishing peer's origin on B.
    let by_origin = |d: &Daemon, origin: &str| {
        d.stats()
            .dropped_by_origin
            .into_iter()
            .find(|o| o.origin == origin)
            .map_or(0, |o| o.packets)
    };
    assert!(
        by_origin(&da, "fail2ban") >= 10,
        "{:?}",
        da.stats().dropped_by_origin
    );
    assert!(
        by_origin(&db, "enforcer") >= 10,
        "{:?}",
        db.stats().dropped_by_origin
    );
    assert_eq!(by_origin(&db, "fail2ban"), 0, "B's block is CrowdSec's");

    // The unban on A lifts it on B.
    ok(&f2b.client(&["set", JAIL, "unbanip", attacker]));
    wait_dropped(&fleet.a, attacker, false, BAN_DEADLINE);
    let lifted = wait_dropped(&fleet.b, attacker, false, WITHIN_ONE_POLL);
    eprintln!("the unban on A lifted on B {lifted:?} after A lifted it");
    assert!(published(&fleet.lapi, attacker).is_empty());

    // LAPI down: A enforces its ban at once, keeps it queued across a restart, and B follows
    // once the LAPI is back, with exactly one decision.
    let mut lapi = fleet.lapi;
    lapi.stop();
    let second = SENDER_V4[2];
    f2b.log_line(&format!("Failed login from {second}"), 3);
    wait_dropped(&fleet.a, second, true, BAN_DEADLINE);
    wait_for("the publication to be queued", WITHIN_ONE_POLL, || {
        let p = publish(&da);
        Ok((p.queue.depth == 1 && p.errors > 0).then_some(()))
    })?;
    assert_eq!(fleet.b.passes(second), 10, "B cannot know yet");
    da.stop()?;
    da.spawn()?;
    assert_eq!(fleet.a.passes(second), 0, "still dropped after A's restart");
    lapi.spawn()?;
    let back = Instant::now();
    wait_dropped(&fleet.b, second, true, Duration::from_secs(45));
    eprintln!(
        "after the outage, B dropped {second} {:?} after the LAPI came back",
        back.elapsed()
    );
    wait_for("the queue to empty", WITHIN_ONE_POLL, || {
        Ok((publish(&da).queue.depth == 0).then_some(()))
    })?;
    let decisions = published(&lapi, second);
    assert_eq!(
        decisions.len(),
        1,
        "published once across the restart: {decisions:?}"
    );
    wait_for("A to see its own decision again", WITHIN_ONE_POLL, || {
        Ok((crowdsec(&da).own > 0).then_some(()))
    })?;
    assert_eq!(
        sources_of(&da, second),
        ["fail2ban"],
        "no crowdsec block on A"
    );
    f2b.assert_no_errors();
    Ok(())
}

/// Real packets from one source to host B, every 2 ms, and when the last one arrived: the
/// moment B started dropping them is known within a few milliseconds.
struct Probe {
    last: std::sync::Arc<std::sync::Mutex<Instant>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Probe {
    fn start(lab: &Lab, src: &str) -> Result<Self> {
        let tx = lab.udp_sender(src)?;
        let rx = lab.udp_listener(enforcer_tests::RECEIVER_V4)?;
        rx.set_read_timeout(Some(Duration::from_millis(2)))?;
        let dst = rx.local_addr()?;
        let last = std::sync::Arc::new(std::sync::Mutex::new(Instant::now()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (l, s) = (last.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = tx.send_to(b"probe", dst);
                while rx.recv(&mut buf).is_ok() {
                    *l.lock().unwrap() = Instant::now();
                }
            }
        });
        Ok(Self {
            last,
            stop,
            thread: Some(thread),
        })
    }

    fn last(&self) -> Instant {
        *self.last.lock().unwrap()
    }

    /// How long after `since` the packets stopped arriving (nothing for 100 ms).
    fn dropped_after(&self, since: Instant, timeout: Duration) -> Duration {
        wait_for("the probe to be dropped", timeout, || {
            let last = self.last();
            Ok((last.elapsed() > Duration::from_millis(100))
                .then(|| last.saturating_duration_since(since)))
        })
        .unwrap()
    }

    /// How long after `since` the packets arrived again.
    fn passes_after(&self, since: Instant, timeout: Duration) -> Duration {
        wait_for("the probe to pass", timeout, || {
            let last = self.last();
            Ok((last > since).then(|| last - since))
        })
        .unwrap()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(what: &str, mut v: Vec<Duration>) {
    v.sort();
    eprintln!(
        "BENCH {what}: n={} p50={:?} p99={:?} min={:?} max={:?} (B's poll interval {POLL})",
        v.len(),
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v[0],
        v[v.len() - 1]
    );
}

/// `cargo xtask test --no-lint -- fleet::propagation --ignored --nocapture`: a block on A to
/// the drop of real packets on B, 20 trials, and 10,000 blocks imported on A reaching B, each
/// against B's poll interval and the LAPI's own answer time (a `cscli decisions import` of
/// 10,000 more).
#[test]
#[ignore = "benchmark: run by hand, reports figures"]
fn propagation_bench() -> Result<()> {
    require_root();
    let fleet = Fleet::new()?;
    let config_a = fleet.publisher_config("\"cli\"")?;
    // LAPI 1.4's delta stream can miss a few decisions inserted while a pull runs (a bulk
    // insert's rows carry their creation time, not their commit time); B's full pull heals
    // them, every 20 s here (10 minutes by default).
    let config_b = fleet
        .lapi
        .daemon_config(
            "host-b",
            &fleet.lapi.url(),
            &format!("update_frequency = \"{POLL}\"\nresync = \"20s\"\ninsecure_http = true\n"),
        )?
        .to_string_lossy()
        .into_owned();
    let da = Daemon::start(&fleet.a, &["--config", &config_a])?;
    let db = Daemon::start(&fleet.b, &["--config", &config_b])?;
    wait_for("both bouncers to pull", WITHIN_ONE_POLL, || {
        Ok((crowdsec(&da).pulls > 0 && crowdsec(&db).pulls > 0).then_some(()))
    })?;
    let src = SENDER_V4[1];
    let probe = Probe::start(&fleet.b, src)?;
    probe.passes_after(Instant::now(), WITHIN_ONE_POLL);
    let (mut drops, mut lifts) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        ok(&da.cli(&["block", src, "--ttl", "10m"]));
        let enforced_on_a = Instant::now();
        drops.push(probe.dropped_after(enforced_on_a, WITHIN_ONE_POLL * 2));
        ok(&da.cli(&["unblock", src]));
        let lifted_on_a = Instant::now();
        lifts.push(probe.passes_after(lifted_on_a, WITHIN_ONE_POLL * 2));
    }
    summary("block on A -> dropped on B", drops);
    summary("unblock on A -> passing on B", lifts);

    // 10,000 blocks imported on A.
    let n = 10_000;
    let values = |net: u32| -> Vec<String> {
        (0..n)
            .map(|i| format!("2001:db8:{net:x}::{:x}", i + 1))
            .collect()
    };
    let file = fleet.lapi.path("import-a.txt");
    std::fs::write(&file, values(0xa).join("\n"))?;
    let before = crowdsec(&db).active;
    let started = Instant::now();
    let summary_a = ok(&da.cli(&["import", &file.to_string_lossy(), "--ttl", "1h", "--json"]));
    let imported = started.elapsed();
    eprintln!("import on A: {}", summary_a.trim());
    let mut report = Instant::now();
    let mut most: Option<Duration> = None;
    let held = wait_for(
        "B to hold the 10,000 blocks",
        Duration::from_secs(240),
        || {
            if report.elapsed() > Duration::from_secs(10) {
                report = Instant::now();
                eprintln!(
                    "after {:?}: B holds {} of {n}; A's publisher {:?}",
                    started.elapsed(),
                    crowdsec(&db).active - before,
                    publish(&da)
                );
            }
            let held = crowdsec(&db).active - before;
            if most.is_none() && held * 1000 >= n * 999 {
                most = Some(started.elapsed());
            }
            Ok((held >= n).then_some(()))
        },
    );
    if let Err(e) = held {
        let log = da.log();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        panic!(
            "{e:#}\nA's log (last lines, newest first):\n{}",
            tail.join("\n")
        );
    }
    let on_b = started.elapsed();
    let p = publish(&da);
    eprintln!(
        "BENCH 10,000 blocks imported on A: import {imported:?}, 99.9% enforced on B after {most:?}, all after {on_b:?} (queue now {}, sent {}, publisher errors {}: {:?})",
        p.queue.depth, p.sent, p.errors, p.last_error
    );
    // The LAPI's own answer time for the same amount: cscli imports 10,000 decisions, B pulls.
    let started = Instant::now();
    fleet.lapi.import(&values(0xb), "1h")?;
    let cscli = started.elapsed();
    wait_for(
        "B to hold the cscli import",
        Duration::from_secs(300),
        || Ok((crowdsec(&db).active >= before + 2 * n).then_some(())),
    )?;
    eprintln!(
        "BENCH 10,000 decisions by cscli decisions import: cscli {cscli:?}, all enforced on B after {:?}",
        started.elapsed()
    );
    Ok(())
}
