//! Serving the router: listen address, TLS, HTTP/2 settings, graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;

use tonic::transport::server::TcpConnectInfo;
use tonic::transport::Server;

use super::connections::{Conn, WithHealth};
use super::error::ConfigError;
use super::metrics::Metrics;
use super::service::Router;
use super::tls::ServerTls;
use crate::h2io::{PingRules, PolicedIo, Transport};

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How the router's listener speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS with a certificate and key from these PEM files, read again when they change
    /// (see [`ServeConfig::tls_reload`]).
    Files {
        /// The certificate chain (PEM).
        cert: PathBuf,
        /// The private key (PEM).
        key: PathBuf,
    },
    /// TLS with a self-signed certificate made at start for this host name (or IP address).
    SelfSigned(String),
    /// No TLS. Only for loopback, tests, or behind a TLS-terminating proxy.
    Plaintext,
}

/// Where and how the router serves.
///
/// ```
/// use jumpstarter_router::router::{ServeConfig, TlsMode};
///
/// let mut config = ServeConfig::new("127.0.0.1:8083".parse().unwrap(), TlsMode::Plaintext);
/// config.metrics_listen = Some("127.0.0.1:9090".parse().unwrap());
/// assert_eq!(config.grace, ServeConfig::DEFAULT_GRACE);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServeConfig {
    /// The listen address (default `0.0.0.0:8083`).
    pub listen: SocketAddr,
    /// TLS (default: see [`ServeConfig::from_env`]).
    pub tls: TlsMode,
    /// How long active streams may go on after SIGTERM/SIGINT (default 30 s).
    pub grace: Duration,
    /// Serve the Prometheus metrics on `http://ADDR/metrics` (default: off).
    pub metrics_listen: Option<SocketAddr>,
    /// Serve `grpc.health.v1.Health` without TLS on this address as well, for probes that
    /// speak no TLS, such as the kubelet's (default: off). It answers through the grace
    /// period, `NOT_SERVING` from its start.
    pub health_listen: Option<SocketAddr>,
    /// With [`TlsMode::Files`]: how often [`Router::run`] reads the certificate and key files
    /// again, to serve a renewed certificate (a cert-manager renewal of the Secret mounted at
    /// `/tls`, say) to new connections without a restart (default 10 s; `None`, or zero:
    /// never). Open connections keep the certificate they began with. A pair that is unusable
    /// (half-written, not matching, a file missing) is refused with a warning and the current
    /// certificate stays in use. See [`ServerTls::watch_files`].
    pub tls_reload: Option<Duration>,
}

impl ServeConfig {
    /// The Go router's port, on every interface.
    pub const DEFAULT_LISTEN: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 8083);
    /// How long active streams may go on after SIGTERM/SIGINT by default.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
    /// How often the certificate files are read again by default.
    pub const DEFAULT_TLS_RELOAD: Duration = Duration::from_secs(10);

    /// Serving on `listen` with `tls`; the grace period [`DEFAULT_GRACE`](Self::DEFAULT_GRACE),
    /// no metrics or health listener, certificate files read again every
    /// [`DEFAULT_TLS_RELOAD`](Self::DEFAULT_TLS_RELOAD).
    pub fn new(listen: SocketAddr, tls: TlsMode) -> Self {
        ServeConfig {
            listen,
            tls,
            grace: Self::DEFAULT_GRACE,
            metrics_listen: None,
            health_listen: None,
            tls_reload: Some(Self::DEFAULT_TLS_RELOAD),
        }
    }

    /// The Go router's environment contract: TLS from `EXTERNAL_CERT_PEM` /
    /// `EXTERNAL_KEY_PEM` (paths) when both are set, else a self-signed certificate for the
    /// host of `GRPC_ROUTER_ENDPOINT` (default `localhost:8083`). Listens on `0.0.0.0:8083`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let tls = match (var("EXTERNAL_CERT_PEM"), var("EXTERNAL_KEY_PEM")) {
            (Some(cert), Some(key)) => TlsMode::Files {
                cert: cert.into(),
                key: key.into(),
            },
            _ => {
                let endpoint =
                    var("GRPC_ROUTER_ENDPOINT").unwrap_or_else(|| "localhost:8083".into());
                TlsMode::SelfSigned(endpoint_host(&endpoint).to_string())
            }
        };
        Self::new(Self::DEFAULT_LISTEN, tls)
    }

    /// The TLS settings of the listener; `None` for plaintext. From [`TlsMode::Files`], they
    /// can follow the files: [`ServerTls::watch_files`].
    ///
    /// # Errors
    ///
    /// When a certificate file cannot be read, the certificate and key are unusable, or a
    /// self-signed certificate cannot be made.
    pub fn tls_config(&self) -> Result<Option<ServerTls>, ConfigError> {
        match &self.tls {
            TlsMode::Plaintext => Ok(None),
            TlsMode::Files { cert, key } => ServerTls::from_files(cert, key).map(Some),
            TlsMode::SelfSigned(host) => ServerTls::self_signed(host).map(Some),
        }
    }
}

/// `host` of `host:port`, `[v6]:port`, or a URL.
fn endpoint_host(endpoint: &str) -> &str {
    let e = endpoint.split("://").last().unwrap_or(endpoint);
    let e = e.split('/').next().unwrap_or(e);
    if let Some(rest) = e.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match e.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => e,
    }
}

// ===== impl Router =====

impl Router {
    /// Serves on `listener` without TLS until `shutdown` completes, then waits for open calls.
    pub async fn serve_plaintext(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        self.serve_listener(listener, None, shutdown).await
    }

    /// Serves on `listener` (TLS when `tls` is given) until `shutdown` completes, then waits
    /// for open calls to end. The router's [health service](Router::health_service) is served
    /// beside it, and says `NOT_SERVING` from the moment `shutdown` completes.
    ///
    /// Connections are accepted by a small task that also runs the TLS handshakes (so a slow
    /// client never holds up the others). Each connection is served by hyper's HTTP/2 server
    /// in a task of its own, under the router's [`Keepalive`](super::Keepalive) settings:
    /// its PINGs, the ping policy of the Go router's gRPC server (checked on the decrypted
    /// HTTP/2 frames), and the idle and age limits. When `shutdown` completes, the listener is
    /// closed and every connection is sent a GOAWAY; this returns when all have closed.
    pub async fn serve_listener(
        self,
        listener: TcpListener,
        tls: Option<ServerTls>,
        shutdown: impl Future<Output = ()>,
    ) {
        let keepalive = self.inner.keepalive.clone();
        let rules = PingRules::from(&keepalive);
        let acceptor = tls.map(|t| TlsAcceptor::from(t.config));
        let incoming = Incoming::spawn(
            listener,
            acceptor,
            self.inner.handshake_timeout,
            rules,
            self.inner.batched_io,
        );
        self.set_serving(true).await;
        let svc = WithHealth {
            health: self.health_service(),
            router: self.clone().into_service(),
        };
        let shutdown = async move {
            shutdown.await;
            self.set_serving(false).await;
        };
        super::connections::serve(incoming.rx, svc, &keepalive, shutdown).await;
    }

    /// Serves as the `serve` command does: binds `config.listen`, logs the address, and once
    /// `shutdown` resolves stops accepting and lets active streams finish for `config.grace`
    /// (the command brings SIGTERM and SIGINT; a library user brings whatever ends its
    /// service).
    /// With [`TlsMode::Files`], the files are read again every `config.tls_reload`
    /// ([`ServerTls::watch_files`]) until it returns.
    ///
    /// # Errors
    ///
    /// A message for the operator: the address cannot be bound, TLS cannot be set up, ...
    pub async fn run(
        self,
        config: ServeConfig,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ConfigError> {
        let tls = config.tls_config()?;
        let _tls_reload = config
            .tls_reload
            .zip(tls.as_ref())
            .and_then(|(every, tls)| tls.watch_files(every))
            .map(|task| AbortOnDrop(tokio::spawn(task)));
        let bind = |addr: SocketAddr| async move {
            let listen = |source| ConfigError::Listen { addr, source };
            let l = TcpListener::bind(addr).await.map_err(listen)?;
            let local = l.local_addr().map_err(listen)?;
            Ok::<_, ConfigError>((l, local))
        };
        let (listener, addr) = bind(config.listen).await?;
        self.set_serving(true).await;
        // The operator's ports: they live until the process ends, through the grace period.
        if let Some(at) = config.metrics_listen {
            let (l, local) = bind(at).await?;
            tracing::info!(addr = %local, "metrics listening on http://{local}/metrics");
            tokio::spawn(serve_metrics(l, self.metrics().clone()));
        }
        if let Some(at) = config.health_listen {
            let (l, local) = bind(at).await?;
            tracing::info!(addr = %local, "health listening (grpc.health.v1, plaintext)");
            let health = self.health_service();
            tokio::spawn(async move {
                let r = Server::builder()
                    .serve_with_incoming(health, tonic::transport::server::TcpIncoming::from(l))
                    .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "health listener failed");
                }
            });
        }
        tracing::info!(%addr, tls = ?config.tls, "router listening");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut server = tokio::spawn(self.clone().serve_listener(listener, tls, async {
            let _ = stop_rx.await;
        }));
        let reporter = tokio::spawn(self.clone().report_stats(STATS_EVERY));
        let stopped = tokio::select! {
            r = &mut server => Some(flatten(r)),
            _ = shutdown => None,
        };
        reporter.abort();
        if let Some(r) = stopped {
            return r;
        }
        let stats = self.stats();
        tracing::info!(active = stats.active, pending = stats.pending, grace = ?config.grace, "shutting down: no new calls, active streams may finish");
        let _ = stop_tx.send(());
        match tokio::time::timeout(config.grace, &mut server).await {
            Ok(r) => flatten(r),
            Err(_) => {
                let stats = self.stats();
                tracing::warn!(
                    active = stats.active,
                    pending = stats.pending,
                    "grace period over: ending the remaining calls (GOAWAY, then UNAVAILABLE)"
                );
                self.end_all_calls();
                // The connections send those last frames and close; then the server is done.
                if tokio::time::timeout(LAST_WORDS, &mut server).await.is_err() {
                    server.abort();
                    tracing::warn!("closing the connections that are still open");
                }
                Ok(())
            }
        }
    }
}
/// Accepted (and TLS-terminated) connections, from the acceptor task.
struct Incoming {
    rx: mpsc::Receiver<Conn>,
}

impl Incoming {
    fn spawn(
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        handshake: Duration,
        rules: PingRules,
        batched: bool,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<Conn>(64);
        tokio::spawn(async move {
            loop {
                let (tcp, remote) = tokio::select! {
                    // The server stopped taking connections: close the listener.
                    _ = tx.closed() => {
                        drop(listener);
                        tracing::info!("listener closed: no new connections");
                        return;
                    }
                    r = listener.accept() => match r {
                        Ok(c) => c,
                        Err(e) => {
                            // Out of file descriptors and the like: wait, do not spin.
                            tracing::warn!(error = %e, "router: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                // The TLS handshake and the HTTP/2 preface, together, within `handshake`.
                let deadline = tokio::time::Instant::now() + handshake;
                let tcp = Transport::new(tcp, batched);
                let info = TcpConnectInfo {
                    local_addr: tcp.tcp().local_addr().ok(),
                    remote_addr: Some(remote),
                };
                match &tls {
                    None => {
                        if tx
                            .send(PolicedIo::new(Either::Left(tcp), info, deadline, rules))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Some(acceptor) => {
                        let (acceptor, tx) = (acceptor.clone(), tx.clone());
                        tokio::spawn(async move {
                            match tokio::time::timeout_at(deadline, acceptor.accept(tcp)).await {
                                Ok(Ok(tls)) => {
                                    let guard =
                                        PolicedIo::new(Either::Right(tls), info, deadline, rules);
                                    let _ = tx.send(guard).await;
                                }
                                Ok(Err(e)) => {
                                    tracing::debug!(%remote, error = %e, "router: TLS handshake failed")
                                }
                                Err(_) => {
                                    tracing::debug!(%remote, "router: TLS handshake timed out")
                                }
                            }
                        });
                    }
                }
            }
        });
        Incoming { rx }
    }
}

/// How long `run` gives the calls it ended at the end of the grace period to go out.
const LAST_WORDS: Duration = Duration::from_secs(2);

/// How often `run` logs the router's counters (when they changed).
const STATS_EVERY: Duration = Duration::from_secs(60);

impl Router {
    /// Logs the counters at info level every `every`, when they changed.
    async fn report_stats(self, every: Duration) {
        let mut last = self.stats();
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let s = self.stats();
            if s != last {
                tracing::info!(
                    pending = s.pending,
                    active = s.active,
                    pairs_total = s.pairs_total,
                    aborts_total = s.aborts_total,
                    bytes_forwarded = s.bytes_forwarded,
                    "router stats"
                );
                last = s;
            }
        }
    }
}

fn flatten(r: Result<(), tokio::task::JoinError>) -> Result<(), ConfigError> {
    r.map_err(ConfigError::Serve)
}
// ===== the metrics port =====

/// Serves `GET /metrics` (OpenMetrics text) on `listener` with hyper's HTTP/1 server, until
/// the task is dropped. Other paths get 404.
async fn serve_metrics(listener: TcpListener, metrics: Metrics) {
    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::{Method, Response, StatusCode};

    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let registry = std::sync::Arc::new(registry);
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let registry = registry.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let response = if req.method() == Method::GET && req.uri().path() == "/metrics" {
                    Response::builder()
                        .header(
                            hyper::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )
                        .body(Full::new(Bytes::from(super::metrics::encode_registry(
                            &registry,
                        ))))
                } else {
                    Response::builder()
                        .status(StatusCode::NOT_FOUND)
                        .body(Full::new(Bytes::from_static(b"not found: try /metrics\n")))
                };
                std::future::ready(response)
            });
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics: connection ended");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint_host;

    #[test]
    fn hosts_of_endpoints() {
        assert_eq!(endpoint_host("localhost:8083"), "localhost");
        assert_eq!(endpoint_host("router.example.com"), "router.example.com");
        assert_eq!(
            endpoint_host("https://r.example.com:443/x"),
            "r.example.com"
        );
        assert_eq!(endpoint_host("[::1]:8083"), "::1");
        assert_eq!(endpoint_host("10.0.0.1:8083"), "10.0.0.1");
    }
}
