//! Nextcloud database access for the storage → users mapping (spec §3).
//!
//! * [`url`]: connection settings from config.php ([`nextcloud_config_parser::Database`]) or from
//!   a `NextcloudPushDatabase` URL, plus the table prefix ([`DbConfig`]).
//! * [`mapping`]: [`DbStorageMapping`], the [`crate::StorageMapping`] that runs the mapping query
//!   through a bounded, lazily connecting pool and caches the rows per storage.
//!
//! The database is never needed to start: the pool connects lazily, a background probe logs one
//! `NCP1101` warning per outage and retries with backoff, and while the database is down storage
//! updates are answered from the (possibly stale) cache or reach nobody. User events do not
//! touch the database at all.
//!
//! Log target `nextcloud_push::sql`. Message ids (also in [`crate::log_ids`]):
//!
//! | id | level | meaning |
//! |---|---|---|
//! | `NCP1101` | warn | database unreachable (at start or after a lost connection); retrying with backoff. One line per outage |
//! | `NCP1102` | info | database (re)connected: the mapping query works again |
//! | `NCP1103` | warn | the mapping query failed on a reachable database (missing table, wrong prefix, permissions); at most one line a minute |

pub mod mapping;
pub mod url;

pub use mapping::{DbStorageMapping, MappingOptions, MountRow};
pub use url::{database_url, DbConfig, DbKind};

/// Errors of the database layer. `Display` never contains a password.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    /// The URL cannot be used (bad scheme, unparsable, unsupported option value).
    #[error("invalid database URL \"{url}\": {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The table prefix would not be a plain SQL identifier prefix.
    #[error("invalid table prefix \"{0}\": only ASCII letters, digits and _ are allowed")]
    InvalidPrefix(String),
    /// [`DbStorageMapping::new`] needs a tokio runtime for its reconnect probe.
    #[error("the database mapping must be created inside a tokio runtime")]
    NoRuntime,
}

/// Is this error about reaching the database (network, TLS, pool, server going away) rather than
/// about the query itself? Connection errors mark the database as down and start the probe.
pub(crate) fn is_connection_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        // Authentication failures, unknown database and the like arrive while connecting as a
        // database error; they are outages too (fixing them needs no restart of Apache).
        sqlx::Error::Database(db) => {
            if let Some(mysql) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                // access denied (user, database), unknown database, too many connections,
                // server shutdown, host blocked / not allowed
                matches!(mysql.number(), 1044 | 1045 | 1049 | 1040 | 1053 | 1129 | 1130)
            } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // extended result code; the primary code is the low byte:
                // SQLITE_CANTOPEN (file missing or unreadable), SQLITE_NOTADB
                let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0) & 0xff;
                matches!(code, 14 | 26)
            } else {
                // PostgreSQL SQLSTATE: invalid authorization, invalid catalog name, too many
                // connections, admin/crash shutdown, cannot connect now
                matches!(
                    db.code().as_deref(),
                    Some("28000" | "28P01" | "3D000" | "53300" | "57P01" | "57P02" | "57P03")
                )
            }
        }
        _ => false,
    }
}

/// `scheme://user:****@host…`: the URL with any password replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map(|(user, _)| user).unwrap_or(userinfo);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:****@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("mysql://nc:secret@db:3306/nc?x=1"),
            "mysql://nc:****@db:3306/nc?x=1"
        );
        assert_eq!(redact_url("postgres://nc@db/nc"), "postgres://nc@db/nc");
        assert_eq!(redact_url("mysql://nc:p%40ss@[::1]:3306/nc"), "mysql://nc:****@[::1]:3306/nc");
        assert_eq!(redact_url("sqlite:///var/nc/owncloud.db"), "sqlite:///var/nc/owncloud.db");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
