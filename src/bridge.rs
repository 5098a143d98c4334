//! [`bridge`]: `copy_bidirectional` for a [`RouterStream`], with no buffer of its own in either
//! direction.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_core::Stream;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite};

use crate::{Frame, RouterStream};

/// Copies data both ways between `io` (a `TcpStream`, stdio, ...) and `stream` until both
/// directions are done, like [`tokio::io::copy_bidirectional`]: when one side reaches EOF, the
/// other side's write half is shut down (for the stream: GOAWAY), and the other direction goes
/// on. Returns the bytes copied `(io -> stream, stream -> io)`.
///
/// Unlike `copy_bidirectional`, neither direction copies through a buffer of its own: the
/// stream -> `io` direction writes the received DATA payloads straight from their buffers
/// ([`AsyncBufRead`]), and the `io` -> stream direction reads straight into the DATA frame the
/// stream is building.
///
/// Call [`RouterStream::close`] afterwards before the process exits.
///
/// # Errors
///
/// The first error of either direction; the other direction stops with it.
pub async fn bridge<T, S>(io: &mut T, stream: &mut RouterStream<S>) -> io::Result<(u64, u64)>
where
    T: AsyncRead + AsyncWrite + Unpin + ?Sized,
    S: Stream<Item = Result<Frame, tonic::Status>> + Unpin,
{
    let mut up = Up {
        eof: false,
        need_flush: false,
        done: false,
        total: 0,
    };
    let mut down = Down {
        need_flush: false,
        done: false,
        total: 0,
    };
    poll_fn(|cx| {
        // Down first: once it read the peer's GOAWAY, Up's wait for room in the stream also
        // watches the call's final status, so an error ends the bridge while `io` is idle.
        let down_ready = down.poll(cx, stream, io)?.is_ready();
        let up_ready = up.poll(cx, io, stream)?.is_ready();
        if up_ready && down_ready {
            Poll::Ready(Ok((up.total, down.total)))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// `io` -> stream: read straight into the frame the stream builds.
struct Up {
    eof: bool,
    need_flush: bool,
    done: bool,
    total: u64,
}

impl Up {
    /// Flushes the stream whenever `io` has nothing more for now.
    fn poll<T, S>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut T,
        stream: &mut RouterStream<S>,
    ) -> Poll<io::Result<()>>
    where
        T: AsyncRead + Unpin + ?Sized,
        S: Stream<Item = Result<Frame, tonic::Status>> + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        while !self.eof {
            ready!(stream.poll_frame_room(cx))?;
            match stream.poll_fill_frame_from(cx, Pin::new(&mut *io)) {
                Poll::Ready(Ok(0)) => self.eof = true,
                Poll::Ready(Ok(n)) => {
                    self.total += n as u64;
                    self.need_flush = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return flush_if_needed(&mut self.need_flush, stream, cx),
            }
        }
        ready!(Pin::new(&mut *stream).poll_flush(cx))?;
        ready!(Pin::new(&mut *stream).poll_shutdown(cx))?;
        self.done = true;
        Poll::Ready(Ok(()))
    }
}

/// stream -> `io`: write each received payload straight from its buffer.
struct Down {
    need_flush: bool,
    done: bool,
    total: u64,
}

impl Down {
    fn poll<T, S>(
        &mut self,
        cx: &mut Context<'_>,
        stream: &mut RouterStream<S>,
        io: &mut T,
    ) -> Poll<io::Result<()>>
    where
        T: AsyncWrite + Unpin + ?Sized,
        S: Stream<Item = Result<Frame, tonic::Status>> + Unpin,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            let chunk = match Pin::new(&mut *stream).poll_fill_buf(cx) {
                Poll::Ready(r) => r?,
                Poll::Pending => return flush_if_needed(&mut self.need_flush, io, cx),
            };
            if chunk.is_empty() {
                // Flush first: not every writer flushes on shutdown (tokio's stdout does not).
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                ready!(Pin::new(&mut *io).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let n = ready!(Pin::new(&mut *io).poll_write(cx, chunk))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            Pin::new(&mut *stream).consume(n);
            self.total += n as u64;
            self.need_flush = true;
        }
    }
}

/// The reading side is idle: flushes what was written since the last flush, then `Pending`
/// (the read registered the waker).
fn flush_if_needed<W: AsyncWrite + Unpin + ?Sized>(
    need_flush: &mut bool,
    w: &mut W,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    if *need_flush {
        ready!(Pin::new(w).poll_flush(cx))?;
        *need_flush = false;
    }
    Poll::Pending
}
