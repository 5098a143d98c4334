//! The router service: a drop-in for Jumpstarter's Go router (feature `router`).
//!
//! Each `Stream` call presents a bearer JWT whose subject names a stream; the router pairs the
//! first and the second caller of a stream id and forwards frames between them unchanged
//! (payload and frame type), with no payload copy and no task or channel per frame.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use jumpstarter_router::router::{Auth, Router};
//!
//! let router = Router::builder(Auth::new(b"secret")).build();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8083").await?;
//! router.serve_plaintext(listener, std::future::pending()).await?;
//! # Ok(()) }
//! ```
//!
//! # Rules
//!
//! - Auth exactly as the Go router: see [`Auth`]. Any failure is `Unauthenticated`.
//! - A caller waiting for its peer is removed from the pending table when it leaves, when its
//!   token expires, or when the optional pairing timeout passes (status `DeadlineExceeded`).
//! - A third caller of a stream id never joins or breaks a pair: it waits for a fourth.
//! - Half-close holds end to end: a caller that finished cleanly (GOAWAY, then the end of its
//!   request stream) gets its response ended only once its peer's request stream has ended
//!   too; a caller that aborts (error, or an end without GOAWAY) ends its peer's call at once
//!   with status `Aborted`.
//! - Response headers go out as soon as a call is accepted, also to a waiting caller.
//! - Frames are forwarded unchanged, RST_STREAM and unknown types included, and forwarding
//!   goes on after them; a pair ends only when a call ends or fails.
//! - A refused caller gets its `Unauthenticated` status after its first message (or at most
//!   1 s), and its request stays open a little longer, so that a grpc-core client sees the
//!   status rather than a failed write.

mod auth;
mod forward;
mod metrics;
mod ping;
mod serve;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;
use tonic::codec::Streaming;
use tonic::{Request, Response, Status};

pub use auth::{Auth, Grant, AUDIENCE, ISSUER};
pub use forward::Forward;
pub use metrics::{CallResult, Direction, Metrics};
/// The `prometheus-client` this crate's [`Metrics`] are made with, for [`Metrics::register`].
pub use prometheus_client;
pub use serve::{ServeConfig, ServerTls, TlsMode};

use crate::proto::router_service_server::{RouterService, RouterServiceServer};
use crate::proto::StreamRequest;
use forward::{Link, Pair};

/// The router service. Cheap to clone; clones share the pending table and the counters.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Router`].
#[derive(Debug)]
pub struct RouterBuilder {
    auth: Auth,
    pairing_timeout: Option<Duration>,
    max_message_size: usize,
}

pub(crate) struct Inner {
    auth: Auth,
    pending: Mutex<HashMap<String, Waiter>>,
    metrics: Metrics,
    health: tonic_health::server::HealthReporter,
    next_caller: AtomicU64,
    pairing_timeout: Option<Duration>,
    max_message_size: usize,
}

struct Waiter {
    caller: u64,
    inbound: Streaming<StreamRequest>,
    tx: oneshot::Sender<Link>,
    since: Instant,
}

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
    /// Callers that aborted (error, or end without GOAWAY) since start.
    pub aborts_total: u64,
    /// Payload bytes forwarded, both directions, since start.
    pub bytes_forwarded: u64,
}

// ===== impl RouterBuilder =====

impl RouterBuilder {
    /// Drops a caller that waited this long for its peer (status `DeadlineExceeded`).
    /// Without it, a waiting caller stays until it leaves or its token expires.
    pub fn pairing_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.pairing_timeout = timeout;
        self
    }

    /// The largest message the router decodes (default 4 MiB, like the Go router).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// The router.
    pub fn build(self) -> Router {
        Router {
            inner: Arc::new(Inner {
                auth: self.auth,
                pending: Mutex::new(HashMap::new()),
                metrics: Metrics::new(),
                health: tonic_health::server::HealthReporter::new(),
                next_caller: AtomicU64::new(1),
                pairing_timeout: self.pairing_timeout,
                max_message_size: self.max_message_size,
            }),
        }
    }
}

// ===== impl Router =====

impl Router {
    /// A builder with the key that checks tokens.
    pub fn builder(auth: Auth) -> RouterBuilder {
        RouterBuilder {
            auth,
            pairing_timeout: None,
            max_message_size: 4 * 1024 * 1024,
        }
    }

    /// The counters now.
    pub fn stats(&self) -> RouterStats {
        let m = &self.inner.metrics;
        RouterStats {
            pending: m.pending_callers.get().max(0) as usize,
            active: m.active_pairs.get().max(0) as usize,
            pairs_total: m.pairs.get(),
            aborts_total: m.aborts.get(),
            bytes_forwarded: m.bytes(Direction::FirstToSecond) + m.bytes(Direction::SecondToFirst),
        }
    }

    /// The router's metrics: register them in your own `prometheus-client` registry with
    /// [`Metrics::register`], or read them. `serve --metrics-listen` serves them.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The `grpc.health.v1.Health` service of this router, for `""` and
    /// `jumpstarter.v1.RouterService`: `SERVING` from [`Router::set_serving`]`(true)` until
    /// `set_serving(false)`. The serve functions call both, `false` when their shutdown starts;
    /// call them yourself when you mount [`Router::into_service`] in your own server.
    pub fn health_service(
        &self,
    ) -> tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService> {
        tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(self.inner.health.clone()),
        )
    }

    /// Sets what the health service answers for `""` and `jumpstarter.v1.RouterService`:
    /// `SERVING` or `NOT_SERVING`.
    pub async fn set_serving(&self, serving: bool) {
        use tonic::server::NamedService;
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        for name in ["", RouterServiceServer::<Router>::NAME] {
            self.inner.health.set_service_status(name, status).await;
        }
    }

    /// The tonic service to mount in your own server.
    pub fn into_service(self) -> RouterServiceServer<Router> {
        let max = self.inner.max_message_size;
        RouterServiceServer::new(self)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
    }

    fn accept(&self, grant: Grant, inbound: Streaming<StreamRequest>) -> Forward {
        let inner = &self.inner;
        let tag = StreamTag::of(&grant.stream);
        let mut pending = inner.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(waiter) = pending.remove(&grant.stream) {
            drop(pending);
            let m = &inner.metrics;
            m.pending_callers.dec();
            m.call(CallResult::Paired);
            m.call(CallResult::Paired);
            let waited = waiter.since.elapsed();
            Metrics::observe(&m.pairing_wait, waited);
            tracing::info!(stream = %tag, waited_ms = waited.as_millis() as u64, "paired");
            let pair = Pair::new(m.clone(), tag);
            let mine = Link {
                peer_inbound: waiter.inbound,
                pair: pair.clone(),
            };
            let theirs = Link {
                peer_inbound: inbound,
                pair,
            };
            if let Err(back) = waiter.tx.send(theirs) {
                // The waiting caller left just now: nobody will read this caller's frames.
                back.abandon();
            }
            return Forward::forwarding(self.inner.clone(), mine, 1);
        }
        let caller = inner.next_caller.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        pending.insert(
            grant.stream.clone(),
            Waiter {
                caller,
                inbound,
                tx,
                since: Instant::now(),
            },
        );
        drop(pending);
        inner.metrics.pending_callers.inc();
        tracing::info!(stream = %tag, "waiting for the peer");
        let deadline = self.deadline(&grant);
        Forward::waiting(self.inner.clone(), grant.stream, tag, caller, rx, deadline)
    }

    /// When a waiting caller gives up: its token's expiry or the pairing timeout.
    fn deadline(&self, grant: &Grant) -> Option<(tokio::time::Instant, &'static str)> {
        let now = tokio::time::Instant::now();
        // Capped: a token may expire centuries from now, a timer cannot wait that long.
        let until_exp = grant
            .expires
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(Duration::from_secs(365 * 24 * 3600));
        let exp = (now + until_exp, "token expired while waiting for the peer");
        match self.inner.pairing_timeout {
            Some(t) if now + t < exp.0 => {
                Some((now + t, "no peer arrived within the pairing timeout"))
            }
            _ => Some(exp),
        }
    }
}

impl Inner {
    fn remove_pending(&self, stream: &str, caller: u64) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.get(stream).is_some_and(|w| w.caller == caller) {
            pending.remove(stream);
            drop(pending);
            self.metrics.pending_callers.dec();
        }
    }
}

#[tonic::async_trait]
impl RouterService for Router {
    type StreamStream = Forward;

    async fn stream(
        &self,
        request: Request<Streaming<StreamRequest>>,
    ) -> Result<Response<Forward>, Status> {
        match self.inner.auth.verify_metadata(request.metadata()) {
            Ok(grant) => Ok(Response::new(self.accept(grant, request.into_inner()))),
            Err(status) => {
                self.inner.metrics.call(CallResult::Refused);
                Err(refuse(request.into_inner(), status).await)
            }
        }
    }
}

/// How long a refused caller's status waits for the caller's first message (or the end of
/// its request stream).
const REFUSAL_WAIT: Duration = Duration::from_secs(1);
/// How long, and how many payload bytes, a refused caller's request stream is read and
/// dropped after its status went out.
const REFUSAL_DRAIN: (Duration, usize) = (Duration::from_secs(5), 4 * 1024 * 1024);

/// Answers a refused caller so that it always learns why.
///
/// A status sent at once races the caller's first write: the HTTP/2 stream is reset
/// (NO_ERROR) under the write as the request body is dropped, and grpc-core then fails the
/// write and reports `INTERNAL` "Internal error from Core" instead of the status. So the status
/// waits for the first message (or the end of the request, at most [`REFUSAL_WAIT`]), and the
/// request body stays open and is read and dropped afterwards until the caller ends it, within
/// [`REFUSAL_DRAIN`] (time and bytes): a refused caller holds no more than that.
async fn refuse(mut inbound: Streaming<StreamRequest>, status: Status) -> Status {
    tracing::debug!(reason = %status.message(), "refused a caller");
    // Ended, failed, or silent for REFUSAL_WAIT: nothing is in flight, nothing to drain.
    if let Ok(Ok(Some(first))) = tokio::time::timeout(REFUSAL_WAIT, inbound.message()).await {
        tokio::spawn(async move {
            let (time, bytes) = REFUSAL_DRAIN;
            let mut budget = bytes.saturating_sub(first.payload.len());
            let _ = tokio::time::timeout(time, async {
                while let Ok(Some(m)) = inbound.message().await {
                    budget = match budget.checked_sub(m.payload.len()) {
                        Some(b) => b,
                        None => break,
                    };
                }
            })
            .await;
        });
    }
    status
}
