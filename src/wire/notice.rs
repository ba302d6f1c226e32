//! Stop notices: one byte from the Apache parent to the push daemon over a socketpair made at
//! the daemon's spawn, and the daemon's one-byte answer; also the reopened error logs ([`LOGS`]) (docs/internals.md, "Stop notices").
//! The parent's side is the signal wrapper in `apache::stop_notice`; the daemon's is its accept
//! loop.

use std::time::Duration;

/// `apachectl stop` (SIGTERM/SIGINT): close every session; the parent waits for [`DONE`].
pub const STOP: u8 = b'T';
/// `apachectl graceful-stop` (SIGWINCH): close every session; the parent does not wait.
pub const GRACEFUL_STOP: u8 = b'W';
/// `apachectl restart` (SIGHUP): close the bridged sessions only; the parent waits for [`DONE`].
pub const HARD_RESTART: u8 = b'R';
/// After a graceful or hard restart that keeps the daemon: `[LOGS, slot (u16, big-endian)]`
/// with one descriptor attached (`SCM_RIGHTS`), a reopened error log that replaces the daemon's
/// copy (slot 0: the main `ErrorLog`; slot `i + 1`: engine `i`'s own). No answer.
pub const LOGS: u8 = b'L';
/// The daemon's answer: the sessions concerned are closed (or [`ACK_AFTER`] has passed).
pub const DONE: u8 = b'A';

/// How long the parent's signal handler waits for [`DONE`].
pub const PARENT_WAIT: Duration = Duration::from_millis(3000);
/// The daemon answers when every session concerned has ended, or after this long, whichever
/// comes first (below [`PARENT_WAIT`]).
pub const ACK_AFTER: Duration = Duration::from_millis(2500);
const _: () = assert!(ACK_AFTER.as_millis() < PARENT_WAIT.as_millis());
