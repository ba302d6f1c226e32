//! `scripts/bench`'s driver: N authenticated WebSocket clients through Apache with
//! mod_nextcloud_push, against Apache + mod_proxy_wstunnel + the same engine on a TCP port, on
//! loopback, in one run, over plain `ws://` and over `wss://` through mod_ssl. See README.md
//! "Benchmark" and `bench --help`.
//!
//! Every loop here is bounded in count and time: connects are capped per client and per ramp,
//! deliveries are awaited up to a deadline (or until they stall), and the whole run has
//! `--max-minutes`.

#![recursion_limit = "256"]

mod client;
mod hist;
mod procs;
mod report;
mod setups;

use client::{Stats, Target};
use report::SetupResult;
use setups::{Ctx, Kind, Running};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::nextcloud::NextcloudDouble;
use testkit::redis::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const HELP: &str = "\
bench: mod_nextcloud_push vs Apache + ProxyPass, side by side on loopback

  --clients 1000,10000    client counts N (users U = N/4), each against every setup
  --full                  also N = 50000
  --setups LIST           default: module,proxy-debian,proxy-raised (plain ws://) and
                          module-wss,module-wss-bridged,proxy-wss-debian,proxy-wss-raised (wss://
                          through mod_ssl; -bridged = NextcloudPushTlsHandoff Off); also: direct
                          (engine-tcp alone, no Apache); groups: plain, wss, default
  --rounds K              paced fan-out: K broadcasts to every user (default 20)
  --rate HZ               paced fan-out broadcasts per second (default 10)
  --flood-rounds K        back-to-back broadcasts for messages/s (default 10)
  --concurrency C         connects+logins in flight during the ramp (default 200)
  --probe P               clients connected one at a time before the ramp, for the unloaded
                          connect+auth latency (default 50)
  --connect-timeout S     per client (default 10)
  --idle S                idle time before the memory/worker snapshot (default 3)
  --module PATH           default target/release/libmod_nextcloud_push.so
  --engine-tcp PATH       default: next to this binary
  --json FILE             also append the JSON lines to FILE
  --max-minutes M         whole run limit (default 30)

Environment: APACHE_BIN (default /usr/sbin/apache2), REDIS_SERVER,
BENCH_ENGINE_WRAPPER (prefix for engine-tcp, e.g. `valgrind --tool=callgrind`),
BENCH_PROFILE_CMD (sh command run during the fan-out, `{pid}` = the daemon/engine pid).";

#[derive(Clone, Debug)]
struct Opts {
    clients: Vec<usize>,
    setups: Vec<Kind>,
    rounds: u32,
    rate: f64,
    flood_rounds: u32,
    concurrency: usize,
    probe: usize,
    connect_timeout: Duration,
    idle: Duration,
    module: Option<PathBuf>,
    engine_tcp: Option<PathBuf>,
    json: Option<PathBuf>,
    max_minutes: u64,
}

fn die(msg: &str) -> ! {
    eprintln!("bench: {msg}\n\n{HELP}");
    std::process::exit(2);
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        clients: vec![1000, 10_000],
        setups: Kind::DEFAULT.to_vec(),
        rounds: 20,
        rate: 10.0,
        flood_rounds: 10,
        concurrency: 200,
        probe: 50,
        connect_timeout: Duration::from_secs(10),
        idle: Duration::from_secs(3),
        module: None,
        engine_tcp: None,
        json: None,
        max_minutes: 30,
    };
    let mut full = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| die(&format!("{arg} needs a value")));
        fn num<T: std::str::FromStr>(arg: &str, v: String) -> T {
            v.parse().unwrap_or_else(|_| die(&format!("{arg}: not a number: {v}")))
        }
        match arg.as_str() {
            "--clients" => {
                o.clients = value().split(',').map(|v| num(&arg, v.trim().to_string())).collect()
            }
            "--full" => full = true,
            "--setups" => {
                o.setups.clear();
                for s in value().split(',') {
                    let kinds = Kind::parse_list(s.trim())
                        .unwrap_or_else(|| die(&format!("unknown setup {s}")));
                    // each setup once, in the order first named
                    for k in kinds {
                        if !o.setups.contains(&k) {
                            o.setups.push(k);
                        }
                    }
                }
            }
            "--rounds" => o.rounds = num(&arg, value()),
            "--rate" => o.rate = num(&arg, value()),
            "--flood-rounds" => o.flood_rounds = num(&arg, value()),
            "--concurrency" => o.concurrency = num::<usize>(&arg, value()).max(1),
            "--probe" => o.probe = num(&arg, value()),
            "--connect-timeout" => o.connect_timeout = Duration::from_secs(num(&arg, value())),
            "--idle" => o.idle = Duration::from_secs(num(&arg, value())),
            "--module" => o.module = Some(value().into()),
            "--engine-tcp" => o.engine_tcp = Some(value().into()),
            "--json" => o.json = Some(value().into()),
            "--max-minutes" => o.max_minutes = num(&arg, value()),
            "-h" | "--help" => {
                println!("{HELP}");
                std::process::exit(0);
            }
            other => die(&format!("unknown argument {other}")),
        }
    }
    if full && !o.clients.contains(&50_000) {
        o.clients.push(50_000);
    }
    if o.clients.contains(&0) || o.rate <= 0.0 {
        die("--clients and --rate must be positive");
    }
    o
}

/// Raises RLIMIT_NOFILE (soft and hard; root may raise the hard limit up to fs.nr_open) so this
/// process and everything it starts (Apache, its daemon, engine-tcp) can hold the sockets.
fn raise_nofile(want: u64) -> (u64, u64) {
    use rlimit::Resource;
    let nr_open: u64 = procs::sysctl("/proc/sys/fs/nr_open").parse().unwrap_or(1 << 20);
    let target = want.min(nr_open);
    let (soft, hard) = rlimit::getrlimit(Resource::NOFILE).unwrap_or((1024, 1024));
    if hard < target && rlimit::setrlimit(Resource::NOFILE, target, target).is_ok() {
        return (target, target);
    }
    let soft_target = target.min(hard).max(soft);
    let _ = rlimit::setrlimit(Resource::NOFILE, soft_target, hard);
    rlimit::getrlimit(Resource::NOFILE).unwrap_or((soft, hard))
}

fn check_kernel(opts: &Opts) -> Vec<String> {
    let max_n = *opts.clients.iter().max().unwrap_or(&0) as u64;
    // clients here + their server ends in the daemon/engine + Apache's backend side + slack
    let (soft, hard) = raise_nofile((max_n * 3 + 10_000).max(65_536));
    let mut warnings = Vec::new();
    let range = procs::sysctl("/proc/sys/net/ipv4/ip_local_port_range");
    let facts = [
        ("RLIMIT_NOFILE (soft/hard)", format!("{soft}/{hard}")),
        ("fs.nr_open", procs::sysctl("/proc/sys/fs/nr_open")),
        ("fs.file-max", procs::sysctl("/proc/sys/fs/file-max")),
        ("net.ipv4.ip_local_port_range", range.clone()),
        ("net.core.somaxconn", procs::sysctl("/proc/sys/net/core/somaxconn")),
        ("net.ipv4.tcp_max_syn_backlog", procs::sysctl("/proc/sys/net/ipv4/tcp_max_syn_backlog")),
        ("kernel.pid_max", procs::sysctl("/proc/sys/kernel/pid_max")),
        ("kernel.threads-max", procs::sysctl("/proc/sys/kernel/threads-max")),
        (
            "net.netfilter.nf_conntrack_max",
            procs::sysctl("/proc/sys/net/netfilter/nf_conntrack_max"),
        ),
    ];
    eprintln!("kernel and process limits:");
    for (name, value) in &facts {
        eprintln!("  {name:32} {value}");
    }
    if soft < max_n + 2000 {
        warnings.push(format!(
            "RLIMIT_NOFILE is {soft}/{hard} and cannot be raised here: too low for {max_n} clients \
             (this driver and the daemon each need about {})",
            max_n + 2000
        ));
    }
    let ports: Vec<u64> = range.split_whitespace().filter_map(|v| v.parse().ok()).collect();
    if let [lo, hi] = ports[..] {
        if (hi - lo) < client::CLIENTS_PER_SOURCE as u64 + 2000 {
            warnings.push(format!("ip_local_port_range {range} is narrow: connects may fail"));
        }
    }
    if let Ok(conntrack) = procs::sysctl("/proc/sys/net/netfilter/nf_conntrack_max").parse::<u64>()
    {
        if conntrack < max_n * 3 {
            warnings.push(format!(
                "nf_conntrack_max {conntrack} < 3×{max_n}: loopback connections may be dropped"
            ));
        }
    }
    for w in &warnings {
        eprintln!("WARNING: {w}");
    }
    warnings
}

fn login(j: usize) -> (String, String) {
    (format!("bench{j}"), format!("pw-{j}"))
}

fn main() {
    let opts = parse_opts();
    let warnings = check_kernel(&opts);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("bench")
        .build()
        .unwrap_or_else(|e| die(&format!("cannot start tokio: {e}")));
    let code = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            eprintln!("bench: cannot install signal handlers");
            return 1;
        };
        let limit = Duration::from_secs(opts.max_minutes * 60);
        tokio::select! {
            code = run_all(opts, warnings) => code,
            _ = int.recv() => { eprintln!("bench: interrupted, cleaning up"); 130 }
            _ = term.recv() => { eprintln!("bench: terminated, cleaning up"); 143 }
            _ = tokio::time::sleep(limit) => { eprintln!("bench: --max-minutes reached, cleaning up"); 124 }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(30));
    std::process::exit(code);
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

async fn run_all(opts: Opts, warnings: Vec<String>) -> i32 {
    let base = Instant::now();
    let apache_bin = std::env::var_os("APACHE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/sbin/apache2".into());
    let module = opts
        .module
        .clone()
        .unwrap_or_else(|| testkit::apache::target_dir().join("release/libmod_nextcloud_push.so"));
    // Apache resolves a relative LoadModule path against its ServerRoot (a tempdir).
    let module = std::fs::canonicalize(&module).unwrap_or(module);
    if opts.setups.iter().any(|k| k.module()) && !module.is_file() {
        eprintln!("bench: module {} not built (cargo build --release)", module.display());
        return 1;
    }
    let double = NextcloudDouble::start(&[]);
    let tls = if opts.setups.iter().any(|k| k.tls()) {
        // openssl runs here; a panic of the fixture fails the wss setups, not the run
        match tokio::task::spawn_blocking(setups::Tls::generate).await {
            Ok(Ok(tls)) => Ok(Arc::new(tls)),
            Ok(Err(why)) => Err(format!("no test CA: {why}")),
            Err(e) => Err(format!("no test CA: {}", panic_text(e))),
        }
    } else {
        Err("no TLS setup requested".into())
    };
    if let Err(why) = &tls {
        if opts.setups.iter().any(|k| k.tls()) {
            eprintln!("bench: {why}");
        }
    }
    let ctx = Arc::new(Ctx {
        apache_bin,
        module,
        engine_tcp: opts
            .engine_tcp
            .clone()
            .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
            .unwrap_or_else(|| sibling("engine-tcp")),
        engine_wrapper: std::env::var("BENCH_ENGINE_WRAPPER")
            .map(|w| w.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        nextcloud_url: double.base_url(),
        tls,
    });
    let max_users = opts.clients.iter().map(|n| (n / 4).max(1)).max().unwrap_or(1);
    for j in 0..max_users {
        let (name, password) = login(j);
        double.add_user(&name, &password, &name);
    }
    let double = Arc::new(double);
    eprintln!(
        "bench: N = {:?}, setups {:?}, paced fan-out {} rounds at {}/s, flood {} rounds",
        opts.clients,
        opts.setups.iter().map(|k| k.name()).collect::<Vec<_>>(),
        opts.rounds,
        opts.rate,
        opts.flood_rounds
    );
    let mut results = Vec::new();
    let (nofile, nofile_hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
    for &n in &opts.clients {
        for &kind in &opts.setups {
            eprintln!("\n=== {} with N = {n} ===", kind.name());
            let started = Instant::now();
            // This driver and the daemon (or engine-tcp) each hold one descriptor per client,
            // under the limit they inherit from here.
            if n as u64 + 2000 > nofile {
                let why = format!(
                    "skipped: RLIMIT_NOFILE is {nofile} (hard {nofile_hard}, not raisable here) but the \
                     driver and the daemon each need one descriptor per client ({n} + 2000)"
                );
                let result = SetupResult::failed(kind, n, why);
                println!("{}", result.json());
                results.push(result);
                continue;
            }
            let task =
                tokio::spawn(run_setup(kind, n, opts.clone(), ctx.clone(), base, double.clone()));
            let mut result = match task.await {
                Ok(Ok(result)) => result,
                Ok(Err(e)) => SetupResult::failed(kind, n, e),
                Err(e) => SetupResult::failed(kind, n, panic_text(e)),
            };
            result.notes.extend(warnings.iter().cloned());
            result.wall_s = started.elapsed().as_secs_f64();
            let line = result.json().to_string();
            println!("{line}");
            if let Some(path) = &opts.json {
                use std::io::Write;
                if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(path)
                {
                    let _ = writeln!(f, "{line}");
                }
            }
            results.push(result);
        }
    }
    println!("\n{}", report::table(&results));
    for line in report::ratio_json(&results) {
        println!("{line}");
    }
    eprintln!("bench: done in {:.0} s", base.elapsed().as_secs_f64());
    0
}

fn panic_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into()),
        Err(e) => e.to_string(),
    }
    .lines()
    .take(30)
    .collect::<Vec<_>>()
    .join("\n")
}

async fn run_setup(
    kind: Kind,
    n: usize,
    opts: Opts,
    ctx: Arc<Ctx>,
    base: Instant,
    _double: Arc<NextcloudDouble>,
) -> Result<SetupResult, String> {
    let users = (n / 4).max(1);
    let redis = RedisServer::start().map_err(|s| s.to_string())?;
    let running = setups::start(kind, n, &redis, &ctx).await?;
    let mut result = SetupResult::new(kind, n, users);
    result.max_request_workers = running.max_request_workers;
    result.notes.extend(running.notes.iter().cloned());
    let outcome = measure(&running, &redis, n, users, &opts, base, &mut result).await;
    let log_lines = tokio::task::block_in_place(|| running.stop());
    if !log_lines.is_empty() {
        result.notes.push(format!(
            "apache error log: {} warn-or-worse line(s), first: {}",
            log_lines.len(),
            log_lines[0].chars().take(300).collect::<String>()
        ));
    }
    drop(redis);
    outcome.map(|()| result)
}

/// Client count, connect latency, idle memory and workers, fan-out: everything for one setup.
async fn measure(
    running: &Running,
    redis: &RedisServer,
    n: usize,
    users: usize,
    opts: &Opts,
    base: Instant,
    result: &mut SetupResult,
) -> Result<(), String> {
    let m = Measurement::new(running, n, users, opts, base);
    let before = m.settle(redis).await?;
    result.mem_before = Some(before);
    result.daemon_mem_before = running.daemon_pid.map(procs::mem);
    result.driver_rss_before_kib = Some(procs::mem(std::process::id()).rss_kib);
    let mut clients = JoinSet::new();
    let probe = m.connect_probe(&mut clients).await;
    let ramp = m.connect_ramp(&mut clients, probe).await;
    m.record_connects(probe, ramp, result);
    let live = m.idle(before, result).await;
    if live > 0 && opts.rounds > 0 {
        m.fan_out(redis, live, result).await?;
    }
    result.dropped_total = m.stats.dropped.load(Ordering::Relaxed);
    clients.shutdown().await;
    Ok(())
}

/// What the phases of [`measure`] share: the setup under test, its clients and their counters.
struct Measurement<'a> {
    running: &'a Running,
    n: usize,
    users: usize,
    opts: &'a Opts,
    tck: f64,
    stats: Arc<Stats>,
    target: Arc<Target>,
}

/// How the ramp ended: how long it took, and why it gave up if it did.
struct Ramp {
    took: Duration,
    gave_up: Option<String>,
}

impl<'a> Measurement<'a> {
    fn new(running: &'a Running, n: usize, users: usize, opts: &'a Opts, base: Instant) -> Self {
        Measurement {
            running,
            n,
            users,
            opts,
            tck: procs::clk_tck() as f64,
            stats: Arc::new(Stats::new(base)),
            target: Arc::new(running.target.clone()),
        }
    }

    /// Waits until the engine is subscribed, lets everything settle, and returns the servers'
    /// memory before any client connects.
    async fn settle(&self, redis: &RedisServer) -> Result<procs::Mem, String> {
        if !redis.wait_for_subscribers("notify_custom", 1, Duration::from_secs(20)).await {
            return Err("the engine never subscribed to notify_custom".into());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(procs::mem_sum(&self.running.server_pids()))
    }

    fn spec(&self, i: usize, probe: bool) -> client::Spec {
        let (login, password) = login(i % self.users);
        client::Spec {
            target: self.target.clone(),
            source: client::source_addr(i),
            login,
            password,
            timeout: self.opts.connect_timeout,
            probe,
        }
    }

    /// Connects the first `--probe` clients one at a time, for the unloaded connect+auth
    /// latency; returns how many that was.
    async fn connect_probe(&self, clients: &mut JoinSet<()>) -> usize {
        let probe = self.opts.probe.min(self.n);
        let one = Arc::new(Semaphore::new(1));
        for i in 0..probe {
            clients.spawn(client::run(self.spec(i, true), self.stats.clone(), one.clone()));
            let deadline = Instant::now() + self.opts.connect_timeout + Duration::from_secs(1);
            while self.stats.settled() <= i && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        probe
    }

    /// Starts the remaining clients, at most `--concurrency` connecting at a time, and waits
    /// until every one settled or the ramp gave up.
    async fn connect_ramp(&self, clients: &mut JoinSet<()>, probe: usize) -> Ramp {
        let gate = Arc::new(Semaphore::new(self.opts.concurrency));
        let start = Instant::now();
        for i in probe..self.n {
            clients.spawn(client::run(self.spec(i, false), self.stats.clone(), gate.clone()));
        }
        let gave_up = self.await_ramp(&gate, start).await;
        Ramp { took: start.elapsed(), gave_up }
    }

    /// Polls the ramp until every client settled; once it gives up (closing `gate` to the
    /// clients not yet started), until those in flight had their connect timeout.
    async fn await_ramp(&self, gate: &Semaphore, start: Instant) -> Option<String> {
        let mut gave_up: Option<(String, Instant)> = None;
        let mut last_print = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if self.stats.settled() >= self.n {
                break;
            }
            if gave_up.is_none() {
                if let Some(why) = self.give_up_reason(start) {
                    gate.close();
                    eprintln!("  {why}");
                    gave_up = Some((why, Instant::now()));
                }
            }
            if let Some((_, at)) = &gave_up {
                if at.elapsed() > self.opts.connect_timeout + Duration::from_secs(5) {
                    break;
                }
            }
            if last_print.elapsed() > Duration::from_secs(5) {
                last_print = Instant::now();
                eprintln!(
                    "  connecting: {} authenticated, {} failed of {} ({:.0} s)",
                    self.stats.connected.load(Ordering::Relaxed),
                    self.stats.failed(),
                    self.n,
                    start.elapsed().as_secs_f64()
                );
            }
        }
        gave_up.map(|(why, _)| why)
    }

    /// Why the ramp started at `start` should give up now, if it should.
    fn give_up_reason(&self, start: Instant) -> Option<String> {
        // Give up once this many attempts failed: a server that stopped accepting (all workers
        // pinned) would otherwise cost N × timeout / concurrency.
        let give_up = (2 * self.opts.concurrency).max(self.n / 20);
        let limit = Duration::from_secs(60) + Duration::from_millis(20 * self.n as u64);
        let failed = self.stats.failed();
        if failed >= give_up {
            Some(format!("gave up after {failed} failed connects"))
        } else if start.elapsed() > limit {
            Some(format!("gave up: ramp took longer than {limit:?}"))
        } else {
            None
        }
    }

    /// Ramp rate, connect latencies (probe and under load) and failures.
    fn record_connects(&self, probe: usize, ramp: Ramp, result: &mut SetupResult) {
        let stats = &self.stats;
        let connected = stats.connected.load(Ordering::Relaxed);
        result.ramp_s = Some(ramp.took.as_secs_f64());
        result.ramp_connects_per_s =
            Some(connected.saturating_sub(probe) as f64 / ramp.took.as_secs_f64());
        result.probe_p50_ms = stats.connect_probe.quantile(0.5).map(ms);
        result.probe_p99_ms = stats.connect_probe.quantile(0.99).map(ms);
        result.connect_p50_ms = stats.connect.quantile(0.5).map(ms);
        result.connect_p99_ms = stats.connect.quantile(0.99).map(ms);
        result.connect_failed = stats.failed();
        result.not_attempted = stats.not_attempted.load(Ordering::Relaxed);
        if let Some(why) = ramp.gave_up {
            result.notes.push(why);
        }
        if let Ok(first) = stats.first_failure.lock() {
            if let Some(first) = first.as_ref() {
                result.notes.push(format!("first connect failure: {first}"));
            }
        }
        eprintln!(
            "  {} authenticated, {} failed, {} not attempted in {:.1} s",
            stats.connected.load(Ordering::Relaxed),
            result.connect_failed,
            result.not_attempted,
            ramp.took.as_secs_f64()
        );
    }

    /// With every client connected and quiet: CPU over `--idle`, then memory and busy workers;
    /// returns how many clients are live.
    async fn idle(&self, before: procs::Mem, result: &mut SetupResult) -> usize {
        let cpu0 = cpu_pair(self.running);
        let idle_start = Instant::now();
        tokio::time::sleep(self.opts.idle).await;
        let cpu1 = cpu_pair(self.running);
        let idle_secs = idle_start.elapsed().as_secs_f64();
        let idle_cpu = cpu_delta(cpu0, cpu1, self.tck);
        result.idle_cpu_daemon_pct = Some(idle_cpu[0] / idle_secs * 100.0);
        result.idle_cpu_apache_pct = Some(idle_cpu[1] / idle_secs * 100.0);
        let live = self.stats.live.load(Ordering::Relaxed);
        result.connected = live;
        result.dropped_before_fanout = self.stats.dropped.load(Ordering::Relaxed);
        let after = procs::mem_sum(&self.running.server_pids());
        result.mem_after = Some(after);
        result.daemon_mem_after = self.running.daemon_pid.map(procs::mem);
        let apache = self.running.apache_pids();
        result.apache_procs_idle = (!apache.is_empty()).then_some(apache.len());
        result.driver_rss_kib = Some(procs::mem(std::process::id()).rss_kib);
        self.record_busy_workers(result);
        eprintln!(
            "  idle: {live} live, RSS {} → {} KiB, PSS {} → {} KiB, busy workers {:?}",
            before.rss_kib, after.rss_kib, before.pss_kib, after.pss_kib, result.busy_workers_idle
        );
        live
    }

    /// Apache's busy workers from /server-status, where the setup has one.
    fn record_busy_workers(&self, result: &mut SetupResult) {
        let Some(addr) = self.running.status_addr() else {
            return;
        };
        let tls = self.running.status_tls();
        match tokio::task::block_in_place(|| {
            procs::server_status(addr, tls, Duration::from_secs(3))
        }) {
            // the status request occupies one worker itself
            Ok(status) => result.busy_workers_idle = Some(status.busy_workers.saturating_sub(1)),
            Err(e) => {
                result.busy_workers_idle = self.running.max_request_workers.map(u64::from);
                result.notes.push(format!(
                    "/server-status got no worker ({e}): every worker busy, reported as MaxRequestWorkers"
                ));
            }
        }
    }

    /// Broadcasts to the `live` clients: paced, then flooded; the profiler (if any) runs
    /// meanwhile.
    async fn fan_out(
        &self,
        redis: &RedisServer,
        live: usize,
        result: &mut SetupResult,
    ) -> Result<(), String> {
        let mut publisher = Publisher::connect(redis.port()).await?;
        let profiler = start_profiler(self.running.daemon_pid);
        self.paced_fanout(&mut publisher, live, result).await?;
        if self.opts.flood_rounds > 0 {
            self.flood(&mut publisher, result).await?;
        }
        result.foreign_frames = self.stats.phases[0].foreign.load(Ordering::Relaxed);
        publisher.finish(Duration::from_secs(10)).await;
        if let Some(child) = profiler {
            await_profiler(child).await;
        }
        Ok(())
    }

    /// Paced: `--rounds` broadcasts at `--rate`, for the latency at a realistic load.
    async fn paced_fanout(
        &self,
        publisher: &mut Publisher,
        live: usize,
        result: &mut SetupResult,
    ) -> Result<(), String> {
        let stats = &self.stats;
        let cpu0 = cpu_pair(self.running);
        let expected = self.opts.rounds as u64 * live as u64;
        let first_us = stats.now_us();
        let period = Duration::from_secs_f64(1.0 / self.opts.rate);
        let start = tokio::time::Instant::now();
        for k in 0..self.opts.rounds {
            tokio::time::sleep_until(start + period * k).await;
            publisher.round(self.users, 0, k, stats).await?;
        }
        let published_us = stats.now_us();
        wait_delivery(&stats.phases[0], expected, Duration::from_secs(15)).await;
        let cpu1 = cpu_pair(self.running);
        let phase = &stats.phases[0];
        result.fanout_expected = expected;
        result.fanout_received = phase.received.load(Ordering::Relaxed);
        result.fanout_p50_ms = phase.latency.quantile(0.5).map(ms);
        result.fanout_p99_ms = phase.latency.quantile(0.99).map(ms);
        result.fanout_max_ms = phase.latency.max().map(ms);
        result.offered_msgs_per_s = Some(
            expected as f64 / ((published_us - first_us) as f64 / 1e6).max(period.as_secs_f64()),
        );
        let cpu = cpu_delta(cpu0, cpu1, self.tck);
        result.cpu_daemon_s = Some(cpu[0]);
        result.cpu_apache_s = Some(cpu[1]);
        result.cpu_driver_s = Some(cpu[2]);
        result.cpu_redis_s = Some(cpu[3]);
        result.paced_s = Some(stats.now_us().saturating_sub(first_us) as f64 / 1e6);
        eprintln!(
            "  paced fan-out: {}/{} received, p50 {:?} ms, p99 {:?} ms, max {:?} ms",
            result.fanout_received,
            expected,
            result.fanout_p50_ms,
            result.fanout_p99_ms,
            result.fanout_max_ms
        );
        Ok(())
    }

    /// Flood: `--flood-rounds` broadcasts back to back; the delivered rate is the sustained
    /// messages/s.
    async fn flood(
        &self,
        publisher: &mut Publisher,
        result: &mut SetupResult,
    ) -> Result<(), String> {
        let stats = &self.stats;
        let live = stats.live.load(Ordering::Relaxed);
        let expected = self.opts.flood_rounds as u64 * live as u64;
        let cpu0 = cpu_pair(self.running);
        let first_us = stats.now_us();
        for k in 0..self.opts.flood_rounds {
            publisher.round(self.users, 1, k, stats).await?;
        }
        wait_delivery(&stats.phases[1], expected, Duration::from_secs(20)).await;
        let cpu1 = cpu_pair(self.running);
        let phase = &stats.phases[1];
        let received = phase.received.load(Ordering::Relaxed);
        let last = phase.last_us.load(Ordering::Relaxed);
        result.flood_expected = expected;
        result.flood_received = received;
        result.flood_p99_ms = phase.latency.quantile(0.99).map(ms);
        if received > 0 && last > first_us {
            result.flood_msgs_per_s = Some(received as f64 / ((last - first_us) as f64 / 1e6));
        }
        let cpu = cpu_delta(cpu0, cpu1, self.tck);
        result.flood_cpu_daemon_s = Some(cpu[0]);
        result.flood_cpu_apache_s = Some(cpu[1]);
        result.flood_cpu_driver_s = Some(cpu[2]);
        eprintln!(
            "  flood: {received}/{expected} received, {:?} msgs/s",
            result.flood_msgs_per_s.map(|v| v.round())
        );
        Ok(())
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// CPU ticks of (daemon or engine-tcp, Apache tree without the daemon, this driver, Redis).
fn cpu_pair(running: &Running) -> (u64, u64, u64, u64) {
    let daemon = running.daemon_pid.map(procs::cpu_ticks).unwrap_or(0);
    let reaped = running.apache_pid.map(procs::reaped_children_ticks).unwrap_or(0);
    let me = std::process::id();
    let redis = procs::child_named(me, "redis-server").map(procs::cpu_ticks).unwrap_or(0);
    (daemon, procs::cpu_sum(&running.apache_pids()) + reaped, procs::cpu_ticks(me), redis)
}

/// CPU seconds between two [`cpu_pair`] snapshots, per component.
fn cpu_delta(a: (u64, u64, u64, u64), b: (u64, u64, u64, u64), tck: f64) -> [f64; 4] {
    let d = |x: u64, y: u64| y.saturating_sub(x) as f64 / tck;
    [d(a.0, b.0), d(a.1, b.1), d(a.2, b.2), d(a.3, b.3)]
}

fn start_profiler(pid: Option<u32>) -> Option<std::process::Child> {
    let cmd = std::env::var("BENCH_PROFILE_CMD").ok()?;
    let cmd = cmd.replace("{pid}", &pid?.to_string());
    eprintln!("  profiler: {cmd}");
    std::process::Command::new("sh").arg("-c").arg(cmd).spawn().ok()
}

/// Gives the profiler up to 120 s to finish on its own, then kills it.
async fn await_profiler(mut child: std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits until `expected` frames arrived, the deadline passed, or nothing arrived for 3 s.
async fn wait_delivery(phase: &client::Phase, expected: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut last = phase.received.load(Ordering::Relaxed);
    let mut progress = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = phase.received.load(Ordering::Relaxed);
        if now >= expected {
            return;
        }
        if now != last {
            last = now;
            progress = Instant::now();
        } else if progress.elapsed() > Duration::from_secs(3) {
            return;
        }
    }
}

/// Pipelined `PUBLISH notify_custom` on a raw RESP connection; a reader task counts replies.
struct Publisher {
    writer: tokio::net::tcp::OwnedWriteHalf,
    replies: Arc<AtomicU64>,
    sent: u64,
    reader: tokio::task::JoinHandle<()>,
    buf: Vec<u8>,
}

impl Publisher {
    async fn connect(port: u16) -> Result<Publisher, String> {
        let stream =
            TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("redis: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (mut reader, writer) = stream.into_split();
        let replies = Arc::new(AtomicU64::new(0));
        let counter = replies.clone();
        let reader = tokio::spawn(async move {
            let mut chunk = vec![0u8; 64 * 1024];
            while let Ok(n) = reader.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                // every reply to PUBLISH is one ":<n>\r\n" line
                let lines = chunk[..n].iter().filter(|&&b| b == b'\n').count();
                counter.fetch_add(lines as u64, Ordering::Relaxed);
            }
        });
        Ok(Publisher { writer, replies, sent: 0, reader, buf: Vec::with_capacity(1 << 20) })
    }

    /// One broadcast: a `notify_custom` for every user, body `[phase,round,t_us]`.
    async fn round(
        &mut self,
        users: usize,
        phase: usize,
        round: u32,
        stats: &Stats,
    ) -> Result<(), String> {
        use std::io::Write;
        self.buf.clear();
        for j in 0..users {
            let (uid, _) = login(j);
            let t = stats.now_us();
            let payload = format!(
                "{{\"user\":\"{uid}\",\"message\":\"{}\",\"body\":[{phase},{round},{t}]}}",
                client::MESSAGE
            );
            let _ = write!(
                self.buf,
                "*3\r\n$7\r\nPUBLISH\r\n$13\r\nnotify_custom\r\n${}\r\n{payload}\r\n",
                payload.len()
            );
        }
        self.sent += users as u64;
        self.writer.write_all(&self.buf).await.map_err(|e| format!("redis publish: {e}"))
    }

    /// Waits (bounded) until Redis answered every PUBLISH.
    async fn finish(self, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.replies.load(Ordering::Relaxed) < self.sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.reader.abort();
    }
}
