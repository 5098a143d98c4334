//! Serving the router: listen address, TLS, HTTP/2 settings, graceful shutdown.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use std::convert::Infallible;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::either::Either;

use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::server::TcpConnectInfo;
use tonic::transport::Server;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthService;

use super::{ConfigError, Router};
use crate::h2io::BatchedIo;
use crate::h2io::{KeepalivePolicy, PingRules};

/// The router's TLS settings: a certificate chain and key, with ALPN `h2`.
///
/// Made from certificate files ([`TlsMode::Files`] through [`ServeConfig::tls_config`]), it
/// can also follow those files as they are renewed: see [`ServerTls::watch_files`].
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
    /// The files the certificate came from, when it did.
    files: Option<Arc<CertFiles>>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

impl ServerTls {
    /// From a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    ///
    /// # Errors
    ///
    /// When the PEM holds no certificate or no key, or rustls rejects them (a key that does
    /// not belong to the certificate, for one).
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Self, ConfigError> {
        let current = certified_key(cert, key)?;
        Self::with_resolver(Arc::new(CurrentCert::new(current)), None)
    }

    fn with_resolver(
        resolver: Arc<CurrentCert>,
        files: Option<Arc<CertFiles>>,
    ) -> Result<Self, ConfigError> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::tls("TLS setup", e))?
            .with_no_client_auth()
            .with_cert_resolver(resolver);
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ServerTls {
            config: Arc::new(cfg),
            files,
        })
    }

    /// From the PEM files `cert` and `key`, followed by [`ServerTls::watch_files`].
    fn from_files(cert: &Path, key: &Path) -> Result<Self, ConfigError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        let pair = (read(cert)?, read(key)?);
        let current = certified_key(&pair.0, &pair.1).map_err(|e| match e {
            ConfigError::Tls { context, source } => ConfigError::Tls {
                context: format!("{} and {}: {context}", cert.display(), key.display()),
                source,
            },
            e => e,
        })?;
        let resolver = Arc::new(CurrentCert::new(current));
        let files = CertFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            loaded: pair,
            resolver: resolver.clone(),
        };
        Self::with_resolver(resolver, Some(Arc::new(files)))
    }

    /// A self-signed certificate for `host` (a name or an IP address), made now.
    ///
    /// # Errors
    ///
    /// When the certificate cannot be made.
    pub fn self_signed(host: &str) -> Result<Self, ConfigError> {
        let ck = rcgen::generate_simple_self_signed(vec![host.to_string()]).map_err(|e| {
            ConfigError::tls(
                format!("cannot make a self-signed certificate for {host}"),
                e,
            )
        })?;
        Self::from_pem(
            ck.cert.pem().as_bytes(),
            ck.signing_key.serialize_pem().as_bytes(),
        )
    }

    /// For settings made from certificate files ([`TlsMode::Files`] through
    /// [`ServeConfig::tls_config`]): a task that reads the two files every `every` and, when
    /// their contents changed, puts the new certificate in use for new connections (open
    /// connections keep theirs). `None` for other settings, or when `every` is zero.
    ///
    /// A pair that is unusable (a file missing or half-written, unparsable PEM, a key that
    /// does not belong to the certificate) is refused with a warning, once per change of the
    /// files, and the current certificate stays in use; the files are read again on the next
    /// tick, so a pair that becomes whole is picked up. A new certificate in use is logged at
    /// info level with its `notAfter` and SHA-256 fingerprint.
    ///
    /// [`Router::run`] spawns this task when [`ServeConfig::tls_reload`] is set; with
    /// [`Router::serve_listener`], spawn it yourself. It runs until dropped.
    pub fn watch_files(
        &self,
        every: Duration,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let files = self.files.clone()?;
        (!every.is_zero()).then(|| files.poll(every))
    }
}

impl From<Arc<rustls::ServerConfig>> for ServerTls {
    /// Your own rustls settings; set `alpn_protocols` to `h2`.
    fn from(cfg: Arc<rustls::ServerConfig>) -> Self {
        ServerTls {
            config: cfg,
            files: None,
        }
    }
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificate chain and key of two PEM texts, checked to belong together.
fn certified_key(cert: &[u8], key: &[u8]) -> Result<CertifiedKey, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::tls("bad certificate PEM", e))?;
    if certs.is_empty() {
        return Err(ConfigError::Tls {
            context: "the certificate PEM holds no certificate".into(),
            source: None,
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| ConfigError::tls("bad private key PEM", e))?;
    // As rustls' `with_single_cert`: the key must match the certificate's public key.
    CertifiedKey::from_der(certs, key, &crypto_provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => ConfigError::tls(
            "certificate and key rejected: the private key does not belong to the certificate",
            e,
        ),
        e => ConfigError::tls("certificate and key rejected", e),
    })
}

/// The certificate handed to new connections; swapped when the files are renewed.
#[derive(Debug)]
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl CurrentCert {
    fn new(ck: CertifiedKey) -> Self {
        CurrentCert(RwLock::new(Arc::new(ck)))
    }

    fn set(&self, ck: CertifiedKey) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(ck);
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// The contents of the certificate file and of the key file.
type PemPair = (Vec<u8>, Vec<u8>);

/// The certificate files behind a [`CurrentCert`]. (No `Debug`: it holds the key.)
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    /// What the current certificate was made from at start.
    loaded: PemPair,
    resolver: Arc<CurrentCert>,
}

impl CertFiles {
    /// Both files; `None` when the certificate changed while they were read (a Secret
    /// volume's `..data` swapped under us): the next tick reads the settled pair.
    fn read(&self) -> Result<Option<PemPair>, String> {
        let read =
            |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let cert = read(&self.cert)?;
        let key = read(&self.key)?;
        Ok((read(&self.cert)? == cert).then_some((cert, key)))
    }

    async fn poll(self: Arc<Self>, every: Duration) {
        // What the files held at the last look: a change is acted on (and logged) once.
        let mut seen: Result<PemPair, String> = Ok(self.loaded.clone());
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let files = self.clone();
            let now = match tokio::task::spawn_blocking(move || files.read()).await {
                Ok(Ok(None)) => continue,
                Ok(Ok(Some(pair))) => Ok(pair),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(format!("the file reader failed: {e}")),
            };
            if now == seen {
                continue;
            }
            seen = now;
            let (cert, key) = (self.cert.display(), self.key.display());
            let made = match &seen {
                Ok((c, k)) => certified_key(c, k).map_err(|e| crate::error::error_chain(&e)),
                Err(e) => Err(e.clone()),
            };
            match made {
                Ok(ck) => {
                    let (not_after, sha256) = match ck.end_entity_cert() {
                        Ok(der) => (not_after(der).unwrap_or_default(), sha256_hex(der)),
                        Err(_) => Default::default(),
                    };
                    self.resolver.set(ck);
                    tracing::info!(%cert, %key, %not_after, %sha256, "TLS certificate reloaded: new connections get it");
                }
                Err(error) => {
                    tracing::warn!(%cert, %key, %error, "TLS certificate files refused: the current certificate stays in use")
                }
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The SHA-256 fingerprint of a DER certificate, in hex.
fn sha256_hex(der: &[u8]) -> String {
    use fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest.as_ref().iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The `notAfter` of a DER certificate, as `YYYY-MM-DDTHH:MM:SSZ`; `None` when it cannot be
/// read. (A walk over the few DER fields before it, rather than an X.509 crate.)
fn not_after(der: &[u8]) -> Option<String> {
    /// One DER element: its tag, its contents, and what follows it.
    fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, b) = b.split_first()?;
        let (&len, b) = b.split_first()?;
        let (len, b) = if len < 0x80 {
            (usize::from(len), b)
        } else {
            let n = usize::from(len & 0x7f);
            if n == 0 || n > 4 {
                return None;
            }
            let (bytes, b) = b.split_at_checked(n)?;
            let len = bytes.iter().fold(0usize, |a, &x| (a << 8) | usize::from(x));
            (len, b)
        };
        let (contents, rest) = b.split_at_checked(len)?;
        Some((tag, contents, rest))
    }
    let (_, certificate, _) = tlv(der)?;
    let (_, tbs, _) = tlv(certificate)?;
    // TBSCertificate: [0] version (optional), serial, signature, issuer, validity, ...
    let (tag, _, after_version) = tlv(tbs)?;
    let fields = if tag == 0xa0 { after_version } else { tbs };
    let (_, _, rest) = tlv(fields)?; // serial
    let (_, _, rest) = tlv(rest)?; // signature algorithm
    let (_, _, rest) = tlv(rest)?; // issuer
    let (_, validity, _) = tlv(rest)?;
    let (_, _, rest) = tlv(validity)?; // notBefore
    let (tag, time, _) = tlv(rest)?;
    let time = std::str::from_utf8(time).ok()?;
    let time = match tag {
        // UTCTime: YYMMDDHHMMSSZ, years 1950..=2049.
        0x17 => {
            let century = if time.get(..2)? >= "50" { "19" } else { "20" };
            format!("{century}{time}")
        }
        // GeneralizedTime: YYYYMMDDHHMMSSZ.
        0x18 => time.to_string(),
        _ => return None,
    };
    let digits = time.strip_suffix('Z')?;
    if digits.len() != 14 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let d = |a: usize, b: usize| &digits[a..b];
    Some(format!(
        "{}-{}-{}T{}:{}:{}Z",
        d(0, 4),
        d(4, 6),
        d(6, 8),
        d(8, 10),
        d(10, 12),
        d(12, 14)
    ))
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

/// The router's service and its health service on one port, dispatched by path. (tonic's
/// own `Routes` needs its axum-based `router` feature, a dependency this one match avoids.)
#[derive(Clone)]
pub(super) struct WithHealth {
    router: super::RouterService,
    health: HealthServer<HealthService>,
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
        let incoming = Incoming::spawn(listener, acceptor, self.inner.handshake_timeout, rules);
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
            tokio::spawn(super::metrics::serve_http(l, self.metrics().clone()));
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

pub(super) type Conn =
    KeepalivePolicy<Either<BatchedIo<TcpStream>, TlsStream<BatchedIo<TcpStream>>>>;

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
                let tcp = BatchedIo::new(tcp);
                let info = TcpConnectInfo {
                    local_addr: tcp.get_ref().local_addr().ok(),
                    remote_addr: Some(remote),
                };
                match &tls {
                    None => {
                        if tx
                            .send(KeepalivePolicy::new(
                                Either::Left(tcp),
                                info,
                                deadline,
                                rules,
                            ))
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
                                    let guard = KeepalivePolicy::new(
                                        Either::Right(tls),
                                        info,
                                        deadline,
                                        rules,
                                    );
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

#[cfg(test)]
mod tests {
    use super::{certified_key, endpoint_host, not_after};

    #[test]
    fn not_after_of_certificates() {
        for (year, want) in [
            (2031, "2031-03-04T00:00:00Z"),
            (2051, "2051-03-04T00:00:00Z"),
        ] {
            let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            params.not_after = rcgen::date_time_ymd(year, 3, 4);
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            assert_eq!(not_after(cert.der()).as_deref(), Some(want));
            // Cut anywhere: no answer, no panic.
            for n in 0..cert.der().len() {
                let _ = not_after(&cert.der()[..n]);
            }
        }
        assert_eq!(not_after(b""), None);
        assert_eq!(not_after(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let a = rcgen::generate_simple_self_signed(vec!["a".to_string()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b".to_string()]).unwrap();
        let (a_cert, a_key) = (a.cert.pem(), a.signing_key.serialize_pem());
        let b_key = b.signing_key.serialize_pem();
        assert!(certified_key(a_cert.as_bytes(), a_key.as_bytes()).is_ok());
        let err = certified_key(a_cert.as_bytes(), b_key.as_bytes()).unwrap_err();
        // rustls' own error is kept as the source.
        let source = std::error::Error::source(&err).expect("a source");
        assert!(
            source
                .downcast_ref::<tokio_rustls::rustls::Error>()
                .is_some(),
            "{source:?}"
        );
        let err = err.to_string();
        assert!(err.contains("does not belong"), "{err}");
        let half = &a_cert.as_bytes()[..a_cert.len() / 2];
        let err = certified_key(half, a_key.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(err.contains("certificate PEM"), "{err}");
    }

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
