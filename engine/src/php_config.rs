//! Nextcloud's configuration as Nextcloud itself reads it: `config.php`, then every
//! `*.config.php` of the same directory in natural order, each `include`d as PHP code and merged
//! over the previous ones with `array_merge` (lib/private/Config.php), then `NC_<key>`
//! environment variables over the top-level keys (`Config::getValue`). The official Docker
//! image's `redis.config.php` is PHP code (`getenv('REDIS_HOST')`, `if`/`elseif`, `(int)`,
//! `file_get_contents(getenv('REDIS_HOST_PASSWORD_FILE'))`), which no literal parser can read,
//! so the PHP CLI that Nextcloud needs anyway evaluates the files: as Apache's `User` (the
//! owner of Nextcloud's files, and never root), with Apache's environment and the CLI's
//! php.ini, for at most [`TIMEOUT`]. What it prints is the merged array as `var_export` writes it, a literal
//! that the literal parser then reads like any config.php.
//!
//! Without a PHP CLI ([`settings`] finds none) the caller falls back to the literal parser.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// Upper bound of one evaluation (PHP's own start is ~20 ms).
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How the PHP CLI is run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PhpSettings {
    /// The PHP CLI; `None`: `php` on `PATH`, else none.
    pub binary: Option<PathBuf>,
    /// Run as this uid and gid (Apache's `User` and `Group`; only when the caller is root).
    pub user: Option<(u32, u32)>,
    /// Never evaluate (the literal parser only).
    pub disabled: bool,
}

static SETTINGS: RwLock<Option<PhpSettings>> = RwLock::new(None);

/// Sets how later evaluations run (the Apache module does so before it reads any config).
pub fn configure(settings: PhpSettings) {
    if let Ok(mut s) = SETTINGS.write() {
        *s = Some(settings);
    }
}

/// The current settings (defaults until [`configure`]).
pub fn settings() -> PhpSettings {
    SETTINGS.read().ok().and_then(|s| s.clone()).unwrap_or_default()
}

/// The PHP CLI to run, if there is one.
fn php_binary(settings: &PhpSettings) -> Option<PathBuf> {
    if settings.disabled {
        return None;
    }
    if let Some(binary) = &settings.binary {
        return Some(binary.clone());
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("php"))
        .find(|candidate| candidate.is_file())
}

/// The files Nextcloud reads, in its order: `config.php`, then `*.config.php` of its directory
/// in natural order (PHP's `natsort`).
pub fn config_files(config_php: &Path) -> Vec<PathBuf> {
    let mut extra: Vec<PathBuf> = config_php
        .parent()
        .and_then(|dir| std::fs::read_dir(dir).ok())
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(".config.php") && n.len() > ".config.php".len())
        })
        .collect();
    extra.sort_by(|a, b| natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    std::iter::once(config_php.to_path_buf()).chain(extra).collect()
}

/// PHP's `strnatcmp`, enough for file names: digit runs compare as numbers.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, _) => return std::cmp::Ordering::Less,
            (_, None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (trim_zeros(&a[..da]), trim_zeros(&b[..db]));
                let order = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if order != std::cmp::Ordering::Equal {
                    return order;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let start = digits.iter().position(|&d| d != b'0').unwrap_or(digits.len());
    &digits[start..]
}

/// Includes every file in order like Nextcloud's `Config::readData`, applies the `NC_`
/// environment overrides like `Config::getValue`, prints the result as a PHP literal.
const SCRIPT: &str = r#"
$merged = [];
foreach (array_slice($argv, 1) as $file) {
    $CONFIG = null;
    if ((include $file) === false) {
        fwrite(STDERR, "cannot include $file\n");
        exit(3);
    }
    if (isset($CONFIG) && is_array($CONFIG)) {
        $merged = array_merge($merged, $CONFIG);
    }
}
// Nextcloud asks getenv('NC_' . $key) for each key it reads; PHP's getenv() list mangles
// dots in names (NC_overwrite.cli.url), so ask by name: every key set, every key this module
// reads, every NC_ name listed.
$keys = array_merge(array_keys($merged), ['overwrite.cli.url', 'dbtype', 'dbhost', 'dbport',
    'dbname', 'dbuser', 'dbpassword', 'dbtableprefix', 'datadirectory', 'redis',
    'notify_push_redis', 'dbdriveroptions', 'pgsql_ssl', 'mysql.utf8mb4']);
foreach (array_keys(getenv()) as $name) {
    if (strncmp($name, 'NC_', 3) === 0 && strlen($name) > 3) {
        $keys[] = substr($name, 3);
    }
}
foreach (array_unique($keys) as $key) {
    $value = getenv('NC_' . $key);
    if ($value !== false) {
        $merged[$key] = $value;
    }
}
echo "<?php\n\$CONFIG = " . var_export($merged, true) . ";\n";
"#;

/// What the evaluation gave.
#[derive(Debug)]
pub enum Evaluated {
    /// The merged configuration as a PHP literal (`<?php $CONFIG = array (…);`).
    Literal(String),
    /// There is no PHP CLI (or evaluation is disabled): read the files literally.
    NoPhp,
    /// PHP ran and failed: why (its first error line, or the timeout).
    Failed(String),
}

/// Evaluates `config_php` and its `*.config.php` companions with the PHP CLI.
pub fn evaluate(config_php: &Path) -> Evaluated {
    let settings = settings();
    let Some(php) = php_binary(&settings) else { return Evaluated::NoPhp };
    let mut command = Command::new(&php);
    command
        // The CLI's php.ini, as for `occ` (its extensions define constants such as
        // \PDO::MYSQL_ATTR_SSL_CA that config.php may use); errors go to stderr.
        .args(["-d", "display_errors=stderr", "-d", "log_errors=0", "-r", SCRIPT, "--"])
        .args(config_files(config_php))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((uid, gid)) = settings.user {
        use std::os::unix::process::CommandExt;
        // Set by the caller only when it runs as root (only root may switch); std also drops
        // the supplementary groups (setgroups(0)) when it changes the uid.
        command.uid(uid).gid(gid);
    }
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return Evaluated::Failed(format!("cannot run {}: {e}", php.display())),
    };
    // Both pipes are drained by threads so a large config cannot block PHP on a full pipe.
    let out = child.stdout.take().map(drain);
    let err = child.stderr.take().map(drain);
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!("{} did not finish within {TIMEOUT:?}", php.display()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => break Err(e.to_string()),
        }
    };
    let stdout = out.and_then(|t| t.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|t| t.join().ok()).unwrap_or_default();
    match status {
        Err(why) => Evaluated::Failed(why),
        Ok(status) if status.success() && stdout.starts_with("<?php") => Evaluated::Literal(stdout),
        Ok(status) => {
            let first = stderr
                .lines()
                .chain(stdout.lines())
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("no output")
                .to_owned();
            Evaluated::Failed(format!("PHP ({status}): {}", crate::text::clip(&first)))
        }
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        // Bounded: a config is small; a runaway include cannot exhaust memory.
        let _ = (&mut pipe).take(16 << 20).read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn companions_come_after_config_php_in_natural_order() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "config.php",
            "b.config.php",
            "a10.config.php",
            "a9.config.php",
            "x.php",
            ".config.php",
        ] {
            std::fs::write(dir.path().join(name), "<?php\n").unwrap();
        }
        let names: Vec<String> = config_files(&dir.path().join("config.php"))
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["config.php", "a9.config.php", "a10.config.php", "b.config.php"]);
    }
}
