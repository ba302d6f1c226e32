//! The push daemon's safe part: the tokio runtime, one [`Engine`] per distinct configuration,
//! and the handoff server of docs/internals.md.
//!
//! `apache::process` forks the daemon from the Apache parent, does the fork hygiene (fds,
//! signals, limits, socket, privileges) and then calls [`run`]; its return value is the exit
//! status.

use crate::apache::{stop_notice, unix};
use crate::handoff::{self, HandoffAssembler, HandoffError, Hello};
use nextcloud_push_engine::{Engine, EngineConfig, Handoff, NextcloudRoute};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};

/// Exit status of a daemon that could not start; the parent does not respawn it until the
/// next restart.
pub const EXIT_STARTUP_FAILED: i32 = 3;
/// Descriptors kept free for Redis, database and Nextcloud connections and for accepting.
pub const FD_RESERVE: u64 = 256;
/// Upper bound of the whole shutdown (engines send close frames and wait for their sessions).
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(4);
/// After a stop notice, the parent waits for the daemon's answer (`stop_notice::STOP_WAIT_MS`);
/// the daemon answers when every session has ended or after this long, whichever is first.
pub const STOP_ACK_AFTER: Duration = Duration::from_millis(2500);
/// After the answer to a stop or hard restart, how long bridged streams of ended sessions stay
/// held (see [`Hold`]): the parent stops the children right after the answer, and children of
/// an older generation that were already exiting gracefully wait for their bridges (the parent
/// warns about them after 3 s and kills them after 9 s).
const HOLD_AFTER_ANSWER: Duration = Duration::from_secs(1);

/// The readiness pipe to the Apache parent, which waits for it in post_config.
pub struct Ready(std::fs::File);

impl Ready {
    pub fn new(fd: OwnedFd) -> Ready {
        Ready(std::fs::File::from(fd))
    }

    /// The socket is bound and the engines exist: children may connect now. `fd_limit` (the
    /// daemon's RLIMIT_NOFILE) goes along, so the parent can say how many sessions fit. One
    /// write of less than PIPE_BUF bytes: the parent reads it whole.
    pub fn ok(mut self, fd_limit: u64) {
        let _ = self.0.write_all(format!("OK {fd_limit}\n").as_bytes());
    }

    /// Startup failed; the parent logs `msg` and does not respawn until the next restart.
    pub fn fail(mut self, msg: &str) {
        let _ = self.0.write_all(format!("ERR {msg}").as_bytes());
    }
}

pub struct DaemonSetup {
    /// Bound and listening (as root, then chowned to `User`), blocking.
    pub listener: std::os::unix::net::UnixListener,
    pub socket_path: PathBuf,
    /// Index = the `engine` of a [`Hello`].
    pub engines: Vec<EngineConfig>,
    /// How each engine reaches Nextcloud (same index; missing: the URL, no vouching).
    pub routes: Vec<NextcloudRoute>,
    pub ready: Ready,
    /// The daemon's end of the stop-notice channel (`apache::stop_notice`): the Apache parent
    /// writes `T` on `apachectl stop` (and waits for the answer `A` before it stops the
    /// children, so bridged sessions get their Close frame through their bridges), `W` on
    /// graceful-stop (whose event/worker children would otherwise wait for the bridges), or `R`
    /// on a hard restart (answer `A` once the bridged sessions are closed; the daemon stays).
    pub stop_notice: Option<OwnedFd>,
}

/// Why the accept loop ended.
enum Stop {
    Signal,
    /// A stop notice; `Some`: the parent waits for the answer on this stream.
    Apache(Option<UnixStream>),
}

/// Runs the daemon until SIGTERM/SIGINT; returns the exit status.
pub fn run(setup: DaemonSetup) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nextcloud-push")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            setup.ready.fail(&format!("cannot start the tokio runtime: {e}"));
            return EXIT_STARTUP_FAILED;
        }
    };
    let code = runtime.block_on(serve(setup));
    // Do not wait for blocking tasks (DNS lookups, …): the process ends right after this.
    runtime.shutdown_timeout(Duration::from_millis(200));
    code
}

struct State {
    engines: Vec<Arc<Engine>>,
    /// `engines[i].config().fingerprint()`, computed once.
    prints: Vec<String>,
    shutting_down: AtomicBool,
    /// Client sockets this daemon holds (handed-off sessions and handoffs in flight).
    live: Arc<AtomicUsize>,
    fd_limit: u64,
    refused: AtomicU64,
    hold: Arc<Hold>,
}

/// Bridged streams kept open after their session ended, while the Apache parent stops or
/// hard-restarts its children. A bridge whose stream ends runs Apache's normal close (TLS
/// close_notify, then the event MPM's lingering close); the parent, released by our answer,
/// would then stop the children in the middle of it (event/worker `close_worker_sockets` racing
/// the worker's `apr_pollset_add`: `AH03092 … Bad file descriptor`, and the child then exits
/// gracefully). Held, the bridges stay idle until the MPM closes their connections and the
/// `child_stopping` hook ends them without a lingering close. The client already has its 1001.
#[derive(Default)]
struct Hold {
    on: AtomicBool,
    kept: std::sync::Mutex<Vec<Box<dyn Send>>>,
}

impl Hold {
    /// From now on, bridged streams whose session ends are kept instead of closed.
    fn start(&self) {
        self.on.store(true, Ordering::SeqCst);
    }

    fn holds_any(&self) -> bool {
        !self.kept.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Stops holding after `delay` (by then the MPM has stopped the children it was told to
    /// stop) and closes the kept streams.
    fn release_after(self: &Arc<Self>, delay: Duration) {
        let hold = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            hold.on.store(false, Ordering::SeqCst);
            drop(std::mem::take(&mut *hold.kept.lock().unwrap_or_else(|e| e.into_inner())));
        });
    }
}

async fn serve(setup: DaemonSetup) -> i32 {
    let DaemonSetup { listener, socket_path, engines: configs, routes, ready, stop_notice } = setup;
    // Install the handlers first: until then SIGTERM would kill us without cleanup.
    let (mut term, mut int) =
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                ready.fail(&format!("cannot install signal handlers: {e}"));
                return EXIT_STARTUP_FAILED;
            }
        };
    let mut engines = Vec::with_capacity(configs.len());
    for (i, config) in configs.into_iter().enumerate() {
        match Engine::with_route(config, routes.get(i).cloned().unwrap_or_default()) {
            Ok(engine) => {
                engine.start();
                engines.push(engine);
            }
            Err(e) => {
                ready.fail(&format!("cannot create a push engine: {e:#}"));
                return EXIT_STARTUP_FAILED;
            }
        }
    }
    let listener =
        match listener.set_nonblocking(true).and_then(|()| UnixListener::from_std(listener)) {
            Ok(l) => l,
            Err(e) => {
                ready.fail(&format!("cannot use the socket {}: {e}", socket_path.display()));
                return EXIT_STARTUP_FAILED;
            }
        };
    let bound = std::fs::metadata(&socket_path).map(|m| (m.dev(), m.ino())).ok();
    let prints = engines.iter().map(|e| e.config().fingerprint()).collect();
    let state = Arc::new(State {
        engines,
        prints,
        shutting_down: AtomicBool::new(false),
        live: Arc::new(AtomicUsize::new(0)),
        fd_limit: unix::nofile_limit(),
        refused: AtomicU64::new(0),
        hold: Arc::default(),
    });
    log::info!(
        target: "nextcloud_push::daemon",
        "NCP0101: push daemon {} ready on {} with {} engine(s), fd limit {}",
        env!("CARGO_PKG_VERSION"),
        socket_path.display(),
        state.engines.len(),
        state.fd_limit
    );
    ready.ok(state.fd_limit);

    let mut last_accept_warning: Option<std::time::Instant> = None;
    let mut notice = stop_notice.and_then(|fd| {
        let stream = std::os::unix::net::UnixStream::from(fd);
        stream.set_nonblocking(true).ok()?;
        UnixStream::from_std(stream).ok()
    });
    let stop = loop {
        tokio::select! {
            _ = term.recv() => break Stop::Signal,
            _ = int.recv() => break Stop::Signal,
            byte = next_notice(&mut notice), if notice.is_some() => match byte {
                Some(stop_notice::NOTICE_STOP) => {
                    log::info!(target: "nextcloud_push::daemon", "NCP0111: Apache is stopping: closing every session before its children stop");
                    state.hold.start();
                    break Stop::Apache(notice.take());
                }
                Some(stop_notice::NOTICE_HARD_RESTART) => {
                    // The children (and the bridges in them) are about to be stopped; the
                    // daemon and its plain sessions stay. The parent waits for the answer.
                    log::info!(target: "nextcloud_push::daemon", "NCP0113: Apache is restarting (not gracefully): closing the bridged (TLS) sessions its workers carry");
                    state.hold.start();
                    let all = futures_util::future::join_all(state.engines.iter().map(|e| e.close_bridged()));
                    let _ = tokio::time::timeout(STOP_ACK_AFTER, all).await;
                    if let Some(parent) = notice.as_mut() {
                        let _ = parent.write_all(&[stop_notice::NOTICE_DONE]).await;
                    }
                    state.hold.release_after(HOLD_AFTER_ANSWER);
                }
                Some(stop_notice::NOTICE_GRACEFUL_STOP) => {
                    log::info!(target: "nextcloud_push::daemon", "NCP0111: Apache is stopping gracefully: closing every session");
                    break Stop::Apache(None);
                }
                Some(other) => {
                    log::debug!(target: "nextcloud_push::daemon", "NCP0112: unknown stop notice byte {other:#04x} ignored");
                }
                // The parent's end is closed (the parent is gone: PR_SET_PDEATHSIG follows).
                None => notice = None,
            },
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let state = state.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle_child(stream, &state).await {
                            log::debug!(target: "nextcloud_push::daemon", "NCP0104: handoff dropped: {e}");
                        }
                    });
                }
                Err(e) => {
                    // EMFILE/ENFILE: the pending connections time out in the children (503).
                    // One line per minute at most.
                    if last_accept_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        log::warn!(target: "nextcloud_push::daemon", "NCP0105: accept on the daemon socket failed: {e}");
                        last_accept_warning = Some(std::time::Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    };

    state.shutting_down.store(true, Ordering::SeqCst);
    drop(listener);
    log::info!(
        target: "nextcloud_push::daemon",
        "NCP0102: push daemon stopping, closing {} session(s)",
        state.live.load(Ordering::SeqCst)
    );
    let all = futures_util::future::join_all(state.engines.iter().map(|e| e.shutdown()));
    let all = tokio::time::timeout(SHUTDOWN_DEADLINE, all);
    tokio::pin!(all);
    if let Stop::Apache(Some(mut parent)) = stop {
        // The parent holds back the children's stop until this answer (bounded on its side
        // too): answer when every session has ended, or after STOP_ACK_AFTER.
        tokio::select! {
            _ = &mut all => {}
            _ = tokio::time::sleep(STOP_ACK_AFTER) => {}
        }
        let _ = parent.write_all(&[stop_notice::NOTICE_DONE]).await;
        drop(parent);
    }
    let _ = all.await;
    // Remove the socket only if it is still ours: a replacement daemon may have bound the
    // same path already.
    if let (Some(bound), Ok(now)) = (bound, std::fs::metadata(&socket_path)) {
        if bound == (now.dev(), now.ino()) {
            let _ = std::fs::remove_file(&socket_path);
        }
    }
    // Held bridged streams (see `Hold`) close when this process ends: not right after the
    // answer, while the parent is stopping its children (bridges woken by their stream's end
    // would run Apache's normal close just then; prefork's SIGTERM handler frees the child's
    // pools under them: a segfault), but soon after it, for the children of an older
    // generation that were already exiting gracefully: they do not react to the stop and end
    // only when their bridges do.
    if state.hold.holds_any() {
        tokio::time::sleep(HOLD_AFTER_ANSWER).await;
    }
    log::info!(target: "nextcloud_push::daemon", "NCP0103: push daemon stopped");
    0
}

/// The next byte of the stop-notice channel; `None` at EOF or on an error. Pending without a
/// channel (the select branch is disabled then).
async fn next_notice(notice: &mut Option<UnixStream>) -> Option<u8> {
    let Some(stream) = notice.as_mut() else { return std::future::pending().await };
    let mut byte = [0u8; 1];
    match stream.read(&mut byte).await {
        Ok(1) => Some(byte[0]),
        _ => None,
    }
}

/// One Apache child's connection: Hello → answer → handoff.
async fn handle_child(mut stream: UnixStream, state: &State) -> Result<(), HandoffError> {
    check_peer(&stream)?;
    let first = tokio::time::timeout(handoff::ASK_TIMEOUT, read_hello(&mut stream))
        .await
        .map_err(|_| HandoffError::Timeout(handoff::ASK_TIMEOUT))??;
    let hello = match first {
        First::Hello(hello) => hello,
        First::Control(frame) => return serve_control(stream, frame, state).await,
    };
    let engine = match admit(&hello, state) {
        Ok(engine) => engine,
        Err(why) => {
            let n = state.refused.fetch_add(1, Ordering::Relaxed);
            // One line per 100 refusals, so a flood does not flood the log.
            if n % 100 == 0 {
                log::warn!(target: "nextcloud_push::daemon", "NCP0106: refusing a WebSocket handoff: {why}");
            }
            stream.write_all(&[handoff::REFUSED]).await?;
            return Ok(());
        }
    };
    // Count the client socket from now on, so concurrent admissions see it.
    let slot = LiveSlot::new(state.live.clone());
    stream.write_all(&[handoff::ACCEPTED]).await?;
    if hello.bridged {
        return serve_bridged(stream, engine, slot, &hello, &state.hold).await;
    }
    let (header, early, fd) =
        tokio::time::timeout(handoff::HANDOFF_TIMEOUT, receive_handoff(&stream))
            .await
            .map_err(|_| HandoffError::Timeout(handoff::HANDOFF_TIMEOUT))??;
    drop(stream);
    let tcp = std::net::TcpStream::from(fd);
    tcp.set_nonblocking(true)?;
    let tcp = TcpStream::from_std(tcp)?;
    log::debug!(
        target: "nextcloud_push::daemon",
        "NCP0107: WebSocket handed over ({} early bytes, client chain {:?})",
        early.len(),
        header.forwarded_for
    );
    engine.accept_upgraded(
        Counted::new(tcp, slot, None),
        Handoff {
            early_data: early,
            forwarded_for: header.forwarded_for,
            ping_interval: None,
            bridged: false,
        },
    );
    Ok(())
}

/// Only Apache's own processes may hand sessions over: the peer must run as root (the parent)
/// or as the daemon's own uid, which is Apache's `User` (the children). The socket is 0700
/// already; this also holds if an admin loosens its permissions.
fn check_peer(stream: &UnixStream) -> Result<(), HandoffError> {
    let cred = stream.peer_cred()?;
    let own = unix::effective_uid();
    if cred.uid() == own || cred.uid() == 0 {
        return Ok(());
    }
    log::warn!(
        target: "nextcloud_push::daemon",
        "NCP0109: refusing a connection from pid {} uid {}: only root and Apache's User (uid {own}) may hand sessions over",
        cred.pid().map_or_else(|| "?".to_owned(), |p| p.to_string()),
        cred.uid()
    );
    Err(HandoffError::Protocol(format!("peer uid {} not allowed", cred.uid())))
}

/// Bridged mode (TLS through mod_ssl): after the header and the early bytes, this very stream
/// carries the client's plaintext WebSocket, relayed by an Apache worker that is cut after
/// Apache's `Timeout` of silence, so the session pings more often than that.
async fn serve_bridged(
    mut stream: UnixStream,
    engine: &Arc<Engine>,
    slot: LiveSlot,
    hello: &Hello,
    hold: &Arc<Hold>,
) -> Result<(), HandoffError> {
    let (header, early) =
        tokio::time::timeout(handoff::HANDOFF_TIMEOUT, receive_bridged(&mut stream))
            .await
            .map_err(|_| HandoffError::Timeout(handoff::HANDOFF_TIMEOUT))??;
    let ping_interval = hello.timeout_ms.map(handoff::bridged_ping_interval);
    log::debug!(
        target: "nextcloud_push::daemon",
        "NCP0108: bridged (TLS) WebSocket from an Apache worker ({} early bytes, client chain {:?}, ping interval {:?})",
        early.len(),
        header.forwarded_for,
        ping_interval
    );
    engine.accept_upgraded(
        Counted::new(stream, slot, Some(hold.clone())),
        Handoff {
            early_data: early,
            forwarded_for: header.forwarded_for,
            ping_interval,
            bridged: true,
        },
    );
    Ok(())
}

/// Step 3 of bridged mode: exact reads, so not one byte of the WebSocket after the early data
/// is consumed here.
async fn receive_bridged(
    stream: &mut UnixStream,
) -> Result<(handoff::HandoffHeader, Vec<u8>), HandoffError> {
    // The worker relays the client's bytes right behind the early data: read the length, the
    // header and exactly `early_len` bytes, nothing more.
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let mut payload = vec![0u8; handoff::frame_len(len)?];
    stream.read_exact(&mut payload).await?;
    let header: handoff::HandoffHeader = serde_json::from_slice(&payload)
        .map_err(|e| HandoffError::Protocol(format!("bad handoff header: {e}")))?;
    if header.early_len as usize > handoff::MAX_EARLY {
        return Err(HandoffError::Protocol(format!(
            "{} early bytes announced (at most {})",
            header.early_len,
            handoff::MAX_EARLY
        )));
    }
    let mut early = vec![0u8; header.early_len as usize];
    stream.read_exact(&mut early).await?;
    Ok((header, early))
}

fn admit<'a>(hello: &Hello, state: &'a State) -> Result<&'a Arc<Engine>, String> {
    if hello.protocol != handoff::PROTOCOL {
        return Err(format!(
            "handoff protocol {} from an Apache child, this daemon speaks {}",
            hello.protocol,
            handoff::PROTOCOL
        ));
    }
    if state.shutting_down.load(Ordering::SeqCst) {
        return Err("shutting down".into());
    }
    let engine = state
        .engines
        .get(hello.engine as usize)
        .ok_or_else(|| format!("unknown engine {}", hello.engine))?;
    if let Some(config) = &hello.config {
        if state.prints.get(hello.engine as usize) != Some(config) {
            return Err(format!(
                "engine {} has another configuration than the Apache child expects (a child of an \
                 older configuration generation?)",
                hello.engine
            ));
        }
    }
    let live = state.live.load(Ordering::SeqCst) as u64;
    if live + FD_RESERVE >= state.fd_limit {
        return Err(format!("{live} sockets open, fd limit {}", state.fd_limit));
    }
    Ok(engine)
}

/// The first frame of a child's connection: a WebSocket [`Hello`] or a control request
/// (`crate::control`: self-test endpoints, metrics).
enum First {
    Hello(Hello),
    Control(crate::control::ControlFrame),
}

async fn read_hello(stream: &mut UnixStream) -> Result<First, HandoffError> {
    // Exact reads: nothing may be consumed past the frame (the child waits for our answer
    // anyway, but a descriptor attached to a later byte must never meet a plain read).
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let mut payload = vec![0u8; handoff::frame_len(len)?];
    stream.read_exact(&mut payload).await?;
    if let Some(frame) = crate::control::parse(&payload) {
        return Ok(First::Control(frame));
    }
    serde_json::from_slice(&payload)
        .map(First::Hello)
        .map_err(|e| HandoffError::Protocol(format!("bad hello: {e}")))
}

/// Answers one control request (bounded: the engine bounds its Redis and Nextcloud calls; this
/// bounds the whole answer too).
async fn serve_control(
    stream: UnixStream,
    frame: crate::control::ControlFrame,
    state: &State,
) -> Result<(), HandoffError> {
    let path = frame.control.path.clone();
    let serve = crate::control::serve(
        stream,
        frame,
        &state.engines,
        &state.prints,
        state.shutting_down.load(Ordering::SeqCst),
    );
    tokio::time::timeout(crate::control::CONTROL_TIMEOUT, serve)
        .await
        .map_err(|_| HandoffError::Timeout(crate::control::CONTROL_TIMEOUT))??;
    log::debug!(target: "nextcloud_push::daemon", "NCP0110: answered control request {path}");
    Ok(())
}

async fn receive_handoff(
    stream: &UnixStream,
) -> Result<(handoff::HandoffHeader, Vec<u8>, OwnedFd), HandoffError> {
    let mut asm = HandoffAssembler::default();
    let mut client: Option<OwnedFd> = None;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let want = asm.wanted().clamp(1, buf.len());
        let (n, fds) = stream
            .async_io(Interest::READABLE, || unix::recv_with_fds(stream.as_fd(), &mut buf[..want]))
            .await?;
        // Extra descriptors (none are expected) are closed by dropping them.
        for fd in fds {
            if client.is_none() {
                client = Some(fd);
            }
        }
        if n == 0 {
            return Err(HandoffError::Protocol(
                "the Apache child closed before the handoff".into(),
            ));
        }
        if let Some((header, early)) = asm.push(&buf[..n])? {
            let fd = client
                .ok_or_else(|| HandoffError::Protocol("handoff without a client socket".into()))?;
            return Ok((header, early, fd));
        }
    }
}

/// Keeps [`State::live`] up to date: one per client socket the daemon holds.
struct LiveSlot(Arc<AtomicUsize>);

impl LiveSlot {
    fn new(live: Arc<AtomicUsize>) -> LiveSlot {
        live.fetch_add(1, Ordering::SeqCst);
        LiveSlot(live)
    }
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The client socket (or, bridged, the stream to the Apache worker) as the engine sees it;
/// dropping it releases the slot and closes the stream, unless it is bridged and [`Hold`] is on
/// (then the stream is kept, and a shutdown is not passed on).
struct Counted<S: Send + 'static> {
    inner: Option<S>,
    _slot: LiveSlot,
    /// Bridged streams only.
    hold: Option<Arc<Hold>>,
}

impl<S: Send + 'static> Counted<S> {
    fn new(inner: S, slot: LiveSlot, hold: Option<Arc<Hold>>) -> Counted<S> {
        Counted { inner: Some(inner), _slot: slot, hold }
    }

    fn holding(&self) -> bool {
        self.hold.as_ref().is_some_and(|h| h.on.load(Ordering::SeqCst))
    }

    fn stream(&mut self) -> std::io::Result<Pin<&mut S>>
    where
        S: Unpin,
    {
        match self.inner.as_mut() {
            Some(stream) => Ok(Pin::new(stream)),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
}

impl<S: Send + 'static> Drop for Counted<S> {
    fn drop(&mut self) {
        if let (true, Some(hold), Some(stream)) =
            (self.holding(), self.hold.as_ref(), self.inner.take())
        {
            hold.kept.lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(stream));
        }
    }
}

impl<S: AsyncRead + Unpin + Send + 'static> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Ok(stream) => stream.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<S: AsyncWrite + Unpin + Send + 'static> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.stream() {
            Ok(stream) => stream.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Ok(stream) => stream.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.holding() {
            return Poll::Ready(Ok(()));
        }
        match self.stream() {
            Ok(stream) => stream.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.stream() {
            Ok(stream) => stream.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nextcloud_push_engine::Overrides;
    use std::io::Read;
    use std::net::IpAddr;

    fn engine() -> Arc<Engine> {
        // Nothing listens on port 9: logins fail fast with a connect error, which is enough to
        // see that the session runs and consumed the early bytes.
        let config = EngineConfig::load(
            None,
            &Overrides {
                nextcloud_url: Some("http://127.0.0.1:9".into()),
                redis_url: Some("redis://127.0.0.1:9/0".into()),
                ..Default::default()
            },
        )
        .unwrap();
        Engine::new(config).unwrap()
    }

    fn state(engines: Vec<Arc<Engine>>) -> Arc<State> {
        Arc::new(State {
            prints: engines.iter().map(|e| e.config().fingerprint()).collect(),
            engines,
            shutting_down: AtomicBool::new(false),
            live: Arc::new(AtomicUsize::new(0)),
            fd_limit: 100_000,
            refused: AtomicU64::new(0),
            hold: Arc::default(),
        })
    }

    /// A masked client text frame.
    fn frame(text: &str) -> Vec<u8> {
        let mut out = vec![0x81, 0x80 | text.len() as u8, 1, 2, 3, 4];
        out.extend(text.bytes().enumerate().map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]));
        out
    }

    /// Serves one Apache-child connection on a fresh socket; returns the socket path.
    async fn serve_one(state: Arc<State>, name: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("ncp-daemon-{name}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = handle_child(stream, &state).await;
        });
        path
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handoff_reaches_the_engine_with_early_bytes() {
        let state = state(vec![engine()]);
        let print = state.prints[0].clone();
        let path = serve_one(state.clone(), "ok").await;
        let reply = tokio::task::spawn_blocking(move || {
            let accepted =
                handoff::ask_daemon(&path, &Hello::new(0, Some(print)), Duration::from_secs(2))
                    .unwrap();
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server_side, _) = listener.accept().unwrap();
            let mut early = frame("alice");
            early.extend(frame("secret"));
            let ips: Vec<IpAddr> = vec!["203.0.113.7".parse().unwrap()];
            accepted.hand_off(server_side.as_fd(), ips, &early).unwrap();
            drop(server_side);
            let _ = std::fs::remove_file(&path);
            client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut head = [0u8; 2];
            client.read_exact(&mut head).unwrap();
            let mut len = usize::from(head[1] & 0x7f);
            if len == 126 {
                let mut ext = [0u8; 2];
                client.read_exact(&mut ext).unwrap();
                len = usize::from(u16::from_be_bytes(ext));
            }
            let mut payload = vec![0u8; len];
            client.read_exact(&mut payload).unwrap();
            (head[0], String::from_utf8(payload).unwrap())
        })
        .await
        .unwrap();
        assert_eq!(reply.0, 0x81, "a final text frame");
        assert!(
            reply.1.starts_with("err: Error while sending authentication request to nextcloud"),
            "{}",
            reply.1
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bridged_stream_is_the_websocket_after_the_early_bytes() {
        let state = state(vec![engine()]);
        let path = serve_one(state.clone(), "bridged").await;
        let live = state.clone();
        let reply = tokio::task::spawn_blocking(move || {
            let hello = Hello::bridged(0, None, Duration::from_secs(3));
            let accepted = handoff::ask_daemon(&path, &hello, Duration::from_secs(2)).unwrap();
            let _ = std::fs::remove_file(&path);
            // The username frame is early data; the password frame follows on the stream itself.
            let stream = accepted.bridge(vec![], &frame("alice")).unwrap();
            stream.set_nonblocking(false).unwrap();
            (&stream).write_all(&frame("secret")).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut head = [0u8; 2];
            (&stream).read_exact(&mut head).unwrap();
            let mut len = usize::from(head[1] & 0x7f);
            if len == 126 {
                let mut ext = [0u8; 2];
                (&stream).read_exact(&mut ext).unwrap();
                len = usize::from(u16::from_be_bytes(ext));
            }
            let mut payload = vec![0u8; len];
            (&stream).read_exact(&mut payload).unwrap();
            (head[0], String::from_utf8(payload).unwrap())
        })
        .await
        .unwrap();
        assert_eq!(reply.0, 0x81, "a final text frame");
        assert!(reply.1.starts_with("err: Error while sending authentication"), "{}", reply.1);
        assert!(
            testkit::wait_until(Duration::from_secs(5), || {
                let n = live.live.load(Ordering::SeqCst);
                async move { n == 0 }
            })
            .await,
            "the bridged session's slot is released when it ends"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_engine_and_wrong_protocol_are_refused() {
        let state = state(vec![engine()]);
        let path = serve_one(state.clone(), "unknown").await;
        let e = tokio::task::spawn_blocking(move || {
            handoff::ask_daemon(&path, &Hello::new(5, None), Duration::from_secs(2))
        })
        .await
        .unwrap()
        .unwrap_err();
        assert!(matches!(e, HandoffError::Refused), "{e}");

        let path = serve_one(state.clone(), "protocol").await;
        let answer = tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
            s.write_all(&handoff::encode_json(&Hello { protocol: 999, ..Hello::new(0, None) }))
                .unwrap();
            let mut b = [9u8; 1];
            s.read_exact(&mut b).unwrap();
            let _ = std::fs::remove_file(&path);
            b[0]
        })
        .await
        .unwrap();
        assert_eq!(answer, handoff::REFUSED);
        assert_eq!(state.live.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refuses_near_the_fd_limit_and_when_shutting_down() {
        let engine = engine();
        let st = State {
            prints: vec![engine.config().fingerprint()],
            engines: vec![engine],
            shutting_down: AtomicBool::new(false),
            live: Arc::new(AtomicUsize::new(0)),
            fd_limit: FD_RESERVE + 1,
            refused: AtomicU64::new(0),
            hold: Arc::default(),
        };
        let hello = Hello::new(0, None);
        assert!(admit(&hello, &st).is_ok());
        assert!(admit(&Hello::new(0, Some(st.prints[0].clone())), &st).is_ok());
        assert!(admit(&Hello::new(0, Some("other".into())), &st).is_err());
        st.live.store(1, Ordering::SeqCst);
        assert!(admit(&hello, &st).is_err());
        st.live.store(0, Ordering::SeqCst);
        st.shutting_down.store(true, Ordering::SeqCst);
        assert!(admit(&hello, &st).is_err());
    }
}
