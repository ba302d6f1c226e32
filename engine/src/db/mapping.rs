//! [`DbStorageMapping`]: storage id → users, from Nextcloud's `mounts`/`filecache` tables
//! (spec §3), with a per-storage cache.
//!
//! # The cache
//! As the incumbent: one entry per storage id, valid for a random 4–5 minutes from its load.
//! When an entry has expired, the first requester reloads it and concurrent requesters keep
//! getting the stale rows meanwhile (no thundering herd); a failed reload clears the "updating"
//! flag so the next requester tries again. Better than the incumbent:
//! * a storage that has no usable rows (never loaded, or invalidated) is loaded once while
//!   concurrent requesters wait for that one load (single flight) instead of all querying;
//! * [`DbStorageMapping::invalidate_user`] drops the entries that contain a user;
//! * [`DbStorageMapping::user_access_changed`] makes a *new* share or group-folder access
//!   visible at once. Policy:
//!   1. the user's own entries are invalidated (an unshare/group removal shows at once too);
//!   2. every cached entry is invalidated by bumping a cache *epoch* (O(1); an entry loaded in
//!      an older epoch is reloaded on its next lookup, with single flight). The event names only
//!      the user, not the storage the new mount points into, so "every storage" is the only
//!      correct set. At most one such bump per `access_change_min_interval` (2 s): an event
//!      inside that interval schedules one bump at its end, so no event is lost;
//!   3. one more bump `access_change_follow_up` (20 s) after the last event, because Nextcloud
//!      writes the recipient's `mounts` row lazily, when the recipient's filesystem is set up,
//!      which typically happens when the recipient's client reacts to the very `notify_file`
//!      the share event sends (debounced up to 15 s, then a PROPFIND).
//!
//!   Bound: bumps happen at most twice per `access_change_min_interval`, and a storage is only
//!   reloaded when an event for it arrives, at most once per bump (single flight). So a burst of
//!   share/group events (an LDAP sync adding 1000 users to a group) costs at most
//!   `min(storage events, 2 × active storages)` mapping queries per 2 s, and nothing when no
//!   storage events follow.
//!
//! # Availability
//! The pool connects lazily; a background probe (the mapping query for storage 1, the
//! incumbent's smoke test) runs at start and whenever a lookup hits a connection error. While the
//! database is down, lookups do not wait on it: they are answered from the cache, stale or not,
//! or reach nobody, and the probe retries with exponential backoff. One `NCP1101` warning per
//! outage, one `NCP1102` info line on recovery.

use super::url::{ConnectOptions, DbConfig, DbKind};
use super::{is_connection_error, DatabaseError};
use crate::StorageMapping;
use futures_util::future::BoxFuture;
use sqlx::pool::{PoolConnectionMetadata, PoolOptions};
use sqlx::{Connection, Executor, Row};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const TARGET: &str = "nextcloud_push::sql";

/// Knobs of the pool, the cache and the reconnect probe. The defaults are the production values;
/// tests shorten them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappingOptions {
    /// Pool size. 10 (as the incumbent).
    pub max_connections: u32,
    /// Upper bound for getting a connection (including connecting). 3 s.
    pub acquire_timeout: Duration,
    /// A pooled connection idle for this long is pinged before use. 30 s.
    pub ping_after_idle: Duration,
    /// Cache entries are valid for a random duration in `ttl_min..=ttl_max` from their load.
    /// 240 s and 300 s (spec §3).
    pub ttl_min: Duration,
    pub ttl_max: Duration,
    /// Reconnect probe backoff while the database is down: first delay, doubled up to the max.
    /// 1 s and 30 s.
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    /// [`DbStorageMapping::user_access_changed`]: at most one whole-cache invalidation per this
    /// interval. 2 s.
    pub access_change_min_interval: Duration,
    /// [`DbStorageMapping::user_access_changed`]: one more whole-cache invalidation this long
    /// after the last access change (`None`: none). 20 s.
    pub access_change_follow_up: Option<Duration>,
}

impl Default for MappingOptions {
    fn default() -> Self {
        MappingOptions {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(3),
            ping_after_idle: Duration::from_secs(30),
            ttl_min: Duration::from_secs(240),
            ttl_max: Duration::from_secs(300),
            retry_backoff: Duration::from_secs(1),
            retry_backoff_max: Duration::from_secs(30),
            access_change_min_interval: Duration::from_secs(2),
            access_change_follow_up: Some(Duration::from_secs(20)),
        }
    }
}

/// One row of the mapping query: a mount of the storage for `user_id`, rooted at the
/// storage-relative `path` (`''` for a home storage).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountRow {
    pub user_id: String,
    pub path: String,
}

/// The users whose mount root is a plain string prefix of `path` (spec §3: `''` matches all,
/// `files/a` also matches `files/ab/x`), de-duplicated in row order.
pub fn users_matching(rows: &[MountRow], path: &str) -> Vec<String> {
    let mut users: Vec<String> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for row in rows {
        if path.starts_with(row.path.as_str()) && seen.insert(row.user_id.as_str()) {
            users.push(row.user_id.clone());
        }
    }
    users
}

enum Pool {
    MySql(sqlx::MySqlPool),
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

fn pool_options<DB: sqlx::Database>(options: &MappingOptions) -> PoolOptions<DB> {
    let ping_after_idle = options.ping_after_idle;
    PoolOptions::<DB>::new()
        .max_connections(options.max_connections.max(1))
        .min_connections(0)
        .acquire_timeout(options.acquire_timeout)
        .idle_timeout(Some(Duration::from_secs(600)))
        .max_lifetime(Some(Duration::from_secs(1800)))
        // sqlx would ping before every acquire (one more round trip per mapping query); only
        // connections that sat idle long enough to have been dropped by a server or a NAT are
        // checked. A connection that dies anyway is closed and the query retried once.
        .test_before_acquire(false)
        .before_acquire(move |conn: &mut DB::Connection, meta: PoolConnectionMetadata| {
            Box::pin(async move {
                if meta.idle_for >= ping_after_idle {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

impl Pool {
    fn new(config: &DbConfig, options: &MappingOptions) -> Pool {
        match config.connect_options() {
            ConnectOptions::MySql(connect) => {
                Pool::MySql(pool_options(options).connect_lazy_with(connect))
            }
            ConnectOptions::Postgres(connect) => {
                Pool::Postgres(pool_options(options).connect_lazy_with(connect))
            }
            ConnectOptions::Sqlite(connect) => {
                Pool::Sqlite(pool_options(options).connect_lazy_with(connect))
            }
        }
    }

    /// Runs `sql` (text protocol, one round trip, no prepared statement per storage id) and
    /// decodes `(user_id, path)` rows. A connection-level failure on a pooled connection closes
    /// it and retries once on another.
    async fn fetch(&self, sql: &str) -> Result<Vec<MountRow>, sqlx::Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = match self {
                Pool::MySql(pool) => fetch_mysql(pool, sql).await,
                Pool::Postgres(pool) => fetch_postgres(pool, sql).await,
                Pool::Sqlite(pool) => fetch_sqlite(pool, sql).await,
            };
            match result {
                Err(e)
                    if attempt == 1
                        && is_connection_error(&e)
                        && !matches!(e, sqlx::Error::PoolTimedOut) =>
                {
                    continue
                }
                other => return other,
            }
        }
    }

    async fn close(&self) {
        match self {
            Pool::MySql(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
            Pool::Sqlite(pool) => pool.close().await,
        }
    }
}

// `Executor::fetch_all` on the connection (a named `BoxFuture`), not `RawSql::fetch_all` (an
// async fn generic over the executor): the latter trips rustc's "implementation of `Executor` is
// not general enough" when the lookup future must be `Send`.
/// One lookup on a connection of `$pool`, rows decoded with `$decode`. A macro, not a generic
/// fn: the three sqlx drivers share no trait that keeps the future `Send` (see above). With
/// `close_on_connection_error`, a connection that failed is not returned to the pool.
macro_rules! fetch_rows {
    ($pool:expr, $sql:expr, $decode:expr, close_on_connection_error: $close:expr) => {
        Box::pin(async move {
            let mut conn = $pool.acquire().await?;
            let result = (&mut *conn).fetch_all(sqlx::raw_sql($sql)).await;
            if $close && matches!(&result, Err(e) if is_connection_error(e)) {
                conn.close_on_drop();
            }
            result.and_then(|rows| rows.iter().map($decode).collect())
        })
    };
}

fn fetch_mysql<'a>(
    pool: &'a sqlx::MySqlPool,
    sql: &'a str,
) -> BoxFuture<'a, Result<Vec<MountRow>, sqlx::Error>> {
    fetch_rows!(pool, sql, decode_mysql, close_on_connection_error: true)
}

fn fetch_postgres<'a>(
    pool: &'a sqlx::PgPool,
    sql: &'a str,
) -> BoxFuture<'a, Result<Vec<MountRow>, sqlx::Error>> {
    fetch_rows!(pool, sql, decode_text::<sqlx::Postgres>, close_on_connection_error: true)
}

fn fetch_sqlite<'a>(
    pool: &'a sqlx::SqlitePool,
    sql: &'a str,
) -> BoxFuture<'a, Result<Vec<MountRow>, sqlx::Error>> {
    fetch_rows!(pool, sql, decode_text::<sqlx::Sqlite>, close_on_connection_error: false)
}

/// MySQL: Nextcloud's tables use a binary collation (`utf8mb4_bin`), which sqlx reports as
/// binary and refuses to decode as `String`; take the bytes.
fn decode_mysql(row: &sqlx::mysql::MySqlRow) -> Result<MountRow, sqlx::Error> {
    let text = |index: usize| -> Result<String, sqlx::Error> {
        let bytes: Option<Vec<u8>> = row.try_get_unchecked(index)?;
        Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default())
    };
    Ok(MountRow { user_id: text(0)?, path: text(1)? })
}

fn decode_text<DB>(row: &DB::Row) -> Result<MountRow, sqlx::Error>
where
    DB: sqlx::Database,
    Option<String>: for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
{
    let user_id: Option<String> = row.try_get(0)?;
    let path: Option<String> = row.try_get(1)?;
    Ok(MountRow { user_id: user_id.unwrap_or_default(), path: path.unwrap_or_default() })
}

/// Which load a result belongs to (stale results never overwrite newer ones).
#[derive(Clone, Copy, Debug)]
struct Ticket {
    seq: u64,
    epoch: u64,
    user_gen: u64,
}

struct Slot {
    rows: Option<Arc<[MountRow]>>,
    valid_till: Instant,
    /// Cache epoch the rows were loaded in.
    epoch: u64,
    /// Bumped by `invalidate_user` when the rows contain that user.
    user_gen: u64,
    loaded_user_gen: u64,
    /// A stale-while-revalidate reload is running.
    updating: bool,
    next_seq: u64,
    stored_seq: u64,
    /// Held by the one requester loading a slot that has no usable rows.
    load: Arc<tokio::sync::Mutex<()>>,
}

impl Slot {
    fn new(now: Instant) -> Slot {
        Slot {
            rows: None,
            valid_till: now,
            epoch: 0,
            user_gen: 0,
            loaded_user_gen: 0,
            updating: false,
            next_seq: 0,
            stored_seq: 0,
            load: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Rows that are current (not invalidated), fresh or expired.
    fn current(&self, epoch: u64) -> Option<&Arc<[MountRow]>> {
        self.rows.as_ref().filter(|_| self.epoch == epoch && self.loaded_user_gen == self.user_gen)
    }

    fn ticket(&mut self, epoch: u64) -> Ticket {
        self.next_seq += 1;
        Ticket { seq: self.next_seq, epoch, user_gen: self.user_gen }
    }
}

struct Cache {
    slots: HashMap<u32, Slot>,
    epoch: u64,
    last_bump: Option<Instant>,
    /// A rate-limited whole-cache invalidation waiting for its time.
    pending_bump: Option<Instant>,
    follow_up: Option<Instant>,
    last_sweep: Instant,
}

impl Cache {
    /// Applies whole-cache invalidations whose time has come (lazily: they only matter to
    /// lookups, and every lookup calls this first).
    fn apply_due(&mut self, now: Instant) {
        let mut due = false;
        for slot in [&mut self.pending_bump, &mut self.follow_up] {
            if slot.is_some_and(|at| at <= now) {
                *slot = None;
                due = true;
            }
        }
        if due {
            self.bump(now);
        }
    }

    fn bump(&mut self, now: Instant) {
        self.epoch += 1;
        self.last_bump = Some(now);
    }

    /// Drops entries nobody asked for since long after their expiry.
    fn sweep(&mut self, now: Instant, keep: Duration) {
        if now.duration_since(self.last_sweep) < Duration::from_secs(60) {
            return;
        }
        self.last_sweep = now;
        self.slots.retain(|_, slot| {
            slot.updating || Arc::strong_count(&slot.load) > 1 || now < slot.valid_till + keep
        });
    }
}

enum Plan {
    Hit(Arc<[MountRow]>),
    Refresh { stale: Arc<[MountRow]>, ticket: Ticket },
    Load(Arc<tokio::sync::Mutex<()>>),
}

/// The database-backed [`StorageMapping`]. Create it with [`DbStorageMapping::new`] inside the
/// engine's tokio runtime and hand it to `Engine::set_storage_mapping`.
pub struct DbStorageMapping {
    config: DbConfig,
    options: MappingOptions,
    pool: Pool,
    select: String,
    description: String,
    cache: Mutex<Cache>,
    queries: AtomicU64,
    down: AtomicBool,
    connected_once: AtomicBool,
    /// For `server-status` (`StorageMapping::link`).
    link: crate::health::Link,
    last_query_warning: Mutex<Option<Instant>>,
    wake_probe: Arc<Notify>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for DbStorageMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbStorageMapping")
            .field("database", &self.description)
            .field("table_prefix", &self.config.table_prefix)
            .finish_non_exhaustive()
    }
}

impl Drop for DbStorageMapping {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl DbStorageMapping {
    /// Builds the mapping and its lazily connecting pool, and starts the reconnect probe (which
    /// also runs the startup smoke test). Never waits for the database. Must be called inside a
    /// tokio runtime.
    pub fn new(
        config: DbConfig,
        options: MappingOptions,
    ) -> Result<Arc<DbStorageMapping>, DatabaseError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| DatabaseError::NoRuntime)?;
        let _enter = runtime.enter();
        let pool = Pool::new(&config, &options);
        let prefix = &config.table_prefix;
        let select = format!(
            "SELECT user_id, path FROM {prefix}mounts INNER JOIN {prefix}filecache ON root_id = fileid WHERE storage_id = "
        );
        let wake_probe = Arc::new(Notify::new());
        let cancel = CancellationToken::new();
        let now = Instant::now();
        let mapping = Arc::new(DbStorageMapping {
            description: config.describe(),
            config,
            options,
            pool,
            select,
            cache: Mutex::new(Cache {
                slots: HashMap::new(),
                epoch: 0,
                last_bump: None,
                pending_bump: None,
                follow_up: None,
                last_sweep: now,
            }),
            queries: AtomicU64::new(0),
            down: AtomicBool::new(false),
            connected_once: AtomicBool::new(false),
            link: crate::health::Link::default(),
            last_query_warning: Mutex::new(None),
            wake_probe: wake_probe.clone(),
            cancel: cancel.clone(),
        });
        // The probe logs for the engine that built this mapping (see `log_scope`).
        runtime.spawn(crate::log_scope::inherit(probe_loop(
            Arc::downgrade(&mapping),
            wake_probe,
            cancel,
        )));
        Ok(mapping)
    }

    /// [`DbStorageMapping::new`] from a `NextcloudPushDatabase`-style URL and a table prefix.
    pub fn from_url(
        url: &str,
        table_prefix: &str,
        options: MappingOptions,
    ) -> Result<Arc<DbStorageMapping>, DatabaseError> {
        DbStorageMapping::new(DbConfig::from_url(url, table_prefix)?, options)
    }

    /// The connection settings in use.
    pub fn config(&self) -> &DbConfig {
        &self.config
    }

    /// Which database server this maps through.
    pub fn kind(&self) -> DbKind {
        self.config.kind
    }

    /// `false` while the database is known to be unreachable (lookups then use the cache only).
    pub fn is_available(&self) -> bool {
        !self.down.load(Ordering::SeqCst)
    }

    /// The exact mapping query for `storage` (spec §3).
    pub fn query_text(&self, storage: u32) -> String {
        format!("{}{storage}", self.select)
    }

    /// The users to notify for a change at `path` in `storage` (via the cache).
    pub async fn users_for(&self, storage: u32, path: &str) -> Vec<String> {
        users_matching(&self.rows(storage).await, path)
    }

    /// `/test/mapping/<storage>` (spec §5): the number of mount rows of `storage` whose root path
    /// is `''`, via the cache; `0` when the database cannot be asked and nothing is cached.
    pub async fn mapping_root_count(&self, storage: u32) -> u64 {
        self.rows(storage).await.iter().filter(|row| row.path.is_empty()).count() as u64
    }

    /// Invalidates the cached entries whose rows contain `uid`; their next lookup re-queries
    /// (single flight). Returns how many entries were invalidated.
    pub fn invalidate_user(&self, uid: &str) -> usize {
        let mut cache = self.lock_cache();
        let mut count = 0;
        for slot in cache.slots.values_mut() {
            if slot.rows.as_ref().is_some_and(|rows| rows.iter().any(|row| row.user_id == uid)) {
                slot.user_gen += 1;
                count += 1;
            }
        }
        count
    }

    /// Invalidates every cached entry now (no rate limit).
    pub fn invalidate_all(&self) {
        self.lock_cache().bump(Instant::now());
    }

    /// Call on `notify_user_share_created` and `notify_group_membership_update` for `uid`: the
    /// user may now see a storage (or a part of one) the cache does not list them for. See the
    /// module documentation for the exact, bounded policy.
    pub fn user_access_changed(&self, uid: &str) {
        self.invalidate_user(uid);
        let now = Instant::now();
        let min_interval = self.options.access_change_min_interval;
        let follow_up = self.options.access_change_follow_up;
        let mut cache = self.lock_cache();
        cache.apply_due(now);
        match cache.last_bump {
            Some(last) if now.duration_since(last) < min_interval => {
                if cache.pending_bump.is_none() {
                    cache.pending_bump = Some(last + min_interval);
                }
            }
            _ => cache.bump(now),
        }
        if let Some(delay) = follow_up {
            let at = now + delay;
            cache.follow_up = Some(cache.follow_up.map_or(at, |old| old.max(at)));
        }
    }

    /// Closes the pool (waits for checked-out connections) and stops the probe.
    pub async fn close(&self) {
        self.cancel.cancel();
        self.pool.close().await;
    }

    fn lock_cache(&self) -> MutexGuard<'_, Cache> {
        // A panic while holding the lock leaves consistent data (every update is one
        // assignment), so a poisoned lock is still usable.
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn random_ttl(&self) -> Duration {
        let min = self.options.ttl_min.as_millis() as u64;
        let max = (self.options.ttl_max.as_millis() as u64).max(min);
        Duration::from_millis(rand::random_range(min..=max))
    }

    /// The rows for `storage`, following the cache rules of the module documentation.
    async fn rows(&self, storage: u32) -> Arc<[MountRow]> {
        let plan = {
            let now = Instant::now();
            let mut cache = self.lock_cache();
            cache.apply_due(now);
            cache.sweep(now, self.options.ttl_max);
            let epoch = cache.epoch;
            let slot = cache.slots.entry(storage).or_insert_with(|| Slot::new(now));
            match slot.current(epoch).cloned() {
                Some(rows) if now < slot.valid_till => Plan::Hit(rows),
                Some(rows) if slot.updating => Plan::Hit(rows),
                Some(rows) => {
                    slot.updating = true;
                    Plan::Refresh { stale: rows, ticket: slot.ticket(epoch) }
                }
                None => Plan::Load(slot.load.clone()),
            }
        };
        match plan {
            Plan::Hit(rows) => rows,
            Plan::Refresh { stale, ticket } => {
                let _updating = UpdatingFlag { mapping: self, storage };
                match self.query(storage).await {
                    Some(rows) => self.store(storage, ticket, rows),
                    None => stale,
                }
            }
            Plan::Load(lock) => {
                let _loading = lock.lock().await;
                let (ticket, stale) = {
                    let now = Instant::now();
                    let mut cache = self.lock_cache();
                    cache.apply_due(now);
                    let epoch = cache.epoch;
                    let slot = cache.slots.entry(storage).or_insert_with(|| Slot::new(now));
                    if let Some(rows) = slot.current(epoch).filter(|_| now < slot.valid_till) {
                        // Loaded by the requester we waited for.
                        return rows.clone();
                    }
                    (slot.ticket(epoch), slot.rows.clone())
                };
                match self.query(storage).await {
                    Some(rows) => self.store(storage, ticket, rows),
                    None => stale.unwrap_or_else(|| Arc::from(Vec::new())),
                }
            }
        }
    }

    fn store(&self, storage: u32, ticket: Ticket, rows: Vec<MountRow>) -> Arc<[MountRow]> {
        let rows: Arc<[MountRow]> = Arc::from(rows);
        let ttl = self.random_ttl();
        let now = Instant::now();
        let mut cache = self.lock_cache();
        let slot = cache.slots.entry(storage).or_insert_with(|| Slot::new(now));
        if ticket.seq > slot.stored_seq {
            slot.stored_seq = ticket.seq;
            slot.rows = Some(rows.clone());
            slot.epoch = ticket.epoch;
            slot.loaded_user_gen = ticket.user_gen;
            slot.valid_till = now + ttl;
        }
        rows
    }

    /// Runs the mapping query unless the database is known to be down. `None` on any failure
    /// (logged; a connection failure marks the database down and wakes the probe).
    async fn query(&self, storage: u32) -> Option<Vec<MountRow>> {
        if self.down.load(Ordering::SeqCst) {
            log::debug!(target: TARGET, "database down, storage {storage} answered from the cache");
            return None;
        }
        self.queries.fetch_add(1, Ordering::Relaxed);
        match self.pool.fetch(&self.query_text(storage)).await {
            Ok(rows) => {
                log::debug!(target: TARGET, "storage {storage}: {} mount rows loaded", rows.len());
                Some(rows)
            }
            Err(error) => {
                self.failed(&error);
                None
            }
        }
    }

    fn failed(&self, error: &sqlx::Error) {
        if is_connection_error(error) {
            self.mark_down(error);
        } else {
            let mut last = self.last_query_warning.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                *last = Some(Instant::now());
                log::warn!(
                    target: TARGET,
                    "NCP1103: storage mapping query on {} failed: {error}; check the table prefix \"{}\" ({}mounts, {}filecache) and the database user's rights",
                    self.description,
                    self.config.table_prefix,
                    self.config.table_prefix,
                    self.config.table_prefix
                );
            }
        }
    }

    fn mark_down(&self, error: &sqlx::Error) {
        self.link.down(&error.to_string());
        if !self.down.swap(true, Ordering::SeqCst) {
            log::warn!(
                target: TARGET,
                "NCP1101: database {} unreachable: {error}; file change events are mapped from the cache only until it is back, retrying with backoff (up to {:?})",
                self.description,
                self.options.retry_backoff_max
            );
            self.wake_probe.notify_one();
        }
    }

    fn mark_up(&self) {
        self.link.up();
        let was_down = self.down.swap(false, Ordering::SeqCst);
        let first = !self.connected_once.swap(true, Ordering::SeqCst);
        if was_down {
            log::info!(target: TARGET, "NCP1102: database {} reachable again", self.description);
        } else if first {
            log::info!(target: TARGET, "NCP1102: database {} connected", self.description);
        }
    }

    /// One probe: the mapping query for storage 1 (not cached, not counted). `true` when the
    /// database answered (even with a query error, which is then logged as `NCP1103`).
    async fn probe(&self) -> bool {
        match self.pool.fetch(&self.query_text(1)).await {
            Ok(_) => {
                self.mark_up();
                true
            }
            Err(error) if is_connection_error(&error) => {
                self.mark_down(&error);
                false
            }
            Err(error) => {
                self.mark_up();
                self.failed(&error);
                true
            }
        }
    }
}

/// Clears a slot's `updating` flag when a stale-while-revalidate reload ends, also when the
/// lookup future is dropped half-way.
struct UpdatingFlag<'a> {
    mapping: &'a DbStorageMapping,
    storage: u32,
}

impl Drop for UpdatingFlag<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.mapping.lock_cache().slots.get_mut(&self.storage) {
            slot.updating = false;
        }
    }
}

/// Smoke test at start, then reconnect attempts with backoff while the database is down.
/// Holds the mapping only weakly, so dropping the mapping ends it.
async fn probe_loop(mapping: Weak<DbStorageMapping>, wake: Arc<Notify>, cancel: CancellationToken) {
    let mut backoff: Option<Duration> = None;
    loop {
        let wait = {
            let Some(mapping) = mapping.upgrade() else { return };
            let ok = tokio::select! {
                _ = cancel.cancelled() => return,
                ok = mapping.probe() => ok,
            };
            if ok {
                backoff = None;
                None
            } else {
                let next = match backoff {
                    None => mapping.options.retry_backoff,
                    Some(current) => (current * 2).min(mapping.options.retry_backoff_max),
                };
                backoff = Some(next);
                Some(next)
            }
        };
        match wait {
            // Up: sleep until a lookup reports a connection failure.
            None => tokio::select! {
                _ = cancel.cancelled() => return,
                _ = wake.notified() => {}
            },
            Some(delay) => tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            },
        }
    }
}

impl StorageMapping for DbStorageMapping {
    fn users_for_path<'a>(&'a self, storage: u32, path: &'a str) -> BoxFuture<'a, Vec<String>> {
        Box::pin(self.users_for(storage, path))
    }

    fn query_count(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    fn link(&self) -> Option<crate::health::LinkState> {
        Some(self.link.state())
    }

    fn root_count(&self, storage: u32) -> BoxFuture<'_, u64> {
        Box::pin(self.mapping_root_count(storage))
    }

    fn user_access_changed(&self, uid: &str) {
        DbStorageMapping::user_access_changed(self, uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(user: &str, path: &str) -> MountRow {
        MountRow { user_id: user.into(), path: path.into() }
    }

    #[test]
    fn prefix_matching_is_plain_string_prefix() {
        let rows =
            vec![row("home", ""), row("a", "files/a"), row("b", "files/b"), row("home", "files")];
        assert_eq!(users_matching(&rows, "files/ab/x"), vec!["home", "a"]);
        assert_eq!(users_matching(&rows, "files/a"), vec!["home", "a"]);
        assert_eq!(users_matching(&rows, ""), vec!["home"]);
        assert_eq!(users_matching(&rows, "files/b/c"), vec!["home", "b"]);
        assert!(users_matching(&[], "files").is_empty());
    }
}
