//! mod_nextcloud_push: Nextcloud Client Push (notify_push) served by Apache httpd.
//!
//! Apache children claim `<NextcloudPushPath>/ws`, validate the WebSocket upgrade, send the
//! `101` and hand the client socket to one push daemon that the module forks from the Apache
//! parent; the daemon runs the engine (`nextcloud-push-engine`) on tokio. See
//! `docs/internals.md` for the contract between the parts and `apache/nextcloud_push.conf` for
//! the directives.
//!
//! Layout, one folder per process and one for what they share:
//! - [`apache`]: the httpd glue, running in Apache's processes (parent and children); the only
//!   place that touches httpd and APR;
//! - [`daemon`]: the push daemon's side, forked from the Apache parent (safe code);
//! - [`wire`]: the protocol between the two, both sides of it (safe code);
//! - [`sys`]: plain libc behind safe signatures, for both;
//! - [`config`]: the directive values; [`error`]: the error types; [`log_ids`]: the message ids.
//!
//! `apache` and `daemon` meet only at the fork (`apache::process` calls [`daemon::run`]).
#![deny(unsafe_code)]

pub mod apache;
pub mod config;
pub mod daemon;
pub mod error;
pub mod log_ids;
pub mod sys;
pub mod wire;
