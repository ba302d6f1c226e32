//! Redis Cluster for real: config.php's `redis.cluster` (seeds, ACL user and password) against
//! a real cluster of three masters with two replicas each (testkit::redis_cluster). Events, pre-auth
//! and the self-test's key commands go through the cluster; then the master that owns
//! `notify_push_version` and the node the daemon is subscribed on are killed, the cluster fails
//! over, and the same WebSocket sessions receive the next event. Real apache2, real daemon.

mod common;

use common::client::{raw_request, status_of};
use common::{start_nextcloud, Client, ALICE, AUTHENTICATED, BOB, T};
use std::time::{Duration, Instant};
use testkit::apache::{Apache, Env, Mode};
use testkit::nextcloud::NextcloudDouble;
use testkit::redis_cluster::{RedisCluster, PASSWORD, USER};
use testkit::require;

const TOKEN: &str = "cluster-test-token";

struct ClusterStack {
    cluster: RedisCluster,
    _nextcloud: NextcloudDouble,
    apache: Apache,
}

/// config.php with `redis.cluster` listing every node as a seed, as the ACL user; with a TLS
/// cluster its TLS ports and an `ssl_context` (CA, client certificate).
fn config_php(cluster: &RedisCluster, nextcloud: &str) -> String {
    let (seeds, ssl_context) = match cluster.tls() {
        None => (cluster.seeds(), String::new()),
        Some(tls) => (
            cluster.tls_seeds(),
            format!(
                "    'ssl_context' => array ('cafile' => '{}', 'local_cert' => '{}', 'local_pk' => '{}'),\n",
                tls.ca.display(),
                tls.client_cert.display(),
                tls.client_key.display()
            ),
        ),
    };
    let seeds: Vec<String> = seeds.iter().map(|s| format!("'{s}'")).collect();
    format!(
        "<?php\n$CONFIG = array (\n  'datadirectory' => '{{root}}/data',\n  'dbtype' => 'sqlite3',\n  \
         'dbname' => 'nextcloud',\n  'overwrite.cli.url' => '{nextcloud}',\n  'redis.cluster' => array (\n    \
         'seeds' => array ({}),\n    'user' => '{USER}',\n    'password' => '{PASSWORD}',\n{ssl_context}  ),\n);\n",
        seeds.join(", ")
    )
}

async fn cluster_stack() -> Result<ClusterStack, testkit::Skip> {
    stack_on(RedisCluster::start()?).await
}

async fn stack_on(cluster: RedisCluster) -> Result<ClusterStack, testkit::Skip> {
    let nextcloud = start_nextcloud();
    let env = Env::require()?;
    let apache = Apache::builder(&env)
        .config_php_text(&config_php(&cluster, &nextcloud.base_url()))
        .vhost_line("NextcloudPushDebounce Off")
        .start(Mode::Foreground)
        .await;
    let subscribed =
        testkit::wait_until(T, || async { !cluster.subscribed_nodes("notify_custom").is_empty() })
            .await;
    assert!(subscribed, "the daemon never subscribed on a cluster node\n{}", apache.error_log());
    Ok(ClusterStack { cluster, _nextcloud: nextcloud, apache })
}

impl ClusterStack {
    async fn login(&self, (user, password): (&str, &str)) -> Client {
        Client::login(&self.apache.ws_url(), user, password, T).await
    }

    /// One HTTP request to Apache: (status, body).
    async fn http(&self, method: &str, path: &str) -> (u16, String) {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\ntoken: {TOKEN}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let (_, head, rest) = raw_request(self.apache.addr(), request.as_bytes(), T).await;
        (status_of(&head).unwrap_or(0), String::from_utf8_lossy(&rest).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_pre_auth_and_key_commands_go_through_the_cluster() {
    let stack = require!(cluster_stack().await);
    let cluster = &stack.cluster;
    // Redis says the subscription runs as the ACL user.
    let node = cluster.subscribed_nodes("notify_custom")[0];
    let clients = cluster.command(node, &["CLIENT", "LIST"]);
    assert!(
        clients.lines().any(|l| l.contains(&format!(" user={USER} ")) && l.contains("subscribe")),
        "{clients}"
    );

    let mut alice = stack.login(ALICE).await;
    cluster.publish("notify_custom", r#"{"user":"alice","message":"through_the_cluster"}"#);
    alice.expect_text("through_the_cluster", T).await;

    let token = "Xk3pQ7c1N2b5v8m0Lz4r6t9y1u3i5o7p";
    cluster.publish("notify_pre_auth", &format!(r#"{{"user":"bob","token":"{token}"}}"#));
    cluster.publish("notify_custom", r#"{"user":"alice","message":"token_published"}"#);
    alice.expect_text("token_published", T).await;
    let mut bob = Client::connect(&stack.apache.ws_url(), T).await;
    bob.send_login("", token).await;
    assert_eq!(bob.next_text(T).await.as_deref(), Ok(AUTHENTICATED));

    // The self-test's key commands, whichever master owns the keys.
    cluster.set("test-token", TOKEN);
    // The cookie published on every other node in turn (Nextcloud's client picks any node):
    // `/test/cookie` right afterwards still sees each one.
    let others = cluster.ports().into_iter().filter(|&p| p != node);
    for (round, port) in others.enumerate() {
        let cookie = (4242 + round).to_string();
        cluster.publish_on(port, "notify_test_cookie", &cookie);
        assert_eq!(stack.http("GET", "/push/test/cookie").await, (200, cookie), "via {port}");
    }
    assert_eq!(stack.http("POST", "/push/test/version").await, (200, "set".to_string()));
    assert!(cluster.get("notify_push_version").is_some(), "notify_push_version set in the cluster");
    cluster.publish("notify_query", r#""metrics""#);
    assert!(
        testkit::wait_until_sync(T, || cluster
            .get("notify_push_metrics")
            .is_some_and(|m| m.contains("\"active_connection_count\":2"))),
        "notify_push_metrics written into the cluster: {:?}\n{}",
        cluster.get("notify_push_metrics"),
        stack.apache.error_log()
    );
    alice.close().await;
    bob.close().await;
    let mut apache = stack.apache;
    // The Nextcloud double has no app-version endpoint (the version step reports the module's).
    apache.allow("NCP1013");
    apache.finish();
}

/// Publishes numbered probes for alice until one arrives (bounded): how long after `since`
/// events flow again.
async fn events_flow_again(cluster: &RedisCluster, alice: &mut Client, since: Instant) -> Duration {
    for n in 0..300 {
        cluster.publish("notify_custom", &format!(r#"{{"user":"alice","message":"probe_{n}"}}"#));
        if let Ok(text) = alice.next_text(Duration::from_millis(100)).await {
            assert!(text.starts_with("probe_"), "{text}");
            let flowing = since.elapsed();
            // Probes still in flight.
            while alice.next_text(Duration::from_millis(300)).await.is_ok() {}
            return flowing;
        }
    }
    panic!("events never flowed again");
}

/// The node the daemon subscribed on dies: the subscription moves to another node at once and
/// the sessions keep receiving. Then the master that owns `notify_push_version` dies: the
/// cluster promotes one of its replicas and the self-test's key command reaches the new master.
/// (One at a time: with three masters, two dead at once leave no majority to elect anyone.)
/// No session is dropped; the figures go to the test output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_the_failover_of_the_subscribed_node_and_the_version_master() {
    let stack = require!(cluster_stack().await);
    let ws = stack.apache.ws_url();
    let mut alice = Client::login(&ws, ALICE.0, ALICE.1, T).await;
    let mut bob = Client::login(&ws, BOB.0, BOB.1, T).await;
    stack.cluster.set("test-token", TOKEN);
    let ClusterStack { mut cluster, _nextcloud, mut apache } = stack;
    let daemon = apache.daemon_pid().expect("daemon");

    let subscribed = cluster.subscribed_nodes("notify_custom")[0];
    let killed = Instant::now();
    cluster.kill(subscribed);
    let resubscribed = events_flow_again(&cluster, &mut alice, killed).await;
    assert!(cluster.await_healthy(Duration::from_secs(30)), "{}", cluster.describe());

    let master = cluster.master_of("notify_push_version");
    let stack = ClusterStack { cluster, _nextcloud, apache };
    let killed = Instant::now();
    let mut stack = stack;
    stack.cluster.kill(master);
    let mut answered = None;
    for _ in 0..100 {
        if stack.http("POST", "/push/test/version").await == (200, "set".to_string()) {
            answered = Some(killed.elapsed());
            break;
        }
    }
    let answered = answered.expect("the version key never reached a new master");
    assert!(stack.cluster.await_healthy(Duration::from_secs(30)), "{}", stack.cluster.describe());
    assert!(stack.cluster.get("notify_push_version").is_some());
    let events_after_master = events_flow_again(&stack.cluster, &mut alice, killed).await;

    stack.cluster.publish("notify_custom", r#"{"user":"alice","message":"after_failover"}"#);
    stack.cluster.publish("notify_custom", r#"{"user":"bob","message":"after_failover"}"#);
    alice.expect_text("after_failover", T).await;
    bob.expect_text("after_failover", T).await;
    eprintln!(
        "FIGURES cluster (node timeout {} ms): subscribed node killed -> events again after {resubscribed:?}; \
         version master killed -> key command answered after {answered:?}, events after {events_after_master:?}; \
         2 of 2 sessions kept",
        testkit::redis_cluster::NODE_TIMEOUT_MS
    );
    let ClusterStack { cluster: _cluster, _nextcloud, mut apache } = stack;
    assert_eq!(apache.daemon_pid(), Some(daemon));
    let log = apache.error_log();
    assert!(!log.contains("alice disconnected") && !log.contains("bob disconnected"), "{log}");
    apache.allow("NCP1001");
    apache.allow("NCP1013");
    alice.close().await;
    bob.close().await;
    apache.finish();
}

/// `NextcloudPushRedis` naming several URLs (the cluster's seeds, with the ACL user) instead of
/// config.php: events flow through the cluster the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directive_can_name_the_cluster_seeds() {
    let cluster = require!(RedisCluster::start());
    let nextcloud = start_nextcloud();
    let env = require!(Env::require());
    let seeds: Vec<String> = cluster
        .seeds()
        .iter()
        .take(3)
        .map(|s| format!("redis://{USER}:{PASSWORD}@{s}/0"))
        .collect();
    let apache = Apache::builder(&env)
        .push_config(false)
        .vhost_line(format!("NextcloudPushNextcloudUrl {}", nextcloud.base_url()))
        .vhost_line(format!("NextcloudPushRedis {}", seeds.join(" ")))
        .vhost_line("NextcloudPushDebounce Off")
        .expect_daemon(true)
        .start(Mode::Foreground)
        .await;
    assert!(
        testkit::wait_until(T, || async { !cluster.subscribed_nodes("notify_custom").is_empty() })
            .await,
        "{}",
        apache.error_log()
    );
    let mut alice = Client::login(&apache.ws_url(), ALICE.0, ALICE.1, T).await;
    cluster.publish("notify_custom", r#"{"user":"alice","message":"seeds_by_directive"}"#);
    alice.expect_text("seeds_by_directive", T).await;
    assert!(!apache.error_log().contains(PASSWORD), "the password is never logged");
    alice.close().await;
    apache.finish();
}

/// A TLS cluster (`rediss://` seeds, config.php's `ssl_context` with the CA and a client
/// certificate, the ACL user): the subscription and the key commands run over TLS, to the nodes'
/// TLS ports, and events, `/test/cookie` and `/test/version` work as without TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_with_an_acl_user_works_the_same() {
    let stack = require!(stack_on(require!(RedisCluster::start_tls())).await);
    let cluster = &stack.cluster;
    let node = cluster.subscribed_nodes("notify_custom")[0];
    let tls_port = cluster.tls_seeds()[cluster.ports().iter().position(|&p| p == node).unwrap()]
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let clients = cluster.command(node, &["CLIENT", "LIST"]);
    assert!(
        clients.lines().any(|l| l.contains(&format!(" user={USER} "))
            && l.contains("subscribe")
            && l.contains(&format!("laddr=127.0.0.1:{tls_port} "))),
        "the subscription runs over TLS as the ACL user:\n{clients}"
    );
    let mut alice = stack.login(ALICE).await;
    cluster.publish("notify_custom", r#"{"user":"alice","message":"over_tls"}"#);
    alice.expect_text("over_tls", T).await;
    cluster.set("test-token", TOKEN);
    cluster.publish("notify_test_cookie", "777");
    assert_eq!(stack.http("GET", "/push/test/cookie").await, (200, "777".to_string()));
    assert_eq!(stack.http("POST", "/push/test/version").await, (200, "set".to_string()));
    assert!(cluster.get("notify_push_version").is_some());
    alice.close().await;
    let mut apache = stack.apache;
    apache.allow("NCP1013");
    apache.finish();
}

/// Resharding: every slot of the master that owns `notify_push_version` moves to another master
/// while sessions are open. Key commands follow (`MOVED`), the subscription is untouched
/// (pub/sub does not depend on slots), the sessions receive the next event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_commands_follow_a_reshard_and_sessions_keep_receiving() {
    let stack = require!(cluster_stack().await);
    let cluster = &stack.cluster;
    let mut alice = stack.login(ALICE).await;
    cluster.set("test-token", TOKEN);
    assert_eq!(stack.http("POST", "/push/test/version").await, (200, "set".to_string()));
    let from = cluster.master_of("notify_push_version");
    let nodes = cluster.command(from, &["CLUSTER", "NODES"]);
    let to = nodes
        .lines()
        .filter(|l| l.contains("master") && !l.contains("myself"))
        .find_map(|l| {
            l.split_whitespace().nth(1)?.split('@').next()?.rsplit(':').next()?.parse::<u16>().ok()
        })
        .expect("another master");
    cluster.move_all_slots(from, to);
    assert_eq!(cluster.master_of("notify_push_version"), to, "the key's slot moved");
    cluster.set("test-token", TOKEN);
    assert_eq!(stack.http("POST", "/push/test/version").await, (200, "set".to_string()));
    assert!(cluster.get("notify_push_version").is_some());
    cluster.publish("notify_custom", r#"{"user":"alice","message":"after_reshard"}"#);
    alice.expect_text("after_reshard", T).await;
    alice.close().await;
    let mut apache = stack.apache;
    apache.allow("NCP1013");
    apache.finish();
}
