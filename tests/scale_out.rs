//! Scale-out: two Apache servers (separate server roots, one push daemon each), as behind a load
//! balancer, against one redis-server and one Nextcloud double. Every client gets its events
//! whichever server it reached, pre-auth tokens work on either, the self-test endpoints answer
//! through either, and `notify_query "metrics"` leaves each server's own numbers under its own
//! key. Every test ends with both servers' error-log oracle.

mod common;

use common::http::http;
use common::{Client, ALICE, AUTHENTICATED, BOB, SUBSCRIBED_CHANNEL, T};
use testkit::apache::{Apache, ApacheBuilder, Env, Mode, MODULES_DIR};
use testkit::nextcloud::{HttpResponse, NextcloudDouble};
use testkit::redis::RedisServer;
use testkit::{require, Skip};

struct TwoServers {
    redis: RedisServer,
    nextcloud: NextcloudDouble,
    a: Apache,
    b: Apache,
}

impl TwoServers {
    /// Both servers configured alike (`configure` applies to each), ready when both daemons
    /// subscribed to Redis.
    async fn start(configure: impl Fn(ApacheBuilder) -> ApacheBuilder) -> Result<Self, Skip> {
        let env = Env::require()?;
        let redis = RedisServer::start()?;
        let nextcloud = common::start_nextcloud();
        let builder = || configure(common::push_builder(&env, &redis, &nextcloud));
        let a = builder().start(Mode::Foreground).await;
        let b = builder().start(Mode::Foreground).await;
        assert!(
            redis.wait_for_subscribers(SUBSCRIBED_CHANNEL, 2, T).await,
            "both push daemons subscribe to {SUBSCRIBED_CHANNEL}\nA:\n{}\nB:\n{}",
            a.error_log(),
            b.error_log()
        );
        Ok(TwoServers { redis, nextcloud, a, b })
    }

    /// PUBLISH once; both daemons receive it.
    fn publish(&self, channel: &str, payload: &str) {
        assert_eq!(self.redis.publish(channel, payload), 2, "{channel} reaches both daemons");
    }

    fn custom(&self, user: &str, message: &str) {
        self.publish("notify_custom", &format!(r#"{{"user":"{user}","message":"{message}"}}"#));
    }

    /// Stops both and applies both error-log oracles.
    fn finish(self) {
        let TwoServers { redis, nextcloud, a, b } = self;
        a.finish();
        b.finish();
        drop(nextcloud);
        drop(redis);
    }
}

#[tokio::test]
async fn a_user_gets_each_event_once_on_every_server_and_nothing_of_others() {
    let servers = require!(TwoServers::start(|b| b).await);
    let mut alice_a = Client::login(&servers.a.ws_url(), ALICE.0, ALICE.1, T).await;
    let mut alice_b = Client::login(&servers.b.ws_url(), ALICE.0, ALICE.1, T).await;
    let mut bob_b = Client::login(&servers.b.ws_url(), BOB.0, BOB.1, T).await;

    servers.custom("alice", "for_alice");
    alice_a.expect_text("for_alice", T).await;
    alice_b.expect_text("for_alice", T).await;

    servers.custom("bob", "for_bob");
    bob_b.expect_text("for_bob", T).await;
    // Each daemon delivers in publication order: alice's next frame on either server is the
    // one published after bob's, so bob's never reached her (and "for_alice" came only once).
    servers.custom("alice", "after_bob");
    alice_a.expect_text("after_bob", T).await;
    alice_b.expect_text("after_bob", T).await;
    servers.custom("bob", "bob_again");
    bob_b.expect_text("bob_again", T).await;
    drop((alice_a, alice_b, bob_b));
    servers.finish();
}

#[tokio::test]
async fn pre_auth_tokens_published_once_log_in_on_either_server() {
    let servers = require!(TwoServers::start(|b| b).await);
    let mut barrier_a = Client::login(&servers.a.ws_url(), BOB.0, BOB.1, T).await;
    let mut barrier_b = Client::login(&servers.b.ws_url(), BOB.0, BOB.1, T).await;
    for (round, apache) in [&servers.a, &servers.b].into_iter().enumerate() {
        let token = format!("Xk3pQ7c1N2b5v8m0Lz4r6t9y1u3i5o7{round}");
        servers.publish("notify_pre_auth", &format!(r#"{{"user":"alice","token":"{token}"}}"#));
        // Each daemon handles its messages in order: once bob has the event published after
        // the token, both daemons stored the token.
        let marker = format!("token_{round}_published");
        servers.custom("bob", &marker);
        barrier_a.expect_text(&marker, T).await;
        barrier_b.expect_text(&marker, T).await;

        let checks_before = common::uid_requests(&servers.nextcloud);
        let mut alice = Client::connect(&apache.ws_url(), T).await;
        alice.send_login("", &token).await;
        assert_eq!(alice.next_text(T).await.as_deref(), Ok(AUTHENTICATED), "token {round}");
        assert_eq!(
            common::uid_requests(&servers.nextcloud),
            checks_before,
            "pre-auth does not ask Nextcloud"
        );
        let marker = format!("alice_via_token_{round}");
        servers.custom("alice", &marker);
        alice.expect_text(&marker, T).await;
    }
    drop((barrier_a, barrier_b));
    servers.finish();
}

const TOKEN: &str = "Xk3+pQ/7c1N2b5v8m0Lz4r6t9y1u3i5o";
const APP_VERSION: &str = "1.4.2";

#[tokio::test]
async fn self_test_endpoints_answer_through_either_server() {
    let servers = require!(TwoServers::start(|b| b).await);
    let token = [("token", TOKEN)];
    let redis = &servers.redis;
    redis.set("test-token", TOKEN);
    for round in 0..3u32 {
        let cookie = 29_344_007 + round;
        servers.publish("notify_test_cookie", &cookie.to_string());
        for (name, apache) in [("A", &servers.a), ("B", &servers.b)] {
            let (status, _, body) = http(apache.addr(), "GET", "/push/test/cookie", &token);
            assert_eq!((status, body), (200, cookie.to_string()), "cookie via {name}");
        }
    }

    // POST /test/version asks Nextcloud for the app version (the app writes it to Redis), then
    // stores it as notify_push_version.
    redis.set("notify_push_app_version", APP_VERSION);
    servers.nextcloud.route("GET", "/index.php/apps/notify_push/test/version", |_, _| {
        HttpResponse::text(200, "")
    });
    for (name, apache) in [("A", &servers.a), ("B", &servers.b)] {
        redis.del("notify_push_version");
        let (status, _, body) = http(apache.addr(), "POST", "/push/test/version", &token);
        assert_eq!((status, body.as_str()), (200, "set"), "version via {name}");
        assert_eq!(redis.get("notify_push_version").as_deref(), Some(APP_VERSION), "via {name}");
    }
    servers.finish();
}

/// mod_status with its handler, for the push section of `server-status?auto`.
fn with_status(builder: ApacheBuilder) -> ApacheBuilder {
    builder
        .server_line(format!("LoadModule status_module {MODULES_DIR}/mod_status.so"))
        .server_line("<Location /server-status>\n    SetHandler server-status\n</Location>")
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[tokio::test]
async fn metrics_are_written_per_server_and_occ_reads_the_last_answer() {
    let servers = require!(TwoServers::start(with_status).await);
    let (label_a, label_b) = (common::server_label(&servers.a), common::server_label(&servers.b));
    assert_ne!(label_a, label_b, "two servers on one machine have different labels");
    let mut clients = Vec::new();
    for (apache, user) in [(&servers.a, ALICE), (&servers.a, ALICE), (&servers.b, BOB)] {
        clients.push(Client::login(&apache.ws_url(), user.0, user.1, T).await);
    }

    let key_a = format!("notify_push_metrics:{label_a}");
    let key_b = format!("notify_push_metrics:{label_b}");
    let connections = |key: &str| {
        let text = servers.redis.get(key)?;
        json(&text)["active_connection_count"].as_u64()
    };
    // A session counts once registered, just after its `authenticated`: ask until both
    // servers' own answers show every session.
    let answered = testkit::wait_until_sync(T, || {
        for key in ["notify_push_metrics", key_a.as_str(), key_b.as_str()] {
            servers.redis.del(key);
        }
        servers.publish("notify_query", r#""metrics""#);
        let both = || connections(&key_a).is_some() && connections(&key_b).is_some();
        testkit::wait_until_sync(T / 10, both)
            && connections(&key_a) == Some(2)
            && connections(&key_b) == Some(1)
    });
    assert!(
        answered,
        "each server's own key with its own connections: {key_a} = {:?}, {key_b} = {:?}",
        servers.redis.get(&key_a),
        servers.redis.get(&key_b)
    );

    let own_a = json(&servers.redis.get(&key_a).unwrap());
    let own_b = json(&servers.redis.get(&key_b).unwrap());
    assert_eq!(own_a["server"], label_a.as_str());
    assert_eq!(own_a["active_user_count"], 1);
    assert_eq!(own_b["server"], label_b.as_str());
    assert_eq!(own_b["active_user_count"], 1);
    for key in [&key_a, &key_b] {
        assert!((1..=300).contains(&servers.redis.ttl(key)), "{key} expires");
    }
    // occ notify_push:metrics reads the answer written last: one of the two, named.
    let shared = json(&servers.redis.get("notify_push_metrics").expect("notify_push_metrics"));
    assert!(shared == own_a || shared == own_b, "{shared} is one server's answer");

    // server-status shows the same label.
    for (apache, label) in [(&servers.a, &label_a), (&servers.b, &label_b)] {
        let (status, _, body) = http(apache.addr(), "GET", "/server-status?auto", &[]);
        assert_eq!(status, 200, "{body}");
        let line = format!("NextcloudPushServer: {label}");
        assert!(body.lines().any(|l| l == line), "missing {line:?} in\n{body}");
    }
    drop(clients);
    servers.finish();
}
