//! `GET /metrics` over plain HTTP/1.1, one request per connection.
//!
//! A hand-written responder rather than an HTTP framework: it answers one fixed path, and the
//! whole protocol surface it needs is a request line and a `Connection: close` response.
//! Requests are bounded in size and time, and at most [`MAX_CONNECTIONS`] are served at once,
//! so a slow or hostile client costs a task and a descriptor, not more.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use super::{Metrics, Outside, exposition::CONTENT_TYPE, render};
use crate::{datapath::StatsReader, time::WallMs};

/// Largest request head read.
pub const MAX_REQUEST: usize = 8192;
/// Time a client has to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send its request head (a scraper sends it at once).
const HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once. Past it, connections wait in the kernel's listen queue and cost
/// the daemon no descriptor, so idle clients cannot take the descriptors the link watcher, the
/// spool, the store and the control socket need.
pub const MAX_CONNECTIONS: usize = 16;

/// The metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The listen address could not be bound.
    #[error(
        "cannot listen for metrics on {addr} (pick another [metrics] listen address or free the port)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What a scrape reads.
pub struct Endpoint {
    /// Live counters and the engine's snapshot.
    pub metrics: Arc<Metrics>,
    /// The data path's counters (None if the pin could not be opened: the families are empty).
    pub stats: Option<StatsReader>,
    /// The state directory (for the spool depth).
    pub state_dir: PathBuf,
}

impl Endpoint {
    /// The exposition, read entirely outside the engine.
    pub fn scrape(&self) -> String {
        let snapshot = self.metrics.snapshot();
        let interfaces = match &self.stats {
            Some(reader) => snapshot
                .interfaces
                .iter()
                .filter_map(|(name, ifindex)| match reader.for_ifindex(*ifindex) {
                    Ok(s) => Some((name.clone(), s)),
                    Err(e) => {
                        tracing::warn!(iface = %name, error = %crate::error::Chain(&e), "reading the data path's counters failed");
                        None
                    }
                })
                .collect(),
            None => Vec::new(),
        };
        let unjudged = match &self.stats {
            Some(reader) => snapshot
                .interfaces
                .iter()
                .filter_map(|(name, ifindex)| {
                    reader
                        .unjudged_for_ifindex(*ifindex)
                        .ok()
                        .map(|u| (name.clone(), u))
                })
                .collect(),
            None => Vec::new(),
        };
        let outside = Outside {
            interfaces,
            unjudged,
            spool_depth: crate::spool::depth(&self.state_dir).unwrap_or(0),
            now_ms: WallMs::now(),
        };
        render(&self.metrics, &snapshot, &outside)
    }
}

/// Binds the listen address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, EndpointError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| EndpointError::Bind { addr, source })
}

/// Serves scrapes until the task is aborted.
pub async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Taken before accepting: at the cap, nothing is accepted until a connection ends.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(CLIENT_TIMEOUT, answer(stream, &endpoint)).await {
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics: connection failed"),
                Err(_) => tracing::debug!("metrics: client too slow"),
                Ok(Ok(())) => {}
            }
        });
    }
}

async fn answer(mut stream: TcpStream, endpoint: &Endpoint) -> std::io::Result<()> {
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let response = match route(&head) {
        Route::Metrics => {
            let body = tokio::task::block_in_place(|| endpoint.scrape());
            response("200 OK", CONTENT_TYPE, &body)
        }
        Route::Index => response(
            "200 OK",
            "text/plain; charset=utf-8",
            "enforcer: metrics at /metrics\n",
        ),
        Route::NotFound => response(
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n",
        ),
        Route::BadMethod => response(
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET is supported\n",
        ),
        Route::Bad => response(
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n",
        ),
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads up to the end of the request head (or [`MAX_REQUEST`] bytes).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (any query).
    Metrics,
    /// `GET /`.
    Index,
    /// `GET` of another path.
    NotFound,
    /// Another method.
    BadMethod,
    /// Not an HTTP/1.x request line.
    Bad,
}

/// Routes a request head (as read: up to its blank line, or [`MAX_REQUEST`] bytes) by its
/// request line; the headers are not looked at.
pub fn route(head: &str) -> Route {
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Route::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::Bad;
    }
    if method != "GET" {
        return Route::BadMethod;
    }
    match target.split('?').next() {
        Some("/metrics") => Route::Metrics,
        Some("/") => Route::Index,
        _ => Route::NotFound,
    }
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(
            route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics
        );
        assert_eq!(route("GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics);
        assert_eq!(route("GET / HTTP/1.1\r\n\r\n"), Route::Index);
        assert_eq!(route("GET /other HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(route("POST /metrics HTTP/1.1\r\n\r\n"), Route::BadMethod);
        assert_eq!(route("garbage"), Route::Bad);
    }
}
