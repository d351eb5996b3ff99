//! The control socket: newline-delimited JSON requests in, one response per request out.
//!
//! Access: the socket file is mode 0660, owned by root and the configured group. Each
//! connection's peer (SO_PEERCRED) is looked up once, as a [`Caller`], and may connect if the
//! access rules say so ([`AccessPolicy::may_connect`]); every request then carries that caller
//! to the engine, which checks it ([`crate::access`]).

use std::{
    io,
    path::Path,
    sync::{
        Arc,
        mpsc::{SyncSender, TrySendError},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedReadHalf},
    sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch},
};

use super::{engine::Command, refusal::Refusal};
use crate::{
    access::{AccessPolicy, Caller},
    config::ControlSocketConfig,
    metrics::Metrics,
    protocol::{Envelope, ErrorCode, Reply, Request, RequestId, Response, parse_request},
};

/// Binds the socket, refusing to steal it from a daemon that still answers.
pub async fn bind(path: &Path, socket_gid: Option<u32>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            anyhow::bail!(
                "another enforcer daemon is listening on {}; stop it first (or use --socket)",
                path.display()
            );
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    // Never through a link someone put there after the bind.
    crate::safe_fs::chmod_no_follow(path, 0o660, socket_gid)?;
    Ok(listener)
}

/// What every connection shares: the engine, the access rules, the bounds, and whether the
/// daemon is stopping.
pub struct Server {
    /// The engine's queue.
    pub engine: SyncSender<Command>,
    /// Answers reads off the engine thread (`None`: the engine answers them).
    pub reader: Option<super::reads::Reader>,
    /// Who may connect.
    pub access: Arc<AccessPolicy>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// The bouncer's state, added to status answers.
    pub crowdsec: Option<crate::crowdsec::StatusHandle>,
    /// `[control_socket]`.
    pub limits: ControlSocketConfig,
    /// One permit per connection served ([`ControlSocketConfig::max_connections`]).
    pub permits: Arc<Semaphore>,
    /// One permit per request byte held, over every connection
    /// ([`ControlSocketConfig::max_buffered_bytes`]).
    pub buffered: Arc<Semaphore>,
    /// Set when the daemon stops: no request is handed to the engine any more.
    pub stopping: watch::Receiver<bool>,
}

/// The answer to a peer the access rules do not let in.
const NOT_ALLOWED: &str = "permission denied: the control socket is for root, the daemon's socket_group and the callers its [[access]] entries name";

/// The engine took a request and ended before answering (it died in that round).
pub(super) const STOPPED: &str = "the daemon stopped before answering; the request may or may not have been applied (check `enforcer list`)";

/// Why a connection was turned away without its request being read.
pub(super) const SHUTTING_DOWN: &str = "the daemon is shutting down; the request was not applied (a trigger spools it and the daemon applies it when it starts again)";

/// Accepts connections until `closing` fires; then removes the socket file and answers what
/// still waits in the listen queue with `unavailable`, so no client is left without an answer.
pub async fn serve(
    listener: UnixListener,
    server: Arc<Server>,
    path: std::path::PathBuf,
    mut closing: oneshot::Receiver<()>,
) {
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut closing => break,
        };
        match accepted {
            Ok((stream, _)) => {
                backoff.succeeded();
                admit(stream, &server);
            }
            Err(e) => backoff.failed(&e, &server.metrics).await,
        }
    }
    // Nobody can connect once the file is gone (or if it already was); then whoever queued
    // before gets an answer.
    std::fs::remove_file(&path).ok();
    while let Ok(Ok((stream, _))) =
        tokio::time::timeout(Duration::from_millis(50), listener.accept()).await
    {
        tokio::spawn(turn_away(stream, SHUTTING_DOWN.to_owned()));
    }
}

/// Serves an accepted connection, or turns it away (the daemon stopping, or the cap reached).
fn admit(stream: UnixStream, server: &Arc<Server>) {
    if *server.stopping.borrow() {
        tokio::spawn(turn_away(stream, SHUTTING_DOWN.to_owned()));
        return;
    }
    let Ok(permit) = server.permits.clone().try_acquire_owned() else {
        server.metrics.connection_refused();
        let max = server.limits.max_connections;
        tracing::debug!(max, "control connection turned away: the cap is reached");
        let message = format!(
            "too many connections: the daemon serves at most {max} at once (control_socket.max_connections); the request was not applied, try again"
        );
        tokio::spawn(turn_away(stream, message));
        return;
    };
    let server = server.clone();
    tokio::spawn(async move {
        server.metrics.connection(true);
        if let Err(e) = connection(stream, &server).await {
            tracing::debug!(error = %e, "connection ended with an error");
        }
        server.metrics.connection(false);
        drop(permit);
    });
}

/// Answers `unavailable` without reading a request, then waits briefly for the client to send
/// its request (unread) or hang up, so that its write does not fail before it reads why.
async fn turn_away(stream: UnixStream, message: String) {
    let (mut read, mut write) = stream.into_split();
    let Ok(line) = response_line(&Response::err(ErrorCode::Unavailable, message)) else {
        return;
    };
    let grace = Duration::from_secs(1);
    if tokio::time::timeout(grace, write.write_all(&line))
        .await
        .is_ok()
    {
        let mut sink = [0u8; 4096];
        // Read or timed out: either way the connection closes now.
        tokio::time::timeout(grace, read.read(&mut sink)).await.ok();
    }
}

/// Backs off while accepting fails (out of file descriptors: EMFILE, ENFILE), instead of
/// spinning on a listener that stays readable. Logs once per burst: a burst ends after
/// [`AcceptBackoff::QUIET`] without a failure (while descriptors free up one by one, accepts
/// succeed and fail in turn).
#[derive(Default)]
struct AcceptBackoff {
    delay: Duration,
    last_failure: Option<std::time::Instant>,
    failures: u64,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MOST: Duration = Duration::from_millis(200);
    const QUIET: Duration = Duration::from_secs(10);

    async fn failed(&mut self, e: &io::Error, metrics: &Metrics) {
        let kind = match e.raw_os_error() {
            Some(libc::EMFILE) => "emfile",
            Some(libc::ENFILE) => "enfile",
            _ => "other",
        };
        metrics.accept_error(kind);
        if self.last_failure.is_none_or(|t| t.elapsed() > Self::QUIET) {
            tracing::error!(error = %e, "accepting control connections fails; backing off until it works again (logged once per burst; out of file descriptors: raise LimitNOFILE)");
            self.delay = Self::FIRST;
        } else {
            self.delay = (self.delay * 2).clamp(Self::FIRST, Self::MOST);
        }
        self.failures += 1;
        self.last_failure = Some(std::time::Instant::now());
        tokio::time::sleep(self.delay).await;
    }

    fn succeeded(&mut self) {
        if self.failures > 0 && self.last_failure.is_some_and(|t| t.elapsed() > Self::QUIET) {
            tracing::info!(
                failed = self.failures,
                "accepting control connections again"
            );
            self.failures = 0;
        }
    }
}

/// The peer: known at once (root, whose name was looked up lately: [`Caller::root_if_named`]),
/// or being looked up, with its user name and login groups, off the runtime's threads (the user
/// and group databases may be remote, NSS: LDAP, sssd) while its first request is read.
enum Peer {
    Known(Caller),
    LookingUp(tokio::task::JoinHandle<Caller>),
}

/// Starts finding out who the peer is. `None` if the kernel does not say.
fn peer(stream: &UnixStream) -> Option<Peer> {
    let cred = stream.peer_cred().ok()?;
    let (uid, gid) = (cred.uid(), cred.gid());
    if uid == 0
        && let Some(root) = Caller::root_if_named(gid)
    {
        return Some(Peer::Known(root));
    }
    Some(Peer::LookingUp(tokio::task::spawn_blocking(move || {
        Caller::lookup(uid, gid)
    })))
}

/// The caller, once it is known: `None` when it may not connect.
async fn admitted(peer: &mut Option<Peer>, caller: &mut Option<Caller>, server: &Server) {
    let known = match peer.take() {
        None => return,
        Some(Peer::Known(c)) => Some(c),
        Some(Peer::LookingUp(handle)) => handle.await.ok(),
    };
    *caller = known.filter(|c| server.access.may_connect(c));
}

/// What became of waiting for the next request line.
enum Next {
    /// A line (maybe longer than the limit: then it is cut there).
    Line,
    /// The client hung up.
    Closed,
    /// No complete request within the idle timeout.
    Idle,
    /// The daemon is stopping.
    Stopping,
    /// The line would pass the bytes every connection may hold at once.
    Busy,
}

/// Waits for the next request line into `line`, at most the idle timeout, and not past the
/// daemon's stop (a partial line read by then is dropped: it was not a request yet). The bytes
/// are taken from the daemon-wide budget as they arrive (`held` keeps them until the request
/// is answered): 256 connections cannot hold 256 lines of the longest size at once.
async fn next_line(
    reader: &mut BufReader<OwnedReadHalf>,
    line: &mut Vec<u8>,
    held: &mut Option<OwnedSemaphorePermit>,
    server: &Server,
) -> io::Result<Next> {
    let mut stopping = server.stopping.clone();
    let read = tokio::time::timeout(
        server.limits.idle_timeout.0,
        read_line(reader, line, held, server),
    );
    tokio::select! {
        biased;
        r = read => match r {
            Ok(Ok(Some(0))) => Ok(Next::Closed),
            Ok(Ok(Some(_))) if *server.stopping.borrow() => Ok(Next::Stopping),
            Ok(Ok(Some(_))) => Ok(Next::Line),
            Ok(Ok(None)) => Ok(Next::Busy),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(Next::Idle),
        },
        _ = stopping.wait_for(|s| *s) => Ok(Next::Stopping),
    }
}

/// Reads up to a newline, or one byte past `max_request_bytes`, into `line`, taking a budget
/// permit per byte; `None` when the budget has no room for what arrived.
async fn read_line(
    reader: &mut BufReader<OwnedReadHalf>,
    line: &mut Vec<u8>,
    held: &mut Option<OwnedSemaphorePermit>,
    server: &Server,
) -> io::Result<Option<usize>> {
    let max = server.limits.max_request_bytes + 1;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(Some(line.len()));
        }
        let newline = buf.iter().position(|b| *b == b'\n');
        let take = newline.map_or(buf.len(), |i| i + 1).min(max - line.len());
        let Ok(permit) = server
            .buffered
            .clone()
            .try_acquire_many_owned(u32::try_from(take).unwrap_or(u32::MAX))
        else {
            return Ok(None);
        };
        match held {
            Some(h) => h.merge(permit),
            None => *held = Some(permit),
        }
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if newline.is_some_and(|i| i < take) || line.len() >= max {
            return Ok(Some(line.len()));
        }
    }
}

async fn connection(stream: UnixStream, server: &Server) -> io::Result<()> {
    let mut lookup = peer(&stream);
    let mut caller = None;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    let max = server.limits.max_request_bytes;
    loop {
        // A large request's buffer is not kept for the connection's life.
        if line.capacity() > 64 * 1024 {
            line = Vec::new();
        }
        line.clear();
        let mut held = None;
        let next = next_line(&mut reader, &mut line, &mut held, server).await?;
        // Whatever came, the caller is known before it is answered, as when it was looked up
        // before the read.
        admitted(&mut lookup, &mut caller, server).await;
        // Only a request that was read and may be served keeps the connection open.
        let (op, response, keep_open) = match (next, &caller) {
            (Next::Closed, _) => return Ok(()),
            (Next::Stopping, _) => (
                "unknown",
                Response::err(ErrorCode::Unavailable, SHUTTING_DOWN),
                false,
            ),
            (Next::Idle, _) => {
                let message = format!(
                    "no complete request within {:?} (control_socket.idle_timeout); closing the connection",
                    server.limits.idle_timeout.0
                );
                (
                    "unknown",
                    Response::err(ErrorCode::InvalidRequest, message),
                    false,
                )
            }
            (Next::Busy, _) => {
                let message = format!(
                    "the daemon holds as many request bytes as it may at once ({} over every connection: control_socket.max_buffered_bytes); the request was not applied, try again",
                    server.limits.max_buffered_bytes
                );
                (
                    "unknown",
                    Response::err(ErrorCode::Unavailable, message),
                    false,
                )
            }
            (Next::Line, None) => (
                "unknown",
                Response::err(ErrorCode::PermissionDenied, NOT_ALLOWED),
                false,
            ),
            (Next::Line, Some(_)) if line.len() > max => {
                let message =
                    format!("request longer than {max} bytes (control_socket.max_request_bytes)");
                (
                    "unknown",
                    Response::err(ErrorCode::InvalidRequest, message),
                    false,
                )
            }
            (Next::Line, Some(caller)) => {
                let (op, mut response) = handle_line(&line, caller, server).await;
                if let Response::Ok {
                    result: Reply::Status(status),
                    ..
                } = &mut response
                {
                    status.flood = server.metrics.flood();
                }
                if let (
                    Response::Ok {
                        result: Reply::Status(status),
                        ..
                    },
                    Some(cs),
                ) = (&mut response, &server.crowdsec)
                {
                    status.crowdsec = Some(cs.lock().expect("status lock").clone());
                }
                (op, response, true)
            }
        };
        server.metrics.request(op, result_label(&response));
        let out = response_line(&response)?;
        tokio::time::timeout(server.limits.idle_timeout.0, write.write_all(&out))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client does not read its answers",
                )
            })??;
        if !keep_open {
            return Ok(());
        }
    }
}

/// A response as the line sent on the wire.
fn response_line(response: &Response) -> io::Result<Vec<u8>> {
    let mut out = serde_json::to_vec(&Envelope::new(response)).map_err(io::Error::other)?;
    out.push(b'\n');
    Ok(out)
}

/// A response's `result` label: `ok` or its error code.
fn result_label(r: &Response) -> &'static str {
    match r {
        Response::Ok { .. } => "ok",
        Response::Err { error, .. } => error.code.as_str(),
    }
}

/// Parses and runs one request; returns its op (`unknown` if it did not parse) and response.
async fn handle_line(line: &[u8], caller: &Caller, server: &Server) -> (&'static str, Response) {
    match parse_request(line) {
        Ok((request, id)) => {
            let op = request.op();
            if let Some(answer) = read_off_engine(&request, caller, server).await {
                return (op, response(answer));
            }
            (
                op,
                run_with_id(
                    request,
                    id,
                    caller.clone(),
                    &server.engine,
                    Some(&server.metrics),
                    None,
                )
                .await,
            )
        }
        Err(error) => ("unknown", Response::Err { ok: false, error }),
    }
}

/// A read the caller may make, answered by the reader (never waiting for the engine). A read
/// the access rules refuse goes to the engine, which refuses and audits it as any other
/// request; so does every read when the reader is not running.
async fn read_off_engine(
    request: &Request,
    caller: &Caller,
    server: &Server,
) -> Option<Result<Reply, Refusal>> {
    let reader = server.reader.as_ref()?;
    if !super::queries::is_read(request) || server.access.check(caller, request, None).is_err() {
        return None;
    }
    reader.answer(request.clone()).await
}

/// The response for an answer: a refusal becomes the protocol's error body here, the one
/// place.
pub fn response(answer: Result<Reply, Refusal>) -> Response {
    match answer {
        Ok(reply) => Response::ok(reply),
        Err(refusal) => Response::Err {
            ok: false,
            error: refusal.to_body(),
        },
    }
}

/// Hands a request from `caller` to the engine and waits for its answer (also used by the
/// CrowdSec bouncer, as the daemon).
pub async fn run(request: Request, caller: Caller, engine: &SyncSender<Command>) -> Response {
    run_with_id(request, None, caller, engine, None, None).await
}

/// [`run`], and when the request is accepted and in force, the boot-clock time its kernel
/// entries were written goes to `in_kernel` (before the answer, which waits for the store).
pub async fn run_timed(
    request: Request,
    caller: Caller,
    engine: &SyncSender<Command>,
    in_kernel: oneshot::Sender<crate::time::BootNs>,
) -> Response {
    run_with_id(request, None, caller, engine, None, Some(in_kernel)).await
}

/// [`run`] for a request the client named with `id` (a duplicate is answered, not applied);
/// with `metrics`, the request counts as waiting from the moment it is in the engine's queue
/// until its answer.
async fn run_with_id(
    request: Request,
    id: Option<RequestId>,
    caller: Caller,
    engine: &SyncSender<Command>,
    metrics: Option<&Metrics>,
    in_kernel: Option<oneshot::Sender<crate::time::BootNs>>,
) -> Response {
    let (tx, rx) = oneshot::channel();
    let engine = engine.clone();
    let command = Command {
        request: super::engine::Ask::Client(request),
        caller,
        id,
        replay: None,
        reply: tx,
        in_kernel,
    };
    // The engine's queue is bounded: waiting for room is back-pressure, not an error. With room
    // (the usual case) the request goes in from here, without a hop to a blocking thread and
    // back, which a trigger would wait for.
    let sent = match engine.try_send(command) {
        Ok(()) => Ok(true),
        Err(TrySendError::Disconnected(_)) => Ok(false),
        Err(TrySendError::Full(command)) => {
            tokio::task::spawn_blocking(move || engine.send(command).is_ok()).await
        }
    };
    if !matches!(sent, Ok(true)) {
        // The engine is gone, before it took the request: nothing was applied.
        return Response::err(ErrorCode::Unavailable, SHUTTING_DOWN);
    }
    // Counted up after the send and down after the answer, in this one task: never below 0.
    let _waiting = metrics.map(Metrics::engine_waiting);
    match rx.await {
        Ok(answer) => response(answer),
        // The engine took the request and ended before answering (it died in that round):
        // it may or may not have been applied, so it must not be replayed blindly.
        Err(_) => Response::err(ErrorCode::Internal, STOPPED),
    }
}
