//! Stop notices from the Apache parent to the push daemon: the parent's side of
//! `crate::wire::notice`.
//!
//! Why: `apachectl stop` (SIGTERM to the parent) or `restart` (SIGHUP) makes the MPM end every busy worker's
//! connection (event/worker `close_worker_sockets`, prefork `ap_unixd_killpg`) before any
//! module code runs in the children, and the parent runs no hook between receiving the signal
//! and signalling the children. A bridged (TLS) session lives in such a worker, so without a
//! notice its client would see the TLS connection end without a Close frame. Graceful-stop
//! (SIGWINCH) has the opposite problem: the event/worker children never hear of it while a
//! bridge holds them, so the daemon must end the sessions itself.
//!
//! How: the parent's own handlers for SIGTERM, SIGINT, SIGWINCH and SIGHUP (httpd's `sig_term`
//! and `sig_restart` from `ap_unixd_mpm_set_signals`, which only set flags) are wrapped. The
//! wrapper runs httpd's handler first, then, in the parent only, writes one byte to a
//! socketpair whose other end the daemon reads: `T` for stop, `W` for
//! graceful-stop, `R` for a hard restart. After `T` it waits in poll(2), at most
//! [`notice::PARENT_WAIT`], until the daemon answers or closes its end: by then every session has its
//! Close 1001, bridged ones through the bridges that still run in the children. After `R` it
//! waits the same way while the daemon closes only the bridged sessions (the daemon and the
//! plain sessions stay). Only then does the MPM's main loop see the flag and stop the children.
//! `W` does not wait: the children stay until their connections end anyway. Graceful restarts
//! (SIGUSR1) are not wrapped: they keep every session.
//!
//! Async-signal-safety: the wrapper uses only atomics, `getpid`, `send`, `poll`, `recv` and
//! `clock_gettime`, and keeps `errno`.
//!
//! The wrapper lives in this DSO, which httpd unloads when it clears pconf (every restart and
//! at exit), so it must never stay installed then: a pconf cleanup, registered after mod_so's
//! unload cleanup and so run before it, puts httpd's handlers back. `ap_unixd_mpm_set_signals`
//! reinstalls httpd's handlers at the start of every generation anyway; the wrapper goes back
//! on when the generation starts its first child (`child_status`), and `monitor` checks again.

use super::ffi;
use crate::wire::notice;
use std::ffi::{c_int, c_void};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};

/// How long the parent's signal handler waits for the daemon's answer, in milliseconds.
const WAIT_MS: i64 = notice::PARENT_WAIT.as_millis() as i64;

const SIGNALS: [c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGWINCH, libc::SIGHUP];
/// httpd's handlers (`sa_handler` values), same index as [`SIGNALS`]; 0 = not wrapped.
static SAVED: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];
/// The parent's end of the current daemon's notice channel, -1 = none.
static CHANNEL: AtomicI32 = AtomicI32::new(-1);
/// The Apache parent's pid (the wrapper is inherited by children until they set their own).
static PARENT: AtomicI32 = AtomicI32::new(0);
/// One notice per daemon and generation: a second SIGTERM must not wait again.
static SENT: AtomicBool = AtomicBool::new(false);
/// The restoring cleanup is registered on pconf (reset when it runs).
static CLEANUP: AtomicBool = AtomicBool::new(false);

/// The parent's end of the channel of the daemon it just started or kept (-1: none).
pub fn set_channel(fd: RawFd) {
    SENT.store(false, Ordering::SeqCst);
    CHANNEL.store(fd, Ordering::SeqCst);
}

/// `post_config`: this process is the Apache parent.
pub fn set_parent() {
    // SAFETY: getpid has no preconditions.
    PARENT.store(unsafe { libc::getpid() }, Ordering::SeqCst);
}

/// `child_init`: an Apache child has no business with the channel. In `-X` the parent runs
/// `child_init` itself and keeps it.
pub fn forget_in_child() {
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } == PARENT.load(Ordering::SeqCst) {
        return;
    }
    let fd = CHANNEL.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: the child's inherited copy of the parent's end; nothing else in the child
        // uses it.
        unsafe { libc::close(fd) };
    }
}

/// Wraps httpd's stop handlers (idempotent). Parent only, after `ap_unixd_mpm_set_signals`.
///
/// # Safety
/// `pconf` is the live configuration pool of the parent.
pub unsafe fn install(pconf: *mut ffi::apr_pool_t) -> bool {
    // SAFETY: getpid has no preconditions.
    PARENT.store(unsafe { libc::getpid() }, Ordering::SeqCst);
    let mut wrapped = false;
    for (i, &sig) in SIGNALS.iter().enumerate() {
        // SAFETY: sigaction with valid pointers; all-zero is a valid `struct sigaction`.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            let ours = on_signal as extern "C" fn(c_int) as usize;
            if old.sa_sigaction == ours
                || old.sa_sigaction == libc::SIG_DFL
                || old.sa_sigaction == libc::SIG_IGN
                || old.sa_flags & libc::SA_SIGINFO != 0
            {
                continue;
            }
            // Saved before ours goes in, so the wrapper never sees 0.
            SAVED[i].store(old.sa_sigaction, Ordering::SeqCst);
            let mut new = old;
            new.sa_sigaction = ours;
            // One wrapped signal at a time: a stop during a restart's wait waits after it.
            for &other in SIGNALS.iter() {
                libc::sigaddset(&mut new.sa_mask, other);
            }
            if libc::sigaction(sig, &new, std::ptr::null_mut()) == 0 {
                wrapped = true;
            }
        }
    }
    if wrapped && !CLEANUP.swap(true, Ordering::SeqCst) {
        // SAFETY: live pconf; the callback lives in this DSO, whose unload cleanup mod_so
        // registered earlier (while reading LoadModule), so this one runs first.
        unsafe {
            ffi::apr_pool_cleanup_register(
                pconf,
                std::ptr::null(),
                Some(restore),
                Some(ffi::apr_pool_cleanup_null),
            );
        }
    }
    wrapped
}

/// pconf cleanup: httpd's handlers back in place before this DSO is unloaded.
unsafe extern "C" fn restore(_data: *mut c_void) -> ffi::apr_status_t {
    let ours = on_signal as extern "C" fn(c_int) as usize;
    for (i, &sig) in SIGNALS.iter().enumerate() {
        // SAFETY: sigaction with valid pointers; SAVED holds httpd's own handler (a function
        // of the httpd binary, which stays mapped).
        unsafe {
            let mut cur: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut cur) == 0 && cur.sa_sigaction == ours {
                cur.sa_sigaction = SAVED[i].load(Ordering::SeqCst);
                libc::sigaction(sig, &cur, std::ptr::null_mut());
            }
        }
    }
    CLEANUP.store(false, Ordering::SeqCst);
    0
}

/// The wrapper (see the module docs). Nothing here may allocate, lock or panic.
extern "C" fn on_signal(sig: c_int) {
    // SAFETY: errno is thread-local; saved and restored around the handler's system calls.
    let errno = unsafe { *libc::__errno_location() };
    let index = SIGNALS.iter().position(|&s| s == sig);
    if let Some(saved) = index.map(|i| SAVED[i].load(Ordering::SeqCst)) {
        if saved != 0 {
            // SAFETY: `saved` is the plain (non-SA_SIGINFO) handler httpd installed for this
            // signal, checked in `install`.
            let handler: extern "C" fn(c_int) = unsafe { std::mem::transmute(saved) };
            handler(sig);
        }
    }
    // SAFETY: getpid is async-signal-safe.
    if unsafe { libc::getpid() } == PARENT.load(Ordering::SeqCst) {
        notify(sig);
    }
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

fn notify(sig: c_int) {
    let fd = CHANNEL.load(Ordering::SeqCst);
    if fd < 0 || SENT.load(Ordering::SeqCst) {
        return;
    }
    let (byte, wait) = match sig {
        libc::SIGWINCH => (notice::GRACEFUL_STOP, false),
        libc::SIGHUP => (notice::HARD_RESTART, true),
        _ => (notice::STOP, true),
    };
    // Once per daemon and generation (set_channel clears it): prefork's parent signals its
    // own process group with SIGHUP during a hard restart and would notify twice.
    SENT.store(true, Ordering::SeqCst);
    let mut sink = [0u8; 8];
    // SAFETY: send/poll/recv on our own descriptor with valid buffers (async-signal-safe).
    unsafe {
        // A late answer to an earlier notice must not end this wait at once.
        while libc::recv(fd, sink.as_mut_ptr() as *mut c_void, sink.len(), libc::MSG_DONTWAIT) > 0 {
        }
        let sent = libc::send(
            fd,
            &byte as *const u8 as *const c_void,
            1,
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        );
        if sent != 1 || !wait {
            return;
        }
        let deadline = now_ms() + WAIT_MS;
        loop {
            let left = deadline - now_ms();
            if left <= 0 {
                break;
            }
            let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
            let rc = libc::poll(&mut pfd, 1, left as c_int);
            if rc < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            break;
        }
        libc::recv(fd, sink.as_mut_ptr() as *mut c_void, sink.len(), libc::MSG_DONTWAIT);
    }
}

fn now_ms() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime is async-signal-safe; valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}
