//! The servers under test, each started on loopback with testkit's launchers:
//!
//! - `module`: Debian-default event MPM Apache (MaxRequestWorkers 150) with mod_nextcloud_push;
//! - `proxy-debian`: the same Apache without the module, `mod_proxy` + `mod_proxy_http` +
//!   `mod_proxy_wstunnel` and `ProxyPass /push/ws ws://127.0.0.1:PORT/ws` to `engine-tcp` (the
//!   module's own engine on a TCP port), what notify_push's README tells Apache users to do;
//! - `proxy-raised`: the same with MaxRequestWorkers/ThreadsPerChild/ServerLimit sized to the
//!   client count (as far as the machine's pid_max allows);
//! - `direct`: clients straight to `engine-tcp`, no Apache (the engine alone, for profiling);
//! - `module-wss`, `module-wss-bridged`, `proxy-wss-debian`, `proxy-wss-raised`: `module`,
//!   `module` with `NextcloudPushTlsHandoff Off`, `proxy-debian` and `proxy-raised` with the
//!   vhost behind mod_ssl (the per-run test CA's `localhost` certificate, EC P-256, so TLS 1.3
//!   with rustls clients); the clients speak `wss://`.
//!
//! Every server gets mod_status (`ExtendedStatus On`, `/server-status`, over https on the TLS
//! vhost of the wss setups), `LogLevel warn` (the harness default logs every session at debug)
//! and the same generated config.php.

use crate::client::Target;
use crate::procs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::apache::{Apache, ApacheBuilder, Env, Mode, Mpm, ServerRoot, MODULES_DIR};
use testkit::redis::RedisServer;
use testkit::tls::TestCa;
use tokio_rustls::rustls;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Module,
    ProxyDebian,
    ProxyRaised,
    Direct,
    ModuleWss,
    ModuleWssBridged,
    ProxyWssDebian,
    ProxyWssRaised,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Module,
        Kind::ProxyDebian,
        Kind::ProxyRaised,
        Kind::Direct,
        Kind::ModuleWss,
        Kind::ModuleWssBridged,
        Kind::ProxyWssDebian,
        Kind::ProxyWssRaised,
    ];
    pub const PLAIN: [Kind; 3] = [Kind::Module, Kind::ProxyDebian, Kind::ProxyRaised];
    pub const WSS: [Kind; 4] =
        [Kind::ModuleWss, Kind::ModuleWssBridged, Kind::ProxyWssDebian, Kind::ProxyWssRaised];
    pub const DEFAULT: [Kind; 7] = [
        Kind::Module,
        Kind::ProxyDebian,
        Kind::ProxyRaised,
        Kind::ModuleWss,
        Kind::ModuleWssBridged,
        Kind::ProxyWssDebian,
        Kind::ProxyWssRaised,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Module => "module",
            Kind::ProxyDebian => "proxy-debian",
            Kind::ProxyRaised => "proxy-raised",
            Kind::Direct => "direct",
            Kind::ModuleWss => "module-wss",
            Kind::ModuleWssBridged => "module-wss-bridged",
            Kind::ProxyWssDebian => "proxy-wss-debian",
            Kind::ProxyWssRaised => "proxy-wss-raised",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// `--setups` accepts a setup name or one of the groups `plain`, `wss`, `default`.
    pub fn parse_list(s: &str) -> Option<Vec<Kind>> {
        match s {
            "plain" => Some(Kind::PLAIN.to_vec()),
            "wss" => Some(Kind::WSS.to_vec()),
            "default" => Some(Kind::DEFAULT.to_vec()),
            name => Kind::parse(name).map(|k| vec![k]),
        }
    }

    /// Clients speak `wss://` through mod_ssl.
    pub fn tls(self) -> bool {
        Kind::WSS.contains(&self)
    }

    /// The module serves push (no ProxyPass, no engine-tcp).
    pub fn module(self) -> bool {
        matches!(self, Kind::Module | Kind::ModuleWss | Kind::ModuleWssBridged)
    }
}

/// The per-run test CA and the load generator's client configuration trusting only it.
pub struct Tls {
    pub ca: TestCa,
    pub client: Arc<rustls::ClientConfig>,
}

impl Tls {
    /// Runs `openssl` for the CA and the `localhost` certificate (EC P-256). The clients do no
    /// session resumption: every wss client pays a full handshake, as N distinct devices would.
    pub fn generate() -> Result<Tls, String> {
        let ca = TestCa::generate().map_err(|s| s.to_string())?;
        let mut client = (*ca.client_config()).clone();
        client.resumption = rustls::client::Resumption::disabled();
        Ok(Tls { ca, client: Arc::new(client) })
    }
}

/// Binaries and the Nextcloud double every setup shares.
#[derive(Clone)]
pub struct Ctx {
    pub apache_bin: PathBuf,
    pub module: PathBuf,
    pub engine_tcp: PathBuf,
    /// Prefix for engine-tcp (`BENCH_ENGINE_WRAPPER`, e.g. `valgrind --tool=callgrind`).
    pub engine_wrapper: Vec<String>,
    pub nextcloud_url: String,
    /// For the wss setups: `Err` says why there is none (they then fail with that reason).
    pub tls: Result<Arc<Tls>, String>,
}

/// Threads per Apache child in the raised-limits setup.
const RAISED_THREADS_PER_CHILD: u32 = 250;

/// A started setup; [`Running::stop`] tears it down (Drop does too, on error paths).
pub struct Running {
    pub target: Target,
    pub apache: Option<ApacheGuard>,
    pub apache_pid: Option<u32>,
    /// The push daemon (module) or engine-tcp (proxy, direct).
    pub daemon_pid: Option<u32>,
    pub max_request_workers: Option<u32>,
    pub notes: Vec<String>,
    engine: Option<EngineProc>,
    _root: Option<ServerRoot>,
}

impl Running {
    /// Apache's process tree without the push daemon.
    pub fn apache_pids(&self) -> Vec<u32> {
        match self.apache_pid {
            Some(pid) => {
                procs::tree(pid).into_iter().filter(|p| Some(*p) != self.daemon_pid).collect()
            }
            None => Vec::new(),
        }
    }

    /// Everything that serves the clients: Apache's tree, the daemon or engine-tcp.
    pub fn server_pids(&self) -> Vec<u32> {
        let mut pids = self.apache_pids();
        pids.extend(self.daemon_pid);
        pids
    }

    pub fn status_addr(&self) -> Option<SocketAddr> {
        self.apache.as_ref().and_then(|a| a.0.as_ref()).map(|a| a.addr())
    }

    /// How `/server-status` is reached: over https (verified as `localhost`) on the TLS vhost.
    pub fn status_tls(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.target.tls.clone()
    }

    /// Stops Apache and engine-tcp; returns the warn-or-worse lines Apache logged (the harness'
    /// oracle, reported here rather than failing the run).
    pub fn stop(mut self) -> Vec<String> {
        let lines = self.apache.take().map(ApacheGuard::stop).unwrap_or_default();
        if let Some(engine) = self.engine.take() {
            engine.stop();
        }
        lines
    }
}

/// Owns a testkit Apache; stops it without letting the harness' error-log oracle panic.
pub struct ApacheGuard(Option<Apache>);

impl ApacheGuard {
    fn stop(mut self) -> Vec<String> {
        let Some(apache) = self.0.take() else { return Vec::new() };
        let lines = apache.unexpected();
        quiet_stop(apache);
        lines
    }
}

fn quiet_stop(mut apache: Apache) {
    apache.allow("");
    let stopped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        apache.stop();
        drop(apache);
    }));
    if stopped.is_err() {
        eprintln!("bench: apache2 did not stop cleanly (see above)");
    }
}

impl Drop for ApacheGuard {
    fn drop(&mut self) {
        if let Some(apache) = self.0.take() {
            quiet_stop(apache);
        }
    }
}

fn common(builder: ApacheBuilder, redis: &RedisServer, ctx: &Ctx) -> ApacheBuilder {
    builder
        .mpm(Mpm::Event)
        .nextcloud_url(&ctx.nextcloud_url)
        .redis("127.0.0.1", redis.port())
        .server_line("LogLevel warn")
        .server_line(format!("LoadModule status_module {MODULES_DIR}/mod_status.so"))
        .server_line("ExtendedStatus On")
        .vhost_line("<Location /server-status>")
        .vhost_line("    SetHandler server-status")
        .vhost_line("    Require all granted")
        .vhost_line("</Location>")
}

/// Debian's `mods-available/mpm_event.conf`.
fn debian_event(builder: ApacheBuilder) -> ApacheBuilder {
    builder
        .start_servers(2)
        .mpm_knob("MinSpareThreads", 25)
        .mpm_knob("MaxSpareThreads", 75)
        .mpm_knob("ThreadLimit", 64)
        .threads_per_child(25)
        .max_request_workers(150)
        .max_connections_per_child(0)
}

/// MaxRequestWorkers for `clients` proxied WebSockets (+64 for status and slack), capped so
/// Apache's threads fit under pid_max beside everything else on the machine.
pub fn raised_workers(clients: usize) -> (u32, Option<String>) {
    let tpc = RAISED_THREADS_PER_CHILD as usize;
    let want = (clients + 64).div_ceil(tpc) * tpc;
    let pid_max: usize = procs::sysctl("/proc/sys/kernel/pid_max").parse().unwrap_or(32768);
    let free = pid_max.saturating_sub(procs::task_count() + 4000);
    let cap = (free / tpc).max(1) * tpc;
    if want > cap {
        (
            cap as u32,
            Some(format!(
                "MaxRequestWorkers capped at {cap} (threads must fit under kernel.pid_max {pid_max})"
            )),
        )
    } else {
        (want as u32, None)
    }
}

fn raised_event(builder: ApacheBuilder, workers: u32) -> ApacheBuilder {
    let tpc = RAISED_THREADS_PER_CHILD;
    builder
        .start_servers(2)
        .mpm_knob("ServerLimit", workers.div_ceil(tpc))
        .mpm_knob("ThreadLimit", tpc)
        .threads_per_child(tpc)
        .max_request_workers(workers)
        .mpm_knob("MinSpareThreads", 25)
        .mpm_knob("MaxSpareThreads", 25 + tpc)
        .max_connections_per_child(0)
}

fn proxy_lines(builder: ApacheBuilder, engine: SocketAddr) -> ApacheBuilder {
    builder
        .server_line(format!("LoadModule proxy_module {MODULES_DIR}/mod_proxy.so"))
        .server_line(format!("LoadModule proxy_http_module {MODULES_DIR}/mod_proxy_http.so"))
        .server_line(format!(
            "LoadModule proxy_wstunnel_module {MODULES_DIR}/mod_proxy_wstunnel.so"
        ))
        .vhost_line(format!("ProxyPass /push/ws ws://{engine}/ws"))
}

pub async fn start(
    kind: Kind,
    clients: usize,
    redis: &RedisServer,
    ctx: &Ctx,
) -> Result<Running, String> {
    let push_path = "/push/ws".to_string();
    let tls = if kind.tls() { Some(ctx.tls.clone()?) } else { None };
    // mod_ssl on the one vhost that serves push and /server-status.
    let with_tls = |builder: ApacheBuilder| match &tls {
        Some(tls) => tls.ca.configure(builder),
        None => builder,
    };
    let client_tls = tls.as_ref().map(|t| t.client.clone());
    if kind.module() {
        let env = Env { apache_bin: ctx.apache_bin.clone(), module: Some(ctx.module.clone()) };
        let mut builder = with_tls(debian_event(common(Apache::builder(&env), redis, ctx)));
        if kind == Kind::ModuleWssBridged {
            builder = builder.vhost_line("NextcloudPushTlsHandoff Off");
        }
        let mut apache = builder.start(Mode::Foreground).await;
        let daemon_pid = apache.daemon_pid();
        return Ok(Running {
            target: Target { addr: apache.addr(), path: push_path, tls: client_tls },
            apache_pid: Some(apache.pid()),
            apache: Some(ApacheGuard(Some(apache))),
            daemon_pid,
            max_request_workers: Some(150),
            notes: Vec::new(),
            engine: None,
            _root: None,
        });
    }
    let env = Env { apache_bin: ctx.apache_bin.clone(), module: None };
    // A rendered server root only for its config.php: engine-tcp reads exactly the file the
    // module would read.
    let root = common(Apache::builder(&env), redis, ctx).render();
    let engine =
        EngineProc::spawn(ctx, &root.config_php, &root.path().join("logs/engine-tcp.log"))?;
    let engine_addr = engine.addr;
    let daemon_pid = Some(engine.pid());
    if kind == Kind::Direct {
        return Ok(Running {
            target: Target { addr: engine_addr, path: push_path, tls: None },
            apache: None,
            apache_pid: None,
            daemon_pid,
            max_request_workers: None,
            notes: Vec::new(),
            engine: Some(engine),
            _root: Some(root),
        });
    }
    let mut notes = Vec::new();
    let builder = with_tls(proxy_lines(common(Apache::builder(&env), redis, ctx), engine_addr));
    let (builder, workers) = if matches!(kind, Kind::ProxyDebian | Kind::ProxyWssDebian) {
        (debian_event(builder), 150)
    } else {
        let (workers, note) = raised_workers(clients);
        notes.extend(note);
        (raised_event(builder, workers), workers)
    };
    let apache = builder.start(Mode::Foreground).await;
    Ok(Running {
        target: Target { addr: apache.addr(), path: push_path, tls: client_tls },
        apache_pid: Some(apache.pid()),
        apache: Some(ApacheGuard(Some(apache))),
        daemon_pid,
        max_request_workers: Some(workers),
        notes,
        engine: Some(engine),
        _root: Some(root),
    })
}

/// A running `engine-tcp` child. Its stdin is a pipe it watches: when this process goes away
/// (even by SIGKILL), engine-tcp sees EOF and exits.
pub struct EngineProc {
    child: Option<Child>,
    pub addr: SocketAddr,
    wrapped: bool,
}

impl EngineProc {
    fn spawn(ctx: &Ctx, config_php: &Path, log: &Path) -> Result<EngineProc, String> {
        let mut command = match ctx.engine_wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&ctx.engine_tcp);
                c
            }
            None => Command::new(&ctx.engine_tcp),
        };
        let log_file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = command
            .arg("--config-php")
            .arg(config_php)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", ctx.engine_tcp.display()))?;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let wrapped = !ctx.engine_wrapper.is_empty();
        let wait = if wrapped { Duration::from_secs(120) } else { Duration::from_secs(20) };
        let line = rx.recv_timeout(wait).unwrap_or_default();
        let mut engine =
            EngineProc { child: Some(child), addr: SocketAddr::from(([127, 0, 0, 1], 0)), wrapped };
        match line.trim().strip_prefix("listening ").and_then(|a| a.parse().ok()) {
            Some(addr) => {
                engine.addr = addr;
                Ok(engine)
            }
            None => {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                drop(engine);
                Err(format!("engine-tcp did not start (stdout {line:?})\n{log}"))
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        drop(child.stdin.take());
        let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let limit = if self.wrapped { Duration::from_secs(120) } else { Duration::from_secs(10) };
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "bench: engine-tcp {} did not exit within {limit:?} of SIGTERM; killing it",
            child.id()
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for EngineProc {
    fn drop(&mut self) {
        self.terminate();
    }
}
