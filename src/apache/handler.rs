//! Request hooks: claim `<base>/…`, skip the directory walk for it, and handle it — the
//! WebSocket upgrade with the handoff to the push daemon (or the TLS bridge), the self-test
//! endpoints and `<base>/metrics` (answered by the daemon), and 404 for anything else under the
//! base path.

use super::log::{log_at, Severity};
use super::request::{self, Request};
use super::{bridge, ffi, server_config, tls};
use crate::config::ServerConfig;
use crate::error::ClientError;
use crate::wire::control::{self, ControlRequest};
use crate::wire::handoff::{self, Hello, TlsOffer, Verdict};
use crate::wire::WireError;
use nextcloud_push_engine::upgrade::{self, Route, UpgradeRequest};
use std::ffi::{c_int, CStr};
use std::net::IpAddr;
use std::path::Path;

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
    if conf.runtime.engine.is_none() {
        return DECLINED;
    }
    let Some(uri) = req.uri() else { return DECLINED };
    if upgrade::classify(conf.directives.base_path(), uri).is_none() {
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
    if conf.runtime.engine.is_none() {
        return DECLINED;
    }
    let route = req.uri().and_then(|uri| upgrade::classify(conf.directives.base_path(), uri));
    match route {
        Some(Route::WebSocket) => websocket(&mut req, conf),
        // The self-test endpoints and the metrics are answered by the daemon.
        Some(Route::Test(rest)) => ask_daemon(&mut req, conf, format!("test/{rest}")),
        Some(Route::Metrics) if conf.directives.metrics_enabled() => {
            ask_daemon(&mut req, conf, "metrics".into())
        }
        Some(Route::Metrics) | Some(Route::Unknown) | None => req.respond(404, "", &[]),
    }
}

/// Forwards `<base>/test/…` or `<base>/metrics` to the daemon and writes its answer.
fn ask_daemon(req: &mut Request<'_>, conf: &ServerConfig, path: String) -> c_int {
    let Some((engine, socket)) = daemon_route(req, conf) else { return unavailable(req) };
    let request = ControlRequest {
        engine,
        config: conf.runtime.engine_fingerprint.clone(),
        method: req.method().to_owned(),
        path,
        token: req.header_in(c"token").map(str::to_owned),
    };
    match control::ask(socket, &request, control::CONTROL_TIMEOUT) {
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

/// The engine and socket this process's parent set up for the server; logs NCP0031 without.
fn daemon_route<'c>(req: &Request<'_>, conf: &'c ServerConfig) -> Option<(u32, &'c Path)> {
    let route = conf.runtime.engine_index.zip(conf.runtime.socket_path.as_deref());
    if route.is_none() {
        log_at(
            req.server(),
            Severity::Error,
            "NCP0031: push is enabled but not set up in this process; answering 503",
        );
    }
    route
}

fn websocket(req: &mut Request<'_>, conf: &ServerConfig) -> c_int {
    let tls = req.is_tls();
    // An HTTP/2 stream (RFC 8441, `H2WebSockets on`): its socket is not the client's, so it is
    // always relayed by the h2 worker that runs it (see `bridge`).
    let h2 = req.is_secondary_connection();
    // SAFETY: the live request of this handler call.
    let timeout = unsafe { bridge::server_timeout(req.raw()) };
    let facts = UpgradeRequest {
        method: req.method(),
        http11: req.http11(),
        connection: req.header_in(c"Connection"),
        upgrade: req.header_in(c"Upgrade"),
        version: req.header_in(c"Sec-WebSocket-Version"),
        key: req.header_in(c"Sec-WebSocket-Key"),
        // mod_http2 marks a stream that stays open for data (the extended CONNECT's) with
        // `Transfer-Encoding: chunked`: there, the "body" is the WebSocket itself.
        content_length: if h2 { None } else { req.header_in(c"Content-Length") },
        transfer_encoding: if h2 { None } else { req.header_in(c"Transfer-Encoding") },
    };
    if let Err(refusal) = upgrade::check_upgrade(&facts) {
        return req.respond(refusal.status, refusal.body, refusal.headers);
    }
    let key = facts.key.unwrap_or_default();
    let Some((engine, socket)) = daemon_route(req, conf) else { return unavailable(req) };
    let config = conf.runtime.engine_fingerprint.clone();
    // TLS (mod_ssl): the session moves to the daemon with the socket when it can (see `tls`);
    // otherwise this worker relays the plaintext (see `bridge`), so the daemon treats the Unix
    // stream itself as the WebSocket and pings within Apache's Timeout.
    let eligible =
        if tls && !h2 && conf.directives.tls_handoff_enabled() { tls_eligible(req) } else { None };
    let hello = if tls || h2 {
        Hello {
            tls_offer: eligible.is_some(),
            max_bridged: conf.runtime.max_bridged.filter(|_| eligible.is_none()),
            ..Hello::bridged(engine, config, timeout)
        }
    } else {
        Hello::new(engine, config)
    };

    // Ask the daemon before anything is sent: a refusal can still be a clean 503.
    let accepted = match handoff::ask_daemon(socket, &hello, handoff::ASK_TIMEOUT) {
        Ok(a) => a,
        // The daemon logs these (NCP0116, rate-limited): a flood must not flood the log.
        Err(e @ WireError::BridgesFull) => {
            ::log::debug!(target: "nextcloud_push::apache", "NCP0038: {e}; answering 503");
            return unavailable(req);
        }
        Err(e) => {
            log_at(
                req.server(),
                Severity::Error,
                &format!("NCP0032: push daemon unavailable ({e}); answering 503"),
            );
            return unavailable(req);
        }
    };

    if let Some(e) = &eligible {
        // SAFETY: the live connection this eligibility was checked on.
        unsafe { tls::add_tap(req.connection(), e) };
    }
    let origin = req.header_in(c"Origin");
    // core_upgrade_handler may have put `Upgrade: h2c` here on a connection's first request.
    req.clear_headers_out();
    for (name, value) in upgrade::switching_headers(key, origin) {
        req.set_header_out(name, &value);
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
    let early = match req.drain_input(handoff::MAX_EARLY) {
        Ok(early) => early,
        Err(e) => return handoff_failed(req, e),
    };
    if h2 {
        ::log::debug!(target: "nextcloud_push::apache", "NCP0039: a WebSocket over HTTP/2 is relayed by this worker (bridged)");
    }
    if tls || h2 {
        return bridged(req, accepted, chain, early, timeout, eligible);
    }
    let Some(fd) = req.client_fd() else { return handoff_failed(req, ClientError::NoSocket) };
    if let Err(e) = accepted.hand_off(fd, chain, &early) {
        return handoff_failed(req, e);
    }
    // From here on the socket belongs to the daemon.
    req.abandon_connection();
    DONE
}

/// After the 101 nothing can be answered any more: log why, and let the connection go.
fn handoff_failed(req: &mut Request<'_>, e: impl std::fmt::Display) -> c_int {
    log_at(
        req.server(),
        Severity::Error,
        &format!("NCP0034: WebSocket handoff to the push daemon failed after the 101: {e}"),
    );
    req.abandon_connection();
    DONE
}

/// Whether this connection's TLS session could move to the daemon (NCP0036 says why not).
fn tls_eligible(req: &mut Request<'_>) -> Option<tls::Eligible> {
    // SAFETY: the live connection of this handler call.
    match unsafe { tls::eligible(req.connection()) } {
        Ok(e) => Some(e),
        Err(why) => {
            ::log::debug!(target: "nextcloud_push::apache", "NCP0036: the TLS session stays with this worker (bridged): {why}");
            None
        }
    }
}

/// TLS or HTTP/2: after the 101, the session moves to the daemon if it can and the daemon adopts it;
/// otherwise this worker relays the WebSocket's plaintext between mod_ssl and the daemon until
/// the session ends, and then Apache closes the connection as usual (close_notify).
fn bridged(
    req: &mut Request<'_>,
    accepted: handoff::Accepted,
    chain: Vec<IpAddr>,
    mut early: Vec<u8>,
    timeout: std::time::Duration,
    eligible: Option<tls::Eligible>,
) -> c_int {
    let r = req.raw();
    // SAFETY: the live request of this handler call, after the 101, on its own thread.
    unsafe { bridge::prepare(r) };
    let accepted = match eligible {
        None => accepted,
        Some(e) => match offer(req, accepted, &chain, &mut early, &e) {
            Ok(Some(accepted)) => accepted,
            Ok(None) => return DONE,
            Err(e) => return handoff_failed(req, e),
        },
    };
    let stream = match accepted.bridge(chain, &early) {
        Ok(stream) => stream,
        Err(e) => return handoff_failed(req, e),
    };
    // SAFETY: as above; the bridge ends before we return.
    let end = unsafe { bridge::run(r, &stream, timeout) };
    drop(stream);
    ::log::debug!(target: "nextcloud_push::apache", "NCP0035: bridged WebSocket ended: {end}");
    if matches!(end, bridge::End::Client(_) | bridge::End::Stopping) {
        // The client connection is broken or already closed: no close_notify, no lingering.
        req.abandon_connection();
    }
    DONE
}

/// Offers the TLS session to the daemon once nothing of the client's is half-read. `Ok(None)`:
/// adopted, the connection is the daemon's (this worker lets go without writing a byte);
/// `Ok(Some)`: refused or not offered, bridge on with `early` (which holds everything drained).
fn offer(
    req: &mut Request<'_>,
    accepted: handoff::Accepted,
    chain: &[IpAddr],
    early: &mut Vec<u8>,
    e: &tls::Eligible,
) -> Result<Option<handoff::Accepted>, String> {
    let r = req.raw();
    // SAFETY: the live request of this handler call (the closure runs inside hand_over, on
    // this thread).
    let mut drain = |room: usize| unsafe { request::drain(r, room) };
    // SAFETY: the live request, after the 101 and bridge::prepare.
    let handover = unsafe { tls::hand_over(r, e, early, &mut drain) };
    let mut offer = TlsOffer {
        forwarded_for: chain.to_vec(),
        session: None,
        plaintext_len: 0,
        ciphertext_len: 0,
        last_record_len: 0,
    };
    let mut trailing = Vec::new();
    let mut read_below = false;
    match handover {
        Ok(h) => {
            read_below = !h.ciphertext.is_empty();
            offer.plaintext_len = early.len() as u32;
            offer.ciphertext_len = h.ciphertext.len() as u32;
            offer.last_record_len = h.last_record.len() as u32;
            trailing.extend_from_slice(early);
            trailing.extend_from_slice(&h.ciphertext);
            trailing.extend_from_slice(&h.last_record);
            offer.session = Some(h.session);
        }
        Err(why) => {
            ::log::debug!(target: "nextcloud_push::apache", "NCP0036: the TLS session stays with this worker (bridged): {why}");
        }
    }
    let fd = if offer.session.is_some() { req.client_fd() } else { None };
    if offer.session.is_some() && fd.is_none() {
        offer.session = None;
        trailing.clear();
        (offer.plaintext_len, offer.ciphertext_len, offer.last_record_len) = (0, 0, 0);
    }
    match accepted.offer_tls(fd, &offer, &trailing).map_err(|e| e.to_string())? {
        Verdict::Adopted => {
            // SAFETY: the SSL of this live connection.
            unsafe { tls::let_go(e) };
            req.abandon_connection();
            ::log::debug!(target: "nextcloud_push::apache", "NCP0037: the TLS session moved to the push daemon");
            Ok(None)
        }
        // Ciphertext read from below mod_ssl is gone from Apache's input: a bridge would miss it.
        Verdict::Refused(_) if read_below => {
            Err("the daemon refused a TLS session after its pending records were read".into())
        }
        Verdict::Refused(accepted) => Ok(Some(accepted)),
    }
}

fn unavailable(req: &mut Request<'_>) -> c_int {
    req.respond(503, "Push service temporarily unavailable\n", &[("Retry-After", "5")])
}
