//! The HTTP side: pulling the decision stream and pushing usage metrics.

use std::{path::Path, time::Duration};

use super::config::{Credentials, CrowdsecConfig};

/// Why a pull or push failed. The message says what the operator can do.
#[derive(Debug, thiserror::Error)]
pub enum LapiError {
    /// The client could not be built (TLS files).
    #[error("cannot set up the LAPI client: {0}")]
    Setup(String),
    /// No answer (connection refused, timeout, TLS failure).
    #[error("the LAPI at {url} does not answer")]
    Unreachable {
        /// The URL.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The TLS handshake failed because the LAPI refused our client certificate.
    #[error(
        "the LAPI at {url} rejected the client certificate; check that cert_path is signed by \
         the CA in the LAPI's api.server.tls.ca_cert_path"
    )]
    CertificateRejected {
        /// The URL.
        url: String,
        /// The cause (the TLS alert is in its chain).
        #[source]
        source: reqwest::Error,
    },
    /// 401/403.
    #[error("the LAPI refused the bouncer's credentials (HTTP {status}); {hint}")]
    Denied {
        /// The status code.
        status: u16,
        /// What to check, for the kind of credentials in use.
        hint: &'static str,
    },
    /// The publisher's machine login was refused (401/403).
    #[error("the LAPI refused the machine's login (HTTP {status}); {hint}")]
    MachineDenied {
        /// The status code.
        status: u16,
        /// What to check, for the kind of credentials in use.
        hint: &'static str,
    },
    /// Another error status.
    #[error("the LAPI answered HTTP {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// A 3xx answer: never followed (the key would go along to wherever it points).
    #[error(
        "the LAPI answered HTTP {status}, a redirect to `{location}`; redirects are not \
         followed (the API key would go along): set api_url to the address that answers"
    )]
    Redirect {
        /// The status code.
        status: u16,
        /// Where it pointed (control characters escaped, cut to 200 bytes).
        location: String,
    },
    /// The body was larger than allowed.
    #[error(
        "the LAPI's answer is larger than max_response_bytes ({max} bytes); raise it if the LAPI really holds that many decisions"
    )]
    TooLarge {
        /// The limit.
        max: u64,
    },
    /// The body was not a stream answer.
    #[error("the LAPI's answer is not a decision stream: {0}")]
    Garbage(String),
}

/// A LAPI client.
pub struct Lapi {
    http: reqwest::Client,
    stream_url: reqwest::Url,
    metrics_url: reqwest::Url,
    api_key: Option<String>,
    query: Vec<(&'static str, String)>,
    max_body: u64,
}

impl Lapi {
    /// Builds a client from the configuration.
    pub fn new(config: &CrowdsecConfig) -> Result<Self, LapiError> {
        let setup = |e: String| LapiError::Setup(e);
        let base = base_url(config)?;
        let mut builder = client_builder(config, Duration::from_secs(120))?;
        let credentials = config.credentials().map_err(|(_, m)| setup(m))?;
        let api_key = match credentials {
            Credentials::ApiKey(k) => Some(k),
            Credentials::Certificate { cert, key } => {
                builder = builder.identity(identity(&cert, &key)?);
                None
            }
        };
        let mut query = Vec::new();
        let list = |v: &[String]| v.join(",");
        query.push((
            "scopes",
            if config.scopes.is_empty() {
                "ip,range".to_owned()
            } else {
                list(&config.scopes)
            },
        ));
        for (key, values) in [
            ("origins", &config.origins),
            ("scenarios_containing", &config.scenarios_containing),
            ("scenarios_not_containing", &config.scenarios_not_containing),
        ] {
            if !values.is_empty() {
                query.push((key, list(values)));
            }
        }
        Ok(Self {
            http: builder.build().map_err(|e| setup(e.to_string()))?,
            stream_url: base
                .join("v1/decisions/stream")
                .map_err(|e| setup(e.to_string()))?,
            metrics_url: base
                .join("v1/usage-metrics")
                .map_err(|e| setup(e.to_string()))?,
            api_key,
            query,
            max_body: config.max_response_bytes,
        })
    }

    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(k) => req.header("X-Api-Key", k),
            None => req,
        }
    }

    fn unreachable(&self, source: reqwest::Error) -> LapiError {
        let url = self.stream_url.to_string();
        let cause = crate::error::Chain(&source).to_string();
        // The server's alert when it refuses a client certificate (a TLS 1.3 server sends it
        // after the handshake, so it shows as a failed request, not a failed connection).
        let refused = [
            "BadCertificate",
            "UnknownCA",
            "CertificateRequired",
            "CertificateUnknown",
            "AccessDenied",
        ];
        if self.api_key.is_none()
            && cause.contains("alert")
            && refused.iter().any(|a| cause.contains(a))
        {
            return LapiError::CertificateRejected { url, source };
        }
        LapiError::Unreachable { url, source }
    }

    fn denied(&self, status: reqwest::StatusCode) -> LapiError {
        let hint = if self.api_key.is_some() {
            "check the key with `cscli bouncers list`"
        } else {
            "the client certificate's OU must be in the LAPI's api.server.tls.bouncers_allowed_ou \
             (bouncer-ou by default), and it must not be revoked"
        };
        LapiError::Denied {
            status: status.as_u16(),
            hint,
        }
    }

    /// One pull: the whole state (`startup`) or what changed since the last pull. Returns the
    /// answer's bytes, for [`StreamBody::parse`](super::decision::StreamBody::parse).
    pub async fn pull(&self, startup: bool) -> Result<Vec<u8>, LapiError> {
        let mut query = self.query.clone();
        if startup {
            query.push(("startup", "true".to_owned()));
        }
        let req = self.authed(self.http.get(self.stream_url.clone()).query(&query));
        let mut resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(self.denied(status));
        }
        if status.is_redirection() {
            return Err(redirect(&resp));
        }
        let body = self.read_body(&mut resp).await?;
        if !status.is_success() {
            return Err(LapiError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
            });
        }
        Ok(body)
    }

    /// The body, refusing to hold more than `max_body` bytes.
    ///
    /// The chunks are kept as they arrive and joined once at the end: a startup answer of tens
    /// of megabytes, grown in place, was copied again at every doubling (and the LAPI sends it
    /// all at once, after it has built it, so those copies sat between its last byte and the
    /// decisions being applied).
    async fn read_body(&self, resp: &mut reqwest::Response) -> Result<Vec<u8>, LapiError> {
        if resp.content_length().is_some_and(|n| n > self.max_body) {
            return Err(LapiError::TooLarge { max: self.max_body });
        }
        let mut chunks = Vec::new();
        let mut len = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.unreachable(e))? {
            len += chunk.len() as u64;
            if len > self.max_body {
                return Err(LapiError::TooLarge { max: self.max_body });
            }
            chunks.push(chunk);
        }
        Ok(chunks.concat())
    }

    /// Pushes usage metrics. `Ok(false)`: this LAPI has no such endpoint (404, before 1.6.3).
    pub async fn push_metrics(&self, body: &serde_json::Value) -> Result<bool, LapiError> {
        let req = self.authed(self.http.post(self.metrics_url.clone()).json(body));
        let mut resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        if status.is_redirection() {
            return Err(redirect(&resp));
        }
        let text = self.read_body(&mut resp).await.unwrap_or_default();
        if !status.is_success() {
            return Err(LapiError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&text[..text.len().min(200)]).into_owned(),
            });
        }
        Ok(true)
    }
}

/// The LAPI's base URL, ending in `/` so that API paths join below it.
pub(crate) fn base_url(config: &CrowdsecConfig) -> Result<reqwest::Url, LapiError> {
    let setup = |e: String| LapiError::Setup(format!("crowdsec.api_url: {e}"));
    let mut base = reqwest::Url::parse(&config.api_url).map_err(|e| setup(e.to_string()))?;
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    Ok(base)
}

/// The HTTP client every call to the LAPI uses (the bouncer's pulls and pushes, the
/// publisher's machine calls): our user agent, no proxy, `timeout` for a whole request, the
/// configured CA trusted, and never a redirect (the API key, the password and the token travel
/// with a request, and reqwest would forward them to wherever a 3xx points, https to http
/// included; a LAPI never redirects).
pub(crate) fn client_builder(
    config: &CrowdsecConfig,
    timeout: Duration,
) -> Result<reqwest::ClientBuilder, LapiError> {
    // reqwest is built without a default crypto provider; ours is ring (no C toolchain
    // beyond cc, small). Installing it twice is harmless.
    rustls::crypto::ring::default_provider()
        .install_default()
        .ok();
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("enforcer/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if let Some(ca) = &config.ca_cert_path {
        let setup =
            |e: String| LapiError::Setup(format!("crowdsec.ca_cert_path {}: {e}", ca.display()));
        let pem = std::fs::read(ca).map_err(|e| setup(e.to_string()))?;
        let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| setup(e.to_string()))?;
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder)
}

/// A client certificate and its key (PEM files) as a TLS identity.
pub(crate) fn identity(cert: &Path, key: &Path) -> Result<reqwest::Identity, LapiError> {
    let setup = |p: &Path, e: String| LapiError::Setup(format!("{}: {e}", p.display()));
    let mut pem = std::fs::read(cert).map_err(|e| setup(cert, e.to_string()))?;
    pem.extend(std::fs::read(key).map_err(|e| setup(key, e.to_string()))?);
    reqwest::Identity::from_pem(&pem).map_err(|e| setup(cert, e.to_string()))
}

/// The error for a 3xx answer, naming where it pointed (printable, bounded).
fn redirect(resp: &reqwest::Response) -> LapiError {
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let mut location: String = location.escape_debug().collect();
    if location.len() > 200 {
        let mut end = 200;
        while !location.is_char_boundary(end) {
            end -= 1;
        }
        location.truncate(end);
    }
    LapiError::Redirect {
        status: resp.status().as_u16(),
        location,
    }
}
