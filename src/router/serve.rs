//! Serving the router: listen address, TLS, HTTP/2 settings, graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use super::Router;

/// How the router's listener speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// TLS with a certificate and key from these PEM files.
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
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The listen address (default `0.0.0.0:8083`).
    pub listen: SocketAddr,
    /// TLS (default: see [`ServeConfig::from_env`]).
    pub tls: TlsMode,
    /// How long active streams may go on after SIGTERM/SIGINT (default 30 s).
    pub grace: Duration,
}

impl ServeConfig {
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
        ServeConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8083)),
            tls,
            grace: Duration::from_secs(30),
        }
    }

    /// The TLS settings of the listener; `None` for plaintext.
    ///
    /// # Errors
    ///
    /// When a certificate file cannot be read or a self-signed certificate cannot be made.
    pub fn tls_config(&self) -> Result<Option<ServerTlsConfig>, String> {
        let identity = match &self.tls {
            TlsMode::Plaintext => return Ok(None),
            TlsMode::Files { cert, key } => {
                let read = |p: &PathBuf| {
                    std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
                };
                Identity::from_pem(read(cert)?, read(key)?)
            }
            TlsMode::SelfSigned(host) => {
                let ck = rcgen::generate_simple_self_signed(vec![host.clone()]).map_err(|e| {
                    format!("cannot make a self-signed certificate for {host}: {e}")
                })?;
                Identity::from_pem(ck.cert.pem(), ck.signing_key.serialize_pem())
            }
        };
        Ok(Some(ServerTlsConfig::new().identity(identity)))
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
    fn server(&self) -> Server {
        Server::builder()
            .initial_stream_window_size(4 * 1024 * 1024)
            .initial_connection_window_size(8 * 1024 * 1024)
            .tcp_nodelay(true)
    }

    /// Serves on `listener` without TLS until `shutdown` completes, then waits for open calls.
    ///
    /// # Errors
    ///
    /// When serving fails (tonic's transport error).
    pub async fn serve_plaintext(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        self.serve_listener(listener, None, shutdown).await
    }

    /// Serves on `listener` (TLS when `tls` is given) until `shutdown` completes, then waits
    /// for open calls to end.
    ///
    /// # Errors
    ///
    /// When the TLS settings are rejected or serving fails.
    pub async fn serve_listener(
        self,
        listener: TcpListener,
        tls: Option<ServerTlsConfig>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), tonic::transport::Error> {
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut server = self.server();
        if let Some(tls) = tls {
            server = server.tls_config(tls)?;
        }
        server
            .serve_with_incoming_shutdown(self.into_service(), incoming, shutdown)
            .await
    }

    /// Serves as the `serve` command does: binds `config.listen`, logs the address, and on
    /// SIGTERM or SIGINT stops accepting and lets active streams finish for `config.grace`.
    ///
    /// # Errors
    ///
    /// A message for the operator: the address cannot be bound, TLS cannot be set up, ...
    pub async fn run(self, config: ServeConfig) -> Result<(), String> {
        let tls = config.tls_config()?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(%addr, tls = ?config.tls, "router listening");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut server = tokio::spawn(self.clone().serve_listener(listener, tls, async {
            let _ = stop_rx.await;
        }));
        tokio::select! {
            r = &mut server => return flatten(r),
            _ = shutdown_signal() => {}
        }
        let stats = self.stats();
        tracing::info!(active = stats.active, pending = stats.pending, grace = ?config.grace, "shutting down: no new calls, active streams may finish");
        let _ = stop_tx.send(());
        match tokio::time::timeout(config.grace, &mut server).await {
            Ok(r) => flatten(r),
            Err(_) => {
                server.abort();
                tracing::warn!("grace period over: closing the remaining streams");
                Ok(())
            }
        }
    }
}

fn flatten(
    r: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), String> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("router failed: {e}")),
        Err(e) => Err(format!("router task failed: {e}")),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
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
