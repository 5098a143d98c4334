//! The router's setup errors: keys, tokens, certificates, listeners.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the router (or a token for it) could not be set up. Calls on a running router fail
/// with a gRPC [`Status`](tonic::Status) instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `ROUTER_KEY` is unset or empty.
    #[error("ROUTER_KEY is not set: the router needs the key that signs stream tokens")]
    NoKey,
    /// A token could not be signed.
    #[error("cannot sign token: {0}")]
    Sign(String),
    /// The system's random source failed (for a token id).
    #[error("cannot make a token id: the system's random source failed")]
    Random,
    /// A certificate or key file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        source: io::Error,
    },
    /// The certificate or key PEM is unusable (no certificate, no key, rejected by rustls).
    #[error("{0}")]
    Tls(String),
    /// An address could not be listened on.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What binding it said.
        source: io::Error,
    },
    /// Serving failed.
    #[error("router failed: {0}")]
    Serve(String),
}
