//! The frames a [`RouterStream`](crate::RouterStream) sends, as the message streams tonic
//! encodes: [`RequestStream`] (client), [`ResponseStream`] (servicer), and [`SentFrames`]
//! (any other transport, see [`RouterStream::from_frames`](crate::RouterStream::from_frames)).
//!
//! The writer and its outbound stream share a bounded channel of [`CHANNEL_FRAMES`] frames,
//! an abort flag set when the writer is dropped without shutdown, and a oneshot that tells the
//! writer when the outbound stream is gone (every frame was handed to HTTP/2).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_core::Stream;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use crate::proto::{StreamRequest, StreamResponse};
use crate::{Error, Frame, MAX_PAYLOAD_LIMIT};

/// Frames queued between the writer and tonic's encoder; together with
/// [`StreamOptions::max_payload`](crate::StreamOptions::max_payload) this bounds the memory a
/// stalled peer can hold.
const CHANNEL_FRAMES: usize = 2;

/// How long a dropped client stream's request stays open after its RST_STREAM frame, so h2
/// sends the frame before the stream is released. Then the request ends without GOAWAY,
/// which a router takes for an abort (the peer has read the RST_STREAM by then); a server
/// that ends the call sooner ends the wait.
const LINGER: Duration = Duration::from_secs(1);

/// Room the writer keeps at the start of its buffer for the header of a DATA message: the
/// 5-byte gRPC prefix, the tag of field 1 and the payload's length (a varint of at most 4
/// bytes: payloads are at most [`MAX_PAYLOAD_LIMIT`]).
pub(super) const HEADROOM: usize = 5 + 1 + 4;
const _: () = assert!(MAX_PAYLOAD_LIMIT < 1 << 28);

/// What the writer queues.
pub(super) enum Queued {
    /// A frame (control frames; DATA from elsewhere).
    Frame(Frame),
    /// A DATA frame built in place as a whole gRPC message: `bytes` is the message (prefix,
    /// tag, length, payload), the payload starts at `header`. A raw HTTP/2 body sends it as
    /// it is; the tonic paths take the payload as a slice. No copy either way.
    Message { bytes: Bytes, header: usize },
}

impl Queued {
    /// Seals the DATA payload in `buf[HEADROOM..]`: writes its message header right before
    /// it and splits the message off.
    pub(super) fn seal(buf: &mut BytesMut) -> Queued {
        let len = (buf.len() - HEADROOM) as u64;
        let n = prost::encoding::encoded_len_varint(len);
        let header = 5 + 1 + n;
        let start = HEADROOM - header;
        // Fits in u32: the payload is at most MAX_PAYLOAD_LIMIT.
        let message_len = (1 + n as u64 + len) as u32;
        buf[start] = 0;
        buf[start + 1..start + 5].copy_from_slice(&message_len.to_be_bytes());
        buf[start + 5] = 0x0a; // field 1, length-delimited
        prost::encoding::encode_varint(len, &mut &mut buf[start + 6..HEADROOM]);
        buf.advance(start);
        Queued::Message {
            bytes: buf.split().freeze(),
            header,
        }
    }

    /// The frame (a DATA message's payload as a slice).
    pub(super) fn into_frame(self) -> Frame {
        match self {
            Queued::Frame(f) => f,
            Queued::Message { bytes, header } => Frame::Data(bytes.slice(header..)),
        }
    }

    /// The whole gRPC message (a control frame is encoded here: its payload is small).
    #[cfg(feature = "client")]
    pub(super) fn into_message(self) -> Bytes {
        match self {
            Queued::Message { bytes, .. } => bytes,
            Queued::Frame(f) => f.into_message(),
        }
    }
}

/// The writer's ends of an outbound stream.
pub(super) struct Handle {
    pub(super) tx: mpsc::Sender<Queued>,
    /// Set when the writer is dropped without shutdown.
    pub(super) abort: Arc<AtomicBool>,
    /// Resolves (with an error) once the outbound stream is dropped.
    pub(super) done: oneshot::Receiver<()>,
}

/// The outbound stream's side: what it yields next.
pub(super) struct Outbound {
    rx: mpsc::Receiver<Queued>,
    abort: Arc<AtomicBool>,
    state: State,
    /// Dropped with the outbound stream: tells [`RouterStream::close`](crate::RouterStream::close)
    /// that tonic is done.
    _done: oneshot::Sender<()>,
}

enum State {
    Frames,
    /// Dropped without shutdown: RST_STREAM handed out, the abort comes next.
    Aborting,
    Done,
}

/// What the outbound stream yields next.
enum Next {
    Frame(Queued),
    Abort,
    End,
}

impl Outbound {
    pub(super) fn channel() -> (Handle, Outbound) {
        let (tx, rx) = mpsc::channel(CHANNEL_FRAMES);
        let abort = Arc::new(AtomicBool::new(false));
        let (done_tx, done) = oneshot::channel();
        let outbound = Outbound {
            rx,
            abort: abort.clone(),
            state: State::Frames,
            _done: done_tx,
        };
        (Handle { tx, abort, done }, outbound)
    }

    /// The next item of an outbound stream type: `frame` for each frame, `abort` once after
    /// the RST_STREAM of a writer dropped without shutdown, then the end.
    fn poll_item<T>(
        &mut self,
        cx: &mut Context<'_>,
        frame: impl FnOnce(Queued) -> T,
        abort: impl FnOnce() -> Option<T>,
    ) -> Poll<Option<T>> {
        Poll::Ready(match ready!(self.poll_next_frame(cx)) {
            Next::Frame(f) => Some(frame(f)),
            Next::Abort => abort(),
            Next::End => None,
        })
    }

    fn poll_next_frame(&mut self, cx: &mut Context<'_>) -> Poll<Next> {
        let (next, state) = match self.state {
            State::Frames => match ready!(self.rx.poll_recv(cx)) {
                Some(frame) => (Next::Frame(frame), State::Frames),
                None if self.abort.load(Ordering::Acquire) => (
                    Next::Frame(Queued::Frame(Frame::rst_stream())),
                    State::Aborting,
                ),
                None => (Next::End, State::Done),
            },
            State::Aborting => (Next::Abort, State::Done),
            State::Done => (Next::End, State::Done),
        };
        self.state = state;
        Poll::Ready(next)
    }
}

/// The request side of a client call, tonic's ([`RequestStream`]) or a raw body
/// ([`RawRequest`]): the queued frames, and after an abort a moment's wait before the end.
pub(super) struct Request {
    outbound: Outbound,
    /// After an abort: how long the request may stay open to get RST_STREAM out.
    linger: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Request {
    pub(super) fn new(outbound: Outbound) -> Self {
        Request {
            outbound,
            linger: None,
        }
    }

    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Queued>> {
        if self.linger.is_some() {
            return self.poll_linger(cx);
        }
        match ready!(self.outbound.poll_next_frame(cx)) {
            Next::Frame(q) => Poll::Ready(Some(q)),
            // RST_STREAM was handed over: keep the request open a moment, then end it.
            Next::Abort => self.poll_linger(cx),
            Next::End => Poll::Ready(None),
        }
    }

    /// After RST_STREAM: keeps the request open for [`LINGER`] (hyper holds the HTTP/2
    /// stream while it polls the request), then ends it. hyper stops polling sooner when the
    /// server resets the stream after ending the call.
    fn poll_linger(&mut self, cx: &mut Context<'_>) -> Poll<Option<Queued>> {
        let deadline = self
            .linger
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(LINGER)));
        ready!(deadline.as_mut().poll(cx));
        Poll::Ready(None)
    }
}

/// The request stream of a client call: the frames the [`RouterStream`](crate::RouterStream)
/// writes.
///
/// Made by [`RouterStream::from_call`](crate::RouterStream::from_call) and passed to tonic;
/// you only see it when you make the call yourself. (The client constructors send a raw
/// request body instead: the messages as the stream built them, with no re-encoding.)
pub struct RequestStream(pub(super) Request);

impl Stream for RequestStream {
    type Item = StreamRequest;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<StreamRequest>> {
        self.get_mut()
            .0
            .poll_next(cx)
            .map(|q| q.map(|q| q.into_frame().into()))
    }
}

impl fmt::Debug for RequestStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestStream").finish_non_exhaustive()
    }
}

/// The response stream of a servicer's `Stream` call, made by
/// [`RouterStream::accept`](crate::RouterStream::accept): return it from your
/// `RouterService::stream` in a `tonic::Response`.
///
/// It ends (status OK) once the [`RouterStream`](crate::RouterStream) was shut down and its
/// read half is done, or the stream was dropped after shutdown. A stream dropped without
/// shutdown ends it with RST_STREAM and then status `Cancelled`.
pub struct ResponseStream(pub(super) Outbound);

impl Stream for ResponseStream {
    type Item = Result<StreamResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let abort = || Some(Err(Error::Dropped.into()));
        self.get_mut()
            .0
            .poll_item(cx, |q| Ok(q.into_frame().into()), abort)
    }
}

impl fmt::Debug for ResponseStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseStream").finish_non_exhaustive()
    }
}

/// The frames a [`RouterStream`](crate::RouterStream) made by
/// [`from_frames`](crate::RouterStream::from_frames) sends: hand each to your transport.
///
/// Like [`ResponseStream`]: it ends once the stream was shut down and its read half is done
/// (or the stream was dropped after shutdown); a stream dropped without shutdown yields
/// RST_STREAM and then `Err(`[`Error::Dropped`]`)`.
pub struct SentFrames(pub(super) Outbound);

impl Stream for SentFrames {
    type Item = Result<Frame, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .0
            .poll_item(cx, |q| Ok(q.into_frame()), || Some(Err(Error::Dropped)))
    }
}

impl fmt::Debug for SentFrames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentFrames").finish_non_exhaustive()
    }
}
