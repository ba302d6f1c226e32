//! The TLS session handoff, Apache's side: a wss client's live mod_ssl session moves to the
//! push daemon with its socket, so no worker stays behind (design and evidence:
//! `shared/design/tls-handoff.md`; protocol: `crate::wire::handoff::TlsOffer`).
//!
//! - mod_ssl's optional hook `init_server` gives every push vhost's `SSL_CTX`: a keylog callback
//!   (chained to mod_ssl's own `SSLKEYLOGFILE` one) keeps each TLS 1.3 connection's current
//!   application traffic secrets; OpenSSL logs a secret in the very function that resets that
//!   direction's sequence number.
//! - mod_ssl's optional hook `pre_handshake` gives every new server-side `SSL`: a message
//!   callback counts the records each way (a CCS resets the count, TLS 1.2) and the handshake
//!   messages that matter (ClientHello, HelloRequest, KeyUpdate), which gives the exact
//!   sequence numbers (OpenSSL 3.0 has no getter for them).
//! - After the 101 the handler drains what mod_ssl decrypted until OpenSSL, mod_ssl and the core
//!   filter hold no partial record, reads whatever ciphertext still sits below mod_ssl, and
//!   offers the session to the daemon together with the last record OpenSSL wrote, kept by a
//!   small output filter below mod_ssl ([`TAP_FILTER`]). The daemon opens that record at
//!   `write_seq - 1` before it adopts the session, so a wrong count can never make it send a
//!   record under a reused nonce; it refuses instead, and the worker bridges as before.
//!
//! Nothing is installed unless some server has push enabled, and connections to ports without a
//! push vhost are not tracked. libssl is the system's, the copy mod_ssl uses, linked
//! dynamically.

use super::{ffi, module, pool, server_config};
use crate::error::ClientError;
use crate::wire::handoff::{MAX_CIPHERTEXT, MAX_LAST_RECORD};
use nextcloud_push_engine::tls::TlsState;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU16, Ordering};
use std::time::{Duration, Instant};
use zeroize::Zeroize;

/// The output filter below mod_ssl (`AP_FTYPE_CONNECTION + 5`) and above the core that keeps a
/// copy of the last TLS record written.
pub const TAP_FILTER: &CStr = c"NEXTCLOUD_PUSH_TLS_TAP";

/// Suites whose record layer the daemon continues: TLS 1.3's three, and TLS 1.2 ECDHE with
/// AES-GCM or ChaCha20-Poly1305.
const SUITES_13: [u16; 3] = [0x1301, 0x1302, 0x1303];
const SUITES_12: [u16; 6] = [0xC02B, 0xC02C, 0xC02F, 0xC030, 0xCCA8, 0xCCA9];

/// How long the handler waits for a client that is in the middle of a record before it bridges.
const QUIESCE_FOR: Duration = Duration::from_millis(500);

/// Some server has push enabled (set by `init_server` in the parent; children inherit it).
static ENABLED: AtomicBool = AtomicBool::new(false);
/// The local ports of push-enabled TLS vhosts: connections to other ports are not tracked, so
/// TLS sites without push pay nothing. `ANY_PORT` (a vhost on every port, or too many ports)
/// tracks every connection.
static PORTS: [AtomicU16; 16] = [const { AtomicU16::new(0) }; 16];
static ANY_PORT: AtomicBool = AtomicBool::new(false);
/// `SSL` ex_data index of a connection's [`Track`]; `SSL_CTX` ex_data index of the keylog
/// callback that was installed before ours.
static SSL_INDEX: AtomicI32 = AtomicI32::new(-1);
static CTX_INDEX: AtomicI32 = AtomicI32::new(-1);
static TAP: AtomicPtr<ffi::ap_filter_rec_t> = AtomicPtr::new(std::ptr::null_mut());
/// Debug knob for the tests, from the environment variable `NCP_DEBUG_TLS_WRITE_SEQ_SHIFT`
/// (unset: 0): added to the write sequence number of every offer, so the daemon's self-check
/// must refuse it. Proof that the check can fail; never set in production.
static WRITE_SEQ_SHIFT: AtomicI64 = AtomicI64::new(0);

type KeylogCb = unsafe extern "C" fn(ssl: *const ffi::SSL, line: *const c_char);
type InitServer = unsafe extern "C" fn(
    *mut ffi::server_rec,
    *mut ffi::apr_pool_t,
    c_int,
    *mut ffi::SSL_CTX,
) -> c_int;
type PreHandshake = unsafe extern "C" fn(*mut ffi::conn_rec, *mut ffi::SSL, c_int) -> c_int;

/// `register_hooks`: mod_ssl's optional hooks (looked up by name when mod_ssl runs them, so there
/// is no link-time dependency on mod_ssl) and the tap filter.
///
/// # Safety
/// Only from `register_hooks`.
pub unsafe fn register() {
    // SAFETY: apr_optional_hook_add stores the function pointers under the hook names mod_ssl
    // runs with its own signatures (declared in mod_ssl_openssl.h, mirrored by the types above);
    // the cast to `fn()` is how APR stores every optional hook.
    unsafe {
        let init: InitServer = init_server;
        let pre: PreHandshake = pre_handshake;
        ffi::apr_optional_hook_add(
            c"init_server".as_ptr(),
            Some(std::mem::transmute::<InitServer, unsafe extern "C" fn()>(init)),
            std::ptr::null(),
            std::ptr::null(),
            ffi::APR_HOOK_MIDDLE as c_int,
        );
        ffi::apr_optional_hook_add(
            c"pre_handshake".as_ptr(),
            Some(std::mem::transmute::<PreHandshake, unsafe extern "C" fn()>(pre)),
            std::ptr::null(),
            std::ptr::null(),
            ffi::APR_HOOK_MIDDLE as c_int,
        );
        let rec = ffi::ap_register_output_filter(
            TAP_FILTER.as_ptr(),
            Some(tap_filter),
            None,
            ffi::AP_FTYPE_CONNECTION + 6,
        );
        TAP.store(rec, Ordering::SeqCst);
    }
    let shift = std::env::var("NCP_DEBUG_TLS_WRITE_SEQ_SHIFT").ok().and_then(|v| v.parse().ok());
    WRITE_SEQ_SHIFT.store(shift.unwrap_or(0), Ordering::SeqCst);
}

/// What the callbacks learn about one TLS connection (in `c->pool`; secrets zeroized on drop).
#[derive(Default)]
pub struct Track {
    ssl: usize,
    /// Records since the last reset, per direction: the next record's sequence number.
    read_records: u64,
    write_records: u64,
    /// TLS 1.3 application secrets seen (`_0`, then one per KeyUpdate), per direction.
    read_epoch: u32,
    write_epoch: u32,
    client_secret: Vec<u8>,
    server_secret: Vec<u8>,
    client_hellos: u32,
    hello_requests: u32,
    key_updates_read: u32,
    key_updates_written: u32,
    /// Bumped by every read-side callback: a drain that made progress without data.
    read_activity: u64,
    tap: Tap,
}

impl Drop for Track {
    fn drop(&mut self) {
        self.client_secret.zeroize();
        self.server_secret.zeroize();
    }
}

/// The record framing of what goes out below mod_ssl, and the last complete record.
#[derive(Default)]
struct Tap {
    /// Bytes of the record being written (header first).
    partial: Vec<u8>,
    last: Vec<u8>,
    /// More than [`MAX_LAST_RECORD`] bytes or a malformed header: no record is trusted.
    broken: bool,
}

impl Tap {
    fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && !self.broken {
            let need = if self.partial.len() < 5 {
                5 - self.partial.len()
            } else {
                5 + usize::from(u16::from_be_bytes([self.partial[3], self.partial[4]]))
                    - self.partial.len()
            };
            let take = need.min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.len() == 5 {
                let len = usize::from(u16::from_be_bytes([self.partial[3], self.partial[4]]));
                if 5 + len > MAX_LAST_RECORD {
                    self.broken = true;
                }
            } else if self.partial.len() > 5 && take == need {
                self.last = std::mem::take(&mut self.partial);
            }
        }
    }
}

/// `init_server` (mod_ssl, parent, every `SSLEngine on` vhost): our keylog callback on the
/// contexts of push vhosts, chained to the one installed before it.
unsafe extern "C" fn init_server(
    s: *mut ffi::server_rec,
    _p: *mut ffi::apr_pool_t,
    is_proxy: c_int,
    ctx: *mut ffi::SSL_CTX,
) -> c_int {
    super::guard("init_server", ffi::OK as c_int, || {
        // SAFETY: mod_ssl passes its live server and context.
        let push = unsafe { server_config::get_ref(s) }.is_some_and(|c| c.runtime.engine.is_some());
        if is_proxy != 0 || ctx.is_null() || !push {
            return ffi::OK as c_int;
        }
        // SAFETY: plain libssl calls on a live context; the ex_data slot holds the previous
        // callback (a function pointer, or NULL) for `keylog` to chain to.
        unsafe {
            let Some((_, ctx_index)) = indexes() else { return ffi::OK as c_int };
            let previous = ffi::SSL_CTX_get_keylog_callback(ctx);
            let ours: KeylogCb = keylog;
            if previous.map(|p| p as usize) != Some(ours as usize) {
                let data = previous.map_or(std::ptr::null_mut(), |p| p as *mut c_void);
                ffi::SSL_CTX_set_ex_data(ctx, ctx_index, data);
                ffi::SSL_CTX_set_keylog_callback(ctx, Some(keylog));
            }
        }
        // SAFETY: mod_ssl's live server; its address list is NULL-terminated.
        unsafe { note_ports(s) };
        ENABLED.store(true, Ordering::SeqCst);
        ffi::OK as c_int
    })
}

/// Remembers the ports a push vhost listens on (see [`PORTS`]).
///
/// # Safety
/// `s` must be a live server_rec.
unsafe fn note_ports(s: *mut ffi::server_rec) {
    let mut ports = Vec::new();
    // SAFETY: per contract.
    unsafe {
        let mut a = (*s).addrs;
        while !a.is_null() {
            ports.push(if (*a).host_port != 0 { (*a).host_port } else { (*s).port });
            a = (*a).next;
        }
    }
    for port in ports {
        if port == 0 || !remember_port(port) {
            ANY_PORT.store(true, Ordering::SeqCst);
        }
    }
}

/// Adds `port` to [`PORTS`]; false when the table is full.
fn remember_port(port: u16) -> bool {
    for slot in &PORTS {
        match slot.compare_exchange(0, port, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => return true,
            Err(existing) if existing == port => return true,
            Err(_) => {}
        }
    }
    false
}

/// Whether connections to local port `port` may belong to a push vhost.
fn tracked_port(port: u16) -> bool {
    ANY_PORT.load(Ordering::SeqCst) || PORTS.iter().any(|p| p.load(Ordering::SeqCst) == port)
}

/// The ex_data indexes, allocated once per process.
///
/// # Safety
/// libssl must be initialised (it is, once mod_ssl runs its hooks).
unsafe fn indexes() -> Option<(c_int, c_int)> {
    // SAFETY: CRYPTO_get_ex_new_index with no callbacks only reserves a slot number.
    unsafe {
        if SSL_INDEX.load(Ordering::SeqCst) < 0 {
            let i = ffi::CRYPTO_get_ex_new_index(
                ffi::CRYPTO_EX_INDEX_SSL as c_int,
                0,
                std::ptr::null_mut(),
                None,
                None,
                None,
            );
            SSL_INDEX.store(i, Ordering::SeqCst);
        }
        if CTX_INDEX.load(Ordering::SeqCst) < 0 {
            let i = ffi::CRYPTO_get_ex_new_index(
                ffi::CRYPTO_EX_INDEX_SSL_CTX as c_int,
                0,
                std::ptr::null_mut(),
                None,
                None,
                None,
            );
            CTX_INDEX.store(i, Ordering::SeqCst);
        }
    }
    let (s, c) = (SSL_INDEX.load(Ordering::SeqCst), CTX_INDEX.load(Ordering::SeqCst));
    (s >= 0 && c >= 0).then_some((s, c))
}

/// `pre_handshake` (mod_ssl, child, every new server-side `SSL`): the connection's [`Track`] and
/// the message callback.
unsafe extern "C" fn pre_handshake(
    c: *mut ffi::conn_rec,
    ssl: *mut ffi::SSL,
    is_proxy: c_int,
) -> c_int {
    super::guard("pre_handshake", ffi::OK as c_int, || {
        let index = SSL_INDEX.load(Ordering::SeqCst);
        // SAFETY: NULL or a live connection's local address.
        let port = unsafe { c.as_ref().and_then(|c| c.local_addr.as_ref()).map_or(0, |a| a.port) };
        if !tracked_port(port) {
            return ffi::OK as c_int;
        }
        if is_proxy != 0
            || c.is_null()
            || ssl.is_null()
            || index < 0
            || !ENABLED.load(Ordering::SeqCst)
        {
            return ffi::OK as c_int;
        }
        // SAFETY: live connection and SSL; the track lives in c->pool, which outlives every
        // callback of this SSL (mod_ssl frees the SSL in a c->pool cleanup registered after
        // ours, so it runs first).
        unsafe {
            let mut fresh = Track::default();
            fresh.ssl = ssl as usize;
            let track = pool::alloc((*c).pool, fresh);
            ffi::SSL_set_ex_data(ssl, index, track as *mut c_void);
            ffi::SSL_set_msg_callback(ssl, Some(on_message));
            ffi::SSL_ctrl(
                ssl,
                ffi::SSL_CTRL_SET_MSG_CALLBACK_ARG as c_int,
                0,
                track as *mut c_void,
            );
            ffi::ap_set_module_config((*c).conn_config, module::record(), track as *mut c_void);
        }
        ffi::OK as c_int
    })
}

/// The message callback: one call per record header each way, and per handshake message.
unsafe extern "C" fn on_message(
    write_p: c_int,
    _version: c_int,
    content_type: c_int,
    buf: *const c_void,
    len: usize,
    _ssl: *mut ffi::SSL,
    arg: *mut c_void,
) {
    if arg.is_null() {
        return;
    }
    // SAFETY: `arg` is this connection's Track (set in pre_handshake, alive while the SSL is);
    // callbacks of one SSL run on the thread that drives it. `buf` holds `len` bytes.
    let (track, bytes) =
        unsafe { (&mut *(arg as *mut Track), std::slice::from_raw_parts(buf as *const u8, len)) };
    let write = write_p != 0;
    if !write {
        track.read_activity += 1;
    }
    let Some(&first) = bytes.first() else { return };
    match content_type as u32 {
        ffi::SSL3_RT_HEADER => {
            let counter = if write { &mut track.write_records } else { &mut track.read_records };
            // A CCS is the last record of the old state (TLS 1.2); the count starts anew.
            *counter = if u32::from(first) == ffi::SSL3_RT_CHANGE_CIPHER_SPEC {
                0
            } else {
                counter.saturating_add(1)
            };
        }
        ffi::SSL3_RT_HANDSHAKE => match (write, first) {
            (false, 1) => track.client_hellos += 1,
            (true, 0) => track.hello_requests += 1,
            (false, 24) => track.key_updates_read += 1,
            (true, 24) => track.key_updates_written += 1,
            _ => {}
        },
        _ => {}
    }
}

/// The keylog callback: the previous one first (mod_ssl's `SSLKEYLOGFILE`), then the TLS 1.3
/// application secrets of tracked connections.
unsafe extern "C" fn keylog(ssl: *const ffi::SSL, line: *const c_char) {
    super::guard("keylog", (), || {
        if ssl.is_null() || line.is_null() {
            return;
        }
        // SAFETY: OpenSSL passes a live SSL and a NUL-terminated line; the ctx slot holds the
        // previous callback or NULL; the SSL slot holds our Track or NULL.
        unsafe {
            let ctx = ffi::SSL_get_SSL_CTX(ssl);
            let ctx_index = CTX_INDEX.load(Ordering::SeqCst);
            if !ctx.is_null() && ctx_index >= 0 {
                let previous = ffi::SSL_CTX_get_ex_data(ctx, ctx_index);
                if !previous.is_null() {
                    let previous: KeylogCb = std::mem::transmute::<*mut c_void, KeylogCb>(previous);
                    previous(ssl, line);
                }
            }
            let index = SSL_INDEX.load(Ordering::SeqCst);
            if index < 0 {
                return;
            }
            let track = ffi::SSL_get_ex_data(ssl, index) as *mut Track;
            if let (Some(track), Ok(line)) = (track.as_mut(), CStr::from_ptr(line).to_str()) {
                track.on_keylog(line);
            }
        }
    });
}

impl Track {
    fn on_keylog(&mut self, line: &str) {
        let mut parts = line.split(' ');
        let (Some(label), Some(_random), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            return;
        };
        let read = if label.starts_with("CLIENT_TRAFFIC_SECRET_") {
            true
        } else if label.starts_with("SERVER_TRAFFIC_SECRET_") {
            false
        } else {
            return;
        };
        let Some(mut bytes) = decode_hex(secret) else { return };
        if read {
            std::mem::swap(&mut self.client_secret, &mut bytes);
            self.read_records = 0;
            self.read_epoch += 1;
        } else {
            std::mem::swap(&mut self.server_secret, &mut bytes);
            self.write_records = 0;
            self.write_epoch += 1;
        }
        bytes.zeroize();
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 || hex.len() > 128 {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect()
}

/// The tap filter: copies what passes into the connection's [`Tap`], changes nothing.
unsafe extern "C" fn tap_filter(
    f: *mut ffi::ap_filter_t,
    bb: *mut ffi::apr_bucket_brigade,
) -> ffi::apr_status_t {
    // SAFETY: httpd passes a live filter (ctx = the Track it was added with) and brigade.
    unsafe {
        super::guard("tls tap", (), || {
            let track = (*f).ctx as *mut Track;
            let mut len: ffi::apr_off_t = 0;
            if let Some(track) = track.as_mut() {
                if ffi::apr_brigade_length(bb, 1, &mut len) == 0 && len > 0 {
                    let mut copy = vec![0u8; len as usize];
                    let mut got = len as ffi::apr_size_t;
                    if ffi::apr_brigade_flatten(bb, copy.as_mut_ptr() as *mut c_char, &mut got) == 0
                    {
                        track.tap.feed(&copy[..got]);
                    } else {
                        track.tap.broken = true;
                    }
                }
            }
        });
        ffi::ap_pass_brigade((*f).next, bb)
    }
}

/// How many read-side callbacks OpenSSL made on this connection so far (`None`: not tracked):
/// a read that changed it made progress, with or without data.
///
/// # Safety
/// `c` must be a live connection, on its thread.
pub unsafe fn read_activity(c: *mut ffi::conn_rec) -> Option<u64> {
    // SAFETY: per contract; the slot holds our Track or NULL.
    unsafe {
        let track = ffi::ap_get_module_config((*c).conn_config, module::record()) as *const Track;
        track.as_ref().map(|t| t.read_activity)
    }
}

/// A connection whose TLS session may move: its `SSL`, version and suite, checked before the
/// Hello.
pub struct Eligible {
    track: *mut Track,
    ssl: *mut ffi::SSL,
    version: u16,
    suite: u16,
}

/// Whether the connection's session can be handed off at all (TLS 1.2/1.3 with an AEAD suite,
/// no renegotiation, no compression, no h2, no 0-RTT, all secrets known); `Err` says why not.
///
/// # Safety
/// `c` must be the live connection of the current request, on its thread.
pub unsafe fn eligible(c: *mut ffi::conn_rec) -> Result<Eligible, &'static str> {
    // SAFETY: per contract; the Track is ours (pre_handshake) and the SSL it names is alive
    // while the connection is.
    unsafe {
        let track = ffi::ap_get_module_config((*c).conn_config, module::record()) as *mut Track;
        let t = track.as_ref().ok_or("not tracked (push not enabled on a TLS vhost)")?;
        let ssl = t.ssl as *mut ffi::SSL;
        let version = u16::try_from(ffi::SSL_version(ssl)).unwrap_or(0);
        let cipher = ffi::SSL_get_current_cipher(ssl);
        if cipher.is_null() {
            return Err("no cipher");
        }
        let suite = ffi::SSL_CIPHER_get_protocol_id(cipher);
        let suite_ok = match u32::from(version) {
            ffi::TLS1_3_VERSION => SUITES_13.contains(&suite),
            ffi::TLS1_2_VERSION => SUITES_12.contains(&suite),
            _ => return Err("not TLS 1.2 or 1.3"),
        };
        if !suite_ok {
            return Err("not an AEAD suite the daemon continues");
        }
        if t.client_hellos != 1 || t.hello_requests != 0 {
            return Err("renegotiated");
        }
        if !ffi::SSL_get_current_compression(ssl).is_null() {
            return Err("compression");
        }
        let mut alpn: *const u8 = std::ptr::null();
        let mut alpn_len: u32 = 0;
        ffi::SSL_get0_alpn_selected(ssl, &mut alpn, &mut alpn_len);
        if !alpn.is_null() && std::slice::from_raw_parts(alpn, alpn_len as usize) == b"h2" {
            return Err("h2");
        }
        if ffi::SSL_get_early_data_status(ssl) == ffi::SSL_EARLY_DATA_ACCEPTED as c_int {
            return Err("0-RTT data accepted");
        }
        if u32::from(version) == ffi::TLS1_3_VERSION {
            if t.read_epoch == 0 || t.write_epoch == 0 {
                return Err("TLS 1.3 secrets not seen (keylog callback not installed?)");
            }
            if t.key_updates_read + 1 != t.read_epoch || t.key_updates_written + 1 != t.write_epoch
            {
                return Err("KeyUpdate count and secrets disagree");
            }
        }
        Ok(Eligible { track, ssl, version, suite })
    }
}

/// Adds the tap below mod_ssl, before the 101 is written.
///
/// # Safety
/// `c` must be the live connection of `e`.
pub unsafe fn add_tap(c: *mut ffi::conn_rec, e: &Eligible) {
    let rec = TAP.load(Ordering::SeqCst);
    if rec.is_null() {
        return;
    }
    // SAFETY: live connection; the Track outlives the connection's filters (both in c->pool).
    unsafe {
        ffi::ap_add_output_filter_handle(rec, e.track as *mut c_void, std::ptr::null_mut(), c);
    }
}

/// Everything a TLS offer carries.
pub struct Handover {
    pub session: TlsState,
    pub ciphertext: Vec<u8>,
    pub last_record: Vec<u8>,
}

/// Waits (bounded) until nothing of the client's is half-read anywhere, draining what mod_ssl
/// decrypts into `plaintext`, then reads the ciphertext below mod_ssl and captures the state.
/// `Err` says why the session stays with this worker (nothing is lost: the bridge continues
/// with `plaintext`), except after ciphertext was read from below mod_ssl: see the caller.
///
/// # Safety
/// `r` must be the live request of the current handler, after the 101 and `bridge::prepare`.
pub unsafe fn hand_over(
    r: *mut ffi::request_rec,
    e: &Eligible,
    plaintext: &mut Vec<u8>,
    drain: &mut dyn FnMut(usize) -> Result<Vec<u8>, ClientError>,
) -> Result<Handover, String> {
    let deadline = Instant::now() + QUIESCE_FOR;
    // SAFETY: per contract: the Track and SSL of this connection, on its thread.
    unsafe {
        let c = (*r).connection;
        loop {
            // Drain until a read that made no progress at all: after a non-application record
            // (a KeyUpdate, an alert) OpenSSL answers "want read" although more records may
            // wait in the core filter's brigade.
            loop {
                let before = (*e.track).read_activity;
                let room = crate::wire::handoff::MAX_EARLY.saturating_sub(plaintext.len());
                let got = drain(room).map_err(|e| e.to_string())?;
                plaintext.extend_from_slice(&got);
                if got.is_empty() && (*e.track).read_activity == before {
                    break;
                }
            }
            match quiet(e.ssl) {
                Ok(()) => break,
                Err(why) if Instant::now() >= deadline => return Err(why.to_owned()),
                Err(_) => {
                    wait_readable(c, Duration::from_millis(20));
                }
            }
        }
        let t = &*e.track;
        if t.tap.broken || t.tap.last.is_empty() || !t.tap.partial.is_empty() {
            return Err("the last record written is not known".into());
        }
        let ciphertext = read_below_ssl(c)?;
        let session = capture(e, t);
        Ok(Handover { session, ciphertext, last_record: t.tap.last.clone() })
    }
}

/// OpenSSL holds no partial record, no unread data, no half-done handshake, no shutdown.
///
/// # Safety
/// `ssl` must be live, on its connection's thread.
unsafe fn quiet(ssl: *mut ffi::SSL) -> Result<(), &'static str> {
    // SAFETY: per contract; plain state queries.
    unsafe {
        if ffi::SSL_has_pending(ssl) != 0 {
            return Err("OpenSSL holds unprocessed bytes");
        }
        if CStr::from_ptr(ffi::SSL_rstate_string(ssl)) != c"RH" {
            return Err("a record is half read");
        }
        if ffi::SSL_in_init(ssl) != 0 {
            return Err("handshake in progress");
        }
        if ffi::SSL_get_shutdown(ssl) != 0 {
            return Err("shutdown seen or sent");
        }
    }
    Ok(())
}

/// # Safety
/// `c` must be the live connection, on its thread.
unsafe fn wait_readable(c: *mut ffi::conn_rec, timeout: Duration) {
    // SAFETY: per contract; apr_os_sock_get only copies the descriptor number.
    unsafe {
        let sock = ffi::ap_get_conn_socket(c);
        let mut fd: ffi::apr_os_sock_t = -1;
        if sock.is_null() || ffi::apr_os_sock_get(&mut fd, sock) != 0 || fd < 0 {
            return;
        }
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        libc::poll(&mut pfd, 1, timeout.as_millis() as c_int);
    }
}

/// Nonblocking reads of the filter below mod_ssl: ciphertext after OpenSSL's last record.
///
/// # Safety
/// `c` must be the live connection, on its thread.
unsafe fn read_below_ssl(c: *mut ffi::conn_rec) -> Result<Vec<u8>, String> {
    // SAFETY: per contract; the filter list is the connection's, the brigade is emptied after
    // each read and its bytes copied out.
    unsafe {
        let mut f = (*c).input_filters;
        while !f.is_null() {
            let name = (*(*f).frec).name;
            if !name.is_null()
                && CStr::from_ptr(name).to_bytes().eq_ignore_ascii_case(b"SSL/TLS Filter")
            {
                break;
            }
            f = (*f).next;
        }
        if f.is_null() || (*f).next.is_null() {
            return Err("mod_ssl's input filter not found".into());
        }
        let below = (*f).next;
        let bb = ffi::apr_brigade_create((*c).pool, (*c).bucket_alloc);
        let mut out = Vec::new();
        loop {
            let rv = ffi::ap_get_brigade(
                below,
                bb,
                ffi::AP_MODE_READBYTES,
                ffi::APR_NONBLOCK_READ,
                16384,
            );
            let got = rv == 0 && super::request::append_brigade(bb, &mut out);
            ffi::apr_brigade_cleanup(bb as *mut c_void);
            if !got {
                break;
            }
            if out.len() > MAX_CIPHERTEXT {
                return Err("too much ciphertext below mod_ssl".into());
            }
        }
        Ok(out)
    }
}

/// The record-layer state, read at the quiescent point.
///
/// # Safety
/// `e.ssl` must be live, on its connection's thread.
unsafe fn capture(e: &Eligible, t: &Track) -> TlsState {
    let shift = WRITE_SEQ_SHIFT.load(Ordering::SeqCst);
    // TlsState wipes its secrets on drop, so it is filled field by field.
    let mut session = TlsState::default();
    session.version = e.version;
    session.suite = e.suite;
    session.read_seq = t.read_records;
    session.write_seq = t.write_records.saturating_add_signed(shift);
    session.max_plaintext = 16384;
    // SAFETY: per contract; the out buffers are as large as the lengths passed.
    unsafe {
        let ssl = e.ssl;
        session.owes_key_update =
            ffi::SSL_get_key_update_type(ssl) != ffi::SSL_KEY_UPDATE_NONE as c_int;
        let sess = ffi::SSL_get_session(ssl);
        if !sess.is_null() {
            let m = ffi::SSL_SESSION_get_max_fragment_length(sess);
            if (1..=4).contains(&m) {
                session.max_plaintext = 512 << (m - 1);
            }
        }
        if u32::from(e.version) == ffi::TLS1_3_VERSION {
            session.client_secret = t.client_secret.clone();
            session.server_secret = t.server_secret.clone();
        } else if !sess.is_null() {
            let mut master = vec![0u8; 48];
            let n = ffi::SSL_SESSION_get_master_key(sess, master.as_mut_ptr(), master.len());
            master.truncate(n);
            session.master_secret = master;
            let mut client = vec![0u8; 32];
            let n = ffi::SSL_get_client_random(ssl, client.as_mut_ptr(), client.len());
            client.truncate(n);
            session.client_random = client;
            let mut server = vec![0u8; 32];
            let n = ffi::SSL_get_server_random(ssl, server.as_mut_ptr(), server.len());
            server.truncate(n);
            session.server_random = server;
        }
    }
    session
}

/// The daemon adopted the session: OpenSSL must never write a record of its own again (no
/// close_notify when the connection is freed).
///
/// # Safety
/// `e.ssl` must be live.
pub unsafe fn let_go(e: &Eligible) {
    // SAFETY: per contract.
    unsafe { ffi::SSL_set_quiet_shutdown(e.ssl, 1) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut r = vec![kind, 3, 3];
        r.extend_from_slice(&(body.len() as u16).to_be_bytes());
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn the_tap_keeps_the_last_complete_record_whatever_the_chunks() {
        let mut stream = record(23, b"first");
        stream.extend(record(23, &[7u8; 300]));
        stream.extend(record(21, b"al"));
        for chunk in [1, 2, 5, 7, 300, stream.len()] {
            let mut tap = Tap::default();
            for part in stream.chunks(chunk) {
                tap.feed(part);
            }
            assert_eq!(tap.last, record(21, b"al"), "chunks of {chunk}");
            assert!(tap.partial.is_empty() && !tap.broken);
        }
        let mut tap = Tap::default();
        tap.feed(&stream[..stream.len() - 1]);
        assert_eq!(tap.last, record(23, &[7u8; 300]), "an incomplete record is not the last");
        assert!(!tap.partial.is_empty());
        let mut tap = Tap::default();
        tap.feed(&[23, 3, 3, 0xff, 0xff]);
        assert!(tap.broken, "longer than any record");
    }

    #[test]
    fn only_ports_of_push_vhosts_are_tracked() {
        assert!(!tracked_port(8443));
        assert!(remember_port(8443) && remember_port(8443), "idempotent");
        assert!(tracked_port(8443) && !tracked_port(443));
        // The table is finite: when it is full, the caller tracks every port instead.
        let mut n = 10_000;
        while remember_port(n) {
            n += 1;
        }
        assert!(n - 10_000 < PORTS.len() as u16);
    }

    #[test]
    fn keylog_lines_reset_the_counts() {
        let mut t = Track::default();
        (t.read_records, t.write_records) = (5, 7);
        t.on_keylog(&format!("SERVER_TRAFFIC_SECRET_0 {} {}", "ab".repeat(32), "01".repeat(32)));
        assert_eq!((t.write_records, t.write_epoch, t.server_secret.len()), (0, 1, 32));
        assert_eq!(t.read_records, 5);
        t.on_keylog(&format!("CLIENT_TRAFFIC_SECRET_1 {} {}", "ab".repeat(32), "02".repeat(48)));
        assert_eq!((t.read_records, t.read_epoch, t.client_secret.clone()), (0, 1, vec![2u8; 48]));
        t.on_keylog(&format!(
            "CLIENT_HANDSHAKE_TRAFFIC_SECRET {} {}",
            "ab".repeat(32),
            "03".repeat(32)
        ));
        t.on_keylog("EXPORTER_SECRET x zz");
        assert_eq!((t.read_epoch, t.write_epoch), (1, 1), "other labels change nothing");
    }

    #[test]
    fn message_callback_counts_records_and_resets_on_ccs() {
        let mut t = Track::default();
        let arg = &mut t as *mut Track as *mut c_void;
        let call = |write: c_int, ty: u32, bytes: &[u8]| {
            // SAFETY: `arg` points to `t`, alive for the test; the slice is valid.
            unsafe {
                on_message(
                    write,
                    0,
                    ty as c_int,
                    bytes.as_ptr() as *const c_void,
                    bytes.len(),
                    std::ptr::null_mut(),
                    arg,
                )
            }
        };
        for _ in 0..3 {
            call(0, ffi::SSL3_RT_HEADER, &[22, 3, 3, 0, 4]);
        }
        call(0, ffi::SSL3_RT_HEADER, &[20, 3, 3, 0, 1]);
        call(0, ffi::SSL3_RT_HEADER, &[22, 3, 3, 0, 40]);
        call(1, ffi::SSL3_RT_HEADER, &[23, 3, 3, 0, 40]);
        call(0, ffi::SSL3_RT_HANDSHAKE, &[1, 0, 0, 0]);
        call(0, ffi::SSL3_RT_HANDSHAKE, &[24, 0, 0, 1, 1]);
        call(1, ffi::SSL3_RT_HANDSHAKE, &[0, 0, 0, 0]);
        assert_eq!((t.read_records, t.write_records), (1, 1), "the CCS restarted the read count");
        assert_eq!((t.client_hellos, t.key_updates_read, t.hello_requests), (1, 1, 1));
        assert_eq!(t.read_activity, 7);
    }
}
