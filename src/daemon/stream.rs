//! The streams the daemon hands to its engines: each one counted against the descriptor limit
//! ([`LiveSlot`]), and bridged ones held open while Apache stops its children ([`Hold`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// After the answer to a stop or hard restart, how long bridged streams of ended sessions stay
/// held (see [`Hold`]): the parent stops the children right after the answer, and children of
/// an older generation that were already exiting gracefully wait for their bridges (the parent
/// warns about them after 3 s and kills them after 9 s).
pub const HOLD_AFTER_ANSWER: Duration = Duration::from_secs(1);

/// Bridged streams kept open after their session ended, while the Apache parent stops or
/// hard-restarts its children. A bridge whose stream ends runs Apache's normal close (TLS
/// close_notify, then the event MPM's lingering close); the parent, released by our answer,
/// would then stop the children in the middle of it (event/worker `close_worker_sockets` racing
/// the worker's `apr_pollset_add`: `AH03092 … Bad file descriptor`, and the child then exits
/// gracefully). Held, the bridges stay idle until the MPM closes their connections and the
/// `child_stopping` hook ends them without a lingering close. The client already has its 1001.
#[derive(Default)]
pub struct Hold {
    on: AtomicBool,
    kept: std::sync::Mutex<Vec<Box<dyn Send>>>,
}

impl Hold {
    /// From now on, bridged streams whose session ends are kept instead of closed.
    pub fn start(&self) {
        self.on.store(true, Ordering::SeqCst);
    }

    pub fn holds_any(&self) -> bool {
        !self.kept.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }

    /// Stops holding after `delay` (by then the MPM has stopped the children it was told to
    /// stop) and closes the kept streams.
    pub fn release_after(self: &Arc<Self>, delay: Duration) {
        let hold = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            hold.on.store(false, Ordering::SeqCst);
            drop(std::mem::take(&mut *hold.kept.lock().unwrap_or_else(|e| e.into_inner())));
        });
    }
}

/// Keeps the daemon's count of live client sockets up to date: one per client socket the daemon holds.
pub struct LiveSlot(Arc<AtomicUsize>);

impl LiveSlot {
    pub fn new(live: Arc<AtomicUsize>) -> LiveSlot {
        live.fetch_add(1, Ordering::SeqCst);
        LiveSlot(live)
    }
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The client socket (or, bridged, the stream to the Apache worker) as the engine sees it;
/// dropping it releases the slot and closes the stream, unless it is bridged and [`Hold`] is on
/// (then the stream is kept, and a shutdown is not passed on).
pub struct Counted<S: Send + 'static> {
    inner: Option<S>,
    _slot: LiveSlot,
    /// Bridged streams only.
    hold: Option<Arc<Hold>>,
    /// The count of this stream's kind (bridged, adopted TLS).
    _kind: Option<LiveSlot>,
}

impl<S: Send + 'static> Counted<S> {
    pub fn new(inner: S, slot: LiveSlot, hold: Option<Arc<Hold>>) -> Counted<S> {
        Counted { inner: Some(inner), _slot: slot, hold, _kind: None }
    }

    /// The stream also counts in its kind's count while it lives (bridged streams: against the
    /// bridge cap).
    pub fn counted_as(mut self, kind: LiveSlot) -> Counted<S> {
        self._kind = Some(kind);
        self
    }

    fn holding(&self) -> bool {
        self.hold.as_ref().is_some_and(|h| h.on.load(Ordering::SeqCst))
    }

    fn stream(&mut self) -> std::io::Result<Pin<&mut S>>
    where
        S: Unpin,
    {
        match self.inner.as_mut() {
            Some(stream) => Ok(Pin::new(stream)),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
}

impl<S: Send + 'static> Drop for Counted<S> {
    fn drop(&mut self) {
        if let (true, Some(hold), Some(stream)) =
            (self.holding(), self.hold.as_ref(), self.inner.take())
        {
            hold.kept.lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(stream));
        }
    }
}

impl<S: AsyncRead + Unpin + Send + 'static> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Ok(stream) => stream.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl<S: AsyncWrite + Unpin + Send + 'static> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.stream() {
            Ok(stream) => stream.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.stream() {
            Ok(stream) => stream.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.holding() {
            return Poll::Ready(Ok(()));
        }
        match self.stream() {
            Ok(stream) => stream.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.stream() {
            Ok(stream) => stream.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }
}
