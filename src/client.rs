//! The client side: [`connect`] and [`ClientBuilder`] (feature `client`).
//!
//! A Jumpstarter client or exporter reaches its peer through a router: it opens
//! `jumpstarter.v1.RouterService/Stream` on the router endpoint with the stream's token, and
//! gets a [`RouterStream`] back **at once**, without waiting for the router's response headers
//! (Jumpstarter's Go router sends those only when the peer's first frame arrives, so waiting
//! would deadlock two peers that each wait to be spoken to).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio_rustls::rustls;
use tonic::codegen::Service;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Uri};

use crate::h2io::Transport;
use crate::{ConnectError, RouterStream, StreamOptions};
use crate::{CONNECTION_WINDOW, DEFAULT_MAX_MESSAGE_SIZE, STREAM_WINDOW};

/// Connects to a router and opens the stream named by `token`, with the defaults of
/// [`ClientBuilder`].
///
/// `endpoint` is `host:port` (TLS, as Jumpstarter's router endpoints are), `https://host:port`,
/// or `http://host:port` for plaintext.
///
/// ```no_run
/// # async fn demo() -> std::io::Result<()> {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// let mut stream = jumpstarter_router::connect("router.lab.example:443", "TOKEN").await?;
/// stream.write_all(b"hello").await?;
/// stream.shutdown().await?; // GOAWAY: the peer reads EOF
/// let mut reply = Vec::new();
/// stream.read_to_end(&mut reply).await?; // until the peer's GOAWAY
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// A malformed endpoint or token, or a router that cannot be reached: a [`ConnectError`]
/// (as an `io::Error`: `InvalidInput`, or the I/O error's kind, such as `ConnectionRefused`).
/// Authentication errors arrive on the first read or write, since the stream does not wait for
/// the router's answer.
pub async fn connect(endpoint: &str, token: &str) -> Result<RouterStream, ConnectError> {
    ClientBuilder::new(endpoint).connect(token).await
}

/// Opens a router stream on an existing channel, with default [`StreamOptions`] and
/// message limit; [`ClientBuilder::open`] opens one with a builder's.
///
/// Many streams can share one channel (one HTTP/2 connection).
///
/// # Errors
///
/// [`ConnectError::EmptyToken`] or [`ConnectError::InvalidToken`].
pub fn open(channel: Channel, token: &str) -> Result<RouterStream, ConnectError> {
    let auth = bearer(token)?;
    Ok(RouterStream::raw_call(
        channel,
        auth,
        &StreamOptions::default(),
        DEFAULT_MAX_MESSAGE_SIZE,
    ))
}

fn bearer(token: &str) -> Result<tonic::codegen::http::HeaderValue, ConnectError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(ConnectError::EmptyToken);
    }
    let mut value = tonic::codegen::http::HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|_| ConnectError::InvalidToken)?;
    value.set_sensitive(true);
    Ok(value)
}

/// How the client checks the router's certificate.
#[derive(Clone)]
enum Trust {
    /// The system's root certificates.
    System,
    /// These CA certificates (PEM), instead of the system's.
    Ca(Vec<u8>),
    /// No check at all (Jumpstarter's `tls.insecure`): for labs with self-signed routers.
    Insecure,
}

/// Builds router connections: TLS, HTTP/2 and stream options.
///
/// The defaults follow Jumpstarter's own clients: HTTP/2 keepalive pings every 20 s, also
/// with no call open (cloud load balancers drop idle connections), a 180 s keepalive timeout,
/// 4 MiB messages at most, TLS with the system's roots.
///
/// ```no_run
/// # async fn demo() -> Result<(), jumpstarter_router::ConnectError> {
/// use jumpstarter_router::ClientBuilder;
///
/// let stream = ClientBuilder::new("router.lab.example:8083")
///     .insecure_skip_verify(true) // a lab router with a self-signed certificate
///     .connect("TOKEN")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientBuilder {
    endpoint: String,
    trust: Trust,
    tls_server_name: Option<String>,
    max_message_size: usize,
    stream_window: Option<u32>,
    connection_window: Option<u32>,
    adaptive_window: bool,
    keepalive_interval: Option<Duration>,
    keepalive_timeout: Duration,
    connect_timeout: Option<Duration>,
    options: StreamOptions,
    batched_io: bool,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let trust = match &self.trust {
            Trust::System => "system roots",
            Trust::Ca(_) => "custom CA",
            Trust::Insecure => "insecure (no verification)",
        };
        f.debug_struct("ClientBuilder")
            .field("endpoint", &self.endpoint)
            .field("trust", &trust)
            .field("max_message_size", &self.max_message_size)
            .field("stream_window", &self.stream_window)
            .field("connection_window", &self.connection_window)
            .field("adaptive_window", &self.adaptive_window)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .field("options", &self.options)
            .field("batched_io", &self.batched_io)
            .finish()
    }
}

// ===== impl ClientBuilder =====

impl ClientBuilder {
    /// A builder for `endpoint`: `host:port` or `https://host:port` (TLS), `http://host:port`
    /// (plaintext).
    pub fn new(endpoint: impl Into<String>) -> Self {
        ClientBuilder {
            endpoint: endpoint.into(),
            trust: Trust::System,
            tls_server_name: None,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            stream_window: Some(STREAM_WINDOW),
            connection_window: Some(CONNECTION_WINDOW),
            adaptive_window: false,
            keepalive_interval: Some(Duration::from_secs(20)),
            keepalive_timeout: Duration::from_secs(180),
            connect_timeout: Some(Duration::from_secs(30)),
            batched_io: true,
            options: StreamOptions::default(),
        }
    }

    /// Trusts these CA certificates (PEM) instead of the system's roots.
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.trust = Trust::Ca(pem.into());
        self
    }

    /// Skips the verification of the router's certificate, like Jumpstarter's `tls.insecure`.
    /// The connection is still encrypted, but anyone on the path can pose as the router.
    pub fn insecure_skip_verify(mut self, insecure: bool) -> Self {
        if insecure {
            self.trust = Trust::Insecure;
        } else if matches!(self.trust, Trust::Insecure) {
            self.trust = Trust::System;
        }
        self
    }

    /// The name checked against the router's certificate (and sent as SNI), when it differs
    /// from the endpoint's host.
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.tls_server_name = Some(name.into());
        self
    }

    /// The largest message this client decodes (gRPC's default: 4 MiB).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// The HTTP/2 initial window of each stream (default 4 MiB, chosen by benchmark); `None`
    /// keeps hyper's.
    pub fn stream_window(mut self, bytes: Option<u32>) -> Self {
        self.stream_window = bytes;
        self
    }

    /// The HTTP/2 initial window of the connection (default 8 MiB, chosen by benchmark);
    /// `None` keeps hyper's.
    pub fn connection_window(mut self, bytes: Option<u32>) -> Self {
        self.connection_window = bytes;
        self
    }

    /// HTTP/2 adaptive flow control windows (BDP estimation); overrides
    /// [`stream_window`](Self::stream_window) and
    /// [`connection_window`](Self::connection_window).
    pub fn adaptive_window(mut self, enabled: bool) -> Self {
        self.adaptive_window = enabled;
        self
    }

    /// HTTP/2 keepalive: a PING every `interval` (default 20 s), also with no stream open.
    /// `None` turns it off.
    pub fn keepalive_interval(mut self, interval: Option<Duration>) -> Self {
        self.keepalive_interval = interval;
        self
    }

    /// How long a keepalive PING may go unanswered before the connection is closed (default
    /// 180 s).
    pub fn keepalive_timeout(mut self, timeout: Duration) -> Self {
        self.keepalive_timeout = timeout;
        self
    }

    /// How long to wait for the TCP (and TLS) connection. `None`: no limit.
    pub fn connect_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whether the connection's socket reads in bulk under load and writes the HTTP/2 frames
    /// flushed one by one together (default: yes; measured in `benches/relay.rs`). Off, every
    /// read and flush goes to the socket as HTTP/2 makes it: for debugging.
    pub fn batched_io(mut self, enabled: bool) -> Self {
        self.batched_io = enabled;
        self
    }

    /// Options of the streams made by [`connect`](Self::connect).
    pub fn stream_options(mut self, options: StreamOptions) -> Self {
        self.options = options;
        self
    }

    fn uri(&self) -> Result<(String, bool), ConnectError> {
        let e = self.endpoint.trim();
        let (uri, tls) = if let Some(rest) = e.strip_prefix("http://") {
            (format!("http://{rest}"), false)
        } else if let Some(rest) = e.strip_prefix("https://") {
            (format!("https://{rest}"), true)
        } else if e.contains("://") {
            return Err(ConnectError::Endpoint {
                endpoint: self.endpoint.clone(),
                reason: "use host:port, https://host:port or http://host:port".into(),
            });
        } else {
            (format!("https://{e}"), true)
        };
        Ok((uri, tls))
    }

    /// The tonic endpoint with every setting of this builder.
    ///
    /// # Errors
    ///
    /// [`ConnectError`] for a malformed endpoint or CA certificate.
    pub fn endpoint(&self) -> Result<Endpoint, ConnectError> {
        let (uri, tls) = self.uri()?;
        let mut ep = Endpoint::from_shared(uri.clone())
            .map_err(|e| ConnectError::Endpoint {
                endpoint: self.endpoint.clone(),
                reason: e.to_string(),
            })?
            .tcp_nodelay(true)
            .max_frame_size(crate::MAX_FRAME_SIZE)
            .http2_adaptive_window(self.adaptive_window)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(self.keepalive_interval.is_some());
        if !self.adaptive_window {
            ep = ep
                .initial_stream_window_size(self.stream_window)
                .initial_connection_window_size(self.connection_window);
        }
        if let Some(i) = self.keepalive_interval {
            ep = ep.http2_keep_alive_interval(i);
        }
        if let Some(t) = self.connect_timeout {
            ep = ep.connect_timeout(t);
        }
        if tls {
            let mut cfg = ClientTlsConfig::new().assume_http2(true);
            if let Some(name) = &self.tls_server_name {
                cfg = cfg.domain_name(name.clone());
            }
            let bad_tls = ConnectError::Tls;
            ep = match &self.trust {
                Trust::System => ep.tls_config(cfg.with_native_roots()).map_err(bad_tls)?,
                Trust::Ca(pem) => {
                    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
                        return Err(ConnectError::NoCertificate);
                    }
                    ep.tls_config(cfg.ca_certificate(Certificate::from_pem(pem)))
                        .map_err(bad_tls)?
                }
                Trust::Insecure => ep
                    .tls_config_with_verifier(cfg, Arc::new(NoVerify::new()))
                    .map_err(bad_tls)?,
            };
        }
        Ok(ep)
    }

    /// Connects a channel to the router. One channel (one HTTP/2 connection) carries any
    /// number of streams: pass it to [`open`].
    ///
    /// # Errors
    ///
    /// [`ConnectError`]: a malformed endpoint or CA, or [`ConnectError::Unreachable`] when the
    /// router cannot be reached (the transport error is kept as the source).
    pub async fn channel(&self) -> Result<Channel, ConnectError> {
        let ep = self.endpoint()?;
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(self.connect_timeout);
        ep.connect_with_connector(Connector {
            tcp,
            batched: self.batched_io,
        })
        .await
        .map_err(|source| ConnectError::Unreachable {
            endpoint: self.endpoint.clone(),
            message: crate::error::error_chain(&source),
            source,
        })
    }

    /// Connects and opens the stream named by `token`. Returns as soon as the request is on its
    /// way, without waiting for the router's answer.
    ///
    /// # Errors
    ///
    /// As [`channel`](Self::channel), and [`ConnectError::EmptyToken`] or
    /// [`ConnectError::InvalidToken`] for a malformed token.
    pub async fn connect(&self, token: &str) -> Result<RouterStream, ConnectError> {
        bearer(token)?;
        let channel = self.channel().await?;
        let mut stream = self.open(channel, token)?;
        // Send the request now, so the router sees this caller even before the first write.
        stream.start_call();
        Ok(stream)
    }

    /// Opens the stream named by `token` on `channel` (from [`channel`](Self::channel), or
    /// shared by many streams) with this builder's [`stream_options`](Self::stream_options)
    /// and [`max_message_size`](Self::max_message_size); the builder's endpoint and
    /// connection settings are `channel`'s business.
    ///
    /// # Errors
    ///
    /// [`ConnectError::EmptyToken`] or [`ConnectError::InvalidToken`].
    pub fn open(&self, channel: Channel, token: &str) -> Result<RouterStream, ConnectError> {
        let auth = bearer(token)?;
        Ok(RouterStream::raw_call(
            channel,
            auth,
            &self.options,
            self.max_message_size,
        ))
    }
}

/// hyper's TCP connector, its connection a [`Transport`] under HTTP/2 (and under TLS, which
/// tonic adds on top for `https`).
#[derive(Clone, Debug)]
struct Connector {
    tcp: HttpConnector,
    batched: bool,
}

impl Service<Uri> for Connector {
    type Response = TokioIo<Transport>;
    type Error = <HttpConnector as Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tcp.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.tcp.call(uri);
        let batched = self.batched;
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            Ok(TokioIo::new(Transport::new(tcp, batched)))
        })
    }
}

// ===== impl NoVerify =====

/// Accepts any server certificate but still checks the handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl NoVerify {
    fn new() -> Self {
        NoVerify(Arc::new(rustls::crypto::ring::default_provider()))
    }
}

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
