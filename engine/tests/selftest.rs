//! The self-test endpoints (spec §5) at engine level: token gate, statuses and bodies, the
//! cookie race (PUBLISH immediately followed by the GET), reverse cookie, mapping, remote with the
//! vouching header over a loopback route, the version echo, metrics over Redis, runtime log
//! level. Real redis-server, the in-process Nextcloud double.

mod common;

use common::{Harness, FRAME};
use futures_util::future::BoxFuture;
use nextcloud_push_engine::vouch::{self, VouchKey};
use nextcloud_push_engine::{Engine, EngineConfig, NextcloudRoute, StorageMapping, TestResponse};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::nextcloud::{HttpResponse, NextcloudDouble};
use testkit::redis::RedisServer;
use testkit::require;

const TOKEN: &str = "AbCdEfGhIjKlMnOpQrStUvWxYz012345";

fn ok(body: &str) -> TestResponse {
    TestResponse { status: 200, body: body.to_string() }
}

fn status(status: u16, body: &str) -> TestResponse {
    TestResponse { status, body: body.to_string() }
}

/// The app's `/test/cookie` and `/test/remote` routes on the double (token checked against the
/// test's Redis, as TestController does).
fn app_routes(nextcloud: &NextcloudDouble, redis_url: String, cookie: u32) {
    let url = redis_url.clone();
    nextcloud.route("GET", "/index.php/apps/notify_push/test/cookie", move |req, _| {
        let expected = redis_get(&url, "test-token");
        if expected.is_none() || req.header("token") != expected.as_deref() {
            return HttpResponse::json(403, "{\"message\":\"Forbidden\"}");
        }
        HttpResponse::json(200, cookie.to_string())
    });
    nextcloud.route("GET", "/index.php/apps/notify_push/test/remote", move |req, _| {
        let expected = redis_get(&redis_url, "test-token");
        if expected.is_none() || req.header("token") != expected.as_deref() {
            return HttpResponse::json(403, "{\"message\":\"Forbidden\"}");
        }
        // A Nextcloud that trusts the caller as a proxy: the X-Forwarded-For entry.
        HttpResponse::text(200, req.header("x-forwarded-for").unwrap_or("").to_string())
    });
}

fn redis_get(url: &str, key: &str) -> Option<String> {
    let mut c = redis::Client::open(url).ok()?.get_connection().ok()?;
    redis::cmd("GET").arg(key).query(&mut c).ok().flatten()
}

fn redis_set(url: &str, key: &str, value: &str) {
    if let Ok(mut c) = redis::Client::open(url).and_then(|c| c.get_connection()) {
        let _: redis::RedisResult<()> = redis::cmd("SET").arg(key).arg(value).query(&mut c);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_gate_statuses_and_bodies() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let e = &h.engine;
        // No test-token key yet: 500.
        let r = e.test_request("GET", "cookie", Some(TOKEN)).await;
        assert_eq!(r.status, 500, "{r:?}");
        h.redis.set("test-token", TOKEN);
        assert_eq!(
            e.test_request("GET", "cookie", None).await,
            status(400, "Missing request header \"token\"")
        );
        assert_eq!(
            e.test_request("GET", "cookie", Some("wrong")).await,
            status(500, "Unhandled rejection: SelfTest(Token)")
        );
        assert_eq!(
            e.test_request("GET", "cookie", Some("")).await,
            status(500, "Unhandled rejection: SelfTest(Token)")
        );
        h.redis.set("test-token", "");
        assert_eq!(
            e.test_request("GET", "cookie", Some("")).await.status,
            500,
            "empty tokens never pass"
        );
        h.redis.set("test-token", TOKEN);
        assert_eq!(
            e.test_request("GET", "cookie", Some(TOKEN)).await,
            ok("0"),
            "0 before any cookie"
        );
        assert_eq!(e.test_request("GET", "nope", Some(TOKEN)).await, status(404, ""));
        assert_eq!(e.test_request("GET", "remote/not-an-ip", Some(TOKEN)).await, status(404, ""));
        assert_eq!(e.test_request("GET", "mapping/x", Some(TOKEN)).await, status(404, ""));
        assert_eq!(
            e.test_request("GET", "version", Some(TOKEN)).await,
            status(405, "HTTP method not allowed"),
            "notify_push issue #161 (spec §5): /test/version is POST only"
        );
        assert_eq!(e.test_request("GET", "version", None).await.status, 405);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_published_right_before_the_get_is_always_seen() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        h.redis.set("test-token", TOKEN);
        // Exactly what SelfTest.php does: PUBLISH, then at once (no sleep) GET /test/cookie.
        for round in 0..200u32 {
            let cookie = 1_000_000 + round * 7919;
            assert_eq!(h.redis.publish("notify_test_cookie", &cookie.to_string()), 1);
            let r = h.engine.test_request("GET", "cookie", Some(TOKEN)).await;
            assert_eq!(r, ok(&cookie.to_string()), "round {round}");
        }
    })
    .await;
}

/// The round trip itself: after `sync_events` every message published before it was handled
/// (without it, reading right after PUBLISH usually sees the previous cookie).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_events_is_a_barrier_for_earlier_publishes() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        for round in 1..=500u32 {
            h.redis.publish("notify_test_cookie", &round.to_string());
            h.engine.sync_events().await.expect("round trip");
            assert_eq!(h.engine.test_cookie(), round, "round {round}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_cookie_mapping_and_remote() {
    common::time_limit(async {
        struct Roots;
        impl StorageMapping for Roots {
            fn users_for_path<'a>(&'a self, _: u32, _: &'a str) -> BoxFuture<'a, Vec<String>> {
                Box::pin(async { Vec::new() })
            }
            fn root_count(&self, storage: u32) -> BoxFuture<'_, u64> {
                Box::pin(async move {
                    if storage == 3 {
                        2
                    } else {
                        0
                    }
                })
            }
        }
        let h = require!(Harness::start().await);
        h.redis.set("test-token", TOKEN);
        app_routes(&h.nextcloud, h.redis.url(), 29344007);
        let e = &h.engine;
        assert_eq!(e.test_request("GET", "reverse_cookie", Some(TOKEN)).await, ok("29344007"));
        let calls = h.nextcloud.requests_to("/index.php/apps/notify_push/test/cookie");
        assert_eq!(calls.last().and_then(|c| c.header("token")), Some(TOKEN));

        assert_eq!(e.test_request("GET", "mapping/3", Some(TOKEN)).await, ok("0"), "no DB: 0");
        e.set_storage_mapping(Arc::new(Roots));
        assert_eq!(e.test_request("GET", "mapping/3", Some(TOKEN)).await, ok("2"));
        assert_eq!(e.test_request("GET", "mapping/4", Some(TOKEN)).await, ok("0"));

        let r = e.test_request("GET", "remote/1.2.3.4", Some(TOKEN)).await;
        assert_eq!(r, ok("1.2.3.4"), "no trailing newline");
        assert_eq!(e.test_request("GET", "remote/::1", Some(TOKEN)).await, ok("::1"));
        let call = h.nextcloud.requests_to("/index.php/apps/notify_push/test/remote");
        let call = call.first().expect("a /test/remote call");
        assert_eq!(call.header("x-forwarded-for"), Some("1.2.3.4"));
        assert_eq!(call.header("token"), Some(TOKEN));
        assert_eq!(call.header(vouch::HEADER), None, "no vouching without the loopback route");

        // Error texts are 200 answers (the self-test prints them).
        for (answer, expected) in [
            (
                HttpResponse::text(200, "not a number"),
                "Invalid response when getting test cookie: invalid digit found in string",
            ),
            (
                HttpResponse::new(
                    400,
                    "text/html",
                    "<p>Access through untrusted domain</p> admin-trusted-domains",
                ),
                "127.0.0.1 is not configured as a trusted domain for the nextcloud server",
            ),
            (HttpResponse::json(403, "{}"), "Client error: 403 Forbidden"),
        ] {
            h.nextcloud.route("GET", "/index.php/apps/notify_push/test/cookie", move |_, _| {
                answer.clone()
            });
            assert_eq!(e.test_request("GET", "reverse_cookie", Some(TOKEN)).await, ok(expected));
        }
        h.nextcloud.route("GET", "/index.php/apps/notify_push/test/remote", |_, _| {
            HttpResponse::text(200, "proxy.example")
        });
        assert_eq!(
            e.test_request("GET", "remote/1.2.3.4", Some(TOKEN)).await,
            ok("Invalid response when testing if the push server is a trusted proxy: invalid IP address syntax")
        );
    })
    .await;
}

/// The loopback route: every call goes to the given address with the original URL (Host of the
/// Nextcloud URL) and vouches for the client with a MAC the Apache side can check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_route_keeps_the_host_and_vouches_for_the_client() {
    common::time_limit(async {
        let redis = require!(RedisServer::start());
        let nextcloud = NextcloudDouble::start(common::USERS);
        app_routes(&nextcloud, redis.url(), 1);
        redis.set("test-token", TOKEN);
        let mut overrides = common::overrides(&redis, &nextcloud);
        // A host name that does not resolve: only the loopback route can reach the double.
        overrides.nextcloud_url = Some("http://nextcloud.invalid/".into());
        let config = EngineConfig::load(None, &overrides).expect("config");
        let key = VouchKey::generate();
        let route = NextcloudRoute { loopback: Some(nextcloud.addr()), vouch: Some(key.clone()) };
        let engine = Engine::with_route(config, route).expect("engine");
        engine.start();

        let r = engine.test_request("GET", "remote/203.0.113.77", Some(TOKEN)).await;
        assert_eq!(r, ok("203.0.113.77"));
        let calls = nextcloud.requests_to("/index.php/apps/notify_push/test/remote");
        let call = calls.first().expect("reached through the loopback address");
        assert_eq!(call.header("host"), Some("nextcloud.invalid"), "Host of the Nextcloud URL");
        let vouch = call.header(vouch::HEADER).expect("vouching header");
        assert_eq!(
            key.verify(vouch, vouch::now_secs()),
            Some("203.0.113.77".parse::<IpAddr>().unwrap())
        );
        assert_eq!(VouchKey::generate().verify(vouch, vouch::now_secs()), None, "other keys fail");

        // Logins vouch for the last entry of the client chain (Apache's r->useragent_ip).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = engine.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accept.accept_http(stream, Some("198.51.100.4".parse().unwrap()));
            }
        });
        let mut client = testkit::ws::WsClient::connect(&format!("ws://{addr}/ws")).await;
        client.login_ok("foo", "bar").await;
        let uid = nextcloud.requests_to(testkit::nextcloud::UID_PATH);
        let uid = uid.last().expect("a login call");
        assert_eq!(uid.header("x-forwarded-for"), Some("198.51.100.4"));
        assert_eq!(
            key.verify(uid.header(vouch::HEADER).expect("vouched"), vouch::now_secs()),
            Some("198.51.100.4".parse::<IpAddr>().unwrap())
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_echoes_the_installed_app_version_every_time() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        h.redis.set("test-token", TOKEN);
        let app_version = Arc::new(std::sync::Mutex::new("1.4.2".to_string()));
        let (url, current) = (h.redis.url(), app_version.clone());
        h.nextcloud.route("GET", "/index.php/apps/notify_push/test/version", move |req, _| {
            assert_eq!(req.header("token"), None, "the incumbent sends no token here");
            redis_set(&url, "notify_push_app_version", &current.lock().unwrap());
            HttpResponse::json(200, "null")
        });
        h.redis.del("notify_push_version");
        assert_eq!(h.engine.test_request("POST", "version", Some(TOKEN)).await, ok("set"));
        assert_eq!(h.redis.get("notify_push_version").as_deref(), Some("1.4.2"));

        // An app update between two self-tests: re-checked, still equal.
        *app_version.lock().unwrap() = "1.5.0".into();
        h.redis.del("notify_push_version");
        assert_eq!(h.engine.test_request("POST", "version", Some(TOKEN)).await, ok("set"));
        assert_eq!(h.redis.get("notify_push_version").as_deref(), Some("1.5.0"));

        // Nextcloud cannot be asked: the module's own version (with a warning).
        h.nextcloud.force_status(Some(500));
        h.redis.del("notify_push_app_version");
        h.redis.del("notify_push_version");
        assert_eq!(h.engine.test_request("POST", "version", Some(TOKEN)).await, ok("set"));
        assert_eq!(h.redis.get("notify_push_version").as_deref(), Some(env!("CARGO_PKG_VERSION")));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_query_answers_within_100ms_with_the_expected_counts() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        let mut foo = h.login("foo", "bar").await;
        let mut foo_again = h.login("foo", "bar").await;
        let mut foo2 = h.login("foo2", "bar2").await;
        h.wait_connections(3).await;
        h.publish("notify_activity", r#"{"user":"foo"}"#).await;
        h.publish("notify_notification", r#"{"user":"foo2"}"#).await;
        h.publish("notify_custom", r#"{"user":"foo2","message":"m","body":1}"#).await;
        h.publish("notify_storage_update", r#"{"storage":10,"path":"files/a","file_id":5}"#).await;
        h.publish("notify_activity", "not json").await;
        assert_eq!(foo.next_text(FRAME).await, Ok("notify_activity".into()));
        assert_eq!(foo_again.next_text(FRAME).await, Ok("notify_activity".into()));
        assert_eq!(foo.next_text(FRAME).await, Ok("notify_file".into()));
        assert_eq!(foo_again.next_text(FRAME).await, Ok("notify_file".into()));
        assert_eq!(foo2.next_text(FRAME).await, Ok("notify_notification".into()));
        assert_eq!(foo2.next_text(FRAME).await, Ok("m 1".into()));
        drop(foo_again);
        h.wait_connections(2).await;

        // occ notify_push:metrics: DEL, PUBLISH, 10 ms, GET (then 100 ms, GET).
        h.redis.del("notify_push_metrics");
        let start = Instant::now();
        h.redis.publish("notify_query", r#""metrics""#);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut json = h.redis.get("notify_push_metrics");
        if json.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            json = h.redis.get("notify_push_metrics");
        }
        let json = json.expect("notify_push_metrics written within 110 ms");
        assert!(start.elapsed() < Duration::from_millis(1000));
        assert_eq!(
            json,
            "{\"active_connection_count\":2,\"active_user_count\":2,\"total_connection_count\":3,\
             \"mapping_query_count\":0,\"events_received\":6,\"messages_sent\":6,\"messages_sent_file\":2,\
             \"messages_sent_activity\":2,\"messages_sent_notification\":1,\"messages_sent_custom\":1}"
        );
        let text = h.engine.metrics().to_prometheus_with_help();
        assert!(
            text.contains("# TYPE active_connection_count gauge\nactive_connection_count 2\n"),
            "{text}"
        );
        assert!(text.contains("message_count_total{type=\"file\"} 2\n"), "{text}");
        assert!(text.contains("event_count_total 6\n"), "{text}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_config_changes_and_restores_the_log_level() {
    common::time_limit(async {
        let h = require!(Harness::start().await);
        log::set_max_level(log::LevelFilter::Warn);
        // `publish` returns once the engine counted the message, which is before it applies
        // it; `sync_events` returns once it was handled.
        let apply = |payload: &'static str| async {
            h.publish("notify_config", payload).await;
            h.engine.sync_events().await.expect("sync");
            log::max_level()
        };
        assert_eq!(apply(r#"{"log_spec":"notify_push=debug"}"#).await, log::LevelFilter::Debug);
        assert_eq!(
            apply(r#"{"log_spec":"notify_push=loud"}"#).await,
            log::LevelFilter::Debug,
            "unknown specs are ignored"
        );
        assert_eq!(apply(r#"{"log_spec":"trace"}"#).await, log::LevelFilter::Trace);
        assert_eq!(
            apply(r#""log_restore""#).await,
            log::LevelFilter::Warn,
            "back to the configured level"
        );
        assert_eq!(apply(r#""log_restore""#).await, log::LevelFilter::Warn);
    })
    .await;
}

/// A vhost bound to a public address of this host: the daemon still connects *from* loopback
/// (Apache honours the vouching header only from a loopback peer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_route_connects_from_loopback_to_a_local_public_address() {
    common::time_limit(async {
        let redis = require!(RedisServer::start());
        // A non-loopback address of this host, if it has one.
        let Some(local) = std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.connect("203.0.113.1:9").map(|_| s))
            .and_then(|s| s.local_addr())
            .ok()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        else {
            eprintln!("SKIPPED: no non-loopback IPv4 address on this host");
            return;
        };
        let listener = std::net::TcpListener::bind((local, 0)).expect("bind the local address");
        let target = listener.local_addr().unwrap();
        let peer = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, peer) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\n1.2.3.4",
            );
            peer
        });
        redis.set("test-token", TOKEN);
        let nextcloud = NextcloudDouble::start(common::USERS);
        let mut overrides = common::overrides(&redis, &nextcloud);
        overrides.nextcloud_url = Some("http://nextcloud.invalid/".into());
        let config = EngineConfig::load(None, &overrides).expect("config");
        let route = NextcloudRoute { loopback: Some(target), vouch: Some(VouchKey::generate()) };
        let engine = Engine::with_route(config, route).expect("engine");
        assert_eq!(engine.test_request("GET", "remote/1.2.3.4", Some(TOKEN)).await, ok("1.2.3.4"));
        let peer = peer.join().unwrap();
        assert!(peer.ip().is_loopback(), "connected from {peer} to {target}");
    })
    .await;
}
