//! Shared set-up of the black-box tests: a real redis-server, the Nextcloud double and a real
//! apache2 with the module, wired through a generated config.php.
#![allow(dead_code)] // each test binary uses a different part

pub mod client;
pub mod http;

use std::time::Duration;

use testkit::apache::{Apache, ApacheBuilder, Env, Mode};
use testkit::nextcloud::{NextcloudDouble, UID_PATH};
use testkit::redis::RedisServer;
use testkit::Skip;

#[allow(unused_imports)]
pub use client::{Client, Ending, AUTHENTICATED, INVALID_CREDENTIALS, LIMIT_EXCEEDED};

/// Generous bound for anything that should take milliseconds (2 slow cores, parallel tests).
pub const T: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(700);

/// The users the Nextcloud double knows: (login, password, uid).
pub const ALICE: (&str, &str) = ("alice", "alice-password");
pub const BOB: (&str, &str) = ("bob", "bob-password");

/// Every channel a user event arrives on; the daemon subscribes to all at once.
pub const SUBSCRIBED_CHANNEL: &str = "notify_custom";

pub struct Stack {
    pub redis: RedisServer,
    pub nextcloud: NextcloudDouble,
    pub apache: Apache,
}

impl Stack {
    /// redis-server + Nextcloud double + apache2 (event MPM unless `configure` says otherwise,
    /// debouncing off so events arrive at once), ready when the daemon subscribed to Redis.
    pub async fn start(
        mode: Mode,
        configure: impl FnOnce(ApacheBuilder) -> ApacheBuilder,
    ) -> Result<Stack, Skip> {
        Stack::start_with(mode, RedisServer::start()?, start_nextcloud(), configure).await
    }

    /// [`Stack::start`] with a Redis server and Nextcloud double the test made itself (e.g. to
    /// write them into its own config.php).
    pub async fn start_with(
        mode: Mode,
        redis: RedisServer,
        nextcloud: NextcloudDouble,
        configure: impl FnOnce(ApacheBuilder) -> ApacheBuilder,
    ) -> Result<Stack, Skip> {
        let env = Env::require()?;
        let apache = configure(push_builder(&env, &redis, &nextcloud)).start(mode).await;
        let stack = Stack { redis, nextcloud, apache };
        stack.await_subscribed().await;
        Ok(stack)
    }

    /// Waits until the daemon's Redis listener is subscribed (events published before are lost).
    pub async fn await_subscribed(&self) {
        let ok = self.redis.wait_for_subscribers(SUBSCRIBED_CHANNEL, 1, T).await;
        assert!(
            ok,
            "the push daemon did not subscribe to {SUBSCRIBED_CHANNEL} within {T:?}\n{}",
            self.apache.error_log()
        );
    }

    pub fn ws_url(&self) -> String {
        self.apache.ws_url()
    }

    pub async fn login(&self, (user, password): (&str, &str)) -> Client {
        Client::login(&self.ws_url(), user, password, T).await
    }

    /// PUBLISH; returns the number of subscribers that got it (the daemon: 1).
    pub async fn publish(&self, channel: &str, payload: &str) -> i64 {
        let receivers = self.redis.publish(channel, payload);
        assert!(receivers >= 1, "nobody subscribed to {channel}");
        receivers
    }

    /// Publishes a custom message for `user` and waits until `client` receives it: proves the
    /// pipeline user→Redis→daemon→socket is live and that nothing else was queued before it.
    pub async fn roundtrip(&self, client: &mut Client, user: &str, marker: &str) {
        self.publish("notify_custom", &format!(r#"{{"user":"{user}","message":"{marker}"}}"#))
            .await;
        client.expect_text(marker, T).await;
    }

    /// Stops everything and applies the error-log oracle.
    pub fn finish(self) {
        let Stack { redis, nextcloud, apache } = self;
        apache.finish();
        drop(nextcloud);
        drop(redis);
    }
}

/// An Apache with push for `nextcloud` through `redis` (a generated config.php), debouncing off
/// so events arrive at once.
pub fn push_builder(env: &Env, redis: &RedisServer, nextcloud: &NextcloudDouble) -> ApacheBuilder {
    Apache::builder(env)
        .nextcloud_url(&nextcloud.base_url())
        .redis("127.0.0.1", redis.port())
        .vhost_line("NextcloudPushDebounce Off")
}

/// The label a test Apache's daemon puts on its metrics: this machine's hostname, the main
/// server's `ServerName localhost` and its `Listen` port.
pub fn server_label(apache: &Apache) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    format!("{}/localhost:{}", host.trim(), apache.port())
}

/// The Nextcloud double with alice and bob.
/// Writes a FIGURES line straight to stderr, so it shows even when cargo test captures output.
pub fn figure(line: String) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

pub fn start_nextcloud() -> NextcloudDouble {
    NextcloudDouble::start(&[(ALICE.0, ALICE.1, ALICE.0), (BOB.0, BOB.1, BOB.0)])
}

/// Credential checks the double answered so far.
pub fn uid_requests(nextcloud: &NextcloudDouble) -> usize {
    nextcloud.requests_to(UID_PATH).len()
}

/// The `X-Forwarded-For` of the latest credential check.
pub fn last_forwarded_for(nextcloud: &NextcloudDouble) -> Option<String> {
    nextcloud
        .requests_to(UID_PATH)
        .last()
        .and_then(|r| r.header("x-forwarded-for").map(str::to_string))
}
