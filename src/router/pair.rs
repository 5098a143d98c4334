//! The pair: the state the two callers of a stream share while their frames are forwarded
//! ([`Pair`]), which caller is which ([`Leg`]), what a waiting caller receives when its peer
//! comes ([`Link`]), and the stream's name in the logs ([`StreamTag`]).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Context;
use std::time::Instant;

use atomic_waker::AtomicWaker;

use super::body::{Cause, RequestBody};
use super::metrics::{CallResult, Direction, Metrics};

/// The two callers of a pair, in the order they came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Leg {
    /// The caller that waited.
    First = 0,
    /// The caller that came second.
    Second = 1,
}

impl Leg {
    pub(super) fn other(self) -> Leg {
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

    fn as_str(self) -> &'static str {
        match self {
            Leg::First => "first",
            Leg::Second => "second",
        }
    }
}

// ===== the pair =====

/// How a caller's request body ended.
#[derive(Clone, Debug)]
pub(super) enum End {
    /// GOAWAY, then the end of the body.
    Clean,
    /// The caller went, or broke the stream.
    Gone(Cause, String),
}

#[derive(Default)]
struct LegEnd {
    /// How this caller's request body ended (set once, by the peer's forwarder, which reads it).
    end: OnceLock<End>,
    /// The waker of this caller's own response, waiting for `end` (or for its peer to leave).
    waker: AtomicWaker,
    /// This caller's response is gone: nobody reads its peer's frames any more.
    left: AtomicBool,
    /// This caller took its part in the pair (the waiting one may leave before it does): its
    /// call is counted when the pair is over.
    joined: AtomicBool,
}

/// State shared by the two forwarders of a pair.
pub(super) struct Pair {
    legs: [LegEnd; 2],
    /// Set with the first `End::Gone`: lets a busy forwarder notice it without the lock.
    gone: AtomicBool,
    /// The router is shutting down past its grace period: both calls end now.
    closing: AtomicBool,
    /// A RST_STREAM frame came through from this caller: if the pair does not finish, that
    /// reset is its outcome, whatever the other caller did next (ours cancels its call).
    reset_by: [AtomicBool; 2],
    /// The first caller that went, and how: the pair's outcome.
    outcome: OnceLock<(Leg, Cause, String)>,
    /// Payload bytes each way, by [`Direction`]: added by each forwarder when it stops.
    bytes: [AtomicU64; 2],
    /// When each caller was last sent a frame of its peer's, in ms from `since`: how quiet
    /// the session was when it ended (a proxy's idle timeout ends a session after exactly
    /// its timer of silence).
    last_sent: [AtomicU64; 2],
    metrics: Metrics,
    tag: StreamTag,
    since: Instant,
}

impl Pair {
    pub(super) fn new(metrics: Metrics, tag: StreamTag) -> Arc<Pair> {
        metrics.pair_started();
        let pair = Pair {
            legs: Default::default(),
            gone: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            reset_by: Default::default(),
            outcome: OnceLock::new(),
            bytes: Default::default(),
            last_sent: Default::default(),
            metrics,
            tag,
            since: Instant::now(),
        };
        pair.legs[Leg::Second as usize]
            .joined
            .store(true, Ordering::Relaxed);
        Arc::new(pair)
    }

    /// Records how caller `who`'s request body ended (the first word counts) and wakes its
    /// response.
    pub(super) fn set_end(&self, who: Leg, end: End) {
        let leg = &self.legs[who as usize];
        let gone = match &end {
            End::Gone(cause, why) => Some((*cause, why.clone())),
            End::Clean => None,
        };
        if leg.end.set(end).is_err() {
            return;
        }
        if let Some((cause, why)) = gone {
            tracing::debug!(stream = %self.tag, caller = who.as_str(), ?cause, reason = %why, "caller went");
            let _ = self.outcome.set((who, cause, why));
            self.gone.store(true, Ordering::Release);
        }
        leg.waker.wake();
    }

    /// Caller `who` was sent a frame of its peer's at `now`.
    pub(super) fn sent(&self, who: Leg, now: tokio::time::Instant) {
        let ms = now
            .into_std()
            .saturating_duration_since(self.since)
            .as_millis();
        self.last_sent[who as usize].store(ms as u64, Ordering::Relaxed);
    }

    /// Ends both calls with a GOAWAY, then `UNAVAILABLE`: the router is shutting down.
    /// `who` took its part in the pair: its call is counted when the pair is over.
    pub(super) fn join(&self, who: Leg) {
        self.legs[who as usize]
            .joined
            .store(true, Ordering::Relaxed);
    }

    /// The router's counter of payload bytes that `who`'s response carries.
    pub(super) fn bytes_counter(&self, who: Leg) -> prometheus_client::metrics::counter::Counter {
        self.metrics.bytes_counter(who.carries())
    }

    /// Adds `n` payload bytes that `who`'s response carried, for the session's log line.
    pub(super) fn add_bytes(&self, who: Leg, n: u64) {
        self.bytes[who.carries() as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// The router is shutting down past its grace period: both calls end now.
    pub(super) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// A RST_STREAM frame came through from `who`.
    pub(super) fn reset_by(&self, who: Leg) {
        self.reset_by[who as usize].store(true, Ordering::Relaxed);
    }

    pub(super) fn close(&self) {
        self.closing.store(true, Ordering::Release);
        for leg in &self.legs {
            leg.waker.wake();
        }
    }

    /// Caller `who`'s response is gone: wakes its peer's response, which finds out why.
    pub(super) fn left(&self, who: Leg) {
        self.legs[who as usize].left.store(true, Ordering::Release);
        self.legs[who.other() as usize].waker.wake();
    }

    /// Whether caller `who`'s response is gone (see [`poll_end`](Pair::poll_end) for the
    /// waker).
    pub(super) fn has_left(&self, who: Leg) -> bool {
        self.legs[who as usize].left.load(Ordering::Acquire)
    }

    /// How caller `who`'s request body ended; registers `cx` to be woken when it does, or
    /// when its peer leaves. No lock: an atomic waker, then the end checked again.
    pub(super) fn poll_end(&self, who: Leg, cx: &mut Context<'_>) -> Option<&End> {
        let leg = &self.legs[who as usize];
        if let Some(end) = leg.end.get() {
            return Some(end);
        }
        leg.waker.register(cx.waker());
        leg.end.get()
    }

    /// Our own caller went or broke the stream (the peer's forwarder saw it): why.
    pub(super) fn own_gone(&self, me: Leg, cx: &mut Context<'_>) -> Option<(Cause, String)> {
        if !self.gone.load(Ordering::Acquire) {
            return None;
        }
        match self.poll_end(me, cx) {
            Some(End::Gone(cause, why)) => Some((*cause, why.clone())),
            _ => None,
        }
    }

    /// The peer's response is gone and its body had no more to say: how it went. A peer
    /// that finished writing cleanly and left before reading everything counts as cancelled.
    /// `reset`: a RST_STREAM frame came through from it (then it is a reset); `connection`:
    /// how its connection ended, if it did (then it is lost).
    pub(super) fn peer_left(
        &self,
        peer: Leg,
        reset: bool,
        connection: Option<&str>,
    ) -> (Cause, String) {
        let (cause, why) = match connection {
            _ if reset => (
                Cause::Reset,
                "it sent a RST_STREAM frame, then its call ended",
            ),
            Some(why) => (Cause::Lost, why),
            None => (Cause::Cancelled, "its call ended before it read everything"),
        };
        self.set_end(peer, End::Gone(cause, why.into()));
        if let Some(End::Gone(cause, why)) = self.legs[peer as usize].end.get() {
            return (*cause, why.clone());
        }
        let _ = self.outcome.set((peer, cause, why.into()));
        (cause, why.into())
    }
}

impl Drop for Pair {
    /// The session is over: both forwarders are gone. Each call is counted here, once.
    fn drop(&mut self) {
        let m = &self.metrics;
        let duration = self.since.elapsed();
        Metrics::observe(&m.session_duration, duration);
        let reset = [Leg::First, Leg::Second]
            .into_iter()
            .find(|l| self.reset_by[*l as usize].load(Ordering::Relaxed));
        let outcome = match (self.outcome.get(), reset) {
            (Some(_), Some(leg)) => Some((leg, Cause::Reset, "it sent a RST_STREAM frame".into())),
            (outcome, _) => outcome.cloned(),
        };
        for (i, leg) in self.legs.iter().enumerate() {
            if !leg.joined.load(Ordering::Relaxed) {
                continue;
            }
            let result = match (&outcome, leg.end.get()) {
                (Some((who, cause, _)), _) if *who as usize == i => cause.result(),
                (Some(_), _) if reset.is_some() => CallResult::PeerGone,
                (_, Some(End::Gone(cause, _))) => cause.result(),
                _ if self.closing.load(Ordering::Relaxed) => CallResult::Shutdown,
                (None, _) => CallResult::Finished,
                (Some(_), _) => CallResult::PeerGone,
            };
            m.call(result);
            if matches!(
                result,
                CallResult::Lost | CallResult::Reset | CallResult::Aborted
            ) {
                m.aborted();
            }
        }
        // Last: a waiter for `active == 0` finds every count of this pair in.
        m.pair_ended();
        let (outcome, caller, reason) = match &outcome {
            Some((leg, cause, why)) => (cause.result().as_str(), leg.as_str(), why.as_str()),
            None if self.closing.load(Ordering::Relaxed) => ("shutdown", "", SHUTDOWN),
            None => ("finished", "", ""),
        };
        let [to_second, to_first] = &self.bytes;
        let last = self
            .last_sent
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .max();
        let quiet_ms = (duration.as_millis() as u64).saturating_sub(last.unwrap_or_default());
        tracing::info!(
            stream = %self.tag,
            outcome,
            caller,
            reason,
            bytes_first_to_second = to_second.load(Ordering::Relaxed),
            bytes_second_to_first = to_first.load(Ordering::Relaxed),
            duration_ms = duration.as_millis() as u64,
            quiet_ms,
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
    /// frames, and the second caller learns it as from any peer that left.
    pub(super) fn abandon(self) {
        self.pair.set_end(
            Leg::First,
            End::Gone(
                Cause::Cancelled,
                "the waiting caller left while pairing".into(),
            ),
        );
        self.pair.left(Leg::First);
    }
}

/// What the callers of a pair are told when the router shuts down past its grace period.
pub(super) const SHUTDOWN: &str = "router shutting down: its grace period is over";

// ===== StreamTag =====

/// What the logs say for a stream id: the first 8 bytes of its SHA-256, in hex. Stable across
/// routers and restarts (an operator can compute it from a stream id), and never the token.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct StreamTag([u8; 8]);

impl StreamTag {
    pub(crate) fn of(stream: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, stream.as_bytes());
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&digest.as_ref()[..8]);
        StreamTag(tag)
    }
}

impl fmt::Display for StreamTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for StreamTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
