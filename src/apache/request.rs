//! A borrowed view of a `request_rec` (and its `conn_rec`) with the few accessors the handler
//! needs. Built once per hook call from the pointer httpd passes; never stored.

use super::{ffi, pool};
use crate::error::ClientError;
use std::ffi::{c_int, CStr};
use std::os::fd::BorrowedFd;

/// `HTTP_VERSION(1, 1)`.
const HTTP_1_1: c_int = 1001;

pub struct Request<'r> {
    r: &'r mut ffi::request_rec,
}

impl<'r> Request<'r> {
    /// # Safety
    /// `r` must be the live request httpd passed to the current hook, used on its thread only.
    pub unsafe fn from_raw(r: *mut ffi::request_rec) -> Option<Request<'r>> {
        // SAFETY: per contract (NULL-checked).
        unsafe { r.as_mut() }.map(|r| Request { r })
    }

    pub fn raw(&mut self) -> *mut ffi::request_rec {
        self.r
    }

    pub fn server(&self) -> *mut ffi::server_rec {
        self.r.server
    }

    /// The connection, for glue that works on it directly.
    pub fn connection(&self) -> *mut ffi::conn_rec {
        self.r.connection
    }

    fn conn(&self) -> &ffi::conn_rec {
        // SAFETY: every request has its live connection.
        unsafe { &*self.r.connection }
    }

    fn conn_mut(&mut self) -> &mut ffi::conn_rec {
        // SAFETY: as above; the handler thread owns the connection.
        unsafe { &mut *self.r.connection }
    }

    /// The decoded URL path (`r->uri`).
    pub fn uri(&self) -> Option<&'r str> {
        // SAFETY: a pool string of the request (or NULL).
        unsafe { pool::cstr(self.r.uri) }
    }

    pub fn method(&self) -> &'r str {
        // SAFETY: as above.
        unsafe { pool::cstr(self.r.method) }.unwrap_or("")
    }

    pub fn is_proxy_request(&self) -> bool {
        self.r.proxyreq != 0
    }

    pub fn http11(&self) -> bool {
        self.r.proto_num >= HTTP_1_1
    }

    pub fn handler(&self) -> Option<&'r str> {
        // SAFETY: a static or pool string (or NULL).
        unsafe { pool::cstr(self.r.handler) }
    }

    pub fn filename(&self) -> Option<&'r str> {
        // SAFETY: as above.
        unsafe { pool::cstr(self.r.filename) }
    }

    /// Sets `r->handler` to a static string and `r->filename` to a pool copy of `filename`.
    pub fn claim(&mut self, handler: &'static CStr, filename: &str) {
        self.r.handler = handler.as_ptr();
        // SAFETY: r->pool lives as long as the request.
        self.r.filename = unsafe { pool::pstr(self.r.pool, filename) } as *mut _;
    }

    /// A request header (the first one; httpd merges repeated headers with ", ").
    pub fn header_in(&self, name: &CStr) -> Option<&'r str> {
        // SAFETY: headers_in is the request's live table; the value is a pool string.
        unsafe { pool::cstr(ffi::apr_table_get(self.r.headers_in, name.as_ptr())) }
    }

    pub fn useragent_ip(&self) -> Option<&'r str> {
        // SAFETY: a pool string of the connection or request (or NULL).
        unsafe { pool::cstr(self.r.useragent_ip) }
    }

    /// An HTTP/2 (or other) secondary connection: its socket is not the client's.
    pub fn is_secondary_connection(&self) -> bool {
        !self.conn().master.is_null()
    }

    pub fn is_tls(&mut self) -> bool {
        // SAFETY: live connection; ap_ssl_conn_is_ssl only reads it.
        unsafe { ffi::ap_ssl_conn_is_ssl(self.r.connection) != 0 }
    }

    pub fn clear_headers_out(&mut self) {
        // SAFETY: live table.
        unsafe { ffi::apr_table_clear(self.r.headers_out) };
    }

    pub fn set_header_out(&mut self, name: &str, value: &str) {
        // SAFETY: apr_table_set copies key and value into the table's pool.
        unsafe {
            let pool = self.r.pool;
            ffi::apr_table_set(self.r.headers_out, pool::pstr(pool, name), pool::pstr(pool, value));
        }
    }

    pub fn set_status(&mut self, status: u16) {
        self.r.status = c_int::from(status);
    }

    /// A final response with a plain-text body (empty: `Content-Length: 0`, no type).
    pub fn respond(&mut self, status: u16, body: &str, headers: &[(&str, &str)]) -> c_int {
        self.set_status(status);
        for (k, v) in headers {
            self.set_header_out(k, v);
        }
        // SAFETY: the request is live; the content type is a static string, the body a slice.
        unsafe {
            if body.is_empty() {
                ffi::ap_set_content_length(self.r, 0);
            } else {
                ffi::ap_set_content_type(self.r, c"text/plain; charset=utf-8".as_ptr());
                ffi::ap_set_content_length(self.r, body.len() as ffi::apr_off_t);
                ffi::ap_rwrite(body.as_ptr() as *const _, body.len() as c_int, self.r);
            }
        }
        ffi::OK as c_int
    }

    /// Sends `r->status` (1xx) and `r->headers_out` as an interim response, straight to the
    /// connection's output filters (flushed), then clears `headers_out`.
    pub fn send_interim(&mut self) {
        // SAFETY: live request on its own thread.
        unsafe { ffi::ap_send_interim_response(self.r, 1) };
    }

    pub fn connection_aborted(&self) -> bool {
        self.conn().aborted != 0
    }

    /// Makes httpd let go of the connection without writing anything more and without
    /// `shutdown()`: `c->aborted` stops the output filters and skips the lingering close's
    /// shutdown; `AP_CONN_CLOSE` ends the keep-alive loop. The fd is closed, which only drops
    /// httpd's reference to the socket.
    pub fn abandon_connection(&mut self) {
        let c = self.conn_mut();
        c.aborted = 1;
        c.keepalive = ffi::AP_CONN_CLOSE;
    }

    /// Reads, without blocking, everything httpd already buffered from the client after the
    /// request head (and whatever the socket has right now), up to `limit` bytes. An error on
    /// a read failure or if the client sent more than `limit`.
    pub fn drain_input(&mut self, limit: usize) -> Result<Vec<u8>, ClientError> {
        // SAFETY: this live request, on its thread.
        unsafe { drain(self.r, limit) }
    }

    /// The client socket's descriptor, borrowed for as long as the connection lives.
    pub fn client_fd(&self) -> Option<BorrowedFd<'r>> {
        let mut fd: ffi::apr_os_sock_t = -1;
        // SAFETY: the core socket of a live connection; apr_os_sock_get only copies the fd.
        unsafe {
            let sock = ffi::ap_get_conn_socket(self.r.connection);
            if sock.is_null() || ffi::apr_os_sock_get(&mut fd, sock) != 0 || fd < 0 {
                return None;
            }
            // The fd stays open until the connection's pool is cleared, after the handler.
            Some(BorrowedFd::borrow_raw(fd))
        }
    }
}

/// [`Request::drain_input`] on a raw request (for callers that hold no [`Request`]).
///
/// # Safety
/// `r` must be the live request of the current handler call, on its thread.
pub unsafe fn drain(r: *mut ffi::request_rec, limit: usize) -> Result<Vec<u8>, ClientError> {
    // SAFETY: per contract.
    let r = unsafe { &*r };
    let mut out = Vec::new();
    let c = r.connection;
    // SAFETY: live connection and request pool; the brigade is emptied before each read
    // and flattened into an owned buffer; bucket memory is released by cleanup.
    unsafe {
        let bb = ffi::apr_brigade_create(r.pool, (*c).bucket_alloc);
        loop {
            let rv = ffi::ap_get_brigade(
                (*c).input_filters,
                bb,
                ffi::AP_MODE_READBYTES,
                ffi::APR_NONBLOCK_READ,
                8192,
            );
            if rv != 0 {
                ffi::apr_brigade_cleanup(bb as *mut _);
                if rv == ffi::APR_EAGAIN as i32 || rv == ffi::APR_EOF as i32 {
                    break;
                }
                return Err(ClientError::Drain(rv));
            }
            let got = append_brigade(bb, &mut out);
            ffi::apr_brigade_cleanup(bb as *mut _);
            if !got {
                break;
            }
            if out.len() > limit {
                return Err(ClientError::TooMuch(limit));
            }
        }
    }
    Ok(out)
}

/// Appends the bytes of `bb` to `out` (the brigade is left for the caller to clean up); `false`
/// when it holds none or its length is unknown.
///
/// # Safety
/// `bb` is a live brigade.
pub(super) unsafe fn append_brigade(bb: *mut ffi::apr_bucket_brigade, out: &mut Vec<u8>) -> bool {
    let mut len: ffi::apr_off_t = 0;
    // SAFETY: `bb` is live (the caller's contract); `out[start..]` has room for `len` bytes.
    unsafe {
        if ffi::apr_brigade_length(bb, 1, &mut len) != 0 || len <= 0 {
            return false;
        }
        let start = out.len();
        out.resize(start + len as usize, 0);
        let mut got = len as ffi::apr_size_t;
        ffi::apr_brigade_flatten(bb, out[start..].as_mut_ptr() as *mut _, &mut got);
        out.truncate(start + got);
    }
    true
}
