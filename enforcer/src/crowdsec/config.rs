//! The `[crowdsec]` section of the configuration file.

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf};

use serde::Deserialize;

use crate::duration::HumanDuration;

/// How to reach the LAPI and what to pull (off unless the section is present).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrowdsecConfig {
    /// The LAPI's base URL (`http://127.0.0.1:8080/`).
    pub api_url: String,
    /// The bouncer's API key, written in the file (prefer `api_key_file`).
    #[serde(default)]
    pub api_key: Option<String>,
    /// A file holding the API key (mode 0600; one readable by others is refused).
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// How often to pull.
    #[serde(default = "default_update_frequency")]
    pub update_frequency: HumanDuration,
    /// How often to make a full (startup) pull, which heals anything the deltas missed.
    #[serde(default = "default_resync")]
    pub resync: HumanDuration,
    /// Only decisions of these origins (`crowdsec`, `cscli`, `CAPI`, `lists`, ...).
    #[serde(default)]
    pub origins: Vec<String>,
    /// Decision scopes to pull (default `ip` and `range`, the ones enforced).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Only decisions whose scenario contains one of these.
    #[serde(default)]
    pub scenarios_containing: Vec<String>,
    /// No decision whose scenario contains one of these.
    #[serde(default)]
    pub scenarios_not_containing: Vec<String>,
    /// A CA certificate (PEM) to trust for an `https` LAPI.
    #[serde(default)]
    pub ca_cert_path: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS, instead of a key.
    #[serde(default)]
    pub cert_path: Option<PathBuf>,
    /// Its private key (PEM).
    #[serde(default)]
    pub key_path: Option<PathBuf>,
    /// The largest answer accepted, in bytes (a startup pull of 100k decisions is about 20 MB).
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// Accept `http://` to a host other than loopback (the key then crosses the network in
    /// clear); off: such a URL is refused at load.
    #[serde(default)]
    pub insecure_http: bool,
    /// Push usage metrics to the LAPI (LAPI >= 1.6.3; turned off by itself on a 404).
    #[serde(default = "default_true")]
    pub usage_metrics: bool,
    /// Publish local blocks to the LAPI, for the rest of the fleet (`[crowdsec.publish]`).
    #[serde(default)]
    pub publish: Option<PublishConfig>,
}

/// `[crowdsec.publish]`: the daemon logs in as a CrowdSec machine (agent) and pushes each
/// enforced block of the listed sources as an alert carrying a ban decision.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// The machine's name (`cscli machines add NAME --password ...`).
    #[serde(default)]
    pub login: Option<String>,
    /// A file holding the machine's password (mode 0600).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Instead of login + password: a client certificate (PEM) whose OU the LAPI accepts from
    /// agents (`api.server.tls.agents_allowed_ou`); the LAPI names the machine `CN@address`.
    #[serde(default)]
    pub cert_path: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[serde(default)]
    pub key_path: Option<PathBuf>,
    /// Local sources whose blocks are published (default none).
    #[serde(default)]
    pub sources: Vec<crate::block::Source>,
    /// The scenario each source's decisions carry (default `enforcer/<source>`).
    #[serde(default)]
    pub scenarios: std::collections::BTreeMap<String, String>,
    /// Most publications waiting for the LAPI; beyond it blocks are enforced here only.
    #[serde(default = "default_queue_max")]
    pub queue_max: usize,
}

const fn default_queue_max() -> usize {
    10_000
}

/// How the machine logs in.
#[derive(Clone, Debug)]
pub enum MachineLogin {
    /// `machine_id` + password.
    Password {
        /// The machine id.
        login: String,
        /// Its password.
        password: String,
    },
    /// TLS client authentication: the LAPI takes the machine from the certificate.
    Certificate {
        /// Certificate chain (PEM).
        cert: PathBuf,
        /// Private key (PEM).
        key: PathBuf,
    },
}

impl MachineLogin {
    /// How `status` names the machine.
    pub fn describe(&self) -> String {
        match self {
            Self::Password { login, .. } => login.clone(),
            Self::Certificate { cert, .. } => format!("certificate {}", cert.display()),
        }
    }
}

impl PublishConfig {
    /// Each published source with its scenario.
    pub fn scenarios(&self) -> std::collections::BTreeMap<crate::block::Source, String> {
        self.sources
            .iter()
            .map(|s| {
                let scenario = self
                    .scenarios
                    .get(s.as_str())
                    .cloned()
                    .unwrap_or_else(|| format!("enforcer/{s}"));
                (s.clone(), scenario)
            })
            .collect()
    }

    /// Checks what serde cannot; the key is relative to `[crowdsec.publish]`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: String| Err((k.to_owned(), format!("crowdsec.publish.{k}: {m}")));
        let mut seen = std::collections::BTreeSet::new();
        for s in &self.sources {
            if s.as_str() == super::SOURCE {
                return err("sources", "blocks of source `crowdsec` came from the LAPI and are never published back; remove it".into());
            }
            if !seen.insert(s) {
                return err("sources", format!("`{s}` is listed twice"));
            }
        }
        for (source, scenario) in &self.scenarios {
            if !self.sources.iter().any(|s| s.as_str() == source) {
                return err(
                    "scenarios",
                    format!(
                        "`{source}` is not in crowdsec.publish.sources; add it there or remove its scenario"
                    ),
                );
            }
            if scenario.is_empty()
                || scenario.len() > 128
                || !scenario.bytes().all(|b| b.is_ascii_graphic())
            {
                return err(
                    "scenarios",
                    format!(
                        "the scenario of `{source}` must be 1 to 128 printable characters without spaces, like `enforcer/{source}`"
                    ),
                );
            }
        }
        if self.queue_max == 0 || self.queue_max > 1_000_000 {
            return err(
                "queue_max",
                format!("{} is out of range; use 1 to 1000000", self.queue_max),
            );
        }
        self.login().map(|_| ())
    }

    /// How the machine logs in: login and password (read from `password_file`, refused when
    /// others may read it), or a client certificate.
    pub fn login(&self) -> Result<MachineLogin, (String, String)> {
        let password = self.login.is_some() || self.password_file.is_some();
        let certificate = self.cert_path.is_some() || self.key_path.is_some();
        if password && certificate {
            return Err((
                "cert_path".into(),
                "crowdsec.publish: use login + password_file or cert_path + key_path, not both"
                    .into(),
            ));
        }
        if certificate {
            let (Some(cert), Some(key)) = (&self.cert_path, &self.key_path) else {
                return Err((
                    "cert_path".into(),
                    "crowdsec.publish: cert_path and key_path go together (TLS client authentication)".into(),
                ));
            };
            return Ok(MachineLogin::Certificate {
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        let (Some(login), Some(file)) = (&self.login, &self.password_file) else {
            return Err((
                if self.login.is_none() { "login" } else { "password_file" }.to_owned(),
                "crowdsec.publish: set login and password_file (register the machine on the LAPI host with `cscli machines add NAME --password PASSWORD -f /dev/null`), or cert_path and key_path for TLS client authentication".into(),
            ));
        };
        if login.is_empty() || !login.bytes().all(|b| b.is_ascii_graphic()) {
            return Err((
                "login".into(),
                "crowdsec.publish.login must be the machine name given to `cscli machines add`"
                    .into(),
            ));
        }
        let password = read_secret_file("crowdsec.publish.password_file", file)
            .map_err(|m| ("password_file".to_owned(), m))?;
        Ok(MachineLogin::Password {
            login: login.clone(),
            password,
        })
    }
}

fn default_update_frequency() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(10))
}

fn default_resync() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(600))
}

const fn default_max_response_bytes() -> u64 {
    256 * 1024 * 1024
}

const fn default_true() -> bool {
    true
}

/// How the bouncer authenticates.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// `X-Api-Key`.
    ApiKey(String),
    /// A client certificate and its key (mTLS).
    Certificate {
        /// Certificate chain (PEM).
        cert: PathBuf,
        /// Private key (PEM).
        key: PathBuf,
    },
}

impl CrowdsecConfig {
    /// Checks what serde cannot; an error names the key it concerns and says what to do.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let url = reqwest::Url::parse(&self.api_url).map_err(|e| {
            (
                "api_url".to_owned(),
                format!("crowdsec.api_url `{}` is not a URL: {e}", self.api_url),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err((
                "api_url".into(),
                format!(
                    "crowdsec.api_url `{}` must be an http:// or https:// URL",
                    self.api_url
                ),
            ));
        }
        if url.scheme() == "http" && !is_loopback(&url) && !self.insecure_http {
            return Err((
                "api_url".into(),
                format!(
                    "crowdsec.api_url `{}` would send the API key in clear to another host; \
                     use https:// (with ca_cert_path for a private CA), or set \
                     insecure_http = true in [crowdsec] to accept that",
                    self.api_url
                ),
            ));
        }
        if self.update_frequency.0 < std::time::Duration::from_secs(1) {
            return Err((
                "update_frequency".into(),
                "crowdsec.update_frequency must be at least 1s".into(),
            ));
        }
        if self.resync.0 < self.update_frequency.0 {
            return Err((
                "resync".into(),
                "crowdsec.resync must not be shorter than update_frequency".into(),
            ));
        }
        for scope in &self.scopes {
            if !scope.eq_ignore_ascii_case("ip") && !scope.eq_ignore_ascii_case("range") {
                return Err((
                    "scopes".into(),
                    format!("crowdsec.scopes: `{scope}` is not enforced; use ip and range"),
                ));
            }
        }
        if self.cert_path.is_some() != self.key_path.is_some() {
            return Err((
                "cert_path".into(),
                "crowdsec: cert_path and key_path go together (mTLS)".into(),
            ));
        }
        if self.max_response_bytes < 1024 {
            return Err((
                "max_response_bytes".into(),
                "crowdsec.max_response_bytes must be at least 1024".into(),
            ));
        }
        self.credentials()?;
        if let Some(p) = &self.publish {
            p.validate().map_err(|(k, m)| (format!("publish.{k}"), m))?;
        }
        Ok(())
    }

    /// The credentials, reading the key file (refused when others may read it).
    pub fn credentials(&self) -> Result<Credentials, (String, String)> {
        let ways = [
            self.api_key.is_some(),
            self.api_key_file.is_some(),
            self.cert_path.is_some(),
        ];
        match ways.iter().filter(|w| **w).count() {
            0 => return Err(("api_url".into(), "crowdsec: set api_key_file (or api_key, or cert_path + key_path for mTLS); register the bouncer with `cscli bouncers add NAME`".into())),
            1 => {}
            _ => return Err(("api_key".into(), "crowdsec: use one of api_key, api_key_file or cert_path + key_path".into())),
        }
        if let Some(key) = &self.api_key {
            return check_key(key)
                .map(|()| Credentials::ApiKey(key.clone()))
                .map_err(|m| ("api_key".into(), m));
        }
        if let Some(path) = &self.api_key_file {
            return read_key_file(path)
                .map(Credentials::ApiKey)
                .map_err(|m| ("api_key_file".into(), m));
        }
        match (&self.cert_path, &self.key_path) {
            (Some(cert), Some(key)) => Ok(Credentials::Certificate {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => unreachable!("checked: exactly one way, and cert_path comes with key_path"),
        }
    }
}

impl CrowdsecConfig {
    /// The addresses `api_url` names or resolves to (now, once): the daemon allowlists them,
    /// since a block of the LAPI would stop every later pull, the deletion of that block
    /// included. An unresolvable name gives none (the pulls report it).
    pub fn lapi_addresses(&self) -> Vec<std::net::IpAddr> {
        use std::net::ToSocketAddrs as _;
        let Ok(url) = reqwest::Url::parse(&self.api_url) else {
            return Vec::new();
        };
        let Some(host) = url.host_str() else {
            return Vec::new();
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<std::net::IpAddr>() {
            return vec![ip];
        }
        let port = url.port_or_known_default().unwrap_or(8080);
        match (bare, port).to_socket_addrs() {
            Ok(addrs) => {
                let mut ips: Vec<std::net::IpAddr> = addrs.map(|a| a.ip()).collect();
                ips.sort_unstable();
                ips.dedup();
                ips
            }
            Err(e) => {
                tracing::warn!(host = bare, error = %e, "cannot resolve the LAPI's host name; its addresses are not allowlisted");
                Vec::new()
            }
        }
    }
}

/// Whether the URL's host is this machine's loopback (`127.0.0.0/8`, `::1`, `localhost`).
fn is_loopback(url: &reqwest::Url) -> bool {
    let Some(host) = url.host_str() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "crowdsec: the API key must be the printable string `cscli bouncers add` printed"
                .into(),
        );
    }
    Ok(())
}

fn read_key_file(path: &std::path::Path) -> Result<String, String> {
    let key = read_secret_file("crowdsec.api_key_file", path)?;
    check_key(&key).map_err(|m| format!("{m} (in {})", path.display()))?;
    Ok(key)
}

/// A secret's file, trimmed; refused when other users may access it, or when empty.
fn read_secret_file(key: &str, path: &std::path::Path) -> Result<String, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{key} {shown}: {e}"))?;
    if meta.permissions().mode() & 0o007 != 0 {
        return Err(format!(
            "{key} {shown} is accessible by other users (mode {:o}); run `chmod 600 {shown}`",
            meta.permissions().mode() & 0o777
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{key} {shown}: {e}"))?;
    let secret = text.trim().to_owned();
    if secret.is_empty() {
        return Err(format!("{key} {shown} is empty"));
    }
    Ok(secret)
}
