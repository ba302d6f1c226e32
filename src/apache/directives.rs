//! The `NextcloudPush*` directive table (what `apache2 -L` prints) and its two callbacks.
//!
//! Every directive is `RSRC_CONF` (main server or `<VirtualHost>`), validated in its handler;
//! an error string names the directive, and httpd prints it with file and line and refuses to
//! start. Cross-field checks (config.php + overrides) happen in `check_config`.

use super::{ffi, module, pool, server_config};
use crate::config::Directive;
use crate::error::DirectiveError;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;

/// The table httpd reads when the module is added, before `register_hooks`: it must be a
/// static. `command_rec` holds raw pointers, hence the `Sync` wrapper.
#[repr(transparent)]
pub struct Commands(pub [ffi::command_rec; 16]);

// SAFETY: the table is immutable and only holds pointers to static strings and functions.
unsafe impl Sync for Commands {}

const fn entry(d: Directive, name: &'static CStr, help: &'static CStr) -> ffi::command_rec {
    let flag = d.is_flag();
    ffi::command_rec {
        name: name.as_ptr(),
        func: if flag {
            ffi::cmd_func { flag: Some(set_flag) }
        } else {
            ffi::cmd_func { take1: Some(set_take1) }
        },
        cmd_data: d as usize as *mut c_void,
        req_override: ffi::RSRC_CONF as c_int,
        args_how: if flag {
            ffi::FLAG
        } else if matches!(d, Directive::Redis) {
            // Several URLs: the seeds of a Redis Cluster (httpd calls `set_take1` for each).
            ffi::ITERATE
        } else {
            ffi::TAKE1
        },
        errmsg: help.as_ptr(),
    }
}

/// Sorted by name; the help line is what `apache2 -L` shows.
pub static COMMANDS: Commands = Commands([
    entry(
        Directive::AllowSelfSigned,
        c"NextcloudPushAllowSelfSigned",
        c"On to accept a self-signed certificate from Nextcloud when checking logins (default Off)",
    ),
    entry(
        Directive::Config,
        c"NextcloudPushConfig",
        c"Path of Nextcloud's config.php (with its *.config.php files); enables push for this server",
    ),
    entry(
        Directive::Database,
        c"NextcloudPushDatabase",
        c"Database URL (mysql://, postgres://, sqlite://) overriding config.php's db* keys",
    ),
    entry(
        Directive::Debounce,
        c"NextcloudPushDebounce",
        c"Off to send every notification at once instead of batching (default On)",
    ),
    entry(
        Directive::Loopback,
        c"NextcloudPushLoopback",
        c"Off to call Nextcloud at its URL instead of through this vhost over loopback with a vouched client IP (default On)",
    ),
    entry(
        Directive::MaxBridged,
        c"NextcloudPushMaxBridged",
        c"Server-wide: at most this many wss sessions bridged by Apache workers at once; more get 503 (default: a quarter of MaxRequestWorkers)",
    ),
    entry(
        Directive::MaxConnectionTime,
        c"NextcloudPushMaxConnectionTime",
        c"Close WebSockets older than this many seconds; 0 = never (default 0)",
    ),
    entry(
        Directive::MaxDebounceTime,
        c"NextcloudPushMaxDebounceTime",
        c"Upper bound in seconds of the notification debounce interval (default 15)",
    ),
    entry(
        Directive::Metrics,
        c"NextcloudPushMetrics",
        c"On to serve Prometheus metrics at <path>/metrics (protect it with Require; default Off)",
    ),
    entry(
        Directive::NextcloudUrl,
        c"NextcloudPushNextcloudUrl",
        c"Nextcloud base URL used to check logins, overriding overwrite.cli.url",
    ),
    entry(
        Directive::Path,
        c"NextcloudPushPath",
        c"URL path prefix of the push endpoint, e.g. /push (WebSocket at <path>/ws)",
    ),
    entry(
        Directive::Redis,
        c"NextcloudPushRedis",
        c"Redis URL (redis://host:port/db, rediss://, unix:///path), or several: Redis Cluster seeds; overrides config.php",
    ),
    entry(
        Directive::Socket,
        c"NextcloudPushSocket",
        c"Server-wide: the push daemon's Unix socket, relative to DefaultRuntimeDir (default nextcloud-push.sock)",
    ),
    entry(
        Directive::TablePrefix,
        c"NextcloudPushTablePrefix",
        c"Nextcloud database table prefix, overriding config.php's dbtableprefix (default oc_)",
    ),
    entry(
        Directive::TlsHandoff,
        c"NextcloudPushTlsHandoff",
        c"Off to keep wss sessions' TLS in Apache (a worker relays each); On moves the TLS session to the push daemon (default On)",
    ),
    ffi::command_rec {
        name: ptr::null(),
        func: ffi::cmd_func { take1: None },
        cmd_data: ptr::null_mut(),
        req_override: 0,
        args_how: 0,
        errmsg: ptr::null(),
    },
]);

/// TAKE1 directives.
unsafe extern "C" fn set_take1(
    cmd: *mut ffi::cmd_parms,
    _mconfig: *mut c_void,
    arg: *const c_char,
) -> *const c_char {
    module::trampoline_directive(cmd, || {
        // SAFETY: httpd passes a live cmd_parms and a NUL-terminated argument.
        let arg = unsafe { pool::cstr(arg) }.ok_or(DirectiveError::NotUtf8)?;
        let d = directive(cmd)?;
        // SAFETY: as above.
        unsafe { context_check(cmd, d)? };
        let invalid = |reason: String| DirectiveError::Value { directive: d, reason };
        let value = if d == Directive::Config {
            // SAFETY: cmd->pool is the live configuration pool.
            let resolved =
                unsafe { ffi::ap_server_root_relative((*cmd).pool, pool::pstr((*cmd).pool, arg)) };
            // SAFETY: NULL or a pool string.
            let resolved = unsafe { pool::cstr(resolved) }
                .ok_or_else(|| invalid(format!("invalid path \"{arg}\"")))?
                .to_owned();
            match std::fs::metadata(&resolved) {
                Ok(m) if m.is_file() => resolved,
                Ok(_) => return Err(invalid(format!("{resolved} is not a file"))),
                Err(e) => return Err(invalid(format!("{resolved}: {e}"))),
            }
        } else {
            arg.to_owned()
        };
        // SAFETY: cmd->server is the server being configured.
        let conf = unsafe { server_config::get((*cmd).server) }.ok_or(DirectiveError::NoConfig)?;
        conf.directives.set(d, &value)
    })
}

/// FLAG directives (`On|Off`; httpd rejects anything else with its own message).
unsafe extern "C" fn set_flag(
    cmd: *mut ffi::cmd_parms,
    _mconfig: *mut c_void,
    on: c_int,
) -> *const c_char {
    module::trampoline_directive(cmd, || {
        let d = directive(cmd)?;
        // SAFETY: httpd passes a live cmd_parms.
        unsafe { context_check(cmd, d)? };
        // SAFETY: cmd->server is the server being configured.
        let conf = unsafe { server_config::get((*cmd).server) }.ok_or(DirectiveError::NoConfig)?;
        conf.directives.set_flag(d, on != 0)
    })
}

fn directive(cmd: *mut ffi::cmd_parms) -> Result<Directive, DirectiveError> {
    // SAFETY: httpd passes a live cmd_parms whose `info` is the entry's cmd_data.
    let id = unsafe { (*cmd).info } as usize;
    Directive::from_id(id).ok_or(DirectiveError::UnknownId(id))
}

/// Server-wide directives are refused inside `<VirtualHost>` (and any section).
///
/// # Safety
/// `cmd` must be live.
unsafe fn context_check(cmd: *mut ffi::cmd_parms, d: Directive) -> Result<(), DirectiveError> {
    if !d.is_server_wide() {
        return Ok(());
    }
    // SAFETY: per contract; the result is NULL or a static/pool string.
    let err = unsafe { ffi::ap_check_cmd_context(cmd, ffi::GLOBAL_ONLY) };
    // SAFETY: NULL or a NUL-terminated static/pool string.
    match unsafe { pool::cstr(err) } {
        None if err.is_null() => Ok(()),
        Some(e) => Err(DirectiveError::Context(e.to_owned())),
        None => Err(DirectiveError::Context(format!("{} is server-wide", d.name()))),
    }
}
