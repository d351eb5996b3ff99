//! Enforce first, acknowledge after the fsync: a block is in the kernel (and drops traffic) as
//! soon as the policy has decided, before its store commit; it is acknowledged only after both.
//! A failed commit takes the kernel entry out again, and an entry a crash left between the two
//! is removed at the next start (the store is the truth).
//!
//! Debug builds only: the daemon's store waits before its fsync while the file named by
//! `ENFORCER_TEST_STALL_COMMIT` exists, and fails the fsync while the file named by
//! `ENFORCER_TEST_FAIL_COMMIT` exists.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use enforcer_tests::{
    Lab, SENDER_V4,
    daemon::{Daemon, enforcer_bin, ok},
    require_root, wait_for,
};

/// The source the tests block (a secondary sender address of the lab).
const SOURCE: &str = SENDER_V4[1];

/// `enforcer block SOURCE` against `d`, left running (its answer is the acknowledgement).
fn block_in_background(d: &Daemon) -> Child {
    Command::new(enforcer_bin())
        .arg("--socket")
        .arg(&d.socket)
        .args(["block", SOURCE, "--ttl", "1h"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the CLI")
}

/// Waits until traffic from `SOURCE` is dropped, while the daemon's commit is held.
fn dropped_before_the_commit(lab: &Lab) {
    wait_for(
        "traffic from the source to be dropped before the store commit",
        Duration::from_secs(15),
        || Ok((lab.passes(SOURCE) == 0).then_some(())),
    )
    .unwrap();
}

/// The CLI's exit, within a deadline.
fn finished(cli: &mut Child) -> std::process::Output {
    wait_for("the CLI to exit", Duration::from_secs(20), || {
        Ok(cli.try_wait()?.map(|_| ()))
    })
    .unwrap();
    let mut out = std::process::Output {
        status: cli.wait().unwrap(),
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    use std::io::Read as _;
    if let Some(mut e) = cli.stderr.take() {
        e.read_to_end(&mut out.stderr).unwrap();
    }
    out
}

fn hooks(dir: &Path) -> Vec<(String, String)> {
    vec![
        (
            "ENFORCER_TEST_STALL_COMMIT".into(),
            dir.join("stall").display().to_string(),
        ),
        (
            "ENFORCER_TEST_FAIL_COMMIT".into(),
            dir.join("fail").display().to_string(),
        ),
    ]
}

fn listed(d: &Daemon) -> bool {
    d.list(&[]).iter().any(|e| e.target.to_string() == SOURCE)
}

#[test]
fn a_block_drops_before_its_fsync_and_a_crash_there_leaves_nothing_after_the_restart() {
    if !enforcer_tests::test_hooks_or_skip() {
        return;
    }
    require_root();
    let lab = Lab::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let stall = tmp.path().join("stall");
    let mut d = Daemon::start_with_env(&lab, &[], hooks(tmp.path())).unwrap();
    assert_eq!(lab.passes(SOURCE), 10);
    std::fs::write(&stall, "").unwrap();
    let mut cli = block_in_background(&d);
    dropped_before_the_commit(&lab);
    assert!(
        cli.try_wait().unwrap().is_none(),
        "the block was acknowledged before its commit"
    );
    // A crash between the kernel write and the fsync.
    d.kill();
    let out = finished(&mut cli);
    assert!(
        !out.status.success(),
        "a block the crash lost was acknowledged"
    );
    std::fs::remove_file(&stall).unwrap();
    d.spawn().unwrap();
    // The store never knew it: the restart took the kernel entry out.
    assert_eq!(lab.passes(SOURCE), 10, "the unacknowledged entry stayed");
    assert!(!listed(&d));
    let audit = d.audit_text();
    assert!(
        audit.contains(&format!(
            "\"action\":\"remove_unknown\",\"target\":\"{SOURCE}\""
        )),
        "{audit}"
    );
    // And blocking works as before.
    ok(&d.cli(&["block", SOURCE]));
    assert_eq!(lab.passes(SOURCE), 0);
}

#[test]
fn a_failed_fsync_takes_the_kernel_entry_out_again_and_the_block_is_refused() {
    if !enforcer_tests::test_hooks_or_skip() {
        return;
    }
    require_root();
    let lab = Lab::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (stall, fail) = (tmp.path().join("stall"), tmp.path().join("fail"));
    let d = Daemon::start_with_env(&lab, &[], hooks(tmp.path())).unwrap();
    std::fs::write(&stall, "").unwrap();
    std::fs::write(&fail, "").unwrap();
    let mut cli = block_in_background(&d);
    // In force while the commit is held...
    dropped_before_the_commit(&lab);
    // ...then the fsync fails.
    std::fs::remove_file(&stall).unwrap();
    let out = finished(&mut cli);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a block that was not stored was acknowledged"
    );
    assert!(
        stderr.contains("the block store failed; nothing was changed")
            && stderr.contains("fsync failed"),
        "{stderr}"
    );
    assert_eq!(
        lab.passes(SOURCE),
        10,
        "the kernel entry of a refused block stayed"
    );
    assert!(!listed(&d));
    std::fs::remove_file(&fail).unwrap();
    ok(&d.cli(&["block", SOURCE]));
    assert_eq!(lab.passes(SOURCE), 0);
    assert!(listed(&d));
}
