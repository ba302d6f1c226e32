//! One connection from an Apache child: who may connect, the first frame (a WebSocket
//! [`Hello`] or a control request), admission, and the handoff itself (a client socket over
//! `SCM_RIGHTS`, or a bridged stream that is the WebSocket).

use super::stream::{Counted, LiveSlot};
use super::State;
use crate::error::Refusal;
use crate::sys;
use crate::wire::handoff::{self, Announces, Assembler, HandoffHeader, Hello, TlsOffer};
use crate::wire::{self, Opening, WireError, PROTOCOL};
use nextcloud_push_engine::tls::{self, TlsState, TlsStream};
use nextcloud_push_engine::{Engine, Handoff};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UnixStream};

/// One Apache child's connection: Hello → answer → handoff.
pub async fn handle(mut stream: UnixStream, state: &State) -> Result<(), WireError> {
    check_peer(&stream)?;
    // Exact reads: nothing may be consumed past the frame (the child waits for our answer
    // anyway, but a descriptor attached to a later byte must never meet a plain read).
    let first = tokio::time::timeout(handoff::ASK_TIMEOUT, wire::read_frame_async(&mut stream))
        .await
        .map_err(|_| WireError::Timeout(handoff::ASK_TIMEOUT))??;
    let hello = match Opening::decode(&first)? {
        Opening::Hello(hello) => hello,
        Opening::Control(frame) => return super::control::serve(stream, frame, state).await,
    };
    let engine = match admit(&hello, state) {
        Ok(engine) => engine,
        Err(why) => {
            let n = state.refused.fetch_add(1, Ordering::Relaxed);
            let full = matches!(why, Refusal::BridgesFull(_));
            // One line per 100 refusals, so a flood does not flood the log.
            if n % 100 == 0 && full {
                log::warn!(target: "nextcloud_push::daemon", "NCP0116: a wss session gets 503: {why}; its TLS could not move to the daemon (NCP0036 at debug level says why)");
            } else if n % 100 == 0 {
                log::warn!(target: "nextcloud_push::daemon", "NCP0106: refusing a WebSocket handoff: {why}");
            }
            let answer = if full { handoff::BRIDGES_FULL } else { handoff::REFUSED };
            stream.write_all(&[answer]).await?;
            return Ok(());
        }
    };
    // Count the client socket from now on, so concurrent admissions see it.
    let slot = LiveSlot::new(state.live.clone());
    stream.write_all(&[handoff::ACCEPTED]).await?;
    if hello.bridged && hello.tls_offer {
        return serve_tls_offer(stream, engine, slot, &hello, state).await;
    }
    if hello.bridged {
        return serve_bridged(stream, engine, slot, &hello, state).await;
    }
    let (header, early, fd) =
        tokio::time::timeout(handoff::HANDOFF_TIMEOUT, receive::<HandoffHeader>(&stream))
            .await
            .map_err(|_| WireError::Timeout(handoff::HANDOFF_TIMEOUT))??;
    let fd = fd.ok_or_else(|| WireError::Protocol("handoff without a client socket".into()))?;
    drop(stream);
    let tcp = client_stream(fd)?;
    log::debug!(
        target: "nextcloud_push::daemon",
        "NCP0107: WebSocket handed over ({} early bytes, client chain {:?})",
        early.len(),
        header.forwarded_for
    );
    engine.accept_upgraded(
        Counted::new(tcp, slot, None),
        Handoff {
            early_data: early,
            forwarded_for: header.forwarded_for,
            ping_interval: None,
            bridged: false,
        },
    );
    Ok(())
}

/// Only Apache's own processes may hand sessions over: the peer must run as root (the parent)
/// or as the daemon's own uid, which is Apache's `User` (the children). The socket is 0700
/// already; this also holds if an admin loosens its permissions.
fn check_peer(stream: &UnixStream) -> Result<(), WireError> {
    let cred = stream.peer_cred()?;
    let own = sys::effective_uid();
    if cred.uid() == own || cred.uid() == 0 {
        return Ok(());
    }
    log::warn!(
        target: "nextcloud_push::daemon",
        "NCP0109: refusing a connection from pid {} uid {}: only root and Apache's User (uid {own}) may hand sessions over",
        cred.pid().map_or_else(|| "?".to_owned(), |p| p.to_string()),
        cred.uid()
    );
    Err(WireError::Protocol(format!("peer uid {} not allowed", cred.uid())))
}

/// Bridged mode (TLS through mod_ssl): after the header and the early bytes, this very stream
/// carries the client's plaintext WebSocket, relayed by an Apache worker that is cut after
/// Apache's `Timeout` of silence, so the session pings more often than that.
async fn serve_bridged(
    mut stream: UnixStream,
    engine: &Arc<Engine>,
    slot: LiveSlot,
    hello: &Hello,
    state: &State,
) -> Result<(), WireError> {
    let (header, early) =
        tokio::time::timeout(handoff::HANDOFF_TIMEOUT, handoff::read_bridged(&mut stream))
            .await
            .map_err(|_| WireError::Timeout(handoff::HANDOFF_TIMEOUT))??;
    let ping_interval = hello.timeout_ms.map(handoff::bridged_ping_interval);
    log::debug!(
        target: "nextcloud_push::daemon",
        "NCP0108: bridged WebSocket (TLS or HTTP/2) from an Apache worker ({} early bytes, client chain {:?}, ping interval {:?})",
        early.len(),
        header.forwarded_for,
        ping_interval
    );
    let bridge = LiveSlot::new(state.bridged.clone());
    engine.accept_upgraded(
        Counted::new(stream, slot, Some(state.hold.clone())).counted_as(bridge),
        Handoff {
            early_data: early,
            forwarded_for: header.forwarded_for,
            ping_interval,
            bridged: true,
        },
    );
    Ok(())
}

/// Bridged mode with a TLS offer: the child offers the live TLS session (with the socket); the
/// daemon adopts it once the last record Apache wrote opens under the handed-over write key at
/// `write_seq - 1` (so no record is ever sent under a reused nonce), or refuses, and the
/// connection goes on as a bridge.
async fn serve_tls_offer(
    mut stream: UnixStream,
    engine: &Arc<Engine>,
    slot: LiveSlot,
    hello: &Hello,
    state: &State,
) -> Result<(), WireError> {
    let (offer, trailing, fd) =
        tokio::time::timeout(handoff::HANDOFF_TIMEOUT, receive::<TlsOffer>(&stream))
            .await
            .map_err(|_| WireError::Timeout(handoff::HANDOFF_TIMEOUT))??;
    let adopted = match (&offer.session, fd) {
        (Some(session), Some(fd)) => adopt(session, &offer, &trailing).map(|layer| (layer, fd)),
        (Some(_), None) => Err("no client socket came with the session".to_owned()),
        (None, _) => Err(String::new()),
    };
    let (layer, fd) = match adopted {
        Ok(adopted) => adopted,
        Err(why) => {
            if !why.is_empty() {
                log::warn!(target: "nextcloud_push::daemon", "NCP0115: refusing a TLS session handoff, the worker bridges it: {why}");
            }
            stream.write_all(&[handoff::REFUSED]).await?;
            return serve_bridged(stream, engine, slot, hello, state).await;
        }
    };
    // The child lets go of the connection once it reads this; not a byte was written before.
    stream.write_all(&[handoff::ADOPTED]).await?;
    drop(stream);
    let plaintext = trailing[..offer.plaintext_len as usize].to_vec();
    let ciphertext =
        trailing[offer.plaintext_len as usize..][..offer.ciphertext_len as usize].to_vec();
    let tcp = client_stream(fd)?;
    log::debug!(
        target: "nextcloud_push::daemon",
        "NCP0114: TLS session handed over ({:#06x}, suite {:#06x}, read/write sequence {}/{}{}, {} plaintext and {} ciphertext bytes pending, client chain {:?})",
        layer.version(),
        layer.suite(),
        layer.read_seq(),
        layer.write_seq(),
        if layer.key_update_pending() { ", a KeyUpdate owed" } else { "" },
        plaintext.len(),
        ciphertext.len(),
        offer.forwarded_for
    );
    engine.accept_upgraded(
        Counted::new(TlsStream::new(tcp, layer, Vec::new(), ciphertext), slot, None)
            .counted_as(LiveSlot::new(state.tls.clone())),
        Handoff {
            early_data: plaintext,
            forwarded_for: offer.forwarded_for.clone(),
            ping_interval: None,
            bridged: false,
        },
    );
    Ok(())
}

/// The record layer for an offered session, proved against the last record Apache wrote.
fn adopt(
    session: &TlsState,
    offer: &TlsOffer,
    trailing: &[u8],
) -> Result<tls::RecordLayer, String> {
    let last_start = offer.plaintext_len as usize + offer.ciphertext_len as usize;
    let mut state = session.clone();
    state.last_server_record = trailing[last_start..].to_vec();
    tls::adopt(state).map_err(|e| e.to_string())
}

/// A header frame, its trailing bytes and the descriptor that came with them (step 3 of the
/// handoff, a TLS offer), from whatever chunks `recvmsg` returns. Nothing follows these bytes
/// until the daemon answers or the child closes, so nothing is read too far.
async fn receive<H: Announces>(
    stream: &UnixStream,
) -> Result<(H, Vec<u8>, Option<OwnedFd>), WireError> {
    let mut asm = Assembler::<H>::default();
    let mut client: Option<OwnedFd> = None;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let want = asm.wanted().clamp(1, buf.len());
        let (n, fds) = stream
            .async_io(Interest::READABLE, || sys::recv_with_fds(stream.as_fd(), &mut buf[..want]))
            .await?;
        // Extra descriptors (none are expected) are closed by dropping them.
        for fd in fds {
            if client.is_none() {
                client = Some(fd);
            }
        }
        if n == 0 {
            return Err(WireError::Protocol("the Apache child closed before the handoff".into()));
        }
        if let Some((header, trailing)) = asm.push(&buf[..n])? {
            return Ok((header, trailing, client));
        }
    }
}

/// Which engine takes the session, or why none does.
fn admit<'a>(hello: &Hello, state: &'a State) -> Result<&'a Arc<Engine>, Refusal> {
    if hello.protocol != PROTOCOL {
        return Err(Refusal::Protocol { theirs: hello.protocol, ours: PROTOCOL });
    }
    if state.shutting_down.load(Ordering::SeqCst) {
        return Err(Refusal::ShuttingDown);
    }
    let engine = state.engine(hello.engine, hello.config.as_deref())?;
    let live = state.live.load(Ordering::SeqCst) as u64;
    if live + wire::ready::FD_RESERVE >= state.fd_limit {
        return Err(Refusal::FdLimit { live, limit: state.fd_limit });
    }
    if let Some(cap) = hello.max_bridged.filter(|_| hello.bridged && !hello.tls_offer) {
        let bridged = state.bridged.load(Ordering::SeqCst);
        if bridged >= cap as usize {
            return Err(Refusal::BridgesFull(bridged));
        }
    }
    Ok(engine)
}

/// The client's socket, received from an Apache child, as a tokio stream.
fn client_stream(fd: OwnedFd) -> std::io::Result<TcpStream> {
    let tcp = std::net::TcpStream::from(fd);
    tcp.set_nonblocking(true)?;
    TcpStream::from_std(tcp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::tests::{engine, state};
    use std::io::{Read, Write};
    use std::net::IpAddr;
    use std::path::PathBuf;
    use std::time::Duration;
    use tokio::net::UnixListener;

    /// A masked client text frame.
    fn frame(text: &str) -> Vec<u8> {
        let mut out = vec![0x81, 0x80 | text.len() as u8, 1, 2, 3, 4];
        out.extend(text.bytes().enumerate().map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]));
        out
    }

    /// Serves one Apache-child connection on a fresh socket; returns the socket path.
    async fn serve_one(state: Arc<State>, name: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("ncp-daemon-{name}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = handle(stream, &state).await;
        });
        path
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn handoff_reaches_the_engine_with_early_bytes() {
        let state = state(vec![engine()]);
        let print = state.prints[0].clone();
        let path = serve_one(state.clone(), "ok").await;
        let reply = tokio::task::spawn_blocking(move || {
            let accepted =
                handoff::ask_daemon(&path, &Hello::new(0, Some(print)), Duration::from_secs(2))
                    .unwrap();
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server_side, _) = listener.accept().unwrap();
            let mut early = frame("alice");
            early.extend(frame("secret"));
            let ips: Vec<IpAddr> = vec!["203.0.113.7".parse().unwrap()];
            accepted.hand_off(server_side.as_fd(), ips, &early).unwrap();
            drop(server_side);
            let _ = std::fs::remove_file(&path);
            client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut head = [0u8; 2];
            client.read_exact(&mut head).unwrap();
            let mut len = usize::from(head[1] & 0x7f);
            if len == 126 {
                let mut ext = [0u8; 2];
                client.read_exact(&mut ext).unwrap();
                len = usize::from(u16::from_be_bytes(ext));
            }
            let mut payload = vec![0u8; len];
            client.read_exact(&mut payload).unwrap();
            (head[0], String::from_utf8(payload).unwrap())
        })
        .await
        .unwrap();
        assert_eq!(reply.0, 0x81, "a final text frame");
        assert!(
            reply.1.starts_with("err: Error while sending authentication request to nextcloud"),
            "{}",
            reply.1
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bridged_stream_is_the_websocket_after_the_early_bytes() {
        let state = state(vec![engine()]);
        let path = serve_one(state.clone(), "bridged").await;
        let live = state.clone();
        let reply = tokio::task::spawn_blocking(move || {
            let hello = Hello::bridged(0, None, Duration::from_secs(3));
            let accepted = handoff::ask_daemon(&path, &hello, Duration::from_secs(2)).unwrap();
            let _ = std::fs::remove_file(&path);
            // The username frame is early data; the password frame follows on the stream itself.
            let stream = accepted.bridge(vec![], &frame("alice")).unwrap();
            stream.set_nonblocking(false).unwrap();
            (&stream).write_all(&frame("secret")).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut head = [0u8; 2];
            (&stream).read_exact(&mut head).unwrap();
            let mut len = usize::from(head[1] & 0x7f);
            if len == 126 {
                let mut ext = [0u8; 2];
                (&stream).read_exact(&mut ext).unwrap();
                len = usize::from(u16::from_be_bytes(ext));
            }
            let mut payload = vec![0u8; len];
            (&stream).read_exact(&mut payload).unwrap();
            (head[0], String::from_utf8(payload).unwrap())
        })
        .await
        .unwrap();
        assert_eq!(reply.0, 0x81, "a final text frame");
        assert!(reply.1.starts_with("err: Error while sending authentication"), "{}", reply.1);
        assert!(
            testkit::wait_until(Duration::from_secs(5), || {
                let n = live.live.load(Ordering::SeqCst);
                async move { n == 0 }
            })
            .await,
            "the bridged session's slot is released when it ends"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_engine_and_wrong_protocol_are_refused() {
        let state = state(vec![engine()]);
        let path = serve_one(state.clone(), "unknown").await;
        let e = tokio::task::spawn_blocking(move || {
            handoff::ask_daemon(&path, &Hello::new(5, None), Duration::from_secs(2))
        })
        .await
        .unwrap()
        .unwrap_err();
        assert!(matches!(e, WireError::Refused), "{e}");

        let path = serve_one(state.clone(), "protocol").await;
        let answer = tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
            s.write_all(&wire::encode_json(&Hello { protocol: 999, ..Hello::new(0, None) }))
                .unwrap();
            let mut b = [9u8; 1];
            s.read_exact(&mut b).unwrap();
            let _ = std::fs::remove_file(&path);
            b[0]
        })
        .await
        .unwrap();
        assert_eq!(answer, handoff::REFUSED);
        assert_eq!(state.live.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refuses_near_the_fd_limit_and_when_shutting_down() {
        let engine = engine();
        let st = State::new(vec![engine], String::new(), wire::ready::FD_RESERVE + 1);
        let hello = Hello::new(0, None);
        assert!(admit(&hello, &st).is_ok());
        assert!(admit(&Hello::new(0, Some(st.prints[0].clone())), &st).is_ok());
        assert!(admit(&Hello::new(0, Some("other".into())), &st).is_err());
        st.live.store(1, Ordering::SeqCst);
        assert!(admit(&hello, &st).is_err());
        st.live.store(0, Ordering::SeqCst);
        st.shutting_down.store(true, Ordering::SeqCst);
        assert!(admit(&hello, &st).is_err());
    }
}
