//! Configuration checks and the push daemon's life in the Apache parent.
//!
//! - `check_config` (every process, also `-t` and `-k`): converts each enabled server's
//!   directives into an [`EngineConfig`]; an error logs one `[emerg]` line naming the server
//!   and refuses startup.
//! - `post_config` (the parent; skipped in the first startup pass): dedupes the engine
//!   configurations, then keeps the running daemon if its fingerprint is unchanged (graceful
//!   restarts keep every WebSocket) or replaces it; registers an other-child watcher and a
//!   stop-on-exit cleanup on pconf. Both are re-registered in every pass because the DSO is
//!   unloaded with pconf.
//! - the watcher respawns a daemon that died unless Apache is stopping; `monitor` retries a
//!   daemon that keeps crashing, at most every ~10 s.
//!
//! The decisions (which engines, keep or replace) are made by the pure functions of
//! [`plan`]; the state that must survive restarts lives in [`retained`].

use super::log::{log_at, InstanceLog, Severity, Sink};
use super::plan::{self, Action, Engines};
use super::process::{self, SpawnSpec};
use super::retained::{self, Retained};
use super::{ffi, pool, server_config, stop_notice};
use crate::config::{Runtime, DEFAULT_SOCKET, MAX_SOCKET_PATH};
use crate::error::{SocketPathError, SpawnError};
use crate::wire;
use nextcloud_push_engine::vouch::VouchKey;
use nextcloud_push_engine::{EngineConfig, NextcloudRoute};
use std::ffi::{c_int, c_void, CStr};
use std::path::PathBuf;
use std::time::Duration;

const OK: c_int = ffi::OK as c_int;
const FAILED: c_int = ffi::HTTP_INTERNAL_SERVER_ERROR as c_int;
/// Grace for a daemon to send close frames and exit before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// A daemon that dies within this many seconds of its start counts as a fast failure.
const FAST_FAILURE_SECS: i64 = 10;
/// After this many fast failures in a row, respawns wait for the monitor hook (~10 s).
const MAX_FAST_FAILURES: u32 = 3;

/// Stops the running daemon (SIGTERM, ≤ 5 s, SIGKILL), reaps it and removes its socket.
fn stop_running(ret: &mut Retained) {
    ret.close_notice();
    if ret.pid != 0 {
        let pid = ret.pid;
        let how = process::stop(pid, STOP_GRACE);
        ret.pid = 0;
        log_at(
            std::ptr::null(),
            Severity::Debug,
            &format!("NCP0008: push daemon pid {pid} ended: {how}"),
        );
    }
    if let Some(path) = ret.socket_path() {
        let _ = std::fs::remove_file(path);
    }
    ret.clear_socket_path();
}

/// What the parent needs to (re)spawn and watch the daemon, owned by pconf (userdata
/// [`SUPERVISOR_KEY`]): stored in every post_config, because the DSO is unloaded with pconf.
struct Supervisor {
    pconf: *mut ffi::apr_pool_t,
    server: *mut ffi::server_rec,
    socket_path: PathBuf,
    engines: Vec<EngineConfig>,
    /// How each engine reaches Nextcloud (loopback address + vouching key), same index.
    routes: Vec<NextcloudRoute>,
    fingerprint: String,
    level: ::log::LevelFilter,
    /// Per engine: its vhost's log level and destination.
    instance_logs: Vec<InstanceLog>,
    /// This Apache server's name in the daemon's metrics ([`plan::server_label`]).
    server_label: String,
    /// The `apr_proc_t` the other-child registration points at (pconf memory).
    proc_rec: *mut ffi::apr_proc_t,
    registered: bool,
}

const SUPERVISOR_KEY: &CStr = c"mod_nextcloud_push:plan";

impl Supervisor {
    /// Moves the supervisor into pconf, stores it as pconf userdata (for `monitor`) and gives
    /// it the `apr_proc_t` its watcher registration points at.
    ///
    /// # Safety
    /// Parent only; `self.pconf` is the live pconf.
    unsafe fn store<'a>(mut self) -> &'a mut Supervisor {
        let pconf = self.pconf;
        // SAFETY: live pconf; the supervisor lives (and is dropped) with it, and its pointer
        // stays valid as pconf userdata while pconf lives.
        unsafe {
            self.proc_rec = ffi::apr_palloc(pconf, std::mem::size_of::<ffi::apr_proc_t>())
                as *mut ffi::apr_proc_t;
            let supervisor = pool::alloc(pconf, self);
            pool::userdata_set(pconf, SUPERVISOR_KEY, supervisor as *mut c_void);
            &mut *supervisor
        }
    }
}

/// `check_config`.
///
/// # Safety
/// Live `pconf` and main server `s`.
pub unsafe fn check_config(pconf: *mut ffi::apr_pool_t, s: *mut ffi::server_rec) -> c_int {
    // SAFETY: per contract.
    let Some(main) = (unsafe { server_config::get(s) }) else { return OK };
    let socket = match resolve_socket(pconf, main.directives.socket.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            log_at(s, Severity::Emerg, &format!("NCP0020: NextcloudPushSocket: {e}"));
            return FAILED;
        }
    };
    let mut status = OK;
    // config.php and its *.config.php companions are evaluated by the PHP CLI as Apache's
    // `User` (nextcloud_push_engine::php_config), never as root.
    // SAFETY: plain reads of httpd's unixd configuration (set while the config was read).
    let user = unsafe { (ffi::ap_unixd_config.user_id, ffi::ap_unixd_config.group_id) };
    nextcloud_push_engine::php_config::configure(nextcloud_push_engine::php_config::PhpSettings {
        user: (crate::sys::effective_uid() == 0).then_some(user),
        ..Default::default()
    });
    // SAFETY: the main server's chain of live servers.
    for srv in unsafe { server_config::servers(s) } {
        // SAFETY: live server of this configuration; one config borrowed at a time.
        let Some(conf) = (unsafe { server_config::get(srv) }) else { continue };
        conf.runtime = Runtime { socket_path: Some(socket.clone()), ..Runtime::default() };
        if !conf.directives.is_enabled() {
            continue;
        }
        match conf.directives.load_engine_config() {
            Ok(engine) => conf.runtime.engine = Some(engine),
            Err(e) => {
                // SAFETY: live server.
                let name = unsafe { server_config::describe(srv) };
                log_at(
                    srv,
                    Severity::Emerg,
                    &format!("NCP0021: push configuration of {name}: {e}"),
                );
                status = FAILED;
            }
        }
    }
    status
}

fn resolve_socket(
    pconf: *mut ffi::apr_pool_t,
    arg: Option<&str>,
) -> Result<PathBuf, SocketPathError> {
    let arg = arg.unwrap_or(DEFAULT_SOCKET);
    // SAFETY: live pool; the result is NULL or a pool string.
    let resolved = unsafe {
        let p = ffi::ap_runtime_dir_relative(pconf, pool::pstr(pconf, arg));
        pool::cstr(p).map(str::to_owned)
    }
    .ok_or_else(|| SocketPathError::Invalid(arg.to_owned()))?;
    if resolved.len() > MAX_SOCKET_PATH {
        return Err(SocketPathError::TooLong { path: resolved, max: MAX_SOCKET_PATH });
    }
    Ok(PathBuf::from(resolved))
}

/// `post_config`: keeps, replaces or starts the daemon for this configuration (see [`plan`]).
///
/// # Safety
/// Parent only; live `pconf` and main server `s`.
pub unsafe fn post_config(pconf: *mut ffi::apr_pool_t, s: *mut ffi::server_rec) -> c_int {
    // SAFETY: plain httpd queries.
    let state = unsafe { ffi::ap_state_query(ffi::AP_SQ_MAIN_STATE as c_int) };
    if state == ffi::AP_SQ_MS_CREATE_PRE_CONFIG as c_int {
        // The startup dry run (before daemonizing): check_config already validated.
        return OK;
    }
    // SAFETY: parent only.
    let ret = unsafe { retained::get() };
    new_generation(ret, s);

    // SAFETY: parent, live main server.
    let (engines, socket_path) = unsafe { assign_engines(s) };
    let Some(socket_path) = socket_path.filter(|_| !engines.is_empty()) else {
        if ret.pid != 0 {
            log_at(
                s,
                Severity::Info,
                "NCP0007: push is no longer enabled anywhere; stopping the push daemon",
            );
            stop_running(ret);
        }
        return OK;
    };
    // SAFETY: the live main server.
    let max_bridged = unsafe { server_config::get_ref(s) }.and_then(|c| c.directives.max_bridged);
    let workers = max_request_workers();
    let bridge_cap = plan::bridge_cap(max_bridged, workers);
    log_bridge_capacity(s, bridge_cap, workers);
    for (index, (engine, route)) in engines.configs.iter().zip(&engines.loopbacks).enumerate() {
        super::vouch::log_route(s, index, &engine.nextcloud_url, *route);
    }

    // SAFETY: the live main server.
    let level = unsafe { super::log::server_level(s) };
    // SAFETY: parent, live main server.
    let (instance_logs, logs_described) = unsafe { instance_logs(s, engines.configs.len()) };
    // SAFETY: parent, live main server.
    let server_label = unsafe { server_label(s) };
    let fingerprint =
        daemon_fingerprint(&socket_path, level, &logs_described, &server_label, &engines);
    let running = (ret.pid != 0 && process::alive(ret.pid)).then(|| ret.fingerprint().to_owned());
    apply(plan::decide(running.as_deref(), &fingerprint), ret, s);

    // A new daemon gets a new vouching key; a kept one keeps its key.
    if ret.pid == 0 {
        ret.vouch_key = *VouchKey::generate().as_bytes();
    }
    let key = VouchKey::from_bytes(ret.vouch_key);
    if ret.pid != 0 {
        // SAFETY: parent, live main server.
        unsafe { send_log_descriptors(ret, s, &instance_logs) };
    }
    let supervisor = Supervisor {
        pconf,
        server: s,
        socket_path,
        routes: engines.routes(&key),
        engines: engines.configs,
        fingerprint,
        level,
        instance_logs,
        server_label,
        proc_rec: std::ptr::null_mut(),
        registered: false,
    };
    // SAFETY: parent, live pconf.
    let supervisor = unsafe { supervisor.store() };
    if ret.pid == 0 {
        start(supervisor, ret);
    } else {
        watch(supervisor, ret.pid);
    }
    // SAFETY: live main server and pconf.
    unsafe {
        share_runtime(s, &key, bridge_cap);
        // Stop the daemon when Apache exits (not on restarts: pconf is cleared then too); the
        // callback lives in this DSO, which is unloaded after it runs.
        ffi::apr_pool_cleanup_register(
            pconf,
            std::ptr::null(),
            Some(stop_on_exit),
            Some(ffi::apr_pool_cleanup_null),
        );
    }
    OK
}

/// The fingerprint of the daemon this configuration wants (see [`plan::fingerprint`]).
fn daemon_fingerprint(
    socket: &std::path::Path,
    level: ::log::LevelFilter,
    instance_logs: &str,
    server_label: &str,
    engines: &Engines,
) -> String {
    // SAFETY: plain reads of httpd's unixd configuration.
    let user = unsafe { (ffi::ap_unixd_config.user_id, ffi::ap_unixd_config.group_id) };
    let build = build_identity();
    let id =
        plan::DaemonIdentity { socket, level, build: &build, user, instance_logs, server_label };
    plan::fingerprint(&id, engines)
}

/// This Apache server's name in the daemon's metrics and server-status
/// ([`plan::server_label`]): the machine's hostname, the main server's ServerName, and its
/// port (the first `Listen` port when ServerName names none).
///
/// # Safety
/// Parent, in post_config; `s` is the live main server.
unsafe fn server_label(s: *mut ffi::server_rec) -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into our buffer; the last byte stays NUL.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    let host = if rc == 0 { CStr::from_bytes_until_nul(&buf).ok() } else { None };
    let host = host.and_then(|h| h.to_str().ok()).unwrap_or("");
    // SAFETY: per contract; server_hostname is NULL or a pool string.
    let name = unsafe { pool::cstr((*s).server_hostname) }.unwrap_or("");
    // SAFETY: per contract. The main server's port, else Apache's first listener's.
    let port = unsafe { super::vouch::vhost_address(s, "") }.map(|(addr, _)| addr.port());
    plan::server_label(host, name, port)
}

/// Each engine's log level and destination, those of the first push vhost that uses it (its
/// LogLevel for the module, its own ErrorLog if it has one), and a description of them all
/// for the fingerprint.
///
/// # Safety
/// Parent, in post_config after `assign_engines`; `s` is the live main server.
unsafe fn instance_logs(s: *mut ffi::server_rec, count: usize) -> (Vec<InstanceLog>, String) {
    let mut found: Vec<Option<(InstanceLog, String)>> = vec![None; count];
    // SAFETY: the main server's chain of live servers.
    for srv in unsafe { server_config::servers(s) } {
        // SAFETY: live server.
        let Some(conf) = (unsafe { server_config::get_ref(srv) }) else { continue };
        let Some(slot) = conf.runtime.engine_index.and_then(|i| found.get_mut(i as usize)) else {
            continue;
        };
        if slot.is_none() {
            // SAFETY: live servers.
            let (sink, described) = unsafe { super::log::vhost_sink(srv, s) };
            // SAFETY: live server.
            let level = unsafe { super::log::server_level(srv) };
            *slot = Some((InstanceLog { level, sink }, format!("{level}@{described}")));
        }
    }
    let mut described = String::new();
    let logs = found
        .into_iter()
        .enumerate()
        .map(|(i, f)| {
            let (log, text) = f.unwrap_or_else(|| {
                (InstanceLog { level: ::log::LevelFilter::Info, sink: Sink::Main }, "-".into())
            });
            described.push_str(&format!("{i}={text};"));
            log
        })
        .collect();
    (logs, described)
}

/// A kept daemon gets this generation's log descriptors over its notice channel (Apache
/// reopened its logs, e.g. after logrotate): the main `ErrorLog` (unless syslog) in slot 0,
/// each engine's own `ErrorLog` in slot `index + 1` (`wire::notice::LOGS`).
///
/// # Safety
/// Parent, in post_config; `s` is the live main server.
unsafe fn send_log_descriptors(ret: &Retained, s: *mut ffi::server_rec, logs: &[InstanceLog]) {
    let Some(notice) = ret.notice_fd() else { return };
    // SAFETY: the retained notice descriptor stays open while `ret` holds it.
    let notice = unsafe { std::os::fd::BorrowedFd::borrow_raw(notice) };
    // httpd makes the main ErrorLog the parent's stderr (a piped logger's pipe stays the same
    // across restarts; syslog has no descriptor).
    // SAFETY: live main server.
    let main = (!unsafe { super::log::logs_to_syslog(s) }).then_some(libc::STDERR_FILENO);
    let slots = std::iter::once((0u16, main)).chain(logs.iter().enumerate().map(|(i, l)| {
        let fd = match l.sink {
            Sink::Fd(fd) => Some(fd),
            _ => None,
        };
        (u16::try_from(i + 1).unwrap_or(u16::MAX), fd)
    }));
    for (slot, fd) in slots {
        let Some(fd) = fd else { continue };
        // SAFETY: a log descriptor of this generation, open for the duration of the call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let [hi, lo] = slot.to_be_bytes();
        if let Err(e) = crate::sys::send_with_fd(notice, &[crate::wire::notice::LOGS, hi, lo], fd) {
            log_at(
                s,
                Severity::Warn,
                &format!("NCP0023: cannot pass the reopened error logs to the push daemon: {e}"),
            );
            return;
        }
    }
}

/// A real configuration pass of the parent: a new generation, whose respawn bookkeeping
/// starts afresh; the banner on the first.
fn new_generation(ret: &mut Retained, s: *mut ffi::server_rec) {
    stop_notice::set_parent();
    ret.generation += 1;
    ret.no_respawn = 0;
    ret.respawn_pending = 0;
    ret.fast_failures = 0;
    if ret.generation == 1 {
        log_at(
            s,
            Severity::Info,
            &format!(
                "NCP0001: mod_nextcloud_push {} (handoff protocol {}) loaded",
                env!("CARGO_PKG_VERSION"),
                wire::PROTOCOL
            ),
        );
    }
}

/// Carries out the keep-or-replace decision on the running daemon (a new one is started by the
/// caller whenever none runs afterwards).
fn apply(action: Action, ret: &mut Retained, s: *mut ffi::server_rec) {
    match action {
        Action::Keep => {
            log_at(
                s,
                Severity::Debug,
                &format!("NCP0005: keeping push daemon pid {} (configuration unchanged)", ret.pid),
            );
            // This DSO was reloaded: the signal wrapper's copy of the channel starts empty.
            stop_notice::set_channel(ret.notice_fd().unwrap_or(-1));
        }
        Action::Replace => {
            log_at(
                s,
                Severity::Info,
                &format!(
                    "NCP0006: push configuration changed; replacing push daemon pid {}",
                    ret.pid
                ),
            );
            stop_running(ret);
        }
        Action::Start => {
            ret.pid = 0;
            ret.close_notice();
        }
    }
}

/// Every server checks vouches with the daemon's key and tells the daemon the bridge cap
/// (children inherit the configuration).
///
/// # Safety
/// Parent, in post_config; `s` is the live main server.
unsafe fn share_runtime(s: *mut ffi::server_rec, key: &VouchKey, bridge_cap: u32) {
    // SAFETY: the main server's chain of live servers; one config borrowed at a time.
    for srv in unsafe { server_config::servers(s) } {
        // SAFETY: as above.
        if let Some(conf) = unsafe { server_config::get(srv) } {
            conf.runtime.vouch_key = Some(key.clone());
            conf.runtime.max_bridged = Some(bridge_cap);
            conf.runtime.daemon = true;
        }
    }
}

/// One engine per distinct configuration: every push-enabled server learns its engine's index
/// and fingerprint (NCP0004). Also returns the daemon socket (the same for every server).
///
/// # Safety
/// Parent, in post_config; `s` is the live main server.
unsafe fn assign_engines(s: *mut ffi::server_rec) -> (Engines, Option<PathBuf>) {
    let mut engines = Engines::default();
    let mut socket_path = None;
    // SAFETY: the main server's chain of live servers.
    for srv in unsafe { server_config::servers(s) } {
        // SAFETY: live server; one config borrowed at a time.
        let Some(conf) = (unsafe { server_config::get(srv) }) else { continue };
        let Some(engine) = conf.runtime.engine.as_ref() else { continue };
        let loopback = if conf.directives.loopback_enabled() {
            // SAFETY: live server, parent in post_config.
            unsafe { super::vouch::vhost_address(srv, &engine.nextcloud_url) }
        } else {
            None
        };
        let (index, print) = engines.add(engine, loopback);
        conf.runtime.engine_index = Some(index);
        conf.runtime.engine_fingerprint = Some(print);
        socket_path = conf.runtime.socket_path.clone();
        let base = conf.directives.base_path();
        // SAFETY: live server.
        let name = unsafe { server_config::describe(srv) };
        log_at(
            srv,
            Severity::Info,
            &format!(
                "NCP0004: push enabled for {name}: WebSocket at {base}/ws, engine {index}, daemon socket {}",
                conf.runtime.socket_path.as_deref().map(|p| p.display().to_string()).unwrap_or_default()
            ),
        );
    }
    (engines, socket_path)
}

/// MaxRequestWorkers as the MPM reports it (daemons × threads).
fn max_request_workers() -> Option<u64> {
    let query = |what: u32| {
        let mut v: c_int = 0;
        // SAFETY: ap_mpm_query with a valid out pointer.
        let rv = unsafe { ffi::ap_mpm_query(what as c_int, &mut v) };
        (rv == 0 && v > 0).then_some(v as u64)
    };
    let daemons = query(ffi::AP_MPMQ_MAX_DAEMONS)?;
    Some(daemons * query(ffi::AP_MPMQ_MAX_THREADS).unwrap_or(1).max(1))
}

/// One line per configuration load: how many wss sessions workers may bridge (the others move
/// to the daemon and hold no worker, like plain-HTTP ones).
fn log_bridge_capacity(s: *mut ffi::server_rec, cap: u32, workers: Option<u64>) {
    let workers = workers.map_or_else(|| "unknown".to_owned(), |w| w.to_string());
    log_at(
        s,
        Severity::Info,
        &format!(
            "NCP0019: at most {cap} wss sessions at once are bridged by Apache workers \
             (NextcloudPushMaxBridged; MaxRequestWorkers {workers}); wss sessions whose TLS moves \
             to the push daemon and plain-HTTP sessions hold no worker"
        ),
    );
}

/// Identifies the installed module file (device, inode, size, mtime), so installing a new
/// build replaces the daemon at the next graceful restart even without a version bump.
fn build_identity() -> String {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: Dl_info is plain data; all-zero is valid.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr with the address of a function in this DSO and a valid out struct.
    let found = unsafe { libc::dladdr(build_identity as *const c_void, &mut info) } != 0;
    // SAFETY: dli_fname is NULL or a NUL-terminated path owned by the dynamic loader.
    let path = if found { unsafe { pool::cstr(info.dli_fname) } } else { None };
    match path.and_then(|p| std::fs::metadata(p).ok()) {
        Some(m) => format!("{}:{}:{}:{}", m.dev(), m.ino(), m.size(), m.mtime()),
        None => String::new(),
    }
}

/// Forks a daemon and watches it; on a startup failure, no respawn until the next restart.
fn start(sup: &mut Supervisor, ret: &mut Retained) {
    let spec = SpawnSpec {
        pconf: sup.pconf,
        server: sup.server,
        socket_path: &sup.socket_path,
        engines: &sup.engines,
        routes: &sup.routes,
        level: sup.level,
        instance_logs: &sup.instance_logs,
        server_label: &sup.server_label,
    };
    // SAFETY: parent only, single-threaded, live pconf/server (the supervisor lives in pconf).
    match unsafe { process::spawn(&spec) } {
        Ok((pid, notice)) => {
            ret.pid = pid;
            ret.set_notice(notice);
            // SAFETY: plain APR call.
            ret.spawned_at = unsafe { ffi::apr_time_now() };
            ret.set_fingerprint(&sup.fingerprint);
            ret.set_socket_path(&sup.socket_path);
            log_at(
                sup.server,
                Severity::Info,
                &format!(
                    "NCP0009: push daemon started (pid {pid}, socket {})",
                    sup.socket_path.display()
                ),
            );
            watch(sup, pid);
        }
        Err(e @ SpawnError::DiedDuringStartup(_)) if !stopping() => {
            // Killed before it was ready (not a configuration problem): a fast failure, retried
            // by the monitor hook in about 10 s.
            ret.pid = 0;
            ret.fast_failures += 1;
            ret.respawn_pending = 1;
            log_at(
                sup.server,
                Severity::Error,
                &format!("NCP0011: {e}; next attempt in about 10 s"),
            );
        }
        Err(e) => {
            ret.pid = 0;
            ret.no_respawn = 1;
            log_at(
                sup.server,
                Severity::Crit,
                &format!(
                    "NCP0010: the push daemon failed to start: {e}; WebSocket requests get 503 \
                     until the next restart"
                ),
            );
        }
    }
}

/// Registers the other-child watcher for `pid` on pconf.
fn watch(sup: &mut Supervisor, pid: libc::pid_t) {
    // SAFETY: proc_rec is pconf memory sized for apr_proc_t; the registration lives in pconf
    // and its cleanup unregisters it before pconf (and this DSO) go away.
    unsafe {
        if sup.registered {
            ffi::apr_proc_other_child_unregister(sup as *mut Supervisor as *mut c_void);
            sup.registered = false;
        }
        std::ptr::write_bytes(sup.proc_rec, 0, 1);
        (*sup.proc_rec).pid = pid;
        ffi::apr_proc_other_child_register(
            sup.proc_rec,
            Some(maintenance),
            sup as *mut Supervisor as *mut c_void,
            std::ptr::null_mut(),
            sup.pconf,
        );
        sup.registered = true;
    }
}

/// APR other-child callback, run by the MPM in the parent's main loop.
unsafe extern "C" fn maintenance(reason: c_int, data: *mut c_void, status: c_int) {
    super::guard("push daemon watcher", (), || {
        // SAFETY: `data` is the pconf-owned Supervisor registered in `watch`; the parent is
        // single-threaded.
        let sup = unsafe { &mut *(data as *mut Supervisor) };
        match reason as u32 {
            ffi::APR_OC_REASON_DEATH | ffi::APR_OC_REASON_LOST => {
                if reason as u32 == ffi::APR_OC_REASON_DEATH && status == -1 {
                    // A refresh (stop/restart reclaim) found it still running.
                    return;
                }
                // APR cleared its pointer to our proc record: unregister before anything else
                // (a later alert would dereference it).
                // SAFETY: registered with this exact data pointer.
                unsafe { ffi::apr_proc_other_child_unregister(data) };
                sup.registered = false;
                // SAFETY: parent only.
                let ret = unsafe { retained::get() };
                let pid = ret.pid;
                ret.pid = 0;
                ret.close_notice();
                if stopping() {
                    return;
                }
                let what = if reason as u32 == ffi::APR_OC_REASON_LOST {
                    "was lost".to_owned()
                } else {
                    format!("exited (status {status})")
                };
                // SAFETY: plain APR call.
                let now = unsafe { ffi::apr_time_now() };
                if (now - ret.spawned_at) / 1_000_000 < FAST_FAILURE_SECS {
                    ret.fast_failures += 1;
                } else {
                    ret.fast_failures = 0;
                }
                if ret.no_respawn != 0 {
                    return;
                }
                if ret.fast_failures >= MAX_FAST_FAILURES {
                    log_at(
                        sup.server,
                        Severity::Error,
                        &format!(
                            "NCP0011: push daemon (pid {pid}) {what}; it keeps dying, next attempt \
                             in about 10 s"
                        ),
                    );
                    ret.respawn_pending = 1;
                    return;
                }
                log_at(
                    sup.server,
                    Severity::Error,
                    &format!("NCP0011: push daemon (pid {pid}) {what}; restarting it"),
                );
                start(sup, ret);
            }
            // RESTART / RUNNING / UNWRITABLE / UNREGISTER: nothing to do (stopping is the
            // pconf cleanup's job, and only when Apache exits).
            _ => {}
        }
    });
}

fn stopping() -> bool {
    let mut state: c_int = 0;
    // SAFETY: ap_mpm_query with a valid out pointer.
    let rv = unsafe { ffi::ap_mpm_query(ffi::AP_MPMQ_MPM_STATE as c_int, &mut state) };
    // If the MPM cannot tell, assume stopping (as mod_cgid does).
    rv != 0 || state == ffi::AP_MPMQ_STOPPING as c_int
}

/// `monitor`: the throttled respawn.
///
/// # Safety
/// Parent only; `p` is pconf.
pub unsafe fn monitor(p: *mut ffi::apr_pool_t) {
    // SAFETY: parent only, after the MPM installed its signal handlers; live pconf.
    unsafe { wrap_stop_signals(p) };
    // SAFETY: parent only.
    let ret = unsafe { retained::get() };
    if ret.respawn_pending == 0 || ret.pid != 0 || ret.no_respawn != 0 || stopping() {
        return;
    }
    // SAFETY: live pconf; the plan (if any) was stored by post_config in this pconf.
    let sup = unsafe { pool::userdata_get(p, SUPERVISOR_KEY) } as *mut Supervisor;
    if sup.is_null() {
        return;
    }
    ret.respawn_pending = 0;
    // SAFETY: pconf-owned plan, parent is single-threaded.
    let sup = unsafe { &mut *sup };
    log_at(sup.server, Severity::Notice, "NCP0012: starting the push daemon again");
    start(sup, ret);
}

/// pconf cleanup: stop the daemon when Apache exits; restarts keep it.
unsafe extern "C" fn stop_on_exit(_data: *mut c_void) -> ffi::apr_status_t {
    super::guard("push daemon stop", (), || {
        // SAFETY: plain httpd query.
        let state = unsafe { ffi::ap_state_query(ffi::AP_SQ_MAIN_STATE as c_int) };
        if state == ffi::AP_SQ_MS_EXITING as c_int {
            // SAFETY: parent only (pconf cleanups of the parent).
            stop_running(unsafe { retained::get() });
        }
    });
    0
}

/// `child_status` (a child started) and `monitor`: the parent's stop handlers notify the
/// daemon from now on (`stop_notice`); logged once per generation.
///
/// # Safety
/// Parent only, after `ap_unixd_mpm_set_signals`; live pconf.
pub unsafe fn wrap_stop_signals(pconf: *mut ffi::apr_pool_t) {
    // SAFETY: per contract.
    if unsafe { stop_notice::install(pconf) } {
        log_at(
            std::ptr::null(),
            Severity::Debug,
            "NCP0022: apachectl stop, graceful-stop and restart now notify the push daemon first",
        );
    }
}
