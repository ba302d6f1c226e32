//! A real Redis Cluster per test: three masters with two replicas each (`redis-server
//! --cluster-enabled yes` on nine free loopback ports, joined by `redis-cli --cluster create
//! --cluster-replicas 2`), with a short `cluster-node-timeout` so a failover takes seconds. Two
//! replicas per master: a test can kill any two nodes (a master and the replica the daemon
//! subscribed on, say) and the cluster still covers every slot.
//! Every node runs with an ACL user (`user`, `password`) besides the default user, so tests can
//! connect as either. Nodes are killed on drop.
//!
//! Missing `redis-server` or `redis-cli` is a [`Skip`] (a panic under `CI=true`).

use crate::Skip;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// How long a node may be unreachable before the cluster fails it over.
pub const NODE_TIMEOUT_MS: u64 = 1000;
/// The ACL user every node knows (see the module documentation).
pub const USER: &str = "push";
pub const PASSWORD: &str = "cluster-s3cret";

pub struct RedisCluster {
    dir: tempfile::TempDir,
    nodes: Vec<ClusterNode>,
    tls: Option<crate::redis::RedisTlsFiles>,
}

struct ClusterNode {
    port: u16,
    /// With [`RedisCluster::start_tls`]: the node's TLS port.
    tls_port: Option<u16>,
    child: Option<Child>,
}

impl RedisCluster {
    /// Starts nine nodes and creates the cluster; returns when every node says `cluster_state:ok`.
    pub fn start() -> Result<RedisCluster, Skip> {
        RedisCluster::start_inner(false)
    }

    /// [`RedisCluster::start`] whose nodes also serve TLS (`rediss://` on [`RedisCluster::tls_seeds`],
    /// certificates from [`RedisCluster::tls`], readable by everyone) and talk TLS among
    /// themselves (`tls-cluster`, `tls-replication`); the plain ports stay open for the test's
    /// own commands. A TLS client is told the TLS ports of the other nodes.
    pub fn start_tls() -> Result<RedisCluster, Skip> {
        RedisCluster::start_inner(true)
    }

    fn start_inner(tls: bool) -> Result<RedisCluster, Skip> {
        let server = crate::find_binary("redis-server");
        let cli = crate::find_binary("redis-cli");
        let (Some(server), Some(cli)) = (server, cli) else {
            let reason = "redis-server or redis-cli not found (install the `redis-server` package)";
            if crate::in_ci() {
                panic!("{reason}; CI=true, so this is an error");
            }
            return Err(Skip(reason.into()));
        };
        let dir = tempfile::tempdir().map_err(|e| Skip(format!("cannot create a tempdir: {e}")))?;
        let files = if tls {
            let files = crate::redis::make_certificates(dir.path())?;
            // The push daemon (Apache's User) reads the CA and client files.
            for f in std::fs::read_dir(dir.path()).expect("cert dir").flatten() {
                let _ = std::fs::set_permissions(
                    f.path(),
                    std::os::unix::fs::PermissionsExt::from_mode(0o644),
                );
            }
            let _ = std::fs::set_permissions(
                dir.path(),
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            );
            Some(files)
        } else {
            None
        };
        let mut cluster = RedisCluster { dir, nodes: Vec::new(), tls: files };
        for i in 0..9 {
            let port = crate::free_port();
            let node_dir = cluster.dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let mut command = Command::new(&server);
            let tls_port = cluster.tls.as_ref().map(|files| {
                let tls_port = crate::free_port();
                command
                    .args(["--tls-port", &tls_port.to_string()])
                    .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                    .args(["--tls-auth-clients", "no"])
                    .arg("--tls-cert-file")
                    .arg(&files.server_cert)
                    .arg("--tls-key-file")
                    .arg(&files.server_key)
                    // The cluster bus checks the connecting node's certificate as a client's.
                    .arg("--tls-client-cert-file")
                    .arg(&files.client_cert)
                    .arg("--tls-client-key-file")
                    .arg(&files.client_key)
                    .arg("--tls-ca-cert-file")
                    .arg(&files.ca);
                tls_port
            });
            let child = command
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
                // A replica may always take over (it would refuse with data it thinks too old).
                .args(["--cluster-replica-validity-factor", "0"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(&node_dir)
                .arg("--logfile")
                .arg(node_dir.join("redis.log"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", server.display()));
            cluster.nodes.push(ClusterNode { port, tls_port, child: Some(child) });
        }
        for node in &cluster.nodes {
            let url = format!("redis://127.0.0.1:{}/", node.port);
            assert!(
                crate::wait_until_sync(Duration::from_secs(10), || ping(&url)),
                "cluster node {} did not answer PING",
                node.port
            );
            let acl = ["ACL", "SETUSER", USER, "on", &format!(">{PASSWORD}"), "~*", "&*", "+@all"];
            cluster.command(node.port, &acl);
        }
        // With tls-cluster the cluster bus hangs off the TLS port: the nodes meet there.
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.tls_port.unwrap_or(n.port)))
            .collect();
        // Bounded: redis-cli waits forever for nodes that cannot meet.
        let mut create = Command::new("timeout");
        create.arg("60").arg(&cli);
        if let Some(files) = &cluster.tls {
            create.arg("--tls").arg("--cacert").arg(&files.ca);
        }
        let create = create
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "2", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            create.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&create.stdout),
            String::from_utf8_lossy(&create.stderr)
        );
        assert!(
            cluster.await_healthy(Duration::from_secs(30)),
            "the cluster did not become healthy:\n{}",
            cluster.describe()
        );
        // Every replica has synced with its master (a failover promotes one of them).
        let ports = cluster.ports();
        let synced = crate::wait_until_sync(Duration::from_secs(30), || {
            ports.iter().all(|&port| {
                let info = try_command(port, &["INFO", "replication"]).unwrap_or_default();
                info.contains("role:master") || info.contains("master_link_status:up")
            })
        });
        assert!(synced, "the replicas did not sync:\n{}", cluster.describe());
        Ok(cluster)
    }

    /// The seeds as `host:port`, every node (what config.php's `redis.cluster.seeds` lists).
    pub fn seeds(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect()
    }

    /// With [`RedisCluster::start_tls`]: every node's TLS address, `host:port`.
    pub fn tls_seeds(&self) -> Vec<String> {
        self.nodes.iter().filter_map(|n| n.tls_port).map(|p| format!("127.0.0.1:{p}")).collect()
    }

    /// With [`RedisCluster::start_tls`]: the CA and the client certificate.
    pub fn tls(&self) -> Option<&crate::redis::RedisTlsFiles> {
        self.tls.as_ref()
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.port).collect()
    }

    /// A command on one node as the default user; its reply rendered as text.
    pub fn command(&self, port: u16, args: &[&str]) -> String {
        let url = format!("redis://127.0.0.1:{port}/");
        let mut connection = ::redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .unwrap_or_else(|e| panic!("cluster node {port}: {e}"));
        let value: ::redis::Value = ::redis::cmd(args[0])
            .arg(&args[1..])
            .query(&mut connection)
            .unwrap_or_else(|e| panic!("cluster node {port} {args:?}: {e}"));
        render(&value)
    }

    /// `PUBLISH` on a live node; returns the receivers that node counted (cluster-wide delivery
    /// goes over the cluster bus, so other nodes' subscribers are not in that count).
    pub fn publish(&self, channel: &str, payload: &str) {
        let port = *self.live_ports().first().expect("a live node");
        self.command(port, &["PUBLISH", channel, payload]);
    }

    /// `SET key value` on the master that owns the key.
    pub fn set(&self, key: &str, value: &str) {
        self.command(self.master_of(key), &["SET", key, value]);
    }

    /// `GET key` on the master that owns the key (`None`: not set).
    pub fn get(&self, key: &str) -> Option<String> {
        let port = self.master_of(key);
        let url = format!("redis://127.0.0.1:{port}/");
        let mut connection = ::redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .unwrap_or_else(|e| panic!("cluster node {port}: {e}"));
        ::redis::cmd("GET").arg(key).query(&mut connection).expect("GET")
    }

    /// Moves every slot of the master `from` to the master `to` (`redis-cli --cluster reshard`,
    /// bounded in time); returns when the cluster is healthy again.
    pub fn move_all_slots(&self, from: u16, to: u16) {
        let id = |port: u16| self.command(port, &["CLUSTER", "MYID"]);
        let slots = self
            .command(from, &["CLUSTER", "NODES"])
            .lines()
            .find(|l| l.contains("myself"))
            .map(|l| {
                l.split_whitespace()
                    .skip(8)
                    .map(|r| {
                        let (a, b) = r.split_once('-').unwrap_or((r, r));
                        b.parse::<u32>().unwrap_or(0) + 1 - a.parse::<u32>().unwrap_or(0)
                    })
                    .sum::<u32>()
            })
            .unwrap_or(0);
        let cli = crate::find_binary("redis-cli").expect("redis-cli");
        let out = Command::new("timeout")
            .arg("120")
            .arg(cli)
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &id(from), "--cluster-to", &id(to)])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster reshard");
        assert!(out.status.success(), "reshard failed: {}", String::from_utf8_lossy(&out.stderr));
        assert!(self.await_healthy(Duration::from_secs(30)), "{}", self.describe());
    }

    /// `PUBLISH` on the given node.
    pub fn publish_on(&self, port: u16, channel: &str, payload: &str) {
        self.command(port, &["PUBLISH", channel, payload]);
    }

    /// The master that owns `key`'s slot now.
    pub fn master_of(&self, key: &str) -> u16 {
        let port = *self.live_ports().first().expect("a live node");
        let slot: u16 = self.command(port, &["CLUSTER", "KEYSLOT", key]).parse().expect("slot");
        let nodes = self.command(port, &["CLUSTER", "NODES"]);
        nodes
            .lines()
            .filter(|l| l.contains("master") && !l.contains("fail"))
            .find(|l| {
                l.split_whitespace().skip(8).any(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    let (a, b) = (a.parse().unwrap_or(u16::MAX), b.parse().unwrap_or(0));
                    (a..=b).contains(&slot)
                })
            })
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|a| a.split(['@', ',']).next())
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no master for slot {slot}:\n{nodes}"))
    }

    /// The live nodes on which some client is subscribed to `channel`.
    pub fn subscribed_nodes(&self, channel: &str) -> Vec<u16> {
        self.live_ports()
            .into_iter()
            .filter(|&port| {
                let reply = self.command(port, &["PUBSUB", "NUMSUB", channel]);
                reply.split_whitespace().nth(1).and_then(|n| n.parse::<i64>().ok()).unwrap_or(0) > 0
            })
            .collect()
    }

    /// Kills a node (SIGKILL: its connections see it disappear).
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port) {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Waits until every live node reports `cluster_state:ok` with all 16384 slots and sees
    /// every slot-serving master alive (after a kill: the failover is done, a replica was
    /// promoted in the dead master's place).
    pub fn await_healthy(&self, timeout: Duration) -> bool {
        let live = self.live_ports();
        crate::wait_until_sync(timeout, || {
            live.iter().all(|&port| {
                let info = try_command(port, &["CLUSTER", "INFO"]).unwrap_or_default();
                let nodes = try_command(port, &["CLUSTER", "NODES"]).unwrap_or_default();
                let masters_alive = nodes
                    .lines()
                    .filter(|l| l.contains("master") && l.split_whitespace().count() > 8)
                    .filter_map(|l| l.split_whitespace().nth(1))
                    .filter_map(|a| a.split(['@', ',']).next()?.rsplit(':').next()?.parse().ok())
                    .all(|p: u16| live.contains(&p));
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && masters_alive
            })
        })
    }

    /// `CLUSTER NODES` of a live node, for failure messages.
    pub fn describe(&self) -> String {
        self.live_ports()
            .first()
            .and_then(|&p| try_command(p, &["CLUSTER", "NODES"]))
            .unwrap_or_default()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn try_command(port: u16, args: &[&str]) -> Option<String> {
    let url = format!("redis://127.0.0.1:{port}/");
    let mut connection = ::redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
        .ok()?;
    let value: ::redis::Value =
        ::redis::cmd(args[0]).arg(&args[1..]).query(&mut connection).ok()?;
    Some(render(&value))
}

fn render(value: &::redis::Value) -> String {
    match value {
        ::redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        ::redis::Value::SimpleString(s) => s.clone(),
        ::redis::Value::Okay => "OK".into(),
        ::redis::Value::Int(i) => i.to_string(),
        ::redis::Value::Nil => String::new(),
        ::redis::Value::Array(items) => items.iter().map(render).collect::<Vec<_>>().join(" "),
        other => format!("{other:?}"),
    }
}

fn ping(url: &str) -> bool {
    ::redis::Client::open(url)
        .and_then(|client| client.get_connection_with_timeout(Duration::from_millis(200)))
        .and_then(|mut connection| ::redis::cmd("PING").query::<String>(&mut connection))
        .is_ok_and(|pong| pong == "PONG")
}
