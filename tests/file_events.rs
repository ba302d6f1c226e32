//! File change events end to end, for each database Nextcloud supports: a real config.php names
//! the database (MariaDB, PostgreSQL, SQLite), Apache loads the module, the daemon maps
//! `notify_storage_update` to users through `{prefix}mounts`/`{prefix}filecache`, and real
//! WebSocket clients receive `notify_file` / `notify_file_id`.

mod common;

use common::{Client, Stack, ALICE, BOB, QUIET, T};
use testkit::apache::Mode;
use testkit::db::{Backend, TestDb};
use testkit::require;

/// The config.php Nextcloud writes for `db`, pointing at the Nextcloud double and Redis.
fn config_php(db: &TestDb, nextcloud: &str, redis_port: u16) -> String {
    let database = match db.backend {
        Backend::MySql | Backend::Postgres => {
            let addr = db.server_addr().expect("server address of the test database");
            let (dbtype, user) =
                if db.backend == Backend::MySql { ("mysql", "root") } else { ("pgsql", "postgres") };
            format!(
                "'dbtype' => '{dbtype}', 'dbhost' => '{addr}', 'dbname' => '{}', \
                 'dbuser' => '{user}', 'dbpassword' => '',",
                db.name
            )
        }
        Backend::Sqlite => {
            let file = db.sqlite_file().expect("SQLite file");
            let dir = file.parent().expect("SQLite directory");
            // The daemon runs as Apache's User: it must be able to read the database.
            for (path, mode) in [(dir, 0o755), (file.as_path(), 0o644)] {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                    .expect("chmod SQLite fixture");
            }
            format!(
                "'dbtype' => 'sqlite3', 'datadirectory' => '{}', 'dbname' => '{}',",
                dir.display(),
                db.name
            )
        }
    };
    format!(
        "<?php\n$CONFIG = array (\n  'instanceid' => 'ocfileevents',\n  \
         'overwrite.cli.url' => '{nextcloud}',\n  {database}\n  'dbtableprefix' => '{prefix}',\n  \
         'redis' => array ('host' => '127.0.0.1', 'port' => {redis_port}),\n  \
         'installed' => true,\n);\n",
        prefix = db.prefix
    )
}

async fn file_events_through_apache(backend: Backend, prefix: &str) {
    let db = require!(TestDb::create(backend, prefix).await);
    // Storage 7: alice's home (root ''), with a folder shared into bob's files, and a sibling
    // whose name starts like the shared folder's (plain string prefix matching over-notifies).
    db.mount(ALICE.0, 7, "").await;
    db.mount(BOB.0, 7, "files/shared").await;
    let doc = db.add_file(7, "files/shared/doc.txt").await;
    let other = db.add_file(7, "files/private/x.txt").await;

    let redis = require!(testkit::redis::RedisServer::start());
    let nextcloud = common::start_nextcloud();
    let text = config_php(&db, &nextcloud.base_url(), redis.port());
    let stack = require!(
        Stack::start_with(Mode::Foreground, redis, nextcloud, |b| b.config_php_text(&text)).await
    );

    let mut alice = stack.login(ALICE).await;
    alice.send_text("listen notify_file_id").await;
    let mut bob = stack.login(BOB).await;
    // The opt-in is processed before this event reaches alice (frames are read in order).
    stack.roundtrip(&mut alice, "alice", "opted_in").await;

    let event = |path: &str, id: u64| format!(r#"{{"storage":7,"path":"{path}","file_id":{id}}}"#);
    stack.publish("notify_storage_update", &event("files/shared/doc.txt", doc)).await;
    alice.expect_text(&format!("notify_file_id [{doc}]"), T).await;
    bob.expect_text("notify_file", T).await;

    // Only alice's home contains files/private.
    stack.publish("notify_storage_update", &event("files/private/x.txt", other)).await;
    alice.expect_text(&format!("notify_file_id [{other}]"), T).await;
    bob.expect_no_text(QUIET).await;

    // A storage nobody mounts reaches nobody.
    stack.publish("notify_storage_update", r#"{"storage":99,"path":"files/a","file_id":1}"#).await;
    alice.expect_no_text(QUIET).await;
    bob.expect_no_text(QUIET).await;

    // A new share is pushed at once: the share event invalidates the cached mapping, so the
    // next storage event sees carol's new mount instead of waiting for the 4-5 min expiry.
    db.mount("carol", 7, "files/shared").await;
    let carol_pw = "carol-password";
    stack.nextcloud.add_user("carol", carol_pw, "carol");
    let mut carol = Client::login(&stack.ws_url(), "carol", carol_pw, T).await;
    stack.publish("notify_user_share_created", r#"{"user":"carol"}"#).await;
    carol.expect_text("notify_file", T).await;
    stack.publish("notify_storage_update", &event("files/shared/doc.txt", doc)).await;
    carol.expect_text("notify_file", T).await;
    bob.expect_text("notify_file", T).await;
    alice.expect_text(&format!("notify_file_id [{doc}]"), T).await;

    stack.finish();
    drop(db);
}

#[tokio::test]
async fn file_events_with_mariadb() {
    file_events_through_apache(Backend::MySql, "oc_").await;
}

#[tokio::test]
async fn file_events_with_postgresql_and_a_custom_prefix() {
    file_events_through_apache(Backend::Postgres, "nc_").await;
}

#[tokio::test]
async fn file_events_with_sqlite() {
    file_events_through_apache(Backend::Sqlite, "oc_").await;
}
