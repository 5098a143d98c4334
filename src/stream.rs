//! [`RouterStream`]: a router stream as a tokio byte stream.
//!
//! # State machine
//!
//! Each half has one explicit state enum.
//!
//! The read half ([`ReadState`]):
//!
//! ```text
//!                 response headers             GOAWAY
//!  Connecting ───────────────────────► Open ─────────────► Eof
//!  (client only)                        │ │
//!       │ error status                  │ └─ DATA: hand the payload out (empty: skip)
//!       │                               │    PING, unknown: ignore
//!       │          RST_STREAM, error    │
//!       └──────────► Failed ◄───────────┘
//!                    (end of the call without GOAWAY: UnexpectedEof)
//! ```
//!
//! The write half ([`WriteState`]):
//!
//! ```text
//!         poll_shutdown: flush           GOAWAY queued
//!  Open ───────────────────► GoingAway ──────────────► Closed
//!    │ poll_write: coalesce into one DATA frame, send it when full or on poll_flush
//!    └─ drop (no shutdown): RST_STREAM, then the call is cancelled
//! ```
//!
//! The first error of the call (an error status, RST_STREAM, an end without GOAWAY) is kept and
//! returned by every later call on either half.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_core::Stream;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::PollSender;
use tonic::codec::Streaming;
use tonic::{Response, Status};

use crate::proto::{StreamRequest, StreamResponse};
use crate::{Error, Frame};

/// The default largest DATA payload a [`RouterStream`] sends in one frame: 64 KiB.
///
/// Writes are coalesced up to this size. Jumpstarter peers accept up to 4 MiB per message
/// (gRPC's default decoder limit); the benchmark in `benches/stream.rs` shows no gain above
/// 64 KiB and a loss below 16 KiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;

/// The largest [`StreamOptions::max_payload`]: 16 MiB (far above any gRPC peer's default
/// decoder limit of 4 MiB).
pub const MAX_PAYLOAD_LIMIT: usize = 16 * 1024 * 1024;

/// Frames queued between the writer and tonic's encoder; together with
/// [`StreamOptions::max_payload`] this bounds the memory a stalled peer can hold.
const CHANNEL_FRAMES: usize = 2;

/// Options for a [`RouterStream`].
///
/// ```
/// use std::time::Duration;
/// use jumpstarter_router::StreamOptions;
///
/// let opts = StreamOptions::new()
///     .max_payload(16 * 1024)
///     .ping_interval(Some(Duration::from_secs(30)));
/// assert_eq!(opts.get_max_payload(), 16 * 1024);
/// ```
#[derive(Clone, Debug)]
pub struct StreamOptions {
    max_payload: usize,
    ping_interval: Option<Duration>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            max_payload: DEFAULT_MAX_PAYLOAD,
            ping_interval: None,
        }
    }
}

impl StreamOptions {
    /// The defaults: [`DEFAULT_MAX_PAYLOAD`], no PING frames.
    pub fn new() -> Self {
        Self::default()
    }

    /// The largest DATA payload sent in one frame (and the coalescing limit), between 1 byte
    /// and [`MAX_PAYLOAD_LIMIT`].
    ///
    /// Keep it under the peer's gRPC decoder limit (4 MiB by default, minus 5 bytes of
    /// message framing and a few bytes of protobuf header).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes.clamp(1, MAX_PAYLOAD_LIMIT);
        self
    }

    /// The configured largest DATA payload.
    pub fn get_max_payload(&self) -> usize {
        self.max_payload
    }

    /// Sends a PING frame at this period (at least 1 ms) while the stream is being read and
    /// its write half is open; skipped when frames are already queued. Off by default (the
    /// HTTP/2 keepalive of the channel covers idle connections).
    pub fn ping_interval(mut self, every: Option<Duration>) -> Self {
        self.ping_interval = every.map(|d| d.max(Duration::from_millis(1)));
        self
    }
}

type CallFuture =
    Pin<Box<dyn Future<Output = Result<Response<Streaming<StreamResponse>>, Status>> + Send>>;

/// A router stream: the bytes of one Jumpstarter router stream as a tokio
/// [`AsyncRead`] + [`AsyncBufRead`] + [`AsyncWrite`] duplex.
///
/// Client side: [`connect`](crate::connect) (feature `client`) or
/// [`RouterStream::from_call`] over any tonic client. Servicer side (an exporter answering `Stream` calls itself):
/// [`RouterStream::accept`].
///
/// ```no_run
/// # #[cfg(feature = "client")]
/// # async fn demo() -> std::io::Result<()> {
/// use tokio::io::{copy_bidirectional, AsyncWriteExt};
///
/// let mut stream = jumpstarter_router::connect("https://router.example.com:443", "TOKEN").await?;
/// let mut tcp = tokio::net::TcpStream::connect("127.0.0.1:22").await?;
/// let (up, down) = copy_bidirectional(&mut tcp, &mut stream).await?;
/// println!("{up} bytes up, {down} bytes down");
/// # Ok(()) }
/// ```
///
/// # Semantics
///
/// - **Reads** hand out DATA payloads without copying ([`AsyncBufRead`],
///   [`read_chunk`](RouterStream::read_chunk)); empty DATA, PING and unknown frame types are
///   skipped. GOAWAY from the peer is EOF for the read half; the write half stays usable.
///   A call that ends without GOAWAY fails with [`io::ErrorKind::UnexpectedEof`], a RST_STREAM
///   with [`io::ErrorKind::ConnectionReset`], an error status with the kind of
///   [`Error::kind`]; the [`Error`] is the inner error of the `io::Error`.
/// - **Writes** are coalesced into DATA frames of at most
///   [`max_payload`](StreamOptions::max_payload) bytes, sent when a frame is full or on
///   `poll_flush`. Backpressure is exact: with the frames in flight used up, `poll_write`
///   waits until HTTP/2 has room. A zero-length write sends nothing.
/// - **`poll_shutdown`** flushes, sends GOAWAY and (client) ends the request stream.
///   Servicer side: the response stays open until the read half is done too, so the
///   peer's in-flight data is not lost. Writing after it fails with
///   [`io::ErrorKind::BrokenPipe`].
/// - **Drop without shutdown** aborts: the peer gets RST_STREAM and the call is cancelled.
///   Client side, once the response headers are in, the request stays open in hyper's own
///   task until the router has ended the call (at most 1 s), so the RST_STREAM frame is sent
///   rather than lost in an HTTP/2 cancel; the response is dropped at once.
///
/// # Cancel safety
///
/// All poll methods are cancel safe: bytes count as written only when `poll_write` returns
/// `Ready(Ok(n))`, and a dropped `read` loses nothing.
pub struct RouterStream {
    read: ReadState,
    /// DATA payload not yet handed out.
    chunk: Bytes,
    /// The first error of the call; sticky for both halves.
    error: Option<Error>,
    write: WriteState,
    /// Coalesced bytes of the next DATA frame.
    wbuf: BytesMut,
    /// Frames to tonic. `None` once the request stream ended (client) or the response may end
    /// (servicer).
    tx: Option<PollSender<Frame>>,
    /// Set when dropped without shutdown: the outbound stream then ends with RST_STREAM.
    abort: Arc<AtomicBool>,
    side: Side,
    max_payload: usize,
    /// Wakers for the pending call, polled from both halves while connecting.
    connect_wakers: Option<Arc<ConnectWakers>>,
    keepalive: Option<Keepalive>,
    /// Resolves (with an error) once tonic has dropped the outbound stream: every frame was
    /// handed to HTTP/2.
    outbound_done: oneshot::Receiver<()>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Client,
    Servicer,
}

/// The read half. See the module docs for the diagram.
enum ReadState {
    /// Client: the call is made, its response headers have not arrived. Writes go on.
    Connecting(CallFuture),
    /// Frames are read from the inbound message stream.
    Open(Inbound),
    /// The peer sent GOAWAY. The inbound stream is kept (not polled) so the call stays up
    /// while the write half is in use.
    Eof(#[allow(dead_code)] Option<Inbound>),
    /// The call failed; the error is in `RouterStream::error`.
    Failed,
}

enum Inbound {
    Client(Streaming<StreamResponse>),
    Servicer(Streaming<StreamRequest>),
}

impl Inbound {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame, Status>>> {
        match self {
            Inbound::Client(s) => Pin::new(s)
                .poll_next(cx)
                .map(|o| o.map(|r| r.map(Frame::from))),
            Inbound::Servicer(s) => Pin::new(s)
                .poll_next(cx)
                .map(|o| o.map(|r| r.map(Frame::from))),
        }
    }
}

/// The write half. See the module docs for the diagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteState {
    Open,
    /// `poll_shutdown` flushed; GOAWAY is not queued yet.
    GoingAway,
    /// GOAWAY is queued.
    Closed,
}

struct Keepalive {
    every: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

// ===== impl RouterStream =====

impl RouterStream {
    fn from_parts(
        read: ReadState,
        side: Side,
        opts: &StreamOptions,
        (tx, abort, outbound_done): OutboundHandle,
    ) -> Self {
        RouterStream {
            read,
            chunk: Bytes::new(),
            error: None,
            write: WriteState::Open,
            wbuf: BytesMut::new(),
            tx: Some(PollSender::new(tx)),
            abort,
            side,
            max_payload: opts.max_payload,
            connect_wakers: None,
            keepalive: opts.ping_interval.map(|every| Keepalive {
                every,
                sleep: Box::pin(tokio::time::sleep(every)),
            }),
            outbound_done,
        }
    }

    /// The client side of a stream over a call you make yourself.
    ///
    /// `make_call` receives the request stream to pass to
    /// [`RouterServiceClient::stream`](crate::proto::router_service_client::RouterServiceClient::stream)
    /// (with whatever metadata the call needs) and returns the call's future. The future is
    /// never awaited before the stream is usable: the router may hold the response headers
    /// until the peer speaks, so reads wait for them and writes go on. The request goes out
    /// on the first read, flush or shutdown.
    ///
    /// ```no_run
    /// use jumpstarter_router::proto::router_service_client::RouterServiceClient;
    /// use jumpstarter_router::{RouterStream, StreamOptions};
    ///
    /// # async fn demo(channel: tonic::transport::Channel) {
    /// let mut client = RouterServiceClient::new(channel);
    /// let stream = RouterStream::from_call(&StreamOptions::default(), move |requests| async move {
    ///     let mut request = tonic::Request::new(requests);
    ///     request.metadata_mut().insert("authorization", "Bearer TOKEN".parse().unwrap());
    ///     client.stream(request).await
    /// });
    /// # }
    /// ```
    pub fn from_call<F, Fut>(opts: &StreamOptions, make_call: F) -> RouterStream
    where
        F: FnOnce(RequestStream) -> Fut,
        Fut: Future<Output = Result<Response<Streaming<StreamResponse>>, Status>> + Send + 'static,
    {
        let (handle, outbound) = Outbound::channel();
        let call: CallFuture = Box::pin(make_call(RequestStream::new(outbound)));
        RouterStream::from_parts(ReadState::Connecting(call), Side::Client, opts, handle)
    }

    /// Makes the servicer side of a `Stream` call: the stream to read and write, and the
    /// response stream to return to tonic.
    ///
    /// Use it in your own [`RouterService`](crate::proto::router_service_server::RouterService)
    /// implementation (an exporter that is called directly rather than through a router):
    ///
    /// ```no_run
    /// use jumpstarter_router::proto::router_service_server::RouterService;
    /// use jumpstarter_router::proto::StreamRequest;
    /// use jumpstarter_router::{ResponseStream, RouterStream};
    /// use tonic::{Request, Response, Status, Streaming};
    ///
    /// struct Exporter;
    ///
    /// #[tonic::async_trait]
    /// impl RouterService for Exporter {
    ///     type StreamStream = ResponseStream;
    ///
    ///     async fn stream(
    ///         &self,
    ///         request: Request<Streaming<StreamRequest>>,
    ///     ) -> Result<Response<ResponseStream>, Status> {
    ///         let (mut stream, response) = RouterStream::accept(request.into_inner());
    ///         tokio::spawn(async move {
    ///             let mut target = tokio::net::TcpStream::connect("127.0.0.1:22").await?;
    ///             tokio::io::copy_bidirectional(&mut stream, &mut target).await
    ///         });
    ///         Ok(Response::new(response))
    ///     }
    /// }
    /// ```
    pub fn accept(inbound: Streaming<StreamRequest>) -> (RouterStream, ResponseStream) {
        Self::accept_with(inbound, &StreamOptions::default())
    }

    /// [`accept`](RouterStream::accept) with options.
    pub fn accept_with(
        inbound: Streaming<StreamRequest>,
        opts: &StreamOptions,
    ) -> (RouterStream, ResponseStream) {
        let (handle, outbound) = Outbound::channel();
        let stream = RouterStream::from_parts(
            ReadState::Open(Inbound::Servicer(inbound)),
            Side::Servicer,
            opts,
            handle,
        );
        (stream, ResponseStream(outbound))
    }

    /// The largest DATA payload this stream sends in one frame.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Whether the peer has finished writing (its GOAWAY was read).
    pub fn is_read_closed(&self) -> bool {
        matches!(self.read, ReadState::Eof(_))
    }

    /// The error that ended the call, if one did.
    pub fn error(&self) -> Option<&Error> {
        self.error.as_ref()
    }

    /// Closes the stream gracefully and waits until the call is over: shuts down the write
    /// half (GOAWAY), reads until the peer's GOAWAY (**discarding** data that still arrives),
    /// then waits for the end of the call (client: the router's final status, which it sends
    /// once it has all of this side's frames; servicer: tonic has taken the whole response).
    ///
    /// Call it before a process exits after a transfer: `poll_shutdown` only hands the frames
    /// to the HTTP/2 connection, which a process exit would cut short.
    ///
    /// # Errors
    ///
    /// The stream's error, if the call fails before both sides sent GOAWAY. After that, an
    /// error status (Jumpstarter's Python peers end clean sessions with `ABORTED`) is ignored.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: calling it again resumes where it stopped.
    pub async fn close(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_close(cx)).await
    }

    /// Poll form of [`close`](RouterStream::close).
    pub fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut *self).poll_shutdown(cx))?;
        // Read to the peer's GOAWAY, discarding data.
        loop {
            ready!(self.poll_fill(cx))?;
            if self.chunk.is_empty() {
                break;
            }
            self.chunk = Bytes::new();
        }
        // Drain the call itself: frames after GOAWAY and the final status are ignored.
        if let ReadState::Eof(Some(inbound)) = &mut self.read {
            while let Some(Ok(_)) = ready!(inbound.poll_frame(cx)) {}
            self.read = ReadState::Eof(None);
            self.on_read_done();
        }
        // Wait until tonic has taken every frame of ours (the sender side is dropped).
        self.tx = None;
        let _ = ready!(Pin::new(&mut self.outbound_done).poll(cx));
        Poll::Ready(Ok(()))
    }

    // ----- read half -----

    /// Reads the next chunk of the stream without copying: a DATA payload, or what is left
    /// of one after earlier reads. `Ok(None)` is EOF (the peer sent GOAWAY).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a chunk is taken only when this returns it.
    pub async fn read_chunk(&mut self) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.poll_read_chunk(cx)).await
    }

    /// Poll form of [`read_chunk`](RouterStream::read_chunk).
    pub fn poll_read_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        ready!(self.poll_fill(cx))?;
        if self.chunk.is_empty() {
            Poll::Ready(Ok(None))
        } else {
            Poll::Ready(Ok(Some(std::mem::take(&mut self.chunk))))
        }
    }

    /// Makes `self.chunk` non-empty, or returns `Ready(Ok(()))` with it empty at EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.chunk.is_empty() {
            return Poll::Ready(Ok(()));
        }
        if self.keepalive.is_some() {
            self.poll_keepalive(cx);
        }
        loop {
            let inbound = match &mut self.read {
                ReadState::Open(inbound) => inbound,
                ReadState::Connecting(_) => {
                    ready!(self.poll_connecting(cx, Half::Read));
                    continue;
                }
                ReadState::Eof(_) => return Poll::Ready(Ok(())),
                ReadState::Failed => return Poll::Ready(Err(self.sticky_error())),
            };
            match ready!(inbound.poll_frame(cx)) {
                Some(Ok(Frame::Data(payload))) => {
                    if !payload.is_empty() {
                        self.chunk = payload;
                        return Poll::Ready(Ok(()));
                    }
                    // Empty DATA is never EOF (Jumpstarter's Python routers turn PING into it).
                }
                Some(Ok(Frame::GoAway(_))) => {
                    let inbound = match std::mem::replace(&mut self.read, ReadState::Eof(None)) {
                        ReadState::Open(inbound) => Some(inbound),
                        _ => None,
                    };
                    self.read = ReadState::Eof(inbound);
                    self.on_read_done();
                    return Poll::Ready(Ok(()));
                }
                Some(Ok(Frame::RstStream(_))) => {
                    return Poll::Ready(Err(self.fail(Error::Reset)));
                }
                Some(Ok(Frame::Ping(_))) => tracing::trace!("router stream: PING"),
                Some(Ok(Frame::Unknown { frame_type, .. })) => {
                    tracing::trace!(frame_type, "router stream: ignoring unknown frame type");
                }
                Some(Err(status)) => return Poll::Ready(Err(self.fail(Error::Status(status)))),
                None => return Poll::Ready(Err(self.fail(Error::UnexpectedEnd))),
            }
        }
    }

    /// Polls the pending call from either half; on success the read half is `Open`.
    fn poll_connecting(&mut self, cx: &mut Context<'_>, half: Half) -> Poll<()> {
        let ReadState::Connecting(call) = &mut self.read else {
            return Poll::Ready(());
        };
        // Both halves may wait for the call (a split stream: two tasks); wake both.
        let wakers = self.connect_wakers.get_or_insert_with(Default::default);
        wakers.register(half, cx.waker());
        let waker = Waker::from(wakers.clone());
        let result = ready!(call.as_mut().poll(&mut Context::from_waker(&waker)));
        self.connect_wakers = None;
        match result {
            Ok(response) => self.read = ReadState::Open(Inbound::Client(response.into_inner())),
            Err(status) => {
                self.fail(Error::Status(status));
            }
        }
        Poll::Ready(())
    }

    fn poll_keepalive(&mut self, cx: &mut Context<'_>) {
        let Some(ka) = &mut self.keepalive else {
            return;
        };
        while ka.sleep.as_mut().poll(cx).is_ready() {
            let next = tokio::time::Instant::now() + ka.every;
            ka.sleep.as_mut().reset(next);
            if self.write == WriteState::Open && self.error.is_none() {
                if let Some(tx) = self.tx.as_ref().and_then(|tx| tx.get_ref()) {
                    // A full channel means data is flowing: no PING needed.
                    let _ = tx.try_send(Frame::ping());
                }
            }
        }
    }

    /// Records the first error of the call and returns it as an `io::Error`.
    fn fail(&mut self, err: Error) -> io::Error {
        if self.error.is_none() {
            match &err {
                Error::Status(s) => {
                    tracing::debug!(code = ?s.code(), message = s.message(), "router stream failed")
                }
                other => tracing::debug!(error = %other, "router stream failed"),
            }
            self.error = Some(err);
        }
        self.read = ReadState::Failed;
        self.chunk = Bytes::new();
        self.on_read_done();
        self.sticky_error()
    }

    fn sticky_error(&self) -> io::Error {
        match &self.error {
            Some(e) => e.clone().into(),
            None => Error::UnexpectedEnd.into(),
        }
    }

    /// The read half is done. A servicer whose write half is shut down may now end its
    /// response.
    fn on_read_done(&mut self) {
        if self.side == Side::Servicer && self.write == WriteState::Closed {
            self.tx = None;
        }
    }

    // ----- write half -----

    fn check_writable(&self) -> io::Result<()> {
        if let Some(e) = &self.error {
            return Err(e.clone().into());
        }
        if self.write != WriteState::Open {
            return Err(Error::WriteAfterShutdown.into());
        }
        Ok(())
    }

    /// Queues one frame. Pending while the frames in flight are used up.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        frame: impl FnOnce(&mut Self) -> Frame,
    ) -> Poll<io::Result<()>> {
        let Some(tx) = self.tx.as_mut() else {
            return Poll::Ready(Err(self.call_ended()));
        };
        match tx.poll_reserve(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => {
                self.take_final_status(cx);
                return Poll::Ready(Err(self.call_ended()));
            }
            Poll::Pending => {
                // The request may not be dispatched yet if nobody reads: drive the call.
                ready!(self.drive_call(cx))?;
                return Poll::Pending;
            }
        }
        let frame = frame(self);
        let tx = self.tx.as_mut().expect("checked above");
        if tx.send_item(frame).is_err() {
            return Poll::Ready(Err(self.call_ended()));
        }
        Poll::Ready(Ok(()))
    }

    /// While the call is pending, polls it so the request goes out even when nobody reads.
    pub(crate) fn drive_call(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if matches!(self.read, ReadState::Connecting(_)) {
            let _ = self.poll_connecting(cx, Half::Write);
            if let Some(e) = &self.error {
                return Poll::Ready(Err(e.clone().into()));
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_send_buffered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        debug_assert!(!self.wbuf.is_empty());
        self.poll_send(cx, |me| Frame::Data(me.wbuf.split().freeze()))
    }

    /// The call ended under the write half after the peer's GOAWAY (nobody reads any more):
    /// takes its final status, so the writer gets the real error (a reset, an abort) rather
    /// than a bare "call ended".
    fn take_final_status(&mut self, cx: &mut Context<'_>) {
        if self.error.is_some() {
            return;
        }
        let ReadState::Eof(Some(inbound)) = &mut self.read else {
            return;
        };
        let status = loop {
            match inbound.poll_frame(cx) {
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(status))) => break status,
                Poll::Ready(None) | Poll::Pending => return,
            }
        };
        self.error = Some(Error::Status(status));
    }

    fn call_ended(&self) -> io::Error {
        match &self.error {
            Some(e) => e.clone().into(),
            None => Error::CallEnded.into(),
        }
    }

    /// Copies as much of `buf` as fits in the current frame; returns the count.
    fn buffer(&mut self, buf: &[u8]) -> usize {
        let n = buf.len().min(self.max_payload - self.wbuf.len());
        if self.wbuf.capacity() - self.wbuf.len() < n {
            // Reserve a whole frame at once: frames built from many small writes never
            // reallocate, and the rest of the allocation serves the next frames.
            self.wbuf.reserve(self.max_payload.max(n));
        }
        self.wbuf.extend_from_slice(&buf[..n]);
        n
    }

    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        mut fill: impl FnMut(&mut Self) -> usize,
    ) -> Poll<io::Result<usize>> {
        self.check_writable()?;
        if self.wbuf.len() >= self.max_payload {
            ready!(self.poll_send_buffered(cx))?;
        }
        let n = fill(self);
        if self.wbuf.len() >= self.max_payload {
            // Send a full frame at once if there is room; errors show on the next call.
            if let Poll::Ready(Err(e)) = self.poll_send_buffered(cx) {
                tracing::trace!(error = %e, "router stream: send after write failed");
            }
        }
        Poll::Ready(Ok(n))
    }
}

#[derive(Clone, Copy)]
enum Half {
    Read,
    Write,
}

impl AsyncRead for RouterStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        ready!(me.poll_fill(cx))?;
        let n = me.chunk.len().min(buf.remaining());
        buf.put_slice(&me.chunk[..n]);
        me.chunk.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncBufRead for RouterStream {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let me = self.get_mut();
        ready!(me.poll_fill(cx))?;
        Poll::Ready(Ok(&me.chunk[..]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let me = self.get_mut();
        me.chunk.advance(amt.min(me.chunk.len()));
    }
}

impl AsyncWrite for RouterStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.get_mut().poll_write_with(cx, |me| me.buffer(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        self.get_mut().poll_write_with(cx, |me| {
            let mut total = 0;
            for b in bufs {
                let n = me.buffer(b);
                total += n;
                if n < b.len() {
                    break;
                }
            }
            total
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if let Some(e) = &me.error {
            return Poll::Ready(Err(e.clone().into()));
        }
        if !me.wbuf.is_empty() {
            ready!(me.poll_send_buffered(cx))?;
        }
        me.drive_call(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            match me.write {
                WriteState::Open => {
                    if let Some(e) = &me.error {
                        return Poll::Ready(Err(e.clone().into()));
                    }
                    if !me.wbuf.is_empty() {
                        ready!(me.poll_send_buffered(cx))?;
                    }
                    me.write = WriteState::GoingAway;
                }
                WriteState::GoingAway => {
                    ready!(me.poll_send(cx, |_| Frame::go_away()))?;
                    me.write = WriteState::Closed;
                    let read_done = matches!(me.read, ReadState::Eof(_) | ReadState::Failed);
                    if me.side == Side::Client || read_done {
                        // Client: the end of the request stream. Servicer: the response ends
                        // only once the read half is done as well.
                        me.tx = None;
                    }
                }
                WriteState::Closed => return me.drive_call(cx),
            }
        }
    }
}

impl Drop for RouterStream {
    fn drop(&mut self) {
        if self.write != WriteState::Closed && self.error.is_none() {
            // Abortive close: the outbound stream sends RST_STREAM after what is queued, and
            // (servicer) ends the response with an error status. The client's call is
            // cancelled when its response stream is dropped with this.
            tracing::debug!(side = ?self.side, "router stream dropped without shutdown: aborting");
            // Client: once the response headers are in, the request outlives this stream in
            // hyper's body task for a moment (see `RequestStream::poll_linger`), so the
            // RST_STREAM frame is sent rather than lost in an HTTP/2 cancel. The response is
            // dropped here, freeing its flow-control window. Before the headers, dropping the
            // call makes hyper cancel the HTTP/2 stream, which the router reports as an abort.
            if let ReadState::Connecting(call) = &mut self.read {
                // Headers already in: take (and drop) the response, so the call is not cancelled.
                let _ = call.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            }
            self.abort.store(true, Ordering::Release);
        }
    }
}

impl fmt::Debug for RouterStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let read = match &self.read {
            ReadState::Connecting(_) => "Connecting",
            ReadState::Open(_) => "Open",
            ReadState::Eof(_) => "Eof",
            ReadState::Failed => "Failed",
        };
        f.debug_struct("RouterStream")
            .field("side", &self.side)
            .field("read", &read)
            .field("write", &self.write)
            .field("buffered_read", &self.chunk.len())
            .field("buffered_write", &self.wbuf.len())
            .field("error", &self.error)
            .finish()
    }
}

// ===== impl ConnectWakers =====

/// Fans one wake-up of the pending call out to the reader and the writer.
#[derive(Default)]
struct ConnectWakers {
    slots: Mutex<[Option<Waker>; 2]>,
}

impl ConnectWakers {
    fn register(&self, half: Half, waker: &Waker) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = &mut slots[half as usize];
        match slot {
            Some(w) if w.will_wake(waker) => {}
            _ => *slot = Some(waker.clone()),
        }
    }
}

impl Wake for ConnectWakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let taken = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            [slots[0].take(), slots[1].take()]
        };
        // Woken outside the lock.
        for w in taken.into_iter().flatten() {
            w.wake();
        }
    }
}

// ===== impl Outbound =====

/// How long a dropped client stream's request stays open after its RST_STREAM frame, so h2
/// sends the frame before the stream is released. Then the request ends without GOAWAY,
/// which a router takes for an abort (the peer has read the RST_STREAM by then); a server
/// that ends the call sooner ends the wait.
const LINGER: Duration = Duration::from_secs(1);

/// The frames a [`RouterStream`] sends, as the message stream tonic encodes.
struct Outbound {
    rx: mpsc::Receiver<Frame>,
    abort: Arc<AtomicBool>,
    state: OutboundState,
    /// Dropped with the outbound stream: tells [`RouterStream::close`] that tonic is done.
    _done: oneshot::Sender<()>,
}

/// The writer's ends of an outbound stream.
type OutboundHandle = (mpsc::Sender<Frame>, Arc<AtomicBool>, oneshot::Receiver<()>);

enum OutboundState {
    Frames,
    /// Dropped without shutdown: RST_STREAM sent, the error status comes next (servicer).
    Aborting,
    Done,
}

/// What the outbound stream yields next.
enum Next {
    Frame(Frame),
    Abort,
    End,
}

impl Outbound {
    fn channel() -> (OutboundHandle, Outbound) {
        let (tx, rx) = mpsc::channel(CHANNEL_FRAMES);
        let abort = Arc::new(AtomicBool::new(false));
        let (done_tx, done_rx) = oneshot::channel();
        let outbound = Outbound {
            rx,
            abort: abort.clone(),
            state: OutboundState::Frames,
            _done: done_tx,
        };
        ((tx, abort, done_rx), outbound)
    }

    fn poll_next_frame(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        match self.state {
            OutboundState::Frames => match ready!(self.rx.poll_recv(cx)) {
                Some(frame) => Poll::Ready(Next::Frame(frame)),
                None if self.abort.load(Ordering::Acquire) => {
                    self.state = OutboundState::Aborting;
                    Poll::Ready(Next::Frame(Frame::rst_stream()))
                }
                None => {
                    self.state = OutboundState::Done;
                    Poll::Ready(Next::End)
                }
            },
            OutboundState::Aborting => {
                self.state = OutboundState::Done;
                Poll::Ready(Next::Abort)
            }
            OutboundState::Done => Poll::Ready(Next::End),
        }
    }
}

/// The request stream of a client call: the frames the [`RouterStream`] writes.
///
/// Made by the client constructors and passed to tonic; you only see it when you make the call
/// yourself with [`RouterStream::from_call`].
pub struct RequestStream {
    outbound: Outbound,
    /// After an abort: how long the request may stay open to get RST_STREAM out.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl RequestStream {
    fn new(outbound: Outbound) -> Self {
        RequestStream {
            outbound,
            linger: None,
        }
    }

    /// After RST_STREAM: keeps the request open for [`LINGER`] (hyper holds the HTTP/2
    /// stream while it polls the request), then ends it. hyper stops polling sooner when the
    /// server resets the stream after ending the call.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<Option<StreamRequest>> {
        let deadline = self
            .linger
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(LINGER)));
        ready!(deadline.as_mut().poll(cx));
        Poll::Ready(None)
    }
}

impl Stream for RequestStream {
    type Item = StreamRequest;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamRequest>> {
        let me = self.get_mut();
        if me.linger.is_some() {
            return me.poll_linger(cx);
        }
        match ready!(me.outbound.poll_next_frame(cx)) {
            Next::Frame(f) => Poll::Ready(Some(f.into())),
            // RST_STREAM was handed over: keep the request open a moment, then end it.
            Next::Abort => me.poll_linger(cx),
            Next::End => Poll::Ready(None),
        }
    }
}

impl fmt::Debug for RequestStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestStream").finish_non_exhaustive()
    }
}

/// The response stream of a servicer's `Stream` call, made by [`RouterStream::accept`]:
/// return it from your `RouterService::stream` in a `tonic::Response`.
///
/// It ends (status OK) once the [`RouterStream`] was shut down and its read half is done, or
/// the stream was dropped after shutdown. A stream dropped without shutdown ends it with
/// RST_STREAM and then status `Cancelled`.
pub struct ResponseStream(Outbound);

impl Stream for ResponseStream {
    type Item = Result<StreamResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match ready!(self.get_mut().0.poll_next_frame(cx)) {
            Next::Frame(f) => Poll::Ready(Some(Ok(f.into()))),
            Next::Abort => Poll::Ready(Some(Err(Error::Dropped.into()))),
            Next::End => Poll::Ready(None),
        }
    }
}

impl fmt::Debug for ResponseStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseStream").finish_non_exhaustive()
    }
}
