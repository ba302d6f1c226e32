//! The push daemon: one tokio runtime, one [`Engine`] per distinct configuration, and the
//! daemon's side of the protocol in `crate::wire` (docs/internals.md).
//!
//! `apache::process` forks the daemon from the Apache parent, does the fork hygiene (fds,
//! signals, limits, socket, privileges) and then calls [`run`]: that call is the only edge
//! between the Apache glue and this folder. Safe code only.
//!
//! - this file: startup, the accept loop with the parent's stop notices, the shutdown;
//! - [`child`]: one Apache child's connection (peer check, Hello, admission, handoff);
//! - [`control`]: the answers to control requests (self-test endpoints, metrics);
//! - [`stream`]: the streams handed to the engines (counted, and held while Apache stops).

mod child;
mod control;
mod stream;

use crate::error::{Refusal, StartupError};
use crate::sys;
use crate::wire::notice;
use crate::wire::ready::Ready;
use nextcloud_push_engine::{Engine, EngineConfig, NextcloudRoute};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stream::{Hold, HOLD_AFTER_ANSWER};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Exit status of a daemon that could not start; the parent does not respawn it until the
/// next restart.
pub const EXIT_STARTUP_FAILED: i32 = 3;
/// Upper bound of the whole shutdown (engines send close frames and wait for their sessions).
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(4);
/// After closing its connections to Nextcloud (through Apache), how long the daemon lets
/// Apache's workers finish them before it releases a stopping parent.
const CONNECTIONS_SETTLE: Duration = Duration::from_millis(100);

pub struct DaemonSetup {
    /// Bound and listening (as root, then chowned to `User`), blocking.
    pub listener: std::os::unix::net::UnixListener,
    pub socket_path: PathBuf,
    /// Index = the `engine` of a Hello.
    pub engines: Vec<EngineConfig>,
    /// How each engine reaches Nextcloud (same index; missing: the URL, no vouching).
    pub routes: Vec<NextcloudRoute>,
    /// Which Apache server this daemon belongs to (`<hostname>/<ServerName>:<port>`, made by
    /// the parent): every engine labels its Redis metrics with it
    /// (`Engine::set_server_label`), and `server-status` shows it.
    pub server_label: String,
    pub ready: Ready,
    /// The daemon's end of the stop-notice channel (`wire::notice`): the Apache parent writes
    /// `T` on `apachectl stop` (and waits for the answer `A` before it stops the children, so
    /// bridged sessions get their Close frame through their bridges), `W` on graceful-stop
    /// (whose event/worker children would otherwise wait for the bridges), or `R` on a hard
    /// restart (answer `A` once the bridged sessions are closed; the daemon stays).
    pub stop_notice: Option<OwnedFd>,
    /// Installs a reopened error log the parent sent (`wire::notice::LOGS`: slot, descriptor).
    pub reopen_log: fn(u16, OwnedFd),
}

/// Runs the daemon until SIGTERM/SIGINT or a stop notice; returns the exit status.
pub fn run(setup: DaemonSetup) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("nextcloud-push")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            setup.ready.fail(&StartupError::Runtime(e).to_string());
            return EXIT_STARTUP_FAILED;
        }
    };
    let code = runtime.block_on(serve(setup));
    // Do not wait for blocking tasks (DNS lookups, …): the process ends right after this.
    runtime.shutdown_timeout(Duration::from_millis(200));
    code
}

/// What every connection handler sees.
struct State {
    engines: Vec<Arc<Engine>>,
    /// `engines[i].config().fingerprint()`, computed once.
    prints: Vec<String>,
    shutting_down: AtomicBool,
    /// Client sockets this daemon holds (handed-off sessions and handoffs in flight).
    live: Arc<AtomicUsize>,
    /// Sessions bridged by Apache workers (each holds a worker).
    bridged: Arc<AtomicUsize>,
    /// Sessions whose TLS session moved here from mod_ssl.
    tls: Arc<AtomicUsize>,
    /// [`DaemonSetup::server_label`].
    server_label: String,
    fd_limit: u64,
    refused: AtomicU64,
    hold: Arc<Hold>,
    started: Instant,
}

impl State {
    fn new(engines: Vec<Arc<Engine>>, server_label: String, fd_limit: u64) -> State {
        State {
            prints: engines.iter().map(|e| e.config().fingerprint()).collect(),
            engines,
            server_label,
            shutting_down: AtomicBool::new(false),
            live: Arc::new(AtomicUsize::new(0)),
            bridged: Arc::new(AtomicUsize::new(0)),
            tls: Arc::new(AtomicUsize::new(0)),
            fd_limit,
            refused: AtomicU64::new(0),
            hold: Arc::default(),
            started: Instant::now(),
        }
    }

    /// Engine `index`, if the child's idea of its configuration (`config`, a fingerprint) is
    /// ours: a child of an older generation after a graceful restart that replaced the daemon
    /// must not reach the wrong Nextcloud.
    fn engine(&self, index: u32, config: Option<&str>) -> Result<&Arc<Engine>, Refusal> {
        let engine = self.engines.get(index as usize).ok_or(Refusal::UnknownEngine(index))?;
        match config {
            Some(config) if self.prints.get(index as usize).map(String::as_str) != Some(config) => {
                Err(Refusal::StaleConfig(index))
            }
            _ => Ok(engine),
        }
    }
}

/// Why the accept loop ended.
enum Stop {
    Signal,
    /// A stop notice; `Some`: the parent waits for the answer on this stream.
    Apache(Option<UnixStream>),
}

/// The daemon's signals: SIGTERM and SIGINT both mean stop.
struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

async fn serve(setup: DaemonSetup) -> i32 {
    let DaemonSetup {
        listener,
        socket_path,
        engines,
        routes,
        server_label,
        ready,
        stop_notice,
        reopen_log,
    } = setup;
    let started = start(listener, &socket_path, engines, routes, server_label);
    let (signals, listener, state) = match started {
        Ok(started) => started,
        Err(e) => {
            ready.fail(&e.to_string());
            return EXIT_STARTUP_FAILED;
        }
    };
    let bound = std::fs::metadata(&socket_path).map(|m| (m.dev(), m.ino())).ok();
    log::info!(
        target: "nextcloud_push::daemon",
        "NCP0101: push daemon {} ready on {} with {} engine(s), fd limit {}",
        env!("CARGO_PKG_VERSION"),
        socket_path.display(),
        state.engines.len(),
        state.fd_limit
    );
    ready.ok(state.fd_limit);

    let notice = stop_notice.and_then(|fd| {
        let stream = std::os::unix::net::UnixStream::from(fd);
        stream.set_nonblocking(true).ok()?;
        let stream = UnixStream::from_std(stream).ok()?;
        Some(Notices { stream, buf: Vec::new(), fds: Vec::new(), reopen_log })
    });
    let stop = accept_loop(signals, &listener, notice, &state).await;
    state.shutting_down.store(true, Ordering::SeqCst);
    drop(listener);
    shut_down(stop, &state).await;
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

/// Signal handlers, the engines (started), the async listener: everything before "ready".
fn start(
    listener: std::os::unix::net::UnixListener,
    socket_path: &std::path::Path,
    configs: Vec<EngineConfig>,
    routes: Vec<NextcloudRoute>,
    server_label: String,
) -> Result<(StopSignals, UnixListener, Arc<State>), StartupError> {
    // Install the handlers first: until then SIGTERM would kill us without cleanup.
    let signals = StopSignals {
        term: signal(SignalKind::terminate()).map_err(StartupError::Signals)?,
        int: signal(SignalKind::interrupt()).map_err(StartupError::Signals)?,
    };
    let mut engines = Vec::with_capacity(configs.len());
    for (i, config) in configs.into_iter().enumerate() {
        let route = routes.get(i).cloned().unwrap_or_default();
        // Its records carry the instance number: the logger follows that vhost's LogLevel and
        // ErrorLog (apache::log).
        let engine = Engine::for_instance(config, route, i).map_err(StartupError::Engine)?;
        engine.set_server_label(server_label.as_str());
        engine.start();
        engines.push(engine);
    }
    let listener =
        listener.set_nonblocking(true).and_then(|()| UnixListener::from_std(listener)).map_err(
            |source| StartupError::Socket { path: socket_path.display().to_string(), source },
        )?;
    Ok((signals, listener, Arc::new(State::new(engines, server_label, sys::nofile_limit()))))
}

/// Accepts Apache children's connections until a signal or a stop notice says stop. A hard
/// restart's notice is handled here and the loop goes on.
async fn accept_loop(
    mut signals: StopSignals,
    listener: &UnixListener,
    mut notice: Option<Notices>,
    state: &Arc<State>,
) -> Stop {
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = signals.recv() => return Stop::Signal,
            byte = next_notice(&mut notice), if notice.is_some() => match byte {
                Some(notice::STOP) => {
                    log::info!(target: "nextcloud_push::daemon", "NCP0111: Apache is stopping: closing every session before its children stop");
                    state.hold.start();
                    return Stop::Apache(notice.take().map(|n| n.stream));
                }
                Some(notice::HARD_RESTART) => {
                    close_bridged(state, notice.as_mut().map(|n| &mut n.stream)).await;
                }
                Some(notice::GRACEFUL_STOP) => {
                    log::info!(target: "nextcloud_push::daemon", "NCP0111: Apache is stopping gracefully: closing every session");
                    return Stop::Apache(None);
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
                        if let Err(e) = child::handle(stream, &state).await {
                            log::debug!(target: "nextcloud_push::daemon", "NCP0104: handoff dropped: {e}");
                        }
                    });
                }
                Err(e) => {
                    // EMFILE/ENFILE: the pending connections time out in the children (503).
                    // One line per minute at most.
                    if last_accept_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                        log::warn!(target: "nextcloud_push::daemon", "NCP0105: accept on the daemon socket failed: {e}");
                        last_accept_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// A hard restart: the children (and the bridges in them) are about to be stopped; the daemon
/// and its plain sessions stay. The parent waits for the answer.
async fn close_bridged(state: &State, parent: Option<&mut UnixStream>) {
    log::info!(target: "nextcloud_push::daemon", "NCP0113: Apache is restarting (not gracefully): closing the bridged (TLS) sessions its workers carry");
    state.hold.start();
    let all = futures_util::future::join_all(state.engines.iter().map(|e| e.close_bridged()));
    let _ = tokio::time::timeout(notice::ACK_AFTER, all).await;
    if let Some(parent) = parent {
        let _ = parent.write_all(&[notice::DONE]).await;
    }
    state.hold.release_after(HOLD_AFTER_ANSWER);
}

/// Closes every session (≤ [`SHUTDOWN_DEADLINE`]); a parent waiting
/// for a stop notice's answer gets it when the sessions have ended or after
/// [`notice::ACK_AFTER`].
async fn shut_down(stop: Stop, state: &State) {
    // The idle connections to Nextcloud (through this Apache) close first, while Apache's
    // children still run normally: closed at exit, right when the parent stops the children,
    // a worker finishing one raced the event MPM's close_worker_sockets (a child segfault).
    for engine in &state.engines {
        engine.close_nextcloud_connections();
    }
    let closed = tokio::time::Instant::now();
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
        // too).
        tokio::select! {
            _ = &mut all => {}
            _ = tokio::time::sleep(notice::ACK_AFTER) => {}
        }
        // Time for Apache's workers to see those connections end before the children stop.
        tokio::time::sleep_until(closed + CONNECTIONS_SETTLE).await;
        let _ = parent.write_all(&[notice::DONE]).await;
        drop(parent);
    }
    let _ = all.await;
}

/// The parent's notice channel: stop notices (one byte each) and reopened error logs
/// (`[LOGS, slot, slot]` with a descriptor), read into `buf` and `fds` first so a notice is
/// never lost when the select drops a pending read.
struct Notices {
    stream: UnixStream,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
    reopen_log: fn(u16, OwnedFd),
}

impl Notices {
    /// The next stop notice byte; `LOGS` messages are applied on the way. `None` at EOF or on
    /// an error.
    async fn next(&mut self) -> Option<u8> {
        loop {
            match self.buf.first() {
                Some(&notice::LOGS) if self.buf.len() >= 3 => {
                    let slot = u16::from_be_bytes([self.buf[1], self.buf[2]]);
                    self.buf.drain(..3);
                    if !self.fds.is_empty() {
                        (self.reopen_log)(slot, self.fds.remove(0));
                        log::debug!(target: "nextcloud_push::daemon", "NCP0117: reopened error log {slot} installed");
                    }
                    continue;
                }
                Some(&notice::LOGS) => {}
                Some(&byte) => {
                    self.buf.remove(0);
                    return Some(byte);
                }
                None => {}
            }
            let mut chunk = [0u8; 64];
            let stream = &self.stream;
            let (n, fds) = stream
                .async_io(Interest::READABLE, || sys::recv_with_fds(stream.as_fd(), &mut chunk))
                .await
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
            self.fds.extend(fds);
        }
    }
}

/// The next stop notice byte of the parent's channel; `None` at EOF or on an error. Pending
/// without a channel (the select branch is disabled then).
async fn next_notice(notice: &mut Option<Notices>) -> Option<u8> {
    let Some(notices) = notice.as_mut() else { return std::future::pending().await };
    notices.next().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use nextcloud_push_engine::Overrides;

    /// An engine whose Redis and Nextcloud are unreachable (nothing listens on port 9): logins
    /// fail fast with a connect error, and metrics need neither.
    pub(super) fn engine() -> Arc<Engine> {
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

    pub(super) fn state(engines: Vec<Arc<Engine>>) -> Arc<State> {
        Arc::new(State::new(engines, String::new(), 100_000))
    }
}
