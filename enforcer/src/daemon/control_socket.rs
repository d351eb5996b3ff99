//! The control socket: newline-delimited JSON requests in, one response per request out.
//!
//! Access: the socket file is mode 0660, owned by root and the configured group. Each
//! connection's peer (SO_PEERCRED) is looked up once, as a [`Caller`], and may connect if the
//! access rules say so ([`AccessPolicy::may_connect`]); every request then carries that caller
//! to the engine, which checks it ([`crate::access`]).

use std::{io, path::Path, sync::{Arc, mpsc::SyncSender}};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::oneshot,
};

use nix::unistd::Group;

use super::engine::Command;
use crate::{
    access::{AccessPolicy, Caller},
    metrics::Metrics,
    protocol::{Envelope, ErrorBody, ErrorCode, MAX_LINE, PROTOCOL_VERSION, Reply, Request, RequestId, Response},
};

/// Resolves a group name to its id.
pub fn group_id(name: &str) -> anyhow::Result<u32> {
    match Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => anyhow::bail!("no group named `{name}` (create it with `groupadd {name}`, or unset socket_group)"),
        Err(e) => anyhow::bail!("looking up group `{name}`: {e}"),
    }
}

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

/// Accepts connections until the engine goes away. `crowdsec` is the bouncer's state, added to
/// status answers.
pub async fn serve(
    listener: UnixListener,
    engine: SyncSender<Command>,
    access: Arc<AccessPolicy>,
    metrics: Arc<Metrics>,
    crowdsec: Option<crate::crowdsec::StatusHandle>,
) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let engine = engine.clone();
        let metrics = metrics.clone();
        let crowdsec = crowdsec.clone();
        let access = access.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, engine, &access, &metrics, crowdsec.as_ref()).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

/// The peer, with its user name and login groups (looked up off the runtime's threads: the
/// user and group databases may be remote, NSS: LDAP, sssd). `None` if the kernel does not say.
async fn peer(stream: &UnixStream) -> Option<Caller> {
    let cred = stream.peer_cred().ok()?;
    let (uid, gid) = (cred.uid(), cred.gid());
    tokio::task::spawn_blocking(move || Caller::lookup(uid, gid)).await.ok()
}

async fn connection(
    stream: UnixStream,
    engine: SyncSender<Command>,
    access: &AccessPolicy,
    metrics: &Metrics,
    crowdsec: Option<&crate::crowdsec::StatusHandle>,
) -> io::Result<()> {
    let caller = peer(&stream).await.filter(|c| access.may_connect(c));
    let allowed = caller.is_some();
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Ok(());
        }
        let (op, response) = match &caller {
            None => ("unknown", Response::err(
                ErrorCode::PermissionDenied,
                "permission denied: the control socket is for root, the daemon's socket_group and the callers its [[access]] entries name",
            )),
            Some(_) if line.len() > MAX_LINE => {
                ("unknown", Response::err(ErrorCode::InvalidRequest, format!("request longer than {MAX_LINE} bytes")))
            }
            Some(caller) => {
                let (op, mut response) = handle_line(&line, caller, &engine).await;
                if let (Response::Ok { result: Reply::Status(status), .. }, Some(cs)) = (&mut response, crowdsec) {
                    status.crowdsec = Some(cs.lock().expect("status lock").clone());
                }
                (op, response)
            }
        };
        metrics.request(op, result_label(&response));
        let mut out = serde_json::to_vec(&Envelope::new(response)).map_err(io::Error::other)?;
        out.push(b'\n');
        write.write_all(&out).await?;
        if !allowed || line.len() > MAX_LINE {
            return Ok(());
        }
    }
}

/// A response's `result` label: `ok` or its error code.
fn result_label(r: &Response) -> &'static str {
    match r {
        Response::Ok { .. } => "ok",
        Response::Err { error, .. } => error.code.as_str(),
    }
}

/// Parses and runs one request; returns its op (`unknown` if it did not parse) and response.
async fn handle_line(line: &[u8], caller: &Caller, engine: &SyncSender<Command>) -> (&'static str, Response) {
    match parse(line) {
        Ok((request, id)) => (request.op(), run_with_id(request, id, caller.clone(), engine).await),
        Err(error) => ("unknown", Response::Err { ok: false, error }),
    }
}

/// A request line: the request, and its id when the client gave one.
fn parse(line: &[u8]) -> Result<(Request, Option<RequestId>), ErrorBody> {
    let invalid = |message: String| ErrorBody {
        code: ErrorCode::InvalidRequest,
        message,
    };
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| invalid(format!("not JSON: {e}")))?;
    match value.get("v").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(ErrorBody {
                code: ErrorCode::UnsupportedVersion,
                message: format!("protocol version {v} is not supported; this daemon speaks {PROTOCOL_VERSION}"),
            });
        }
        None => return Err(invalid("missing protocol version field `v`".into())),
    }
    let id = match value.get("request_id") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => {
            Some(s.parse::<RequestId>().map_err(|e| invalid(format!("invalid request_id: {e}")))?)
        }
        Some(other) => return Err(invalid(format!("invalid request_id {other}: it must be a string"))),
    };
    let request = serde_json::from_value(value).map_err(|e| invalid(format!("invalid request: {e}")))?;
    Ok((request, id))
}

/// Hands a request from `caller` to the engine and waits for its answer (also used by the
/// CrowdSec bouncer, as the daemon).
pub async fn run(request: Request, caller: Caller, engine: &SyncSender<Command>) -> Response {
    run_with_id(request, None, caller, engine).await
}

/// [`run`] for a request the client named with `id` (a duplicate is answered, not applied).
async fn run_with_id(request: Request, id: Option<RequestId>, caller: Caller, engine: &SyncSender<Command>) -> Response {
    let (tx, rx) = oneshot::channel();
    let engine = engine.clone();
    let command = Command {
        request,
        caller,
        id,
        replay: None,
        reply: tx,
    };
    // The engine's queue is bounded: waiting for room is back-pressure, not an error.
    let sent = tokio::task::spawn_blocking(move || engine.send(command).is_ok()).await;
    if !matches!(sent, Ok(true)) {
        return Response::err(ErrorCode::Internal, "the daemon is shutting down");
    }
    match rx.await {
        Ok(Ok(reply)) => Response::ok(reply),
        // The one place a refusal becomes the protocol's error body.
        Ok(Err(refusal)) => Response::Err {
            ok: false,
            error: refusal.to_body(),
        },
        Err(_) => Response::err(ErrorCode::Internal, "the daemon is shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_group_name_says_how_to_fix_it() {
        let err = group_id("enforcer-no-such-group").unwrap_err().to_string();
        assert!(err.contains("groupadd enforcer-no-such-group"), "{err}");
        assert_eq!(group_id("root").unwrap(), 0);
    }
}
