//! The bridge: for a WebSocket over mod_ssl the client socket carries TLS records whose
//! state lives in this Apache child, so the descriptor cannot be handed to the daemon. Instead
//! the worker thread that ran the handler stays and relays plaintext between the connection's
//! filters (mod_ssl decrypts and encrypts) and a Unix stream to the daemon, which treats that
//! stream as the upgraded WebSocket (bridged mode of the handoff protocol, `crate::wire::handoff`).
//!
//! A WebSocket over HTTP/2 (RFC 8441, `H2WebSockets on`) is bridged the same way: mod_http2 turns
//! the extended CONNECT into an upgrade GET on a secondary connection (`c->master` set) whose
//! filters read and write the h2 stream, and whose socket is a placeholder shared by every stream.
//! The bridge then polls the stream's input pipe (`ap_get_pollfd_from_conn`, as httpd's own
//! `ap_proxy_tunnel_run` does) instead of a socket; mod_http2 empties that pipe before a read
//! answers EAGAIN, so poll(2) sleeps until the client sends again.
//!
//! The loop follows the shape of httpd's `ap_proxy_tunnel_run` (modules/proxy/proxy_util.c),
//! simplified for a two-party byte relay on one thread:
//! - the request's filter chains are reduced to the connection's, and the `reqtimeout` input
//!   filter and mod_ssl's coalescing output filter are removed;
//! - one `poll(2)` waits on the client socket (readable) and the daemon stream (readable, or
//!   writable while bytes for it are pending); nothing spins: a side is polled for reading only
//!   while its bytes can be taken;
//! - after every wakeup the client side is read with a nonblocking `AP_MODE_READBYTES` read of
//!   `c->input_filters`, whatever woke us: mod_ssl may hold decrypted bytes while the socket
//!   shows nothing;
//! - client → daemon: nonblocking writes; while some are pending the client is not read
//!   (backpressure up to the client's TCP window);
//! - daemon → client: `ap_pass_brigade` with a FLUSH, which writes through mod_ssl and blocks
//!   at most Apache's `Timeout` (the socket timeout) on a client that does not read; the daemon
//!   is not read meanwhile (backpressure up to the daemon's socket buffer);
//! - half-close: client EOF → `shutdown(SHUT_WR)` on the daemon stream once pending bytes are
//!   out (the daemon ends the session); daemon EOF → the bridge returns and Apache closes the
//!   client side as usual (TLS close_notify, FIN, lingering read of what the client still sends);
//! - after `Timeout` without a byte in either direction the bridge gives up (the daemon pings
//!   bridged sessions more often than that, see `handoff::bridged_ping_interval`);
//! - an ungraceful stop of the child (`apachectl stop`, hard restart) closes every connection
//!   of its workers (event/worker `close_worker_sockets`); the `child_stopping` hook then wakes
//!   every bridge through a process-wide pipe, and each ends at once instead of waiting in
//!   poll(2) on a descriptor that is gone (the parent would SIGKILL the child after ~9 s).
//!   Graceful restarts and child recycling leave bridges running: the old child lives on until
//!   its sessions end.

use super::ffi;
use crate::error::ClientError;
use std::ffi::{c_int, CStr};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Largest read from either side per call.
const CHUNK: usize = 16 * 1024;
/// Client bytes read ahead of the daemon at most (then the client is not read until they are
/// written).
const MAX_PENDING: usize = 64 * 1024;
/// Daemon reads relayed per wakeup before the client side gets its turn again.
const MAX_DAEMON_READS: usize = 8;

/// Written once when this child is told to stop ungracefully; read by no one, so it stays
/// readable and wakes every bridge, now and later. (read end, write end)
static STOP_PIPE: OnceLock<Option<(OwnedFd, OwnedFd)>> = OnceLock::new();

fn stop_pipe() -> Option<&'static (OwnedFd, OwnedFd)> {
    STOP_PIPE
        .get_or_init(|| {
            let mut fds: [c_int; 2] = [-1, -1];
            // SAFETY: pipe2 fills two fresh descriptors on success.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
                return None;
            }
            // SAFETY: both are fresh and owned only here.
            Some(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
        })
        .as_ref()
}

/// `child_stopping` hook: on an ungraceful stop, wake the bridges (see the module docs).
pub fn child_stopping(graceful: bool) {
    if graceful {
        return;
    }
    if let Some(Some((_, write_end))) = STOP_PIPE.get() {
        // SAFETY: writing one byte to our own nonblocking pipe; a full pipe is fine.
        unsafe { libc::write(write_end.as_raw_fd(), b"x".as_ptr() as *const _, 1) };
    }
}

/// How a bridged session ended.
#[derive(Debug)]
pub enum End {
    /// The daemon closed its side (the WebSocket session is over).
    DaemonClosed,
    /// Nothing moved for `Timeout`.
    Idle(Duration),
    /// Reading from or writing to the client failed (it went away).
    Client(ClientError),
    /// The daemon stream failed (reading or writing).
    Daemon(&'static str, std::io::Error),
    /// The child was told to stop ungracefully and has closed the client connection.
    Stopping,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::DaemonClosed => f.write_str("the push daemon ended the session"),
            End::Idle(t) => write!(f, "nothing moved for {t:?} (Timeout)"),
            End::Client(e) => write!(f, "client connection: {e}"),
            End::Daemon(op, e) => write!(f, "push daemon stream: {op}: {e}"),
            End::Stopping => f.write_str("Apache is stopping (the connection was closed)"),
        }
    }
}

/// Apache's `Timeout` for `r`'s server (`server_rec.timeout`).
///
/// # Safety
/// `r` must be the live request of the current handler call.
pub unsafe fn server_timeout(r: *mut ffi::request_rec) -> Duration {
    // SAFETY: per contract; every request has its server.
    let usec = unsafe { (*(*r).server).timeout };
    Duration::from_micros(u64::try_from(usec).unwrap_or(0)).max(Duration::from_secs(1))
}

/// Makes the request a plain byte tunnel, as `ap_proxy_tunnel_create` does: the request's
/// filter chains become the connection's (so nothing HTTP is written after the handler, such as
/// a second 101), the request-timeout input filter and mod_ssl's coalescing output filter are
/// removed, and the connection will not be kept alive.
///
/// # Safety
/// `r` must be the live request of the current handler call, after the 101 was sent.
pub unsafe fn prepare(r: *mut ffi::request_rec) {
    // SAFETY: per contract; filter removal by name only unlinks filters of this connection.
    unsafe {
        let c = (*r).connection;
        ffi::ap_remove_input_filter_byhandle((*c).input_filters, c"reqtimeout".as_ptr());
        ffi::ap_remove_output_filter_byhandle(
            (*c).output_filters,
            c"SSL/TLS Coalescing Filter".as_ptr(),
        );
        (*r).input_filters = (*c).input_filters;
        (*r).proto_input_filters = (*c).input_filters;
        (*r).output_filters = (*c).output_filters;
        (*r).proto_output_filters = (*c).output_filters;
        (*c).keepalive = ffi::AP_CONN_CLOSE;
    }
}

/// Relays until one side is done; see the module documentation. `daemon` must be nonblocking.
///
/// # Safety
/// `r` must be the live request of the current handler call, on its own thread, after
/// [`prepare`].
pub unsafe fn run(r: *mut ffi::request_rec, daemon: &UnixStream, idle: Duration) -> End {
    // SAFETY: per contract.
    let mut client = match unsafe { Client::new(r) } {
        Some(c) => c,
        None => return End::Client(ClientError::NoSocket),
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut client_open = true;
    let mut daemon_write_shut = false;
    let mut buf = vec![0u8; CHUNK];
    let mut last_activity = Instant::now();
    let stop_fd: RawFd = stop_pipe().map_or(-1, |(read_end, _)| read_end.as_raw_fd());
    loop {
        // The MPM closes the connection's socket on an ungraceful stop: never touch it then.
        if !client.socket_open() {
            return End::Stopping;
        }
        // Client → pending: always try, mod_ssl may have decrypted bytes buffered.
        if client_open && pending.len() < MAX_PENDING {
            match client.read(&mut pending, MAX_PENDING) {
                Ok(Read_::Data) => last_activity = Instant::now(),
                Ok(Read_::Nothing) => {}
                Ok(Read_::Eof) => client_open = false,
                Err(e) => return End::Client(e),
            }
        }
        // Pending → daemon.
        while !pending.is_empty() {
            match (&*daemon).write(&pending) {
                Ok(n) => {
                    pending.drain(..n);
                    last_activity = Instant::now();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return End::Daemon("write", e),
            }
        }
        if !client_open && pending.is_empty() && !daemon_write_shut {
            let _ = daemon.shutdown(Shutdown::Write);
            daemon_write_shut = true;
        }
        // Daemon → client.
        for _ in 0..MAX_DAEMON_READS {
            match (&*daemon).read(&mut buf) {
                Ok(0) => return End::DaemonClosed,
                Ok(n) => {
                    if let Err(e) = client.write(&buf[..n]) {
                        return End::Client(e);
                    }
                    last_activity = Instant::now();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return End::Daemon("read", e),
            }
        }

        let left = idle.saturating_sub(last_activity.elapsed());
        if left.is_zero() {
            return End::Idle(idle);
        }
        let mut fds = [
            libc::pollfd { fd: client.fd, events: 0, revents: 0 },
            libc::pollfd { fd: daemon.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: stop_fd, events: libc::POLLIN, revents: 0 },
        ];
        if client_open && pending.len() < MAX_PENDING {
            fds[0].events = libc::POLLIN;
        }
        if !pending.is_empty() {
            fds[1].events |= libc::POLLOUT;
        }
        if fds[0].events == 0 {
            // Not interested in the client now: poll(2) ignores negative descriptors.
            fds[0].fd = -1;
        }
        let ms = left.as_millis().clamp(1, c_int::MAX as u128) as c_int;
        // SAFETY: three valid pollfd entries (negative descriptors are skipped by poll).
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return End::Daemon("poll", e);
            }
        }
        if fds[2].revents != 0 || fds[0].revents & libc::POLLNVAL != 0 {
            return End::Stopping;
        }
        if fds[1].revents & libc::POLLNVAL != 0 {
            return End::Daemon("poll", std::io::Error::from_raw_os_error(libc::EBADF));
        }
        // Whatever woke us (or the timeout), the loop reads both sides again, nonblocking.
    }
}

enum Read_ {
    Data,
    Nothing,
    Eof,
}

/// The client side: the connection's filter chains and the descriptor to poll for its input
/// (the socket; for an HTTP/2 stream its input pipe, or -1 once the stream has no input).
struct Client {
    c: *mut ffi::conn_rec,
    fd: c_int,
    /// An HTTP/2 stream: its socket is not the client's (see the module documentation).
    h2: bool,
    bb_in: *mut ffi::apr_bucket_brigade,
    bb_out: *mut ffi::apr_bucket_brigade,
}

impl Client {
    /// # Safety
    /// `r` must be the live request on its own thread.
    unsafe fn new(r: *mut ffi::request_rec) -> Option<Client> {
        // SAFETY: per contract; brigades live in the request pool (the bridge ends before the
        // handler returns); apr_os_sock_get only copies the descriptor number.
        unsafe {
            let c = (*r).connection;
            let h2 = !(*c).master.is_null();
            let fd = if h2 { stream_input_fd(r)? } else { socket_fd(c)? };
            let bb_in = ffi::apr_brigade_create((*r).pool, (*c).bucket_alloc);
            let bb_out = ffi::apr_brigade_create((*r).pool, (*c).bucket_alloc);
            Some(Client { c, fd, h2, bb_in, bb_out })
        }
    }

    /// False once httpd closed the connection's socket (APR then reports descriptor -1). An
    /// HTTP/2 stream has no socket of its own: the stop pipe alone tells it that Apache stops.
    fn socket_open(&self) -> bool {
        if self.h2 {
            return true;
        }
        let mut fd: ffi::apr_os_sock_t = -1;
        // SAFETY: live connection; apr_os_sock_get only copies the descriptor number.
        unsafe {
            let sock = ffi::ap_get_conn_socket(self.c);
            !sock.is_null() && ffi::apr_os_sock_get(&mut fd, sock) == 0 && fd == self.fd
        }
    }

    /// Nonblocking reads of `c->input_filters` until nothing is left or `limit` is reached.
    fn read(&mut self, into: &mut Vec<u8>, limit: usize) -> Result<Read_, ClientError> {
        let mut got = Read_::Nothing;
        // Reads that OpenSSL answered "want read" after progress without data (a KeyUpdate, a
        // warning alert): records may wait behind it in the core filter, and no POLLIN will
        // come for them. Bounded, so a flood of such records cannot hold the loop.
        let mut progress_without_data = 0;
        while into.len() < limit {
            let want = (limit - into.len()).min(CHUNK);
            // SAFETY: live connection on this thread.
            let activity = unsafe { super::tls::read_activity(self.c) };
            // SAFETY: live connection on this thread; the brigade is emptied after each read and
            // its data copied out.
            let (rv, data, eos) = unsafe {
                ffi::apr_brigade_cleanup(self.bb_in as *mut _);
                let rv = ffi::ap_get_brigade(
                    (*self.c).input_filters,
                    self.bb_in,
                    ffi::AP_MODE_READBYTES,
                    ffi::APR_NONBLOCK_READ,
                    want as ffi::apr_off_t,
                );
                let mut data = Vec::new();
                let mut eos = false;
                if rv == 0 {
                    eos = has_eos(self.bb_in);
                    let mut len: ffi::apr_off_t = 0;
                    if ffi::apr_brigade_length(self.bb_in, 1, &mut len) == 0 && len > 0 {
                        data.resize(len as usize, 0);
                        let mut n = len as ffi::apr_size_t;
                        ffi::apr_brigade_flatten(self.bb_in, data.as_mut_ptr() as *mut _, &mut n);
                        data.truncate(n);
                    }
                }
                ffi::apr_brigade_cleanup(self.bb_in as *mut _);
                (rv, data, eos)
            };
            if rv == ffi::APR_EAGAIN as i32 {
                // SAFETY: as above.
                let moved = unsafe { super::tls::read_activity(self.c) } != activity;
                if moved && progress_without_data < 64 {
                    progress_without_data += 1;
                    continue;
                }
                return Ok(got);
            }
            if rv == ffi::APR_EOF as i32 {
                return Ok(Read_::Eof);
            }
            if rv != 0 {
                return Err(ClientError::Read(apr_error(rv)));
            }
            if !data.is_empty() {
                into.extend_from_slice(&data);
                got = Read_::Data;
            }
            if eos {
                // Data that came with the EOS is relayed first; the next read reports EOF (the
                // filters keep answering APR_EOF after an end of stream).
                return Ok(if matches!(got, Read_::Data) { Read_::Data } else { Read_::Eof });
            }
            if data.is_empty() {
                return Ok(got);
            }
        }
        Ok(got)
    }

    /// Writes `data` through the connection's output filters with a FLUSH (blocks at most the
    /// socket timeout, Apache's `Timeout`).
    fn write(&mut self, data: &[u8]) -> Result<(), ClientError> {
        // SAFETY: live connection on this thread; apr_brigade_write copies `data` into heap
        // buckets of the brigade, ap_fflush adds a FLUSH bucket and passes it down.
        let rv = unsafe {
            let rv = ffi::apr_brigade_write(
                self.bb_out,
                None,
                std::ptr::null_mut(),
                data.as_ptr() as *const _,
                data.len() as ffi::apr_size_t,
            );
            let rv =
                if rv == 0 { ffi::ap_fflush((*self.c).output_filters, self.bb_out) } else { rv };
            ffi::apr_brigade_cleanup(self.bb_out as *mut _);
            rv
        };
        if rv != 0 {
            return Err(ClientError::Write(apr_error(rv)));
        }
        // SAFETY: live connection.
        if unsafe { (*self.c).aborted } != 0 {
            return Err(ClientError::Aborted);
        }
        Ok(())
    }
}

/// The descriptor of the connection's socket.
///
/// # Safety
/// `c` must be a live connection.
unsafe fn socket_fd(c: *mut ffi::conn_rec) -> Option<c_int> {
    let mut fd: ffi::apr_os_sock_t = -1;
    // SAFETY: per contract; apr_os_sock_get only copies the descriptor number.
    unsafe {
        let sock = ffi::ap_get_conn_socket(c);
        if sock.is_null() || ffi::apr_os_sock_get(&mut fd, sock) != 0 || fd < 0 {
            return None;
        }
    }
    Some(fd)
}

/// The descriptor that becomes readable when an HTTP/2 stream's client sends (mod_http2's
/// input pipe), or -1 when the stream has no input; `None` when mod_http2 offers nothing to
/// poll (an httpd or mod_http2 without `ap_get_pollfd_from_conn`).
///
/// # Safety
/// `r` must be the live request of a secondary connection, on its own thread.
unsafe fn stream_input_fd(r: *mut ffi::request_rec) -> Option<c_int> {
    // SAFETY: per contract; the hook only fills `pfd` (pool-owned file or socket), and
    // apr_os_file_get / apr_os_sock_get only copy the descriptor number.
    unsafe {
        let mut pfd: ffi::apr_pollfd_t = std::mem::zeroed();
        pfd.p = (*r).pool;
        pfd.desc_type = ffi::APR_NO_DESC;
        let mut timeout: ffi::apr_interval_time_t = -1;
        if ffi::ap_get_pollfd_from_conn((*r).connection, &mut pfd, &mut timeout) != 0 {
            return None;
        }
        let mut fd: c_int = -1;
        match pfd.desc_type {
            ffi::APR_POLL_FILE => {
                if ffi::apr_os_file_get(&mut fd, pfd.desc.f) != 0 {
                    return None;
                }
            }
            ffi::APR_POLL_SOCKET => {
                if ffi::apr_os_sock_get(&mut fd, pfd.desc.s) != 0 {
                    return None;
                }
            }
            _ => fd = -1,
        }
        Some(fd)
    }
}

/// Does the brigade hold an EOS bucket?
///
/// # Safety
/// `bb` must be a live brigade used on this thread only.
unsafe fn has_eos(bb: *mut ffi::apr_bucket_brigade) -> bool {
    // SAFETY: per contract. A brigade is an APR ring: its sentinel is the list head itself seen
    // as a bucket (`link` is apr_bucket's first field, so the offset is 0); every bucket has a
    // static type with a NUL-terminated name.
    unsafe {
        let sentinel = std::ptr::addr_of_mut!((*bb).list) as *mut ffi::apr_bucket;
        let mut b = (*bb).list.next;
        let mut guard = 0usize;
        while b != sentinel && !b.is_null() && guard < 4096 {
            let ty = (*b).type_;
            if !ty.is_null() && !(*ty).name.is_null() && CStr::from_ptr((*ty).name) == c"EOS" {
                return true;
            }
            b = (*b).link.next;
            guard += 1;
        }
        false
    }
}

fn apr_error(rv: c_int) -> String {
    // APR maps errno values 1:1 below APR_OS_START_ERROR (20000).
    if (1..20000).contains(&rv) {
        std::io::Error::from_raw_os_error(rv).to_string()
    } else {
        format!("APR status {rv}")
    }
}
