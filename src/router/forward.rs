//! Forwarding: the response body of each caller is its peer's request body, passed on as the
//! same bytes (slices of the HTTP/2 DATA chunks received), with no decoding, no copy, no task
//! and no channel per frame. [`wire::Parser`](crate::wire) follows the message boundaries
//! alongside, for the frame types and the size limit.
//!
//! ```text
//!   caller A ──request body──►  Forward(B) = B's response body  ──► caller B
//!   caller A ◄── Forward(A) = A's response body ◄──request body──   caller B
//! ```
//!
//! The states of one [`Forward`] (one caller's response body):
//!
//! ```text
//!   Waiting ──(peer arrives)──► Forwarding ──(peer's GOAWAY)──► Draining
//!      │                          │                              │    │
//!      │ (deadline)               │ (peer's body fails, or       │    │ (peer's body ends)
//!      │                          │  ends without GOAWAY;        │    ▼
//!      │                          │  or our caller aborted)      │  Finishing
//!      │                          ▼                              │    │ (our caller's
//!      │                    Trailers(ABORTED) ◄──(as Forwarding)─┘    │  body ends)
//!      ▼                          │                 (a failure after  ▼
//!   Trailers(DEADLINE_EXCEEDED)   │                  our clean end) Trailers(OK, or ABORTED
//!      │                          │                      │          if our caller aborted)
//!      └──────────────────────────┴──────────► Done ◄────┴──────────────┘
//! ```
//!
//! Draining ends like Forwarding, except that the end of the peer's body is a clean finish
//! (`Finishing`), and a failure of the peer's call once our own caller finished cleanly loses
//! nothing (`Trailers(OK)`): both sides sent GOAWAY.
//!
//! The half-close rule: when a caller finishes cleanly (GOAWAY, then the end of its request
//! body), its peer's response ends only once the peer's own request body has ended too
//! (`Finishing`), so the peer can go on sending after it read EOF. When a caller aborts (an
//! error, or an end without GOAWAY), the other caller's call ends at once with status
//! `Aborted`. Every frame is forwarded as it is, RST_STREAM and unknown types included, and
//! forwarding goes on after them (as in Jumpstarter's Go router): what a RST_STREAM means is
//! for the endpoints.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Instant;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;
use tonic::codegen::http;
use tonic::Status;

use super::metrics::{CallResult, Direction, Metrics};
use super::pairing::Pending;
use super::{Inner, StreamTag};
use crate::wire::Parser;

/// The two callers of a pair, in the order they came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Leg {
    /// The caller that waited.
    First = 0,
    /// The caller that came second.
    Second = 1,
}

impl Leg {
    fn other(self) -> Leg {
        match self {
            Leg::First => Leg::Second,
            Leg::Second => Leg::First,
        }
    }

    /// The direction of the frames this leg's response carries (its peer's).
    fn carries(self) -> Direction {
        match self {
            Leg::First => Direction::SecondToFirst,
            Leg::Second => Direction::FirstToSecond,
        }
    }
}

// ===== the request body of one caller, as the router reads it =====

/// What a caller's request body gave next.
#[derive(Debug)]
pub(super) enum Inbound {
    /// Bytes to forward as they are: `goaway` when a GOAWAY message ended in them, `payload`
    /// the payload bytes they held.
    Data {
        bytes: Bytes,
        goaway: bool,
        payload: u64,
    },
    /// The body ended after whole messages.
    End,
    /// The body failed, or stopped being a valid message stream.
    Error(Status),
}

/// A caller's request body, with the parser that follows its messages.
pub(super) struct RequestBody {
    body: tonic::body::Body,
    parser: Parser,
    state: BodyState,
}

enum BodyState {
    Open,
    /// The valid part of a chunk was handed out; this error comes next.
    Failing(Status),
    /// `End` or `Error` was handed out: the body is never polled again.
    Done,
}

impl RequestBody {
    pub(super) fn new(body: tonic::body::Body, max_message_size: usize) -> Self {
        RequestBody {
            body,
            parser: Parser::new(max_message_size),
            state: BodyState::Open,
        }
    }

    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        loop {
            match std::mem::replace(&mut self.state, BodyState::Open) {
                BodyState::Open => {}
                BodyState::Failing(status) => {
                    self.state = BodyState::Done;
                    return Poll::Ready(Inbound::Error(status));
                }
                BodyState::Done => {
                    self.state = BodyState::Done;
                    return Poll::Ready(Inbound::End);
                }
            }
            let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(status)) => {
                    self.state = BodyState::Done;
                    return Poll::Ready(Inbound::Error(status));
                }
                None => {
                    self.state = BodyState::Done;
                    return Poll::Ready(match self.parser.finish() {
                        Ok(()) => Inbound::End,
                        Err(e) => Inbound::Error(e.status()),
                    });
                }
            };
            // Trailers from a client are not part of the stream.
            let Ok(mut bytes) = frame.into_data() else {
                continue;
            };
            let scan = self.parser.scan(&bytes);
            if let Some(e) = scan.error {
                self.state = BodyState::Failing(e.status());
                bytes.truncate(scan.valid);
            }
            if !bytes.is_empty() {
                return Poll::Ready(Inbound::Data {
                    bytes,
                    goaway: scan.goaways > 0,
                    payload: scan.payload,
                });
            }
        }
    }
}

impl Drop for RequestBody {
    /// A body dropped while its caller may still be sending (its call was answered, or its
    /// peer is gone) is read and dropped for a moment: a reset under the caller's writes would
    /// make a grpc-core client report `INTERNAL` instead of the status it was sent.
    fn drop(&mut self) {
        if matches!(self.state, BodyState::Done) || self.body.is_end_stream() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let body = std::mem::replace(&mut self.body, tonic::body::Body::empty());
            rt.spawn(super::drain(body));
        }
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody").finish_non_exhaustive()
    }
}

// ===== the pair =====

/// How a caller's request body ended.
#[derive(Clone, Debug)]
enum End {
    /// GOAWAY, then the end of the body.
    Clean,
    /// Anything else; the message says what.
    Abort(String),
}

#[derive(Default)]
struct LegEnd {
    /// How this caller's request body ended (set once, by the peer's forwarder, which reads it).
    end: OnceLock<End>,
    /// The waker of this caller's own response, waiting for `end`.
    waker: AtomicWaker,
}

/// State shared by the two forwarders of a pair.
pub(super) struct Pair {
    legs: [LegEnd; 2],
    /// Set with the first `End::Abort`: lets a busy forwarder notice it without the lock.
    aborted: AtomicBool,
    /// Payload bytes each way, by [`Direction`]: added by each forwarder when it stops.
    bytes: [AtomicU64; 2],
    metrics: Metrics,
    tag: StreamTag,
    since: Instant,
}

impl Pair {
    pub(super) fn new(metrics: Metrics, tag: StreamTag) -> Arc<Pair> {
        metrics.pair_started();
        Arc::new(Pair {
            legs: Default::default(),
            aborted: AtomicBool::new(false),
            bytes: Default::default(),
            metrics,
            tag,
            since: Instant::now(),
        })
    }

    /// Records how caller `who`'s request body ended (the first word counts) and wakes its
    /// response.
    fn set_end(&self, who: Leg, end: End) {
        let leg = &self.legs[who as usize];
        let abort = match &end {
            End::Abort(why) => Some(why.clone()),
            End::Clean => None,
        };
        if leg.end.set(end).is_err() {
            return;
        }
        if let Some(why) = abort {
            tracing::debug!(stream = %self.tag, caller = ?who, reason = %why, "caller aborted");
            self.metrics.aborted();
            self.aborted.store(true, Ordering::Release);
        }
        leg.waker.wake();
    }

    /// How caller `who`'s request body ended; registers `cx` to be woken when it does. No
    /// lock: an atomic waker, then the end checked again.
    fn poll_end(&self, who: Leg, cx: &mut Context<'_>) -> Option<&End> {
        let leg = &self.legs[who as usize];
        if let Some(end) = leg.end.get() {
            return Some(end);
        }
        leg.waker.register(cx.waker());
        leg.end.get()
    }

    /// Our own caller aborted (the peer's forwarder saw it): why.
    fn own_abort(&self, me: Leg, cx: &mut Context<'_>) -> Option<String> {
        if !self.aborted.load(Ordering::Acquire) {
            return None;
        }
        match self.poll_end(me, cx) {
            Some(End::Abort(why)) => Some(why.clone()),
            _ => None,
        }
    }
}

impl Drop for Pair {
    /// The session is over: both forwarders are gone.
    fn drop(&mut self) {
        let m = &self.metrics;
        m.pair_ended();
        let duration = self.since.elapsed();
        Metrics::observe(&m.session_duration, duration);
        let outcome = if self.aborted.load(Ordering::Acquire) {
            "aborted"
        } else {
            "finished"
        };
        let [to_second, to_first] = &self.bytes;
        tracing::info!(
            stream = %self.tag,
            outcome,
            bytes_first_to_second = to_second.load(Ordering::Relaxed),
            bytes_second_to_first = to_first.load(Ordering::Relaxed),
            duration_ms = duration.as_millis() as u64,
            "session ended"
        );
    }
}

/// What a waiting caller receives when its peer arrives.
pub(super) struct Link {
    pub(super) peer: RequestBody,
    pub(super) pair: Arc<Pair>,
}

impl Link {
    /// The waiting caller left before it took this link: nobody will read the second caller's
    /// frames, so the second caller's call ends with an abort rather than waiting for ever
    /// (even if the waiter had finished cleanly, what the second caller sends is lost).
    pub(super) fn abandon(self) {
        self.pair.set_end(
            Leg::Second,
            End::Abort("the waiting caller left while pairing".into()),
        );
    }
}

// ===== Forward =====

/// The response body of one caller of the router: its peer's request body, forwarded.
pub struct Forward {
    state: State,
    inner: Arc<Inner>,
}

enum State {
    /// The first caller of a stream id, waiting for the second.
    Waiting(Waiting),
    /// Forwarding the peer's request body.
    Forwarding(Forwarding),
    /// The peer sent GOAWAY: what follows is still forwarded, and the end of its body is a
    /// clean finish.
    Draining(Forwarding),
    /// The peer finished cleanly; the response ends when this caller's request body has.
    Finishing {
        pair: Arc<Pair>,
        me: Leg,
    },
    /// The response's last frame: the call's status.
    Trailers(http::HeaderMap),
    Done,
}

struct Waiting {
    entry: Pending,
    rx: oneshot::Receiver<Link>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    why: &'static str,
}

struct Forwarding {
    peer: RequestBody,
    pair: Arc<Pair>,
    me: Leg,
    /// The router's counter of payload bytes in this direction, and this forwarder's own.
    counter: Counter,
    forwarded: u64,
}

/// What a forwarding state's poll decided.
enum Forwarded {
    /// Send these bytes; `goaway` when a GOAWAY message ended in them.
    Send(Bytes, bool),
    /// The forwarding is over: the next state.
    Next(State),
}

// ===== impl Forward =====

impl Forward {
    pub(super) fn waiting(
        inner: Arc<Inner>,
        entry: Pending,
        rx: oneshot::Receiver<Link>,
        deadline: (tokio::time::Instant, &'static str),
    ) -> Self {
        let (at, why) = deadline;
        Forward {
            state: State::Waiting(Waiting {
                entry,
                rx,
                deadline: Box::pin(tokio::time::sleep_until(at)),
                why,
            }),
            inner,
        }
    }

    pub(super) fn forwarding(inner: Arc<Inner>, link: Link, me: Leg) -> Self {
        Forward {
            state: State::Forwarding(Forwarding::new(link, me)),
            inner,
        }
    }
}

/// The end of a caller's call: counts it with `result`; its status goes out next.
fn end(inner: &Inner, result: CallResult, status: Status) -> State {
    inner.metrics.call(result);
    let mut trailers = http::HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        // Only a message that is no header value fails; the code alone still says it.
        let _ = Status::new(status.code(), "").add_header(&mut trailers);
    }
    State::Trailers(trailers)
}

/// The status that ends a caller's call when its peer aborted.
fn peer_aborted(why: &str) -> Status {
    Status::aborted(format!("peer aborted the stream: {why}"))
}

/// The status that ends a caller's call when the caller itself aborted.
fn own_abort(why: &str) -> Status {
    Status::aborted(format!("stream aborted: {why}"))
}

// ===== impl Waiting =====

impl Waiting {
    fn poll(&mut self, inner: &Inner, cx: &mut Context<'_>) -> Poll<State> {
        // The peer first: a peer that arrived as the deadline passed is paired.
        if let Poll::Ready(Ok(link)) = Pin::new(&mut self.rx).poll(cx) {
            inner.metrics.call(CallResult::Paired);
            return Poll::Ready(State::Forwarding(Forwarding::new(link, Leg::First)));
        }
        // (The sender stays in the pending table until it sends or we remove it: no `Err`.)
        ready!(self.deadline.as_mut().poll(cx));
        self.leave(inner, CallResult::TimedOut);
        Poll::Ready(end(
            inner,
            CallResult::TimedOut,
            Status::deadline_exceeded(self.why),
        ))
    }

    /// Leaves the pending table, and aborts a peer that was paired with us just now.
    fn leave(&mut self, inner: &Inner, result: CallResult) {
        tracing::debug!(stream = %self.entry.tag, result = result.as_str(), "stopped waiting for the peer");
        inner.remove_pending(&self.entry);
        // Closed first: a peer pairing with us from now on fails to send and aborts itself;
        // one that sent already is found here.
        self.rx.close();
        if let Ok(link) = self.rx.try_recv() {
            link.abandon();
        }
    }
}

// ===== impl Forwarding =====

impl Forwarding {
    fn new(link: Link, me: Leg) -> Self {
        Forwarding {
            counter: link.pair.metrics.bytes_counter(me.carries()),
            peer: link.peer,
            pair: link.pair,
            me,
            forwarded: 0,
        }
    }

    /// Adds what this forwarder carried to its pair's count, as it stops.
    fn stop(&mut self) {
        let n = std::mem::take(&mut self.forwarded);
        self.pair.bytes[self.me.carries() as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// `draining`: the peer sent GOAWAY, so the end of its body is a clean finish.
    fn poll(&mut self, inner: &Inner, draining: bool, cx: &mut Context<'_>) -> Poll<Forwarded> {
        let (me, peer) = (self.me, self.me.other());
        if let Some(why) = self.pair.own_abort(me, cx) {
            self.stop();
            return Poll::Ready(Forwarded::Next(end(
                inner,
                CallResult::Aborted,
                own_abort(&why),
            )));
        }
        let next = match self.peer.poll_next(cx) {
            Poll::Ready(Inbound::Data {
                bytes,
                goaway,
                payload,
            }) => {
                self.counter.inc_by(payload);
                self.forwarded += payload;
                return Poll::Ready(Forwarded::Send(bytes, goaway));
            }
            Poll::Ready(Inbound::Error(status))
                if draining && matches!(self.pair.poll_end(me, cx), Some(End::Clean)) =>
            {
                // Both sides sent GOAWAY and our caller finished: a cancel of the peer's call
                // now loses nothing.
                tracing::trace!(code = ?status.code(), "router: error after both GOAWAYs");
                self.pair.set_end(peer, End::Clean);
                end(inner, CallResult::Finished, Status::ok(""))
            }
            Poll::Ready(Inbound::Error(status)) => {
                let why = format!("{:?}: {}", status.code(), status.message());
                self.pair.set_end(peer, End::Abort(why.clone()));
                end(inner, CallResult::Aborted, peer_aborted(&why))
            }
            Poll::Ready(Inbound::End) if draining => {
                self.pair.set_end(peer, End::Clean);
                State::Finishing {
                    pair: self.pair.clone(),
                    me,
                }
            }
            Poll::Ready(Inbound::End) => {
                let why = "ended its stream without GOAWAY";
                self.pair.set_end(peer, End::Abort(why.into()));
                end(inner, CallResult::Aborted, peer_aborted(why))
            }
            Poll::Pending => {
                // Our own caller may have aborted meanwhile (the peer's forwarder saw it).
                let Some(End::Abort(why)) = self.pair.poll_end(me, cx) else {
                    return Poll::Pending;
                };
                let why = why.clone();
                end(inner, CallResult::Aborted, own_abort(&why))
            }
        };
        self.stop();
        Poll::Ready(Forwarded::Next(next))
    }
}

fn poll_finishing(inner: &Inner, pair: &Pair, me: Leg, cx: &mut Context<'_>) -> Poll<State> {
    let Some(end_of_ours) = pair.poll_end(me, cx) else {
        return Poll::Pending;
    };
    Poll::Ready(match end_of_ours {
        End::Clean => end(inner, CallResult::Finished, Status::ok("")),
        End::Abort(why) => end(inner, CallResult::Aborted, own_abort(why)),
    })
}

// ===== impl Body for Forward =====

impl Body for Forward {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let inner = &*this.inner;
        loop {
            let next = match &mut this.state {
                State::Waiting(w) => ready!(w.poll(inner, cx)),
                State::Forwarding(f) => match ready!(f.poll(inner, false, cx)) {
                    Forwarded::Send(bytes, goaway) => {
                        if goaway {
                            if let State::Forwarding(f) =
                                std::mem::replace(&mut this.state, State::Done)
                            {
                                this.state = State::Draining(f);
                            }
                        }
                        return Poll::Ready(Some(Ok(Frame::data(bytes))));
                    }
                    Forwarded::Next(next) => next,
                },
                State::Draining(f) => match ready!(f.poll(inner, true, cx)) {
                    Forwarded::Send(bytes, _) => return Poll::Ready(Some(Ok(Frame::data(bytes)))),
                    Forwarded::Next(next) => next,
                },
                State::Finishing { pair, me } => ready!(poll_finishing(inner, pair, *me, cx)),
                State::Trailers(trailers) => {
                    let trailers = std::mem::take(trailers);
                    this.state = State::Done;
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                State::Done => return Poll::Ready(None),
            };
            this.state = next;
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let inner = &*self.inner;
        match &mut self.state {
            State::Waiting(w) => {
                w.leave(inner, CallResult::Left);
                inner.metrics.call(CallResult::Left);
            }
            State::Forwarding(f) => {
                // Our caller's call is gone, and with it the reader of the peer's frames.
                f.pair.set_end(
                    f.me.other(),
                    End::Abort("the other caller left before reading everything".into()),
                );
                f.stop();
                inner.metrics.call(CallResult::Aborted);
            }
            State::Draining(f) => {
                // The peer sent GOAWAY: what it sends now has nowhere to go, but it finished.
                f.pair.set_end(f.me.other(), End::Clean);
                f.stop();
                inner.metrics.call(CallResult::Aborted);
            }
            // Dropped before its end: the call was cancelled.
            State::Finishing { .. } => inner.metrics.call(CallResult::Aborted),
            State::Trailers(_) | State::Done => {}
        }
    }
}

impl fmt::Debug for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting(_) => "Waiting",
            State::Forwarding(_) => "Forwarding",
            State::Draining(_) => "Draining",
            State::Finishing { .. } => "Finishing",
            State::Trailers(_) => "Trailers",
            State::Done => "Done",
        };
        f.debug_struct("Forward").field("state", &state).finish()
    }
}

#[cfg(test)]
mod tests {
    //! The forwarding state machine on its own: scripted request bodies (channels), polled by
    //! hand with `tokio_test`, no server and no sleeps.

    use std::time::{Duration, SystemTime};

    use prost::Message;
    use tokio::sync::mpsc;
    use tokio_test::task::{spawn, Spawn};
    use tokio_test::{assert_pending, assert_ready};

    use super::*;
    use crate::router::{Auth, Grant, Router};

    type Item = Result<Frame<Bytes>, Status>;

    /// A request body whose frames the test sends.
    struct Script(mpsc::UnboundedReceiver<Item>);

    impl Body for Script {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
            self.get_mut().0.poll_recv(cx)
        }
    }

    fn script() -> (mpsc::UnboundedSender<Item>, RequestBody) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            tx,
            RequestBody::new(tonic::body::Body::new(Script(rx)), 1024),
        )
    }

    fn accept(inner: &Arc<Inner>, stream: &str, body: RequestBody) -> Forward {
        let grant = Grant {
            stream: stream.into(),
            expires: SystemTime::now() + Duration::from_secs(600),
        };
        let conn = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9)));
        inner.accept(grant, body, conn).map_err(|(s, _)| s).unwrap()
    }

    /// A gRPC message: prefix and `StreamRequest`.
    fn msg(frame_type: i32, payload: &[u8]) -> Bytes {
        let body = crate::proto::StreamRequest {
            payload: payload.to_vec().into(),
            frame_type,
        }
        .encode_to_vec();
        let mut out = vec![0u8];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out.into()
    }

    fn poll(f: &mut Spawn<Forward>) -> Poll<Option<Item>> {
        f.enter(|cx, body| body.poll_frame(cx))
    }

    fn data(p: Poll<Option<Item>>) -> Bytes {
        match assert_ready!(p) {
            Some(Ok(frame)) => frame.into_data().expect("a data frame"),
            other => panic!("expected data, got {other:?}"),
        }
    }

    /// The status in the trailers (as tonic's client reads it), then the end of the body.
    fn status(f: &mut Spawn<Forward>) -> (tonic::Code, String) {
        let trailers = match assert_ready!(poll(f)) {
            Some(Ok(frame)) => frame.into_trailers().expect("trailers"),
            other => panic!("expected trailers, got {other:?}"),
        };
        assert!(assert_ready!(poll(f)).is_none());
        assert!(f.is_end_stream());
        let s = Status::from_header_map(&trailers).expect("grpc-status in the trailers");
        (s.code(), s.message().to_string())
    }

    #[tokio::test]
    async fn forwards_the_same_bytes_and_keeps_half_close() {
        let router = Router::builder(Auth::new(b"k")).build();
        let inner = router.inner.clone();
        let (a_tx, a_body) = script();
        let (b_tx, b_body) = script();
        let mut a = spawn(accept(&inner, "s", a_body));
        assert_pending!(poll(&mut a));
        assert_eq!(router.stats().pending, 1);
        let mut b = spawn(accept(&inner, "s", b_body));
        assert!(a.is_woken(), "the waiting caller is woken by its peer");
        assert_pending!(poll(&mut a));
        assert_pending!(poll(&mut b));
        let s = router.stats();
        assert_eq!((s.pending, s.active), (0, 1));

        // A's chunk reaches B as the very same bytes (no copy).
        let chunk = msg(0, b"hello");
        let at = chunk.as_ptr();
        a_tx.send(Ok(Frame::data(chunk.clone()))).unwrap();
        assert!(b.is_woken());
        let got = data(poll(&mut b));
        assert_eq!((got.as_ptr(), &got), (at, &chunk));

        // A finishes: GOAWAY, end of body. B reads it, and its response waits for its own end.
        a_tx.send(Ok(Frame::data(msg(7, b"")))).unwrap();
        drop(a_tx);
        assert_eq!(data(poll(&mut b)), msg(7, b""));
        assert_pending!(poll(&mut b));
        // B goes on sending after A's GOAWAY, then finishes too.
        b_tx.send(Ok(Frame::data(msg(0, b"reply")))).unwrap();
        b_tx.send(Ok(Frame::data(msg(7, b"")))).unwrap();
        drop(b_tx);
        assert_eq!(data(poll(&mut a)), msg(0, b"reply"));
        assert_eq!(data(poll(&mut a)), msg(7, b""));
        assert_eq!(status(&mut a), (tonic::Code::Ok, String::new()));
        assert!(b.is_woken());
        assert_eq!(status(&mut b), (tonic::Code::Ok, String::new()));
        drop((a, b));
        let s = router.stats();
        assert_eq!((s.active, s.aborts_total, s.bytes_forwarded), (0, 0, 10));
        assert_eq!(router.metrics().calls(CallResult::Finished), 2);
    }

    #[tokio::test]
    async fn an_invalid_message_ends_both_calls_after_the_valid_bytes() {
        let router = Router::builder(Auth::new(b"k")).build();
        let inner = router.inner.clone();
        let (a_tx, a_body) = script();
        let (_b_tx, b_body) = script();
        let mut a = spawn(accept(&inner, "s", a_body));
        let mut b = spawn(accept(&inner, "s", b_body));
        assert_pending!(poll(&mut a));
        assert_pending!(poll(&mut b));
        // One valid message, then a flag of 9, in one chunk.
        let good = msg(0, b"ok");
        let mut chunk = good.to_vec();
        chunk.extend_from_slice(&[9, 0, 0, 0, 0]);
        a_tx.send(Ok(Frame::data(Bytes::from(chunk)))).unwrap();
        assert_eq!(data(poll(&mut b)), good);
        let (code, message) = status(&mut b);
        assert_eq!(code, tonic::Code::Aborted);
        assert!(message.contains("invalid compression flag"), "{message}");
        // A's own call ends as well, at once.
        assert!(a.is_woken());
        let (code, message) = status(&mut a);
        assert_eq!(code, tonic::Code::Aborted);
        assert!(message.contains("stream aborted"), "{message}");
        drop((a, b));
        assert_eq!(router.stats().active, 0);
        assert_eq!(router.metrics().calls(CallResult::Aborted), 2);
    }

    #[tokio::test]
    async fn a_caller_that_leaves_mid_stream_aborts_its_peer() {
        let router = Router::builder(Auth::new(b"k")).build();
        let inner = router.inner.clone();
        let (_a_tx, a_body) = script();
        let (_b_tx, b_body) = script();
        let mut a = spawn(accept(&inner, "s", a_body));
        let b = spawn(accept(&inner, "s", b_body));
        assert_pending!(poll(&mut a));
        // B's call is cancelled: its response body is dropped.
        drop(b);
        assert!(a.is_woken());
        let (code, message) = status(&mut a);
        assert_eq!(code, tonic::Code::Aborted);
        assert!(
            message.contains("left before reading everything"),
            "{message}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_caller_times_out_and_leaves_the_table() {
        let router = Router::builder(Auth::new(b"k"))
            .pairing_timeout(Some(Duration::from_secs(5)))
            .build();
        let (_tx, body) = script();
        let mut a = spawn(accept(&router.inner, "s", body));
        assert_pending!(poll(&mut a));
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_pending!(poll(&mut a));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(a.is_woken());
        let (code, message) = status(&mut a);
        assert_eq!(code, tonic::Code::DeadlineExceeded);
        assert!(message.contains("pairing timeout"), "{message}");
        assert_eq!(router.stats().pending, 0);
        assert_eq!(router.metrics().calls(CallResult::TimedOut), 1);
        // A caller that leaves while waiting is counted as such.
        let (_tx, body) = script();
        let b = spawn(accept(&router.inner, "t", body));
        assert_eq!(router.stats().pending, 1);
        drop(b);
        assert_eq!(router.stats().pending, 0);
        assert_eq!(router.metrics().calls(CallResult::Left), 1);
    }
}
