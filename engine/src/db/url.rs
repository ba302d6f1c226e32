//! Database connection settings: from Nextcloud's config.php (as parsed by
//! `nextcloud-config-parser`) or from a `NextcloudPushDatabase` URL, to sqlx connect options.
//!
//! Both sources produce the same [`DbConfig`]; [`database_url`] turns a config.php database into
//! a URL that [`DbConfig::from_url`] reads back into the identical [`DbConfig`], so the engine
//! can keep one `database_url` string in its configuration without losing anything (unlike
//! `Database::url()` of the parser, which drops the MySQL client certificate and key).
//!
//! What config.php gives (spec §3), and where it is handled:
//! * `dbhost` forms `host`, `host:port`, `host:/socket`, `[v6]:port`, bare `/socket`, pgsql
//!   `;key=value` options, `dbport`, `dbname` (default `owncloud`), MySQL `localhost` socket
//!   auto-detection, "raw IP disables TLS", pgsql `pgsql_ssl`: the parser, kept as is.
//! * `[v6]` brackets, an empty MySQL host, the pgsql `.s.PGSQL.<port>` socket file given in a
//!   URL, the MySQL client certificate/key (PDO 1007/1008) and percent-encoding of names: here.

use nextcloud_config_parser as ncp;
use sqlx::mysql::{MySqlConnectOptions, MySqlSslMode};
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::sqlite::SqliteConnectOptions;
use std::fmt;
use std::path::{Path, PathBuf};

use super::DatabaseError;

/// The default table prefix (spec §3).
pub const DEFAULT_PREFIX: &str = "oc_";

/// Which database server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbKind {
    MySql,
    Postgres,
    Sqlite,
}

impl fmt::Display for DbKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DbKind::MySql => "mysql",
            DbKind::Postgres => "postgres",
            DbKind::Sqlite => "sqlite",
        })
    }
}

/// TLS policy. `Default` is the driver default (MySQL `PREFERRED`, PostgreSQL `prefer`: TLS when
/// the server offers it, certificates not verified).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsMode {
    #[default]
    Default,
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    /// PostgreSQL `verify-full`, MySQL `VERIFY_IDENTITY`.
    VerifyFull,
}

impl TlsMode {
    /// Accepts the PostgreSQL (`disable`, `allow`, `prefer`, `require`, `verify-ca`,
    /// `verify-full`) and the MySQL (`disabled`, `preferred`, `required`, `verify_ca`,
    /// `verify_identity`) spellings, case-insensitively, for either server.
    pub fn parse(value: &str) -> Option<TlsMode> {
        let value = value.to_ascii_lowercase().replace('_', "-");
        Some(match value.as_str() {
            "disable" | "disabled" => TlsMode::Disable,
            "allow" => TlsMode::Allow,
            "prefer" | "preferred" => TlsMode::Prefer,
            "require" | "required" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" | "verify-identity" => TlsMode::VerifyFull,
            _ => return None,
        })
    }

    fn mysql(self) -> MySqlSslMode {
        match self {
            TlsMode::Default | TlsMode::Allow | TlsMode::Prefer => MySqlSslMode::Preferred,
            TlsMode::Disable => MySqlSslMode::Disabled,
            TlsMode::Require => MySqlSslMode::Required,
            TlsMode::VerifyCa => MySqlSslMode::VerifyCa,
            TlsMode::VerifyFull => MySqlSslMode::VerifyIdentity,
        }
    }

    fn postgres(self) -> PgSslMode {
        match self {
            TlsMode::Default | TlsMode::Prefer => PgSslMode::Prefer,
            TlsMode::Disable => PgSslMode::Disable,
            TlsMode::Allow => PgSslMode::Allow,
            TlsMode::Require => PgSslMode::Require,
            TlsMode::VerifyCa => PgSslMode::VerifyCa,
            TlsMode::VerifyFull => PgSslMode::VerifyFull,
        }
    }

    fn mysql_name(self) -> Option<&'static str> {
        Some(match self {
            TlsMode::Default => return None,
            TlsMode::Disable => "disabled",
            TlsMode::Allow | TlsMode::Prefer => "preferred",
            TlsMode::Require => "required",
            TlsMode::VerifyCa => "verify_ca",
            TlsMode::VerifyFull => "verify_identity",
        })
    }

    fn postgres_name(self) -> Option<&'static str> {
        Some(match self {
            TlsMode::Default => return None,
            TlsMode::Disable => "disable",
            TlsMode::Allow => "allow",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        })
    }
}

/// Everything needed to connect, independent of where it came from. `Debug` redacts the
/// password.
#[derive(Clone, PartialEq, Eq)]
pub struct DbConfig {
    pub kind: DbKind,
    /// TCP host without IPv6 brackets (`::1`); unused with a socket and for SQLite.
    pub host: String,
    pub port: u16,
    /// MySQL: the socket file. PostgreSQL: the directory holding `.s.PGSQL.<port>`.
    pub socket: Option<PathBuf>,
    /// Database name; for SQLite the database file.
    pub database: String,
    /// `None`: the driver default (MySQL `root`, PostgreSQL the OS user).
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: TlsMode,
    /// MySQL `ssl-ca` / PostgreSQL `sslrootcert`.
    pub tls_ca: Option<PathBuf>,
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
    /// PostgreSQL `application_name`.
    pub application_name: Option<String>,
    /// PostgreSQL `options` (e.g. `-c search_path=nc`).
    pub pg_options: Option<String>,
    /// Table prefix, validated: ASCII letters, digits, `_`.
    pub table_prefix: String,
}

impl fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DbConfig")
            .field("kind", &self.kind)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("socket", &self.socket)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "****"))
            .field("tls", &self.tls)
            .field("tls_ca", &self.tls_ca)
            .field("tls_client_cert", &self.tls_client_cert)
            .field("tls_client_key", &self.tls_client_key)
            .field("application_name", &self.application_name)
            .field("pg_options", &self.pg_options)
            .field("table_prefix", &self.table_prefix)
            .finish()
    }
}

/// The sqlx options for one database kind.
#[derive(Clone, Debug)]
pub(crate) enum ConnectOptions {
    MySql(MySqlConnectOptions),
    Postgres(PgConnectOptions),
    Sqlite(SqliteConnectOptions),
}

impl DbConfig {
    fn empty(kind: DbKind, table_prefix: &str) -> Result<DbConfig, DatabaseError> {
        Ok(DbConfig {
            kind,
            host: "localhost".into(),
            port: match kind {
                DbKind::MySql => 3306,
                DbKind::Postgres => 5432,
                DbKind::Sqlite => 0,
            },
            socket: None,
            database: String::new(),
            username: None,
            password: None,
            tls: TlsMode::Default,
            tls_ca: None,
            tls_client_cert: None,
            tls_client_key: None,
            application_name: None,
            pg_options: None,
            table_prefix: validate_prefix(table_prefix)?,
        })
    }

    /// From a `NextcloudPushDatabase` URL (spec §3 formats): `mysql://` / `mariadb://`
    /// `user:pass@host[:port]/db[?ssl-mode=…&ssl-ca=…&ssl-cert=…&ssl-key=…&socket=/path]`,
    /// `postgres://` / `postgresql://` `user:pass@host[:port]/db[?host=/socket/dir&sslmode=…&
    /// sslrootcert=…&sslcert=…&sslkey=…&port=…&dbname=…&user=…&password=…&application_name=…&
    /// options=…]`, `sqlite:///abs/path.db`. Unknown query keys are ignored (as sqlx does).
    pub fn from_url(url: &str, table_prefix: &str) -> Result<DbConfig, DatabaseError> {
        let invalid =
            |reason: String| DatabaseError::InvalidUrl { url: super::redact_url(url), reason };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("missing scheme (mysql://, postgres://, sqlite://)".into()))?;
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "mysql" | "mariadb" => DbKind::MySql,
            "postgres" | "postgresql" => DbKind::Postgres,
            "sqlite" | "sqlite3" => DbKind::Sqlite,
            other => {
                return Err(invalid(format!(
                    "unsupported scheme {other}:// (use mysql://, mariadb://, postgres://, postgresql:// or sqlite://)"
                )))
            }
        };
        let mut config = DbConfig::empty(kind, table_prefix)?;

        if kind == DbKind::Sqlite {
            let path = rest.split('?').next().unwrap_or_default();
            let path = percent_decode(path).map_err(invalid)?;
            if path.is_empty() {
                return Err(invalid("missing database file (sqlite:///absolute/path.db)".into()));
            }
            config.database = path;
            return Ok(config);
        }

        // Parse with a scheme the url crate treats generically (no special-scheme rules).
        let parsed =
            reqwest::Url::parse(&format!("db://{rest}")).map_err(|e| invalid(e.to_string()))?;
        if let Some(host) = parsed.host_str() {
            if !host.is_empty() {
                config.host = host.trim_start_matches('[').trim_end_matches(']').to_string();
            }
        }
        if let Some(port) = parsed.port() {
            config.port = port;
        }
        // The credentials from the raw text too: the url crate reads `:pw@` as no user and
        // `nc:@` as no password, but config.php's empty `dbuser`/`dbpassword` are values.
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            let (user, password) = match userinfo.split_once(':') {
                Some((user, password)) => (user, Some(password)),
                None => (userinfo, None),
            };
            config.username = Some(percent_decode(user).map_err(invalid)?);
            if let Some(password) = password {
                config.password = Some(percent_decode(password).map_err(invalid)?);
            }
        }
        // The database name from the raw text: the url crate would resolve a name of "." or
        // ".." as a dot segment and lose it.
        let after_authority = rest.find(['/', '?', '#']).map_or("", |end| &rest[end..]);
        let path = after_authority.split(['?', '#']).next().unwrap_or_default();
        config.database = percent_decode(path.trim_start_matches('/')).map_err(invalid)?;

        let mut explicit_port = parsed.port().is_some();
        let mut socket_port = None;
        for (key, value) in parsed.query_pairs() {
            let value = value.into_owned();
            match (kind, key.as_ref()) {
                (_, "sslmode" | "ssl-mode") => {
                    config.tls = TlsMode::parse(&value)
                        .ok_or_else(|| invalid(format!("unknown {key} value {value:?}")))?;
                }
                (DbKind::MySql, "ssl-ca" | "sslca") => config.tls_ca = Some(value.into()),
                (DbKind::Postgres, "sslrootcert" | "ssl-root-cert" | "ssl-ca") => {
                    config.tls_ca = Some(value.into())
                }
                (_, "sslcert" | "ssl-cert") => config.tls_client_cert = Some(value.into()),
                (_, "sslkey" | "ssl-key") => config.tls_client_key = Some(value.into()),
                (DbKind::MySql, "socket") => config.socket = Some(value.into()),
                (DbKind::Postgres, "host") => {
                    if value.starts_with('/') {
                        let (dir, port) = pg_socket_dir(Path::new(&value));
                        config.socket = Some(dir);
                        socket_port = port;
                    } else if !value.is_empty() {
                        config.host = value;
                    }
                }
                (DbKind::Postgres, "hostaddr") => config.host = value,
                (DbKind::Postgres, "port") => {
                    config.port =
                        value.parse().map_err(|_| invalid(format!("invalid port {value:?}")))?;
                    explicit_port = true;
                }
                (DbKind::Postgres, "dbname") => config.database = value,
                (DbKind::Postgres, "user") => config.username = Some(value),
                (DbKind::Postgres, "password") => config.password = Some(value),
                (DbKind::Postgres, "application_name") => config.application_name = Some(value),
                (DbKind::Postgres, "options") => config.pg_options = Some(value),
                _ => log::debug!(
                    target: "nextcloud_push::sql",
                    "database URL parameter {key:?} ignored"
                ),
            }
        }
        if let (Some(port), false) = (socket_port, explicit_port) {
            config.port = port;
        }
        Ok(config)
    }

    /// From the database section of config.php as `nextcloud-config-parser` read it, with the
    /// `dbtableprefix` (or an override) as `table_prefix`.
    pub fn from_nextcloud(
        database: &ncp::Database,
        table_prefix: &str,
    ) -> Result<DbConfig, DatabaseError> {
        match database {
            ncp::Database::Sqlite { database } => {
                let mut config = DbConfig::empty(DbKind::Sqlite, table_prefix)?;
                config.database = database.to_string_lossy().into_owned();
                Ok(config)
            }
            ncp::Database::MySql { database, username, password, connect, ssl_options } => {
                let mut config = DbConfig::empty(DbKind::MySql, table_prefix)?;
                config.database = database.clone();
                config.username = Some(username.clone());
                config.password = Some(password.clone());
                let raw_v6 = apply_connect(&mut config, connect);
                match ssl_options {
                    // a raw IP cannot match a certificate: no TLS, as the parser does for IPv4
                    ncp::SslOptions::Default if raw_v6 => config.tls = TlsMode::Disable,
                    ncp::SslOptions::Default => {}
                    ncp::SslOptions::Disabled => config.tls = TlsMode::Disable,
                    ncp::SslOptions::Enabled { key, cert, ca, verify } => {
                        // PDO verifies the CA always and the host name only with
                        // MYSQL_ATTR_SSL_VERIFY_SERVER_CERT (1014), which defaults to true.
                        config.tls = if *verify { TlsMode::VerifyFull } else { TlsMode::VerifyCa };
                        config.tls_ca = non_empty_path(ca);
                        config.tls_client_cert = non_empty_path(cert);
                        config.tls_client_key = non_empty_path(key);
                    }
                }
                Ok(config)
            }
            ncp::Database::Postgres { database, username, password, connect, options } => {
                let mut config = DbConfig::empty(DbKind::Postgres, table_prefix)?;
                config.database = database.clone();
                config.username = Some(username.clone());
                config.password = Some(password.clone());
                if apply_connect(&mut config, connect)
                    && !options.keys().any(|key| key.starts_with("ssl"))
                {
                    // as the parser does for a raw IPv4 host without pgsql_ssl
                    config.tls = TlsMode::Disable;
                }
                for (key, value) in options {
                    match key.as_str() {
                        "sslmode" => {
                            config.tls =
                                TlsMode::parse(value).ok_or_else(|| DatabaseError::InvalidUrl {
                                    url: format!("config.php dbhost/pgsql_ssl sslmode={value}"),
                                    reason: format!("unknown sslmode {value:?}"),
                                })?
                        }
                        "sslrootcert" => config.tls_ca = non_empty_path(value),
                        "sslcert" => config.tls_client_cert = non_empty_path(value),
                        "sslkey" => config.tls_client_key = non_empty_path(value),
                        "application_name" => config.application_name = Some(value.clone()),
                        "options" => config.pg_options = Some(value.clone()),
                        // dbname is already applied by the parser (`dbname` key first).
                        "dbname" => {}
                        "port" => {
                            if let Ok(port) = value.parse() {
                                config.port = port;
                            }
                        }
                        other => log::debug!(
                            target: "nextcloud_push::sql",
                            "config.php pgsql option {other:?} ignored"
                        ),
                    }
                }
                Ok(config)
            }
        }
    }

    /// A short description without secrets: `mysql root@127.0.0.1:3306/nextcloud`,
    /// `postgres nc@/run/postgresql:5432/nc`, `sqlite /var/www/data/owncloud.db`.
    pub fn describe(&self) -> String {
        if self.kind == DbKind::Sqlite {
            return format!("sqlite {}", self.database);
        }
        let user = self.username.as_deref().map(|u| format!("{u}@")).unwrap_or_default();
        let place = match &self.socket {
            Some(socket) => socket.display().to_string(),
            None if self.host.contains(':') => format!("[{}]:{}", self.host, self.port),
            None => format!("{}:{}", self.host, self.port),
        };
        let place = match (&self.socket, self.kind) {
            (Some(_), DbKind::Postgres) => format!("{place} port {}", self.port),
            _ => place,
        };
        format!("{} {user}{place}/{}", self.kind, self.database)
    }

    /// The sqlx connect options.
    pub(crate) fn connect_options(&self) -> ConnectOptions {
        match self.kind {
            DbKind::MySql => {
                let mut options = MySqlConnectOptions::new()
                    .host(&self.host)
                    .port(self.port)
                    .ssl_mode(self.tls.mysql())
                    .charset("utf8mb4");
                if let Some(socket) = &self.socket {
                    options = options.socket(socket);
                }
                if !self.database.is_empty() {
                    options = options.database(&self.database);
                }
                // Empty as PDO takes it: no user name (the driver's default), no password.
                if let Some(user) = self.username.as_deref().filter(|u| !u.is_empty()) {
                    options = options.username(user);
                }
                if let Some(password) = self.password.as_deref().filter(|p| !p.is_empty()) {
                    options = options.password(password);
                }
                if let Some(ca) = &self.tls_ca {
                    options = options.ssl_ca(ca);
                }
                if let Some(cert) = &self.tls_client_cert {
                    options = options.ssl_client_cert(cert);
                }
                if let Some(key) = &self.tls_client_key {
                    options = options.ssl_client_key(key);
                }
                ConnectOptions::MySql(options)
            }
            DbKind::Postgres => {
                // Without ~/.pgpass: the password comes from config.php or the URL only. As in
                // libpq, PG* environment variables still fill fields neither of them sets.
                let mut options = PgConnectOptions::new_without_pgpass()
                    .host(&self.host)
                    .port(self.port)
                    .ssl_mode(self.tls.postgres());
                if let Some(socket) = &self.socket {
                    options = options.socket(socket);
                }
                if !self.database.is_empty() {
                    options = options.database(&self.database);
                }
                // Empty as PDO takes it: no user name (the driver's default), no password.
                if let Some(user) = self.username.as_deref().filter(|u| !u.is_empty()) {
                    options = options.username(user);
                }
                if let Some(password) = self.password.as_deref().filter(|p| !p.is_empty()) {
                    options = options.password(password);
                }
                if let Some(ca) = &self.tls_ca {
                    options = options.ssl_root_cert(ca);
                }
                if let Some(cert) = &self.tls_client_cert {
                    options = options.ssl_client_cert(cert);
                }
                if let Some(key) = &self.tls_client_key {
                    options = options.ssl_client_key(key);
                }
                if let Some(name) = &self.application_name {
                    options = options.application_name(name);
                }
                if let Some(pg_options) = &self.pg_options {
                    for (key, value) in parse_pg_options(pg_options) {
                        options = options.options([(key, value)]);
                    }
                }
                ConnectOptions::Postgres(options)
            }
            DbKind::Sqlite => ConnectOptions::Sqlite(
                // Nextcloud's own database: never create it, never change its journal mode
                // (sqlx leaves journal_mode alone unless asked).
                SqliteConnectOptions::new().filename(&self.database).create_if_missing(false),
            ),
        }
    }
}

/// The config.php database as a URL that [`DbConfig::from_url`] reads back into exactly
/// `DbConfig::from_nextcloud(database, …)`. Use it instead of the parser's `Database::url()`,
/// which loses the MySQL client certificate and key and does not encode names.
pub fn database_url(database: &ncp::Database) -> String {
    // The prefix is not part of the URL; any valid one gives the same connection fields.
    let config = match DbConfig::from_nextcloud(database, DEFAULT_PREFIX) {
        Ok(config) => config,
        // Only an unknown pgsql sslmode can fail: let the parser's URL carry it so the error
        // surfaces (with the value) when the URL is read.
        Err(_) => return database.url(),
    };
    config_url(&config)
}

fn config_url(config: &DbConfig) -> String {
    if config.kind == DbKind::Sqlite {
        return format!("sqlite://{}", percent_encode_path(&config.database));
    }
    let scheme = match config.kind {
        DbKind::MySql => "mysql",
        _ => "postgresql",
    };
    let mut userinfo = String::new();
    if let Some(user) = &config.username {
        userinfo.push_str(&percent_encode(user));
        if let Some(password) = &config.password {
            userinfo.push(':');
            userinfo.push_str(&percent_encode(password));
        }
        userinfo.push('@');
    }
    let host =
        if config.host.contains(':') { format!("[{}]", config.host) } else { config.host.clone() };
    let mut query: Vec<(&str, String)> = Vec::new();
    let tls_name = match config.kind {
        DbKind::MySql => config.tls.mysql_name(),
        _ => config.tls.postgres_name(),
    };
    if let Some(mode) = tls_name {
        query.push(("sslmode", mode.into()));
    }
    let ca_key = if config.kind == DbKind::MySql { "ssl-ca" } else { "sslrootcert" };
    for (key, value) in [
        (ca_key, &config.tls_ca),
        ("sslcert", &config.tls_client_cert),
        ("sslkey", &config.tls_client_key),
    ] {
        if let Some(path) = value {
            query.push((key, path.to_string_lossy().into_owned()));
        }
    }
    if let Some(socket) = &config.socket {
        let key = if config.kind == DbKind::MySql { "socket" } else { "host" };
        query.push((key, socket.to_string_lossy().into_owned()));
    }
    if let Some(name) = &config.application_name {
        query.push(("application_name", name.clone()));
    }
    if let Some(options) = &config.pg_options {
        query.push(("options", options.clone()));
    }
    let query = if query.is_empty() {
        String::new()
    } else {
        let pairs: Vec<String> = query
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v).replace("%2F", "/")))
            .collect();
        format!("?{}", pairs.join("&"))
    };
    format!(
        "{scheme}://{userinfo}{host}:{}/{}{query}",
        config.port,
        percent_encode(&config.database)
    )
}

/// Applies host/port or socket; `true` for a bracketed IPv6 literal (`[::1]:3306`), which the
/// parser does not count as the "raw IP" that disables TLS (it does for IPv4).
fn apply_connect(config: &mut DbConfig, connect: &ncp::DbConnect) -> bool {
    match connect {
        ncp::DbConnect::Tcp { host, port } => {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            // PDO treats an empty host as localhost.
            config.host = if bare.is_empty() { "localhost".into() } else { bare.to_string() };
            config.port = *port;
            host.starts_with('[') && bare.parse::<std::net::Ipv6Addr>().is_ok()
        }
        ncp::DbConnect::Socket(path) => {
            config.socket = Some(path.clone());
            false
        }
    }
}

/// A PostgreSQL socket given as the socket file `…/.s.PGSQL.5433`: the directory and the port.
fn pg_socket_dir(path: &Path) -> (PathBuf, Option<u16>) {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    match name.strip_prefix(".s.PGSQL.") {
        Some(port) => (
            path.parent().map(Path::to_path_buf).unwrap_or_else(|| path.to_path_buf()),
            port.parse().ok(),
        ),
        None => (path.to_path_buf(), None),
    }
}

fn non_empty_path(value: &str) -> Option<PathBuf> {
    (!value.is_empty()).then(|| PathBuf::from(value))
}

/// Splits a libpq `options` string (`-c key=value -c other=x`, `--key=value`) into pairs.
fn parse_pg_options(options: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut words = options.split_whitespace();
    while let Some(word) = words.next() {
        let setting = if word == "-c" {
            words.next().unwrap_or_default()
        } else if let Some(rest) = word.strip_prefix("-c") {
            rest
        } else if let Some(rest) = word.strip_prefix("--") {
            rest
        } else {
            continue;
        };
        if let Some((key, value)) = setting.split_once('=') {
            pairs.push((key.to_string(), value.to_string()));
        }
    }
    pairs
}

fn validate_prefix(prefix: &str) -> Result<String, DatabaseError> {
    if prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(prefix.to_string())
    } else {
        Err(DatabaseError::InvalidPrefix(prefix.to_string()))
    }
}

fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn percent_encode_path(value: &str) -> String {
    percent_encode(value).replace("%2F", "/")
}

fn percent_decode(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .ok_or_else(|| format!("bad percent-encoding in {value:?}"))?;
            let byte = u8::from_str_radix(hex, 16)
                .map_err(|_| format!("bad percent-encoding in {value:?}"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("percent-encoding in {value:?} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_mode_spellings() {
        assert_eq!(TlsMode::parse("verify-full"), Some(TlsMode::VerifyFull));
        assert_eq!(TlsMode::parse("VERIFY_IDENTITY"), Some(TlsMode::VerifyFull));
        assert_eq!(TlsMode::parse("disabled"), Some(TlsMode::Disable));
        assert_eq!(TlsMode::parse("bogus"), None);
    }

    #[test]
    fn pg_socket_file_gives_dir_and_port() {
        assert_eq!(
            pg_socket_dir(Path::new("/run/postgresql/.s.PGSQL.5433")),
            (PathBuf::from("/run/postgresql"), Some(5433))
        );
        assert_eq!(
            pg_socket_dir(Path::new("/run/postgresql")),
            (PathBuf::from("/run/postgresql"), None)
        );
    }

    #[test]
    fn pg_options_string() {
        assert_eq!(
            parse_pg_options("-c search_path=nc -csynchronous_commit=off --geqo=off"),
            vec![
                ("search_path".to_string(), "nc".to_string()),
                ("synchronous_commit".to_string(), "off".to_string()),
                ("geqo".to_string(), "off".to_string())
            ]
        );
    }

    #[test]
    fn percent_round_trip() {
        let raw = "p@ss:w/rd ä%";
        assert_eq!(percent_decode(&percent_encode(raw)).as_deref(), Ok(raw));
    }
}
