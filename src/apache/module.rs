//! The exported module record, `register_hooks`, and the trampoline helpers every callback
//! uses.

#[cfg(not(test))]
use super::{directives, server_config};
use super::{ffi, handler, lifecycle, pool};
use crate::error::DirectiveError;
use std::ffi::{c_char, c_int, c_void};
use std::ptr;

/// `LoadModule nextcloud_push_module …/mod_nextcloud_push.so` looks this symbol up. It must be
/// writable: httpd stores `module_index`, `next`, `dynamic_load_handle` and `name` into it
/// (a read-only static lands in RELRO memory and `apache2 -t` segfaults). `cmds` is set here
/// because httpd registers the directives before it calls `register_hooks`.
/// Not built into unit-test binaries, which cannot resolve httpd's symbols.
#[cfg(not(test))]
#[no_mangle]
#[allow(non_upper_case_globals)]
pub static mut nextcloud_push_module: ffi::module = ffi::module {
    version: ffi::MODULE_MAGIC_NUMBER_MAJOR as c_int,
    minor_version: ffi::MODULE_MAGIC_NUMBER_MINOR as c_int,
    module_index: -1,
    name: c"mod_nextcloud_push.c".as_ptr(),
    dynamic_load_handle: ptr::null_mut(),
    next: ptr::null_mut(),
    magic: ffi::MODULE_MAGIC_COOKIE as std::ffi::c_ulong,
    rewrite_args: None,
    create_dir_config: None,
    merge_dir_config: None,
    create_server_config: Some(server_config::create),
    merge_server_config: Some(server_config::merge),
    cmds: &directives::COMMANDS as *const directives::Commands as *const ffi::command_rec,
    register_hooks: Some(register_hooks),
    flags: 0,
};

/// Pointer to the module record, for `ap_get_module_config`.
#[cfg(not(test))]
pub fn record() -> *mut ffi::module {
    &raw mut nextcloud_push_module
}

#[cfg(test)]
pub fn record() -> *mut ffi::module {
    ptr::null_mut()
}

/// Our module index (per-module LogLevel, config vectors); -1 before httpd assigned it.
pub fn index() -> c_int {
    let m = record();
    if m.is_null() {
        return -1;
    }
    // SAFETY: the record is a static; httpd writes module_index once while loading the module,
    // before any code that logs can run, so this plain read does not race.
    unsafe { ptr::addr_of!((*m).module_index).read() }
}

/// Called by httpd at every `LoadModule` (every configuration pass, also in `-t`/`-k`). It only
/// registers hooks; nothing here may start threads or processes.
unsafe extern "C" fn register_hooks(_p: *mut ffi::apr_pool_t) {
    super::guard("register_hooks", (), || {
        super::log::init();
        install_panic_hook();
        // SAFETY: the ap_hook_* registration functions are called from register_hooks, as
        // httpd requires; the predecessor list is a static NULL-terminated array.
        unsafe {
            // Before the config is read: nothing to do but make sure logging works.
            ffi::ap_hook_pre_config(
                Some(pre_config),
                ptr::null(),
                ptr::null(),
                ffi::APR_HOOK_MIDDLE as c_int,
            );
            // After the whole config is read and merged, in every process including `-t`/`-k`:
            // cross-field validation (config.php), refusing startup on errors.
            ffi::ap_hook_check_config(
                Some(check_config),
                ptr::null(),
                ptr::null(),
                ffi::APR_HOOK_MIDDLE as c_int,
            );
            // In the parent, twice at startup and once per restart: fork/keep/replace the push
            // daemon and (re-)register its watcher; the first startup pass is skipped.
            ffi::ap_hook_post_config(
                Some(post_config),
                ptr::null(),
                ptr::null(),
                ffi::APR_HOOK_MIDDLE as c_int,
            );
            // In the parent about every 10 s: delayed respawn of a daemon that keeps crashing.
            ffi::ap_hook_monitor(
                Some(monitor),
                ptr::null(),
                ptr::null(),
                ffi::APR_HOOK_MIDDLE as c_int,
            );
            // Per request, right after the request head was read and before mod_remoteip:
            // strip the push daemon's client-IP vouching header from every request and apply
            // a valid one (`vouch`).
            ffi::ap_hook_post_read_request(
                Some(post_read_request),
                ptr::null(),
                BEFORE_REMOTEIP.0.as_ptr(),
                ffi::APR_HOOK_FIRST as c_int,
            );
            // Per request, after mod_rewrite's server-level rules (as mod_proxy): claim
            // `<base>/…` so Nextcloud's .htaccess catch-all never turns it into index.php.
            ffi::ap_hook_translate_name(
                Some(translate_name),
                AFTER_REWRITE.0.as_ptr(),
                ptr::null(),
                ffi::APR_HOOK_FIRST as c_int,
            );
            // Per request: no directory walk / .htaccess for claimed URIs (<Location> and
            // Require still apply: the location walk runs afterwards).
            ffi::ap_hook_map_to_storage(
                Some(map_to_storage),
                ptr::null(),
                ptr::null(),
                ffi::APR_HOOK_FIRST as c_int,
            );
            // Per request: the upgrade + handoff, the /test endpoints, 404 for the rest.
            ffi::ap_hook_handler(
                Some(handler_hook),
                ptr::null(),
                ptr::null(),
                ffi::APR_HOOK_FIRST as c_int,
            );
            // Child, when it is told to stop: an ungraceful stop wakes the TLS bridges, whose
            // connections the MPM has just closed (`bridge`).
            ffi::ap_hook_child_stopping(
                Some(child_stopping),
                ptr::null(),
                ptr::null(),
                ffi::APR_HOOK_MIDDLE as c_int,
            );
            // Parent, whenever the MPM started a child (so after it installed its signal
            // handlers): wrap the stop handlers so `apachectl stop`/`graceful-stop` notify the
            // push daemon before the children stop (`stop_notice`).
            ffi::ap_hook_child_status(
                Some(child_status),
                ptr::null(),
                ptr::null(),
                ffi::APR_HOOK_MIDDLE as c_int,
            );
            // Child, after fork: drop the inherited copy of the stop-notice channel.
            ffi::ap_hook_child_init(
                Some(child_init),
                ptr::null(),
                ptr::null(),
                ffi::APR_HOOK_MIDDLE as c_int,
            );
            // mod_ssl's optional hooks (every push vhost's SSL_CTX, every new SSL) and the
            // output filter below mod_ssl: the TLS session handoff (`tls`).
            super::tls::register();
            // mod_status's optional hook: the push section of server-status (`status`).
            super::status::register();
        }
    });
}

struct HookList([*const c_char; 2]);
// SAFETY: immutable pointers to static strings.
unsafe impl Sync for HookList {}
static AFTER_REWRITE: HookList = HookList([c"mod_rewrite.c".as_ptr(), ptr::null()]);
static BEFORE_REMOTEIP: HookList = HookList([c"mod_remoteip.c".as_ptr(), ptr::null()]);

fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at =
            info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        ::log::error!(target: "nextcloud_push::apache", "NCP0003: panic{at}: {msg}");
    }));
}

unsafe extern "C" fn pre_config(
    _pconf: *mut ffi::apr_pool_t,
    _plog: *mut ffi::apr_pool_t,
    _ptemp: *mut ffi::apr_pool_t,
) -> c_int {
    trampoline_status("pre_config", ffi::OK as c_int, || {
        super::log::init();
        ffi::OK as c_int
    })
}

unsafe extern "C" fn check_config(
    pconf: *mut ffi::apr_pool_t,
    _plog: *mut ffi::apr_pool_t,
    _ptemp: *mut ffi::apr_pool_t,
    s: *mut ffi::server_rec,
) -> c_int {
    trampoline_status("check_config", ffi::HTTP_INTERNAL_SERVER_ERROR as c_int, || {
        // SAFETY: httpd passes the live configuration pool and main server.
        unsafe { lifecycle::check_config(pconf, s) }
    })
}

unsafe extern "C" fn post_config(
    pconf: *mut ffi::apr_pool_t,
    _plog: *mut ffi::apr_pool_t,
    _ptemp: *mut ffi::apr_pool_t,
    s: *mut ffi::server_rec,
) -> c_int {
    trampoline_status("post_config", ffi::HTTP_INTERNAL_SERVER_ERROR as c_int, || {
        // SAFETY: httpd passes the live configuration pool and main server.
        unsafe { lifecycle::post_config(pconf, s) }
    })
}

unsafe extern "C" fn monitor(p: *mut ffi::apr_pool_t, _s: *mut ffi::server_rec) -> c_int {
    trampoline_status("monitor", ffi::DECLINED, || {
        // SAFETY: httpd passes pconf.
        unsafe { lifecycle::monitor(p) };
        ffi::DECLINED
    })
}

unsafe extern "C" fn post_read_request(r: *mut ffi::request_rec) -> c_int {
    trampoline_status("post_read_request", ffi::DECLINED, || {
        // SAFETY: httpd passes a live request.
        unsafe { super::vouch::post_read_request(r) }
    })
}

unsafe extern "C" fn translate_name(r: *mut ffi::request_rec) -> c_int {
    trampoline_status("translate_name", ffi::DECLINED, || {
        // SAFETY: httpd passes a live request.
        unsafe { handler::translate_name(r) }
    })
}

unsafe extern "C" fn map_to_storage(r: *mut ffi::request_rec) -> c_int {
    trampoline_status("map_to_storage", ffi::DECLINED, || {
        // SAFETY: httpd passes a live request.
        unsafe { handler::map_to_storage(r) }
    })
}

unsafe extern "C" fn child_stopping(_pchild: *mut ffi::apr_pool_t, graceful: c_int) {
    super::guard("child_stopping", (), || super::bridge::child_stopping(graceful != 0));
}

unsafe extern "C" fn child_status(
    s: *mut ffi::server_rec,
    _pid: libc::pid_t,
    _gen: ffi::ap_generation_t,
    _slot: c_int,
    state: ffi::mpm_child_status,
) {
    super::guard("child_status", (), || {
        if state != ffi::MPM_CHILD_STARTED {
            return;
        }
        // SAFETY: httpd passes its live main server, whose process record holds pconf.
        unsafe {
            if s.is_null() || (*s).process.is_null() {
                return;
            }
            lifecycle::wrap_stop_signals((*(*s).process).pconf);
        }
    });
}

unsafe extern "C" fn child_init(_pchild: *mut ffi::apr_pool_t, _s: *mut ffi::server_rec) {
    super::guard("child_init", (), super::stop_notice::forget_in_child);
}

unsafe extern "C" fn handler_hook(r: *mut ffi::request_rec) -> c_int {
    trampoline_status("handler", ffi::HTTP_INTERNAL_SERVER_ERROR as c_int, || {
        // SAFETY: httpd passes a live request.
        unsafe { handler::handle(r) }
    })
}

/// Runs a hook body; a panic becomes `on_panic` (and a log line).
pub(super) fn trampoline_status(
    what: &str,
    on_panic: c_int,
    body: impl FnOnce() -> c_int,
) -> c_int {
    super::guard(what, on_panic, body)
}

/// Runs a config-creation body; a panic becomes NULL, which makes httpd fail loudly.
pub(super) fn trampoline_ptr(what: &str, body: impl FnOnce() -> *mut c_void) -> *mut c_void {
    super::guard(what, ptr::null_mut(), body)
}

/// Runs a directive body: `Err(msg)` and panics become an error string that httpd prints with
/// file and line before refusing to start.
pub(super) fn trampoline_directive(
    cmd: *mut ffi::cmd_parms,
    body: impl FnOnce() -> Result<(), DirectiveError>,
) -> *const c_char {
    let result = super::guard("directive", Err(None), || body().map_err(Some));
    match result {
        Ok(()) => ptr::null(),
        // SAFETY: cmd->pool is the live configuration pool (cmd is non-null for directives).
        Err(e) if !cmd.is_null() => unsafe {
            let msg = e.map_or_else(
                || "internal error (panic), see the error log".to_owned(),
                |e| e.to_string(),
            );
            pool::pstr((*cmd).pool, &msg)
        },
        Err(_) => c"mod_nextcloud_push: invalid directive".as_ptr(),
    }
}
