//! The control socket: newline-delimited JSON requests in, one response per request out.
//!
//! Access: the socket file is mode 0660, owned by root and the configured group; each
//! connection's peer credentials are checked again (root, or a member of that group).

use std::{
    ffi::CString,
    io,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::{Arc, mpsc::SyncSender},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::oneshot,
};

use nix::unistd::{Gid, Group, Uid, User, getgrouplist};

use super::engine::Command;
use crate::{
    metrics::Metrics,
    protocol::{Envelope, ErrorBody, ErrorCode, MAX_LINE, PROTOCOL_VERSION, Reply, Request, Response},
};

/// Who may talk to the daemon.
#[derive(Clone, Copy, Debug)]
pub struct Access {
    /// The group allowed besides root.
    pub gid: Option<u32>,
}

/// Resolves a group name to its id.
pub fn group_id(name: &str) -> anyhow::Result<u32> {
    match Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => anyhow::bail!("no group named `{name}` (create it with `groupadd {name}`, or unset socket_group)"),
        Err(e) => anyhow::bail!("looking up group `{name}`: {e}"),
    }
}

/// Binds the socket, refusing to steal it from a daemon that still answers.
pub async fn bind(path: &Path, access: Access) -> anyhow::Result<UnixListener> {
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = access.gid {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    Ok(listener)
}

/// Accepts connections until the engine goes away. `crowdsec` is the bouncer's state, added to
/// status answers.
pub async fn serve(
    listener: UnixListener,
    engine: SyncSender<Command>,
    access: Access,
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
        tokio::spawn(async move {
            if let Err(e) = connection(stream, engine, access, &metrics, crowdsec.as_ref()).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}

/// Root, or a peer whose group or supplementary groups include the socket group.
async fn peer_allowed(stream: &UnixStream, access: Access) -> bool {
    let Ok(cred) = stream.peer_cred() else { return false };
    if cred.uid() == 0 {
        return true;
    }
    let Some(gid) = access.gid else { return false };
    if cred.gid() == gid {
        return true;
    }
    // The group database may be remote (NSS: LDAP, sssd): look it up off the runtime's threads.
    let (uid, primary) = (cred.uid(), cred.gid());
    tokio::task::spawn_blocking(move || member_of(uid, primary, gid))
        .await
        .unwrap_or(false)
}

/// Whether user `uid`, logged in with group `primary`, has `gid` among its groups
/// (getgrouplist(3): the group database, as a login would set them).
fn member_of(uid: u32, primary: u32, gid: u32) -> bool {
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return false;
    };
    let Ok(name) = CString::new(user.name) else { return false };
    getgrouplist(&name, Gid::from_raw(primary)).is_ok_and(|groups| groups.contains(&Gid::from_raw(gid)))
}

async fn connection(
    stream: UnixStream,
    engine: SyncSender<Command>,
    access: Access,
    metrics: &Metrics,
    crowdsec: Option<&crate::crowdsec::StatusHandle>,
) -> io::Result<()> {
    let allowed = peer_allowed(&stream, access).await;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Ok(());
        }
        let (op, response) = if !allowed {
            ("unknown", Response::err(
                ErrorCode::PermissionDenied,
                "permission denied: the control socket is for root and the daemon's socket_group",
            ))
        } else if line.len() > MAX_LINE {
            ("unknown", Response::err(ErrorCode::InvalidRequest, format!("request longer than {MAX_LINE} bytes")))
        } else {
            let (op, mut response) = handle_line(&line, &engine).await;
            if let (Response::Ok { result: Reply::Status(status), .. }, Some(cs)) = (&mut response, crowdsec) {
                status.crowdsec = Some(cs.lock().expect("status lock").clone());
            }
            (op, response)
        };
        metrics.request(op, result_label(&response));
        let mut out = serde_json::to_vec(&Envelope {
            v: PROTOCOL_VERSION,
            body: response,
        })
        .map_err(io::Error::other)?;
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
async fn handle_line(line: &[u8], engine: &SyncSender<Command>) -> (&'static str, Response) {
    match parse(line) {
        Ok(request) => (request.op(), run(request, engine).await),
        Err(error) => ("unknown", Response::Err { ok: false, error }),
    }
}

fn parse(line: &[u8]) -> Result<Request, ErrorBody> {
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
    serde_json::from_value(value).map_err(|e| invalid(format!("invalid request: {e}")))
}

/// Hands a request to the engine and waits for its answer (also used by the CrowdSec bouncer).
pub async fn run(request: Request, engine: &SyncSender<Command>) -> Response {
    let (tx, rx) = oneshot::channel();
    let engine = engine.clone();
    let command = Command { request, reply: tx };
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
    fn group_membership_comes_from_the_group_database() {
        // root's login groups (getgrouplist with its primary group) include group 0.
        assert!(member_of(0, 0, 0));
        // The primary group passed in counts, as for a login.
        assert!(member_of(0, 4242, 4242));
        // A uid with no user entry is a member of nothing.
        assert!(!member_of(0x7fff_0000, 0, 0));
    }

    #[test]
    fn an_unknown_group_name_says_how_to_fix_it() {
        let err = group_id("enforcer-no-such-group").unwrap_err().to_string();
        assert!(err.contains("groupadd enforcer-no-such-group"), "{err}");
        assert_eq!(group_id("root").unwrap(), 0);
    }
}
