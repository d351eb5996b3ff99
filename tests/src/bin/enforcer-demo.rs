//! `cargo xtask demo`: the enforcer on real traffic in a throw-away namespace lab.
//!
//! An "attacker" and a "legitimate client" share a sender namespace; the protected host runs
//! the real daemon with XDP on its interface. The demo blocks the attacker from the CLI, shows
//! its packets dropped while the client's pass, lists the block with its counters, and waits
//! for the block to lift by itself.

use std::time::{Duration, Instant};

use anyhow::Result;
use enforcer_tests::{Lab, RECEIVER_V4, SENDER_V4, daemon::Daemon, wait_for};

const ATTACKER: &str = SENDER_V4[1];
const CLIENT: &str = SENDER_V4[2];

fn step(text: &str) {
    println!("\n\x1b[1m== {text}\x1b[0m");
}

fn traffic(lab: &Lab) -> Result<()> {
    let rx = lab.udp_listener(RECEIVER_V4)?;
    for (who, src) in [("attacker", ATTACKER), ("client  ", CLIENT)] {
        let got = lab.exchange(&lab.udp_sender(src)?, &rx, 20)?;
        println!("   {who} {src} -> {RECEIVER_V4}: {got:>2}/20 UDP datagrams delivered");
    }
    Ok(())
}

fn enforcer(d: &Daemon, args: &[&str]) -> Result<()> {
    let out = show(d, args);
    anyhow::ensure!(out.status.success(), "enforcer {args:?} failed");
    Ok(())
}

/// Runs the CLI and prints what it said, success or not.
fn show(d: &Daemon, args: &[&str]) -> std::process::Output {
    println!("   $ enforcer {}", args.join(" "));
    let out = d.cli(args);
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("     {line}");
    }
    if !out.status.success() {
        println!("     (exit code {})", out.status.code().unwrap_or(-1));
    }
    out
}

fn main() -> Result<()> {
    enforcer_tests::require_root();
    step(
        "Building the lab: two network namespaces joined by a veth pair (documentation addresses)",
    );
    let lab = Lab::new()?;
    println!(
        "   sender   {} ({ATTACKER} attacker, {CLIENT} client)",
        lab.sender.name()
    );
    println!(
        "   receiver {} ({RECEIVER_V4}, protected by the enforcer's XDP program)",
        lab.receiver.name()
    );
    let d = Daemon::start(&lab, &[])?;
    enforcer(&d, &["status"])?;

    step("Before any block, both sources get through");
    traffic(&lab)?;

    step("Block the attacker for 5 seconds from the CLI");
    enforcer(
        &d,
        &[
            "block",
            ATTACKER,
            "--ttl",
            "5s",
            "--reason",
            "demo: ssh brute force",
        ],
    )?;
    traffic(&lab)?;
    let started = Instant::now();

    step("What is blocked, why, by whom, until when, and how much it stopped");
    enforcer(&d, &["list"])?;
    enforcer(&d, &["show", ATTACKER])?;

    step("Safety: the protected host's own address and over-broad prefixes are refused");
    let refused = show(&d, &["block", RECEIVER_V4, "--source", "wazuh"]);
    anyhow::ensure!(
        refused.status.code() == Some(7),
        "blocking the host itself must be refused"
    );
    let refused = show(&d, &["block", "198.51.100.0/16", "--source", "wazuh"]);
    anyhow::ensure!(
        refused.status.code() == Some(7),
        "an over-broad prefix must be refused"
    );

    step("Waiting for the block to lift by itself (no unblock command)");
    wait_for("the block to expire", Duration::from_secs(15), || {
        let out = d.cli(&["list", "--json"]);
        Ok((String::from_utf8_lossy(&out.stdout).trim() == "[]").then_some(()))
    })?;
    println!("   lifted after {:.1}s", started.elapsed().as_secs_f64());
    traffic(&lab)?;
    enforcer(&d, &["stats"])?;

    step("Audit log");
    let audit = std::fs::read_to_string(d.state_dir.join("audit.log"))?;
    for line in audit.lines() {
        println!("   {line}");
    }
    step("Done: the lab, its daemon and its pins are removed");
    Ok(())
}
