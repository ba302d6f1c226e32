//! An abuse battery through a real Apache (issue #14): malformed upgrades, bad frames before and
//! after login, forged forwarding headers, slow and silent clients, pre-auth replay and expiry, a
//! password-guessing burst, garbage on every Redis channel, hundreds of sessions of many users
//! and the per-user limit under churn.
//!
//! Every case ends with the same checks ([`Battery::survives`]): the push daemon is the same
//! process, and a canary session of another user (bob, logged in before the case) gets an event
//! published after the case as its next frame. Every test ends with the error-log oracle, which
//! allows only the ids the cases expect ([`Battery::allow`]).

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::client::{read_head, status_of, upgrade_request};
use common::{
    Client, Ending, Stack, ALICE, AUTHENTICATED, BOB, INVALID_CREDENTIALS, LIMIT_EXCEEDED, T,
};
use futures_util::{future, stream, SinkExt, StreamExt};
use testkit::apache::{ApacheBuilder, Mode, MODULES_DIR};
use testkit::nextcloud::UID_PATH;
use testkit::ws::{client_frame, opcode, RawWs, WsEnd};
use testkit::{require, Skip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Overall limit of one test of this file; each takes well under half of it.
const TEST_LIMIT: Duration = Duration::from_secs(120);
/// A normal login while others abuse the server takes milliseconds; this is its bound.
const FAST_LOGIN: Duration = Duration::from_secs(1);
/// The engine's login deadline and pre-auth token lifetime (spec §1.3; no directive changes them).
const AUTH_TIMEOUT: Duration = Duration::from_secs(15);
const INVALID_AUTH_MESSAGE: &str = "err: Invalid authentication message";

async fn time_limit(test: impl Future<Output = ()>) {
    if tokio::time::timeout(TEST_LIMIT, test).await.is_err() {
        panic!("not finished within {TEST_LIMIT:?}: a case waits for what never happens");
    }
}

/// A stack under abuse, the push daemon's pid at the start and the canary session.
struct Battery {
    stack: Stack,
    daemon: u32,
    canary: Client,
    cases: usize,
}

impl Battery {
    async fn start(
        configure: impl FnOnce(ApacheBuilder) -> ApacheBuilder,
    ) -> Result<Battery, Skip> {
        let mut stack = Stack::start(Mode::Foreground, configure).await?;
        let daemon = stack.apache.daemon_pid().expect("no push daemon");
        let canary = stack.login(BOB).await;
        Ok(Battery { stack, daemon, canary, cases: 0 })
    }

    /// The checks every case ends with: the daemon is the same process, and the canary's next
    /// frame is the event published now (nothing of the case leaked to it before).
    async fn survives(&mut self, case: &str) {
        assert_eq!(
            self.stack.apache.daemon_pid(),
            Some(self.daemon),
            "after {case:?}: the push daemon is gone or was replaced"
        );
        self.cases += 1;
        let slug: String =
            case.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        let marker = format!("survived_{}_{slug}", self.cases);
        self.stack.roundtrip(&mut self.canary, BOB.0, &marker).await;
    }

    /// Every Redis message published before has been handled by the daemon (its listener handles
    /// them in order, and the canary got an event published after them).
    async fn handled(&mut self) {
        let marker = format!("handled_after_case_{}", self.cases);
        self.stack.roundtrip(&mut self.canary, BOB.0, &marker).await;
    }

    /// Whitelists one expected message id for the oracle of [`Battery::finish`].
    fn allow(&mut self, id: &str) {
        self.stack.apache.allow(id);
    }

    fn addr(&self) -> SocketAddr {
        self.stack.apache.addr()
    }

    fn finish(self) {
        eprintln!("{} cases survived", self.cases);
        self.stack.finish();
    }
}

// ---------------------------------------------------------------------------------------------
// a. malformed and oversized upgrades

/// The status of the answer to `request` sent as-is (`None`: closed without a status line).
/// A write cut short by the server is fine: it may answer before reading everything.
async fn answer(addr: SocketAddr, request: &[u8]) -> (Option<u16>, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(request).await;
    let (head, _) = read_head(&mut stream, T).await;
    (status_of(&head), head)
}

/// [`upgrade_request`] (every header an upgrade needs, and `extra`) with another request line.
fn upgrade_with(port: u16, request_line: &str, extra: &str) -> String {
    upgrade_request(port, extra).replacen("GET /push/ws HTTP/1.1", request_line, 1)
}

/// What an upgrade case must get: this exact status (the module's checks), or any 4xx (Apache
/// refuses the request before the module sees it).
#[derive(Debug)]
enum Refused {
    Exactly(u16),
    ClientError,
    /// An HTTP/0.9 answer (no status line, no headers): exactly this text.
    Unversioned(&'static str),
}

async fn malformed_upgrades(b: &mut Battery) {
    let port = b.stack.apache.port();
    let valid = upgrade_request(port, "");
    let without = |header: &str| -> String {
        valid.lines().filter(|l| !l.starts_with(header)).map(|l| format!("{l}\r\n")).collect()
    };
    let huge_value = "a".repeat(64 * 1024);
    let many_headers: String = (0..1024).map(|i| format!("X-Filler-{i}: {:056}\r\n", i)).collect();
    let long_path = format!("/push/ws{}", "/a".repeat(10_000));
    let with = |extra: &str| upgrade_request(port, extra).into_bytes();
    let path = |path: &str| upgrade_with(port, &format!("GET {path} HTTP/1.1"), "").into_bytes();
    b.allow("AH10244"); // invalid URI path (the dot-dot and bad-escape cases), at error level
    let cases: Vec<(&str, Vec<u8>, Refused)> = vec![
        ("no Sec-WebSocket-Key", without("Sec-WebSocket-Key").into_bytes(), Refused::Exactly(400)),
        (
            "malformed Sec-WebSocket-Key",
            valid.replace("dGhlIHNhbXBsZSBub25jZQ==", "not-16-bytes").into_bytes(),
            Refused::Exactly(400),
        ),
        (
            "two Sec-WebSocket-Keys",
            with("Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"),
            Refused::Exactly(400),
        ),
        (
            "Sec-WebSocket-Version 8",
            valid.replace("Version: 13", "Version: 8").into_bytes(),
            Refused::Exactly(426),
        ),
        (
            "HTTP/1.0",
            upgrade_with(port, "GET /push/ws HTTP/1.0", "").into_bytes(),
            Refused::Exactly(400),
        ),
        // HTTP/0.9 has no headers, and its answer no status line: the 400's text alone.
        (
            "HTTP/0.9",
            b"GET /push/ws\r\n".to_vec(),
            Refused::Unversioned("WebSocket upgrades need HTTP/1.1"),
        ),
        (
            "POST",
            upgrade_with(port, "POST /push/ws HTTP/1.1", "Content-Length: 0\r\n").into_bytes(),
            Refused::Exactly(405),
        ),
        (
            "GET with a 64 KiB Content-Length body",
            format!("{}{}", upgrade_request(port, "Content-Length: 65536\r\n"), "x".repeat(65536))
                .into_bytes(),
            Refused::Exactly(400),
        ),
        (
            "GET announcing a 2^64-1 byte chunk and sending none",
            upgrade_request(port, "Transfer-Encoding: chunked\r\n")
                .replace("\r\n\r\n", "\r\n\r\nffffffffffffffff\r\n")
                .into_bytes(),
            Refused::ClientError,
        ),
        ("one 64 KiB header", with(&format!("X-Huge: {huge_value}\r\n")), Refused::ClientError),
        ("64 KiB in 1024 headers", with(&many_headers), Refused::ClientError),
        ("20 KB path", path(&long_path), Refused::ClientError),
        ("dot-dot above the root", path("/push/ws/../../../../etc/passwd"), Refused::ClientError),
        ("encoded NUL", path("/push/ws%00"), Refused::ClientError),
        ("bad escape", path("/push/%zz"), Refused::ClientError),
        ("encoded slash", path("/push/ws%2f"), Refused::ClientError),
        ("encoded junk under the base path", path("/push/%ff%fe%80%c0"), Refused::Exactly(404)),
        ("raw NUL in the path", path("/push/ws\0"), Refused::ClientError),
        ("NUL in a header value", with("X-Junk: a\0b\r\n"), Refused::ClientError),
        ("control byte in a header name", with("X-J\x01nk: a\r\n"), Refused::ClientError),
        ("no Host", without("Host").into_bytes(), Refused::ClientError),
        (
            "Upgrade: h2c",
            valid.replace("Upgrade: websocket", "Upgrade: h2c").into_bytes(),
            Refused::Exactly(400),
        ),
    ];
    for (case, request, expected) in cases {
        let (status, head) = answer(b.addr(), &request).await;
        let ok = match expected {
            Refused::Exactly(code) => status == Some(code),
            Refused::ClientError => matches!(status, Some(400..=499)),
            Refused::Unversioned(text) => status.is_none() && head.trim_end() == text,
        };
        assert!(ok, "{case}: expected {expected:?}, got {status:?}:\n{head}");
        b.survives(case).await;
    }
}

// ---------------------------------------------------------------------------------------------
// b. bad frames before and after login

/// A masked frame with this first byte (FIN, RSV bits, opcode).
fn frame_with_first_byte(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = client_frame(0, payload);
    frame[0] = first;
    frame
}

/// A masked close frame with a raw payload.
fn close_frame(payload: &[u8]) -> Vec<u8> {
    client_frame(opcode::CLOSE, payload)
}

/// How a connection must end.
#[derive(Debug)]
enum Expect {
    /// These text frames, then a Close frame with this code.
    Close(&'static [&'static str], u16),
    /// The connection stays open: the session still gets its events.
    Ignored,
}

/// Reads text frames until the connection ends (bounded).
async fn ending(raw: &mut RawWs) -> (Vec<String>, WsEnd) {
    let mut texts = Vec::new();
    loop {
        match raw.next_text(T).await {
            Ok(text) => texts.push(text),
            Err(end) => return (texts, end),
        }
    }
}

async fn bad_frames(b: &mut Battery, logged_in: bool) {
    let when = if logged_in { "after login" } else { "before login" };
    let protocol = |texts| Expect::Close(texts, 1002);
    let none: &'static [&'static str] = &[];
    let mut oversize_length = vec![0x81, 0x80 | 127];
    oversize_length.extend_from_slice(&(1u64 << 63).to_be_bytes());
    oversize_length.extend_from_slice(&[1, 2, 3, 4]);
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        (
            "binary frame",
            client_frame(opcode::BINARY, b"alice"),
            if logged_in { Expect::Ignored } else { Expect::Close(&[INVALID_AUTH_MESSAGE], 1008) },
        ),
        (
            "ping",
            client_frame(opcode::PING, b"hello"),
            if logged_in { Expect::Ignored } else { Expect::Close(&[INVALID_AUTH_MESSAGE], 1008) },
        ),
        (
            "unsolicited pong",
            client_frame(opcode::PONG, b"nope"),
            if logged_in {
                Expect::Close(none, 1008)
            } else {
                Expect::Close(&[INVALID_AUTH_MESSAGE], 1008)
            },
        ),
        ("ping with a 126-byte payload", client_frame(opcode::PING, &[b'p'; 126]), protocol(none)),
        // a Close is answered with a Close (RFC 6455 §5.5.1), before login too: no text
        ("close 1000", close_frame(b"\x03\xe8bye"), Expect::Close(none, 1000)),
        ("close with a 1-byte payload", close_frame(&[3]), protocol(none)),
        ("close with the reserved code 1005", close_frame(&1005u16.to_be_bytes()), protocol(none)),
        (
            "close with a reason that is not UTF-8",
            close_frame(&[0x03, 0xe8, 0xff, 0xfe]),
            Expect::Close(none, 1007),
        ),
        ("unmasked text", vec![0x81, 0x02, b'h', b'i'], protocol(none)),
        ("RSV1 set", frame_with_first_byte(0x80 | 0x40 | opcode::TEXT, b"x"), protocol(none)),
        ("reserved data opcode 0x3", client_frame(0x3, b"x"), protocol(none)),
        ("reserved control opcode 0xB", client_frame(0xB, b"x"), protocol(none)),
        ("fragmented ping", frame_with_first_byte(opcode::PING, b"x"), protocol(none)),
        ("continuation without a start", client_frame(opcode::CONTINUATION, b"x"), protocol(none)),
        (
            "text that is not UTF-8",
            client_frame(opcode::TEXT, b"a\xff\xfe"),
            Expect::Close(none, 1007),
        ),
        ("text over 4 KiB", client_frame(opcode::TEXT, &[b'a'; 5000]), Expect::Close(none, 1009)),
        ("2^63-byte frame header", oversize_length, Expect::Close(none, 1009)),
        ("an HTTP request instead of frames", b"GET / HTTP/1.1\r\n\r\n".to_vec(), protocol(none)),
    ];
    for (what, bytes, expected) in cases {
        let case = format!("{what} {when}");
        let mut raw = connect_raw(b, logged_in).await;
        raw.send_raw(&bytes).await;
        match expected {
            Expect::Close(texts, code) => {
                let (got, end) = ending(&mut raw).await;
                assert_eq!(got, texts, "{case}: {end:?}");
                assert!(
                    matches!(end, WsEnd::Closed(Some((c, _))) if c == code),
                    "{case}: expected a Close frame {code}, got {end:?}"
                );
            }
            Expect::Ignored => {
                b.stack
                    .publish("notify_custom", r#"{"user":"alice","message":"still_open"}"#)
                    .await;
                assert_eq!(raw.next_text(T).await, Ok("still_open".into()), "{case}");
            }
        }
        b.survives(&case).await;
    }

    // A frame cut short, then the client's FIN: the server ends the connection too.
    let case = format!("truncated frame then FIN {when}");
    let mut raw = connect_raw(b, logged_in).await;
    raw.send_raw(&client_frame(opcode::TEXT, &[b'a'; 100])[..20]).await;
    let mut stream = raw.into_inner();
    stream.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    let end = tokio::time::timeout(T, stream.read_to_end(&mut rest)).await;
    assert!(matches!(end, Ok(Ok(_))), "{case}: the server kept the connection: {end:?}");
    b.survives(&case).await;
}

/// A raw WebSocket of alice's, logged in or not.
async fn connect_raw(b: &Battery, logged_in: bool) -> RawWs {
    let addr = b.addr().to_string();
    let login: &[&str] = if logged_in { &[ALICE.0, ALICE.1] } else { &[] };
    let mut raw = RawWs::connect(&addr, "/push/ws", &[], login).await;
    assert_eq!(raw.status(), 101, "{}", raw.response_head);
    if logged_in {
        assert_eq!(raw.next_text(T).await, Ok(AUTHENTICATED.into()));
    }
    raw
}

// ---------------------------------------------------------------------------------------------
// g. forged vouching and forwarding headers on the upgrade

/// The latest credential check the Nextcloud double got: (X-Forwarded-For, the IP the daemon's
/// `X-Nextcloud-Push-Vouch` vouches for).
fn last_login_headers(b: &Battery) -> (Option<String>, Option<String>) {
    let requests = b.stack.nextcloud.requests_to(UID_PATH);
    let last = requests.last().expect("no credential check");
    let vouches = last.headers.iter().filter(|(name, _)| name == "x-nextcloud-push-vouch");
    assert!(vouches.count() <= 1, "a vouching header that is not the daemon's: {last:?}");
    let forwarded = last.header("x-forwarded-for").map(str::to_string);
    // "v1 <unix secs> <ip> <hex MAC>"
    let vouched = last.header("x-nextcloud-push-vouch").map(|v| {
        let parts: Vec<&str> = v.split(' ').collect();
        assert_eq!(parts.len(), 4, "vouching header {v:?}");
        assert_eq!(parts[0], "v1", "vouching header {v:?}");
        parts[2].to_string()
    });
    (forwarded, vouched)
}

async fn forged_headers(b: &mut Battery) {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let forged_vouch = format!("v1 {now} 6.6.6.6 {}", "ab".repeat(32));
    let long_chain: String =
        (0..400).map(|i| format!("10.0.{}.{}", i / 250, i % 250)).collect::<Vec<_>>().join(", ");
    let long_expected = format!("{long_chain}, 127.0.0.1");
    // (case, request headers, the X-Forwarded-For Nextcloud must get)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("forged vouching header", vec![("X-Nextcloud-Push-Vouch", &forged_vouch)], "127.0.0.1"),
        (
            "two forged vouching headers and X-Forwarded-For",
            vec![
                ("X-Nextcloud-Push-Vouch", "v1 0 6.6.6.6 00"),
                ("X-Nextcloud-Push-Vouch", &forged_vouch),
                ("X-Forwarded-For", "6.6.6.6"),
            ],
            "6.6.6.6, 127.0.0.1",
        ),
        (
            "Forwarded",
            vec![("Forwarded", "for=6.6.6.6;proto=https, for=\"[2001:db8::1]:443\"")],
            "6.6.6.6, 2001:db8::1, 127.0.0.1",
        ),
        (
            "X-Forwarded-For with an entry that is not an IP",
            vec![("X-Forwarded-For", "unknown, 6.6.6.6"), ("X-Real-IP", "7.7.7.7")],
            "7.7.7.7, 127.0.0.1",
        ),
        (
            "Forwarded with obfuscated identifiers",
            vec![("Forwarded", "for=_hidden, for=unknown")],
            "127.0.0.1",
        ),
        (
            "X-Forwarded-For of 400 addresses",
            vec![("X-Forwarded-For", &long_chain)],
            &long_expected,
        ),
    ];
    for (case, headers, chain) in cases {
        let mut c = Client::connect_with_headers(&b.stack.ws_url(), &headers, T).await;
        c.send_login(ALICE.0, ALICE.1).await;
        c.expect_text(AUTHENTICATED, T).await;
        let (forwarded, vouched) = last_login_headers(b);
        assert_eq!(forwarded.as_deref(), Some(chain), "{case}: the chain Nextcloud got");
        assert_eq!(vouched.as_deref(), Some("127.0.0.1"), "{case}: only the peer is vouched for");
        c.close().await;
        b.survives(case).await;
    }
}

#[tokio::test]
async fn malformed_upgrades_bad_frames_and_forged_headers_hurt_nobody_else() {
    time_limit(async {
        let mut b = require!(Battery::start(|b| b).await);
        malformed_upgrades(&mut b).await;
        bad_frames(&mut b, false).await;
        bad_frames(&mut b, true).await;
        forged_headers(&mut b).await;
        b.finish();
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// c. slow request heads and sessions that never log in; h. pre-auth replay and expiry

/// `RequestReadTimeout` as Debian ships it (`header=20-40,MinRate=500 body=20,MinRate=500`),
/// ten times shorter: a request head must arrive within 2 s, extended by 1 s per 500 bytes up
/// to 4 s.
const HEADER_TIMEOUT: &str = "RequestReadTimeout header=2-4,MinRate=500 body=2,MinRate=500";
const HEADER_TIMEOUT_MAX: Duration = Duration::from_secs(4);

/// Slowloris before the 101: half a request head then nothing, or a byte every 200 ms. Each
/// connection must end (with a 408 or without an answer, never a 101) once mod_reqtimeout's
/// limit passed; meanwhile a normal login is fast.
async fn slow_request_heads(b: &mut Battery) {
    let addr = b.addr();
    let head = upgrade_request(b.stack.apache.port(), "");
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(40);
    let mut slow = Vec::new();
    for i in 0..20 {
        let head = head.clone().into_bytes();
        let ready = ready_tx.clone();
        slow.push(tokio::spawn(async move {
            let started = Instant::now();
            let stream = TcpStream::connect(addr).await.expect("connect");
            let (mut reader, mut writer) = stream.into_split();
            let trickle = i % 2 == 1;
            writer
                .write_all(&head[..if trickle { 1 } else { head.len() / 2 }])
                .await
                .expect("write");
            ready.send(()).await.expect("ready");
            let write_slowly = async {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                for byte in &head[1..] {
                    tick.tick().await;
                    if !trickle || writer.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                }
                std::future::pending::<()>().await
            };
            let mut answer = Vec::new();
            let read =
                tokio::time::timeout(HEADER_TIMEOUT_MAX + T, reader.read_to_end(&mut answer));
            tokio::select! {
                result = read => assert!(matches!(result, Ok(Ok(_))), "slow head {i}: {result:?}"),
                () = write_slowly => unreachable!(),
            }
            (started.elapsed(), String::from_utf8_lossy(&answer).into_owned())
        }));
    }
    for _ in 0..20 {
        ready_rx.recv().await.expect("slow client ready");
    }
    let started = Instant::now();
    let alice = b.stack.login(ALICE).await;
    let login = started.elapsed();
    assert!(login < FAST_LOGIN, "a login took {login:?} while 20 request heads dragged on");
    alice.close().await;
    for (i, task) in slow.into_iter().enumerate() {
        let (took, answer) = task.await.expect("slow client");
        assert!(
            took >= Duration::from_millis(1500)
                && took <= HEADER_TIMEOUT_MAX + Duration::from_secs(2),
            "slow head {i} ended after {took:?} (mod_reqtimeout: {HEADER_TIMEOUT})"
        );
        // A stalled head (its request line complete) gets a 408; a trickle still in the
        // request line is closed without an answer.
        let status = status_of(&answer);
        let stalled = i % 2 == 0;
        let ok = if stalled { status == Some(408) } else { matches!(status, None | Some(408)) };
        assert!(ok, "slow head {i} got {answer:?}");
    }
    b.survives("slow request heads").await;
}

/// Sessions upgraded by Apache that never finish logging in (nothing, only a username, half a
/// frame header): each gets `Authentication timeout` and Close 1008 at the 15 s deadline.
/// Returns the task, started; it reports once all its sockets are upgraded.
fn never_authenticating(
    addr: SocketAddr,
    ready: tokio::sync::oneshot::Sender<()>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let addr = addr.to_string();
        let upgrades = (0..20).map(|i| {
            let addr = addr.clone();
            async move {
                let username: &[&str] = if i % 3 == 1 { &[ALICE.0] } else { &[] };
                let mut raw = RawWs::connect(&addr, "/push/ws", &[], username).await;
                assert_eq!(raw.status(), 101, "{}", raw.response_head);
                if i % 3 == 2 {
                    raw.send_raw(&client_frame(opcode::TEXT, ALICE.0.as_bytes())[..3]).await;
                }
                (i, Instant::now(), raw)
            }
        });
        let sockets = future::join_all(upgrades).await;
        ready.send(()).expect("ready");
        future::join_all(sockets.into_iter().map(|(i, upgraded, mut raw)| async move {
            let (texts, end) = ending_within(&mut raw, AUTH_TIMEOUT + T).await;
            let took = upgraded.elapsed();
            assert_eq!(texts, ["Authentication timeout"], "silent session {i}: {end:?}");
            assert_eq!(
                end,
                WsEnd::Closed(Some((1008, "authentication timeout".into()))),
                "silent session {i}"
            );
            assert!(
                took >= AUTH_TIMEOUT - Duration::from_millis(500)
                    && took <= AUTH_TIMEOUT + Duration::from_secs(3),
                "silent session {i} ended after {took:?}"
            );
        }))
        .await;
    })
}

/// Reads text frames until the connection ends, within `timeout` in all.
async fn ending_within(raw: &mut RawWs, timeout: Duration) -> (Vec<String>, WsEnd) {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut texts = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match raw.next_text(left).await {
            Ok(text) => texts.push(text),
            Err(end) => return (texts, end),
        }
    }
}

/// A login with a pre-auth token (any username): its text frames and how it ended, or the
/// session if it was accepted.
async fn token_login(b: &Battery, token: &str) -> Result<Client, (Vec<String>, Ending)> {
    let mut c = Client::connect(&b.stack.ws_url(), T).await;
    c.send_login("whatever", token).await;
    match c.next_text(T).await {
        Ok(text) if text == AUTHENTICATED => Ok(c),
        Ok(text) => {
            let (mut texts, ending) = c.expect_end(T).await;
            texts.insert(0, text);
            Err((texts, ending))
        }
        Err(why) => panic!("no answer to a token login: {why}"),
    }
}

fn assert_refused_token(outcome: Result<Client, (Vec<String>, Ending)>, case: &str) {
    match outcome {
        Ok(_) => panic!("{case}: the token was accepted"),
        Err((texts, ending)) => {
            assert_eq!(texts, [INVALID_CREDENTIALS], "{case}");
            assert!(matches!(ending, Ending::CloseFrame(Some((1008, _)))), "{case}: {ending:?}");
        }
    }
}

fn publish_token(b: &Battery, uid: &str, token: &str) {
    b.stack.redis.publish("notify_pre_auth", &format!(r#"{{"user":"{uid}","token":"{token}"}}"#));
}

/// Ten logins at once with one token: exactly one gets the token's user, the replays fail.
async fn pre_auth_replay(b: &mut Battery) {
    let token = "replayed-token-0123456789abcdef";
    publish_token(b, "abuse-token-user", token);
    b.handled().await;
    let outcomes = future::join_all((0..10).map(|_| token_login(b, token))).await;
    let (mut accepted, refused): (Vec<_>, Vec<_>) = outcomes.into_iter().partition(Result::is_ok);
    assert_eq!(accepted.len(), 1, "a pre-auth token is single use");
    for outcome in refused {
        assert_refused_token(outcome, "a concurrent replay");
    }
    let mut session = accepted.pop().unwrap().ok().unwrap();
    b.stack.roundtrip(&mut session, "abuse-token-user", "for_the_token_user").await;
    assert_refused_token(token_login(b, token).await, "a replay after the login");
    b.survives("pre-auth replay").await;
}

#[tokio::test]
async fn slow_and_silent_clients_time_out_and_pre_auth_tokens_expire() {
    time_limit(async {
        let mut b = require!(
            Battery::start(|b| b
                .server_line(format!(
                    "LoadModule reqtimeout_module {MODULES_DIR}/mod_reqtimeout.so"
                ))
                .server_line(HEADER_TIMEOUT))
            .await
        );
        // h. two tokens published together: one used at once, one after its lifetime.
        publish_token(&b, "abuse-fresh-user", "fresh-token-0123456789abcdef");
        publish_token(&b, "abuse-fresh-user", "expiring-token-0123456789abcdef");
        b.handled().await;
        let expired_at = Instant::now() + AUTH_TIMEOUT + Duration::from_millis(250);
        let mut fresh = token_login(&b, "fresh-token-0123456789abcdef")
            .await
            .unwrap_or_else(|refused| panic!("a fresh token was refused: {refused:?}"));
        b.stack.roundtrip(&mut fresh, "abuse-fresh-user", "fresh_token").await;

        // c. after the 101: 20 sessions that never log in, while the other cases run.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let silent = never_authenticating(b.addr(), ready_tx);
        ready_rx.await.expect("silent sessions upgraded");
        let started = Instant::now();
        let mut alice = b.stack.login(ALICE).await;
        let login = started.elapsed();
        assert!(login < FAST_LOGIN, "a login took {login:?} next to 20 silent sessions");
        b.stack.roundtrip(&mut alice, ALICE.0, "fast_next_to_silent_sessions").await;

        // c. before the 101.
        slow_request_heads(&mut b).await;
        // h. replay.
        pre_auth_replay(&mut b).await;

        silent.await.expect("silent sessions");
        b.survives("sessions that never log in").await;

        // h. expiry: the daemon received the token before `expired_at - 15.25 s`.
        tokio::time::sleep_until(expired_at.into()).await;
        assert_refused_token(token_login(&b, "expiring-token-0123456789abcdef").await, "expired");
        b.survives("an expired pre-auth token").await;
        // Sessions of before are still served.
        b.stack.roundtrip(&mut alice, ALICE.0, "alice_after_the_timeouts").await;
        b.stack.roundtrip(&mut fresh, "abuse-fresh-user", "token_session_after_the_timeouts").await;
        b.finish();
    })
    .await;
}

/// Without mod_reqtimeout, Apache's `Timeout` alone ends a request head that stalls: each of
/// 10 half heads ends after `Timeout 2` (never a 101) while a login stays fast, and the daemon
/// never sees them. (A head trickled byte by byte resets `Timeout` at every byte: only
/// mod_reqtimeout, which Debian enables, bounds that; see the case above.)
#[tokio::test]
async fn stalled_request_heads_end_at_timeout_without_mod_reqtimeout() {
    time_limit(async {
        let mut b = require!(Battery::start(|b| b.server_line("Timeout 2")).await);
        let addr = b.addr();
        let head = upgrade_request(b.stack.apache.port(), "").into_bytes();
        let stalled = future::join_all((0..10).map(|_| {
            let half = head[..head.len() / 2].to_vec();
            async move {
                let started = Instant::now();
                let mut stream = TcpStream::connect(addr).await.expect("connect");
                stream.write_all(&half).await.expect("write");
                let mut answer = Vec::new();
                let read = tokio::time::timeout(T, stream.read_to_end(&mut answer)).await;
                assert!(matches!(read, Ok(Ok(_))), "a stalled head still open after {T:?}");
                (started.elapsed(), String::from_utf8_lossy(&answer).into_owned())
            }
        }));
        let login = async {
            let started = Instant::now();
            let alice = b.stack.login(ALICE).await;
            let took = started.elapsed();
            alice.close().await;
            took
        };
        let (ended, login) = tokio::join!(stalled, login);
        assert!(login < FAST_LOGIN, "a login took {login:?} next to 10 stalled heads");
        for (i, (took, answer)) in ended.into_iter().enumerate() {
            assert!(
                took >= Duration::from_millis(1500) && took <= Duration::from_secs(5),
                "stalled head {i} ended after {took:?} (Timeout 2)"
            );
            assert!(matches!(status_of(&answer), None | Some(408)), "stalled head {i}: {answer:?}");
        }
        b.survives("stalled heads without mod_reqtimeout").await;
        b.finish();
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// d. a password-guessing burst

/// `n` logins of alice with wrong passwords, `at_once` at a time: how each ended.
async fn wrong_logins(url: &str, n: usize, at_once: usize) -> Vec<(Vec<String>, Ending)> {
    stream::iter(0..n)
        .map(|i| async move {
            let mut c = Client::connect(url, T).await;
            c.send_login(ALICE.0, &format!("guess-{i}")).await;
            c.expect_end(T).await
        })
        .buffer_unordered(at_once)
        .collect()
        .await
}

async fn password_guessing(b: &mut Battery) {
    let url = b.stack.ws_url();
    let checks_before = common::uid_requests(&b.stack.nextcloud);
    for (texts, ending) in wrong_logins(&url, 200, 20).await {
        assert_eq!(texts, [INVALID_CREDENTIALS]);
        assert!(matches!(ending, Ending::CloseFrame(Some((1008, _)))), "{ending:?}");
    }
    // Every guess was Nextcloud's to judge (its brute-force protection sees them all)…
    assert_eq!(common::uid_requests(&b.stack.nextcloud) - checks_before, 200);
    // …and the module locks nobody out.
    b.stack.login(ALICE).await.close().await;
    b.survives("200 wrong passwords").await;

    // Nextcloud's brute-force protection answers 429: said so to each client, with 1011.
    b.allow("NCP1010"); // login failed: Nextcloud answered an error status
    b.stack.nextcloud.force_status(Some(429));
    let throttled = wrong_logins(&url, 20, 10).await;
    b.stack.nextcloud.force_status(None);
    let said = "err: Error while sending authentication request to nextcloud: \
                Client error: 429 Too Many Requests";
    for (texts, ending) in throttled {
        assert_eq!(texts, [said]);
        assert!(matches!(ending, Ending::CloseFrame(Some((1011, _)))), "{ending:?}");
    }
    b.survives("20 logins throttled by Nextcloud").await;
}

// ---------------------------------------------------------------------------------------------
// e. garbage on every Redis channel

/// Payloads that are invalid on every channel (not UTF-8, not JSON, the wrong shape or types,
/// nested too deep), or valid only for being huge.
fn garbage() -> Vec<(&'static str, Vec<u8>)> {
    let mib = 1024 * 1024;
    let huge_string = format!("\"{}\"", "a".repeat(mib));
    let huge_fields = format!(
        r#"{{"user":"{0}","message":"{0}","token":"{0}","path":"{0}","log_spec":"{0}","group":"{0}"}}"#,
        "u".repeat(mib / 6)
    );
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_body = format!(
        r#"{{"user":"nobody","message":"deep","body":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    vec![
        ("bytes that are not UTF-8", b"\xff\xfe\x00garbage".to_vec()),
        ("not JSON", b"{not json".to_vec()),
        ("null", b"null".to_vec()),
        ("an array", b"[1,2,3]".to_vec()),
        ("a negative number", b"-1".to_vec()),
        (
            "fields of the wrong types",
            br#"{"user":1,"storage":"3","path":[],"file_id":-1,"token":{},"message":false,"log_spec":7}"#
                .to_vec(),
        ),
        ("a 1 MiB string", huge_string.into_bytes()),
        ("1 MiB of string fields", huge_fields.into_bytes()),
        ("10,000 nested arrays", deep.into_bytes()),
        ("a body of 10,000 nested arrays", deep_body.into_bytes()),
    ]
}

async fn redis_garbage(b: &mut Battery) {
    // invalid JSON or wrong types; unknown notify_query / notify_signal; a notify_config log spec
    // that names no level
    for id in ["NCP1003", "NCP1005", "NCP1008"] {
        b.allow(id);
    }
    let log_before = b.stack.apache.error_log().len();
    // Every channel the daemon subscribes to (PUBSUB CHANNELS: spec §2.2 lists 11).
    let channels = b.stack.redis.channels();
    assert_eq!(channels.len(), 11, "{channels:?}");
    for channel in &channels {
        for (what, payload) in garbage() {
            let receivers = b.stack.redis.publish_bytes(channel, &payload);
            assert_eq!(receivers, 1, "{channel}: {what}");
        }
        b.survives(&format!("garbage on {channel}")).await;
    }
    let grown = b.stack.apache.error_log().len() - log_before;
    let published = channels.len() * garbage().iter().map(|(_, p)| p.len()).sum::<usize>();
    assert!(
        grown < 64 * 1024,
        "{published} bytes of garbage made the error log grow by {grown} bytes"
    );
}

// ---------------------------------------------------------------------------------------------
// f. isolation across hundreds of sessions

/// A small deterministic generator (xorshift64*), seeded per run and printed for a rerun.
struct Rng(u64);

impl Rng {
    fn from_env_or_time() -> Rng {
        let seed =
            std::env::var("ABUSE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("isolation: ABUSE_SEED={seed}");
        Rng(seed | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

const USERS: usize = 30;
const SESSIONS: usize = 300;
const ROUNDS: usize = 4;
const EVENTS_PER_ROUND: usize = 75;
/// At most this many events per user and round: below the daemon's per-user queue of 16, so no
/// session may lag and lose any.
const PER_USER_ROUND_CAP: usize = 12;

async fn isolation(b: &mut Battery) {
    let users: Vec<String> = (0..USERS).map(|u| format!("crowd-{u:02}")).collect();
    for user in &users {
        b.stack.nextcloud.add_user(user, &format!("{user}-password"), user);
    }
    let url = b.stack.ws_url();
    let mut sessions = stream::iter(0..SESSIONS)
        .map(|s| {
            let (url, user) = (url.clone(), users[s % USERS].clone());
            async move {
                let client = Client::login(&url, &user, &format!("{user}-password"), T).await;
                (s % USERS, client)
            }
        })
        .buffer_unordered(25)
        .collect::<Vec<_>>()
        .await;
    let mut rng = Rng::from_env_or_time();
    for round in 0..ROUNDS {
        let mut expected = vec![Vec::new(); USERS];
        for k in 0..EVENTS_PER_ROUND {
            let mut u = rng.below(USERS);
            while expected[u].len() >= PER_USER_ROUND_CAP {
                u = rng.below(USERS);
            }
            // keys in serde_json's order: the daemon re-serialises the body
            let body = format!(r#"{{"for":"{}","k":{k},"round":{round}}}"#, users[u]);
            b.stack
                .publish(
                    "notify_custom",
                    &format!(r#"{{"user":"{}","message":"crowd","body":{body}}}"#, users[u]),
                )
                .await;
            expected[u].push(format!("crowd {body}"));
        }
        // Each user's own end marker: whatever a session got before it is all it got.
        for (u, user) in users.iter().enumerate() {
            let end = format!("end_{round}_{u}");
            b.stack
                .publish("notify_custom", &format!(r#"{{"user":"{user}","message":"{end}"}}"#))
                .await;
        }
        future::join_all(sessions.iter_mut().map(|(u, client)| {
            let expected = &expected[*u];
            async move {
                let end = format!("end_{round}_{u}");
                let mut got = Vec::new();
                loop {
                    match client.next_text(T).await {
                        Ok(text) if text == end => break,
                        Ok(text) => got.push(text),
                        Err(why) => {
                            panic!("round {round}, a session of user {u}: {why} (got {got:?})")
                        }
                    }
                }
                assert_eq!(&got, expected, "round {round}: a session of user {u}");
            }
        }))
        .await;
        b.survives(&format!("isolation round {round}")).await;
    }
}

// ---------------------------------------------------------------------------------------------
// i. the per-user limit under churn

async fn per_user_limit(b: &mut Battery) {
    let url = b.stack.ws_url();
    let mut sessions = stream::iter(0..65)
        .map(|_| Client::login(&url, ALICE.0, ALICE.1, T))
        .buffer_unordered(20)
        .collect::<Vec<_>>()
        .await;
    // 20 more at once, by password and by a pre-auth token: all refused after `authenticated`.
    for i in 0..5 {
        publish_token(b, ALICE.0, &format!("limit-token-{i}-0123456789abcdef"));
    }
    b.handled().await;
    let refused = future::join_all((0..20).map(|i| {
        let url = url.clone();
        async move {
            let mut c = Client::connect(&url, T).await;
            if i < 5 {
                c.send_login("whatever", &format!("limit-token-{i}-0123456789abcdef")).await;
            } else {
                c.send_login(ALICE.0, ALICE.1).await;
            }
            c.expect_end(T).await
        }
    }))
    .await;
    for (texts, ending) in refused {
        assert_eq!(texts, [AUTHENTICATED, LIMIT_EXCEEDED]);
        assert!(matches!(ending, Ending::CloseFrame(Some((1008, _)))), "{ending:?}");
    }
    b.stack.publish("notify_custom", r#"{"user":"alice","message":"to_all_65"}"#).await;
    for c in &mut sessions {
        c.expect_text("to_all_65", T).await;
    }
    b.survives("the 66th to 85th session of one user").await;

    // Refused sessions took no slot; closed ones free theirs: five close, five get in.
    for c in sessions.drain(..5) {
        c.close().await;
    }
    let mut admitted = 0;
    let deadline = Instant::now() + T;
    while admitted < 5 {
        assert!(Instant::now() < deadline, "only {admitted} of 5 freed slots were given again");
        let mut c = Client::connect(&url, T).await;
        c.send_login(ALICE.0, ALICE.1).await;
        c.expect_text(AUTHENTICATED, T).await;
        // The daemon may not yet have seen a closed session end: then this one is refused, and
        // the slot is free a moment later.
        if admitted_after_authenticated(&mut c).await {
            admitted += 1;
            sessions.push(c);
        }
    }
    let mut extra = Client::connect(&url, T).await;
    extra.send_login(ALICE.0, ALICE.1).await;
    let (texts, _) = extra.expect_end(T).await;
    assert_eq!(texts, [AUTHENTICATED, LIMIT_EXCEEDED], "65 again: the next is refused");
    b.stack.publish("notify_custom", r#"{"user":"alice","message":"to_the_65_again"}"#).await;
    for c in &mut sessions {
        c.expect_text("to_the_65_again", T).await;
    }
    b.survives("the limit after churn").await;
}

/// After `authenticated`: a refused session gets the limit text next, an admitted one serves
/// (answers a ping).
async fn admitted_after_authenticated(c: &mut Client) -> bool {
    let ws = c.ws_mut();
    ws.send(Message::Ping(b"slot?".to_vec().into())).await.expect("ping");
    loop {
        match tokio::time::timeout(T, ws.next()).await.expect("no answer to a ping") {
            Some(Ok(Message::Pong(payload))) if payload.as_ref() == b"slot?" => return true,
            Some(Ok(Message::Text(text))) if text.as_str() == LIMIT_EXCEEDED => return false,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("after `authenticated`: {other:?}"),
        }
    }
}

#[tokio::test]
async fn bursts_garbage_and_crowds_leave_the_daemon_and_other_users_alone() {
    time_limit(async {
        let mut b = require!(Battery::start(|b| b).await);
        password_guessing(&mut b).await;
        redis_garbage(&mut b).await;
        isolation(&mut b).await;
        per_user_limit(&mut b).await;
        b.finish();
    })
    .await;
}
