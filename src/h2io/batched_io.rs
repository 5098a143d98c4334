//! [`BatchedIo`]: large socket reads and writes under HTTP/2.
//!
//! **Reads.** h2 reads its connection through a buffer sized for the frame at hand (8 KiB at
//! first), so a stream moving hundreds of MiB/s costs a `recvfrom` per frame or less. Under
//! load this wrapper reads up to [`BULK`] bytes per system call into its own buffer and hands
//! them out from there (a memory copy is far cheaper than a system call). It switches to bulk
//! reads only after a read filled the caller's whole buffer (more is waiting), and back to
//! direct reads once a read comes back short (the socket is drained).
//!
//! A read into a buffer with room for at least [`DIRECT`] bytes goes straight there, in bulk
//! mode too: h2 offers that much room when it reads a large frame, and then the copy would buy
//! no system call.
//!
//! **Writes.** h2 writes one DATA frame at a time and flushes after each (its encoder holds a
//! single frame), so forwarding to a peer that takes 16 KiB frames costs a `writev` per 16 KiB.
//! This wrapper copies writes into a buffer of up to [`WRITE_BATCH`] bytes and defers a flush
//! that finds a frame's worth of bytes (at least [`EAGER`], or a second flush since the last
//! read): it wakes the task and answers `Ready`, and the bytes go out in one write at the
//! start of the next `poll_read` (or at `poll_shutdown`). That is sound for an owner that
//! reads on every poll, as h2's connection does: each poll of it reads until `Pending` before
//! it writes its next batch, and the wakeup brings that poll even when nothing else does. A lone small
//! frame (a ping, a window update, a short message) is written at its flush, so latency does
//! not wait on a wakeup. A full buffer that the socket does not take makes `poll_write`
//! return `Pending`: backpressure is the socket's, with at most one batch held. A write of at
//! least [`DIRECT`] bytes (a large frame) that would overflow the batch is not copied: it goes
//! to the socket at once, in the same `writev` as what the buffer holds before it. A large
//! write that fits is batched like a small one: a socket write per large frame wakes the peer
//! per frame, and on a VM a wakeup costs more than the copy saved (see docs/performance.md).
//!
//! Buffers exist only while bytes move: both are given up once drained, so an idle connection
//! holds none. A drained buffer is kept as a spare of the thread's (at most [`SPARES`] of
//! them, 1 MiB per thread) for the next batch of any connection: a 256 KiB buffer allocated
//! and freed per batch has the allocator hand its pages back and fault them in again, and the
//! reuse measured streams / relay 1.60-1.68 against 1.34-1.46 at 64 KiB writes (docs/performance.md).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest read in bulk mode.
pub(super) const BULK: usize = 256 * 1024;
/// The most bytes the write buffer holds (and writes in one system call): a read batch's
/// size, since the spare buffers serve both.
pub(super) const WRITE_BATCH: usize = BULK;
/// The first flush since the last read writes at once when it finds fewer bytes than this.
pub(super) const EAGER: usize = 4 * 1024;
/// Reads into a buffer with at least this much room skip the wrapper's buffer, and so do writes
/// of at least this many bytes that would overflow the batch (no copy). Measured in
/// `benches/relay.rs` against copying them (see docs/performance.md).
pub(super) const DIRECT: usize = 32 * 1024;

/// Drained buffers this thread keeps for the next batch, of any connection: at most this many.
pub(super) const SPARES: usize = 4;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A buffer with room for a batch: one of this thread's spares when it has one.
fn take() -> BytesMut {
    SPARE
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(BULK))
}

/// Gives up a drained buffer (leaving none behind): a spare while this thread has fewer than
/// [`SPARES`], else freed.
fn give(buf: &mut BytesMut) {
    let mut b = std::mem::take(buf);
    if b.capacity() == 0 {
        return;
    }
    b.clear();
    // Back to the start of its allocation: the buffer is unique, so this allocates nothing.
    b.reserve(BULK);
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < SPARES {
            s.push(b);
        }
    });
}

/// An I/O object whose reads are batched under load and whose flushed frames are written
/// together (see the module docs for the owner it needs).
#[derive(Debug)]
pub(super) struct BatchedIo<IO> {
    io: IO,
    /// Read in bulk, not handed out yet.
    buf: BytesMut,
    /// Reading in bulk.
    bulk: bool,
    /// Written, not yet on the socket.
    out: BytesMut,
    /// A flush was deferred and the task woken for it.
    deferred: bool,
    /// Flushes since the last read.
    flushes: u32,
}

impl<IO> BatchedIo<IO> {
    pub(super) fn new(io: IO) -> Self {
        BatchedIo {
            io,
            buf: BytesMut::new(),
            bulk: false,
            out: BytesMut::new(),
            deferred: false,
            flushes: 0,
        }
    }

    #[cfg(feature = "router")]
    pub(super) fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for BatchedIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.flushes = 0;
        if !me.out.is_empty() {
            // Deferred writes go out before every read; a write that cannot go on now has
            // registered this task for when it can.
            if let Poll::Ready(Err(e)) = me.poll_drain(cx) {
                return Poll::Ready(Err(e));
            }
        }
        if me.buf.is_empty() {
            if !me.bulk || out.remaining() >= DIRECT {
                let want = out.remaining();
                let before = out.filled().len();
                ready!(Pin::new(&mut me.io).poll_read(cx, out))?;
                me.bulk = want > 0 && out.filled().len() - before == want;
                return Poll::Ready(Ok(()));
            }
            if me.buf.capacity() == 0 {
                me.buf = take();
            }
            me.buf.reserve(BULK);
            let n = match tokio_util::io::poll_read_buf(Pin::new(&mut me.io), cx, &mut me.buf) {
                Poll::Ready(r) => r?,
                Poll::Pending => {
                    // The burst is over: an idle connection keeps no buffer.
                    give(&mut me.buf);
                    me.bulk = false;
                    return Poll::Pending;
                }
            };
            if n < BULK / 8 {
                me.bulk = false;
            }
            if n == 0 {
                give(&mut me.buf);
                return Poll::Ready(Ok(()));
            }
        }
        let n = me.buf.len().min(out.remaining());
        out.put_slice(&me.buf[..n]);
        me.buf.advance(n);
        if me.buf.is_empty() && !me.bulk {
            give(&mut me.buf);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> BatchedIo<IO> {
    /// Writes out what the write buffer holds.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(n);
        }
        self.deferred = false;
        give(&mut self.out);
        Poll::Ready(Ok(()))
    }

    fn poll_put(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.out.len() + total > WRITE_BATCH {
            if total >= DIRECT {
                // The batch goes out now anyway: the large write goes with it, uncopied.
                return self.poll_put_direct(cx, bufs);
            }
            ready!(self.poll_drain(cx))?;
        }
        if self.out.capacity() == 0 {
            self.out = take();
        }
        for b in bufs {
            self.out.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    /// A large write, not copied: to the socket after what the buffer holds, in one system
    /// call.
    fn poll_put_direct(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.out.is_empty() {
            return Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        }
        let held = self.out.len();
        let mut all = Vec::with_capacity(bufs.len() + 1);
        all.push(io::IoSlice::new(&self.out));
        all.extend_from_slice(bufs);
        let n = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &all))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        self.out.advance(n.min(held));
        // Gives up the buffer once it is all out; writes the rest of it first when the socket
        // took no more than the buffer (it is full, or nearly).
        ready!(self.poll_drain(cx))?;
        if n > held {
            return Poll::Ready(Ok(n - held));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for BatchedIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_put(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_put(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        me.flushes = me.flushes.saturating_add(1);
        if me.out.is_empty() {
            return Pin::new(&mut me.io).poll_flush(cx);
        }
        if me.out.len() >= EAGER || me.flushes > 1 {
            if !me.deferred {
                me.deferred = true;
                cx.waker().wake_by_ref();
            }
            return Poll::Ready(Ok(()));
        }
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        ready!(me.poll_drain(cx))?;
        Pin::new(&mut me.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    #[tokio::test]
    async fn every_byte_in_order_through_both_modes_and_the_buffer_is_freed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i * 7 + i / 1000) as u8)
            .collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            // A burst (bulk mode), a pause with a trickle (direct mode), another burst.
            s.write_all(&sent[..2_000_000]).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            for c in sent[2_000_000..2_000_100].chunks(10) {
                s.write_all(c).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            s.write_all(&sent[2_000_100..]).await.unwrap();
        });
        let (tcp, _) = listener.accept().await.unwrap();
        let mut r = BatchedIo::new(tcp);
        let mut got = Vec::new();
        let mut chunk = vec![0u8; 8192];
        let mut saw_bulk = false;
        loop {
            let n = r.read(&mut chunk).await.unwrap();
            saw_bulk |= r.bulk;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        writer.await.unwrap();
        assert!(
            got == data,
            "bytes differ (got {} of {})",
            got.len(),
            data.len()
        );
        assert!(saw_bulk, "a 2 MB burst never switched to bulk reads");
        assert_eq!(r.buf.capacity(), 0, "the buffer is freed once drained");
    }

    /// Counts the writes that reach the socket.
    struct Counted<IO> {
        io: IO,
        writes: Arc<AtomicUsize>,
    }

    impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
        }
    }

    impl<IO> Counted<IO> {
        fn count(&self, r: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
            if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
                self.writes.fetch_add(1, Ordering::Relaxed);
            }
            r
        }
    }

    impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let me = self.get_mut();
            let r = Pin::new(&mut me.io).poll_write(cx, buf);
            me.count(r)
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let me = self.get_mut();
            let r = Pin::new(&mut me.io).poll_write_vectored(cx, bufs);
            me.count(r)
        }

        fn is_write_vectored(&self) -> bool {
            self.io.is_write_vectored()
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().io).poll_flush(cx)
        }

        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
        }
    }

    /// Counts its wakeups.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A waker that counts its wakeups, and the count.
    fn counting_waker() -> (Arc<Wakes>, std::task::Waker) {
        let wakes = Arc::new(Wakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        (wakes, waker)
    }

    /// A loopback connection: ours (batched, its socket writes counted, a send buffer large
    /// enough for a whole batch) and the peer's plain end.
    async fn batched_pair() -> (BatchedIo<Counted<TcpStream>>, Arc<AtomicUsize>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_send_buffer_size(4 << 20).unwrap();
        let ours = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (peer, _) = listener.accept().await.unwrap();
        let writes = Arc::new(AtomicUsize::new(0));
        let io = BatchedIo::new(Counted {
            io: ours,
            writes: writes.clone(),
        });
        (io, writes, peer)
    }

    fn frames(n: usize, len: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| vec![i as u8; len]).collect()
    }

    /// As h2 sends: each frame written, then flushed; the connection's next poll reads.
    #[tokio::test]
    async fn frames_flushed_one_by_one_go_out_together_at_the_next_read() {
        let (mut io, writes, mut peer) = batched_pair().await;
        let (wakes, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let sent = frames(6, 16 * 1024 + 9);
        for f in &sent {
            let r = Pin::new(&mut io).poll_write(&mut cx, f);
            assert!(matches!(r, Poll::Ready(Ok(n)) if n == f.len()), "{r:?}");
            assert!(matches!(
                Pin::new(&mut io).poll_flush(&mut cx),
                Poll::Ready(Ok(()))
            ));
        }
        assert_eq!(
            writes.load(Ordering::Relaxed),
            0,
            "written before the next read"
        );
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            1,
            "the task is woken once, to read"
        );
        let mut b = [0u8; 64];
        let mut rb = ReadBuf::new(&mut b);
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut rb).is_pending());
        assert_eq!(writes.load(Ordering::Relaxed), 1, "six frames in one write");
        let mut got = vec![0u8; sent.concat().len()];
        peer.read_exact(&mut got).await.unwrap();
        assert!(got == sent.concat(), "bytes differ");
        assert_eq!(
            io.out.capacity(),
            0,
            "the write buffer is given up once drained"
        );
    }

    /// A lone small frame (a ping, a window update, a small message) is not kept waiting.
    #[tokio::test]
    async fn a_lone_small_frame_goes_out_at_its_flush() {
        let (mut io, writes, mut peer) = batched_pair().await;
        let (wakes, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let frame = [7u8; 64 + 9];
        assert!(Pin::new(&mut io).poll_write(&mut cx, &frame).is_ready());
        assert!(matches!(
            Pin::new(&mut io).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(writes.load(Ordering::Relaxed), 1);
        assert_eq!(wakes.0.load(Ordering::Relaxed), 0);
        let mut got = [0u8; 64 + 9];
        peer.read_exact(&mut got).await.unwrap();
        assert_eq!(got, frame);
    }

    /// A large frame that fits in the batch is batched like a small one: it leaves with the
    /// bytes before it, in one write at the next read, and the buffer is given up.
    #[tokio::test]
    async fn a_large_frame_that_fits_waits_for_the_batch() {
        let (mut io, writes, mut peer) = batched_pair().await;
        let (wakes, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let small = [1u8; 100];
        let large: Vec<u8> = (0..64 * 1024 + 9).map(|i| i as u8).collect();
        for f in [&small[..], &large[..]] {
            let r = Pin::new(&mut io).poll_write(&mut cx, f);
            assert!(matches!(r, Poll::Ready(Ok(n)) if n == f.len()), "{r:?}");
        }
        assert!(matches!(
            Pin::new(&mut io).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(writes.load(Ordering::Relaxed), 0, "both are buffered");
        assert_eq!(wakes.0.load(Ordering::Relaxed), 1, "woken once, to read");
        let mut b = [0u8; 64];
        let mut rb = ReadBuf::new(&mut b);
        assert!(Pin::new(&mut io).poll_read(&mut cx, &mut rb).is_pending());
        assert_eq!(writes.load(Ordering::Relaxed), 1, "both in one write");
        assert_eq!(io.out.capacity(), 0, "nothing held, no buffer kept");
        let mut got = vec![0u8; 100 + large.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert!(
            got[..100] == small && got[100..] == large[..],
            "bytes differ"
        );
    }

    /// A large frame that would overflow the batch is not copied: it leaves at once, in the
    /// same write as the bytes buffered before it, and the buffer is given up.
    #[tokio::test]
    async fn a_large_frame_past_the_batch_goes_out_uncopied_behind_it() {
        let (mut io, writes, mut peer) = batched_pair().await;
        let (wakes, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let held = frames(WRITE_BATCH / (16 * 1024) - 1, 16 * 1024);
        let large: Vec<u8> = (0..64 * 1024 + 9).map(|i| i as u8).collect();
        for f in &held {
            let r = Pin::new(&mut io).poll_write(&mut cx, f);
            assert!(matches!(r, Poll::Ready(Ok(n)) if n == f.len()), "{r:?}");
        }
        assert_eq!(writes.load(Ordering::Relaxed), 0, "buffered");
        let r = Pin::new(&mut io).poll_write(&mut cx, &large);
        assert!(matches!(r, Poll::Ready(Ok(n)) if n == large.len()), "{r:?}");
        assert_eq!(writes.load(Ordering::Relaxed), 1, "all in one write");
        assert_eq!(io.out.capacity(), 0, "nothing held, no buffer kept");
        assert!(matches!(
            Pin::new(&mut io).poll_flush(&mut cx),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(writes.load(Ordering::Relaxed), 1);
        assert_eq!(wakes.0.load(Ordering::Relaxed), 0);
        let held = held.concat();
        let mut got = vec![0u8; held.len() + large.len()];
        peer.read_exact(&mut got).await.unwrap();
        let (a, b) = got.split_at(held.len());
        assert!(a == held && b == large, "bytes differ");
    }

    /// In bulk mode, a read into a buffer with room for a large frame goes straight there; a
    /// small one is served from the wrapper's buffer; the bytes stay in order.
    #[tokio::test]
    async fn bulk_reads_into_a_large_buffer_go_straight_there() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&sent).await.unwrap();
        });
        let (tcp, _) = listener.accept().await.unwrap();
        writer.await.unwrap();
        let mut r = BatchedIo::new(tcp);
        let mut got = Vec::new();
        // A small read that fills its buffer: bulk mode.
        let mut small = vec![0u8; 8192];
        r.read_exact(&mut small).await.unwrap();
        got.extend_from_slice(&small);
        assert!(r.bulk, "a full read did not switch to bulk reads");
        assert_eq!(
            r.buf.capacity(),
            0,
            "the first read went straight to the caller"
        );
        // A large one: straight into it, no buffer of the wrapper's.
        let mut large = vec![0u8; DIRECT];
        let n = r.read(&mut large).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&large[..n]);
        assert_eq!(
            r.buf.capacity(),
            0,
            "a large read was copied through the buffer"
        );
        // A small one in bulk mode: one large socket read, served from the buffer.
        let n = r.read(&mut small).await.unwrap();
        got.extend_from_slice(&small[..n]);
        assert!(r.buf.capacity() > 0, "a small bulk read was not buffered");
        r.read_to_end(&mut got).await.unwrap();
        assert!(
            got == data,
            "bytes differ (got {} of {})",
            got.len(),
            data.len()
        );
    }

    /// A drained buffer is kept as a spare of this thread's and taken by the next batch, with
    /// no new allocation; the spares are bounded.
    #[tokio::test]
    async fn a_drained_buffer_serves_the_next_batch_and_the_spares_are_bounded() {
        let (mut io, writes, mut peer) = batched_pair().await;
        let (_, waker) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let frame = vec![5u8; 16 * 1024 + 9];
        let batch = |io: &mut BatchedIo<Counted<TcpStream>>, cx: &mut Context<'_>| {
            for _ in 0..2 {
                assert!(Pin::new(&mut *io).poll_write(cx, &frame).is_ready());
                assert!(Pin::new(&mut *io).poll_flush(cx).is_ready());
            }
            let at = io.out.as_ptr();
            let mut b = [0u8; 1];
            let mut rb = ReadBuf::new(&mut b);
            assert!(Pin::new(&mut *io).poll_read(cx, &mut rb).is_pending());
            at
        };
        let first = batch(&mut io, &mut cx);
        assert_eq!(io.out.capacity(), 0, "the connection keeps no buffer");
        let spare = SPARE.with(|s| s.borrow().last().map(|b| (b.as_ptr(), b.capacity())));
        assert_eq!(
            spare,
            Some((first, BULK)),
            "the drained buffer is a whole spare"
        );
        let second = batch(&mut io, &mut cx);
        assert_eq!(second, first, "the next batch took the spare");
        assert_eq!(writes.load(Ordering::Relaxed), 2);
        let mut got = vec![0u8; 4 * frame.len()];
        peer.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|&b| b == 5));
        for _ in 0..SPARES + 3 {
            let mut b = BytesMut::with_capacity(BULK);
            give(&mut b);
        }
        assert_eq!(SPARE.with(|s| s.borrow().len()), SPARES);
    }

    /// Shutting down writes what a deferred flush kept, then ends the stream.
    #[tokio::test]
    async fn shutdown_writes_the_deferred_bytes_first() {
        let (mut io, _, mut peer) = batched_pair().await;
        let sent = frames(4, 16 * 1024 + 9);
        std::future::poll_fn(|cx| {
            for f in &sent {
                let n = ready!(Pin::new(&mut io).poll_write(cx, f))?;
                assert_eq!(n, f.len());
                ready!(Pin::new(&mut io).poll_flush(cx))?;
            }
            Poll::Ready(Ok::<_, io::Error>(()))
        })
        .await
        .unwrap();
        let sent = sent.concat();
        assert!(!io.out.is_empty(), "the flush was not deferred");
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        peer.read_to_end(&mut got).await.unwrap();
        assert!(got == sent, "got {} of {} bytes", got.len(), sent.len());
    }

    /// A peer that does not read: the writes stop with at most one batch held, and every byte
    /// arrives once it reads; for small frames and for large ones (batched while they fit).
    #[tokio::test]
    async fn a_peer_that_does_not_read_stops_the_writes_with_one_batch_held() {
        for len in [16 * 1024 + 9, 64 * 1024 + 9] {
            stalled_peer(len).await;
        }
    }

    async fn stalled_peer(len: usize) {
        let (mut io, _, mut peer) = batched_pair().await;
        let frame = vec![3u8; len];
        let mut accepted = 0usize;
        // Write as h2 does (frame, flush, a read) until the wrapper says no.
        let blocked = std::future::poll_fn(|cx| {
            for _ in 0..10_000 {
                match Pin::new(&mut io).poll_write(cx, &frame) {
                    Poll::Ready(Ok(n)) => accepted += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Ready(Ok(true)),
                }
                match Pin::new(&mut io).poll_flush(cx) {
                    Poll::Ready(r) => r?,
                    Poll::Pending => return Poll::Ready(Ok(true)),
                }
                let mut b = [0u8; 1];
                let mut rb = ReadBuf::new(&mut b);
                if let Poll::Ready(r) = Pin::new(&mut io).poll_read(cx, &mut rb) {
                    r?;
                }
            }
            Poll::Ready(Ok::<_, io::Error>(false))
        })
        .await
        .unwrap();
        assert!(
            blocked,
            "10,000 frames accepted by a peer that does not read"
        );
        assert!(io.out.len() <= WRITE_BATCH, "{} bytes held", io.out.len());
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            peer.read_to_end(&mut got).await.unwrap();
            got
        });
        io.shutdown().await.unwrap();
        let got = reader.await.unwrap();
        assert_eq!(got.len(), accepted);
        assert!(got.iter().all(|&b| b == 3));
    }

    /// Under h2 itself, on both ends: a stream echoed back whole, in far fewer socket writes
    /// than DATA frames, and no frame left waiting (the call ends).
    #[cfg(feature = "client")]
    #[tokio::test]
    async fn under_h2_every_byte_is_echoed_in_fewer_writes_than_frames() {
        use bytes::Bytes;
        use tonic::codegen::http;

        const CHUNK: usize = 16 * 1024;
        const CHUNKS: usize = 512;
        let (server_io, server_writes, client_tcp) = batched_pair().await;
        let server = tokio::spawn(async move {
            let mut conn = h2::server::handshake(server_io).await.unwrap();
            let (req, mut respond) = conn.accept().await.unwrap().unwrap();
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            let mut body = req.into_body();
            let mut send = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            let mut frames = 0usize;
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                body.flow_control().release_capacity(chunk.len()).unwrap();
                frames += chunk.len().div_ceil(CHUNK);
                send.send_data(chunk, false).unwrap();
            }
            send.send_data(Bytes::new(), true).unwrap();
            frames
        });
        let (mut client, conn) = h2::client::handshake(BatchedIo::new(client_tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = http::Request::post("http://127.0.0.1/echo")
            .body(())
            .unwrap();
        let (resp, mut send) = client.send_request(req, false).unwrap();
        let data: Vec<u8> = (0..CHUNK * CHUNKS).map(|i| (i % 251) as u8).collect();
        let sent = Bytes::from(data.clone());
        tokio::spawn(async move {
            for i in 0..CHUNKS {
                send.send_data(sent.slice(i * CHUNK..(i + 1) * CHUNK), false)
                    .unwrap();
            }
            send.send_data(Bytes::new(), true).unwrap();
        });
        let echoed = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            let mut body = resp.await.unwrap().into_body();
            let mut got = Vec::with_capacity(data.len());
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                body.flow_control().release_capacity(chunk.len()).unwrap();
                got.extend_from_slice(&chunk);
            }
            got
        })
        .await
        .expect("the echo stalled");
        assert!(
            echoed == data,
            "got {} of {} bytes",
            echoed.len(),
            data.len()
        );
        let frames = server.await.unwrap();
        let writes = server_writes.load(Ordering::Relaxed);
        assert!(frames >= CHUNKS, "{frames}");
        assert!(
            writes * 2 < frames,
            "{writes} socket writes for {frames} DATA frames"
        );
    }
}
