//! WebSocket client helpers for tests.
//!
//! [`WsClient`] is a tokio-tungstenite client (it answers server pings automatically, like
//! browsers and the desktop client). [`RawWs`] speaks raw frames over TCP: it sends the
//! handshake and pipelined frames in one write, never answers pings by itself and shows every
//! frame (including the exact close payload), for keepalive and close-frame tests.

use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How a wait for a text frame ended without one.
#[derive(Debug, Clone, PartialEq)]
pub enum WsEnd {
    /// Nothing arrived in time.
    Timeout,
    /// The server sent a Close frame (`None`: empty payload).
    Closed(Option<(u16, String)>),
    /// The connection ended without a Close frame (the client sees 1006), or broke.
    Dropped(String),
}

pub struct WsClient {
    inner: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connects to a `ws://` URL.
    pub async fn connect(url: &str) -> WsClient {
        WsClient::connect_with_headers(url, &[]).await
    }

    /// Connects with extra request headers (e.g. `X-Forwarded-For`).
    pub async fn connect_with_headers(url: &str, headers: &[(&str, &str)]) -> WsClient {
        let mut request = url.into_client_request().expect("invalid ws URL");
        for (name, value) in headers {
            let name =
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .expect("header name");
            request.headers_mut().append(name, HeaderValue::from_str(value).expect("header value"));
        }
        let (inner, _response) = tokio_tungstenite::connect_async(request)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        WsClient { inner }
    }

    pub fn from_stream(inner: WebSocketStream<MaybeTlsStream<TcpStream>>) -> WsClient {
        WsClient { inner }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.inner.send(Message::text(text)).await.expect("send text");
    }

    pub async fn send(&mut self, message: Message) {
        self.inner.send(message).await.expect("send");
    }

    /// Sends the two login frames (username, password) without waiting for an answer.
    pub async fn login(&mut self, user: &str, password: &str) {
        self.send_text(user).await;
        self.send_text(password).await;
    }

    /// Logs in and asserts the answer is `authenticated`.
    pub async fn login_ok(&mut self, user: &str, password: &str) {
        self.login(user, password).await;
        assert_eq!(
            self.next_text(Duration::from_secs(10)).await,
            Ok("authenticated".to_string()),
            "login of {user}"
        );
    }

    /// The next text frame (ping/pong/binary frames are skipped).
    pub async fn next_text(&mut self, timeout: Duration) -> Result<String, WsEnd> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.inner.next()).await {
                Err(_) => return Err(WsEnd::Timeout),
                Ok(None) => return Err(WsEnd::Dropped("stream ended".into())),
                Ok(Some(Err(e))) => return Err(WsEnd::Dropped(e.to_string())),
                Ok(Some(Ok(Message::Text(text)))) => return Ok(text.to_string()),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    return Err(WsEnd::Closed(
                        frame.map(|f: CloseFrame| (u16::from(f.code), f.reason.to_string())),
                    ))
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Waits for the end of the connection: `Closed` (with the close payload) or `Dropped`.
    /// Text frames before the end are returned too, so nothing is silently lost.
    pub async fn next_end(&mut self, timeout: Duration) -> (Vec<String>, WsEnd) {
        let mut texts = Vec::new();
        loop {
            match self.next_text(timeout).await {
                Ok(text) => texts.push(text),
                Err(end) => return (texts, end),
            }
        }
    }

    /// Asserts no text frame arrives within `duration`.
    pub async fn assert_no_message(&mut self, duration: Duration) {
        match self.next_text(duration).await {
            Err(WsEnd::Timeout) => {}
            other => panic!("expected no message within {duration:?}, got {other:?}"),
        }
    }

    pub async fn close(mut self) {
        let _ = self.inner.close(None).await;
    }

    pub fn inner(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.inner
    }
}

/// WebSocket opcodes.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// One frame as received by [`RawWs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn text(&self) -> Option<&str> {
        (self.opcode == opcode::TEXT).then(|| std::str::from_utf8(&self.payload).ok()).flatten()
    }
}

/// A raw-frame WebSocket client over TCP.
pub struct RawWs {
    stream: TcpStream,
    buffer: Vec<u8>,
    /// The server's response head (status line and headers).
    pub response_head: String,
}

/// Encodes a masked client frame.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode];
    let len = payload.len();
    if len < 126 {
        frame.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(len as u64).to_be_bytes());
    }
    let mask: [u8; 4] = [0x12, 0x34, 0x56, 0x78];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

impl RawWs {
    /// Opens a TCP connection to `addr` (`host:port`), sends the upgrade request for `path` with
    /// extra headers **and** the given text frames in a single write, then reads the response
    /// head (byte by byte, so no frame is consumed with it).
    pub async fn connect(
        addr: &str,
        path: &str,
        headers: &[(&str, &str)],
        pipelined: &[&str],
    ) -> RawWs {
        let mut stream =
            TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut bytes = request.into_bytes();
        for text in pipelined {
            bytes.extend(client_frame(opcode::TEXT, text.as_bytes()));
        }
        stream.write_all(&bytes).await.expect("write handshake");
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
                .await
                .expect("timeout reading the handshake response")
                .expect("read handshake response");
            assert!(
                n == 1,
                "connection closed during the handshake: {}",
                String::from_utf8_lossy(&head)
            );
            head.push(byte[0]);
        }
        RawWs {
            stream,
            buffer: Vec::new(),
            response_head: String::from_utf8_lossy(&head).into_owned(),
        }
    }

    /// The HTTP status code of the handshake response.
    pub fn status(&self) -> u16 {
        self.response_head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        self.stream.write_all(&client_frame(opcode, payload)).await.expect("send frame");
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_frame(opcode::TEXT, text.as_bytes()).await;
    }

    /// Writes raw bytes (several frames in one write, partial frames, …).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send raw");
    }

    /// The next frame; `Err(WsEnd::Dropped)` at EOF, `Err(WsEnd::Timeout)` after `timeout`.
    pub async fn read_frame(&mut self, timeout: Duration) -> Result<Frame, WsEnd> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buffer) {
                self.buffer.drain(..used);
                return Ok(frame);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(WsEnd::Timeout),
                Ok(Ok(0)) => return Err(WsEnd::Dropped("EOF".into())),
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
                Ok(Err(e)) => return Err(WsEnd::Dropped(e.to_string())),
            }
        }
    }

    /// The next text frame, skipping other frames (pings are *not* answered).
    pub async fn next_text(&mut self, timeout: Duration) -> Result<String, WsEnd> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.read_frame(remaining).await?;
            match frame.opcode {
                opcode::TEXT => return Ok(String::from_utf8_lossy(&frame.payload).into_owned()),
                opcode::CLOSE => return Err(WsEnd::Closed(close_payload(&frame.payload))),
                _ => continue,
            }
        }
    }

    pub fn into_inner(self) -> TcpStream {
        self.stream
    }
}

fn close_payload(payload: &[u8]) -> Option<(u16, String)> {
    (payload.len() >= 2).then(|| {
        (
            u16::from_be_bytes([payload[0], payload[1]]),
            String::from_utf8_lossy(&payload[2..]).into_owned(),
        )
    })
}

/// Parses one unmasked server frame from the start of `buffer`.
fn parse_server_frame(buffer: &[u8]) -> Option<(Frame, usize)> {
    if buffer.len() < 2 {
        return None;
    }
    let opcode = buffer[0] & 0x0f;
    let masked = buffer[1] & 0x80 != 0;
    let (len, mut offset) = match buffer[1] & 0x7f {
        126 => (u16::from_be_bytes([*buffer.get(2)?, *buffer.get(3)?]) as usize, 4),
        127 => (u64::from_be_bytes(buffer.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    let mask = if masked {
        let mask: [u8; 4] = buffer.get(offset..offset + 4)?.try_into().ok()?;
        offset += 4;
        Some(mask)
    } else {
        None
    };
    let mut payload = buffer.get(offset..offset + len)?.to_vec();
    if let Some(mask) = mask {
        payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= mask[i % 4]);
    }
    Some((Frame { opcode, payload }, offset + len))
}

impl WsClient {
    /// Round trip through the server's read loop: sends a Ping with a unique payload and waits
    /// for its Pong. Everything sent before has then been processed by the server. Text frames
    /// that arrive meanwhile are returned.
    pub async fn sync(&mut self, timeout: Duration) -> Vec<String> {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let token = format!("sync-{}", COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        self.inner.send(Message::Ping(token.clone().into_bytes().into())).await.expect("send ping");
        let mut texts = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.inner.next()).await {
                Ok(Some(Ok(Message::Pong(payload)))) if payload.as_ref() == token.as_bytes() => {
                    return texts
                }
                Ok(Some(Ok(Message::Text(text)))) => texts.push(text.to_string()),
                Ok(Some(Ok(_))) => continue,
                other => panic!("no pong for {token}: {other:?}"),
            }
        }
    }
}
