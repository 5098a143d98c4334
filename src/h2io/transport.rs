//! [`Transport`]: the socket under HTTP/2 on the client and the router, the only owner of a
//! [`BatchedIo`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use super::batched_io::BatchedIo;

/// A TCP connection that HTTP/2 runs on (directly, or under TLS): [`BatchedIo`] over it, or
/// the bare socket when batching is off (`ClientBuilder::batched_io(false)`,
/// `RouterBuilder::batched_io(false)`, `--batched-io false`), for debugging.
///
/// `BatchedIo` answers a flush with bytes still buffered: that is sound only for an owner that
/// reads on every poll, as h2's connection does (see [`batched_io`](super::batched_io)). So
/// it is built here only, over a `TcpStream`, and a `Transport` is made only by the two
/// places that put h2 on it: the client's connector (`src/client.rs`) and the router's
/// acceptor (`src/router/serve.rs`). `tests/batched_io.rs` runs both under TLS and h2.
#[derive(Debug)]
pub(crate) struct Transport(Either<BatchedIo<TcpStream>, TcpStream>);

impl Transport {
    /// `tcp` for HTTP/2, batched unless `batched` is false.
    pub(crate) fn new(tcp: TcpStream, batched: bool) -> Self {
        Transport(if batched {
            Either::Left(BatchedIo::new(tcp))
        } else {
            Either::Right(tcp)
        })
    }

    /// The socket.
    #[cfg(feature = "router")]
    pub(crate) fn tcp(&self) -> &TcpStream {
        match &self.0 {
            Either::Left(b) => b.get_ref(),
            Either::Right(tcp) => tcp,
        }
    }
}

// tokio-util's `Either` dispatches every call to the side in use.

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
