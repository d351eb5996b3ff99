//! A blocking client for the control socket (the CLI and the hooks use it).

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::protocol::{Envelope, ErrorBody, ErrorCode, PROTOCOL_VERSION, Reply, Request, Response};

/// Exit code when the daemon cannot be reached.
pub const EXIT_NOT_RUNNING: i32 = 3;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error("the enforcer daemon is not running (no socket at {0}); start it with `enforcer daemon --iface IFACE` or `systemctl start enforcer`")]
    NotRunning(PathBuf),
    /// The socket exists but we may not use it.
    #[error("permission denied on {0}: run as root or as a member of the daemon's socket_group")]
    PermissionDenied(PathBuf),
    /// The daemon answered with an error.
    #[error("{}", .0.message)]
    Daemon(ErrorBody),
    /// The connection failed mid-way.
    #[error("talking to the daemon at {path}: {source}")]
    Io {
        /// Socket.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

impl ClientError {
    /// The documented exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::NotRunning(_) => EXIT_NOT_RUNNING,
            Self::PermissionDenied(_) => ErrorCode::PermissionDenied.exit_code(),
            Self::Daemon(e) => e.code.exit_code(),
            // Connected, then the exchange failed: the daemon runs but did not answer.
            Self::Io { .. } => 1,
        }
    }
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
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning(path.to_owned()),
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied(path.to_owned()),
            _ => ClientError::Io {
                path: path.to_owned(),
                source: e,
            },
        })?;
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
        let io_err = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_vec(&Envelope {
            v: PROTOCOL_VERSION,
            body: request,
        })
        .map_err(|e| io_err(io::Error::other(e)))?;
        line.push(b'\n');
        self.writer.write_all(&line).map_err(io_err)?;
        let mut answer = String::new();
        let n = self.reader.read_line(&mut answer).map_err(io_err)?;
        if n == 0 {
            return Err(io_err(io::Error::new(io::ErrorKind::UnexpectedEof, "the daemon closed the connection")));
        }
        let envelope: Envelope<Response> =
            serde_json::from_str(&answer).map_err(|e| io_err(io::Error::new(io::ErrorKind::InvalidData, e)))?;
        match envelope.body {
            Response::Ok { result, .. } => Ok(result),
            Response::Err { error, .. } => Err(ClientError::Daemon(error)),
        }
    }
}
