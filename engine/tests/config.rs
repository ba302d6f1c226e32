//! EngineConfig::load with real config.php fixtures and directive overrides.

use nextcloud_push_engine::{ConfigError, EngineConfig, Overrides};
use std::path::PathBuf;

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn config_php(body: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.php");
    std::fs::write(&path, format!("<?php\n$CONFIG = array (\n{body}\n);\n")).unwrap();
    Fixture { _dir: dir, path }
}

const BASE: &str = r#"
  'instanceid' => 'oc123',
  'dbtype' => 'pgsql',
  'dbname' => 'nextcloud',
  'dbhost' => 'db.internal:5433',
  'dbuser' => 'nc',
  'dbpassword' => 's3cret',
  'dbtableprefix' => 'nc_',
  'overwrite.cli.url' => 'https://cloud.example.com/nextcloud',
"#;

#[test]
fn plain_config_php() {
    let fixture = config_php(&format!("{BASE}\n  'redis' => array ('host' => 'localhost', 'port' => 6380, 'password' => 'pw', 'dbindex' => 2),"));
    let config = EngineConfig::load(Some(&fixture.path), &Overrides::default()).unwrap();
    assert_eq!(config.nextcloud_url, "https://cloud.example.com/nextcloud/");
    assert_eq!(config.redis.url, "redis://:pw@127.0.0.1:6380/2");
    assert!(config.redis.cluster_seeds.is_empty());
    assert_eq!(config.table_prefix, "nc_");
    assert_eq!(
        config.database_url.as_deref(),
        Some("postgresql://nc:s3cret@db.internal:5433/nextcloud")
    );
    assert!(config.debounce);
    assert_eq!(config.max_debounce_time, 15);
    assert_eq!(config.max_connection_time, 0);
    assert!(!config.allow_self_signed);
    assert_eq!(config.config_php.as_deref(), Some(fixture.path.as_path()));
    // secrets stay out of Debug
    let debug = format!("{config:?}");
    assert!(!debug.contains("s3cret") && !debug.contains(":pw@"), "{debug}");
}

#[test]
fn defaults_without_redis_key() {
    let fixture = config_php(BASE);
    let config = EngineConfig::load(Some(&fixture.path), &Overrides::default()).unwrap();
    assert_eq!(config.redis.url, "redis://127.0.0.1:6379/0");
}

#[test]
fn notify_push_redis_beats_redis() {
    let fixture = config_php(&format!(
        "{BASE}\n  'redis' => ['host' => 'main-redis', 'port' => 6379],\n  'notify_push_redis' => ['host' => 'push-redis', 'port' => 7000, 'user' => 'push', 'password' => 'p@ss'],"
    ));
    let config = EngineConfig::load(Some(&fixture.path), &Overrides::default()).unwrap();
    assert_eq!(config.redis.url, "redis://push:p%40ss@push-redis:7000/0");
}

#[test]
fn unix_socket_redis() {
    let fixture = config_php(&format!(
        "{BASE}\n  'redis' => ['host' => '/run/redis/redis.sock', 'port' => 0, 'dbindex' => '3'],"
    ));
    let config = EngineConfig::load(Some(&fixture.path), &Overrides::default()).unwrap();
    assert_eq!(config.redis.url, "redis+unix:///run/redis/redis.sock?db=3");
}

#[test]
fn cluster_uses_first_sorted_seed_for_pubsub() {
    let fixture = config_php(&format!(
        "{BASE}\n  'redis.cluster' => ['seeds' => ['10.0.0.3:7002', '10.0.0.1:7000', '10.0.0.2:7001'], 'password' => 'cpw'],"
    ));
    let config = EngineConfig::load(Some(&fixture.path), &Overrides::default()).unwrap();
    assert_eq!(config.redis.url, "redis://:cpw@10.0.0.1:7000/0");
    assert_eq!(config.redis.cluster_seeds.len(), 3);
}

#[test]
fn missing_overwrite_cli_url() {
    let fixture = config_php(
        &BASE.replace("'overwrite.cli.url' => 'https://cloud.example.com/nextcloud',", ""),
    );
    let error = EngineConfig::load(Some(&fixture.path), &Overrides::default()).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "config.php {}: overwrite.cli.url not set (or set NextcloudPushNextcloudUrl)",
            fixture.path.display()
        )
    );
    // the directive fills the gap, the rest of config.php still applies
    let overrides =
        Overrides { nextcloud_url: Some("http://127.0.0.1:8080".into()), ..Overrides::default() };
    let config = EngineConfig::load(Some(&fixture.path), &overrides).unwrap();
    assert_eq!(config.nextcloud_url, "http://127.0.0.1:8080/");
    assert_eq!(config.table_prefix, "nc_");
    assert_eq!(
        config.database_url.as_deref(),
        Some("postgresql://nc:s3cret@db.internal:5433/nextcloud")
    );
}

#[test]
fn overrides_win() {
    let fixture = config_php(&format!("{BASE}\n  'redis' => ['host' => 'redis-host'],"));
    let overrides = Overrides {
        nextcloud_url: Some("https://internal.example.com".into()),
        redis_url: Some("unix:///var/run/redis.sock".into()),
        redis_cluster_seeds: Vec::new(),
        database_url: Some("mysql://u:p@localhost/nc".into()),
        table_prefix: Some("oc_".into()),
        allow_self_signed: Some(true),
        max_debounce_time: Some(3),
        max_connection_time: Some(3600),
        debounce: Some(false),
    };
    let config = EngineConfig::load(Some(&fixture.path), &overrides).unwrap();
    assert_eq!(config.nextcloud_url, "https://internal.example.com/");
    assert_eq!(config.redis.url, "unix:///var/run/redis.sock");
    assert_eq!(config.database_url.as_deref(), Some("mysql://u:p@localhost/nc"));
    assert_eq!(config.table_prefix, "oc_");
    assert!(config.allow_self_signed);
    assert_eq!(config.max_debounce_time, 3);
    assert_eq!(config.max_connection_time, 3600);
    assert!(!config.debounce);
}

#[test]
fn without_config_php_url_and_redis_are_required() {
    let error = EngineConfig::load(None, &Overrides::default()).unwrap_err();
    assert_eq!(error, ConfigError::Missing("NextcloudPushNextcloudUrl"));
    assert_eq!(
        error.to_string(),
        "NextcloudPushNextcloudUrl is required when no Nextcloud config.php is given"
    );
    let only_url = Overrides { nextcloud_url: Some("http://nc/".into()), ..Overrides::default() };
    assert_eq!(
        EngineConfig::load(None, &only_url).unwrap_err().to_string(),
        "NextcloudPushRedis is required when no Nextcloud config.php is given"
    );
    let both = Overrides { redis_url: Some("redis://127.0.0.1:6379".into()), ..only_url };
    let config = EngineConfig::load(None, &both).unwrap();
    assert_eq!(config.nextcloud_url, "http://nc/");
    assert_eq!(config.table_prefix, "oc_");
    assert_eq!(config.database_url, None);
}

#[test]
fn invalid_directive_values_name_the_directive() {
    let base = Overrides {
        nextcloud_url: Some("http://nc/".into()),
        redis_url: Some("redis://127.0.0.1".into()),
        ..Overrides::default()
    };
    let bad_redis = Overrides { redis_url: Some("x".into()), ..base.clone() };
    let message = EngineConfig::load(None, &bad_redis).unwrap_err().to_string();
    assert!(message.starts_with("NextcloudPushRedis: invalid Redis URL \"x\": "), "{message}");

    let bad_url = Overrides { nextcloud_url: Some("ftp://nc".into()), ..base.clone() };
    let message = EngineConfig::load(None, &bad_url).unwrap_err().to_string();
    assert!(
        message.starts_with("NextcloudPushNextcloudUrl: invalid URL \"ftp://nc\": "),
        "{message}"
    );

    let bad_db = Overrides { database_url: Some("oracle://x".into()), ..base.clone() };
    let message = EngineConfig::load(None, &bad_db).unwrap_err().to_string();
    assert!(
        message.starts_with("NextcloudPushDatabase: invalid database URL \"oracle://x\": "),
        "{message}"
    );

    let bad_prefix = Overrides { table_prefix: Some("oc; DROP".into()), ..base.clone() };
    let message = EngineConfig::load(None, &bad_prefix).unwrap_err().to_string();
    assert!(message.starts_with("NextcloudPushTablePrefix: "), "{message}");

    for ok in [
        "redis://127.0.0.1:6379/0",
        "redis://user:pw@host",
        "unix:///run/redis.sock",
        "redis+unix:///run/redis.sock?db=1",
    ] {
        let overrides = Overrides { redis_url: Some(ok.into()), ..base.clone() };
        assert!(EngineConfig::load(None, &overrides).is_ok(), "{ok}");
    }
}

#[test]
fn config_php_errors_name_the_file_and_key() {
    let missing = PathBuf::from("/nonexistent/config.php");
    let message =
        EngineConfig::load(Some(&missing), &Overrides::default()).unwrap_err().to_string();
    assert!(
        message.starts_with("config.php /nonexistent/config.php: cannot read the file"),
        "{message}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.php");
    std::fs::write(&path, "<?php\n$CONFIG = getenv('X');\n").unwrap();
    let message = EngineConfig::load(Some(&path), &Overrides::default()).unwrap_err().to_string();
    assert!(message.starts_with(&format!("config.php {}: ", path.display())), "{message}");

    let oracle = config_php(&BASE.replace("'pgsql'", "'oci'"));
    let message =
        EngineConfig::load(Some(&oracle.path), &Overrides::default()).unwrap_err().to_string();
    assert!(message.contains("unsupported database type oci"), "{message}");

    let cluster = config_php(&format!("{BASE}\n  'redis.cluster' => ['seeds' => []],"));
    let message =
        EngineConfig::load(Some(&cluster.path), &Overrides::default()).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!("config.php {}: redis.cluster: ", cluster.path.display())),
        "{message}"
    );
    assert!(message.ends_with("(or set NextcloudPushRedis)"), "{message}");
    let fixed = Overrides { redis_url: Some("redis://127.0.0.1".into()), ..Overrides::default() };
    assert!(EngineConfig::load(Some(&cluster.path), &fixed).is_ok());
}

#[test]
fn tls_redis_from_config_php() {
    let prefix = config_php(&format!(
        "{BASE}\n  'redis' => ['host' => 'tls://redis.internal', 'port' => 6390],"
    ));
    let config = EngineConfig::load(Some(&prefix.path), &Overrides::default()).unwrap();
    assert_eq!(config.redis.url, "rediss://redis.internal:6390/0");
    assert_eq!(config.redis.tls, None);

    let context = config_php(&format!(
        "{BASE}\n  'redis' => ['host' => 'redis.internal', 'port' => 6390, 'ssl_context' => \
         ['local_cert' => '/etc/c.pem', 'local_pk' => '/etc/k.pem', 'cafile' => '/etc/ca.pem', 'verify_peer_name' => false, 'verify_peer' => false]],"
    ));
    let config = EngineConfig::load(Some(&context.path), &Overrides::default()).unwrap();
    // `verify_peer` is read with a trailing space by the parser, so "insecure" never applies
    assert_eq!(config.redis.url, "rediss://redis.internal:6390/0");
    let tls = config.redis.tls.unwrap();
    assert_eq!(tls.client_cert.as_deref(), Some(std::path::Path::new("/etc/c.pem")));
    assert_eq!(tls.client_key.as_deref(), Some(std::path::Path::new("/etc/k.pem")));
    assert_eq!(tls.ca_file.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
    assert!(tls.accept_invalid_hostname);

    let overrides = Overrides {
        redis_url: Some("rediss://redis.internal:6390/#insecure".into()),
        ..Overrides::default()
    };
    assert!(EngineConfig::load(Some(&context.path), &overrides).is_ok());
}

#[test]
fn incomplete_database_keys_are_replaced_by_the_directive() {
    let fixture = config_php(
        "  'dbtype' => 'mysql',\n  'dbname' => 'nc',\n  'overwrite.cli.url' => 'https://cloud.example.com',",
    );
    let message =
        EngineConfig::load(Some(&fixture.path), &Overrides::default()).unwrap_err().to_string();
    assert!(
        message.contains("no username set") && message.contains("(or set NextcloudPushDatabase)"),
        "{message}"
    );
    let overrides =
        Overrides { database_url: Some("mysql://u:p@db/nc".into()), ..Overrides::default() };
    let config = EngineConfig::load(Some(&fixture.path), &overrides).unwrap();
    assert_eq!(config.database_url.as_deref(), Some("mysql://u:p@db/nc"));
    assert_eq!(config.nextcloud_url, "https://cloud.example.com/");
}

#[test]
fn fingerprint_is_stable_and_tracks_every_field() {
    let fixture = config_php(BASE);
    let a = EngineConfig::load(Some(&fixture.path), &Overrides::default()).unwrap();
    let b = EngineConfig::load(Some(&fixture.path), &Overrides::default()).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_eq!(a.fingerprint().len(), 32);
    let c = EngineConfig::load(
        Some(&fixture.path),
        &Overrides { debounce: Some(false), ..Overrides::default() },
    )
    .unwrap();
    assert_ne!(a.fingerprint(), c.fingerprint());
    let mut d = a.clone();
    d.timing.tick = std::time::Duration::from_millis(100);
    assert_ne!(a.fingerprint(), d.fingerprint());
    // no secret in the fingerprint
    assert!(!a.fingerprint().contains("s3cret"));
}

/// The parser panics on a `pgsql_ssl` array that lacks one of its keys; `load` must turn that
/// into a configuration error (Apache refuses to start with a message) instead of a panic.
#[test]
fn partial_pgsql_ssl_is_an_error_not_a_panic() {
    let fixture = config_php(
        "  'overwrite.cli.url' => 'https://x', 'dbtype' => 'pgsql', 'dbhost' => 'db', \
         'dbuser' => 'a', 'dbpassword' => 'b', 'pgsql_ssl' => array ('mode' => 'require'),",
    );
    let err = EngineConfig::load(Some(&fixture.path), &Overrides::default()).unwrap_err();
    assert!(matches!(err, ConfigError::Parse { .. }), "{err:?}");
    assert!(err.to_string().contains("pgsql_ssl"), "{err}");
}

/// `NextcloudPushRedis` with several URLs names the seeds of a Redis Cluster: they replace
/// config.php's `redis`, sorted, the first one carrying the subscription; a bad one is refused
/// with the directive's name.
#[test]
fn several_redis_urls_are_cluster_seeds() {
    let fixture = config_php(&format!("{BASE}\n  'redis' => ['host' => 'redis-host'],"));
    let seeds = |urls: &[&str]| Overrides {
        redis_cluster_seeds: urls.iter().map(|u| u.to_string()).collect(),
        ..Overrides::default()
    };
    let config = EngineConfig::load(
        Some(&fixture.path),
        &seeds(&["redis://push:pw@10.0.0.2:7000/0", "redis://push:pw@10.0.0.1:7000/0"]),
    )
    .unwrap();
    assert_eq!(
        config.redis.cluster_seeds,
        ["redis://push:pw@10.0.0.1:7000/0", "redis://push:pw@10.0.0.2:7000/0"]
    );
    assert_eq!(config.redis.url, "redis://push:pw@10.0.0.1:7000/0");
    let e = EngineConfig::load(
        Some(&fixture.path),
        &seeds(&["redis://10.0.0.1:7000", "10.0.0.2:7000"]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("NextcloudPushRedis"), "{e}");
}
