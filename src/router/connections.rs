//! The router's HTTP/2 server: each accepted connection served by hyper in a task of its own,
//! with grpc-go's connection limits, and a graceful shutdown of them all.
//!
//! This loop is ours rather than tonic's `Server` because grpc-go's limits need it:
//!
//! - `max_connection_idle`: a connection with no call open for that long is closed
//!   gracefully. Neither tonic nor hyper counts a connection's calls; the service below does.
//! - `max_connection_age` with `max_connection_age_grace`: grpc-go sends the GOAWAY at the
//!   age (give or take 10 %, so that connections made together do not all go at once), then
//!   closes the connection after the grace. tonic, given both, sends nothing at the
//!   age and cuts the connection at age + grace.
//!
//! A graceful close is hyper's: a GOAWAY that refuses no call in flight, a PING, then the
//! final GOAWAY, and the connection closes when its calls have ended.

use std::convert::Infallible;
use std::future::Future;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_util::either::Either;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::server::Connected;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthService;

use super::keepalive::Keepalive;
use super::service::RouterServer;
use crate::h2io::{CallGuard, ConnInfo, PolicedIo, Transport};

/// An accepted connection: TCP (TLS-terminated, or not) under the ping policy.
pub(super) type Conn = PolicedIo<Either<Transport, TlsStream<Transport>>>;

/// Serves the connections from `incoming` with `svc` until `shutdown` completes; then sends
/// each a GOAWAY and waits until all have closed.
pub(super) async fn serve(
    mut incoming: mpsc::Receiver<Conn>,
    svc: WithHealth,
    keepalive: &Keepalive,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(keepalive.interval.map(|i| i.max(Keepalive::MIN_INTERVAL)))
        .keep_alive_timeout(keepalive.timeout)
        .max_frame_size(crate::MAX_FRAME_SIZE)
        .initial_stream_window_size(crate::STREAM_WINDOW)
        .initial_connection_window_size(crate::CONNECTION_WINDOW)
        // The router bounds its callers itself (pending callers per connection, in all).
        .max_concurrent_streams(None);
    let limits = Limits::from(keepalive);
    let (stop_tx, stop_rx) = watch::channel(());
    {
        let mut shutdown = pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                conn = incoming.recv() => match conn {
                    Some(io) => spawn(io, svc.clone(), &builder, limits, stop_rx.clone()),
                    None => break,
                },
            }
        }
    }
    // Dropping the receiver ends the accept task, which closes the listener.
    drop(incoming);
    let _ = stop_tx.send(());
    drop(stop_rx);
    tracing::debug!(
        connections = stop_tx.receiver_count(),
        "waiting for the connections to close"
    );
    stop_tx.closed().await;
}

/// grpc-go's connection limits.
#[derive(Clone, Copy, Debug)]
struct Limits {
    idle: Option<std::time::Duration>,
    age: Option<std::time::Duration>,
    grace: Option<std::time::Duration>,
}

impl From<&Keepalive> for Limits {
    fn from(k: &Keepalive) -> Self {
        let nonzero = |d: Option<std::time::Duration>| d.filter(|d| !d.is_zero());
        Limits {
            idle: nonzero(k.max_connection_idle),
            age: nonzero(k.max_connection_age),
            grace: k.max_connection_age_grace,
        }
    }
}

/// Serves one connection in a task of its own, until it closes; `stop` says the server is
/// shutting down.
fn spawn(
    io: Conn,
    svc: WithHealth,
    builder: &http2::Builder<TokioExecutor>,
    limits: Limits,
    mut stop: watch::Receiver<()>,
) {
    let info = io.connect_info();
    let state = info.state.clone();
    // Boxed, so the task holds it once: pinned inside the task it would take its room twice,
    // as the captured value and as the pinned local (3 KiB each).
    let mut conn = Box::pin(builder.serve_connection(TokioIo::new(io), ConnService { svc, info }));
    tokio::spawn(async move {
        let start = Instant::now();
        // The next idle check, the age, and when a draining connection is closed.
        let mut idle_check = limits.idle.map(|idle| start + idle);
        let mut age = limits.age.map(|age| start + jittered(age));
        let mut close_at = None;
        let mut draining = false;
        loop {
            // One timer, for the soonest of the three deadlines: each would hold its own.
            let next = [age, close_at, idle_check].into_iter().flatten().min();
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "router: connection ended with an error");
                    }
                    return;
                }
                _ = stop.changed(), if !draining => drain(conn.as_mut(), &mut draining),
                () = until(next) => {
                    let now = Instant::now();
                    let due = |at: Option<Instant>| at.is_some_and(|at| at <= now);
                    if due(close_at) {
                        tracing::debug!("router: closing a connection past its max age and grace");
                        return;
                    }
                    if due(age) {
                        age = None;
                        tracing::debug!("router: connection reached its max age: GOAWAY");
                        drain(conn.as_mut(), &mut draining);
                        close_at = limits.grace.map(|grace| now + grace);
                    }
                    if due(idle_check) {
                        let idle = limits.idle.unwrap_or_default();
                        idle_check = match state.idle_since() {
                            Some(since) if since + idle <= now => {
                                tracing::debug!(
                                    "router: connection idle for its max idle time: GOAWAY"
                                );
                                drain(conn.as_mut(), &mut draining);
                                None
                            }
                            Some(since) => Some(since + idle),
                            None => Some(now + idle),
                        };
                    }
                }
            }
        }
    });
}

/// Starts the connection's graceful close, once.
fn drain(conn: Pin<&mut ServedConn>, draining: &mut bool) {
    if !*draining {
        conn.graceful_shutdown();
        *draining = true;
    }
}

/// A connection as hyper serves it.
type ServedConn = http2::Connection<TokioIo<Conn>, ConnService, TokioExecutor>;

/// `age` give or take 10 %, as grpc-go spreads its connections' ages: connections made
/// together (a lab's exporters after a restart) do not all reconnect at once.
fn jittered(age: std::time::Duration) -> std::time::Duration {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return age;
    }
    // A fraction in [-0.1, 0.1].
    let f = (f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX) - 0.5) * 0.2;
    age.mul_f64(1.0 + f)
}

/// Completes at `deadline`; never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The router's service for one connection: gives each request the connection's
/// [`ConnInfo`], and counts the call open until its response body is dropped.
#[derive(Clone)]
struct ConnService {
    svc: WithHealth,
    info: ConnInfo,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for ConnService {
    type Response = http::Response<CallBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let call = self.info.state.call();
        let mut req = req.map(tonic::body::Body::new);
        req.extensions_mut().insert(self.info.clone());
        // The router's services are always ready (see `WithHealth`).
        let response = self.svc.clone().call(req);
        Box::pin(async move {
            let Ok(response) = response.await;
            Ok(response.map(|body| CallBody { body, _call: call }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call counted on the connection until hyper drops it
    /// (at the end of the call's HTTP/2 stream, or when it is reset).
    struct CallBody {
        #[pin]
        body: tonic::body::Body,
        _call: CallGuard,
    }
}

impl http_body::Body for CallBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

// ===== WithHealth =====

/// The router's service and its health service on one port, dispatched by path. (tonic's
/// own `Routes` needs its axum-based `router` feature, a dependency this one match avoids.)
#[derive(Clone)]
pub(super) struct WithHealth {
    pub(super) router: RouterServer,
    pub(super) health: HealthServer<HealthService>,
}

impl Service<http::Request<tonic::body::Body>> for WithHealth {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Both generated servers are always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let health = req
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(HealthServer::<HealthService>::NAME))
            .is_some_and(|rest| rest.starts_with('/'));
        if health {
            self.health.call(req)
        } else {
            self.router.call(req)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn ages_are_spread_within_ten_percent() {
        let age = Duration::from_secs(100);
        let ages: Vec<Duration> = (0..200).map(|_| super::jittered(age)).collect();
        assert!(ages
            .iter()
            .all(|a| (Duration::from_secs(90)..=Duration::from_secs(110)).contains(a)));
        let (lo, hi) = (ages.iter().min().unwrap(), ages.iter().max().unwrap());
        assert!(
            *hi - *lo > Duration::from_secs(5),
            "not spread: {lo:?}..{hi:?}"
        );
    }
}
