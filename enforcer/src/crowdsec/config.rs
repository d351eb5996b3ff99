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
        self.credentials().map(|_| ())
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
    let shown = path.display();
    let meta =
        std::fs::metadata(path).map_err(|e| format!("crowdsec.api_key_file {shown}: {e}"))?;
    if meta.permissions().mode() & 0o007 != 0 {
        return Err(format!(
            "crowdsec.api_key_file {shown} is accessible by other users (mode {:o}); run `chmod 600 {shown}`",
            meta.permissions().mode() & 0o777
        ));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("crowdsec.api_key_file {shown}: {e}"))?;
    let key = text.trim().to_owned();
    check_key(&key).map_err(|m| format!("{m} (in {shown})"))?;
    Ok(key)
}
