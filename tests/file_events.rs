//! File change events end to end, for each database Nextcloud supports: a real config.php names
//! the database (MariaDB, PostgreSQL, SQLite), Apache loads the module, the daemon maps
//! `notify_storage_update` to users through `{prefix}mounts`/`{prefix}filecache`, and real
//! WebSocket clients receive `notify_file` / `notify_file_id`.

mod common;

use common::{client, Client, Stack, ALICE, BOB, QUIET, T};
use testkit::apache::Mode;
use testkit::db::{Backend, TestDb};
use testkit::require;

/// The login of the test server (`NCP_TEST_MYSQL` / `NCP_TEST_PGSQL`, default root / postgres
/// without a password), for config.php's `dbuser` / `dbpassword`. Percent-escapes in the URL are
/// decoded; quotes and backslashes are escaped for the PHP string.
fn login(backend: Backend) -> (String, String) {
    let default_user = if backend == Backend::MySql { "root" } else { "postgres" };
    let url = backend.server_url().unwrap_or_default();
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    let userinfo = rest.split('/').next().unwrap_or("").rsplit_once('@').map(|(u, _)| u);
    let (user, password) = match userinfo {
        Some(u) => u.split_once(':').unwrap_or((u, "")),
        None => (default_user, ""),
    };
    let php = |s: &str| percent_decode(s).replace('\\', "\\\\").replace('\'', "\\'");
    (php(user), php(password))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The config.php Nextcloud writes for `db`, pointing at the Nextcloud double and Redis.
fn config_php(db: &TestDb, nextcloud: &str, redis_port: u16) -> String {
    let database = match db.backend {
        Backend::MySql | Backend::Postgres => {
            let addr = db.server_addr().expect("server address of the test database");
            let dbtype = if db.backend == Backend::MySql { "mysql" } else { "pgsql" };
            let (user, password) = login(db.backend);
            format!(
                "'dbtype' => '{dbtype}', 'dbhost' => '{addr}', 'dbname' => '{}', \
                 'dbuser' => '{user}', 'dbpassword' => '{password}',",
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
    // A second session of alice sends its login and its opt-in in the same write as the
    // handshake: the opt-in, read by Apache with the request, must reach the daemon and count.
    let mut bytes = client::upgrade_request(stack.apache.port(), "").into_bytes();
    for text in [ALICE.0, ALICE.1, "listen notify_file_id"] {
        bytes.extend(client::masked_text_frame(text));
    }
    let (stream, head, rest) = client::raw_request(stack.apache.addr(), &bytes, T).await;
    assert_eq!(client::status_of(&head), Some(101), "{head}");
    let mut pipelined = Client::from_raw(stream, rest).await;
    pipelined.expect_text(client::AUTHENTICATED, T).await;
    // The opt-in is processed before this event reaches alice (frames are read in order).
    stack.roundtrip(&mut alice, "alice", "opted_in").await;
    pipelined.expect_text("opted_in", T).await;

    let event = |path: &str, id: u64| format!(r#"{{"storage":7,"path":"{path}","file_id":{id}}}"#);
    stack.publish("notify_storage_update", &event("files/shared/doc.txt", doc)).await;
    alice.expect_text(&format!("notify_file_id [{doc}]"), T).await;
    pipelined.expect_text(&format!("notify_file_id [{doc}]"), T).await;
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

/// A group folder (storage 9, `__groupfolders/3`) mounted by three users; one upload publishes
/// the file and then its ancestors back to back (spec §2.4). With debouncing on, each user gets
/// one frame: the ids merged in first-seen order, or plain `notify_file` without the opt-in.
async fn group_folder_burst_through_apache(backend: Backend) {
    let db = require!(TestDb::create(backend, "oc_").await);
    let root = db.add_file(9, "").await;
    let groupfolders = db.add_file(9, "__groupfolders").await;
    let folder = db.add_file(9, "__groupfolders/3").await;
    for user in ["alice", "bob", "carol"] {
        db.add_mount_row(user, 9, folder, &format!("/{user}/files/Team")).await;
    }
    let file = db.add_file(9, "__groupfolders/3/report.odt").await;

    let redis = require!(testkit::redis::RedisServer::start());
    let nextcloud = common::start_nextcloud();
    nextcloud.add_user("carol", "carol-password", "carol");
    let text = config_php(&db, &nextcloud.base_url(), redis.port());
    let stack = require!(
        Stack::start_with(Mode::Foreground, redis, nextcloud, |b| b
            .config_php_text(&text)
            // Debouncing on (the stack turns it off by default), at its shortest window.
            .vhost_line("NextcloudPushDebounce On")
            .vhost_line("NextcloudPushMaxDebounceTime 1"))
        .await
    );

    let mut alice = stack.login(ALICE).await;
    alice.send_text("listen notify_file_id").await;
    let mut bob = stack.login(BOB).await;
    bob.send_text("listen notify_file_id").await;
    let mut carol = Client::login(&stack.ws_url(), "carol", "carol-password", T).await;
    // The opt-ins are read before anything published after this round trip (custom messages
    // are never debounced).
    stack.roundtrip(&mut alice, "alice", "ready").await;
    stack.roundtrip(&mut bob, "bob", "ready").await;

    let event = |path: &str, id: u64| format!(r#"{{"storage":9,"path":"{path}","file_id":{id}}}"#);
    for (path, id) in [
        ("__groupfolders/3/report.odt", file),
        ("__groupfolders/3", folder),
        ("__groupfolders", groupfolders),
        ("", root),
    ] {
        stack.publish("notify_storage_update", &event(path, id)).await;
    }
    // `__groupfolders` and `''` are above the mount root: they reach nobody.
    let merged = format!("notify_file_id [{file},{folder}]");
    alice.expect_text(&merged, T).await;
    bob.expect_text(&merged, T).await;
    carol.expect_text("notify_file", T).await;
    for client in [&mut alice, &mut bob, &mut carol] {
        client.expect_no_text(QUIET).await;
    }

    stack.finish();
    drop(db);
}

#[tokio::test]
async fn group_folder_burst_with_mariadb() {
    group_folder_burst_through_apache(Backend::MySql).await;
}

#[tokio::test]
async fn group_folder_burst_with_postgresql() {
    group_folder_burst_through_apache(Backend::Postgres).await;
}

#[tokio::test]
async fn group_folder_burst_with_sqlite() {
    group_folder_burst_through_apache(Backend::Sqlite).await;
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
