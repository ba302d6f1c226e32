//! Engine configuration: Nextcloud's config.php (parsed, never executed) plus the
//! `NextcloudPush*` directive overrides.

use crate::error::ConfigError;
use nextcloud_config_parser as ncp;
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The `NextcloudPush*` directive values of one virtual host. `None` means "not set": the value
/// comes from config.php or the default.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    /// `NextcloudPushNextcloudUrl`
    pub nextcloud_url: Option<String>,
    /// `NextcloudPushRedis` (`redis://`, `rediss://`, `unix:///path`, `redis+unix://`)
    pub redis_url: Option<String>,
    /// `NextcloudPushRedis` with several URLs: the seeds of a Redis Cluster (then `redis_url`
    /// is ignored).
    pub redis_cluster_seeds: Vec<String>,
    /// `NextcloudPushDatabase`: a database URL, parsed and checked when the configuration is
    /// built (see [`crate::db::DbConfig::from_url`])
    pub database_url: Option<String>,
    /// `NextcloudPushTablePrefix`
    pub table_prefix: Option<String>,
    /// `NextcloudPushAllowSelfSigned`
    pub allow_self_signed: Option<bool>,
    /// `NextcloudPushMaxDebounceTime`, seconds
    pub max_debounce_time: Option<u64>,
    /// `NextcloudPushMaxConnectionTime`, seconds, 0 = unlimited
    pub max_connection_time: Option<u64>,
    /// `NextcloudPushDebounce On|Off`
    pub debounce: Option<bool>,
}

/// Where the engine's Redis lives.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct RedisConfig {
    /// redis-rs URL used for the pub/sub subscription and for commands. For a cluster this is the
    /// first seed after sorting (pub/sub messages are broadcast cluster-wide, spec §2.1).
    pub url: String,
    /// All cluster seeds as URLs, sorted; empty for a single server.
    pub cluster_seeds: Vec<String>,
    /// TLS files from config.php's `ssl_context` (the URL is then `rediss://`).
    pub tls: Option<RedisTls>,
}

/// config.php `ssl_context` of the Redis connection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RedisTls {
    /// `local_cert`: client certificate (PEM), with `local_pk`.
    pub client_cert: Option<PathBuf>,
    /// `local_pk`: client key (PEM).
    pub client_key: Option<PathBuf>,
    /// `cafile`: the CA to trust instead of the system store.
    pub ca_file: Option<PathBuf>,
    /// `verify_peer_name => false`. Not supported by the Redis client: hostnames are still
    /// verified (a warning is logged when the engine starts).
    pub accept_invalid_hostname: bool,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact_url(&self.url))
            .field(
                "cluster_seeds",
                &self.cluster_seeds.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Timing knobs. The defaults are the production values of the protocol (spec §1.3, §1.6, §1.7);
/// no directive sets them, tests shorten them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Timing {
    /// Whole login (both frames and the Nextcloud call) must finish within this. 15 s.
    pub auth_timeout: Duration,
    /// A server ping is due after this much outgoing silence. 30 s.
    pub ping_interval: Duration,
    /// Pre-auth tokens are valid this long after they were received. 15 s.
    pub pre_auth_ttl: Duration,
    /// Period of the per-connection debounce/keepalive tick. 500 ms.
    pub tick: Duration,
    /// Redis reconnect backoff: first delay (1 s), doubled up to `redis_backoff_max` (5 s).
    pub redis_backoff: Duration,
    pub redis_backoff_max: Duration,
    /// The Redis pub/sub connection sends a PING this often, to notice dead connections. 15 s.
    pub redis_ping: Duration,
    /// Upper bound for [`crate::Engine::shutdown`]. 2 s.
    pub shutdown_grace: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            auth_timeout: Duration::from_secs(15),
            ping_interval: Duration::from_secs(30),
            pre_auth_ttl: Duration::from_secs(15),
            tick: Duration::from_millis(500),
            redis_backoff: Duration::from_secs(1),
            redis_backoff_max: Duration::from_secs(5),
            redis_ping: Duration::from_secs(15),
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

/// The validated configuration of one engine. Equal configurations share one engine
/// (compare [`EngineConfig::fingerprint`]).
#[derive(Clone, PartialEq, Serialize)]
pub struct EngineConfig {
    /// The config.php this was read from, if any.
    pub config_php: Option<PathBuf>,
    /// Nextcloud base URL, always ending in `/`.
    pub nextcloud_url: String,
    pub redis: RedisConfig,
    /// Database URL (from NextcloudPushDatabase or config.php) of the storage mapping
    /// ([`crate::db::DbStorageMapping`]), which connects lazily. `None`: the engine starts with
    /// [`crate::NoStorageMapping`] (file change events reach nobody).
    pub database_url: Option<String>,
    /// Table prefix, default `oc_`.
    pub table_prefix: String,
    pub allow_self_signed: bool,
    /// Seconds, default 15.
    pub max_debounce_time: u64,
    /// Seconds, 0 = unlimited (default).
    pub max_connection_time: u64,
    /// `false` sends every message immediately (the incumbent's `DEBOUNCE_DISABLE`).
    pub debounce: bool,
    pub timing: Timing,
}

impl fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineConfig")
            .field("config_php", &self.config_php)
            .field("nextcloud_url", &self.nextcloud_url)
            .field("redis", &self.redis)
            .field("database_url", &self.database_url.as_deref().map(redact_url))
            .field("table_prefix", &self.table_prefix)
            .field("allow_self_signed", &self.allow_self_signed)
            .field("max_debounce_time", &self.max_debounce_time)
            .field("max_connection_time", &self.max_connection_time)
            .field("debounce", &self.debounce)
            .field("timing", &self.timing)
            .finish()
    }
}

const DEFAULT_PREFIX: &str = "oc_";
const DEFAULT_MAX_DEBOUNCE: u64 = 15;

impl EngineConfig {
    /// Reads config.php (no PHP executed) and applies the overrides; every error names the
    /// directive or config.php key at fault. Without a config.php, `NextcloudPushNextcloudUrl`
    /// and `NextcloudPushRedis` are required.
    pub fn load(
        config_php: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<EngineConfig, ConfigError> {
        let from_php = match config_php {
            Some(path) => Some(read_config_php(path, overrides)?),
            None => None,
        };

        let nextcloud_url = match (&overrides.nextcloud_url, &from_php) {
            (Some(url), _) => {
                validate_http_url(url).map_err(|reason| ConfigError::InvalidNextcloudUrl {
                    url: url.clone(),
                    reason,
                })?;
                url.clone()
            }
            (None, Some(php)) => {
                let url = php
                    .nextcloud_url
                    .clone()
                    .ok_or_else(|| ConfigError::NoNextcloudUrl { path: php.path.clone() })?;
                validate_http_url(&url).map_err(|reason| ConfigError::InvalidConfigPhpUrl {
                    path: php.path.clone(),
                    url: url.clone(),
                    reason,
                })?;
                url
            }
            (None, None) => return Err(ConfigError::Missing("NextcloudPushNextcloudUrl")),
        };
        let nextcloud_url = with_trailing_slash(nextcloud_url);

        let redis =
            match (&overrides.redis_url, &from_php) {
                _ if !overrides.redis_cluster_seeds.is_empty() => {
                    let mut seeds = overrides.redis_cluster_seeds.clone();
                    for url in &seeds {
                        validate_redis_url(url).map_err(|reason| ConfigError::InvalidRedisUrl {
                            directive: "NextcloudPushRedis",
                            url: url.clone(),
                            reason,
                        })?;
                    }
                    seeds.sort();
                    seeds.dedup();
                    RedisConfig { url: seeds[0].clone(), cluster_seeds: seeds, tls: None }
                }
                (Some(url), _) => {
                    validate_redis_url(url).map_err(|reason| ConfigError::InvalidRedisUrl {
                        directive: "NextcloudPushRedis",
                        url: url.clone(),
                        reason,
                    })?;
                    RedisConfig { url: url.clone(), cluster_seeds: Vec::new(), tls: None }
                }
                (None, Some(php)) => php.redis.clone().map_err(|(key, reason)| {
                    ConfigError::Redis { path: php.path.clone(), key, reason }
                })?,
                (None, None) => return Err(ConfigError::Missing("NextcloudPushRedis")),
            };

        let database_url = match (&overrides.database_url, &from_php) {
            (Some(url), _) => {
                validate_database_url(url).map_err(|reason| ConfigError::InvalidDatabaseUrl {
                    url: url.clone(),
                    reason,
                })?;
                Some(url.clone())
            }
            (None, Some(php)) => match &php.database {
                Ok(url) => Some(url.clone()),
                Err(reason) => {
                    return Err(ConfigError::Database {
                        path: php.path.clone(),
                        reason: reason.clone(),
                    })
                }
            },
            (None, None) => None,
        };

        let table_prefix = match (&overrides.table_prefix, &from_php) {
            (Some(prefix), _) => {
                if !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(ConfigError::InvalidTablePrefix(prefix.clone()));
                }
                prefix.clone()
            }
            (None, Some(php)) => php.table_prefix.clone(),
            (None, None) => DEFAULT_PREFIX.to_string(),
        };

        Ok(EngineConfig {
            config_php: config_php.map(Path::to_path_buf),
            nextcloud_url,
            redis,
            database_url,
            table_prefix,
            allow_self_signed: overrides.allow_self_signed.unwrap_or(false),
            max_debounce_time: overrides.max_debounce_time.unwrap_or(DEFAULT_MAX_DEBOUNCE),
            max_connection_time: overrides.max_connection_time.unwrap_or(0),
            debounce: overrides.debounce.unwrap_or(true),
            timing: Timing::default(),
        })
    }

    /// A stable string identifying the whole configuration: equal configs give equal
    /// fingerprints, in every process and across restarts. It is a hash, so secrets in the
    /// configuration do not leak through it.
    pub fn fingerprint(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        // Two FNV-1a 64 passes with different offset bases: stable across Rust versions,
        // unlike std's DefaultHasher.
        let a = fnv1a(json.as_bytes(), 0xcbf2_9ce4_8422_2325);
        let b = fnv1a(json.as_bytes(), 0x6c62_272e_07bb_0142);
        format!("{a:016x}{b:016x}")
    }
}

fn fnv1a(bytes: &[u8], basis: u64) -> u64 {
    let mut hash = basis;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn with_trailing_slash(mut url: String) -> String {
    if !url.ends_with('/') {
        url.push('/');
    }
    url
}

fn validate_http_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => return Err(format!("scheme must be http or https, not {other}")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("missing host".into());
    }
    Ok(())
}

fn validate_redis_url(url: &str) -> Result<(), String> {
    use redis::IntoConnectionInfo;
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    if !matches!(scheme, "redis" | "rediss" | "unix" | "redis+unix") {
        return Err("scheme must be redis://, rediss://, unix:// or redis+unix://".into());
    }
    url.into_connection_info().map(|_| ()).map_err(|e| e.to_string())
}

fn validate_database_url(url: &str) -> Result<(), String> {
    match crate::db::DbConfig::from_url(url, "oc_") {
        Ok(_) => Ok(()),
        Err(crate::db::DatabaseError::InvalidUrl { reason, .. }) => Err(reason),
        Err(e) => Err(e.to_string()),
    }
}

/// What config.php contributed. Sub-results that only matter when no override replaces them
/// are kept as `Result` so an override can make a bad entry irrelevant.
struct FromPhp {
    path: PathBuf,
    nextcloud_url: Option<String>,
    redis: Result<RedisConfig, (&'static str, String)>,
    database: Result<String, String>,
    table_prefix: String,
}

fn read_config_php(path: &Path, overrides: &Overrides) -> Result<FromPhp, ConfigError> {
    let original = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Read { path: path.to_path_buf(), reason: e.to_string() })?;
    // config.php and its `*.config.php` companions as Nextcloud reads them: evaluated by the PHP
    // CLI and printed as one literal (crate::php_config); without PHP, read literally.
    let files = crate::php_config::config_files(path);
    // PHP only where the literal parser could read something else than Nextcloud: companions
    // (possibly PHP code) or NC_ variables. A lone config.php (what Nextcloud writes) is read
    // literally, with no process started while Apache (re)reads its configuration.
    let nc_env = std::env::vars_os().any(|(name, _)| name.to_string_lossy().starts_with("NC_"));
    let evaluated = if files.len() > 1 || nc_env {
        crate::php_config::evaluate(path)
    } else {
        crate::php_config::Evaluated::NoPhp
    };
    let rendered = match &evaluated {
        crate::php_config::Evaluated::Literal(text) => {
            Some(Rendered::write(text).map_err(|e| ConfigError::Read {
                path: path.to_path_buf(),
                reason: format!("cannot write the evaluated configuration: {e}"),
            })?)
        }
        _ => None,
    };
    let text = match &evaluated {
        crate::php_config::Evaluated::Literal(text) => text.clone(),
        _ => original,
    };
    // The files the literal parser reads when nothing is injected.
    let companions: &[PathBuf] = if rendered.is_some() { &[] } else { &files[1..] };
    let source = rendered.as_ref().map_or(path, |r| r.file.as_path());
    let php_note = match &evaluated {
        crate::php_config::Evaluated::Failed(why) => format!(" (PHP could not evaluate it: {why})"),
        crate::php_config::Evaluated::NoPhp if !companions.is_empty() => {
            " (read without PHP: install the PHP CLI, php-cli, if a *.config.php file holds PHP \
             code such as getenv())"
                .to_owned()
        }
        _ => String::new(),
    };

    // nextcloud-config-parser rejects a file without overwrite.cli.url or without usable
    // database keys as a whole. When a directive replaces the missing value, parse a copy with a
    // placeholder for the absent key (absent keys only: the position of an injected key does not
    // matter then), so the rest of config.php is still used.
    let mut injected: Vec<(&str, &str)> = Vec::new();
    let mut url_injected = false;
    loop {
        // nextcloud-config-parser panics on some inputs (an incomplete `pgsql_ssl` array);
        // a bad config.php must refuse startup with a message, never take Apache down.
        let parsed = std::panic::catch_unwind(|| {
            if !injected.is_empty() {
                parse_with_injected(source, &text, &injected, companions)
            } else if companions.is_empty() {
                ncp::parse(source)
            } else {
                ncp::parse_glob(source)
            }
        })
        .map_err(|_| ConfigError::Parse {
            path: path.to_path_buf(),
            reason: "the config.php parser failed on this file (an incomplete 'pgsql_ssl' \
                     array is a known cause)"
                .into(),
        })?;
        match parsed {
            Ok(config) => {
                let redis_source =
                    config.notify_push_redis.as_ref().map(|r| (r, "notify_push_redis"));
                let (redis_cfg, key) = redis_source.unwrap_or((&config.redis, "redis"));
                let database = if injected.iter().any(|(k, _)| *k == "dbtype") {
                    Err(String::new())
                } else {
                    Ok(crate::db::database_url(&config.database))
                };
                return Ok(FromPhp {
                    path: path.to_path_buf(),
                    nextcloud_url: if url_injected {
                        None
                    } else {
                        Some(config.nextcloud_url.clone())
                    },
                    redis: redis_from_php(redis_cfg, key),
                    database,
                    table_prefix: config.database_prefix.clone(),
                });
            }
            Err(ncp::Error::NoUrl) if !url_injected => {
                if overrides.nextcloud_url.is_none() {
                    return Err(ConfigError::NoNextcloudUrl { path: path.to_path_buf() });
                }
                url_injected = true;
                injected.push(("overwrite.cli.url", "http://placeholder.invalid/"));
            }
            Err(ncp::Error::InvalidDb(db))
                if overrides.database_url.is_some()
                    && !injected.iter().any(|(k, _)| *k == "dbtype")
                    && !matches!(db, ncp::DbError::Unsupported(_)) =>
            {
                // The database keys are incomplete but NextcloudPushDatabase replaces them.
                injected.push(("dbtype", "sqlite3"));
                injected.push(("datadirectory", "/placeholder.invalid"));
                injected.push(("dbuser", "placeholder"));
                injected.push(("dbpassword", "placeholder"));
            }
            Err(ncp::Error::InvalidDb(db)) => {
                return Err(ConfigError::Database {
                    path: path.to_path_buf(),
                    reason: db.to_string(),
                })
            }
            Err(ncp::Error::ReadFailed(e, _)) => {
                return Err(ConfigError::Read { path: path.to_path_buf(), reason: e.to_string() })
            }
            Err(ncp::Error::Redis) => {
                return Err(ConfigError::Redis {
                    path: path.to_path_buf(),
                    key: "redis",
                    reason: "invalid Redis configuration".into(),
                })
            }
            Err(e) => {
                return Err(ConfigError::Parse {
                    path: path.to_path_buf(),
                    reason: format!("{}{php_note}", one_line(&e.to_string())),
                })
            }
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Parses a copy of config.php with `key => value` pairs added right after the opening bracket
/// of the last `$CONFIG` array.
fn parse_with_injected(
    path: &Path,
    text: &str,
    pairs: &[(&str, &str)],
    companions: &[PathBuf],
) -> Result<ncp::Config, ncp::Error> {
    let not_a_config =
        || ncp::Error::NotAConfig(ncp::NotAConfigError::NoConfig(path.to_path_buf()));
    let start = text.rfind("$CONFIG").ok_or_else(not_a_config)?;
    let rest = &text[start..];
    let eq = rest.find('=').ok_or_else(not_a_config)?;
    let after_eq = &rest[eq + 1..];
    let open = after_eq.find(['(', '[']).ok_or_else(not_a_config)?;
    let insert_at = start + eq + 1 + open + 1;
    let mut addition = String::new();
    for (key, value) in pairs {
        addition.push_str(&format!("'{key}' => '{value}', "));
    }
    let patched = format!("{}{}{}", &text[..insert_at], addition, &text[insert_at..]);
    let dir = tempfile_dir()?;
    let file = dir.join("config.php");
    std::fs::write(&file, patched).map_err(|e| ncp::Error::ReadFailed(e, file.clone()))?;
    for companion in companions {
        if let Some(name) = companion.file_name() {
            let copy = std::fs::copy(companion, dir.join(name));
            copy.map_err(|e| ncp::Error::ReadFailed(e, companion.clone()))?;
        }
    }
    let result = if companions.is_empty() { ncp::parse(&file) } else { ncp::parse_glob(&file) };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The evaluated configuration in a private (0700) temporary directory, removed on drop.
struct Rendered {
    dir: PathBuf,
    file: PathBuf,
}

impl Rendered {
    fn write(text: &str) -> Result<Rendered, ncp::Error> {
        let dir = tempfile_dir()?;
        let file = dir.join("config.php");
        let rendered = Rendered { dir, file };
        std::fs::write(&rendered.file, text)
            .map_err(|e| ncp::Error::ReadFailed(e, rendered.file.clone()))?;
        Ok(rendered)
    }
}

impl Drop for Rendered {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn tempfile_dir() -> Result<PathBuf, ncp::Error> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "nextcloud-push-config-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    // 0700: the copy holds config.php's secrets for the duration of one parse.
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&dir)
        .map_err(|e| ncp::Error::ReadFailed(e, dir.clone()))?;
    Ok(dir)
}

fn redis_from_php(
    config: &ncp::RedisConfig,
    key: &'static str,
) -> Result<RedisConfig, (&'static str, String)> {
    match config {
        ncp::RedisConfig::Single(info) => {
            let url = redis_url_from_info(info).map_err(|reason| (key, reason))?;
            Ok(RedisConfig { url, cluster_seeds: Vec::new(), tls: tls_from_info(info) })
        }
        ncp::RedisConfig::Cluster(cluster) => {
            let cluster_key =
                if key == "redis" { "redis.cluster" } else { "notify_push_redis.cluster" };
            // The parser already sorted the seeds; the first one carries the pub/sub connection.
            let infos: Vec<_> = cluster.iter().collect();
            let seeds = infos
                .iter()
                .map(redis_url_from_info)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|reason| (cluster_key, reason))?;
            let first =
                seeds.first().cloned().ok_or((cluster_key, "no seeds configured".to_string()))?;
            Ok(RedisConfig {
                url: first,
                cluster_seeds: seeds,
                tls: infos.first().and_then(tls_from_info),
            })
        }
    }
}

fn tls_from_info(info: &ncp::RedisConnectionInfo) -> Option<RedisTls> {
    let tls = info.tls_params.as_ref()?;
    Some(RedisTls {
        client_cert: tls.local_cert.clone(),
        client_key: tls.local_pk.clone(),
        ca_file: tls.ca_file.clone(),
        accept_invalid_hostname: tls.accept_invalid_hostname,
    })
}

fn redis_url_from_info(info: &ncp::RedisConnectionInfo) -> Result<String, String> {
    let url = match &info.addr {
        ncp::RedisConnectionAddr::Tcp { host, port, tls } => {
            let tls = *tls || info.tls_params.is_some();
            let mut userinfo = String::new();
            if let Some(user) = &info.username {
                userinfo.push_str(&percent_encode(user));
            }
            if let Some(pass) = &info.password {
                userinfo.push(':');
                userinfo.push_str(&percent_encode(pass));
            }
            if !userinfo.is_empty() {
                userinfo.push('@');
            }
            let host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            let scheme = if tls { "rediss" } else { "redis" };
            let insecure = info.tls_params.as_ref().is_some_and(|t| t.insecure);
            let fragment = if insecure { "#insecure" } else { "" };
            format!("{scheme}://{userinfo}{host}:{port}/{}{fragment}", info.db)
        }
        ncp::RedisConnectionAddr::Unix { path } => {
            let mut url = format!("redis+unix://{}?db={}", path.display(), info.db);
            if let Some(user) = &info.username {
                url.push_str(&format!("&user={}", percent_encode(user)));
            }
            if let Some(pass) = &info.password {
                url.push_str(&format!("&pass={}", percent_encode(pass)));
            }
            url
        }
    };
    validate_redis_url(&url)?;
    Ok(url)
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Replaces the password part of a URL (`user:pass@` or `pass=` query) with `***` for logs.
pub(crate) fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some((scheme, rest)) = url.split_once("://") {
        // The user info ends at the authority's last '@' (a password may hold '@'); the
        // authority ends at the first '/', '?' or '#'.
        let authority = rest.find(['/', '?', '#']).map_or(rest, |end| &rest[..end]);
        if let Some(at) = authority.rfind('@') {
            let userinfo = &rest[..at];
            if let Some((user, _)) = userinfo.split_once(':') {
                out = format!("{scheme}://{user}:***{}", &rest[at..]);
            }
        }
    }
    if let Some(pos) = out.find("pass=") {
        let end = out[pos..].find('&').map(|e| pos + e).unwrap_or(out.len());
        out.replace_range(pos + 5..end, "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The evaluated config.php (with its secrets) lives in a 0700 directory for one parse
    /// and is gone once dropped.
    #[test]
    fn the_rendered_copy_is_private_and_removed() {
        let rendered = Rendered::write("<?php $CONFIG = ['dbpassword' => 's3cret'];").unwrap();
        let dir = rendered.dir.clone();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(std::fs::read_to_string(&rendered.file).unwrap().contains("s3cret"));
        drop(rendered);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
