//! How the engine reaches Redis: one server, or a Redis Cluster.
//!
//! Key commands (the self-test's keys, `notify_push_version`, the metrics) go through
//! [`RedisConn::commands`]: a multiplexed connection to the one server, or redis-rs's cluster
//! connection, which routes every key to the master that owns its slot, follows `MOVED`/`ASK`
//! and learns the new topology after a failover.
//!
//! Pub/sub needs no routing: in a cluster a `PUBLISH` reaches the subscribers of every node
//! (masters and replicas, over the cluster bus), so the listener subscribes on one node at a
//! time ([`RedisConn::pubsub_node`]). When that node fails, the listener moves on to the next
//! known node at once ([`RedisConn::node_failed`]): the seeds first, then the nodes the cluster
//! reported (`CLUSTER NODES`, refreshed after every subscription, [`RedisConn::learn_nodes`]),
//! so the subscription survives the loss of any node while the cluster itself stays up.

use crate::config::{redact_url, RedisConfig};
use crate::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A node the listener can subscribe on.
#[derive(Clone)]
pub(crate) struct Node {
    pub client: redis::Client,
    /// The node's URL without its password, for log lines.
    pub shown: String,
    url: String,
}

pub(crate) struct RedisConn {
    /// The one server, or the cluster's nodes for pub/sub (seeds first), tried in turn.
    nodes: Mutex<Vec<Node>>,
    /// Index into `nodes` of the node to subscribe on next.
    next: AtomicUsize,
    cluster: Option<redis::cluster::ClusterClient>,
    /// What every node connection needs: TLS files of `ssl_context`.
    certs: Option<Certs>,
}

/// A key-command connection: to the one server, or to the cluster.
pub(crate) enum Commands {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for Commands {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Commands::Single(c) => c.req_packed_command(cmd),
            Commands::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Commands::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Commands::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Single(c) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
        }
    }
}

/// The PEM files of config.php's `ssl_context`, read once.
#[derive(Clone)]
struct Certs {
    client: Option<(Vec<u8>, Vec<u8>)>,
    root: Option<Vec<u8>>,
}

impl Certs {
    fn tls(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self.client.clone().map(|(client_cert, client_key)| {
                redis::ClientTlsConfig { client_cert, client_key }
            }),
            root_cert: self.root.clone(),
        }
    }
}

impl RedisConn {
    pub(crate) fn new(config: &RedisConfig) -> Result<RedisConn, Error> {
        let certs = match &config.tls {
            None => None,
            Some(tls) => {
                if tls.accept_invalid_hostname {
                    log::warn!(
                        target: "nextcloud_push::redis",
                        "NCP1007: config.php redis ssl_context verify_peer_name => false is not supported; the Redis server's hostname is verified"
                    );
                }
                let read = |path: &std::path::PathBuf| {
                    std::fs::read(path).map_err(|e| Error::RedisTlsFile {
                        path: path.clone(),
                        reason: e.to_string(),
                    })
                };
                let client = match (&tls.client_cert, &tls.client_key) {
                    (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                    _ => None,
                };
                let root = tls.ca_file.as_ref().map(read).transpose()?;
                Some(Certs { client, root })
            }
        };
        let seeds: Vec<String> = if config.cluster_seeds.is_empty() {
            vec![config.url.clone()]
        } else {
            config.cluster_seeds.clone()
        };
        let nodes =
            seeds.iter().map(|url| node(url, certs.as_ref())).collect::<Result<Vec<_>, _>>()?;
        let cluster = if config.cluster_seeds.is_empty() {
            None
        } else {
            let mut builder = redis::cluster::ClusterClientBuilder::new(seeds.clone())
                // A failover takes the cluster a few seconds: requests wait for it (bounded).
                .retries(6)
                .connection_timeout(std::time::Duration::from_secs(2))
                .response_timeout(std::time::Duration::from_secs(5));
            if let Some(certs) = &certs {
                builder = builder.certs(certs.tls());
            }
            Some(builder.build().map_err(Error::RedisClient)?)
        };
        Ok(RedisConn { nodes: Mutex::new(nodes), next: AtomicUsize::new(0), cluster, certs })
    }

    /// How many nodes the listener knows.
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub(crate) fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// A connection for key commands (a new one each call; callers bound it in time).
    pub(crate) async fn commands(&self) -> redis::RedisResult<Commands> {
        match &self.cluster {
            Some(cluster) => Ok(Commands::Cluster(cluster.get_async_connection().await?)),
            None => {
                let node = self.pubsub_node();
                Ok(Commands::Single(node.client.get_multiplexed_async_connection().await?))
            }
        }
    }

    /// The node to subscribe on now.
    pub(crate) fn pubsub_node(&self) -> Node {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let i = self.next.load(Ordering::Relaxed) % nodes.len().max(1);
        nodes[i].clone()
    }

    /// The subscription on `failed` ended or could not start: the next call to
    /// [`RedisConn::pubsub_node`] gives the following node. `true` when there is another node
    /// to try (a cluster with more than one known node).
    pub(crate) fn node_failed(&self, failed: &Node) -> bool {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.next.load(Ordering::Relaxed) % nodes.len().max(1);
        if nodes.get(current).is_some_and(|n| n.url == failed.url) {
            self.next.store((current + 1) % nodes.len().max(1), Ordering::Relaxed);
        }
        nodes.len() > 1
    }

    /// Asks the cluster which nodes it has and adds the ones not known yet (after the seeds),
    /// so the subscription can move to any of them. Failed nodes are left out.
    pub(crate) async fn learn_nodes(&self) {
        let Some(cluster) = &self.cluster else { return };
        let answer = async {
            let mut connection = cluster.get_async_connection().await?;
            redis::cmd("CLUSTER").arg("NODES").query_async::<String>(&mut connection).await
        };
        let Ok(Ok(text)) = tokio::time::timeout(std::time::Duration::from_secs(5), answer).await
        else {
            return;
        };
        let template = self.pubsub_node().url;
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        for address in cluster_nodes(&text) {
            let url = with_address(&template, &address);
            if nodes.iter().any(|n| n.url == url) {
                continue;
            }
            if let Ok(new) = node(&url, self.certs.as_ref()) {
                nodes.push(new);
            }
        }
    }
}

fn node(url: &str, certs: Option<&Certs>) -> Result<Node, Error> {
    let client = match certs {
        Some(certs) => redis::Client::build_with_tls(url, certs.tls()),
        None => redis::Client::open(url),
    }
    .map_err(Error::RedisClient)?;
    Ok(Node { client, shown: redact_url(url), url: url.to_owned() })
}

/// `host:port` of every node `CLUSTER NODES` lists that is not marked failed or without
/// address (`<id> <ip:port@cport[,hostname]> <flags> …`).
fn cluster_nodes(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _id = fields.next()?;
            let address = fields.next()?.split(['@', ',']).next()?;
            let flags = fields.next()?;
            let failed =
                flags.split(',').any(|f| matches!(f, "fail" | "fail?" | "noaddr" | "handshake"));
            (!failed && !address.starts_with(':')).then(|| address.to_owned())
        })
        .collect()
}

/// `template` (a seed's URL: scheme, credentials, database, fragment) pointed at `address`.
fn with_address(template: &str, address: &str) -> String {
    let (scheme, rest) = template.split_once("://").unwrap_or(("redis", template));
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let userinfo = authority.rsplit_once('@').map(|(u, _)| format!("{u}@")).unwrap_or_default();
    format!("{scheme}://{userinfo}{address}{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lists_live_addresses() {
        let text = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001,redis-b master - 0 1700000000000 2 connected 5461-10922
c3 127.0.0.1:7002@17002 master,fail - 1700000000000 1700000000000 3 disconnected
d4 :0@0 slave,noaddr a1 0 0 1 disconnected
e5 [::1]:7004@17004 slave a1 0 1700000000000 1 connected
";
        assert_eq!(cluster_nodes(text), ["127.0.0.1:7000", "127.0.0.1:7001", "[::1]:7004"]);
    }

    /// The subscription moves to the next node when its node fails, wraps around, and a
    /// failure reported for a node it already left moves nothing.
    #[test]
    fn a_failed_subscription_node_passes_to_the_next() {
        let seeds: Vec<String> =
            (7000..7003).map(|port| format!("redis://127.0.0.1:{port}/")).collect();
        let config = RedisConfig { url: seeds[0].clone(), cluster_seeds: seeds.clone(), tls: None };
        let conn = RedisConn::new(&config).unwrap();
        assert_eq!(conn.node_count(), 3);
        let url = |n: Node| n.url;
        assert_eq!(url(conn.pubsub_node()), seeds[0]);
        let first = conn.pubsub_node();
        assert!(conn.node_failed(&first), "another node to try");
        assert_eq!(url(conn.pubsub_node()), seeds[1]);
        assert!(conn.node_failed(&first));
        assert_eq!(url(conn.pubsub_node()), seeds[1], "a stale failure moves nothing");
        conn.node_failed(&conn.pubsub_node());
        assert_eq!(url(conn.pubsub_node()), seeds[2]);
        conn.node_failed(&conn.pubsub_node());
        assert_eq!(url(conn.pubsub_node()), seeds[0], "wraps around");

        let single = RedisConfig { url: seeds[0].clone(), cluster_seeds: vec![], tls: None };
        let conn = RedisConn::new(&single).unwrap();
        assert!(!conn.node_failed(&conn.pubsub_node()), "no other node");
        assert_eq!(url(conn.pubsub_node()), seeds[0]);
    }

    #[test]
    fn a_learned_node_keeps_the_seed_url_but_its_address() {
        assert_eq!(
            with_address("redis://push:s%40c@10.0.0.1:7000/0", "10.0.0.2:7001"),
            "redis://push:s%40c@10.0.0.2:7001/0"
        );
        assert_eq!(
            with_address("rediss://10.0.0.1:7000/0#insecure", "10.0.0.2:7001"),
            "rediss://10.0.0.2:7001/0#insecure"
        );
        assert_eq!(with_address("redis://h:1", "x:2"), "redis://x:2");
    }
}
