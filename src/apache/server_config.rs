//! Per-server configuration storage: a [`ServerConfig`] owned by the configuration pool
//! (pconf), created and merged by httpd's `create_server_config` / `merge_server_config`.

use super::{ffi, module, pool};
use crate::config::ServerConfig;
use std::ffi::c_void;

/// `create_server_config`: runs for the main server and every `<VirtualHost>` while the
/// configuration is read (also in `-t` and `-k` processes).
///
/// # Safety
/// Called by httpd only, with its live configuration pool.
pub unsafe extern "C" fn create(p: *mut ffi::apr_pool_t, _s: *mut ffi::server_rec) -> *mut c_void {
    module::trampoline_ptr("create_server_config", || {
        // SAFETY: httpd passes the live configuration pool.
        unsafe { pool::alloc(p, ServerConfig::default()) as *mut c_void }
    })
}

/// `merge_server_config`: vhost values win, the rest comes from the main server.
///
/// # Safety
/// Called by httpd only, with its live configuration pool and two configs from `create`.
pub unsafe extern "C" fn merge(
    p: *mut ffi::apr_pool_t,
    base: *mut c_void,
    add: *mut c_void,
) -> *mut c_void {
    module::trampoline_ptr("merge_server_config", || {
        if base.is_null() || add.is_null() {
            return if add.is_null() { base } else { add };
        }
        // SAFETY: both were returned by `create`/`merge` for this module and live in pconf.
        let merged = unsafe {
            ServerConfig::merge(&*(base as *const ServerConfig), &*(add as *const ServerConfig))
        };
        // SAFETY: httpd passes the live configuration pool.
        unsafe { pool::alloc(p, merged) as *mut c_void }
    })
}

/// The configuration of server `s`, or None if httpd has none for us (module not loaded in
/// this configuration).
///
/// # Safety
/// `s` must be a live server_rec of the current configuration, and the caller must not hold
/// two references to the same server's config at once (httpd runs config callbacks on one
/// thread; request threads only read).
pub unsafe fn get<'a>(s: *const ffi::server_rec) -> Option<&'a mut ServerConfig> {
    if s.is_null() {
        return None;
    }
    // SAFETY: `module_config` is the server's config vector; our slot holds a ServerConfig
    // from `create`/`merge` (or NULL).
    unsafe {
        let p =
            ffi::ap_get_module_config((*s).module_config, module::record()) as *mut ServerConfig;
        p.as_mut()
    }
}

/// Read-only access for request threads (many run at once; the configuration is immutable
/// once the server runs).
///
/// # Safety
/// `s` must be a live server_rec of the current configuration.
pub unsafe fn get_ref<'a>(s: *const ffi::server_rec) -> Option<&'a ServerConfig> {
    if s.is_null() {
        return None;
    }
    // SAFETY: as in `get`; only shared references are created.
    unsafe {
        let p =
            ffi::ap_get_module_config((*s).module_config, module::record()) as *const ServerConfig;
        p.as_ref()
    }
}

/// Iterates the main server and every virtual host.
///
/// # Safety
/// `main` must be the live main server_rec.
pub unsafe fn servers(main: *mut ffi::server_rec) -> impl Iterator<Item = *mut ffi::server_rec> {
    // SAFETY: the `next` chain of live server_recs, NULL-terminated.
    std::iter::successors((!main.is_null()).then_some(main), |s| {
        // SAFETY: `s` is a live server of the chain.
        let next = unsafe { (**s).next };
        (!next.is_null()).then_some(next)
    })
}

/// `server_hostname:port` for log lines.
///
/// # Safety
/// `s` must be a live server_rec.
pub unsafe fn describe(s: *const ffi::server_rec) -> String {
    // SAFETY: per contract.
    unsafe {
        let name = pool::cstr((*s).server_hostname).unwrap_or("(no ServerName)");
        let mut port = (*s).port;
        if port == 0 && !(*s).addrs.is_null() {
            port = (*(*s).addrs).host_port;
        }
        let file = pool::cstr((*s).defn_name);
        let host = if port == 0 { name.to_owned() } else { format!("{name}:{port}") };
        match file {
            Some(f) if (*s).is_virtual != 0 => {
                format!("{host} (VirtualHost at {f}:{})", (*s).defn_line_number)
            }
            _ => host,
        }
    }
}
