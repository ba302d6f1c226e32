//! Request hooks: claim `<base>/…`, skip the directory walk for it, and handle it — the
//! WebSocket upgrade with the handoff to the push daemon (or the TLS bridge), the self-test
//! endpoints and `<base>/metrics` (answered by the daemon), and 404 for anything else under the
//! base path.

use super::log::{log_at, Severity};
use super::request::Request;
use super::{bridge, ffi, server_config};
use crate::handoff::{self, HandoffError};
use crate::handshake::{self, Route, UpgradeRequest};
use std::ffi::{c_int, CStr};
use std::net::IpAddr;

/// `r->handler` of claimed requests (also usable with `SetHandler`).
pub const HANDLER: &CStr = c"nextcloud-push";
/// Prefix of `r->filename` of claimed requests, like mod_proxy's `proxy:`.
const FILENAME_PREFIX: &str = "nextcloud-push:";

const OK: c_int = ffi::OK as c_int;
const DECLINED: c_int = ffi::DECLINED;
const DONE: c_int = ffi::DONE;

/// `translate_name`: claims `<base>/…` of push-enabled servers.
///
/// # Safety
/// `r` must be the live request of the current hook.
pub unsafe fn translate_name(r: *mut ffi::request_rec) -> c_int {
    // SAFETY: per contract.
    let Some(mut req) = (unsafe { Request::from_raw(r) }) else { return DECLINED };
    if req.is_proxy_request() {
        return DECLINED;
    }
    // SAFETY: the request's server is live; request threads only read the config.
    let Some(conf) = (unsafe { server_config::get_ref(req.server()) }) else { return DECLINED };
    if conf.engine.is_none() {
        return DECLINED;
    }
    let Some(uri) = req.uri() else { return DECLINED };
    if handshake::classify(conf.base_path(), uri).is_none() {
        return DECLINED;
    }
    req.claim(HANDLER, &format!("{FILENAME_PREFIX}{uri}"));
    OK
}

/// `map_to_storage`: no directory walk and no `.htaccess` for claimed requests.
///
/// # Safety
/// `r` must be the live request of the current hook.
pub unsafe fn map_to_storage(r: *mut ffi::request_rec) -> c_int {
    // SAFETY: per contract.
    let Some(req) = (unsafe { Request::from_raw(r) }) else { return DECLINED };
    let ours = req.handler().is_some_and(|h| h.as_bytes() == HANDLER.to_bytes())
        && req.filename().is_some_and(|f| f.starts_with(FILENAME_PREFIX));
    if ours {
        OK
    } else {
        DECLINED
    }
}

/// `handler`.
///
/// # Safety
/// `r` must be the live request of the current hook.
pub unsafe fn handle(r: *mut ffi::request_rec) -> c_int {
    // SAFETY: per contract.
    let Some(mut req) = (unsafe { Request::from_raw(r) }) else { return DECLINED };
    if req.handler().is_none_or(|h| h.as_bytes() != HANDLER.to_bytes()) {
        return DECLINED;
    }
    // SAFETY: the request's server is live.
    let Some(conf) = (unsafe { server_config::get_ref(req.server()) }) else { return DECLINED };
    if conf.engine.is_none() {
        return DECLINED;
    }
    let route = req.uri().and_then(|uri| handshake::classify(conf.base_path(), uri));
    match route {
        Some(Route::WebSocket) => {
            let hello =
                conf.engine_index.map(|i| handoff::Hello::new(i, conf.engine_fingerprint.clone()));
            upgrade(&mut req, hello, conf.socket_path.as_deref())
        }
        // The self-test endpoints and the metrics are answered by the daemon (issue #4).
        Some(Route::Test(rest)) => control(&mut req, conf, format!("test/{rest}")),
        Some(Route::Metrics) if conf.metrics_enabled() => control(&mut req, conf, "metrics".into()),
        Some(Route::Metrics) | Some(Route::Unknown) | None => req.respond(404, "", &[]),
    }
}

/// Forwards `<base>/test/…` or `<base>/metrics` to the daemon and writes its answer.
fn control(req: &mut Request<'_>, conf: &crate::config::ServerConfig, path: String) -> c_int {
    let (Some(engine), Some(socket)) = (conf.engine_index, conf.socket_path.as_deref()) else {
        log_at(
            req.server(),
            Severity::Error,
            "NCP0031: push is enabled but not set up in this process; answering 503",
        );
        return unavailable(req);
    };
    let request = crate::control::ControlRequest {
        engine,
        config: conf.engine_fingerprint.clone(),
        method: req.method().to_owned(),
        path,
        token: req.header_in(c"token").map(str::to_owned),
    };
    match crate::control::ask(socket, &request, crate::control::CONTROL_TIMEOUT) {
        Ok(answer) => req.respond(answer.status, &answer.body, &[]),
        Err(e) => {
            log_at(
                req.server(),
                Severity::Error,
                &format!(
                    "NCP0040: push daemon unavailable for {} ({e}); answering 503",
                    request.path
                ),
            );
            unavailable(req)
        }
    }
}

fn upgrade(
    req: &mut Request<'_>,
    hello: Option<handoff::Hello>,
    socket: Option<&std::path::Path>,
) -> c_int {
    let tls = req.is_tls();
    // SAFETY: the live request of this handler call.
    let timeout = unsafe { bridge::server_timeout(req.raw()) };
    let facts = UpgradeRequest {
        method: req.method(),
        http11: req.http11(),
        h2_secondary: req.is_secondary_connection(),
        connection: req.header_in(c"Connection"),
        upgrade: req.header_in(c"Upgrade"),
        version: req.header_in(c"Sec-WebSocket-Version"),
        key: req.header_in(c"Sec-WebSocket-Key"),
    };
    if let Err(refusal) = handshake::check_upgrade(&facts) {
        return req.respond(refusal.status, refusal.body, refusal.headers);
    }
    let key = facts.key.unwrap_or_default();
    let (Some(hello), Some(socket)) = (hello, socket) else {
        log_at(
            req.server(),
            Severity::Error,
            "NCP0031: push is enabled but not set up in this process; answering 503",
        );
        return unavailable(req);
    };
    // TLS (mod_ssl): this worker will relay the plaintext (see `bridge`), so the daemon treats
    // the Unix stream itself as the WebSocket and pings within Apache's Timeout.
    let hello =
        if tls { handoff::Hello::bridged(hello.engine, hello.config, timeout) } else { hello };

    // Ask the daemon before anything is sent: a refusal can still be a clean 503.
    let accepted = match handoff::ask_daemon(socket, &hello, handoff::ASK_TIMEOUT) {
        Ok(a) => a,
        Err(e) => {
            log_at(
                req.server(),
                Severity::Error,
                &format!("NCP0032: push daemon unavailable ({e}); answering 503"),
            );
            return unavailable(req);
        }
    };

    let origin = req.header_in(c"Origin");
    // core_upgrade_handler may have put `Upgrade: h2c` here on a connection's first request.
    req.clear_headers_out();
    req.set_header_out("Upgrade", "websocket");
    req.set_header_out("Connection", "Upgrade");
    req.set_header_out("Sec-WebSocket-Accept", &handshake::accept_key(key));
    if let Some(origin) = origin {
        req.set_header_out("Access-Control-Allow-Origin", origin);
    }
    req.set_status(101);
    req.send_interim();
    if req.connection_aborted() {
        ::log::debug!(target: "nextcloud_push::apache", "NCP0033: client went away while the 101 was sent");
        req.abandon_connection();
        return DONE;
    }

    let peer = req.useragent_ip().and_then(|ip| ip.parse::<IpAddr>().ok());
    let chain = nextcloud_push_engine::client_ip_chain(
        req.header_in(c"X-Forwarded-For"),
        req.header_in(c"X-Real-IP"),
        req.header_in(c"Forwarded"),
        peer,
    );
    let early = req.drain_input(handoff::MAX_EARLY).map_err(HandoffError::Protocol);
    if tls {
        return bridged(req, accepted, chain, early, timeout);
    }
    let result = early.and_then(|early| {
        let fd =
            req.client_fd().ok_or_else(|| HandoffError::Protocol("no client socket".into()))?;
        accepted.hand_off(fd, chain, &early)
    });
    if let Err(e) = result {
        log_at(
            req.server(),
            Severity::Error,
            &format!("NCP0034: WebSocket handoff to the push daemon failed after the 101: {e}"),
        );
    }
    // From here on the socket belongs to the daemon (or, on error, is simply closed).
    req.abandon_connection();
    DONE
}

/// TLS: after the 101, this worker relays the WebSocket's plaintext between mod_ssl and the
/// daemon until the session ends; then Apache closes the connection as usual (close_notify).
fn bridged(
    req: &mut Request<'_>,
    accepted: handoff::Accepted,
    chain: Vec<IpAddr>,
    early: Result<Vec<u8>, HandoffError>,
    timeout: std::time::Duration,
) -> c_int {
    let stream = match early.and_then(|early| accepted.bridge(chain, &early)) {
        Ok(stream) => stream,
        Err(e) => {
            log_at(
                req.server(),
                Severity::Error,
                &format!("NCP0034: WebSocket handoff to the push daemon failed after the 101: {e}"),
            );
            req.abandon_connection();
            return DONE;
        }
    };
    let r = req.raw();
    // SAFETY: the live request of this handler call, after the 101, on its own thread; the
    // bridge ends before we return.
    let end = unsafe {
        bridge::prepare(r);
        bridge::run(r, &stream, timeout)
    };
    drop(stream);
    ::log::debug!(target: "nextcloud_push::apache", "NCP0035: bridged (TLS) WebSocket ended: {end}");
    if matches!(end, bridge::End::Client(_) | bridge::End::Stopping) {
        // The client connection is broken or already closed: no close_notify, no lingering.
        req.abandon_connection();
    }
    DONE
}

fn unavailable(req: &mut Request<'_>) -> c_int {
    req.respond(503, "Push service temporarily unavailable\n", &[("Retry-After", "5")])
}
