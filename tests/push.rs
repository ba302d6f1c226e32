//! Black-box tests of the push WebSocket through a real apache2 (event MPM, `-DFOREGROUND`), a
//! real redis-server and the Nextcloud double: authentication, events, isolation, the handoff
//! edge cases (pipelined bytes, refused upgrades, 503, the single 101), limits and Redis outages.
//! Every test ends with the error-log oracle ([`Stack::finish`]).

mod common;

use std::time::Duration;

use common::client::{
    masked_text_frame, raw_request, read_at_least, server_text_frame, status_of, upgrade_request,
    ACCEPT_FOR_SAMPLE_KEY,
};
use common::{
    Client, Ending, Stack, ALICE, AUTHENTICATED, BOB, INVALID_CREDENTIALS, LIMIT_EXCEEDED, QUIET, T,
};
use testkit::apache::{self, Mode, Mpm};
use testkit::require;
use tokio::io::AsyncWriteExt;

async fn stack() -> Result<Stack, testkit::Skip> {
    Stack::start(Mode::Foreground, |b| b).await
}

#[tokio::test]
async fn login_succeeds_with_good_and_fails_with_bad_credentials() {
    let stack = require!(stack().await);
    let mut alice = stack.login(ALICE).await;

    let mut wrong = Client::connect(&stack.ws_url(), T).await;
    wrong.send_login(ALICE.0, "not-the-password").await;
    let (texts, ending) = wrong.expect_end(T).await;
    assert_eq!(texts, [INVALID_CREDENTIALS]);
    assert!(matches!(ending, Ending::CloseFrame(Some((1008, _)))), "{ending:?}");

    let mut nobody = Client::connect(&stack.ws_url(), T).await;
    nobody.send_login("", "whatever").await;
    let (texts, _) = nobody.expect_end(T).await;
    assert_eq!(texts, [INVALID_CREDENTIALS], "an empty username never authenticates");

    // Login frames are trimmed (websocat sends a trailing newline).
    let mut trimmed = Client::connect(&stack.ws_url(), T).await;
    trimmed.send_login(&format!(" {}\n", BOB.0), &format!("{}\n", BOB.1)).await;
    trimmed.expect_text(AUTHENTICATED, T).await;

    stack.roundtrip(&mut alice, "alice", "still_here").await;
    stack.roundtrip(&mut trimmed, "bob", "bob_too").await;
    stack.finish();
}

#[tokio::test]
async fn pre_auth_token_logs_in_once_without_asking_nextcloud() {
    let stack = require!(stack().await);
    let mut barrier = stack.login(BOB).await;
    let token = "Xk3pQ7c1N2b5v8m0Lz4r6t9y1u3i5o7p";
    stack.publish("notify_pre_auth", &format!(r#"{{"user":"alice","token":"{token}"}}"#)).await;
    // An event published after the token that has reached a client makes it very likely the
    // daemon stored the token; a login that still races it is retried (bounded).
    stack.roundtrip(&mut barrier, "bob", "token_published").await;

    let mut accepted = None;
    for _ in 0..20 {
        let calls_before = common::uid_requests(&stack.nextcloud);
        let mut c = Client::connect(&stack.ws_url(), T).await;
        // The token is checked first, whatever the username.
        c.send_login("whatever", token).await;
        match c.next_text(T).await.as_deref() {
            Ok(AUTHENTICATED) => {
                assert_eq!(
                    common::uid_requests(&stack.nextcloud),
                    calls_before,
                    "pre-auth must not call Nextcloud"
                );
                accepted = Some(c);
                break;
            }
            Ok(INVALID_CREDENTIALS) => continue,
            other => panic!("unexpected answer to a pre-auth login: {other:?}"),
        }
    }
    let mut c = accepted.expect("the pre-auth token was never accepted");
    stack.roundtrip(&mut c, "alice", "for_alice_via_token").await;

    // Single use.
    let mut again = Client::connect(&stack.ws_url(), T).await;
    again.send_login("whatever", token).await;
    let (texts, _) = again.expect_end(T).await;
    assert_eq!(texts, [INVALID_CREDENTIALS]);
    stack.finish();
}

#[tokio::test]
async fn every_user_event_reaches_its_user() {
    let stack = require!(stack().await);
    let mut alice = stack.login(ALICE).await;
    let cases: [(&str, &str, &str); 7] = [
        ("notify_activity", r#"{"user":"alice"}"#, "notify_activity"),
        ("notify_notification", r#"{"user":"alice"}"#, "notify_notification"),
        (
            "notify_custom",
            r#"{"user":"alice","message":"my_msg","body":{"a":[1, 2],"b":"x y"}}"#,
            r#"my_msg {"a":[1,2],"b":"x y"}"#,
        ),
        ("notify_custom", r#"{"user":"alice","message":"plain_msg"}"#, "plain_msg"),
        ("notify_custom", r#"{"user":"alice","message":"null_body","body":null}"#, "null_body"),
        ("notify_user_share_created", r#"{"user":"alice"}"#, "notify_file"),
        ("notify_group_membership_update", r#"{"user":"alice","group":"staff"}"#, "notify_file"),
    ];
    for (channel, payload, expected) in cases {
        stack.publish(channel, payload).await;
        match alice.next_text(T).await {
            Ok(text) => assert_eq!(text, expected, "{channel} {payload}"),
            Err(why) => panic!("{channel} {payload}: expected {expected:?}: {why}"),
        }
    }
    stack.finish();
}

#[tokio::test]
async fn events_are_debounced_but_delivered_with_debounce_on() {
    let stack = require!(
        Stack::start(Mode::Foreground, |b| b.vhost_line("NextcloudPushDebounce On")).await
    );
    let mut alice = stack.login(ALICE).await;
    stack.publish("notify_activity", r#"{"user":"alice"}"#).await;
    stack.publish("notify_activity", r#"{"user":"alice"}"#).await;
    alice.expect_text("notify_activity", T).await;
    // The two activities collapsed into one frame.
    alice.expect_no_text(Duration::from_millis(1500)).await;
    stack.finish();
}

#[tokio::test]
async fn an_event_for_alice_never_reaches_bob() {
    let stack = require!(stack().await);
    let mut alice = stack.login(ALICE).await;
    let mut alice2 = stack.login(ALICE).await;
    let mut bob = stack.login(BOB).await;
    for (channel, payload) in [
        ("notify_activity", r#"{"user":"alice"}"#),
        ("notify_notification", r#"{"user":"alice"}"#),
        ("notify_custom", r#"{"user":"alice","message":"secret"}"#),
        ("notify_user_share_created", r#"{"user":"alice"}"#),
        ("notify_group_membership_update", r#"{"user":"alice","group":"staff"}"#),
    ] {
        stack.publish(channel, payload).await;
        for c in [&mut alice, &mut alice2] {
            assert!(
                c.next_text(T).await.is_ok(),
                "{channel} must reach both of alice's connections"
            );
        }
    }
    stack.publish("notify_custom", r#"{"user":"nobody","message":"lost"}"#).await;
    // bob's first frame is bob's own event: nothing of alice's was queued before it.
    stack.roundtrip(&mut bob, "bob", "for_bob").await;
    bob.expect_no_text(QUIET).await;
    alice.expect_no_text(Duration::from_millis(100)).await;
    stack.finish();
}

#[tokio::test]
async fn login_frames_pipelined_with_the_handshake_in_one_write_authenticate() {
    let stack = require!(stack().await);
    let mut bytes = upgrade_request(stack.apache.port(), "").into_bytes();
    bytes.extend(masked_text_frame(ALICE.0));
    bytes.extend(masked_text_frame(ALICE.1));
    // that the pipelined opt-in takes effect is checked in file_events.rs (it needs a database)
    bytes.extend(masked_text_frame("listen notify_file_id"));
    let (stream, head, rest) = raw_request(stack.apache.addr(), &bytes, T).await;
    assert_eq!(status_of(&head), Some(101), "{head}");
    let mut client = Client::from_raw(stream, rest).await;
    client.expect_text(AUTHENTICATED, T).await;
    stack.roundtrip(&mut client, "alice", "pipelined_ok").await;
    stack.finish();
}

#[tokio::test]
async fn the_forwarded_for_chain_reaches_nextcloud() {
    let stack = require!(stack().await);
    let url = stack.ws_url();
    let mut c =
        Client::connect_with_headers(&url, &[("X-Forwarded-For", "203.0.113.7, 10.0.0.2")], T)
            .await;
    c.send_login(ALICE.0, ALICE.1).await;
    c.expect_text(AUTHENTICATED, T).await;
    let seen =
        common::last_forwarded_for(&stack.nextcloud).expect("Nextcloud got no X-Forwarded-For");
    assert_eq!(seen, "203.0.113.7, 10.0.0.2, 127.0.0.1");

    // Without forwarding headers the chain is the peer.
    let mut c = Client::connect(&url, T).await;
    c.send_login(BOB.0, BOB.1).await;
    c.expect_text(AUTHENTICATED, T).await;
    assert_eq!(common::last_forwarded_for(&stack.nextcloud).as_deref(), Some("127.0.0.1"));

    // X-Real-IP when there is no X-Forwarded-For.
    let mut c = Client::connect_with_headers(&url, &[("X-Real-IP", "198.51.100.4")], T).await;
    c.send_login(BOB.0, BOB.1).await;
    c.expect_text(AUTHENTICATED, T).await;
    assert_eq!(
        common::last_forwarded_for(&stack.nextcloud).as_deref(),
        Some("198.51.100.4, 127.0.0.1")
    );
    stack.finish();
}

#[tokio::test]
async fn a_user_gets_65_connections_and_the_66th_is_refused() {
    let stack = require!(stack().await);
    let mut clients = Vec::new();
    for _ in 0..65 {
        clients.push(stack.login(ALICE).await);
    }
    let mut extra = Client::connect(&stack.ws_url(), T).await;
    extra.send_login(ALICE.0, ALICE.1).await;
    let (texts, ending) = extra.expect_end(T).await;
    assert_eq!(texts, [AUTHENTICATED, LIMIT_EXCEEDED]);
    assert!(matches!(ending, Ending::CloseFrame(Some((1008, _)))), "{ending:?}");
    // bob is not affected, and all 65 of alice's still get events.
    let _bob = stack.login(BOB).await;
    stack.publish("notify_custom", r#"{"user":"alice","message":"to_65"}"#).await;
    for c in &mut clients {
        c.expect_text("to_65", T).await;
    }
    stack.finish();
}

#[tokio::test]
async fn reset_signal_closes_every_connection() {
    let stack = require!(stack().await);
    let mut alice = stack.login(ALICE).await;
    let mut bob = stack.login(BOB).await;
    stack.publish("notify_signal", r#""reset""#).await;
    for c in [&mut alice, &mut bob] {
        let (texts, ending) = c.expect_end(T).await;
        assert!(texts.is_empty(), "{texts:?}");
        assert_eq!(ending, Ending::CloseFrame(Some((1001, String::new()))), "reset: going away");
    }
    // New logins work after a reset.
    let mut again = stack.login(ALICE).await;
    stack.roundtrip(&mut again, "alice", "after_reset").await;
    stack.finish();
}

#[tokio::test]
async fn a_session_survives_a_redis_restart_and_gets_the_next_event() {
    let mut stack = require!(stack().await);
    stack.apache.allow("NCP1001"); // Redis disconnected / unreachable, reconnecting
    let mut alice = stack.login(ALICE).await;
    stack.roundtrip(&mut alice, "alice", "before_restart").await;

    stack.redis.restart();
    stack.await_subscribed().await;
    stack.roundtrip(&mut alice, "alice", "after_restart").await;
    // New logins too.
    let mut bob = stack.login(BOB).await;
    stack.roundtrip(&mut bob, "bob", "bob_after_restart").await;
    stack.finish();
}

#[tokio::test]
async fn nextcloud_htaccess_rewrite_does_not_catch_push_ws() {
    let stack = require!(Stack::start(Mode::Foreground, |b| b.nextcloud_htaccess(true)).await);
    // The catch-all is active for other paths…
    let raw = apache::raw_exchange(
        stack.apache.addr(),
        b"GET /apps/files HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        T,
    );
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(apache::status_code(&raw), Some(200), "{text}");
    assert!(text.contains("Nextcloud front controller stand-in"), "{text}");
    // …but /push/ws still upgrades and serves push.
    let mut alice = stack.login(ALICE).await;
    stack.roundtrip(&mut alice, "alice", "through_htaccess").await;
    stack.finish();
}

#[tokio::test]
async fn invalid_upgrades_get_a_4xx_and_no_101() {
    let stack = require!(stack().await);
    let port = stack.apache.port();
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";
    let cases = [
        (
            "HTTP/1.0",
            format!("GET /push/ws HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{key}\r\n"),
        ),
        ("no Connection header", format!("GET /push/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n{key}\r\n")),
        (
            "Connection: keep-alive only",
            format!("GET /push/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n{key}\r\n"),
        ),
        (
            "no Upgrade header",
            format!("GET /push/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\n{key}\r\n"),
        ),
        (
            "wrong version",
            format!(
                "GET /push/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
            ),
        ),
        (
            "a body (Content-Length)",
            format!(
                "GET /push/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 {key}Content-Length: 5\r\n\r\njunk!"
            ),
        ),
        (
            "a body (chunked)",
            format!(
                "GET /push/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 {key}Transfer-Encoding: chunked\r\n\r\n5\r\njunk!\r\n0\r\n\r\n"
            ),
        ),
        (
            "no key",
            format!(
                "GET /push/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            ),
        ),
    ];
    for (what, request) in cases {
        let raw = apache::raw_exchange(stack.apache.addr(), request.as_bytes(), T);
        let text = String::from_utf8_lossy(&raw);
        let status = apache::status_code(&raw);
        assert!(matches!(status, Some(400..=499)), "{what}: expected a 4xx, got:\n{text}");
        assert!(!text.contains(" 101 "), "{what}: {text}");
    }
    // A token list with upgrade among others is valid (Firefox sends `keep-alive, Upgrade`),
    // and an Origin is echoed for CORS as notify_push does.
    let req = upgrade_request(port, "Origin: https://cloud.example.com\r\n")
        .replace("Connection: Upgrade", "Connection: keep-alive, Upgrade");
    let (_s, head, _) = raw_request(stack.apache.addr(), req.as_bytes(), T).await;
    assert_eq!(status_of(&head), Some(101), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("access-control-allow-origin: https://cloud.example.com"),
        "{head}"
    );
    stack.finish();
}

#[tokio::test]
async fn exactly_one_101_goes_on_the_wire_and_the_access_log_has_it() {
    let stack = require!(stack().await);
    let (mut stream, head, rest) =
        raw_request(stack.apache.addr(), upgrade_request(stack.apache.port(), "").as_bytes(), T)
            .await;
    assert_eq!(status_of(&head), Some(101), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(
        lower.contains(&format!(
            "sec-websocket-accept: {}",
            ACCEPT_FOR_SAMPLE_KEY.to_ascii_lowercase()
        )),
        "{head}"
    );
    // The server sends nothing before the login; the first bytes after the head must be the
    // `authenticated` frame, not a second status line.
    let mut login = masked_text_frame(ALICE.0);
    login.extend(masked_text_frame(ALICE.1));
    stream.write_all(&login).await.expect("write login");
    let expected = server_text_frame(AUTHENTICATED);
    let after = read_at_least(&mut stream, rest, expected.len(), T).await;
    assert_eq!(
        String::from_utf8_lossy(&after),
        String::from_utf8_lossy(&expected),
        "bytes after the 101 head must be exactly the authenticated frame"
    );
    let line = stack.apache.await_access_log("GET /push/ws HTTP/1.1", T).await;
    assert!(line.starts_with("GET /push/ws HTTP/1.1 101 "), "access log: {line}");
    drop(stream);
    stack.finish();
}

#[tokio::test]
async fn a_stopped_daemon_gets_503_and_a_killed_one_is_respawned() {
    let mut stack = require!(stack().await);
    stack.apache.allow("NCP0032"); // push daemon unavailable; answering 503
    stack.apache.allow("NCP0011"); // push daemon (pid …) exited (status 9); restarting it
    let first = stack.apache.daemon_pid().expect("daemon running");

    // A daemon that does not answer: the handler must give up (2 s) with a 503 and no 101.
    apache::signal(first, "STOP");
    let started = std::time::Instant::now();
    let (_s, head, _) =
        raw_request(stack.apache.addr(), upgrade_request(stack.apache.port(), "").as_bytes(), T)
            .await;
    let waited = started.elapsed();
    apache::signal(first, "CONT");
    assert_eq!(status_of(&head), Some(503), "{head}");
    assert!(waited < Duration::from_secs(5), "503 took {waited:?}");
    let mut alice = stack.login(ALICE).await;
    stack.roundtrip(&mut alice, "alice", "after_cont").await;

    // A dead daemon: right after the kill the handler answers 503 or (once respawned) 101.
    apache::signal(first, "KILL");
    let (_s, head, _) =
        raw_request(stack.apache.addr(), upgrade_request(stack.apache.port(), "").as_bytes(), T)
            .await;
    assert!(matches!(status_of(&head), Some(503 | 101)), "{head}");
    let second = stack.apache.await_daemon(Some(first), T).await;
    assert_ne!(first, second);
    stack.await_subscribed().await;
    let mut bob = stack.login(BOB).await;
    stack.roundtrip(&mut bob, "bob", "after_respawn").await;
    stack.finish();
}

#[tokio::test]
async fn a_graceful_restart_keeps_the_daemon_and_its_sessions() {
    let mut stack = require!(stack().await);
    let daemon = stack.apache.daemon_pid().expect("daemon running");
    let mut alice = stack.login(ALICE).await;
    stack.apache.graceful_restart().await;
    assert_eq!(stack.apache.daemon_pid(), Some(daemon), "a graceful restart must keep the daemon");
    stack.roundtrip(&mut alice, "alice", "after_graceful").await;
    let mut bob = stack.login(BOB).await;
    stack.roundtrip(&mut bob, "bob", "bob_after_graceful").await;
    stack.finish();
}

#[tokio::test]
async fn sessions_survive_apache_children_being_recycled() {
    // Prefork with MaxConnectionsPerChild 1: every child exits after one connection. Sessions
    // live in the push daemon, so they must not notice.
    let stack = require!(
        Stack::start(Mode::Foreground, |b| b
            .mpm(Mpm::Prefork)
            .start_servers(2)
            .mpm_knob("MinSpareServers", 1)
            .mpm_knob("MaxSpareServers", 2)
            .max_connections_per_child(1))
        .await
    );
    // The parent forks its children after it is ready: wait for them.
    assert!(
        testkit::wait_until(T, || std::future::ready(!stack.apache.children().is_empty())).await
    );
    let children_before = stack.apache.children();
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(stack.login(ALICE).await);
    }
    // A child exits shortly after its one connection was handed off.
    let recycled = testkit::wait_until(T, || {
        let now = stack.apache.children();
        let gone = children_before.iter().any(|pid| !now.contains(pid));
        async move { gone }
    })
    .await;
    assert!(
        recycled,
        "no child was recycled: {children_before:?} vs {:?}",
        stack.apache.children()
    );
    stack.publish("notify_custom", r#"{"user":"alice","message":"after_recycling"}"#).await;
    for c in &mut clients {
        c.expect_text("after_recycling", T).await;
    }
    stack.finish();
}

#[tokio::test]
async fn invalid_json_on_a_channel_is_skipped() {
    let mut stack = require!(stack().await);
    stack.apache.allow("NCP1003"); // dropping invalid message on <channel>
    let mut alice = stack.login(ALICE).await;
    for (channel, payload) in [
        ("notify_custom", "{not json"),
        ("notify_activity", r#"{"user":1}"#),
        ("notify_pre_auth", r#"{"user":"alice"}"#),
        ("notify_signal", "reset"),
    ] {
        stack.publish(channel, payload).await;
    }
    stack.roundtrip(&mut alice, "alice", "still_served").await;
    alice.expect_no_text(QUIET).await;
    stack.apache.await_error_log("NCP1003", T).await;
    stack.finish();
}

#[tokio::test]
async fn file_events_reach_the_users_the_nextcloud_database_maps_them_to() {
    let stack = require!(stack().await);
    // alice's home storage 3 (root row with path ''), and bob's storage 4.
    apache::sqlite_exec(
        &stack.apache.nextcloud_db(),
        &[
            "INSERT INTO oc_filecache (fileid, storage, path) VALUES (10, 3, ''), (20, 4, '')"
                .into(),
            "INSERT INTO oc_mounts (storage_id, root_id, user_id, mount_point) VALUES \
             (3, 10, 'alice', '/alice/'), (4, 20, 'bob', '/bob/')"
                .into(),
        ],
    );
    let mut alice = stack.login(ALICE).await;
    let mut alice_ids = stack.login(ALICE).await;
    alice_ids.send_text("listen notify_file_id").await;
    // Frames are handled in order: once a later event has reached this connection, the daemon
    // has read the `listen` before it.
    stack.publish("notify_custom", r#"{"user":"alice","message":"listening"}"#).await;
    alice.expect_text("listening", T).await;
    alice_ids.expect_text("listening", T).await;
    let mut bob = stack.login(BOB).await;
    stack
        .publish("notify_storage_update", r#"{"storage":3,"path":"files/a.txt","file_id":42}"#)
        .await;
    alice.expect_text("notify_file", T).await;
    alice_ids.expect_text("notify_file_id [42]", T).await;
    stack.roundtrip(&mut bob, "bob", "nothing_before_this").await;
    stack.finish();
}

/// RFC 6455 §7.4.1 through Apache: a client that breaks the WebSocket protocol after login is
/// told why in a Close frame (1002 protocol error, 1007 text not UTF-8, 1009 message over
/// 4 KiB); the daemon stays, and another user's session keeps receiving.
#[tokio::test]
async fn protocol_errors_get_their_close_code_and_leave_others_alone() {
    use testkit::ws::{client_frame, opcode, RawWs, WsEnd};
    let mut stack = require!(stack().await);
    let daemon = stack.apache.daemon_pid();
    assert!(daemon.is_some(), "no daemon pid");
    let mut bob = stack.login(BOB).await;
    let addr = stack.apache.addr().to_string();
    let cases: [(&str, Vec<u8>, u16); 4] = [
        ("unmasked_frame", vec![0x81, 0x02, b'h', b'i'], 1002),
        ("unknown_opcode", client_frame(0x3, b"x"), 1002),
        ("invalid_utf8", client_frame(opcode::TEXT, b"a\xff\xfe"), 1007),
        ("oversize", client_frame(opcode::TEXT, &[b'a'; 5000]), 1009),
    ];
    for (what, bytes, code) in cases {
        let mut raw = RawWs::connect(&addr, "/push/ws", &[], &[ALICE.0, ALICE.1]).await;
        assert_eq!(raw.next_text(T).await, Ok(AUTHENTICATED.into()), "{what}");
        raw.send_raw(&bytes).await;
        let end = raw.next_text(T).await;
        assert!(matches!(end, Err(WsEnd::Closed(Some((c, _)))) if c == code), "{what}: {end:?}");
        stack.roundtrip(&mut bob, "bob", what).await;
    }
    assert_eq!(stack.apache.daemon_pid(), daemon, "the daemon was replaced");
    stack.finish();
}
