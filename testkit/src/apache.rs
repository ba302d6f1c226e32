//! A real Debian `apache2` for black-box tests (style guide habits 21–23).
//!
//! [`Apache::builder`] renders a private server root in a 0755 tempdir — `conf/httpd.conf`, a
//! Nextcloud-like DocumentRoot (optionally with Nextcloud's `.htaccess` and `AllowOverride All`),
//! a real `config/config.php` pointing at the test's Nextcloud double and redis-server — and runs
//! `apache2 -X` or `apache2 -DFOREGROUND` as a child process in its own process group, or
//! `apache2 -t` for config tests.
//!
//! The error log is an oracle: [`Apache::finish`] (and `Drop`, for a test that never reached
//! `finish`) stops Apache and fails if the error log or Apache's stderr has a
//! `[warn]`/`[error]`/`[crit]`/`[alert]`/`[emerg]` line, a Rust panic or a child killed by a signal
//! that the test did not whitelist with [`Apache::allow`], or if a process of the server is left
//! behind. On failure it prints the error log.
//!
//! Binaries: `APACHE_BIN` (default `/usr/sbin/apache2`), `NCP_MODULE` (default
//! `<target>/debug/libmod_nextcloud_push.so`, then `<target>/release/…`; `<target>` is
//! `CARGO_TARGET_DIR` or the workspace's `target/`). When one is missing, [`env_or_skip`] prints
//! why and returns `None`, except under `CI=true`, where it panics with what to install or run.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Where Debian keeps the shared modules (`apxs -q LIBEXECDIR`).
pub const MODULES_DIR: &str = "/usr/lib/apache2/modules";
/// The process name the push daemon gives itself (`/proc/<pid>/comm`).
pub const DAEMON_NAME: &str = "nextcloud-push";
/// Nextcloud's `.htaccess` rewrite rules, including the front-controller catch-all.
pub const NEXTCLOUD_HTACCESS: &str = include_str!("../fixtures/nextcloud.htaccess");

const START_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const LEFTOVER_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);

/// The multi-processing module to load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mpm {
    Event,
    Worker,
    Prefork,
}

impl Mpm {
    pub const ALL: [Mpm; 3] = [Mpm::Event, Mpm::Worker, Mpm::Prefork];

    pub fn name(self) -> &'static str {
        match self {
            Mpm::Event => "event",
            Mpm::Worker => "worker",
            Mpm::Prefork => "prefork",
        }
    }
}

/// How the server runs. Both keep apache2 as our child process (no `-k start` daemonizing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `apache2 -X`: one process serves every request, no children.
    Single,
    /// `apache2 -DFOREGROUND`: the parent stays in the foreground with real children.
    Foreground,
}

impl Mode {
    pub const ALL: [Mode; 2] = [Mode::Single, Mode::Foreground];

    fn args(self) -> &'static [&'static str] {
        match self {
            Mode::Single => &["-X"],
            Mode::Foreground => &["-DFOREGROUND"],
        }
    }
}

/// The binaries a real-httpd test needs.
#[derive(Clone, Debug)]
pub struct Env {
    pub apache_bin: PathBuf,
    /// `None` only from [`Env::without_module`]: harness self-tests that need no module.
    pub module: Option<PathBuf>,
}

impl Env {
    /// Finds apache2 and the built module, or says what is missing and how to get it.
    pub fn find() -> Result<Env, String> {
        let apache_bin = find_apache()?;
        let module = find_module()?;
        Ok(Env { apache_bin, module: Some(module) })
    }

    /// Finds apache2 only.
    pub fn without_module() -> Result<Env, String> {
        Ok(Env { apache_bin: find_apache()?, module: None })
    }
}

impl Env {
    /// For [`crate::require!`]: `Env::find()` as a [`crate::Skip`] (a panic under `CI=true`).
    pub fn require() -> Result<Env, crate::Skip> {
        match Env::find() {
            Ok(env) => Ok(env),
            Err(why) if is_ci() => panic!("{why} (CI=true: real-httpd tests must not skip)"),
            Err(why) => Err(crate::Skip(why)),
        }
    }
}

/// `Env::find()`, or `None` after printing why this test is skipped. Under `CI=true` nothing
/// skips: a missing binary panics with what to install or run.
pub fn env_or_skip(test: &str) -> Option<Env> {
    or_skip(test, Env::find())
}

/// `Env::without_module()` with the same skip rules.
pub fn env_without_module_or_skip(test: &str) -> Option<Env> {
    or_skip(test, Env::without_module())
}

fn or_skip(test: &str, found: Result<Env, String>) -> Option<Env> {
    match found {
        Ok(env) => Some(env),
        Err(why) if is_ci() => panic!("{test}: {why} (CI=true: real-httpd tests must not skip)"),
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            None
        }
    }
}

/// True when running under CI (`CI=true`), where no test may skip.
pub fn is_ci() -> bool {
    std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false)
}

fn find_apache() -> Result<PathBuf, String> {
    let bin = std::env::var_os("APACHE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/apache2"));
    if !bin.is_file() {
        return Err(format!(
            "{} not found: install Debian's apache2 (`apt-get install apache2 apache2-dev`, or run \
             scripts/test) or set APACHE_BIN",
            bin.display()
        ));
    }
    for m in ["mpm_event", "authz_core", "rewrite"] {
        let so = Path::new(MODULES_DIR).join(format!("mod_{m}.so"));
        if !so.is_file() {
            return Err(format!("{} not found: install Debian's apache2", so.display()));
        }
    }
    Ok(bin)
}

/// The Cargo target directory the module is built into.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_dir().join(dir)
            }
        }
        None => workspace_dir().join("target"),
    }
}

/// The workspace root (the parent of `testkit/`).
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit lives in the workspace").into()
}

fn find_module() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("NCP_MODULE") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("NCP_MODULE={} does not exist", path.display()))
        };
    }
    let target = target_dir();
    for profile in ["debug", "release"] {
        let so = target.join(profile).join("libmod_nextcloud_push.so");
        if so.is_file() {
            return Ok(so);
        }
    }
    Err(format!(
        "the module is not built ({}/debug/libmod_nextcloud_push.so missing): run `cargo build` \
         (or scripts/test) first, or set NCP_MODULE",
        target.display()
    ))
}

/// A free TCP port on 127.0.0.1 (bound and released; Apache binds it next).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Builds the server root and configuration of one test server.
#[derive(Clone, Debug)]
pub struct ApacheBuilder {
    env: Env,
    mpm: Mpm,
    mpm_knobs: Vec<(String, String)>,
    nextcloud_url: Option<String>,
    redis: Option<(String, u16)>,
    config_php_text: Option<String>,
    push_config: bool,
    htaccess: bool,
    daemon_socket: Option<PathBuf>,
    server_lines: Vec<String>,
    vhost_lines: Vec<String>,
    extra_files: Vec<(PathBuf, String)>,
    extra_databases: Vec<PathBuf>,
    expect_daemon: Option<bool>,
    ready_log: Option<String>,
    allowed: Vec<String>,
    env_vars: Vec<(String, String)>,
    nofile: Option<(u64, u64)>,
}

impl ApacheBuilder {
    pub fn new(env: &Env) -> ApacheBuilder {
        ApacheBuilder {
            env: env.clone(),
            mpm: Mpm::Event,
            mpm_knobs: Vec::new(),
            nextcloud_url: None,
            redis: None,
            config_php_text: None,
            push_config: true,
            htaccess: false,
            daemon_socket: None,
            server_lines: Vec::new(),
            vhost_lines: Vec::new(),
            extra_files: Vec::new(),
            extra_databases: Vec::new(),
            expect_daemon: None,
            ready_log: None,
            allowed: Vec::new(),
            env_vars: Vec::new(),
            nofile: None,
        }
    }

    pub fn mpm(mut self, mpm: Mpm) -> Self {
        self.mpm = mpm;
        self
    }

    /// Any MPM directive (`ThreadsPerChild 5`, `MaxConnectionsPerChild 1`, …). Later calls with the
    /// same name replace earlier ones.
    pub fn mpm_knob(mut self, name: &str, value: impl ToString) -> Self {
        self.mpm_knobs.retain(|(n, _)| n != name);
        self.mpm_knobs.push((name.to_string(), value.to_string()));
        self
    }

    pub fn max_request_workers(self, n: u32) -> Self {
        self.mpm_knob("MaxRequestWorkers", n)
    }

    pub fn threads_per_child(self, n: u32) -> Self {
        self.mpm_knob("ThreadsPerChild", n)
    }

    pub fn start_servers(self, n: u32) -> Self {
        self.mpm_knob("StartServers", n)
    }

    pub fn max_connections_per_child(self, n: u32) -> Self {
        self.mpm_knob("MaxConnectionsPerChild", n)
    }

    /// `overwrite.cli.url` in the generated config.php (the Nextcloud double's base URL).
    pub fn nextcloud_url(mut self, url: &str) -> Self {
        self.nextcloud_url = Some(url.to_string());
        self
    }

    /// `redis` => host/port in the generated config.php.
    pub fn redis(mut self, host: &str, port: u16) -> Self {
        self.redis = Some((host.to_string(), port));
        self
    }

    /// Replaces the generated config.php with this text (`{root}` is replaced by the server root).
    pub fn config_php_text(mut self, text: &str) -> Self {
        self.config_php_text = Some(text.to_string());
        self
    }

    /// Whether the vhost gets `NextcloudPushConfig <root>/nextcloud/config/config.php` (default
    /// true; the line is written only when the module is loaded).
    pub fn push_config(mut self, on: bool) -> Self {
        self.push_config = on;
        self
    }

    /// Nextcloud's `.htaccess` in the DocumentRoot and `AllowOverride All`.
    pub fn nextcloud_htaccess(mut self, on: bool) -> Self {
        self.htaccess = on;
        self
    }

    /// `NextcloudPushSocket <path>` (server-wide); readiness waits for this path.
    pub fn daemon_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.daemon_socket = Some(path.into());
        self
    }

    /// A line at server level (after the MPM knobs, before the vhost). `{root}` is replaced by
    /// the server root.
    pub fn server_line(mut self, line: impl Into<String>) -> Self {
        self.server_lines.push(line.into());
        self
    }

    /// A line inside the test's `<VirtualHost>`. `{root}` is replaced by the server root.
    pub fn vhost_line(mut self, line: impl Into<String>) -> Self {
        self.vhost_lines.push(line.into());
        self
    }

    /// A file written into the server root before Apache starts (e.g. a second vhost's
    /// config.php); `{root}` in `text` is replaced by the server root.
    pub fn extra_file(mut self, relative: impl Into<PathBuf>, text: &str) -> Self {
        self.extra_files.push((relative.into(), text.to_string()));
        self
    }

    /// Another Nextcloud SQLite database (`<datadirectory>/<dbname>.db` of a second vhost's
    /// config.php), relative to the server root, created like the main one.
    pub fn extra_database(mut self, relative: impl Into<PathBuf>) -> Self {
        self.extra_databases.push(relative.into());
        self
    }

    /// Whether readiness waits for the push daemon (its socket and its process). Default: when the
    /// module is loaded and the vhost has `NextcloudPushConfig`.
    pub fn expect_daemon(mut self, on: bool) -> Self {
        self.expect_daemon = Some(on);
        self
    }

    /// Readiness also waits for an error-log line containing this text.
    pub fn ready_log(mut self, needle: &str) -> Self {
        self.ready_log = Some(needle.to_string());
        self
    }

    /// Starts apache2 with this RLIMIT_NOFILE (soft, hard), through util-linux `prlimit`, and,
    /// when this process has CAP_SYS_RESOURCE, through `setpriv` without it, so nothing under
    /// Apache (the push daemon included) can raise the hard limit again.
    pub fn nofile(mut self, soft: u64, hard: u64) -> Self {
        self.nofile = Some((soft, hard));
        self
    }

    /// Whitelists error-log lines containing `needle` (an `AH`/`NCP` id or a message part).
    pub fn allow(mut self, needle: &str) -> Self {
        self.allowed.push(needle.to_string());
        self
    }

    /// Starts apache2 with this variable in its environment (children and the push daemon
    /// inherit it).
    pub fn env_var(mut self, key: &str, value: &str) -> Self {
        self.env_vars.push((key.to_string(), value.to_string()));
        self
    }

    fn module_loaded(&self) -> bool {
        self.env.module.is_some()
    }

    fn waits_for_daemon(&self) -> bool {
        self.expect_daemon.unwrap_or(self.module_loaded() && self.push_config)
    }

    /// Writes the server root and returns it without starting anything.
    pub fn render(&self) -> ServerRoot {
        self.render_on_port(free_port())
    }

    fn render_on_port(&self, port: u16) -> ServerRoot {
        let dir = tempfile::Builder::new().prefix("ncp-apache-").tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        // Children run as `nobody` and must reach the DocumentRoot and the daemon's socket dir.
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod server root");
        for sub in ["conf", "logs", "run", "nextcloud/config", "data"] {
            fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        let docroot = root.join("nextcloud");
        fs::write(docroot.join("index.php"), "<?php // Nextcloud front controller stand-in\n")
            .expect("index.php");
        fs::write(docroot.join("status.txt"), "testkit static file\n").expect("status.txt");
        if self.htaccess {
            fs::write(docroot.join(".htaccess"), NEXTCLOUD_HTACCESS).expect(".htaccess");
        }
        for (relative, text) in &self.extra_files {
            let path = root.join(relative);
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).expect("mkdir for extra file");
            }
            fs::write(&path, text.replace("{root}", &root.display().to_string()))
                .expect("extra file");
        }
        let config_php = docroot.join("config/config.php");
        fs::write(&config_php, self.config_php(&root)).expect("config.php");
        // The SQLite database config.php names (`<datadirectory>/<dbname>.db`), owned like a real
        // installation's by the user the daemon runs as.
        let databases = std::iter::once(PathBuf::from("data/nextcloud.db"))
            .chain(self.extra_databases.iter().cloned())
            .map(|relative| root.join(relative));
        for db in databases {
            let dir = db.parent().expect("database directory").to_path_buf();
            fs::create_dir_all(&dir).expect("mkdir for database");
            create_nextcloud_sqlite(&db, "oc_");
            if euid() == 0 {
                chown_to_user(&dir, "nobody", "nogroup");
                chown_to_user(&db, "nobody", "nogroup");
            }
        }

        let conf = self.httpd_conf(&root, port, &config_php);
        let conf_path = root.join("conf/httpd.conf");
        fs::write(&conf_path, conf).expect("httpd.conf");
        ServerRoot { dir, port, conf: conf_path, config_php }
    }

    fn config_php(&self, root: &Path) -> String {
        if let Some(text) = &self.config_php_text {
            return text.replace("{root}", &root.display().to_string());
        }
        let nextcloud = self.nextcloud_url.as_deref().unwrap_or("http://127.0.0.1:9");
        let (redis_host, redis_port) =
            self.redis.clone().unwrap_or_else(|| ("127.0.0.1".to_string(), 6379));
        nextcloud_config_php(nextcloud, &redis_host, redis_port, &root.join("data"))
    }

    fn httpd_conf(&self, root: &Path, port: u16, config_php: &Path) -> String {
        let r = root.display();
        let subst = |line: &str| line.replace("{root}", &root.display().to_string());
        let mut c = String::new();
        let _ = writeln!(c, "# generated by testkit::apache ({} MPM)", self.mpm.name());
        let _ = writeln!(c, "ServerRoot \"{r}\"");
        let mpm = self.mpm.name();
        let _ = writeln!(c, "LoadModule mpm_{mpm}_module {MODULES_DIR}/mod_mpm_{mpm}.so");
        let _ = writeln!(c, "LoadModule authz_core_module {MODULES_DIR}/mod_authz_core.so");
        let _ = writeln!(c, "LoadModule rewrite_module {MODULES_DIR}/mod_rewrite.so");
        if let Some(module) = &self.env.module {
            let _ = writeln!(c, "LoadModule nextcloud_push_module \"{}\"", module.display());
        }
        let _ = writeln!(c, "Listen 127.0.0.1:{port}");
        let _ = writeln!(c, "ServerName localhost");
        let _ = writeln!(c, "PidFile \"{r}/run/httpd.pid\"");
        let _ = writeln!(c, "DefaultRuntimeDir \"{r}/run\"");
        let _ = writeln!(c, "ErrorLog \"{r}/logs/error.log\"");
        let _ = writeln!(c, "CustomLog \"{r}/logs/access.log\" \"%r %>s %X\"");
        if self.module_loaded() {
            let _ = writeln!(c, "LogLevel info nextcloud_push:debug");
        } else {
            let _ = writeln!(c, "LogLevel info");
        }
        // As root, children would otherwise run as uid -1 and log AH02155.
        if euid() == 0 {
            let _ = writeln!(c, "User nobody");
            let _ = writeln!(c, "Group nogroup");
        }
        for (name, value) in &self.mpm_knobs {
            let _ = writeln!(c, "{name} {value}");
        }
        if let (Some(socket), true) = (&self.daemon_socket, self.module_loaded()) {
            let _ = writeln!(c, "NextcloudPushSocket \"{}\"", socket.display());
        }
        let _ = writeln!(c, "DocumentRoot \"{r}/nextcloud\"");
        let _ = writeln!(
            c,
            "<Directory />\n    AllowOverride None\n    Require all denied\n</Directory>"
        );
        for line in &self.server_lines {
            let _ = writeln!(c, "{}", subst(line));
        }
        let _ = writeln!(c, "<VirtualHost 127.0.0.1:{port}>");
        let _ = writeln!(c, "    ServerName localhost");
        let _ = writeln!(c, "    DocumentRoot \"{r}/nextcloud\"");
        let _ = writeln!(c, "    <Directory \"{r}/nextcloud\">");
        let _ = writeln!(c, "        Options FollowSymLinks");
        let _ = writeln!(c, "        AllowOverride {}", if self.htaccess { "All" } else { "None" });
        let _ = writeln!(c, "        Require all granted");
        let _ = writeln!(c, "    </Directory>");
        if self.module_loaded() && self.push_config {
            let _ = writeln!(c, "    NextcloudPushConfig \"{}\"", config_php.display());
        }
        for line in &self.vhost_lines {
            let _ = writeln!(c, "    {}", subst(line));
        }
        let _ = writeln!(c, "</VirtualHost>");
        c
    }

    /// `apache2 -t -f <conf>`: the exit status and everything it printed.
    pub fn config_test(&self) -> ConfigTest {
        self.run_once(&["-t"])
    }

    /// `apache2 <args> -f <conf>` (e.g. `-t -D DUMP_MODULES`, `-L`), run to completion.
    pub fn run_once(&self, args: &[&str]) -> ConfigTest {
        let root = self.render();
        let output = Command::new(&self.env.apache_bin)
            .args(args)
            .arg("-f")
            .arg(&root.conf)
            .env("LANG", "C")
            .envs(self.env_vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .output()
            .expect("run apache2");
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        ConfigTest { status: output.status, output: text, root }
    }

    /// Starts apache2 in `mode` and waits until it serves: the port accepts, the pid file is
    /// written and (when the push daemon is expected) its socket and process exist.
    pub async fn start(self, mode: Mode) -> Apache {
        let mut last_err = String::new();
        // A free port can be taken between our probe and Apache's bind by a parallel test.
        for _attempt in 0..3 {
            let root = self.render_on_port(free_port());
            match Apache::launch(&self, root, mode).await {
                Ok(apache) => return apache,
                Err((err, retry)) if retry => last_err = err,
                Err((err, _)) => panic!("{err}"),
            }
        }
        panic!("apache2 did not start: {last_err}");
    }
}

/// A real Nextcloud `config.php` (SQLite, Redis memcache) as `occ maintenance:install` writes it,
/// pointing at a Nextcloud base URL and a Redis server.
pub fn nextcloud_config_php(
    nextcloud: &str,
    redis_host: &str,
    redis_port: u16,
    data: &Path,
) -> String {
    format!(
        r#"<?php
$CONFIG = array (
  'instanceid' => 'ocncptest01',
  'passwordsalt' => 'testkit-salt',
  'secret' => 'testkit-secret',
  'trusted_domains' =>
  array (
    0 => 'localhost',
    1 => '127.0.0.1',
  ),
  'trusted_proxies' => array ( 0 => '127.0.0.1' ),
  'datadirectory' => '{data}',
  'dbtype' => 'sqlite3',
  'dbname' => 'nextcloud',
  'dbtableprefix' => 'oc_',
  'version' => '30.0.0.0',
  'overwrite.cli.url' => '{nextcloud}',
  'htaccess.RewriteBase' => '/',
  'installed' => true,
  'memcache.local' => '\\OC\\Memcache\\APCu',
  'memcache.distributed' => '\\OC\\Memcache\\Redis',
  'memcache.locking' => '\\OC\\Memcache\\Redis',
  'redis' =>
  array (
    'host' => '{redis_host}',
    'port' => {redis_port},
    'timeout' => 0.0,
    'dbindex' => 0,
  ),
  'maintenance' => false,
);
"#,
        data = data.display(),
    )
}

/// Creates Nextcloud's SQLite database with the (empty) tables the push daemon reads,
/// `{prefix}mounts` and `{prefix}filecache`, in the columns of Nextcloud's schema (the same DDL as
/// `testkit::db` uses for SQLite). Replaces an existing file.
pub fn create_nextcloud_sqlite(path: &Path, prefix: &str) {
    let _ = fs::remove_file(path);
    let p = prefix;
    let statements = [
        format!(
            "CREATE TABLE {p}filecache (fileid INTEGER NOT NULL PRIMARY KEY, storage BIGINT NOT \
             NULL DEFAULT 0, path CLOB DEFAULT NULL, path_hash VARCHAR(32) NOT NULL DEFAULT '', \
             parent BIGINT NOT NULL DEFAULT 0, name VARCHAR(250) DEFAULT NULL)"
        ),
        format!(
            "CREATE TABLE {p}mounts (id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, storage_id \
             BIGINT NOT NULL, root_id BIGINT NOT NULL, user_id VARCHAR(64) NOT NULL, mount_point \
             VARCHAR(4000) NOT NULL, mount_id BIGINT DEFAULT NULL, mount_provider_class \
             VARCHAR(128) DEFAULT NULL)"
        ),
        format!("CREATE INDEX {p}mounts_storage_index ON {p}mounts (storage_id)"),
    ];
    sqlite_exec(path, &statements);
}

/// Runs SQL statements on an SQLite file (created if missing) and panics on any error. Its own
/// thread and runtime: callable from sync code and from inside any tokio runtime.
pub fn sqlite_exec(path: &Path, statements: &[String]) {
    let (path, statements) = (path.to_path_buf(), statements.to_vec());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime for SQLite");
        runtime.block_on(async {
            use sqlx::{Connection, Executor};
            let options =
                sqlx::sqlite::SqliteConnectOptions::new().filename(&path).create_if_missing(true);
            let mut db = sqlx::SqliteConnection::connect_with(&options)
                .await
                .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
            for sql in &statements {
                db.execute(sql.as_str()).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            }
            let _ = db.close().await;
        })
    })
    .join()
    .expect("SQLite thread panicked");
}

/// chown to a user and group looked up in /etc/passwd and /etc/group (no-op if either is
/// missing).
fn chown_to_user(path: &Path, user: &str, group: &str) {
    let id = |file: &str, name: &str| -> Option<u32> {
        fs::read_to_string(file).ok()?.lines().find_map(|l| {
            let mut f = l.split(':');
            (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
        })
    };
    if let (Some(uid), Some(gid)) = (id("/etc/passwd", user), id("/etc/group", group)) {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// The effective uid of this process (std has no geteuid; /proc tells without libc).
pub fn euid() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(u32::MAX)
}

/// A rendered server root (kept until dropped).
#[derive(Debug)]
pub struct ServerRoot {
    dir: tempfile::TempDir,
    pub port: u16,
    pub conf: PathBuf,
    pub config_php: PathBuf,
}

impl ServerRoot {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// What `apache2 -t` said.
#[derive(Debug)]
pub struct ConfigTest {
    pub status: ExitStatus,
    pub output: String,
    pub root: ServerRoot,
}

impl ConfigTest {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// The configuration line httpd blamed (`AH00526: Syntax error on line N of <file>:`),
    /// trimmed.
    pub fn offending_line(&self) -> Option<String> {
        let rest = self.output.split("Syntax error on line ").nth(1)?;
        let (number, rest) = rest.split_once(" of ")?;
        let number: usize = number.trim().parse().ok()?;
        let (file, _) = rest.split_once(':')?;
        let text = fs::read_to_string(file.trim()).ok()?;
        text.lines().nth(number.checked_sub(1)?).map(|l| l.trim().to_string())
    }
}

/// A running apache2 (our child, leader of its own process group).
pub struct Apache {
    root: ServerRoot,
    child: Option<Child>,
    pid: u32,
    mode: Mode,
    mpm: Mpm,
    daemon_socket: PathBuf,
    allowed: Vec<String>,
    seen_daemons: Vec<u32>,
    exit: Option<ExitStatus>,
    problems: Vec<String>,
    checked: bool,
    /// Set by [`Apache::ctl`] with `stop`/`graceful-stop`: the parent's exit is the test's doing.
    exit_expected: bool,
    /// Ends a hanging test and takes the stack of a child the parent reports stuck (see
    /// [`ApacheWatch`]).
    watch: Option<ApacheWatch>,
}

impl Apache {
    pub fn builder(env: &Env) -> ApacheBuilder {
        ApacheBuilder::new(env)
    }

    async fn launch(
        b: &ApacheBuilder,
        root: ServerRoot,
        mode: Mode,
    ) -> Result<Apache, (String, bool)> {
        let stdout = fs::File::create(root.path().join("logs/stdout.log")).expect("stdout.log");
        let stderr = fs::File::create(root.path().join("logs/stderr.log")).expect("stderr.log");
        let mut command = match b.nofile {
            None => Command::new(&b.env.apache_bin),
            Some((soft, hard)) => {
                // Both exec the next program: the pid stays apache2's.
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={soft}:{hard}")).arg("--");
                if crate::limits::has_cap_sys_resource() {
                    c.args(["setpriv", "--bounding-set", "-sys_resource", "--"]);
                }
                c.arg(&b.env.apache_bin);
                c
            }
        };
        let child = command
            .args(mode.args())
            .arg("-f")
            .arg(&root.conf)
            .env("LANG", "C")
            .envs(b.env_vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(|e| (format!("spawn {}: {e}", b.env.apache_bin.display()), false))?;
        let pid = child.id();
        let daemon_socket =
            b.daemon_socket.clone().unwrap_or_else(|| root.path().join("run/nextcloud-push.sock"));
        let watch = Some(ApacheWatch::start(root.path(), pid));
        let mut apache = Apache {
            root,
            child: Some(child),
            pid,
            mode,
            mpm: b.mpm,
            daemon_socket,
            allowed: b.allowed.clone(),
            seen_daemons: Vec::new(),
            exit: None,
            problems: Vec::new(),
            checked: false,
            exit_expected: false,
            watch,
        };
        match apache.await_ready(b).await {
            Ok(()) => Ok(apache),
            Err(why) => {
                let log = apache.error_log();
                let stderr = apache.stderr_log();
                let retry = log.contains("Address already in use")
                    || stderr.contains("Address already in use");
                apache.stop();
                apache.checked = true;
                Err((
                    format!(
                        "apache2 {} ({} MPM) did not become ready: {why}\n--- stderr ---\n{stderr}\
                         \n--- error log ---\n{log}\n--- httpd.conf ---\n{}",
                        mode.args().join(" "),
                        b.mpm.name(),
                        fs::read_to_string(&apache.root.conf).unwrap_or_default()
                    ),
                    retry,
                ))
            }
        }
    }

    async fn await_ready(&mut self, b: &ApacheBuilder) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        let pid_file = self.root.path().join("run/httpd.pid");
        let wants_daemon = b.waits_for_daemon();
        let mut missing;
        loop {
            if let Some(status) = self.try_exit() {
                return Err(format!("apache2 exited during startup with {status}"));
            }
            missing = Vec::new();
            if !pid_file.is_file() {
                missing.push("pid file".to_string());
            }
            if TcpStream::connect(self.addr()).is_err() {
                missing.push(format!("port {}", self.port()));
            }
            if wants_daemon {
                if !self.daemon_socket.exists() {
                    missing.push(format!("daemon socket {}", self.daemon_socket.display()));
                }
                if self.daemon_pid().is_none() {
                    missing.push(format!("a `{DAEMON_NAME}` process whose parent is {}", self.pid));
                }
            }
            if let Some(needle) = &b.ready_log {
                if !self.error_log().contains(needle.as_str()) {
                    missing.push(format!("error-log line {needle:?}"));
                }
            }
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "after {START_TIMEOUT:?} still missing: {}",
                    missing.join(", ")
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The parent's (under `-X` the only process's) pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn port(&self) -> u16 {
        self.root.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port()))
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn mpm(&self) -> Mpm {
        self.mpm
    }

    /// `http://127.0.0.1:<port>`
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    /// `ws://127.0.0.1:<port>/push/ws`
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/push/ws", self.port())
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    pub fn config_php(&self) -> &Path {
        &self.root.config_php
    }

    /// The SQLite database the generated config.php names (`<root>/data/nextcloud.db`).
    pub fn nextcloud_db(&self) -> PathBuf {
        self.root.path().join("data/nextcloud.db")
    }

    pub fn daemon_socket(&self) -> &Path {
        &self.daemon_socket
    }

    /// Whitelists error-log lines containing `needle` from now on.
    pub fn allow(&mut self, needle: &str) {
        self.allowed.push(needle.to_string());
    }

    pub fn error_log(&self) -> String {
        read_lossy(&self.root.path().join("logs/error.log"))
    }

    pub fn access_log(&self) -> String {
        read_lossy(&self.root.path().join("logs/access.log"))
    }

    pub fn stderr_log(&self) -> String {
        read_lossy(&self.root.path().join("logs/stderr.log"))
    }

    /// Waits until the error log has a line containing `needle`; returns that line.
    pub async fn await_error_log(&self, needle: &str, timeout: Duration) -> String {
        let log = self.root.path().join("logs/error.log");
        await_line(&log, needle, timeout, "error log").await
    }

    /// Waits until the access log has a line containing `needle`; returns that line.
    pub async fn await_access_log(&self, needle: &str, timeout: Duration) -> String {
        let log = self.root.path().join("logs/access.log");
        await_line(&log, needle, timeout, "access log").await
    }

    /// The push daemon: the `nextcloud-push` process whose parent is this apache2.
    pub fn daemon_pid(&mut self) -> Option<u32> {
        let pid =
            processes().into_iter().find(|p| p.ppid == self.pid && p.comm == DAEMON_NAME)?.pid;
        if !self.seen_daemons.contains(&pid) {
            self.seen_daemons.push(pid);
        }
        Some(pid)
    }

    /// Waits for a daemon process other than `not` (a respawn) and for its socket.
    pub async fn await_daemon(&mut self, not: Option<u32>, timeout: Duration) -> u32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pid) = self.daemon_pid() {
                if Some(pid) != not && self.daemon_socket.exists() {
                    return pid;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no `{DAEMON_NAME}` process (other than {not:?}) under apache2 {} within {timeout:?}\n{}",
                self.pid,
                self.error_log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Graceful restart (SIGUSR1 to the parent, what `apache2ctl graceful` and Debian's daily
    /// logrotate do); returns once the parent logged `… resuming normal operations` again.
    pub async fn graceful_restart(&mut self) {
        assert_eq!(self.mode, Mode::Foreground, "graceful restart needs -DFOREGROUND");
        self.restart_with(|apache| signal(apache.pid, "USR1")).await;
    }

    /// `apache2 -k <verb>` for `graceful` or `restart` (a hard restart); returns once the
    /// parent logged `… resuming normal operations` again.
    pub async fn ctl_restart(&mut self, verb: &str) {
        self.restart_with(|apache| {
            let out = apache.ctl(verb);
            assert!(
                out.status.success(),
                "apache2 -k {verb}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        })
        .await;
    }

    /// Runs `trigger`, then waits until a new generation logged "… configured -- resuming
    /// normal operations" (event AH00489, worker AH00292, prefork AH00163).
    async fn restart_with(&mut self, trigger: impl FnOnce(&mut Self)) {
        let count =
            |log: &str| log.lines().filter(|l| l.contains("resuming normal operations")).count();
        let before = count(&self.error_log());
        trigger(self);
        let deadline = Instant::now() + START_TIMEOUT;
        while count(&self.error_log()) <= before {
            assert!(
                self.try_exit().is_none(),
                "apache2 exited during a restart\n{}",
                self.error_log()
            );
            assert!(
                Instant::now() < deadline,
                "no restart within {START_TIMEOUT:?}\n{}",
                self.error_log()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// `apache2 -f <conf> -k <verb>` against this server (what `apachectl <verb>` does: the
    /// signal goes to the pid in the PidFile): `graceful`, `restart`, `stop`, `graceful-stop`.
    /// After `stop`/`graceful-stop` the parent's exit is expected: await it with
    /// [`Apache::await_exit`]; [`Apache::finish`] still checks that nothing is left behind.
    pub fn ctl(&mut self, verb: &str) -> std::process::Output {
        assert_eq!(self.mode, Mode::Foreground, "-k {verb} needs -DFOREGROUND");
        if verb == "stop" || verb == "graceful-stop" {
            self.exit_expected = true;
        }
        Command::new(find_apache().expect("apache2"))
            .arg("-f")
            .arg(&self.root.conf)
            .args(["-k", verb])
            .env("LANG", "C")
            .stdin(Stdio::null())
            .output()
            .expect("run apache2 -k")
    }

    /// Waits (bounded) until the parent exited; its status, or `None` after `timeout`.
    pub async fn await_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The apache2 children (empty under `-X`).
    pub fn children(&self) -> Vec<u32> {
        processes()
            .into_iter()
            .filter(|p| p.ppid == self.pid && p.comm != DAEMON_NAME)
            .map(|p| p.pid)
            .collect()
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.exit = Some(status);
                }
            }
        }
        self.exit
    }

    /// SIGTERM to the parent, wait (bounded), then SIGKILL the process group; then make sure no
    /// process of this server (children, the daemon) is left. Idempotent.
    pub fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        // Dropped (the watch ends) when `stop` returns: after the parent's exit, so a stuck
        // child of the stop itself is seen too.
        let _watching_until_stopped = self.watch.take();
        if let Some(status) = self.try_exit() {
            if !self.exit_expected || !status.success() {
                self.problems
                    .push(format!("apache2 (pid {}) exited by itself with {status}", self.pid));
            }
        } else {
            let _ = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
            let deadline = Instant::now() + STOP_TIMEOUT;
            while self.try_exit().is_none() && Instant::now() < deadline {
                std::thread::sleep(POLL);
            }
            if self.try_exit().is_none() {
                self.problems.push(format!(
                    "apache2 (pid {}) did not exit within {STOP_TIMEOUT:?} of SIGTERM",
                    self.pid
                ));
                kill_group(self.pid);
                if let Some(child) = self.child.as_mut() {
                    self.exit = child.wait().ok();
                }
            }
        }
        self.child = None;
        // Everything in our process group, and any daemon we saw (it may have left the group).
        let deadline = Instant::now() + LEFTOVER_TIMEOUT;
        let leftovers = loop {
            let left: Vec<Proc> = processes()
                .into_iter()
                .filter(|p| p.state != 'Z')
                .filter(|p| p.pgrp == self.pid || self.seen_daemons.contains(&p.pid))
                .collect();
            if left.is_empty() || Instant::now() > deadline {
                break left;
            }
            std::thread::sleep(POLL);
        };
        for p in leftovers {
            self.problems.push(format!(
                "process {} ({}) was still running {LEFTOVER_TIMEOUT:?} after apache2 exited",
                p.pid, p.comm
            ));
            let _ = Command::new("kill").args(["-KILL", &p.pid.to_string()]).status();
        }
    }

    /// Lines of the error log and stderr the test did not expect, plus lifecycle problems.
    pub fn unexpected(&self) -> Vec<String> {
        let mut bad = self.problems.clone();
        for line in self.error_log().lines() {
            if is_alarming(line) && !self.is_allowed(line) {
                bad.push(format!("error log: {line}"));
            }
        }
        for line in self.stderr_log().lines() {
            if !line.trim().is_empty() && !self.is_allowed(line) {
                bad.push(format!("stderr: {line}"));
            }
        }
        bad
    }

    fn is_allowed(&self, line: &str) -> bool {
        self.allowed.iter().any(|a| line.contains(a.as_str()))
    }

    /// Stops apache2 and applies the error-log oracle; panics listing what was unexpected.
    pub fn finish(mut self) {
        self.stop();
        self.checked = true;
        let bad = self.unexpected();
        if !bad.is_empty() {
            let report = self.report();
            panic!(
                "apache2 error-log oracle: {} unexpected line(s):\n  {}\n{report}",
                bad.len(),
                bad.join("\n  ")
            );
        }
    }

    fn report(&self) -> String {
        format!(
            "--- apache2 {} ({} MPM), server root {} ---\n--- error log ---\n{}--- stderr ---\n{}{}",
            self.mode.args().join(" "),
            self.mpm.name(),
            self.root.path().display(),
            tail(&self.error_log(), 300),
            tail(&self.stderr_log(), 50),
            ApacheWatch::stacks(self.root.path()),
        )
    }
}

impl Drop for Apache {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            // `finish` already printed the report with its panic.
            if !self.checked {
                eprintln!("{}", self.report());
            }
            return;
        }
        if !self.checked {
            self.checked = true;
            let bad = self.unexpected();
            if !bad.is_empty() {
                panic!(
                    "apache2 error-log oracle (at drop): {} unexpected line(s):\n  {}\n{}",
                    bad.len(),
                    bad.join("\n  "),
                    self.report()
                );
            }
        }
    }
}

/// A line that fails a test unless whitelisted: a warn-or-worse level from any module (core `AH`
/// ids included), a Rust panic, or a process killed by a signal.
pub fn is_alarming(line: &str) -> bool {
    const LEVELS: [&str; 5] = [":warn]", ":error]", ":crit]", ":alert]", ":emerg]"];
    LEVELS.iter().any(|l| line.contains(l))
        || line.contains("panicked at")
        || line.contains("exit signal")
        || line.contains("AH00052")
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    let mut out = String::new();
    if start > 0 {
        let _ = writeln!(out, "[… {start} earlier lines]");
    }
    for l in &lines[start..] {
        let _ = writeln!(out, "{l}");
    }
    out
}

fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Waits until the file at `path` (a log) has a line containing `needle`; returns that line.
pub async fn await_file_line(path: &Path, needle: &str, timeout: Duration) -> String {
    await_line(path, needle, timeout, &path.display().to_string()).await
}

async fn await_line(path: &Path, needle: &str, timeout: Duration, what: &str) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = read_lossy(path);
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no {what} line containing {needle:?} within {timeout:?}; {what}:\n{text}"
        );
        tokio::time::sleep(POLL).await;
    }
}

fn kill_group(pgid: u32) {
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status();
}

/// One row of `/proc/<pid>/stat`.
#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    pub pgrp: u32,
    pub state: char,
    pub comm: String,
}

/// Every process on the machine (a snapshot of /proc).
pub fn processes() -> Vec<Proc> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter_map(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // comm may hold spaces and parentheses: it ends at the last ')'.
            let open = stat.find('(')?;
            let close = stat.rfind(')')?;
            let comm = stat[open + 1..close].to_string();
            let mut rest = stat[close + 1..].split_whitespace();
            let state = rest.next()?.chars().next()?;
            let ppid = rest.next()?.parse().ok()?;
            let pgrp = rest.next()?.parse().ok()?;
            Some(Proc { pid, ppid, pgrp, state, comm })
        })
        .collect()
}

/// CPU time a process has used so far (user + system), in clock ticks (from /proc/<pid>/stat).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after comm: state is field 3, utime and stime are fields 14 and 15.
    let rest: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
}

/// `VmRSS` of a process in KiB (from /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Sends a signal (`"STOP"`, `"CONT"`, `"KILL"`, …) to a process with kill(1).
pub fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
    assert!(matches!(status, Ok(s) if s.success()), "kill -{sig} {pid} failed: {status:?}");
}

/// A minimal blocking HTTP/1.x exchange: writes `request` as-is, reads until the peer closes or
/// `timeout`, returns the raw bytes (for status-line assertions the client libraries hide).
pub fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(timeout)).expect("timeout");
    s.write_all(request).expect("write request");
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    out
}

/// The status code of the first status line in raw HTTP response bytes.
pub fn status_code(raw: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(raw);
    let line = text.lines().next()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
}

/// Exit-signal-aware description of a status, for messages.
pub fn describe(status: &ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => format!("{status}"),
    }
}

/// Ends a test that hangs (see [`hang_limit`]), and watches the error log for a child the
/// parent had to signal again at a stop or hard restart
/// (`AH00045: child process N still did not exit, sending a SIGTERM`, 3 s before its SIGKILL)
/// and saves that child's stack (gdb, when installed) to `logs/stuck-N.txt`, which the report
/// of a failing test prints: such a child is rare, and gone once killed.
struct ApacheWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApacheWatch {
    const NEEDLE: &'static str = "still did not exit";

    fn start(root: &Path, pid: u32) -> ApacheWatch {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let root = root.to_path_buf();
        let thread = std::thread::spawn(move || {
            let log = root.join("logs/error.log");
            let mut offset = 0u64;
            let mut partial = String::new();
            let mut done = Vec::new();
            let started = Instant::now();
            let (limit, mut hung) = (hang_limit(), false);
            while !flag.load(Ordering::SeqCst) {
                if !hung && started.elapsed() > limit {
                    hung = true;
                    // Straight to stderr: a test's captured output is lost if it aborts.
                    let _ = writeln!(
                        std::io::stderr(),
                        "testkit: apache2 (pid {pid}, server root {}) still in use after \
                         {limit:?} (NCP_TEST_HANG_LIMIT): the test holding it hangs; killing \
                         this Apache's process group so the test fails\n{}",
                        root.display(),
                        tail(&fs::read_to_string(&log).unwrap_or_default(), 100)
                    );
                    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).status();
                }
                if hung && started.elapsed() > limit + HANG_GRACE {
                    let _ = writeln!(
                        std::io::stderr(),
                        "testkit: still hanging {HANG_GRACE:?} later: aborting the tests"
                    );
                    std::process::abort();
                }
                if let Ok(mut f) = fs::File::open(&log) {
                    use std::io::Seek;
                    let mut chunk = Vec::new();
                    if f.seek(std::io::SeekFrom::Start(offset)).is_ok()
                        && f.read_to_end(&mut chunk).is_ok()
                    {
                        offset += chunk.len() as u64;
                        partial.push_str(&String::from_utf8_lossy(&chunk));
                        let complete = partial.rfind('\n').map_or(0, |i| i + 1);
                        for line in partial[..complete].lines().filter(|l| l.contains(Self::NEEDLE))
                        {
                            let pid = line
                                .split("child process ")
                                .nth(1)
                                .and_then(|r| r.split_whitespace().next())
                                .and_then(|p| p.parse::<u32>().ok());
                            if let Some(pid) = pid.filter(|p| !done.contains(p)) {
                                done.push(pid);
                                let _ = fs::write(
                                    root.join(format!("logs/stuck-{pid}.txt")),
                                    backtrace(pid),
                                );
                            }
                        }
                        partial.drain(..complete);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        ApacheWatch { stop, thread: Some(thread) }
    }

    /// The saved stacks, for a report (empty when no child was stuck).
    fn stacks(root: &Path) -> String {
        let mut out = String::new();
        let Ok(dir) = fs::read_dir(root.join("logs")) else { return out };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("stuck-") {
                let text = fs::read_to_string(entry.path()).unwrap_or_default();
                let _ =
                    write!(out, "--- {name} (a child the parent had to signal again) ---\n{text}");
            }
        }
        out
    }
}

impl Drop for ApacheWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long a test may hold one Apache: `NCP_TEST_HANG_LIMIT` seconds, 300 by default (the
/// longest test takes well under a minute). Past it the test hangs: its Apache is killed, which
/// makes a test waiting on it fail with its own message; one still running [`HANG_GRACE`] later
/// aborts the test binary (a hang is a failure, never an endless CI job).
fn hang_limit() -> Duration {
    let secs = std::env::var("NCP_TEST_HANG_LIMIT").ok().and_then(|v| v.parse().ok());
    Duration::from_secs(secs.unwrap_or(300))
}

const HANG_GRACE: Duration = Duration::from_secs(30);

/// The stack of every thread of process `pid`, from gdb (or why there is none), for a report.
pub fn backtrace(pid: u32) -> String {
    let out = Command::new("gdb")
        .args(["-p", &pid.to_string(), "-batch", "-ex", "thread apply all bt"])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => format!("no stack: gdb: {e}\n"),
    }
}
