//! Two Nextcloud instances behind one Apache: two virtual hosts with their own config.php (own
//! Nextcloud, own Redis) are served by one push daemon with one engine each, and nothing crosses
//! from one instance to the other.

mod common;

use common::{Client, ALICE, BOB, INVALID_CREDENTIALS, T};
use testkit::apache::{self, Apache, Env, Mode};
use testkit::nextcloud::NextcloudDouble;
use testkit::redis::RedisServer;
use testkit::require;

#[tokio::test]
async fn two_vhosts_with_their_own_nextcloud_and_redis_share_one_daemon() {
    let env = require!(Env::require());
    let (redis_a, redis_b) = (require!(RedisServer::start()), require!(RedisServer::start()));
    // Instance A knows alice, instance B knows bob.
    let nextcloud_a = NextcloudDouble::start(&[(ALICE.0, ALICE.1, ALICE.0)]);
    let nextcloud_b = NextcloudDouble::start(&[(BOB.0, BOB.1, BOB.0)]);
    let port_b = apache::free_port();
    let config_b = apache::nextcloud_config_php(
        &nextcloud_b.base_url(),
        "127.0.0.1",
        redis_b.port(),
        std::path::Path::new("{root}/data-b"),
    );
    let apache = Apache::builder(&env)
        .nextcloud_url(&nextcloud_a.base_url())
        .redis("127.0.0.1", redis_a.port())
        .vhost_line("NextcloudPushDebounce Off")
        .extra_file("nextcloud-b/config/config.php", &config_b)
        .extra_database("data-b/nextcloud.db")
        .server_line(format!("Listen 127.0.0.1:{port_b}"))
        .server_line(format!(
            "<VirtualHost 127.0.0.1:{port_b}>\n    ServerName cloud-b.localhost\n    \
             DocumentRoot \"{{root}}/nextcloud-b\"\n    \
             NextcloudPushConfig \"{{root}}/nextcloud-b/config/config.php\"\n    \
             NextcloudPushDebounce Off\n</VirtualHost>"
        ))
        .start(Mode::Foreground)
        .await;
    for redis in [&redis_a, &redis_b] {
        assert!(redis.wait_for_subscribers("notify_custom", 1, T).await, "{}", apache.error_log());
    }
    let url_a = apache.ws_url();
    let url_b = format!("ws://127.0.0.1:{port_b}/push/ws");

    let mut alice = Client::login(&url_a, ALICE.0, ALICE.1, T).await;
    let mut bob = Client::login(&url_b, BOB.0, BOB.1, T).await;
    // Each vhost checks logins against its own Nextcloud.
    let mut alice_on_b = Client::connect(&url_b, T).await;
    alice_on_b.send_login(ALICE.0, ALICE.1).await;
    let (texts, _) = alice_on_b.expect_end(T).await;
    assert_eq!(texts, [INVALID_CREDENTIALS]);
    assert_eq!(nextcloud_a.requests().len(), 1, "instance A's Nextcloud got B's login");

    // An event on B's Redis for "alice" is B's alice, who is not connected: A's alice gets nothing.
    redis_b.publish("notify_custom", r#"{"user":"alice","message":"from_b"}"#);
    redis_b.publish("notify_custom", r#"{"user":"bob","message":"for_bob_on_b"}"#);
    bob.expect_text("for_bob_on_b", T).await;
    redis_a.publish("notify_custom", r#"{"user":"alice","message":"for_alice_on_a"}"#);
    alice.expect_text("for_alice_on_a", T).await;
    redis_a.publish("notify_custom", r#"{"user":"bob","message":"from_a"}"#);
    redis_b.publish("notify_activity", r#"{"user":"bob"}"#);
    bob.expect_text("notify_activity", T).await;

    let daemons: Vec<_> = apache::processes()
        .into_iter()
        .filter(|p| p.ppid == apache.pid() && p.comm == apache::DAEMON_NAME)
        .collect();
    assert_eq!(daemons.len(), 1, "one push daemon for both vhosts: {daemons:?}");
    apache.finish();
}
