//! One line at a time from a pipe, with a deadline and a size limit.
//!
//! A hook runs inside another daemon's critical path (Wazuh's execd waits for it with no
//! timeout), so no read may block for long: each read first waits with poll(2) for what is left
//! of its deadline. Reading stops at the first newline; bytes that came after it stay buffered
//! for the next call, so a handshake's reply is never lost and stdin is never read to EOF.

use std::{
    io,
    os::fd::BorrowedFd,
    time::{Duration, Instant},
};

use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, PollTimeout, poll},
};

/// Why no line was read.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    /// The writer closed the pipe before sending anything.
    #[error("end of input before a line")]
    Eof,
    /// The line (with its newline) is longer than the limit.
    #[error("the line is longer than {0} bytes")]
    TooLong(usize),
    /// Nothing complete arrived in time.
    #[error("no complete line within {0:?}")]
    TimedOut(Duration),
    /// The read failed.
    #[error("reading failed")]
    Io(#[from] io::Error),
}

/// Reads lines from a file descriptor (a pipe or socket).
pub struct LineReader<'fd> {
    fd: BorrowedFd<'fd>,
    buf: Vec<u8>,
}

impl<'fd> LineReader<'fd> {
    /// Reads from `fd` (usually stdin).
    pub fn new(fd: BorrowedFd<'fd>) -> Self {
        Self {
            fd,
            buf: Vec::new(),
        }
    }

    /// The next line without its newline (and without a `\r` before it).
    ///
    /// `limit` counts the newline: a line of `limit` bytes plus `\n` is too long. A last line
    /// cut short by end of input is returned as it is, like fgets(3) does.
    pub fn read_line(&mut self, limit: usize, timeout: Duration) -> Result<Vec<u8>, LineError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                if i + 1 > limit {
                    return Err(LineError::TooLong(limit));
                }
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buf.len() >= limit {
                return Err(LineError::TooLong(limit));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.wait_readable(left)? {
                return Err(LineError::TimedOut(timeout));
            }
            let mut chunk = [0u8; 8192];
            let want = chunk.len().min(limit + 1 - self.buf.len());
            match nix::unistd::read(self.fd, &mut chunk[..want]) {
                Ok(0) if self.buf.is_empty() => return Err(LineError::Eof),
                Ok(0) => return Ok(std::mem::take(&mut self.buf)),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(e) => return Err(io::Error::from(e).into()),
            }
        }
    }

    /// Waits until the descriptor is readable (or closed); `false` on timeout.
    fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        let mut fds = [PollFd::new(self.fd, PollFlags::POLLIN)];
        // Round up so a sub-millisecond remainder still waits instead of spinning.
        let ms = timeout.as_micros().div_ceil(1000);
        let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, timeout) {
            Ok(0) => Ok(false),
            Ok(_) | Err(Errno::EINTR) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write as _,
        os::{fd::AsFd as _, unix::net::UnixStream},
    };

    use super::*;

    const T: Duration = Duration::from_secs(2);

    #[test]
    fn reads_one_line_and_keeps_what_follows() {
        let (mut w, r) = UnixStream::pair().unwrap();
        w.write_all(b"{\"a\":1}\r\nsecond\nthi").unwrap();
        let mut lines = LineReader::new(r.as_fd());
        assert_eq!(lines.read_line(64, T).unwrap(), b"{\"a\":1}");
        assert_eq!(lines.read_line(64, T).unwrap(), b"second");
        drop(w);
        assert_eq!(
            lines.read_line(64, T).unwrap(),
            b"thi",
            "a last line cut by EOF, like fgets"
        );
        assert!(matches!(lines.read_line(64, T), Err(LineError::Eof)));
    }

    #[test]
    fn the_limit_counts_the_newline() {
        let (mut w, r) = UnixStream::pair().unwrap();
        w.write_all(&[b'x'; 7]).unwrap();
        w.write_all(b"\n").unwrap();
        assert_eq!(LineReader::new(r.as_fd()).read_line(8, T).unwrap().len(), 7);

        let (mut w, r) = UnixStream::pair().unwrap();
        w.write_all(&[b'x'; 8]).unwrap();
        w.write_all(b"\n").unwrap();
        assert!(matches!(
            LineReader::new(r.as_fd()).read_line(8, T),
            Err(LineError::TooLong(8))
        ));
    }

    #[test]
    fn an_overlong_line_is_refused_without_waiting_for_its_end() {
        let (mut w, r) = UnixStream::pair().unwrap();
        let writer = std::thread::spawn(move || {
            // The reader closes its end before the whole megabyte is written: an error here is
            // expected.
            w.write_all(&vec![b'x'; 1 << 20]).ok();
        });
        let started = Instant::now();
        assert!(matches!(
            LineReader::new(r.as_fd()).read_line(65_536, T),
            Err(LineError::TooLong(_))
        ));
        assert!(started.elapsed() < T);
        drop(r);
        writer.join().unwrap();
    }

    #[test]
    fn a_silent_writer_times_out_instead_of_blocking() {
        let (_w, r) = UnixStream::pair().unwrap();
        let started = Instant::now();
        let err = LineReader::new(r.as_fd())
            .read_line(64, Duration::from_millis(100))
            .unwrap_err();
        assert!(matches!(err, LineError::TimedOut(_)), "{err}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_secs(1),
            "{took:?}"
        );
    }

    #[test]
    fn empty_input_is_eof() {
        let (w, r) = UnixStream::pair().unwrap();
        drop(w);
        assert!(matches!(
            LineReader::new(r.as_fd()).read_line(64, T),
            Err(LineError::Eof)
        ));
    }
}
