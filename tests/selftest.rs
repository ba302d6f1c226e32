//! `occ notify_push:setup https://host/push` through a real apache2: the self-test of
//! spec §5.1 step by step, with the Nextcloud double running *behind the same Apache* as a CGI
//! program (`testkit/src/bin/nextcloud-cgi.rs`), so `REMOTE_ADDR` is whatever Apache decided and
//! `trusted_proxies` is empty (the CGI's `getRemoteAddress()` returns `REMOTE_ADDR`). The push
//! daemon calls Nextcloud at `http://nextcloud.test/` (a name that resolves nowhere), which only
//! works through the loopback route to the vhost's own address. Also: the token gate, forged
//! vouching headers, metrics (Redis JSON and `<base>/metrics`), the runtime log level. Every test
//! ends with the error-log oracle.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::http::{header, http};
use common::{Client, AUTHENTICATED, T};
use testkit::apache::{self, Apache, ApacheBuilder, Env, Mode, Mpm, MODULES_DIR};
use testkit::db::{Backend, TestDb};
use testkit::redis::RedisServer;
use testkit::tls::TestCa;
use testkit::{require, Skip};

/// The Nextcloud URL the daemon is configured with: no DNS entry, reachable only via loopback.
const NEXTCLOUD_URL: &str = "http://nextcloud.test/";
/// What the CGI reports as the installed notify_push app version.
const APP_VERSION: &str = "1.4.2";
const TOKEN: &str = "Xk3+pQ/7c1N2b5v8m0Lz4r6t9y1u3i5o";
const ALICE: (&str, &str) = ("alice", "alice-password");

struct SelfTestStack {
    redis: RedisServer,
    apache: Apache,
    /// Nextcloud's database (SQLite): alice's home is storage 7 (root `''`), bob has a share of
    /// it (root `files/Shared`), so step 5 expects 1.
    _db: TestDb,
}

/// The storage of step 5 and its number of mounts whose root path is `''`.
const MAPPING_STORAGE: u32 = 7;
const MAPPING_ROOTS: &str = "1";

/// The CGI double, built by `cargo build --workspace` next to the module.
fn cgi_binary() -> Result<PathBuf, Skip> {
    let path = apache::target_dir().join("debug/nextcloud-cgi");
    if path.is_file() {
        return Ok(path);
    }
    let release = apache::target_dir().join("release/nextcloud-cgi");
    if release.is_file() {
        return Ok(release);
    }
    let why = format!("{} is missing: run `cargo build --workspace`", path.display());
    if apache::is_ci() {
        panic!("{why}");
    }
    Err(Skip(why))
}

impl SelfTestStack {
    async fn start(configure: impl FnOnce(ApacheBuilder) -> ApacheBuilder) -> Result<Self, Skip> {
        SelfTestStack::start_with(NEXTCLOUD_URL, None, configure).await
    }

    /// `url` is overwrite.cli.url; with `tls`, a second, HTTPS vhost on that port serves the same
    /// Nextcloud (CGI, push configuration) with the test CA's `localhost` certificate.
    async fn start_with(
        url: &str,
        tls: Option<(&TestCa, u16)>,
        configure: impl FnOnce(ApacheBuilder) -> ApacheBuilder,
    ) -> Result<Self, Skip> {
        let env = Env::require()?;
        let cgi = cgi_binary()?;
        let redis = RedisServer::start()?;
        let db = TestDb::create(Backend::Sqlite, "oc_").await?;
        db.mount("alice", MAPPING_STORAGE, "").await;
        db.mount("bob", MAPPING_STORAGE, "files/Shared").await;
        // The daemon runs as the children's User: it must read the database file.
        let file = db.sqlite_file().expect("sqlite file");
        let dir = file.parent().expect("sqlite dir");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let mut builder = Apache::builder(&env)
            .nextcloud_url(url)
            .redis("127.0.0.1", redis.port())
            .server_line(format!("LoadModule cgid_module {MODULES_DIR}/mod_cgid.so"))
            .server_line(format!("LoadModule alias_module {MODULES_DIR}/mod_alias.so"))
            .server_line(format!("LoadModule env_module {MODULES_DIR}/mod_env.so"))
            .server_line(
                "<Directory \"{root}/cgi-bin\">\n    Options +ExecCGI\n    CGIPassAuth On\n    \
                 Require all granted\n</Directory>",
            );
        let mut lines = vec![
            // Nextcloud's front controller is the CGI double: /index.php/apps/notify_push/…
            "ScriptAlias /index.php \"{root}/cgi-bin/nextcloud.cgi\"".to_string(),
            format!("SetEnv NCP_CGI_REDIS {}", redis.url()),
            format!("SetEnv NCP_CGI_USERS {}:{}:{}", ALICE.0, ALICE.1, ALICE.0),
            format!("SetEnv NCP_CGI_APP_VERSION {APP_VERSION}"),
            format!("NextcloudPushDatabase {}", db.url()),
            "NextcloudPushDebounce Off".to_string(),
        ];
        if let Some((ca, port)) = tls {
            // The daemon trusts the test CA's certificate through this (same on both vhosts:
            // equal configurations share one engine).
            lines.push("NextcloudPushAllowSelfSigned On".to_string());
            // mod_cgid looks up PATH_TRANSLATED (the path info under the DocumentRoot).
            let docroot =
                "<Directory \"{root}/nextcloud\">\n        Require all granted\n    </Directory>";
            let extra: Vec<&str> =
                lines.iter().map(String::as_str).chain(std::iter::once(docroot)).collect();
            builder = ca.tls_vhost(builder, port, &extra);
        }
        for line in lines {
            builder = builder.vhost_line(line);
        }
        let apache = configure(builder).start(Mode::Foreground).await;
        // The CGI program goes into the (0755) server root, readable by the children's User.
        let dir = apache.root().join("cgi-bin");
        std::fs::create_dir_all(&dir).expect("cgi-bin");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let script = dir.join("nextcloud.cgi");
        std::fs::copy(&cgi, &script).expect("copy the CGI double");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let stack = SelfTestStack { redis, apache, _db: db };
        assert!(
            stack.redis.wait_for_subscribers("notify_test_cookie", 1, T).await,
            "the push daemon did not subscribe\n{}",
            stack.apache.error_log()
        );
        Ok(stack)
    }

    fn addr(&self) -> SocketAddr {
        self.apache.addr()
    }

    /// One HTTP/1.1 request to Apache: (status, headers, body).
    fn http(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
        http(self.addr(), method, path, headers)
    }

    /// What the CGI ("PHP") saw, oldest first.
    fn cgi_requests(&self) -> Vec<serde_json::Value> {
        let mut c = redis::Client::open(self.redis.url()).unwrap().get_connection().unwrap();
        let raw: Vec<String> =
            redis::cmd("LRANGE").arg("cgi:requests").arg(0).arg(-1).query(&mut c).unwrap();
        raw.iter().map(|r| serde_json::from_str(r).unwrap()).collect()
    }

    fn finish(self) {
        let SelfTestStack { redis, apache, _db } = self;
        apache.finish();
        drop(redis);
    }
}

/// `lib/SelfTest.php` against `<apache>/push`, step by step (spec §5.1), with an empty
/// `trusted_proxies`. Panics naming the step that fails.
#[tokio::test]
async fn occ_setup_self_test_passes_all_eight_steps_without_trusted_proxies() {
    let stack = require!(SelfTestStack::start(|b| b).await);
    self_test_steps(stack, 100).await;
}

/// The same under the worker and prefork MPMs (the classic mod_php setup).
#[tokio::test]
async fn self_test_passes_under_worker_and_prefork() {
    for mpm in [Mpm::Worker, Mpm::Prefork] {
        let stack = require!(SelfTestStack::start(|b| b.mpm(mpm)).await);
        self_test_steps(stack, 20).await;
    }
}

async fn self_test_steps(stack: SelfTestStack, rounds: u32) {
    let token = [("token", TOKEN)];
    let redis = &stack.redis;

    // 1. Redis is the queue Nextcloud publishes through: exactly one subscriber (this server's
    // daemon) on every channel the app uses.
    for channel in nextcloud_push_engine::CHANNELS {
        assert_eq!(redis.subscribers(channel), 1, "step 1: {channel}");
    }
    // 2. The URL given to setup (`<scheme>://<host>/push`) is the module's: its test routes
    // answer there (the token gate's own refusal), not Nextcloud.
    let (status, _, body) = stack.http("GET", "/push/test/cookie", &[]);
    assert_eq!((status, body.as_str()), (400, "Missing request header \"token\""), "step 2");

    for round in 0..rounds {
        // 3. Prepare: SET test-token, PUBLISH notify_test_cookie, app config cookie.
        let cookie = 1 + (round * 104_729 + 12_345) % (1 << 30);
        redis.set("test-token", TOKEN);
        redis.set("cgi:appconfig:cookie", &cookie.to_string());
        assert_eq!(redis.publish("notify_test_cookie", &cookie.to_string()), 1);
        // 4. Cookie, right away (no sleep).
        let (status, head, body) = stack.http("GET", "/push/test/cookie", &token);
        assert_eq!(
            (status, body.as_str()),
            (200, cookie.to_string().as_str()),
            "step 4, round {round}"
        );
        assert_eq!(header(&head, "Content-Type"), Some("text/plain; charset=utf-8"));
    }
    let cookie: u32 = redis.get("cgi:appconfig:cookie").unwrap().parse().unwrap();

    // 5. Mapping: the app's query found storage 7 with one mount rooted at ''.
    let path = format!("/push/test/mapping/{MAPPING_STORAGE}");
    let (status, _, body) = stack.http("GET", &path, &token);
    assert_eq!((status, body.as_str()), (200, MAPPING_ROOTS), "step 5");
    let (status, _, body) = stack.http("GET", "/push/test/mapping/99", &token);
    assert_eq!((status, body.as_str()), (200, "0"), "step 5: another storage");

    // 6. Reverse cookie: daemon → Apache (loopback) → CGI /test/cookie.
    let (status, _, body) = stack.http("GET", "/push/test/reverse_cookie", &token);
    assert_eq!((status, body.as_str()), (200, cookie.to_string().as_str()), "step 6");

    // 7. Trusted proxy: exactly `1.2.3.4`, no trailing newline, with trusted_proxies empty.
    let (status, head, body) = stack.http("GET", "/push/test/remote/1.2.3.4", &token);
    assert_eq!(status, 200, "step 7");
    assert_eq!(body, "1.2.3.4", "step 7: strict === comparison");
    assert_eq!(header(&head, "Content-Length"), Some("7"));
    assert_eq!(redis.get("notify_push_remote").as_deref(), Some("1.2.3.4"), "PHP's REMOTE_ADDR");
    assert_eq!(redis.get("notify_push_forwarded_header").as_deref(), Some("1.2.3.4"), "XFF kept");
    let remote_calls: Vec<_> = stack
        .cgi_requests()
        .into_iter()
        .filter(|r| r["path"] == "/apps/notify_push/test/remote")
        .collect();
    assert_eq!(remote_calls.len(), 1);
    assert!(remote_calls[0]["vouch"].is_null(), "PHP never sees the vouching header");

    // 8. Version: DEL, POST, 10 ms, GET; major.minor must equal the app's.
    redis.del("notify_push_version");
    let (status, _, body) = stack.http("POST", "/push/test/version", &token);
    assert_eq!((status, body.as_str()), (200, "set"), "step 8");
    std::thread::sleep(Duration::from_millis(10));
    let binary = redis.get("notify_push_version").expect("step 8: notify_push_version set");
    let minor = |v: &str| v.rsplit_once('.').map(|(a, _)| a.to_string()).unwrap_or_default();
    assert_eq!(minor(&binary), minor(APP_VERSION), "step 8: same version as the app");

    // Logins: Nextcloud's brute-force protection sees the client's own address.
    let client = Client::login(&stack.apache.ws_url(), ALICE.0, ALICE.1, T).await;
    let logins: Vec<_> =
        stack.cgi_requests().into_iter().filter(|r| r["path"] == "/apps/notify_push/uid").collect();
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0]["remote_addr"], "127.0.0.1", "the WebSocket client's address");
    drop(client);
    stack.finish();
}

#[tokio::test]
async fn token_gate_and_method_rules() {
    let stack = require!(SelfTestStack::start(|b| b).await);
    // No test-token in Redis yet.
    let (status, _, _) = stack.http("GET", "/push/test/cookie", &[("token", TOKEN)]);
    assert_eq!(status, 500, "missing test-token key");
    stack.redis.set("test-token", TOKEN);
    let (status, _, body) = stack.http("GET", "/push/test/cookie", &[]);
    assert_eq!((status, body.as_str()), (400, "Missing request header \"token\""));
    let (status, _, body) = stack.http("GET", "/push/test/cookie", &[("token", "wrong")]);
    assert_eq!((status, body.as_str()), (500, "Unhandled rejection: SelfTest(Token)"));
    let (status, _, body) = stack.http("GET", "/push/test/version", &[("token", TOKEN)]);
    assert_eq!((status, body.as_str()), (405, "HTTP method not allowed"), "issue #161");
    let (status, _, body) = stack.http("GET", "/push/test/remote/not-an-ip", &[("token", TOKEN)]);
    assert_eq!((status, body.as_str()), (404, ""));
    let (status, _, body) = stack.http("GET", "/push/test/unknown", &[("token", TOKEN)]);
    assert_eq!((status, body.as_str()), (404, ""));
    let (status, _, _) = stack.http("GET", "/push/metrics", &[]);
    assert_eq!(status, 404, "metrics are off by default");
    let (status, _, body) = stack.http("GET", "/push/test/cookie", &[("token", TOKEN)]);
    assert_eq!((status, body.as_str()), (200, "0"));
    stack.finish();
}

/// A client cannot make Nextcloud believe it has another address: the header is stripped from
/// its request and ignored (wrong MAC), and PHP sees neither the header nor the forged address.
#[tokio::test]
async fn forged_vouching_headers_are_stripped_and_ignored() {
    let stack = require!(SelfTestStack::start(|b| b).await);
    let forged = [
        "v1 0 6.6.6.6 00",
        &format!(
            "v1 {} 6.6.6.6 {}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
            "ab".repeat(32)
        ),
        "6.6.6.6",
    ];
    for value in forged {
        let (status, _, body) = stack.http(
            "GET",
            "/index.php/apps/notify_push/uid",
            &[
                ("X-Nextcloud-Push-Vouch", value),
                ("Authorization", "Basic YWxpY2U6YWxpY2UtcGFzc3dvcmQ="),
            ],
        );
        assert_eq!((status, body.as_str()), (200, "alice"));
    }
    let seen = stack.cgi_requests();
    assert_eq!(seen.len(), 3);
    for r in seen {
        assert_eq!(r["remote_addr"], "127.0.0.1", "the forged address never reaches PHP: {r}");
        assert!(r["vouch"].is_null(), "the header never reaches PHP: {r}");
    }
    stack.finish();
}

/// A known sequence of connections and events; then `occ notify_push:metrics` over Redis and
/// the Prometheus endpoint (`NextcloudPushMetrics On`, guarded by `Require`).
#[tokio::test]
async fn metrics_over_redis_and_prometheus_match_a_known_sequence() {
    let stack = require!(
        SelfTestStack::start(|b| {
            b.server_line(format!("LoadModule authz_host_module {MODULES_DIR}/mod_authz_host.so"))
                .vhost_line("NextcloudPushMetrics On")
                .vhost_line(
                    "<Location /push/metrics>\n        Require ip 127.0.0.1\n    </Location>",
                )
        })
        .await
    );
    let mut a1 = Client::login(&stack.apache.ws_url(), ALICE.0, ALICE.1, T).await;
    let mut a2 = Client::login(&stack.apache.ws_url(), ALICE.0, ALICE.1, T).await;
    let mut wrong = Client::connect(&stack.apache.ws_url(), T).await;
    wrong.send_login(ALICE.0, "nope").await;
    let _ = wrong.expect_end(T).await;
    stack.redis.publish("notify_activity", r#"{"user":"alice"}"#);
    stack.redis.publish("notify_notification", r#"{"user":"alice"}"#);
    stack.redis.publish("notify_custom", r#"{"user":"alice","message":"hello"}"#);
    stack.redis.publish("notify_activity", r#"{"user":"nobody"}"#);
    for c in [&mut a1, &mut a2] {
        c.expect_text("notify_activity", T).await;
        c.expect_text("notify_notification", T).await;
        c.expect_text("hello", T).await;
    }

    stack.redis.del("notify_push_metrics");
    let start = Instant::now();
    stack.redis.publish("notify_query", r#""metrics""#);
    std::thread::sleep(Duration::from_millis(10));
    let mut json = stack.redis.get("notify_push_metrics");
    if json.is_none() {
        std::thread::sleep(Duration::from_millis(100));
        json = stack.redis.get("notify_push_metrics");
    }
    let json = json.unwrap_or_else(|| panic!("no metrics within {:?}", start.elapsed()));
    let label = common::server_label(&stack.apache);
    let expected = format!(
        "{{\"active_connection_count\":2,\"active_user_count\":1,\"total_connection_count\":2,\
         \"mapping_query_count\":0,\"events_received\":5,\"messages_sent\":6,\"messages_sent_file\":0,\
         \"messages_sent_activity\":2,\"messages_sent_notification\":2,\"messages_sent_custom\":2,\
         \"server\":\"{label}\"}}"
    );
    assert_eq!(json, expected);
    // Written right after occ's key.
    let own_key = format!("notify_push_metrics:{label}");
    assert!(testkit::wait_until_sync(T, || stack.redis.get(&own_key).is_some()), "{own_key}");
    assert_eq!(stack.redis.get(&own_key), Some(expected), "this server's own key");

    let (status, head, body) = stack.http("GET", "/push/metrics", &[]);
    assert_eq!(status, 200);
    assert!(header(&head, "Content-Type").is_some_and(|t| t.starts_with("text/plain")));
    for line in [
        "# TYPE active_connection_count gauge",
        "active_connection_count 2",
        "active_user_count 1",
        "total_connection_count 2",
        "event_count_total 5",
        "message_count_total 6",
        "message_count_total{type=\"activity\"} 2",
        "message_count_total{type=\"custom\"} 2",
        "# HELP message_count_total Messages sent to clients, in total and per type.",
    ] {
        assert!(body.lines().any(|l| l == line), "missing {line:?} in\n{body}");
    }
    drop((a1, a2));
    stack.finish();
}

#[tokio::test]
async fn metrics_endpoint_obeys_require() {
    let mut stack = require!(
        SelfTestStack::start(|b| {
            b.server_line(format!("LoadModule authz_host_module {MODULES_DIR}/mod_authz_host.so"))
                .vhost_line("NextcloudPushMetrics On")
                .vhost_line(
                    "<Location /push/metrics>\n        Require ip 192.0.2.1\n    </Location>",
                )
        })
        .await
    );
    stack.apache.allow("AH01630"); // "client denied by server configuration"
    let (status, _, body) = stack.http("GET", "/push/metrics", &[]);
    assert_eq!(status, 403, "{body}");
    stack.finish();
}

/// `occ notify_push:log debug` / `--restore` change the daemon's level at runtime.
#[tokio::test]
async fn notify_config_changes_the_daemon_log_level() {
    let stack = require!(
        SelfTestStack::start(|b| b.server_line("LogLevel info nextcloud_push:info")).await
    );
    stack.redis.set("test-token", TOKEN);
    let answered = |s: &SelfTestStack| s.apache.error_log().matches("NCP0110").count();
    let get = |s: &SelfTestStack| {
        let (status, _, _) = s.http("GET", "/push/test/cookie", &[("token", TOKEN)]);
        assert_eq!(status, 200);
    };
    get(&stack);
    assert_eq!(answered(&stack), 0, "no debug lines at info");
    stack.redis.publish("notify_config", r#"{"log_spec":"notify_push=debug"}"#);
    // /test/cookie makes a pub/sub round trip first: the change is applied before it answers.
    get(&stack);
    assert!(
        testkit::wait_until_sync(T, || answered(&stack) == 1),
        "a debug line after notify_config\n{}",
        stack.apache.error_log()
    );
    assert!(stack.apache.error_log().contains("NCP1009: log level set to DEBUG"));
    stack.redis.publish("notify_config", r#""log_restore""#);
    get(&stack);
    get(&stack);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(answered(&stack), 1, "back to info after log_restore");
    stack.finish();
}

/// The login path end to end, with mod_remoteip in front (the common "Apache behind a local
/// proxy" setup, `RemoteIPHeader X-Forwarded-For` trusting 127.0.0.1): Apache decides the
/// WebSocket client is 203.0.113.50; the daemon's login call reaches the CGI with exactly that
/// `REMOTE_ADDR` (the vouch runs before mod_remoteip, which then leaves it alone), and the
/// self-test's `1.2.3.4` survives too.
#[tokio::test]
async fn login_through_loopback_vouches_for_the_websocket_client_with_mod_remoteip() {
    let stack = require!(
        SelfTestStack::start(|b| {
            b.server_line(format!("LoadModule remoteip_module {MODULES_DIR}/mod_remoteip.so"))
                .vhost_line("RemoteIPHeader X-Forwarded-For")
                .vhost_line("RemoteIPInternalProxy 127.0.0.1")
        })
        .await
    );
    let mut client = Client::connect_with_headers(
        &stack.apache.ws_url(),
        &[("X-Forwarded-For", "203.0.113.50")],
        T,
    )
    .await;
    client.send_login(ALICE.0, ALICE.1).await;
    client.expect_text(AUTHENTICATED, T).await;
    let logins: Vec<_> =
        stack.cgi_requests().into_iter().filter(|r| r["path"] == "/apps/notify_push/uid").collect();
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0]["remote_addr"], "203.0.113.50", "{}", logins[0]);
    assert!(logins[0]["vouch"].is_null());

    stack.redis.set("test-token", TOKEN);
    let (status, _, body) = stack.http("GET", "/push/test/remote/1.2.3.4", &[("token", TOKEN)]);
    assert_eq!((status, body.as_str()), (200, "1.2.3.4"));

    // A client that forges the header behind the trusted proxy gets nothing from it either.
    let (status, _, _) = stack.http(
        "GET",
        "/index.php/apps/notify_push/test/version",
        &[("X-Nextcloud-Push-Vouch", "v1 0 6.6.6.6 00"), ("X-Forwarded-For", "198.51.100.9")],
    );
    assert_eq!(status, 200);
    let last = stack.cgi_requests().pop().unwrap();
    assert_eq!(last["remote_addr"], "198.51.100.9", "mod_remoteip as configured, no 6.6.6.6");
    assert!(last["vouch"].is_null());
    drop(client);
    stack.finish();
}

/// `NextcloudPushLoopback Off` (Nextcloud on another server): the daemon calls the URL as it is
/// (here a name without DNS, so the call fails) and never sends the vouching header.
#[tokio::test]
async fn loopback_off_calls_the_url_directly() {
    let stack = require!(SelfTestStack::start(|b| b.vhost_line("NextcloudPushLoopback Off")).await);
    assert!(
        stack.apache.error_log().contains(&format!(
            "NCP0043: engine 0 calls Nextcloud at {NEXTCLOUD_URL} directly (NextcloudPushLoopback Off"
        )),
        "{}",
        stack.apache.error_log()
    );
    stack.redis.set("test-token", TOKEN);
    let (status, _, body) = stack.http("GET", "/push/test/remote/1.2.3.4", &[("token", TOKEN)]);
    assert_eq!(status, 200, "errors are reported in the body");
    assert!(body.starts_with("Error while connecting to nextcloud"), "{body}");
    assert!(stack.cgi_requests().is_empty(), "nothing went through this Apache");
    stack.finish();
}

/// The usual production URL is https: the daemon connects to the HTTPS vhost over loopback with
/// TLS SNI and Host `localhost` (the certificate's name) and still vouches for the client.
#[tokio::test]
async fn self_test_passes_with_an_https_nextcloud_url() {
    let ca = require!(TestCa::generate());
    let tls_port = testkit::free_port();
    let url = format!("https://localhost:{tls_port}/");
    let stack = require!(SelfTestStack::start_with(&url, Some((&ca, tls_port)), |b| b).await);
    assert!(
        stack.apache.error_log().contains(&format!(
            "NCP0043: engine 0 calls Nextcloud ({url}) through this Apache at 127.0.0.1:{tls_port} over loopback, vouching"
        )),
        "{}",
        stack.apache.error_log()
    );
    self_test_steps(stack, 5).await;
}

/// The two directives of this feature: listed by `apache2 -L`, On/Off accepted, anything else
/// refused naming the directive.
#[test]
fn loopback_and_metrics_directives_are_checked() {
    let env = require!(Env::require());
    let builder =
        || Apache::builder(&env).nextcloud_url("http://127.0.0.1:9").redis("127.0.0.1", 6379);
    let listing = builder().run_once(&["-L"]);
    assert!(listing.success(), "{}", listing.output);
    for directive in ["NextcloudPushLoopback", "NextcloudPushMetrics"] {
        assert!(listing.output.contains(directive), "{directive}:\n{}", listing.output);
    }
    let good = builder()
        .vhost_line("NextcloudPushLoopback Off")
        .vhost_line("NextcloudPushMetrics On")
        .config_test();
    assert!(good.success(), "{}", good.output);
    for bad in ["NextcloudPushLoopback maybe", "NextcloudPushMetrics 1"] {
        let test = builder().vhost_line(bad).config_test();
        assert!(!test.success(), "{bad} was accepted");
        assert_eq!(test.offending_line().as_deref(), Some(bad), "{}", test.output);
    }
}
