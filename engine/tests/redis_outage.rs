//! Redis may be down at start and may restart: sessions stay open, the listener reconnects.

mod common;

use common::{Harness, FRAME};
use nextcloud_push_engine::EngineConfig;
use std::time::Duration;
use testkit::nextcloud::NextcloudDouble;
use testkit::redis::RedisServer;
use testkit::require;

const RECONNECT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_delivered_after_redis_restart() {
    common::time_limit(async {
        let mut h = require!(Harness::start().await);
        let mut foo = h.login("foo", "bar").await;

        h.redis.stop();
        // the session survives the outage (it keeps answering)
        assert!(foo.sync(FRAME).await.is_empty());
        h.redis.restart();
        assert!(
            h.redis.wait_for_subscribers("notify_activity", 1, RECONNECT).await,
            "no resubscription"
        );
        assert!(foo.sync(FRAME).await.is_empty());

        h.publish("notify_activity", r#"{"user":"foo"}"#).await;
        assert_eq!(foo.next_text(FRAME).await, Ok("notify_activity".into()));
        assert_eq!(h.engine.metrics().active_connection_count, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start() {
    common::time_limit(async {
        let mut redis = require!(RedisServer::start());
        let nextcloud = NextcloudDouble::start(common::USERS);
        let config = EngineConfig::load(None, &common::overrides(&redis, &nextcloud)).unwrap();
        redis.stop();
        let h = Harness::serve(redis, nextcloud, config).await;
        // logins work without Redis
        let mut foo = h.login("foo", "bar").await;
        let mut h = h;
        h.redis.restart();
        assert!(
            h.redis.wait_for_subscribers("notify_activity", 1, RECONNECT).await,
            "no subscription"
        );
        h.publish("notify_notification", r#"{"user":"foo"}"#).await;
        assert_eq!(foo.next_text(FRAME).await, Ok("notify_notification".into()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_a_unix_socket() {
    common::time_limit(async {
        let redis = require!(RedisServer::start());
        let url = format!("unix://{}", redis.socket_path().display());
        let h = serve_via(redis, url, |_| {}).await;
        let mut foo = h.login("foo", "bar").await;
        h.publish("notify_custom", r#"{"user":"foo","message":"over_unix"}"#).await;
        assert_eq!(foo.next_text(FRAME).await, Ok("over_unix".into()));
    })
    .await;
}

/// An engine whose listener reaches `redis` at `url` (not the harness's TCP URL), subscribed.
async fn serve_via(
    redis: RedisServer,
    url: String,
    tweak: impl FnOnce(&mut EngineConfig),
) -> Harness {
    let nextcloud = NextcloudDouble::start(common::USERS);
    let mut overrides = common::overrides(&redis, &nextcloud);
    overrides.redis_url = Some(url);
    let mut config = EngineConfig::load(None, &overrides).unwrap();
    tweak(&mut config);
    let h = Harness::serve(redis, nextcloud, config).await;
    assert!(h.redis.wait_for_subscribers("notify_activity", 1, RECONNECT).await, "no subscription");
    h
}

/// A TCP relay to the test redis-server whose [`Relay::freeze`] turns the connections open at
/// that moment silent (kept open, nothing forwarded either way: a dead link no FIN or RST
/// reports). Connections made afterwards are relayed normally.
struct Relay {
    addr: std::net::SocketAddr,
    freeze: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(upstream: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (freeze, frozen) = tokio::sync::watch::channel(0u64);
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut frozen = frozen.clone();
                let generation = *frozen.borrow_and_update();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let freeze = async {
                        while *frozen.borrow_and_update() <= generation {
                            if frozen.changed().await.is_err() {
                                break;
                            }
                        }
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        // silent from now on, but open until the test ends
                        () = freeze => std::future::pending::<()>().await,
                    }
                });
            }
        });
        Relay { addr, freeze, task }
    }

    fn freeze(&self) {
        self.freeze.send_modify(|g| *g += 1);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The keepalive PING notices a pub/sub connection that went silent without closing (a NAT or
/// firewall dropped it): the listener reconnects and events flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silently_dead_redis_connection_is_replaced() {
    common::time_limit(async {
        let redis = require!(RedisServer::start());
        let relay = Relay::start(([127, 0, 0, 1], redis.port()).into()).await;
        let h = serve_via(redis, format!("redis://{}/", relay.addr), |config| {
            config.timing.redis_ping = Duration::from_millis(300);
            config.timing.redis_backoff = Duration::from_millis(100);
            config.timing.redis_backoff_max = Duration::from_millis(200);
        })
        .await;
        let mut foo = h.login("foo", "bar").await;
        h.publish("notify_custom", r#"{"user":"foo","message":"before"}"#).await;
        assert_eq!(foo.next_text(FRAME).await, Ok("before".into()));

        relay.freeze();
        // The server still counts the silent connection as a subscriber: a second one is the new
        // connection. The unanswered PING times out after 5 s (the listener's fixed PING timeout).
        assert!(
            h.redis.wait_for_subscribers("notify_activity", 2, RECONNECT).await,
            "the listener kept its silent Redis connection: no new subscription"
        );
        h.publish("notify_custom", r#"{"user":"foo","message":"after"}"#).await;
        assert_eq!(foo.next_text(FRAME).await, Ok("after".into()));
        assert!(foo.sync(FRAME).await.is_empty());
    })
    .await;
}
