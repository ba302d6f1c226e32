//! What the Apache parent decides about the push daemon at every configuration pass: which
//! engines the daemon runs (one per distinct configuration), how each reaches Nextcloud, the
//! daemon's fingerprint, and whether the running daemon is kept or replaced. Pure and
//! unit-tested; `lifecycle` only moves the facts out of httpd and the decisions back in.

use nextcloud_push_engine::vouch::VouchKey;
use nextcloud_push_engine::{EngineConfig, NextcloudRoute};
use sha1::{Digest, Sha1};
use std::net::SocketAddr;
use std::path::Path;

/// A vhost address the daemon can call Nextcloud through; the bool says whether its port is
/// the Nextcloud URL's.
pub type Loopback = (SocketAddr, bool);

/// The daemon's engines, in index order (the index is what a Hello names).
#[derive(Debug, Default)]
pub struct Engines {
    pub configs: Vec<EngineConfig>,
    /// `configs[i].fingerprint()`.
    pub prints: Vec<String>,
    /// Per engine, the vhost address the daemon calls Nextcloud through.
    pub loopbacks: Vec<Option<Loopback>>,
}

impl Engines {
    /// Adds one push-enabled server: servers with equal configurations share an engine.
    /// `loopback` is the server's own address (`None`: `NextcloudPushLoopback Off` or no
    /// address). Returns the server's engine index and that engine's fingerprint.
    pub fn add(&mut self, config: &EngineConfig, loopback: Option<Loopback>) -> (u32, String) {
        let print = config.fingerprint();
        let index = match self.prints.iter().position(|p| *p == print) {
            Some(i) => i,
            None => {
                self.prints.push(print.clone());
                self.configs.push(config.clone());
                self.loopbacks.push(None);
                self.configs.len() - 1
            }
        };
        self.loopbacks[index] = better_loopback(self.loopbacks[index], loopback);
        (index as u32, print)
    }

    pub fn is_empty(&self) -> bool {
        self.configs.is_empty()
    }

    /// How each engine reaches Nextcloud: over loopback with the daemon's vouching key where a
    /// vhost address is known, else at its URL without vouching.
    pub fn routes(&self, key: &VouchKey) -> Vec<NextcloudRoute> {
        self.loopbacks
            .iter()
            .map(|l| NextcloudRoute { loopback: l.map(|l| l.0), vouch: l.map(|_| key.clone()) })
            .collect()
    }
}

/// The first address found wins, unless a later one has the Nextcloud URL's port and it has not.
fn better_loopback(current: Option<Loopback>, found: Option<Loopback>) -> Option<Loopback> {
    match (current, found) {
        (None, Some(found)) | (Some((_, false)), Some(found @ (_, true))) => Some(found),
        _ => current,
    }
}

/// Everything besides the engines that a daemon is started with.
#[derive(Clone, Copy, Debug)]
pub struct DaemonIdentity<'a> {
    pub socket: &'a Path,
    /// The daemon's log level (the main server's LogLevel for the module).
    pub level: log::LevelFilter,
    /// The installed module file (device, inode, size, mtime): a new build replaces the daemon
    /// at the next graceful restart even without a version bump.
    pub build: &'a str,
    /// Apache's `User` and `Group`.
    pub user: (u32, u32),
    /// Each engine's log level and destination (its vhost's LogLevel and own ErrorLog).
    pub instance_logs: &'a str,
    /// [`server_label`]: a kept daemon could not learn a new one, so a changed ServerName (or
    /// hostname) replaces the daemon like any other push configuration change.
    pub server_label: &'a str,
}

/// The name of this Apache server in the metrics the daemon writes to Redis
/// (`notify_push_metrics:<label>`, the `server` field) and in server-status:
/// `<hostname>/<ServerName>[:<port>]`, e.g. `web1/cloud.example.com:443`. The port tells two
/// Apache servers on one machine apart; without a hostname the label starts at the ServerName.
pub fn server_label(hostname: &str, server_name: &str, port: Option<u16>) -> String {
    let mut label = match hostname.trim() {
        "" => String::new(),
        host => format!("{host}/"),
    };
    label.push_str(server_name);
    if let Some(port) = port.filter(|p| *p != 0) {
        label.push_str(&format!(":{port}"));
    }
    label
}

/// The daemon's fingerprint (hex SHA-1): the handoff protocol, the module version and build,
/// the identity and every engine with its route. A running daemon is kept across restarts
/// while it is unchanged.
pub fn fingerprint(id: &DaemonIdentity<'_>, engines: &Engines) -> String {
    let mut sha = Sha1::new();
    sha.update(format!(
        "protocol={};version={};build={};socket={};level={};",
        crate::wire::PROTOCOL,
        env!("CARGO_PKG_VERSION"),
        id.build,
        id.socket.display(),
        id.level
    ));
    sha.update(format!("user={}:{};logs={};", id.user.0, id.user.1, id.instance_logs));
    sha.update(format!("server={};", id.server_label));
    // The loopback addresses are part of the daemon's configuration (not of the engines').
    for (print, loopback) in engines.prints.iter().zip(&engines.loopbacks) {
        sha.update(format!("{print}@{:?}", loopback.map(|l| l.0)).as_bytes());
        sha.update(b";");
    }
    sha.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// How many wss sessions Apache workers may bridge at once (each holds its worker while
/// connected): `NextcloudPushMaxBridged` if set, else a quarter of MaxRequestWorkers, so push
/// can never take more than that share of the site's workers (at least 1; 64 when the MPM
/// does not say).
pub fn bridge_cap(directive: Option<u32>, max_request_workers: Option<u64>) -> u32 {
    directive.unwrap_or_else(|| {
        max_request_workers.map_or(64, |w| u32::try_from(w / 4).unwrap_or(u32::MAX).max(1))
    })
}

/// What to do with the daemon at a configuration pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// It runs with this very configuration: keep it, and with it every session and its key.
    Keep,
    /// It runs with another configuration: stop it (Close 1001 to its sessions), start anew.
    Replace,
    /// None runs (never started, or it died): start one.
    Start,
}

/// `running`: the fingerprint of the daemon that is alive now, if any.
pub fn decide(running: Option<&str>, wanted: &str) -> Action {
    match running {
        Some(print) if print == wanted => Action::Keep,
        Some(_) => Action::Replace,
        None => Action::Start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nextcloud_push_engine::Overrides;

    fn config(url: &str) -> EngineConfig {
        EngineConfig::load(
            None,
            &Overrides {
                nextcloud_url: Some(url.into()),
                redis_url: Some("redis://127.0.0.1:6379/0".into()),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn equal_configurations_share_one_engine() {
        let mut engines = Engines::default();
        let (a, print_a) = engines.add(&config("http://a.example/"), None);
        let (b, print_b) = engines.add(&config("http://b.example/"), None);
        let (a2, print_a2) = engines.add(&config("http://a.example/"), None);
        assert_eq!((a, b, a2), (0, 1, 0));
        assert_eq!(print_a, print_a2);
        assert_ne!(print_a, print_b);
        assert_eq!(engines.configs.len(), 2);
        assert_eq!(engines.prints, vec![print_a, print_b]);
    }

    #[test]
    fn the_vhost_on_the_urls_port_carries_the_calls() {
        let mut engines = Engines::default();
        let c = config("http://cloud.example:8080/");
        engines.add(&c, Some((addr(80), false)));
        engines.add(&c, Some((addr(81), false)));
        assert_eq!(engines.loopbacks[0], Some((addr(80), false)), "the first one found");
        engines.add(&c, Some((addr(8080), true)));
        engines.add(&c, Some((addr(8081), true)));
        engines.add(&c, None);
        assert_eq!(engines.loopbacks[0], Some((addr(8080), true)), "the first on the URL's port");
        let other = config("http://other.example/");
        engines.add(&other, None);
        let key = VouchKey::generate();
        let routes = engines.routes(&key);
        assert_eq!(routes[0].loopback, Some(addr(8080)));
        assert!(routes[0].vouch.is_some());
        assert_eq!(routes[1], NextcloudRoute::default(), "no address: the URL, no vouching");
    }

    #[test]
    fn the_fingerprint_follows_every_input() {
        let mut engines = Engines::default();
        engines.add(&config("http://a.example/"), None);
        let socket = Path::new("/run/apache2/nextcloud-push.sock");
        let id = DaemonIdentity {
            socket,
            level: log::LevelFilter::Warn,
            build: "1:2:3:4",
            user: (33, 33),
            instance_logs: "0=WARN@main",
            server_label: "web1/cloud.example.com:443",
        };
        let base = fingerprint(&id, &engines);
        assert_eq!(base.len(), 40);
        assert_eq!(base, fingerprint(&id, &engines), "stable");
        let other_socket = Path::new("/run/other.sock");
        let variants = [
            DaemonIdentity { socket: other_socket, ..id },
            DaemonIdentity { level: log::LevelFilter::Debug, ..id },
            DaemonIdentity { build: "1:2:3:5", ..id },
            DaemonIdentity { user: (0, 0), ..id },
            DaemonIdentity { instance_logs: "0=DEBUG@main", ..id },
            DaemonIdentity { instance_logs: "0=WARN@/var/log/apache2/cloud-error.log", ..id },
            DaemonIdentity { server_label: "web1/cloud.example.com:8443", ..id },
        ];
        for variant in &variants {
            assert_ne!(fingerprint(variant, &engines), base, "{variant:?}");
        }
        let mut routed = Engines::default();
        routed.add(&config("http://a.example/"), Some((addr(80), true)));
        assert_ne!(fingerprint(&id, &routed), base, "the loopback address counts");
        engines.add(&config("http://b.example/"), None);
        assert_ne!(fingerprint(&id, &engines), base, "another engine counts");
    }

    #[test]
    fn server_labels_name_host_server_and_port() {
        assert_eq!(
            server_label("web1", "cloud.example.com", Some(443)),
            "web1/cloud.example.com:443"
        );
        assert_ne!(
            server_label("web1", "localhost", Some(8080)),
            server_label("web1", "localhost", Some(8081)),
            "two servers on one machine"
        );
        assert_eq!(server_label("", "cloud.example.com", None), "cloud.example.com");
        assert_eq!(server_label("web1", "cloud.example.com", Some(0)), "web1/cloud.example.com");
    }

    #[test]
    fn bridges_get_a_quarter_of_the_workers_unless_configured() {
        assert_eq!(bridge_cap(None, Some(150)), 37);
        assert_eq!(bridge_cap(None, Some(3)), 1);
        assert_eq!(bridge_cap(None, None), 64);
        assert_eq!(bridge_cap(Some(0), Some(150)), 0);
        assert_eq!(bridge_cap(Some(500), Some(150)), 500);
    }

    #[test]
    fn keep_only_an_unchanged_live_daemon() {
        assert_eq!(decide(Some("abc"), "abc"), Action::Keep);
        assert_eq!(decide(Some("abc"), "abd"), Action::Replace);
        assert_eq!(decide(None, "abc"), Action::Start);
    }
}
