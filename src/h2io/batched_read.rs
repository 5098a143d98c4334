//! [`BatchedRead`]: large socket reads under HTTP/2.
//!
//! h2 reads its connection through an 8 KiB buffer, so a stream moving hundreds of MiB/s
//! costs one `recvfrom` per 8 KiB. Under load this wrapper reads up to [`BULK`] bytes per
//! system call into its own buffer and hands them out from there (a memory copy is far
//! cheaper than a system call). It switches to bulk reads only after a read filled the
//! caller's whole buffer (more is waiting), and back to direct reads, freeing its buffer, once
//! a read comes back short (the socket is drained), so idle connections hold no buffer.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest read in bulk mode.
pub(crate) const BULK: usize = 256 * 1024;

/// An I/O object whose reads are batched under load. Writes pass through.
#[derive(Debug)]
pub(crate) struct BatchedRead<IO> {
    io: IO,
    buf: BytesMut,
    bulk: bool,
}

impl<IO> BatchedRead<IO> {
    pub(crate) fn new(io: IO) -> Self {
        BatchedRead {
            io,
            buf: BytesMut::new(),
            bulk: false,
        }
    }

    #[cfg(feature = "router")]
    pub(crate) fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for BatchedRead<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.buf.is_empty() {
            if !me.bulk || out.remaining() >= BULK {
                let want = out.remaining();
                let before = out.filled().len();
                ready!(Pin::new(&mut me.io).poll_read(cx, out))?;
                me.bulk = want > 0 && out.filled().len() - before == want;
                return Poll::Ready(Ok(()));
            }
            me.buf.reserve(BULK);
            let n = match tokio_util::io::poll_read_buf(Pin::new(&mut me.io), cx, &mut me.buf) {
                Poll::Ready(r) => r?,
                Poll::Pending => {
                    // The burst is over: an idle connection keeps no buffer.
                    me.buf = BytesMut::new();
                    me.bulk = false;
                    return Poll::Pending;
                }
            };
            if n < BULK / 8 {
                me.bulk = false;
            }
            if n == 0 {
                me.buf = BytesMut::new();
                return Poll::Ready(Ok(()));
            }
        }
        let n = me.buf.len().min(out.remaining());
        out.put_slice(&me.buf[..n]);
        me.buf.advance(n);
        if me.buf.is_empty() && !me.bulk {
            me.buf = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for BatchedRead<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        let mut r = BatchedRead::new(tcp);
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
}
