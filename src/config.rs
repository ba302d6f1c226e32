//! Per-virtual-host configuration: the `NextcloudPush*` directive values (all optional, merged
//! main server → vhost) and their conversion into the engine's validated [`EngineConfig`].
//!
//! The values live in httpd's configuration pool (see `apache::server_config`), never in Rust
//! globals: httpd parses the configuration twice at startup and again on every restart, and
//! dlcloses the module in between.

use crate::error::DirectiveError;
use nextcloud_push_engine::error::ConfigError;
use nextcloud_push_engine::{EngineConfig, Overrides};
use std::path::PathBuf;

/// Default `NextcloudPushPath`.
pub const DEFAULT_PATH: &str = "/push";
/// Default `NextcloudPushSocket`, relative to `DefaultRuntimeDir`.
pub const DEFAULT_SOCKET: &str = "nextcloud-push.sock";
/// The longest socket path `sockaddr_un` holds (108 bytes with the terminating NUL).
pub const MAX_SOCKET_PATH: usize = 107;
/// Upper bound for the duration directives, to catch typos such as milliseconds.
const MAX_SECONDS: u64 = 7 * 24 * 3600;

/// One `NextcloudPush*` directive. The discriminant travels through httpd's `cmd_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Directive {
    Config = 1,
    Path,
    NextcloudUrl,
    Redis,
    Database,
    TablePrefix,
    AllowSelfSigned,
    MaxDebounceTime,
    MaxConnectionTime,
    Debounce,
    Socket,
    /// `NextcloudPushLoopback On|Off`: reach Nextcloud through this vhost over loopback and
    /// vouch for the client address.
    Loopback,
    /// `NextcloudPushMetrics On|Off`: serve `<path>/metrics`.
    Metrics,
    /// `NextcloudPushTlsHandoff On|Off`: move wss sessions' TLS state to the daemon.
    TlsHandoff,
    /// `NextcloudPushMaxBridged N`: at most N wss sessions bridged by workers at once.
    MaxBridged,
}

impl Directive {
    pub const ALL: [Directive; 15] = [
        Directive::AllowSelfSigned,
        Directive::Config,
        Directive::Database,
        Directive::Debounce,
        Directive::Loopback,
        Directive::MaxBridged,
        Directive::MaxConnectionTime,
        Directive::MaxDebounceTime,
        Directive::Metrics,
        Directive::NextcloudUrl,
        Directive::Path,
        Directive::Redis,
        Directive::Socket,
        Directive::TablePrefix,
        Directive::TlsHandoff,
    ];

    pub fn from_id(id: usize) -> Option<Directive> {
        Directive::ALL.into_iter().find(|d| *d as usize == id)
    }

    pub fn name(self) -> &'static str {
        match self {
            Directive::Config => "NextcloudPushConfig",
            Directive::Path => "NextcloudPushPath",
            Directive::NextcloudUrl => "NextcloudPushNextcloudUrl",
            Directive::Redis => "NextcloudPushRedis",
            Directive::Database => "NextcloudPushDatabase",
            Directive::TablePrefix => "NextcloudPushTablePrefix",
            Directive::AllowSelfSigned => "NextcloudPushAllowSelfSigned",
            Directive::MaxDebounceTime => "NextcloudPushMaxDebounceTime",
            Directive::MaxConnectionTime => "NextcloudPushMaxConnectionTime",
            Directive::Debounce => "NextcloudPushDebounce",
            Directive::Socket => "NextcloudPushSocket",
            Directive::Loopback => "NextcloudPushLoopback",
            Directive::Metrics => "NextcloudPushMetrics",
            Directive::TlsHandoff => "NextcloudPushTlsHandoff",
            Directive::MaxBridged => "NextcloudPushMaxBridged",
        }
    }

    /// `On|Off` directives (httpd's FLAG type); every other directive takes one argument.
    pub const fn is_flag(self) -> bool {
        matches!(
            self,
            Directive::AllowSelfSigned
                | Directive::Debounce
                | Directive::Loopback
                | Directive::Metrics
                | Directive::TlsHandoff
        )
    }

    /// Directives that may only appear outside `<VirtualHost>`.
    pub const fn is_server_wide(self) -> bool {
        matches!(self, Directive::Socket | Directive::MaxBridged)
    }
}

/// What httpd keeps per server (main or virtual host) for this module: the directive values,
/// merged main server → vhost, and what the parent works out from them at startup, which is
/// never merged (every pass fills it anew).
#[derive(Clone, Debug, Default)]
pub struct ServerConfig {
    pub directives: Directives,
    pub runtime: Runtime,
}

impl ServerConfig {
    /// `add`'s directives win field by field; the runtime part starts empty.
    pub fn merge(base: &ServerConfig, add: &ServerConfig) -> ServerConfig {
        ServerConfig {
            directives: Directives::merge(&base.directives, &add.directives),
            runtime: Runtime::default(),
        }
    }
}

/// Filled by the Apache parent for a push-enabled server (children inherit it by fork).
#[derive(Clone, Debug, Default)]
pub struct Runtime {
    /// `check_config`: the validated engine configuration.
    pub engine: Option<EngineConfig>,
    /// `check_config`: the daemon socket (absolute), the same for every server.
    pub socket_path: Option<PathBuf>,
    /// `post_config`: which of the daemon's engines serves this server.
    pub engine_index: Option<u32>,
    /// `post_config`: that engine configuration's fingerprint (sent in the Hello).
    pub engine_fingerprint: Option<String>,
    /// `post_config`, for every server while a push daemon runs: the daemon's client-IP
    /// vouching key (see `apache::vouch`).
    pub vouch_key: Option<nextcloud_push_engine::vouch::VouchKey>,
    /// `post_config`: how many wss sessions workers may bridge at once (sent in bridged Hellos).
    pub max_bridged: Option<u32>,
    /// `post_config`: a push daemon runs for this configuration (`server-status` asks it).
    pub daemon: bool,
}

/// The directive values of one server. `None` = not set here.
#[derive(Clone, Debug, Default)]
pub struct Directives {
    /// `NextcloudPushConfig`, already resolved against `ServerRoot`.
    pub config_php: Option<PathBuf>,
    /// `NextcloudPushPath`: begins with `/`, no trailing slash.
    pub path: Option<String>,
    pub nextcloud_url: Option<String>,
    /// `NextcloudPushRedis`: one URL (a server) or several (the seeds of a Redis Cluster).
    pub redis: Vec<String>,
    pub database: Option<String>,
    pub table_prefix: Option<String>,
    pub allow_self_signed: Option<bool>,
    pub max_debounce_time: Option<u64>,
    pub max_connection_time: Option<u64>,
    pub debounce: Option<bool>,
    /// `NextcloudPushSocket` as written (main server only); resolved in `check_config`.
    pub socket: Option<String>,
    /// `NextcloudPushLoopback` (default On).
    pub loopback: Option<bool>,
    /// `NextcloudPushMetrics` (default Off).
    pub metrics: Option<bool>,
    /// `NextcloudPushTlsHandoff` (default On).
    pub tls_handoff: Option<bool>,
    /// `NextcloudPushMaxBridged` (main server only; default: a quarter of MaxRequestWorkers).
    pub max_bridged: Option<u32>,
}

impl Directives {
    /// `add` wins field by field; the server-wide socket is always the main server's.
    pub fn merge(base: &Directives, add: &Directives) -> Directives {
        Directives {
            config_php: add.config_php.clone().or_else(|| base.config_php.clone()),
            path: add.path.clone().or_else(|| base.path.clone()),
            nextcloud_url: add.nextcloud_url.clone().or_else(|| base.nextcloud_url.clone()),
            redis: if add.redis.is_empty() { base.redis.clone() } else { add.redis.clone() },
            database: add.database.clone().or_else(|| base.database.clone()),
            table_prefix: add.table_prefix.clone().or_else(|| base.table_prefix.clone()),
            allow_self_signed: add.allow_self_signed.or(base.allow_self_signed),
            max_debounce_time: add.max_debounce_time.or(base.max_debounce_time),
            max_connection_time: add.max_connection_time.or(base.max_connection_time),
            debounce: add.debounce.or(base.debounce),
            socket: base.socket.clone(),
            loopback: add.loopback.or(base.loopback),
            metrics: add.metrics.or(base.metrics),
            tls_handoff: add.tls_handoff.or(base.tls_handoff),
            max_bridged: base.max_bridged,
        }
    }

    /// Push is enabled for a server with a config.php, or with both a Nextcloud URL and Redis.
    pub fn is_enabled(&self) -> bool {
        self.config_php.is_some() || (self.nextcloud_url.is_some() && !self.redis.is_empty())
    }

    /// The URL path prefix, default `/push`.
    pub fn base_path(&self) -> &str {
        self.path.as_deref().unwrap_or(DEFAULT_PATH)
    }

    /// `NextcloudPushLoopback`, default On.
    pub fn loopback_enabled(&self) -> bool {
        self.loopback.unwrap_or(true)
    }

    /// `NextcloudPushMetrics`, default Off.
    pub fn metrics_enabled(&self) -> bool {
        self.metrics.unwrap_or(false)
    }

    /// `NextcloudPushTlsHandoff`, default On.
    pub fn tls_handoff_enabled(&self) -> bool {
        self.tls_handoff.unwrap_or(true)
    }

    pub fn overrides(&self) -> Overrides {
        Overrides {
            nextcloud_url: self.nextcloud_url.clone(),
            redis_url: self.redis.first().cloned(),
            redis_cluster_seeds: if self.redis.len() > 1 { self.redis.clone() } else { Vec::new() },
            database_url: self.database.clone(),
            table_prefix: self.table_prefix.clone(),
            allow_self_signed: self.allow_self_signed,
            max_debounce_time: self.max_debounce_time,
            max_connection_time: self.max_connection_time,
            debounce: self.debounce,
        }
    }

    /// Cross-field validation: reads config.php and applies the overrides.
    pub fn load_engine_config(&self) -> Result<EngineConfig, ConfigError> {
        EngineConfig::load(self.config_php.as_deref(), &self.overrides())
    }

    /// Stores one TAKE1 directive value. `config_php` is the argument already resolved against
    /// `ServerRoot` (httpd does that, see the directive trampoline); the error names the
    /// directive so httpd can print it with file and line.
    pub fn set(&mut self, d: Directive, arg: &str) -> Result<(), DirectiveError> {
        let err = |why: &str| DirectiveError::Value { directive: d, reason: why.to_owned() };
        if arg.is_empty() {
            return Err(err("needs a non-empty argument"));
        }
        match d {
            Directive::Config => self.config_php = Some(PathBuf::from(arg)),
            Directive::Path => {
                validate_base_path(arg).map_err(|why| err(&why))?;
                self.path = Some(arg.to_owned());
            }
            Directive::NextcloudUrl => {
                if !(arg.starts_with("http://") || arg.starts_with("https://")) {
                    return Err(err(&format!("\"{arg}\" is not an http:// or https:// URL")));
                }
                self.nextcloud_url = Some(arg.to_owned());
            }
            Directive::Redis => {
                const SCHEMES: [&str; 4] = ["redis://", "rediss://", "unix://", "redis+unix://"];
                if !SCHEMES.iter().any(|s| arg.starts_with(s)) {
                    return Err(err(&format!(
                        "\"{arg}\" is not a Redis URL (redis://host:port/db, rediss://..., unix:///path)"
                    )));
                }
                // ITERATE: httpd calls once per URL of the line.
                self.redis.push(arg.to_owned());
            }
            Directive::Database => {
                const SCHEMES: [&str; 5] =
                    ["mysql://", "mariadb://", "postgres://", "postgresql://", "sqlite://"];
                if !SCHEMES.iter().any(|s| arg.starts_with(s)) {
                    return Err(err(&format!(
                        "\"{arg}\" is not a database URL (mysql://, mariadb://, postgres://, \
                         postgresql://, sqlite://)"
                    )));
                }
                self.database = Some(arg.to_owned());
            }
            Directive::MaxBridged => {
                let n = arg.parse::<u32>().map_err(|_| {
                    err(&format!("\"{arg}\" is not a number of sessions (0 or more)"))
                })?;
                self.max_bridged = Some(n);
            }
            Directive::TablePrefix => {
                if !arg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(err("only ASCII letters, digits and _ are allowed"));
                }
                self.table_prefix = Some(arg.to_owned());
            }
            Directive::MaxDebounceTime => {
                let secs = parse_seconds(arg).map_err(|why| err(&why))?;
                if secs == 0 {
                    return Err(err("must be at least 1 second (use NextcloudPushDebounce Off)"));
                }
                self.max_debounce_time = Some(secs);
            }
            Directive::MaxConnectionTime => {
                self.max_connection_time = Some(parse_seconds(arg).map_err(|why| err(&why))?);
            }
            Directive::Socket => {
                if arg.ends_with('/') {
                    return Err(err("must name a socket file, not a directory"));
                }
                if arg.len() > MAX_SOCKET_PATH {
                    return Err(err(&format!("longer than {MAX_SOCKET_PATH} bytes")));
                }
                self.socket = Some(arg.to_owned());
            }
            Directive::AllowSelfSigned
            | Directive::Debounce
            | Directive::Loopback
            | Directive::Metrics
            | Directive::TlsHandoff => {
                return Err(err("takes On or Off"));
            }
        }
        Ok(())
    }

    /// Stores one FLAG directive value.
    pub fn set_flag(&mut self, d: Directive, on: bool) -> Result<(), DirectiveError> {
        match d {
            Directive::AllowSelfSigned => self.allow_self_signed = Some(on),
            Directive::Debounce => self.debounce = Some(on),
            Directive::Loopback => self.loopback = Some(on),
            Directive::Metrics => self.metrics = Some(on),
            Directive::TlsHandoff => self.tls_handoff = Some(on),
            _ => {
                return Err(DirectiveError::Value {
                    directive: d,
                    reason: "takes one argument, not On|Off".into(),
                })
            }
        }
        Ok(())
    }
}

/// `NextcloudPushPath`: begins with `/`, is not `/` alone, has no trailing slash, no query,
/// no whitespace and no `.`/`..` segments.
pub fn validate_base_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("\"{path}\" must start with /"));
    }
    if path == "/" {
        return Err("\"/\" would claim the whole site; use a prefix such as /push".to_owned());
    }
    if path.ends_with('/') {
        return Err(format!("\"{path}\" must not end with /"));
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control() || c == '?' || c == '#') {
        return Err(format!("\"{path}\" must be a plain URL path"));
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(format!("\"{path}\" must not contain . or .. segments"));
    }
    if path[1..].split('/').any(str::is_empty) {
        return Err(format!("\"{path}\" must not contain //"));
    }
    Ok(())
}

/// Seconds, optionally with a unit suffix: `30`, `30s`, `5m`, `2h`.
pub fn parse_seconds(arg: &str) -> Result<u64, String> {
    let (digits, mult) = match arg.as_bytes().last() {
        Some(b's') => (&arg[..arg.len() - 1], 1),
        Some(b'm') => (&arg[..arg.len() - 1], 60),
        Some(b'h') => (&arg[..arg.len() - 1], 3600),
        _ => (arg, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("\"{arg}\" is not a number of seconds (e.g. 30, 30s, 5m, 2h)"))?;
    n.checked_mul(mult)
        .filter(|s| *s <= MAX_SECONDS)
        .ok_or_else(|| format!("\"{arg}\" is too long (at most {MAX_SECONDS} seconds)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directive_ids_round_trip() {
        for d in Directive::ALL {
            assert_eq!(Directive::from_id(d as usize), Some(d));
        }
        assert_eq!(Directive::from_id(0), None);
        assert_eq!(Directive::from_id(99), None);
    }

    #[test]
    fn base_path_rules() {
        assert!(validate_base_path("/push").is_ok());
        assert!(validate_base_path("/nextcloud/push").is_ok());
        for bad in ["push", "/", "/push/", "/pu sh", "/push?x", "/a/../push", "//push", "/a//b"] {
            assert!(validate_base_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn seconds() {
        assert_eq!(parse_seconds("15"), Ok(15));
        assert_eq!(parse_seconds("15s"), Ok(15));
        assert_eq!(parse_seconds("2m"), Ok(120));
        assert_eq!(parse_seconds("1h"), Ok(3600));
        assert!(parse_seconds("").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("1.5").is_err());
        assert!(parse_seconds("99999999999h").is_err());
        // At most a week: a typo in milliseconds is refused.
        assert_eq!(parse_seconds("168h"), Ok(604_800));
        assert!(parse_seconds("604801").is_err());
    }

    #[test]
    fn set_names_the_directive() {
        let mut c = Directives::default();
        let e = c.set(Directive::Path, "push").unwrap_err().to_string();
        assert!(e.starts_with("NextcloudPushPath: "), "{e}");
        let e = c.set(Directive::MaxDebounceTime, "0").unwrap_err().to_string();
        assert!(e.starts_with("NextcloudPushMaxDebounceTime: "), "{e}");
        let e = c.set(Directive::Redis, "localhost:6379").unwrap_err().to_string();
        assert!(e.starts_with("NextcloudPushRedis: "), "{e}");
        let e = c.set(Directive::NextcloudUrl, "cloud.example.com").unwrap_err().to_string();
        assert!(e.starts_with("NextcloudPushNextcloudUrl: "), "{e}");
        let e = c.set(Directive::TablePrefix, "oc-").unwrap_err().to_string();
        assert!(e.starts_with("NextcloudPushTablePrefix: "), "{e}");
        assert!(c.set_flag(Directive::Path, true).is_err());
    }

    #[test]
    fn loopback_and_metrics_flags() {
        let mut main = ServerConfig::default();
        assert!(main.directives.loopback_enabled(), "loopback is on by default");
        assert!(!main.directives.metrics_enabled(), "metrics are off by default");
        main.directives.set_flag(Directive::Loopback, false).unwrap();
        main.runtime.vouch_key = Some(nextcloud_push_engine::vouch::VouchKey::generate());
        let mut vhost = ServerConfig::default();
        vhost.directives.set_flag(Directive::Metrics, true).unwrap();
        let merged = ServerConfig::merge(&main, &vhost);
        assert!(!merged.directives.loopback_enabled());
        assert!(merged.directives.metrics_enabled());
        assert!(merged.runtime.vouch_key.is_none(), "filled in post_config only");
        let e = main.directives.set(Directive::Loopback, "yes").unwrap_err().to_string();
        assert!(e.starts_with("NextcloudPushLoopback: "), "{e}");
    }

    #[test]
    fn merge_and_enabled() {
        let mut main = Directives::default();
        main.set(Directive::Socket, "/run/x.sock").unwrap();
        main.set(Directive::Redis, "redis://127.0.0.1").unwrap();
        main.set_flag(Directive::Debounce, false).unwrap();
        assert!(!main.is_enabled());
        let mut vhost = Directives::default();
        vhost.set(Directive::NextcloudUrl, "http://cloud").unwrap();
        vhost.set(Directive::Socket, "/ignored.sock").unwrap();
        let merged = Directives::merge(&main, &vhost);
        assert!(merged.is_enabled());
        assert_eq!(merged.socket.as_deref(), Some("/run/x.sock"));
        assert_eq!(merged.debounce, Some(false));
        assert_eq!(merged.base_path(), "/push");
        let o = merged.overrides();
        assert_eq!(o.redis_url.as_deref(), Some("redis://127.0.0.1"));
        assert!(o.redis_cluster_seeds.is_empty(), "one Redis URL is no cluster");
        assert_eq!(o.nextcloud_url.as_deref(), Some("http://cloud"));
        // Several URLs are the seeds of a Redis Cluster.
        let mut cluster = Directives::default();
        for port in [7000, 7001, 7002] {
            cluster.set(Directive::Redis, &format!("redis://127.0.0.1:{port}")).unwrap();
        }
        let o = cluster.overrides();
        assert_eq!(o.redis_url.as_deref(), Some("redis://127.0.0.1:7000"));
        assert_eq!(o.redis_cluster_seeds.len(), 3);
    }
}
