//! Test fixtures for mod_nextcloud_push: a real `redis-server` per test ([`redis`]), a Nextcloud
//! HTTP double ([`nextcloud`]), WebSocket client helpers ([`ws`]), a real `apache2` harness
//! ([`apache`]) and HTTPS for it ([`tls`]: per-run CA and certificate, `wss://` clients).
//!
//! Fixtures that need an external binary return `Result<_, Skip>`: tests turn a [`Skip`] into a
//! printed skip reason with [`require!`]. Under `CI=true` a missing binary panics instead, with
//! what to install.
pub mod apache;
pub mod db;
pub mod limits;
pub mod nextcloud;
pub mod redis;
pub mod redis_cluster;
pub mod tls;
pub mod ws;

use std::fmt;
use std::future::Future;
use std::time::Duration;

/// Why a fixture is not available on this machine (the test is skipped, not failed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip(pub String);

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Skip {}

/// `let redis = require!(RedisServer::start());` — unwraps a fixture or prints
/// `SKIPPED: <reason>` to stderr and returns from the (unit-returning) test.
#[macro_export]
macro_rules! require {
    ($fixture:expr) => {
        match $fixture {
            Ok(value) => value,
            Err(skip) => {
                eprintln!("SKIPPED: {}", skip);
                return;
            }
        }
    };
}

/// `true` when running under CI (`CI=true`): missing fixtures must fail there, not skip.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Finds an executable in `PATH` (or the absolute path itself).
pub fn find_binary(name: &str) -> Option<std::path::PathBuf> {
    let candidate = std::path::Path::new(name);
    if candidate.is_absolute() {
        return candidate.is_file().then(|| candidate.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|path| path.is_file())
    })
}

/// A free TCP port on 127.0.0.1 (bound and released; a tiny race with other processes remains).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("cannot bind 127.0.0.1:0")
}

/// Polls an async condition every 10 ms until it holds; `false` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Blocking variant of [`wait_until`] for sync code.
pub fn wait_until_sync(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
