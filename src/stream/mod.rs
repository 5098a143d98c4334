//! [`RouterStream`]: a router stream as a tokio byte stream.
//!
//! # Layout
//!
//! - `stream/mod.rs`: the state machine of the two halves and the tokio I/O traits, and
//!   [`RouterStream::from_frames`] over any frame transport;
//! - `stream/call.rs`: the client side of a call: [`RouterStream::from_call`] over tonic's
//!   generated client, and the raw call of the client constructors (feature `client`): the
//!   request body as the writer builds it, the response body read where it lies with the
//!   shared scanner (`src/wire.rs`), HTTP's and gRPC's statuses as tonic's client maps them;
//! - `stream/accept.rs`: the servicer side of a call, [`RouterStream::accept`];
//! - `stream/inbound.rs`: [`CallFrames`], the frames of a call as the read half takes them;
//! - `stream/outbound.rs`: the frames the write half sends: each DATA frame is built in place
//!   as its whole gRPC message, which the raw call sends as it is and tonic's request or
//!   response stream ([`RequestStream`], [`ResponseStream`]) or [`SentFrames`] take the
//!   payload of, as a slice;
//! - `stream/options.rs`: [`StreamOptions`];
//! - `stream/tests.rs`: the state machine driven by scripted frames.
//!
//! # State machine
//!
//! Each half has one state enum, and each state owns what it uses. A poll function works out
//! the result and the next state and assigns the state in one place.
//!
//! The read half ([`ReadState`]):
//!
//! ```text
//!                   response headers                  GOAWAY
//!  Connecting ────────────────────────► Open ────────────────────► Eof
//!  { call, wakers }                     (frames)                   (frames, kept, not polled)
//!  (client only)                         │ │
//!       │ error status                   │ └─ DATA: hand the payload out (empty: skip)
//!       │                                │    PING, unknown: skip
//!       │       RST_STREAM, error status │
//!       │      end of the call w/o GOAWAY│
//!       └─────────────────► Failed ◄─────┘
//! ```
//!
//! The write half ([`WriteState`]):
//!
//! ```text
//!        poll_shutdown: flush             GOAWAY queued
//!  Open ────────────────────► GoingAway ─────────────────┬──────────────► Ended
//!  (sender)                   (sender)                   │                (no sender: the
//!   │ poll_write: coalesce into one DATA frame (its      │ servicer,      outbound stream
//!   │ message header's room first), sent when full or    │ read half      ends)
//!   │ on poll_flush                                      │
//!   │                                                    ▼ not done  read
//!   │                                               HalfClosed ──────► Ended
//!   │                                               (sender)    done
//!   │ the call ended, or the read half failed: Failed          (from any state)
//!   └─ drop before GOAWAY: RST_STREAM, then the call is cancelled
//! ```
//!
//! The first error of the call (an error status, RST_STREAM, an end without GOAWAY) fails both
//! halves, and every later call on either half returns it. It is stored once, in
//! `RouterStream::failure`, by [`RouterStream::fail`]: the `Failed` states carry no copy. The
//! one other error kept is the read half's own cause when the writer failed first only
//! because the call had ended ([`Error::CallEnded`]): reads report why it ended. A read half
//! that reached EOF first stays at EOF.

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
use tokio::sync::oneshot;
use tokio_util::sync::PollSender;
use tonic::Status;

use crate::{Error, Frame};

mod accept;
mod call;
mod inbound;
mod options;
mod outbound;

pub use inbound::CallFrames;
pub use options::{StreamOptions, DEFAULT_MAX_PAYLOAD, MAX_PAYLOAD_LIMIT};
pub use outbound::{RequestStream, ResponseStream, SentFrames};

use outbound::{Handle, Outbound, Queued, HEADROOM};

/// The pending call of a client stream; resolves to its inbound frames.
type CallFuture<S> = Pin<Box<dyn Future<Output = Result<S, Status>> + Send>>;

/// A router stream: the bytes of one Jumpstarter router stream as a tokio
/// [`AsyncRead`] + [`AsyncBufRead`] + [`AsyncWrite`] duplex.
///
/// Client side: [`connect`](crate::connect) (feature `client`) or
/// [`RouterStream::from_call`] over any tonic client. Servicer side (an exporter answering
/// `Stream` calls itself): [`RouterStream::accept`]. Any other frame transport:
/// [`RouterStream::from_frames`], which is what `S` is for (as tokio-util's `StreamReader` is
/// generic over its stream); it is [`CallFrames`] for tonic calls.
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
///   A GOAWAY with a payload is the router's word that the peer went (its process killed,
///   its call cancelled, its connection lost, a reset: Jumpstarter's peers end a session only
///   on a GOAWAY, so the router sends one): reads, writes and shutdown fail with
///   [`io::ErrorKind::ConnectionAborted`] and [`Error::PeerGone`], the reason inside. After
///   a bare GOAWAY, an error status that ends the call fails the next write, flush or
///   shutdown.
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
pub struct RouterStream<S = CallFrames> {
    read: ReadState<S>,
    /// DATA payload not yet handed out.
    chunk: Bytes,
    write: WriteState,
    /// Coalesced bytes of the next DATA frame.
    wbuf: BytesMut,
    max_payload: usize,
    ping_timer: Option<PingTimer>,
    /// What ending the outbound stream does to the call.
    end_of_outbound: EndOfOutbound,
    /// Set when dropped before GOAWAY: the outbound stream then ends with RST_STREAM.
    abort: Arc<AtomicBool>,
    /// Resolves (with an error) once the outbound stream is dropped: every frame was handed
    /// to the transport. `None` once it has.
    outbound_done: Option<oneshot::Receiver<()>>,
    /// The error that ended the call, for both halves (their `Failed` states): set by
    /// [`fail`](RouterStream::fail) only, once.
    failure: Option<Error>,
    /// The read half's cause when it differs from `failure` (the writer found the call ended
    /// first): set by [`end_read`](RouterStream::end_read) only.
    read_cause: Option<Error>,
}

/// The read half. See the module docs for the diagram.
enum ReadState<S> {
    /// Client: the call is made, its response headers have not arrived. Writes go on; both
    /// halves poll the call, and `wakers` wakes both.
    Connecting {
        call: CallFuture<S>,
        wakers: Arc<ConnectWakers>,
    },
    /// Frames are read from the inbound stream.
    Open(S),
    /// The peer sent GOAWAY. The inbound stream is kept (not polled) so the call stays up
    /// while the write half is in use, and so a writer can find the call's final status;
    /// `None` once [`RouterStream::close`] drained it.
    Eof(Option<S>),
    /// The call failed: [`RouterStream::read_cause`], else [`RouterStream::failure`], says
    /// why.
    Failed,
}

/// The write half. See the module docs for the diagram.
enum WriteState {
    /// Writes are coalesced and sent as DATA frames.
    Open(PollSender<Queued>),
    /// `poll_shutdown` flushed the last DATA frame; GOAWAY is not queued yet.
    GoingAway(PollSender<Queued>),
    /// GOAWAY is queued; the outbound stream is held open until the read half is done,
    /// because ending it ends the call ([`EndOfOutbound::EndsCall`]).
    HalfClosed {
        /// Not used to send: held so that the outbound stream does not end.
        _held_open: PollSender<Queued>,
    },
    /// GOAWAY is queued and the outbound stream ends.
    Ended,
    /// The call failed, or ended under the writer: [`RouterStream::failure`] says why.
    Failed,
}

/// What the end of the outbound stream means to the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EndOfOutbound {
    /// Client: the end of the request stream is HTTP/2's END_STREAM; the response goes on.
    HalfCloses,
    /// Servicer (and other transports): the end of the response stream ends the call.
    EndsCall,
}

/// How a read of the inbound stream ended the read half.
enum ReadEnd {
    Eof,
    Failed(Error),
}

struct PingTimer {
    every: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

#[derive(Clone, Copy)]
enum Half {
    Read,
    Write,
}

// ===== impl RouterStream =====

impl<S> RouterStream<S> {
    fn from_parts(
        read: ReadState<S>,
        end_of_outbound: EndOfOutbound,
        opts: &StreamOptions,
        handle: Handle,
    ) -> Self {
        RouterStream {
            read,
            chunk: Bytes::new(),
            write: WriteState::Open(PollSender::new(handle.tx)),
            wbuf: BytesMut::new(),
            max_payload: opts.max_payload,
            ping_timer: opts.ping_interval.map(|every| PingTimer {
                every,
                sleep: Box::pin(tokio::time::sleep(every)),
            }),
            end_of_outbound,
            abort: handle.abort,
            outbound_done: Some(handle.done),
            failure: None,
            read_cause: None,
        }
    }

    /// Records why the call failed, unless it failed before (the first error stays), and
    /// fails the write half (the read half fails in [`end_read`](RouterStream::end_read), as
    /// it reads what came before); returns the error the write half reports from now on.
    fn fail(&mut self, error: Error) -> io::Error {
        if self.failure.is_none() {
            self.failure = Some(error);
        }
        self.write = WriteState::Failed;
        self.failed()
    }

    /// The stored error, as the `io::Error` the failed write half returns.
    fn failed(&self) -> io::Error {
        // `failure` is set whenever a half is `Failed`; `CallEnded` is the honest fallback.
        self.failure.clone().unwrap_or(Error::CallEnded).into()
    }

    /// The error the failed read half returns: its own cause.
    fn read_failed(&self) -> io::Error {
        match &self.read_cause {
            Some(cause) => cause.clone().into(),
            None => self.failed(),
        }
    }

    /// Payload bytes in the frame being built (after its header's room).
    fn buffered(&self) -> usize {
        self.wbuf.len().saturating_sub(HEADROOM)
    }

    /// The largest DATA payload this stream sends in one frame.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// The inbound frame source, while the read half reads from it: `None` while a client
    /// call waits for its response headers, after a failure, and once
    /// [`close`](RouterStream::close) drained it.
    pub fn get_ref(&self) -> Option<&S> {
        match &self.read {
            ReadState::Open(inbound) | ReadState::Eof(Some(inbound)) => Some(inbound),
            _ => None,
        }
    }

    /// The inbound frame source, mutably (see [`get_ref`](RouterStream::get_ref)). Taking
    /// frames from it directly bypasses the stream.
    pub fn get_mut(&mut self) -> Option<&mut S> {
        match &mut self.read {
            ReadState::Open(inbound) | ReadState::Eof(Some(inbound)) => Some(inbound),
            _ => None,
        }
    }

    /// Takes the inbound frame source out (see [`get_ref`](RouterStream::get_ref)) and drops
    /// the rest of the stream: a DATA payload not yet read is lost, and a write half not shut
    /// down aborts, as on drop.
    pub fn into_inner(mut self) -> Option<S> {
        match std::mem::replace(&mut self.read, ReadState::Eof(None)) {
            ReadState::Open(inbound) | ReadState::Eof(Some(inbound)) => Some(inbound),
            other => {
                // A client call still connecting stays, for `Drop` to settle.
                self.read = other;
                None
            }
        }
    }

    /// Whether the peer has finished writing (its GOAWAY was read).
    pub fn is_read_closed(&self) -> bool {
        matches!(self.read, ReadState::Eof(_))
    }

    /// The error that ended the call, if one did: the first one, which never changes.
    pub fn error(&self) -> Option<&Error> {
        self.failure.as_ref()
    }
}

impl<S> RouterStream<S>
where
    S: Stream<Item = Result<Frame, Status>> + Unpin,
{
    /// A stream over any frame transport: `inbound` yields the peer's frames (an `Err`
    /// fails the stream like an error status), and the returned [`SentFrames`] yields the
    /// frames to send. Ending the sent frames ends the transport's call, so they end only
    /// once both halves are done, as on the servicer side of a gRPC call.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// use bytes::Bytes;
    /// use jumpstarter_router::{Frame, RouterStream, StreamOptions};
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// use futures_util::StreamExt;
    ///
    /// let peer = futures_util::stream::iter([
    ///     Ok(Frame::Data(Bytes::from_static(b"hi"))),
    ///     Ok(Frame::go_away()),
    /// ]);
    /// let (mut stream, mut sent) = RouterStream::from_frames(peer, &StreamOptions::new());
    /// let mut got = String::new();
    /// stream.read_to_string(&mut got).await?;
    /// assert_eq!(got, "hi");
    /// stream.write_all(b"bye").await?;
    /// stream.shutdown().await?;
    /// assert_eq!(sent.next().await.unwrap().unwrap(), Frame::Data(Bytes::from_static(b"bye")));
    /// assert_eq!(sent.next().await.unwrap().unwrap(), Frame::go_away());
    /// # Ok(()) }
    /// ```
    pub fn from_frames(inbound: S, opts: &StreamOptions) -> (RouterStream<S>, SentFrames) {
        let (handle, outbound) = Outbound::channel();
        let stream = RouterStream::from_parts(
            ReadState::Open(inbound),
            EndOfOutbound::EndsCall,
            opts,
            handle,
        );
        (stream, SentFrames(outbound))
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
            while let Some(Ok(_)) = ready!(Pin::new(&mut *inbound).poll_next(cx)) {}
            self.read = ReadState::Eof(None);
        }
        // Our outbound stream ends here, and tonic drops it once it took every frame.
        if !matches!(self.write, WriteState::Failed) {
            self.write = WriteState::Ended;
        }
        if let Some(done) = &mut self.outbound_done {
            let _ = ready!(Pin::new(done).poll(cx));
            // Not polled again: a second close returns at once.
            self.outbound_done = None;
        }
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
        self.poll_ping_timer(cx);
        let end = loop {
            let inbound = match &mut self.read {
                ReadState::Open(inbound) => inbound,
                ReadState::Connecting { .. } => {
                    ready!(self.poll_connecting(cx, Half::Read));
                    continue;
                }
                ReadState::Eof(_) => return Poll::Ready(Ok(())),
                ReadState::Failed => return Poll::Ready(Err(self.read_failed())),
            };
            match ready!(Pin::new(inbound).poll_next(cx)) {
                Some(Ok(Frame::Data(payload))) if !payload.is_empty() => {
                    self.chunk = payload;
                    return Poll::Ready(Ok(()));
                }
                // Empty DATA is never EOF (Jumpstarter's Python routers turn PING into it).
                Some(Ok(Frame::Data(_))) => {}
                Some(Ok(Frame::Ping(_))) => tracing::trace!("router stream: PING"),
                Some(Ok(Frame::Unknown { frame_type, .. })) => {
                    tracing::trace!(frame_type, "router stream: ignoring unknown frame type");
                }
                // The router's GOAWAY on behalf of a peer that went carries the reason; a
                // peer's own has none.
                Some(Ok(Frame::GoAway(reason))) if !reason.is_empty() => {
                    let reason = String::from_utf8_lossy(&reason).into_owned();
                    break ReadEnd::Failed(Error::PeerGone(reason));
                }
                Some(Ok(Frame::GoAway(_))) => break ReadEnd::Eof,
                Some(Ok(Frame::RstStream(_))) => break ReadEnd::Failed(Error::Reset),
                Some(Err(status)) => break ReadEnd::Failed(Error::Status(status)),
                None => break ReadEnd::Failed(Error::UnexpectedEnd),
            }
        };
        Poll::Ready(self.end_read(end))
    }

    /// The read half is done: the one place it leaves `Open` (or `Connecting`, on an error).
    fn end_read(&mut self, end: ReadEnd) -> io::Result<()> {
        let (result, read) = match end {
            ReadEnd::Eof => {
                let inbound = match std::mem::replace(&mut self.read, ReadState::Eof(None)) {
                    ReadState::Open(inbound) => Some(inbound),
                    _ => None,
                };
                (Ok(()), ReadState::Eof(inbound))
            }
            ReadEnd::Failed(error) => {
                match &error {
                    Error::Status(s) => {
                        tracing::debug!(code = ?s.code(), message = s.message(), "router stream failed")
                    }
                    other => tracing::debug!(error = %other, "router stream failed"),
                }
                // Sticky for both halves. A writer that failed first (the call had ended)
                // keeps its error; the reader reports why the call ended.
                self.read = ReadState::Failed;
                if self.failure.is_some() {
                    self.read_cause = Some(error);
                } else {
                    self.fail(error);
                }
                return Err(self.read_failed());
            }
        };
        self.read = read;
        // A write half that held the outbound stream open for the read half lets it end.
        if matches!(self.write, WriteState::HalfClosed { .. }) {
            self.write = WriteState::Ended;
        }
        result
    }

    /// Polls the pending call from either half; on success the read half is `Open`.
    fn poll_connecting(&mut self, cx: &mut Context<'_>, half: Half) -> Poll<()> {
        let ReadState::Connecting { call, wakers } = &mut self.read else {
            return Poll::Ready(());
        };
        // Both halves may wait for the call (a split stream: two tasks); wake both.
        wakers.register(half, cx.waker());
        let waker = Waker::from(wakers.clone());
        match ready!(call.as_mut().poll(&mut Context::from_waker(&waker))) {
            Ok(inbound) => self.read = ReadState::Open(inbound),
            Err(status) => {
                let _ = self.end_read(ReadEnd::Failed(Error::Status(status)));
            }
        }
        Poll::Ready(())
    }

    fn poll_ping_timer(&mut self, cx: &mut Context<'_>) {
        let Some(ka) = &mut self.ping_timer else {
            return;
        };
        while ka.sleep.as_mut().poll(cx).is_ready() {
            let next = tokio::time::Instant::now() + ka.every;
            ka.sleep.as_mut().reset(next);
            if let WriteState::Open(tx) = &self.write {
                if let Some(tx) = tx.get_ref() {
                    // A full channel means data is flowing: no PING needed.
                    let _ = tx.try_send(Queued::Frame(Frame::ping()));
                }
            }
        }
    }

    // ----- write half -----

    /// While the call is pending, polls it so the request goes out even when nobody reads.
    fn drive_call(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if matches!(self.read, ReadState::Connecting { .. }) {
            let _ = self.poll_connecting(cx, Half::Write);
            if let WriteState::Failed = self.write {
                return Err(self.failed());
            }
        }
        Ok(())
    }

    /// Whether the write half takes payload bytes (it is `Open`); if not, why not.
    fn writable(&self) -> io::Result<()> {
        match self.write {
            WriteState::Open(_) => Ok(()),
            _ => Err(self.not_writable()),
        }
    }

    /// Why the write half takes nothing more: its failure, or else the shutdown.
    fn not_writable(&self) -> io::Error {
        match self.write {
            WriteState::Failed => self.failed(),
            _ => Error::WriteAfterShutdown.into(),
        }
    }

    /// Queues one frame from `Open` or `GoingAway`. Pending while the frames in flight are
    /// used up.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        frame: impl FnOnce(&mut BytesMut) -> Queued,
    ) -> Poll<io::Result<()>> {
        self.check_final_status(cx);
        let tx = match &mut self.write {
            WriteState::Open(tx) | WriteState::GoingAway(tx) => tx,
            _ => return Poll::Ready(Err(self.not_writable())),
        };
        let sent = match tx.poll_reserve(cx) {
            Poll::Ready(Ok(())) => tx.send_item(frame(&mut self.wbuf)).is_ok(),
            Poll::Ready(Err(_)) => false,
            Poll::Pending => {
                // The request may not be dispatched yet if nobody reads: drive the call.
                self.drive_call(cx)?;
                return Poll::Pending;
            }
        };
        if sent {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(self.call_ended(cx)))
        }
    }

    /// After the peer's GOAWAY nobody reads: a final error status that came since fails the
    /// write half now (every write and frame sent checks), rather than the bytes going nowhere.
    fn check_final_status(&mut self, cx: &mut Context<'_>) {
        if let Some(error) = self.poll_final_error(cx) {
            self.fail(error);
        }
    }

    /// After the peer's GOAWAY (read half at EOF), what the call did since, without waiting:
    /// an error status ends it (a router that sends GOAWAY, then an error, for a peer that
    /// went); frames after the GOAWAY are dropped; a clean end leaves nothing to poll.
    fn poll_final_error(&mut self, cx: &mut Context<'_>) -> Option<Error> {
        let ReadState::Eof(Some(inbound)) = &mut self.read else {
            return None;
        };
        loop {
            match Pin::new(&mut *inbound).poll_next(cx) {
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(status))) => {
                    tracing::debug!(code = ?status.code(), message = status.message(), "router stream: error status after the peer's GOAWAY");
                    self.read = ReadState::Eof(None);
                    return Some(Error::Status(status));
                }
                Poll::Ready(None) => {
                    self.read = ReadState::Eof(None);
                    return None;
                }
                Poll::Pending => return None,
            }
        }
    }

    /// The outbound stream is gone (the call ended under the writer): the write half fails
    /// with the call's final status when the read half can still see it (after the peer's
    /// GOAWAY nobody reads any more), so the writer gets the real error (a reset, an abort)
    /// rather than a bare "call ended".
    fn call_ended(&mut self, cx: &mut Context<'_>) -> io::Error {
        let error = self.poll_final_error(cx).unwrap_or(Error::CallEnded);
        self.fail(error)
    }

    fn poll_send_buffered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        debug_assert!(self.buffered() > 0);
        self.poll_send(cx, Queued::seal)
    }

    /// Copies as much of `buf` as fits in the current frame; returns the count. A frame is
    /// built in place as its gRPC message: [`HEADROOM`] bytes first, for the header that
    /// [`Queued::seal`] writes once the payload's length is known.
    fn buffer(&mut self, buf: &[u8]) -> usize {
        let n = buf.len().min(self.max_payload - self.buffered());
        if n == 0 {
            return 0;
        }
        self.reserve_frame(n);
        self.wbuf.extend_from_slice(&buf[..n]);
        n
    }

    /// Makes room for `n` more payload bytes in the frame being built, starting the frame
    /// (its header's room) when there is none; returns whether it started one.
    fn reserve_frame(&mut self, n: usize) -> bool {
        let starts = self.wbuf.is_empty();
        let head = if starts { HEADROOM } else { 0 };
        if self.wbuf.capacity() - self.wbuf.len() < head + n {
            // Reserve a whole frame at once: frames built from many small writes never
            // reallocate, and the rest of the allocation serves the next frames.
            self.wbuf.reserve(head + self.max_payload.max(n));
        }
        if starts {
            self.wbuf.extend_from_slice(&[0; HEADROOM]);
        }
        starts
    }

    /// Makes room in the frame being built: sends it first when it is full. For `write` and
    /// for [`bridge`](crate::bridge), with [`poll_fill_frame_from`](Self::poll_fill_frame_from).
    pub(crate) fn poll_frame_room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check_final_status(cx);
        self.writable()?;
        if self.buffered() >= self.max_payload {
            ready!(self.poll_send_buffered(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads from `io` straight into the frame being built, up to its room (no buffer in
    /// between: the upload side of [`bridge`](crate::bridge) saves a copy of every byte).
    /// Returns what was read, 0 at `io`'s EOF; call after
    /// [`poll_frame_room`](Self::poll_frame_room). The bytes count as written; a flush or a
    /// full frame sends them.
    pub(crate) fn poll_fill_frame_from<R>(
        &mut self,
        cx: &mut Context<'_>,
        io: Pin<&mut R>,
    ) -> Poll<io::Result<usize>>
    where
        R: AsyncRead + ?Sized,
    {
        self.writable()?;
        let room = self.max_payload.saturating_sub(self.buffered());
        if room == 0 {
            // A 0 would read as EOF: this is a caller's bug, not the end of `io`.
            return Poll::Ready(Err(io::Error::other(
                "the frame is full: poll_frame_room first",
            )));
        }
        let starts = self.reserve_frame(room);
        let read = {
            use bytes::BufMut;
            let mut limited = (&mut self.wbuf).limit(room);
            tokio_util::io::poll_read_buf(io, cx, &mut limited)
        };
        if starts && self.buffered() == 0 {
            // Nothing came: no frame was started.
            self.wbuf.clear();
        }
        read
    }

    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        fill: impl FnOnce(&mut Self) -> usize,
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_frame_room(cx))?;
        let n = fill(self);
        if self.buffered() >= self.max_payload {
            // Send a full frame at once if there is room; errors show on the next call.
            if let Poll::Ready(Err(e)) = self.poll_send_buffered(cx) {
                tracing::trace!(error = %e, "router stream: send after write failed");
            }
        }
        Poll::Ready(Ok(n))
    }
}

impl<S> AsyncRead for RouterStream<S>
where
    S: Stream<Item = Result<Frame, Status>> + Unpin,
{
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

impl<S> AsyncBufRead for RouterStream<S>
where
    S: Stream<Item = Result<Frame, Status>> + Unpin,
{
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

impl<S> AsyncWrite for RouterStream<S>
where
    S: Stream<Item = Result<Frame, Status>> + Unpin,
{
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
        if let WriteState::Failed = me.write {
            return Poll::Ready(Err(me.failed()));
        }
        if !me.wbuf.is_empty() {
            ready!(me.poll_send_buffered(cx))?;
        }
        Poll::Ready(me.drive_call(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        loop {
            let next = match std::mem::replace(&mut me.write, WriteState::Ended) {
                WriteState::Open(tx) if me.wbuf.is_empty() => WriteState::GoingAway(tx),
                WriteState::Open(tx) => {
                    me.write = WriteState::Open(tx);
                    ready!(me.poll_send_buffered(cx))?;
                    continue;
                }
                WriteState::GoingAway(tx) => {
                    me.write = WriteState::GoingAway(tx);
                    ready!(me.poll_send(cx, |_| Queued::Frame(Frame::go_away())))?;
                    let read_done = matches!(me.read, ReadState::Eof(_) | ReadState::Failed);
                    match (
                        me.end_of_outbound,
                        std::mem::replace(&mut me.write, WriteState::Ended),
                    ) {
                        // Servicer: the response ends only once the read half is done as well.
                        (EndOfOutbound::EndsCall, WriteState::GoingAway(tx)) if !read_done => {
                            WriteState::HalfClosed { _held_open: tx }
                        }
                        // Client: the end of the request stream.
                        _ => WriteState::Ended,
                    }
                }
                done @ (WriteState::HalfClosed { .. } | WriteState::Ended) => {
                    me.write = done;
                    return Poll::Ready(me.drive_call(cx));
                }
                WriteState::Failed => {
                    me.write = WriteState::Failed;
                    return Poll::Ready(Err(me.failed()));
                }
            };
            me.write = next;
        }
    }
}

impl<S> Drop for RouterStream<S> {
    fn drop(&mut self) {
        if matches!(self.write, WriteState::Open(_) | WriteState::GoingAway(_)) {
            // Abortive close: the outbound stream sends RST_STREAM after what is queued, and
            // (servicer) ends the response with an error status. The client's call is
            // cancelled when its response stream is dropped with this.
            tracing::debug!(end_of_outbound = ?self.end_of_outbound, "router stream dropped without shutdown: aborting");
            // Client: once the response headers are in, the request outlives this stream in
            // hyper's body task for a moment (see `RequestStream::poll_linger`), so the
            // RST_STREAM frame is sent rather than lost in an HTTP/2 cancel. The response is
            // dropped here, freeing its flow-control window. Before the headers, dropping the
            // call makes hyper cancel the HTTP/2 stream, which the router reports as an abort.
            if let ReadState::Connecting { call, .. } = &mut self.read {
                // Headers already in: take (and drop) the response, so the call is not cancelled.
                let _ = call.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            }
            self.abort.store(true, Ordering::Release);
        }
    }
}

impl<S> fmt::Debug for RouterStream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let read = match &self.read {
            ReadState::Connecting { .. } => "Connecting",
            ReadState::Open(_) => "Open",
            ReadState::Eof(_) => "Eof",
            ReadState::Failed => "Failed",
        };
        let write = match &self.write {
            WriteState::Open(_) => "Open",
            WriteState::GoingAway(_) => "GoingAway",
            WriteState::HalfClosed { .. } => "HalfClosed",
            WriteState::Ended => "Ended",
            WriteState::Failed => "Failed",
        };
        f.debug_struct("RouterStream")
            .field("read", &read)
            .field("write", &write)
            .field("buffered_read", &self.chunk.len())
            .field("buffered_write", &self.buffered())
            .field("error", &self.error())
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

#[cfg(test)]
mod tests;
