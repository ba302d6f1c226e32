//! The adopted TLS record layer against rustls, in process: a real rustls handshake between a
//! rustls client and a rustls server over `tokio::io::duplex`, the server's secrets captured with
//! a `KeyLog` and its sequence numbers with `dangerous_extract_secrets`, the server's records
//! captured by a tap on its transport. Then the rustls server is dropped and
//! `tls::adopt` + `TlsStream` continue the server side while the rustls client goes on, exactly
//! as the daemon continues mod_ssl's session.

mod common;

use nextcloud_push_engine::tls::{self, TlsError, TlsState, TlsStream, TLS12, TLS13};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{ring as rring, CryptoProvider};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme, SupportedCipherSuite};

const RESPONSE_101: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
const LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- fixtures

#[derive(Clone, Copy, Debug)]
enum Cert {
    Ecdsa,
    Rsa,
}

fn certified(cert: Cert) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let (crt, key): (&[u8], &[u8]) = match cert {
        Cert::Ecdsa => {
            (include_bytes!("tls_certs/ecdsa.crt"), include_bytes!("tls_certs/ecdsa.key"))
        }
        Cert::Rsa => (include_bytes!("tls_certs/rsa.crt"), include_bytes!("tls_certs/rsa.key")),
    };
    let certs = CertificateDer::pem_slice_iter(crt).collect::<Result<Vec<_>, _>>().unwrap();
    (certs, PrivateKeyDer::from_pem_slice(key).unwrap())
}

/// Every suite the daemon supports that rustls offers (RSA or ECDSA as the suite needs).
fn suites() -> Vec<(SupportedCipherSuite, Cert)> {
    use rring::cipher_suite::*;
    vec![
        (TLS13_AES_128_GCM_SHA256, Cert::Ecdsa),
        (TLS13_AES_256_GCM_SHA384, Cert::Rsa),
        (TLS13_CHACHA20_POLY1305_SHA256, Cert::Ecdsa),
        (TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, Cert::Ecdsa),
        (TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, Cert::Ecdsa),
        (TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, Cert::Ecdsa),
        (TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, Cert::Rsa),
        (TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, Cert::Rsa),
        (TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, Cert::Rsa),
    ]
}

fn tls13_suites() -> Vec<(SupportedCipherSuite, Cert)> {
    suites().into_iter().filter(|(s, _)| s.tls13().is_some()).collect()
}

fn provider(suite: SupportedCipherSuite) -> Arc<CryptoProvider> {
    #[allow(deprecated)] // ring without post-quantum groups is what the workspace uses
    let mut provider = rring::default_provider();
    provider.cipher_suites = vec![suite];
    Arc::new(provider)
}

/// The test certificates are self-signed: accept any, check the signatures properly.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One key log line: label, client_random, secret.
type KeyLogLine = (String, Vec<u8>, Vec<u8>);

/// The server's key log.
#[derive(Debug, Default)]
struct Secrets(Mutex<Vec<KeyLogLine>>);

impl rustls::KeyLog for Secrets {
    fn log(&self, label: &str, client_random: &[u8], secret: &[u8]) {
        self.0.lock().unwrap().push((label.to_string(), client_random.to_vec(), secret.to_vec()));
    }
}

impl Secrets {
    /// (client_random, secret) of the line with `label`.
    fn get(&self, label: &str) -> (Vec<u8>, Vec<u8>) {
        let lines = self.0.lock().unwrap();
        lines
            .iter()
            .find(|(l, ..)| l == label)
            .map(|(_, r, s)| (r.clone(), s.clone()))
            .expect(label)
    }
}

/// Records everything the server writes to the client.
struct Tap {
    io: DuplexStream,
    written: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Tap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = std::task::ready!(Pin::new(&mut this.io).poll_write(cx, data))?;
        this.written.lock().unwrap().extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Splits a byte stream into records.
fn records(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 5 <= bytes.len() {
        let end = pos + 5 + usize::from(u16::from_be_bytes([bytes[pos + 3], bytes[pos + 4]]));
        assert!(end <= bytes.len(), "a partial record in the capture");
        out.push(&bytes[pos..end]);
        pos = end;
    }
    assert_eq!(pos, bytes.len());
    out
}

type Client = tokio_rustls::client::TlsStream<DuplexStream>;

/// A finished handshake: the rustls client, and what the "Apache side" hands over.
struct Handoff {
    client: Client,
    state: TlsState,
    /// The server's transport, still tapped.
    io: Tap,
    written: Arc<Mutex<Vec<u8>>>,
    /// Bytes the server had written before the handoff.
    before: usize,
}

impl Handoff {
    fn adopt(self) -> (Client, TlsStream<Tap>, Arc<Mutex<Vec<u8>>>, usize) {
        let layer = tls::adopt(self.state).expect("adopt");
        (
            self.client,
            TlsStream::new(self.io, layer, Vec::new(), Vec::new()),
            self.written,
            self.before,
        )
    }

    /// Server records written after the handoff (complete ones).
    fn records_since(written: &Arc<Mutex<Vec<u8>>>, before: usize) -> Vec<Vec<u8>> {
        let bytes = written.lock().unwrap()[before..].to_vec();
        records(&bytes).into_iter().map(<[u8]>::to_vec).collect()
    }
}

type Server = tokio_rustls::server::TlsStream<Tap>;

/// A rustls handshake; the server keeps its secrets in the returned key log.
async fn connect(suite: SupportedCipherSuite, cert: Cert) -> (Client, Server, Arc<Secrets>) {
    let version: &'static rustls::SupportedProtocolVersion =
        if suite.tls13().is_some() { &rustls::version::TLS13 } else { &rustls::version::TLS12 };
    let provider = provider(suite);
    let (certs, key) = certified(cert);
    let secrets = Arc::new(Secrets::default());
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    server_config.key_log = secrets.clone();
    server_config.enable_secret_extraction = true;
    let client_config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[version])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();

    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let tap = Tap { io: server_io, written: Arc::new(Mutex::new(Vec::new())) };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let name = ServerName::try_from("localhost").unwrap();
    let (client, server) = tokio::join!(connector.connect(name, client_io), acceptor.accept(tap));
    (client.unwrap(), server.unwrap(), secrets)
}

/// What the Apache side would send: secrets, sequence numbers, the last record written.
fn hand_over(server: Server, secrets: &Secrets) -> (TlsState, Tap, usize) {
    let (io, conn) = server.into_inner();
    let suite_id = u16::from(conn.negotiated_cipher_suite().unwrap().suite());
    let tls13 = conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
    let extracted = conn.dangerous_extract_secrets().unwrap();
    let bytes = io.written.lock().unwrap().clone();
    let all = records(&bytes);
    let mut state = TlsState::default();
    state.suite = suite_id;
    state.read_seq = extracted.rx.0;
    state.write_seq = extracted.tx.0;
    state.max_plaintext = 16384;
    state.last_server_record = all.last().unwrap().to_vec();
    if tls13 {
        state.version = TLS13;
        state.client_secret = secrets.get("CLIENT_TRAFFIC_SECRET_0").1;
        state.server_secret = secrets.get("SERVER_TRAFFIC_SECRET_0").1;
    } else {
        state.version = TLS12;
        // CLIENT_RANDOM <client_random> <master secret>
        (state.client_random, state.master_secret) = secrets.get("CLIENT_RANDOM");
        // ServerHello: record header (5), handshake header (4), version (2), random (32)
        assert_eq!((bytes[0], bytes[5]), (22, 2), "the capture starts with ServerHello");
        state.server_random = bytes[11..43].to_vec();
    }
    (state, io, bytes.len())
}

/// Handshake; the rustls server answers `RESPONSE_101`, then hands over.
async fn handshake(suite: SupportedCipherSuite, cert: Cert) -> Handoff {
    let (client, mut server, secrets) = connect(suite, cert).await;
    send(&mut server, RESPONSE_101).await;
    let (state, io, before) = hand_over(server, &secrets);
    let written = io.written.clone();
    let mut handoff = Handoff { client, state, io, written, before };
    expect(&mut handoff.client, RESPONSE_101).await;
    handoff
}

fn is_tls12_gcm(suite: u16) -> bool {
    matches!(suite, 0xC02B | 0xC02F | 0xC02C | 0xC030)
}

fn tls_error(e: &io::Error) -> Option<&TlsError> {
    e.get_ref().and_then(|e| e.downcast_ref::<TlsError>())
}

/// TLS 1.3 KeyUpdate record: header, 5-byte message, inner type, tag.
const KEY_UPDATE_RECORD_LEN: usize = 5 + 5 + 1 + 16;

/// Runs a test body with a time limit.
async fn within<F: std::future::Future<Output = ()>>(body: F) {
    tokio::time::timeout(LIMIT, body).await.expect("the test took too long");
}

/// Writes `data` and flushes.
async fn send<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) {
    w.write_all(data).await.unwrap();
    w.flush().await.unwrap();
}

/// Reads exactly `want.len()` bytes and compares.
async fn expect<R: AsyncRead + Unpin>(r: &mut R, want: &[u8]) {
    let mut got = vec![0u8; want.len()];
    r.read_exact(&mut got).await.unwrap();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------- tests

/// All nine suites, both directions: small and > 16 KiB messages, the self-check's negative
/// control (write_seq ± 1 is refused), the TLS 1.2 AES-GCM explicit nonce continuing OpenSSL's
/// (here rustls's) counter, no buffers held while idle, and the client's close_notify (our
/// reader sees end of stream, the client sees our close_notify: a clean EOF for rustls).
#[tokio::test]
async fn tls_rustls_every_suite_both_ways() {
    common::time_limit(async {
        within(async {
            for (suite, cert) in suites() {
                let name = format!("{:?}", suite.suite());
                let h = handshake(suite, cert).await;
                for wrong in [h.state.write_seq - 1, h.state.write_seq + 1] {
                    let mut s = h.state.clone();
                    s.write_seq = wrong;
                    assert!(
                        matches!(tls::adopt(s), Err(TlsError::SelfCheckFailed(_))),
                        "{name}: write_seq {wrong} must be refused"
                    );
                }
                let suite_id = h.state.suite;
                let last_explicit =
                    u64::from_be_bytes(h.state.last_server_record[5..13].try_into().unwrap());
                let (mut client, mut server, written, before) = h.adopt();

                send(&mut server, b"hello from the daemon").await;
                expect(&mut client, b"hello from the daemon").await;
                send(&mut client, b"hello from the client").await;
                expect(&mut server, b"hello from the client").await;
                assert_eq!(server.buffered_capacity(), (0, 0, 0), "{name}: idle");

                let big: Vec<u8> =
                    (0..100_000u32).map(|i| (i.wrapping_mul(7) >> 3) as u8).collect();
                send(&mut server, &big).await;
                expect(&mut client, &big).await;
                send(&mut client, &big).await;
                expect(&mut server, &big).await;
                assert_eq!(server.buffered_capacity(), (0, 0, 0), "{name}: idle");

                let ours = Handoff::records_since(&written, before);
                assert_eq!(ours.len(), 1 + 7, "{name}: 1 + ceil(100000 / 16384) records");
                assert!(ours.iter().all(|r| r.len() <= 5 + 8 + 16384 + 1 + 16), "{name}");
                if is_tls12_gcm(suite_id) {
                    for (i, r) in ours.iter().enumerate() {
                        let explicit = u64::from_be_bytes(r[5..13].try_into().unwrap());
                        assert_eq!(explicit, last_explicit.wrapping_add(1 + i as u64), "{name}");
                    }
                }

                client.get_mut().1.send_close_notify();
                client.flush().await.unwrap();
                let mut rest = Vec::new();
                server.read_to_end(&mut rest).await.unwrap();
                assert!(rest.is_empty(), "{name}");
                let n = client.read(&mut [0u8; 16]).await.expect("a clean close_notify");
                assert_eq!(n, 0, "{name}");
            }
        })
        .await;
    })
    .await;
}

/// 10,000 messages each way, in order, concurrently.
#[tokio::test]
async fn tls_rustls_10000_messages_in_order() {
    common::time_limit(async {
        within(async {
            use rring::cipher_suite::*;
            for (suite, cert) in [
                (TLS13_AES_128_GCM_SHA256, Cert::Ecdsa),
                (TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, Cert::Rsa),
                (TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, Cert::Ecdsa),
            ] {
                let (client, server, ..) = handshake(suite, cert).await.adopt();
                let (mut client_rd, mut client_wr) = tokio::io::split(client);
                let (mut server_rd, mut server_wr) = tokio::io::split(server);
                const N: u64 = 10_000;
                let down = async {
                    for i in 0..N {
                        send(&mut server_wr, &i.to_be_bytes()).await;
                    }
                };
                let down_rd = async {
                    for i in 0..N {
                        let mut b = [0u8; 8];
                        client_rd.read_exact(&mut b).await.unwrap();
                        assert_eq!(u64::from_be_bytes(b), i);
                    }
                };
                let up = async {
                    for i in 0..N {
                        send(&mut client_wr, &i.to_be_bytes()).await;
                    }
                };
                let up_rd = async {
                    for i in 0..N {
                        let mut b = [0u8; 8];
                        server_rd.read_exact(&mut b).await.unwrap();
                        assert_eq!(u64::from_be_bytes(b), i);
                    }
                };
                tokio::join!(down, down_rd, up, up_rd);
                let server = server_rd.unsplit(server_wr);
                assert!(server.layer().write_seq() >= N && server.layer().read_seq() >= N);
            }
        })
        .await;
    })
    .await;
}

/// The rustls client's KeyUpdate(update_requested) after the handoff: our reader follows
/// (proves "traffic upd" against rustls), and our next write starts with
/// KeyUpdate(update_not_requested) under the old key; the client decrypts what follows.
#[tokio::test]
async fn tls_rustls_client_key_update() {
    common::time_limit(async {
        within(async {
            for (suite, cert) in tls13_suites() {
                let (mut client, mut server, written, before) =
                    handshake(suite, cert).await.adopt();
                for _ in 0..3 {
                    let mark = written.lock().unwrap().len();
                    client.get_mut().1.refresh_traffic_keys().unwrap();
                    send(&mut client, b"after the key update").await;
                    expect(&mut server, b"after the key update").await;
                    assert_eq!(server.layer().read_seq(), 1, "new read key, one record");
                    assert!(server.layer().key_update_pending());
                    send(&mut server, b"reply").await;
                    expect(&mut client, b"reply").await;
                    assert_eq!(server.layer().write_seq(), 1, "new write key, one record");
                    let ours = Handoff::records_since(&written, mark);
                    assert_eq!(ours.len(), 2);
                    assert_eq!(ours[0].len(), KEY_UPDATE_RECORD_LEN);
                }
                let _ = before;
            }
        })
        .await;
    })
    .await;
}

/// More than 8 KeyUpdates within a second: fatal, the client gets unexpected_message.
#[tokio::test]
async fn tls_rustls_key_update_rate_limit() {
    common::time_limit(async {
        within(async {
            let (suite, cert) = tls13_suites()[0];
            let (mut client, mut server, ..) = handshake(suite, cert).await.adopt();
            for _ in 0..9 {
                client.get_mut().1.refresh_traffic_keys().unwrap();
                client.flush().await.unwrap();
            }
            send(&mut client, b"x").await;
            let e = server.read(&mut [0u8; 8]).await.unwrap_err();
            assert_eq!(tls_error(&e), Some(&TlsError::KeyUpdateRate));
            let e = client.read(&mut [0u8; 8]).await.unwrap_err();
            assert!(e.to_string().contains("UnexpectedMessage"), "{e}");
        })
        .await;
    })
    .await;
}

/// Our own KeyUpdate, forced by a low limit (3 records per key): the client follows every one.
#[tokio::test]
async fn tls_rustls_daemon_key_update() {
    common::time_limit(async {
        within(async {
            for (suite, cert) in tls13_suites() {
                let (mut client, mut server, written, before) =
                    handshake(suite, cert).await.adopt();
                server.layer_mut().set_key_update_limit(3);
                for i in 0..100u64 {
                    send(&mut server, &i.to_be_bytes()).await;
                    assert!(server.layer().write_seq() < 3);
                }
                for i in 0..100u64 {
                    let mut b = [0u8; 8];
                    client.read_exact(&mut b).await.unwrap();
                    assert_eq!(u64::from_be_bytes(b), i);
                }
                let ours = Handoff::records_since(&written, before);
                let updates = ours.iter().filter(|r| r.len() == KEY_UPDATE_RECORD_LEN).count();
                assert_eq!(updates, 50, "a KeyUpdate every 2 data records");
                assert_eq!(ours.len(), 150);
                // the read side is untouched
                send(&mut client, b"still here").await;
                expect(&mut server, b"still here").await;
            }
        })
        .await;
    })
    .await;
}

/// A KeyUpdate OpenSSL still owed at handoff: the client asked, "OpenSSL" read it (its read key
/// moved on) but did not answer. Our first record must be KeyUpdate(update_not_requested).
#[tokio::test]
async fn tls_rustls_owed_key_update() {
    common::time_limit(async {
        within(async {
            for (suite, cert) in tls13_suites() {
                let mut h = handshake(suite, cert).await;
                h.client.get_mut().1.refresh_traffic_keys().unwrap();
                h.client.flush().await.unwrap();
                // "OpenSSL" consumes the client's KeyUpdate record
                let mut header = [0u8; 5];
                h.io.io.read_exact(&mut header).await.unwrap();
                let mut body = vec![0u8; usize::from(u16::from_be_bytes([header[3], header[4]]))];
                h.io.io.read_exact(&mut body).await.unwrap();
                assert_eq!(body.len(), 5 + 1 + 16, "a KeyUpdate");
                h.state.client_secret =
                    tls::next_traffic_secret(h.state.suite, &h.state.client_secret).unwrap();
                h.state.read_seq = 0;
                h.state.owes_key_update = true;
                let (mut client, mut server, written, before) = h.adopt();
                send(&mut client, b"ping").await;
                expect(&mut server, b"ping").await;
                send(&mut server, b"pong").await;
                expect(&mut client, b"pong").await;
                let ours = Handoff::records_since(&written, before);
                assert_eq!(ours.len(), 2);
                assert_eq!(ours[0].len(), KEY_UPDATE_RECORD_LEN, "the owed KeyUpdate goes first");
                assert_eq!(server.layer().write_seq(), 1);
            }
        })
        .await;
    })
    .await;
}

/// Our shutdown: data, then close_notify, then the socket's write side: a clean EOF for
/// rustls (which reports a missing close_notify as an error).
#[tokio::test]
async fn tls_rustls_shutdown_sends_close_notify() {
    common::time_limit(async {
        within(async {
            for (suite, cert) in suites() {
                let (mut client, mut server, ..) = handshake(suite, cert).await.adopt();
                server.write_all(b"goodbye").await.unwrap();
                server.shutdown().await.unwrap();
                let mut got = Vec::new();
                client.read_to_end(&mut got).await.expect("a clean close");
                assert_eq!(got, b"goodbye");
                assert!(server.write_all(b"late").await.is_err());
            }
        })
        .await;
    })
    .await;
}

/// Bytes in flight at the handoff: plaintext Apache already decrypted, and a client record
/// split so that the ciphertext prefix ends inside its header or body.
#[tokio::test]
async fn tls_rustls_prefixes_split_record() {
    common::time_limit(async {
        within(async {
            use rring::cipher_suite::*;
            for (suite, cert) in [
                (TLS13_CHACHA20_POLY1305_SHA256, Cert::Rsa),
                (TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, Cert::Ecdsa),
            ] {
                for cut in [3, 5, 10] {
                    let mut h = handshake(suite, cert).await;
                    send(&mut h.client, b"pipelined frame").await;
                    let mut partial = vec![0u8; cut];
                    h.io.io.read_exact(&mut partial).await.unwrap();
                    let layer = tls::adopt(h.state).unwrap();
                    let mut server =
                        TlsStream::new(h.io, layer, b"already decrypted|".to_vec(), partial);
                    expect(&mut server, b"already decrypted|pipelined frame").await;
                    assert_eq!(server.buffered_capacity(), (0, 0, 0));
                    send(&mut server, b"ok").await;
                    expect(&mut h.client, b"ok").await;
                }
            }
        })
        .await;
    })
    .await;
}

/// A wrong read_seq passes adopt (the self-check covers the write side) and fails the first
/// read with bad_record_mac, which the client receives as a fatal alert.
#[tokio::test]
async fn tls_rustls_wrong_read_seq_is_bad_record_mac() {
    common::time_limit(async {
        within(async {
            for (suite, cert) in suites() {
                let h = handshake(suite, cert).await;
                let mut wrong = vec![h.state.read_seq + 1];
                if h.state.read_seq > 0 {
                    wrong.push(h.state.read_seq - 1);
                }
                drop(h);
                for read_seq in wrong {
                    let mut h = handshake(suite, cert).await;
                    h.state.read_seq = read_seq;
                    let (mut client, mut server, ..) = h.adopt();
                    send(&mut client, b"hello").await;
                    let e = server.read(&mut [0u8; 8]).await.unwrap_err();
                    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
                    assert_eq!(tls_error(&e), Some(&TlsError::BadRecordMac));
                    let e = client.read(&mut [0u8; 8]).await.unwrap_err();
                    assert!(e.to_string().contains("BadRecordMac"), "{e}");
                }
            }
        })
        .await;
    })
    .await;
}

/// tokio-tungstenite on both ends, the server's on the adopted stream: text, a large binary
/// message, ping/pong and the closing handshake.
#[tokio::test]
async fn tls_rustls_websocket_on_adopted_stream() {
    common::time_limit(async {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::protocol::Role;
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::WebSocketStream;
        within(async {
            for (suite, cert) in [tls13_suites()[1], suites()[8]] {
                let (client, server, ..) = handshake(suite, cert).await.adopt();
                let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
                let mut server = WebSocketStream::from_raw_socket(server, Role::Server, None).await;
                client.send(Message::text("listen notify_file_id")).await.unwrap();
                assert_eq!(
                    server.next().await.unwrap().unwrap(),
                    Message::text("listen notify_file_id")
                );
                let blob = vec![0x5a; 70_000];
                server.send(Message::binary(blob.clone())).await.unwrap();
                assert_eq!(client.next().await.unwrap().unwrap(), Message::binary(blob));
                client.send(Message::Ping(vec![1, 2, 3].into())).await.unwrap();
                // the server answers pings while reading
                let server_task = tokio::spawn(async move {
                    while let Some(msg) = server.next().await {
                        msg.unwrap();
                    }
                    // what the session does after the closing handshake: close_notify, FIN
                    server.get_mut().shutdown().await.unwrap();
                });
                assert_eq!(
                    client.next().await.unwrap().unwrap(),
                    Message::Pong(vec![1, 2, 3].into())
                );
                client.close(None).await.unwrap();
                while let Some(msg) = client.next().await {
                    msg.unwrap();
                }
                server_task.await.unwrap();
                let mut rest = Vec::new();
                client.get_mut().read_to_end(&mut rest).await.expect("a clean close_notify");
                assert!(rest.is_empty());
            }
        })
        .await;
    })
    .await;
}

/// The whole session code on an adopted stream: the rustls server plays Apache (reads the
/// upgrade request, answers 101), then `Engine::accept_upgraded` serves the session over
/// `TlsStream`; login, a push, and the engine's shutdown (Close 1001, close_notify).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_engine_session_on_adopted_stream() {
    common::time_limit(async {
        use futures_util::{SinkExt, StreamExt};
        use nextcloud_push_engine::{Engine, EngineConfig, PushMessage, UpdatedFiles};
        use testkit::nextcloud::NextcloudDouble;
        use testkit::redis::RedisServer;
        use tokio_tungstenite::tungstenite::Message;
        let redis = testkit::require!(RedisServer::start());
        let nextcloud = NextcloudDouble::start(common::USERS);
        let config = EngineConfig::load(None, &common::overrides(&redis, &nextcloud)).unwrap();
        let engine = Engine::new(config).unwrap();
        engine.start();
        assert!(redis.wait_for_subscribers("notify_activity", 1, Duration::from_secs(10)).await);

        for (round, (suite, cert)) in [tls13_suites()[0], suites()[6]].into_iter().enumerate() {
            let (client, mut server, secrets) = connect(suite, cert).await;
            let ws_client =
                tokio::spawn(tokio_tungstenite::client_async("ws://localhost/push/ws", client));
            // "Apache": the request head, then the 101, through rustls
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                server.read_exact(&mut b).await.unwrap();
                head.push(b[0]);
            }
            let head = String::from_utf8(head).unwrap();
            let key = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Sec-WebSocket-Key: ").or(l.strip_prefix("sec-websocket-key: "))
                })
                .unwrap();
            let mut response = String::from("HTTP/1.1 101 Switching Protocols\r\n");
            for (name, value) in nextcloud_push_engine::upgrade::switching_headers(key, None) {
                response.push_str(&format!("{name}: {value}\r\n"));
            }
            response.push_str("\r\n");
            send(&mut server, response.as_bytes()).await;
            // hand over while the client reads the 101
            let (state, io, _) = hand_over(server, &secrets);
            let layer = tls::adopt(state).unwrap();
            engine.accept_upgraded(
                TlsStream::new(io, layer, Vec::new(), Vec::new()),
                nextcloud_push_engine::Handoff::default(),
            );
            let (mut ws, _) = ws_client.await.unwrap().unwrap();
            ws.send(Message::text("foo")).await.unwrap();
            ws.send(Message::text("bar")).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("authenticated"));
            ws.send(Message::text("listen notify_file_id")).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            engine.send_to_user("foo", PushMessage::File(UpdatedFiles::Known(vec![7])));
            assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("notify_file_id [7]"));
            if round == 0 {
                // the client closes
                ws.close(None).await.unwrap();
            } else {
                // the engine stops: Close 1001
                let engine = engine.clone();
                tokio::spawn(async move { engine.shutdown().await });
            }
            let mut close_code = None;
            while let Some(msg) = ws.next().await {
                if let Message::Close(Some(frame)) = msg.unwrap() {
                    close_code = Some(u16::from(frame.code));
                }
            }
            if round == 1 {
                assert_eq!(close_code, Some(1001));
            }
            // then the session ends the TLS session properly
            let mut rest = Vec::new();
            ws.get_mut().read_to_end(&mut rest).await.expect("a clean close_notify");
            assert!(rest.is_empty());
        }
    })
    .await;
}
