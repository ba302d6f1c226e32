//! The database is not needed to start: down at start then up, and down mid-run, for MariaDB and
//! PostgreSQL (through a TCP proxy the test controls) and SQLite (the file appears later).
//! Checks the log lines too: one `NCP1101` warning per outage, `NCP1102` on recovery.

mod common;

use nextcloud_push_engine::db::{DbStorageMapping, MappingOptions};
use nextcloud_push_engine::StorageMapping;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use testkit::db::{Backend, TcpProxy, TestDb};
use testkit::require;

struct Capture(Mutex<Vec<(log::Level, String, String)>>);

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        if record.target().starts_with("nextcloud_push") {
            if let Ok(mut lines) = self.0.lock() {
                lines.push((
                    record.level(),
                    record.target().to_string(),
                    record.args().to_string(),
                ));
            }
        }
    }
    fn flush(&self) {}
}

fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<&'static Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let capture: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        let _ = log::set_logger(capture);
        log::set_max_level(log::LevelFilter::Debug);
        capture
    })
}

/// Log lines with `id` that mention `needle` (the database description, unique per test).
fn lines(id: &str, needle: &str) -> Vec<(log::Level, String, String)> {
    capture()
        .0
        .lock()
        .map(|lines| {
            lines
                .iter()
                .filter(|(_, _, msg)| msg.starts_with(id) && msg.contains(needle))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

fn options() -> MappingOptions {
    MappingOptions {
        acquire_timeout: Duration::from_secs(2),
        retry_backoff: Duration::from_millis(50),
        retry_backoff_max: Duration::from_millis(200),
        ..MappingOptions::default()
    }
}

async fn wait_available(mapping: &DbStorageMapping, available: bool) {
    assert!(
        testkit::wait_until(Duration::from_secs(10), || async {
            mapping.is_available() == available
        })
        .await,
        "database availability did not become {available}"
    );
}

async fn populate(db: &TestDb) {
    db.mount("alice", 1, "").await;
    db.mount("bob", 1, "files/Shared stuff").await;
    db.mount("carol", 2, "").await;
}

fn sorted(mut users: Vec<String>) -> Vec<String> {
    users.sort();
    users
}

async fn down_then_up(backend: Backend) {
    capture();
    let db = require!(TestDb::create(backend, "oc_").await);
    populate(&db).await;
    let proxy = TcpProxy::start(db.server_addr().expect("server address"), false).await;
    let mapping = DbStorageMapping::from_url(&db.url_via(proxy.addr).unwrap(), "oc_", options())
        .expect("mapping");
    let description = mapping.config().describe();
    assert!(description.contains(&proxy.addr.to_string()), "{description}");

    // Down at start: creating the mapping did not fail; the probe notices.
    wait_available(&mapping, false).await;
    let start = Instant::now();
    assert!(mapping.users_for(1, "files/x").await.is_empty());
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "lookups do not wait for a down database"
    );
    assert_eq!(mapping.mapping_root_count(1).await, 0, "0 on DB error");
    assert_eq!(mapping.query_count(), 0, "no query is sent while down");
    tokio::time::sleep(Duration::from_millis(600)).await; // several retries
    let warnings = lines("NCP1101", &description);
    assert_eq!(warnings.len(), 1, "one warning per outage: {warnings:?}");
    assert_eq!(warnings[0].0, log::Level::Warn);
    assert_eq!(warnings[0].1, "nextcloud_push::sql");
    assert!(!warnings[0].2.contains("password"), "{:?}", warnings[0].2);

    // Up: recovers by itself.
    proxy.set_up(true);
    wait_available(&mapping, true).await;
    assert_eq!(sorted(mapping.users_for(1, "files/Shared stuff/a").await), ["alice", "bob"]);
    assert_eq!(mapping.mapping_root_count(1).await, 1);
    assert_eq!(mapping.query_count(), 1);
    assert!(!lines("NCP1102", &description).is_empty(), "recovery is logged");

    // Down mid-run: an invalidated entry falls back to its stale rows, an uncached storage
    // reaches nobody, and the probe reconnects.
    proxy.set_up(false);
    mapping.invalidate_all();
    assert_eq!(
        sorted(mapping.users_for(1, "files/Shared stuff/a").await),
        ["alice", "bob"],
        "stale rows"
    );
    wait_available(&mapping, false).await;
    assert!(mapping.users_for(2, "files").await.is_empty());
    assert_eq!(lines("NCP1101", &description).len(), 2, "a second outage, a second warning");
    proxy.set_up(true);
    wait_available(&mapping, true).await;
    let before = mapping.query_count();
    assert_eq!(mapping.users_for(2, "files").await, ["carol"]);
    assert_eq!(sorted(mapping.users_for(1, "files/Shared stuff/a").await), ["alice", "bob"]);
    assert_eq!(mapping.query_count(), before + 2, "both storages re-queried after the outage");
    mapping.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_down_at_start_then_up() {
    common::time_limit(async {
        down_then_up(Backend::MySql).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_at_start_then_up() {
    common::time_limit(async {
        down_then_up(Backend::Postgres).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_missing_at_start_then_present() {
    common::time_limit(async {
        capture();
        let db = require!(TestDb::create(Backend::Sqlite, "oc_").await);
        populate(&db).await;
        let dir = tempfile::tempdir().unwrap();
        let later = dir.path().join("owncloud.db");
        let mapping =
            DbStorageMapping::from_url(&format!("sqlite://{}", later.display()), "oc_", options())
                .expect("mapping");
        let description = mapping.config().describe();
        wait_available(&mapping, false).await;
        assert!(mapping.users_for(1, "files").await.is_empty());
        assert_eq!(lines("NCP1101", &description).len(), 1);
        assert!(!later.exists(), "Nextcloud's database file is never created by us");

        std::fs::copy(db.sqlite_file().unwrap(), &later).unwrap();
        wait_available(&mapping, true).await;
        assert_eq!(sorted(mapping.users_for(1, "files/Shared stuff").await), ["alice", "bob"]);
        mapping.close().await;
    })
    .await;
}

/// A reachable database with a wrong table prefix is not an outage: it is logged (NCP1103, at
/// most once a minute) and lookups reach nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_prefix_is_a_query_error_not_an_outage() {
    common::time_limit(async {
        capture();
        let db = require!(TestDb::create(Backend::Sqlite, "oc_").await);
        populate(&db).await;
        let mapping: Arc<DbStorageMapping> =
            DbStorageMapping::from_url(db.url(), "wrong_", options()).expect("mapping");
        let description = mapping.config().describe();
        assert!(mapping.users_for(1, "files").await.is_empty());
        assert!(mapping.users_for(2, "files").await.is_empty());
        assert!(mapping.is_available());
        assert!(
            testkit::wait_until(Duration::from_secs(5), || async {
                !lines("NCP1103", &description).is_empty()
            })
            .await,
            "the failing query is logged"
        );
        assert_eq!(lines("NCP1103", &description).len(), 1, "rate-limited");
        assert!(lines("NCP1103", &description)[0].2.contains("wrong_mounts"));
        assert!(lines("NCP1101", &description).is_empty());
        // errors are not cached: each lookup tries again
        assert_eq!(mapping.query_count(), 2);
        assert!(mapping.users_for(1, "files").await.is_empty());
        assert_eq!(mapping.query_count(), 3);
        mapping.close().await;
    })
    .await;
}
