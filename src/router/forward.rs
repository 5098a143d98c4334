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
//! Only whole messages go out: the bytes of a message that is not complete yet (it spans
//! HTTP/2 DATA frames) are held, as the received slices, until its last byte is in. So the
//! router can always end a caller's response with a message of its own, and a peer that
//! vanishes mid-message leaves no torn message behind.
//!
//! The states of one [`Forward`] (one caller's response body):
//!
//! ```text
//!   Waiting ──(peer arrives)──► Forwarding ──(peer's GOAWAY)──► Draining
//!      │                          │                              │    │
//!      │ (deadline)               │ (peer gone: its body fails,  │    │ (peer's body ends)
//!      │                          │  or ends without GOAWAY)     │    ▼
//!      │                          ▼                              │  Finishing
//!      │                   GoAway(reason) ──► Trailers(ABORTED)  │    │ (our caller's
//!      │                                          ▲   ▲          │    │  body ends)
//!      │                  (our caller broke the   │   └──────────┘    ▼
//!      ▼                   stream: no GOAWAY) ────┘  (peer gone)   Trailers(OK, or ABORTED
//!   Trailers(DEADLINE_EXCEEDED)                                     if the peer left first)
//!      │                                                                │
//!      └──────────────────────────────► Done ◄──────────────────────────┘
//! ```
//!
//! When a peer goes (its process killed, its call cancelled, a RST_STREAM frame, its
//! connection lost), the survivor gets a GOAWAY frame whose payload says why, then its call
//! ends with status `ABORTED` and the same words. Jumpstarter's peers close their local bridge
//! only on a clean end of stream, so the GOAWAY is what tells them the session is over; the
//! status (and the GOAWAY's payload, which Jumpstarter's peers ignore) is what tells a
//! [`RouterStream`](crate::RouterStream) that it was not a clean finish. A survivor that has
//! its peer's own GOAWAY already gets no second one. When the router shuts down past its
//! grace period ([`Router::end_all_calls`](super::Router::end_all_calls)), every forwarding
//! state ends the same way, with status `UNAVAILABLE`.
//!
//! The half-close rule: when a caller finishes cleanly (GOAWAY, then the end of its request
//! body), its peer's response ends only once the peer's own request body has ended too
//! (`Finishing`), so the peer can go on sending after it read EOF. Every frame is forwarded as
//! it is, RST_STREAM and unknown types included, and forwarding goes on after them (as in
//! Jumpstarter's Go router): what a RST_STREAM means is for the endpoints.
//!
//! How a caller went (its [`Cause`]) is read from the end of its request body: h2's error
//! (a reset with `CANCEL` is a cancelled call; an I/O error or a lost connection is `Lost`), a
//! RST_STREAM frame before the end, or an invalid message. The pair's outcome is the first
//! cause (or `finished`); each call is counted once, when the pair is over.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame as BodyFrame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;
use tonic::codegen::http;
use tonic::Status;

use super::body::{Cause, Inbound, RequestBody};
use super::metrics::CallResult;
use super::pair::{End, Leg, Link, Pair, SHUTDOWN};
use super::pairing::{Accepted, Pairing, Pending};

// ===== Forward =====

/// The response body of one caller of the router: its peer's request body, forwarded.
///
/// It is what [`RouterServer`](super::RouterServer) answers a `Stream` call with.
pub(crate) struct Forward {
    state: State,
    pairing: Arc<Pairing>,
    /// PING frames while nothing else goes to the caller ([`Keepalive::ping_frame_interval`]).
    ///
    /// [`Keepalive::ping_frame_interval`]: super::Keepalive::ping_frame_interval
    idle: Option<IdlePing>,
}

/// A Jumpstarter PING frame as a gRPC message: `StreamResponse { frame_type: PING }`.
const PING_MESSAGE: &[u8] = &[0, 0, 0, 0, 2, 0x10, 0x06];

/// When a caller's response gets a PING frame: `every` after the last frame it got. The timer
/// is moved only when it fires (at most once per `every`), never per frame: a frame sent
/// costs one clock read.
struct IdlePing {
    every: std::time::Duration,
    last: tokio::time::Instant,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdlePing {
    fn new(every: Option<std::time::Duration>) -> Option<IdlePing> {
        let every = every.filter(|d| !d.is_zero())?;
        Some(IdlePing {
            every,
            last: tokio::time::Instant::now(),
            timer: None,
        })
    }

    /// Ready when a PING is due (then the next is `every` from now).
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let due = self.last + self.every;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        loop {
            ready!(timer.as_mut().poll(cx));
            let due = self.last + self.every;
            let now = tokio::time::Instant::now();
            if now >= due {
                self.last = now;
                timer.as_mut().reset(now + self.every);
                return Poll::Ready(());
            }
            // A frame went out since the timer was set.
            timer.as_mut().reset(due);
        }
    }
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
    /// The peer went without GOAWAY: this one (its payload the reason) goes out, then the
    /// status.
    GoAway(Bytes, http::HeaderMap),
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
    /// The peer's body ended without GOAWAY: until when to wait for why (see
    /// [`Forwarding::poll_verdict`]).
    verdict: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// What a forwarding state's poll decided.
enum Forwarded {
    /// Send these bytes; `goaway` when a GOAWAY message ended in them.
    Send(Bytes, bool),
    /// The forwarding is over: the next state (boxed: it happens once a call).
    Next(Box<State>),
}

// ===== impl Forward =====

impl Forward {
    /// The response body of a caller as [`Pairing::accept`] took it; a PING frame goes to it
    /// after each `ping_every` with nothing else.
    pub(super) fn new(
        pairing: Arc<Pairing>,
        accepted: Accepted,
        ping_every: Option<std::time::Duration>,
    ) -> Self {
        let state = match accepted {
            Accepted::Paired(link) => State::Forwarding(Forwarding::new(link, Leg::Second)),
            Accepted::Waiting(ticket) => {
                let (at, why) = ticket.deadline;
                State::Waiting(Waiting {
                    entry: ticket.entry,
                    rx: ticket.rx,
                    deadline: Box::pin(tokio::time::sleep_until(at)),
                    why,
                })
            }
        };
        Forward {
            state,
            idle: IdlePing::new(ping_every),
            pairing,
        }
    }
}

/// The trailers that carry `status`.
fn trailers(status: &Status) -> http::HeaderMap {
    let mut trailers = http::HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        // Only a message that is no header value fails; the code alone still says it.
        let _ = Status::new(status.code(), "").add_header(&mut trailers);
    }
    trailers
}

/// The end of a call with `status`.
fn end(status: Status) -> State {
    State::Trailers(trailers(&status))
}

/// The end of a call the router ends for its caller (its peer went, or the router shuts
/// down): a GOAWAY whose payload is the status's message (unless the peer's own GOAWAY went
/// out already), then the status.
fn goaway_then(status: Status, had_goaway: bool) -> State {
    let trailers = trailers(&status);
    if had_goaway {
        return State::Trailers(trailers);
    }
    let reason = Bytes::copy_from_slice(status.message().as_bytes());
    State::GoAway(crate::Frame::GoAway(reason).into_message(), trailers)
}

/// The end of a survivor's call: its peer went.
fn peer_gone(cause: Cause, why: &str, had_goaway: bool) -> State {
    goaway_then(Status::aborted(cause.for_peer(why)), had_goaway)
}

/// How long a forwarder waits to learn why its peer's body ended without GOAWAY (its
/// response and its connection go at once when it was cancelled or lost).
const VERDICT_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// The end of a call the router ends as it shuts down.
fn shutting_down(had_goaway: bool) -> State {
    goaway_then(Status::unavailable(SHUTDOWN), had_goaway)
}

/// The status that ends a caller's call when the caller itself broke the stream.
fn own_abort(why: &str) -> Status {
    Status::aborted(format!("stream aborted: {why}"))
}

// ===== impl Waiting =====

impl Waiting {
    fn poll(&mut self, pairing: &Pairing, cx: &mut Context<'_>) -> Poll<State> {
        // The peer first: a peer that arrived as the deadline passed is paired.
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(link)) => {
                pairing.metrics.call(CallResult::Paired);
                link.pair.join(Leg::First);
                return Poll::Ready(State::Forwarding(Forwarding::new(link, Leg::First)));
            }
            // The sender stays in the table until a peer takes it or we remove it; only the
            // router's shutdown drops it otherwise.
            Poll::Ready(Err(_)) => {
                pairing.metrics.call(CallResult::Shutdown);
                return Poll::Ready(end(Status::unavailable(SHUTDOWN)));
            }
            Poll::Pending => {}
        }
        ready!(self.deadline.as_mut().poll(cx));
        self.leave(pairing, CallResult::TimedOut);
        pairing.metrics.call(CallResult::TimedOut);
        Poll::Ready(end(Status::deadline_exceeded(self.why)))
    }

    /// Leaves the pending table, and tells a peer that was paired with us just now.
    fn leave(&mut self, pairing: &Pairing, result: CallResult) {
        tracing::debug!(stream = %self.entry.tag, result = result.as_str(), "stopped waiting for the peer");
        pairing.remove_pending(&self.entry);
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
            counter: link.pair.bytes_counter(me),
            peer: link.peer,
            pair: link.pair,
            me,
            forwarded: 0,
            verdict: None,
        }
    }

    /// The peer's body ended without GOAWAY (and without RST_STREAM): why. hyper ends a body
    /// that way for a caller that ended its stream, for an HTTP/2 cancel (`CANCEL`,
    /// `NO_ERROR`) and for a connection it closed (a keepalive timeout): the caller's
    /// connection and its response tell them apart. A caller whose connection and response
    /// are still there after [`VERDICT_WAIT`] ended its stream without GOAWAY.
    fn poll_verdict(&mut self, cx: &mut Context<'_>) -> Poll<(Cause, String)> {
        if self.peer.connection_ended().is_some() {
            return Poll::Ready(self.peer_left());
        }
        // Registers for the peer's leaving (it wakes our response).
        let _ = self.pair.poll_end(self.me, cx);
        if self.pair.has_left(self.me.other()) {
            return Poll::Ready(self.peer_left());
        }
        let timer = self
            .verdict
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(VERDICT_WAIT)));
        ready!(timer.as_mut().poll(cx));
        Poll::Ready((Cause::Aborted, "it ended its stream without GOAWAY".into()))
    }

    /// The peer's response is gone, or its connection: how it went (see [`Pair::peer_left`]).
    fn peer_left(&self) -> (Cause, String) {
        let connection = self.peer.connection_ended();
        self.pair
            .peer_left(self.me.other(), self.peer.reset, connection)
    }

    /// The peer's response is gone and ours goes too, with nobody left to poll: how the peer
    /// went, from what its body has to say now (a cancel or a reset that already arrived,
    /// read without waiting). With nothing on its stream, both calls ended together with no
    /// word of why: counted as cancelled (a proxy that cancels both; a client that closes a
    /// channel it no longer reads, which the kernel may turn into a reset of its connection),
    /// never as a clean finish.
    fn last_word(&mut self) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Whole messages may come first; a few are read past, no more.
        for _ in 0..16 {
            match self.peer.poll_next(&mut cx) {
                Poll::Ready(Inbound::Data { .. }) => continue,
                Poll::Ready(Inbound::Gone(cause, why)) => {
                    return self.pair.set_end(self.me.other(), End::Gone(cause, why));
                }
                Poll::Ready(Inbound::End) | Poll::Pending => break,
            }
        }
        // Its connection is not asked: see above.
        let _ = self.pair.peer_left(self.me.other(), self.peer.reset, None);
    }

    /// Adds what this forwarder carried to its pair's count, as it stops.
    fn stop(&mut self) {
        let n = std::mem::take(&mut self.forwarded);
        self.pair.add_bytes(self.me, n);
    }

    /// `draining`: the peer sent GOAWAY, so the end of its body is a clean finish.
    fn poll(&mut self, draining: bool, cx: &mut Context<'_>) -> Poll<Forwarded> {
        let (me, peer) = (self.me, self.me.other());
        if let Some((_, why)) = self.pair.own_gone(me, cx) {
            self.stop();
            return Poll::Ready(Forwarded::Next(Box::new(end(own_abort(&why)))));
        }
        if self.pair.is_closing() {
            self.stop();
            return Poll::Ready(Forwarded::Next(Box::new(shutting_down(draining))));
        }
        let next = match self.peer.poll_next(cx) {
            Poll::Ready(Inbound::Data {
                bytes,
                goaway,
                payload,
            }) => {
                self.counter.inc_by(payload);
                self.forwarded += payload;
                if self.peer.reset {
                    self.pair.reset_by(peer);
                }
                return Poll::Ready(Forwarded::Send(bytes, goaway));
            }
            Poll::Ready(Inbound::Gone(cause, why))
                if draining && matches!(self.pair.poll_end(me, cx), Some(End::Clean)) =>
            {
                // Both sides sent GOAWAY and our caller finished: the peer's call ending now
                // loses nothing.
                tracing::trace!(?cause, %why, "router: the peer went after both GOAWAYs");
                self.pair.set_end(peer, End::Clean);
                end(Status::ok(""))
            }
            Poll::Ready(Inbound::Gone(cause, why)) => {
                self.pair.set_end(peer, End::Gone(cause, why.clone()));
                peer_gone(cause, &why, draining)
            }
            Poll::Ready(Inbound::End) if draining => {
                self.pair.set_end(peer, End::Clean);
                State::Finishing {
                    pair: self.pair.clone(),
                    me,
                }
            }
            Poll::Ready(Inbound::End) => {
                let (cause, why) = if self.peer.reset {
                    (
                        Cause::Reset,
                        "it sent a RST_STREAM frame, then ended its stream".into(),
                    )
                } else {
                    ready!(self.poll_verdict(cx))
                };
                self.pair.set_end(peer, End::Gone(cause, why.clone()));
                peer_gone(cause, &why, false)
            }
            Poll::Pending => {
                // Our own caller may have gone meanwhile (the peer's forwarder saw it), or the
                // peer's response may be gone with no word from its body.
                match self.pair.poll_end(me, cx) {
                    Some(End::Gone(_, why)) => end(own_abort(why)),
                    _ if self.pair.has_left(peer) => {
                        let (cause, why) = self.peer_left();
                        peer_gone(cause, &why, draining)
                    }
                    _ => return Poll::Pending,
                }
            }
        };
        self.stop();
        Poll::Ready(Forwarded::Next(Box::new(next)))
    }
}

fn poll_finishing(pair: &Pair, me: Leg, cx: &mut Context<'_>) -> Poll<State> {
    let end_of_ours = pair.poll_end(me, cx);
    if end_of_ours.is_none() && pair.is_closing() {
        return Poll::Ready(shutting_down(true));
    }
    match end_of_ours {
        Some(End::Clean) => Poll::Ready(end(Status::ok(""))),
        Some(End::Gone(_, why)) => Poll::Ready(end(own_abort(why))),
        // The peer finished writing but left before it read what our caller still sent.
        None if pair.has_left(me.other()) => {
            let (cause, why) = pair.peer_left(me.other(), false, None);
            Poll::Ready(peer_gone(cause, &why, true))
        }
        None => Poll::Pending,
    }
}

// ===== impl Body for Forward =====

impl Body for Forward {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, Status>>> {
        let this = self.get_mut();
        let polled = this.poll_state(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            let now = tokio::time::Instant::now();
            if let Some(idle) = &mut this.idle {
                idle.last = now;
            }
            if let State::Forwarding(f) | State::Draining(f) = &this.state {
                f.pair.sent(f.me, now);
            }
        } else if polled.is_pending()
            && this
                .idle
                .as_mut()
                .is_some_and(|idle| idle.poll(cx).is_ready())
        {
            // Nothing to send, the call still open, and a PING due.
            this.pairing.metrics.ping_frames.inc();
            return Poll::Ready(Some(Ok(BodyFrame::data(Bytes::from_static(PING_MESSAGE)))));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl Forward {
    /// The next frame of the state machine.
    fn poll_state(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, Status>>> {
        let this = self;
        let pairing = &*this.pairing;
        loop {
            let next = match &mut this.state {
                State::Waiting(w) => ready!(w.poll(pairing, cx)),
                State::Forwarding(f) => match ready!(f.poll(false, cx)) {
                    Forwarded::Send(bytes, goaway) => {
                        if goaway {
                            if let State::Forwarding(f) =
                                std::mem::replace(&mut this.state, State::Done)
                            {
                                this.state = State::Draining(f);
                            }
                        }
                        return Poll::Ready(Some(Ok(BodyFrame::data(bytes))));
                    }
                    Forwarded::Next(next) => *next,
                },
                State::Draining(f) => match ready!(f.poll(true, cx)) {
                    Forwarded::Send(bytes, _) => {
                        return Poll::Ready(Some(Ok(BodyFrame::data(bytes))))
                    }
                    Forwarded::Next(next) => *next,
                },
                State::Finishing { pair, me } => ready!(poll_finishing(pair, *me, cx)),
                State::GoAway(message, status) => {
                    let message = std::mem::take(message);
                    this.state = State::Trailers(std::mem::take(status));
                    return Poll::Ready(Some(Ok(BodyFrame::data(message))));
                }
                State::Trailers(trailers) => {
                    let trailers = std::mem::take(trailers);
                    this.state = State::Done;
                    return Poll::Ready(Some(Ok(BodyFrame::trailers(trailers))));
                }
                State::Done => return Poll::Ready(None),
            };
            this.state = next;
        }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        let pairing = &*self.pairing;
        match &mut self.state {
            State::Waiting(w) => {
                w.leave(pairing, CallResult::Left);
                pairing.metrics.call(CallResult::Left);
            }
            State::Forwarding(f) => {
                // Our caller's call is gone, and with it the reader of the peer's frames: the
                // peer's response finds out why from our request body. When the peer's response
                // is gone already (a proxy that cancels both calls at once), nobody else is
                // left to say how the peer went: this says it, from the peer's body.
                f.stop();
                if f.pair.has_left(f.me.other()) {
                    f.last_word();
                }
                f.pair.left(f.me);
            }
            State::Draining(f) => {
                // The peer sent GOAWAY: what it sends now has nowhere to go, but it finished.
                f.pair.set_end(f.me.other(), End::Clean);
                f.stop();
                f.pair.left(f.me);
            }
            State::Finishing { pair, me } => pair.left(*me),
            State::GoAway(..) | State::Trailers(_) | State::Done => {}
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
            State::GoAway(..) => "GoAway",
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
    // Driven through the router that owns it (its pairing and counters); the only import
    // from above this file.
    use crate::router::service::Inner;
    use crate::router::{Auth, Grant, Router};

    type Item = Result<BodyFrame<Bytes>, Status>;

    /// A request body whose frames the test sends.
    fn script() -> (mpsc::UnboundedSender<Item>, RequestBody) {
        let (tx, body) = crate::test_util::ScriptedBody::channel();
        (tx, RequestBody::new(body, 1024, None))
    }

    fn accept(inner: &Arc<Inner>, stream: &str, body: RequestBody) -> Forward {
        let grant = Grant {
            stream: stream.into(),
            expires: SystemTime::now() + Duration::from_secs(600),
        };
        let conn = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9)));
        inner
            .accept(grant, body, conn)
            .map_err(|refused| refused.0)
            .unwrap()
    }

    /// Two callers of stream "s", paired, each response polled once: the router, each
    /// caller's script sender and response.
    fn paired() -> (
        Router,
        mpsc::UnboundedSender<Item>,
        mpsc::UnboundedSender<Item>,
        Spawn<Forward>,
        Spawn<Forward>,
    ) {
        let router = Router::builder(Auth::new(b"k")).build();
        let (a_tx, a_body) = script();
        let (b_tx, b_body) = script();
        let mut a = spawn(accept(&router.inner, "s", a_body));
        let mut b = spawn(accept(&router.inner, "s", b_body));
        assert_pending!(poll(&mut a));
        assert_pending!(poll(&mut b));
        (router, a_tx, b_tx, a, b)
    }

    /// A gRPC message: prefix and `StreamRequest`.
    fn msg(frame_type: i32, payload: &[u8]) -> Bytes {
        crate::test_util::grpc_message(frame_type, payload).into()
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

    /// The reason in a GOAWAY message of the router's.
    fn goaway_reason(message: Bytes) -> String {
        let m = crate::proto::StreamResponse::decode(&message[5..]).expect("a StreamResponse");
        assert_eq!(m.frame_type, crate::proto::FrameType::Goaway as i32);
        assert_eq!(message.len(), 5 + m.encoded_len(), "one whole message");
        String::from_utf8(m.payload.to_vec()).expect("a UTF-8 reason")
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

    /// A call with nothing sent to it gets a PING frame each `ping_frame_interval`: while it
    /// waits for its peer, while paired, and once its peer finished; a call that gets data
    /// never does. On paused time.
    #[tokio::test(start_paused = true)]
    async fn quiet_calls_get_ping_frames_and_busy_ones_none() {
        assert_eq!(
            Bytes::from_static(PING_MESSAGE),
            crate::Frame::ping().into_message()
        );
        let every = Duration::from_secs(20);
        let keepalive = crate::router::Keepalive {
            ping_frame_interval: Some(every),
            ..Default::default()
        };
        let router = Router::builder(Auth::new(b"k"))
            .keepalive(keepalive)
            .build();
        let inner = router.inner.clone();
        let pings = |f: &mut Spawn<Forward>| {
            let mut n = 0;
            while let Poll::Ready(item) = poll(f) {
                assert_eq!(data(Poll::Ready(item)), PING_MESSAGE);
                n += 1;
            }
            n
        };
        // Waiting: nothing until 20 s have passed, then one PING.
        let (a_tx, a_body) = script();
        let mut a = spawn(accept(&inner, "s", a_body));
        assert_pending!(poll(&mut a));
        tokio::time::advance(every - Duration::from_millis(1)).await;
        assert!(!a.is_woken());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(a.is_woken());
        assert_eq!(pings(&mut a), 1);
        // Paired: A sends to B every 10 s for a minute. B gets only data; A, sent nothing,
        // gets a PING every 20 s.
        let (b_tx, b_body) = script();
        let mut b = spawn(accept(&inner, "s", b_body));
        assert_pending!(poll(&mut b));
        let mut a_pings = pings(&mut a);
        for _ in 0..6 {
            a_tx.send(Ok(BodyFrame::data(msg(0, b"x")))).unwrap();
            assert_eq!(data(poll(&mut b)), msg(0, b"x"));
            assert_pending!(poll(&mut b));
            tokio::time::advance(every / 2).await;
            a_pings += pings(&mut a);
        }
        assert_eq!(a_pings, 3, "A: a PING every 20 s of its minute");
        // A finishes; B, half-closed and quiet, gets its PINGs again.
        a_tx.send(Ok(BodyFrame::data(msg(7, b"")))).unwrap();
        drop(a_tx);
        assert_eq!(data(poll(&mut b)), msg(7, b""));
        assert_pending!(poll(&mut b));
        tokio::time::advance(every).await;
        assert_eq!(pings(&mut b), 1);
        // B finishes: both calls end OK, with no PING in between.
        b_tx.send(Ok(BodyFrame::data(msg(7, b"")))).unwrap();
        drop(b_tx);
        assert_eq!(data(poll(&mut a)), msg(7, b""));
        assert_eq!(status(&mut a), (tonic::Code::Ok, String::new()));
        assert_eq!(status(&mut b), (tonic::Code::Ok, String::new()));
        assert_eq!(router.metrics().ping_frames(), 5, "counted");
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
        a_tx.send(Ok(BodyFrame::data(chunk.clone()))).unwrap();
        assert!(b.is_woken());
        let got = data(poll(&mut b));
        assert_eq!((got.as_ptr(), &got), (at, &chunk));

        // A finishes: GOAWAY, end of body. B reads it, and its response waits for its own end.
        a_tx.send(Ok(BodyFrame::data(msg(7, b"")))).unwrap();
        drop(a_tx);
        assert_eq!(data(poll(&mut b)), msg(7, b""));
        assert_pending!(poll(&mut b));
        // B goes on sending after A's GOAWAY, then finishes too.
        b_tx.send(Ok(BodyFrame::data(msg(0, b"reply")))).unwrap();
        b_tx.send(Ok(BodyFrame::data(msg(7, b"")))).unwrap();
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
        let (router, a_tx, _b_tx, mut a, mut b) = paired();
        // One valid message, then a flag of 9, in one chunk.
        let good = msg(0, b"ok");
        let mut chunk = good.to_vec();
        chunk.extend_from_slice(&[9, 0, 0, 0, 0]);
        a_tx.send(Ok(BodyFrame::data(Bytes::from(chunk)))).unwrap();
        assert_eq!(data(poll(&mut b)), good);
        // B: a GOAWAY that says why, then the status with the same words.
        let why = goaway_reason(data(poll(&mut b)));
        assert!(why.contains("invalid compression flag"), "{why}");
        let (code, message) = status(&mut b);
        assert_eq!(code, tonic::Code::Aborted);
        assert_eq!(message, why);
        // A's own call ends as well, at once, with no GOAWAY: it broke the stream.
        assert!(a.is_woken());
        let (code, message) = status(&mut a);
        assert_eq!(code, tonic::Code::Aborted);
        assert!(message.contains("stream aborted"), "{message}");
        drop((a, b));
        assert_eq!(router.stats().active, 0);
        assert_eq!(router.metrics().calls(CallResult::Aborted), 1);
        assert_eq!(router.metrics().calls(CallResult::PeerGone), 1);
        assert_eq!(router.stats().aborts_total, 1);
    }

    #[tokio::test]
    async fn a_caller_that_leaves_mid_stream_ends_its_peer_with_goaway_then_aborted() {
        let (router, _a_tx, _b_tx, mut a, b) = paired();
        // B's call is cancelled: its response body is dropped, its request body says nothing.
        drop(b);
        assert!(a.is_woken());
        let why = goaway_reason(data(poll(&mut a)));
        assert!(why.contains("peer cancelled its call"), "{why}");
        let (code, message) = status(&mut a);
        assert_eq!((code, message), (tonic::Code::Aborted, why));
        drop(a);
        // A cancel is no abort.
        assert_eq!(router.stats().aborts_total, 0);
        assert_eq!(router.metrics().calls(CallResult::Cancelled), 1);
        assert_eq!(router.metrics().calls(CallResult::PeerGone), 1);
    }

    #[tokio::test]
    async fn a_message_across_chunks_goes_out_whole_as_the_same_slices() {
        let (_router, a_tx, _b_tx, _a, mut b) = paired();
        // Two messages cut in three chunks: [m1 | m2 head] [m2 middle] [m2 tail].
        let (m1, m2) = (msg(0, b"first"), msg(0, &[7u8; 300]));
        let chunk = Bytes::from([m1.clone(), m2.clone()].concat());
        let cuts = [0, m1.len() + 10, m1.len() + 100, chunk.len()];
        for w in cuts.windows(2) {
            a_tx.send(Ok(BodyFrame::data(chunk.slice(w[0]..w[1]))))
                .unwrap();
        }
        // m1 at once; m2's head, middle and tail only together, as the received slices.
        let got = data(poll(&mut b));
        assert_eq!((got.as_ptr(), &got[..]), (chunk.as_ptr(), &m1[..]));
        let mut rest = Vec::new();
        let starts = [m1.len(), cuts[1], cuts[2]];
        for at in starts {
            let piece = data(poll(&mut b));
            assert_eq!(piece.as_ptr(), chunk[at..].as_ptr(), "no copy");
            rest.extend_from_slice(&piece);
        }
        assert_eq!(rest, m2);
        assert_pending!(poll(&mut b));
    }

    #[tokio::test]
    async fn a_peer_that_vanishes_mid_message_leaves_whole_messages_then_goaway() {
        let (router, a_tx, _b_tx, a, mut b) = paired();
        let (m1, m2) = (msg(0, b"whole"), msg(0, b"torn message"));
        let chunk = Bytes::from([m1.clone(), m2.clone()].concat());
        // All of m1 and half of m2, then the body fails (a lost connection).
        a_tx.send(Ok(BodyFrame::data(chunk.slice(..m1.len() + 6))))
            .unwrap();
        a_tx.send(Err(Status::unavailable("connection reset")))
            .unwrap();
        assert_eq!(data(poll(&mut b)), m1);
        // The torn half never goes out: B gets a GOAWAY on a message boundary.
        let why = goaway_reason(data(poll(&mut b)));
        assert!(why.contains("peer vanished"), "{why}");
        assert!(why.contains("connection reset"), "{why}");
        assert_eq!(status(&mut b).0, tonic::Code::Aborted);
        drop((a, b));
        assert_eq!(router.metrics().calls(CallResult::Lost), 1);
        assert_eq!(router.metrics().calls(CallResult::PeerGone), 1);
    }

    /// Both calls of a pair cancelled at once (a proxy's timer fires for both), their
    /// responses dropped with nobody polling: the session is counted as cancelled, not as a
    /// clean finish.
    #[tokio::test]
    async fn both_calls_gone_at_once_is_no_clean_finish() {
        let (router, _a_tx, _b_tx, a, b) = paired();
        drop(a);
        drop(b);
        assert_eq!(router.stats().active, 0);
        assert_eq!(router.metrics().calls(CallResult::Finished), 0);
        assert_eq!(router.metrics().calls(CallResult::Cancelled), 1);
        assert_eq!(router.metrics().calls(CallResult::PeerGone), 1);
    }

    /// A request body that ends cleanly inside a message (what a proxy leaves when it gives
    /// up on a call): its peer is told it was cut short, not that its caller finished.
    #[tokio::test]
    async fn a_body_cut_short_inside_a_message_is_named_as_such() {
        let (router, a_tx, _b_tx, a, mut b) = paired();
        let m = msg(0, b"cut short");
        a_tx.send(Ok(BodyFrame::data(m.slice(..7)))).unwrap();
        drop(a_tx);
        let why = goaway_reason(data(poll(&mut b)));
        assert!(why.contains("peer aborted the stream"), "{why}");
        assert!(why.contains("ended in the middle of a message"), "{why}");
        assert_eq!(status(&mut b).0, tonic::Code::Aborted);
        drop((a, b));
        assert_eq!(router.metrics().calls(CallResult::Aborted), 1);
    }

    #[tokio::test]
    async fn a_rst_stream_then_the_end_is_a_reset_and_the_peer_gets_both() {
        let (router, a_tx, _b_tx, a, mut b) = paired();
        a_tx.send(Ok(BodyFrame::data(msg(3, b"")))).unwrap();
        drop(a_tx);
        // The RST_STREAM frame is forwarded as it is, then the router's GOAWAY and status.
        assert_eq!(data(poll(&mut b)), msg(3, b""));
        let why = goaway_reason(data(poll(&mut b)));
        assert!(why.contains("peer reset the stream"), "{why}");
        assert_eq!(status(&mut b).0, tonic::Code::Aborted);
        drop((a, b));
        assert_eq!(router.metrics().calls(CallResult::Reset), 1);
    }

    #[tokio::test]
    async fn a_survivor_that_had_the_peers_goaway_gets_no_second_one() {
        let (_router, a_tx, _b_tx, _a, mut b) = paired();
        // A finishes writing (GOAWAY), then its connection dies before its body ends.
        a_tx.send(Ok(BodyFrame::data(msg(7, b"")))).unwrap();
        assert_eq!(data(poll(&mut b)), msg(7, b""));
        a_tx.send(Err(Status::unavailable("gone"))).unwrap();
        let (code, message) = status(&mut b);
        assert_eq!(code, tonic::Code::Aborted);
        assert!(message.contains("peer vanished"), "{message}");
    }

    #[tokio::test]
    async fn end_all_calls_gives_each_caller_goaway_then_unavailable() {
        let router = Router::builder(Auth::new(b"k")).build();
        let inner = router.inner.clone();
        let (_a_tx, a_body) = script();
        let (_b_tx, b_body) = script();
        let (_c_tx, c_body) = script();
        let mut a = spawn(accept(&inner, "s", a_body));
        let mut b = spawn(accept(&inner, "s", b_body));
        let mut waiter = spawn(accept(&inner, "t", c_body));
        assert_pending!(poll(&mut a));
        assert_pending!(poll(&mut b));
        assert_pending!(poll(&mut waiter));
        router.end_all_calls();
        assert!(a.is_woken() && b.is_woken() && waiter.is_woken());
        for f in [&mut a, &mut b] {
            let why = goaway_reason(data(poll(f)));
            assert!(why.contains("router shutting down"), "{why}");
            assert_eq!(status(f), (tonic::Code::Unavailable, why));
        }
        let (code, message) = status(&mut waiter);
        assert_eq!(code, tonic::Code::Unavailable);
        assert!(message.contains("router shutting down"), "{message}");
        drop((a, b, waiter));
        let s = router.stats();
        assert_eq!((s.active, s.pending, s.aborts_total), (0, 0, 0));
        assert_eq!(router.metrics().calls(CallResult::Shutdown), 3);
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
