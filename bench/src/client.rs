//! The load generator's WebSocket client: a lean raw-frame client (one tokio task, one small
//! buffer per connection) so 10k–50k of them fit beside the servers on a 2-core machine.
//!
//! A client binds one of several 127.0.0.x source addresses (ephemeral ports run out near 28k per
//! address pair), sends the upgrade, waits for the 101, sends username and password as two text
//! frames in one write (what the Nextcloud clients do once the socket is open), waits for
//! `authenticated`, then reads until the connection ends: pings are answered with the same
//! payload, and each fan-out frame `b [phase,round,t_us]` records `now − t_us` in that phase's
//! histogram.
//!
//! For the wss setups the same client runs over a rustls session (`Target::tls`: a client
//! configuration trusting only the per-run test CA, server name `localhost`): the TLS stream is
//! boxed so a plain client's task stays as small as before, and rustls keeps about one 4 KiB
//! receive buffer per idle session.

use crate::hist::Histogram;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use testkit::ws::{client_frame, opcode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::ServerName;

/// The custom message name the fan-out publishes (`notify_custom`, never debounced).
pub const MESSAGE: &str = "b";
/// Clients per 127.0.0.x source address (the ephemeral range is 28k ports per address pair).
pub const CLIENTS_PER_SOURCE: usize = 8000;
/// Fan-out phases measured separately (paced, flood).
pub const PHASES: usize = 2;

/// Where clients connect: `addr`, the upgrade path, and for `wss://` the TLS configuration.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
    /// `Some`: TLS to `addr`, verified as `localhost`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// The server name the wss clients send (SNI) and verify (the test certificate's).
pub const TLS_SERVER_NAME: &str = "localhost";

/// One client connection: plain TCP or TLS over it.
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Conn {
    /// Writes all of `bytes` and flushes them (rustls may hold records until a flush).
    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes).await?;
        self.flush().await
    }
}

/// One fan-out phase as the clients see it.
#[derive(Default)]
pub struct Phase {
    pub latency: Histogram,
    pub received: AtomicU64,
    /// µs since `Stats::base` of the latest receipt.
    pub last_us: AtomicU64,
    /// Frames that were not ours (or not parseable).
    pub foreign: AtomicU64,
}

/// Shared by every client task of one setup.
pub struct Stats {
    pub base: Instant,
    /// Connect+login latency of the clients of the ramp (many in flight).
    pub connect: Histogram,
    /// Connect+login latency of the probe clients (one at a time, before the ramp).
    pub connect_probe: Histogram,
    /// Clients that got `authenticated` (cumulative).
    pub connected: AtomicUsize,
    /// Authenticated and still open.
    pub live: AtomicUsize,
    /// Authenticated, then the server ended the connection.
    pub dropped: AtomicUsize,
    pub failed_timeout: AtomicUsize,
    pub failed_http: AtomicUsize,
    pub failed_io: AtomicUsize,
    pub failed_auth: AtomicUsize,
    /// Never tried: the ramp gave up first.
    pub not_attempted: AtomicUsize,
    pub first_failure: Mutex<Option<String>>,
    pub phases: [Phase; PHASES],
}

impl Stats {
    pub fn new(base: Instant) -> Stats {
        Stats {
            base,
            connect: Histogram::default(),
            connect_probe: Histogram::default(),
            connected: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            failed_timeout: AtomicUsize::new(0),
            failed_http: AtomicUsize::new(0),
            failed_io: AtomicUsize::new(0),
            failed_auth: AtomicUsize::new(0),
            not_attempted: AtomicUsize::new(0),
            first_failure: Mutex::new(None),
            phases: Default::default(),
        }
    }

    pub fn failed(&self) -> usize {
        self.failed_timeout.load(Ordering::Relaxed)
            + self.failed_http.load(Ordering::Relaxed)
            + self.failed_io.load(Ordering::Relaxed)
            + self.failed_auth.load(Ordering::Relaxed)
    }

    /// Clients whose connect attempt is over (authenticated, failed or never tried).
    pub fn settled(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
            + self.failed()
            + self.not_attempted.load(Ordering::Relaxed)
    }

    pub fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    fn fail(&self, failure: Failure) {
        let counter = match &failure {
            Failure::Timeout => &self.failed_timeout,
            Failure::Http(_) => &self.failed_http,
            Failure::Io(_) | Failure::Tls(_) => &self.failed_io,
            Failure::Auth(_) => &self.failed_auth,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first_failure.lock() {
            first.get_or_insert_with(|| failure.to_string());
        }
    }
}

#[derive(Debug)]
enum Failure {
    Timeout,
    Tls(String),
    Http(String),
    Io(String),
    Auth(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => write!(f, "connect+login timed out"),
            Failure::Tls(e) => write!(f, "TLS handshake: {e}"),
            Failure::Http(head) => write!(f, "no 101: {head}"),
            Failure::Io(e) => write!(f, "I/O: {e}"),
            Failure::Auth(text) => write!(f, "login refused: {text}"),
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::Io(e.to_string())
    }
}

/// The source address of client `index` (127.0.0.2, 127.0.0.3, …).
pub fn source_addr(index: usize) -> Ipv4Addr {
    let n = 2 + index / CLIENTS_PER_SOURCE;
    Ipv4Addr::new(127, 0, (n >> 8) as u8, (n & 0xff) as u8)
}

/// How one client is run.
#[derive(Clone)]
pub struct Spec {
    pub target: Arc<Target>,
    pub source: Ipv4Addr,
    pub login: String,
    pub password: String,
    pub timeout: Duration,
    /// Records into `Stats::connect_probe` instead of `Stats::connect`.
    pub probe: bool,
}

/// One client, from connect to the end of the connection. The `gate` bounds the connects and
/// logins in flight; a closed gate means the ramp gave up and this client is not tried.
pub async fn run(spec: Spec, stats: Arc<Stats>, gate: Arc<Semaphore>) {
    let Spec { target, source, login, password, timeout, probe } = spec;
    let Ok(permit) = gate.acquire().await else {
        stats.not_attempted.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let started = Instant::now();
    let mut buf = Vec::with_capacity(256);
    let attempt = tokio::time::timeout(
        timeout,
        connect_and_login(&target, source, &login, &password, &mut buf),
    )
    .await;
    drop(permit);
    let mut stream = match attempt {
        Ok(Ok(stream)) => stream,
        Ok(Err(failure)) => return stats.fail(failure),
        Err(_) => return stats.fail(Failure::Timeout),
    };
    let histogram = if probe { &stats.connect_probe } else { &stats.connect };
    histogram.record(started.elapsed().as_micros() as u64);
    stats.connected.fetch_add(1, Ordering::Relaxed);
    stats.live.fetch_add(1, Ordering::Relaxed);
    drop((login, password));
    buf.shrink_to(256);
    serve(&mut stream, &mut buf, &stats).await;
    stats.live.fetch_sub(1, Ordering::Relaxed);
    stats.dropped.fetch_add(1, Ordering::Relaxed);
}

async fn connect_and_login(
    target: &Target,
    source: Ipv4Addr,
    login: &str,
    password: &str,
    buf: &mut Vec<u8>,
) -> Result<Conn, Failure> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source, 0)))?;
    let tcp = socket.connect(target.addr).await?;
    tcp.set_nodelay(true)?;
    let (mut stream, host) = match &target.tls {
        None => (Conn::Plain(tcp), target.addr.to_string()),
        Some(config) => {
            let name = ServerName::try_from(TLS_SERVER_NAME).expect("a valid server name");
            let tls = tokio_rustls::TlsConnector::from(config.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| Failure::Tls(e.to_string()))?;
            (Conn::Tls(Box::new(tls)), format!("{TLS_SERVER_NAME}:{}", target.addr.port()))
        }
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        target.path
    );
    stream.send(request.as_bytes()).await?;
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > 16 * 1024 || stream.read_buf(buf).await? == 0 {
            let head = String::from_utf8_lossy(buf);
            return Err(Failure::Http(head.lines().next().unwrap_or("connection closed").into()));
        }
    };
    let status_line =
        String::from_utf8_lossy(&buf[..head_end]).lines().next().unwrap_or("").to_string();
    if status_line.split_whitespace().nth(1) != Some("101") {
        return Err(Failure::Http(status_line));
    }
    buf.drain(..head_end);
    let mut credentials = client_frame(opcode::TEXT, login.as_bytes());
    credentials.extend(client_frame(opcode::TEXT, password.as_bytes()));
    stream.send(&credentials).await?;
    loop {
        while let Some((op, start, end)) = parse_frame(buf) {
            match op {
                opcode::TEXT if &buf[start..end] == b"authenticated" => {
                    buf.drain(..end);
                    return Ok(stream);
                }
                opcode::TEXT => {
                    return Err(Failure::Auth(String::from_utf8_lossy(&buf[start..end]).into()))
                }
                opcode::PING => {
                    let pong = client_frame(opcode::PONG, &buf[start..end]);
                    stream.send(&pong).await?;
                }
                opcode::CLOSE => return Err(Failure::Auth("close frame during login".into())),
                _ => {}
            }
            buf.drain(..end);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(Failure::Auth("connection closed during login".into()));
        }
    }
}

/// Reads until the server ends the connection (or the task is aborted).
async fn serve(stream: &mut Conn, buf: &mut Vec<u8>, stats: &Stats) {
    loop {
        let mut consumed = 0;
        while let Some((op, start, end)) = parse_frame(&buf[consumed..]) {
            let (start, end) = (consumed + start, consumed + end);
            match op {
                opcode::TEXT => on_text(&buf[start..end], stats),
                opcode::PING => {
                    let pong = client_frame(opcode::PONG, &buf[start..end]);
                    if stream.send(&pong).await.is_err() {
                        return;
                    }
                }
                opcode::CLOSE => return,
                _ => {}
            }
            consumed = end;
        }
        buf.drain(..consumed);
        match stream.read_buf(buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn on_text(text: &[u8], stats: &Stats) {
    let now = stats.now_us();
    match parse_fanout(text) {
        Some((phase, _round, sent)) if phase < PHASES => {
            let phase = &stats.phases[phase];
            phase.latency.record(now.saturating_sub(sent));
            phase.received.fetch_add(1, Ordering::Relaxed);
            phase.last_us.fetch_max(now, Ordering::Relaxed);
        }
        _ => {
            stats.phases[0].foreign.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// `b [phase,round,t_us]` → (phase, round, t_us).
pub fn parse_fanout(text: &[u8]) -> Option<(usize, u64, u64)> {
    let text = std::str::from_utf8(text).ok()?;
    let inner = text.strip_prefix(MESSAGE)?.strip_prefix(" [")?.strip_suffix(']')?;
    let mut parts = inner.split(',');
    let phase = parts.next()?.parse().ok()?;
    let round = parts.next()?.parse().ok()?;
    let sent = parts.next()?.parse().ok()?;
    Some((phase, round, sent))
}

/// One complete unmasked server frame at the start of `buf`: (opcode, payload start, end).
pub fn parse_frame(buf: &[u8]) -> Option<(u8, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let op = buf[0] & 0x0f;
    let (len, header) = match buf[1] & 0x7f {
        126 => (u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?]) as usize, 4),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    let end = header + len;
    (buf.len() >= end).then_some((op, header, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        assert_eq!(parse_frame(&[0x81]), None);
        assert_eq!(parse_frame(&[0x81, 3, b'a', b'b']), None);
        assert_eq!(parse_frame(&[0x81, 3, b'a', b'b', b'c', 0x89]), Some((1, 2, 5)));
        let mut long = vec![0x81, 126, 0x01, 0x00];
        long.extend(std::iter::repeat_n(b'x', 256));
        assert_eq!(parse_frame(&long), Some((1, 4, 260)));
        assert_eq!(parse_frame(&long[..100]), None);
    }

    #[test]
    fn fanout_body() {
        assert_eq!(parse_fanout(b"b [1,7,123456]"), Some((1, 7, 123456)));
        assert_eq!(parse_fanout(b"notify_file"), None);
        assert_eq!(parse_fanout(b"b [1,7]"), None);
    }

    #[test]
    fn sources() {
        assert_eq!(source_addr(0), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(CLIENTS_PER_SOURCE), Ipv4Addr::new(127, 0, 0, 3));
        assert_eq!(source_addr(CLIENTS_PER_SOURCE * 7 - 1), Ipv4Addr::new(127, 0, 0, 8));
    }
}
