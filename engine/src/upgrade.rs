//! The WebSocket upgrade rules: which URIs under the push base path are ours, the RFC 6455
//! checks made before answering `101 Switching Protocols`, and the headers of that 101.
//!
//! Pure code, shared by both places that answer an upgrade: the Apache handler (request facts
//! from `request_rec`) and [`crate::Engine::accept_http`] (request facts from its own HTTP/1.1
//! reader), so both give the same statuses, bodies and headers.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// What a request under the base path is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `<base>/ws` or `<base>/ws/`: the WebSocket endpoint.
    WebSocket,
    /// `<base>/test` or `<base>/test/<rest>`: the self-test endpoints (`rest` without the slash).
    Test(String),
    /// `<base>/metrics`: Prometheus text (when `NextcloudPushMetrics On`).
    Metrics,
    /// Anything else under `<base>/`: 404 with an empty body, as the incumbent answers.
    Unknown,
}

/// Classifies a decoded URL path (`r->uri`, no query string). `None`: not under `<base>/`.
pub fn classify(base: &str, uri: &str) -> Option<Route> {
    let rest = uri.strip_prefix(base)?.strip_prefix('/')?;
    Some(match rest {
        "ws" | "ws/" => Route::WebSocket,
        "test" => Route::Test(String::new()),
        "metrics" => Route::Metrics,
        _ => match rest.strip_prefix("test/") {
            Some(name) => Route::Test(name.to_owned()),
            None => Route::Unknown,
        },
    })
}

/// The request facts the upgrade checks need.
#[derive(Clone, Debug, Default)]
pub struct UpgradeRequest<'a> {
    pub method: &'a str,
    /// `r->proto_num >= HTTP/1.1`.
    pub http11: bool,
    pub connection: Option<&'a str>,
    pub upgrade: Option<&'a str>,
    pub version: Option<&'a str>,
    pub key: Option<&'a str>,
    /// `Content-Length` and `Transfer-Encoding`: an upgrade `GET` has no body.
    pub content_length: Option<&'a str>,
    pub transfer_encoding: Option<&'a str>,
}

/// A refused upgrade: the final response sent instead of the 101.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub body: &'static str,
    /// Extra response headers (`Allow`, `Sec-WebSocket-Version`).
    pub headers: &'static [(&'static str, &'static str)],
}

impl Refusal {
    const fn new(status: u16, body: &'static str) -> Refusal {
        Refusal { status, body, headers: &[] }
    }
}

/// Checks a WebSocket upgrade request in the order the incumbent (warp) does, with the same
/// status codes and bodies where clients or admins rely on them.
pub fn check_upgrade(req: &UpgradeRequest<'_>) -> Result<(), Refusal> {
    if req.method == "OPTIONS" {
        // The incumbent's CORS filter rejects preflights to /ws this way.
        return Err(Refusal::new(403, "CORS request forbidden: request-method not allowed"));
    }
    if req.method != "GET" {
        return Err(Refusal {
            headers: &[("Allow", "GET")],
            ..Refusal::new(405, "HTTP method not allowed")
        });
    }
    if !req.http11 {
        return Err(Refusal::new(400, "WebSocket upgrades need HTTP/1.1\n"));
    }
    // RFC 6455 §4.1: the opening handshake is a GET, which has no defined body (RFC 9110
    // §9.3.1), and no WebSocket client sends one. Accepting it would read the body as frames
    // after the 101 (a `Content-Length: 5` junk body announced a frame that swallowed the login).
    let body = req.transfer_encoding.is_some()
        || req.content_length.is_some_and(|v| v.trim().parse::<u64>() != Ok(0));
    if body {
        return Err(Refusal::new(400, "A WebSocket upgrade request has no body\n"));
    }
    if !req.connection.is_some_and(|v| has_token(v, "upgrade")) {
        return Err(Refusal::new(400, "Invalid request header \"connection\""));
    }
    if !req.upgrade.is_some_and(|v| has_token(v, "websocket")) {
        return Err(Refusal::new(400, "Invalid request header \"upgrade\""));
    }
    if req.version.map(str::trim) != Some("13") {
        return Err(Refusal {
            headers: &[("Sec-WebSocket-Version", "13")],
            ..Refusal::new(426, "Invalid request header \"sec-websocket-version\"")
        });
    }
    match req.key {
        None => return Err(Refusal::new(400, "Missing request header \"sec-websocket-key\"")),
        Some(key) if !valid_key(key) => {
            return Err(Refusal::new(400, "Invalid request header \"sec-websocket-key\""))
        }
        Some(_) => {}
    }
    Ok(())
}

/// True if the comma-separated header value contains `token` (ASCII case-insensitive).
pub fn has_token(value: &str, token: &str) -> bool {
    value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// `Sec-WebSocket-Key` must be the base64 encoding of 16 bytes (RFC 6455 §4.1).
pub fn valid_key(key: &str) -> bool {
    BASE64.decode(key.trim()).is_ok_and(|raw| raw.len() == 16)
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key + the RFC 6455 GUID)).
pub fn accept_key(key: &str) -> String {
    derive_accept_key(key.trim().as_bytes())
}

/// The headers of the `101 Switching Protocols` for an accepted request with this
/// `Sec-WebSocket-Key`, in the order they are sent. With an `Origin`, it is echoed in
/// `Access-Control-Allow-Origin` for CORS, as notify_push does.
pub fn switching_headers(key: &str, origin: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers = vec![
        ("Upgrade", "websocket".to_owned()),
        ("Connection", "Upgrade".to_owned()),
        ("Sec-WebSocket-Accept", accept_key(key)),
    ];
    if let Some(origin) = origin {
        headers.push(("Access-Control-Allow-Origin", origin.to_owned()));
    }
    headers
}

/// The reason phrase of a status line for the statuses an upgrade can end with (httpd's
/// phrases); empty for any other status.
pub fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> UpgradeRequest<'static> {
        UpgradeRequest {
            method: "GET",
            http11: true,
            connection: Some("keep-alive, Upgrade"),
            upgrade: Some("websocket"),
            version: Some("13"),
            key: Some("dGhlIHNhbXBsZSBub25jZQ=="),
            content_length: None,
            transfer_encoding: None,
        }
    }

    #[test]
    fn routes() {
        assert_eq!(classify("/push", "/push/ws"), Some(Route::WebSocket));
        assert_eq!(classify("/push", "/push/ws/"), Some(Route::WebSocket));
        assert_eq!(classify("/push", "/push/test/cookie"), Some(Route::Test("cookie".into())));
        assert_eq!(
            classify("/push", "/push/test/remote/1.2.3.4"),
            Some(Route::Test("remote/1.2.3.4".into()))
        );
        assert_eq!(classify("/push", "/push/test"), Some(Route::Test(String::new())));
        assert_eq!(classify("/push", "/push/"), Some(Route::Unknown));
        assert_eq!(classify("/push", "/push/wss"), Some(Route::Unknown));
        assert_eq!(classify("/push", "/push/metrics"), Some(Route::Metrics));
        assert_eq!(classify("/push", "/push/metrics/"), Some(Route::Unknown));
        assert_eq!(classify("/push", "/push/ws/x"), Some(Route::Unknown));
        assert_eq!(classify("/push", "/push"), None);
        assert_eq!(classify("/push", "/pushy/ws"), None);
        assert_eq!(classify("/push", "/index.php"), None);
        assert_eq!(classify("/a/b", "/a/b/ws"), Some(Route::WebSocket));
    }

    #[test]
    fn rfc6455_example_accept() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn accepts_a_good_request() {
        assert_eq!(check_upgrade(&good()), Ok(()));
        let firefox = UpgradeRequest { connection: Some("keep-alive, Upgrade"), ..good() };
        assert_eq!(check_upgrade(&firefox), Ok(()));
        let caps =
            UpgradeRequest { connection: Some("UPGRADE"), upgrade: Some("WebSocket"), ..good() };
        assert_eq!(check_upgrade(&caps), Ok(()));
    }

    #[test]
    fn refusals() {
        let r = check_upgrade(&UpgradeRequest { method: "OPTIONS", ..good() }).unwrap_err();
        assert_eq!(r.status, 403);
        let r = check_upgrade(&UpgradeRequest { method: "POST", ..good() }).unwrap_err();
        assert_eq!((r.status, r.headers), (405, &[("Allow", "GET")][..]));
        let r = check_upgrade(&UpgradeRequest { http11: false, ..good() }).unwrap_err();
        assert_eq!(r.status, 400);
        let r = check_upgrade(&UpgradeRequest { connection: None, ..good() }).unwrap_err();
        assert_eq!((r.status, r.body), (400, "Invalid request header \"connection\""));
        let r = check_upgrade(&UpgradeRequest { connection: Some("keep-alive"), ..good() })
            .unwrap_err();
        assert_eq!((r.status, r.body), (400, "Invalid request header \"connection\""));
        let r = check_upgrade(&UpgradeRequest { upgrade: Some("h2c"), ..good() }).unwrap_err();
        assert_eq!(r.status, 400);
        let r = check_upgrade(&UpgradeRequest { version: Some("8"), ..good() }).unwrap_err();
        assert_eq!((r.status, r.headers), (426, &[("Sec-WebSocket-Version", "13")][..]));
        let r = check_upgrade(&UpgradeRequest { version: None, ..good() }).unwrap_err();
        assert_eq!(r.status, 426);
        let r = check_upgrade(&UpgradeRequest { key: None, ..good() }).unwrap_err();
        assert_eq!(r.status, 400);
        let r = check_upgrade(&UpgradeRequest { key: Some("c2hvcnQ="), ..good() }).unwrap_err();
        assert_eq!(r.status, 400);
        let r = check_upgrade(&UpgradeRequest { content_length: Some("5"), ..good() }).unwrap_err();
        assert_eq!((r.status, r.body), (400, "A WebSocket upgrade request has no body\n"));
        let r = check_upgrade(&UpgradeRequest { transfer_encoding: Some("chunked"), ..good() })
            .unwrap_err();
        assert_eq!(r.status, 400);
        assert!(check_upgrade(&UpgradeRequest { content_length: Some("x"), ..good() }).is_err());
        assert_eq!(check_upgrade(&UpgradeRequest { content_length: Some("0"), ..good() }), Ok(()));
    }

    #[test]
    fn switching_headers_echo_the_origin() {
        assert_eq!(
            switching_headers("dGhlIHNhbXBsZSBub25jZQ==", None),
            vec![
                ("Upgrade", "websocket".to_owned()),
                ("Connection", "Upgrade".to_owned()),
                ("Sec-WebSocket-Accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".to_owned()),
            ]
        );
        let with_origin = switching_headers("dGhlIHNhbXBsZSBub25jZQ==", Some("https://o.example"));
        assert_eq!(
            with_origin.last(),
            Some(&("Access-Control-Allow-Origin", "https://o.example".to_owned()))
        );
        assert_eq!(with_origin.len(), 4);
    }
}
