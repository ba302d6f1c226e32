//! The protocol between Apache's processes and the push daemon, both sides of it (see
//! docs/internals.md, "Apache child ⇄ push daemon"). Safe code, no httpd types: the Apache side
//! (`src/apache/`) and the daemon (`src/daemon/`) each use it and never each other.
//!
//! - [`handoff`]: a WebSocket moves from an Apache child to the daemon (the client socket over
//!   `SCM_RIGHTS`, or, bridged, the plaintext relayed by the worker);
//! - [`control`]: a `<base>/test/…` or `<base>/metrics` request answered by the daemon;
//! - [`notice`]: the stop notices from the Apache parent and the daemon's answer;
//! - [`ready`]: the daemon's readiness line to the parent that forked it.
//!
//! Frames on the daemon socket are a `u32` little-endian length followed by that many payload
//! bytes (JSON, at most [`MAX_FRAME`]); this module has the one encoder, the one reader (blocking
//! and async) and the one connect-within-a-deadline that both sides use.

pub mod control;
pub mod handoff;
pub mod notice;
mod proptests;
pub mod ready;

pub use crate::error::WireError;

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bumped on any incompatible change; the daemon refuses other versions, and a changed
/// version restarts the daemon at the next graceful restart (it is part of the fingerprint).
pub const PROTOCOL: u32 = 3;
/// Largest JSON frame either side accepts.
pub const MAX_FRAME: usize = 16 * 1024;

/// `u32` little-endian length + payload.
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// One JSON frame.
pub fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    encode_frame(&serde_json::to_vec(value).unwrap_or_default())
}

/// The length announced by a frame header, checked against [`MAX_FRAME`].
pub fn frame_len(header: [u8; 4]) -> Result<usize, WireError> {
    let len = u32::from_le_bytes(header) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(WireError::Protocol(format!("frame length {len} out of range")));
    }
    Ok(len)
}

/// A frame's JSON payload as `T`; `what` names it in the error.
pub fn decode_json<T: DeserializeOwned>(payload: &[u8], what: &str) -> Result<T, WireError> {
    serde_json::from_slice(payload).map_err(|e| WireError::Protocol(format!("bad {what}: {e}")))
}

/// Reads exactly one frame (blocking) and returns its payload. Exact reads: nothing past the
/// frame is consumed.
pub fn read_frame(mut reader: impl Read) -> Result<Vec<u8>, WireError> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len)?;
    let mut payload = vec![0u8; frame_len(len)?];
    reader.read_exact(&mut payload)?;
    Ok(payload)
}

/// [`read_frame`] for the daemon's async streams.
pub async fn read_frame_async(mut reader: impl AsyncRead + Unpin) -> Result<Vec<u8>, WireError> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).await?;
    let mut payload = vec![0u8; frame_len(len)?];
    reader.read_exact(&mut payload).await?;
    Ok(payload)
}

/// Writes one JSON frame (blocking).
pub fn write_json<T: Serialize>(mut writer: impl Write, value: &T) -> Result<(), WireError> {
    writer.write_all(&encode_json(value))?;
    Ok(())
}

/// [`write_json`] for the daemon's async streams.
pub async fn write_json_async<T: Serialize>(
    mut writer: impl AsyncWrite + Unpin,
    value: &T,
) -> Result<(), WireError> {
    writer.write_all(&encode_json(value)).await?;
    Ok(())
}

/// The first frame of a connection to the daemon socket.
#[derive(Debug)]
pub enum Opening {
    Hello(handoff::Hello),
    Control(control::ControlFrame),
}

impl Opening {
    pub fn decode(payload: &[u8]) -> Result<Opening, WireError> {
        if let Some(frame) = control::parse(payload) {
            return Ok(Opening::Control(frame));
        }
        decode_json(payload, "hello").map(Opening::Hello)
    }
}

/// The time budget of one exchange with the daemon, as an Apache child sees it.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    at: Instant,
    /// The whole budget, for the error message.
    budget: Duration,
}

impl Deadline {
    pub fn after(budget: Duration) -> Deadline {
        Deadline { at: Instant::now() + budget, budget }
    }

    /// What is left; [`WireError::Timeout`] once nothing is.
    pub fn remaining(&self) -> Result<Duration, WireError> {
        self.at
            .checked_duration_since(Instant::now())
            .filter(|r| !r.is_zero())
            .ok_or(WireError::Timeout(self.budget))
    }

    /// Reading the daemon's answer failed: a timeout is [`WireError::Timeout`], the daemon
    /// closing without an answer is [`WireError::Refused`].
    pub fn answer_error(&self, e: WireError) -> WireError {
        match e {
            WireError::Io(io) => match io.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => WireError::Timeout(self.budget),
                ErrorKind::UnexpectedEof => WireError::Refused,
                _ => WireError::Io(io),
            },
            other => other,
        }
    }
}

/// Connects a blocking stream to the daemon's socket, giving up at `connect_by` (the listen
/// backlog may be full); the stream's reads and writes are then bounded by `deadline`.
pub fn connect(
    socket: &Path,
    connect_by: Instant,
    deadline: &Deadline,
) -> Result<UnixStream, WireError> {
    crate::sys::connect_with_deadline(socket, connect_by).map_err(|source| {
        if source.kind() == ErrorKind::TimedOut {
            WireError::Timeout(deadline.budget)
        } else {
            WireError::Connect { path: socket.display().to_string(), source }
        }
    })
}

/// Sends `request` as one JSON frame on a fresh connection and returns the connection for the
/// answer: the first steps of both the handoff and a control request.
fn open(
    socket: &Path,
    connect_by: Instant,
    deadline: &Deadline,
    request: &impl Serialize,
) -> Result<UnixStream, WireError> {
    let stream = connect(socket, connect_by, deadline)?;
    stream.set_write_timeout(Some(deadline.remaining()?))?;
    write_json(&stream, request)?;
    stream.set_read_timeout(Some(deadline.remaining()?))?;
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_both_ways() {
        let frame = encode_json(&serde_json::json!({"a": 1}));
        assert_eq!(frame_len(frame[..4].try_into().unwrap()).unwrap(), frame.len() - 4);
        let mut tail = frame.clone();
        tail.extend_from_slice(b"next");
        let mut reader = &tail[..];
        assert_eq!(read_frame(&mut reader).unwrap(), br#"{"a":1}"#);
        assert_eq!(reader, b"next", "nothing past the frame is consumed");
        let payload = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(read_frame_async(&frame[..]))
            .unwrap();
        assert_eq!(payload, br#"{"a":1}"#);
        assert!(read_frame(&[0u8, 0, 0, 0][..]).is_err());
        assert!(read_frame(&(MAX_FRAME as u32 + 1).to_le_bytes()[..]).is_err());
    }

    #[test]
    fn answer_errors() {
        let d = Deadline::after(Duration::from_secs(1));
        let eof = std::io::Error::from(ErrorKind::UnexpectedEof);
        assert!(matches!(d.answer_error(eof.into()), WireError::Refused));
        let slow = std::io::Error::from(ErrorKind::WouldBlock);
        assert!(matches!(d.answer_error(slow.into()), WireError::Timeout(_)));
        let gone = Deadline::after(Duration::ZERO);
        assert!(matches!(gone.remaining(), Err(WireError::Timeout(_))));
    }
}
