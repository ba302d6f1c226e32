//! HTTPS for the real-apache2 tests: a throwaway CA and a `localhost` server certificate made per
//! run with the `openssl` command, the mod_ssl lines that serve them, and `wss://` clients
//! (tokio-tungstenite over rustls) that verify the server against that CA only.
//!
//! `TestCa::generate()` returns a [`Skip`] when `openssl` or `mod_ssl.so` is missing (a panic
//! under `CI=true`, like every other fixture).

use crate::apache::{ApacheBuilder, MODULES_DIR};
use crate::Skip;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

/// A WebSocket over TLS (or plain TCP), as the tests' clients use it.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A CA and a server certificate for `localhost` and `127.0.0.1`, signed by it, in a tempdir.
pub struct TestCa {
    _dir: tempfile::TempDir,
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

fn skip_or_panic(why: String) -> Skip {
    if crate::in_ci() {
        panic!("{why} (CI=true: TLS tests must not skip)");
    }
    Skip(why)
}

/// mod_ssl and its session cache, server-wide.
fn load_mod_ssl(builder: ApacheBuilder) -> ApacheBuilder {
    builder
        // Debian's mod_ssl may be built against a newer OpenSSL 3.0.x patch release than the
        // installed libssl: a packaging skew warning, not ours.
        .allow("AH01882")
        .server_line(format!("LoadModule ssl_module {MODULES_DIR}/mod_ssl.so"))
        .server_line(format!("LoadModule socache_shmcb_module {MODULES_DIR}/mod_socache_shmcb.so"))
        .server_line("SSLSessionCache \"shmcb:{root}/run/ssl_scache(512000)\"")
}

impl TestCa {
    /// Runs `openssl` to make the CA (EC P-256) and the server certificate (2 days valid).
    pub fn generate() -> Result<TestCa, Skip> {
        let openssl = crate::find_binary("openssl")
            .ok_or_else(|| skip_or_panic("openssl not found: `apt-get install openssl`".into()))?;
        for m in ["ssl", "socache_shmcb"] {
            let so = Path::new(MODULES_DIR).join(format!("mod_{m}.so"));
            if !so.is_file() {
                return Err(skip_or_panic(format!(
                    "{} not found: install Debian's apache2",
                    so.display()
                )));
            }
        }
        let dir = tempfile::Builder::new().prefix("ncp-tls-").tempdir().expect("tempdir");
        let p = |name: &str| dir.path().join(name);
        std::fs::write(
            p("server.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .expect("server.ext");
        let steps: [Vec<&str>; 3] = [
            vec![
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=mod_nextcloud_push test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
            vec![
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
            vec![
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "server.ext",
                "-out",
                "server.crt",
            ],
        ];
        for args in steps {
            let out = Command::new(&openssl)
                .args(&args)
                .current_dir(dir.path())
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(TestCa {
            ca_cert: p("ca.crt"),
            server_cert: p("server.crt"),
            server_key: p("server.key"),
            _dir: dir,
        })
    }

    /// mod_ssl on the test vhost with this certificate (TLS 1.2 and 1.3, session cache in the
    /// server root).
    pub fn configure(&self, builder: ApacheBuilder) -> ApacheBuilder {
        load_mod_ssl(builder)
            .vhost_line("SSLEngine on")
            .vhost_line(format!("SSLCertificateFile \"{}\"", self.server_cert.display()))
            .vhost_line(format!("SSLCertificateKeyFile \"{}\"", self.server_key.display()))
    }

    /// A second, TLS-only virtual host on `port` next to the test's plain one, serving push for
    /// the same config.php (so both share one engine); `extra` lines go into it too (e.g.
    /// `NextcloudPushDebounce Off`, to match the plain vhost).
    pub fn tls_vhost(&self, builder: ApacheBuilder, port: u16, extra: &[&str]) -> ApacheBuilder {
        let mut vhost = format!(
            "Listen 127.0.0.1:{port}\n<VirtualHost 127.0.0.1:{port}>\n    ServerName localhost\n    \
             SSLEngine on\n    SSLCertificateFile \"{}\"\n    SSLCertificateKeyFile \"{}\"\n    \
             NextcloudPushConfig \"{{root}}/nextcloud/config/config.php\"\n",
            self.server_cert.display(),
            self.server_key.display()
        );
        for line in extra {
            vhost.push_str(&format!("    {line}\n"));
        }
        vhost.push_str("</VirtualHost>");
        load_mod_ssl(builder).server_line(vhost)
    }

    /// A rustls client configuration that trusts this CA only.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_file(&self.ca_cert).expect("read the test CA");
        roots.add(ca).expect("add the test CA");
        // ring is the provider the workspace builds (its deprecation only says it has no
        // post-quantum key exchange, which the tests do not need).
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// A `wss://` WebSocket handshake verified against this CA; `Err` describes a failure.
    pub async fn connect(&self, url: &str, timeout: Duration) -> Result<Ws, String> {
        let connector = Connector::Rustls(self.client_config());
        let attempt = tokio_tungstenite::connect_async_tls_with_config(
            url,
            None,
            true, // TCP_NODELAY, as browsers and the desktop client
            Some(connector),
        );
        match tokio::time::timeout(timeout, attempt).await {
            Err(_) => Err(format!("no WebSocket handshake with {url} within {timeout:?}")),
            Ok(Err(e)) => Err(format!("WebSocket handshake with {url} failed: {e}")),
            Ok(Ok((ws, response))) if response.status().as_u16() == 101 => Ok(ws),
            Ok(Ok((_, response))) => Err(format!("status {}", response.status())),
        }
    }

    /// A TLS connection to `127.0.0.1:port` (verified as `localhost`) on which `request` (a
    /// handshake, possibly followed by pipelined frames) is sent in one write. Returns the
    /// response head and, for a 101, the WebSocket over that connection.
    pub async fn raw_upgrade(
        &self,
        port: u16,
        request: &[u8],
        timeout: Duration,
    ) -> (String, Option<Ws>) {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        tcp.set_nodelay(true).expect("TCP_NODELAY");
        let connector = tokio_rustls::TlsConnector::from(self.client_config());
        let name = ServerName::try_from("localhost").expect("server name");
        let mut tls = tokio::time::timeout(timeout, connector.connect(name, tcp))
            .await
            .expect("TLS handshake timed out")
            .expect("TLS handshake");
        tls.write_all(request).await.expect("write");
        tls.flush().await.expect("flush");
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let deadline = tokio::time::Instant::now() + timeout;
        let (head, rest) = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break (
                    String::from_utf8_lossy(&buf[..end + 4]).into_owned(),
                    buf[end + 4..].to_vec(),
                );
            }
            match tokio::time::timeout_at(deadline, tls.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return (String::from_utf8_lossy(&buf).into_owned(), None),
            }
        };
        if !head.starts_with("HTTP/1.1 101") {
            return (head, None);
        }
        let stream = MaybeTlsStream::Rustls(tls);
        let ws = WebSocketStream::from_partially_read(stream, rest, Role::Client, None).await;
        (head, Some(ws))
    }
}

/// `wss://localhost:<port>/push/ws`
pub fn wss_url(port: u16) -> String {
    format!("wss://localhost:{port}/push/ws")
}
