//! The `log` backend.
//!
//! In Apache processes (parent, `-t`, children) records go to `ap_log_error_` with our module
//! index, so `LogLevel nextcloud_push:debug` works and lines look like every other module's.
//! In the push daemon (a forked Apache parent that must not call into httpd's logging, whose
//! state belongs to the parent) records are written to stderr, which is the main `ErrorLog`,
//! in Apache's format: `[<time with usec>] [nextcloud_push:<level>] [pid N] <message>`,
//! filtered by the module's effective LogLevel for the main server, captured in post_config.
//! Records an engine emits (`nextcloud_push_engine::log_scope` names its instance) follow that
//! instance's vhost instead: its LogLevel for the module, and its own `ErrorLog` if it has one
//! ([`InstanceLog`]). `occ notify_push:log` overrides every level until `--restore`. After a
//! graceful restart the parent sends the daemon the new generation's log descriptors
//! ([`replace_descriptor`]), so rotated logs are followed.
//!
//! `log::set_logger` works once per loaded image; the DSO is reloaded on restarts, and when it
//! is not really unloaded the logger simply stays installed, so [`init`] ignores the error.

use super::ffi;
use super::module;
use nextcloud_push_engine::log_scope;
use std::ffi::{c_char, c_int, CString};
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::RwLock;

static LOGGER: Logger = Logger;
/// True in the push daemon: write to stderr instead of calling httpd.
static DAEMON: AtomicBool = AtomicBool::new(false);
/// True in the push daemon when the main server logs to syslog (`ErrorLog syslog[:facility]`):
/// stderr goes nowhere then, so the daemon's lines go to syslog(3), whose connection and
/// facility the Apache parent opened (`openlog`) before it forked the daemon.
static SYSLOG: AtomicBool = AtomicBool::new(false);
/// The daemon's level for records of no instance (the main server's), as `LevelFilter as usize`.
static MAIN_LEVEL: AtomicUsize = AtomicUsize::new(::log::LevelFilter::Info as usize);
/// Per engine index: the level and destination of its records in the daemon.
static INSTANCES: RwLock<Vec<InstanceLog>> = RwLock::new(Vec::new());

/// Where an instance's records go in the daemon, and from which level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceLog {
    /// The module's effective LogLevel on the instance's vhost.
    pub level: ::log::LevelFilter,
    pub sink: Sink,
}

/// A daemon log destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    /// The main `ErrorLog` (stderr, or syslog when the main server logs there).
    Main,
    /// A vhost's own `ErrorLog` file or piped logger (a descriptor the daemon keeps open).
    Fd(RawFd),
    /// A vhost's own `ErrorLog syslog:…`.
    Syslog,
}

struct Logger;

/// Installs the backend (idempotent). Apache processes let `ap_log_error_` filter by level.
pub fn init() {
    let _ = ::log::set_logger(&LOGGER);
    if !DAEMON.load(Ordering::Relaxed) {
        ::log::set_max_level(::log::LevelFilter::Trace);
    }
}

/// Switches this process to daemon mode: stderr lines (or syslog, see [`SYSLOG`]), filtered at
/// `level`, and each engine's records as `instances` (by engine index) say.
pub fn enter_daemon_mode(level: ::log::LevelFilter, syslog: bool, instances: &[InstanceLog]) {
    DAEMON.store(true, Ordering::Relaxed);
    SYSLOG.store(syslog, Ordering::Relaxed);
    MAIN_LEVEL.store(level as usize, Ordering::Relaxed);
    if let Ok(mut table) = INSTANCES.write() {
        *table = instances.to_vec();
    }
    let _ = ::log::set_logger(&LOGGER);
    ::log::set_max_level(instances.iter().map(|i| i.level).fold(level, std::cmp::max));
}

/// The daemon's copy of a log descriptor is replaced by `new` (sent by the parent after a
/// graceful restart, when Apache reopened its logs): slot 0 is stderr (the main `ErrorLog`),
/// slot `i + 1` instance `i`'s own `ErrorLog`. The old descriptor number is kept (`dup2` swaps
/// the file under it atomically), so a line being written meanwhile goes to one file or the
/// other, never to a closed or reused descriptor. An unknown slot is ignored.
pub fn replace_descriptor(slot: u16, new: OwnedFd) {
    let target = match slot {
        0 => Some(libc::STDERR_FILENO),
        n => INSTANCES.read().ok().and_then(|t| match t.get(usize::from(n) - 1)?.sink {
            Sink::Fd(fd) => Some(fd),
            _ => None,
        }),
    };
    if let Some(target) = target {
        // SAFETY: dup2 onto a descriptor this process owns for logging; `new` stays ours and
        // is closed when dropped.
        unsafe { libc::dup2(new.as_raw_fd(), target) };
    }
}

/// The level and sink of a record in the daemon: its instance's, else the main server's;
/// `occ notify_push:log` overrides the level.
fn daemon_route() -> (::log::LevelFilter, Sink) {
    let instance =
        log_scope::instance().and_then(|i| INSTANCES.read().ok().and_then(|t| t.get(i).copied()));
    let (level, sink) = match instance {
        Some(i) => (i.level, i.sink),
        None => (level_from(MAIN_LEVEL.load(Ordering::Relaxed)), Sink::Main),
    };
    (log_scope::level_override().unwrap_or(level), sink)
}

fn level_from(n: usize) -> ::log::LevelFilter {
    [
        ::log::LevelFilter::Off,
        ::log::LevelFilter::Error,
        ::log::LevelFilter::Warn,
        ::log::LevelFilter::Info,
        ::log::LevelFilter::Debug,
        ::log::LevelFilter::Trace,
    ]
    .get(n)
    .copied()
    .unwrap_or(::log::LevelFilter::Info)
}

/// Other crates (hyper, reqwest, redis, tungstenite) are chatty: below `trace1` only their
/// warnings and errors get through, and of redis-rs only errors (its cluster client warns for
/// every node it cannot reach during a failover; NCP1001 reports the outage once).
fn passes(metadata: &::log::Metadata<'_>, max: ::log::LevelFilter) -> bool {
    let target = metadata.target();
    let ours = target.starts_with("nextcloud_push") || target.starts_with("mod_nextcloud_push");
    let max = if ours || max == ::log::LevelFilter::Trace {
        max
    } else if target.starts_with("redis") {
        max.min(::log::LevelFilter::Error)
    } else {
        max.min(::log::LevelFilter::Warn)
    };
    metadata.level() <= max
}

impl ::log::Log for Logger {
    fn enabled(&self, metadata: &::log::Metadata<'_>) -> bool {
        passes(metadata, ::log::max_level())
    }

    fn log(&self, record: &::log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if DAEMON.load(Ordering::Relaxed) {
            let (level, sink) = daemon_route();
            if passes(record.metadata(), level) {
                daemon_line(level_name(record.level()), &record.args().to_string(), sink);
            }
        } else {
            let msg = record.args().to_string();
            let level = match record.level() {
                ::log::Level::Error => ffi::APLOG_ERR,
                ::log::Level::Warn => ffi::APLOG_WARNING,
                ::log::Level::Info => ffi::APLOG_INFO,
                ::log::Level::Debug => ffi::APLOG_DEBUG,
                ::log::Level::Trace => ffi::APLOG_TRACE1,
            };
            // SAFETY: reading a pointer-sized global that httpd sets while single-threaded
            // (ap_read_config) and never frees while modules run.
            let server = unsafe { ffi::ap_server_conf };
            log_server(server, level as c_int, record.file(), record.line(), &msg);
        }
    }

    fn flush(&self) {}
}

fn level_name(level: ::log::Level) -> &'static str {
    match level {
        ::log::Level::Error => "error",
        ::log::Level::Warn => "warn",
        ::log::Level::Info => "info",
        ::log::Level::Debug => "debug",
        ::log::Level::Trace => "trace1",
    }
}

/// Apache severities the `log` crate has no name for.
#[derive(Clone, Copy, Debug)]
pub enum Severity {
    Emerg,
    Crit,
    Error,
    Warn,
    Notice,
    Info,
    Debug,
}

impl Severity {
    fn aplog(self) -> c_int {
        (match self {
            Severity::Emerg => ffi::APLOG_EMERG,
            Severity::Crit => ffi::APLOG_CRIT,
            Severity::Error => ffi::APLOG_ERR,
            Severity::Warn => ffi::APLOG_WARNING,
            Severity::Notice => ffi::APLOG_NOTICE,
            Severity::Info => ffi::APLOG_INFO,
            Severity::Debug => ffi::APLOG_DEBUG,
        }) as c_int
    }

    fn name(self) -> &'static str {
        match self {
            Severity::Emerg => "emerg",
            Severity::Crit => "crit",
            Severity::Error => "error",
            Severity::Warn => "warn",
            Severity::Notice => "notice",
            Severity::Info => "info",
            Severity::Debug => "debug",
        }
    }
}

/// Logs one line for a server (NULL: the main server) at an Apache severity. In the daemon the
/// line goes to stderr unless the daemon's level filters it.
#[track_caller]
pub fn log_at(server: *const ffi::server_rec, sev: Severity, msg: &str) {
    if DAEMON.load(Ordering::Relaxed) {
        let as_log = match sev {
            Severity::Emerg | Severity::Crit | Severity::Error => ::log::Level::Error,
            Severity::Warn | Severity::Notice => ::log::Level::Warn,
            Severity::Info => ::log::Level::Info,
            Severity::Debug => ::log::Level::Debug,
        };
        if as_log <= daemon_route().0 {
            daemon_line(sev.name(), msg, Sink::Main);
        }
        return;
    }
    let server = if server.is_null() {
        // SAFETY: see `Logger::log`.
        unsafe { ffi::ap_server_conf as *const ffi::server_rec }
    } else {
        server
    };
    let caller = std::panic::Location::caller();
    log_server(server, sev.aplog(), Some(caller.file()), Some(caller.line()), msg);
}

fn log_server(
    server: *const ffi::server_rec,
    level: c_int,
    file: Option<&str>,
    line: Option<u32>,
    msg: &str,
) {
    // A NUL inside the message would cut it short; make it visible instead.
    let text = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    let file = CString::new(file.unwrap_or("mod_nextcloud_push")).unwrap_or_default();
    // SAFETY: constant "%s" format with one NUL-terminated argument, so user data is never a
    // format string; `server` is NULL or a live server_rec (ap_log_error_ accepts both).
    unsafe {
        ffi::ap_log_error_(
            file.as_ptr(),
            line.unwrap_or(0) as c_int,
            module::index(),
            level,
            0,
            server,
            c"%s".as_ptr(),
            text.as_ptr(),
        );
    }
}

/// One daemon log line on stderr or a vhost's log descriptor, written with a single `write` so
/// lines from several threads never interleave (a file or a piped logger), or to syslog.
fn daemon_line(level: &str, msg: &str, sink: Sink) {
    if sink == Sink::Syslog || (sink == Sink::Main && SYSLOG.load(Ordering::Relaxed)) {
        let priority = match level {
            "emerg" => libc::LOG_EMERG,
            "crit" => libc::LOG_CRIT,
            "error" => libc::LOG_ERR,
            "warn" => libc::LOG_WARNING,
            "notice" => libc::LOG_NOTICE,
            "info" => libc::LOG_INFO,
            _ => libc::LOG_DEBUG,
        };
        let text =
            CString::new(format!("[nextcloud_push:{level}] [pid {}] {msg}", std::process::id()))
                .unwrap_or_default();
        // SAFETY: constant "%s" format with one NUL-terminated argument; syslog(3) uses the
        // parent's openlog settings and reconnects by itself.
        unsafe { libc::syslog(priority, c"%s".as_ptr(), text.as_ptr()) };
        return;
    }
    let mut buf = [0 as c_char; 64];
    let mut len: c_int = buf.len() as c_int;
    // SAFETY: `buf` is larger than the longest string ap_recent_ctime_ex writes with the USEC
    // option (APR_CTIME_LEN + 7); `len` holds the buffer size and receives the length written.
    let stamp = unsafe {
        ffi::ap_recent_ctime_ex(
            buf.as_mut_ptr(),
            ffi::apr_time_now(),
            ffi::AP_CTIME_OPTION_USEC as c_int,
            &mut len,
        );
        super::pool::cstr(buf.as_ptr()).unwrap_or("").to_owned()
    };
    let line = format!("[{stamp}] [nextcloud_push:{level}] [pid {}] {msg}\n", std::process::id());
    match sink {
        Sink::Fd(fd) => {
            // SAFETY: a descriptor kept open for the daemon's whole life (never closed, only
            // replaced in place by `replace_descriptor`); the File is never dropped.
            let file = std::mem::ManuallyDrop::new(unsafe {
                <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd)
            });
            let _ = (&*file).write_all(line.as_bytes());
        }
        _ => {
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }
}

/// `ErrorLog syslog[:facility]` on this server.
///
/// # Safety
/// `s` must be NULL or a live server_rec.
pub unsafe fn logs_to_syslog(s: *const ffi::server_rec) -> bool {
    // SAFETY: per contract; error_fname is NULL or a pool string.
    unsafe { s.as_ref().and_then(|s| super::pool::cstr(s.error_fname)) }
        .is_some_and(|name| name.starts_with("syslog"))
}

/// Where the daemon sends the records of an instance served by vhost `srv` (see [`Sink`]),
/// and a description of it for the daemon's fingerprint.
///
/// # Safety
/// `srv` and `main` must be live server_recs (`main` the main server).
pub unsafe fn vhost_sink(
    srv: *const ffi::server_rec,
    main: *const ffi::server_rec,
) -> (Sink, String) {
    // SAFETY: per contract; error_fname is NULL or a pool string, error_log NULL or a live file.
    unsafe {
        let name = super::pool::cstr((*srv).error_fname).unwrap_or("");
        if logs_to_syslog(srv) {
            let sink = if logs_to_syslog(main) { Sink::Main } else { Sink::Syslog };
            return (sink, name.to_owned());
        }
        match (error_log_fd(srv), error_log_fd(main)) {
            (Some(fd), main_fd) if Some(fd) != main_fd => (Sink::Fd(fd), name.to_owned()),
            _ => (Sink::Main, "main".to_owned()),
        }
    }
}

/// The descriptor of a server's `ErrorLog` (file or piped logger), if above stderr (httpd
/// makes the main server's the parent's stderr, which vhosts without their own share).
///
/// # Safety
/// `s` must be NULL or a live server_rec.
pub unsafe fn error_log_fd(s: *const ffi::server_rec) -> Option<RawFd> {
    // SAFETY: per contract; apr_os_file_get only copies the descriptor number.
    unsafe {
        if s.is_null() || (*s).error_log.is_null() {
            return None;
        }
        let mut fd: ffi::apr_os_file_t = -1;
        (ffi::apr_os_file_get(&mut fd, (*s).error_log) == 0 && fd > 2).then_some(fd)
    }
}

/// The module's effective LogLevel on a server (`LogLevel nextcloud_push:…`, else the
/// server's level), as a `log` filter.
///
/// # Safety
/// `s` must be a live server_rec.
pub unsafe fn server_level(s: *const ffi::server_rec) -> ::log::LevelFilter {
    let index = module::index();
    // SAFETY: per contract; `module_levels` is NULL or has an entry for every module index.
    let level = unsafe {
        let log = &(*s).log;
        if index >= 0 && !log.module_levels.is_null() && *log.module_levels.add(index as usize) >= 0
        {
            c_int::from(*log.module_levels.add(index as usize))
        } else {
            log.level
        }
    };
    aplog_to_filter(level)
}

fn aplog_to_filter(level: c_int) -> ::log::LevelFilter {
    match level as u32 {
        l if l <= ffi::APLOG_ERR => ::log::LevelFilter::Error,
        l if l <= ffi::APLOG_NOTICE => ::log::LevelFilter::Warn,
        l if l == ffi::APLOG_INFO => ::log::LevelFilter::Info,
        l if l == ffi::APLOG_DEBUG => ::log::LevelFilter::Debug,
        _ => ::log::LevelFilter::Trace,
    }
}
