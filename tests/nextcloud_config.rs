//! Nextcloud's configuration as Nextcloud reads it: config.php plus every `*.config.php` next
//! to it, PHP code included (the official Docker image computes its Redis settings with
//! `getenv()`), and `NC_<key>` environment overrides, evaluated by the PHP CLI as Apache's
//! `User` with Apache's environment. Real apache2, real redis-server with an ACL user, the
//! Nextcloud double; the environment reaches Apache as a container's would.

mod common;

use common::{start_nextcloud, Stack, ALICE, T};
use std::os::unix::fs::PermissionsExt;
use testkit::apache::{Apache, ApacheBuilder, Env, Mode};
use testkit::redis::RedisServer;
use testkit::require;

/// config.php as the image's installer leaves it: no Redis (redis.config.php brings it), and an
/// `overwrite.cli.url` that the container's `NC_overwrite.cli.url` replaces.
const CONFIG_PHP: &str = r#"<?php
$CONFIG = array (
  'instanceid' => 'ocdocker01',
  'datadirectory' => '{root}/data',
  'dbtype' => 'sqlite3',
  'dbname' => 'nextcloud',
  'dbtableprefix' => 'oc_',
  'overwrite.cli.url' => 'http://127.0.0.1:9/',
  'installed' => true,
);
"#;

/// A Redis companion written the way the image writes its own: PHP code that reads the
/// container's environment, with a password file, a port cast to int and an ACL user.
const REDIS_CONFIG_PHP: &str = r#"<?php
if (getenv('REDIS_HOST')) {
  $CONFIG = array (
    'memcache.locking' => '\OC\Memcache\Redis',
    'redis' => array (
      'host' => getenv('REDIS_HOST'),
      'password' => getenv('REDIS_HOST_PASSWORD_FILE')
        ? trim(file_get_contents(getenv('REDIS_HOST_PASSWORD_FILE')))
        : (string) getenv('REDIS_HOST_PASSWORD'),
    ),
  );
  if (getenv('REDIS_HOST_PORT') !== false) {
    $CONFIG['redis']['port'] = (int) getenv('REDIS_HOST_PORT');
  } elseif (getenv('REDIS_HOST')[0] != '/') {
    $CONFIG['redis']['port'] = 6379;
  }
  if (getenv('REDIS_HOST_USER') !== false) {
    $CONFIG['redis']['user'] = (string) getenv('REDIS_HOST_USER');
  }
}
"#;

/// A literal companion, as the image ships several.
const APPS_CONFIG_PHP: &str = r#"<?php
$CONFIG = array (
  'apps_paths' => array (
    0 => array ('path' => '/var/www/html/apps', 'url' => '/apps', 'writable' => false),
  ),
);
"#;

/// The password file the container points `REDIS_HOST_PASSWORD_FILE` at (a Docker secret);
/// Apache's `User` (nobody) must be able to read it, as www-data reads the image's.
fn password_file(password: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("secret dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.path().join("redis-password");
    std::fs::write(&file, format!("{password}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    dir
}

/// config.php and redis.config.php, and the container environment redis.config.php reads:
/// `redis`'s address, the ACL user `push` and the password file in `secret`.
fn docker_layout(
    b: ApacheBuilder,
    redis: &RedisServer,
    secret: &tempfile::TempDir,
) -> ApacheBuilder {
    b.config_php_text(CONFIG_PHP)
        .extra_file("nextcloud/config/redis.config.php", REDIS_CONFIG_PHP)
        .env_var("REDIS_HOST", "127.0.0.1")
        .env_var("REDIS_HOST_PORT", &redis.port().to_string())
        .env_var("REDIS_HOST_USER", "push")
        .env_var(
            "REDIS_HOST_PASSWORD_FILE",
            &secret.path().join("redis-password").display().to_string(),
        )
}

/// The image's layout with only `NextcloudPushConfig` in the vhost: the Redis host, port, ACL
/// user and password (from a file) come from the environment through redis.config.php, the
/// Nextcloud URL from `NC_overwrite.cli.url`. Logins (which need the URL) and events (which
/// need Redis) work, and Redis says the daemon is connected as the ACL user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_layout_starts_with_only_nextcloud_push_config() {
    let redis = require!(RedisServer::start());
    assert_eq!(
        redis.command(&["ACL", "SETUSER", "push", "on", ">s3cret", "~*", "&*", "+@all"]),
        "OK"
    );
    let secret = password_file("s3cret");
    let nextcloud = start_nextcloud();
    let env = require!(Env::require());
    // The vhost's only push directive is the generated `NextcloudPushConfig`.
    let apache = docker_layout(Apache::builder(&env), &redis, &secret)
        .extra_file("nextcloud/config/apps.config.php", APPS_CONFIG_PHP)
        .env_var("NC_overwrite.cli.url", &nextcloud.base_url())
        .start(Mode::Foreground)
        .await;
    let conf = std::fs::read_to_string(apache.root().join("conf/httpd.conf")).unwrap();
    let directives: Vec<&str> =
        conf.lines().map(str::trim).filter(|l| l.starts_with("NextcloudPush")).collect();
    assert_eq!(directives.len(), 1, "{directives:?}");
    assert!(directives[0].starts_with("NextcloudPushConfig "), "{directives:?}");
    let stack = Stack { redis, nextcloud, apache };
    stack.await_subscribed().await;
    let mut alice = stack.login(ALICE).await;
    stack.roundtrip(&mut alice, "alice", "from_the_environment").await;
    let clients = stack.redis.command(&["CLIENT", "LIST"]);
    assert!(
        clients.lines().any(|l| l.contains(" user=push ") && l.contains("cmd=subscribe")),
        "the daemon's subscription runs as the ACL user:\n{clients}"
    );
    alice.close().await;
    stack.finish();
}

/// A wrong password for the ACL user: Apache and the daemon start, the daemon says why it cannot
/// reach Redis (once per outage, without the password), and keeps trying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_redis_acl_password_is_one_clear_line() {
    let redis = require!(RedisServer::start());
    redis.command(&["ACL", "SETUSER", "push", "on", ">s3cret", "~*", "&*", "+@all"]);
    let secret = password_file("wrong-secret");
    let env = require!(Env::require());
    let mut apache =
        docker_layout(Apache::builder(&env), &redis, &secret).start(Mode::Foreground).await;
    let daemon = apache.await_daemon(None, T).await;
    let line = apache.await_error_log("NCP1001", T).await;
    assert!(line.contains("redis://push:***@127.0.0.1"), "{line}");
    assert!(line.contains("authentication failed"), "{line}");
    assert!(!apache.error_log().contains("wrong-secret"), "the password is never logged");
    apache.allow("NCP1001");
    assert_eq!(apache.daemon_pid(), Some(daemon), "the daemon stays up");
    apache.finish();
}

/// A companion with a PHP syntax error refuses the configuration (`apache2 -t`) with a message
/// that names config.php and carries PHP's own error, which names the broken file and line.
#[test]
fn a_php_error_in_a_companion_refuses_the_configuration_and_names_it() {
    let env = require!(Env::require());
    let run = Apache::builder(&env)
        .config_php_text(CONFIG_PHP)
        .extra_file("nextcloud/config/broken.config.php", "<?php\n$CONFIG = array (\n  'x' => ;\n")
        .run_once(&["-t"]);
    assert!(!run.success(), "{}", run.output);
    assert!(run.output.contains("config.php"), "{}", run.output);
    assert!(run.output.contains("broken.config.php"), "PHP names the file:\n{}", run.output);
}
