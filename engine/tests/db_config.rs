//! Database settings from real config.php files (every `dbhost` form of spec §3) and from
//! `NextcloudPushDatabase` URLs, and live connections configured through config.php.

mod common;

use nextcloud_config_parser as ncp;
use nextcloud_push_engine::db::url::TlsMode;
use nextcloud_push_engine::db::{database_url, DbConfig, DbKind, DbStorageMapping, MappingOptions};
use std::path::{Path, PathBuf};
use testkit::db::{Backend, TestDb};
use testkit::require;

/// Writes a config.php with the given `$CONFIG` entries (PHP source) and parses it like the
/// engine does (nextcloud-config-parser, no PHP executed).
fn parse(entries: &str) -> (ncp::Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.php");
    std::fs::write(
        &file,
        format!("<?php\n$CONFIG = array (\n  'overwrite.cli.url' => 'https://cloud.example.com',\n{entries}\n);\n"),
    )
    .unwrap();
    (ncp::parse(&file).unwrap_or_else(|e| panic!("config.php with {entries}: {e}")), dir)
}

/// The config from config.php, checked to survive the URL the engine keeps
/// (`database_url` → `DbConfig::from_url`) unchanged.
fn config(entries: &str) -> DbConfig {
    let (parsed, _dir) = parse(entries);
    let direct = DbConfig::from_nextcloud(&parsed.database, &parsed.database_prefix)
        .expect("from_nextcloud");
    let url = database_url(&parsed.database);
    let via_url = DbConfig::from_url(&url, &parsed.database_prefix).expect("from_url");
    assert_eq!(direct, via_url, "round trip through {url}");
    direct
}

fn mysql(dbhost: &str, extra: &str) -> DbConfig {
    config(&format!(
        "  'dbtype' => 'mysql',\n  'dbhost' => '{dbhost}',\n  'dbname' => 'nextcloud',\n  'dbuser' => 'nc',\n  'dbpassword' => 'secret',\n{extra}"
    ))
}

fn pgsql(dbhost: &str, extra: &str) -> DbConfig {
    config(&format!(
        "  'dbtype' => 'pgsql',\n  'dbhost' => '{dbhost}',\n  'dbname' => 'nextcloud',\n  'dbuser' => 'nc',\n  'dbpassword' => 'secret',\n{extra}"
    ))
}

fn tcp(config: &DbConfig) -> (&str, u16) {
    assert_eq!(config.socket, None, "{config:?}");
    (config.host.as_str(), config.port)
}

#[test]
fn mysql_host_forms() {
    let c = mysql("db.example.org", "");
    assert_eq!((c.kind, tcp(&c)), (DbKind::MySql, ("db.example.org", 3306)));
    assert_eq!(
        (c.database.as_str(), c.username.as_deref(), c.password.as_deref()),
        ("nextcloud", Some("nc"), Some("secret"))
    );
    assert_eq!(c.tls, TlsMode::Default, "a host name keeps the driver default (preferred)");
    assert_eq!(c.table_prefix, "oc_");

    assert_eq!(tcp(&mysql("db.example.org:3307", "")), ("db.example.org", 3307));
    assert_eq!(tcp(&mysql("db.example.org", "  'dbport' => '3310',")), ("db.example.org", 3310));
    assert_eq!(tcp(&mysql("db.example.org", "  'dbport' => 3311,")), ("db.example.org", 3311));
    assert_eq!(tcp(&mysql("db.example.org:3307", "  'dbport' => '',")), ("db.example.org", 3307));

    let c = mysql("[::1]:3308", "");
    assert_eq!(tcp(&c), ("::1", 3308));
    assert_eq!(c.tls, TlsMode::Disable, "a raw IPv6 address disables TLS like IPv4");

    let c = mysql("127.0.0.1", "");
    assert_eq!(tcp(&c), ("127.0.0.1", 3306));
    assert_eq!(c.tls, TlsMode::Disable, "a raw IP disables TLS");

    let c = mysql("db.example.org:/run/mysqld/custom.sock", "");
    assert_eq!(c.socket, Some(PathBuf::from("/run/mysqld/custom.sock")));
    let c = mysql("/run/mysqld/other.sock", "");
    assert_eq!(c.socket, Some(PathBuf::from("/run/mysqld/other.sock")), "bare socket path");
    assert_eq!(c.tls, TlsMode::Default);

    // localhost without a port: the first existing well-known socket, else TCP
    let c = mysql("localhost", "");
    let known = ["/var/run/mysqld/mysqld.sock", "/tmp/mysql.sock", "/run/mysql/mysql.sock"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    match known {
        Some(socket) => assert_eq!(c.socket, Some(socket)),
        None => assert_eq!(tcp(&c), ("localhost", 3306)),
    }
    assert_eq!(tcp(&mysql("localhost:3306", "")), ("localhost", 3306), "a port means TCP");
}

#[test]
fn mysql_tls_driver_options() {
    let certs = "  'dbdriveroptions' => [\n    \\PDO::MYSQL_ATTR_SSL_KEY => '/etc/nc/client-key.pem',\n    \\PDO::MYSQL_ATTR_SSL_CERT => '/etc/nc/client-cert.pem',\n    \\PDO::MYSQL_ATTR_SSL_CA => '/etc/nc/ca.pem',\n";
    let c = mysql("10.0.0.5", &format!("{certs}  ],"));
    assert_eq!(c.tls, TlsMode::VerifyFull, "certificates configured: TLS even on a raw IP");
    assert_eq!(c.tls_ca, Some(PathBuf::from("/etc/nc/ca.pem")));
    assert_eq!(c.tls_client_cert, Some(PathBuf::from("/etc/nc/client-cert.pem")));
    assert_eq!(c.tls_client_key, Some(PathBuf::from("/etc/nc/client-key.pem")));

    let c = mysql(
        "db.example.org",
        &format!("{certs}    \\PDO::MYSQL_ATTR_SSL_VERIFY_SERVER_CERT => false,\n  ],"),
    );
    assert_eq!(c.tls, TlsMode::VerifyCa, "no host name check");

    // 1014 = false alone on a raw IP: TLS stays possible (driver default)
    let c = mysql("10.0.0.5", "  'dbdriveroptions' => [ 1014 => false ],");
    assert_eq!(c.tls, TlsMode::Default);
}

#[test]
fn pgsql_host_forms() {
    let c = pgsql("db.example.org", "");
    assert_eq!((c.kind, tcp(&c)), (DbKind::Postgres, ("db.example.org", 5432)));
    assert_eq!(c.tls, TlsMode::Default);

    assert_eq!(tcp(&pgsql("db.example.org:6432", "")), ("db.example.org", 6432));
    assert_eq!(tcp(&pgsql("db.example.org", "  'dbport' => '6433',")), ("db.example.org", 6433));

    let c = pgsql("127.0.0.1:6432", "  'dbport' => '',");
    assert_eq!(tcp(&c), ("127.0.0.1", 6432));
    assert_eq!(c.tls, TlsMode::Disable, "raw IP: sslmode=disable");

    let c = pgsql("[fd00::5]:5433", "");
    assert_eq!(tcp(&c), ("fd00::5", 5433));
    assert_eq!(c.tls, TlsMode::Disable);

    let c = pgsql("/run/postgresql", "");
    assert_eq!(c.socket, Some(PathBuf::from("/run/postgresql")));
    let c = pgsql("/run/postgresql/.s.PGSQL.5432", "");
    assert_eq!(c.socket, Some(PathBuf::from("/run/postgresql")), "the socket file's directory");
    let c = pgsql("localhost:/var/run/postgresql", "");
    assert_eq!(c.socket, Some(PathBuf::from("/var/run/postgresql")));

    let c = pgsql("db.example.org;sslmode=verify-full;sslrootcert=/etc/ssl/certs/ca.pem;application_name=nc-push", "");
    assert_eq!(tcp(&c), ("db.example.org", 5432));
    assert_eq!(c.tls, TlsMode::VerifyFull);
    assert_eq!(c.tls_ca, Some(PathBuf::from("/etc/ssl/certs/ca.pem")));
    assert_eq!(c.application_name.as_deref(), Some("nc-push"));

    let c = pgsql("db.example.org:5433;sslmode=require", "");
    assert_eq!((tcp(&c), c.tls), (("db.example.org", 5433), TlsMode::Require));

    let c = pgsql(
        "10.1.2.3",
        "  'pgsql_ssl' => [ 'mode' => 'verify-ca', 'rootcert' => '/ca.pem', 'cert' => '/c.pem', 'key' => '/k.pem', 'crl' => '' ],",
    );
    assert_eq!(c.tls, TlsMode::VerifyCa, "pgsql_ssl wins over the raw-IP rule");
    assert_eq!(
        (c.tls_ca.as_deref(), c.tls_client_cert.as_deref(), c.tls_client_key.as_deref()),
        (Some(Path::new("/ca.pem")), Some(Path::new("/c.pem")), Some(Path::new("/k.pem")))
    );
}

/// nextcloud-config-parser 0.15.4 indexes the `pgsql_ssl` array with `[]` for each of `mode`,
/// `cert`, `rootcert`, `key`, `crl`: a `pgsql_ssl` that lacks one of them makes `parse` *panic*
/// (nc.rs:270-283). Whoever calls `ncp::parse` in a process that must not die (the Apache parent,
/// the push daemon) has to catch that. This test pins the behaviour so an upgrade that fixes it
/// is noticed.
#[test]
fn parser_panics_on_partial_pgsql_ssl() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.php");
    std::fs::write(
        &file,
        "<?php $CONFIG = ['overwrite.cli.url' => 'https://x', 'dbtype' => 'pgsql', 'dbhost' => 'db', 'dbuser' => 'a', 'dbpassword' => 'b', 'pgsql_ssl' => ['mode' => 'require']];",
    )
    .unwrap();
    let result = std::panic::catch_unwind(|| ncp::parse(&file).map(|_| ()));
    assert!(
        result.is_err(),
        "nextcloud-config-parser no longer panics on a partial pgsql_ssl: drop this test"
    );
}

#[test]
fn names_defaults_prefix_and_secrets() {
    // dbname defaults to owncloud; odd characters survive the URL
    let c = config(
        "  'dbtype' => 'mysql',\n  'dbhost' => 'db',\n  'dbuser' => 'n c@x',\n  'dbpassword' => 'p@ss:w/rd?#%&=',\n  'dbtableprefix' => 'nc_',",
    );
    assert_eq!(c.database, "owncloud");
    assert_eq!(c.username.as_deref(), Some("n c@x"));
    assert_eq!(c.password.as_deref(), Some("p@ss:w/rd?#%&="));
    assert_eq!(c.table_prefix, "nc_");
    assert!(!format!("{c:?}").contains("p@ss"), "Debug redacts the password");
    assert!(!c.describe().contains("p@ss"));
    assert_eq!(c.describe(), "mysql n c@x@db:3306/owncloud");

    let (parsed, _dir) = parse("  'dbtype' => 'pgsql',\n  'dbhost' => 'db',\n  'dbname' => 'my-cloud db',\n  'dbuser' => 'nc',\n  'dbpassword' => 'x',");
    let url = database_url(&parsed.database);
    assert!(url.starts_with("postgresql://nc:x@db:5432/my-cloud%20db"), "{url}");
    assert_eq!(DbConfig::from_url(&url, "oc_").unwrap().database, "my-cloud db");
}

#[test]
fn sqlite_from_datadirectory() {
    let c = config("  'dbtype' => 'sqlite3',\n  'datadirectory' => '/var/www/nextcloud/data',\n  'dbname' => 'nextcloud',");
    assert_eq!(
        (c.kind, c.database.as_str()),
        (DbKind::Sqlite, "/var/www/nextcloud/data/nextcloud.db")
    );
    let c = config("  'datadirectory' => '/srv/nc data',");
    assert_eq!(
        (c.kind, c.database.as_str()),
        (DbKind::Sqlite, "/srv/nc data/owncloud.db"),
        "no dbtype: sqlite"
    );
    let c = config("  'dbtype' => 'sqlite',\n  'datadirectory' => '/d',");
    assert_eq!(c.database, "/d/owncloud.db");
    assert_eq!(c.describe(), "sqlite /d/owncloud.db");
}

#[test]
fn unsupported_and_incomplete_config_php() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.php");
    std::fs::write(&file, "<?php $CONFIG = ['overwrite.cli.url' => 'https://x', 'dbtype' => 'oci', 'dbuser' => 'a', 'dbpassword' => 'b'];").unwrap();
    let error = ncp::parse(&file).unwrap_err();
    assert!(error.to_string().contains("unsupported database type oci"), "{error}");
    // invalid prefix from config.php is rejected (it is interpolated into SQL)
    let (parsed, _dir) = parse("  'datadirectory' => '/d',\n  'dbtableprefix' => 'oc-x',");
    let error = DbConfig::from_nextcloud(&parsed.database, &parsed.database_prefix).unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid table prefix \"oc-x\": only ASCII letters, digits and _ are allowed"
    );
}

#[test]
fn url_forms() {
    let c = DbConfig::from_url("mysql://nc:secret@db.example.org:3307/nextcloud", "oc_").unwrap();
    assert_eq!(
        (c.kind, tcp(&c), c.database.as_str()),
        (DbKind::MySql, ("db.example.org", 3307), "nextcloud")
    );
    assert_eq!((c.username.as_deref(), c.password.as_deref()), (Some("nc"), Some("secret")));

    let c = DbConfig::from_url(
        "mariadb://nc:secret@db/nextcloud?ssl-mode=verify_identity&ssl-ca=/ca.pem",
        "oc_",
    )
    .unwrap();
    assert_eq!((c.kind, tcp(&c), c.tls), (DbKind::MySql, ("db", 3306), TlsMode::VerifyFull));
    assert_eq!(c.tls_ca, Some(PathBuf::from("/ca.pem")));

    let c = DbConfig::from_url(
        "mysql://root@localhost/nc?socket=/run/mysqld/mysqld.sock&sslmode=DISABLED",
        "x_",
    )
    .unwrap();
    assert_eq!(
        (c.socket.as_deref(), c.tls),
        (Some(Path::new("/run/mysqld/mysqld.sock")), TlsMode::Disable)
    );
    assert_eq!(c.table_prefix, "x_");

    let c = DbConfig::from_url(
        "postgres://nc:p%40ss@[::1]:5433/nextcloud?sslmode=verify-ca&sslrootcert=/ca.pem",
        "oc_",
    )
    .unwrap();
    assert_eq!((c.kind, tcp(&c), c.tls), (DbKind::Postgres, ("::1", 5433), TlsMode::VerifyCa));
    assert_eq!(c.password.as_deref(), Some("p@ss"));
    assert_eq!(c.describe(), "postgres nc@[::1]:5433/nextcloud");

    let c = DbConfig::from_url("postgresql://nc@localhost/nextcloud?host=/run/postgresql", "oc_")
        .unwrap();
    assert_eq!((c.socket.as_deref(), c.port), (Some(Path::new("/run/postgresql")), 5432));
    let c = DbConfig::from_url("postgresql:///nextcloud?host=/tmp/.s.PGSQL.6543&user=nc", "oc_")
        .unwrap();
    assert_eq!((c.username.as_deref(), c.database.as_str()), (Some("nc"), "nextcloud"));
    assert_eq!(
        (c.socket.as_deref(), c.port),
        (Some(Path::new("/tmp")), 6543),
        "socket file: dir + port"
    );

    let c = DbConfig::from_url("sqlite:///var/www/data/owncloud.db", "oc_").unwrap();
    assert_eq!((c.kind, c.database.as_str()), (DbKind::Sqlite, "/var/www/data/owncloud.db"));

    for (url, message) in [
        ("redis://x", "unsupported scheme redis://"),
        ("nonsense", "missing scheme"),
        ("sqlite://", "missing database file"),
        ("mysql://a:b@h/db?ssl-mode=sometimes", "unknown ssl-mode value"),
        ("postgres://a@h/db?port=x", "invalid port"),
    ] {
        let error = DbConfig::from_url(url, "oc_").unwrap_err().to_string();
        assert!(error.contains(message), "{url}: {error}");
    }
    let error =
        DbConfig::from_url("mysql://nc:topsecret@h/db?x=", "oc_;DROP").unwrap_err().to_string();
    assert!(error.contains("invalid table prefix"), "{error}");
    let error = DbConfig::from_url("ftp://nc:topsecret@h/db", "oc_").unwrap_err().to_string();
    assert!(!error.contains("topsecret"), "errors never show the password: {error}");
}

/// config.php → mapping → real server, for every database type and connection style.
/// `dbhost_entries` gives the config.php entries, or why the connection style is not available
/// here (a failure under `CI=true`, like a missing fixture, else a printed skip).
async fn live(backend: Backend, dbhost_entries: impl FnOnce(&TestDb) -> Result<String, String>) {
    common::time_limit(async move {
        let db = require!(TestDb::create(backend, "oc_").await);
        db.mount("alice", 1, "").await;
        db.mount("bob", 1, "files/Shared").await;
        let entries = match dbhost_entries(&db) {
            Ok(entries) => entries,
            Err(reason) => {
                if testkit::in_ci() {
                    panic!("CI=true: {reason}; this connection style must be tested there");
                }
                eprintln!("SKIPPED: {reason}");
                return;
            }
        };
        let (parsed, _dir) = parse(&entries);
        let url = database_url(&parsed.database);
        let mapping =
            DbStorageMapping::from_url(&url, &parsed.database_prefix, MappingOptions::default())
                .expect("mapping");
        let mut users = mapping.users_for(1, "files/Shared/x").await;
        users.sort();
        assert_eq!(users, ["alice", "bob"], "via {}", mapping.config().describe());
        assert!(mapping.is_available());
        mapping.close().await;
    })
    .await;
}

/// `Ok(())` when the server's socket file exists, else the reason.
fn socket_file(path: &str) -> Result<(), String> {
    if Path::new(path).exists() {
        Ok(())
    } else {
        Err(format!(
            "socket file {path} not found (is the server running with its default socket?)"
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_mysql_tcp_raw_ip() {
    live(Backend::MySql, |db| {
        Ok(format!(
            "  'dbtype' => 'mysql',\n  'dbhost' => '127.0.0.1:3306',\n  'dbname' => '{}',\n  'dbuser' => 'root',\n  'dbpassword' => '',",
            db.name
        ))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_mysql_localhost_socket_autodetect() {
    live(Backend::MySql, |db| {
        socket_file("/var/run/mysqld/mysqld.sock").map(|()| {
            format!(
                "  'dbtype' => 'mysql',\n  'dbhost' => 'localhost',\n  'dbname' => '{}',\n  'dbuser' => 'root',\n  'dbpassword' => '',",
                db.name
            )
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_pgsql_tcp_with_options() {
    live(Backend::Postgres, |db| {
        Ok(format!(
            "  'dbtype' => 'pgsql',\n  'dbhost' => '127.0.0.1;application_name=nextcloud-push-test',\n  'dbport' => '5432',\n  'dbname' => '{}',\n  'dbuser' => 'postgres',\n  'dbpassword' => '',",
            db.name
        ))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_pgsql_socket_file() {
    live(Backend::Postgres, |db| {
        socket_file("/run/postgresql/.s.PGSQL.5432").map(|()| {
            format!(
                "  'dbtype' => 'pgsql',\n  'dbhost' => '/run/postgresql/.s.PGSQL.5432',\n  'dbname' => '{}',\n  'dbuser' => 'postgres',\n  'dbpassword' => '',",
                db.name
            )
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_sqlite_datadirectory() {
    live(Backend::Sqlite, |db| {
        let file = db.sqlite_file().ok_or("the SQLite test database has no file")?;
        let dir = file.parent().ok_or("the SQLite file has no directory")?.display().to_string();
        let name =
            file.file_stem().ok_or("the SQLite file has no name")?.to_string_lossy().into_owned();
        Ok(format!(
            "  'dbtype' => 'sqlite3',\n  'datadirectory' => '{dir}',\n  'dbname' => '{name}',"
        ))
    })
    .await;
}
