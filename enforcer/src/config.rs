//! The daemon's configuration file (TOML). Every option is also a command-line flag.
//!
//! The complete reference is `dist/enforcer.toml`: every key, commented, with its default. A
//! lab test parses it with this module, so it cannot drift from the code; no second copy is kept
//! here.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{
    datapath::{Capacity, DEFAULT_BPFFS_DIR, XdpModeRequest},
    duration::HumanDuration,
    protocol::DEFAULT_SOCKET,
};

/// Default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/enforcer/enforcer.toml";

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Interfaces to protect: names and patterns (see [`crate::interfaces`]).
    pub interfaces: Vec<crate::interfaces::InterfaceSpec>,
    /// Refuse to start while a named interface does not exist (default: protect what exists,
    /// wait for the rest).
    pub require_all_interfaces: bool,
    /// XDP mode.
    pub xdp_mode: XdpModeRequest,
    /// Control socket.
    pub socket: PathBuf,
    /// Group allowed on the control socket (besides root).
    pub socket_group: Option<String>,
    /// Store, audit log and spool.
    pub state_dir: PathBuf,
    /// Pins.
    pub bpffs_dir: PathBuf,
    /// TTL of blocks that do not name one.
    pub default_ttl: HumanDuration,
    /// Map capacities.
    pub capacity: CapacityConfig,
    /// Audit log bounds.
    pub audit: AuditConfig,
    /// The control socket's bounds.
    pub control_socket: ControlSocketConfig,
    /// The allowlist.
    pub allowlist: AllowlistConfig,
    /// The safety policy.
    pub policy: crate::policy::PolicyConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// The CrowdSec bouncer (off unless present).
    pub crowdsec: Option<crate::crowdsec::CrowdsecConfig>,
    /// Who may do what on the control socket, besides root (see [`crate::access`]).
    pub access: Vec<crate::access::AccessEntry>,
    /// Flood detection in the data path (see [`crate::flood`]).
    pub flood: crate::flood::FloodConfig,
    /// Whether TCP replies from blocked sources to connections this host opened pass.
    pub replies: Replies,
}

/// What the data path does with a blocked source's replies to connections this host opened
/// (`replies = "pass"`, the default, or `"drop"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Replies {
    /// They pass (counted as `reply_passed`): a false positive in a feed (a package mirror, a
    /// Git host) does not break the host's own connections to it, and a block still stops
    /// everything the blocked source starts.
    #[default]
    Pass,
    /// They are dropped like every other packet from the source.
    Drop,
}

/// The `[metrics]` section.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where to serve `GET /metrics` (e.g. `127.0.0.1:9466`); unset = no endpoint (the default).
    pub listen: Option<std::net::SocketAddr>,
}

/// The `[allowlist]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AllowlistConfig {
    /// Prefixes never to block.
    pub prefixes: Vec<crate::target::Target>,
    /// Also allowlist loopback, the host's own addresses and its default gateways (kept up to
    /// date as they change). On by default; turning it off is rarely wise.
    pub builtin: bool,
}

impl Default for AllowlistConfig {
    fn default() -> Self {
        Self {
            prefixes: Vec::new(),
            builtin: true,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            require_all_interfaces: false,
            xdp_mode: XdpModeRequest::Auto,
            socket: DEFAULT_SOCKET.into(),
            socket_group: None,
            state_dir: "/var/lib/enforcer".into(),
            bpffs_dir: DEFAULT_BPFFS_DIR.into(),
            default_ttl: HumanDuration(std::time::Duration::from_secs(3600)),
            capacity: CapacityConfig::default(),
            audit: AuditConfig::default(),
            control_socket: ControlSocketConfig::default(),
            allowlist: AllowlistConfig::default(),
            policy: crate::policy::PolicyConfig::default(),
            metrics: MetricsConfig::default(),
            crowdsec: None,
            access: Vec::new(),
            flood: crate::flood::FloodConfig::default(),
            replies: Replies::default(),
        }
    }
}

/// The `[control_socket]` section: how much one client, or many, may hold of the daemon.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSocketConfig {
    /// Most connections open at once; one more is answered `unavailable` and closed (a hook
    /// or the CLI with `--spool-if-down` then spools its request).
    pub max_connections: usize,
    /// A connection that sends no complete request for this long is closed.
    pub idle_timeout: HumanDuration,
    /// The longest request line, in bytes; a longer one is refused and the connection closed.
    pub max_request_bytes: usize,
    /// Request bytes held at once, over every connection (lines being read and handled); a
    /// connection whose line would pass it is answered `unavailable` and closed.
    pub max_buffered_bytes: usize,
}

impl Default for ControlSocketConfig {
    fn default() -> Self {
        Self {
            max_connections: 256,
            idle_timeout: HumanDuration(std::time::Duration::from_secs(30)),
            max_request_bytes: crate::protocol::MAX_LINE,
            max_buffered_bytes: 4 * crate::protocol::MAX_LINE,
        }
    }
}

impl ControlSocketConfig {
    /// Checks the bounds; the error names the key.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_connections == 0 {
            return Err((
                "max_connections",
                "control_socket.max_connections must be at least 1".into(),
            ));
        }
        if self.idle_timeout.0 < std::time::Duration::from_millis(100) {
            return Err((
                "idle_timeout",
                "control_socket.idle_timeout must be at least 100ms".into(),
            ));
        }
        if self.max_request_bytes < 4096 {
            return Err((
                "max_request_bytes",
                "control_socket.max_request_bytes must be at least 4096".into(),
            ));
        }
        if self.max_buffered_bytes < self.max_request_bytes {
            return Err((
                "max_buffered_bytes",
                "control_socket.max_buffered_bytes must be at least max_request_bytes".into(),
            ));
        }
        if u32::try_from(self.max_buffered_bytes).is_err() {
            return Err((
                "max_buffered_bytes",
                "control_socket.max_buffered_bytes must be below 4 GiB".into(),
            ));
        }
        Ok(())
    }
}

/// Map capacities, per family.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CapacityConfig {
    /// Single-address blocks.
    pub addresses: u32,
    /// Prefix blocks.
    pub prefixes: u32,
    /// Allowlist prefixes.
    pub allow: u32,
    /// The most of each block map one source other than `cli` and the force sources may
    /// hold, in percent.
    pub source_share: u8,
    /// The end of each block map kept for `cli` and forced blocks, in percent.
    pub reserved_share: u8,
}

/// `capacity.source_share` by default (percent).
pub const DEFAULT_SOURCE_SHARE: u8 = 50;
/// `capacity.reserved_share` by default (percent).
pub const DEFAULT_RESERVED_SHARE: u8 = 5;

impl Default for CapacityConfig {
    fn default() -> Self {
        let c = Capacity::default();
        Self {
            addresses: c.addresses,
            prefixes: c.prefixes,
            allow: c.allow,
            source_share: DEFAULT_SOURCE_SHARE,
            reserved_share: DEFAULT_RESERVED_SHARE,
        }
    }
}

impl From<CapacityConfig> for Capacity {
    fn from(c: CapacityConfig) -> Self {
        Self {
            addresses: c.addresses,
            prefixes: c.prefixes,
            allow: c.allow,
        }
    }
}

/// Audit log bounds.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Rotate when the file would grow past this.
    pub max_bytes: u64,
    /// Rotated files to keep.
    pub keep: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            keep: 5,
        }
    }
}

/// A configuration error, located in its file.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}:{column}: {message}")]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.display().to_string(),
            line: 0,
            column: 0,
            message: format!("cannot read: {e}"),
        })?;
        let config = Self::parse(&text, &path.display().to_string())?;
        config.refuse_readable_api_key(path, &text)?;
        Ok(config)
    }

    /// An API key written in the file is a secret: refused when the file is readable by its
    /// group or by others (the package installs it 0644 for the rest of the configuration).
    fn refuse_readable_api_key(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        use std::os::unix::fs::PermissionsExt as _;
        if self.crowdsec.as_ref().is_none_or(|c| c.api_key.is_none()) {
            return Ok(());
        }
        let Ok(mode) = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777) else {
            return Ok(());
        };
        if mode & 0o044 == 0 {
            return Ok(());
        }
        let (line, column) = find_key(text, "api_key").map_or((1, 1), |s| line_col(text, s.start));
        Err(ConfigError {
            path: path.display().to_string(),
            line,
            column,
            message: format!(
                "crowdsec.api_key is a secret in a file other users can read (mode {mode:o}): move it to api_key_file (mode 600), or run `chmod 600 {}`",
                path.display()
            ),
        })
    }

    /// Parses and validates configuration text; `name` is used in errors.
    pub fn parse(text: &str, name: &str) -> Result<Self, ConfigError> {
        let located = |span: Option<std::ops::Range<usize>>, message: String| {
            let (line, column) = span.map_or((1, 1), |s| line_col(text, s.start));
            ConfigError {
                path: name.to_owned(),
                line,
                column,
                message,
            }
        };
        let config: Config =
            toml::from_str(text).map_err(|e| located(e.span(), e.message().to_owned()))?;
        // Checks serde cannot express, located at the key they concern.
        let key_span = |key: &str| find_key(text, key);
        let cap = config.capacity;
        for (key, value) in [
            ("addresses", cap.addresses),
            ("prefixes", cap.prefixes),
            ("allow", cap.allow),
        ] {
            if value == 0 {
                return Err(located(
                    key_span(key),
                    format!("capacity.{key} must be at least 1"),
                ));
            }
        }
        if !(1..=100).contains(&cap.source_share) {
            return Err(located(
                key_span("source_share"),
                "capacity.source_share is a percentage from 1 to 100".to_owned(),
            ));
        }
        if cap.reserved_share > 50 {
            return Err(located(
                key_span("reserved_share"),
                "capacity.reserved_share is a percentage from 0 to 50".to_owned(),
            ));
        }
        if let Err((key, message)) = config.control_socket.validate() {
            return Err(located(
                section_key_span(text, "control_socket", key),
                message,
            ));
        }
        if let Err((key, message)) = config.policy.validate() {
            return Err(located(key_span(&key), format!("policy: {message}")));
        }
        if let Some(cs) = &config.crowdsec
            && let Err((key, message)) = cs.validate()
        {
            let span = match key.strip_prefix("publish.") {
                Some(k) => section_key_span(text, "crowdsec.publish", k),
                None => section_key_span(text, "crowdsec", &key),
            };
            return Err(located(span, message));
        }
        if let Err((key, message)) = config.flood.validate() {
            let span = match key.split_once('.') {
                Some((family, k)) => section_key_span(text, &format!("flood.{family}"), k),
                None => section_key_span(text, "flood", &key),
            };
            return Err(located(span, message));
        }
        for (i, entry) in config.access.iter().enumerate() {
            if let Err(message) = entry.validate() {
                return Err(located(nth_span(text, "[[access]]", i), message));
            }
        }
        Ok(config)
    }
}

/// The span of the `n`th (0-based) occurrence of `needle`.
fn nth_span(text: &str, needle: &str, n: usize) -> Option<std::ops::Range<usize>> {
    text.match_indices(needle)
        .nth(n)
        .map(|(i, m)| i..i + m.len())
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// The span of `key` inside `[section]` (else of the section header, else the first line).
fn section_key_span(text: &str, section: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let header = format!("[{section}]");
    let start = text.find(&header)?;
    let body_start = start + header.len();
    let body_end = text[body_start..]
        .find("\n[")
        .map_or(text.len(), |i| body_start + i + 1);
    find_key(&text[body_start..body_end], key)
        .map(|r| r.start + body_start..r.end + body_start)
        .or(Some(start..body_start))
}

/// The span of the first line that assigns `key`.
fn find_key(text: &str, key: &str) -> Option<std::ops::Range<usize>> {
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with(key) && trimmed[key.len()..].trim_start().starts_with('=') {
            let start = offset + (line.len() - trimmed.len());
            return Some(start..start + key.len());
        }
        offset += line.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_inline_api_key_in_a_file_others_can_read_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enforcer.toml");
        std::fs::write(
            &path,
            "[crowdsec]\napi_url = \"http://127.0.0.1:8080/\"\napi_key = \"abc\"\n",
        )
        .unwrap();
        for mode in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = Config::load(&path).unwrap_err().to_string();
            assert!(
                e.contains(":3:") && e.contains("api_key_file") && e.contains("chmod 600"),
                "mode {mode:o}: {e}"
            );
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Config::load(&path).is_ok());
    }

    #[test]
    fn defaults_and_overrides() {
        let c =
            Config::parse("interfaces = [\"eth0\"]\ndefault_ttl = \"10m\"\n", "t.toml").unwrap();
        assert_eq!(
            c.interfaces,
            vec![crate::interfaces::InterfaceSpec::Name("eth0".into())]
        );
        assert!(!c.require_all_interfaces);
        assert_eq!(c.default_ttl.0.as_secs(), 600);
        assert_eq!(c.capacity.addresses, 1 << 20);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = Config::parse(
            "interfaces = []\n\ndefault_ttl = \"ten minutes\"\n",
            "/etc/e.toml",
        )
        .unwrap_err();
        assert_eq!((e.line, e.path.as_str()), (3, "/etc/e.toml"), "{e}");
        assert!(e.to_string().contains("invalid duration"), "{e}");
        let e = Config::parse("interfcaes = []\n", "x").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.message.contains("unknown field"), "{e}");
        let e = Config::parse("[capacity]\naddresses = 0\n", "x").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e = Config::parse("xdp_mode = \"turbo\"\n", "x").unwrap_err();
        assert_eq!(e.line, 1, "{e}");
    }

    #[test]
    fn interface_names_and_patterns_are_checked_where_they_are_written() {
        use crate::interfaces::InterfaceSpec;
        let c = Config::parse(
            "interfaces = [\"eth0\", \"bond0.*\"]\nrequire_all_interfaces = true\n",
            "x",
        )
        .unwrap();
        assert_eq!(
            c.interfaces,
            [
                InterfaceSpec::Name("eth0".into()),
                InterfaceSpec::Pattern("bond0.*".into())
            ]
        );
        assert!(c.require_all_interfaces);
        let e = Config::parse(
            "default_ttl = \"1h\"\ninterfaces = [\"eth0\", \"eth 1\"]\n",
            "x",
        )
        .unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(
            e.message
                .contains("`eth 1` is not a valid interface name or pattern"),
            "{e}"
        );
        let e = Config::parse("interfaces = [\"averyveryverylongname*\"]\n", "x").unwrap_err();
        assert!(e.message.contains("longer than 15 characters"), "{e}");
    }

    #[test]
    fn crowdsec_section_is_checked_where_it_is_written() {
        let ok = Config::parse(
            "[crowdsec]\napi_url = \"http://127.0.0.1:8080/\"\napi_key = \"abc\"\n",
            "x",
        )
        .unwrap();
        let cs = ok.crowdsec.unwrap();
        assert_eq!(cs.update_frequency.0.as_secs(), 10);
        assert_eq!(cs.resync.0.as_secs(), 600);
        let e = Config::parse(
            "default_ttl = \"1h\"\n[crowdsec]\napi_url = \"ftp://x\"\napi_key = \"abc\"\n",
            "x",
        )
        .unwrap_err();
        assert_eq!((e.line, e.column), (3, 1), "{e}");
        let e = Config::parse("[crowdsec]\napi_url = \"http://127.0.0.1/\"\n", "x").unwrap_err();
        assert!(e.message.contains("cscli bouncers add"), "{e}");
        let e = Config::parse("[crowdsec]\napi_url = \"http://127.0.0.1/\"\napi_key = \"a\"\n  update_frequency = \"10\"\nresync = \"5s\"\n", "x").unwrap_err();
        assert_eq!((e.line, e.column), (5, 1), "{e}");
        let e = Config::parse(
            "[crowdsec]\napi_url = \"http://127.0.0.1/\"\napi_key = \"a\"\nbogus = 1\n",
            "x",
        )
        .unwrap_err();
        assert!(e.message.contains("unknown field"), "{e}");
    }

    #[test]
    fn access_entries_are_checked_where_they_are_written() {
        let c = Config::parse("[[access]]\ngroup = \"wazuh\"\nsources = [\"wazuh\"]\noperations = [\"block\", \"list\"]\n", "x").unwrap();
        assert_eq!(c.access.len(), 1);
        let e = Config::parse(
            "[[access]]\ngroup = \"a\"\n\n[[access]]\nsources = [\"*\"]\n",
            "x",
        )
        .unwrap_err();
        assert_eq!((e.line, e.column), (4, 1), "{e}");
        assert!(
            e.message.contains("exactly one of `user` or `group`"),
            "{e}"
        );
        let e = Config::parse("[[access]]\nuser = \"a\"\noperations = [\"promte\"]\n", "x")
            .unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("unknown operation `promte`"), "{e}");
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("crowdsec.key");
        std::fs::write(&key, "0123abcd\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = format!(
            "[crowdsec]\napi_url = \"http://127.0.0.1/\"\napi_key_file = \"{}\"\n",
            key.display()
        );
        let e = Config::parse(&text, "x").unwrap_err();
        assert_eq!((e.line, e.column), (3, 1), "{e}");
        assert!(e.message.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::parse(&text, "x").unwrap().crowdsec.unwrap();
        assert!(
            matches!(c.credentials(), Ok(crate::crowdsec::Credentials::ApiKey(k)) if k == "0123abcd")
        );
    }

    #[test]
    fn the_publish_section_is_checked_where_it_is_written() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("machine.password");
        std::fs::write(&pw, "s3cret\n").unwrap();
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let head = "[crowdsec]\napi_url = \"https://x/\"\napi_key = \"a\"\n\n[crowdsec.publish]\n";
        let parse = |body: &str| Config::parse(&format!("{head}{body}"), "x");
        let login = format!("login = \"web-01\"\npassword_file = \"{}\"\n", pw.display());
        let c = parse(&format!(
            "{login}sources = [\"fail2ban\", \"wazuh\"]\nscenarios = {{ wazuh = \"acme/wazuh\" }}\n"
        ))
        .unwrap();
        let p = c.crowdsec.unwrap().publish.unwrap();
        assert_eq!(p.queue_max, 10_000);
        let scenarios: Vec<(String, String)> = p
            .scenarios()
            .into_iter()
            .map(|(s, n)| (s.to_string(), n))
            .collect();
        assert_eq!(
            scenarios,
            [
                ("fail2ban".to_owned(), "enforcer/fail2ban".to_owned()),
                ("wazuh".to_owned(), "acme/wazuh".to_owned())
            ]
        );
        assert!(
            matches!(p.login(), Ok(crate::crowdsec::MachineLogin::Password { password, .. }) if password == "s3cret")
        );
        // Each mistake: one line that says what and where (line 8: the key's own line).
        for (body, line, needle) in [
            ("sources = [\"crowdsec\"]\n", 8, "never published back"),
            (
                "sources = [\"cli\"]\nscenarios = { wazuh = \"x\" }\n",
                9,
                "not in crowdsec.publish.sources",
            ),
            (
                "sources = [\"cli\"]\nscenarios = { cli = \"a b\" }\n",
                9,
                "printable characters",
            ),
            ("queue_max = 0\n", 8, "use 1 to 1000000"),
        ] {
            let e = parse(&format!("{login}{body}")).unwrap_err();
            assert_eq!(e.line, line, "{body}: {e}");
            assert!(e.message.contains(needle), "{body}: {e}");
        }
        let e = parse("sources = [\"cli\"]\n").unwrap_err();
        assert!(e.message.contains("cscli machines add"), "{e}");
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = parse(&login).unwrap_err();
        assert_eq!(e.line, 7, "{e}");
        assert!(e.message.contains("chmod 600"), "{e}");
        // TLS client authentication instead of a password: both files, and not both ways.
        let cert =
            "cert_path = \"/etc/enforcer/machine.pem\"\nkey_path = \"/etc/enforcer/machine.key\"\n";
        let c = parse(&format!("{cert}sources = [\"cli\"]\n")).unwrap();
        assert!(matches!(
            c.crowdsec.unwrap().publish.unwrap().login(),
            Ok(crate::crowdsec::MachineLogin::Certificate { .. })
        ));
        let e = parse("cert_path = \"/x.pem\"\n").unwrap_err();
        assert!(e.message.contains("go together"), "{e}");
        let e = parse(&format!("{login}{cert}")).unwrap_err();
        assert!(e.message.contains("not both"), "{e}");
    }
}
