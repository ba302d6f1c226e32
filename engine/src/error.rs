//! Error types of the engine, one `thiserror` enum per domain.
//!
//! The message ids the engine logs (`NCP1000`–`NCP1999`) are listed in [`crate::log_ids`].

use std::path::PathBuf;

/// Errors while building an [`crate::EngineConfig`]. `Display` always names the Apache directive
/// or the config.php key at fault.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ConfigError {
    #[error("{directive}: invalid Redis URL \"{url}\": {reason}")]
    InvalidRedisUrl { directive: &'static str, url: String, reason: String },
    #[error("NextcloudPushNextcloudUrl: invalid URL \"{url}\": {reason}")]
    InvalidNextcloudUrl { url: String, reason: String },
    #[error("NextcloudPushDatabase: invalid database URL \"{url}\": {reason}")]
    InvalidDatabaseUrl { url: String, reason: String },
    #[error("NextcloudPushTablePrefix: invalid table prefix \"{0}\": only ASCII letters, digits and _ are allowed")]
    InvalidTablePrefix(String),
    #[error("{0} is required when no Nextcloud config.php is given")]
    Missing(&'static str),
    #[error("config.php {path}: overwrite.cli.url not set (or set NextcloudPushNextcloudUrl)")]
    NoNextcloudUrl { path: PathBuf },
    #[error("config.php {path}: overwrite.cli.url: invalid URL \"{url}\": {reason}")]
    InvalidConfigPhpUrl { path: PathBuf, url: String, reason: String },
    #[error("config.php {path}: cannot read the file: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("config.php {path}: not a Nextcloud config file: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("config.php {path}: database configuration (dbtype/dbhost/dbuser/dbpassword/datadirectory): {reason} (or set NextcloudPushDatabase)")]
    Database { path: PathBuf, reason: String },
    #[error("config.php {path}: {key}: {reason} (or set NextcloudPushRedis)")]
    Redis { path: PathBuf, key: &'static str, reason: String },
}

/// Errors from building or running an [`crate::Engine`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("Engine::new must be called inside a tokio runtime")]
    NoRuntime,
    #[error("cannot build the HTTP client for Nextcloud: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("cannot build the Redis client: {0}")]
    RedisClient(#[source] redis::RedisError),
    #[error("database: {0}")]
    Database(#[from] crate::db::DatabaseError),
    #[error("cannot read the Redis TLS file {path}: {reason}")]
    RedisTlsFile { path: PathBuf, reason: String },
}

/// Why a WebSocket login failed. `Display` is the exact text frame sent to the client (spec §1.3).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("err: Invalid credentials")]
    InvalidCredentials,
    #[error("err: Invalid authentication message")]
    InvalidMessage,
    #[error("err: Error while sending authentication request to nextcloud: {0}")]
    Nextcloud(#[from] NextcloudError),
    #[error("Authentication timeout")]
    Timeout,
}

/// Errors of the credential check against Nextcloud (spec §1.3 table).
#[derive(Debug, thiserror::Error)]
pub enum NextcloudError {
    #[error("Error while connecting to nextcloud: {0}")]
    Connect(#[source] reqwest::Error),
    #[error("Server error: {0}")]
    Server(reqwest::StatusCode),
    #[error("Client error: {0}")]
    Client(reqwest::StatusCode),
    #[error("Unexpected status code: {0}")]
    Unexpected(reqwest::StatusCode),
    #[error("the push server is shutting down")]
    Closed,
}

/// Bad payloads on a Redis channel.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("json deserialization error: {0}")]
    Json(#[from] serde_json::Error),
    #[error("payload is not valid UTF-8")]
    Utf8,
}
