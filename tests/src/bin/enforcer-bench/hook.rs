//! The enforcer's Wazuh hook, spawned the way wazuh-execd spawns an active-response program,
//! for timing: argv[0] `active-response/bin/enforcer-drop`, cwd the Wazuh home, one JSON line on
//! stdin, the `check_keys` line read back and answered with `continue`.
//!
//! The tests' execd emulator (`enforcer_tests::execd`) does the same and more, but it waits for
//! the program's exit by polling every 2 ms: a large share of the ~2 ms being measured here.
//! This module blocks on every wait instead, and bounds each with a deadline.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::Ipv4Addr,
    os::unix::process::CommandExt as _,
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use enforcer_tests::daemon::{Daemon, enforcer_bin};
use serde_json::{Value, json};

/// How long one hook run may take before it is killed (the hook's own watchdog is 20 s).
const DEADLINE: Duration = Duration::from_secs(10);
/// The name execd would know the program by.
const PROGRAM: &str = "active-response/bin/enforcer-drop";

/// A Wazuh home for the hook's log, and the `<extra_args>` that point it at one daemon.
pub(crate) struct WazuhHook {
    home: tempfile::TempDir,
    extra_args: Vec<String>,
}

impl WazuhHook {
    pub(crate) fn new(d: &Daemon) -> Result<Self> {
        let home = tempfile::tempdir()?;
        std::fs::create_dir_all(home.path().join("logs"))?;
        Ok(Self {
            home,
            extra_args: vec![
                "--ttl".into(),
                "1h".into(),
                "--socket".into(),
                d.socket.display().to_string(),
                "--state-dir".into(),
                d.state_dir.display().to_string(),
            ],
        })
    }

    /// One add for `addr`, with an sshd brute-force alert; fails unless the hook exits 0.
    pub(crate) fn add(&self, addr: Ipv4Addr) -> Result<()> {
        let message = json!({
            "version": 1,
            "origin": {"name": "node01", "module": "wazuh-execd"},
            "command": "add",
            "parameters": {
                "extra_args": self.extra_args,
                "alert": {
                    "timestamp": "2026-11-27T18:00:00.123+0000",
                    "rule": {"level": 10, "description": "sshd: brute force trying to get access to the system.", "id": "5763", "groups": ["syslog", "sshd", "authentication_failures"]},
                    "agent": {"id": "001", "name": "web-01", "ip": "192.0.2.2"},
                    "id": "1764266400.4242",
                    "full_log": format!("sshd[4242]: Failed password for root from {addr} port 52144 ssh2"),
                    "decoder": {"name": "sshd"},
                    "data": {"srcip": addr.to_string(), "srcport": "52144", "dstuser": "root"},
                    "location": "/var/log/auth.log"
                },
                "program": PROGRAM
            }
        });
        let mut child = Command::new(enforcer_bin())
            .arg0(PROGRAM)
            .current_dir(self.home.path())
            .env_remove("ENFORCER_SOCKET")
            .env_remove("ENFORCER_STATE_DIR")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning the hook")?;
        let handshake = handshake(&mut child, &message);
        let out = wait_bounded(child, DEADLINE)?;
        handshake?;
        ensure!(
            out.status.success(),
            "the hook exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }
}

/// Sends the message, reads check_keys, answers `continue`. Leaves stdin open (execd does) and
/// stdout to [`wait_bounded`].
fn handshake(child: &mut Child, message: &Value) -> Result<()> {
    let stdin = child.stdin.as_mut().expect("piped");
    writeln!(stdin, "{message}")?;
    stdin.flush()?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        // A line cut short (or none) fails below as not a check_keys message.
        reader.read_line(&mut line).ok();
        // Past the deadline nobody waits for it.
        tx.send(line).ok();
        // Drain to EOF, so the hook never blocks on a full pipe.
        std::io::copy(&mut reader, &mut std::io::sink()).ok();
    });
    let line = rx
        .recv_timeout(DEADLINE)
        .map_err(|_| anyhow::anyhow!("no check_keys line within {DEADLINE:?}"))?;
    let first: Value = serde_json::from_str(line.trim()).map_err(|_| {
        anyhow::anyhow!(
            "the first line is not a check_keys message: {:?}",
            line.trim()
        )
    })?;
    ensure!(
        first["command"] == "check_keys",
        "expected check_keys, got {first}"
    );
    let mut reply = message.clone();
    reply["command"] = json!("continue");
    writeln!(stdin, "{reply}")?;
    stdin.flush()?;
    Ok(())
}

/// Waits for `child` (blocking, on a helper thread) and kills it if it outlives `limit`.
pub(crate) fn wait_bounded(child: Child, limit: Duration) -> Result<Output> {
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Past the limit nobody waits for it (the child was killed).
        tx.send(child.wait_with_output()).ok();
    });
    match rx.recv_timeout(limit) {
        Ok(out) => Ok(out?),
        Err(_) => {
            // SAFETY: kill(2). The child is not reaped until the helper's wait returns, so the
            // pid is still ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            bail!("killed after {limit:?}")
        }
    }
}
