//! The router's setup errors: keys, tokens, certificates, listeners.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the router (or a token for it) could not be set up. Calls on a running router fail
/// with a gRPC [`Status`](tonic::Status) instead.
///
/// Each variant's message says what failed; what caused it is its
/// [`source`](std::error::Error::source), not repeated in the message (print the chain, as the
/// `jumpstarter-router` command does).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `ROUTER_KEY` is unset or empty.
    #[error("ROUTER_KEY is not set: the router needs the key that signs stream tokens")]
    NoKey,
    /// A token could not be signed.
    #[error("cannot sign token")]
    Sign(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The system's random source failed (for a token id).
    #[error("cannot make a token id: the system's random source failed")]
    Random,
    /// A certificate or key file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        source: io::Error,
    },
    /// The certificate or key PEM is unusable (no certificate, no key, rejected by rustls),
    /// or TLS cannot be set up.
    #[error("{context}")]
    Tls {
        /// What was being done, and with which files.
        context: String,
        /// The PEM parser's, rustls' or rcgen's error, when one said why.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// An address could not be listened on.
    #[error("cannot listen on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What binding it said.
        source: io::Error,
    },
    /// The router's task failed (it panicked).
    #[error("the router task failed")]
    Serve(#[source] tokio::task::JoinError),
}

impl ConfigError {
    /// A TLS setup error: `context`, caused by `source`.
    pub(crate) fn tls(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        ConfigError::Tls {
            context: context.into(),
            source: Some(source.into()),
        }
    }
}
