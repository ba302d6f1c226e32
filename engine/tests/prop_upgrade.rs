//! Property tests of the WebSocket upgrade: the rules of `upgrade::{classify, check_upgrade}`
//! and the HTTP/1.1 upgrade reader behind `Engine::accept_http`, fed arbitrary bytes and
//! generated requests. The oracle ([`expected`]) is the list of conditions the rules document
//! (RFC 6455 §4.1 plus the incumbent's refusals), written out independently of the code.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use nextcloud_push_engine::upgrade::{accept_key, check_upgrade, classify, Route, UpgradeRequest};
use proptest::collection::vec;
use proptest::prelude::*;

// ---------------------------------------------------------------- the documented rules

fn has_token(value: &str, token: &str) -> bool {
    value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn key_ok(key: &str) -> bool {
    matches!(BASE64.decode(key.trim()), Ok(raw) if raw.len() == 16)
}

/// The status the documented rules give (`None`: accepted with 101), in their order.
fn expected(r: &UpgradeRequest<'_>) -> Option<u16> {
    if r.method == "OPTIONS" {
        return Some(403);
    }
    if r.method != "GET" {
        return Some(405);
    }
    if !r.http11 {
        return Some(400);
    }
    let body = r.transfer_encoding.is_some()
        || r.content_length.is_some_and(|v| v.trim().parse::<u64>().ok() != Some(0));
    if body
        || !r.connection.is_some_and(|v| has_token(v, "upgrade"))
        || !r.upgrade.is_some_and(|v| has_token(v, "websocket"))
    {
        return Some(400);
    }
    if r.version.map(str::trim) != Some("13") {
        return Some(426);
    }
    if !r.key.is_some_and(key_ok) {
        return Some(400);
    }
    None
}

// ---------------------------------------------------------------- generators

fn method() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => Just("GET".to_string()),
        1 => Just("OPTIONS".to_string()),
        1 => Just("POST".to_string()),
        1 => Just("get".to_string()),
        1 => Just("HEAD".to_string()),
        1 => "[A-Z]{1,8}",
    ]
}

/// A header value: one of the interesting ones (good, near misses) or anything.
fn one_of(good: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    let picks: Vec<String> = good.iter().map(|s| s.to_string()).collect();
    prop_oneof![
        6 => proptest::sample::select(picks).prop_map(Some),
        1 => Just(None),
        1 => "[ -~]{0,24}".prop_map(Some),
    ]
}

fn key() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        6 => any::<[u8; 16]>().prop_map(|raw| Some(BASE64.encode(raw))),
        1 => any::<[u8; 16]>().prop_map(|raw| Some(format!(" {} ", BASE64.encode(raw)))),
        1 => vec(any::<u8>(), 0..24).prop_map(|raw| Some(BASE64.encode(raw))),
        1 => Just(None),
        1 => "[A-Za-z0-9+/=]{0,30}".prop_map(Some),
    ]
}

/// The facts of one request, owned (an `UpgradeRequest` borrows them).
#[derive(Clone, Debug)]
struct Facts {
    method: String,
    http11: bool,
    connection: Option<String>,
    upgrade: Option<String>,
    version: Option<String>,
    key: Option<String>,
    content_length: Option<String>,
    transfer_encoding: Option<String>,
}

impl Facts {
    fn request(&self) -> UpgradeRequest<'_> {
        UpgradeRequest {
            method: &self.method,
            http11: self.http11,
            connection: self.connection.as_deref(),
            upgrade: self.upgrade.as_deref(),
            version: self.version.as_deref(),
            key: self.key.as_deref(),
            content_length: self.content_length.as_deref(),
            transfer_encoding: self.transfer_encoding.as_deref(),
        }
    }
}

fn facts() -> impl Strategy<Value = Facts> {
    (
        (method(), prop::bool::weighted(0.9)),
        (
            one_of(&["Upgrade", "keep-alive, Upgrade", "UPGRADE", "upgrade,close", "keep-alive"]),
            one_of(&["websocket", "WebSocket", "foo, websocket", "h2c", "websocket2"]),
            one_of(&["13", " 13 ", "8", "13, 8", ""]),
            key(),
        ),
        (
            prop_oneof![8 => Just(None), 1 => Just(Some("0".to_string())), 1 => one_of(&["0", " 0", "5", "x", "-0", "+0"])],
            prop_oneof![9 => Just(None), 1 => one_of(&["chunked", "identity"])],
        ),
    )
        .prop_map(
            |(
                (method, http11),
                (connection, upgrade, version, key),
                (content_length, transfer_encoding),
            )| Facts {
                method,
                http11,
                connection,
                upgrade,
                version,
                key,
                content_length,
                transfer_encoding,
            },
        )
}

// ---------------------------------------------------------------- classify / check_upgrade

proptest! {
    /// `classify` never panics and gives exactly the documented route for `<base>/<rest>`.
    #[test]
    fn classify_follows_the_documented_routes(
        base in prop_oneof![Just(String::new()), Just("/push".to_string()), "(/[a-z%.]{0,6}){0,3}", ".{0,12}"],
        rest in prop_oneof![
            proptest::sample::select(vec!["ws", "ws/", "test", "test/", "test/cookie", "metrics", "metrics/", "wss", "ws/x", "", "WS"]).prop_map(str::to_string),
            "(test/)?.{0,16}",
        ],
        slash in prop::bool::weighted(0.9),
    ) {
        let uri = format!("{base}{}{rest}", if slash { "/" } else { "" });
        let route = classify(&base, &uri);
        // Not under `<base>/`: None; otherwise the route of what follows.
        let Some(after) = uri.strip_prefix(base.as_str()).and_then(|r| r.strip_prefix('/')) else {
            prop_assert_eq!(route, None);
            return Ok(());
        };
        let expected = match after {
            "ws" | "ws/" => Route::WebSocket,
            "metrics" => Route::Metrics,
            "test" => Route::Test(String::new()),
            other => match other.strip_prefix("test/") {
                Some(name) => Route::Test(name.to_string()),
                None => Route::Unknown,
            },
        };
        prop_assert_eq!(route, Some(expected));
    }

    /// `classify` on any two strings never panics.
    #[test]
    fn classify_never_panics(base in ".{0,16}", uri in ".{0,32}") {
        let _ = classify(&base, &uri);
    }

    /// `check_upgrade` accepts exactly when every documented condition holds (GET, HTTP/1.1,
    /// not an HTTP/2 stream, no body, the `upgrade` and `websocket` tokens, version 13, a key of
    /// 16 base64 bytes), and refuses with the documented status otherwise.
    #[test]
    fn check_upgrade_accepts_iff_the_rules_hold(facts in facts()) {
        let request = facts.request();
        match (check_upgrade(&request), expected(&request)) {
            (Ok(()), None) => {}
            (Err(refusal), Some(status)) => {
                prop_assert_eq!(refusal.status, status);
                if status == 405 {
                    prop_assert_eq!(refusal.headers, &[("Allow", "GET")][..]);
                }
                if status == 426 {
                    prop_assert_eq!(refusal.headers, &[("Sec-WebSocket-Version", "13")][..]);
                }
            }
            (got, want) => prop_assert!(false, "{:?}: got {:?}, the rules say {:?}", facts, got, want),
        }
    }

    /// Arbitrary strings in every field never panic `check_upgrade`, and it accepts only a GET
    /// over HTTP/1.1 with all the required headers.
    #[test]
    fn check_upgrade_never_panics_on_arbitrary_fields(
        method in ".{0,8}",
        http11 in any::<bool>(),
        fields in vec(proptest::option::of(".{0,32}"), 6),
    ) {
        let request = UpgradeRequest {
            method: &method,
            http11,
            connection: fields[0].as_deref(),
            upgrade: fields[1].as_deref(),
            version: fields[2].as_deref(),
            key: fields[3].as_deref(),
            content_length: fields[4].as_deref(),
            transfer_encoding: fields[5].as_deref(),
        };
        let accepted = check_upgrade(&request).is_ok();
        prop_assert_eq!(accepted, expected(&request).is_none());
        if accepted {
            prop_assert!(method == "GET" && http11);
            prop_assert!(fields[0].is_some() && fields[1].is_some() && fields[2].is_some() && fields[3].is_some());
        }
    }
}

// ---------------------------------------------------------------- Engine::accept_http

mod http_exchange;

use http_exchange::exchange;

fn status(response: &[u8]) -> Option<u16> {
    let line = response.strip_prefix(b"HTTP/1.1 ")?;
    std::str::from_utf8(line.get(..3)?).ok()?.parse().ok()
}

fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.lines().find_map(|line| {
        let (n, v) = line.split_once(": ")?;
        n.eq_ignore_ascii_case(name).then_some(v)
    })
}

/// A generated request: its facts plus the path, header spelling, extra headers and the bytes
/// pipelined after the head.
fn http_request() -> impl Strategy<Value = (Facts, String, bool, Vec<(String, String)>, Vec<u8>)> {
    (
        facts(),
        prop_oneof![
            6 => proptest::sample::select(vec!["/ws", "/ws/", "/push/ws", "/push/ws/", "/push/ws?a=b", "/ws/?x"]).prop_map(str::to_string),
            1 => proptest::sample::select(vec!["/", "/push/test/cookie", "/push/metrics", "/wss", "/push/ws/x", "/other/ws", "*"]).prop_map(str::to_string),
            1 => "/[a-z/?=&]{0,12}",
        ],
        any::<bool>(),
        vec(
            (
                proptest::sample::select(vec![
                    "Host",
                    "Origin",
                    "X-Forwarded-For",
                    "X-Real-IP",
                    "Forwarded",
                    "User-Agent",
                    "X-Junk",
                ]),
                "[ -~]{0,30}",
            )
                .prop_map(|(n, v)| (n.to_string(), v)),
            0..4,
        ),
        vec(any::<u8>(), 0..64),
    )
}

fn render(
    facts: &Facts,
    path: &str,
    lower: bool,
    extra: &[(String, String)],
    early: &[u8],
) -> Vec<u8> {
    let version = if facts.http11 { "1.1" } else { "1.0" };
    let mut head = format!("{} {path} HTTP/{version}\r\n", facts.method);
    let named = [
        ("Connection", &facts.connection),
        ("Upgrade", &facts.upgrade),
        ("Sec-WebSocket-Version", &facts.version),
        ("Sec-WebSocket-Key", &facts.key),
        ("Content-Length", &facts.content_length),
        ("Transfer-Encoding", &facts.transfer_encoding),
    ];
    for (name, value) in named {
        if let Some(value) = value {
            let name = if lower { name.to_ascii_lowercase() } else { name.to_string() };
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(early);
    bytes
}

fn is_upgrade_path(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or("");
    matches!(path, "/ws" | "/ws/" | "/push/ws" | "/push/ws/")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Arbitrary bytes never panic the upgrade reader and are never upgraded.
    #[test]
    fn accept_http_arbitrary_bytes_never_upgrade(bytes in vec(any::<u8>(), 0..1024)) {
        let response = exchange(&bytes);
        prop_assert_ne!(status(&response), Some(101));
    }

    /// Arbitrary text shaped like a request head never panics and is never upgraded unless it
    /// carries every required header.
    #[test]
    fn accept_http_head_like_text_never_upgrades_without_the_headers(
        text in r"(GET|POST|OPTIONS) (/ws|/push/ws|/[ -~]{0,8}) HTTP/1\.[01]\r\n([A-Za-z-]{1,22}: [ -~]{0,30}\r\n){0,8}(\r\n)?[ -~]{0,16}"
    ) {
        let response = exchange(text.as_bytes());
        if status(&response) == Some(101) {
            let lower = text.to_ascii_lowercase();
            for needed in ["connection:", "upgrade:", "sec-websocket-version:", "sec-websocket-key:"] {
                prop_assert!(lower.contains(needed), "upgraded without {}", needed);
            }
        }
    }

    /// A generated request is upgraded exactly when its path is `/ws` or `/push/ws` (with or
    /// without the slash, any query) and the rules accept its facts; refusals carry the rules'
    /// status (404 for any other path); a 101 carries the accept key of the request's key.
    #[test]
    fn accept_http_upgrades_iff_the_rules_hold((facts, path, lower, extra, early) in http_request()) {
        let response = exchange(&render(&facts, &path, lower, &extra, &early));
        let want = if is_upgrade_path(&path) { expected(&facts.request()) } else { Some(404) };
        let text = String::from_utf8_lossy(&response).into_owned();
        match want {
            None => {
                prop_assert_eq!(status(&response), Some(101), "{}", text);
                let accept = accept_key(facts.key.as_deref().unwrap());
                prop_assert_eq!(header(&text, "sec-websocket-accept"), Some(accept.as_str()));
            }
            Some(want) => prop_assert_eq!(status(&response), Some(want), "{}", text),
        }
    }

    /// A valid upgrade with one required header left out is never upgraded.
    #[test]
    fn accept_http_never_upgrades_without_a_required_header(
        key in any::<[u8; 16]>(),
        missing in 0usize..4,
        lower in any::<bool>(),
    ) {
        let mut facts = Facts {
            method: "GET".into(),
            http11: true,
            connection: Some("Upgrade".into()),
            upgrade: Some("websocket".into()),
            version: Some("13".into()),
            key: Some(BASE64.encode(key)),
            content_length: None,
            transfer_encoding: None,
        };
        prop_assert_eq!(status(&exchange(&render(&facts, "/ws", lower, &[], b""))), Some(101));
        match missing {
            0 => facts.connection = None,
            1 => facts.upgrade = None,
            2 => facts.version = None,
            _ => facts.key = None,
        }
        let response = exchange(&render(&facts, "/ws", lower, &[], b""));
        prop_assert!(matches!(status(&response), Some(400 | 426)), "{:?}", String::from_utf8_lossy(&response));
    }
}
