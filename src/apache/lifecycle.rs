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
//! State that must survive restarts (pid, fingerprint, respawn bookkeeping) lives in
//! `ap_retained_data`, plain C-layout memory with no pointers into the DSO.

use super::log::{log_at, Severity};
use super::process::{self, SpawnSpec};
use super::{ffi, pool, server_config, stop_notice};
use crate::config::{ServerConfig, DEFAULT_SOCKET, MAX_SOCKET_PATH};
use crate::handoff;
use nextcloud_push_engine::EngineConfig;
use sha1::{Digest, Sha1};
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

const RETAINED_KEY: &CStr = c"mod_nextcloud_push:retained:v4";
const PLAN_KEY: &CStr = c"mod_nextcloud_push:plan";
const RETAINED_MAGIC: u64 = 0x4e43_5055_5348_0004; // "NCPUSH" v4
/// The previous layout: [`Retained`] without its last field. A graceful restart from a build
/// that used it copies it forward, so that build's daemon is found (and replaced) instead of
/// being left running beside a new one.
const PREVIOUS_KEY: &CStr = c"mod_nextcloud_push:retained:v3";
const PREVIOUS_MAGIC: u64 = 0x4e43_5055_5348_0003;
/// The size of the v3 block (5363410's `Retained`), fixed: it must not follow later changes.
const PREVIOUS_LEN: usize = 248;
const _: () = assert!(PREVIOUS_LEN <= std::mem::offset_of!(Retained, notice_fd_plus_one));

/// Process-lifetime state in `ap_retained_data` (zeroed on creation). Layout is frozen for the
/// key above: change the key when changing it.
#[repr(C)]
struct Retained {
    magic: u64,
    /// The running daemon, 0 = none.
    pid: i32,
    /// Startup failed: no respawn until the next restart.
    no_respawn: u32,
    /// `apr_time_t` of the last spawn.
    spawned_at: i64,
    fast_failures: u32,
    /// A respawn is due (set when respawning is throttled; done by `monitor`).
    respawn_pending: u32,
    /// Real post_config passes so far.
    generation: u64,
    /// Hex SHA-1 of the daemon's configuration, NUL-padded.
    fingerprint: [u8; 64],
    /// The running daemon's socket path, NUL-padded (removed by the parent after a stop: the
    /// daemon runs as `User` and usually cannot unlink in DefaultRuntimeDir).
    socket: [u8; 112],
    /// The running daemon's client-IP vouching key (issue #4, `apache::vouch`): generated in
    /// the parent before each fork of a new daemon from post_config, kept while the daemon is
    /// kept (and on a respawn, which the current children cannot learn about), inherited by
    /// the Apache children through their server configuration.
    vouch_key: [u8; nextcloud_push_engine::vouch::KEY_LEN],
    /// The parent's end of the running daemon's stop-notice channel plus one (0 = none; the
    /// memory starts zeroed and 0 is a valid descriptor). See `stop_notice`.
    notice_fd_plus_one: i32,
}

impl Retained {
    fn notice_fd(&self) -> Option<std::os::fd::RawFd> {
        (self.notice_fd_plus_one > 0).then_some(self.notice_fd_plus_one - 1)
    }

    /// A new daemon's channel (the descriptor is kept open for the process's life, across
    /// restarts, until [`Retained::close_notice`]).
    fn set_notice(&mut self, fd: std::os::fd::OwnedFd) {
        self.close_notice();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(fd);
        self.notice_fd_plus_one = fd + 1;
        stop_notice::set_channel(fd);
    }

    /// The daemon is gone or replaced: forget its channel (the signal wrapper first).
    fn close_notice(&mut self) {
        stop_notice::set_channel(-1);
        if let Some(fd) = self.notice_fd() {
            // SAFETY: our own descriptor, stored by set_notice; nothing else owns it.
            unsafe { libc::close(fd) };
        }
        self.notice_fd_plus_one = 0;
    }

    fn socket_path(&self) -> Option<PathBuf> {
        let n = self.socket.iter().position(|b| *b == 0).unwrap_or(self.socket.len());
        std::str::from_utf8(&self.socket[..n]).ok().filter(|s| !s.is_empty()).map(PathBuf::from)
    }

    fn set_socket_path(&mut self, path: &std::path::Path) {
        self.socket = [0; 112];
        let bytes = path.as_os_str().as_encoded_bytes();
        let n = bytes.len().min(self.socket.len() - 1);
        self.socket[..n].copy_from_slice(&bytes[..n]);
    }
}

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
    ret.socket = [0; 112];
}

/// # Safety
/// Parent only (retained data is process memory of the parent).
unsafe fn retained<'a>() -> &'a mut Retained {
    // SAFETY: ap_retained_data_create returns zeroed memory of the requested size that lives
    // for the whole process; the parent is single-threaded, so no aliasing &mut exists. A
    // previous-layout block, if any, is at least PREVIOUS_LEN bytes long (see PREVIOUS_KEY).
    unsafe {
        let mut p = ffi::ap_retained_data_get(RETAINED_KEY.as_ptr()) as *mut Retained;
        if p.is_null() {
            p = ffi::ap_retained_data_create(RETAINED_KEY.as_ptr(), std::mem::size_of::<Retained>())
                as *mut Retained;
        }
        // Raw writes first, the reference after them.
        if std::ptr::addr_of!((*p).magic).read() != RETAINED_MAGIC {
            std::ptr::write_bytes(p, 0, 1);
            let previous = ffi::ap_retained_data_get(PREVIOUS_KEY.as_ptr()) as *mut u8;
            // The previous block is PREVIOUS_LEN bytes (its size, 8-aligned) of the same
            // layout; its magic is cleared so it is copied only once.
            if !previous.is_null() && (previous as *const u64).read_unaligned() == PREVIOUS_MAGIC {
                std::ptr::copy_nonoverlapping(previous, p as *mut u8, PREVIOUS_LEN);
                (previous as *mut u64).write_unaligned(0);
            }
            std::ptr::addr_of_mut!((*p).magic).write(RETAINED_MAGIC);
        }
        &mut *p
    }
}

/// What the parent needs to (re)spawn the daemon, owned by pconf (userdata `PLAN_KEY`).
struct Plan {
    pconf: *mut ffi::apr_pool_t,
    server: *mut ffi::server_rec,
    socket_path: PathBuf,
    engines: Vec<EngineConfig>,
    /// How each engine reaches Nextcloud (loopback address + vouching key), same index.
    routes: Vec<nextcloud_push_engine::NextcloudRoute>,
    fingerprint: String,
    level: ::log::LevelFilter,
    /// The `apr_proc_t` the other-child registration points at (pconf memory).
    proc_rec: *mut ffi::apr_proc_t,
    registered: bool,
}

/// `check_config`.
///
/// # Safety
/// Live `pconf` and main server `s`.
pub unsafe fn check_config(pconf: *mut ffi::apr_pool_t, s: *mut ffi::server_rec) -> c_int {
    // SAFETY: per contract.
    let Some(main) = (unsafe { server_config::get(s) }) else { return OK };
    let socket = match resolve_socket(pconf, main) {
        Ok(p) => p,
        Err(msg) => {
            log_at(s, Severity::Emerg, &format!("NCP0020: NextcloudPushSocket: {msg}"));
            return FAILED;
        }
    };
    let mut status = OK;
    // SAFETY: the main server's chain of live servers.
    for srv in unsafe { server_config::servers(s) } {
        // SAFETY: live server of this configuration; one config borrowed at a time.
        let Some(conf) = (unsafe { server_config::get(srv) }) else { continue };
        conf.socket_path = Some(socket.clone());
        conf.engine = None;
        conf.engine_index = None;
        conf.engine_fingerprint = None;
        if !conf.is_enabled() {
            continue;
        }
        match conf.load_engine_config() {
            Ok(engine) => conf.engine = Some(engine),
            Err(msg) => {
                // SAFETY: live server.
                let name = unsafe { server_config::describe(srv) };
                log_at(
                    srv,
                    Severity::Emerg,
                    &format!("NCP0021: push configuration of {name}: {msg}"),
                );
                status = FAILED;
            }
        }
    }
    status
}

fn resolve_socket(pconf: *mut ffi::apr_pool_t, main: &ServerConfig) -> Result<PathBuf, String> {
    let arg = main.socket.as_deref().unwrap_or(DEFAULT_SOCKET);
    // SAFETY: live pool; the result is NULL or a pool string.
    let resolved = unsafe {
        let p = ffi::ap_runtime_dir_relative(pconf, pool::pstr(pconf, arg));
        pool::cstr(p).map(str::to_owned)
    }
    .ok_or_else(|| format!("invalid path \"{arg}\""))?;
    if resolved.len() > MAX_SOCKET_PATH {
        return Err(format!("{resolved} is longer than {MAX_SOCKET_PATH} bytes"));
    }
    Ok(PathBuf::from(resolved))
}

/// `post_config`.
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
    let ret = unsafe { retained() };
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
                handoff::PROTOCOL
            ),
        );
    }

    // One engine per distinct configuration; every enabled server remembers its index.
    let mut engines: Vec<EngineConfig> = Vec::new();
    let mut prints: Vec<String> = Vec::new();
    // Per engine: the vhost address the daemon calls Nextcloud through (issue #4); a vhost
    // whose port is the Nextcloud URL's wins.
    let mut loopbacks: Vec<Option<(std::net::SocketAddr, bool)>> = Vec::new();
    let mut socket_path = None;
    // SAFETY: the main server's chain of live servers.
    for srv in unsafe { server_config::servers(s) } {
        // SAFETY: live server; one config borrowed at a time.
        let Some(conf) = (unsafe { server_config::get(srv) }) else { continue };
        let Some(engine) = conf.engine.as_ref() else { continue };
        let print = engine.fingerprint();
        let index = match prints.iter().position(|p| *p == print) {
            Some(i) => i,
            None => {
                prints.push(print.clone());
                engines.push(engine.clone());
                loopbacks.push(None);
                engines.len() - 1
            }
        };
        if conf.loopback_enabled() {
            // SAFETY: live server, parent in post_config.
            let here = unsafe { super::vouch::vhost_address(srv, &engine.nextcloud_url) };
            match (loopbacks[index], here) {
                (None, Some(found)) | (Some((_, false)), Some(found @ (_, true))) => {
                    loopbacks[index] = Some(found)
                }
                _ => {}
            }
        }
        conf.engine_index = Some(index as u32);
        conf.engine_fingerprint = Some(print);
        socket_path = conf.socket_path.clone();
        let base = conf.base_path().to_owned();
        // SAFETY: live server.
        let name = unsafe { server_config::describe(srv) };
        log_at(
            srv,
            Severity::Info,
            &format!(
                "NCP0004: push enabled for {name}: WebSocket at {base}/ws, engine {index}, daemon socket {}",
                conf.socket_path.as_deref().map(|p| p.display().to_string()).unwrap_or_default()
            ),
        );
    }

    let (Some(socket_path), false) = (socket_path, engines.is_empty()) else {
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
    log_bridge_capacity(s);

    // SAFETY: the live main server.
    let level = unsafe { super::log::server_level(s) };
    // The loopback addresses are part of the daemon's configuration (not of the engines').
    let daemon_prints: Vec<String> =
        prints.iter().zip(&loopbacks).map(|(p, l)| format!("{p}@{:?}", l.map(|l| l.0))).collect();
    let fingerprint = fingerprint(&socket_path, &daemon_prints, level);
    for (index, (engine, route)) in engines.iter().zip(&loopbacks).enumerate() {
        super::vouch::log_route(s, index, &engine.nextcloud_url, *route);
    }
    // SAFETY: live pconf; the plan lives (and is dropped) with it.
    let plan = unsafe {
        pool::alloc(
            pconf,
            Plan {
                pconf,
                server: s,
                socket_path,
                engines,
                routes: Vec::new(),
                fingerprint,
                level,
                proc_rec: ffi::apr_palloc(pconf, std::mem::size_of::<ffi::apr_proc_t>())
                    as *mut ffi::apr_proc_t,
                registered: false,
            },
        )
    };
    // SAFETY: live pconf; the plan pointer stays valid while pconf lives.
    unsafe { pool::userdata_set(pconf, PLAN_KEY, plan as *mut c_void) };
    // SAFETY: just allocated, exclusively ours.
    let plan = unsafe { &mut *plan };

    if ret.pid != 0 && process::alive(ret.pid) {
        if fingerprint_matches(ret, &plan.fingerprint) {
            log_at(
                s,
                Severity::Debug,
                &format!("NCP0005: keeping push daemon pid {} (configuration unchanged)", ret.pid),
            );
            // This DSO was reloaded: the signal wrapper's copy of the channel starts empty.
            stop_notice::set_channel(ret.notice_fd().unwrap_or(-1));
        } else {
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
    } else {
        ret.pid = 0;
        ret.close_notice();
    }
    // A new daemon gets a new vouching key; a kept one keeps its key (issue #4).
    if ret.pid == 0 {
        ret.vouch_key = *nextcloud_push_engine::vouch::VouchKey::generate().as_bytes();
    }
    let key = nextcloud_push_engine::vouch::VouchKey::from_bytes(ret.vouch_key);
    plan.routes = loopbacks
        .iter()
        .map(|l| nextcloud_push_engine::NextcloudRoute {
            loopback: l.map(|l| l.0),
            vouch: l.map(|_| key.clone()),
        })
        .collect();
    if ret.pid == 0 {
        start(plan, ret);
    } else {
        watch(plan, ret.pid);
    }
    // Every server checks vouches with the daemon's key (children inherit the configuration).
    // SAFETY: the main server's chain of live servers; one config borrowed at a time.
    for srv in unsafe { server_config::servers(s) } {
        // SAFETY: as above.
        if let Some(conf) = unsafe { server_config::get(srv) } {
            conf.vouch_key = Some(key.clone());
        }
    }

    // Stop the daemon when Apache exits (not on restarts: pconf is cleared then too).
    // SAFETY: live pconf; the callback lives in this DSO, which is unloaded after it runs.
    unsafe {
        ffi::apr_pool_cleanup_register(
            pconf,
            std::ptr::null(),
            Some(stop_on_exit),
            Some(ffi::apr_pool_cleanup_null),
        );
    }
    OK
}

/// One line per configuration load: plain-HTTP WebSockets hold no Apache worker, but each wss
/// client that reaches Apache's mod_ssl holds one for as long as it is connected (the TLS
/// bridge), so MaxRequestWorkers bounds them.
fn log_bridge_capacity(s: *mut ffi::server_rec) {
    let query = |what: u32| {
        let mut v: c_int = 0;
        // SAFETY: ap_mpm_query with a valid out pointer.
        let rv = unsafe { ffi::ap_mpm_query(what as c_int, &mut v) };
        (rv == 0 && v > 0).then_some(v as u64)
    };
    let msg = match (query(ffi::AP_MPMQ_MAX_DAEMONS), query(ffi::AP_MPMQ_MAX_THREADS)) {
        (Some(daemons), threads) => {
            let workers = daemons * threads.unwrap_or(1).max(1);
            format!(
                "NCP0019: MaxRequestWorkers {workers}: room for at most {workers} bridged wss \
                 (TLS via mod_ssl) push sessions, fewer while other requests run; each holds a \
                 worker while connected. Plain-HTTP sessions (TLS terminated in front of \
                 Apache) hold none"
            )
        }
        _ => "NCP0019: each bridged wss (TLS via mod_ssl) push session holds an Apache worker \
              while connected (MaxRequestWorkers unknown); plain-HTTP sessions hold none"
            .to_owned(),
    };
    log_at(s, Severity::Info, &msg);
}

fn fingerprint(socket: &std::path::Path, engines: &[String], level: ::log::LevelFilter) -> String {
    let mut sha = Sha1::new();
    sha.update(format!(
        "protocol={};version={};build={};socket={};level={level};",
        handoff::PROTOCOL,
        env!("CARGO_PKG_VERSION"),
        build_identity(),
        socket.display()
    ));
    // SAFETY: plain reads of httpd's unixd configuration.
    let (uid, gid) = unsafe { (ffi::ap_unixd_config.user_id, ffi::ap_unixd_config.group_id) };
    sha.update(format!("user={uid}:{gid};"));
    for e in engines {
        sha.update(e.as_bytes());
        sha.update(b";");
    }
    sha.finalize().iter().map(|b| format!("{b:02x}")).collect()
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

fn fingerprint_matches(ret: &Retained, fp: &str) -> bool {
    let stored = ret
        .fingerprint
        .iter()
        .position(|b| *b == 0)
        .map_or(&ret.fingerprint[..], |n| &ret.fingerprint[..n]);
    stored == fp.as_bytes()
}

fn store_fingerprint(ret: &mut Retained, fp: &str) {
    ret.fingerprint = [0; 64];
    let n = fp.len().min(63);
    ret.fingerprint[..n].copy_from_slice(&fp.as_bytes()[..n]);
}

/// Forks a daemon for `plan` and watches it; on failure, no respawn until the next restart.
fn start(plan: &mut Plan, ret: &mut Retained) {
    let spec = SpawnSpec {
        pconf: plan.pconf,
        server: plan.server,
        socket_path: &plan.socket_path,
        engines: &plan.engines,
        routes: &plan.routes,
        level: plan.level,
    };
    // SAFETY: parent only, single-threaded, live pconf/server (the plan lives in pconf).
    match unsafe { process::spawn(&spec) } {
        Ok((pid, notice)) => {
            ret.pid = pid;
            ret.set_notice(notice);
            // SAFETY: plain APR call.
            ret.spawned_at = unsafe { ffi::apr_time_now() };
            store_fingerprint(ret, &plan.fingerprint);
            ret.set_socket_path(&plan.socket_path);
            log_at(
                plan.server,
                Severity::Info,
                &format!(
                    "NCP0009: push daemon started (pid {pid}, socket {})",
                    plan.socket_path.display()
                ),
            );
            watch(plan, pid);
        }
        Err(msg) if msg.starts_with(process::DIED_DURING_STARTUP) && !stopping() => {
            // Killed before it was ready (not a configuration problem): a fast failure, retried
            // by the monitor hook in about 10 s.
            ret.pid = 0;
            ret.fast_failures += 1;
            ret.respawn_pending = 1;
            log_at(
                plan.server,
                Severity::Error,
                &format!("NCP0011: {msg}; next attempt in about 10 s"),
            );
        }
        Err(msg) => {
            ret.pid = 0;
            ret.no_respawn = 1;
            log_at(
                plan.server,
                Severity::Crit,
                &format!(
                    "NCP0010: the push daemon failed to start: {msg}; WebSocket requests get 503 \
                     until the next restart"
                ),
            );
        }
    }
}

/// Registers the other-child watcher for `pid` on pconf.
fn watch(plan: &mut Plan, pid: libc::pid_t) {
    // SAFETY: proc_rec is pconf memory sized for apr_proc_t; the registration lives in pconf
    // and its cleanup unregisters it before pconf (and this DSO) go away.
    unsafe {
        if plan.registered {
            ffi::apr_proc_other_child_unregister(plan as *mut Plan as *mut c_void);
            plan.registered = false;
        }
        std::ptr::write_bytes(plan.proc_rec, 0, 1);
        (*plan.proc_rec).pid = pid;
        ffi::apr_proc_other_child_register(
            plan.proc_rec,
            Some(maintenance),
            plan as *mut Plan as *mut c_void,
            std::ptr::null_mut(),
            plan.pconf,
        );
        plan.registered = true;
    }
}

/// APR other-child callback, run by the MPM in the parent's main loop.
unsafe extern "C" fn maintenance(reason: c_int, data: *mut c_void, status: c_int) {
    super::guard("push daemon watcher", (), || {
        // SAFETY: `data` is the pconf-owned Plan registered in `watch`; the parent is
        // single-threaded.
        let plan = unsafe { &mut *(data as *mut Plan) };
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
                plan.registered = false;
                // SAFETY: parent only.
                let ret = unsafe { retained() };
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
                        plan.server,
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
                    plan.server,
                    Severity::Error,
                    &format!("NCP0011: push daemon (pid {pid}) {what}; restarting it"),
                );
                start(plan, ret);
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
    let ret = unsafe { retained() };
    if ret.respawn_pending == 0 || ret.pid != 0 || ret.no_respawn != 0 || stopping() {
        return;
    }
    // SAFETY: live pconf; the plan (if any) was stored by post_config in this pconf.
    let plan = unsafe { pool::userdata_get(p, PLAN_KEY) } as *mut Plan;
    if plan.is_null() {
        return;
    }
    ret.respawn_pending = 0;
    // SAFETY: pconf-owned plan, parent is single-threaded.
    let plan = unsafe { &mut *plan };
    log_at(plan.server, Severity::Notice, "NCP0012: starting the push daemon again");
    start(plan, ret);
}

/// pconf cleanup: stop the daemon when Apache exits; restarts keep it.
unsafe extern "C" fn stop_on_exit(_data: *mut c_void) -> ffi::apr_status_t {
    super::guard("push daemon stop", (), || {
        // SAFETY: plain httpd query.
        let state = unsafe { ffi::ap_state_query(ffi::AP_SQ_MAIN_STATE as c_int) };
        if state == ffi::AP_SQ_MS_EXITING as c_int {
            // SAFETY: parent only (pconf cleanups of the parent).
            stop_running(unsafe { retained() });
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
