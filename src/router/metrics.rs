//! The router's metrics, kept in the Prometheus project's own client (`prometheus-client`).
//!
//! One set of counters serves [`Router::stats`](super::Router::stats), the `/metrics`
//! endpoint of `serve --metrics-listen`, and an embedding program's own registry
//! ([`Metrics::register`]). The forwarding path touches one atomic counter per forwarded chunk
//! (a handle taken out of its family once, so no lock); gauges, outcome counters and
//! histograms change once per call.
//!
//! | metric | type | what |
//! |---|---|---|
//! | `jumpstarter_router_active_pairs` | gauge | pairs whose forwarding has not ended |
//! | `jumpstarter_router_pending_callers` | gauge | callers waiting for their peer |
//! | `jumpstarter_router_calls_total{result}` | counter | calls by what became of them: `paired` (found its peer; two per pair), `refused` (bad or missing token), `timed_out` (no peer before the pairing timeout or the token's expiry), `left` (left before a peer came), and for paired calls their end: `finished` (clean, status OK), `cancelled` (its caller cancelled the call: the normal end of a real Jumpstarter client), `lost` (its caller's connection died), `reset` (its caller sent RST_STREAM), `aborted` (its caller broke the stream: an invalid message, an end without GOAWAY), `peer_gone` (ended because its peer went: GOAWAY, then `ABORTED`), `shutdown` (ended by the router's shutdown past its grace: GOAWAY, then `UNAVAILABLE`) |
//! | `jumpstarter_router_pairs_total` | counter | pairs made |
//! | `jumpstarter_router_bytes_forwarded_total{direction}` | counter | payload bytes, `first_to_second` (from the caller that waited to the one that came second) and `second_to_first` |
//! | `jumpstarter_router_pairing_wait_seconds` | histogram | how long the first caller of a pair waited for the second |
//! | `jumpstarter_router_session_duration_seconds` | histogram | from pairing to the end of both calls |

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::sync::Notify;

/// The prefix of every metric name.
const PREFIX: &str = "jumpstarter_router";

type Labels = [(&'static str, &'static str); 1];

/// What became of a call: the `result` label of `jumpstarter_router_calls_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallResult {
    /// Found its peer.
    Paired,
    /// Bad or missing token.
    Refused,
    /// No peer before the pairing timeout or the token's expiry.
    TimedOut,
    /// Left before a peer came.
    Left,
    /// A paired call that ended cleanly (status OK).
    Finished,
    /// A paired call that its caller cancelled (HTTP/2 `CANCEL` on a live connection): how a
    /// real Jumpstarter client ends its session.
    Cancelled,
    /// A paired call whose caller's connection died (reset, closed, keepalive timeout).
    Lost,
    /// A paired call whose caller reset it (a RST_STREAM frame, or HTTP/2 RST_STREAM with an
    /// error code).
    Reset,
    /// A paired call whose caller broke the stream (an invalid message, an end without
    /// GOAWAY).
    Aborted,
    /// A paired call that was ended because its peer went (cancelled, lost, reset or
    /// aborted): it got a GOAWAY, then status `ABORTED` with the reason.
    PeerGone,
    /// A paired call that the router ended as it shut down past its grace period: a GOAWAY,
    /// then status `UNAVAILABLE`.
    Shutdown,
}

impl CallResult {
    const ALL: [CallResult; 11] = [
        CallResult::Paired,
        CallResult::Refused,
        CallResult::TimedOut,
        CallResult::Left,
        CallResult::Finished,
        CallResult::Cancelled,
        CallResult::Lost,
        CallResult::Reset,
        CallResult::Aborted,
        CallResult::PeerGone,
        CallResult::Shutdown,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CallResult::Paired => "paired",
            CallResult::Refused => "refused",
            CallResult::TimedOut => "timed_out",
            CallResult::Left => "left",
            CallResult::Finished => "finished",
            CallResult::Cancelled => "cancelled",
            CallResult::Lost => "lost",
            CallResult::Reset => "reset",
            CallResult::Aborted => "aborted",
            CallResult::PeerGone => "peer_gone",
            CallResult::Shutdown => "shutdown",
        }
    }
}

/// Which way bytes went through a pair: the `direction` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// From the caller that waited to the one that came second.
    FirstToSecond = 0,
    /// From the caller that came second to the one that waited.
    SecondToFirst = 1,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::FirstToSecond => "first_to_second",
            Direction::SecondToFirst => "second_to_first",
        }
    }
}

/// A snapshot of a router's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouterStats {
    /// Callers waiting for their peer.
    pub pending: usize,
    /// Pairs whose forwarding has not ended.
    pub active: usize,
    /// Pairs made since start.
    pub pairs_total: u64,
    /// Callers that went other than cleanly or by cancelling their call (their connection
    /// lost, a reset, an invalid stream, an end without GOAWAY) since start.
    pub aborts_total: u64,
    /// Payload bytes forwarded, both directions, since start.
    pub bytes_forwarded: u64,
}

/// A router's metrics. Cheap to clone: clones share the counters.
///
/// ```
/// use jumpstarter_router::router::prometheus_client::registry::Registry;
/// use jumpstarter_router::router::{Auth, Router};
///
/// let router = Router::builder(Auth::new(b"key")).build();
/// let mut registry = Registry::default();
/// router.metrics().register(&mut registry);
/// let mut text = String::new();
/// jumpstarter_router::router::prometheus_client::encoding::text::encode(&mut text, &registry)
///     .unwrap();
/// assert!(text.contains("jumpstarter_router_active_pairs 0"));
/// ```
#[derive(Clone)]
pub struct Metrics {
    active_pairs: Gauge,
    pending_callers: Gauge,
    calls: Family<Labels, Counter>,
    /// `calls` by [`CallResult`], taken out of the family once.
    by_result: [Counter; CallResult::ALL.len()],
    pairs: Counter,
    /// Callers that went other than cleanly or by cancelling (lost, reset, aborted):
    /// `RouterStats::aborts_total`.
    aborts: Counter,
    bytes: Family<Labels, Counter>,
    /// `bytes` by [`Direction`], taken out of the family once.
    by_direction: [Counter; 2],
    pub(crate) pairing_wait: Histogram,
    pub(crate) session_duration: Histogram,
    /// PING frames the router wrote on quiet calls (`Keepalive::ping_frame_interval`).
    pub(crate) ping_frames: Counter,
    /// Woken on every change of the counters of `RouterStats` but the bytes. The four
    /// counters are private so that every change goes through the methods that wake it.
    changed: Arc<Notify>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("active_pairs", &self.active_pairs.get())
            .field("pending_callers", &self.pending_callers.get())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

// ===== impl Metrics =====

impl Metrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        let calls = Family::<Labels, Counter>::default();
        let by_result =
            CallResult::ALL.map(|r| calls.get_or_create(&[("result", r.as_str())]).clone());
        let bytes = Family::<Labels, Counter>::default();
        let by_direction = [Direction::FirstToSecond, Direction::SecondToFirst]
            .map(|d| bytes.get_or_create(&[("direction", d.as_str())]).clone());
        // 1 ms .. ~9 h, doubling.
        let seconds = || Histogram::new(exponential_buckets(0.001, 2.0, 25));
        Metrics {
            active_pairs: Gauge::default(),
            pending_callers: Gauge::default(),
            calls,
            by_result,
            pairs: Counter::default(),
            aborts: Counter::default(),
            bytes,
            by_direction,
            pairing_wait: seconds(),
            session_duration: seconds(),
            ping_frames: Counter::default(),
            changed: Arc::default(),
        }
    }

    /// Registers every metric in `registry`, under the prefix `jumpstarter_router`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix(PREFIX);
        r.register(
            "active_pairs",
            "Pairs whose forwarding has not ended",
            self.active_pairs.clone(),
        );
        r.register(
            "pending_callers",
            "Callers waiting for their peer",
            self.pending_callers.clone(),
        );
        r.register(
            "calls",
            "Calls by what became of them (paired, refused, timed_out, left; paired calls end finished, cancelled, lost, reset, aborted, peer_gone or shutdown)",
            self.calls.clone(),
        );
        r.register("pairs", "Pairs made", self.pairs.clone());
        r.register(
            "bytes_forwarded",
            "Payload bytes forwarded, by direction (first_to_second: from the caller that waited)",
            self.bytes.clone(),
        );
        r.register(
            "ping_frames",
            "PING frames the router wrote on calls that had nothing sent to them for the ping frame interval (for proxies that count only stream data)",
            self.ping_frames.clone(),
        );
        r.register_with_unit(
            "pairing_wait",
            "How long the first caller of a pair waited for the second",
            Unit::Seconds,
            self.pairing_wait.clone(),
        );
        r.register_with_unit(
            "session_duration",
            "From pairing to the end of both calls",
            Unit::Seconds,
            self.session_duration.clone(),
        );
    }

    /// The metrics in the Prometheus (OpenMetrics) text format.
    pub fn encode_text(&self) -> String {
        let mut registry = Registry::default();
        self.register(&mut registry);
        encode_registry(&registry)
    }

    /// Counts a call's result.
    /// The counters of [`Router::stats`](super::Router::stats).
    pub(crate) fn stats(&self) -> RouterStats {
        RouterStats {
            pending: self.pending_callers.get().max(0) as usize,
            active: self.active_pairs.get().max(0) as usize,
            pairs_total: self.pairs.get(),
            aborts_total: self.aborts.get(),
            bytes_forwarded: self.bytes(Direction::FirstToSecond)
                + self.bytes(Direction::SecondToFirst),
        }
    }

    /// A caller starts waiting for its peer (`delta` 1) or stops (`-1`).
    pub(crate) fn pending(&self, delta: i64) {
        self.pending_callers.inc_by(delta);
        self.changed.notify_waiters();
    }

    /// A pair starts forwarding.
    pub(crate) fn pair_started(&self) {
        self.active_pairs.inc();
        self.pairs.inc();
        self.changed.notify_waiters();
    }

    /// A pair is over.
    pub(crate) fn pair_ended(&self) {
        self.active_pairs.dec();
        self.changed.notify_waiters();
    }

    /// A caller aborted.
    pub(crate) fn aborted(&self) {
        self.aborts.inc();
        self.changed.notify_waiters();
    }

    /// Resolves on the next change of the counters (but the bytes) after it is enabled.
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    pub(crate) fn call(&self, result: CallResult) {
        self.by_result[result as usize].inc();
    }

    /// The count of calls with `result`.
    pub fn calls(&self, result: CallResult) -> u64 {
        self.by_result[result as usize].get()
    }

    /// The counter of payload bytes going `direction` (for the forwarders to keep).
    pub(crate) fn bytes_counter(&self, direction: Direction) -> Counter {
        self.by_direction[direction as usize].clone()
    }

    /// PING frames the router wrote on quiet calls so far.
    pub fn ping_frames(&self) -> u64 {
        self.ping_frames.get()
    }

    /// Payload bytes forwarded `direction`.
    pub fn bytes(&self, direction: Direction) -> u64 {
        self.by_direction[direction as usize].get()
    }

    pub(crate) fn observe(histogram: &Histogram, d: Duration) {
        histogram.observe(d.as_secs_f64());
    }
}

/// Encodes a registry as OpenMetrics text (what `/metrics` serves).
pub(crate) fn encode_registry(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut text, registry);
    text
}
