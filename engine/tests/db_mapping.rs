//! The database storage mapping against real databases: MariaDB/MySQL and PostgreSQL on this
//! machine (a uniquely named database per test, dropped afterwards) and an SQLite file.
//! Unreachable servers skip (fail under `CI=true`).

mod common;

use nextcloud_push_engine::db::{DbStorageMapping, MappingOptions};
use nextcloud_push_engine::StorageMapping;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::db::{median, Backend, TestDb};
use testkit::require;

fn sorted(mut users: Vec<String>) -> Vec<String> {
    users.sort();
    users
}

fn strings(users: &[&str]) -> Vec<String> {
    users.iter().map(|u| u.to_string()).collect()
}

/// Storage 1: alice's home (root ''), plus shares out of it: bob gets `files/Shared stuff`,
/// carol `files/a`, dave `files/ab`. Storage 2: group folder `__groupfolders/3` mounted by
/// three users. Storage 99: no mounts.
async fn populate(db: &TestDb) {
    db.mount("alice", 1, "").await;
    db.add_file(1, "files").await;
    db.add_file(1, "files/Documents").await;
    db.mount("bob", 1, "files/Shared stuff").await;
    db.mount("carol", 1, "files/a").await;
    db.mount("dave", 1, "files/ab").await;
    let group_root = db.add_file(2, "__groupfolders/3").await;
    for user in ["gf1", "gf2", "gf3"] {
        db.add_mount_row(user, 2, group_root, "/x/files/Team").await;
    }
    // another storage's rows must never leak in
    db.mount("zed", 5, "").await;
}

fn mapping(db: &TestDb, options: MappingOptions) -> Arc<DbStorageMapping> {
    DbStorageMapping::from_url(db.url(), &db.prefix, options).expect("mapping")
}

async fn scenarios(backend: Backend, prefix: &str) {
    let db = require!(TestDb::create(backend, prefix).await);
    populate(&db).await;
    let mapping = mapping(&db, MappingOptions::default());
    assert_eq!(mapping.query_count(), 0);

    // home storage
    assert_eq!(mapping.users_for(1, "files/Documents/a.txt").await, strings(&["alice"]));
    assert_eq!(mapping.query_count(), 1, "first lookup of storage 1 is a miss");
    // a user share into alice's folder
    assert_eq!(
        sorted(mapping.users_for(1, "files/Shared stuff/x.txt").await),
        strings(&["alice", "bob"])
    );
    assert_eq!(
        sorted(mapping.users_for(1, "files/Shared stuff").await),
        strings(&["alice", "bob"])
    );
    assert_eq!(mapping.users_for(1, "files/Shared").await, strings(&["alice"]));
    // plain string prefix: files/a also matches files/ab/…, files/ab does not match files/a…
    assert_eq!(
        sorted(mapping.users_for(1, "files/ab/x").await),
        strings(&["alice", "carol", "dave"])
    );
    assert_eq!(sorted(mapping.users_for(1, "files/a").await), strings(&["alice", "carol"]));
    assert_eq!(sorted(mapping.users_for(1, "files/a/b").await), strings(&["alice", "carol"]));
    // '' matches only the root rows
    assert_eq!(mapping.users_for(1, "").await, strings(&["alice"]));
    assert_eq!(mapping.query_count(), 1, "all of storage 1 came from the cache");

    // group folder shared by three users
    assert_eq!(
        sorted(mapping.users_for(2, "__groupfolders/3/doc.md").await),
        strings(&["gf1", "gf2", "gf3"])
    );
    assert!(mapping.users_for(2, "__groupfolders/4/doc.md").await.is_empty());
    assert!(mapping.users_for(2, "").await.is_empty());
    assert_eq!(mapping.query_count(), 2);

    // unknown storage
    assert!(mapping.users_for(99, "files/x").await.is_empty());
    assert_eq!(mapping.query_count(), 3);
    assert!(mapping.users_for(99, "files/y").await.is_empty());
    assert_eq!(mapping.query_count(), 3, "an empty result is cached too");

    // the self-test lookup (spec §5)
    assert_eq!(mapping.mapping_root_count(1).await, 1);
    assert_eq!(mapping.mapping_root_count(2).await, 0);
    assert_eq!(mapping.mapping_root_count(99).await, 0);
    assert_eq!(mapping.mapping_root_count(5).await, 1);
    assert_eq!(mapping.query_count(), 4, "only storage 5 was new");

    // through the engine's trait object
    let dynamic: Arc<dyn StorageMapping> = mapping.clone();
    assert_eq!(dynamic.users_for_path(5, "files/x").await, strings(&["zed"]));
    assert_eq!(dynamic.query_count(), 4);
    assert!(mapping.is_available());
    assert_eq!(
        mapping.query_text(7),
        format!("SELECT user_id, path FROM {prefix}mounts INNER JOIN {prefix}filecache ON root_id = fileid WHERE storage_id = 7")
    );
    mapping.close().await;
}

async fn invalidation(backend: Backend) {
    let db = require!(TestDb::create(backend, "oc_").await);
    populate(&db).await;
    let options = MappingOptions {
        access_change_min_interval: Duration::from_millis(400),
        access_change_follow_up: None,
        ..MappingOptions::default()
    };
    let mapping = mapping(&db, options);
    assert_eq!(mapping.users_for(1, "files/new/x").await, strings(&["alice"]));
    assert!(!mapping.users_for(2, "__groupfolders/3").await.is_empty());
    assert_eq!(mapping.query_count(), 2);

    // A new share for erin: invisible to the cache until the share-created event…
    db.mount("erin", 1, "files/new").await;
    assert_eq!(mapping.users_for(1, "files/new/x").await, strings(&["alice"]));
    assert_eq!(mapping.query_count(), 2);
    // …which makes it visible at once.
    mapping.user_access_changed("erin");
    assert_eq!(sorted(mapping.users_for(1, "files/new/x").await), strings(&["alice", "erin"]));
    assert_eq!(mapping.query_count(), 3);
    assert_eq!(mapping.users_for(1, "files/new/y").await.len(), 2);
    assert_eq!(mapping.query_count(), 3, "one reload per storage per invalidation");

    // A second access change within the min interval is deferred to the end of the interval,
    // not dropped.
    db.mount("frank", 1, "files/frank").await;
    mapping.user_access_changed("frank");
    assert_eq!(mapping.users_for(1, "files/frank/x").await, strings(&["alice"]), "rate-limited");
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(sorted(mapping.users_for(1, "files/frank/x").await), strings(&["alice", "frank"]));
    assert_eq!(mapping.query_count(), 4);
    // storage 2 is reloaded once, on its next lookup only
    assert_eq!(mapping.users_for(2, "__groupfolders/3/a").await.len(), 3);
    assert_eq!(mapping.query_count(), 5);

    // invalidate_user drops only the entries containing that user
    db.remove_mounts_of("bob").await;
    assert_eq!(mapping.users_for(1, "files/Shared stuff/x").await.len(), 2, "bob still cached");
    assert_eq!(mapping.invalidate_user("bob"), 1);
    assert_eq!(mapping.users_for(1, "files/Shared stuff/x").await, strings(&["alice"]));
    assert_eq!(mapping.users_for(2, "__groupfolders/3/a").await.len(), 3);
    assert_eq!(mapping.query_count(), 6, "only storage 1 was re-queried");
    assert_eq!(mapping.invalidate_user("nobody"), 0);

    // invalidate_all: every storage re-queried once on its next lookup
    mapping.invalidate_all();
    mapping.users_for(1, "files").await;
    mapping.users_for(2, "files").await;
    mapping.users_for(1, "files").await;
    assert_eq!(mapping.query_count(), 8);
    mapping.close().await;
}

async fn follow_up(backend: Backend) {
    let db = require!(TestDb::create(backend, "oc_").await);
    populate(&db).await;
    let options = MappingOptions {
        access_change_min_interval: Duration::ZERO,
        access_change_follow_up: Some(Duration::from_millis(300)),
        ..MappingOptions::default()
    };
    let mapping = mapping(&db, options);
    mapping.users_for(1, "files").await;
    // The share event arrives before Nextcloud wrote the recipient's mount row (it does so when
    // the recipient's filesystem is set up)…
    mapping.user_access_changed("gina");
    assert_eq!(mapping.users_for(1, "files/g/x").await, strings(&["alice"]));
    db.mount("gina", 1, "files/g").await;
    assert_eq!(mapping.users_for(1, "files/g/x").await, strings(&["alice"]), "cached again");
    // …the follow-up invalidation picks it up.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(sorted(mapping.users_for(1, "files/g/x").await), strings(&["alice", "gina"]));
    mapping.close().await;
}

async fn stale_while_revalidate(backend: Backend) {
    let db = require!(TestDb::create(backend, "oc_").await);
    populate(&db).await;
    let options = MappingOptions {
        ttl_min: Duration::from_millis(300),
        ttl_max: Duration::from_millis(400),
        ..MappingOptions::default()
    };
    let mapping = mapping(&db, options);

    // cold: 20 concurrent lookups, one query (single flight)
    let lookups: Vec<_> = (0..20)
        .map(|_| {
            let mapping = mapping.clone();
            tokio::spawn(async move { sorted(mapping.users_for(2, "__groupfolders/3/x").await) })
        })
        .collect();
    for lookup in lookups {
        assert_eq!(lookup.await.unwrap(), strings(&["gf1", "gf2", "gf3"]));
    }
    assert_eq!(mapping.query_count(), 1, "cold concurrent lookups share one query");

    // expired: one reload, concurrent requesters get the stale rows meanwhile
    mapping.users_for(1, "files").await;
    assert_eq!(mapping.query_count(), 2);
    db.mount("hank", 1, "files/h").await;
    tokio::time::sleep(Duration::from_millis(450)).await;
    let lookups: Vec<_> = (0..20)
        .map(|_| {
            let mapping = mapping.clone();
            tokio::spawn(async move { mapping.users_for(1, "files/h/x").await })
        })
        .collect();
    let mut fresh = 0;
    for lookup in lookups {
        let users = lookup.await.unwrap();
        assert!(users.contains(&"alice".to_string()));
        if users.contains(&"hank".to_string()) {
            fresh += 1;
        }
    }
    assert!(fresh >= 1, "the reloading requester gets the new rows");
    assert_eq!(mapping.query_count(), 3, "expired entry: exactly one reload");
    assert_eq!(sorted(mapping.users_for(1, "files/h/x").await), strings(&["alice", "hank"]));
    assert_eq!(mapping.query_count(), 3);
    mapping.close().await;
}

/// Median of 200 lookups, warm (cache hit) and cold (every lookup re-queries), printed for a
/// manual look at the query's cost. Run: `cargo test -p nextcloud-push-engine --test db_mapping latency -- --nocapture`
async fn latency(backend: Backend) {
    let db = require!(TestDb::create(backend, "oc_").await);
    populate(&db).await;
    // some bulk so the query has something to skip: 5000 other storages with a home mount each
    db.add_homes(1000..6000).await;
    let mapping = mapping(&db, MappingOptions::default());
    // connect the pool outside the measurement
    mapping.users_for(3, "files").await;

    const N: usize = 200;
    let mut cold = Vec::with_capacity(N);
    for _ in 0..N {
        mapping.invalidate_all();
        let start = Instant::now();
        let users = mapping.users_for(1, "files/ab/x").await;
        cold.push(start.elapsed());
        assert_eq!(users.len(), 3);
    }
    let mut warm = Vec::with_capacity(N);
    for _ in 0..N {
        let start = Instant::now();
        let users = mapping.users_for(1, "files/ab/x").await;
        warm.push(start.elapsed());
        assert_eq!(users.len(), 3);
    }
    let queries = mapping.query_count();
    let (cold_median, warm_median) = (median(&mut cold), median(&mut warm));
    let p90 = |samples: &[Duration]| samples[samples.len() * 9 / 10];
    println!(
        "LATENCY {:<8} cold (query) median {:>9.1?} p90 {:>9.1?} | warm (cache) median {:>7.1?} p90 {:>7.1?} | {N}+{N} lookups, {queries} queries",
        backend.name(),
        cold_median,
        p90(&cold),
        warm_median,
        p90(&warm),
    );
    assert_eq!(queries, 1 + N as u64);
    mapping.close().await;
}

macro_rules! per_backend {
    ($($module:ident => $backend:expr),*) => {$(
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn home_share_group_prefix_unknown_counts() {
                common::time_limit(async {
                    scenarios($backend, "oc_").await;
                })
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn other_table_prefix() {
                common::time_limit(async {
                    scenarios($backend, "nc42_").await;
                })
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn invalidation_makes_new_shares_visible() {
                common::time_limit(async {
                    invalidation($backend).await;
                })
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn follow_up_invalidation_sees_late_mount_rows() {
                common::time_limit(async {
                    follow_up($backend).await;
                })
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn stale_while_revalidate_and_single_flight() {
                common::time_limit(async {
                    stale_while_revalidate($backend).await;
                })
                .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn latency() {
                common::time_limit(async {
                    super::latency($backend).await;
                })
                .await;
            }
        }
    )*};
}

per_backend!(mysql => Backend::MySql, postgres => Backend::Postgres, sqlite => Backend::Sqlite);

#[test]
fn new_needs_a_runtime() {
    let error =
        DbStorageMapping::from_url("sqlite:///nonexistent/x.db", "oc_", MappingOptions::default())
            .unwrap_err();
    assert_eq!(error.to_string(), "the database mapping must be created inside a tokio runtime");
}
