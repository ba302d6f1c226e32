//! After wiring: the engine builds the DB mapping from its configuration, share/group events
//! invalidate it so a new share is pushed at once.

mod common;

use common::{overrides, FRAME, USERS};
use nextcloud_push_engine::{Engine, EngineConfig};
use std::time::Duration;
use testkit::db::{Backend, TestDb};
use testkit::nextcloud::NextcloudDouble;
use testkit::redis::RedisServer;
use testkit::require;
use testkit::ws::WsClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_created_makes_new_share_visible_at_once() {
    common::time_limit(async {
        let db = require!(TestDb::create(Backend::Postgres, "nc_").await);
        db.mount("alice", 3, "").await;
        let redis = require!(RedisServer::start());
        let nextcloud = NextcloudDouble::start(USERS);
        let mut ov = overrides(&redis, &nextcloud);
        ov.database_url = Some(db.url().to_string());
        ov.table_prefix = Some("nc_".into());
        let config = EngineConfig::load(None, &ov).expect("config");
        let engine = Engine::new(config).expect("engine");
        engine.start();
        assert!(redis.wait_for_subscribers("notify_activity", 1, Duration::from_secs(10)).await);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept_engine = engine.clone();
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                accept_engine.accept_http(stream, Some(peer.ip()));
            }
        });
        let mut foo2 = WsClient::connect(&format!("ws://{addr}/ws")).await;
        foo2.login_ok("foo2", "bar2").await;

        redis.publish("notify_storage_update", r#"{"storage":3,"path":"files/S/a","file_id":1}"#);
        foo2.assert_no_message(Duration::from_millis(500)).await;

        db.mount("foo2", 3, "files/S").await;
        redis.publish("notify_user_share_created", r#"{"user":"foo2"}"#);
        assert_eq!(foo2.next_text(FRAME).await, Ok("notify_file".into()));
        redis.publish("notify_storage_update", r#"{"storage":3,"path":"files/S/b","file_id":2}"#);
        assert_eq!(foo2.next_text(FRAME).await, Ok("notify_file".into()));
        assert_eq!(engine.metrics().mapping_query_count, 2);
    })
    .await;
}
