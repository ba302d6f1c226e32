//! Server pings, pong checks, client ping/close, max connection time (spec §1.5, §1.7, §1.8).

mod common;

use common::{Harness, FRAME};
use std::time::{Duration, Instant};
use testkit::require;
use testkit::ws::{opcode, RawWs, WsEnd};

async fn raw_login(h: &Harness) -> RawWs {
    let mut raw = RawWs::connect(&h.addr.to_string(), "/ws", &[], &["foo", "bar"]).await;
    assert_eq!(raw.next_text(FRAME).await, Ok("authenticated".into()));
    raw
}

async fn next_ping(raw: &mut RawWs, timeout: Duration) -> Vec<u8> {
    loop {
        let frame = raw.read_frame(timeout).await.expect("expected a ping");
        if frame.opcode == opcode::PING {
            return frame.payload;
        }
    }
}

/// Reads until the connection ends: `Closed` with the code of the server's Close frame.
async fn wait_end(raw: &mut RawWs, timeout: Duration) -> WsEnd {
    loop {
        match raw.read_frame(timeout).await {
            Ok(frame) if frame.opcode == opcode::CLOSE => {
                return WsEnd::Closed((frame.payload.len() >= 2).then(|| {
                    (u16::from_be_bytes([frame.payload[0], frame.payload[1]]), String::new())
                }))
            }
            Ok(_) => continue,
            Err(end) => return end,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_ping_about_half_a_second_after_auth_and_pong_keeps_the_connection() {
    common::time_limit(async {
        let h = require!(
            Harness::start_with(|c| c.timing.ping_interval = Duration::from_secs(1)).await
        );
        let mut raw = raw_login(&h).await;
        let authenticated = Instant::now();
        let payload = next_ping(&mut raw, FRAME).await;
        let elapsed = authenticated.elapsed();
        assert!(
            elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(1200),
            "first ping after {elapsed:?}"
        );
        assert_eq!(payload.len(), 4);
        assert_ne!(u32::from_le_bytes(payload.clone().try_into().unwrap()), 0);
        raw.send_frame(opcode::PONG, &payload).await;
        // the next ping comes after the interval of outgoing silence, with a new payload
        let second = next_ping(&mut raw, FRAME).await;
        assert_eq!(second.len(), 4);
        raw.send_frame(opcode::PONG, &second).await;
        h.publish("notify_activity", r#"{"user":"foo"}"#).await;
        assert_eq!(raw.next_text(FRAME).await, Ok("notify_activity".into()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswered_ping_closes_the_connection_with_1011() {
    common::time_limit(async {
        let h = require!(
            Harness::start_with(|c| c.timing.ping_interval = Duration::from_secs(1)).await
        );
        let mut raw = raw_login(&h).await;
        let _ = next_ping(&mut raw, FRAME).await;
        let pinged = Instant::now();
        let end = wait_end(&mut raw, FRAME).await;
        assert!(matches!(end, WsEnd::Closed(Some((1011, _)))), "{end:?}");
        let elapsed = pinged.elapsed();
        assert!(
            elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
            "closed after {elapsed:?}"
        );
        h.wait_connections(0).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_pong_closes_the_connection_with_1008() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let mut raw = raw_login(&h).await;
        let payload = next_ping(&mut raw, FRAME).await;
        let wrong: Vec<u8> = payload.iter().map(|b| b ^ 0xff).collect();
        raw.send_frame(opcode::PONG, &wrong).await;
        let end = wait_end(&mut raw, FRAME).await;
        assert!(matches!(end, WsEnd::Closed(Some((1008, _)))), "{end:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsolicited_pong_closes_the_connection_with_1008() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let mut raw = raw_login(&h).await;
        let payload = next_ping(&mut raw, FRAME).await;
        raw.send_frame(opcode::PONG, &payload).await;
        // answered; another (empty) pong is unsolicited
        raw.send_frame(opcode::PONG, b"").await;
        let end = wait_end(&mut raw, FRAME).await;
        assert!(matches!(end, WsEnd::Closed(Some((1008, _)))), "{end:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ping_is_answered_with_the_same_payload() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let mut raw = raw_login(&h).await;
        raw.send_frame(opcode::PING, b"hello").await;
        loop {
            let frame = raw.read_frame(FRAME).await.expect("pong");
            if frame.opcode == opcode::PONG {
                assert_eq!(frame.payload, b"hello");
                break;
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_is_echoed() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let mut raw = raw_login(&h).await;
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        raw.send_frame(opcode::CLOSE, &payload).await;
        loop {
            let frame = raw.read_frame(FRAME).await.expect("close echo");
            if frame.opcode == opcode::CLOSE {
                assert_eq!(frame.payload, payload);
                break;
            }
        }
        assert!(matches!(raw.read_frame(FRAME).await, Err(WsEnd::Dropped(_))));
        h.wait_connections(0).await;
    })
    .await;
}

/// RFC 6455 §5.5.1 before login too: a Close frame instead of a credential is answered with a
/// Close frame (no `err: …` text may follow a Close), then the connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_close_before_login_is_echoed() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        for (sent, echo) in [
            (&b"\x03\xe8bye"[..], &b"\x03\xe8bye"[..]),
            (b"\x03\xed", b"\x03\xeaProtocol violation"),
        ] {
            let mut raw = RawWs::connect(&h.addr.to_string(), "/ws", &[], &[]).await;
            raw.send_frame(opcode::CLOSE, sent).await;
            let frame = raw.read_frame(FRAME).await.expect("close echo");
            assert_eq!((frame.opcode, frame.payload.as_slice()), (opcode::CLOSE, echo));
            assert!(matches!(raw.read_frame(FRAME).await, Err(WsEnd::Dropped(_))));
        }
        h.wait_connections(0).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connection_time_sends_an_empty_close_frame() {
    common::time_limit(async {
        let h = require!(Harness::start_with(|c| c.max_connection_time = 1).await);
        let mut foo = h.login("foo", "bar").await;
        let started = Instant::now();
        assert_eq!(foo.next_text(FRAME).await, Err(WsEnd::Closed(None)));
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(3),
            "closed after {elapsed:?}"
        );
    })
    .await;
}
