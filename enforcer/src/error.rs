//! Showing an error with its causes.
//!
//! Our error types follow aya's rule: a variant's message says what failed, and the cause is its
//! `#[source]`, never repeated in the message. Whoever shows an error to a person (the control
//! socket's error body, a log line, the CLI through anyhow's `{:#}`) therefore walks the chain;
//! [`Chain`] is that walk for everything that is not anyhow.

use std::{error::Error, fmt};

/// Displays an error and each of its causes, outermost first: `a: b: c`. Use it wherever an
/// error is logged (`error = %Chain(&e)`) or turned into text for someone to read.
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn Error + 'a));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use std::{io, path::PathBuf};

    use aya::{maps::MapError, programs::ProgramError, sys::SyscallError};

    use super::*;
    use crate::{
        client::ClientError,
        datapath::{DatapathError, MapsError},
        hooks::line_reader::LineError,
        install,
        metrics::http::EndpointError,
    };

    /// The cause every case below carries: `Permission denied (os error 13)`.
    fn cause() -> io::Error {
        io::Error::from_raw_os_error(libc::EACCES)
    }

    fn syscall() -> SyscallError {
        SyscallError {
            call: "bpf_map_update_elem",
            io_error: cause(),
        }
    }

    /// One of each error type whose message names an operation and whose cause is its source.
    fn cases() -> Vec<Box<dyn Error + Send + Sync>> {
        let path = PathBuf::from("/sys/fs/bpf/enforcer");
        vec![
            Box::new(MapsError::Kernel {
                op: "insert",
                map: "BLOCK_V4",
                source: MapError::SyscallError(syscall()),
            }),
            Box::new(MapsError::Open {
                path: path.display().to_string(),
                source: MapError::SyscallError(syscall()),
            }),
            Box::new(DatapathError::Attach {
                iface: "veth0".into(),
                mode: crate::datapath::XdpModeRequest::Auto,
                native_refused: Box::default(),
                source: ProgramError::SyscallError(syscall()),
            }),
            Box::new(DatapathError::Load(aya::EbpfError::FileError {
                path: path.clone(),
                error: cause(),
            })),
            Box::new(DatapathError::Program(
                ProgramError::SyscallError(syscall()),
            )),
            Box::new(DatapathError::Io {
                action: "creating",
                path: path.clone(),
                source: cause(),
            }),
            Box::new(DatapathError::Link {
                iface: "veth0".into(),
                source: aya::programs::links::LinkError::SyscallError(syscall()),
            }),
            Box::new(LineError::Io(cause())),
            Box::new(EndpointError::Bind {
                addr: "127.0.0.1:9100".parse().unwrap(),
                source: cause(),
            }),
            Box::new(ClientError::Io {
                path: path.clone(),
                source: cause(),
            }),
            Box::new(install::wazuh::InstallError::Io {
                what: "writing",
                path: path.clone(),
                source: cause(),
            }),
            Box::new(install::fail2ban::InstallError::Io {
                what: "writing",
                path,
                source: cause(),
            }),
        ]
    }

    #[test]
    fn a_chain_names_every_cause_exactly_once() {
        for e in cases() {
            let text = Chain(&*e).to_string();
            let mut cause = e.source();
            assert!(cause.is_some(), "{text}");
            while let Some(c) = cause {
                assert_eq!(text.matches(&c.to_string()).count(), 1, "`{c}` in {text}");
                cause = c.source();
            }
            // And anyhow, as the CLI prints it, agrees.
            assert_eq!(format!("{:#}", anyhow::Error::from_boxed(e)), text);
        }
    }

    #[test]
    fn a_chain_of_an_error_without_a_cause_is_its_message() {
        let e = io::Error::other("disk full");
        assert_eq!(Chain(&e).to_string(), "disk full");
        let outer = LineError::Io(e);
        assert!(
            Chain(&outer).to_string().ends_with(": disk full"),
            "{}",
            Chain(&outer)
        );
    }
}
