//! Control requests from an Apache child to the push daemon: the self-test endpoints
//! `<base>/test/…` and `<base>/metrics` are answered by the daemon, the only process that sees
//! Redis, so every answer reflects the one subscription and the one set of counters.
//!
//! On the daemon socket a control connection starts with a [`ControlFrame`] instead of a
//! [`super::handoff::Hello`] (it has no top-level `engine`, so a daemon that does not know
//! control frames refuses it as a bad Hello):
//! 1. child → daemon `{"protocol": P, "control": {"engine": N, "config": "<fingerprint>",
//!    "method": "GET", "path": "test/cookie", "token": "…"}}` (JSON frame);
//! 2. daemon → child `{"status": 200, "body": "…"}` (JSON frame, body at most [`MAX_BODY`]
//!    bytes), then the daemon closes.
//!
//! The child waits at most [`CONTROL_TIMEOUT`] (below the self-test's 30 s HTTP timeout); the
//! engine bounds each Nextcloud and Redis call of a test request well below that.

use super::{decode_json, handoff, read_frame, Deadline, WireError, PROTOCOL};
use nextcloud_push_engine::health::LinkState;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a child waits for the daemon's answer (connect included).
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(25);
/// Largest response body the daemon sends (longer ones are cut at a character boundary).
pub const MAX_BODY: usize = 8 * 1024;
/// Largest `token` header forwarded (the self-test's is 32 characters).
pub const MAX_TOKEN: usize = 512;
/// Largest path forwarded.
pub const MAX_PATH: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlFrame {
    pub protocol: u32,
    pub control: ControlRequest,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRequest {
    /// The engine (vhost configuration) the request is for, as in a Hello.
    pub engine: u32,
    /// That engine's configuration fingerprint as the child knows it (refused on mismatch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    pub method: String,
    /// `test/<route>` or `metrics`.
    pub path: String,
    /// The request's `token` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlResponse {
    pub status: u16,
    pub body: String,
}

impl ControlResponse {
    /// A response; a body longer than [`MAX_BODY`] is cut at a character boundary.
    pub fn new(status: u16, body: impl Into<String>) -> ControlResponse {
        let mut body = body.into();
        if body.len() > MAX_BODY {
            let mut cut = MAX_BODY;
            while !body.is_char_boundary(cut) {
                cut -= 1;
            }
            body.truncate(cut);
        }
        ControlResponse { status, body }
    }

    /// What the daemon answers while it stops, or for a request it cannot route.
    pub fn unavailable() -> ControlResponse {
        ControlResponse::new(503, "Push service temporarily unavailable\n")
    }
}

/// `path` of the daemon-wide status request (`server-status`): any engine, no fingerprint.
pub const STATUS_PATH: &str = "status";

/// The daemon's answer to [`STATUS_PATH`] (the body, as JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub version: String,
    pub uptime_secs: u64,
    /// The Apache server the daemon belongs to (`DaemonSetup::server_label`).
    #[serde(default)]
    pub server: String,
    /// Sessions by transport: handed-off plain HTTP, handed-off TLS, bridged by a worker.
    pub plain: usize,
    pub tls: usize,
    pub bridged: usize,
    pub engines: Vec<EngineStatus>,
}

/// One Nextcloud instance (engine) in a [`DaemonStatus`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStatus {
    pub nextcloud_url: String,
    pub users: u64,
    pub connections: u64,
    pub events: u64,
    pub messages: u64,
    pub redis: LinkState,
    pub database: Option<LinkState>,
}

/// The control request in a first frame, if it is one.
pub fn parse(payload: &[u8]) -> Option<ControlFrame> {
    serde_json::from_slice::<ControlFrame>(payload).ok()
}

/// Child side: sends `request` and waits for the answer, all within `timeout`.
pub fn ask(
    socket: &Path,
    request: &ControlRequest,
    timeout: Duration,
) -> Result<ControlResponse, WireError> {
    if request.path.len() > MAX_PATH || request.token.as_ref().is_some_and(|t| t.len() > MAX_TOKEN)
    {
        return Ok(ControlResponse::new(400, "Request header or path too long"));
    }
    let deadline = Deadline::after(timeout);
    let connect_by = Instant::now() + handoff::ASK_TIMEOUT.min(timeout);
    let frame = ControlFrame { protocol: PROTOCOL, control: request.clone() };
    let stream = super::open(socket, connect_by, &deadline, &frame)?;
    let payload = read_frame(&stream).map_err(|e| deadline.answer_error(e))?;
    decode_json(&payload, "control answer")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::encode_json;

    pub(crate) fn request(path: &str) -> ControlRequest {
        ControlRequest {
            engine: 0,
            config: Some("fp".into()),
            method: "GET".into(),
            path: path.into(),
            token: Some("t".into()),
        }
    }

    #[test]
    fn frames_are_not_hellos_and_back() {
        let frame = ControlFrame { protocol: PROTOCOL, control: request("test/cookie") };
        let bytes = encode_json(&frame);
        assert_eq!(parse(&bytes[4..]), Some(frame));
        // A daemon that only knows Hellos refuses a control frame (no top-level engine).
        assert!(serde_json::from_slice::<handoff::Hello>(&bytes[4..]).is_err());
        // And a Hello is never taken for a control frame.
        let hello = encode_json(&handoff::Hello::new(0, None));
        assert_eq!(parse(&hello[4..]), None);
    }

    #[test]
    fn long_bodies_are_cut_at_a_char_boundary() {
        let r = ControlResponse::new(200, "é".repeat(MAX_BODY));
        assert!(r.body.len() <= MAX_BODY);
        assert!(r.body.chars().all(|c| c == 'é'));
    }

    #[test]
    fn oversized_requests_are_answered_locally() {
        let mut r = request("test/cookie");
        r.token = Some("x".repeat(MAX_TOKEN + 1));
        let answer = ask(Path::new("/nonexistent.sock"), &r, Duration::from_millis(100)).unwrap();
        assert_eq!(answer.status, 400);
    }

    #[test]
    fn no_daemon_is_a_connect_error() {
        let e = ask(
            Path::new("/nonexistent-ncp.sock"),
            &request("metrics"),
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(matches!(e, WireError::Connect { .. }), "{e}");
    }
}
