//! Redis over TLS with a client certificate, configured from config.php `ssl_context`.

mod common;

use common::{Harness, FRAME, USERS};
use nextcloud_push_engine::{EngineConfig, Overrides};
use std::time::Duration;
use testkit::nextcloud::NextcloudDouble;
use testkit::redis::RedisServer;
use testkit::require;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_over_tls_with_client_certificate() {
    common::time_limit(async {
        let redis = require!(RedisServer::start_tls());
        let nextcloud = NextcloudDouble::start(USERS);
        let tls = redis.tls().unwrap().clone();
        let dir = tempfile::tempdir().unwrap();
        let config_php = dir.path().join("config.php");
        std::fs::write(
            &config_php,
            format!(
                "<?php\n$CONFIG = array (\n  'datadirectory' => '/var/www/data',\n  'overwrite.cli.url' => '{}',\n  \
                 'redis' => array ('host' => '127.0.0.1', 'port' => {}, 'ssl_context' => array (\
                 'local_cert' => '{}', 'local_pk' => '{}', 'cafile' => '{}')),\n);\n",
                nextcloud.base_url(),
                tls.port,
                tls.client_cert.display(),
                tls.client_key.display(),
                tls.ca.display()
            ),
        )
        .unwrap();
        let overrides = Overrides { debounce: Some(false), ..Overrides::default() };
        let config = EngineConfig::load(Some(&config_php), &overrides).unwrap();
        assert!(config.redis.url.starts_with("rediss://127.0.0.1:"), "{}", config.redis.url);
        let h = Harness::serve(redis, nextcloud, config).await;
        // the subscription is visible on the plain port
        assert!(
            h.redis.wait_for_subscribers("notify_activity", 1, Duration::from_secs(10)).await,
            "no TLS subscription"
        );
        let mut foo = h.login("foo", "bar").await;
        h.publish("notify_activity", r#"{"user":"foo"}"#).await;
        assert_eq!(foo.next_text(FRAME).await, Ok("notify_activity".into()));

        // metrics are written over TLS too
        h.redis.publish("notify_query", r#""metrics""#);
        let redis = &h.redis;
        assert!(
            testkit::wait_until(FRAME, || async { redis.get("notify_push_metrics").is_some() }).await,
            "notify_push_metrics not written over TLS"
        );
    })
    .await;
}
