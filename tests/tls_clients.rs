//! The TLS session handoff against clients of other stacks and their TLS-level moves:
//! `openssl s_client` (OpenSSL's TLS 1.2 CBC suites stay bridged; renegotiation after the
//! handoff is refused), a rustls client closing with close_notify, and `SSLKEYLOGFILE`, which
//! must keep working while the module chains its own keylog callback. Real apache2 + mod_ssl
//! with a per-run CA, every test ends with the error-log oracle.

mod common;

use common::client::{masked_text_frame, upgrade_request};
use common::{Client, Stack, ALICE, AUTHENTICATED, BOB, INVALID_CREDENTIALS, T};
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::apache::{Mode, Mpm};
use testkit::require;
use testkit::tls::{wss_url, TestCa};

async fn tls_stack(
    configure: impl FnOnce(testkit::apache::ApacheBuilder) -> testkit::apache::ApacheBuilder,
) -> Result<(TestCa, Stack), testkit::Skip> {
    let ca = TestCa::generate()?;
    let stack =
        Stack::start(Mode::Foreground, |b| configure(ca.configure(b.mpm(Mpm::Event)))).await?;
    Ok((ca, stack))
}

/// `openssl s_client` talking WebSocket: stdin takes raw bytes (and, without `-quiet`, its
/// command lines such as `R`), stdout is collected by a thread.
struct SClient {
    child: Child,
    out: Arc<Mutex<Vec<u8>>>,
}

impl SClient {
    fn start(ca: &TestCa, port: u16, args: &[&str]) -> SClient {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{port}"),
                "-servername",
                "localhost",
            ])
            .arg("-CAfile")
            .arg(&ca.ca_cert)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl s_client");
        let out = Arc::new(Mutex::new(Vec::new()));
        for mut pipe in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    out.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        SClient { child, out }
    }

    fn send(&mut self, bytes: &[u8]) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(bytes).expect("write to s_client");
        stdin.flush().expect("flush");
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Waits until stdout+stderr contain `needle`.
    async fn wait_for(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.output().contains(needle) {
            assert!(Instant::now() < deadline, "no {needle:?} from s_client:\n{}", self.output());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) for s_client to exit; true if it did.
    async fn exited(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.child.try_wait().ok().flatten().is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

impl Drop for SClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The upgrade and both login frames, as one write.
fn upgrade_and_login(port: u16, (user, password): (&str, &str)) -> Vec<u8> {
    let mut bytes = upgrade_request(port, "").into_bytes();
    bytes.extend(masked_text_frame(user));
    bytes.extend(masked_text_frame(password));
    bytes
}

/// A TLS 1.2 CBC suite (OpenSSL's client offers it, rustls cannot): the daemon's record layer
/// does not continue CBC, so the session stays with its worker (NCP0036 says why) and works
/// bridged; `<base>/metrics` counts it apart from a session that moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cbc_session_stays_bridged_and_works() {
    let (ca, stack) = require!(tls_stack(|b| b.vhost_line("NextcloudPushMetrics On")).await);
    let port = stack.apache.port();
    let mut s =
        SClient::start(&ca, port, &["-quiet", "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"]);
    s.send(&upgrade_and_login(port, ALICE));
    s.wait_for(AUTHENTICATED, T).await;
    let line = stack.apache.await_error_log("NCP0036", T).await;
    assert!(line.contains("not an AEAD suite"), "{line}");
    stack.apache.await_error_log("NCP0108", T).await;
    stack.publish("notify_custom", r#"{"user":"alice","message":"over_cbc"}"#).await;
    s.wait_for("over_cbc", T).await;
    assert!(!stack.apache.error_log().contains("NCP0114"), "nothing was handed over");
    // Next to it a session that moves: the metrics count both kinds.
    let ws = ca.connect(&wss_url(port), T).await.unwrap_or_else(|e| panic!("{e}"));
    let mut bob = Client::from_ws(ws);
    bob.send_login(BOB.0, BOB.1).await;
    bob.expect_text(AUTHENTICATED, T).await;
    stack.apache.await_error_log("NCP0114", T).await;
    let metrics = Command::new("curl")
        .args(["-s", "--max-time", "5", "--cacert"])
        .arg(&ca.ca_cert)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}/push/metrics"))
        .output()
        .expect("curl");
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    for line in [
        "push_session_count{transport=\"tls\"} 1",
        "push_session_count{transport=\"bridged\"} 1",
        "push_session_count{transport=\"plain\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "missing {line:?} in\n{metrics}");
    }
    bob.close().await;
    drop(s);
    stack.apache.await_error_log("NCP0035", T).await;
    stack.finish();
}

/// TLS 1.2 renegotiation after the handoff (`R` in s_client): the daemon refuses it
/// (`no_renegotiation`, then close_notify) and ends that session; the daemon and every other
/// session go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renegotiation_after_the_handoff_ends_only_that_session() {
    let (ca, stack) = require!(tls_stack(|b| b).await);
    let port = stack.apache.port();
    let mut bob = {
        let ws = ca.connect(&wss_url(port), T).await.unwrap_or_else(|e| panic!("{e}"));
        let mut c = Client::from_ws(ws);
        c.send_login(BOB.0, BOB.1).await;
        c.expect_text(AUTHENTICATED, T).await;
        c
    };
    let mut s = SClient::start(&ca, port, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"]);
    s.wait_for("Verify return code: 0 (ok)", T).await;
    s.send(&upgrade_and_login(port, ALICE));
    s.wait_for(AUTHENTICATED, T).await;
    let line = stack.apache.await_error_log("suite 0xc02b", T).await;
    assert!(line.contains("NCP0114"), "{line}");
    // A line of its own: s_client reads it as its renegotiation command.
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.send(b"R\n");
    assert!(s.exited(T).await, "s_client still connected after R:\n{}", s.output());
    let out = s.output();
    assert!(out.contains("RENEGOTIATING"), "{out}");
    assert!(out.contains("no renegotiation") || out.contains("no_renegotiation"), "{out}");
    stack.roundtrip(&mut bob, "bob", "bob_unaffected").await;
    bob.close().await;
    stack.finish();
}

/// A client that ends the TLS session with close_notify after the handoff gets the daemon's
/// close_notify back (a clean end of stream, no truncation) and its session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_notify_from_the_client_is_answered_by_the_daemon() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (ca, stack) = require!(tls_stack(|b| b).await);
    let ws = ca.connect(&wss_url(stack.apache.port()), T).await.unwrap_or_else(|e| panic!("{e}"));
    let mut alice = Client::from_ws(ws);
    alice.send_login(ALICE.0, ALICE.1).await;
    alice.expect_text(AUTHENTICATED, T).await;
    stack.apache.await_error_log("NCP0114", T).await;
    let tokio_tungstenite::MaybeTlsStream::Rustls(tls) = alice.ws_mut().get_mut() else {
        panic!("not rustls")
    };
    tls.get_mut().1.send_close_notify();
    tls.flush().await.expect("flush close_notify");
    let mut rest = Vec::new();
    let end = tokio::time::timeout(T, tls.read_to_end(&mut rest)).await.expect("end in time");
    assert!(end.is_ok(), "a clean TLS end (the daemon's close_notify), got {end:?}");
    stack.apache.await_error_log("alice disconnected", T).await;
    stack.finish();
}

/// `SSLKEYLOGFILE` set for Apache: mod_ssl's keylog file still gets every secret while the
/// module's own callback (chained after it) tracks them, and the session still moves. The
/// secrets themselves never appear in the error log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslkeylogfile_keeps_working_with_the_handoff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keylog = dir.path().join("keys.log");
    std::fs::write(&keylog, b"").expect("keylog file");
    // Apache's children run as nobody: the file must be writable by it.
    let _ = Command::new("chmod").args(["0666"]).arg(&keylog).status();
    let _ = Command::new("chmod").args(["0777"]).arg(dir.path()).status();
    let (ca, stack) = require!(
        tls_stack(|b| b.env_var("SSLKEYLOGFILE", keylog.to_str().expect("utf-8 path"))).await
    );
    let ws = ca.connect(&wss_url(stack.apache.port()), T).await.unwrap_or_else(|e| panic!("{e}"));
    let mut alice = Client::from_ws(ws);
    alice.send_login(ALICE.0, ALICE.1).await;
    alice.expect_text(AUTHENTICATED, T).await;
    stack.apache.await_error_log("NCP0114", T).await;
    stack.roundtrip(&mut alice, "alice", "with_a_keylog").await;
    let logged = std::fs::read_to_string(&keylog).unwrap_or_default();
    for label in ["CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"] {
        assert!(logged.contains(label), "{label} missing from SSLKEYLOGFILE:\n{logged}");
        // The secrets the daemon got never reach the error log (debug level here), in any form.
        let line = logged.lines().find(|l| l.starts_with(label)).expect("a line");
        let secret_hex = line.rsplit(' ').next().expect("secret");
        let bytes: Vec<u8> = (0..secret_hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&secret_hex[i..i + 2], 16).expect("hex"))
            .collect();
        let log = stack.apache.error_log();
        assert!(
            !log.to_ascii_lowercase().contains(&secret_hex.to_ascii_lowercase()),
            "{label} in the log"
        );
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &bytes);
        assert!(!log.contains(&b64), "{label} (base64) in the log");
    }
    alice.close().await;
    stack.finish();
}

/// A page of the push vhost whose script opens `wss://<host>/push/ws`, sends `user` and
/// `password` and shows every message (`msg:…`) and the close code (`close:…`), plus the
/// protocol the page itself came over (`page:h2`, `page:http/1.1`).
fn push_page(user: &str, password: &str) -> String {
    format!(
        "<!doctype html><html><body><script>\n\
         const out = (t) => {{ const p = document.createElement('p'); p.textContent = t; \
         document.body.appendChild(p); }};\n\
         out('page:' + performance.getEntriesByType('navigation')[0].nextHopProtocol);\n\
         const ws = new WebSocket('wss://' + location.host + '/push/ws');\n\
         ws.onopen = () => {{ ws.send('{user}'); ws.send('{password}'); }};\n\
         ws.onmessage = (m) => out('msg:' + m.data);\n\
         ws.onclose = (e) => out('close:' + e.code);\n\
         </script></body></html>\n"
    )
}

/// A TLS stack that serves `nextcloud/push-test.html` (the page of [`push_page`]).
async fn page_stack(
    page: &str,
    configure: impl FnOnce(testkit::apache::ApacheBuilder) -> testkit::apache::ApacheBuilder,
) -> Result<(TestCa, Stack), testkit::Skip> {
    tls_stack(|b| {
        configure(
            b.extra_file("nextcloud/push-test.html", page)
                .server_line(format!(
                    "LoadModule mime_module {}/mod_mime.so",
                    testkit::apache::MODULES_DIR
                ))
                .server_line("TypesConfig /dev/null")
                .server_line("AddType text/html .html"),
        )
    })
    .await
}

/// Headless Chromium showing one page, driven over the DevTools protocol so the page stays
/// open as long as the test needs it; killed on drop (before Apache stops: its keep-alive
/// connections would hold a child).
struct Browser {
    child: Child,
    profile: tempfile::TempDir,
}

impl Browser {
    /// `None` (skipped, said why) without Chromium outside CI.
    fn open(url: &str) -> Option<Browser> {
        let Some(chromium) = testkit::find_binary("chromium") else {
            assert!(!testkit::in_ci(), "chromium not found (CI=true: nothing skips)");
            eprintln!("skipped: chromium not found (apt-get install chromium)");
            return None;
        };
        let profile = tempfile::tempdir().expect("profile dir");
        let child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                // The page and the WebSocket use the per-run test CA.
                "--ignore-certificate-errors",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run chromium");
        Some(Browser { child, profile })
    }

    async fn text_when(&self, needle: &str, timeout: Duration) -> String {
        page_text_when(self.profile.path(), needle, timeout).await
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body `curl` gets for `url` (certificate not checked: the per-run test CA).
fn curl_text(url: &str) -> String {
    let out = Command::new("curl").args(["-sk", "--max-time", "5", url]).output().expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn page_url(stack: &Stack) -> String {
    format!("https://localhost:{}/push-test.html", stack.apache.port())
}

/// A real browser: headless Chromium loads an https page from the push vhost whose script opens
/// `wss://<host>/push/ws`, logs in and prints what arrives. The session moves to the daemon
/// (NCP0114), and an event published afterwards reaches the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_websocket_over_https_is_handed_off() {
    let (_ca, stack) = require!(page_stack(&push_page(ALICE.0, ALICE.1), |b| b).await);
    let Some(browser) = Browser::open(&page_url(&stack)) else { return };
    stack.apache.await_error_log("NCP0114", Duration::from_secs(30)).await;
    stack.apache.await_error_log("alice connected", T).await;
    stack.publish("notify_custom", r#"{"user":"alice","message":"to_the_browser"}"#).await;
    let text = browser.text_when("msg:to_the_browser", Duration::from_secs(20)).await;
    assert!(text.contains(&format!("msg:{AUTHENTICATED}")), "{text}");
    drop(browser);
    stack.finish();
}

/// The failure path in a real browser: a wrong password gives the page exactly the text the
/// clients compare with (`err: Invalid credentials`), then a close frame with 1008 (policy
/// violation), not the 1006 of a dropped connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_sees_the_refused_login_text_and_close_code_1008() {
    let (_ca, stack) = require!(page_stack(&push_page(ALICE.0, "wrong"), |b| b).await);
    let Some(browser) = Browser::open(&page_url(&stack)) else { return };
    let text = browser.text_when("close:", Duration::from_secs(30)).await;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines[1..], [format!("msg:{INVALID_CREDENTIALS}").as_str(), "close:1008"], "{text}");
    drop(browser);
    stack.finish();
}

/// `H2WebSockets on` (RFC 8441): Chromium opens the WebSocket as an extended CONNECT on the
/// page's HTTP/2 connection. mod_http2 hands the module an upgrade GET on an h2 stream, which is
/// relayed by the h2 worker (NCP0039, counted as bridged): login, an event and the browser
/// leaving all work, and the stream's worker is let go when the browser goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_websocket_over_http2_is_relayed() {
    let (_ca, stack) = require!(
        page_stack(&push_page(ALICE.0, ALICE.1), |b| b
            .server_line(format!(
                "LoadModule http2_module {}/mod_http2.so",
                testkit::apache::MODULES_DIR
            ))
            .server_line("Protocols h2 http/1.1")
            .server_line("H2WebSockets on")
            .server_line("LogLevel http2:trace2")
            .server_line(format!(
                "LoadModule status_module {}/mod_status.so",
                testkit::apache::MODULES_DIR
            ))
            .server_line("<Location /server-status>\n    SetHandler server-status\n</Location>"))
        .await
    );
    let Some(browser) = Browser::open(&page_url(&stack)) else { return };
    let text = browser.text_when("page:", Duration::from_secs(30)).await;
    assert!(text.contains("page:h2"), "the page did not come over HTTP/2: {text}");
    stack.apache.await_error_log("NCP0039", T).await;
    stack.apache.await_error_log("alice connected", T).await;
    stack.publish("notify_custom", r#"{"user":"alice","message":"over_h2"}"#).await;
    let text = browser.text_when("msg:over_h2", Duration::from_secs(20)).await;
    assert!(text.contains(&format!("msg:{AUTHENTICATED}")), "{text}");
    // An idle relayed stream sleeps in poll(2) on mod_http2's input pipe: its Apache child
    // uses well under a second of CPU in two seconds (a relay spinning on a readable pipe or
    // on the placeholder socket would use all of them).
    let log = stack.apache.error_log();
    let child: u32 = log
        .lines()
        .find(|l| l.contains("NCP0039"))
        .and_then(|l| l.split("[pid ").nth(1))
        .and_then(|p| p.split([':', ']']).next())
        .and_then(|p| p.parse().ok())
        .expect("the pid of the child that logged NCP0039");
    let before = testkit::apache::cpu_ticks(child).expect("child's CPU time");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = testkit::apache::cpu_ticks(child).expect("child's CPU time") - before;
    assert!(used < 50, "the child relaying an idle h2 WebSocket used {used} ticks in 2 s");
    let status =
        curl_text(&format!("https://localhost:{}/server-status?auto", stack.apache.port()));
    assert!(status.lines().any(|l| l == "NextcloudPushSessionsBridged: 1"), "{status}");
    assert!(!stack.apache.error_log().contains("NCP0114"), "an h2 stream must never be handed off");
    drop(browser);
    stack.apache.await_error_log("NCP0035: bridged WebSocket ended", T).await;
    stack.apache.await_error_log("alice disconnected", T).await;
    stack.finish();
}

/// `openssl s_client` after the handoff (TLS 1.3): `K` (KeyUpdate, update requested) and `k`
/// (not requested) — the daemon follows both (later events still decrypt at the client, the
/// client's later records at the daemon) — then `Q`: the client's close_notify ends the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s_client_key_updates_and_close_after_the_handoff() {
    let (ca, stack) = require!(tls_stack(|b| b).await);
    let port = stack.apache.port();
    let mut s = SClient::start(&ca, port, &["-tls1_3"]);
    s.wait_for("Verify return code: 0 (ok)", T).await;
    s.send(&upgrade_and_login(port, ALICE));
    s.wait_for(AUTHENTICATED, T).await;
    stack.apache.await_error_log("NCP0114", T).await;
    for (n, command) in [b"K\n", b"k\n"].into_iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.send(command);
        s.wait_for("KEYUPDATE", T).await;
        // A frame from the client under its new key, then an event under the daemon's.
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.send(&masked_text_frame("listen notify_file_id"));
        let marker = format!("after_key_update_{n}");
        stack
            .publish("notify_custom", &format!(r#"{{"user":"alice","message":"{marker}"}}"#))
            .await;
        s.wait_for(&marker, T).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.send(b"Q\n");
    assert!(s.exited(T).await, "s_client still running after Q:\n{}", s.output());
    stack.apache.await_error_log("alice disconnected", T).await;
    stack.finish();
}

/// The page's `document.body.innerText` (asked over the DevTools protocol of the Chromium whose
/// profile is `profile`) once it contains `needle`.
async fn page_text_when(profile: &Path, needle: &str, timeout: Duration) -> String {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let deadline = Instant::now() + timeout;
    // Chromium writes its DevTools port here once it listens.
    let port_file = profile.join("DevToolsActivePort");
    let port: u16 = loop {
        if let Some(port) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()))
        {
            break port;
        }
        assert!(Instant::now() < deadline, "Chromium's DevTools never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The page's WebSocket debugger URL from /json/list.
    let page_ws = loop {
        // curl: DevTools' HTTP server keeps the connection open.
        let list = Command::new("curl")
            .args(["-s", "--max-time", "3"])
            .arg(format!("http://127.0.0.1:{port}/json/list"))
            .output()
            .expect("curl");
        let body = String::from_utf8_lossy(&list.stdout).into_owned();
        let json = body.as_str();
        let pages: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
        let found = pages.as_array().and_then(|pages| {
            pages
                .iter()
                .find(|p| p["type"] == "page")
                .and_then(|p| p["webSocketDebuggerUrl"].as_str().map(str::to_owned))
        });
        if let Some(found) = found {
            break found;
        }
        assert!(Instant::now() < deadline, "no page in DevTools: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (mut cdp, _) = tokio::time::timeout(T, tokio_tungstenite::connect_async(page_ws.as_str()))
        .await
        .expect("CDP connect in time")
        .expect("CDP");
    let mut id = 0;
    loop {
        id += 1;
        let ask = serde_json::json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": {"expression": "document.body ? document.body.innerText : ''"}
        });
        cdp.send(Message::text(ask.to_string())).await.expect("CDP send");
        let text = loop {
            let reply =
                tokio::time::timeout(T, cdp.next()).await.expect("CDP answer").expect("open");
            let Ok(Message::Text(reply)) = reply else { continue };
            let reply: serde_json::Value = serde_json::from_str(reply.as_str()).unwrap_or_default();
            if reply["id"] == id {
                break reply["result"]["result"]["value"].as_str().unwrap_or("").to_owned();
            }
        };
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "the page never showed {needle:?}: {text:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
