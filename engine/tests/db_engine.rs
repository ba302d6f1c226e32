//! File change events end to end inside the engine, with the database mapping on each database
//! type: Redis `notify_storage_update` → DbStorageMapping → WebSocket frames.

mod common;

use common::{Harness, FRAME, QUIET};
use nextcloud_push_engine::db::{DbStorageMapping, MappingOptions};
use nextcloud_push_engine::StorageMapping;
use std::time::Duration;
use testkit::db::{Backend, TestDb};
use testkit::require;

async fn file_events(backend: Backend) {
    let db = require!(TestDb::create(backend, "oc_").await);
    // storage 3 is alice's home; foo has a share of alice's `files/Shared`
    db.mount("alice", 3, "").await;
    db.mount("foo", 3, "files/Shared").await;
    let h = require!(Harness::start_with(|config| config.debounce = true).await);
    let mapping = DbStorageMapping::from_url(db.url(), &db.prefix, MappingOptions::default())
        .expect("mapping");
    h.engine.set_storage_mapping(mapping.clone());

    let mut alice = h.login("alice@example.com", "wonderland").await;
    alice.send_text("listen notify_file_id").await;
    let mut sharee = h.login("foo", "bar").await;
    let mut foo2 = h.login("foo2", "bar2").await;
    for client in [&mut alice, &mut sharee, &mut foo2] {
        assert!(client.sync(FRAME).await.is_empty());
    }

    // One upload: the file, then its ancestors, published back to back (spec §2.4).
    for (path, id) in [("files/Shared/a.txt", 11), ("files/Shared", 20), ("files", 10), ("", 1)] {
        h.redis.publish(
            "notify_storage_update",
            &format!(r#"{{"storage":3,"path":"{path}","file_id":{id}}}"#),
        );
    }
    assert_eq!(
        alice.next_text(FRAME).await,
        Ok("notify_file_id [11,20,10,1]".into()),
        "merged, in order"
    );
    // foo's mount root `files/Shared` is a prefix of the first two paths only; no listen → plain
    assert_eq!(sharee.next_text(FRAME).await, Ok("notify_file".into()));
    foo2.assert_no_message(QUIET).await;
    alice.assert_no_message(QUIET).await;
    assert_eq!(mapping.query_count(), 1, "one query for the whole burst");
    assert_eq!(h.engine.metrics().mapping_query_count, 1);
    assert_eq!(mapping.mapping_root_count(3).await, 1);

    // A new share for foo2: visible right after the access-change hook (what the engine's
    // share/group handlers call once wired), not 4-5 minutes later.
    db.mount("foo2", 3, "files/Shared").await;
    mapping.user_access_changed("foo2");
    tokio::time::sleep(Duration::from_millis(1100)).await; // past alice's debounce window
    h.redis.publish(
        "notify_storage_update",
        r#"{"storage":3,"path":"files/Shared/b.txt","file_id":12}"#,
    );
    assert_eq!(foo2.next_text(FRAME).await, Ok("notify_file".into()));
    assert_eq!(alice.next_text(Duration::from_secs(5)).await, Ok("notify_file_id [12]".into()));
    mapping.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_file_events() {
    common::time_limit(async {
        file_events(Backend::MySql).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_file_events() {
    common::time_limit(async {
        file_events(Backend::Postgres).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_events() {
    common::time_limit(async {
        file_events(Backend::Sqlite).await;
    })
    .await;
}

/// A database that accepts TCP connections and never answers (the worst kind of outage): user
/// events keep flowing, storage lookups give up after `acquire_timeout` and the mapping is then
/// marked down, so later storage updates do not wait at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_events_flow_while_the_database_hangs() {
    common::time_limit(async {
        let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = blackhole.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = blackhole.accept().await {
                held.push(socket);
            }
        });
        let h = require!(Harness::start().await);
        let options =
            MappingOptions { acquire_timeout: Duration::from_secs(1), ..MappingOptions::default() };
        let mapping = DbStorageMapping::from_url(
            &format!("mysql://nc:secret@{addr}/nextcloud"),
            "oc_",
            options,
        )
        .expect("mapping");
        h.engine.set_storage_mapping(mapping.clone());
        let mut client = h.login("foo", "bar").await;

        h.publish("notify_storage_update", r#"{"storage":3,"path":"files/a","file_id":5}"#).await;
        let start = std::time::Instant::now();
        h.publish("notify_activity", r#"{"user":"foo"}"#).await;
        assert_eq!(client.next_text(FRAME).await, Ok("notify_activity".into()));
        assert!(
            start.elapsed() < Duration::from_millis(900),
            "user events do not wait for the database"
        );

        assert!(
            testkit::wait_until(Duration::from_secs(5), || async { !mapping.is_available() }).await,
            "the hanging database is detected"
        );
        let start = std::time::Instant::now();
        assert!(mapping.users_for(3, "files").await.is_empty());
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "lookups no longer wait once it is known down"
        );
        client.assert_no_message(QUIET).await;
        hold.abort();
    })
    .await;
}
