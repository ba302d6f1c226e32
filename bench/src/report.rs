//! One JSON line per setup, the human table, and the module/ProxyPass ratios.

use crate::procs::Mem;
use crate::setups::Kind;
use serde_json::{json, Value};
use std::fmt::Write;

#[derive(Clone, Debug)]
pub struct SetupResult {
    pub kind: Kind,
    pub clients: usize,
    pub users: usize,
    pub error: Option<String>,
    pub max_request_workers: Option<u32>,
    /// Authenticated and still connected after the idle period.
    pub connected: usize,
    pub connect_failed: usize,
    pub not_attempted: usize,
    pub ramp_s: Option<f64>,
    pub ramp_connects_per_s: Option<f64>,
    pub probe_p50_ms: Option<f64>,
    pub probe_p99_ms: Option<f64>,
    pub connect_p50_ms: Option<f64>,
    pub connect_p99_ms: Option<f64>,
    pub mem_before: Option<Mem>,
    pub mem_after: Option<Mem>,
    /// The push daemon's (or engine-tcp's) share of `mem_before`/`mem_after`.
    pub daemon_mem_before: Option<Mem>,
    pub daemon_mem_after: Option<Mem>,
    /// Apache's processes (without the daemon) at the idle snapshot.
    pub apache_procs_idle: Option<usize>,
    /// This load generator's RSS before the connects and at the idle snapshot.
    pub driver_rss_before_kib: Option<u64>,
    pub driver_rss_kib: Option<u64>,
    pub busy_workers_idle: Option<u64>,
    pub idle_cpu_daemon_pct: Option<f64>,
    pub idle_cpu_apache_pct: Option<f64>,
    pub fanout_expected: u64,
    pub fanout_received: u64,
    pub fanout_p50_ms: Option<f64>,
    pub fanout_p99_ms: Option<f64>,
    pub fanout_max_ms: Option<f64>,
    pub offered_msgs_per_s: Option<f64>,
    pub cpu_daemon_s: Option<f64>,
    pub cpu_apache_s: Option<f64>,
    pub cpu_driver_s: Option<f64>,
    pub cpu_redis_s: Option<f64>,
    /// From the first PUBLISH to the end of the wait for deliveries.
    pub paced_s: Option<f64>,
    pub flood_expected: u64,
    pub flood_received: u64,
    pub flood_p99_ms: Option<f64>,
    pub flood_msgs_per_s: Option<f64>,
    pub flood_cpu_daemon_s: Option<f64>,
    pub flood_cpu_apache_s: Option<f64>,
    pub flood_cpu_driver_s: Option<f64>,
    pub dropped_before_fanout: usize,
    pub dropped_total: usize,
    pub foreign_frames: u64,
    pub wall_s: f64,
    pub notes: Vec<String>,
}

impl SetupResult {
    pub fn new(kind: Kind, clients: usize, users: usize) -> SetupResult {
        SetupResult {
            kind,
            clients,
            users,
            error: None,
            max_request_workers: None,
            connected: 0,
            connect_failed: 0,
            not_attempted: 0,
            ramp_s: None,
            ramp_connects_per_s: None,
            probe_p50_ms: None,
            probe_p99_ms: None,
            connect_p50_ms: None,
            connect_p99_ms: None,
            mem_before: None,
            mem_after: None,
            daemon_mem_before: None,
            daemon_mem_after: None,
            apache_procs_idle: None,
            driver_rss_before_kib: None,
            driver_rss_kib: None,
            busy_workers_idle: None,
            idle_cpu_daemon_pct: None,
            idle_cpu_apache_pct: None,
            fanout_expected: 0,
            fanout_received: 0,
            fanout_p50_ms: None,
            fanout_p99_ms: None,
            fanout_max_ms: None,
            offered_msgs_per_s: None,
            cpu_daemon_s: None,
            cpu_apache_s: None,
            cpu_driver_s: None,
            cpu_redis_s: None,
            paced_s: None,
            flood_expected: 0,
            flood_received: 0,
            flood_p99_ms: None,
            flood_msgs_per_s: None,
            flood_cpu_daemon_s: None,
            flood_cpu_apache_s: None,
            flood_cpu_driver_s: None,
            dropped_before_fanout: 0,
            dropped_total: 0,
            foreign_frames: 0,
            wall_s: 0.0,
            notes: Vec::new(),
        }
    }

    pub fn failed(kind: Kind, clients: usize, error: String) -> SetupResult {
        eprintln!("  FAILED: {error}");
        let mut r = SetupResult::new(kind, clients, (clients / 4).max(1));
        r.error = Some(error);
        r
    }

    /// (RSS, PSS) KiB per connected client: the servers' growth from before the connects to
    /// the idle snapshot, divided by the clients connected.
    pub fn per_client_kib(&self) -> Option<(f64, f64)> {
        let (before, after) = (self.mem_before?, self.mem_after?);
        if self.connected == 0 {
            return None;
        }
        let n = self.connected as f64;
        Some((
            (after.rss_kib as f64 - before.rss_kib as f64) / n,
            (after.pss_kib as f64 - before.pss_kib as f64) / n,
        ))
    }

    /// PSS KiB per connected client of the daemon (or engine-tcp) alone.
    pub fn daemon_pss_per_client_kib(&self) -> Option<f64> {
        let (before, after) = (self.daemon_mem_before?, self.daemon_mem_after?);
        (self.connected > 0)
            .then(|| (after.pss_kib as f64 - before.pss_kib as f64) / self.connected as f64)
    }

    pub fn json(&self) -> Value {
        let per = self.per_client_kib();
        json!({
            "setup": self.kind.name(),
            "clients": self.clients,
            "users": self.users,
            "error": self.error,
            "max_request_workers": self.max_request_workers,
            "connected": self.connected,
            "connect_failed": self.connect_failed,
            "not_attempted": self.not_attempted,
            "ramp_s": round(self.ramp_s),
            "ramp_connects_per_s": round(self.ramp_connects_per_s),
            "probe_connect_p50_ms": round(self.probe_p50_ms),
            "probe_connect_p99_ms": round(self.probe_p99_ms),
            "connect_p50_ms": round(self.connect_p50_ms),
            "connect_p99_ms": round(self.connect_p99_ms),
            "rss_before_kib": self.mem_before.map(|m| m.rss_kib),
            "rss_after_kib": self.mem_after.map(|m| m.rss_kib),
            "pss_before_kib": self.mem_before.map(|m| m.pss_kib),
            "pss_after_kib": self.mem_after.map(|m| m.pss_kib),
            "rss_per_client_kib": round(per.map(|p| p.0)),
            "pss_per_client_kib": round(per.map(|p| p.1)),
            "daemon_pss_before_kib": self.daemon_mem_before.map(|m| m.pss_kib),
            "daemon_pss_after_kib": self.daemon_mem_after.map(|m| m.pss_kib),
            "daemon_pss_per_client_kib": round(self.daemon_pss_per_client_kib()),
            "apache_procs_idle": self.apache_procs_idle,
            "driver_rss_before_kib": self.driver_rss_before_kib,
            "driver_rss_kib": self.driver_rss_kib,
            "busy_workers_idle": self.busy_workers_idle,
            "idle_cpu_daemon_pct": round(self.idle_cpu_daemon_pct),
            "idle_cpu_apache_pct": round(self.idle_cpu_apache_pct),
            "fanout_expected": self.fanout_expected,
            "fanout_received": self.fanout_received,
            "fanout_p50_ms": round(self.fanout_p50_ms),
            "fanout_p99_ms": round(self.fanout_p99_ms),
            "fanout_max_ms": round(self.fanout_max_ms),
            "offered_msgs_per_s": round(self.offered_msgs_per_s),
            "cpu_daemon_s": round(self.cpu_daemon_s),
            "cpu_apache_s": round(self.cpu_apache_s),
            "cpu_driver_s": round(self.cpu_driver_s),
            "cpu_redis_s": round(self.cpu_redis_s),
            "paced_s": round(self.paced_s),
            "flood_expected": self.flood_expected,
            "flood_received": self.flood_received,
            "flood_p99_ms": round(self.flood_p99_ms),
            "flood_msgs_per_s": round(self.flood_msgs_per_s),
            "flood_cpu_daemon_s": round(self.flood_cpu_daemon_s),
            "flood_cpu_apache_s": round(self.flood_cpu_apache_s),
            "flood_cpu_driver_s": round(self.flood_cpu_driver_s),
            "dropped_before_fanout": self.dropped_before_fanout,
            "dropped_total": self.dropped_total,
            "foreign_frames": self.foreign_frames,
            "wall_s": round(Some(self.wall_s)),
            "notes": self.notes,
        })
    }
}

fn round(v: Option<f64>) -> Option<f64> {
    v.map(|v| if v.abs() >= 100.0 { v.round() } else { (v * 100.0).round() / 100.0 })
}

/// One figure: its label, how to read it from a result, and whether lower is better (for the
/// ratio's wording only; the ratio is always module / other).
struct Figure {
    label: &'static str,
    get: fn(&SetupResult) -> Option<f64>,
}

fn figures() -> Vec<Figure> {
    vec![
        Figure { label: "clients connected", get: |r| Some(r.connected as f64) },
        Figure { label: "connect+auth p50 ms (1 at a time)", get: |r| r.probe_p50_ms },
        Figure { label: "connect+auth p99 ms (1 at a time)", get: |r| r.probe_p99_ms },
        Figure { label: "connect+auth p50 ms (ramp)", get: |r| r.connect_p50_ms },
        Figure { label: "connect+auth p99 ms (ramp)", get: |r| r.connect_p99_ms },
        Figure { label: "ramp connects/s", get: |r| r.ramp_connects_per_s },
        Figure { label: "RSS per idle client KiB", get: |r| r.per_client_kib().map(|p| p.0) },
        Figure { label: "PSS per idle client KiB", get: |r| r.per_client_kib().map(|p| p.1) },
        Figure { label: "  of which daemon/engine", get: |r| r.daemon_pss_per_client_kib() },
        Figure {
            label: "RSS total after MiB",
            get: |r| r.mem_after.map(|m| m.rss_kib as f64 / 1024.0),
        },
        Figure {
            label: "PSS total after MiB",
            get: |r| r.mem_after.map(|m| m.pss_kib as f64 / 1024.0),
        },
        Figure {
            label: "Apache workers busy idle",
            get: |r| r.busy_workers_idle.map(|v| v as f64),
        },
        Figure { label: "Apache processes idle", get: |r| r.apache_procs_idle.map(|v| v as f64) },
        Figure {
            label: "load generator RSS KiB per client",
            get: |r| {
                let (before, after) = (r.driver_rss_before_kib?, r.driver_rss_kib?);
                (r.connected > 0).then(|| (after as f64 - before as f64) / r.connected as f64)
            },
        },
        Figure { label: "idle CPU % daemon/engine", get: |r| r.idle_cpu_daemon_pct },
        Figure { label: "idle CPU % Apache", get: |r| r.idle_cpu_apache_pct },
        Figure { label: "fan-out p50 ms", get: |r| r.fanout_p50_ms },
        Figure { label: "fan-out p99 ms", get: |r| r.fanout_p99_ms },
        Figure { label: "fan-out max ms", get: |r| r.fanout_max_ms },
        Figure {
            label: "fan-out delivered %",
            get: |r| {
                (r.fanout_expected > 0)
                    .then(|| r.fanout_received as f64 * 100.0 / r.fanout_expected as f64)
            },
        },
        Figure { label: "offered msgs/s (paced)", get: |r| r.offered_msgs_per_s },
        Figure { label: "CPU s daemon/engine (paced)", get: |r| r.cpu_daemon_s },
        Figure { label: "CPU s Apache (paced)", get: |r| r.cpu_apache_s },
        Figure { label: "CPU s load generator (paced)", get: |r| r.cpu_driver_s },
        Figure { label: "CPU s redis (paced)", get: |r| r.cpu_redis_s },
        Figure { label: "paced phase wall s", get: |r| r.paced_s },
        Figure { label: "flood msgs/s sustained", get: |r| r.flood_msgs_per_s },
        Figure {
            label: "flood delivered %",
            get: |r| {
                (r.flood_expected > 0)
                    .then(|| r.flood_received as f64 * 100.0 / r.flood_expected as f64)
            },
        },
        Figure { label: "flood p99 ms", get: |r| r.flood_p99_ms },
        Figure { label: "CPU s daemon/engine (flood)", get: |r| r.flood_cpu_daemon_s },
        Figure { label: "CPU s Apache (flood)", get: |r| r.flood_cpu_apache_s },
        Figure { label: "CPU s load generator (flood)", get: |r| r.flood_cpu_driver_s },
    ]
}

fn cell(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

/// The ratios shown, each `base / other` with its column label: the module against the
/// ProxyPass setups over plain ws, module-wss against the ProxyPass setups over wss, against
/// itself with the TLS handoff off, and against plain `module` (what TLS costs it).
const COMPARISONS: [(Kind, Kind, &str); 7] = [
    (Kind::Module, Kind::ProxyDebian, "mod/debian"),
    (Kind::Module, Kind::ProxyRaised, "mod/raised"),
    (Kind::Module, Kind::Direct, "mod/direct"),
    (Kind::ModuleWss, Kind::ProxyWssDebian, "wss/wss-debian"),
    (Kind::ModuleWss, Kind::ProxyWssRaised, "wss/wss-raised"),
    (Kind::ModuleWss, Kind::ModuleWssBridged, "wss/bridged"),
    (Kind::ModuleWss, Kind::Module, "wss/module"),
];

/// The comparisons both of whose setups are in `group`.
fn comparisons<'a>(
    group: &[&'a SetupResult],
) -> Vec<(&'a SetupResult, &'a SetupResult, &'static str)> {
    let find = |kind: Kind| group.iter().find(|r| r.kind == kind).copied();
    COMPARISONS
        .iter()
        .filter_map(|&(base, other, label)| Some((find(base)?, find(other)?, label)))
        .collect()
}

/// The human table: per N, one column per setup; then the ratios, one column per comparison
/// (plain and wss side by side).
pub fn table(results: &[SetupResult]) -> String {
    let mut out = String::new();
    let mut ns: Vec<usize> = results.iter().map(|r| r.clients).collect();
    ns.dedup();
    for n in ns {
        let group: Vec<&SetupResult> = results.iter().filter(|r| r.clients == n).collect();
        let users = group.first().map(|r| r.users).unwrap_or(0);
        let _ = write!(out, "N = {n} clients, U = {users} users");
        for r in &group {
            if let Some(w) = r.max_request_workers {
                let _ = write!(out, "; {} MaxRequestWorkers {w}", r.kind.name());
            }
        }
        out.push('\n');
        let widths: Vec<usize> = group.iter().map(|r| (r.kind.name().len() + 2).max(12)).collect();
        let _ = write!(out, "{:36}", "");
        for (r, w) in group.iter().zip(&widths) {
            let _ = write!(out, "{:>w$}", r.kind.name());
        }
        out.push('\n');
        for f in figures() {
            let _ = write!(out, "{:36}", f.label);
            for (r, w) in group.iter().zip(&widths) {
                let _ = write!(out, "{:>w$}", cell((f.get)(r)));
            }
            out.push('\n');
        }
        let pairs = comparisons(&group);
        if !pairs.is_empty() {
            let _ = write!(out, "\n{:36}", "ratios (left / right setup)");
            for (_, _, label) in &pairs {
                let _ = write!(out, "{label:>16}");
            }
            out.push('\n');
            for f in figures() {
                let _ = write!(out, "{:36}", f.label);
                for (base, other, _) in &pairs {
                    let r = ratio((f.get)(base), (f.get)(other));
                    let _ = write!(
                        out,
                        "{:>16}",
                        r.map(|r| format!("{}x", cell(Some(r)))).unwrap_or("-".into())
                    );
                }
                out.push('\n');
            }
        }
        for r in &group {
            if let Some(e) = &r.error {
                let _ = writeln!(
                    out,
                    "  {}: FAILED: {}",
                    r.kind.name(),
                    e.lines().next().unwrap_or("")
                );
            }
            for note in &r.notes {
                let _ = writeln!(out, "  {}: {note}", r.kind.name());
            }
        }
        out.push('\n');
    }
    out
}

/// One JSON line per (N, comparison): every figure as base / other.
pub fn ratio_json(results: &[SetupResult]) -> Vec<String> {
    let mut ns: Vec<usize> = results.iter().map(|r| r.clients).collect();
    ns.dedup();
    let mut lines = Vec::new();
    for n in ns {
        let group: Vec<&SetupResult> = results.iter().filter(|r| r.clients == n).collect();
        for (base, other, _) in comparisons(&group) {
            let mut map = serde_json::Map::new();
            map.insert(
                "ratio".into(),
                json!(format!("{}/{}", base.kind.name(), other.kind.name())),
            );
            map.insert("clients".into(), json!(n));
            for f in figures() {
                let key = f.label.replace(['%', '+', '/', '(', ')'], " ");
                let key = key.split_whitespace().collect::<Vec<_>>().join("_").to_lowercase();
                map.insert(key, json!(round(ratio((f.get)(base), (f.get)(other)))));
            }
            lines.push(Value::Object(map).to_string());
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_ratios() {
        let mut m = SetupResult::new(Kind::Module, 100, 25);
        m.connected = 100;
        m.mem_before = Some(Mem { rss_kib: 1000, pss_kib: 800 });
        m.mem_after = Some(Mem { rss_kib: 2000, pss_kib: 1800 });
        let mut p = SetupResult::new(Kind::ProxyDebian, 100, 25);
        p.connected = 50;
        p.mem_before = Some(Mem { rss_kib: 1000, pss_kib: 800 });
        p.mem_after = Some(Mem { rss_kib: 6000, pss_kib: 5800 });
        assert_eq!(m.per_client_kib(), Some((10.0, 10.0)));
        assert_eq!(p.per_client_kib(), Some((100.0, 100.0)));
        let t = table(&[m.clone(), p.clone()]);
        assert!(t.contains("clients connected"), "{t}");
        assert!(t.contains("2.00x"), "{t}");
        let r = ratio_json(&[m.clone(), p.clone()]);
        assert_eq!(r.len(), 1);
        let v: Value = serde_json::from_str(&r[0]).unwrap();
        assert_eq!(v["ratio"], json!("module/proxy-debian"));
        assert_eq!(v["clients_connected"], json!(2.0));
        assert_eq!(v["rss_per_idle_client_kib"], json!(0.1));

        // wss: module-wss against proxy-wss-debian and against plain module, next to the plain
        // ratio; no pair across N.
        let mut w = m.clone();
        w.kind = Kind::ModuleWss;
        w.connected = 25;
        let mut pw = p.clone();
        pw.kind = Kind::ProxyWssDebian;
        let mut other_n = SetupResult::new(Kind::ProxyWssRaised, 200, 50);
        other_n.connected = 200;
        let all = [m, p, w, pw, other_n];
        let t = table(&all);
        for needle in ["mod/debian", "wss/wss-debian", "wss/module", "0.50x", "0.25x"] {
            assert!(t.contains(needle), "{needle} in\n{t}");
        }
        assert!(!t.contains("wss/wss-raised"), "{t}");
        let r = ratio_json(&all);
        let names: Vec<String> = r
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["ratio"].as_str().unwrap().into())
            .collect();
        assert_eq!(
            names,
            ["module/proxy-debian", "module-wss/proxy-wss-debian", "module-wss/module"]
        );
    }
}
