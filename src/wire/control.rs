//! Control requests from an Apache child to the push daemon (issue #4): the self-test endpoints
//! `<base>/test/…` and `<base>/metrics` are answered by the daemon, the only process that sees
//! Redis, so every answer reflects the one subscription and the one set of counters.
//!
//! On the daemon socket a control connection starts with a [`ControlFrame`] instead of a
//! [`crate::handoff::Hello`] (it has no top-level `engine`, so a daemon that does not know
//! control frames refuses it as a bad Hello):
//! 1. child → daemon `{"protocol": P, "control": {"engine": N, "config": "<fingerprint>",
//!    "method": "GET", "path": "test/cookie", "token": "…"}}` (JSON frame, see
//!    [`crate::handoff::encode_frame`]);
//! 2. daemon → child `{"status": 200, "body": "…"}` (JSON frame, body at most [`MAX_BODY`]
//!    bytes), then the daemon closes.
//!
//! The child waits at most [`CONTROL_TIMEOUT`] (below the self-test's 30 s HTTP timeout); the
//! engine bounds each Nextcloud and Redis call of a test request well below that.

use crate::apache::unix;
use crate::handoff::{self, HandoffError};
use nextcloud_push_engine::Engine;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

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
    fn new(status: u16, body: impl Into<String>) -> ControlResponse {
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
) -> Result<ControlResponse, HandoffError> {
    if request.path.len() > MAX_PATH || request.token.as_ref().is_some_and(|t| t.len() > MAX_TOKEN)
    {
        return Ok(ControlResponse::new(400, "Request header or path too long"));
    }
    let deadline = Instant::now() + timeout;
    let connect_deadline = Instant::now() + handoff::ASK_TIMEOUT.min(timeout);
    let stream = unix::connect_with_deadline(socket, connect_deadline).map_err(|source| {
        if source.kind() == std::io::ErrorKind::TimedOut {
            HandoffError::Timeout(timeout)
        } else {
            HandoffError::Connect { path: socket.display().to_string(), source }
        }
    })?;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|r| !r.is_zero())
            .ok_or(HandoffError::Timeout(timeout))
    };
    let frame = ControlFrame { protocol: handoff::PROTOCOL, control: request.clone() };
    stream.set_write_timeout(Some(remaining()?))?;
    (&stream).write_all(&handoff::encode_json(&frame))?;
    let timed_out = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            HandoffError::Timeout(timeout)
        }
        std::io::ErrorKind::UnexpectedEof => HandoffError::Refused,
        _ => HandoffError::Io(e),
    };
    stream.set_read_timeout(Some(remaining()?))?;
    let mut len = [0u8; 4];
    (&stream).read_exact(&mut len).map_err(timed_out)?;
    let mut payload = vec![0u8; handoff::frame_len(len)?];
    stream.set_read_timeout(Some(remaining()?))?;
    (&stream).read_exact(&mut payload).map_err(timed_out)?;
    serde_json::from_slice(&payload)
        .map_err(|e| HandoffError::Protocol(format!("bad control answer: {e}")))
}

/// Daemon side: answers one control request on `stream` and closes it.
pub async fn serve(
    mut stream: tokio::net::UnixStream,
    frame: ControlFrame,
    engines: &[Arc<Engine>],
    prints: &[String],
    shutting_down: bool,
) -> Result<(), HandoffError> {
    let response = if shutting_down {
        ControlResponse::new(503, "Push service temporarily unavailable\n")
    } else {
        answer(frame, engines, prints).await
    };
    stream.write_all(&handoff::encode_json(&response)).await?;
    stream.shutdown().await?;
    Ok(())
}

/// The answer to a control request (the engine does the work).
pub async fn answer(
    frame: ControlFrame,
    engines: &[Arc<Engine>],
    prints: &[String],
) -> ControlResponse {
    let request = frame.control;
    if frame.protocol != handoff::PROTOCOL {
        return ControlResponse::new(503, "Push service temporarily unavailable\n");
    }
    let Some(engine) = engines.get(request.engine as usize) else {
        return ControlResponse::new(503, "Push service temporarily unavailable\n");
    };
    if let Some(config) = &request.config {
        if prints.get(request.engine as usize) != Some(config) {
            return ControlResponse::new(503, "Push service temporarily unavailable\n");
        }
    }
    if request.path == "metrics" {
        return ControlResponse::new(200, engine.metrics().to_prometheus_with_help());
    }
    let Some(route) = request.path.strip_prefix("test/") else {
        return ControlResponse::new(404, "");
    };
    let answer = engine.test_request(&request.method, route, request.token.as_deref()).await;
    ControlResponse::new(answer.status, answer.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str) -> ControlRequest {
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
        let frame = ControlFrame { protocol: handoff::PROTOCOL, control: request("test/cookie") };
        let bytes = handoff::encode_json(&frame);
        assert_eq!(parse(&bytes[4..]), Some(frame));
        // A daemon that only knows Hellos refuses a control frame (no top-level engine).
        assert!(serde_json::from_slice::<handoff::Hello>(&bytes[4..]).is_err());
        // And a Hello is never taken for a control frame.
        let hello = handoff::encode_json(&handoff::Hello::new(0, None));
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

    fn engine() -> Arc<Engine> {
        // Nothing listens on port 9; metrics need neither Redis nor Nextcloud.
        let config = nextcloud_push_engine::EngineConfig::load(
            None,
            &nextcloud_push_engine::Overrides {
                nextcloud_url: Some("http://127.0.0.1:9".into()),
                redis_url: Some("redis://127.0.0.1:9/0".into()),
                ..Default::default()
            },
        )
        .unwrap();
        Engine::new(config).unwrap()
    }

    /// Child (`ask`, blocking) ⇄ daemon (`parse` + `serve`) over a real Unix socket.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trip_over_a_unix_socket() {
        let engines = vec![engine()];
        let prints: Vec<String> = engines.iter().map(|e| e.config().fingerprint()).collect();
        let path = std::env::temp_dir().join(format!("ncp-control-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (daemon_engines, daemon_prints) = (engines.clone(), prints.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                use tokio::io::AsyncReadExt;
                let mut len = [0u8; 4];
                stream.read_exact(&mut len).await.unwrap();
                let mut payload = vec![0u8; handoff::frame_len(len).unwrap()];
                stream.read_exact(&mut payload).await.unwrap();
                let frame = parse(&payload).expect("a control frame");
                serve(stream, frame, &daemon_engines, &daemon_prints, false).await.unwrap();
            }
        });
        let ask_path = path.clone();
        let good = ControlRequest { config: Some(prints[0].clone()), ..request("metrics") };
        let answers = tokio::task::spawn_blocking(move || {
            let timeout = Duration::from_secs(5);
            let metrics = ask(&ask_path, &good, timeout).unwrap();
            let other =
                ask(&ask_path, &ControlRequest { path: "other".into(), ..good.clone() }, timeout)
                    .unwrap();
            let stale = ask(
                &ask_path,
                &ControlRequest { config: Some("old".into()), ..good.clone() },
                timeout,
            )
            .unwrap();
            let unknown =
                ask(&ask_path, &ControlRequest { engine: 3, ..good.clone() }, timeout).unwrap();
            let test =
                ask(&ask_path, &ControlRequest { path: "test/nope".into(), ..good }, timeout)
                    .unwrap();
            (metrics, other, stale, unknown, test)
        })
        .await
        .unwrap();
        let _ = std::fs::remove_file(&path);
        let (metrics, other, stale, unknown, test) = answers;
        assert_eq!(metrics.status, 200);
        assert!(
            metrics.body.contains("# TYPE active_connection_count gauge\n"),
            "{}",
            metrics.body
        );
        assert_eq!((other.status, other.body.as_str()), (404, ""));
        assert_eq!(stale.status, 503, "a child of an older configuration");
        assert_eq!(unknown.status, 503);
        assert_eq!((test.status, test.body.as_str()), (404, ""), "unknown test routes");
    }

    #[test]
    fn no_daemon_is_a_connect_error() {
        let e = ask(
            Path::new("/nonexistent-ncp.sock"),
            &request("metrics"),
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(matches!(e, HandoffError::Connect { .. }), "{e}");
    }
}
