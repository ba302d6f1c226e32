//! [`TlsStream`]: the adopted session as a tokio `AsyncRead + AsyncWrite`.

use super::record::{Opened, RecordLayer, HEADER_LEN};
use super::TlsError;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read from an idle socket at once (into a stack buffer: an idle stream holds no read
/// buffer).
const IDLE_READ: usize = 4096;
/// Plaintext sealed per `poll_write` call.
const WRITE_CHUNK: usize = 2 * super::MAX_PLAINTEXT;
/// Sealed bytes waiting for the socket above which `poll_write` waits for the socket.
const WRITE_HIGH: usize = 2 * (super::MAX_PLAINTEXT + 256);

/// The TLS stream a handed-off WebSocket session runs on.
///
/// * Reading yields `plaintext_prefix` first, then records from `ciphertext_prefix`, then from
///   the socket. A read buffer exists only while a record is incomplete or its plaintext is not
///   yet consumed; it is freed when idle.
/// * Writing seals into an internal buffer (records of at most `max_plaintext` bytes) and tries
///   to send it at once; several records go out in one write when the socket lets them. The
///   buffer is freed once sent.
/// * The peer's close_notify is answered with close_notify and the write side is shut down;
///   the reader then sees end of stream. End of stream without close_notify is an
///   `UnexpectedEof` error ([`TlsError::Truncated`]).
/// * A fatal error sends its alert (best effort) and surfaces as `io::ErrorKind::InvalidData`
///   whose inner error is the [`TlsError`]; every later read or write fails too.
/// * `poll_shutdown` sends close_notify, flushes, then shuts the socket's write side down.
pub struct TlsStream<S> {
    io: S,
    /// Boxed: the record layer is about 1.3 KB (two ring AEAD keys), and a session moves its
    /// stream by value through several async fn levels, each of which would otherwise reserve
    /// room for it in the session's task (see `session::task_size`).
    layer: Box<RecordLayer>,
    prefix: Vec<u8>,
    prefix_pos: usize,
    /// Ciphertext: `rbuf[rpos..rfill]` is unprocessed (or, while `plain` is non-empty, the
    /// record being delivered), `rbuf[rfill..]` is room to read into.
    rbuf: Vec<u8>,
    rpos: usize,
    rfill: usize,
    /// Plaintext of the current record not yet delivered (absolute range in `rbuf`).
    plain: std::ops::Range<usize>,
    /// End of the record whose plaintext is being delivered.
    record_end: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    /// The peer's close_notify arrived: reads return end of stream.
    read_closed: bool,
    /// close_notify or a fatal alert was sealed: no more records from us.
    write_closed: bool,
    io_shut: bool,
    failed: Option<TlsError>,
}

impl<S> std::fmt::Debug for TlsStream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("layer", &self.layer)
            .field("read_closed", &self.read_closed)
            .field("write_closed", &self.write_closed)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

fn io_error(e: &TlsError) -> io::Error {
    match e {
        TlsError::Truncated => io::Error::new(io::ErrorKind::UnexpectedEof, e.clone()),
        _ => io::Error::new(io::ErrorKind::InvalidData, e.clone()),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// `plaintext_prefix`: bytes Apache already decrypted; `ciphertext_prefix`: bytes read from
    /// the socket but not yet by OpenSSL (may end inside a record).
    pub fn new(
        io: S,
        layer: RecordLayer,
        plaintext_prefix: Vec<u8>,
        ciphertext_prefix: Vec<u8>,
    ) -> Self {
        let rfill = ciphertext_prefix.len();
        TlsStream {
            io,
            layer: Box::new(layer),
            prefix: plaintext_prefix,
            prefix_pos: 0,
            rbuf: ciphertext_prefix,
            rpos: 0,
            rfill,
            plain: 0..0,
            record_end: 0,
            wbuf: Vec::new(),
            wpos: 0,
            read_closed: false,
            write_closed: false,
            io_shut: false,
            failed: None,
        }
    }
}

impl<S> TlsStream<S> {
    /// The record layer (sequence numbers, for tests and logs).
    pub fn layer(&self) -> &RecordLayer {
        &self.layer
    }

    /// Test hook: see [`RecordLayer::set_key_update_limit`].
    #[doc(hidden)]
    pub fn layer_mut(&mut self) -> &mut RecordLayer {
        &mut self.layer
    }

    /// The socket.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Bytes held in buffers right now: (read buffer capacity, write buffer capacity, prefix
    /// capacity). All zero on an idle stream.
    pub fn buffered_capacity(&self) -> (usize, usize, usize) {
        (self.rbuf.capacity(), self.wbuf.capacity(), self.prefix.capacity())
    }

    fn release_read(&mut self) {
        self.rbuf = Vec::new();
        self.rpos = 0;
        self.rfill = 0;
        self.plain = 0..0;
        self.record_end = 0;
    }

    /// Drops the record just processed; frees the buffer when nothing is left in it.
    fn consume_record(&mut self, end: usize) {
        self.rpos = end;
        self.plain = 0..0;
        if self.rpos == self.rfill {
            self.release_read();
        }
    }

    /// The end (absolute) of the complete record at `rpos`, if it is all in the buffer.
    fn complete_record(&self) -> Result<Option<usize>, TlsError> {
        let have = self.rfill - self.rpos;
        if have < HEADER_LEN {
            return Ok(None);
        }
        let len = self.layer.check_header(&self.rbuf[self.rpos..self.rpos + HEADER_LEN])?;
        let end = self.rpos + HEADER_LEN + len;
        Ok((end <= self.rfill).then_some(end))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream<S> {
    /// Writes out the sealed records; frees the buffer when done.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wbuf = Vec::new();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }

    /// A fatal error: alert (best effort), then every later call fails.
    fn fail(&mut self, cx: &mut Context<'_>, e: TlsError) -> io::Error {
        if !self.write_closed {
            self.write_closed = true;
            if let Some((level, description)) = e.alert() {
                let _ = self.layer.seal_alert(level, description, &mut self.wbuf);
                if e == TlsError::Renegotiation {
                    let _ = self.layer.seal_close_notify(&mut self.wbuf);
                }
                let _ = self.poll_send(cx);
            }
        }
        self.release_read();
        self.prefix = Vec::new();
        let err = io_error(&e);
        self.failed = Some(e);
        err
    }

    /// Reads more ciphertext; `Ok(0)` is end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rpos == self.rfill {
            // idle: nothing is allocated until bytes arrive
            let mut tmp = [0u8; IDLE_READ];
            let mut buf = ReadBuf::new(&mut tmp);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
            let n = buf.filled().len();
            if n > 0 {
                self.rbuf = buf.filled().to_vec();
                self.rpos = 0;
                self.rfill = n;
            }
            return Poll::Ready(Ok(n));
        }
        if self.rpos > 0 {
            self.rbuf.copy_within(self.rpos..self.rfill, 0);
            self.rfill -= self.rpos;
            self.rpos = 0;
        }
        // room for the rest of this record (the header was checked by `complete_record`)
        let target = if self.rfill >= HEADER_LEN {
            HEADER_LEN + usize::from(u16::from_be_bytes([self.rbuf[3], self.rbuf[4]]))
        } else {
            HEADER_LEN
        };
        if self.rbuf.len() < target {
            self.rbuf.resize(target, 0);
        }
        let mut buf = ReadBuf::new(&mut self.rbuf[self.rfill..]);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        let n = buf.filled().len();
        self.rfill += n;
        Poll::Ready(Ok(n))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.prefix_pos < this.prefix.len() {
                let n = buf.remaining().min(this.prefix.len() - this.prefix_pos);
                buf.put_slice(&this.prefix[this.prefix_pos..this.prefix_pos + n]);
                this.prefix_pos += n;
                if this.prefix_pos == this.prefix.len() {
                    this.prefix = Vec::new();
                    this.prefix_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(e) = &this.failed {
                return Poll::Ready(Err(io_error(e)));
            }
            if !this.plain.is_empty() {
                let n = buf.remaining().min(this.plain.len());
                buf.put_slice(&this.rbuf[this.plain.start..this.plain.start + n]);
                this.plain.start += n;
                if this.plain.is_empty() {
                    this.consume_record(this.record_end);
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            match this.complete_record() {
                Err(e) => return Poll::Ready(Err(this.fail(cx, e))),
                Ok(Some(end)) => {
                    let start = this.rpos;
                    match this.layer.open_record(&mut this.rbuf[start..end]) {
                        Ok(Opened::Data(range)) => {
                            this.plain = start + range.start..start + range.end;
                            this.record_end = end;
                        }
                        Ok(Opened::Nothing) => this.consume_record(end),
                        Ok(Opened::CloseNotify) => {
                            this.read_closed = true;
                            this.release_read();
                            if !this.write_closed {
                                this.write_closed = true;
                                let _ = this.layer.seal_close_notify(&mut this.wbuf);
                                if let Poll::Ready(Ok(())) = this.poll_send(cx) {
                                    if let Poll::Ready(Ok(())) =
                                        Pin::new(&mut this.io).poll_shutdown(cx)
                                    {
                                        this.io_shut = true;
                                    }
                                }
                            }
                            return Poll::Ready(Ok(()));
                        }
                        Err(e) => return Poll::Ready(Err(this.fail(cx, e))),
                    }
                    continue;
                }
                Ok(None) => {}
            }
            match ready!(this.poll_fill(cx)) {
                Ok(0) => {
                    let e = TlsError::Truncated;
                    this.release_read();
                    let err = io_error(&e);
                    this.failed = Some(e);
                    return Poll::Ready(Err(err));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(e) = &this.failed {
            return Poll::Ready(Err(io_error(e)));
        }
        if this.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "TLS session closed (close_notify sent)",
            )));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.wbuf.len() - this.wpos >= WRITE_HIGH {
            ready!(this.poll_send(cx))?;
        }
        let n = data.len().min(WRITE_CHUNK);
        if let Err(e) = this.layer.seal_data(&data[..n], &mut this.wbuf) {
            return Poll::Ready(Err(this.fail(cx, e)));
        }
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.write_closed = true;
            if let Err(e) = this.layer.seal_close_notify(&mut this.wbuf) {
                log::debug!(target: "nextcloud_push::ws", "no close_notify: {e}");
            }
        }
        ready!(this.poll_send(cx))?;
        if !this.io_shut {
            ready!(Pin::new(&mut this.io).poll_shutdown(cx))?;
            this.io_shut = true;
        }
        Poll::Ready(Ok(()))
    }
}
