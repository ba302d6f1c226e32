//! The daemon's answers to control requests (`crate::wire::control`): the self-test endpoints
//! and the metrics, computed by the engine the request names.

use super::State;
use crate::wire::control::{
    ControlFrame, ControlResponse, DaemonStatus, EngineStatus, CONTROL_TIMEOUT, STATUS_PATH,
};
use crate::wire::{self, WireError, PROTOCOL};
use std::sync::atomic::Ordering;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;

/// Answers one control request on `stream` and closes it (bounded: the engine bounds its Redis
/// and Nextcloud calls; this bounds the whole answer too).
pub async fn serve(
    mut stream: UnixStream,
    frame: ControlFrame,
    state: &State,
) -> Result<(), WireError> {
    let path = frame.control.path.clone();
    let respond = async {
        let response = if state.shutting_down.load(Ordering::SeqCst) {
            ControlResponse::unavailable()
        } else {
            answer(frame, state).await
        };
        wire::write_json_async(&mut stream, &response).await?;
        stream.shutdown().await?;
        Ok::<(), WireError>(())
    };
    tokio::time::timeout(CONTROL_TIMEOUT, respond)
        .await
        .map_err(|_| WireError::Timeout(CONTROL_TIMEOUT))??;
    log::debug!(target: "nextcloud_push::daemon", "NCP0110: answered control request {path}");
    Ok(())
}

/// How the daemon's client sockets reached it (all engines): plain handoffs, TLS sessions that
/// moved from mod_ssl, and sessions bridged by Apache workers (each holding a worker).
fn by_transport(state: &State) -> (usize, usize, usize) {
    let tls = state.tls.load(Ordering::SeqCst);
    let bridged = state.bridged.load(Ordering::SeqCst);
    let plain = state.live.load(Ordering::SeqCst).saturating_sub(tls + bridged);
    (plain, tls, bridged)
}

/// The daemon-wide status for `server-status`.
fn status(state: &State) -> DaemonStatus {
    let (plain, tls, bridged) = by_transport(state);
    DaemonStatus {
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: state.started.elapsed().as_secs(),
        server: state.server_label.clone(),
        plain,
        tls,
        bridged,
        engines: state
            .engines
            .iter()
            .map(|engine| {
                let metrics = engine.metrics();
                let health = engine.health();
                EngineStatus {
                    nextcloud_url: engine.config().nextcloud_url.clone(),
                    users: metrics.active_user_count,
                    connections: metrics.active_connection_count,
                    events: metrics.events_received,
                    messages: metrics.messages_sent,
                    redis: health.redis,
                    database: health.database,
                }
            })
            .collect(),
    }
}

/// The sessions by transport as a Prometheus gauge family.
fn transports(state: &State) -> String {
    let (plain, tls, bridged) = by_transport(state);
    format!(
        "# HELP push_session_count WebSocket sessions of the push daemon by transport (all \
         Nextcloud instances).\n# TYPE push_session_count gauge\n\
         push_session_count{{transport=\"plain\"}} {plain}\n\
         push_session_count{{transport=\"tls\"}} {tls}\n\
         push_session_count{{transport=\"bridged\"}} {bridged}\n"
    )
}

/// The answer to a control request (the engine does the work).
async fn answer(frame: ControlFrame, state: &State) -> ControlResponse {
    let request = frame.control;
    if frame.protocol != PROTOCOL {
        return ControlResponse::unavailable();
    }
    if request.path == STATUS_PATH {
        return ControlResponse::new(
            200,
            serde_json::to_string(&status(state)).unwrap_or_default(),
        );
    }
    let Ok(engine) = state.engine(request.engine, request.config.as_deref()) else {
        return ControlResponse::unavailable();
    };
    if request.path == "metrics" {
        let mut body = engine.metrics().to_prometheus_with_help();
        body.push_str(&transports(state));
        return ControlResponse::new(200, body);
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
    use crate::daemon::tests::{engine, state};

    /// server-status's split of the daemon's sessions: the plain ones are the rest.
    #[test]
    fn sessions_by_transport() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _entered = rt.enter();
        let state = state(vec![engine()]);
        state.live.store(10, Ordering::SeqCst);
        state.tls.store(3, Ordering::SeqCst);
        state.bridged.store(2, Ordering::SeqCst);
        assert_eq!(by_transport(&state), (5, 3, 2));
    }
    use crate::wire::control::tests::request;
    use crate::wire::control::{ask, ControlRequest};
    use crate::wire::Opening;
    use std::time::Duration;

    /// Child (`ask`, blocking) ⇄ daemon (`parse` + `serve`) over a real Unix socket.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn round_trip_over_a_unix_socket() {
        let state = state(vec![engine()]);
        let prints = state.prints.clone();
        let path = std::env::temp_dir().join(format!("ncp-control-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let payload = wire::read_frame_async(&mut stream).await.unwrap();
                let Ok(Opening::Control(frame)) = Opening::decode(&payload) else {
                    panic!("a control frame")
                };
                serve(stream, frame, &state).await.unwrap();
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
}
