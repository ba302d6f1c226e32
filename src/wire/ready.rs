//! The readiness line from a freshly forked push daemon to the Apache parent, which waits for it
//! (bounded) in post_config: `OK <RLIMIT_NOFILE>\n` once the socket is bound and the engines
//! exist, or `ERR <message>` when startup failed (the parent then does not respawn the daemon
//! until the next restart).

use std::io::Write;
use std::os::fd::OwnedFd;

/// Descriptors the daemon keeps free for Redis, database and Nextcloud connections and for
/// accepting; it refuses handoffs beyond `RLIMIT_NOFILE` minus this.
pub const FD_RESERVE: u64 = 256;

/// How many sessions fit under a daemon's descriptor limit.
pub fn session_capacity(fd_limit: u64) -> u64 {
    fd_limit.saturating_sub(FD_RESERVE)
}

/// The daemon's end of the readiness pipe.
pub struct Ready(std::fs::File);

impl Ready {
    pub fn new(fd: OwnedFd) -> Ready {
        Ready(std::fs::File::from(fd))
    }

    /// The socket is bound and the engines exist: children may connect now. `fd_limit` (the
    /// daemon's RLIMIT_NOFILE) goes along, so the parent can say how many sessions fit. One
    /// write of less than PIPE_BUF bytes: the parent reads it whole.
    pub fn ok(mut self, fd_limit: u64) {
        let _ = self.0.write_all(format!("OK {fd_limit}\n").as_bytes());
    }

    /// Startup failed; the parent logs `msg` and does not respawn until the next restart.
    pub fn fail(mut self, msg: &str) {
        let _ = self.0.write_all(format!("ERR {msg}").as_bytes());
    }
}

/// What the parent has read from the pipe so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Report {
    /// Ready; the daemon's descriptor limit if it sent one.
    Ready { fd_limit: Option<u64> },
    /// Startup failed, with the daemon's message (complete once the pipe is at EOF).
    Failed(String),
    /// Nothing that means anything yet (at EOF: the daemon died before it could report).
    Nothing,
}

impl Report {
    pub fn parse(got: &[u8]) -> Report {
        let text = String::from_utf8_lossy(got);
        if let Some(rest) = text.strip_prefix("OK") {
            return Report::Ready { fd_limit: rest.trim().parse().ok() };
        }
        match text.strip_prefix("ERR ") {
            Some(msg) => Report::Failed(msg.to_owned()),
            None => Report::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports() {
        assert_eq!(Report::parse(b"OK 20000\n"), Report::Ready { fd_limit: Some(20000) });
        assert_eq!(Report::parse(b"OK"), Report::Ready { fd_limit: None });
        assert_eq!(Report::parse(b"ERR cannot bind"), Report::Failed("cannot bind".into()));
        assert_eq!(Report::parse(b""), Report::Nothing);
        assert_eq!(session_capacity(300), 44);
        assert_eq!(session_capacity(100), 0);
    }
}
