//! Property tests of the database URL parser (`engine/src/db/url.rs`): `DbConfig::from_url` on
//! arbitrary input, the round trip config.php → `database_url` → `from_url` for generated
//! config.php databases, and `redact_url`.

use indexmap::IndexMap;
use nextcloud_config_parser as ncp;
use nextcloud_push_engine::db::{database_url, redact_url, DbConfig};
use proptest::collection::vec;
use proptest::prelude::*;
use std::path::PathBuf;

fn scheme() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(vec![
            "mysql",
            "mariadb",
            "postgres",
            "postgresql",
            "sqlite",
            "sqlite3",
            "MySQL",
            "http",
            "",
        ])
        .prop_map(str::to_string),
        "[a-z+]{0,8}",
    ]
}

/// Text made of the pieces URLs are made of, so the parser gets past its first checks.
fn url_like() -> impl Strategy<Value = String> {
    (
        scheme(),
        prop_oneof![Just("://"), Just(":"), Just(":///"), Just("//")],
        "([a-zA-Z0-9%:@\\[\\]./?&=#_+-]|%[0-9a-fA-F]{0,2}|[^\\x00-\\x7f]){0,40}",
    )
        .prop_map(|(s, sep, rest)| format!("{s}{sep}{rest}"))
}

fn prefix() -> impl Strategy<Value = String> {
    prop_oneof![4 => Just("oc_".to_string()), 1 => "[A-Za-z0-9_]{0,6}", 1 => ".{0,6}"]
}

proptest! {
    /// `from_url` never panics; an invalid table prefix is always refused; a sqlite URL gives
    /// a non-empty database file.
    #[test]
    fn from_url_never_panics(url in prop_oneof![url_like(), ".{0,60}"], prefix in prefix()) {
        let result = DbConfig::from_url(&url, &prefix);
        let prefix_ok = prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !prefix_ok {
            prop_assert!(result.is_err());
        }
        if let Ok(config) = result {
            prop_assert_eq!(&config.table_prefix, &prefix);
            prop_assert!(!config.database.is_empty() || config.kind != nextcloud_push_engine::db::DbKind::Sqlite);
            let _ = config.describe();
            let _ = format!("{config:?}");
        }
    }

    /// `redact_url` never panics on anything.
    #[test]
    fn redact_url_never_panics(url in prop_oneof![url_like(), ".{0,60}"]) {
        let _ = redact_url(&url);
    }

    /// `redact_url` replaces exactly the password of `scheme://user:password@host/db?query`
    /// (passwords as `database_url` writes them: percent-encoded).
    #[test]
    fn redact_url_hides_the_password(
        scheme in "[a-z]{1,10}",
        user in "[A-Za-z0-9%._~-]{0,10}",
        password in "[A-Za-z0-9%._~-]{1,16}",
        host in "[a-z0-9.-]{1,16}|\\[[0-9a-f:]{2,20}\\]",
        tail in "(/[A-Za-z0-9%._-]{0,10})?(\\?[a-z=&/%0-9]{0,20})?",
    ) {
        let url = format!("{scheme}://{user}:{password}@{host}{tail}");
        prop_assert_eq!(redact_url(&url), format!("{scheme}://{user}:****@{host}{tail}"));
    }
}

// ---------------------------------------------------------------- config.php → URL → DbConfig

/// Names as config.php may hold them: anything printable, including the URL's own delimiters
/// and dots, and empty (config.php's `'dbpassword' => ''`).
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[A-Za-z0-9_]{1,12}",
        2 => "[ -~]{1,16}",
        1 => "[^\\x00]{1,12}",
        1 => "\\.{1,3}[a-z]{0,3}\\.{0,3}",
        1 => Just(String::new()),
    ]
}

fn path() -> impl Strategy<Value = String> {
    "(/[A-Za-z0-9 ._%?#&=+@:-]{1,10}){1,3}"
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\\.[a-z0-9]{1,8}){0,2}",
        1 => any::<[u8; 4]>().prop_map(|ip| std::net::Ipv4Addr::from(ip).to_string()),
        1 => any::<[u16; 8]>().prop_map(|ip| format!("[{}]", std::net::Ipv6Addr::from(ip))),
        1 => Just(String::new()),
        1 => Just("localhost".to_string()),
    ]
}

fn connect() -> impl Strategy<Value = ncp::DbConnect> {
    prop_oneof![
        4 => (host(), any::<u16>()).prop_map(|(host, port)| ncp::DbConnect::Tcp { host, port }),
        1 => path().prop_map(|p| ncp::DbConnect::Socket(PathBuf::from(p))),
    ]
}

fn ssl_options() -> impl Strategy<Value = ncp::SslOptions> {
    prop_oneof![
        Just(ncp::SslOptions::Default),
        Just(ncp::SslOptions::Disabled),
        (
            prop_oneof![Just(String::new()), path()],
            prop_oneof![Just(String::new()), path()],
            prop_oneof![Just(String::new()), path()],
            any::<bool>()
        )
            .prop_map(|(key, cert, ca, verify)| ncp::SslOptions::Enabled {
                key,
                cert,
                ca,
                verify
            }),
    ]
}

fn pg_options() -> impl Strategy<Value = IndexMap<String, String>> {
    vec(
        prop_oneof![
            proptest::sample::select(vec![
                "disable",
                "allow",
                "prefer",
                "require",
                "verify-ca",
                "verify-full"
            ])
            .prop_map(|v| ("sslmode".to_string(), v.to_string())),
            (
                proptest::sample::select(vec!["sslrootcert", "sslcert", "sslkey"]),
                prop_oneof![Just(String::new()), path()]
            )
                .prop_map(|(k, v)| (k.to_string(), v)),
            name().prop_map(|v| ("application_name".to_string(), v)),
            "(-c [a-z_]{1,8}=[a-z0-9]{1,4} ?){1,3}".prop_map(|v| ("options".to_string(), v)),
        ],
        0..4,
    )
    .prop_map(|pairs| pairs.into_iter().collect())
}

fn database() -> impl Strategy<Value = ncp::Database> {
    prop_oneof![
        1 => path().prop_map(|p| ncp::Database::Sqlite { database: PathBuf::from(p) }),
        2 => (name(), name(), name(), connect(), ssl_options()).prop_map(
            |(database, username, password, connect, ssl_options)| ncp::Database::MySql {
                database,
                username,
                password,
                connect,
                ssl_options,
            }
        ),
        2 => (name(), name(), name(), connect(), pg_options()).prop_map(
            |(database, username, password, connect, options)| ncp::Database::Postgres {
                database,
                username,
                password,
                connect,
                options,
            }
        ),
    ]
}

proptest! {
    /// The URL the engine keeps for a config.php database reads back into the same `DbConfig`
    /// as the database itself (the module's documented promise), for names full of URL
    /// delimiters, IPv4/IPv6/empty hosts, sockets and TLS settings.
    #[test]
    fn database_url_round_trips(database in database(), prefix in "[A-Za-z0-9_]{0,6}") {
        let direct = DbConfig::from_nextcloud(&database, &prefix).unwrap();
        let url = database_url(&database);
        let via_url = DbConfig::from_url(&url, &prefix);
        prop_assert_eq!(Ok(&direct), via_url.as_ref().map_err(|e| e.to_string()), "through {}", url);
        // The password never shows in what is logged.
        if let Some(password) = direct.password.as_deref().filter(|p| p.len() >= 6) {
            let without = format!("{:?}", DbConfig { password: None, ..direct.clone() });
            if !without.contains(password) {
                let shown = format!("{direct:?}");
                prop_assert!(!shown.contains(password));
            }
        }
    }
}

// ---------------------------------------------------------------- edge cases

fn mysql(database: &str, username: &str, password: &str) -> ncp::Database {
    ncp::Database::MySql {
        database: database.into(),
        username: username.into(),
        password: password.into(),
        connect: ncp::DbConnect::Tcp { host: "db.example".into(), port: 3306 },
        ssl_options: ncp::SslOptions::Default,
    }
}

fn round_trip(database: &ncp::Database) {
    let direct = DbConfig::from_nextcloud(database, "oc_").unwrap();
    let url = database_url(database);
    assert_eq!(DbConfig::from_url(&url, "oc_").ok(), Some(direct), "through {url}");
}

/// `dbname` `.` or `..` becomes the URL path `/.` or `/..`, which a URL parser resolves as a dot
/// segment; `from_url` reads the name from the raw text and keeps it.
#[test]
fn dot_database_names_round_trip() {
    round_trip(&mysql(".", "nc", "secret"));
    round_trip(&mysql("..", "nc", "secret"));
}

/// An empty `dbuser` / `dbpassword` is `Some("")` from config.php and stays so through the URL
/// (`mysql://:pw@…`, `mysql://nc:@…`), instead of becoming "none" (sqlx's default user, `root`
/// for MySQL).
#[test]
fn empty_credentials_round_trip() {
    round_trip(&mysql("nextcloud", "", "secret"));
    round_trip(&mysql("nextcloud", "nc", ""));
}
