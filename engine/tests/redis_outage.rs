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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start() {
    let mut redis = require!(RedisServer::start());
    let nextcloud = NextcloudDouble::start(common::USERS);
    let config = EngineConfig::load(None, &common::overrides(&redis, &nextcloud)).unwrap();
    redis.stop();
    let h = Harness::serve(redis, nextcloud, config).await;
    // logins work without Redis
    let mut foo = h.login("foo", "bar").await;
    let mut h = h;
    h.redis.restart();
    assert!(h.redis.wait_for_subscribers("notify_activity", 1, RECONNECT).await, "no subscription");
    h.publish("notify_notification", r#"{"user":"foo"}"#).await;
    assert_eq!(foo.next_text(FRAME).await, Ok("notify_notification".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_a_unix_socket() {
    let redis = require!(RedisServer::start());
    let nextcloud = NextcloudDouble::start(common::USERS);
    let mut overrides = common::overrides(&redis, &nextcloud);
    overrides.redis_url = Some(format!("unix://{}", redis.socket_path().display()));
    let config = EngineConfig::load(None, &overrides).unwrap();
    let h = Harness::serve(redis, nextcloud, config).await;
    assert!(h.redis.wait_for_subscribers("notify_activity", 1, RECONNECT).await, "no subscription");
    let mut foo = h.login("foo", "bar").await;
    h.publish("notify_custom", r#"{"user":"foo","message":"over_unix"}"#).await;
    assert_eq!(foo.next_text(FRAME).await, Ok("over_unix".into()));
}
