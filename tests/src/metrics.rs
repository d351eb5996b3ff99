//! The daemon's `/metrics` endpoint as a scraper sees it, from inside the lab's namespace.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::in_netns;

/// A TCP port free on the loopback of the network namespace `netns`.
pub fn free_port(netns: &str) -> Result<u16> {
    in_netns(netns, || -> Result<u16> {
        Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
    })?
}

/// `GET path` from `127.0.0.1:port` inside `netns`: the status code and the body.
pub fn http_get(netns: &str, port: u16, path: &str) -> Result<(u16, String)> {
    in_netns(netns, || -> Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .with_context(|| format!("no HTTP head in {raw:?}"))?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        Ok((code, body.to_owned()))
    })?
}

/// One scrape's exposition.
#[derive(Clone, Debug)]
pub struct Scrape(pub String);

impl Scrape {
    /// The value of the sample named exactly `series` (its name and labels as exposed, such as
    /// `enforcer_spool_depth` or `enforcer_breaker_open{source="wazuh"}`).
    pub fn value(&self, series: &str) -> Option<f64> {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.rsplit_once(' ').filter(|(s, _)| *s == series))
            .and_then(|(_, v)| v.parse().ok())
    }

    /// The value of `series`, failing with the whole exposition when it is missing.
    pub fn get(&self, series: &str) -> f64 {
        self.value(series)
            .unwrap_or_else(|| panic!("no sample {series} in\n{}", self.0))
    }

    /// Every family the exposition declares (its `# TYPE` lines).
    pub fn families(&self) -> Vec<String> {
        self.0
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_owned)
            .collect()
    }
}
