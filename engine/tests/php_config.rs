//! config.php with its `*.config.php` companions, read the way Nextcloud reads them: evaluated
//! by the PHP CLI (merged in natural order, PHP code such as `getenv()` and `if` run), and,
//! without PHP, the literal fallback and its error. One test: the PHP settings are global.

use nextcloud_push_engine::php_config::{self, PhpSettings};
use nextcloud_push_engine::{EngineConfig, Overrides};

const BASE: &str = "<?php\n$CONFIG = array (\n  'dbtype' => 'sqlite3',\n  'datadirectory' => '/srv/data',\n  'overwrite.cli.url' => 'https://cloud.example.com/',\n  'redis' => array ('host' => '10.0.0.1', 'port' => 6379),\n);\n";

fn write(dir: &std::path::Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn companions_merge_like_nextcloud_with_php_and_literally_without() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.php");
    write(dir.path(), "config.php", BASE);
    // Natural order: a9 before a10, so a10's value is the one that stays.
    write(
        dir.path(),
        "a10.config.php",
        "<?php\n$CONFIG = array ('redis' => array ('host' => '10.0.0.10', 'port' => 6390));\n",
    );
    write(
        dir.path(),
        "a9.config.php",
        "<?php\n$CONFIG = array ('redis' => array ('host' => '10.0.0.9', 'port' => 6389));\n",
    );
    let load = || EngineConfig::load(Some(&config), &Overrides::default());

    // Without PHP the literal parser merges the companions.
    php_config::configure(PhpSettings { disabled: true, ..Default::default() });
    let literal = load().unwrap();
    assert!(literal.redis.url.starts_with("redis://10.0.0."), "{}", literal.redis.url);

    // A companion that is PHP code cannot be read literally: the error says what to install.
    write(
        dir.path(),
        "z.config.php",
        "<?php\nif (getenv('NO_SUCH_VARIABLE_HERE') === false) {\n  $CONFIG = array ('redis' => array ('host' => '10.0.0.99', 'port' => (int) '6399'));\n}\n",
    );
    let err = load().unwrap_err().to_string();
    assert!(err.contains("php-cli"), "{err}");

    let php = ["/usr/bin/php", "/usr/local/bin/php"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(php) = php else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no PHP CLI (CI=true: nothing skips)"
        );
        eprintln!("skipped: the PHP half needs the PHP CLI (apt-get install php-cli)");
        return;
    };
    php_config::configure(PhpSettings { binary: Some(php.into()), ..Default::default() });
    // PHP runs the code: z comes last and its branch is taken.
    let evaluated = load().unwrap();
    assert_eq!(evaluated.redis.url, "redis://10.0.0.99:6399/0");
    // Without z, natural order leaves a10's value (a plain sort would leave a9's).
    std::fs::remove_file(dir.path().join("z.config.php")).unwrap();
    assert_eq!(load().unwrap().redis.url, "redis://10.0.0.10:6390/0");
    // A syntax error: PHP's message, which names the file and line, reaches the error.
    write(dir.path(), "broken.config.php", "<?php\n$CONFIG = array ('x' => );\n");
    let err = load().unwrap_err().to_string();
    assert!(
        err.contains("PHP could not evaluate it") && err.contains("broken.config.php"),
        "{err}"
    );
    php_config::configure(PhpSettings::default());
}
