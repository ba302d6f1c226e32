//! Redis events → frames (spec §1.4, §2.2), with debounce off like the incumbent's tests.

mod common;

use common::{Harness, FRAME, QUIET};
use std::time::Duration;
use testkit::require;
use testkit::ws::WsEnd;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribes_to_exactly_the_eleven_channels() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let engine = h.engine.clone();
        let redis = &h.redis;
        // every channel subscribed, nothing else
        let mut expected: Vec<String> =
            nextcloud_push_engine::CHANNELS.iter().map(|c| c.to_string()).collect();
        expected.sort();
        assert_eq!(expected.len(), 11);
        assert_eq!(redis.channels(), expected);
        drop(engine);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_events_reach_only_their_user() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let mut foo = h.login("foo", "bar").await;
        let mut foo2 = h.login("foo2", "bar2").await;

        for (channel, payload, frame) in [
            ("notify_activity", r#"{"user":"foo"}"#, "notify_activity"),
            ("notify_notification", r#"{"user":"foo"}"#, "notify_notification"),
            ("notify_user_share_created", r#"{"user":"foo"}"#, "notify_file"),
            ("notify_group_membership_update", r#"{"user":"foo","group":"staff"}"#, "notify_file"),
            (
                "notify_custom",
                r#"{"user":"foo","message":"my_custom_message"}"#,
                "my_custom_message",
            ),
            (
                "notify_custom",
                r#"{"user":"foo","message":"my_custom_message","body":[1,2,3]}"#,
                "my_custom_message [1,2,3]",
            ),
            (
                "notify_custom",
                r#"{"user":"foo","message":"my_msg","body":{"a":[1, 2],"b":"x y"}}"#,
                r#"my_msg {"a":[1,2],"b":"x y"}"#,
            ),
            (
                "notify_custom",
                r#"{"user":"foo","message":"strbody","body":"hello"}"#,
                r#"strbody "hello""#,
            ),
            ("notify_custom", r#"{"user":"foo","message":"nullbody","body":null}"#, "nullbody"),
            ("notify_activity", r#"{"user":"foo","extra":1}"#, "notify_activity"),
        ] {
            h.publish(channel, payload).await;
            assert_eq!(foo.next_text(FRAME).await, Ok(frame.to_string()), "{channel} {payload}");
        }
        foo2.assert_no_message(QUIET).await;

        h.publish("notify_activity", r#"{"user":"someone_else"}"#).await;
        foo.assert_no_message(QUIET).await;

        let metrics = h.engine.metrics();
        assert_eq!(metrics.messages_sent, 10);
        assert_eq!(metrics.messages_sent_custom, 5);
        assert_eq!(metrics.messages_sent_file, 2);
        assert_eq!(metrics.messages_sent_activity, 2);
        assert_eq!(metrics.messages_sent_notification, 1);
        assert_eq!(metrics.events_received, 11);
        assert_eq!(metrics.active_connection_count, 2);
        assert_eq!(metrics.active_user_count, 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_of_a_user_gets_the_event() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let mut a = h.login("foo", "bar").await;
        let mut b = h.login("foo", "bar").await;
        h.publish("notify_notification", r#"{"user":"foo"}"#).await;
        assert_eq!(a.next_text(FRAME).await, Ok("notify_notification".into()));
        assert_eq!(b.next_text(FRAME).await, Ok("notify_notification".into()));
        assert_eq!(h.engine.metrics().active_user_count, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_file_id_is_an_exact_match_opt_in() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let mut opted = h.login("foo", "bar").await;
        let mut trailing_space = h.login("foo", "bar").await;
        let mut upper = h.login("foo", "bar").await;
        let mut other = h.login("foo", "bar").await;
        opted.send_text("listen notify_file_id").await;
        trailing_space.send_text("listen notify_file_id ").await;
        upper.send_text("LISTEN notify_file_id").await;
        other.send_text("listen notify_file").await;
        for client in [&mut opted, &mut trailing_space, &mut upper, &mut other] {
            assert!(client.sync(FRAME).await.is_empty());
        }
        h.publish("notify_storage_update", r#"{"storage":10,"path":"files/a","file_id":5}"#).await;
        assert_eq!(opted.next_text(FRAME).await, Ok("notify_file_id [5]".into()));
        for client in [&mut trailing_space, &mut upper, &mut other] {
            assert_eq!(client.next_text(FRAME).await, Ok("notify_file".into()));
        }
        // unknown ids → plain notify_file even for opted-in connections
        h.publish("notify_user_share_created", r#"{"user":"foo"}"#).await;
        assert_eq!(opted.next_text(FRAME).await, Ok("notify_file".into()));
        // another storage → another user
        h.publish("notify_storage_update", r#"{"storage":11,"path":"files/a","file_id":6}"#).await;
        opted.assert_no_message(QUIET).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_and_unknown_texts_are_ignored() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let mut foo = h.login("foo", "bar").await;
        foo.send(tokio_tungstenite::tungstenite::Message::Binary(vec![1, 2, 3].into())).await;
        foo.send_text("hello").await;
        assert!(foo.sync(FRAME).await.is_empty());
        h.publish("notify_activity", r#"{"user":"foo"}"#).await;
        assert_eq!(foo.next_text(FRAME).await, Ok("notify_activity".into()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_payloads_are_dropped_without_side_effects() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let mut foo = h.login("foo", "bar").await;
        let bad = [
            ("notify_activity", "{not json"),
            ("notify_activity", r#"{"user":1}"#),
            ("notify_notification", r#""foo""#),
            ("notify_custom", r#"{"user":"foo"}"#),
            ("notify_storage_update", r#"{"storage":"1","path":"","file_id":1}"#),
            ("notify_pre_auth", r#"{"user":"foo"}"#),
            ("notify_test_cookie", r#""1""#),
            ("notify_signal", "reset"),
            ("notify_query", "{}"),
            ("notify_config", "[]"),
            ("notify_user_share_created", "\u{00ff}"),
        ];
        for (channel, payload) in bad {
            h.publish(channel, payload).await;
        }
        foo.assert_no_message(QUIET).await;
        assert_eq!(h.engine.metrics().events_received, bad.len() as u64);
        assert_eq!(h.engine.test_cookie(), 0);
        // the listener and the session are unaffected
        h.publish("notify_activity", r#"{"user":"foo"}"#).await;
        assert_eq!(foo.next_text(FRAME).await, Ok("notify_activity".into()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_cookie_config_and_metrics_query() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let _foo = h.login("foo", "bar").await;
        h.publish("notify_test_cookie", "29344007").await;
        // Counted as received before it is applied: wait until it was handled.
        h.engine.sync_events().await.expect("sync");
        assert_eq!(h.engine.test_cookie(), 29344007);
        h.publish("notify_config", r#"{"log_spec":"notify_push=debug"}"#).await;
        h.publish("notify_config", r#""log_restore""#).await;

        h.redis.del("notify_push_metrics");
        h.redis.publish("notify_query", r#""metrics""#);
        let redis = &h.redis;
        let deadline = std::time::Instant::now() + FRAME;
        let json = loop {
            if let Some(json) = redis.get("notify_push_metrics") {
                break json;
            }
            assert!(std::time::Instant::now() < deadline, "notify_push_metrics was not written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let keys: Vec<&str> = value.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = vec![
            "active_connection_count",
            "active_user_count",
            "total_connection_count",
            "mapping_query_count",
            "events_received",
            "messages_sent",
            "messages_sent_file",
            "messages_sent_activity",
            "messages_sent_notification",
            "messages_sent_custom",
        ];
        let mut keys_sorted = keys.clone();
        keys_sorted.sort();
        expected.sort();
        assert_eq!(keys_sorted, expected);
        assert_eq!(value["active_connection_count"], 1);
        assert_eq!(value["events_received"], 4);
    })
    .await;
}

/// Several Apache servers share one Redis: a labelled engine names itself in the metrics JSON
/// and also writes its own, expiring `notify_push_metrics:<label>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labelled_engine_also_writes_its_own_expiring_metrics_key() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let label = "web1/cloud.example.com:443";
        h.engine.set_server_label(label);
        h.engine.set_server_label("web2/ignored:443");
        assert_eq!(h.engine.server_label(), Some(label), "the first label stays");
        let _foo = h.login("foo", "bar").await;
        h.wait_connections(1).await;

        h.redis.publish("notify_query", r#""metrics""#);
        let key = format!("notify_push_metrics:{label}");
        let redis = &h.redis;
        assert!(testkit::wait_until(FRAME, || async { redis.get(&key).is_some() }).await, "{key}");
        let own = redis.get(&key).unwrap();
        assert_eq!(redis.get("notify_push_metrics"), Some(own.clone()), "the same answer");
        let value: serde_json::Value = serde_json::from_str(&own).unwrap();
        assert_eq!(value["server"], label);
        assert_eq!(value["active_connection_count"], 1);
        assert!((1..=300).contains(&redis.ttl(&key)), "{key} expires");
        assert_eq!(redis.ttl("notify_push_metrics"), -1, "occ's key as notify_push writes it");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_signal_closes_every_session_with_1001() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let mut foo = h.login("foo", "bar").await;
        let mut foo2 = h.login("foo2", "bar2").await;
        h.publish("notify_signal", r#""reset""#).await;
        assert_eq!(foo.next_text(FRAME).await, Err(WsEnd::Closed(Some((1001, String::new())))));
        assert_eq!(foo2.next_text(FRAME).await, Err(WsEnd::Closed(Some((1001, String::new())))));
        h.wait_connections(0).await;
        // new sessions work after a reset
        let mut again = h.login("foo", "bar").await;
        h.publish("notify_activity", r#"{"user":"foo"}"#).await;
        assert_eq!(again.next_text(FRAME).await, Ok("notify_activity".into()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_going_away() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let mut foo = h.login("foo", "bar").await;
        let mut pending = h.client().await; // not logged in yet
        pending.send_text("foo").await;
        let started = std::time::Instant::now();
        h.engine.shutdown().await;
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(foo.next_text(FRAME).await, Err(WsEnd::Closed(Some((1001, String::new())))));
        assert_eq!(pending.next_text(FRAME).await, Err(WsEnd::Closed(Some((1001, String::new())))));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_is_65_per_user() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let mut clients = Vec::new();
        for _ in 0..65 {
            clients.push(h.login("foo", "bar").await);
        }
        h.wait_connections(65).await;
        let mut extra = h.client().await;
        extra.login("foo", "bar").await;
        let (texts, end) = extra.next_end(FRAME).await;
        assert_eq!(
            texts,
            vec![
                "authenticated",
                "Error while handling authentication: Connection limit exceeded for user"
            ]
        );
        assert!(matches!(end, WsEnd::Closed(Some((1008, _)))), "{end:?}");
        // another user is not affected
        let _foo2 = h.login("foo2", "bar2").await;
        h.wait_connections(66).await;
        // a slot frees up when one closes
        clients.pop().unwrap().close().await;
        h.wait_connections(65).await;
        let _again = h.login("foo", "bar").await;
        assert_eq!(h.engine.metrics().total_connection_count, 67);
    })
    .await;
}

/// Storage 20 + n → user `foo`, each lookup taking `delays[n]`.
struct SlowMapping {
    delays: Vec<Duration>,
}

impl nextcloud_push_engine::StorageMapping for SlowMapping {
    fn users_for_path<'a>(
        &'a self,
        storage: u32,
        _path: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Vec<String>> {
        let delay = storage
            .checked_sub(20)
            .and_then(|n| self.delays.get(n as usize))
            .copied()
            .unwrap_or_default();
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            vec!["foo".to_string()]
        })
    }
}

/// Lookups run concurrently, but their results are delivered in publication order: the ids of
/// one upload (file, then its ancestors) keep their order even when a later lookup finishes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_updates_are_delivered_in_publication_order() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let delays = [400, 0, 200, 50].map(Duration::from_millis);
        h.engine.set_storage_mapping(std::sync::Arc::new(SlowMapping { delays: delays.to_vec() }));
        let mut foo = h.login("foo", "bar").await;
        foo.send_text("listen notify_file_id").await;
        foo.sync(FRAME).await;
        for (n, id) in [101, 102, 103, 104].into_iter().enumerate() {
            h.redis.publish(
                "notify_storage_update",
                &format!(r#"{{"storage":{},"path":"files/x","file_id":{id}}}"#, 20 + n),
            );
        }
        let mut received = Vec::new();
        for _ in 0..4 {
            received.push(foo.next_text(FRAME).await);
        }
        let expected: Vec<_> =
            [101, 102, 103, 104].map(|id| Ok(format!("notify_file_id [{id}]"))).to_vec();
        assert_eq!(received, expected, "storage updates out of publication order");
    })
    .await;
}
