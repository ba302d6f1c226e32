//! Forking the push daemon from the Apache parent, and everything the child does before it
//! runs safe code: [`spawn`] ends in `crate::daemon::run`, the one edge between the Apache glue
//! and the daemon.
//!
//! The parent has no threads (httpd forbids them with forked MPMs), so `fork()` is safe and the
//! child may allocate. The child inherits the parent's listeners, scoreboard, pipes, log files,
//! signal handlers and root; in order, it: closes the listeners and every descriptor except
//! 0–2, the readiness pipe, the stop-notice channel (`stop_notice`) and the main error log; points stdin/stdout at /dev/null; resets
//! signal handlers and unblocks signals; raises `RLIMIT_NOFILE`; binds its socket (0700,
//! chowned to `User`); drops privileges; asks for SIGTERM when the parent dies; renames itself
//! `nextcloud-push`; and only then starts tokio.

use super::{ffi, log as aplog};
use crate::daemon::{self, DaemonSetup, EXIT_STARTUP_FAILED};
use crate::error::{SpawnError, StartupError};
use crate::wire::ready::{self, Ready, Report};
use nextcloud_push_engine::EngineConfig;
use std::ffi::c_int;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// The process name shown by `ps` and matched by `pkill nextcloud-push`.
const NAME: &str = "nextcloud-push";
/// How long post_config waits for the daemon to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Exit status after a panic in the daemon.
const EXIT_PANIC: i32 = 70;

/// What the daemon needs from the parent's configuration.
pub struct SpawnSpec<'a> {
    pub pconf: *mut ffi::apr_pool_t,
    pub server: *mut ffi::server_rec,
    pub socket_path: &'a Path,
    pub engines: &'a [EngineConfig],
    /// How each engine reaches Nextcloud: loopback address and vouching key.
    pub routes: &'a [nextcloud_push_engine::NextcloudRoute],
    pub level: ::log::LevelFilter,
    /// Per engine: its vhost's level and log destination.
    pub instance_logs: &'a [aplog::InstanceLog],
    /// This Apache server's name in the daemon's metrics (`plan::server_label`).
    pub server_label: &'a str,
}

/// Forks the daemon and waits (bounded) until it reports ready. Returns its pid and the
/// parent's end of its stop-notice channel (`stop_notice`; nonblocking, close-on-exec).
///
/// # Safety
/// Only in the Apache parent, with no other threads, with live `pconf`/`server`.
pub unsafe fn spawn(spec: &SpawnSpec<'_>) -> Result<(libc::pid_t, OwnedFd), SpawnError> {
    let mut pair: [c_int; 2] = [-1, -1];
    // SAFETY: socketpair fills two fresh descriptors on success.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            pair.as_mut_ptr(),
        )
    } != 0
    {
        return Err(sys_error("socketpair"));
    }
    // SAFETY: both are fresh and owned only here.
    let (notice_parent, notice_daemon) =
        unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
    // SAFETY: fcntl on our own fresh descriptor.
    unsafe {
        let flags = libc::fcntl(notice_parent.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(notice_parent.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let mut fds: [c_int; 2] = [-1, -1];
    // SAFETY: pipe2 fills two fresh descriptors on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(sys_error("pipe"));
    }
    // SAFETY: both are fresh and owned only here.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: getpid/fork have no preconditions; the parent is single-threaded (see above).
    let parent = unsafe { libc::getpid() };
    // SAFETY: as above: no other thread can hold a lock the child would need.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(sys_error("fork"));
    }
    if pid == 0 {
        drop(read_end);
        drop(notice_parent);
        let code = super::guard("push daemon", EXIT_PANIC, || {
            // SAFETY: this is the freshly forked child of a single-threaded parent.
            unsafe { child_main(spec, write_end, notice_daemon, parent) }
        });
        crate::sys::exit_now(code);
    }
    drop(write_end);
    drop(notice_daemon);
    wait_ready(read_end, pid).map(|pid| (pid, notice_parent))
}

fn sys_error(call: &'static str) -> SpawnError {
    SpawnError::Sys { call, source: std::io::Error::last_os_error() }
}

/// Parent side: reads the readiness pipe until "OK", "ERR …", EOF or the timeout.
fn wait_ready(pipe: OwnedFd, pid: libc::pid_t) -> Result<libc::pid_t, SpawnError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut file = std::fs::File::from(pipe);
    let mut got = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            aplog::log_at(
                std::ptr::null(),
                aplog::Severity::Warn,
                &format!("NCP0013: push daemon (pid {pid}) not ready after {READY_TIMEOUT:?}; continuing"),
            );
            return Ok(pid);
        }
        let mut pfd = libc::pollfd { fd: file.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let rc =
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as c_int) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(SpawnError::Wait(err));
        }
        if rc == 0 {
            continue;
        }
        let mut buf = [0u8; 1024];
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if let Report::Ready { fd_limit } = Report::parse(&got) {
                    if let Some(limit) = fd_limit {
                        log_fd_capacity(limit);
                    }
                    return Ok(pid);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(SpawnError::Wait(e)),
        }
    }
    let status = reap(pid, Duration::from_secs(2));
    match Report::parse(&got) {
        Report::Failed(msg) => Err(SpawnError::Startup(msg)),
        _ => Err(SpawnError::DiedDuringStartup(status)),
    }
}

/// Sessions a daemon should be able to hold; below that, the admin is told what to raise.
const WANTED_SESSIONS: u64 = 50_000;

/// The daemon's descriptor limit: one notice line (always logged) when fewer than
/// [`WANTED_SESSIONS`] fit, with what to change.
fn log_fd_capacity(limit: u64) {
    let sessions = ready::session_capacity(limit);
    if sessions < WANTED_SESSIONS {
        aplog::log_at(
            std::ptr::null(),
            aplog::Severity::Notice,
            &format!(
                "NCP0018: the push daemon's RLIMIT_NOFILE is {limit}: at most {sessions} push \
                 sessions (WebSocket handoffs beyond that get 503); raising it to 65536 needs a \
                 higher hard limit for Apache (LimitNOFILE= in apache2.service, ulimit -Hn) or \
                 CAP_SYS_RESOURCE"
            ),
        );
    }
}

/// Waits up to `grace` for `pid` to exit, then kills and reaps it. Describes how it ended.
pub fn reap(pid: libc::pid_t, grace: Duration) -> String {
    let deadline = Instant::now() + grace;
    loop {
        let mut status: c_int = 0;
        // SAFETY: waitpid on our own child with a valid out pointer.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if rc == pid {
            return describe_status(status);
        }
        if rc < 0 {
            return "already reaped".to_owned();
        }
        if Instant::now() >= deadline {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return format!("killed after {grace:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends SIGTERM to `pid` and reaps it within `grace` (then SIGKILL).
pub fn stop(pid: libc::pid_t, grace: Duration) -> String {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    reap(pid, grace)
}

/// Is our child `pid` still running? Reaps it if it has exited.
pub fn alive(pid: libc::pid_t) -> bool {
    if pid <= 0 {
        return false;
    }
    let mut status: c_int = 0;
    // SAFETY: waitpid on our own child, nonblocking.
    unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) == 0 }
}

pub fn describe_status(status: c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exit status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("wait status {status}")
    }
}

/// The daemon, from fork to exit status.
///
/// # Safety
/// Only in the freshly forked child; `spec`'s pointers are the parent's (copied) live ones.
unsafe fn child_main(
    spec: &SpawnSpec<'_>,
    ready: OwnedFd,
    notice: OwnedFd,
    parent: libc::pid_t,
) -> i32 {
    // SAFETY: the parent's live main server (copied into this process).
    let syslog = unsafe { aplog::logs_to_syslog(spec.server) };
    aplog::enter_daemon_mode(spec.level, syslog, spec.instance_logs);

    // 1. Listeners: Apache must be able to rebind its ports after a stop.
    // SAFETY: httpd's own function, closing its listener sockets in this process.
    unsafe { ffi::ap_close_listeners() };

    // 2. Every other inherited descriptor: scoreboard, pod and piped-logger pipes, access
    // logs, vhost error logs. Kept: 0-2 (stderr is the main ErrorLog), the readiness pipe and
    // the stop-notice channel (created here, so they cannot be httpd's) and the main error
    // log's own fd (httpd code such as the privilege drop may log to it; it is the same file
    // as fd 2).
    // SAFETY: reading the parent's live main server.
    let errlog = unsafe { aplog::error_log_fd(spec.server) };
    let mut keep = vec![0, 1, 2, ready.as_raw_fd(), notice.as_raw_fd()];
    keep.extend(errlog);
    // The vhosts' own error logs that engines write to.
    keep.extend(spec.instance_logs.iter().filter_map(|i| match i.sink {
        aplog::Sink::Fd(fd) => Some(fd),
        _ => None,
    }));
    // syslog(3)'s descriptor (the parent's `ErrorLog syslog:…`) is closed below like any
    // other; closelog first, so libc forgets it and reconnects on the daemon's first line
    // instead of writing into whatever later reuses that descriptor number.
    // SAFETY: single-threaded child; closelog only closes libc's own syslog descriptor.
    unsafe { libc::closelog() };
    close_all_except(&mut keep);
    let ready = Ready::new(ready);

    // 3. stdin/stdout → /dev/null.
    null_stdio();

    // 4. Signals: default dispositions, nothing blocked; the ones httpd sends to its process
    // group for restarts (prefork: SIGHUP; graceful: SIGUSR1, SIGWINCH) are ignored, SIGPIPE
    // too. SIGTERM/SIGINT are handled by the daemon (tokio) and mean "stop".
    reset_signals();

    // 5. RLIMIT_NOFILE to the hard limit, raising the hard limit first while still root.
    raise_nofile_limit();

    // 6. The socket, bound as root with umask 077 (mode 0700), then chowned to `User`.
    // SAFETY: a plain read of httpd's unixd configuration.
    let (uid, gid) = unsafe { (ffi::ap_unixd_config.user_id, ffi::ap_unixd_config.group_id) };
    let listener = match bind_socket(spec.socket_path, uid, gid) {
        Ok(l) => l,
        Err(source) => {
            let e = StartupError::Bind { path: spec.socket_path.display().to_string(), source };
            ::log::error!(target: "nextcloud_push::daemon", "NCP0014: {e}");
            ready.fail(&e.to_string());
            return EXIT_STARTUP_FAILED;
        }
    };

    // 7. Drop privileges exactly like the children do (mod_unixd: setgid, initgroups,
    // chroot, setuid to `User`).
    // SAFETY: httpd's hook runner with the parent's live pool and server.
    if unsafe { ffi::ap_run_drop_privileges(spec.pconf, spec.server) } != ffi::OK as c_int {
        let e = StartupError::DropPrivileges;
        ::log::error!(target: "nextcloud_push::daemon", "NCP0015: {e}");
        ready.fail(&e.to_string());
        return EXIT_STARTUP_FAILED;
    }

    // 8. SIGTERM when the parent dies (set after the uid change, which clears it), and a
    // check for a parent that died before that.
    // SAFETY: prctl/getppid with valid arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0);
        if libc::getppid() != parent {
            return 0;
        }
    }

    // 9. The name `ps`, `top` and `pkill` see.
    set_process_name();

    // 10. Safe code from here on.
    daemon::run(DaemonSetup {
        listener,
        socket_path: spec.socket_path.to_path_buf(),
        engines: spec.engines.to_vec(),
        routes: spec.routes.to_vec(),
        server_label: spec.server_label.to_owned(),
        ready,
        stop_notice: Some(notice),
        reopen_log: aplog::replace_descriptor,
    })
}

fn close_all_except(keep: &mut Vec<RawFd>) {
    keep.sort_unstable();
    keep.dedup();
    let mut lo: u32 = 0;
    for &k in keep.iter() {
        if k as u32 > lo {
            close_range(lo, k as u32 - 1);
        }
        lo = k as u32 + 1;
    }
    close_range(lo, u32::MAX);
}

fn close_range(lo: u32, hi: u32) {
    // SAFETY: closes descriptors this process inherited and no Rust object owns (nothing has
    // been opened since fork except the kept ones).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0u32) };
    if rc == 0 {
        return;
    }
    // Kernels before 5.9: close what /proc lists.
    let open: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect(),
        Err(_) => (lo as RawFd..lo.saturating_add(65536).min(hi) as RawFd).collect(),
    };
    for fd in open {
        if (lo..=hi).contains(&(fd as u32)) {
            // SAFETY: as above; EBADF (the read_dir handle, already closed) is harmless.
            unsafe { libc::close(fd) };
        }
    }
}

fn null_stdio() {
    // SAFETY: open/dup2/close on descriptors 0 and 1 and a fresh one.
    unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        if fd >= 0 {
            libc::dup2(fd, 0);
            libc::dup2(fd, 1);
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
}

fn reset_signals() {
    // SAFETY: installing default/ignore dispositions and clearing the mask; invalid signal
    // numbers (glibc's internal real-time ones) just fail with EINVAL.
    unsafe {
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        for sig in [libc::SIGPIPE, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2, libc::SIGWINCH] {
            libc::signal(sig, libc::SIG_IGN);
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

fn raise_nofile_limit() {
    const WANT: u64 = 65536;
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: get/setrlimit with a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return;
        }
        let hard = rl.rlim_max;
        if libc::geteuid() == 0 && rl.rlim_max < WANT {
            rl.rlim_max = WANT.min(nr_open);
        }
        rl.rlim_cur = rl.rlim_max.min(nr_open);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) == 0 {
            return;
        }
        // Raising the hard limit needs CAP_SYS_RESOURCE (containers often lack it): settle
        // for the current hard limit.
        let err = std::io::Error::last_os_error();
        rl.rlim_max = hard;
        rl.rlim_cur = hard.min(nr_open);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &rl) != 0 {
            ::log::debug!(target: "nextcloud_push::daemon", "NCP0016: cannot raise RLIMIT_NOFILE: {err}");
        }
    }
}

fn bind_socket(
    path: &Path,
    uid: libc::uid_t,
    gid: libc::gid_t,
) -> std::io::Result<std::os::unix::net::UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way",
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // SAFETY: umask has no preconditions; 077 makes the socket 0700.
    unsafe { libc::umask(0o077) };
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(listener)
}

/// `prctl(PR_SET_NAME)` (what `ps -o comm`, `top` and `pkill NAME` see), and the argument
/// area overwritten with the name (what `ps -f` and `pkill -f` see). The area's bounds come
/// from the kernel (`/proc/self/stat` fields 48–49): httpd's `process->argv` is rewritten by
/// the MPM and no longer points at it.
fn set_process_name() {
    // SAFETY: a NUL-terminated name of at most 15 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, c"nextcloud-push".as_ptr(), 0, 0, 0) };
    let Some((start, end)) = arg_area().filter(|(s, e)| *e > s + 1) else {
        ::log::debug!(target: "nextcloud_push::daemon", "NCP0017: no argument area; process title unchanged");
        return;
    };
    let room = end - start;
    // SAFETY: [arg_start, arg_end) is this process's own argument area (on the initial stack,
    // writable); the kernel reports it for exactly this process, and nothing in the daemon
    // reads argv any more.
    unsafe {
        let p = start as *mut u8;
        std::ptr::write_bytes(p, 0, room);
        std::ptr::copy_nonoverlapping(NAME.as_ptr(), p, NAME.len().min(room - 1));
    }
}

/// `arg_start` and `arg_end` from `/proc/self/stat`.
fn arg_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let start = fields.get(48 - 3)?.parse().ok()?;
    let end = fields.get(49 - 3)?.parse().ok()?;
    Some((start, end))
}
