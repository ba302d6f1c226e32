#![forbid(unsafe_code)]
//! The push engine of mod_nextcloud_push: everything Nextcloud, nothing httpd.
//!
//! config.php parsing and overrides ([`EngineConfig`]), WebSocket sessions with the notify_push
//! wire protocol (login, fan-out, debounce, keepalive), the Redis event listener and the
//! metrics. It never references httpd symbols and is tested as plain Rust. The contract with the
//! Apache glue is `docs/internals.md`; the wire behaviour is the notify_push specification.
//!
//! The WebSocket upgrade rules (routes, RFC 6455 checks, refusals, the 101's headers) are in
//! [`upgrade`], shared by the Apache handler and [`Engine::accept_http`].
//!
//! Log targets: `nextcloud_push::ws`, `nextcloud_push::redis`, `nextcloud_push::auth`,
//! `nextcloud_push::selftest`, `nextcloud_push::sql`. Message ids: see [`log_ids`].

mod config;
pub mod db;
pub mod error;
mod event;
mod handshake;
pub mod health;
mod ip;
pub mod log_ids;
pub mod log_scope;
mod message;
mod metrics;
mod nextcloud;
pub mod php_config;
mod redis_conn;
mod redis_listener;
mod registry;
mod selftest;
mod session;
mod storage;
mod text;
pub mod tls;
pub mod upgrade;
mod user;
pub mod vouch;

pub use config::{EngineConfig, Overrides, RedisConfig, RedisTls, Timing};
pub use error::{ConfigError, Error};
pub use event::CHANNELS;
pub use ip::client_ip_chain;
pub use message::{debounce_time, PushMessage, SendQueue, UpdatedFiles};
pub use metrics::{server_metrics_key, Metrics, METRICS_KEY, SERVER_METRICS_TTL};
pub use nextcloud::NextcloudRoute;
pub use selftest::TestResponse;
pub use storage::{NoStorageMapping, StorageMapping};

use futures_util::FutureExt;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// What the Apache side hands over with an upgraded connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Handoff {
    /// Bytes the client sent after the request head (already read by Apache); consumed before
    /// anything read from the stream.
    pub early_data: Vec<u8>,
    /// The client IP chain (see [`client_ip_chain`]), forwarded to Nextcloud at login.
    pub forwarded_for: Vec<IpAddr>,
    /// This session's keepalive ping interval, when it must be shorter than
    /// `timing.ping_interval` (a TLS session bridged by an Apache worker is cut after Apache's
    /// `Timeout` of silence). `None`: `timing.ping_interval`; a longer value is ignored.
    pub ping_interval: Option<std::time::Duration>,
    /// The session is carried by an Apache worker (the TLS bridge) and ends when that worker
    /// does: [`Engine::close_bridged`] closes it (1001) before a hard restart stops the workers.
    pub bridged: bool,
}

/// Engine-wide signals to every session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    /// `notify_signal "reset"`: Close frame with empty payload to every authenticated session.
    Reset,
    /// [`Engine::shutdown`]: Close 1001 to every session.
    Shutdown,
    /// [`Engine::close_bridged`]: Close 1001 to every bridged session; the others ignore it.
    CloseBridged,
}

/// One engine per distinct configuration. Create it inside a tokio runtime with [`Engine::new`],
/// start the Redis listener with [`Engine::start`], then feed it connections.
pub struct Engine {
    config: EngineConfig,
    runtime: tokio::runtime::Handle,
    nextcloud: nextcloud::NextcloudClient,
    redis: redis_conn::RedisConn,
    registry: registry::Registry,
    counters: Arc<metrics::Counters>,
    /// token → (uid, received)
    pre_auth: Mutex<HashMap<String, (String, Instant)>>,
    test_cookie: AtomicU32,
    /// Woken whenever a `notify_test_cookie` arrives (`/test/cookie` in a cluster waits on it).
    test_cookie_arrived: tokio::sync::Notify,
    signals: broadcast::Sender<Signal>,
    /// Number of live sessions (authenticated or not), for a bounded shutdown.
    sessions: watch::Sender<usize>,
    /// Number of live bridged sessions ([`Handoff::bridged`]), for [`Engine::close_bridged`].
    bridged: watch::Sender<usize>,
    shutting_down: AtomicBool,
    started: AtomicBool,
    cancel: CancellationToken,
    storage_mapping: RwLock<Arc<dyn StorageMapping>>,
    /// Storage updates go through one ordered, bounded-concurrency pipeline (see
    /// `redis_listener::storage_pipeline`), taken by [`Engine::start`].
    storage_updates: tokio::sync::mpsc::Sender<redis_listener::StorageUpdate>,
    storage_updates_rx: Mutex<Option<tokio::sync::mpsc::Receiver<redis_listener::StorageUpdate>>>,
    /// Self-test support: pub/sub round trips, runtime log level (engine/src/selftest.rs).
    selftest: selftest::State,
    /// The pub/sub connection's state, for `server-status`.
    redis_link: health::Link,
    /// The instance number its log records carry ([`log_scope`]), if any.
    instance: Option<usize>,
    /// The Apache server it runs in, for the metrics written to Redis (metrics.rs).
    server_label: std::sync::OnceLock<String>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Engine {
    /// Builds an engine. Must be called inside a tokio runtime (the engine spawns its tasks on
    /// it, also when `accept_*` is called from a thread outside the runtime).
    pub fn new(config: EngineConfig) -> Result<Arc<Engine>, Error> {
        Engine::with_route(config, NextcloudRoute::default())
    }

    /// [`Engine::new`] with the way to reach Nextcloud: through the vhost's own address and with
    /// the client-IP vouching key (the daemon passes both; see [`vouch`]).
    pub fn with_route(config: EngineConfig, route: NextcloudRoute) -> Result<Arc<Engine>, Error> {
        Engine::build(config, route, None)
    }

    /// [`Engine::with_route`] for instance `instance` of a process that serves several: every
    /// log record the engine emits, from its constructor and from every task it spawns, says so
    /// through [`log_scope::instance`].
    pub fn for_instance(
        config: EngineConfig,
        route: NextcloudRoute,
        instance: usize,
    ) -> Result<Arc<Engine>, Error> {
        Engine::build(config, route, Some(instance))
    }

    fn build(
        config: EngineConfig,
        route: NextcloudRoute,
        instance: Option<usize>,
    ) -> Result<Arc<Engine>, Error> {
        log_scope::sync_scoped(instance, || Engine::build_scoped(config, route, instance))
    }

    fn build_scoped(
        config: EngineConfig,
        route: NextcloudRoute,
        instance: Option<usize>,
    ) -> Result<Arc<Engine>, Error> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let nextcloud = nextcloud::NextcloudClient::with_route(
            &config.nextcloud_url,
            config.allow_self_signed,
            &route,
        )
        .map_err(Error::HttpClient)?;
        let redis = redis_conn::RedisConn::new(&config.redis)?;
        let counters = Arc::new(metrics::Counters::default());
        // The database is optional at start: the pool connects lazily and retries (db module).
        let storage_mapping: Arc<dyn StorageMapping> = match &config.database_url {
            Some(url) => db::DbStorageMapping::from_url(
                url,
                &config.table_prefix,
                db::MappingOptions::default(),
            )
            .map_err(Error::Database)?,
            None => Arc::new(NoStorageMapping),
        };
        let (storage_updates, storage_updates_rx) =
            tokio::sync::mpsc::channel(redis_listener::STORAGE_QUEUE);
        Ok(Arc::new(Engine {
            storage_updates,
            storage_updates_rx: Mutex::new(Some(storage_updates_rx)),
            registry: registry::Registry::new(counters.clone()),
            counters,
            config,
            runtime,
            nextcloud,
            redis,
            pre_auth: Mutex::new(HashMap::new()),
            test_cookie: AtomicU32::new(0),
            test_cookie_arrived: tokio::sync::Notify::new(),
            signals: broadcast::channel(16).0,
            sessions: watch::channel(0).0,
            bridged: watch::channel(0).0,
            shutting_down: AtomicBool::new(false),
            started: AtomicBool::new(false),
            cancel: CancellationToken::new(),
            storage_mapping: RwLock::new(storage_mapping),
            selftest: selftest::State::default(),
            redis_link: health::Link::default(),
            instance,
            server_label: std::sync::OnceLock::new(),
        }))
    }

    /// Starts the Redis listener (reconnects forever, until [`Engine::shutdown`]). Idempotent.
    pub fn start(self: &Arc<Self>) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let engine = self.clone();
        self.spawn(redis_listener::listen_loop(engine, self.cancel.clone()));
        if let Some(updates) = self.storage_updates_rx.lock().ok().and_then(|mut rx| rx.take()) {
            self.spawn(redis_listener::storage_pipeline(
                self.clone(),
                updates,
                self.cancel.clone(),
            ));
        }
    }

    /// Serves a connection Apache already upgraded (the 101 was sent). `handoff.early_data` are
    /// bytes the client sent after the request head; they are consumed before the stream.
    pub fn accept_upgraded<S>(self: &Arc<Self>, stream: S, handoff: Handoff)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if handoff.bridged {
            self.bridged.send_modify(|n| *n += 1);
            let counted = BridgedGuard(self.clone());
            self.spawn_session(|engine| {
                session::serve_upgraded(engine, stream, handoff).map(move |()| drop(counted))
            });
        } else {
            self.spawn_session(|engine| session::serve_upgraded(engine, stream, handoff));
        }
    }

    /// Does the HTTP/1.1 WebSocket upgrade itself, then serves the session (engine tests,
    /// benchmarks). `/ws` and `/push/ws` (with or without a trailing slash) are upgraded with the
    /// rules and answers of [`upgrade`], as the Apache handler does; any other path gets 404 with
    /// an empty body. The client IP chain is built from `X-Forwarded-For` / `X-Real-IP` /
    /// `Forwarded` with [`client_ip_chain`] and `peer` appended.
    pub fn accept_http<S>(self: &Arc<Self>, stream: S, peer: Option<IpAddr>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.spawn_session(|engine| session::serve_http(engine, stream, peer));
    }

    /// Runs one session on the engine's runtime, counted for a bounded shutdown; refused once
    /// the engine is shutting down.
    fn spawn_session<F>(self: &Arc<Self>, session: impl FnOnce(Arc<Engine>) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if self.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        let guard = self.session_guard();
        // `map`, not an async block that awaits the session: that would keep the session's
        // future twice in the task (the captured one and the awaited one), and the task keeps
        // its size for the session's whole life.
        let session = session(self.clone()).map(move |()| drop(guard));
        self.spawn(session);
    }

    /// Spawns `task` on the engine's runtime inside the engine's [`log_scope`].
    pub(crate) fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(log_scope::scoped(self.instance, task));
    }

    /// Sends Close 1001 to every session and stops the Redis listener. Returns when every
    /// session has ended or after `timing.shutdown_grace`, whichever comes first.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.close_nextcloud_connections();
        self.cancel.cancel();
        let _ = self.signals.send(Signal::Shutdown);
        let mut sessions = self.sessions.subscribe();
        let done =
            tokio::time::timeout(self.config.timing.shutdown_grace, sessions.wait_for(|n| *n == 0))
                .await;
        if done.is_err() {
            log::warn!(
                target: "nextcloud_push::ws",
                "NCP1030: shutdown grace of {:?} passed with {} sessions still open",
                self.config.timing.shutdown_grace,
                *self.sessions.borrow()
            );
        }
    }

    /// Redis and the database: up or down, since when, the last error (for `server-status`).
    pub fn health(&self) -> health::Health {
        let database = self.storage_mapping.read().ok().and_then(|m| m.link());
        health::Health { redis: self.redis_link.state(), database }
    }

    /// Closes the idle keep-alive connections to Nextcloud now; later calls to Nextcloud fail
    /// (no session logs in once the engine stops). [`Engine::shutdown`] starts with this; the
    /// daemon calls it first when Apache stops, so the connections end while Apache's children
    /// still run normally.
    pub fn close_nextcloud_connections(&self) {
        self.nextcloud.close();
    }

    /// Sends Close 1001 to every bridged session ([`Handoff::bridged`]: their Apache workers are
    /// about to be stopped by a hard restart) and returns when none is left or after
    /// `timing.shutdown_grace`. The other sessions go on.
    pub async fn close_bridged(&self) {
        if *self.bridged.borrow() == 0 {
            return;
        }
        let _ = self.signals.send(Signal::CloseBridged);
        let mut bridged = self.bridged.subscribe();
        let _ =
            tokio::time::timeout(self.config.timing.shutdown_grace, bridged.wait_for(|n| *n == 0))
                .await;
    }

    /// A snapshot of this engine's counters (spec §7).
    pub fn metrics(&self) -> Metrics {
        let mut metrics = self.counters.snapshot();
        metrics.mapping_query_count =
            self.storage_mapping.read().map(|m| m.query_count()).unwrap_or(0);
        metrics
    }

    /// The latest `notify_test_cookie` value (0 before the first one), for `/test/cookie`.
    pub fn test_cookie(&self) -> u32 {
        self.test_cookie.load(Ordering::SeqCst)
    }

    /// The configuration this engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Replaces the storage → users mapping used for `notify_storage_update`.
    pub fn set_storage_mapping(&self, mapping: Arc<dyn StorageMapping>) {
        if let Ok(mut slot) = self.storage_mapping.write() {
            *slot = mapping;
        }
    }

    /// Delivers a message to every connection of `uid` (what a Redis user event does).
    pub fn send_to_user(&self, uid: &str, message: PushMessage) {
        self.registry.send(uid, message);
    }

    fn session_guard(self: &Arc<Self>) -> SessionGuard {
        self.sessions.send_modify(|n| *n += 1);
        SessionGuard(self.clone())
    }

    pub(crate) fn storage_mapping(&self) -> Arc<dyn StorageMapping> {
        match self.storage_mapping.read() {
            Ok(mapping) => mapping.clone(),
            Err(_) => Arc::new(NoStorageMapping),
        }
    }

    pub(crate) fn add_pre_auth(&self, token: String, uid: String) {
        let ttl = self.config.timing.pre_auth_ttl;
        if let Ok(mut tokens) = self.pre_auth.lock() {
            // purged here too, so tokens that are never used do not pile up
            tokens.retain(|_, (_, received)| received.elapsed() < ttl);
            tokens.insert(token, (uid, Instant::now()));
        }
    }

    /// Purges expired tokens, then takes (single use) the token's uid if it is stored.
    pub(crate) fn take_pre_auth(&self, token: &str) -> Option<String> {
        let ttl = self.config.timing.pre_auth_ttl;
        let mut tokens = self.pre_auth.lock().ok()?;
        tokens.retain(|_, (_, received)| received.elapsed() < ttl);
        tokens.remove(token).map(|(uid, _)| uid)
    }
}

struct SessionGuard(Arc<Engine>);

struct BridgedGuard(Arc<Engine>);

impl Drop for BridgedGuard {
    fn drop(&mut self) {
        self.0.bridged.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.sessions.send_modify(|n| *n = n.saturating_sub(1));
    }
}
