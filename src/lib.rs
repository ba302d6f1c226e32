//! mod_nextcloud_push: Nextcloud Client Push (notify_push) served by Apache httpd.
//!
//! Apache children claim `<NextcloudPushPath>/ws`, validate the WebSocket upgrade, send the
//! `101` and hand the client socket to one push daemon that the module forks from the Apache
//! parent; the daemon runs the engine (`nextcloud-push-engine`) on tokio. See
//! `docs/internals.md` for the contract between the parts and `apache/nextcloud_push.conf` for
//! the directives.
//!
//! Layout: [`apache`] is the only module with `unsafe` (httpd, APR and system calls);
//! [`config`], [`handshake`] and [`handoff`] are pure and unit-tested; [`daemon`] is the
//! daemon's safe part. Message ids are listed in [`error`].
#![deny(unsafe_code)]

pub mod apache;
pub mod config;
pub mod control;
pub mod daemon;
pub mod error;
pub mod handoff;
pub mod handshake;
