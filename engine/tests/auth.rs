//! Login (spec §1.3): credentials checked against the Nextcloud double, pre-auth tokens, every
//! error string, the auth timeout, the client IP chain forwarded to Nextcloud.

mod common;

use common::{Harness, FRAME, QUIET};
use std::time::Duration;
use testkit::require;
use testkit::ws::{opcode, RawWs, WsClient, WsEnd};
use tokio_tungstenite::tungstenite::Message;

const NC_ERR: &str = "err: Error while sending authentication request to nextcloud: ";

/// Logs in with the given credentials and returns what the server sent before the end.
async fn login_failure(client: &mut WsClient, user: &str, password: &str) -> (Vec<String>, WsEnd) {
    client.login(user, password).await;
    client.next_end(FRAME).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_ok_and_uid_from_nextcloud_body() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let mut foo = h.login("foo", "bar").await;
        // login with an email address: the uid is the body Nextcloud returned
        let mut alice = h.login("alice@example.com", "wonderland").await;
        h.publish("notify_activity", r#"{"user":"alice"}"#).await;
        assert_eq!(alice.next_text(FRAME).await, Ok("notify_activity".into()));
        foo.assert_no_message(QUIET).await;

        let requests = h.nextcloud.requests_to(testkit::nextcloud::UID_PATH);
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].method, "GET");
        assert_eq!(requests[0].basic_auth(), Some(("foo".into(), "bar".into())));
        assert_eq!(requests[0].header("authorization"), Some("Basic Zm9vOmJhcg=="));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_invalid_credentials_then_close_1008() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let mut client = h.client().await;
        let (texts, end) = login_failure(&mut client, "foo", "not_bar").await;
        assert_eq!(texts, vec!["err: Invalid credentials"]);
        assert!(matches!(end, WsEnd::Closed(Some((1008, _)))), "{end:?}");
        assert_eq!(h.engine.metrics().active_connection_count, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_trimmed() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let mut client = h.client().await;
        client.login(" foo\n", "bar\r\n").await;
        assert_eq!(client.next_text(FRAME).await, Ok("authenticated".into()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_username_without_token_fails_without_calling_nextcloud() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let mut client = h.client().await;
        let (texts, _) = login_failure(&mut client, "", "whatever").await;
        assert_eq!(texts, vec!["err: Invalid credentials"]);
        assert!(h.nextcloud.requests().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_text_auth_frame_is_invalid_message() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let mut client = h.client().await;
        client.send(Message::Binary(b"foo".to_vec().into())).await;
        let (texts, end) = client.next_end(FRAME).await;
        assert_eq!(texts, vec!["err: Invalid authentication message"]);
        assert!(matches!(end, WsEnd::Closed(Some((1008, _)))), "{end:?}");

        let mut client = h.client().await;
        client.send_text("foo").await;
        client.send(Message::Ping(b"x".to_vec().into())).await;
        let (texts, _) = client.next_end(FRAME).await;
        assert_eq!(texts, vec!["err: Invalid authentication message"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nextcloud_server_error() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        h.nextcloud.force_status(Some(500));
        let mut client = h.client().await;
        let (texts, end) = login_failure(&mut client, "foo", "bar").await;
        assert_eq!(texts, vec![format!("{NC_ERR}Server error: 500 Internal Server Error")]);
        // Nextcloud's failure, not the client's: 1011
        assert!(matches!(end, WsEnd::Closed(Some((1011, _)))), "{end:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nextcloud_client_error() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        h.nextcloud.force_status(Some(429));
        let mut client = h.client().await;
        let (texts, _) = login_failure(&mut client, "foo", "bar").await;
        assert_eq!(texts, vec![format!("{NC_ERR}Client error: 429 Too Many Requests")]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nextcloud_unexpected_status() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        h.nextcloud.force_status(Some(204));
        let mut client = h.client().await;
        let (texts, _) = login_failure(&mut client, "foo", "bar").await;
        assert_eq!(texts, vec![format!("{NC_ERR}Unexpected status code: 204 No Content")]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nextcloud_unreachable() {
    common::time_limit(async {
        let redis = require!(testkit::redis::RedisServer::start());
        let nextcloud = testkit::nextcloud::NextcloudDouble::start(common::USERS);
        let mut overrides = common::overrides(&redis, &nextcloud);
        // a port nobody listens on
        overrides.nextcloud_url = Some(format!("http://127.0.0.1:{}/", testkit::free_port()));
        let config = nextcloud_push_engine::EngineConfig::load(None, &overrides).unwrap();
        let h = Harness::serve(redis, nextcloud, config).await;
        let mut client = h.client().await;
        let (texts, _) = login_failure(&mut client, "foo", "bar").await;
        assert_eq!(texts.len(), 1, "{texts:?}");
        let prefix = format!("{NC_ERR}Error while connecting to nextcloud: ");
        assert!(texts[0].starts_with(&prefix), "{:?}", texts[0]);
        assert!(texts[0].len() > prefix.len(), "the reqwest error is missing: {:?}", texts[0]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_timeout_when_nextcloud_is_slow() {
    common::time_limit(async {
        let h = require!(
            Harness::start_with(|c| c.timing.auth_timeout = Duration::from_millis(700)).await
        );
        h.nextcloud.set_delay(Duration::from_secs(3));
        let mut client = h.client().await;
        let started = std::time::Instant::now();
        let (texts, end) = login_failure(&mut client, "foo", "bar").await;
        assert_eq!(texts, vec!["Authentication timeout"]);
        assert!(matches!(end, WsEnd::Closed(Some((1008, _)))), "{end:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the timeout did not cut the Nextcloud call"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_timeout_counts_from_the_upgrade() {
    common::time_limit(async {
        let h = require!(
            Harness::start_with(|c| c.timing.auth_timeout = Duration::from_millis(500)).await
        );
        let mut client = h.client().await;
        client.send_text("foo").await;
        let (texts, _) = client.next_end(FRAME).await;
        assert_eq!(texts, vec!["Authentication timeout"]);
    })
    .await;
}

#[test]
fn production_auth_timeout_is_15s() {
    let timing = nextcloud_push_engine::Timing::default();
    assert_eq!(timing.auth_timeout, Duration::from_secs(15));
    assert_eq!(timing.pre_auth_ttl, Duration::from_secs(15));
    assert_eq!(timing.ping_interval, Duration::from_secs(30));
    assert_eq!(timing.tick, Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_auth_token_single_use_any_username() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        h.publish("notify_pre_auth", r#"{"user":"foo","token":"tok-123"}"#).await;
        let mut client = h.client().await;
        client.login("whatever", "tok-123").await;
        assert_eq!(client.next_text(FRAME).await, Ok("authenticated".into()));
        assert!(h.nextcloud.requests().is_empty(), "a pre-auth login must not call Nextcloud");
        h.publish("notify_activity", r#"{"user":"foo"}"#).await;
        assert_eq!(client.next_text(FRAME).await, Ok("notify_activity".into()));

        // single use: the same token again fails (empty username → no Nextcloud call)
        let mut again = h.client().await;
        let (texts, _) = login_failure(&mut again, "", "tok-123").await;
        assert_eq!(texts, vec!["err: Invalid credentials"]);

        // the web client's form: '' then the token
        h.publish("notify_pre_auth", r#"{"user":"foo2","token":"tok-456"}"#).await;
        let mut web = h.client().await;
        web.login("", "tok-456").await;
        assert_eq!(web.next_text(FRAME).await, Ok("authenticated".into()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_auth_token_expires() {
    common::time_limit(async {
        let h = require!(
            Harness::start_with(|c| c.timing.pre_auth_ttl = Duration::from_millis(300)).await
        );
        h.publish("notify_pre_auth", r#"{"user":"foo","token":"short-lived"}"#).await;
        // the condition is the passing of time itself
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut client = h.client().await;
        let (texts, _) = login_failure(&mut client, "", "short-lived").await;
        assert_eq!(texts, vec!["err: Invalid credentials"]);
    })
    .await;
}

/// Publishing a token purges only the expired ones: tokens published in a row (within their
/// TTL) all stay valid, an expired one does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_auth_tokens_published_in_a_row_all_log_in() {
    common::time_limit(async {
        let h = require!(
            Harness::start_with(|c| c.timing.pre_auth_ttl = Duration::from_millis(1500)).await
        );
        h.publish("notify_pre_auth", r#"{"user":"foo","token":"tok-old"}"#).await;
        // the condition is the passing of time itself
        tokio::time::sleep(Duration::from_millis(1700)).await;
        for token in ["tok-a", "tok-b", "tok-c"] {
            h.publish("notify_pre_auth", &format!(r#"{{"user":"foo2","token":"{token}"}}"#)).await;
        }
        for token in ["tok-a", "tok-b", "tok-c"] {
            let mut client = h.client().await;
            client.login("", token).await;
            assert_eq!(
                client.next_text(FRAME).await,
                Ok("authenticated".into()),
                "{token} was published after tok-old and within its TTL"
            );
        }
        let mut client = h.client().await;
        let (texts, _) = login_failure(&mut client, "", "tok-old").await;
        assert_eq!(texts, vec!["err: Invalid credentials"], "tok-old expired");
        assert!(h.nextcloud.requests().is_empty(), "pre-auth logins must not call Nextcloud");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_chain_reaches_nextcloud() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let url = h.ws_url();
        let mut client =
            WsClient::connect_with_headers(&url, &[("X-Forwarded-For", "203.0.113.7, 10.0.0.2")])
                .await;
        client.login_ok("foo", "bar").await;
        let mut bad_xff = WsClient::connect_with_headers(
            &url,
            &[("X-Forwarded-For", "203.0.113.7, unknown"), ("X-Real-IP", "198.51.100.4")],
        )
        .await;
        bad_xff.login_ok("foo", "bar").await;
        let mut plain = h.client().await;
        plain.login_ok("foo", "bar").await;

        let xff: Vec<_> = h
            .nextcloud
            .requests_to(testkit::nextcloud::UID_PATH)
            .iter()
            .map(|r| r.header("x-forwarded-for").unwrap_or("<none>").to_string())
            .collect();
        assert_eq!(
            xff,
            vec!["203.0.113.7, 10.0.0.2, 127.0.0.1", "198.51.100.4, 127.0.0.1", "127.0.0.1"]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_frames_before_authenticated_are_kept() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        // slow Nextcloud: the listen frame is certainly in the socket before auth completes
        h.nextcloud.set_delay(Duration::from_millis(300));
        let addr = h.addr.to_string();
        let mut raw =
            RawWs::connect(&addr, "/push/ws", &[], &["foo", "bar", "listen notify_file_id"]).await;
        assert_eq!(raw.status(), 101);
        assert_eq!(raw.next_text(FRAME).await, Ok("authenticated".into()));
        h.publish("notify_storage_update", r#"{"storage":10,"path":"files/a","file_id":5}"#).await;
        assert_eq!(raw.next_text(FRAME).await, Ok("notify_file_id [5]".into()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_auth_frame_is_refused() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let addr = h.addr.to_string();
        let mut raw = RawWs::connect(&addr, "/ws", &[], &[]).await;
        raw.send_frame(opcode::TEXT, &vec![b'a'; 5000]).await;
        // no `authenticated`: the connection ends with 1009 (message too big)
        loop {
            match raw.read_frame(FRAME).await {
                Ok(frame) if frame.opcode == opcode::CLOSE => {
                    assert_eq!(frame.payload.get(..2), Some(&1009u16.to_be_bytes()[..]));
                    break;
                }
                Ok(frame) => assert_ne!(frame.text(), Some("authenticated")),
                Err(other) => panic!("{other:?}"),
            }
        }
        assert!(h.nextcloud.requests().is_empty());
    })
    .await;
}

/// Incoming frames up to 4 KiB are read whole even though the session's read buffer is smaller
/// (tungstenite grows it for the frame); 4097 bytes are refused. A username of blanks trims to
/// empty, so the 4000-byte frame is answered without calling Nextcloud.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_of_4_kib_are_accepted_before_auth_and_larger_ones_refused() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let blanks = " ".repeat(4000);
        // pipelined with the upgrade request (early data) and sent after it
        let mut early = RawWs::connect(&h.addr.to_string(), "/ws", &[], &[&blanks, "x"]).await;
        assert_eq!(early.next_text(FRAME).await, Ok("err: Invalid credentials".into()));
        let mut late = RawWs::connect(&h.addr.to_string(), "/ws", &[], &[]).await;
        late.send_text(&blanks).await;
        late.send_text("x").await;
        assert_eq!(late.next_text(FRAME).await, Ok("err: Invalid credentials".into()));

        let mut large = RawWs::connect(&h.addr.to_string(), "/ws", &[], &[]).await;
        // nothing after it: the connection may already be gone (reset) when a second frame is sent
        large.send_text(&" ".repeat(4097)).await;
        let end = large.next_text(FRAME).await;
        assert!(matches!(end, Err(WsEnd::Closed(Some((1009, _))))), "{end:?}");
    })
    .await;
}

/// RFC 6455 §7.4.1: a client that breaks the protocol is told why in a Close frame, before and
/// after login: 1002 for a protocol violation (an unmasked frame, a reserved bit, an unknown
/// opcode), 1007 for a text frame that is not UTF-8, 1009 for a message over 4 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_are_answered_with_their_close_code() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let addr = h.addr.to_string();
        let mut reserved_bit = testkit::ws::client_frame(opcode::TEXT, b"hi");
        reserved_bit[0] |= 0x40;
        let cases: [(&str, Vec<u8>, u16); 5] = [
            ("unmasked frame", vec![0x81, 0x02, b'h', b'i'], 1002),
            ("reserved bit", reserved_bit, 1002),
            ("unknown opcode", testkit::ws::client_frame(0x3, b"x"), 1002),
            ("invalid UTF-8", testkit::ws::client_frame(opcode::TEXT, b"a\xff\xfe"), 1007),
            ("5000-byte message", testkit::ws::client_frame(opcode::TEXT, &[b'a'; 5000]), 1009),
        ];
        for logged_in in [false, true] {
            for (what, bytes, code) in &cases {
                let login: &[&str] = if logged_in { &["foo", "bar"] } else { &[] };
                let mut raw = RawWs::connect(&addr, "/ws", &[], login).await;
                if logged_in {
                    assert_eq!(raw.next_text(FRAME).await, Ok("authenticated".into()));
                }
                raw.send_raw(bytes).await;
                let end = raw.next_text(FRAME).await;
                assert!(
                    matches!(end, Err(WsEnd::Closed(Some((c, _)))) if c == *code),
                    "{what} (logged in: {logged_in}): {end:?}"
                );
            }
        }
    })
    .await;
}

/// When Apache stops, the daemon first closes the engine's connections to Nextcloud; a login
/// after that is refused without a request to Nextcloud, and sessions already logged in go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_login_reaches_nextcloud_once_its_connections_are_closed() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let mut before = h.login("foo", "bar").await;
        h.nextcloud.clear_requests();
        h.engine.close_nextcloud_connections();
        let mut client = h.client().await;
        let (texts, end) = login_failure(&mut client, "foo", "bar").await;
        assert_eq!(
            texts,
            ["err: Error while sending authentication request to nextcloud: the push server is \
              shutting down"],
            "a login after close"
        );
        assert_eq!(end, WsEnd::Closed(Some((1011, "authentication unavailable".into()))));
        assert!(h.nextcloud.requests().is_empty(), "a login reached Nextcloud after close");
        h.publish("notify_activity", r#"{"user":"foo"}"#).await;
        assert_eq!(before.next_text(FRAME).await, Ok("notify_activity".into()));
    })
    .await;
}
