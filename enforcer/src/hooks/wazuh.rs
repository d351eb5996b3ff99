//! The Wazuh active-response hook: a drop-in replacement for `firewall-drop`.
//!
//! wazuh-execd runs `<wazuh home>/active-response/bin/<name>` with argv[0] set to that relative
//! path, cwd set to the Wazuh home, and one JSON line on stdin. This hook honours that contract
//! (see `docs/wazuh.md`) and asks the daemon for the block instead of calling iptables:
//!
//! - **add**: read the line, answer execd's `check_keys` handshake with the canonical address
//!   as the key, read `continue` or `abort`, then block the address for source `wazuh` with the
//!   alert's rule, alert and agent as the reason. On `abort` (execd already holds that key and
//!   has just restarted its timer) the block is refreshed to a full TTL, so it lasts as long as
//!   execd believes it does, and `Aborted` is logged.
//! - **delete**: no handshake; remove the `wazuh` source's block (other sources' blocks of the
//!   same address stay).
//! - Wazuh 5.0's `enable`/`disable`, with the address in the alert's `source.ip`, `rule.title`
//!   and `wazuh.agent`/`wazuh.active_response`, are accepted as add/delete.
//!
//! Addresses are parsed strictly with [`Target`]: IPv4-mapped IPv6 is folded to IPv4 (the
//! check_keys key is always the canonical text, so execd deduplicates one address under one
//! key), and zone ids, host names and prefixes are refused with the reason in the log.
//!
//! Every block carries its own expiry, the TTL: `--ttl` in `<extra_args>`, else the daemon's
//! configured default for source `wazuh` (`[policy.sources.wazuh] default_ttl`, else the global
//! `default_ttl`), so the policy stays in one place. Wazuh's `<timeout>` decides when execd sends the delete; the TTL should be
//! at least that long, so the delete is what normally ends a block and the TTL only ends blocks
//! whose delete was lost (execd killed, agent reinstalled), which firewall-drop keeps forever.
//!
//! The hook never holds execd for long: the message and the handshake reply are read with a
//! deadline, the daemon call has one, and a watchdog ends the process if all else fails. When
//! the daemon is not running or does not answer in time, the request is spooled to disk
//! ([`crate::spool`]) under its request id and applied once when the daemon starts or
//! next drains its spool; the hook still exits 0, since the block is not lost.
//!
//! Exit codes: 0 done (or aborted, or spooled); 255 invalid input, no usable address, or no
//! valid handshake reply; 1 the daemon refused or failed the request.

use std::{
    io::{self, Write as _},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::Serialize;
use serde_json::Value;

use super::line_reader::{LineError, LineReader};
use crate::{
    block::{Reason, Source},
    client::{Delivery, deliver},
    config::Config,
    duration::{HumanDuration, format_secs},
    error::Chain,
    protocol::{BlockRequest, DEFAULT_SOCKET, ErrorCode, Outcome, Reply, Request},
    spool,
    target::Target,
    time::WallMs,
};

/// The longest message execd sends, newline included.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// The longest handshake reply accepted: execd re-serialises the whole message into it.
pub const MAX_REPLY: usize = 2 * MAX_MESSAGE;
/// The source name of blocks made by this hook.
pub const SOURCE: &str = "wazuh";
/// The log file, relative to the Wazuh home.
pub const LOG_FILE: &str = "logs/active-responses.log";
/// After this long the process exits whatever it is doing.
pub const WATCHDOG: Duration = Duration::from_secs(20);

/// Exit code: done, aborted, or spooled.
pub const EXIT_OK: i32 = 0;
/// Exit code: the daemon refused or failed the request.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: the daemon does not permit this caller the request (as the CLI's exit 4).
pub const EXIT_NOT_PERMITTED: i32 = 4;
/// Exit code: invalid input, no usable address, or no valid handshake reply.
pub const EXIT_INVALID: i32 = 255;

/// How long each step may take.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Reading the message (execd writes it right after starting us).
    pub message: Duration,
    /// Reading execd's answer to check_keys.
    pub reply: Duration,
    /// Connecting to the daemon and getting its answer.
    pub daemon: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            message: Duration::from_secs(5),
            reply: Duration::from_secs(5),
            daemon: Duration::from_secs(2),
        }
    }
}

/// What execd asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// `add` (Wazuh 5.0: `enable`): block.
    Add,
    /// `delete` (Wazuh 5.0: `disable`): unblock.
    Delete,
}

/// Why the input is invalid (each is logged, and the hook exits 255).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InputError {
    /// Not JSON at all.
    #[error("Invalid input format: not JSON ({0})")]
    NotJson(String),
    /// A required field is absent or has the wrong type.
    #[error("Invalid input format: `{field}` is missing or not {kind}")]
    Missing {
        /// The field's path.
        field: &'static str,
        /// What it should be.
        kind: &'static str,
    },
    /// A command this program does not implement.
    #[error(
        "Invalid input format: unknown command `{0}` (expected add or delete; enable or disable in Wazuh 5)"
    )]
    UnknownCommand(String),
    /// No address field in the alert.
    #[error(
        "Cannot read the address from the alert: none of data.win.eventdata.ipAddress, \
         data.win.eventdata.destinationIp, data.srcip, source.ip"
    )]
    NoAddress,
    /// An address field that is not one IP address.
    #[error("Invalid address in {field}: {reason}")]
    BadAddress {
        /// Where it was found.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
    /// `<extra_args>` that cannot be understood.
    #[error("Invalid extra_args: {0}")]
    BadOptions(String),
    /// The answer to check_keys is neither continue nor abort.
    #[error("Invalid answer to check_keys: {0}")]
    BadReply(String),
}

/// A parsed execd message.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Add or delete.
    pub command: Command,
    /// The alert that triggered the response.
    pub alert: Value,
    /// `<extra_args>`, split on spaces.
    pub extra_args: Vec<String>,
}

/// Looks a key up the way Wazuh does (cJSON_GetObjectItem): exact match first, then ignoring
/// ASCII case.
fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn path<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().try_fold(v, |v, k| get(v, k))
}

/// Parses the line execd wrote. Unknown fields are ignored.
pub fn parse_message(line: &[u8]) -> Result<Message, InputError> {
    let v: Value = serde_json::from_slice(line).map_err(|e| InputError::NotJson(e.to_string()))?;
    let missing = |field, kind| InputError::Missing { field, kind };
    if !v.is_object() {
        return Err(missing("(message)", "an object"));
    }
    get(&v, "version")
        .filter(|v| v.is_number())
        .ok_or(missing("version", "a number"))?;
    // origin.name may be "" (agent_control) or null (API without cluster): not looked at.
    get(&v, "origin")
        .filter(|v| v.is_object())
        .ok_or(missing("origin", "an object"))?;
    let command = get(&v, "command")
        .and_then(Value::as_str)
        .ok_or(missing("command", "a string"))?;
    let parameters = get(&v, "parameters")
        .filter(|v| v.is_object())
        .ok_or(missing("parameters", "an object"))?;
    let command = match command {
        "add" | "enable" => Command::Add,
        "delete" | "disable" => Command::Delete,
        other => return Err(InputError::UnknownCommand(other.to_owned())),
    };
    let alert = get(parameters, "alert")
        .filter(|v| v.is_object())
        .ok_or(missing("parameters.alert", "an object"))?
        .clone();
    let mut extra_args: Vec<String> = match get(parameters, "extra_args") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(_) => return Err(missing("parameters.extra_args", "an array")),
    };
    if extra_args.is_empty() {
        // Wazuh 5.0 carries <extra_args> as one string in the response's metadata.
        if let Some(s) =
            path(&alert, &["wazuh", "active_response", "extra_arguments"]).and_then(Value::as_str)
        {
            extra_args = s.split_whitespace().map(str::to_owned).collect();
        }
    }
    Ok(Message {
        command,
        alert,
        extra_args,
    })
}

/// Where the address is looked for, first match wins (Wazuh's order; `source.ip` is 5.0's).
pub const ADDRESS_FIELDS: [(&str, &[&str]); 4] = [
    (
        "data.win.eventdata.ipAddress",
        &["data", "win", "eventdata", "ipAddress"],
    ),
    (
        "data.win.eventdata.destinationIp",
        &["data", "win", "eventdata", "destinationIp"],
    ),
    ("data.srcip", &["data", "srcip"]),
    ("source.ip", &["source", "ip"]),
];

/// The address to block: the first of [`ADDRESS_FIELDS`] present as a string, which must then
/// be one IP address. Returns the field it came from, the text, and the canonical target.
pub fn find_address(alert: &Value) -> Result<(&'static str, String, Target), InputError> {
    let (field, text) = ADDRESS_FIELDS
        .iter()
        .find_map(|(name, keys)| {
            path(alert, keys)
                .and_then(Value::as_str)
                .map(|s| (*name, s))
        })
        .ok_or(InputError::NoAddress)?;
    let bad = |reason: String| InputError::BadAddress { field, reason };
    if text.contains('/') {
        return Err(bad(format!(
            "`{text}` is a prefix; a Wazuh trigger blocks one address"
        )));
    }
    let target: Target = text
        .parse()
        .map_err(|e: crate::TargetError| bad(e.to_string()))?;
    Ok((field, text.to_owned(), target))
}

#[derive(Serialize)]
struct Origin<'a> {
    name: &'a str,
    module: &'static str,
}

#[derive(Serialize)]
struct Keys {
    keys: [String; 1],
}

#[derive(Serialize)]
struct CheckKeys<'a> {
    version: u32,
    origin: Origin<'a>,
    command: &'static str,
    parameters: Keys,
}

/// The one line written to execd on add: the canonical address is the dedup key.
pub fn check_keys_line(name: &str, target: &Target) -> String {
    serde_json::to_string(&CheckKeys {
        version: 1,
        origin: Origin {
            name,
            module: "active-response",
        },
        command: "check_keys",
        parameters: Keys {
            keys: [target.to_string()],
        },
    })
    .expect("plain strings serialise")
}

/// execd's answer to check_keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The key is new: block.
    Continue,
    /// The key is active; execd restarted its timer.
    Abort,
}

/// Parses execd's answer: the original message with `command` set to continue or abort.
pub fn parse_reply(line: &[u8]) -> Result<Verdict, InputError> {
    let v: Value = serde_json::from_slice(line)
        .map_err(|e| InputError::BadReply(format!("not JSON ({e})")))?;
    match get(&v, "command").and_then(Value::as_str) {
        Some("continue") => Ok(Verdict::Continue),
        Some("abort") => Ok(Verdict::Abort),
        Some(other) => Err(InputError::BadReply(format!(
            "command `{other}`, expected continue or abort"
        ))),
        None => Err(InputError::BadReply("no command".to_owned())),
    }
}

/// Where to reach the daemon and how long blocks last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The TTL of blocks (`None`: the daemon's default for source `wazuh`).
    pub ttl: Option<Duration>,
    /// The daemon's control socket.
    pub socket: PathBuf,
    /// The daemon's state directory (for the spool).
    pub state_dir: PathBuf,
    /// Arguments of the message that were ignored (`--socket`, `--state-dir`), for the log.
    pub ignored: Vec<String>,
}

/// Where the hook reaches the daemon: `ENFORCER_SOCKET` and `ENFORCER_STATE_DIR`, else `socket`
/// and `state_dir` in the daemon's configuration file (`ENFORCER_CONFIG`, else
/// /etc/enforcer/enforcer.toml), else the daemon's defaults. Never from the message: whoever
/// can shape an alert must not choose where the hook connects or spools.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// Socket.
    pub socket: PathBuf,
    /// State directory.
    pub state_dir: PathBuf,
}

impl Defaults {
    /// From the environment, else the daemon's configuration file, else the daemon's defaults.
    pub fn from_env() -> Self {
        let var = |name| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let config = var("ENFORCER_CONFIG").unwrap_or_else(|| crate::config::DEFAULT_CONFIG.into());
        let from_file = PathsInConfig::read(&config);
        Self {
            socket: var("ENFORCER_SOCKET")
                .or(from_file.socket)
                .unwrap_or_else(|| DEFAULT_SOCKET.into()),
            state_dir: var("ENFORCER_STATE_DIR")
                .or(from_file.state_dir)
                .unwrap_or_else(|| Config::default().state_dir),
        }
    }
}

/// The two keys of the daemon's configuration file the hook needs (the rest is the daemon's).
#[derive(Debug, Default, serde::Deserialize)]
struct PathsInConfig {
    socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
}

impl PathsInConfig {
    /// The keys in `path`; none if it cannot be read or parsed (the daemon reports that).
    fn read(path: &Path) -> Self {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| toml::from_str(&text).ok())
            .unwrap_or_default()
    }
}

/// Parses `<extra_args>`: `--ttl DURATION` (also `--ttl=DURATION`). `--socket PATH` and
/// `--state-dir PATH` are ignored (listed in [`Options::ignored`], for a warning): the message
/// comes with the alert, and only the TTL may. Anything else is an error: a typo must not
/// silently change a block.
pub fn parse_options(args: &[String], defaults: &Defaults) -> Result<Options, InputError> {
    let mut options = Options {
        ttl: None,
        socket: defaults.socket.clone(),
        state_dir: defaults.state_dir.clone(),
        ignored: Vec::new(),
    };
    let bad = |m: String| InputError::BadOptions(m);
    let mut args = args.iter().map(String::as_str).filter(|a| !a.is_empty());
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v)),
            _ => (arg, None),
        };
        let mut value = || {
            inline
                .or_else(|| args.next())
                .filter(|v| !v.is_empty())
                .ok_or_else(|| bad(format!("{name} needs a value")))
        };
        match name {
            "--ttl" => {
                let v = value()?;
                options.ttl = Some(
                    v.parse::<HumanDuration>()
                        .map_err(|e| bad(e.to_string()))?
                        .0,
                );
            }
            "--socket" | "--state-dir" => {
                let v = value()?;
                options.ignored.push(format!("{name} {v}"));
            }
            other => {
                return Err(bad(format!(
                    "unknown argument `{other}` (known: --ttl DURATION)"
                )));
            }
        }
    }
    Ok(options)
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The block's reason from the alert: rule id, description and level, alert id, agent id and
/// name (Wazuh 4 and 5 field names). Long values are cut to what the daemon stores, so a
/// verbose alert never costs a block.
pub fn reason_from_alert(alert: &Value) -> Reason {
    let text = |keys: &[&str], max: usize| -> Option<String> {
        let s = match path(alert, keys)? {
            Value::String(s) if !s.is_empty() => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => return None,
        };
        Some(truncate(s, max))
    };
    let rule_id = text(&["rule", "id"], 128);
    let rule_description =
        text(&["rule", "description"], 512).or_else(|| text(&["rule", "title"], 512));
    let mut reason = Reason {
        text: None,
        rule_level: path(alert, &["rule", "level"])
            .and_then(Value::as_u64)
            .and_then(|l| u32::try_from(l).ok()),
        alert_id: text(&["id"], 128).or_else(|| text(&["event", "id"], 128)),
        agent_id: text(&["agent", "id"], 128).or_else(|| text(&["wazuh", "agent", "id"], 128)),
        agent_name: text(&["agent", "name"], 256)
            .or_else(|| text(&["wazuh", "agent", "name"], 256)),
        rule_id,
        rule_description,
    };
    if reason.rule_id.is_none() && reason.rule_description.is_none() {
        reason.text =
            Some("Wazuh active response (no rule in the alert: agent_control or API)".to_owned());
    }
    reason
}

/// Local time as Wazuh writes it: `YYYY/MM/DD HH:MM:SS`.
pub fn local_timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as libc::time_t;
    // The C library is what knows the host's time zone (TZ, /etc/localtime) the way Wazuh does.
    // SAFETY: an all-zero tm is valid; localtime_r and gmtime_r (thread-safe) only write into
    // the tm we own, from the time_t we pass.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&secs, &mut tm).is_null() {
            libc::gmtime_r(&secs, &mut tm);
        }
        tm
    };
    format!(
        "{:04}/{:02}/{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// `<wazuh home>/logs/active-responses.log`, in Wazuh's format, which its default ruleset
/// decodes: `YYYY/MM/DD HH:MM:SS active-response/bin/<name>: <message>`.
#[derive(Clone, Debug)]
pub struct ArLog {
    path: Option<PathBuf>,
    program: String,
}

impl ArLog {
    /// The log of the Wazuh installation at `home`, for the program `name`. Without a `logs`
    /// directory there (a person trying the hook by hand), lines go to stderr only.
    pub fn new(home: &Path, name: &str) -> Self {
        let path = home.join(LOG_FILE);
        Self {
            path: path.parent().is_some_and(Path::is_dir).then_some(path),
            program: format!("active-response/bin/{name}"),
        }
    }

    /// The log file, if there is one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// One line, newline included; line breaks inside `message` become spaces.
    pub fn line(&self, when: SystemTime, message: &str) -> String {
        let message = message.replace(['\n', '\r'], " ");
        format!("{} {}: {message}\n", local_timestamp(when), self.program)
    }

    /// Appends one line (one write(2) on an O_APPEND file: concurrent hooks do not interleave).
    pub fn write(&self, message: &str) {
        let line = self.line(SystemTime::now(), message);
        // Nowhere to report that the report could not be written.
        io::stderr().write_all(line.as_bytes()).ok();
        if let Some(path) = &self.path {
            // Wazuh's group can write its logs directory: never follow a link planted there,
            // and never wait on a FIFO (O_NONBLOCK; anything but a regular file is refused).
            // A log that cannot be written is skipped: stderr above has the line, and execd goes
            // on.
            crate::safe_fs::open_append(path, 0o640)
                .map_err(io::Error::from)
                .and_then(|mut f| f.write_all(line.as_bytes()))
                .ok();
        }
    }
}

fn code_name(code: ErrorCode) -> String {
    serde_json::to_string(&code)
        .unwrap_or_default()
        .trim_matches('"')
        .to_owned()
}

/// One run of the hook.
pub struct Hook {
    /// The program's name (basename of argv[0]).
    pub name: String,
    /// The log.
    pub log: ArLog,
    /// Socket and state directory unless `<extra_args>` say otherwise.
    pub defaults: Defaults,
    /// Deadlines.
    pub timeouts: Timeouts,
}

impl Hook {
    /// Reads the message from `input`, answers the handshake on `out`, acts; returns the exit
    /// code. Logs every step.
    pub fn run(&self, input: &mut LineReader<'_>, out: &mut dyn io::Write) -> i32 {
        let log = &self.log;
        log.write("Starting");
        let line = match input.read_line(MAX_MESSAGE, self.timeouts.message) {
            Ok(line) => line,
            Err(e) => {
                log.write(&format!(
                    "Invalid input format: cannot read the message: {}",
                    Chain(&e)
                ));
                return EXIT_INVALID;
            }
        };
        log.write(&String::from_utf8_lossy(&line));
        let prepared = parse_message(&line).and_then(|m| {
            let options = parse_options(&m.extra_args, &self.defaults)?;
            let address = find_address(&m.alert)?;
            Ok((m, options, address))
        });
        let (message, options, (field, text, target)) = match prepared {
            Ok(p) => p,
            Err(e) => {
                log.write(&e.to_string());
                return EXIT_INVALID;
            }
        };
        for ignored in &options.ignored {
            log.write(&format!(
                "enforcer: warning: ignored `{ignored}` in <extra_args>: only --ttl may come from the message; the socket and state directory come from ENFORCER_SOCKET/ENFORCER_STATE_DIR or the daemon's configuration file"
            ));
        }
        if text.trim() != target.to_string() {
            log.write(&format!("enforcer: {field} `{text}` is {target}"));
        }
        match message.command {
            Command::Delete => {
                let code = self.unblock(target, &options);
                log.write("Ended");
                code
            }
            Command::Add => self.add(input, out, &message, &options, target),
        }
    }

    /// `add`: the check_keys handshake with execd, then the block.
    fn add(
        &self,
        input: &mut LineReader<'_>,
        out: &mut dyn io::Write,
        message: &Message,
        options: &Options,
        target: Target,
    ) -> i32 {
        let log = &self.log;
        let keys = check_keys_line(&self.name, &target);
        log.write(&keys);
        if let Err(e) = out
            .write_all(format!("{keys}\n").as_bytes())
            .and_then(|()| out.flush())
        {
            log.write(&format!("Cannot send check_keys to execd: {e}"));
            return EXIT_INVALID;
        }
        let reply = match input.read_line(MAX_REPLY, self.timeouts.reply) {
            Ok(reply) => reply,
            Err(e) => {
                let why = match e {
                    LineError::Eof => "execd closed the pipe".to_owned(),
                    e => Chain(&e).to_string(),
                };
                log.write(&format!("Invalid answer to check_keys: {why}"));
                return EXIT_INVALID;
            }
        };
        log.write(&String::from_utf8_lossy(&reply));
        let verdict = match parse_reply(&reply) {
            Ok(v) => v,
            Err(e) => {
                log.write(&e.to_string());
                return EXIT_INVALID;
            }
        };
        let request = Request::Block(BlockRequest {
            target,
            ttl_secs: options.ttl.map(|t| t.as_secs()),
            permanent: false,
            source: source(),
            reason: reason_from_alert(&message.alert),
            shadow: false,
            force: false,
            scope: Default::default(),
        });
        match verdict {
            Verdict::Continue => {
                let code = self.block(&request, options);
                log.write("Ended");
                code
            }
            Verdict::Abort => {
                // execd restarted its timer for this key: keep the block at least as
                // long, so it cannot end while execd still counts it as active.
                self.block(&request, options);
                log.write("Aborted");
                EXIT_OK
            }
        }
    }

    fn block(&self, request: &Request, options: &Options) -> i32 {
        let Request::Block(b) = request else {
            unreachable!("only blocks here")
        };
        let target = b.target;
        match deliver(
            &options.socket,
            request,
            self.timeouts.daemon,
            Some(&options.state_dir),
        ) {
            Delivery::Reply(Reply::Block(r)) => {
                let what = match r.outcome {
                    Outcome::Created => "blocked",
                    Outcome::Extended => "extended the block of",
                    Outcome::Unchanged => "already blocked (expiry kept):",
                    Outcome::Pending => {
                        let id = r
                            .pending_id
                            .map(|id| format!(" (id {id})"))
                            .unwrap_or_default();
                        self.log.write(&format!(
                            "enforcer: the block of {target} waits for approval{id}: see `enforcer pending`"
                        ));
                        return EXIT_OK;
                    }
                };
                let until = r.expires_ms.map_or_else(
                    || "permanently".to_owned(),
                    |e| {
                        format!(
                            "for {}",
                            format_secs(
                                e.saturating_since(WallMs::now()).as_millis().div_ceil(1000) as u64,
                            )
                        )
                    },
                );
                // A widened block names its network (its note names the address).
                let mut line = format!(
                    "enforcer: {what} {} {until} [source {SOURCE}, {}]",
                    r.target, r.mode
                );
                for note in &r.notes {
                    line.push_str(&format!("; {note}"));
                }
                self.log.write(&line);
                EXIT_OK
            }
            Delivery::Reply(_) => self.failed("the daemon gave an unexpected answer to a block"),
            Delivery::Refused(e) => self.refused(&format!("block {target}"), &e),
            Delivery::Failed(why) => {
                self.failed(&format!("cannot block {target}: {}", Chain(&why)))
            }
            other => self.spooled(other, options),
        }
    }

    fn unblock(&self, target: Target, options: &Options) -> i32 {
        let request = Request::Unblock {
            target,
            source: Some(source()),
            all: false,
            scope: Default::default(),
        };
        match deliver(
            &options.socket,
            &request,
            self.timeouts.daemon,
            Some(&options.state_dir),
        ) {
            Delivery::Reply(Reply::Unblock {
                lifted: true,
                target: lifted,
                ..
            }) if lifted != target => {
                self.log.write(&format!(
                    "enforcer: unblocked {lifted} (blocked in place of {target})"
                ));
                EXIT_OK
            }
            Delivery::Reply(Reply::Unblock { lifted: true, .. }) => {
                self.log.write(&format!("enforcer: unblocked {target}"));
                EXIT_OK
            }
            Delivery::Reply(Reply::Unblock { lifted: false, .. }) => {
                self.log.write(&format!(
                    "enforcer: removed the {SOURCE} block of {target}; other sources still block it"
                ));
                EXIT_OK
            }
            Delivery::Reply(_) => self.failed("the daemon gave an unexpected answer to an unblock"),
            Delivery::Refused(e) if e.code == ErrorCode::NotFound => {
                self.log.write(&format!(
                    "enforcer: {target} has no {SOURCE} block (it expired or was removed); nothing to do"
                ));
                EXIT_OK
            }
            Delivery::Refused(e) => self.refused(&format!("unblock {target}"), &e),
            Delivery::Failed(why) => {
                self.failed(&format!("cannot unblock {target}: {}", Chain(&why)))
            }
            other => self.spooled(other, options),
        }
    }

    /// Logs a request that never reached the daemon: spooled, or lost if spooling failed.
    fn spooled(&self, delivery: Delivery, options: &Options) -> i32 {
        match delivery {
            Delivery::Spooled { file, why } => {
                self.log.write(&format!(
                    "enforcer: {} ({}); spooled to {}: it is applied when the daemon starts or next drains its spool",
                    why.spool_reason(),
                    Chain(&why),
                    file.display()
                ));
                EXIT_OK
            }
            Delivery::Unreachable { why, spool_error } => self.failed(&format!(
                "the daemon is unreachable ({}) and spooling to {} failed ({}): the request is lost",
                Chain(&why),
                spool::spool_dir(&options.state_dir).display(),
                spool_error.map_or_else(|| "not attempted".to_owned(), |e| Chain(&e).to_string())
            )),
            other => self.failed(&format!("unexpected delivery: {other:?}")),
        }
    }

    /// Logs the daemon's refusal to `what`; exit 4 when the caller is not permitted, else 1.
    fn refused(&self, what: &str, e: &crate::protocol::ErrorBody) -> i32 {
        self.failed(&format!(
            "the daemon refused to {what}: {} ({})",
            e.message,
            code_name(e.code)
        ));
        refusal_exit(e.code)
    }

    fn failed(&self, message: &str) -> i32 {
        self.log.write(&format!("enforcer: {message}"));
        EXIT_FAILED
    }
}

/// The hook's exit code for a refusal with `code`.
const fn refusal_exit(code: ErrorCode) -> i32 {
    match code {
        ErrorCode::PermissionDenied => EXIT_NOT_PERMITTED,
        _ => EXIT_FAILED,
    }
}

fn source() -> Source {
    SOURCE.parse().expect("a valid source name")
}

/// The Wazuh home: `WAZUH_HOME` if set, else the working directory execd gave us.
pub fn wazuh_home() -> PathBuf {
    std::env::var_os("WAZUH_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Ends the process after `after`, whatever it is doing, so execd is never held.
fn start_watchdog(log: ArLog, after: Duration) {
    // Without a thread to spare the hook runs on without its watchdog.
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            std::thread::sleep(after);
            log.write(&format!(
                "enforcer: still running after {after:?}; exiting so execd is not held"
            ));
            std::process::exit(EXIT_FAILED)
        })
        .ok();
}

/// The hook's entry point, run as `name` by execd; returns the exit code.
pub fn main(name: &str) -> i32 {
    let hook = Hook {
        name: name.to_owned(),
        log: ArLog::new(&wazuh_home(), name),
        defaults: Defaults::from_env(),
        timeouts: Timeouts::default(),
    };
    start_watchdog(hook.log.clone(), WATCHDOG);
    let stdin = io::stdin();
    let mut input = LineReader::new(stdin.as_fd());
    let mut stdout = io::stdout().lock();
    hook.run(&mut input, &mut stdout)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_fifo_planted_as_the_log_does_not_hang_the_hook() {
        use std::os::unix::fs::FileTypeExt as _;
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir(home.path().join("logs")).unwrap();
        let fifo = home.path().join(LOG_FILE);
        // Wazuh's group can write the logs directory, so it can put a FIFO there.
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o660)).unwrap();
        let log = ArLog::new(home.path(), "enforcer-block");
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            log.write("a line");
            // The test waits for this, or has failed and gone.
            done.send(()).ok();
        });
        assert!(
            finished.recv_timeout(Duration::from_secs(5)).is_ok(),
            "writing the log blocks on a FIFO nobody reads"
        );
        assert!(
            std::fs::symlink_metadata(&fifo)
                .unwrap()
                .file_type()
                .is_fifo(),
            "the FIFO is left alone"
        );
    }

    fn message(command: &str, data: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "version": 1,
            "origin": {"name": "node01", "module": "wazuh-execd"},
            "command": command,
            "parameters": {
                "extra_args": [],
                "alert": {"rule": {"id": "5763", "level": 10}, "data": data},
                "program": "active-response/bin/firewall-drop"
            }
        }))
        .unwrap()
    }

    fn address(alert: Value) -> Result<String, InputError> {
        find_address(&alert).map(|(_, _, t)| t.to_string())
    }

    #[test]
    fn parses_the_4x_message_and_ignores_unknown_fields() {
        let m = parse_message(&message("add", json!({"srcip": "198.51.100.23"}))).unwrap();
        assert_eq!(m.command, Command::Add);
        assert_eq!(m.extra_args, Vec::<String>::new());
        assert_eq!(m.alert["data"]["srcip"], "198.51.100.23");
        let m = parse_message(&message("delete", json!({}))).unwrap();
        assert_eq!(m.command, Command::Delete);
        // origin.name "" (agent_control) and null (API), and extra fields.
        for origin in [json!({"name": ""}), json!({"name": null, "module": "API"})] {
            let line = json!({"version": 1, "origin": origin, "command": "add", "new": true,
                "parameters": {"alert": {"data": {"srcip": "192.0.2.1"}}, "extra": 1}});
            assert!(parse_message(line.to_string().as_bytes()).is_ok(), "{line}");
        }
    }

    #[test]
    fn refuses_messages_that_are_not_the_contract() {
        let cases = [
            ("not json", "not JSON"),
            ("[1]", "(message)"),
            (
                r#"{"origin":{},"command":"add","parameters":{"alert":{}}}"#,
                "version",
            ),
            (
                r#"{"version":"1","origin":{},"command":"add","parameters":{"alert":{}}}"#,
                "version",
            ),
            (
                r#"{"version":1,"command":"add","parameters":{"alert":{}}}"#,
                "origin",
            ),
            (
                r#"{"version":1,"origin":{},"parameters":{"alert":{}}}"#,
                "command",
            ),
            (r#"{"version":1,"origin":{},"command":"add"}"#, "parameters"),
            (
                r#"{"version":1,"origin":{},"command":"add","parameters":{}}"#,
                "parameters.alert",
            ),
            (
                r#"{"version":1,"origin":{},"command":"add","parameters":{"alert":{},"extra_args":"--ttl 1h"}}"#,
                "parameters.extra_args",
            ),
        ];
        for (line, expected) in cases {
            let got = match parse_message(line.as_bytes()) {
                Err(InputError::NotJson(_)) => "not JSON",
                Err(InputError::Missing { field, .. }) => field,
                other => panic!("{line}: {other:?}"),
            };
            assert_eq!(got, expected, "{line}");
        }
        assert_eq!(
            parse_message(&message("restart", json!({}))),
            Err(InputError::UnknownCommand("restart".into()))
        );
    }

    #[test]
    fn accepts_the_wazuh_5_shape() {
        let line = json!({"version": 1, "origin": {"name": "node01", "module": "wazuh-engine"}, "command": "enable",
            "parameters": {"alert": {
                "source": {"ip": "203.0.113.45"},
                "rule": {"title": "SSH brute force", "level": "high"},
                "event": {"id": "5d14fbbf"},
                "wazuh": {"agent": {"id": "004", "name": "web1"},
                          "active_response": {"name": "block-ip", "extra_arguments": "--ttl 2h", "stateful_timeout": 60}}}}});
        let m = parse_message(line.to_string().as_bytes()).unwrap();
        assert_eq!(m.command, Command::Add);
        assert_eq!(m.extra_args, ["--ttl", "2h"]);
        assert_eq!(address(m.alert.clone()).unwrap(), "203.0.113.45");
        let r = reason_from_alert(&m.alert);
        assert_eq!(r.rule_description.as_deref(), Some("SSH brute force"));
        assert_eq!(r.rule_level, None, "5.0 levels are words, not numbers");
        assert_eq!(
            (
                r.alert_id.as_deref(),
                r.agent_id.as_deref(),
                r.agent_name.as_deref()
            ),
            (Some("5d14fbbf"), Some("004"), Some("web1"))
        );
        let disable = line.to_string().replace("\"enable\"", "\"disable\"");
        assert_eq!(
            parse_message(disable.as_bytes()).unwrap().command,
            Command::Delete
        );
    }

    #[test]
    fn the_address_comes_from_the_first_field_present_matched_ignoring_case() {
        let win = json!({"data": {"win": {"eventdata": {"ipAddress": "192.0.2.1", "destinationIp": "192.0.2.2"}}, "srcip": "192.0.2.3"}});
        assert_eq!(address(win).unwrap(), "192.0.2.1");
        let dst = json!({"data": {"win": {"eventdata": {"destinationIp": "192.0.2.2"}}, "srcip": "192.0.2.3"}});
        assert_eq!(address(dst).unwrap(), "192.0.2.2");
        assert_eq!(
            address(json!({"data": {"srcip": "192.0.2.3"}, "source": {"ip": "192.0.2.4"}}))
                .unwrap(),
            "192.0.2.3"
        );
        let shouting = json!({"Data": {"Win": {"EventData": {"IpAddress": "192.0.2.5"}}}});
        assert_eq!(address(shouting).unwrap(), "192.0.2.5");
        assert_eq!(
            address(json!({"data": {"SRCIP": "192.0.2.6"}})).unwrap(),
            "192.0.2.6"
        );
        // A non-string value does not count as present.
        assert_eq!(
            address(json!({"data": {"srcip": 3221225985u32}})),
            Err(InputError::NoAddress)
        );
        assert_eq!(
            address(json!({"data": {"dstip": "192.0.2.1"}})),
            Err(InputError::NoAddress)
        );
    }

    #[test]
    fn only_single_addresses_in_canonical_form() {
        let srcip = |s: &str| address(json!({"data": {"srcip": s}}));
        assert_eq!(srcip("::ffff:198.51.100.23").unwrap(), "198.51.100.23");
        assert_eq!(srcip("2001:DB8::0010").unwrap(), "2001:db8::10");
        for bad in [
            "fe80::1%eth0",
            "attacker.example.com",
            "192.0.2.0/24",
            "192.0.2.1/32",
            "",
            "-",
            "300.1.1.1",
        ] {
            let err = srcip(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    InputError::BadAddress {
                        field: "data.srcip",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
        assert!(
            srcip("fe80::1%eth0")
                .unwrap_err()
                .to_string()
                .contains("zone id")
        );
        assert!(
            srcip("attacker.example.com")
                .unwrap_err()
                .to_string()
                .contains("host names")
        );
    }

    #[test]
    fn the_check_keys_line_is_exactly_what_execd_expects() {
        let t: Target = "::ffff:203.0.113.45".parse().unwrap();
        assert_eq!(
            check_keys_line("firewall-drop", &t),
            r#"{"version":1,"origin":{"name":"firewall-drop","module":"active-response"},"command":"check_keys","parameters":{"keys":["203.0.113.45"]}}"#
        );
    }

    #[test]
    fn the_reply_is_continue_or_abort_and_nothing_else() {
        let reply =
            |c: &str| parse_reply(String::from_utf8(message(c, json!({}))).unwrap().as_bytes());
        assert_eq!(reply("continue"), Ok(Verdict::Continue));
        assert_eq!(reply("abort"), Ok(Verdict::Abort));
        assert!(matches!(reply("add"), Err(InputError::BadReply(_))));
        assert!(matches!(
            parse_reply(b"garbage"),
            Err(InputError::BadReply(_))
        ));
        assert!(matches!(parse_reply(b"{}"), Err(InputError::BadReply(_))));
    }

    #[test]
    fn a_caller_not_permitted_exits_4_as_the_cli_does() {
        assert_eq!(
            refusal_exit(ErrorCode::PermissionDenied),
            ErrorCode::PermissionDenied.exit_code()
        );
        assert_eq!(refusal_exit(ErrorCode::Refused), EXIT_FAILED);
        assert_eq!(refusal_exit(ErrorCode::Internal), EXIT_FAILED);
    }

    #[test]
    fn extra_args_set_only_the_ttl_and_socket_or_state_dir_there_are_ignored() {
        let d = Defaults {
            socket: "/run/s".into(),
            state_dir: "/var/lib/e".into(),
        };
        let args =
            |a: &[&str]| parse_options(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &d);
        let o = args(&[]).unwrap();
        assert_eq!(
            (o.ttl, o.socket.to_str(), o.state_dir.to_str()),
            (None, Some("/run/s"), Some("/var/lib/e"))
        );
        let o = args(&[
            "--ttl",
            "1h",
            "",
            "--socket=/tmp/x.sock",
            "--state-dir",
            "/tmp/st",
        ])
        .unwrap();
        assert_eq!(
            (
                o.ttl.map(|t| t.as_secs()),
                o.socket.to_str(),
                o.state_dir.to_str()
            ),
            (Some(3600), Some("/run/s"), Some("/var/lib/e"))
        );
        assert_eq!(o.ignored, ["--socket /tmp/x.sock", "--state-dir /tmp/st"]);
        assert_eq!(
            args(&["--ttl=90"]).unwrap().ttl.map(|t| t.as_secs()),
            Some(90)
        );
        for bad in [
            &["--ttl"][..],
            &["--ttl", "1 hour"],
            &["--ttl=0"],
            &["--tll", "1h"],
            &["1h"],
            &["--socket="],
        ] {
            assert!(
                matches!(args(bad), Err(InputError::BadOptions(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_reason_carries_rule_alert_and_agent() {
        let alert = json!({"rule": {"id": "5763", "level": 10, "description": "sshd: brute force"},
            "id": "1700000000.12345", "agent": {"id": "001", "name": "web1"}});
        let r = reason_from_alert(&alert);
        assert_eq!(r.rule_id.as_deref(), Some("5763"));
        assert_eq!(r.rule_level, Some(10));
        assert_eq!(r.rule_description.as_deref(), Some("sshd: brute force"));
        assert_eq!(r.alert_id.as_deref(), Some("1700000000.12345"));
        assert_eq!(
            (r.agent_id.as_deref(), r.agent_name.as_deref()),
            (Some("001"), Some("web1"))
        );
        assert_eq!(r.text, None);
        assert!(r.validate().is_ok());
        // Minimal alerts still say where they came from; huge fields are cut, not refused.
        assert!(
            reason_from_alert(&json!({"data": {"srcip": "192.0.2.1"}}))
                .text
                .is_some()
        );
        let long =
            reason_from_alert(&json!({"rule": {"id": 5763, "description": "é".repeat(400)}}));
        assert_eq!(long.rule_id.as_deref(), Some("5763"));
        assert!(long.rule_description.unwrap().len() <= 512);
    }

    #[test]
    fn log_lines_have_wazuhs_prefix() {
        let log = ArLog::new(Path::new("/nonexistent"), "enforcer-firewall-drop");
        assert_eq!(log.path(), None);
        let line = log.line(SystemTime::now(), "two\nlines");
        let (stamp, rest) = line.split_at(19);
        let shape: String = stamp
            .chars()
            .map(|c| if c.is_ascii_digit() { 'd' } else { c })
            .collect();
        assert_eq!(shape, "dddd/dd/dd dd:dd:dd");
        assert_eq!(
            rest,
            " active-response/bin/enforcer-firewall-drop: two lines\n"
        );
    }
}
