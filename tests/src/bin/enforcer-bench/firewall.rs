//! The peers the enforcer is measured against: one iptables DROP rule per address (what Wazuh's
//! firewall-drop does), an ipset `hash:ip` behind one rule (fail2ban's ipset actions), and an
//! nftables set with timeouts behind one rule (fail2ban's nftables action, CrowdSec's bouncer).
//!
//! Everything here runs inside the lab's receiver namespace, never in the host's: commands get a
//! `setns` into the namespace between fork and exec ([`NsExec`]), which is what
//! `ip netns exec` does minus its own process and mount work, so a per-process trigger is timed
//! without a wrapper's cost. Every installed filter is a guard that removes itself on drop, and
//! the namespace itself goes away with the lab.

use std::{
    ffi::OsStr,
    fmt::Write as _,
    fs::File,
    io::Write as _,
    net::Ipv4Addr,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::{Command, Stdio},
    sync::Arc,
};

use anyhow::{Context as _, Result, bail, ensure};
use enforcer_tests::Netns;
use serde::Serialize;

/// Spawns commands inside one network namespace.
#[derive(Clone)]
pub(crate) struct NsExec {
    ns: Arc<File>,
}

impl NsExec {
    pub(crate) fn new(ns: &Netns) -> Result<Self> {
        let path = format!("/run/netns/{}", ns.name());
        let file = File::open(&path).with_context(|| format!("opening {path}"))?;
        Ok(Self { ns: Arc::new(file) })
    }

    /// A command that enters the namespace before it runs `program`.
    pub(crate) fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let ns = self.ns.clone();
        // SAFETY: the closure only makes the setns system call (async-signal-safe) on a
        // descriptor that outlives the spawn (the Arc is moved into the closure).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        cmd
    }

    /// Runs a command in the namespace and fails with its stderr if it fails.
    pub(crate) fn run(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self
            .command(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program}"))?;
        ensure!(
            out.status.success(),
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a command in the namespace with `input` on stdin (bulk loads: `iptables-restore`,
    /// `ipset restore`, `nft -f -`).
    pub(crate) fn feed(&self, program: &str, args: &[&str], input: &str) -> Result<()> {
        let mut child = self
            .command(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {program}"))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())
            .with_context(|| format!("writing to {program}"))?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }
}

/// Which iptables the comparison uses.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Iptables {
    /// The command (`iptables-legacy` when installed: the reference figures are for it).
    pub command: String,
    /// Its restore command.
    pub restore: String,
    /// `legacy` or `nf_tables`, from `iptables -V`.
    pub backend: String,
    /// `iptables -V`.
    pub version: String,
}

impl Iptables {
    /// Prefers iptables-legacy: Wazuh's firewall-drop on most hosts, and the peer figures in
    /// the reference were taken with it.
    pub(crate) fn detect() -> Result<Self> {
        for (command, restore) in [
            ("iptables-legacy", "iptables-legacy-restore"),
            ("iptables", "iptables-restore"),
        ] {
            let Ok(out) = Command::new(command).arg("-V").output() else {
                continue;
            };
            if !out.status.success() {
                continue;
            }
            let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let backend = if version.contains("nf_tables") {
                "nf_tables"
            } else {
                "legacy"
            };
            return Ok(Self {
                command: command.to_owned(),
                restore: restore.to_owned(),
                backend: backend.to_owned(),
                version,
            });
        }
        bail!("no iptables found (run `cargo xtask setup`)")
    }
}

/// A filter of one of the peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Peer {
    /// One `-s ADDR -j DROP` rule per blocked address in INPUT.
    IptablesPerAddress,
    /// `ipset` `hash:ip` (with a default timeout) and one `--match-set` rule.
    Ipset,
    /// An nftables set with `flags timeout` and one `ip saddr @set drop` rule.
    NftSet,
}

impl Peer {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::IptablesPerAddress => "iptables, one rule per address",
            Self::Ipset => "ipset hash:ip + 1 rule",
            Self::NftSet => "nftables set + 1 rule",
        }
    }
}

/// Names of what the harness creates in the namespace.
const SET: &str = "enforcer_bench";
const NFT_TABLE: &str = "enforcer_bench";

/// An installed peer filter; removed on drop.
pub(crate) struct Installed<'a> {
    exec: &'a NsExec,
    peer: Peer,
    /// The iptables command that removes the rules (unused for nftables).
    iptables: String,
}

/// Installs `peer` in the namespace, blocking `blocked` (in this order: for the per-address
/// rules the last address ends up last in the chain).
#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
pub(crate) fn install<'a>(
    exec: &'a NsExec,
    ipt: &Iptables,
    peer: Peer,
    blocked: &[Ipv4Addr],
) -> Result<Installed<'a>> {
    let installed = Installed {
        exec,
        peer,
        iptables: ipt.command.clone(),
    };
    let mut text = String::new();
    match peer {
        Peer::IptablesPerAddress => {
            text.push_str("*filter\n:INPUT ACCEPT [0:0]\n");
            for a in blocked {
                let _ = writeln!(text, "-A INPUT -s {a}/32 -j DROP");
            }
            text.push_str("COMMIT\n");
            exec.feed(&ipt.restore, &[], &text)?;
        }
        Peer::Ipset => {
            let max = blocked.len().max(65_536).next_power_of_two();
            let _ = writeln!(
                text,
                "create {SET} hash:ip family inet maxelem {max} timeout 3600"
            );
            for a in blocked {
                let _ = writeln!(text, "add {SET} {a}");
            }
            exec.feed("ipset", &["restore"], &text)?;
            exec.run(
                &ipt.command,
                &[
                    "-w",
                    "-I",
                    "INPUT",
                    "-m",
                    "set",
                    "--match-set",
                    SET,
                    "src",
                    "-j",
                    "DROP",
                ],
            )?;
        }
        Peer::NftSet => {
            let _ = writeln!(
                text,
                "table inet {NFT_TABLE} {{\n  set blocked {{ type ipv4_addr; flags timeout; }}\n  \
                 chain input {{ type filter hook input priority filter; policy accept; ip saddr @blocked drop; }}\n}}"
            );
            for chunk in blocked.chunks(10_000) {
                let _ = write!(text, "add element inet {NFT_TABLE} blocked {{ ");
                for (i, a) in chunk.iter().enumerate() {
                    let _ = write!(text, "{}{a} timeout 1h", if i > 0 { ", " } else { "" });
                }
                text.push_str(" }\n");
            }
            exec.feed("nft", &["-f", "-"], &text)?;
        }
    }
    Ok(installed)
}

/// The nftables table for per-process `nft add element` triggers (no elements yet).
pub(crate) fn nft_empty_set(exec: &NsExec) -> Result<Installed<'_>> {
    let ipt = Iptables {
        command: String::new(),
        restore: String::new(),
        backend: String::new(),
        version: String::new(),
    };
    install(exec, &ipt, Peer::NftSet, &[])
}

/// The command line of one nftables trigger (`nft add element ...`), as fail2ban runs it.
pub(crate) fn nft_add_element_args(addr: Ipv4Addr) -> Vec<String> {
    ["add", "element", "inet", NFT_TABLE, "blocked", "{"]
        .into_iter()
        .map(str::to_owned)
        .chain([format!("{addr}"), "timeout".into(), "1h".into(), "}".into()])
        .collect()
}

impl Drop for Installed<'_> {
    fn drop(&mut self) {
        match self.peer {
            Peer::IptablesPerAddress => {
                // Best effort in drop: the lab's namespace goes, and its rules with it.
                self.exec.run(&self.iptables, &["-w", "-F", "INPUT"]).ok();
            }
            Peer::Ipset => {
                // Best effort in drop: the lab's namespace goes, and its rules and sets with it.
                self.exec.run(&self.iptables, &["-w", "-F", "INPUT"]).ok();
                self.exec.run("ipset", &["destroy", SET]).ok();
            }
            Peer::NftSet => {
                // Best effort in drop: the lab's namespace goes, and its table with it.
                self.exec
                    .run("nft", &["delete", "table", "inet", NFT_TABLE])
                    .ok();
            }
        }
    }
}

/// Flushes INPUT when dropped: for the per-process iptables triggers, which add rules one by one.
pub(crate) struct FlushInput<'a> {
    pub exec: &'a NsExec,
    pub ipt: &'a Iptables,
}

impl Drop for FlushInput<'_> {
    fn drop(&mut self) {
        // Best effort in drop: the lab's namespace goes, and its rules with it.
        self.exec
            .run(&self.ipt.command, &["-w", "-F", "INPUT"])
            .ok();
    }
}

/// `n` distinct addresses to fill rules and sets with (10.0.0.0/8; never sent to or from:
/// they are rule contents only).
pub(crate) fn filler(n: usize) -> Vec<Ipv4Addr> {
    (0..n as u32)
        .map(|i| Ipv4Addr::from(0x0a00_0001 + i))
        .collect()
}
