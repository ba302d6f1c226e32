//! A real `redis-server` per test.
//!
//! [`RedisServer::start`] is synchronous (usable from sync and async tests alike): it spawns
//! `redis-server` on a free 127.0.0.1 port with its working directory in a tempdir
//! (`--save "" --appendonly no`), and returns once `PING` answers. The server is killed on drop.
//! The binary is `REDIS_SERVER` or `redis-server` from `PATH`; when it is missing, `start`
//! returns a [`Skip`] (tests use [`crate::require!`]), except under `CI=true`, where it panics
//! with what to install.
//!
//! The command helpers ([`RedisServer::publish`], [`RedisServer::set`], …) open a short
//! synchronous connection per call; they block the calling thread for about a round trip.

use crate::Skip;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct RedisServer {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    tls: Option<RedisTlsFiles>,
}

/// Certificates of a TLS-enabled server ([`RedisServer::start_tls`]), all PEM files in the
/// server's tempdir. The server certificate is valid for `127.0.0.1` and `localhost`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisTlsFiles {
    /// TLS port (the plain port stays open for the command helpers).
    pub port: u16,
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
}

impl RedisServer {
    /// Starts a fresh server on a free port.
    pub fn start() -> Result<RedisServer, Skip> {
        RedisServer::start_inner(false)
    }

    /// Like [`RedisServer::start`], plus a TLS port that requires a client certificate
    /// (`--tls-auth-clients yes`). Certificates are made with the `openssl` command (a
    /// [`Skip`] when it is missing, a panic under `CI=true`).
    pub fn start_tls() -> Result<RedisServer, Skip> {
        RedisServer::start_inner(true)
    }

    fn start_inner(tls: bool) -> Result<RedisServer, Skip> {
        let binary = std::env::var_os("REDIS_SERVER")
            .map(PathBuf::from)
            .or_else(|| crate::find_binary("redis-server"))
            .filter(|path| path.is_file());
        let Some(binary) = binary else {
            let reason =
                "redis-server not found (install the `redis-server` package or set REDIS_SERVER)";
            if crate::in_ci() {
                panic!("{reason}; CI=true, so this is an error");
            }
            return Err(Skip(reason.into()));
        };
        let mut last_error = String::new();
        // A free port can be taken between probing and binding: retry with another one.
        for _ in 0..5 {
            let dir =
                tempfile::tempdir().map_err(|e| Skip(format!("cannot create a tempdir: {e}")))?;
            let tls = if tls { Some(make_certificates(dir.path())?) } else { None };
            let mut server = RedisServer {
                binary: binary.clone(),
                port: crate::free_port(),
                dir,
                child: None,
                tls,
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(e) => last_error = e,
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.path().join("redis.log");
        let mut command = Command::new(&self.binary);
        command.arg("--unixsocket").arg(self.socket_path()).args(["--unixsocketperm", "700"]);
        if let Some(tls) = &self.tls {
            command
                .args(["--tls-port", &tls.port.to_string(), "--tls-auth-clients", "yes"])
                .arg("--tls-cert-file")
                .arg(&tls.server_cert)
                .arg("--tls-key-file")
                .arg(&tls.server_key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca);
        }
        let mut child = command
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(["--daemonize", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        let url = self.url();
        let ready = crate::wait_until_sync(START_TIMEOUT, || {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            ping(&url)
        });
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("redis-server exited with {status}: {log}"));
        }
        if !ready {
            let _ = child.kill();
            let _ = child.wait();
            return Err("PING did not answer in time".into());
        }
        self.child = Some(child);
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's Unix socket (`unix://` + this path is a valid redis URL).
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The TLS files and port, for a server from [`RedisServer::start_tls`].
    pub fn tls(&self) -> Option<&RedisTlsFiles> {
        self.tls.as_ref()
    }

    /// The server's working directory (log file `redis.log` inside).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn connection(&self) -> ::redis::Connection {
        ::redis::Client::open(self.url()).and_then(|client| client.get_connection()).unwrap_or_else(
            |e| panic!("cannot connect to the test redis-server on port {}: {e}", self.port),
        )
    }

    /// `PUBLISH channel payload`; returns the number of subscribers that received it.
    pub fn publish(&self, channel: &str, payload: &str) -> i64 {
        self.publish_bytes(channel, payload.as_bytes())
    }

    /// [`RedisServer::publish`] of any bytes (payloads that are not UTF-8).
    pub fn publish_bytes(&self, channel: &str, payload: &[u8]) -> i64 {
        ::redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query(&mut self.connection())
            .expect("PUBLISH")
    }

    /// Any command whose reply is a string (`ACL SETUSER …` → `OK`, `CLIENT LIST` → the list).
    pub fn command(&self, args: &[&str]) -> String {
        ::redis::cmd(args[0])
            .arg(&args[1..])
            .query(&mut self.connection())
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    pub fn set(&self, key: &str, value: &str) {
        ::redis::cmd("SET").arg(key).arg(value).query::<()>(&mut self.connection()).expect("SET")
    }

    pub fn get(&self, key: &str) -> Option<String> {
        ::redis::cmd("GET").arg(key).query(&mut self.connection()).expect("GET")
    }

    /// `TTL key`: the seconds the key has left, -1 without an expiry, -2 if it is missing.
    pub fn ttl(&self, key: &str) -> i64 {
        ::redis::cmd("TTL").arg(key).query(&mut self.connection()).expect("TTL")
    }

    pub fn del(&self, key: &str) {
        ::redis::cmd("DEL").arg(key).query::<()>(&mut self.connection()).expect("DEL")
    }

    /// Number of subscribers of `channel` (`PUBSUB NUMSUB`).
    pub fn subscribers(&self, channel: &str) -> i64 {
        let reply: Vec<::redis::Value> = ::redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query(&mut self.connection())
            .expect("PUBSUB NUMSUB");
        match reply.get(1) {
            Some(::redis::Value::Int(n)) => *n,
            _ => 0,
        }
    }

    /// The sorted list of channels with at least one subscriber (`PUBSUB CHANNELS`).
    pub fn channels(&self) -> Vec<String> {
        let mut channels: Vec<String> = ::redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .query(&mut self.connection())
            .expect("PUBSUB CHANNELS");
        channels.sort();
        channels
    }

    /// Waits (polling, no fixed sleep) until `channel` has at least `n` subscribers.
    pub async fn wait_for_subscribers(&self, channel: &str, n: i64, timeout: Duration) -> bool {
        crate::wait_until(timeout, || {
            let url = self.url();
            let channel = channel.to_string();
            async move {
                tokio::task::spawn_blocking(move || {
                    ::redis::Client::open(url)
                        .and_then(|c| c.get_connection())
                        .and_then(|mut c| {
                            ::redis::cmd("PUBSUB")
                                .arg("NUMSUB")
                                .arg(&channel)
                                .query::<Vec<::redis::Value>>(&mut c)
                        })
                        .map(
                            |reply| matches!(reply.get(1), Some(::redis::Value::Int(k)) if *k >= n),
                        )
                        .unwrap_or(false)
                })
                .await
                .unwrap_or(false)
            }
        })
        .await
    }

    /// Kills the server (connections see it disappear). [`RedisServer::restart`] brings it back.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Stops (if running) and starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        let mut last = String::new();
        // The old socket may linger for a moment; retry briefly on the same port.
        for _ in 0..50 {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not restart on port {}: {last}", self.port);
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ping(url: &str) -> bool {
    ::redis::Client::open(url)
        .and_then(|client| client.get_connection_with_timeout(Duration::from_millis(200)))
        .and_then(|mut connection| ::redis::cmd("PING").query::<String>(&mut connection))
        .is_ok_and(|pong| pong == "PONG")
}

pub(crate) fn make_certificates(dir: &std::path::Path) -> Result<RedisTlsFiles, Skip> {
    let Some(openssl) = crate::find_binary("openssl") else {
        let reason = "openssl not found (install the `openssl` package)";
        if crate::in_ci() {
            panic!("{reason}; CI=true, so this is an error");
        }
        return Err(Skip(reason.into()));
    };
    let path = |name: &str| dir.join(name);
    let run = |args: &[&str]| {
        let output = Command::new(&openssl)
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run openssl: {e}"));
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=testkit-ca"],
    ]
    .concat());
    std::fs::write(
        path("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    std::fs::write(path("client.ext"), "extendedKeyUsage=clientAuth\n").expect("write client.ext");
    for name in ["server", "client"] {
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let crt = format!("{name}.crt");
        let ext = format!("{name}.ext");
        let subject = format!("/CN=testkit-{name}");
        run(&[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", &subject]].concat());
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &crt,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
    }
    Ok(RedisTlsFiles {
        port: crate::free_port(),
        ca: path("ca.crt"),
        client_cert: path("client.crt"),
        client_key: path("client.key"),
        server_cert: path("server.crt"),
        server_key: path("server.key"),
    })
}
