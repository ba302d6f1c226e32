//! Nextcloud test databases: a uniquely named database on the machine's MariaDB/MySQL or
//! PostgreSQL server, or an SQLite file in a tempdir, with the `mounts`/`filecache` columns the
//! storage mapping query uses (spec §3), under any table prefix.
//!
//! Servers: `NCP_TEST_MYSQL` (default `mysql://root@127.0.0.1:3306`) and `NCP_TEST_PGSQL`
//! (default `postgres://postgres@127.0.0.1:5432`). An unreachable server gives a [`Skip`], or a
//! panic under `CI=true`. The database is dropped when the [`TestDb`] is dropped, also when the
//! test panics (the drop runs on its own thread and runtime, so it works inside and outside
//! tokio).
//!
//! [`TcpProxy`] sits between a client and a server and can refuse, forward, or cut every open
//! connection: "database down at start, then up" without touching the real server.

use crate::Skip;
use sqlx::{Connection, Executor};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Which server a [`TestDb`] lives on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    MySql,
    Postgres,
    Sqlite,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::MySql, Backend::Postgres, Backend::Sqlite];

    pub fn name(self) -> &'static str {
        match self {
            Backend::MySql => "mysql",
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }

    /// The admin URL of the server (no database), from the environment or the default.
    pub fn server_url(self) -> Option<String> {
        match self {
            Backend::MySql => Some(
                std::env::var("NCP_TEST_MYSQL")
                    .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into()),
            ),
            Backend::Postgres => Some(
                std::env::var("NCP_TEST_PGSQL")
                    .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into()),
            ),
            Backend::Sqlite => None,
        }
    }
}

enum Pool {
    MySql(sqlx::MySqlPool),
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

/// A fresh Nextcloud-like database. Dropped (the whole database, or the tempdir) on drop.
pub struct TestDb {
    pub backend: Backend,
    /// Database name (server backends) or file stem (SQLite).
    pub name: String,
    pub prefix: String,
    url: String,
    server_url: Option<String>,
    pool: Pool,
    dir: Option<tempfile::TempDir>,
    next_fileid: AtomicU64,
}

fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("ncp_test_{}_{}_{nanos}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn unavailable(backend: Backend, url: &str, error: impl std::fmt::Display) -> Skip {
    let reason = format!(
        "{} server at {url} not reachable ({error}); start it or point {} at one",
        backend.name(),
        if backend == Backend::MySql { "NCP_TEST_MYSQL" } else { "NCP_TEST_PGSQL" }
    );
    if crate::in_ci() {
        panic!("CI=true: {reason}");
    }
    Skip(reason)
}

impl TestDb {
    /// Creates the database and the `{prefix}mounts` / `{prefix}filecache` tables.
    pub async fn create(backend: Backend, prefix: &str) -> Result<TestDb, Skip> {
        let name = unique_name();
        let (url, server_url, pool, dir) = match backend {
            Backend::MySql => {
                let server = backend.server_url().unwrap_or_default();
                let mut admin = sqlx::MySqlConnection::connect(&server)
                    .await
                    .map_err(|e| unavailable(backend, &server, e))?;
                admin
                    .execute(
                        format!("CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
                            .as_str(),
                    )
                    .await
                    .map_err(|e| unavailable(backend, &server, e))?;
                let _ = admin.close().await;
                let url = format!("{}/{name}", server.trim_end_matches('/'));
                let pool = sqlx::pool::PoolOptions::new()
                    .max_connections(2)
                    .connect(&url)
                    .await
                    .map_err(|e| unavailable(backend, &url, e))?;
                (url, Some(server), Pool::MySql(pool), None)
            }
            Backend::Postgres => {
                let server = backend.server_url().unwrap_or_default();
                let mut admin = sqlx::PgConnection::connect(&server)
                    .await
                    .map_err(|e| unavailable(backend, &server, e))?;
                admin
                    .execute(format!("CREATE DATABASE {name}").as_str())
                    .await
                    .map_err(|e| unavailable(backend, &server, e))?;
                let _ = admin.close().await;
                let url = format!("{}/{name}", server.trim_end_matches('/'));
                let pool = sqlx::pool::PoolOptions::new()
                    .max_connections(2)
                    .connect(&url)
                    .await
                    .map_err(|e| unavailable(backend, &url, e))?;
                (url, Some(server), Pool::Postgres(pool), None)
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().map_err(|e| Skip(format!("tempdir: {e}")))?;
                let file = dir.path().join(format!("{name}.db"));
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&file)
                    .create_if_missing(true);
                let pool = sqlx::pool::PoolOptions::new()
                    .max_connections(1)
                    .connect_with(options)
                    .await
                    .map_err(|e| Skip(format!("sqlite {}: {e}", file.display())))?;
                (format!("sqlite://{}", file.display()), None, Pool::Sqlite(pool), Some(dir))
            }
        };
        let db = TestDb {
            backend,
            name,
            prefix: prefix.to_string(),
            url,
            server_url,
            pool,
            dir,
            next_fileid: AtomicU64::new(1),
        };
        for statement in db.schema() {
            db.exec(&statement).await;
        }
        Ok(db)
    }

    /// URL of this database (`mysql://root@127.0.0.1:3306/<name>`, `sqlite:///tmp/…/x.db`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The SQLite file (SQLite backend only).
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|dir| dir.path().join(format!("{}.db", self.name)))
    }

    /// The server address (host, port) of a MySQL/PostgreSQL backend, for proxies.
    pub fn server_addr(&self) -> Option<SocketAddr> {
        let url = self.server_url.as_deref()?;
        let rest = url.split_once("://")?.1;
        let host_port = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
        let host_port = host_port.split('/').next()?;
        let default_port = if self.backend == Backend::MySql { 3306 } else { 5432 };
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().ok()?),
            None => (host_port, default_port),
        };
        let host = if host == "localhost" { "127.0.0.1" } else { host };
        format!("{host}:{port}").parse().ok()
    }

    /// This database's URL with the server address replaced by `addr` (through a proxy).
    pub fn url_via(&self, addr: SocketAddr) -> Option<String> {
        let server = self.server_url.as_deref()?;
        let (scheme, rest) = server.split_once("://")?;
        let userinfo = rest.rsplit_once('@').map(|(u, _)| format!("{u}@")).unwrap_or_default();
        Some(format!("{scheme}://{userinfo}{addr}/{}", self.name))
    }

    fn schema(&self) -> Vec<String> {
        let p = &self.prefix;
        match self.backend {
            Backend::MySql => vec![
                format!(
                    "CREATE TABLE {p}filecache (fileid BIGINT UNSIGNED NOT NULL PRIMARY KEY, storage BIGINT NOT NULL DEFAULT 0, \
                     path VARCHAR(4000) DEFAULT NULL, path_hash VARCHAR(32) NOT NULL DEFAULT '', parent BIGINT NOT NULL DEFAULT 0, \
                     name VARCHAR(250) DEFAULT NULL, KEY fs_storage_path_hash (storage, path_hash)) \
                     DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
                ),
                format!(
                    "CREATE TABLE {p}mounts (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, storage_id BIGINT NOT NULL, \
                     root_id BIGINT NOT NULL, user_id VARCHAR(64) NOT NULL, mount_point VARCHAR(4000) NOT NULL, \
                     mount_id BIGINT DEFAULT NULL, mount_provider_class VARCHAR(128) DEFAULT NULL, \
                     KEY mounts_storage_index (storage_id), KEY mounts_root_index (root_id)) \
                     DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
                ),
            ],
            Backend::Postgres => vec![
                format!(
                    "CREATE TABLE {p}filecache (fileid BIGINT NOT NULL PRIMARY KEY, storage BIGINT NOT NULL DEFAULT 0, \
                     path VARCHAR(4000) DEFAULT NULL, path_hash VARCHAR(32) NOT NULL DEFAULT '', parent BIGINT NOT NULL DEFAULT 0, \
                     name VARCHAR(250) DEFAULT NULL)"
                ),
                format!("CREATE INDEX {p}fs_storage_path_hash ON {p}filecache (storage, path_hash)"),
                format!(
                    "CREATE TABLE {p}mounts (id BIGSERIAL PRIMARY KEY, storage_id BIGINT NOT NULL, root_id BIGINT NOT NULL, \
                     user_id VARCHAR(64) NOT NULL, mount_point VARCHAR(4000) NOT NULL, mount_id BIGINT DEFAULT NULL, \
                     mount_provider_class VARCHAR(128) DEFAULT NULL)"
                ),
                format!("CREATE INDEX {p}mounts_storage_index ON {p}mounts (storage_id)"),
                format!("CREATE INDEX {p}mounts_root_index ON {p}mounts (root_id)"),
            ],
            Backend::Sqlite => vec![
                format!(
                    "CREATE TABLE {p}filecache (fileid INTEGER NOT NULL PRIMARY KEY, storage BIGINT NOT NULL DEFAULT 0, \
                     path CLOB DEFAULT NULL, path_hash VARCHAR(32) NOT NULL DEFAULT '', parent BIGINT NOT NULL DEFAULT 0, \
                     name VARCHAR(250) DEFAULT NULL)"
                ),
                format!(
                    "CREATE TABLE {p}mounts (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, storage_id BIGINT NOT NULL, \
                     root_id BIGINT NOT NULL, user_id VARCHAR(64) NOT NULL, mount_point VARCHAR(4000) NOT NULL, \
                     mount_id BIGINT DEFAULT NULL, mount_provider_class VARCHAR(128) DEFAULT NULL)"
                ),
                format!("CREATE INDEX {p}mounts_storage_index ON {p}mounts (storage_id)"),
            ],
        }
    }

    /// Runs one statement; panics on error (a broken fixture is a test failure).
    pub async fn exec(&self, sql: &str) {
        let result = match &self.pool {
            Pool::MySql(pool) => pool.execute(sql).await.map(|_| ()),
            Pool::Postgres(pool) => pool.execute(sql).await.map(|_| ()),
            Pool::Sqlite(pool) => pool.execute(sql).await.map(|_| ()),
        };
        if let Err(e) = result {
            panic!("{} test database {}: {sql}: {e}", self.backend.name(), self.name);
        }
    }

    /// Adds a `filecache` row for `path` in `storage` and returns its file id.
    pub async fn add_file(&self, storage: u32, path: &str) -> u64 {
        let fileid = self.next_fileid.fetch_add(1, Ordering::Relaxed);
        let name = path.rsplit('/').next().unwrap_or_default();
        self.exec(&format!(
            "INSERT INTO {}filecache (fileid, storage, path, path_hash, name) VALUES ({fileid}, {storage}, {}, '{:032x}', {})",
            self.prefix,
            quote(path),
            fileid,
            quote(name)
        ))
        .await;
        fileid
    }

    /// Adds a `mounts` row: `user` sees `storage` from `root_id` on, at `mount_point`.
    pub async fn add_mount_row(&self, user: &str, storage: u32, root_id: u64, mount_point: &str) {
        self.exec(&format!(
            "INSERT INTO {}mounts (storage_id, root_id, user_id, mount_point) VALUES ({storage}, {root_id}, {}, {})",
            self.prefix,
            quote(user),
            quote(mount_point)
        ))
        .await;
    }

    /// A mount of `storage` rooted at `path` for `user` (a new `filecache` row for the root, then
    /// the `mounts` row). Returns the root's file id.
    pub async fn mount(&self, user: &str, storage: u32, path: &str) -> u64 {
        let root = self.add_file(storage, path).await;
        self.add_mount_row(
            user,
            storage,
            root,
            &format!("/{user}/files/{}", path.trim_start_matches("files/")),
        )
        .await;
        root
    }

    /// Bulk fixture: a home mount (root `''`) of storage `n` for user `user<n>`, for every `n`
    /// in `storages`, in two multi-row inserts.
    pub async fn add_homes(&self, storages: std::ops::Range<u32>) {
        if storages.is_empty() {
            return;
        }
        let mut files = Vec::new();
        let mut mounts = Vec::new();
        for storage in storages {
            let fileid = self.next_fileid.fetch_add(1, Ordering::Relaxed);
            files.push(format!("({fileid}, {storage}, '', '{fileid:032x}', '')"));
            mounts.push(format!("({storage}, {fileid}, 'user{storage}', '/user{storage}/')"));
        }
        let p = &self.prefix;
        self.exec(&format!(
            "INSERT INTO {p}filecache (fileid, storage, path, path_hash, name) VALUES {}",
            files.join(", ")
        ))
        .await;
        self.exec(&format!(
            "INSERT INTO {p}mounts (storage_id, root_id, user_id, mount_point) VALUES {}",
            mounts.join(", ")
        ))
        .await;
    }

    /// Removes every mount of `user`.
    pub async fn remove_mounts_of(&self, user: &str) {
        self.exec(&format!("DELETE FROM {}mounts WHERE user_id = {}", self.prefix, quote(user)))
            .await;
    }

    fn drop_statement(&self) -> Option<(String, String)> {
        let server = self.server_url.clone()?;
        let statement = match self.backend {
            Backend::MySql => format!("DROP DATABASE IF EXISTS {}", self.name),
            Backend::Postgres => format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
            Backend::Sqlite => return None,
        };
        Some((server, statement))
    }
}

/// SQL string literal (test data only).
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((server, statement)) = self.drop_statement() else { return };
        let backend = self.backend;
        // Our own pool's connections close when it is dropped; PostgreSQL's FORCE ends any
        // others. Run on a separate thread with its own runtime: Drop may run inside tokio.
        let dropper = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async move {
                let result = match backend {
                    Backend::MySql => match sqlx::MySqlConnection::connect(&server).await {
                        Ok(mut conn) => conn.execute(statement.as_str()).await.map(|_| ()),
                        Err(e) => Err(e),
                    },
                    _ => match sqlx::PgConnection::connect(&server).await {
                        Ok(mut conn) => conn.execute(statement.as_str()).await.map(|_| ()),
                        Err(e) => Err(e),
                    },
                };
                result.err().map(|e| format!("{statement}: {e}"))
            })
        });
        if let Ok(Some(error)) = dropper.join() {
            eprintln!("warning: could not drop test database: {error}");
        }
    }
}

/// A TCP proxy on 127.0.0.1 in front of `upstream`: refuses (accepts and closes at once) while
/// "down", forwards while "up"; [`TcpProxy::set_up`]`(false)` also cuts every forwarded
/// connection. Stops when dropped.
pub struct TcpProxy {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Starts the proxy (inside a tokio runtime), initially up or down.
    pub async fn start(upstream: SocketAddr, up: bool) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let up = Arc::new(AtomicBool::new(up));
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accept = {
            let up = up.clone();
            let connections = connections.clone();
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let task = tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                    if let Ok(mut list) = connections.lock() {
                        list.retain(|handle| !handle.is_finished());
                        list.push(task.abort_handle());
                    }
                }
            })
        };
        TcpProxy { addr, up, connections, accept }
    }

    /// Up: forward new connections. Down: refuse new ones and cut the open ones.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        if !up {
            if let Ok(mut list) = self.connections.lock() {
                for handle in list.drain(..) {
                    handle.abort();
                }
            }
        }
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set_up(false);
    }
}

/// Median of durations (sorts in place); zero for an empty slice.
pub fn median(samples: &mut [Duration]) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    samples[samples.len() / 2]
}
