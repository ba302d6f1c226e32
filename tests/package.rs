//! The Debian package `libapache2-mod-nextcloud-push` (scripts/package, cargo-deb) on this
//! machine's real Apache: built and checked by lintian, installed with `apt-get install`, enabled
//! by its postinst (`a2query`), loaded by the system configuration (`apache2ctl -M`,
//! `apache2ctl configtest`), serving a push session from the installed files, then removed and
//! purged until nothing of it is left.
//!
//! The package is built from the module the workspace build already made (`scripts/package --so
//! <target>/debug/libmod_nextcloud_push.so --fast`: seconds) rather than from the release build
//! (LTO: minutes). Only the binary differs: the metadata, the conffiles and the maintainer scripts
//! are the same ones. `NCP_DEB=/path/to/libapache2-mod-nextcloud-push_….deb` tests a package built
//! beforehand instead (e.g. the release one of `scripts/package`).
//!
//! It changes the machine (root only): it needs a machine without the module (neither the package
//! nor a `scripts/setup` install), and it leaves it as it found it: the package purged (also when
//! an assertion fails), no package added or removed, Apache's module state as before, the system
//! Apache running or stopped as before. Without root or apt it skips, except under `CI=true`.
//!
//! The push session runs on a private apache2 (testkit's harness, a free loopback port) that loads
//! the installed `.so` from the path the installed `nextcloud_push.load` names and includes the
//! installed `nextcloud_push.conf`, so the system Apache's own listeners (port 80) are never
//! started or touched.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{start_nextcloud, Stack, ALICE};
use testkit::apache::{self, Apache, Env, Mode};
use testkit::redis::RedisServer;
use testkit::{require, Skip};

const PACKAGE: &str = "libapache2-mod-nextcloud-push";
const MODULE: &str = "nextcloud_push";
const MODULE_SO: &str = "/usr/lib/apache2/modules/mod_nextcloud_push.so";
const MODS_AVAILABLE: &str = "/etc/apache2/mods-available";
const MODS_ENABLED: &str = "/etc/apache2/mods-enabled";
/// apache2-maintscript-helper's record of who enabled or disabled a module.
const MODULE_STATE: &str = "/var/lib/apache2/module";
const STATE_DIRS: [&str; 4] =
    ["enabled_by_maint", "disabled_by_maint", "enabled_by_admin", "disabled_by_admin"];
/// The system Apache's pid file (`APACHE_PID_FILE` of /etc/apache2/envvars).
const SYSTEM_PID_FILE: &str = "/var/run/apache2/apache2.pid";

/// Bounds of the external commands (killed after that).
const PACKAGE_TIMEOUT: Duration = Duration::from_secs(900); // a first run installs cargo-deb
const APT_TIMEOUT: Duration = Duration::from_secs(300);
const CMD_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn package_installs_into_apache_serves_and_purges_without_a_trace() {
    let pre = require!(preconditions());
    let redis = require!(RedisServer::start());
    let started = Instant::now();
    let out = tempfile::Builder::new().prefix("ncp-package-").tempdir().expect("tempdir");
    // apt-get reads a local .deb as _apt when it can: a world-readable directory avoids its notice.
    chmod_755(out.path());

    // 1. The package, built by scripts/package (lintian errors fail it there).
    let deb = match std::env::var_os("NCP_DEB") {
        Some(deb) => PathBuf::from(deb),
        None => build_package(&pre.module, out.path()),
    };
    let deb = std::fs::canonicalize(&deb).unwrap_or_else(|e| panic!("{}: {e}", deb.display()));
    eprintln!("package: {} ({:.1?})", deb.display(), started.elapsed());
    check_package_file(&deb);

    let before = MachineState::capture();
    let mut guard = Restore { purge: true, before: before.clone() };

    // 2. apt-get install ./….deb: the files, the conffiles, the module enabled by the postinst.
    apt(&["install", "-y", "--no-install-recommends", path_str(&deb)]);
    assert_eq!(dpkg_status(), "install ok installed");
    let conffiles = ok(&cmd("dpkg-query", &["-W", "-f=${Conffiles}", PACKAGE]));
    for f in ["nextcloud_push.load", "nextcloud_push.conf"] {
        let path = format!("{MODS_AVAILABLE}/{f}");
        assert!(Path::new(&path).is_file(), "{path} not installed");
        assert!(conffiles.contains(&path), "{path} is not a conffile:\n{conffiles}");
        let link = format!("{MODS_ENABLED}/{f}");
        let target = std::fs::read_link(&link).unwrap_or_else(|e| panic!("{link}: {e}"));
        assert_eq!(target, Path::new("../mods-available").join(f), "{link}");
    }
    assert!(Path::new(MODULE_SO).is_file(), "{MODULE_SO} not installed");
    let query = cmd("a2query", &["-m", MODULE]);
    assert!(
        query.status.success() && text(&query.stdout).contains("enabled by maintainer script"),
        "a2query -m {MODULE} after install: {}",
        describe(&query)
    );
    let modules = ok(&cmd("apache2ctl", &["-M"]));
    assert!(
        modules.lines().any(|l| l.trim() == "nextcloud_push_module (shared)"),
        "apache2ctl -M does not list nextcloud_push_module:\n{modules}"
    );
    configtest("after install");

    // 3. A push session served by the installed module with the installed configuration.
    let load = std::fs::read_to_string(format!("{MODS_AVAILABLE}/nextcloud_push.load"))
        .expect("read the installed nextcloud_push.load");
    let loaded = load
        .lines()
        .find_map(|l| l.trim().strip_prefix("LoadModule nextcloud_push_module "))
        .map(|p| PathBuf::from(p.trim()))
        .unwrap_or_else(|| panic!("no LoadModule nextcloud_push_module in\n{load}"));
    assert_eq!(loaded, Path::new(MODULE_SO), "the .load names another module file");
    serve_a_session(&pre.apache_bin, &loaded, redis).await;

    // 4. apt-get remove: disabled by the prerm, the conffiles kept, Apache still configures.
    apt(&["remove", "-y", PACKAGE]);
    assert_eq!(dpkg_status(), "deinstall ok config-files");
    let query = cmd("a2query", &["-m", MODULE]);
    assert!(!query.status.success(), "a2query -m {MODULE} after remove: {}", describe(&query));
    assert!(!Path::new(MODULE_SO).exists(), "{MODULE_SO} left after remove");
    assert_eq!(leftovers(MODS_ENABLED), Vec::<String>::new(), "{MODS_ENABLED} after remove");
    configtest("after remove");

    // 5. apt-get purge: nothing left.
    apt(&["purge", "-y", PACKAGE]);
    guard.purge = false;
    let listed = cmd("dpkg", &["-L", PACKAGE]);
    assert!(!listed.status.success(), "dpkg -L {PACKAGE} after purge: {}", describe(&listed));
    for dir in [MODS_AVAILABLE, MODS_ENABLED] {
        assert_eq!(leftovers(dir), Vec::<String>::new(), "{dir} after purge");
    }
    for state in STATE_DIRS {
        let path = Path::new(MODULE_STATE).join(state).join(MODULE);
        assert!(!path.exists(), "{} left after purge", path.display());
    }
    assert!(!Path::new(MODULE_SO).exists(), "{MODULE_SO} left after purge");
    let query = cmd("a2query", &["-m", MODULE]);
    assert!(
        text(&query.stderr).contains("No module matches") && !query.status.success(),
        "a2query -m {MODULE} after purge: {}",
        describe(&query)
    );
    configtest("after purge");
    let after = restore(&before);
    assert_eq!(after.packages, before.packages, "installed packages differ after the purge");
    assert_eq!(after.state_dirs, before.state_dirs, "{MODULE_STATE} differs after the purge");
    assert_eq!(after.apache_running, before.apache_running, "system Apache state changed");
    eprintln!("package test done in {:.1?}", started.elapsed());
}

struct Preconditions {
    apache_bin: PathBuf,
    /// The workspace's module build, packaged unless `NCP_DEB` names a package.
    module: PathBuf,
}

/// Root, apt and Debian's Apache tools, the built module, and no module installed yet. Missing
/// ones skip the test with the reason, except under `CI=true`, where they fail it.
fn preconditions() -> Result<Preconditions, Skip> {
    let skip = |why: String| -> Result<Preconditions, Skip> {
        if testkit::in_ci() {
            panic!("{why} (CI=true: the package test must not skip)");
        }
        Err(Skip(why))
    };
    if apache::euid() != 0 {
        return skip("not root: the package test installs and purges a Debian package".into());
    }
    for tool in ["apt-get", "dpkg", "dpkg-query", "dpkg-deb", "a2query", "apache2ctl", "timeout"] {
        if testkit::find_binary(tool).is_none() {
            return skip(format!(
                "{tool} not found: the package test needs Debian's apt and apache2"
            ));
        }
    }
    let env = Env::require()?;
    let module = env.module.clone().expect("Env::require finds the module");
    let installed = dpkg_status();
    if !installed.is_empty() && installed != "unknown ok not-installed" {
        return skip(format!(
            "{PACKAGE} is already on this machine ({installed}): the test installs and purges \
             it; `apt-get purge {PACKAGE}` first"
        ));
    }
    let present: Vec<String> = [
        MODULE_SO.to_string(),
        format!("{MODS_AVAILABLE}/nextcloud_push.load"),
        format!("{MODS_AVAILABLE}/nextcloud_push.conf"),
        format!("{MODS_ENABLED}/nextcloud_push.load"),
    ]
    .into_iter()
    .filter(|p| Path::new(p).symlink_metadata().is_ok())
    .collect();
    if !present.is_empty() {
        return skip(format!(
            "the module is installed without the package ({}; scripts/setup?): the package \
             test would replace it; `a2dismod {MODULE}` and remove those files first",
            present.join(", ")
        ));
    }
    Ok(Preconditions { apache_bin: env.apache_bin, module })
}

/// `scripts/package --so <module> --output <dir> --fast`; its last stdout line is the .deb.
fn build_package(module: &Path, dir: &Path) -> PathBuf {
    let script = apache::workspace_dir().join("scripts/package");
    let out = run(
        PACKAGE_TIMEOUT,
        path_str(&script),
        &["--so", path_str(module), "--output", path_str(dir), "--fast"],
    );
    let stdout = ok(&out);
    // lintian's report (errors fail the script; warnings stay visible in the test output).
    eprintln!("{}", text(&out.stderr));
    let deb = stdout.lines().last().map(PathBuf::from).unwrap_or_default();
    assert!(deb.is_file(), "scripts/package printed no package path:\n{}", describe(&out));
    deb
}

/// The control fields and the file list of the .deb.
fn check_package_file(deb: &Path) {
    let fields = ok(&cmd("dpkg-deb", &["-f", path_str(deb), "Package", "Section", "Depends"]));
    assert!(fields.contains(&format!("Package: {PACKAGE}")), "{fields}");
    assert!(fields.contains("Section: httpd"), "{fields}");
    for dep in ["apache2-api-20120211", "apache2-bin (>=", "libssl3", "libc6"] {
        assert!(fields.contains(dep), "Depends lacks {dep}:\n{fields}");
    }
    let files = ok(&cmd("dpkg-deb", &["-c", path_str(deb)]));
    for f in [
        ".{MODULE_SO}",
        "./etc/apache2/mods-available/nextcloud_push.load",
        "./etc/apache2/mods-available/nextcloud_push.conf",
        "./usr/share/doc/libapache2-mod-nextcloud-push/copyright",
        "./usr/share/doc/libapache2-mod-nextcloud-push/changelog.Debian.gz",
    ] {
        let f = f.replace("{MODULE_SO}", MODULE_SO);
        assert!(files.lines().any(|l| l.ends_with(&f)), "{f} not in the package:\n{files}");
    }
}

/// A private apache2 loading the installed module and configuration, a real redis-server and the
/// Nextcloud double: a WebSocket login and one event round trip.
async fn serve_a_session(apache_bin: &Path, module: &Path, redis: RedisServer) {
    let env = Env { apache_bin: apache_bin.to_path_buf(), module: Some(module.to_path_buf()) };
    let nextcloud = start_nextcloud();
    let apache = Apache::builder(&env)
        .nextcloud_url(&nextcloud.base_url())
        .redis("127.0.0.1", redis.port())
        .server_line(format!("Include {MODS_AVAILABLE}/nextcloud_push.conf"))
        .vhost_line("NextcloudPushDebounce Off")
        .start(Mode::Foreground)
        .await;
    let stack = Stack { redis, nextcloud, apache };
    stack.await_subscribed().await;
    let mut alice = stack.login(ALICE).await;
    stack.roundtrip(&mut alice, ALICE.0, "from_the_installed_package").await;
    stack.finish();
}

/// What the test must leave as it found it.
#[derive(Clone, Debug, PartialEq)]
struct MachineState {
    packages: BTreeSet<String>,
    state_dirs: BTreeSet<String>,
    apache_running: bool,
}

impl MachineState {
    fn capture() -> MachineState {
        let packages = ok(&cmd("dpkg-query", &["-W", "-f=${Package}:${Architecture} ${Status}\n"]))
            .lines()
            .filter(|l| !l.ends_with(" not-installed"))
            .map(str::to_string)
            .collect();
        let state_dirs = STATE_DIRS
            .iter()
            .filter(|d| Path::new(MODULE_STATE).join(d).is_dir())
            .map(|d| d.to_string())
            .collect();
        MachineState { packages, state_dirs, apache_running: system_apache_running() }
    }
}

/// Undoes what installing the package did to the machine beyond the package itself:
/// apache2-maintscript-helper's (empty) state directories that `a2dismod -m` creates, and a system
/// Apache that the helper's restart started (where no policy-rc.d stops it). Returns the state.
fn restore(before: &MachineState) -> MachineState {
    for state in STATE_DIRS {
        if !before.state_dirs.contains(state) {
            // Only if empty: rmdir refuses otherwise.
            let _ = std::fs::remove_dir(Path::new(MODULE_STATE).join(state));
        }
    }
    if !before.apache_running && system_apache_running() {
        eprintln!("stopping the system Apache that installing the package started");
        let systemd = Path::new("/run/systemd/system").is_dir();
        let out = if systemd {
            cmd("systemctl", &["stop", "apache2"])
        } else {
            cmd("apache2ctl", &["stop"])
        };
        eprintln!("{}", describe(&out));
        let deadline = Instant::now() + Duration::from_secs(15);
        while system_apache_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    MachineState::capture()
}

/// Also when an assertion fails: purges the package if the test did not get to its own purge,
/// and restores the rest of the machine state ([`restore`]).
struct Restore {
    purge: bool,
    before: MachineState,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if self.purge {
            eprintln!("the test ended with {PACKAGE} installed: purging it");
            let out = apt_output(&["purge", "-y", PACKAGE]);
            if !out.status.success() {
                eprintln!("apt-get purge {PACKAGE} failed: {}", describe(&out));
            }
        }
        restore(&self.before);
    }
}

/// The system Apache (the one `systemctl`/`apache2ctl` manage) has a live parent process.
fn system_apache_running() -> bool {
    std::fs::read_to_string(SYSTEM_PID_FILE)
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
        .is_some_and(|comm| comm.trim() == "apache2")
}

/// Files of the module (`nextcloud_push.*`) in a directory.
fn leftovers(dir: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with("nextcloud_push"))
                .collect()
        })
        .unwrap_or_default()
}

fn configtest(when: &str) {
    let out = cmd("apache2ctl", &["configtest"]);
    assert!(
        out.status.success() && text(&out.stderr).contains("Syntax OK"),
        "apache2ctl configtest {when}: {}",
        describe(&out)
    );
}

/// `dpkg-query -W -f=${Status}` of the package ("" when dpkg never heard of it).
fn dpkg_status() -> String {
    let out = cmd("dpkg-query", &["-W", "-f=${Status}", PACKAGE]);
    text(&out.stdout).trim().to_string()
}

/// apt-get non-interactively, waiting (bounded) for a dpkg lock another process holds.
fn apt_output(args: &[&str]) -> Output {
    let mut all =
        vec!["DEBIAN_FRONTEND=noninteractive", "apt-get", "-o", "DPkg::Lock::Timeout=120"];
    all.extend_from_slice(args);
    run(APT_TIMEOUT, "env", &all)
}

fn apt(args: &[&str]) {
    let out = apt_output(args);
    assert!(out.status.success(), "apt-get {}: {}", args.join(" "), describe(&out));
}

fn cmd(program: &str, args: &[&str]) -> Output {
    run(CMD_TIMEOUT, program, args)
}

/// Runs a command under coreutils' `timeout` (TERM at the bound, KILL 10 s later).
fn run(timeout: Duration, program: &str, args: &[&str]) -> Output {
    Command::new("timeout")
        .arg("--kill-after=10")
        .arg(format!("{}", timeout.as_secs()))
        .arg(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// stdout of a command that must succeed.
fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", describe(out));
    text(&out.stdout)
}

fn describe(out: &Output) -> String {
    let timed_out = if out.status.code() == Some(124) { " (timed out)" } else { "" };
    format!(
        "{}{timed_out}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

fn chmod_755(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}
