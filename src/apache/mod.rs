//! The httpd glue: everything that runs in Apache's processes (the parent and its children)
//! and touches httpd or APR. The push daemon (`crate::daemon`) is reached only through the fork
//! in [`process`] and the protocol in `crate::wire`.
//!
//! - [`module`]: the exported module record, `register_hooks` and the hook trampolines;
//! - [`directives`] and [`server_config`]: the `NextcloudPush*` directives and their pool-owned
//!   per-server storage;
//! - [`lifecycle`]: `check_config`, `post_config`, the push daemon's spawn/watch/respawn/stop in
//!   the Apache parent; the decisions it applies are the pure functions of [`plan`], the state
//!   that survives restarts is [`retained`] (`ap_retained_data`);
//! - [`process`]: what the forked daemon does before it runs safe code (fork hygiene);
//! - [`stop_notice`]: the parent's stop signals, passed on to the daemon before the children stop;
//! - [`handler`] and [`request`]: claiming `<base>/…` and the WebSocket upgrade + handoff;
//! - [`tls`]: the TLS session handoff (mod_ssl's optional hooks, record counting, the tap filter
//!   below mod_ssl, the quiescent point);
//! - [`bridge`]: the worker-held plaintext relay for WebSockets over TLS that cannot move;
//! - [`status`]: the push section of mod_status's server-status page;
//! - [`vouch`]: the client-IP vouching hook (`post_read_request`) and the vhost's own address;
//! - [`log`]: the `log` backend (`ap_log_error_` in Apache, stderr lines in the daemon);
//! - [`ffi`] and [`pool`]: the bindgen bindings and APR pool helpers.
//!
//! Rules: every `extern "C"` callback is a short trampoline that runs a safe body inside
//! `catch_unwind` (a panic must never unwind into httpd); every `unsafe` block says why it is
//! sound.
#![allow(unsafe_code)]
// Unit-test binaries carry no module record, so the hook trampolines are unused there.
#![cfg_attr(test, allow(dead_code))]

pub mod bridge;
pub mod directives;
pub mod ffi;
pub mod handler;
pub mod lifecycle;
pub mod log;
pub mod module;
pub mod plan;
pub mod pool;
pub mod process;
pub mod request;
pub mod retained;
pub mod server_config;
pub mod status;
pub mod stop_notice;
pub mod tls;
pub mod vouch;

use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `body`, turning a panic into `on_panic` after logging it (NCP0002). Used by every
/// trampoline: unwinding into C is undefined behaviour and would take httpd down.
pub(crate) fn guard<T>(what: &str, on_panic: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_owned());
            ::log::error!(target: "nextcloud_push::apache", "NCP0002: panic in {what}: {msg}");
            on_panic
        }
    }
}
