//! The self-test endpoints of spec §5 (`/test/cookie`, `/test/reverse_cookie`,
//! `/test/mapping/<id>`, `/test/remote/<ip>`, `POST /test/version`), the pub/sub round trip that
//! makes `/test/cookie` see every `notify_test_cookie` published before the request, and the
//! runtime log level of `notify_config` (spec §6).
//!
//! The Apache glue forwards each `<base>/test/…` request to the daemon, which calls
//! [`Engine::test_request`] and writes the answer back; nothing here knows about Apache.

use crate::Engine;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const TARGET: &str = "nextcloud_push::selftest";
/// How long `/test/cookie` waits for the pub/sub round trip before it answers anyway.
const SYNC_TIMEOUT: Duration = Duration::from_secs(3);
/// How long `/test/cookie` waits for a new cookie to cross a Redis Cluster's bus.
const CLUSTER_PROPAGATION: Duration = Duration::from_millis(500);
/// Upper bound of each Redis command of a test request.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// What a `/test/…` request is answered with (`text/plain; charset=utf-8`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestResponse {
    pub status: u16,
    pub body: String,
}

impl TestResponse {
    fn new(status: u16, body: impl Into<String>) -> TestResponse {
        TestResponse { status, body: body.into() }
    }

    fn ok(body: impl Into<String>) -> TestResponse {
        TestResponse::new(200, body)
    }
}

/// A pending pub/sub round trip: answered once every message received before it was handled.
pub(crate) type SyncRequest = oneshot::Sender<()>;

pub(crate) struct State {
    sync_tx: mpsc::Sender<SyncRequest>,
    /// Taken by the Redis listener, which serves the round trips on its connection.
    pub(crate) sync_rx: tokio::sync::Mutex<mpsc::Receiver<SyncRequest>>,
    /// The log level before the first `notify_config` change, for `"log_restore"`.
    configured_level: Mutex<Option<log::LevelFilter>>,
}

impl Default for State {
    fn default() -> State {
        let (sync_tx, sync_rx) = mpsc::channel(64);
        State {
            sync_tx,
            sync_rx: tokio::sync::Mutex::new(sync_rx),
            configured_level: Mutex::new(None),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum TestRoute {
    Cookie,
    ReverseCookie,
    Mapping(u32),
    Remote(IpAddr),
    Version,
}

fn parse_route(route: &str) -> Option<TestRoute> {
    Some(match route {
        "cookie" => TestRoute::Cookie,
        "reverse_cookie" => TestRoute::ReverseCookie,
        "version" => TestRoute::Version,
        _ => {
            if let Some(id) = route.strip_prefix("mapping/") {
                TestRoute::Mapping(id.parse().ok()?)
            } else if let Some(ip) = route.strip_prefix("remote/") {
                TestRoute::Remote(ip.parse().ok()?)
            } else {
                return None;
            }
        }
    })
}

impl Engine {
    /// Answers `<base>/test/<route>` (spec §5): `route` is the path after `test/`, `token` the
    /// request's `token` header. Unknown routes get 404 with an empty body, `/test/version`
    /// other than POST 405, a missing token 400, a wrong token or a missing Redis `test-token`
    /// 500.
    pub async fn test_request(
        self: &Arc<Self>,
        method: &str,
        route: &str,
        token: Option<&str>,
    ) -> TestResponse {
        let Some(route) = parse_route(route) else { return TestResponse::new(404, "") };
        if route == TestRoute::Version && method != "POST" {
            return TestResponse::new(405, "HTTP method not allowed");
        }
        let Some(token) = token else {
            return TestResponse::new(400, "Missing request header \"token\"");
        };
        match self.redis_get("test-token").await {
            Ok(Some(expected)) if !token.is_empty() && constant_time_eq(&expected, token) => {}
            Ok(Some(_)) => return TestResponse::new(500, "Unhandled rejection: SelfTest(Token)"),
            Ok(None) => {
                return TestResponse::new(
                    500,
                    "Unhandled rejection: Redis(Response type not string compatible: test-token is not set)",
                )
            }
            Err(e) => return TestResponse::new(500, format!("Unhandled rejection: Redis({e})")),
        }
        match route {
            TestRoute::Cookie => {
                let before = self.test_cookie();
                let arrived = self.test_cookie_arrived.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                if let Err(why) = self.sync_events().await {
                    log::debug!(target: TARGET, "/test/cookie without a pub/sub round trip: {why}");
                }
                // In a cluster Nextcloud's PUBLISH may have gone to another node than the one
                // subscribed on, whose copy travels over the cluster bus and can come after our
                // round trip: give a cookie not seen yet a moment to arrive.
                if self.redis.is_cluster() && self.test_cookie() == before {
                    let _ = tokio::time::timeout(CLUSTER_PROPAGATION, arrived).await;
                }
                TestResponse::ok(self.test_cookie().to_string())
            }
            TestRoute::ReverseCookie => match self.nextcloud.test_cookie(token).await {
                Ok(cookie) => TestResponse::ok(cookie.to_string()),
                Err(text) => TestResponse::ok(text),
            },
            TestRoute::Mapping(storage) => {
                TestResponse::ok(self.storage_mapping().root_count(storage).await.to_string())
            }
            TestRoute::Remote(ip) => match self.nextcloud.test_remote(ip, token).await {
                Ok(remote) => TestResponse::ok(remote.to_string()),
                Err(text) => TestResponse::ok(text),
            },
            TestRoute::Version => match self.write_version().await {
                Ok(()) => TestResponse::ok("set"),
                Err(e) => {
                    log::warn!(target: TARGET, "NCP1014: cannot write notify_push_version: {e}");
                    TestResponse::ok("error")
                }
            },
        }
    }

    /// Returns once every pub/sub message Redis delivered before this call has been handled:
    /// a PING on the subscribed connection (Redis answers it after the messages published
    /// earlier), then the listener drains what arrived. Errors when the listener is not
    /// connected within a few seconds.
    pub async fn sync_events(&self) -> Result<(), String> {
        let (done, wait) = oneshot::channel();
        self.selftest.sync_tx.try_send(done).map_err(|e| format!("listener busy: {e}"))?;
        match tokio::time::timeout(SYNC_TIMEOUT, wait).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("the Redis listener dropped the round trip".into()),
            Err(_) => Err(format!("no round trip within {SYNC_TIMEOUT:?} (Redis down?)")),
        }
    }

    /// `POST /test/version`: asks Nextcloud for the app version as the incumbent does at start
    /// (`GET …/apps/notify_push/test/version` makes the app write `notify_push_app_version`),
    /// then writes that version into `notify_push_version`, so the self-test's major.minor
    /// comparison passes after every app update. Without an answer: our own version, with a
    /// warning.
    async fn write_version(&self) -> Result<(), String> {
        let asked = self.nextcloud.request_app_version().await;
        let app = self.redis_get("notify_push_app_version").await.ok().flatten();
        let version = match (asked, app) {
            (Ok(()), Some(app)) if !app.trim().is_empty() => app.trim().to_owned(),
            (asked, _) => {
                let why =
                    asked.err().unwrap_or_else(|| "notify_push_app_version is not set".into());
                let own = env!("CARGO_PKG_VERSION");
                log::warn!(
                    target: TARGET,
                    "NCP1013: cannot learn the notify_push app version from Nextcloud ({why}); \
                     reporting the module's own version {own}, the self-test's version step may fail"
                );
                own.to_owned()
            }
        };
        let mut connection = self.redis_connection().await?;
        tokio::time::timeout(
            REDIS_TIMEOUT,
            redis::cmd("SET")
                .arg("notify_push_version")
                .arg(&version)
                .query_async::<()>(&mut connection),
        )
        .await
        .map_err(|_| "Redis SET timed out".to_string())?
        .map_err(|e| e.to_string())?;
        log::debug!(target: TARGET, "notify_push_version set to {version}");
        Ok(())
    }

    async fn redis_connection(&self) -> Result<crate::redis_conn::Commands, String> {
        tokio::time::timeout(REDIS_TIMEOUT, self.redis.commands())
            .await
            .map_err(|_| "Redis connection timed out".to_string())?
            .map_err(|e| e.to_string())
    }

    async fn redis_get(&self, key: &str) -> Result<Option<String>, String> {
        let mut connection = self.redis_connection().await?;
        tokio::time::timeout(
            REDIS_TIMEOUT,
            redis::cmd("GET").arg(key).query_async::<Option<String>>(&mut connection),
        )
        .await
        .map_err(|_| "Redis GET timed out".to_string())?
        .map_err(|e| e.to_string())
    }

    /// `notify_config {"log_spec": …}` (spec §6): maps the `notify_push=<level>` part (or a bare
    /// level) of a flexi_logger spec onto this process's log level. An unknown spec is ignored
    /// with a warning.
    pub(crate) fn apply_log_spec(&self, spec: &str) {
        let Some(level) = parse_log_spec(spec) else {
            log::warn!(
                target: TARGET,
                "NCP1008: notify_config log spec {:?} not understood (expected e.g. \
                 notify_push=debug); log level unchanged",
                crate::text::clip(spec)
            );
            return;
        };
        if let Ok(mut saved) = self.selftest.configured_level.lock() {
            saved.get_or_insert(log::max_level());
        }
        log::info!(
            target: TARGET,
            "NCP1009: log level set to {level} by notify_config {:?}",
            crate::text::clip(spec)
        );
        log::set_max_level(level);
        crate::log_scope::set_override(Some(level));
        log::info!(target: TARGET, "NCP1009: log level is now {level}");
    }

    /// `notify_config "log_restore"`: back to the level this process was configured with.
    pub(crate) fn restore_log_level(&self) {
        let saved = self.selftest.configured_level.lock().ok().and_then(|mut s| s.take());
        crate::log_scope::set_override(None);
        if let Some(level) = saved {
            log::set_max_level(level);
            log::info!(target: TARGET, "NCP1009: log level restored to {level} by notify_config");
        }
    }
}

/// The level a flexi_logger spec gives the push server: the `notify_push=` (or
/// `nextcloud_push=`) directive if present, else the bare default level. `None` if neither.
pub fn parse_log_spec(spec: &str) -> Option<log::LevelFilter> {
    let mut default = None;
    let mut ours = None;
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some((module, level)) => {
                let module = module.trim();
                if module == "notify_push"
                    || module.starts_with("notify_push::")
                    || module == "nextcloud_push"
                    || module.starts_with("nextcloud_push::")
                {
                    ours = Some(level_filter(level)?);
                }
            }
            None => default = Some(level_filter(part)?),
        }
    }
    ours.or(default)
}

fn level_filter(name: &str) -> Option<log::LevelFilter> {
    Some(match name.trim().to_ascii_lowercase().as_str() {
        "off" => log::LevelFilter::Off,
        "error" => log::LevelFilter::Error,
        "warn" | "warning" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => return None,
    })
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(parse_route("cookie"), Some(TestRoute::Cookie));
        assert_eq!(parse_route("reverse_cookie"), Some(TestRoute::ReverseCookie));
        assert_eq!(parse_route("mapping/42"), Some(TestRoute::Mapping(42)));
        assert_eq!(
            parse_route("remote/1.2.3.4"),
            Some(TestRoute::Remote("1.2.3.4".parse().unwrap()))
        );
        assert_eq!(parse_route("remote/::1"), Some(TestRoute::Remote("::1".parse().unwrap())));
        assert_eq!(parse_route("version"), Some(TestRoute::Version));
        for bad in ["", "cookies", "mapping/x", "mapping/-1", "remote/foo", "remote/", "version/x"]
        {
            assert_eq!(parse_route(bad), None, "{bad}");
        }
    }

    #[test]
    fn log_specs() {
        use log::LevelFilter::*;
        assert_eq!(parse_log_spec("notify_push=debug"), Some(Debug));
        assert_eq!(parse_log_spec("notify_push=debug,warn"), Some(Debug));
        assert_eq!(parse_log_spec("warn,notify_push=trace"), Some(Trace));
        assert_eq!(parse_log_spec("trace"), Some(Trace));
        assert_eq!(parse_log_spec("INFO"), Some(Info));
        assert_eq!(parse_log_spec("other=debug,error"), Some(Error));
        assert_eq!(parse_log_spec("notify_push=loud"), None);
        assert_eq!(parse_log_spec("other=debug"), None);
        assert_eq!(parse_log_spec(""), None);
        // Every name of the push server's logger, and only those.
        assert_eq!(parse_log_spec("error,notify_push::ws=trace"), Some(Trace));
        assert_eq!(parse_log_spec("error,nextcloud_push=debug"), Some(Debug));
        assert_eq!(parse_log_spec("error,nextcloud_push::redis=info"), Some(Info));
        assert_eq!(parse_log_spec("error,notify_pushy=trace"), Some(Error));
        assert_eq!(parse_log_spec("error,nextcloud_pusher::x=trace"), Some(Error));
    }

    #[test]
    fn token_compare() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "abcd"));
    }
}
