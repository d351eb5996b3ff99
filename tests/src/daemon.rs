//! A real `enforcer daemon` process in a lab's receiver namespace, and the real CLI.

use std::{
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use enforcer::protocol::{
    AllowEntry, BlockReply, ListEntry, PendingBlock, ShowReply, StatsReply, StatusReply,
};
use serde::de::DeserializeOwned;

use crate::{Lab, RECEIVER_IF, wait_for};

/// How long a daemon may take to answer after its spawn before the fixture gives up. A fresh
/// start verifies the XDP program; on two cores at load 14-23 (a full test run beside four
/// builds) eight tests' daemons took over the former 30 s.
const START_BOUND: Duration = Duration::from_secs(90);

/// The `enforcer` binary built next to the test binaries, checked once per process to be newer
/// than every source it is built from: cargo builds only the test crate for
/// `cargo test -p enforcer-tests`, and a lab run against a stale daemon tests old code.
pub fn enforcer_bin() -> PathBuf {
    static CHECKED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let bin = built_enforcer();
            if !bin.exists() {
                return Err(format!(
                    "{} is missing: build it first (`cargo build -p enforcer`, done by \
                     `cargo xtask test`)",
                    bin.display()
                ));
            }
            check_fresh(&bin, &source_root())?;
            Ok(bin)
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Names the profile whose `enforcer` the labs run (`release` or `debug`), instead of the test
/// binary's own: `cargo xtask test` runs a subset of the labs, built as usual, against the
/// release daemon this way (`RELEASE_LABS` in xtask/src/test/mod.rs).
pub const DAEMON_PROFILE_ENV: &str = "ENFORCER_TEST_DAEMON_PROFILE";

/// The profile of the `enforcer` under test: [`DAEMON_PROFILE_ENV`], else the test binary's.
fn daemon_profile() -> Option<String> {
    let profile = std::env::var(DAEMON_PROFILE_ENV).ok()?;
    assert!(
        profile == "debug" || profile == "release",
        "{DAEMON_PROFILE_ENV}={profile:?}: say `debug` or `release` (the profile whose \
         target/<profile>/enforcer the labs run), or leave it unset for the tests' own profile"
    );
    Some(profile)
}

/// `target/<profile>/enforcer`: of [`DAEMON_PROFILE_ENV`]'s profile, else next to the running
/// test binary.
fn built_enforcer() -> PathBuf {
    match daemon_profile() {
        Some(profile) => target_dir().join(profile).join("enforcer"),
        None => profile_dir().join("enforcer"),
    }
}

/// Whether the `enforcer` under test is a debug build, with the daemon's test hooks
/// (`ENFORCER_TEST_*`): the profile [`DAEMON_PROFILE_ENV`] names, else the tests' own.
pub fn daemon_is_debug_build() -> bool {
    daemon_profile().map_or(cfg!(debug_assertions), |p| p == "debug")
}

/// `target/<profile>`, where the running test binary was built.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("own binary path");
    // Tests run from target/<profile>/deps/, binaries (the bench) from target/<profile>/.
    let dir = exe.parent().expect("binary dir");
    if dir.ends_with("deps") {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The cargo target directory the running test binary was built in.
pub fn target_dir() -> PathBuf {
    profile_dir()
        .parent()
        .expect("a profile directory sits in the target directory")
        .to_path_buf()
}

/// The workspace under test: read at run time (cargo and `cargo xtask test` set
/// `CARGO_MANIFEST_DIR` for each test), the build-time path only as a fallback, so a test
/// binary built in another checkout (a copied target directory) checks this checkout's sources.
pub fn source_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// What the `enforcer` binary is built from: its crate, the shared layout, the eBPF program
/// (built by enforcer's build.rs), the files it embeds, and the workspace manifest and lock.
const ENFORCER_SOURCES: &[&str] = &[
    "enforcer",
    "enforcer-common",
    "enforcer-ebpf",
    "dist/fail2ban",
    "Cargo.toml",
    "Cargo.lock",
];

/// Fails, naming the newer file and the fix, when a source under `root` was modified after
/// `bin` was built. Without the sources (a binary copied elsewhere) there is nothing to check.
pub fn check_fresh(bin: &Path, root: &Path) -> Result<(), String> {
    let built = modified(bin).ok_or_else(|| format!("cannot read {}", bin.display()))?;
    let newest = ENFORCER_SOURCES
        .iter()
        .filter_map(|p| newest_file(&root.join(p)))
        .max_by_key(|(time, _)| *time);
    match newest {
        Some((time, path)) if time > built => Err(format!(
            "{} is older than its source {} (modified after the build): the labs would test \
             old code. Build it first: `cargo build -p enforcer{}` (`cargo xtask test` builds \
             everything), or run the labs with `cargo xtask test --no-lint -- <filter>`",
            bin.display(),
            path.display(),
            if bin.components().any(|c| c.as_os_str() == "release") {
                " --release"
            } else {
                ""
            }
        )),
        _ => Ok(()),
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The most recently modified file under `path` (itself when a file), skipping build output.
fn newest_file(path: &Path) -> Option<(SystemTime, PathBuf)> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_dir() {
        return Some((meta.modified().ok()?, path.to_path_buf()));
    }
    std::fs::read_dir(path)
        .ok()?
        .flatten()
        .filter(|e| e.file_name() != "target")
        .filter_map(|e| newest_file(&e.path()))
        .max_by_key(|(time, _)| *time)
}

/// `enforcer status`'s exit code when a configured interface is not protected.
pub const EXIT_UNPROTECTED: i32 = 8;

/// A daemon process; SIGKILLed on drop if still running. Started through [`Daemon::builder`]
/// (or one of the `start*` shorthands for it).
pub struct Daemon {
    child: Option<Child>,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Its control socket.
    pub socket: PathBuf,
    /// Extra flags it was started with.
    pub extra: Vec<String>,
    /// Extra environment variables it runs with (kept across restarts).
    pub env: Vec<(String, String)>,
    launch: Launch,
    /// The `enforcer` binary its CLI calls run (this build's when `None`).
    cli_bin: Option<PathBuf>,
    _tmp: tempfile::TempDir,
}

/// How [`Daemon::spawn`] runs the daemon: the same command line at every (re)start.
struct Launch {
    /// The words before enforcer's own arguments: `[enforcer]`, or a command that runs it.
    program: Vec<OsString>,
    /// The lab's namespace the daemon runs in, if any.
    netns: Option<String>,
    /// Whether the daemon enters it itself (`--netns`), rather than the program.
    netns_flag: bool,
    /// Whether to pass `--iface vb`.
    iface: bool,
    bpffs: PathBuf,
    /// The `enforcer` build whose CLI asks the new daemon whether it answers.
    cli: PathBuf,
}

/// How a lab daemon starts: [`Daemon::builder`] for the lab's receiver, [`DaemonBuilder::new`]
/// for a daemon with no lab. Every test daemon starts through it, so the flags every daemon
/// needs (its socket, state and pin directories, small maps, no configuration file unless
/// given) are written once.
#[must_use]
pub struct DaemonBuilder {
    launch: Launch,
    state_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

impl DaemonBuilder {
    /// A daemon on the pin directory `bpffs` with no namespace and no interface (one that is
    /// expected to refuse its state directory, say).
    pub fn new(bpffs: &Path) -> Self {
        Self {
            launch: Launch {
                program: vec![enforcer_bin().into()],
                netns: None,
                netns_flag: false,
                iface: false,
                bpffs: bpffs.to_owned(),
                cli: enforcer_bin(),
            },
            state_dir: None,
            socket: None,
            extra: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Extra flags for `enforcer daemon` (`--config FILE` replaces the default `/dev/null`;
    /// `--max-addresses` and `--max-prefixes` replace the small defaults);
    /// `--state-dir DIR` among them chooses the state directory ([`DaemonBuilder::state_dir`]).
    pub fn args(mut self, args: &[&str]) -> Self {
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match (*arg, args.as_slice().first()) {
                ("--state-dir", Some(dir)) => {
                    self.state_dir = Some(PathBuf::from(dir));
                    args.next();
                }
                _ => self.extra.push((*arg).to_owned()),
            }
        }
        self
    }

    /// An environment variable for the daemon process (kept across restarts).
    pub fn env(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        let value = value.as_ref().to_string_lossy().into_owned();
        self.env.push((key.to_owned(), value));
        self
    }

    /// Environment variables for the daemon process.
    pub fn envs(mut self, env: Vec<(String, String)>) -> Self {
        self.env.extend(env);
        self
    }

    /// Another build of `enforcer` (the benchmark compares builds); its CLI checks that the
    /// daemon answers.
    pub fn bin(mut self, bin: &Path) -> Self {
        self.launch.program = vec![bin.into()];
        self.launch.cli = bin.to_owned();
        self
    }

    /// Another program in place of `enforcer`, given the same arguments (a wrapper that sets
    /// up what the unit would, then runs it).
    pub fn program(mut self, program: &Path) -> Self {
        self.launch.program = vec![program.into()];
        self
    }

    /// A command that enters the lab's namespace itself and runs the daemon: `ip netns exec
    /// NS`, `nsenter --net=…` (ending in [`enforcer_bin`]), or a script that runs it. The
    /// daemon gets no `--netns`.
    pub fn launched_by<S: Into<OsString>>(mut self, command: impl IntoIterator<Item = S>) -> Self {
        self.launch.program = command.into_iter().map(Into::into).collect();
        self.launch.netns_flag = false;
        self
    }

    /// No `--iface`: the daemon protects no interface (and detaches those it finds pinned).
    pub fn no_iface(mut self) -> Self {
        self.launch.iface = false;
        self
    }

    /// The state directory (by default a fresh one the daemon creates).
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.to_owned());
        self
    }

    /// The pin directory (by default the lab's).
    pub fn pins(mut self, dir: &Path) -> Self {
        self.launch.bpffs = dir.to_owned();
        self
    }

    /// The control socket's path (by default one in a fresh directory).
    pub fn socket(mut self, path: &Path) -> Self {
        self.socket = Some(path.to_owned());
        self
    }

    /// Starts the daemon and waits until it answers.
    pub fn start(self) -> Result<Daemon> {
        let mut d = self.spawn()?;
        d.wait_answers()?;
        Ok(d)
    }

    /// Starts the daemon without waiting for it (a test that holds its engine, say).
    pub fn spawn(self) -> Result<Daemon> {
        let tmp = tempfile::tempdir()?;
        let mut d = Daemon {
            child: None,
            state_dir: self.state_dir.unwrap_or_else(|| tmp.path().join("state")),
            socket: self
                .socket
                .unwrap_or_else(|| tmp.path().join("enforcer.sock")),
            extra: self.extra,
            env: self.env,
            launch: self.launch,
            cli_bin: None,
            _tmp: tmp,
        };
        d.launch()?;
        Ok(d)
    }

    /// Runs a daemon that must refuse to start, and its output once it has exited. One still
    /// running after `within` is killed, and the test fails.
    pub fn refused(self, within: Duration) -> Output {
        let mut d = self.spawn().expect("spawning the daemon");
        let status = d.wait_exit(within);
        let log = d.log();
        d.kill();
        let status = status.unwrap_or_else(|| panic!("the daemon started; it logged: {log}"));
        Output {
            status,
            stdout: Vec::new(),
            stderr: log.into_bytes(),
        }
    }
}

impl Daemon {
    /// How a daemon protecting the lab's receiver interface starts.
    pub fn builder(lab: &Lab) -> DaemonBuilder {
        let mut b = DaemonBuilder::new(lab.pins.path());
        b.launch.netns = Some(lab.receiver.name().to_owned());
        b.launch.netns_flag = true;
        b.launch.iface = true;
        b
    }

    /// Starts a daemon protecting the lab's receiver interface.
    pub fn start(lab: &Lab, extra: &[&str]) -> Result<Self> {
        Self::start_with_env(lab, extra, Vec::new())
    }

    /// [`Daemon::start`] with `config` (TOML) as its configuration file, which lives in the
    /// returned directory (keep it as long as the daemon may restart).
    pub fn with_config(lab: &Lab, config: &str) -> Result<(Self, tempfile::TempDir)> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("enforcer.toml");
        std::fs::write(&path, config)?;
        let d = Self::start(
            lab,
            &["--config", path.to_str().context("a UTF-8 temporary path")?],
        )?;
        Ok((d, dir))
    }

    /// [`Daemon::start_with_env`] serving `/metrics` on a free port of the namespace's loopback
    /// ([`Daemon::scrape`] reads it).
    pub fn start_with_metrics(
        lab: &Lab,
        extra: &[&str],
        env: Vec<(String, String)>,
    ) -> Result<Self> {
        let listen = format!(
            "127.0.0.1:{}",
            crate::metrics::free_port(lab.receiver.name())?
        );
        let mut args = vec!["--metrics-listen", &listen];
        args.extend_from_slice(extra);
        Self::start_with_env(lab, &args, env)
    }

    /// One scrape of `/metrics` (the daemon was started with `--metrics-listen 127.0.0.1:PORT`).
    pub fn scrape(&self) -> Result<crate::metrics::Scrape> {
        let port = self
            .extra
            .iter()
            .position(|a| a == "--metrics-listen")
            .and_then(|i| self.extra.get(i + 1))
            .and_then(|a| a.rsplit_once(':')?.1.parse().ok())
            .context("the daemon was started without --metrics-listen 127.0.0.1:PORT")?;
        let netns = self
            .launch
            .netns
            .as_deref()
            .context("the daemon runs in no lab namespace")?;
        let (code, body) = crate::metrics::http_get(netns, port, "/metrics")?;
        anyhow::ensure!(code == 200, "GET /metrics answered {code}: {body}");
        Ok(crate::metrics::Scrape(body))
    }

    /// The store's own count of its durable commits (`enforcer_store_commits_total`).
    pub fn store_commits(&self) -> u64 {
        self.scrape()
            .expect("a scrape")
            .get("enforcer_store_commits_total") as u64
    }

    /// [`Daemon::start`] with extra environment variables for the daemon process.
    pub fn start_with_env(lab: &Lab, extra: &[&str], env: Vec<(String, String)>) -> Result<Self> {
        Self::builder(lab).args(extra).envs(env).start()
    }

    /// [`Daemon::start`] with another build of `enforcer` (the benchmark compares builds).
    pub fn start_bin(bin: &Path, lab: &Lab, extra: &[&str]) -> Result<Self> {
        Self::builder(lab).bin(bin).args(extra).start()
    }

    /// [`Daemon::start`] with another build of `enforcer` as the daemon and the CLI (the
    /// previous release, in the upgrade lab).
    pub fn start_build(bin: &Path, lab: &Lab, extra: &[&str]) -> Result<Self> {
        let mut d = Self::start_bin(bin, lab, extra)?;
        d.cli_bin = Some(bin.to_owned());
        Ok(d)
    }

    /// Makes the next [`Daemon::spawn`] run this build's `enforcer`, and the CLI calls from
    /// now on use it (after [`Daemon::start_build`]: an upgrade).
    pub fn use_this_build(&mut self) {
        self.launch.program = vec![enforcer_bin().into()];
        self.launch.cli = enforcer_bin();
        self.cli_bin = None;
    }

    /// [`Daemon::start`] with another program in place of `enforcer` (a wrapper that runs it
    /// sandboxed, say) and extra environment variables.
    pub fn start_bin_with_env(
        bin: &Path,
        lab: &Lab,
        extra: &[&str],
        env: Vec<(String, String)>,
    ) -> Result<Self> {
        Self::builder(lab)
            .program(bin)
            .args(extra)
            .envs(env)
            .start()
    }

    /// (Re)starts the process and waits until it answers.
    pub fn spawn(&mut self) -> Result<()> {
        self.launch()?;
        self.wait_answers()
    }

    /// (Re)starts the process.
    fn launch(&mut self) -> Result<()> {
        let log = std::fs::File::create(
            self._tmp
                .path()
                .join(format!("daemon-{}.log", crate::unique_name(""))),
        )?;
        let (program, words) = self.launch.program.split_first().context("a program")?;
        let mut cmd = Command::new(program);
        cmd.args(words)
            .arg("--socket")
            .arg(&self.socket)
            .arg("daemon");
        if !self.extra.iter().any(|a| a == "--config") {
            cmd.args(["--config", "/dev/null"]);
        }
        if let Some(netns) = self
            .launch
            .netns
            .as_ref()
            .filter(|_| self.launch.netns_flag)
        {
            cmd.args(["--netns", netns]);
        }
        if self.launch.iface {
            cmd.args(["--iface", RECEIVER_IF]);
        }
        cmd.arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--bpffs-dir")
            .arg(&self.launch.bpffs);
        // Small maps keep tests light, unless the test sets its own.
        if !self.extra.iter().any(|a| a == "--max-addresses") {
            cmd.args(["--max-addresses", "65536"]);
        }
        if !self.extra.iter().any(|a| a == "--max-prefixes") {
            cmd.args(["--max-prefixes", "4096"]);
        }
        let child = cmd
            .args(&self.extra)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("spawning the daemon")?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the daemon answers `enforcer status`: a condition with a bound for a daemon
    /// that never starts, not a claim about how fast it starts (the bench measures that).
    fn wait_answers(&mut self) -> Result<()> {
        let socket = self.socket.clone();
        let bin = self.launch.cli.clone();
        wait_for("the daemon to answer", START_BOUND, || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                anyhow::bail!("the daemon exited early ({status}): {}", self.log());
            }
            // It answers: every interface protected (0), or some not (yet) protected.
            let out = Command::new(&bin)
                .arg("--socket")
                .arg(&socket)
                .arg("status")
                .output()?;
            Ok(matches!(out.status.code(), Some(0 | EXIT_UNPROTECTED)).then_some(()))
        })
    }

    /// The audit log as text ("" before its first line).
    pub fn audit_text(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("audit.log")).unwrap_or_default()
    }

    /// The audit log's lines, each parsed (a line that is not JSON fails the test).
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        self.audit_text()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("audit line {l:?} is not JSON: {e}"))
            })
            .collect()
    }

    /// Everything the daemon logged.
    /// [`Daemon::log`] without its terminal colour codes (`ESC [ ... m`), for matching fields.
    pub fn plain_log(&self) -> String {
        let log = self.log();
        let mut out = String::with_capacity(log.len());
        let mut chars = log.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                chars.by_ref().find(|&c| c == 'm');
            } else {
                out.push(c);
            }
        }
        out
    }

    pub fn log(&self) -> String {
        let mut all = String::new();
        if let Ok(entries) = std::fs::read_dir(self._tmp.path()) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("daemon-") {
                    all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        all
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait()?;
            anyhow::ensure!(
                status.success(),
                "daemon exited with {status}: {}",
                self.log()
            );
        }
        Ok(())
    }

    /// Sends SIGTERM and returns at once (see [`Daemon::wait_exit`]).
    pub fn sigterm(&self) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; its status, or `None` if it
    /// still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let status = wait_for("the daemon to exit", timeout, || Ok(child.try_wait()?)).ok()?;
        self.child = None;
        Some(status)
    }

    /// SIGTERM, and a new daemon started at once on the same state directory, as a quick
    /// `systemctl restart` or a supervisor does; the old one's exit status once it is gone.
    pub fn sigterm_and_start_at_once(&mut self) -> Result<std::process::ExitStatus> {
        let mut old = self.child.take().context("the daemon runs")?;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(old.id() as i32, libc::SIGTERM) };
        let started = self.spawn();
        let status = old.wait()?;
        started?;
        // The old daemon may have answered the new one's first `status` before it took the
        // signal: only an answer after it exited is the new daemon's.
        self.wait_answers()?;
        Ok(status)
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // It may have exited already; reaped either way.
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// How many descriptors the process has open.
    pub fn open_files(&self) -> u64 {
        let pid = self.pid().expect("the daemon runs");
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("the daemon's /proc/PID/fd")
            .count() as u64
    }

    /// Sets the process's soft descriptor limit (the hard one stays); the old soft limit.
    pub fn limit_open_files(&self, n: u64) -> u64 {
        let pid = self.pid().expect("the daemon runs") as i32;
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit(2) on our own child, reading into a valid rlimit.
        let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
        let limit = libc::rlimit {
            rlim_cur: n,
            rlim_max: old.rlim_max,
        };
        // SAFETY: as above, with a valid new limit and no old-value pointer.
        let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
        old.rlim_cur
    }

    /// Whether the process still runs (it has not exited).
    pub fn runs(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `f` with the daemon under `strace`: how many of its bpf(2) calls were of each
    /// command.
    pub fn trace_bpf(&self, f: impl FnOnce()) -> BpfTrace {
        BpfTrace::parse(&self.trace("bpf", f))
    }

    /// Runs `f` with the daemon's system calls `calls` (strace's `-e trace=`) traced; the
    /// trace.
    fn trace(&self, calls: &str, f: impl FnOnce()) -> String {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (trace, log) = (dir.path().join("trace"), dir.path().join("strace.log"));
        let mut strace = Command::new("strace")
            .args(["-f", "-e", &format!("trace={calls}"), "-o"])
            .arg(&trace)
            .args(["-p", &self.pid().expect("the daemon runs").to_string()])
            .stderr(std::fs::File::create(&log).expect("strace log"))
            .spawn()
            .expect("strace (Debian package strace)");
        // strace says on stderr when it has attached to every thread.
        wait_for("strace to attach", Duration::from_secs(10), || {
            Ok(std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("attached")
                .then_some(()))
        })
        .expect("strace attaches");
        f();
        // SAFETY: kill(2) on our own child; strace detaches on SIGINT.
        unsafe { libc::kill(strace.id() as i32, libc::SIGINT) };
        strace.wait().expect("strace exits");
        std::fs::read_to_string(&trace).expect("strace output")
    }

    /// What an operator can see of the daemon's state: blocks, allowlist, pending approvals
    /// (packet counters left out, so traffic does not count as a change).
    pub fn state(&self) -> serde_json::Value {
        let mut list = self.json(&["list"]);
        for e in list.as_array_mut().expect("list is an array") {
            if let Some(o) = e.as_object_mut() {
                o.retain(|k, _| !matches!(k.as_str(), "packets" | "bytes" | "last_hit_ms"));
            }
        }
        serde_json::json!({
            "list": list,
            "allow": self.json(&["allow", "list"]),
            "pending": self.json(&["pending"]),
        })
    }

    /// Runs the CLI, expecting it to fail with `code`, say `needle` in exactly one line on
    /// stderr (nothing on stdout), and leave the daemon's state as it was.
    pub fn fails_cleanly(&self, args: &[&str], code: i32, needle: &str) {
        let before = self.state();
        let out = self.cli(args);
        fails(&out, code, needle);
        one_line(&out, args);
        assert!(
            out.stdout.is_empty(),
            "`enforcer {}` wrote on stdout: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(
            self.state(),
            before,
            "`enforcer {}` changed the daemon's state",
            args.join(" ")
        );
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_command(args).output().expect("run enforcer")
    }

    /// The CLI against this daemon, not started: for a test that needs the process itself (its
    /// pipes, a time limit). [`Daemon::cli`] runs it to its end.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        match &self.cli_bin {
            Some(bin) => cli_command(bin, &self.socket, args),
            None => cli_command(&enforcer_bin(), &self.socket, args),
        }
    }

    /// Runs the CLI and parses its `--json` output, failing on a non-zero exit.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = args.to_vec();
        full.push("--json");
        let out = self.cli(&full);
        assert!(
            out.status.success(),
            "enforcer {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    /// Runs the CLI with `--json` and reads its output as the protocol's type `T`, so a renamed
    /// or retyped field fails here (or to compile) instead of reading as `null`.
    pub fn reply<T: DeserializeOwned>(&self, args: &[&str]) -> T {
        let value = self.json(args);
        T::deserialize(&value).unwrap_or_else(|e| {
            panic!(
                "`enforcer {} --json` is not a {}: {e}: {value}",
                args.join(" "),
                std::any::type_name::<T>()
            )
        })
    }

    /// `enforcer block ARGS --json`.
    pub fn block(&self, args: &[&str]) -> BlockReply {
        self.reply(&[&["block"], args].concat())
    }

    /// `enforcer list ARGS --json`.
    pub fn list(&self, args: &[&str]) -> Vec<ListEntry> {
        self.reply(&[&["list"], args].concat())
    }

    /// `enforcer show TARGET --json`.
    pub fn show(&self, target: &str) -> ShowReply {
        self.reply(&["show", target])
    }

    /// `enforcer stats --json`.
    pub fn stats(&self) -> StatsReply {
        self.reply(&["stats"])
    }

    /// `enforcer status --json`.
    pub fn status(&self) -> StatusReply {
        self.reply(&["status"])
    }

    /// `enforcer pending --json`.
    pub fn pending(&self) -> Vec<PendingBlock> {
        self.reply(&["pending"])
    }

    /// `enforcer allow list --json`.
    pub fn allowlist(&self) -> Vec<AllowEntry> {
        self.reply(&["allow", "list"])
    }
}

/// The entry of `target` (as written, e.g. `192.0.2.10` or `198.51.100.0/24`) in a listing.
pub fn entry<'a>(list: &'a [ListEntry], target: &str) -> &'a ListEntry {
    list.iter()
        .find(|e| e.target.to_string() == target)
        .unwrap_or_else(|| panic!("{target} is not listed: {list:?}"))
}

/// The targets of a listing, as text, in its order.
pub fn targets(list: &[ListEntry]) -> Vec<String> {
    list.iter().map(|e| e.target.to_string()).collect()
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What [`Daemon::trace_bpf`] saw: bpf(2) calls by command (`BPF_MAP_UPDATE_ELEM`, ...).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BpfTrace(pub std::collections::BTreeMap<String, usize>);

impl BpfTrace {
    fn parse(text: &str) -> Self {
        let mut calls = std::collections::BTreeMap::new();
        for line in text.lines() {
            if let Some((_, rest)) = line.split_once("bpf(")
                && let Some(cmd) = rest.split([',', ')']).next()
            {
                *calls.entry(cmd.trim().to_owned()).or_default() += 1;
            }
        }
        Self(calls)
    }

    /// Calls of the command `cmd`.
    pub fn count(&self, cmd: &str) -> usize {
        self.0.get(cmd).copied().unwrap_or(0)
    }
}

/// Runs the CLI with a socket.
pub fn cli(socket: &Path, args: &[&str]) -> Output {
    cli_command(&enforcer_bin(), socket, args)
        .output()
        .expect("run enforcer")
}

/// The CLI of the `enforcer` binary `bin` against `socket`, not started.
fn cli_command(bin: &Path, socket: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("--socket").arg(socket).args(args);
    cmd
}

/// Asserts a CLI run succeeded; returns its stdout.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts an error was reported as exactly one line on stderr.
pub fn one_line(out: &Output, args: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "`enforcer {}` wrote {} lines on stderr, not one: {stderr}",
        args.join(" "),
        lines.len()
    );
}

/// Asserts a CLI run failed with `code` and says `needle` on stderr.
pub fn fails(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A daemon binary older than one of its sources is refused with the file and the fix;
    /// rebuilt (newer than every source), it is accepted.
    #[test]
    fn a_daemon_older_than_its_sources_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let source = root.path().join("enforcer/src/daemon/engine.rs");
        std::fs::create_dir_all(source.parent().unwrap()).unwrap();
        let bin = root.path().join("target/debug/enforcer");
        std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
        let set_time = |path: &Path, ago: u64| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap()
                .set_modified(SystemTime::now() - Duration::from_secs(ago))
                .unwrap();
        };
        set_time(&bin, 60);
        set_time(&source, 10);
        // Build output inside a source tree does not count.
        std::fs::create_dir_all(root.path().join("enforcer/target")).unwrap();
        set_time(&root.path().join("enforcer/target/out"), 0);
        let err = check_fresh(&bin, root.path()).unwrap_err();
        assert!(
            err.contains("is older than its source")
                && err.contains("enforcer/src/daemon/engine.rs")
                && err.contains("`cargo build -p enforcer`"),
            "{err}"
        );
        set_time(&bin, 5);
        assert_eq!(check_fresh(&bin, root.path()), Ok(()));
    }
}
