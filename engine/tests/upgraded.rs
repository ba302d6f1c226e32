//! `accept_upgraded`: the path the Apache glue uses. The "Apache" here is the test itself: it
//! reads the request head (and, in the same read, pipelined frames), answers 101, and hands the
//! stream plus the early bytes and the IP chain to the engine.

mod common;

use common::{FRAME, USERS};
use nextcloud_push_engine::{Engine, EngineConfig, Handoff};
use std::time::Duration;
use testkit::nextcloud::NextcloudDouble;
use testkit::redis::RedisServer;
use testkit::require;
use testkit::ws::RawWs;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An engine on a fresh redis-server and Nextcloud double, subscribed to every channel.
async fn subscribed_engine(
) -> Result<(RedisServer, NextcloudDouble, std::sync::Arc<Engine>), testkit::Skip> {
    let redis = RedisServer::start()?;
    let nextcloud = NextcloudDouble::start(USERS);
    let config = EngineConfig::load(None, &common::overrides(&redis, &nextcloud)).unwrap();
    let engine = Engine::new(config).unwrap();
    engine.start();
    assert!(redis.wait_for_subscribers("notify_activity", 1, Duration::from_secs(10)).await);
    Ok((redis, nextcloud, engine))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_data_is_consumed_before_the_stream() {
    common::time_limit(async {
        let (_redis, nextcloud, engine) = require!(subscribed_engine().await);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let apache_engine = engine.clone();
        let apache = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (stream, early_data) = answer_upgrade(stream).await;
            let early_len = early_data.len();
            let forwarded_for =
                vec!["198.51.100.9".parse().unwrap(), "::ffff:127.0.0.1".parse().unwrap()];
            apache_engine.accept_upgraded(
                stream,
                Handoff { early_data, forwarded_for, ..Default::default() },
            );
            early_len
        });

        let mut raw = RawWs::connect(
            &addr.to_string(),
            "/push/ws",
            &[],
            &["foo", "bar", "listen notify_file_id"],
        )
        .await;
        let early_len = apache.await.unwrap();
        assert!(early_len > 0, "the login frames should have arrived with the head");
        assert_eq!(raw.next_text(FRAME).await, Ok("authenticated".into()));
        let requests = nextcloud.requests_to(testkit::nextcloud::UID_PATH);
        assert_eq!(requests[0].header("x-forwarded-for"), Some("198.51.100.9, ::ffff:127.0.0.1"));

        engine.send_to_user(
            "foo",
            nextcloud_push_engine::PushMessage::File(nextcloud_push_engine::UpdatedFiles::Known(
                vec![7],
            )),
        );
        assert_eq!(raw.next_text(FRAME).await, Ok("notify_file_id [7]".into()));
        engine.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_new_needs_a_runtime() {
    common::time_limit(async {
        let config = EngineConfig::load(
            None,
            &nextcloud_push_engine::Overrides {
                nextcloud_url: Some("http://127.0.0.1/".into()),
                redis_url: Some("redis://127.0.0.1/".into()),
                ..Default::default()
            },
        )
        .unwrap();
        let outside =
            std::thread::spawn(move || Engine::new(config).map(|_| ()).map_err(|e| e.to_string()));
        assert_eq!(
            outside.join().unwrap(),
            Err("Engine::new must be called inside a tokio runtime".to_string())
        );
    })
    .await;
}

/// Plays Apache for one connection: reads the head, answers 101, hands the stream over with
/// `ping_interval`.
async fn serve_one_upgrade(
    engine: std::sync::Arc<Engine>,
    ping_interval: Option<Duration>,
) -> std::net::SocketAddr {
    serve_one_handoff(engine, Handoff { ping_interval, ..Default::default() }).await
}

/// Plays Apache for one connection: reads the head, answers 101, hands the stream over as
/// `handoff` says (its early data is what followed the head).
async fn serve_one_handoff(
    engine: std::sync::Arc<Engine>,
    handoff: Handoff,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (stream, early_data) = answer_upgrade(stream).await;
        engine.accept_upgraded(stream, Handoff { early_data, ..handoff });
    });
    addr
}

/// What Apache does before the handoff: reads until the request head is complete (whatever
/// follows in the same reads is early data) and answers 101.
async fn answer_upgrade(mut stream: tokio::net::TcpStream) -> (tokio::net::TcpStream, Vec<u8>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buffer.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
    };
    let early_data = buffer.split_off(head_end);
    stream
        .write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        )
        .await
        .unwrap();
    (stream, early_data)
}

/// Reads frames until a ping; returns how long that took.
async fn time_to_ping(raw: &mut RawWs, timeout: Duration) -> Duration {
    let start = std::time::Instant::now();
    loop {
        let frame = raw.read_frame(timeout).await.expect("expected a ping");
        if frame.opcode == testkit::ws::opcode::PING {
            raw.send_frame(testkit::ws::opcode::PONG, &frame.payload).await;
            return start.elapsed();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_can_shorten_the_ping_interval_of_its_session_only() {
    common::time_limit(async {
        let redis = require!(RedisServer::start());
        let nextcloud = NextcloudDouble::start(USERS);
        let mut config = EngineConfig::load(None, &common::overrides(&redis, &nextcloud)).unwrap();
        config.timing.ping_interval = Duration::from_secs(2);
        let engine = Engine::new(config).unwrap();
        engine.start();

        // The bridged-TLS case: this session pings every ~600 ms, although the engine says 2 s.
        let addr = serve_one_upgrade(engine.clone(), Some(Duration::from_millis(600))).await;
        let mut short = RawWs::connect(&addr.to_string(), "/push/ws", &[], &["foo", "bar"]).await;
        assert_eq!(short.next_text(FRAME).await, Ok("authenticated".into()));
        let _first = time_to_ping(&mut short, FRAME).await;
        for _ in 0..2 {
            let gap = time_to_ping(&mut short, FRAME).await;
            assert!(
                gap >= Duration::from_millis(500) && gap < Duration::from_millis(1600),
                "ping gap {gap:?} with a 600 ms session interval"
            );
        }

        // A longer interval than the engine's is ignored; `None` is the engine's.
        for ping_interval in [Some(Duration::from_secs(60)), None] {
            let addr = serve_one_upgrade(engine.clone(), ping_interval).await;
            let mut raw = RawWs::connect(&addr.to_string(), "/push/ws", &[], &["foo", "bar"]).await;
            assert_eq!(raw.next_text(FRAME).await, Ok("authenticated".into()));
            let _first = time_to_ping(&mut raw, Duration::from_secs(10)).await;
            let gap = time_to_ping(&mut raw, Duration::from_secs(10)).await;
            assert!(
                gap >= Duration::from_millis(1900) && gap < Duration::from_millis(3200),
                "ping gap {gap:?} for {ping_interval:?} with a 2 s engine interval"
            );
        }
        engine.shutdown().await;
    })
    .await;
}

/// A hard restart of Apache: `close_bridged` sends Close 1001 to the bridged sessions only and
/// returns once they have ended (their workers are stopped next); the other sessions go on.
/// Apache's stop: `shutdown` closes the rest and returns once no session is left. The engine's
/// health says Redis is up meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_bridged_ends_only_bridged_sessions_and_shutdown_waits_for_the_rest() {
    use nextcloud_push_engine::{PushMessage, UpdatedFiles};
    use testkit::ws::WsEnd;
    common::time_limit(async {
        let (_redis, _nextcloud, engine) = require!(subscribed_engine().await);
        assert!(engine.health().redis.up, "subscribed, yet the health says Redis is down");

        let mut sessions = Vec::new();
        for bridged in [true, false, true] {
            let addr =
                serve_one_handoff(engine.clone(), Handoff { bridged, ..Default::default() }).await;
            let mut raw = RawWs::connect(&addr.to_string(), "/push/ws", &[], &["foo", "bar"]).await;
            assert_eq!(raw.next_text(FRAME).await, Ok("authenticated".into()));
            sessions.push((bridged, raw));
        }
        assert_eq!(engine.metrics().active_connection_count, 3);

        // Both bridged clients read (and answer the Close) while close_bridged runs.
        let (mut bridged, mut plain): (Vec<_>, Vec<_>) = sessions.into_iter().partition(|s| s.0);
        let (_, ends) = tokio::join!(
            engine.close_bridged(),
            futures_util::future::join_all(bridged.iter_mut().map(|(_, raw)| raw.next_text(FRAME)))
        );
        for end in ends {
            assert_eq!(end, Err(WsEnd::Closed(Some((1001, String::new())))));
        }
        assert_eq!(
            engine.metrics().active_connection_count,
            1,
            "close_bridged returned before the bridged sessions ended, or ended the other one"
        );
        let (_, plain) = &mut plain[0];
        engine.send_to_user("foo", PushMessage::File(UpdatedFiles::Known(vec![3])));
        assert_eq!(plain.next_text(FRAME).await, Ok("notify_file".into()));

        let (_, end) = tokio::join!(engine.shutdown(), plain.next_text(FRAME));
        assert_eq!(end, Err(WsEnd::Closed(Some((1001, String::new())))));
        assert_eq!(engine.metrics().active_connection_count, 0, "shutdown returned too early");
    })
    .await;
}
