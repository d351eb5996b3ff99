//! A blocking client for the control socket (the CLI and the hooks use it), and [`deliver`]:
//! the one "call the daemon or spool" path every trigger takes.

use std::{
    io::{self, BufRead as _, BufReader},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::Duration,
};

use crate::protocol::{
    Envelope, ErrorBody, ErrorCode, PROTOCOL_VERSION, Reply, Request, RequestId, Response,
};

/// Exit code when the daemon cannot be reached.
pub const EXIT_NOT_RUNNING: i32 = 3;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "the enforcer daemon is not running (no socket at {0}); start it with `enforcer daemon --iface IFACE` or `systemctl start enforcer`"
    )]
    NotRunning(PathBuf),
    /// The socket exists but we may not use it.
    #[error("permission denied on {0}: run as root or as a member of the daemon's socket_group")]
    PermissionDenied(PathBuf),
    /// The daemon answered with an error.
    #[error("{}", .0.message)]
    Daemon(ErrorBody),
    /// The request was sent, but no answer came: it may or may not have been applied.
    #[error(
        "no answer from the daemon at {path} ({why}) after the request was sent; it may or may not have been applied (check `enforcer list`)"
    )]
    NoAnswer {
        /// Socket.
        path: PathBuf,
        /// What happened.
        why: String,
    },
    /// The connection failed mid-way.
    #[error("talking to the daemon at {path} failed")]
    Io {
        /// Socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

impl ClientError {
    /// Why a spooled request was spooled, for the caller's message.
    pub fn spool_reason(&self) -> &'static str {
        match self {
            Self::Daemon(_) => "the daemon is unavailable (stopping, or at its connection cap)",
            Self::NoAnswer { .. } => {
                "the daemon did not answer in time (it may have applied the request: the spooled copy carries the same request id and is applied only if it did not)"
            }
            Self::NotRunning(_) => "the daemon is not running",
            Self::Io { .. } | Self::PermissionDenied(_) => "the daemon could not be reached",
        }
    }

    /// The documented exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::NotRunning(_) => EXIT_NOT_RUNNING,
            Self::PermissionDenied(_) => ErrorCode::PermissionDenied.exit_code(),
            Self::Daemon(e) => e.code.exit_code(),
            // Connected, then the exchange failed: the daemon runs but did not answer.
            Self::Io { .. } | Self::NoAnswer { .. } => 1,
        }
    }
}

/// Writes all of `buf` to the daemon's socket with MSG_NOSIGNAL: the client commands die on
/// SIGPIPE (a closed stdout ends them quietly), but a daemon that closes the connection must be
/// an error the caller reports or spools, never a silent death. The socket's send timeout
/// applies as to `write`.
fn send_all(stream: &UnixStream, mut buf: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;

    use nix::sys::socket::{MsgFlags, send};
    while !buf.is_empty() {
        match send(stream.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A connection to the daemon.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    path: PathBuf,
}

impl Client {
    /// Connects, with `timeout` for every later read and write.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning(path.to_owned())
            }
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(path.to_owned()),
            _ => ClientError::Io {
                path: path.to_owned(),
                source: e,
            },
        })?;
        Self::over(stream, path, timeout)
    }

    /// Connects if the daemon's listen queue has room now (the usual case), without waiting;
    /// `None` otherwise, whatever the reason (the caller then connects as [`Client::connect`]
    /// does, and reports what that says).
    fn connect_at_once(path: &Path, timeout: Duration) -> Option<Self> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
        let addr = UnixAddr::new(path).ok()?;
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .ok()?;
        connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).ok()?;
        let stream = UnixStream::from(fd);
        stream.set_nonblocking(false).ok()?;
        Self::over(stream, path, timeout).ok()
    }

    /// A connection over `stream`, with `timeout` for every later read and write.
    fn over(stream: UnixStream, path: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let io_err = |source| ClientError::Io {
            path: path.to_owned(),
            source,
        };
        stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
        stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
        let writer = stream.try_clone().map_err(io_err)?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
            path: path.to_owned(),
        })
    }

    /// Sends one request and waits for its answer.
    pub fn call(&mut self, request: &Request) -> Result<Reply, ClientError> {
        self.call_as(request, None)
    }

    /// Sends one request under the id `id` (the daemon applies a write with a given id at most
    /// once) and waits for its answer.
    pub fn call_as(
        &mut self,
        request: &Request,
        id: Option<&RequestId>,
    ) -> Result<Reply, ClientError> {
        let io_err = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(&Envelope {
            v: PROTOCOL_VERSION,
            id: id.cloned(),
            body: request,
        })
        .map_err(|e| io_err(io::Error::other(e)))?;
        line.push(b'\n');
        send_all(&self.writer, &line).map_err(io_err)?;
        let mut answer = String::new();
        let n = self.reader.read_line(&mut answer).map_err(io_err)?;
        if n == 0 {
            return Err(io_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the daemon closed the connection",
            )));
        }
        let envelope: Envelope<Response> = serde_json::from_str(&answer)
            .map_err(|e| io_err(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        match envelope.body {
            Response::Ok { result, .. } => Ok(result),
            Response::Err { error, .. } => Err(ClientError::Daemon(error)),
        }
    }
}

/// What became of a request sent with [`deliver`].
#[derive(Debug)]
pub enum Delivery {
    /// The daemon answered.
    Reply(Reply),
    /// The daemon refused it.
    Refused(ErrorBody),
    /// It never reached the daemon and was spooled to `file`; the daemon applies it when it
    /// starts.
    Spooled {
        /// The spool file.
        file: PathBuf,
        /// Why the daemon was unreachable.
        why: ClientError,
    },
    /// It never reached the daemon, and spooling was not asked for (or failed: `spool_error`).
    Unreachable {
        /// Why.
        why: ClientError,
        /// Why spooling failed, when it was tried.
        spool_error: Option<io::Error>,
    },
    /// It may have reached the daemon but got no answer, or the exchange failed otherwise.
    Failed(ClientError),
}

/// Sends `request` with a hard deadline (the call runs on a helper thread, so even a connect
/// that blocks on a full listen backlog cannot hold the caller past `timeout`); when it never
/// reached the daemon and `spool_to` names a state directory, spools it there.
///
/// A request is spooled when it never reached the daemon, when the daemon answered
/// `unavailable` (shutting down, or at its connection cap: the request was not taken), and when
/// it was sent but no answer came in time (a hung, overloaded or crashed daemon): the request
/// may or may not have been applied, and the spooled copy under the same request id makes that
/// safe: the daemon applies the id once, whichever copy comes first, and answers the other as
/// a duplicate (so a trigger is lost neither to a crash before the commit nor applied twice).
/// An answer (a refusal included) is never spooled, nor is a permission error.
///
/// The attempt and the spooled entry carry the same request id, made here once: the call's
/// thread may still connect and deliver after the deadline (a connect stuck on a full listen
/// backlog), and then the daemon applies whichever comes first and answers the other as a
/// duplicate, so the trigger is never applied twice.
pub fn deliver(
    socket: &Path,
    request: &Request,
    timeout: Duration,
    spool_to: Option<&Path>,
) -> Delivery {
    deliver_as(socket, request, &RequestId::generate(), timeout, spool_to)
}

/// [`deliver`] under a given request id.
pub fn deliver_as(
    socket: &Path,
    request: &Request,
    id: &RequestId,
    timeout: Duration,
    spool_to: Option<&Path>,
) -> Delivery {
    let (reached, result) = call_with_deadline(socket, request, id, timeout);
    match result {
        Ok(reply) => Delivery::Reply(reply),
        Err(ClientError::Daemon(e)) if e.code != ErrorCode::Unavailable => Delivery::Refused(e),
        // Not a passing outage: spooling would only delay the same refusal.
        Err(e @ ClientError::PermissionDenied(_)) => Delivery::Failed(e),
        Err(why)
            if !reached
                || matches!(&why, ClientError::Daemon(_) | ClientError::NoAnswer { .. }) =>
        {
            match spool_to.map(|dir| crate::spool::write(dir, request, id)) {
                Some(Ok(file)) => Delivery::Spooled { file, why },
                Some(Err(e)) => Delivery::Unreachable {
                    why,
                    spool_error: Some(e),
                },
                None => Delivery::Unreachable {
                    why,
                    spool_error: None,
                },
            }
        }
        Err(e) => Delivery::Failed(e),
    }
}

/// One call with a deadline; returns whether the request may have reached the daemon.
fn call_with_deadline(
    socket: &Path,
    request: &Request,
    id: &RequestId,
    timeout: Duration,
) -> (bool, Result<Reply, ClientError>) {
    // The usual case: the daemon's listen queue has room, so nothing can hold the call in
    // connect, and it runs on this thread, each read and write bounded by `timeout` (the answer
    // is one short line). A trigger then does not wait for a thread to start.
    if let Some(mut client) = Client::connect_at_once(socket, timeout) {
        return match client.call_as(request, Some(id)) {
            // Written, then the exchange failed: it may have been applied.
            Err(ClientError::Io { source, .. }) => (
                true,
                Err(ClientError::NoAnswer {
                    path: socket.to_owned(),
                    why: source.to_string(),
                }),
            ),
            other => (true, other),
        };
    }
    let (tx, rx) = mpsc::channel();
    let (path, request, id) = (socket.to_owned(), request.clone(), id.clone());
    let written = Arc::new(AtomicBool::new(false));
    let written_by_call = written.clone();
    let spawned = std::thread::Builder::new()
        .name("daemon-call".into())
        .spawn(move || {
            // Set just before the request goes out (conservatively: a failed write counts too).
            let result = match Client::connect(&path, timeout) {
                Ok(mut c) => {
                    written_by_call.store(true, Ordering::SeqCst);
                    c.call_as(&request, Some(&id))
                }
                Err(e) => Err(e),
            };
            // The caller may have stopped waiting (its timeout): the answer is then not wanted.
            tx.send(result).ok();
        });
    let no_answer = |why: String| ClientError::NoAnswer {
        path: socket.to_owned(),
        why,
    };
    if let Err(e) = spawned {
        return (
            false,
            Err(ClientError::Io {
                path: socket.to_owned(),
                source: e,
            }),
        );
    }
    let result = match rx.recv_timeout(timeout + Duration::from_millis(250)) {
        Ok(result) => result,
        Err(_) if written.load(Ordering::SeqCst) => {
            Err(no_answer(format!("no answer within {timeout:?}")))
        }
        Err(_) => Err(ClientError::Io {
            path: socket.to_owned(),
            source: io::Error::new(
                io::ErrorKind::TimedOut,
                format!("could not connect within {timeout:?}"),
            ),
        }),
    };
    let reached = written.load(Ordering::SeqCst);
    match result {
        // Written, then the exchange failed: it may have been applied.
        Err(ClientError::Io { source, .. }) if reached => {
            (true, Err(no_answer(source.to_string())))
        }
        other => (reached, other),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead as _, BufReader, Write as _},
        os::{
            fd::{AsRawFd as _, OwnedFd},
            unix::net::UnixListener,
        },
        time::Instant,
    };

    use nix::{
        errno::Errno,
        sys::socket::{
            AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, connect, listen, socket,
        },
    };

    use super::*;
    use crate::{
        block::{Reason, Source},
        protocol::BlockRequest,
        spool::{self, Spooled},
    };

    fn unix_socket(flags: SockFlag) -> OwnedFd {
        socket(AddressFamily::Unix, SockType::Stream, flags, None).unwrap()
    }

    /// A listener whose backlog is full: a blocking connect to it waits until something is
    /// accepted (what a daemon too busy to accept looks like). Returns it and the fillers.
    fn full_listener(path: &Path) -> (UnixListener, Vec<OwnedFd>) {
        let listener = unix_socket(SockFlag::empty());
        let addr = UnixAddr::new(path).unwrap();
        bind(listener.as_raw_fd(), &addr).unwrap();
        listen(&listener, Backlog::new(0).unwrap()).unwrap();
        let mut fillers = Vec::new();
        loop {
            let filler = unix_socket(SockFlag::SOCK_NONBLOCK);
            match connect(filler.as_raw_fd(), &addr) {
                Ok(()) => fillers.push(filler),
                Err(Errno::EAGAIN) => break,
                Err(e) => panic!("filling the backlog: {e}"),
            }
            assert!(fillers.len() < 1000, "the backlog never filled");
        }
        (UnixListener::from(listener), fillers)
    }

    #[test]
    fn a_trigger_spooled_after_a_timed_out_connect_carries_the_id_its_late_delivery_carries() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("busy.sock");
        let state = dir.path().join("state");
        let (listener, fillers) = full_listener(&socket);
        let request = Request::Block(BlockRequest {
            target: "192.0.2.10".parse().unwrap(),
            ttl_secs: Some(600),
            permanent: false,
            source: Source::cli(),
            reason: Reason::default(),
            shadow: false,
            force: false,
            scope: Default::default(),
        });
        let Delivery::Spooled { file, .. } =
            deliver(&socket, &request, Duration::from_millis(200), Some(&state))
        else {
            panic!("a connect that timed out is spooled");
        };
        let spooled: Spooled = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let spooled_id = spooled.id.expect("the spooled entry has the attempt's id");
        assert_eq!(spool::pending(&state).unwrap(), vec![file]);
        // The daemon gets to its queue: the stuck connect goes through after all and delivers
        // the same request, under the same id, so the daemon applies it once.
        drop(fillers);
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let line = loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_millis(500)))
                        .unwrap();
                    let mut line = String::new();
                    if BufReader::new(stream)
                        .read_line(&mut line)
                        .is_ok_and(|n| n > 0)
                    {
                        break line;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
            assert!(Instant::now() < deadline, "the late delivery never came");
        };
        let late: Envelope<Request> = serde_json::from_str(&line).unwrap();
        assert_eq!(late.id, Some(spooled_id));
    }

    /// A daemon that answers one connection with `answer` (after reading the request line).
    fn fake_daemon(path: &Path, answer: &'static str) {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            use std::io::Read as _;
            let (mut s, _) = listener.accept().unwrap();
            let mut byte = [0u8; 1];
            while s.read(&mut byte).is_ok_and(|n| n == 1 && byte[0] != b'\n') {}
            s.write_all(answer.as_bytes()).unwrap();
        });
    }

    #[test]
    fn a_request_sent_but_never_answered_is_spooled_under_the_id_it_was_sent_with() {
        let dir = tempfile::tempdir().unwrap();
        let (socket, state) = (dir.path().join("dies.sock"), dir.path().join("state"));
        let listener = UnixListener::bind(&socket).unwrap();
        // A daemon that takes the request and dies before answering.
        let received = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).unwrap();
            line
        });
        let request = Request::Unblock {
            target: "192.0.2.10".parse().unwrap(),
            source: Some(Source::cli()),
            all: false,
            scope: Default::default(),
        };
        let delivery = deliver(&socket, &request, Duration::from_secs(5), Some(&state));
        let Delivery::Spooled { file, why } = delivery else {
            panic!("a request the daemon took but never answered is spooled: {delivery:?}");
        };
        assert!(matches!(why, ClientError::NoAnswer { .. }), "{why:?}");
        assert!(
            why.spool_reason().contains("did not answer in time"),
            "{}",
            why.spool_reason()
        );
        let sent: serde_json::Value = serde_json::from_str(&received.join().unwrap()).unwrap();
        let spooled: Spooled = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        assert_eq!(
            spooled.id.map(|i| i.to_string()).as_deref(),
            sent["request_id"].as_str(),
            "one id for the attempt and the copy"
        );
        assert!(
            matches!(spooled.request, Request::Unblock { all: false, .. }),
            "{:?}",
            spooled.request
        );
    }

    #[test]
    fn an_unavailable_daemon_is_spooled_as_one_not_running_and_a_refusal_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let block = Request::Block(BlockRequest {
            target: "192.0.2.9".parse().unwrap(),
            ttl_secs: Some(60),
            permanent: false,
            source: Source::cli(),
            reason: Reason::default(),
            shadow: false,
            force: false,
            scope: Default::default(),
        });
        let stopping = dir.path().join("stopping.sock");
        fake_daemon(
            &stopping,
            "{\"v\":1,\"ok\":false,\"error\":{\"code\":\"unavailable\",\"message\":\"the daemon is shutting down\"}}\n",
        );
        match deliver(&stopping, &block, Duration::from_secs(5), Some(&state)) {
            Delivery::Spooled { why, .. } => assert_eq!(why.exit_code(), EXIT_NOT_RUNNING),
            other => panic!("not spooled: {other:?}"),
        }
        let refusing = dir.path().join("refusing.sock");
        fake_daemon(
            &refusing,
            "{\"v\":1,\"ok\":false,\"error\":{\"code\":\"refused\",\"message\":\"no\"}}\n",
        );
        assert!(matches!(
            deliver(&refusing, &block, Duration::from_secs(5), Some(&state)),
            Delivery::Refused(_)
        ));
    }
}
