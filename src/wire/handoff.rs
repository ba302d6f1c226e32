//! The handoff of one WebSocket from an Apache child to the daemon, and the child's side of it.
//!
//! One Unix stream connection per WebSocket (see docs/internals.md):
//! 1. child → daemon: [`Hello`] (JSON frame);
//! 2. daemon → child: one byte, [`ACCEPTED`] or [`REFUSED`];
//! 3. child → daemon, in one `sendmsg` carrying the client socket as `SCM_RIGHTS`:
//!    [`HandoffHeader`] (JSON frame) followed by `early_len` raw bytes (what the client sent after
//!    its request head and Apache had already read);
//! 4. the child closes its end.
//!
//! Bridged mode (TLS through mod_ssl, the worker relays the plaintext): the [`Hello`] says
//! `bridged` and carries Apache's `Timeout`; step 3 has no descriptor, and after the early bytes
//! the same Unix stream carries the client's plaintext WebSocket bytes both ways.

#[cfg(test)]
use super::{encode_frame, read_frame, MAX_FRAME};
use super::{encode_json, frame_len, read_frame_async, Deadline, WireError, PROTOCOL};
use crate::sys;
use nextcloud_push_engine::tls::TlsState;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Daemon's answer to a [`Hello`]: go ahead.
pub const ACCEPTED: u8 = 1;
/// Daemon's answer to a [`Hello`]: unknown engine, out of file descriptors or shutting down.
pub const REFUSED: u8 = 0;
/// Daemon's answer to a bridged [`Hello`]: as many sessions as `max_bridged` are bridged
/// already (each holds an Apache worker).
pub const BRIDGES_FULL: u8 = 3;
/// Most early bytes a child forwards. A client must wait for the 101 before it sends frames
/// (RFC 6455 §4.1), so anything near this is abuse.
pub const MAX_EARLY: usize = 64 * 1024;
/// How long the child waits for the connect and the daemon's answer before it gives up (503).
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the daemon waits for the handoff after it accepted a Hello (the child sends the
/// 101 to the client in between).
pub const HANDOFF_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
    /// Index of the engine (one per distinct vhost configuration) that gets the connection.
    pub engine: u32,
    /// The engine configuration's fingerprint as the child knows it. The daemon refuses a
    /// mismatch (a child of an older generation during a graceful restart that replaced the
    /// daemon) instead of routing the client to the wrong Nextcloud. Optional on the wire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Bridged mode: no descriptor follows; this stream becomes the WebSocket (TLS clients).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bridged: bool,
    /// Bridged mode: Apache's `Timeout` in milliseconds. The bridge ends a session after that
    /// much silence, so the daemon pings the client more often ([`bridged_ping_interval`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Bridged mode: step 3 starts with a [`TlsOffer`] (the TLS session may move to the daemon)
    /// and the daemon's verdict; only if it refuses does the bridged step 3 follow.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_offer: bool,
    /// Bridged mode without a TLS offer: the most bridged sessions the child's Apache allows at
    /// once (`NextcloudPushMaxBridged`); at that count the daemon answers [`BRIDGES_FULL`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bridged: Option<u32>,
}

impl Hello {
    pub fn new(engine: u32, config: Option<String>) -> Hello {
        Hello {
            protocol: PROTOCOL,
            engine,
            config,
            bridged: false,
            timeout_ms: None,
            tls_offer: false,
            max_bridged: None,
        }
    }

    /// The Hello of a bridged (TLS) session; `timeout` is Apache's `Timeout`.
    pub fn bridged(engine: u32, config: Option<String>, timeout: Duration) -> Hello {
        Hello {
            bridged: true,
            timeout_ms: Some(timeout.as_millis().min(u128::from(u64::MAX)) as u64),
            ..Hello::new(engine, config)
        }
    }
}

/// The keepalive ping interval of a bridged session: a third of Apache's `Timeout` (at least
/// 500 ms), so even a ping sent up to one engine tick late, plus its pong, lands well inside the
/// bridge's idle limit. The engine never pings less often than its own interval.
pub fn bridged_ping_interval(timeout_ms: u64) -> Duration {
    Duration::from_millis((timeout_ms / 3).max(500))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoffHeader {
    /// Client IP chain (spec §1.2): forwarding headers, then `r->useragent_ip`.
    pub forwarded_for: Vec<IpAddr>,
    /// Number of raw bytes that follow the header frame.
    pub early_len: u32,
}

impl HandoffHeader {
    /// The header frame's payload, checked: at most [`MAX_EARLY`] early bytes.
    pub fn decode(payload: &[u8]) -> Result<HandoffHeader, WireError> {
        let header: HandoffHeader = super::decode_json(payload, "handoff header")?;
        if header.early_len as usize > MAX_EARLY {
            return Err(WireError::Protocol(format!(
                "{} early bytes announced (at most {MAX_EARLY})",
                header.early_len
            )));
        }
        Ok(header)
    }
}

/// The bytes of step 3: header frame + early bytes.
pub fn encode_handoff(forwarded_for: Vec<IpAddr>, early: &[u8]) -> Vec<u8> {
    let header = HandoffHeader { forwarded_for, early_len: early.len() as u32 };
    let mut out = encode_json(&header);
    out.extend_from_slice(early);
    out
}

/// A header frame followed by raw bytes: the handoff's step 3 and the TLS offer.
pub trait Announces: Clone + Sized {
    /// The header frame's payload, checked.
    fn decode(payload: &[u8]) -> Result<Self, WireError>;
    /// How many raw bytes follow the header frame.
    fn trailing(&self) -> usize;
}

impl Announces for HandoffHeader {
    fn decode(payload: &[u8]) -> Result<Self, WireError> {
        HandoffHeader::decode(payload)
    }

    fn trailing(&self) -> usize {
        self.early_len as usize
    }
}

/// Reassembles a header frame and its trailing bytes on the daemon side from whatever chunks
/// `recvmsg` returns.
#[derive(Debug)]
pub struct Assembler<H> {
    buf: Vec<u8>,
    header: Option<(H, usize)>,
}

impl<H> Default for Assembler<H> {
    fn default() -> Self {
        Assembler { buf: Vec::new(), header: None }
    }
}

/// Step 3 of the handoff.
pub type HandoffAssembler = Assembler<HandoffHeader>;

impl<H: Announces> Assembler<H> {
    /// Appends bytes. Returns the header and the trailing bytes once everything has arrived.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<(H, Vec<u8>)>, WireError> {
        self.buf.extend_from_slice(bytes);
        if self.header.is_none() && self.buf.len() >= 4 {
            let len = frame_len([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])?;
            if self.buf.len() >= 4 + len {
                let header = H::decode(&self.buf[4..4 + len])?;
                self.header = Some((header, 4 + len));
            }
        }
        if let Some((header, start)) = &self.header {
            let end = start + header.trailing();
            if self.buf.len() > end {
                return Err(WireError::Protocol("bytes after the early data".into()));
            }
            if self.buf.len() == end {
                return Ok(Some((header.clone(), self.buf[*start..end].to_vec())));
            }
        }
        Ok(None)
    }

    /// How many more bytes could still belong to the message (for sizing reads).
    pub fn wanted(&self) -> usize {
        match &self.header {
            Some((h, start)) => (start + h.trailing()).saturating_sub(self.buf.len()),
            None => 4 + super::MAX_FRAME,
        }
    }
}

/// Daemon's answer to a TLS offer: it took the session and the socket; the child lets go.
pub const ADOPTED: u8 = 2;
/// Most ciphertext an offer carries: what the child read from below mod_ssl after OpenSSL's
/// last record.
pub const MAX_CIPHERTEXT: usize = 64 * 1024;
/// Largest copy of the last record OpenSSL wrote (a full record with its expansion).
pub const MAX_LAST_RECORD: usize = 5 + (1 << 14) + 2048;

/// The TLS session of a bridged WebSocket, offered to the daemon after the 101 (bridged mode
/// with `tls_offer`). Followed by `plaintext_len` bytes Apache already decrypted,
/// `ciphertext_len` bytes of records OpenSSL has not read yet, and `last_record_len` bytes: the
/// last record OpenSSL wrote, which the daemon opens at `write_seq - 1` before it adopts the
/// session. The client socket travels with it as `SCM_RIGHTS` when `session` is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsOffer {
    pub forwarded_for: Vec<IpAddr>,
    /// `None`: the session cannot move (not eligible, or a record still half-read): bridge it.
    /// Its `last_server_record` is the trailing bytes' last part.
    pub session: Option<TlsState>,
    pub plaintext_len: u32,
    pub ciphertext_len: u32,
    pub last_record_len: u32,
}

impl Announces for TlsOffer {
    fn decode(payload: &[u8]) -> Result<Self, WireError> {
        let offer: TlsOffer = super::decode_json(payload, "TLS offer")?;
        if offer.plaintext_len as usize > MAX_EARLY
            || offer.ciphertext_len as usize > MAX_CIPHERTEXT
            || offer.last_record_len as usize > MAX_LAST_RECORD
        {
            return Err(WireError::Protocol("TLS offer announces too many bytes".into()));
        }
        Ok(offer)
    }

    fn trailing(&self) -> usize {
        self.plaintext_len as usize + self.ciphertext_len as usize + self.last_record_len as usize
    }
}

/// Step 3 of bridged mode on the daemon side: the header frame and exactly `early_len` bytes,
/// with exact reads, so not one byte of the WebSocket behind them is consumed.
pub async fn read_bridged(
    mut stream: impl AsyncRead + Unpin,
) -> Result<(HandoffHeader, Vec<u8>), WireError> {
    let header = HandoffHeader::decode(&read_frame_async(&mut stream).await?)?;
    let mut early = vec![0u8; header.early_len as usize];
    stream.read_exact(&mut early).await?;
    Ok((header, early))
}

/// The daemon's answer to a [`TlsOffer`].
#[derive(Debug)]
pub enum Verdict {
    /// The daemon runs the session now; the child lets go of the connection without a byte.
    Adopted,
    /// The session stays with the child, which bridges it.
    Refused(Accepted),
}

/// The child's connection to the daemon after the daemon accepted (steps 1–2 done).
#[derive(Debug)]
pub struct Accepted {
    stream: UnixStream,
}

/// Steps 1–2: connects to `socket`, sends `hello` and waits for the answer, all within
/// `timeout`.
pub fn ask_daemon(socket: &Path, hello: &Hello, timeout: Duration) -> Result<Accepted, WireError> {
    let deadline = Deadline::after(timeout);
    let stream = super::open(socket, Instant::now() + timeout, &deadline, hello)?;
    let mut answer = [0u8; 1];
    (&stream).read_exact(&mut answer).map_err(|e| deadline.answer_error(e.into()))?;
    match answer[0] {
        ACCEPTED => Ok(Accepted { stream }),
        REFUSED => Err(WireError::Refused),
        BRIDGES_FULL => Err(WireError::BridgesFull),
        other => Err(WireError::Protocol(format!("unexpected answer byte {other}"))),
    }
}

impl Accepted {
    /// Step 3: sends the header, the early bytes and the client socket, then closes.
    pub fn hand_off(
        self,
        client: BorrowedFd<'_>,
        forwarded_for: Vec<IpAddr>,
        early: &[u8],
    ) -> Result<(), WireError> {
        let msg = self.step3(forwarded_for, early)?;
        // The descriptor travels with the first chunk; a short write (a full socket buffer)
        // is finished with plain writes.
        let sent = sys::send_with_fd(&self.stream, &msg, client)?;
        (&self.stream).write_all(&msg[sent..])?;
        Ok(())
    }

    /// Step 3 of bridged mode: sends the header and the early bytes (no descriptor) and returns
    /// the stream, nonblocking, which from now on carries the WebSocket's plaintext.
    pub fn bridge(self, forwarded_for: Vec<IpAddr>, early: &[u8]) -> Result<UnixStream, WireError> {
        let msg = self.step3(forwarded_for, early)?;
        (&self.stream).write_all(&msg)?;
        self.stream.set_write_timeout(None)?;
        self.stream.set_read_timeout(None)?;
        self.stream.set_nonblocking(true)?;
        Ok(self.stream)
    }

    /// Bridged mode with a TLS offer: sends `offer`, its trailing bytes and, when it carries a
    /// session, the client socket; then waits for the daemon's verdict. On a refusal the
    /// connection goes on as a bridge ([`Accepted::bridge`]).
    pub fn offer_tls(
        self,
        client: Option<BorrowedFd<'_>>,
        offer: &TlsOffer,
        trailing: &[u8],
    ) -> Result<Verdict, WireError> {
        let mut msg = encode_json(offer);
        msg.extend_from_slice(trailing);
        self.stream.set_write_timeout(Some(HANDOFF_TIMEOUT / 2))?;
        let sent = match client {
            Some(fd) => sys::send_with_fd(&self.stream, &msg, fd),
            None => Ok(0),
        };
        let written = sent.and_then(|sent| (&self.stream).write_all(&msg[sent..]));
        zeroize::Zeroize::zeroize(&mut msg);
        written?;
        self.stream.set_read_timeout(Some(HANDOFF_TIMEOUT / 2))?;
        let mut verdict = [0u8; 1];
        (&self.stream).read_exact(&mut verdict)?;
        match verdict[0] {
            ADOPTED => Ok(Verdict::Adopted),
            REFUSED => Ok(Verdict::Refused(self)),
            other => Err(WireError::Protocol(format!("unexpected verdict byte {other}"))),
        }
    }

    /// The bytes of step 3, checked, with the stream's write timeout set for them.
    fn step3(&self, forwarded_for: Vec<IpAddr>, early: &[u8]) -> Result<Vec<u8>, WireError> {
        if early.len() > MAX_EARLY {
            return Err(WireError::Protocol(format!("{} early bytes", early.len())));
        }
        self.stream.set_write_timeout(Some(HANDOFF_TIMEOUT / 2))?;
        Ok(encode_handoff(forwarded_for, early))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trip_in_chunks() {
        let ips: Vec<IpAddr> = vec!["203.0.113.7".parse().unwrap(), "::1".parse().unwrap()];
        let msg = encode_handoff(ips.clone(), b"EARLYBYTES");
        for chunk in [1, 3, 7, msg.len()] {
            let mut asm = HandoffAssembler::default();
            let mut done = None;
            for part in msg.chunks(chunk) {
                assert!(done.is_none());
                done = asm.push(part).unwrap();
            }
            let (header, early) = done.expect("complete");
            assert_eq!(header.forwarded_for, ips);
            assert_eq!(early, b"EARLYBYTES");
        }
    }

    #[test]
    fn empty_early_data_completes_with_the_header() {
        let msg = encode_handoff(vec![], b"");
        let mut asm = HandoffAssembler::default();
        let (h, early) = asm.push(&msg).unwrap().unwrap();
        assert_eq!(h.early_len, 0);
        assert!(early.is_empty());
    }

    #[test]
    fn rejects_garbage() {
        let mut asm = HandoffAssembler::default();
        assert!(asm.push(&[0, 0, 0, 0]).is_err());
        let mut asm = HandoffAssembler::default();
        assert!(asm.push(&(MAX_FRAME as u32 + 1).to_le_bytes()).is_err());
        let mut asm = HandoffAssembler::default();
        assert!(asm.push(&encode_frame(b"{not json")).is_err());
        let mut asm = HandoffAssembler::default();
        let mut msg = encode_handoff(vec![], b"ab");
        msg.push(b'c');
        assert!(asm.push(&msg).is_err());
        let mut asm = HandoffAssembler::default();
        let big =
            encode_json(&HandoffHeader { forwarded_for: vec![], early_len: MAX_EARLY as u32 + 1 });
        assert!(asm.push(&big).is_err());
    }

    /// The limits on announced bytes are inclusive: exactly the maximum is accepted.
    #[test]
    fn announced_sizes_up_to_the_limits() {
        let header = |early_len| {
            HandoffHeader::decode(
                &serde_json::to_vec(&HandoffHeader { forwarded_for: vec![], early_len }).unwrap(),
            )
        };
        assert!(header(MAX_EARLY as u32).is_ok());
        assert!(header(MAX_EARLY as u32 + 1).is_err());
        let offer = |plaintext_len, ciphertext_len, last_record_len| {
            let offer = TlsOffer {
                forwarded_for: vec![],
                session: None,
                plaintext_len,
                ciphertext_len,
                last_record_len,
            };
            <TlsOffer as Announces>::decode(&serde_json::to_vec(&offer).unwrap())
        };
        let (p, c, l) = (MAX_EARLY as u32, MAX_CIPHERTEXT as u32, MAX_LAST_RECORD as u32);
        assert!(offer(p, c, l).is_ok());
        assert!(offer(p + 1, c, l).is_err());
        assert!(offer(p, c + 1, l).is_err());
        assert!(offer(p, c, l + 1).is_err());
    }

    #[test]
    fn bridged_pings_come_well_within_the_timeout() {
        assert_eq!(bridged_ping_interval(300_000), Duration::from_secs(100));
        assert_eq!(bridged_ping_interval(3_000), Duration::from_secs(1));
        assert_eq!(bridged_ping_interval(600), Duration::from_millis(500));
    }

    #[test]
    fn hello_json_shape() {
        let frame = encode_json(&Hello::new(3, None));
        assert_eq!(&frame[4..], br#"{"protocol":3,"engine":3}"#);
        let with = encode_json(&Hello::new(0, Some("ab12".into())));
        assert_eq!(&with[4..], br#"{"protocol":3,"engine":0,"config":"ab12"}"#);
        let plain: Hello = serde_json::from_slice(br#"{"protocol":3,"engine":2}"#).unwrap();
        assert_eq!(plain, Hello::new(2, None));
        let bridged = encode_json(&Hello::bridged(1, None, Duration::from_secs(300)));
        assert_eq!(
            &bridged[4..],
            br#"{"protocol":3,"engine":1,"bridged":true,"timeout_ms":300000}"#
        );
        assert_eq!(frame_len(frame[..4].try_into().unwrap()).unwrap(), frame.len() - 4);
    }
}

#[cfg(test)]
mod client_tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixListener;
    use std::path::PathBuf;

    fn socket_path(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("ncp-{name}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    /// A one-connection fake daemon: reads the Hello, answers `answer` (or nothing).
    fn fake_daemon(
        path: &Path,
        answer: Option<u8>,
    ) -> std::thread::JoinHandle<(Hello, UnixStream)> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let hello: Hello = serde_json::from_slice(&read_frame(&mut s).unwrap()).unwrap();
            match answer {
                Some(a) => s.write_all(&[a]).unwrap(),
                None => std::thread::sleep(Duration::from_millis(600)),
            }
            (hello, s)
        })
    }

    #[test]
    fn no_daemon_is_a_connect_error() {
        let e = ask_daemon(&socket_path("none"), &Hello::new(0, None), Duration::from_millis(200))
            .unwrap_err();
        assert!(matches!(e, WireError::Connect { .. }), "{e}");
    }

    #[test]
    fn refusal_and_silence() {
        let path = socket_path("refuse");
        let daemon = fake_daemon(&path, Some(REFUSED));
        let e = ask_daemon(&path, &Hello::new(7, Some("fp".into())), Duration::from_secs(2))
            .unwrap_err();
        assert!(matches!(e, WireError::Refused), "{e}");
        assert_eq!(daemon.join().unwrap().0, Hello::new(7, Some("fp".into())));

        let path = socket_path("silent");
        let daemon = fake_daemon(&path, None);
        let t = Instant::now();
        let e = ask_daemon(&path, &Hello::new(0, None), Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, WireError::Timeout(_)), "{e}");
        assert!(t.elapsed() < Duration::from_millis(550));
        daemon.join().unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn bridged_handoff_turns_the_stream_into_the_websocket() {
        let path = socket_path("bridge");
        let daemon = fake_daemon(&path, Some(ACCEPTED));
        let hello = Hello::bridged(0, None, Duration::from_secs(5));
        let accepted = ask_daemon(&path, &hello, Duration::from_secs(2)).unwrap();
        let ips: Vec<IpAddr> = vec!["198.51.100.1".parse().unwrap()];
        let bridge = accepted.bridge(ips.clone(), b"EARLY").unwrap();
        let (seen, mut stream) = daemon.join().unwrap();
        assert_eq!(seen, hello);
        // Exactly the header and the early bytes, no descriptor; then the stream is a pipe.
        let header: HandoffHeader =
            serde_json::from_slice(&read_frame(&mut stream).unwrap()).unwrap();
        assert_eq!(header, HandoffHeader { forwarded_for: ips, early_len: 5 });
        let mut early = [0u8; 5];
        stream.read_exact(&mut early).unwrap();
        assert_eq!(&early, b"EARLY");
        stream.write_all(b"to client").unwrap();
        bridge.set_nonblocking(false).unwrap();
        let mut got = [0u8; 9];
        (&bridge).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"to client");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn accepted_handoff_carries_header_early_bytes_and_socket() {
        let path = socket_path("accept");
        let daemon = fake_daemon(&path, Some(ACCEPTED));
        let accepted = ask_daemon(&path, &Hello::new(1, None), Duration::from_secs(2)).unwrap();
        let (mut client_end, our_end) = UnixStream::pair().unwrap();
        let ips: Vec<IpAddr> = vec!["203.0.113.7".parse().unwrap()];
        accepted.hand_off(our_end.as_fd(), ips.clone(), b"EARLY").unwrap();
        drop(our_end);
        let (hello, stream) = daemon.join().unwrap();
        assert_eq!(hello.engine, 1);
        let mut asm = HandoffAssembler::default();
        let mut buf = [0u8; 256];
        let mut fds = Vec::new();
        let (header, early) = loop {
            let (n, got) = match sys::recv_with_fds(stream.as_fd(), &mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                r => r.unwrap(),
            };
            fds.extend(got);
            assert!(n > 0, "EOF before the handoff was complete");
            if let Some(done) = asm.push(&buf[..n]).unwrap() {
                break done;
            }
        };
        assert_eq!(header.forwarded_for, ips);
        assert_eq!(early, b"EARLY");
        assert_eq!(fds.len(), 1);
        // The passed socket is the other end of `client_end`.
        let mut passed = UnixStream::from(fds.pop().unwrap());
        passed.write_all(b"pong").unwrap();
        let mut got = [0u8; 4];
        client_end.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");
        let _ = std::fs::remove_file(&path);
    }
}
