//! What the benchmark reads from /proc and from mod_status.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;
use testkit::apache::processes;
use tokio_rustls::rustls;

/// `pid` and every descendant of it, zombies included: a zombie has no memory left but keeps
/// its CPU times until its parent reaps it (then they move to the parent's cutime/cstime), so
/// counting it avoids a CPU total that jumps when a retired Apache child is reaped.
pub fn tree(pid: u32) -> Vec<u32> {
    let all = processes();
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let parent = out[i];
        out.extend(all.iter().filter(|p| p.ppid == parent).map(|p| p.pid));
        i += 1;
    }
    out
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mem {
    pub rss_kib: u64,
    pub pss_kib: u64,
}

impl std::ops::Add for Mem {
    type Output = Mem;
    fn add(self, o: Mem) -> Mem {
        Mem { rss_kib: self.rss_kib + o.rss_kib, pss_kib: self.pss_kib + o.pss_kib }
    }
}

/// Rss + Pss of one process from /proc/<pid>/smaps_rollup (zero when it is gone).
pub fn mem(pid: u32) -> Mem {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) else {
        return Mem::default();
    };
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Mem { rss_kib: field("Rss:"), pss_kib: field("Pss:") }
}

pub fn mem_sum(pids: &[u32]) -> Mem {
    pids.iter().map(|&p| mem(p)).fold(Mem::default(), |a, b| a + b)
}

/// utime + stime of a process (all its threads), in clock ticks; 0 when it is gone.
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    let Some(close) = stat.rfind(')') else { return 0 };
    // fields after comm: state(3) ppid … utime(14) stime(15): indexes 11 and 12 after ')'
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let get = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

pub fn cpu_sum(pids: &[u32]) -> u64 {
    pids.iter().map(|&p| cpu_ticks(p)).sum()
}

/// cutime + cstime: the CPU of a process' children that exited and were reaped (Apache's
/// parent reaps the children it retires, so a tree's total does not drop when one goes).
pub fn reaped_children_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    let Some(close) = stat.rfind(')') else { return 0 };
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let get = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(13) + get(14)
}

/// The pid of a child of `parent` with this comm, if any.
pub fn child_named(parent: u32, comm: &str) -> Option<u32> {
    processes().into_iter().find(|p| p.ppid == parent && p.comm == comm).map(|p| p.pid)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on Linux).
pub fn clk_tck() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// `/server-status?auto` of mod_status.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub busy_workers: u64,
}

/// Fetches `/server-status?auto` (bounded by `timeout`), over https when `tls` is given
/// (verified as `localhost`): `Err` when no worker answers.
pub fn server_status(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
) -> Result<Status, String> {
    let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let request: &[u8] =
        b"GET /server-status?auto HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let raw = match tls {
        None => exchange(s, request, timeout)?,
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(crate::client::TLS_SERVER_NAME)
                .map_err(|e| e.to_string())?;
            let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
            // The handshake runs within the first write and read, under the socket's timeouts.
            exchange(rustls::StreamOwned::new(conn, s), request, timeout)?
        }
    };
    let text = String::from_utf8_lossy(&raw);
    let field =
        |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string());
    let busy = field("BusyWorkers:").and_then(|v| v.parse().ok());
    let Some(busy_workers) = busy else {
        return Err(format!(
            "no BusyWorkers in the answer: {}",
            text.lines().next().unwrap_or("(empty)")
        ));
    };
    Ok(Status { busy_workers })
}

/// Sends `request`, reads until the peer closes (a TLS peer that closes without close_notify
/// still counts as closed once something arrived).
fn exchange(
    mut s: impl Read + Write,
    request: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    s.write_all(request).and_then(|()| s.flush()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let mut chunk = [0u8; 4096];
    // bounded: each read waits at most `timeout`, and the answer is capped at 1 MiB
    while raw.len() < 1 << 20 {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(_) if !raw.is_empty() => break,
            Err(e) => return Err(format!("no answer within {timeout:?} ({e})")),
        }
    }
    Ok(raw)
}

/// A one-line kernel setting (`/proc/sys/...`), trimmed.
pub fn sysctl(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// Tasks (threads) currently running on the machine.
pub fn task_count() -> usize {
    processes()
        .iter()
        .map(|p| std::fs::read_dir(format!("/proc/{}/task", p.pid)).map(|d| d.count()).unwrap_or(1))
        .sum()
}
