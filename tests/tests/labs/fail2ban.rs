//! The real fail2ban (Debian's package) banning through the real daemon in the namespace lab:
//! failed logins in a log file end as packets dropped in the kernel, and fail2ban's unban, restart
//! and crash leave every other source's block alone.

use std::{
    io::Write as _,
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use enforcer::{
    install::fail2ban::{InstallOptions, Outcome, install},
    protocol::ListSource,
};
use enforcer_tests::{
    Lab, RECEIVER_V4, RECEIVER_V6, SENDER_V4, SENDER_V6,
    daemon::{Daemon, enforcer_bin, ok},
    require_root, wait_for,
};

/// fail2ban's polling backend looks at the log every second; a ban takes a few.
const BAN_DEADLINE: Duration = Duration::from_secs(30);
pub(crate) const JAIL: &str = "enforcer-test";

/// A fail2ban-server run from a private configuration in a temporary directory (its own
/// socket, pid file, database and log), banning through the enforcer action into `daemon`.
/// The server is SIGKILLed on drop if still running; the directory goes with it.
pub(crate) struct Fail2ban {
    dir: tempfile::TempDir,
    server: Option<Child>,
    /// The daemon's state directory, where the action spools while the daemon is down (the
    /// packaged daemon's is the CLI's default, /var/lib/enforcer; this one's is a temporary
    /// directory, given to the action through the server's environment).
    state_dir: std::path::PathBuf,
}

impl Fail2ban {
    /// Writes the configuration (one jail, `enforcer-test`, reading `auth.log`) and starts the
    /// server.
    pub(crate) fn start(daemon: &Daemon) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        std::fs::create_dir(d.join("action.d"))?;
        std::fs::create_dir(d.join("filter.d"))?;
        std::fs::write(
            d.join("fail2ban.conf"),
            format!(
                "[Definition]\nloglevel = INFO\nlogtarget = {d}/fail2ban.log\nsyslogsocket = auto\n\
                 socket = {d}/fail2ban.sock\npidfile = {d}/fail2ban.pid\ndbfile = {d}/fail2ban.sqlite3\n\
                 dbpurgeage = 1d\n",
                d = d.display()
            ),
        )?;
        // No timestamps in the test log: {NONE} makes every match "now".
        std::fs::write(
            d.join("filter.d").join(format!("{JAIL}.conf")),
            "[Definition]\nfailregex = ^Failed login from <HOST>$\ndatepattern = {NONE}\n",
        )?;
        std::fs::write(d.join("auth.log"), "")?;
        // Our own jail.local and nothing else: no Debian defaults, so the jail says everything.
        std::fs::write(
            d.join("jail.local"),
            format!(
                "[DEFAULT]\nbackend = polling\nbanaction = enforcer\naction = %(banaction)s\n\n\
                 [{JAIL}]\nenabled = true\nfilter = {JAIL}\nlogpath = {d}/auth.log\n\
                 maxretry = 3\nfindtime = 60\nbantime = 600\n",
                d = d.display()
            ),
        )?;
        let (_, outcome) = install(&InstallOptions {
            dir: d.join("action.d"),
            name: "enforcer".into(),
            enforcer: enforcer_bin(),
            socket: daemon.socket.clone(),
            force: false,
        })?;
        ensure!(outcome == Outcome::Created);
        let mut f2b = Self {
            dir,
            server: None,
            state_dir: daemon.state_dir.clone(),
        };
        f2b.spawn()?;
        Ok(f2b)
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `fail2ban-server` in the foreground and waits until it answers a ping.
    fn spawn(&mut self) -> Result<()> {
        let out = std::fs::File::create(self.path().join("server.out"))?;
        let child = Command::new("fail2ban-server")
            .arg("-c")
            .arg(self.path())
            // -f: foreground (our child), -x: take over a socket a killed server left.
            .args(["-f", "-x"])
            .env("ENFORCER_STATE_DIR", &self.state_dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting fail2ban-server (`cargo xtask setup` installs fail2ban)")?;
        self.server = Some(child);
        wait_for("fail2ban to answer a ping", Duration::from_secs(30), || {
            if let Some(status) = self
                .server
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                anyhow::bail!("fail2ban-server exited early ({status}): {}", self.log());
            }
            Ok(self.client(&["ping"]).status.success().then_some(()))
        })?;
        // The jail runs once its status answers.
        wait_for("the jail to start", Duration::from_secs(30), || {
            Ok(self
                .client(&["status", JAIL])
                .status
                .success()
                .then_some(()))
        })
    }

    /// `fail2ban-client -c DIR ARGS`.
    pub(crate) fn client(&self, args: &[&str]) -> Output {
        Command::new("fail2ban-client")
            .arg("-c")
            .arg(self.path())
            .args(args)
            .output()
            .expect("run fail2ban-client")
    }

    /// Appends lines to the log the jail watches.
    pub(crate) fn log_line(&self, line: &str, times: usize) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.path().join("auth.log"))
            .unwrap();
        for _ in 0..times {
            writeln!(f, "{line}").unwrap();
        }
    }

    /// A clean stop (`fail2ban-client stop`), waiting for the server to exit.
    pub(crate) fn stop(&mut self) -> Result<()> {
        ok(&self.client(&["stop"]));
        if let Some(mut child) = self.server.take() {
            let status = child.wait()?;
            ensure!(
                status.success(),
                "fail2ban-server exited with {status}: {}",
                self.log()
            );
        }
        Ok(())
    }

    /// SIGKILL: a crash; the database keeps the bans.
    fn kill(&mut self) {
        if let Some(mut child) = self.server.take() {
            // It may have exited already; reaped either way.
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// fail2ban's log.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("fail2ban.log")).unwrap_or_default()
    }

    /// Fails when fail2ban logged an error (a failed action command, a bad configuration).
    /// After a crash the next server finds the dead one's socket and says so before `-x` takes
    /// it over: that one is expected.
    pub(crate) fn assert_no_errors(&self) {
        let log = self.log();
        let errors: Vec<&str> = log
            .lines()
            .filter(|l| {
                l.contains(" ERROR ") && !l.contains("Fail2ban seems to be already running")
            })
            .collect();
        assert!(
            errors.is_empty(),
            "fail2ban logged errors:\n{}\nfull log:\n{log}",
            errors.join("\n")
        );
    }
}

impl Drop for Fail2ban {
    fn drop(&mut self) {
        self.kill();
    }
}

/// fail2ban's block of `target`, as `enforcer list --source fail2ban --json` shows it.
fn fail2ban_block(d: &Daemon, target: &str) -> Option<ListSource> {
    let entry = d
        .list(&["--source", "fail2ban"])
        .into_iter()
        .find(|e| e.target.to_string() == target)?;
    entry
        .sources
        .into_iter()
        .find(|s| s.source.as_str() == "fail2ban")
}

fn sources(d: &Daemon, target: &str) -> Vec<String> {
    let Some(entry) = d
        .list(&[])
        .into_iter()
        .find(|e| e.target.to_string() == target)
    else {
        return vec![];
    };
    entry.sources.iter().map(|s| s.source.to_string()).collect()
}

fn wait_for_ban(d: &Daemon, f2b: &Fail2ban, target: &str) -> ListSource {
    wait_for(
        &format!("fail2ban's block of {target}"),
        BAN_DEADLINE,
        || Ok(fail2ban_block(d, target)),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}\nfail2ban log:\n{}\ndaemon log:\n{}",
            f2b.log(),
            d.log()
        )
    })
}

fn setup() -> (Lab, Daemon, Fail2ban) {
    require_root();
    let lab = Lab::new().unwrap();
    let d = Daemon::start(&lab, &[]).unwrap();
    let f2b = Fail2ban::start(&d).unwrap();
    (lab, d, f2b)
}

#[test]
fn three_failed_logins_get_the_address_dropped_in_the_kernel_until_fail2ban_unbans_it() {
    let (lab, d, f2b) = setup();
    assert_eq!(lab.passes_to(SENDER_V4[1], RECEIVER_V4), 10);

    f2b.log_line(&format!("Failed login from {}", SENDER_V4[1]), 3);
    let block = wait_for_ban(&d, &f2b, SENDER_V4[1]);
    assert_eq!(
        block.reason.text.as_deref(),
        Some(format!("fail2ban {JAIL}: 3 failures").as_str())
    );
    assert_eq!(d.show(SENDER_V4[1]).verdict, "drop");
    assert_eq!(lab.passes_to(SENDER_V4[1], RECEIVER_V4), 0);
    assert_eq!(
        lab.passes_to(SENDER_V4[2], RECEIVER_V4),
        10,
        "only the offender is dropped"
    );

    // IPv6 goes through the same command line.
    ok(&f2b.client(&["set", JAIL, "banip", SENDER_V6[1]]));
    wait_for_ban(&d, &f2b, SENDER_V6[1]);
    assert_eq!(lab.passes_to(SENDER_V6[1], RECEIVER_V6), 0);
    assert_eq!(lab.passes_to(SENDER_V6[2], RECEIVER_V6), 10);

    ok(&f2b.client(&["set", JAIL, "unbanip", SENDER_V4[1]]));
    ok(&f2b.client(&["set", JAIL, "unbanip", SENDER_V6[1]]));
    assert!(fail2ban_block(&d, SENDER_V4[1]).is_none());
    assert_eq!(lab.passes_to(SENDER_V4[1], RECEIVER_V4), 10);
    assert_eq!(lab.passes_to(SENDER_V6[1], RECEIVER_V6), 10);

    // An unban of a block that is already gone (removed by hand) is not an error.
    ok(&f2b.client(&["set", JAIL, "banip", SENDER_V4[2]]));
    wait_for_ban(&d, &f2b, SENDER_V4[2]);
    ok(&d.cli(&["unblock", SENDER_V4[2], "--source", "fail2ban"]));
    ok(&f2b.client(&["set", JAIL, "unbanip", SENDER_V4[2]]));
    f2b.assert_no_errors();
}

#[test]
fn fail2bans_unban_leaves_another_sources_block_of_the_same_address() {
    let (lab, d, f2b) = setup();
    f2b.log_line(&format!("Failed login from {}", SENDER_V4[1]), 3);
    wait_for_ban(&d, &f2b, SENDER_V4[1]);
    ok(&d.cli(&[
        "block",
        SENDER_V4[1],
        "--ttl",
        "10m",
        "--source",
        "cli",
        "--reason",
        "by hand",
    ]));
    assert_eq!(sources(&d, SENDER_V4[1]), ["cli", "fail2ban"]);

    ok(&f2b.client(&["set", JAIL, "unbanip", SENDER_V4[1]]));
    assert_eq!(
        sources(&d, SENDER_V4[1]),
        ["cli"],
        "only fail2ban's reference is dropped"
    );
    assert_eq!(
        lab.passes_to(SENDER_V4[1], RECEIVER_V4),
        0,
        "the CLI's block still holds"
    );

    ok(&d.cli(&["unblock", SENDER_V4[1], "--source", "cli"]));
    assert_eq!(lab.passes_to(SENDER_V4[1], RECEIVER_V4), 10);
    f2b.assert_no_errors();
}

#[test]
fn a_restart_or_a_crash_of_fail2ban_reissues_its_bans_without_errors() {
    let (lab, d, mut f2b) = setup();
    f2b.log_line(&format!("Failed login from {}", SENDER_V4[1]), 3);
    wait_for_ban(&d, &f2b, SENDER_V4[1]);

    // A clean stop unbans (as with any fail2ban action); the start restores the ban from the
    // database.
    f2b.stop().unwrap();
    assert!(
        fail2ban_block(&d, SENDER_V4[1]).is_none(),
        "fail2ban unbans what it banned when it stops"
    );
    f2b.spawn().unwrap();
    wait_for_ban(&d, &f2b, SENDER_V4[1]);

    // A crash leaves the block in the kernel; the restore re-issues the same ban, which the
    // daemon takes as a repeat, not an error.
    f2b.kill();
    f2b.spawn().unwrap();
    // The daemon audits the repeated block as an extension (or an unchanged re-block).
    wait_for("the restored ban to reach the daemon", BAN_DEADLINE, || {
        let audit = std::fs::read_to_string(d.state_dir.join("audit.log"))?;
        Ok(audit
            .lines()
            .any(|l| {
                l.contains("\"source\":\"fail2ban\"")
                    && (l.contains("\"action\":\"extend\"") || l.contains("\"action\":\"reblock\""))
            })
            .then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\nfail2ban log:\n{}", f2b.log()));
    assert_eq!(
        sources(&d, SENDER_V4[1]),
        ["fail2ban"],
        "one fail2ban block, not two"
    );
    assert_eq!(lab.passes_to(SENDER_V4[1], RECEIVER_V4), 0);
    f2b.assert_no_errors();
}

/// A ban made while the daemon is down (a restart, boot order) is spooled by the action's
/// `--spool-if-down` and applied when the daemon starts.
#[test]
fn a_ban_made_while_the_daemon_is_down_is_applied_when_it_starts() {
    let (lab, mut d, f2b) = setup();
    d.stop().unwrap();
    f2b.log_line(&format!("Failed login from {}", SENDER_V4[1]), 3);
    wait_for("the ban to be spooled", BAN_DEADLINE, || {
        Ok((enforcer::spool::depth(&d.state_dir).unwrap_or(0) == 1).then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}\nfail2ban log:\n{}", f2b.log()));
    d.spawn().unwrap();
    let ban = wait_for_ban(&d, &f2b, SENDER_V4[1]);
    assert!(ban.expires_ms.is_some(), "the jail's bantime: {ban:?}");
    assert_eq!(lab.passes_to(SENDER_V4[1], RECEIVER_V4), 0);
    assert_eq!(enforcer::spool::depth(&d.state_dir).unwrap(), 0);
    f2b.assert_no_errors();
}
