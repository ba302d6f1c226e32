//! One WebSocket session: login (spec §1.3), then fan-out, debounce and keepalive (§1.5–§1.8).

use crate::error::AuthError;
use crate::message::{debounce_time, PushMessage, SendQueue};
use crate::user::LogUser;
use crate::{Engine, Handoff, Signal};
use futures_util::{SinkExt, StreamExt};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

const WS: &str = "nextcloud_push::ws";
const AUTH: &str = "nextcloud_push::auth";

/// Incoming messages and frames are capped at 4 KiB. tokio-tungstenite 0.28 cannot change the
/// limit after the handshake, so it holds for the whole session; clients only ever send
/// credentials, `listen …` lines and control frames.
const MAX_INCOMING: usize = 4096;

/// How long a dropped connection waits for the client's FIN after ours, so unread client bytes
/// do not turn our close into a RST that could destroy the last text frame.
const LINGER: Duration = Duration::from_secs(1);

/// Read buffer of each session. tungstenite grows it to hold a whole incoming frame (up to
/// [`MAX_INCOMING`]), and zero-fills this much before every read, so smaller is cheaper.
const READ_BUFFER: usize = 512;

/// Fan-out messages taken from the channel in one go (then fed and flushed once), so a burst
/// costs one write per connection and a busy user still lets the other select arms run.
const MAX_BATCH: usize = 64;

/// While a debounced message is pending, its due moment is re-computed at least this often, so
/// a debounce time that shrank (fewer active connections) is picked up as the old tick did.
const DEBOUNCE_RECHECK: Duration = Duration::from_secs(1);

/// The first wake-up moment on the grid `started + k × tick` (k ≥ 1) that is at or after `due`
/// and strictly after `after` (the last handled wake-up, `started` before the first). All
/// per-connection timing happens on this grid, the moments of the incumbent's 500 ms idle tick,
/// but the timer is only armed for the one moment where something can be due.
fn next_wake(started: Instant, tick: Duration, after: Instant, due: Instant) -> Instant {
    let tick = tick.max(Duration::from_millis(1)).as_nanos();
    let at = |k: u128| {
        let offset = Duration::from_nanos(u64::try_from(k * tick).unwrap_or(u64::MAX));
        started.checked_add(offset).unwrap_or(started + Duration::from_secs(86_400 * 365))
    };
    let since = |t: Instant| t.saturating_duration_since(started).as_nanos();
    // ceil(due / tick), at least 1
    let k = since(due).div_ceil(tick).max(1);
    // strictly after `after`: floor(after / tick) + 1
    let k = k.max(since(after) / tick + 1);
    at(k)
}

fn ws_config() -> WebSocketConfig {
    // tungstenite reserves its whole read buffer per connection (128 KiB by default): with
    // 4 KiB incoming frames at most, 512 bytes hold a login frame (a larger frame grows it
    // while it is read) and make an idle session much cheaper.
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(MAX_INCOMING))
        .max_frame_size(Some(MAX_INCOMING))
}

/// The session's WebSocket, boxed once it exists: it is moved by value through several async
/// fn levels (login, serving, the endings), and every level would otherwise reserve room for it
/// in the session's task (async fn parameters are kept twice there, and a task keeps the size of
/// its largest state). Boxed, it is stored once, whatever the stream (an adopted
/// [`crate::tls::TlsStream`] is about 200 bytes, its record layer on the heap).
type Ws<S> = Box<WebSocketStream<S>>;

/// Not an `async fn`, so the stream is not kept in the task next to the WebSocket built around
/// it: building the WebSocket (which moves the stream through tungstenite's async constructor)
/// is boxed right away and freed once the WebSocket exists; nothing is polled before the task
/// runs.
pub(crate) fn serve_upgraded<S>(
    engine: Arc<Engine>,
    stream: S,
    handoff: Handoff,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Handoff { early_data, forwarded_for, ping_interval, bridged } = handoff;
    let ws = Box::pin(WebSocketStream::from_partially_read(
        stream,
        early_data,
        Role::Server,
        Some(ws_config()),
    ));
    async move {
        let ws: Ws<S> = Box::new(ws.await);
        let ping_interval = ping_interval.map_or(engine.config.timing.ping_interval, |p| {
            p.min(engine.config.timing.ping_interval)
        });
        run(engine, ws, forwarded_for, ping_interval, bridged).await;
    }
}

pub(crate) async fn serve_http<S>(engine: Arc<Engine>, mut stream: S, peer: Option<IpAddr>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = engine.config.timing.auth_timeout;
    // Boxed, as the session below: the handshake's state (with its read buffer) is large and
    // only needed for a moment.
    let handshake =
        Box::pin(tokio::time::timeout(timeout, crate::handshake::upgrade(&mut stream, peer)));
    match handshake.await {
        Ok(Ok(upgraded)) => {
            let handoff = Handoff {
                early_data: upgraded.early_data,
                forwarded_for: upgraded.chain,
                ping_interval: None,
                bridged: false,
            };
            serve_upgraded(engine, stream, handoff).await;
        }
        Ok(Err(e)) => log::debug!(target: WS, "WebSocket upgrade failed: {e}"),
        Err(_) => log::debug!(target: WS, "WebSocket upgrade timed out"),
    }
}

enum Login {
    Ok(String),
    Failed(AuthError),
    /// The client broke the WebSocket protocol: answered with this Close frame.
    Broken(CloseFrame),
    Disconnected,
}

/// Reads one auth frame: text (trimmed) or an invalid-message failure.
async fn read_credential<S>(ws: &mut WebSocketStream<S>) -> Result<String, Login>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match ws.next().await {
        Some(Ok(Message::Text(text))) => Ok(text.as_str().trim().to_string()),
        Some(Ok(_)) => Err(Login::Failed(AuthError::InvalidMessage)),
        Some(Err(e)) => match protocol_close(&e) {
            Some(frame) => {
                log::debug!(target: AUTH, "WebSocket error during login, closing with {}: {e}", frame.code);
                Err(Login::Broken(frame))
            }
            None => {
                log::debug!(target: AUTH, "connection lost during login: {e}");
                Err(Login::Disconnected)
            }
        },
        None => Err(Login::Disconnected),
    }
}

async fn login<S>(engine: &Engine, ws: &mut WebSocketStream<S>, chain: &[IpAddr]) -> Login
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let username = match read_credential(ws).await {
        Ok(username) => username,
        Err(outcome) => return outcome,
    };
    let password = match read_credential(ws).await {
        Ok(password) => password,
        Err(outcome) => return outcome,
    };
    if let Some(uid) = engine.take_pre_auth(&password) {
        log::debug!(target: AUTH, "{} logged in with a pre-auth token", LogUser(&uid));
        return Login::Ok(uid);
    }
    if username.is_empty() {
        return Login::Failed(AuthError::InvalidCredentials);
    }
    match engine.nextcloud.uid(&username, &password, chain).await {
        Ok(uid) => Login::Ok(uid),
        Err(AuthError::InvalidCredentials) => Login::Failed(AuthError::InvalidCredentials),
        Err(e) => {
            log::warn!(target: AUTH, "NCP1010: login failed: {e:#}");
            Login::Failed(e)
        }
    }
}

async fn run<S>(
    engine: Arc<Engine>,
    mut ws: Ws<S>,
    chain: Vec<IpAddr>,
    ping_interval: Duration,
    bridged: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut signals = engine.signals.subscribe();
    let deadline = Instant::now() + engine.config.timing.auth_timeout;

    enum Outcome {
        Login(Login),
        Timeout,
        Shutdown,
    }
    let outcome = {
        // Boxed: the login (with its Nextcloud request) is by far the largest state of the
        // session future; on the heap it is freed after login instead of being reserved in
        // every idle session's task.
        let mut attempt =
            Box::pin(tokio::time::timeout_at(deadline, login(&engine, &mut ws, &chain)));
        loop {
            tokio::select! {
                result = &mut attempt => break match result {
                    Ok(login) => Outcome::Login(login),
                    Err(_) => Outcome::Timeout,
                },
                signal = signals.recv() => match signal {
                    Ok(Signal::Shutdown) | Err(RecvError::Closed) => break Outcome::Shutdown,
                    Ok(Signal::CloseBridged) if bridged => break Outcome::Shutdown,
                    _ => continue,
                },
            }
        }
    };

    let uid = match outcome {
        Outcome::Login(Login::Ok(uid)) => uid,
        Outcome::Login(Login::Disconnected) => return,
        Outcome::Login(Login::Broken(frame)) => return Box::pin(refuse(ws, frame)).await,
        Outcome::Login(Login::Failed(error)) => {
            log::debug!(target: AUTH, "login failed: {error}");
            let frame = match error {
                // Nextcloud could not answer: not the client's fault
                AuthError::Nextcloud(_) => closing(CloseCode::Error, "authentication unavailable"),
                _ => closing(CloseCode::Policy, "authentication failed"),
            };
            return Box::pin(fail(ws, error.to_string(), frame)).await;
        }
        Outcome::Timeout => {
            log::debug!(target: AUTH, "login timed out");
            let frame = closing(CloseCode::Policy, "authentication timeout");
            return Box::pin(fail(ws, AuthError::Timeout.to_string(), frame)).await;
        }
        Outcome::Shutdown => {
            return Box::pin(close(ws, Some(going_away()), engine.config.timing.shutdown_grace / 2))
                .await
        }
    };

    // Registered before `authenticated` goes out, so an event published right after the client
    // saw `authenticated` is not lost (the incumbent registers after sending, a small race).
    let registration = engine.registry.register(&uid);
    if ws.send(Message::text("authenticated")).await.is_err() {
        return;
    }
    let Some(mut registration) = registration else {
        log::info!(target: AUTH, "NCP1011: connection limit exceeded for {}", LogUser(&uid));
        return Box::pin(fail(
            ws,
            "Error while handling authentication: Connection limit exceeded for user".into(),
            closing(CloseCode::Policy, "connection limit exceeded"),
        ))
        .await;
    };
    log::debug!(target: WS, "{} connected", LogUser(&uid));
    // Boxed like the login: the task keeps the size of the largest state of this future for
    // its whole life, and inline the serving state (the WebSocket moved through every async fn
    // level) would be stored more than once.
    Box::pin(Connection::new(&engine, &uid, ping_interval, bridged).serve(
        ws,
        &mut registration.receiver,
        signals,
    ))
    .await;
    log::debug!(target: WS, "{} disconnected", LogUser(&uid));
}

/// The Close frame RFC 6455 §7.4.1 asks for when the client broke the protocol: 1002 for a
/// protocol violation, 1007 for a text message that is not UTF-8, 1009 for a message over
/// [`MAX_INCOMING`]. `None` when the connection itself failed (nothing to tell).
fn protocol_close(error: &tokio_tungstenite::tungstenite::Error) -> Option<CloseFrame> {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    use tokio_tungstenite::tungstenite::Error as E;
    let (code, reason) = match error {
        E::Protocol(ProtocolError::ResetWithoutClosingHandshake) => return None,
        E::Protocol(_) => (CloseCode::Protocol, "protocol error"),
        E::Utf8(_) => (CloseCode::Invalid, "text message is not UTF-8"),
        E::Capacity(_) => {
            const _: () = assert!(MAX_INCOMING == 4096, "the 1009 reason names the limit");
            (CloseCode::Size, "message too big (limit 4096 bytes)")
        }
        _ => return None,
    };
    Some(closing(code, reason))
}

fn closing(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame { code, reason: Utf8Bytes::from_static(reason) }
}

fn going_away() -> CloseFrame {
    closing(CloseCode::Away, "")
}

/// Sends the incumbent's one text frame (`err: …`, the limit text), then the Close frame that
/// says why, then ends as [`refuse`] (the incumbent drops TCP there, and clients see 1006).
async fn fail<S>(mut ws: Ws<S>, text: String, frame: CloseFrame)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match ws.send(Message::text(text)).await {
        Ok(()) => refuse(ws, frame).await,
        // A Close frame from the client ended the login: nothing may follow it but the reply
        // tungstenite queued (RFC 6455 §5.5.1), which only a flush sends.
        Err(_) => {
            let _ = tokio::time::timeout(LINGER, ws.flush()).await;
        }
    }
}

/// Ends a connection the server refuses (a failed login, the connection limit, a protocol
/// violation, a keepalive failure): the Close frame that says why, our FIN, then the client's
/// bytes read and discarded until it closes (bounded by `LINGER`), so the frames already sent
/// are not destroyed by a RST (tungstenite itself reads nothing more after an error).
async fn refuse<S>(mut ws: Ws<S>, frame: CloseFrame)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if ws.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let stream = ws.get_mut();
    let _ = tokio::time::timeout(LINGER, async {
        let _ = stream.shutdown().await;
        let mut sink = [0u8; 1024];
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// Sends a Close frame (`None`: empty payload), waits (bounded) for the client's reply, ends.
async fn close<S>(mut ws: Ws<S>, frame: Option<CloseFrame>, wait: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if ws.send(Message::Close(frame)).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(wait, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    shutdown_stream(&mut ws).await;
}

/// Ends the stream itself after the closing handshake: on an adopted TLS session
/// (`crate::tls::TlsStream`) this sends close_notify before the FIN, so the client sees a clean
/// TLS close rather than a truncation (bounded).
async fn shutdown_stream<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(LINGER, ws.get_mut().shutdown()).await;
}

/// State of one authenticated connection.
struct Connection<'a> {
    engine: &'a Engine,
    uid: &'a str,
    queue: SendQueue,
    /// Random per connection in [0.5, 1.5): spreads the debounce load.
    factor: f64,
    listen_file_id: bool,
    started: Instant,
    last_send: Instant,
    /// Payload of the outstanding ping, if any.
    expect_pong: Option<[u8; 4]>,
    /// `timing.ping_interval`, or shorter for this session ([`Handoff::ping_interval`]).
    ping_interval: Duration,
    /// [`Handoff::bridged`]: [`Signal::CloseBridged`] ends this session.
    bridged: bool,
}

enum Flow {
    Continue,
    /// Send this close frame and end.
    Close(Option<CloseFrame>),
    /// The client broke the protocol: [`refuse`] with this frame.
    Refuse(CloseFrame),
    /// The connection is over (closed by the client or broken).
    End,
}

impl<'a> Connection<'a> {
    fn new(
        engine: &'a Engine,
        uid: &'a str,
        ping_interval: Duration,
        bridged: bool,
    ) -> Connection<'a> {
        let now = Instant::now();
        Connection {
            engine,
            uid,
            queue: SendQueue::new(now.into_std()),
            factor: rand::random_range(0.5..1.5),
            listen_file_id: false,
            started: now,
            // so that the first ping goes out on the first tick after `authenticated`
            last_send: now.checked_sub(ping_interval).unwrap_or(now),
            expect_pong: None,
            ping_interval,
            bridged,
        }
    }

    /// Not an `async fn`: its parameters (the connection state) would be kept twice in the
    /// future, which is what an idle session holds.
    #[allow(clippy::manual_async_fn)] // deliberately: see above
    fn serve<'m, S>(
        mut self,
        mut ws: Ws<S>,
        messages: &'m mut tokio::sync::broadcast::Receiver<PushMessage>,
        mut signals: tokio::sync::broadcast::Receiver<Signal>,
    ) -> impl std::future::Future<Output = ()> + use<'a, 'm, S>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        async move {
            let timing = &self.engine.config.timing;
            // Starvation fix (spec §1.6, §13 "safe to improve"): the incumbent drains the
            // debounce slots only after 500 ms without any new message, so a steady stream of
            // events less than 500 ms apart holds debounced messages back indefinitely. Here one
            // timer is armed for the next moment something is due (a pending slot becoming
            // sendable, the next ping or pong deadline, the maximum connection time), whatever
            // arrives meanwhile; the 100 ms quiet window and the debounce time still apply. An
            // idle connection wakes up about once per ping interval instead of every 500 ms.
            let mut last_wake = self.started;
            let mut deadline = self.next_deadline(last_wake);
            let sleep = tokio::time::sleep_until(deadline);
            tokio::pin!(sleep);
            let flow = loop {
                let flow = tokio::select! {
                    // Client frames first: a `listen notify_file_id` pipelined behind the login is
                    // then applied before any event queued for the user meanwhile. Signals and the
                    // timer (rarely ready) before messages, so a busy user cannot starve them.
                    biased;
                    incoming = ws.next() => self.on_incoming(incoming),
                    signal = signals.recv() => match signal {
                        Ok(Signal::Reset) => Flow::Close(Some(going_away())),
                        Ok(Signal::Shutdown) | Err(RecvError::Closed) => Flow::Close(Some(going_away())),
                        Ok(Signal::CloseBridged) if self.bridged => Flow::Close(Some(going_away())),
                        Ok(Signal::CloseBridged) | Err(RecvError::Lagged(_)) => Flow::Continue,
                    },
                    () = &mut sleep => {
                        last_wake = deadline;
                        // boxed: rare (about once per ping interval), and inline it would
                        // enlarge every session
                        Box::pin(self.on_tick(&mut ws)).await
                    }
                    message = messages.recv() => self.on_messages(&mut ws, message, messages).await,
                };
                if !matches!(flow, Flow::Continue) {
                    break flow;
                }
                let next = self.next_deadline(last_wake);
                if next != deadline {
                    deadline = next;
                    sleep.as_mut().reset(deadline);
                }
            };
            // The endings are boxed (here and in `run`): they run once, and inline their state
            // would enlarge every idle session's task.
            match flow {
                // half the shutdown grace, so a silent client cannot hold up Engine::shutdown
                Flow::Close(frame) => Box::pin(close(ws, frame, timing.shutdown_grace / 2)).await,
                Flow::Refuse(frame) => Box::pin(refuse(ws, frame)).await,
                Flow::End => {
                    // flush a pending close echo, if any (bounded)
                    let _ = Box::pin(tokio::time::timeout(LINGER, async {
                        while let Some(Ok(_)) = ws.next().await {}
                    }))
                    .await;
                    Box::pin(shutdown_stream(&mut ws)).await;
                }
                Flow::Continue => {}
            }
        }
    }

    fn on_incoming(
        &mut self,
        incoming: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Flow {
        match incoming {
            // exact match, no trimming; every other text is ignored
            Some(Ok(Message::Text(text))) => {
                if text.as_str() == "listen notify_file_id" {
                    self.listen_file_id = true;
                }
                Flow::Continue
            }
            // answered by tungstenite with the same payload
            Some(Ok(Message::Ping(_))) => Flow::Continue,
            Some(Ok(Message::Pong(payload))) => {
                if self.expect_pong.is_some_and(|expected| payload.as_ref() == expected) {
                    self.expect_pong = None;
                    Flow::Continue
                } else {
                    log::info!(target: WS, "NCP1021: unexpected pong from {}, closing the connection", LogUser(self.uid));
                    Flow::Refuse(closing(CloseCode::Policy, "unexpected pong"))
                }
            }
            // tungstenite queued the echo (same code and reason); it goes out on the next read
            Some(Ok(Message::Close(_))) => Flow::End,
            Some(Ok(_)) => Flow::Continue,
            Some(Err(e)) => {
                use tokio_tungstenite::tungstenite::Error as E;
                if let Some(frame) = protocol_close(&e) {
                    log::debug!(target: WS, "WebSocket error on a connection of {}, closing with {}: {e}", LogUser(self.uid), frame.code);
                    return Flow::Refuse(frame);
                }
                match e {
                    E::ConnectionClosed | E::AlreadyClosed | E::Protocol(_) | E::Io(_) => {
                        log::debug!(target: WS, "connection of {} ended: {e}", LogUser(self.uid))
                    }
                    e => {
                        log::warn!(target: WS, "NCP1020: WebSocket error on a connection of {}: {e}", LogUser(self.uid))
                    }
                }
                Flow::End
            }
            None => Flow::End,
        }
    }

    /// The next wake-up moment (see [`next_wake`]): the earliest of the ping (and pong) deadline,
    /// the maximum connection time and, when something is pending, its due moment.
    fn next_deadline(&self, after: Instant) -> Instant {
        let config = &self.engine.config;
        // a ping (or the drop for an unanswered one) is due strictly after this
        let never = self.started + Duration::from_secs(86_400 * 365);
        let mut due = self.last_send.checked_add(self.ping_interval).unwrap_or(never);
        if config.max_connection_time > 0 {
            if let Some(end) =
                self.started.checked_add(Duration::from_secs(config.max_connection_time))
            {
                due = due.min(end);
            }
        }
        if let Some(pending) = self.queue.next_due(self.debounce_time()) {
            due = due.min(Instant::from_std(pending)).min(Instant::now() + DEBOUNCE_RECHECK);
        }
        next_wake(self.started, config.timing.tick, after, due)
    }

    fn debounce_time(&self) -> Duration {
        let active = self.engine.counters.active_connections.load(Ordering::Relaxed);
        debounce_time(active, self.engine.config.max_debounce_time, self.factor)
    }

    /// Handles `first` and every message already waiting in the channel (up to [`MAX_BATCH`]):
    /// debounced ones go to their slot, the others are fed in arrival order and flushed once.
    async fn on_messages<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        first: Result<PushMessage, RecvError>,
        messages: &mut tokio::sync::broadcast::Receiver<PushMessage>,
    ) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let now = Instant::now().into_std();
        let mut fed = false;
        let mut closed = false;
        let mut next = first;
        for taken in 1.. {
            match next {
                Ok(message) => {
                    let immediate = if self.engine.config.debounce {
                        self.queue.push(message, now)
                    } else {
                        Some(message)
                    };
                    if let Some(message) = immediate {
                        if !self.feed(ws, message).await {
                            return Flow::End;
                        }
                        fed = true;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    log::debug!(target: WS, "{} lagged, {n} messages dropped", LogUser(self.uid));
                }
                Err(RecvError::Closed) => {
                    closed = true;
                    break;
                }
            }
            if taken >= MAX_BATCH {
                break;
            }
            next = match messages.try_recv() {
                Ok(message) => Ok(message),
                Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                Err(TryRecvError::Closed) => Err(RecvError::Closed),
                Err(TryRecvError::Empty) => break,
            };
        }
        if fed {
            if let flow @ (Flow::End | Flow::Close(_) | Flow::Refuse(_)) = self.flush(ws).await {
                return flow;
            }
        }
        if closed {
            Flow::End
        } else {
            Flow::Continue
        }
    }

    async fn on_tick<S>(&mut self, ws: &mut WebSocketStream<S>) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let now = Instant::now();
        let config = &self.engine.config;
        if config.max_connection_time > 0
            && now.duration_since(self.started) > Duration::from_secs(config.max_connection_time)
        {
            return Flow::Close(None);
        }
        if !self.queue.is_empty() {
            let due = self.queue.drain(now.into_std(), self.debounce_time());
            if !due.is_empty() {
                for message in due {
                    if !self.feed(ws, message).await {
                        return Flow::End;
                    }
                }
                if let flow @ (Flow::End | Flow::Close(_) | Flow::Refuse(_)) = self.flush(ws).await
                {
                    return flow;
                }
            }
        }
        if now.duration_since(self.last_send) > self.ping_interval {
            if self.expect_pong.is_some() {
                log::info!(target: WS, "NCP1021: {} did not answer a ping, closing the connection", LogUser(self.uid));
                return Flow::Refuse(closing(CloseCode::Error, "ping timeout"));
            }
            let mut value: u32 = 0;
            while value == 0 {
                value = rand::random();
            }
            let payload = value.to_le_bytes();
            self.expect_pong = Some(payload);
            self.last_send = now;
            if ws.send(Message::Ping(payload.to_vec().into())).await.is_err() {
                return Flow::End;
            }
        }
        Flow::Continue
    }

    /// Queues one text frame in the WebSocket's write buffer; `false` when the connection broke.
    async fn feed<S>(&mut self, ws: &mut WebSocketStream<S>, message: PushMessage) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let counters = &self.engine.counters;
        let counter = match message {
            PushMessage::File(_) => &counters.sent_file,
            PushMessage::Activity => &counters.sent_activity,
            PushMessage::Notification => &counters.sent_notification,
            PushMessage::Custom(_) => &counters.sent_custom,
        };
        if ws.feed(Message::Text(message.to_text(self.listen_file_id))).await.is_err() {
            return false;
        }
        counter.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Writes the fed frames out (one write for the whole batch) and resets the ping timer.
    async fn flush<S>(&mut self, ws: &mut WebSocketStream<S>) -> Flow
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.last_send = Instant::now();
        if ws.flush().await.is_err() {
            return Flow::End;
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::next_wake;
    use std::time::Duration;
    use tokio::time::Instant;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn next_wake_is_the_first_grid_moment_at_or_after_due() {
        let started = Instant::now();
        let tick = ms(500);
        // the first ping: due at `started` (last_send starts one interval back), first tick
        assert_eq!(next_wake(started, tick, started, started), started + ms(500));
        // a due moment between grid points waits for the next one
        assert_eq!(next_wake(started, tick, started, started + ms(620)), started + ms(1000));
        // on a grid point: that one
        assert_eq!(next_wake(started, tick, started, started + ms(1500)), started + ms(1500));
        // never at or before the last handled wake-up, so an equal-time miss cannot spin
        assert_eq!(
            next_wake(started, tick, started + ms(1500), started + ms(1500)),
            started + ms(2000)
        );
        assert_eq!(
            next_wake(started, tick, started + ms(1500), started + ms(100)),
            started + ms(2000)
        );
        // the next ping 30 s after a send at 10.2 s
        assert_eq!(
            next_wake(started, tick, started + ms(10_000), started + ms(40_200)),
            started + ms(40_500)
        );
        // a far due moment (max connection time of years) does not overflow
        let far = next_wake(started, tick, started, started + Duration::from_secs(u32::MAX as u64));
        assert!(far > started + Duration::from_secs(86_400));
    }
}
#[cfg(test)]
mod task_size {
    fn future_size<A, B, C, F: std::future::Future>(_f: fn(A, B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A session's task is allocated at the size of its largest state and keeps it while the
    /// client idles, so the login and the serving phase live in their own boxes and the task
    /// holds little more than the WebSocket. Without the boxes it was about 3 KiB (the stream
    /// was stored once per async-fn level it passed through).
    #[test]
    fn an_idle_session_task_stays_small() {
        let size = future_size(super::serve_upgraded::<tokio::net::TcpStream>);
        assert!(size <= 1536, "session task future is {size} bytes");
        // engine-tcp and tests: the HTTP handshake first, then the same session
        let size = future_size(super::serve_http::<tokio::net::TcpStream>);
        assert!(size <= 1536, "HTTP session task future is {size} bytes");
    }

    /// What an idle session holds: its task, the serving phase's box and the boxed WebSocket.
    /// An adopted TLS stream (wss through mod_ssl) was about 1.5 KB inline (its record layer
    /// with two ring AEAD keys), and the task (6.5 KiB) and the serving box (4.9 KiB) each held
    /// it several times: an idle wss session cost about 12 KiB more than a plain one. Now the
    /// record layer is boxed inside the stream, the WebSocket is boxed once it exists, and the
    /// async fns that took it by value (whose parameters are kept twice in their futures) are
    /// plain fns returning an async block, so neither the task nor the serving box depends on
    /// the stream type.
    #[test]
    fn an_idle_tls_session_task_stays_small() {
        type Tls = crate::tls::TlsStream<tokio::net::TcpStream>;
        let stream = std::mem::size_of::<Tls>();
        assert!(stream <= 256, "TlsStream is {stream} bytes inline");

        let tls = future_size(super::serve_upgraded::<Tls>);
        let plain = future_size(super::serve_upgraded::<tokio::net::TcpStream>);
        assert!(tls <= 512, "TLS session task future is {tls} bytes");
        assert_eq!(tls, plain, "the session task's size depends on the stream type");

        fn serve_size<A, B, C, D, F: std::future::Future>(_f: impl Fn(A, B, C, D) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let tls = serve_size(super::Connection::serve::<Tls>);
        let plain = serve_size(super::Connection::serve::<tokio::net::TcpStream>);
        assert!(tls <= 1152, "serving phase future is {tls} bytes");
        assert_eq!(tls, plain, "the serving phase's size depends on the stream type");
    }
}
