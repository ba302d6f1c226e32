//! Shared fixture for the engine tests: a real redis-server, the Nextcloud double, and an
//! engine serving `accept_http` on a 127.0.0.1 listener.
#![allow(dead_code)]

use futures_util::future::BoxFuture;
use nextcloud_push_engine::{Engine, EngineConfig, Overrides, StorageMapping};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use testkit::nextcloud::NextcloudDouble;
use testkit::redis::RedisServer;
use testkit::ws::WsClient;
use testkit::Skip;

/// Generous bound for frames that must arrive.
pub const FRAME: Duration = Duration::from_secs(5);
/// How long "nothing arrives" is watched.
pub const QUIET: Duration = Duration::from_millis(300);
/// Overall limit of one test (see [`time_limit`]); the slowest tests take about 20 s.
pub const TEST_LIMIT: Duration = Duration::from_secs(60);

/// Runs a test's body within [`TEST_LIMIT`], so a test that waits forever (for a frame that
/// never comes, in a read loop that never sees its end) fails with a message instead of hanging
/// the suite. Every test that waits on the network runs its body through this.
pub async fn time_limit(test: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(TEST_LIMIT, test).await.is_err() {
        panic!(
            "the test did not finish within {TEST_LIMIT:?}: it waits for something that never \
             happens (see the last step it logged)"
        );
    }
}

pub const USERS: &[(&str, &str, &str)] = &[
    ("foo", "bar", "foo"),
    ("foo2", "bar2", "foo2"),
    // logs in with an email address; the canonical uid is `alice`
    ("alice@example.com", "wonderland", "alice"),
];

pub struct Harness {
    pub redis: RedisServer,
    pub nextcloud: NextcloudDouble,
    pub engine: Arc<Engine>,
    pub addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

/// Maps every storage event of storage 10 to user `foo`, storage 11 to `foo2`.
pub struct TestMapping;

impl StorageMapping for TestMapping {
    fn users_for_path<'a>(&'a self, storage: u32, _path: &'a str) -> BoxFuture<'a, Vec<String>> {
        let users = match storage {
            10 => vec!["foo".to_string()],
            11 => vec!["foo2".to_string()],
            _ => vec![],
        };
        Box::pin(async move { users })
    }
}

pub fn overrides(redis: &RedisServer, nextcloud: &NextcloudDouble) -> Overrides {
    Overrides {
        nextcloud_url: Some(nextcloud.base_url()),
        redis_url: Some(redis.url()),
        // like the incumbent's integration tests: every message is sent immediately
        debounce: Some(false),
        ..Overrides::default()
    }
}

impl Harness {
    /// Debounce off, production timing.
    pub async fn start() -> Result<Harness, Skip> {
        Harness::start_with(|_| {}).await
    }

    /// `tweak` adjusts the configuration (timing, debounce, …) before the engine is built.
    pub async fn start_with(tweak: impl FnOnce(&mut EngineConfig)) -> Result<Harness, Skip> {
        let redis = RedisServer::start()?;
        let nextcloud = NextcloudDouble::start(USERS);
        let mut config = EngineConfig::load(None, &overrides(&redis, &nextcloud)).expect("config");
        tweak(&mut config);
        let harness = Harness::serve(redis, nextcloud, config).await;
        assert!(
            harness.redis.wait_for_subscribers("notify_activity", 1, Duration::from_secs(10)).await,
            "the engine did not subscribe"
        );
        Ok(harness)
    }

    /// Builds and starts the engine without waiting for its Redis subscription.
    pub async fn serve(
        redis: RedisServer,
        nextcloud: NextcloudDouble,
        config: EngineConfig,
    ) -> Harness {
        let engine = Engine::new(config).expect("engine");
        engine.set_storage_mapping(Arc::new(TestMapping));
        engine.start();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let accept_engine = engine.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                accept_engine.accept_http(stream, Some(peer.ip()));
            }
        });
        Harness { redis, nextcloud, engine, addr, accept }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn client(&self) -> WsClient {
        WsClient::connect(&self.ws_url()).await
    }

    /// A client logged in as `user`.
    pub async fn login(&self, user: &str, password: &str) -> WsClient {
        let mut client = self.client().await;
        client.login_ok(user, password).await;
        client
    }

    /// Publishes and waits until the engine has received it (events_received went up), so a
    /// following step can rely on the event having been handled.
    pub async fn publish(&self, channel: &str, payload: &str) {
        let before = self.engine.metrics().events_received;
        self.redis.publish(channel, payload);
        let engine = self.engine.clone();
        assert!(
            testkit::wait_until(FRAME, || {
                let engine = engine.clone();
                async move { engine.metrics().events_received > before }
            })
            .await,
            "the engine did not receive {channel} {payload}"
        );
    }

    /// Waits until the engine counts `n` active connections.
    pub async fn wait_connections(&self, n: u64) {
        let engine = self.engine.clone();
        assert!(
            testkit::wait_until(FRAME, || {
                let engine = engine.clone();
                async move { engine.metrics().active_connection_count == n }
            })
            .await,
            "expected {n} active connections, have {}",
            self.engine.metrics().active_connection_count
        );
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
