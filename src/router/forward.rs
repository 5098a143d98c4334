//! Pairing and forwarding: the response stream of each caller reads its peer's request
//! stream directly (no channel, no task, no payload copy per frame).
//!
//! ```text
//!   caller A ──requests──►  Forward(B)  = B's response    ──► caller B
//!   caller A ◄── Forward(A) = A's response ◄──requests──      caller B
//! ```
//!
//! The half-close rule: when a caller finishes cleanly (GOAWAY, then the end of its request
//! stream) its peer's response ends only once the peer's own request stream has ended too,
//! so the peer can go on sending after it read EOF. When a caller aborts (an error, or an end
//! without GOAWAY), the other caller's call ends at once with status `Aborted`. Every frame
//! is forwarded as it is, RST_STREAM and unknown types included, and forwarding goes on after
//! them (as in Jumpstarter's Go router): what a RST_STREAM means is for the endpoints.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use futures_core::Stream;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;
use tonic::codec::Streaming;
use tonic::Status;

use super::metrics::{CallResult, Direction, Metrics};
use super::{Inner, StreamTag};
use crate::proto::{FrameType, StreamRequest, StreamResponse};

/// How a caller's request stream ended.
#[derive(Clone, Debug)]
enum End {
    /// GOAWAY, then the end of the stream.
    Clean,
    /// Anything else; the message says what.
    Abort(String),
}

#[derive(Default)]
struct Leg {
    /// How this caller's request stream ended (set by the peer's forwarder, which reads it).
    end: Option<End>,
    /// The waker of this caller's own response, waiting for `end`.
    waiter: Option<Waker>,
}

/// State shared by the two forwarders of a pair.
pub(super) struct Pair {
    legs: Mutex<[Leg; 2]>,
    /// Set with the first `End::Abort`: lets a busy forwarder notice it without the lock.
    aborted: AtomicBool,
    /// Payload bytes each way, by [`Direction`]: added by each forwarder when it ends.
    bytes: [AtomicU64; 2],
    metrics: Metrics,
    tag: StreamTag,
    since: Instant,
}

impl Pair {
    pub(super) fn new(metrics: Metrics, tag: StreamTag) -> Arc<Pair> {
        metrics.active_pairs.inc();
        metrics.pairs.inc();
        Arc::new(Pair {
            legs: Default::default(),
            aborted: AtomicBool::new(false),
            bytes: Default::default(),
            metrics,
            tag,
            since: Instant::now(),
        })
    }

    /// Records how caller `who`'s request stream ended and wakes its response.
    fn set_end(&self, who: usize, end: End) {
        let waker = {
            let mut legs = self.legs.lock().unwrap_or_else(|e| e.into_inner());
            let leg = &mut legs[who];
            if leg.end.is_some() {
                return;
            }
            if let End::Abort(why) = &end {
                tracing::debug!(stream = %self.tag, caller = who, reason = %why, "caller aborted");
                self.metrics.aborts.inc();
                self.aborted.store(true, Ordering::Release);
            }
            leg.end = Some(end);
            leg.waiter.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// How caller `who`'s request stream ended; registers `cx` to be woken when it does.
    fn poll_end(&self, who: usize, cx: &mut Context<'_>) -> Option<End> {
        let mut legs = self.legs.lock().unwrap_or_else(|e| e.into_inner());
        let leg = &mut legs[who];
        if leg.end.is_none() {
            match &leg.waiter {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => leg.waiter = Some(cx.waker().clone()),
            }
        }
        leg.end.clone()
    }
}

impl Drop for Pair {
    /// The session is over: both forwarders are gone.
    fn drop(&mut self) {
        let m = &self.metrics;
        m.active_pairs.dec();
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
    pub(super) peer_inbound: Streaming<StreamRequest>,
    pub(super) pair: Arc<Pair>,
}

impl Link {
    /// The waiting caller (leg 0) left before it took this link: nobody will read the new
    /// caller's frames, so the new caller's call ends with an abort rather than waiting for
    /// ever (even if the waiter had finished cleanly, what the new caller sends is lost).
    pub(super) fn abandon(self) {
        self.pair.set_end(
            1,
            End::Abort("the waiting caller left while pairing".into()),
        );
    }
}

/// The response stream of one caller of the router.
pub struct Forward {
    state: State,
    inner: Arc<Inner>,
}

enum State {
    /// The first caller of a stream id, waiting for the second.
    Waiting {
        stream: String,
        tag: StreamTag,
        caller: u64,
        rx: oneshot::Receiver<Link>,
        deadline: Option<(Pin<Box<tokio::time::Sleep>>, &'static str)>,
    },
    /// Forwarding the peer's frames. `me` is this caller's leg, the peer's is `1 - me`.
    Forwarding {
        peer_inbound: Streaming<StreamRequest>,
        pair: Arc<Pair>,
        me: usize,
        peer_goaway: bool,
        /// The router's counter of bytes in this direction, and this forwarder's own count.
        counter: Counter,
        forwarded: u64,
    },
    /// The peer finished cleanly; the response ends when this caller's request stream has.
    Finishing {
        pair: Arc<Pair>,
        me: usize,
    },
    Done,
}

impl State {
    fn forwarding(link: Link, me: usize) -> Self {
        State::Forwarding {
            counter: link.pair.metrics.bytes_counter(carried(me)),
            peer_inbound: link.peer_inbound,
            pair: link.pair,
            me,
            peer_goaway: false,
            forwarded: 0,
        }
    }
}

/// The direction of the frames leg `me`'s response carries: leg 0 waited, so its response
/// carries the second caller's frames.
fn carried(me: usize) -> Direction {
    if me == 0 {
        Direction::SecondToFirst
    } else {
        Direction::FirstToSecond
    }
}

// ===== impl Forward =====

impl Forward {
    pub(super) fn waiting(
        inner: Arc<Inner>,
        stream: String,
        tag: StreamTag,
        caller: u64,
        rx: oneshot::Receiver<Link>,
        deadline: Option<(tokio::time::Instant, &'static str)>,
    ) -> Self {
        Forward {
            state: State::Waiting {
                stream,
                tag,
                caller,
                rx,
                deadline: deadline.map(|(at, why)| (Box::pin(tokio::time::sleep_until(at)), why)),
            },
            inner,
        }
    }

    pub(super) fn forwarding(inner: Arc<Inner>, link: Link, me: usize) -> Self {
        Forward {
            state: State::forwarding(link, me),
            inner,
        }
    }

    /// The status that ends this caller's call when its peer aborted.
    fn abort_status(why: &str) -> Status {
        Status::aborted(format!("peer aborted the stream: {why}"))
    }

    /// The status that ends this caller's call when the caller itself aborted.
    fn own_abort_status(why: &str) -> Status {
        Status::aborted(format!("stream aborted: {why}"))
    }
}

impl Stream for Forward {
    type Item = Result<StreamResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Waiting { rx, deadline, .. } => {
                    // The peer first: a peer that arrived as the deadline passed is paired.
                    let arrived = Pin::new(rx).poll(cx);
                    if arrived.is_pending() {
                        if let Some((sleep, why)) = deadline {
                            if sleep.as_mut().poll(cx).is_ready() {
                                let why = *why;
                                this.leave_waiting(CallResult::TimedOut);
                                return Poll::Ready(Some(Err(Status::deadline_exceeded(why))));
                            }
                        }
                    }
                    match std::task::ready!(arrived) {
                        Ok(link) => this.state = State::forwarding(link, 0),
                        Err(_) => {
                            this.finish(CallResult::Aborted);
                            return Poll::Ready(Some(Err(Status::unavailable(
                                "router: stream closed before the peer arrived",
                            ))));
                        }
                    }
                }
                State::Forwarding {
                    peer_inbound,
                    pair,
                    me,
                    peer_goaway,
                    counter,
                    forwarded,
                } => {
                    let (me, peer) = (*me, 1 - *me);
                    // Our own caller aborted (the peer's forwarder saw it): end now, even while
                    // the peer keeps sending.
                    if pair.aborted.load(Ordering::Acquire) {
                        if let Some(End::Abort(why)) = pair.poll_end(me, cx) {
                            this.finish(CallResult::Aborted);
                            return Poll::Ready(Some(Err(Self::own_abort_status(&why))));
                        }
                    }
                    match Pin::new(peer_inbound).poll_next(cx) {
                        Poll::Ready(Some(Ok(req))) => {
                            if req.frame_type == FrameType::Goaway as i32 {
                                *peer_goaway = true;
                            }
                            let n = req.payload.len() as u64;
                            counter.inc_by(n);
                            *forwarded += n;
                            return Poll::Ready(Some(Ok(StreamResponse {
                                payload: req.payload,
                                frame_type: req.frame_type,
                            })));
                        }
                        Poll::Ready(Some(Err(status)))
                            if *peer_goaway
                                && matches!(pair.poll_end(me, cx), Some(End::Clean)) =>
                        {
                            // Both sides sent GOAWAY and our caller finished: a cancel of the
                            // peer's call now loses nothing.
                            tracing::trace!(code = ?status.code(), "router: error after both GOAWAYs");
                            pair.set_end(peer, End::Clean);
                            this.finish(CallResult::Finished);
                            return Poll::Ready(None);
                        }
                        Poll::Ready(Some(Err(status))) => {
                            let why = format!("{:?}: {}", status.code(), status.message());
                            pair.set_end(peer, End::Abort(why.clone()));
                            this.finish(CallResult::Aborted);
                            return Poll::Ready(Some(Err(Self::abort_status(&why))));
                        }
                        Poll::Ready(None) if *peer_goaway => {
                            pair.set_end(peer, End::Clean);
                            let pair = pair.clone();
                            this.count_forwarded();
                            this.state = State::Finishing { pair, me };
                        }
                        Poll::Ready(None) => {
                            let why = "ended its stream without GOAWAY";
                            pair.set_end(peer, End::Abort(why.into()));
                            this.finish(CallResult::Aborted);
                            return Poll::Ready(Some(Err(Self::abort_status(why))));
                        }
                        Poll::Pending => {
                            // Our own caller may have aborted (the peer's forwarder saw it).
                            if let Some(End::Abort(why)) = pair.poll_end(me, cx) {
                                this.finish(CallResult::Aborted);
                                return Poll::Ready(Some(Err(Self::own_abort_status(&why))));
                            }
                            return Poll::Pending;
                        }
                    }
                }
                State::Finishing { pair, me } => {
                    let end = std::task::ready!(match pair.poll_end(*me, cx) {
                        Some(end) => Poll::Ready(end),
                        None => Poll::Pending,
                    });
                    return Poll::Ready(match end {
                        End::Clean => {
                            this.finish(CallResult::Finished);
                            None
                        }
                        End::Abort(why) => {
                            this.finish(CallResult::Aborted);
                            Some(Err(Self::own_abort_status(&why)))
                        }
                    });
                }
                State::Done => return Poll::Ready(None),
            }
        }
    }
}

impl Forward {
    /// Adds what this forwarder carried to its pair's count (once, as it stops forwarding).
    fn count_forwarded(&mut self) {
        if let State::Forwarding {
            pair,
            me,
            forwarded,
            ..
        } = &mut self.state
        {
            pair.bytes[carried(*me) as usize]
                .fetch_add(std::mem::take(forwarded), Ordering::Relaxed);
        }
    }

    /// The call's end: counts it with `result`; the state is `Done` from here on.
    fn finish(&mut self, result: CallResult) {
        self.count_forwarded();
        self.state = State::Done;
        self.inner.metrics.call(result);
    }

    fn leave_waiting(&mut self, result: CallResult) {
        if let State::Waiting {
            stream,
            tag,
            caller,
            mut rx,
            ..
        } = std::mem::replace(&mut self.state, State::Done)
        {
            tracing::debug!(stream = %tag, result = result.as_str(), "stopped waiting for the peer");
            self.inner.metrics.call(result);
            self.inner.remove_pending(&stream, caller);
            // A peer may have been paired with us just now.
            if let Ok(link) = rx.try_recv() {
                link.abandon();
            }
        }
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        match &self.state {
            State::Waiting { .. } => self.leave_waiting(CallResult::Left),
            State::Forwarding {
                pair,
                me,
                peer_goaway,
                ..
            } => {
                // Our caller's call is gone, and with it the reader of the peer's frames.
                let end = if *peer_goaway {
                    End::Clean
                } else {
                    End::Abort("the other caller left before reading everything".into())
                };
                pair.set_end(1 - *me, end);
                self.finish(CallResult::Aborted);
            }
            // Dropped before its end: the call was cancelled.
            State::Finishing { .. } => self.finish(CallResult::Aborted),
            State::Done => {}
        }
    }
}

impl fmt::Debug for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Waiting { .. } => "Waiting",
            State::Forwarding { .. } => "Forwarding",
            State::Finishing { .. } => "Finishing",
            State::Done => "Done",
        };
        f.debug_struct("Forward").field("state", &state).finish()
    }
}
