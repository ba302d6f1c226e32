//! WebSocket clients for the black-box tests: a tokio-tungstenite client with expectation helpers,
//! and raw-socket helpers for what a client library hides (pipelined bytes, status lines).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const AUTHENTICATED: &str = "authenticated";
pub const INVALID_CREDENTIALS: &str = "err: Invalid credentials";
pub const LIMIT_EXCEEDED: &str =
    "Error while handling authentication: Connection limit exceeded for user";

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// A Close frame; `None` = empty payload (no status code).
    CloseFrame(Option<(u16, String)>),
    /// The TCP connection ended without a Close frame (what clients report as 1006).
    Dropped,
}

/// TCP_NODELAY on client sockets, as browsers and the desktop client set it: without it the
/// password frame waits for the ACK of the username frame (Nagle + delayed ACK, ~40 ms).
const NODELAY: bool = true;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    ws: Ws,
}

impl Client {
    /// Upgrades with tokio-tungstenite; panics unless the answer is a 101 within `timeout`.
    pub async fn connect(url: &str, timeout: Duration) -> Client {
        let (ws, response): (Ws, _) = tokio::time::timeout(
            timeout,
            tokio_tungstenite::connect_async_with_config(url, None, NODELAY),
        )
        .await
        .unwrap_or_else(|_| panic!("no WebSocket handshake with {url} within {timeout:?}"))
        .unwrap_or_else(|e| panic!("WebSocket handshake with {url} failed: {e}"));
        assert_eq!(response.status().as_u16(), 101);
        Client { ws }
    }

    /// Upgrades with extra request headers (e.g. `X-Forwarded-For`).
    pub async fn connect_with_headers(
        url: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Client {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().expect("request");
        for (name, value) in headers {
            request.headers_mut().insert(http_name(name), value.parse().expect("header value"));
        }
        let (ws, response): (Ws, _) = tokio::time::timeout(
            timeout,
            tokio_tungstenite::connect_async_with_config(request, None, NODELAY),
        )
        .await
        .unwrap_or_else(|_| panic!("no WebSocket handshake with {url} within {timeout:?}"))
        .unwrap_or_else(|e| panic!("WebSocket handshake with {url} failed: {e}"));
        assert_eq!(response.status().as_u16(), 101);
        Client { ws }
    }

    /// A client over an established WebSocket (e.g. `wss://` from `testkit::tls`).
    pub fn from_ws(ws: Ws) -> Client {
        Client { ws }
    }

    /// The WebSocket itself (e.g. to reach the TLS connection under it).
    pub fn ws_mut(&mut self) -> &mut Ws {
        &mut self.ws
    }

    /// A client over a socket whose handshake was done by hand; `leftover` are bytes read after
    /// the response head.
    pub async fn from_raw(stream: TcpStream, leftover: Vec<u8>) -> Client {
        let stream = MaybeTlsStream::Plain(stream);
        Client {
            ws: WebSocketStream::from_partially_read(stream, leftover, Role::Client, None).await,
        }
    }

    /// Connects and logs in; panics unless the answer is `authenticated`.
    pub async fn login(url: &str, user: &str, password: &str, timeout: Duration) -> Client {
        let mut c = Client::connect(url, timeout).await;
        c.send_login(user, password).await;
        c.expect_text(AUTHENTICATED, timeout).await;
        c
    }

    pub async fn send_login(&mut self, user: &str, password: &str) {
        self.send_text(user).await;
        self.send_text(password).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send text frame");
    }

    /// The next text frame within `timeout` (pings are answered by the library and skipped).
    /// `Err` tells how the connection ended instead, or that nothing came.
    pub async fn next_text(&mut self, timeout: Duration) -> Result<String, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Err(format!("no text frame within {timeout:?}")),
                Ok(None) => return Err("connection ended (no Close frame)".into()),
                Ok(Some(Err(e))) => return Err(format!("connection ended: {e}")),
                Ok(Some(Ok(Message::Text(t)))) => return Ok(t.to_string()),
                Ok(Some(Ok(Message::Close(f)))) => return Err(format!("Close frame {f:?}")),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    pub async fn expect_text(&mut self, expected: &str, timeout: Duration) {
        match self.next_text(timeout).await {
            Ok(text) => assert_eq!(text, expected, "unexpected text frame"),
            Err(why) => panic!("expected text frame {expected:?}: {why}"),
        }
    }

    /// Asserts that no text frame arrives for `quiet` (the connection may stay open).
    pub async fn expect_no_text(&mut self, quiet: Duration) {
        if let Ok(text) = self.next_text(quiet).await {
            panic!("expected no text frame for {quiet:?}, got {text:?}");
        }
    }

    /// Reads until the connection ends (skipping pings), within `timeout`; text frames received
    /// before the end are returned too.
    pub async fn expect_end(&mut self, timeout: Duration) -> (Vec<String>, Ending) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut texts = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => {
                    panic!("connection still open after {timeout:?} (texts so far: {texts:?})")
                }
                Ok(None) | Ok(Some(Err(_))) => return (texts, Ending::Dropped),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    let frame = frame
                        .map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string()));
                    return (texts, Ending::CloseFrame(frame));
                }
                Ok(Some(Ok(Message::Text(t)))) => texts.push(t.to_string()),
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

fn http_name(name: &str) -> tokio_tungstenite::tungstenite::http::HeaderName {
    tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
        .expect("header name")
}

/// A handshake request for `/push/ws`.
pub fn upgrade_request(host_port: u16, extra_headers: &str) -> String {
    format!(
        "GET /push/ws HTTP/1.1\r\nHost: 127.0.0.1:{host_port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    )
}

/// The `Sec-WebSocket-Accept` for the key in [`upgrade_request`] (RFC 6455 §1.3 example).
pub const ACCEPT_FOR_SAMPLE_KEY: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A masked client text frame (payload < 126 bytes).
pub fn masked_text_frame(text: &str) -> Vec<u8> {
    let payload = text.as_bytes();
    assert!(payload.len() < 126);
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// An unmasked server text frame, as the server must send it (payload < 126 bytes).
pub fn server_text_frame(text: &str) -> Vec<u8> {
    let mut frame = vec![0x81, text.len() as u8];
    frame.extend_from_slice(text.as_bytes());
    frame
}

/// Reads an HTTP response head (through `\r\n\r\n`) within `timeout`; returns (head, bytes read
/// after it). The head is empty if the peer closed before sending one.
pub async fn read_head(stream: &mut TcpStream, timeout: Duration) -> (String, Vec<u8>) {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            return (head, buf[end + 4..].to_vec());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Err(_) => panic!(
                "no complete response head within {timeout:?}; got {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (String::from_utf8_lossy(&buf).into_owned(), Vec::new())
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Reads until at least `want` bytes arrived, the peer closed, or `timeout`.
pub async fn read_at_least(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    want: usize,
    timeout: Duration,
) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut chunk = [0u8; 4096];
    while buf.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Err(_) | Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf
}

/// Sends `request` in one write and returns the response head (and what followed it).
pub async fn raw_request(
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> (TcpStream, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(NODELAY).expect("TCP_NODELAY");
    stream.write_all(request).await.expect("write");
    let (head, rest) = read_head(&mut stream, timeout).await;
    (stream, head, rest)
}

/// The status code of a response head.
pub fn status_of(head: &str) -> Option<u16> {
    let mut parts = head.lines().next()?.split_whitespace();
    parts.next().filter(|p| p.starts_with("HTTP/"))?;
    parts.next()?.parse().ok()
}

/// Percentile (0..=100) of a sorted slice.
pub fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() - 1) * p + 50) / 100;
    sorted[idx.min(sorted.len() - 1)]
}
