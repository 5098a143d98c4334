//! The service that ties the router together: [`Router`] and its builder, and the handling of
//! one `Stream` call (auth, then pairing, then a [`Forward`] as the response body) or a refusal.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tonic::Status;

use super::auth::{Auth, Grant};
use super::body::{drain, RequestBody};
use super::forward::Forward;
use super::keepalive::Keepalive;
use super::metrics::{CallResult, Metrics, RouterStats};
use super::pairing::{Caps, Pairing};

/// How long a new connection may take for its TLS handshake and HTTP/2 preface by default.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The gRPC path of the one method the router serves.
const STREAM_PATH: &str = "/jumpstarter.v1.RouterService/Stream";

/// The router service. Cheap to clone; clones share the pending table and the counters.
#[derive(Clone)]
pub struct Router {
    pub(super) inner: Arc<Inner>,
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
    caps: Caps,
    handshake_timeout: Duration,
    keepalive: Keepalive,
    batched_io: bool,
}

/// What the clones of a [`Router`] share.
pub(super) struct Inner {
    auth: Auth,
    /// The callers waiting and the pairs made, and the router's counters
    /// ([`Pairing::metrics`]).
    pairing: Arc<Pairing>,
    health: tonic_health::server::HealthReporter,
    max_message_size: usize,
    pub(super) handshake_timeout: Duration,
    pub(super) keepalive: Keepalive,
    pub(super) batched_io: bool,
}

// ===== impl RouterBuilder =====

impl RouterBuilder {
    /// Drops a caller that waited this long for its peer (status `DeadlineExceeded`).
    /// Without it, a waiting caller stays until it leaves or its token expires.
    pub fn pairing_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.pairing_timeout = timeout;
        self
    }

    /// The largest message the router forwards (default
    /// [`DEFAULT_MAX_MESSAGE_SIZE`](crate::DEFAULT_MAX_MESSAGE_SIZE), as the Go router). A
    /// larger one aborts both calls.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// At most this many callers wait for their peer at once (default: no cap); past it, a
    /// caller that would wait gets `RESOURCE_EXHAUSTED`. A caller whose peer waits always
    /// pairs.
    pub fn max_pending(mut self, callers: Option<usize>) -> Self {
        self.caps.total = callers;
        self
    }

    /// At most this many callers of one client connection wait at once (default: no cap,
    /// beyond HTTP/2's limit on concurrent streams); past it, `RESOURCE_EXHAUSTED`.
    pub fn max_pending_per_connection(mut self, callers: Option<usize>) -> Self {
        self.caps.per_connection = callers;
        self
    }

    /// How long a new connection may take for its TLS handshake and its HTTP/2 preface
    /// together (default [`DEFAULT_HANDSHAKE_TIMEOUT`]); a connection that takes longer is
    /// closed. Applies to the serve functions' own listener.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// How client connections are kept alive, their pings policed and their age limited
    /// (default [`Keepalive::default`]: a PING every 10 s and 180 s for the answer, as
    /// Jumpstarter's operator sets the Go router, so a client that vanished without a FIN or
    /// RST is noticed within 190 s and its peer told; the PINGs also keep proxies' idle timers
    /// from closing a quiet session). Applies to the serve functions.
    pub fn keepalive(mut self, keepalive: Keepalive) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Whether each connection's socket reads in bulk under load and writes the HTTP/2 frames
    /// flushed one by one together (default: yes; measured in `benches/relay.rs`). Off, every
    /// read and flush goes to the socket as HTTP/2 makes it: for debugging. Applies to the
    /// serve functions' own listener.
    pub fn batched_io(mut self, enabled: bool) -> Self {
        self.batched_io = enabled;
        self
    }

    /// The router.
    pub fn build(self) -> Router {
        Router {
            inner: Arc::new(Inner {
                auth: self.auth,
                pairing: Arc::new(Pairing::new(
                    Metrics::new(),
                    self.pairing_timeout,
                    self.caps,
                )),
                health: tonic_health::server::HealthReporter::new(),
                max_message_size: self.max_message_size,
                handshake_timeout: self.handshake_timeout,
                keepalive: self.keepalive,
                batched_io: self.batched_io,
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
            max_message_size: crate::DEFAULT_MAX_MESSAGE_SIZE,
            caps: Caps::default(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            keepalive: Keepalive::default(),
            batched_io: true,
        }
    }

    /// The counters now.
    pub fn stats(&self) -> RouterStats {
        self.inner.pairing.metrics.stats()
    }

    /// Waits until the counters of [`stats`](Router::stats) satisfy `done`, and returns them.
    /// It is woken by each change of the callers waiting, the pairs active, the pairs made and
    /// the aborts (not by the bytes, which change all the time): for a drain, `|s| s.active == 0`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use jumpstarter_router::router::{Auth, Router};
    ///
    /// let router = Router::builder(Auth::new(b"key")).build();
    /// let idle = router.wait_for_stats(|s| s.active == 0 && s.pending == 0).await;
    /// assert_eq!(idle.pairs_total, 0);
    /// # }
    /// ```
    pub async fn wait_for_stats(&self, mut done: impl FnMut(&RouterStats) -> bool) -> RouterStats {
        loop {
            let changed = self.inner.pairing.metrics.changed();
            let mut changed = std::pin::pin!(changed);
            // Registered before the counters are read: no change is missed in between.
            changed.as_mut().enable();
            let stats = self.stats();
            if done(&stats) {
                return stats;
            }
            changed.await;
        }
    }

    /// Ends every call the router holds, at once: each paired caller gets a GOAWAY frame
    /// whose payload says the router is shutting down (unless its peer's own GOAWAY went out
    /// already), then status `UNAVAILABLE`; each waiting caller gets `UNAVAILABLE`. So
    /// Jumpstarter's peers end their sessions, and a [`RouterStream`](crate::RouterStream)
    /// fails with the reason, rather than their connections being cut. [`Router::run`] calls
    /// it when the grace period after SIGTERM is over; call it yourself before you drop a
    /// server you run.
    pub fn end_all_calls(&self) {
        self.inner.pairing.end_all();
    }

    /// The router's metrics: register them in your own `prometheus-client` registry with
    /// [`Metrics::register`], or read them. `serve --metrics-listen` serves them.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.pairing.metrics
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
        for name in ["", RouterServer::NAME] {
            self.inner.health.set_service_status(name, status).await;
        }
    }

    /// The service to mount in your own tonic server (`Server::builder().add_service(..)`)
    /// or any tower stack: `jumpstarter.v1.RouterService`, on HTTP/2 requests.
    pub fn into_service(self) -> RouterServer {
        RouterServer { router: self }
    }

    /// Answers one HTTP/2 request.
    async fn handle(
        self,
        req: http::Request<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        if req.uri().path() != STREAM_PATH {
            let status = Status::unimplemented(format!("no method {}", req.uri().path()));
            tokio::spawn(drain(req.into_body()));
            return status.into_http();
        }
        // Messages are forwarded as they are: nothing compressed (tonic's answer to an
        // encoding it does not take).
        if let Some(enc) = req.headers().get("grpc-encoding") {
            if enc.as_bytes() != b"identity" {
                let status = Status::unimplemented(format!(
                    "Content is compressed with `{}` which isn't supported",
                    String::from_utf8_lossy(enc.as_bytes())
                ));
                self.inner.pairing.metrics.call(CallResult::Refused);
                let mut response = refuse(req.into_body(), status).await.into_http();
                response.headers_mut().insert(
                    "grpc-accept-encoding",
                    http::HeaderValue::from_static("identity"),
                );
                return response;
            }
        }
        // Our own server's connections say what became of them; another server's give the
        // address at most.
        let (conn, fate) = match req.extensions().get::<crate::h2io::ConnInfo>() {
            Some(info) => (info.tcp.remote_addr(), Some(info.state.clone())),
            None => (
                req.extensions()
                    .get::<tonic::transport::server::TcpConnectInfo>()
                    .and_then(|c| c.remote_addr()),
                None,
            ),
        };
        let (parts, body) = req.into_parts();
        let metadata = MetadataMap::from_headers(parts.headers);
        let inner = &self.inner;
        match inner.auth.verify_metadata(&metadata) {
            Ok(grant) => {
                let body = RequestBody::new(body, inner.max_message_size, fate);
                let forward = match self.inner.accept(grant, body, conn) {
                    Ok(forward) => forward,
                    Err(refused) => {
                        let (status, body) = *refused;
                        inner.pairing.metrics.call(CallResult::Refused);
                        // Dropped: drained, so the caller reads the status.
                        drop(body);
                        return status.into_http();
                    }
                };
                let mut response = http::Response::new(tonic::body::Body::new(forward));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/grpc"),
                );
                response
            }
            Err(status) => {
                inner.pairing.metrics.call(CallResult::Refused);
                refuse(body, status).await.into_http()
            }
        }
    }
}

/// The router as a tower service: what [`Router::into_service`] returns.
///
/// Named as tonic names the service of a generated server (`HealthServer`, which the router
/// serves beside it); `RouterService` is the generated trait
/// ([`proto::router_service_server::RouterService`](crate::proto::router_service_server::RouterService)),
/// which an exporter that is called directly implements.
#[derive(Clone, Debug)]
pub struct RouterServer {
    router: Router,
}

impl NamedService for RouterServer {
    const NAME: &'static str = "jumpstarter.v1.RouterService";
}

impl Service<http::Request<tonic::body::Body>> for RouterServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let router = self.router.clone();
        Box::pin(async move { Ok(router.handle(req).await) })
    }
}

/// How long a refused caller's status waits for the caller's first message (or the end of
/// its request stream).
const REFUSAL_WAIT: Duration = Duration::from_secs(1);

/// Answers a refused caller so that it always learns why.
///
/// A status sent at once races the caller's first write: the HTTP/2 stream is reset
/// (NO_ERROR) under the write as the request body is dropped, and grpc-core then fails the
/// write and reports `INTERNAL` "Internal error from Core" instead of the status. So the status
/// waits for the first bytes of the body (or its end, at most [`REFUSAL_WAIT`]), and the body
/// is then [drained](drain).
async fn refuse(mut body: tonic::body::Body, status: Status) -> Status {
    tracing::debug!(reason = %status.message(), "refused a caller");
    let first = tokio::time::timeout(REFUSAL_WAIT, body.frame()).await;
    // Ended, failed, or silent for REFUSAL_WAIT: nothing is in flight, nothing to drain.
    if let Ok(Some(Ok(_))) = first {
        tokio::spawn(drain(body));
    }
    status
}

// ===== impl Inner =====

impl Inner {
    /// Pairs the caller with `grant` or makes it wait (see [`Pairing::accept`]): its response
    /// body. `body` is its request body, `conn` the connection it came on.
    ///
    /// # Errors
    ///
    /// `ResourceExhausted` when the caller would wait and a cap on waiting callers is reached
    /// (the body is handed back, to be drained).
    pub(super) fn accept(
        &self,
        grant: Grant,
        body: RequestBody,
        conn: Option<std::net::SocketAddr>,
    ) -> Result<Forward, Box<(tonic::Status, RequestBody)>> {
        let accepted = self.pairing.accept(grant, body, conn)?;
        Ok(Forward::new(
            self.pairing.clone(),
            accepted,
            self.keepalive.ping_frame_interval,
        ))
    }
}
