//! Property tests of the configuration where it takes strings: the `NextcloudPush*` directive
//! overrides of `EngineConfig::load` and the string values of a config.php (parsed, never run).

use nextcloud_push_engine::{EngineConfig, Overrides};
use proptest::prelude::*;

fn url_like(schemes: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (
            proptest::sample::select(schemes.to_vec()),
            "([A-Za-z0-9]{0,6}(:[A-Za-z0-9%]{0,8})?@)?",
            "[a-z0-9.-]{0,12}|\\[[0-9a-f:]{2,16}\\]|/[a-z/.]{0,12}",
            "(:[0-9]{0,6})?(/[ -~]{0,12})?(\\?[ -~]{0,12})?",
        )
            .prop_map(|(s, user, host, tail)| format!("{s}://{user}{host}{tail}")),
        1 => ".{0,40}",
    ]
}

fn overrides() -> impl Strategy<Value = Overrides> {
    (
        proptest::option::of(url_like(&["http", "https", "ftp", "HTTP", ""])),
        proptest::option::of(url_like(&["redis", "rediss", "unix", "redis+unix", "http", ""])),
        proptest::option::of(url_like(&["mysql", "postgres", "postgresql", "sqlite", "x"])),
        proptest::option::of(prop_oneof!["[A-Za-z0-9_]{0,8}", ".{0,8}"]),
        any::<(Option<bool>, Option<u64>, Option<u64>, Option<bool>)>(),
    )
        .prop_map(|(nextcloud_url, redis_url, database_url, table_prefix, rest)| Overrides {
            nextcloud_url,
            redis_url,
            redis_cluster_seeds: Vec::new(),
            database_url,
            table_prefix,
            allow_self_signed: rest.0,
            max_debounce_time: rest.1,
            max_connection_time: rest.2,
            debounce: rest.3,
        })
}

/// A password no other part of a generated configuration can contain by chance.
fn secret() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]{14,20}".prop_map(|s| format!("Sx{s}"))
}

/// A PHP single-quoted string literal holding `value`.
fn php(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

proptest! {
    /// Directive overrides: any strings, never a panic; what loads is well-formed (an http(s)
    /// URL ending in `/`, a valid table prefix, the given Redis and database URLs).
    #[test]
    fn overrides_never_panic(overrides in overrides()) {
        if let Ok(config) = EngineConfig::load(None, &overrides) {
            prop_assert!(config.nextcloud_url.ends_with('/'));
            let lower = config.nextcloud_url.to_ascii_lowercase();
            prop_assert!(lower.starts_with("http://") || lower.starts_with("https://"), "{}", config.nextcloud_url);
            prop_assert!(config.table_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
            prop_assert_eq!(Some(&config.redis.url), overrides.redis_url.as_ref());
            prop_assert_eq!(&config.database_url, &overrides.database_url);
            prop_assert_eq!(config.fingerprint(), EngineConfig::load(None, &overrides).unwrap().fingerprint());
            let _ = format!("{config:?}");
        }
    }

    /// The Redis and database passwords of the directives never show in the configuration's
    /// `Debug` (what is logged).
    #[test]
    fn override_passwords_are_redacted(
        redis_password in secret(),
        db_password in secret(),
        scheme in prop_oneof![Just("redis"), Just("rediss")],
        db_scheme in prop_oneof![Just("mysql"), Just("postgresql")],
    ) {
        let overrides = Overrides {
            nextcloud_url: Some("https://cloud.example/".into()),
            redis_url: Some(format!("{scheme}://user:{redis_password}@127.0.0.1:6379/0")),
            database_url: Some(format!("{db_scheme}://nc:{db_password}@db.example:5432/nextcloud")),
            ..Default::default()
        };
        let config = EngineConfig::load(None, &overrides).unwrap();
        let shown = format!("{config:?}");
        prop_assert!(!shown.contains(&redis_password), "{}", shown);
        prop_assert!(!shown.contains(&db_password), "{}", shown);
    }

    /// A config.php whose string values are anything (escaped as PHP literals) never panics
    /// the loader, whether or not directives override them, and its passwords never show in
    /// the loaded configuration's `Debug`.
    #[test]
    fn config_php_strings_never_panic(
        url in prop_oneof![Just("https://cloud.example.com".to_string()), ".{0,24}"],
        dbtype in prop_oneof![Just("mysql".to_string()), Just("pgsql".to_string()), Just("sqlite3".to_string()), "[a-z0-9]{0,8}"],
        dbhost in prop_oneof![Just("localhost".to_string()), "[ -~]{0,24}", ".{0,12}"],
        dbname in prop_oneof!["[A-Za-z0-9_]{1,10}", ".{0,16}"],
        dbuser in ".{0,12}",
        dbpassword in secret(),
        prefix in prop_oneof![Just("oc_".to_string()), ".{0,6}"],
        redis_host in prop_oneof![Just("localhost".to_string()), "[ -~]{0,20}", "/[a-z/.]{1,20}"],
        redis_port in prop_oneof![Just("6379".to_string()), Just("0".to_string()), Just("-1".to_string()), Just("99999".to_string()), Just("'x'".to_string())],
        redis_password in secret(),
        with_overrides in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.php");
        let text = format!(
            "<?php\n$CONFIG = array (\n  'overwrite.cli.url' => {},\n  'dbtype' => {},\n  'dbhost' => {},\n  \
             'dbname' => {},\n  'dbuser' => {},\n  'dbpassword' => {},\n  'dbtableprefix' => {},\n  \
             'datadirectory' => '/var/www/data',\n  'redis' => array ('host' => {}, 'port' => {}, 'password' => {}),\n);\n",
            php(&url), php(&dbtype), php(&dbhost), php(&dbname), php(&dbuser), php(&dbpassword),
            php(&prefix), php(&redis_host), redis_port, php(&redis_password),
        );
        std::fs::write(&file, text).unwrap();
        let overrides = if with_overrides {
            Overrides {
                nextcloud_url: Some("https://cloud.example/".into()),
                redis_url: Some("redis://127.0.0.1/".into()),
                database_url: Some("sqlite:///var/www/data/owncloud.db".into()),
                ..Default::default()
            }
        } else {
            Overrides::default()
        };
        if let Ok(config) = EngineConfig::load(Some(&file), &overrides) {
            let shown = format!("{config:?}");
            prop_assert!(!shown.contains(&dbpassword), "{}", shown);
            prop_assert!(!shown.contains(&redis_password), "{}", shown);
            prop_assert!(config.nextcloud_url.ends_with('/'));
        }
    }
}

/// A `NextcloudPushRedis` URL whose password holds a raw `@` (valid: the URL's last `@` ends the
/// user info) shows none of it in the configuration's `Debug` (the redaction once cut at the
/// first `@` and showed the rest).
#[test]
fn redis_password_with_an_at_sign_is_redacted() {
    let overrides = Overrides {
        nextcloud_url: Some("https://cloud.example/".into()),
        redis_url: Some("redis://user:p@ssword@127.0.0.1:6379/0".into()),
        ..Default::default()
    };
    let config = EngineConfig::load(None, &overrides).unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains("ssword"), "{shown}");
}
