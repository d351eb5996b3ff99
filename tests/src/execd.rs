//! An emulator of wazuh-execd's side of an active response, written from the contract
//! (`/work/shared/reference/wazuh-active-response.md`, summarised in `docs/wazuh.md`).
//!
//! Like execd it starts `<home>/active-response/bin/<name>` with argv = `[active-response/bin/
//! <name>]` and nothing else, cwd = the Wazuh home, stderr to /dev/null; on add, stdin and stdout
//! are pipes, it writes the message line, reads one line (check_keys), answers `continue` or
//! `abort` by its dedup key (`basename(program) + "-" + keys`), remembers the first message of a
//! new key, and `timeout` later runs the program again with that message and `"command":
//! "delete"` (stdout to /dev/null). It is stricter than execd in one way: stdin stays open until
//! the program exits, so a program that reads stdin to EOF hangs here (and the emulator reports
//! it) instead of only in production.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::{Value, json};

use crate::daemon::enforcer_bin;

/// Longest a program may run before the emulator calls it hung (execd would wait forever).
pub const HUNG: Duration = Duration::from_secs(30);

/// A Wazuh home in a temporary directory with the hook installed by `enforcer
/// install-wazuh-hook`, as an operator would.
pub struct WazuhHome {
    dir: tempfile::TempDir,
    /// The program's name in `active-response/bin/`.
    pub name: String,
}

impl WazuhHome {
    /// Creates `active-response/bin`, `logs` and `etc`, and installs the hook as `name`.
    pub fn install(name: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        for sub in ["active-response/bin", "logs", "etc"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        let out = Command::new(enforcer_bin())
            .args(["install-wazuh-hook", "--wazuh-home"])
            .arg(dir.path())
            .args(["--name", name])
            .output()?;
        ensure!(
            out.status.success(),
            "install-wazuh-hook failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Self {
            dir,
            name: name.to_owned(),
        })
    }

    /// The home directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The program execd runs.
    pub fn program(&self) -> PathBuf {
        self.path().join("active-response/bin").join(&self.name)
    }

    /// `active-response/bin/<name>`: argv[0], and `parameters.program` in messages.
    pub fn relative_program(&self) -> String {
        format!("active-response/bin/{}", self.name)
    }

    /// The active-responses.log lines so far.
    pub fn log(&self) -> Vec<String> {
        std::fs::read_to_string(self.path().join("logs/active-responses.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// A realistic alert of rule 5763 (sshd brute force) from `srcip`, as in alerts.json.
pub fn sshd_brute_force(srcip: &str) -> Value {
    json!({
        "timestamp": "2026-11-27T18:00:00.123+0000",
        "rule": {
            "level": 10,
            "description": "sshd: brute force trying to get access to the system. Authentication failed.",
            "id": "5763",
            "mitre": {"id": ["T1110"], "tactic": ["Credential Access"], "technique": ["Brute Force"]},
            "frequency": 8,
            "firedtimes": 1,
            "mail": false,
            "groups": ["syslog", "sshd", "authentication_failures"],
            "gdpr": ["IV_35.7.d", "IV_32.2"],
            "hipaa": ["164.312.b"],
            "nist_800_53": ["SI.4", "AU.14", "AC.7"],
            "pci_dss": ["11.4", "10.2.4", "10.2.5"],
            "tsc": ["CC6.1", "CC6.8", "CC7.2", "CC7.3"]
        },
        "agent": {"id": "001", "name": "web-01", "ip": "192.0.2.2"},
        "manager": {"name": "wazuh-manager"},
        "id": "1764266400.4242",
        "previous_output": format!("Nov 27 17:59:58 web-01 sshd[4240]: Failed password for root from {srcip} port 52140 ssh2"),
        "full_log": format!("Nov 27 18:00:00 web-01 sshd[4242]: Failed password for root from {srcip} port 52144 ssh2"),
        "predecoder": {"program_name": "sshd", "timestamp": "Nov 27 18:00:00", "hostname": "web-01"},
        "decoder": {"parent": "sshd", "name": "sshd"},
        "data": {"srcip": srcip, "srcport": "52144", "dstuser": "root"},
        "location": "/var/log/auth.log"
    })
}

/// How the emulator answers the check_keys line.
#[derive(Clone, Debug)]
pub enum Answer {
    /// As execd: continue or abort by the dedup key.
    Execd,
    /// This line instead (a broken execd, line noise).
    Line(String),
    /// Nothing, with stdin left open (the hook must give up on its own).
    Never,
}

/// What one run of the program did.
#[derive(Debug)]
pub struct Run {
    /// Its exit status.
    pub status: ExitStatus,
    /// The first line it wrote on stdout (add only).
    pub first_line: Option<String>,
    /// Anything it wrote on stdout after that line (must be nothing).
    pub more_stdout: String,
    /// The dedup key execd derived, if it answered.
    pub key: Option<String>,
    /// `continue` or `abort`, if execd answered.
    pub verdict: Option<&'static str>,
    /// Start to exit.
    pub elapsed: Duration,
}

impl Run {
    /// The exit code (panics on death by signal).
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("killed by a signal: {}", self.status))
    }
}

struct Active {
    deadline: Instant,
    message: Value,
}

/// The emulator: one `<command>`/`<active-response>` pair of ossec.conf.
pub struct Execd<'h> {
    home: &'h WazuhHome,
    extra_args: Vec<String>,
    timeout: Duration,
    active: HashMap<String, Active>,
    env: Vec<(&'static str, PathBuf)>,
    /// Run the program with no environment at all, in a mount namespace of its own whose
    /// `/etc` is this directory's overlay of the real one.
    production: Option<EtcOverlay>,
}

/// An overlay of the real `/etc` for one program's mount namespace: files written to
/// `upper` show through; the real `/etc` is never written.
pub struct EtcOverlay {
    /// What is added to `/etc` (`upper/enforcer/enforcer.toml`).
    pub upper: PathBuf,
    work: PathBuf,
    _dir: tempfile::TempDir,
}

impl EtcOverlay {
    /// An empty overlay, with `/etc/enforcer/enforcer.toml` holding `config`.
    pub fn with_config(config: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (upper, work) = (dir.path().join("upper"), dir.path().join("work"));
        std::fs::create_dir_all(upper.join("enforcer"))?;
        std::fs::create_dir(&work)?;
        std::fs::write(upper.join("enforcer/enforcer.toml"), config)?;
        Ok(Self {
            upper,
            work,
            _dir: dir,
        })
    }

    /// In the child, before exec: a private mount namespace with the overlay on `/etc`.
    fn enter(&self) -> impl FnMut() -> std::io::Result<()> + Send + Sync + 'static {
        use std::ffi::CString;
        let options = CString::new(format!(
            "lowerdir=/etc,upperdir={},workdir={}",
            self.upper.display(),
            self.work.display()
        ))
        .expect("no NUL in temporary paths");
        move || {
            let check = |rc: i32| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            // SAFETY: plain system calls on valid C strings, in the forked child before exec.
            unsafe {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    c"overlay".as_ptr(),
                    c"/etc".as_ptr(),
                    c"overlay".as_ptr(),
                    0,
                    options.as_ptr().cast(),
                ))
            }
        }
    }
}

impl<'h> Execd<'h> {
    /// `extra_args` as `<extra_args>` split on spaces; `timeout` as `<timeout>`.
    pub fn new(home: &'h WazuhHome, extra_args: &[&str], timeout: Duration) -> Self {
        Self {
            home,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            timeout,
            active: HashMap::new(),
            env: Vec::new(),
            production: None,
        }
    }

    /// Runs the program as a real wazuh-execd does: with no environment at all, so it finds
    /// the daemon through `/etc/enforcer/enforcer.toml`, here `etc`'s overlay of `/etc` in a
    /// mount namespace of the program's own.
    #[must_use]
    pub fn production(mut self, etc: EtcOverlay) -> Self {
        self.env.clear();
        self.production = Some(etc);
        self
    }

    /// Points the program at `socket` and `state_dir` through its environment (as an operator
    /// would for a daemon not on the default paths; the message cannot choose them).
    #[must_use]
    pub fn daemon_at(mut self, socket: &Path, state_dir: &Path) -> Self {
        self.env = vec![
            ("ENFORCER_SOCKET", socket.to_owned()),
            ("ENFORCER_STATE_DIR", state_dir.to_owned()),
        ];
        self
    }

    /// The message execd builds for `alert`.
    pub fn message(&self, command: &str, alert: &Value) -> Value {
        json!({
            "version": 1,
            "origin": {"name": "node01", "module": "wazuh-execd"},
            "command": command,
            "parameters": {
                "extra_args": self.extra_args,
                "alert": alert,
                "program": self.home.relative_program()
            }
        })
    }

    /// Keys whose delete is scheduled.
    pub fn active_keys(&self) -> Vec<String> {
        self.active.keys().cloned().collect()
    }

    /// Starts the program as execd does.
    pub fn spawn(&self, stdout: bool) -> Result<Child> {
        let mut cmd = Command::new(self.home.program());
        cmd.arg0(self.home.relative_program())
            .current_dir(self.home.path())
            .env_remove("ENFORCER_SOCKET")
            .env_remove("ENFORCER_STATE_DIR")
            .env_remove("WAZUH_HOME")
            .env_remove("ENFORCER_CONFIG")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(if stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::null());
        if let Some(etc) = &self.production {
            cmd.env_clear();
            // SAFETY: the closure makes only system calls (unshare, mount) on values it owns.
            unsafe { cmd.pre_exec(etc.enter()) };
        }
        cmd.spawn()
            .with_context(|| format!("starting {}", self.home.program().display()))
    }

    /// An alert arrives: the full add, with the handshake answered as execd would.
    pub fn add(&mut self, alert: &Value) -> Result<Run> {
        let message = self.message("add", alert);
        self.add_raw(Some(message.to_string().as_bytes()), &Answer::Execd)
    }

    /// An add with any input line (`None`: stdin closed at once) and any answer.
    pub fn add_raw(&mut self, line: Option<&[u8]>, answer: &Answer) -> Result<Run> {
        let started = Instant::now();
        let mut child = self.spawn(true)?;
        let mut stdin = child.stdin.take();
        let stdout = lines_with_deadline(child.stdout.take().expect("piped"));
        match (line, &mut stdin) {
            (Some(line), Some(pipe)) => {
                // A write error means the program stopped reading: ignore, the run tells.
                pipe.write_all(line)
                    .and_then(|()| pipe.write_all(b"\n"))
                    .and_then(|()| pipe.flush())
                    .ok();
            }
            _ => stdin = None,
        }
        let first_line = match stdout.recv_timeout(HUNG) {
            Ok(Some(l)) => Some(l),
            Ok(None) => None,
            Err(_) => {
                // It may have exited already: the error below is the one to report.
                child.kill().ok();
                bail!(
                    "the program wrote nothing and did not exit within {HUNG:?}: execd would hang"
                );
            }
        };
        let (mut key, mut verdict) = (None, None);
        if let (Some(first), Some(line)) = (&first_line, line) {
            let original: Value =
                serde_json::from_slice(line).context("the emulator only answers JSON messages")?;
            let k = self.dedup_key(first);
            let v = match self.active.get_mut(&k) {
                Some(a) => {
                    a.deadline = Instant::now() + self.timeout;
                    "abort"
                }
                None => {
                    self.active.insert(
                        k.clone(),
                        Active {
                            deadline: Instant::now() + self.timeout,
                            message: original.clone(),
                        },
                    );
                    "continue"
                }
            };
            let mut reply = original;
            reply["command"] = json!(v);
            let reply = match answer {
                Answer::Execd => Some(reply.to_string()),
                Answer::Line(l) => Some(l.clone()),
                Answer::Never => None,
            };
            if let (Some(reply), Some(pipe)) = (reply, &mut stdin) {
                // A program that stopped reading shows it in its run, as above.
                writeln!(pipe, "{reply}").and_then(|()| pipe.flush()).ok();
                (key, verdict) = (Some(k), Some(v));
            }
        }
        let mut more_stdout = String::new();
        while let Ok(Some(l)) = stdout.recv_timeout(HUNG) {
            more_stdout.push_str(&l);
            more_stdout.push('\n');
        }
        let status = wait_or_kill(&mut child, started + HUNG)?;
        Ok(Run {
            status,
            first_line,
            more_stdout,
            key,
            verdict,
            elapsed: started.elapsed(),
        })
    }

    /// execd's key for a check_keys line: `basename(program) + "-" + keys`. Anything else as
    /// the first line files every address under the program's name alone.
    fn dedup_key(&self, first_line: &str) -> String {
        let keys: Vec<String> = serde_json::from_str::<Value>(first_line)
            .ok()
            .filter(|v| v["command"] == "check_keys")
            .and_then(|v| v["parameters"]["keys"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect();
        let mut key = self.home.name.clone();
        for k in keys {
            key.push('-');
            key.push_str(&k);
        }
        key
    }

    /// Runs the delete of every key whose timer ran out; returns those runs.
    pub fn run_due_deletes(&mut self) -> Result<Vec<Run>> {
        let now = Instant::now();
        let due: Vec<String> = self
            .active
            .iter()
            .filter(|(_, a)| a.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        let mut runs = Vec::new();
        for key in due {
            let active = self.active.remove(&key).expect("listed");
            let mut message = active.message;
            message["command"] = json!("delete");
            runs.push(self.delete_raw(message.to_string().as_bytes())?);
        }
        Ok(runs)
    }

    /// A delete with this line (stdout to /dev/null, nobody answers).
    pub fn delete_raw(&self, line: &[u8]) -> Result<Run> {
        let started = Instant::now();
        let mut child = self.spawn(false)?;
        let mut stdin = child.stdin.take().expect("piped");
        // A program that stops reading shows it in how it exits, which is the run.
        stdin
            .write_all(line)
            .and_then(|()| stdin.write_all(b"\n"))
            .and_then(|()| stdin.flush())
            .ok();
        let status = wait_or_kill(&mut child, started + HUNG)?;
        drop(stdin);
        Ok(Run {
            status,
            first_line: None,
            more_stdout: String::new(),
            key: None,
            verdict: None,
            elapsed: started.elapsed(),
        })
    }
}

/// Reads stdout lines on a thread, so the emulator can wait with a deadline; `None` = EOF.
fn lines_with_deadline(stdout: ChildStdout) -> mpsc::Receiver<Option<String>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => {
                    // The reader may have stopped waiting (a timeout it reports).
                    tx.send(None).ok();
                    return;
                }
                Ok(_) => {
                    if tx
                        .send(Some(line.trim_end_matches('\n').to_owned()))
                        .is_err()
                    {
                        let mut rest = Vec::new();
                        // Draining what is left: its end is all that matters.
                        reader.read_to_end(&mut rest).ok();
                        return;
                    }
                }
            }
        }
    });
    rx
}

fn wait_or_kill(child: &mut Child, deadline: Instant) -> Result<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            // It may have exited meanwhile; reaped either way.
            child.kill().ok();
            child.wait().ok();
            bail!("the program did not exit within {HUNG:?}: execd would hang");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Checks every line of an active-responses.log the way Wazuh's decoder reads it: the prefix
/// `^\d\d\d\d/\d\d/\d\d \d\d:\d\d:\d\d active-response/bin/\S+: `, then a message; a message that
/// starts with `{` must be one JSON object. Returns the messages.
pub fn check_log_format(lines: &[String]) -> Result<Vec<String>> {
    let mut messages = Vec::new();
    for line in lines {
        let bytes = line.as_bytes();
        let shape = b"dddd/dd/dd dd:dd:dd ";
        ensure!(bytes.len() > shape.len(), "short log line: {line:?}");
        let stamp_ok = shape.iter().zip(bytes).all(|(s, b)| match s {
            b'd' => b.is_ascii_digit(),
            s => s == b,
        });
        ensure!(stamp_ok, "bad timestamp: {line:?}");
        let rest = line[shape.len()..]
            .strip_prefix("active-response/bin/")
            .with_context(|| format!("no active-response/bin/ prefix: {line:?}"))?;
        let end = rest.find(|c: char| c.is_whitespace()).unwrap_or(rest.len());
        let (program, message) = rest.split_at(end);
        ensure!(
            program.len() > 1 && program.ends_with(':'),
            "no `<program>: ` in {line:?}"
        );
        let message = message
            .strip_prefix(' ')
            .with_context(|| format!("no space after the program: {line:?}"))?;
        if message.starts_with('{') {
            serde_json::from_str::<serde_json::Map<String, Value>>(message)
                .with_context(|| format!("a JSON message that does not parse: {line:?}"))?;
        }
        messages.push(message.to_owned());
    }
    Ok(messages)
}

/// Whether Wazuh's rules 651/652 ("Host Blocked/Unblocked by firewall-drop Active Response")
/// would fire on a log message: JSON whose `parameters.program` contains `firewall-drop` and
/// whose `command` is `add` (651) or `delete` (652).
pub fn rule_65x(message: &str) -> Option<u32> {
    let v: Value = serde_json::from_str(message).ok()?;
    if !v["parameters"]["program"]
        .as_str()?
        .contains("firewall-drop")
    {
        return None;
    }
    match v["command"].as_str()? {
        "add" => Some(651),
        "delete" => Some(652),
        _ => None,
    }
}
