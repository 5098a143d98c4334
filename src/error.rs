//! Errors of a [`RouterStream`](crate::RouterStream), and how they map to [`io::Error`].

use std::error::Error as StdError;
use std::io;

/// Why a router stream failed.
///
/// A [`RouterStream`](crate::RouterStream) reports its failures through `AsyncRead` and
/// `AsyncWrite`, so callers see an [`io::Error`]. Each variant maps to a deliberate
/// [`io::ErrorKind`] (see [`Error::kind`]), and the `io::Error` carries the `Error` itself as
/// its inner error, so the details stay reachable:
///
/// ```
/// use jumpstarter_router::Error;
///
/// fn explain(err: &std::io::Error) -> String {
///     match err.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
///         Some(Error::Status(status)) => format!("router said {:?}: {}", status.code(), status.message()),
///         Some(other) => other.to_string(),
///         None => err.to_string(),
///     }
/// }
/// # let _ = explain;
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The gRPC call ended with an error status (or could not be made).
    #[error("router stream failed: {}", fmt_status(.0))]
    Status(#[source] tonic::Status),
    /// The peer aborted the stream with a RST_STREAM frame.
    #[error("router stream reset by peer (RST_STREAM)")]
    Reset,
    /// The call ended without a GOAWAY: the peer (or the router) vanished instead of finishing.
    #[error("router stream ended without GOAWAY: the peer vanished before it finished")]
    UnexpectedEnd,
    /// The write half was shut down already.
    #[error("router stream write half is shut down")]
    WriteAfterShutdown,
    /// The call carrying the stream has ended, so nothing more can be written.
    #[error("router stream call has ended; the peer no longer reads")]
    CallEnded,
    /// The stream was dropped without a shutdown (sent to the peer as the cause of an abort).
    #[error("router stream dropped without shutdown")]
    Dropped,
    /// The router ended the stream because the peer went (its process killed, its call
    /// cancelled, its connection lost, a reset): a GOAWAY whose payload is the router's reason.
    /// The router sends it so that Jumpstarter's peers, which end a session only on a GOAWAY,
    /// end theirs; a peer's own GOAWAY has no payload.
    #[error("router stream ended by the router: {0}")]
    PeerGone(String),
}

/// Why a router connection could not be set up (feature `client`): a bad endpoint, token or
/// certificate, or a router that cannot be reached. Once the stream is open, its failures are
/// [`Error`]s, reported through the stream's `io::Error`s.
///
/// Converts into an [`io::Error`] of kind [`ConnectError::kind`], so `?` works in functions
/// that return `io::Result`.
#[cfg(feature = "client")]
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The endpoint is not `host:port`, `https://host:port` or `http://host:port`.
    #[error("router endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token is empty (or only white space).
    #[error("the router token is empty")]
    EmptyToken,
    /// The token cannot be sent as an HTTP header value.
    #[error("the router token is not a valid HTTP header value")]
    InvalidToken,
    /// The CA certificate file holds no PEM certificate.
    #[error("the CA file holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate,
    /// TLS could not be set up with these settings.
    #[error("TLS setup: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// The router could not be reached (refused, unresolvable, timed out, TLS handshake).
    #[error("cannot connect to router {endpoint}: {message}")]
    Unreachable {
        /// The endpoint as given.
        endpoint: String,
        /// The error and its causes, in one line.
        message: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
}

#[cfg(feature = "client")]
impl ConnectError {
    /// The [`io::ErrorKind`] this error is reported with: `InvalidInput` for settings, the kind
    /// of the underlying I/O error (e.g. `ConnectionRefused`) for an unreachable router, or
    /// `ConnectionAborted` when it has none.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            ConnectError::Unreachable { source, .. } => {
                io_kind_in(Some(source)).unwrap_or(io::ErrorKind::ConnectionAborted)
            }
            _ => io::ErrorKind::InvalidInput,
        }
    }
}

#[cfg(feature = "client")]
impl From<ConnectError> for io::Error {
    fn from(e: ConnectError) -> Self {
        io::Error::new(e.kind(), e)
    }
}

/// An error and its sources in one line (`a: b: c`), each source's text only once.
#[cfg(any(feature = "client", feature = "router"))]
pub(crate) fn error_chain(e: &(dyn StdError + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = inner.source();
    }
    s
}

fn fmt_status(s: &tonic::Status) -> String {
    if s.message().is_empty() {
        format!("{:?}", s.code())
    } else {
        format!("{:?}: {}", s.code(), s.message())
    }
}

// ===== impl Error =====

impl Error {
    /// The [`io::ErrorKind`] this error is reported with.
    ///
    /// | cause | kind |
    /// |---|---|
    /// | RST_STREAM from the peer | `ConnectionReset` |
    /// | end of the call without GOAWAY | `UnexpectedEof` |
    /// | the router's GOAWAY with a reason (the peer went) | `ConnectionAborted` |
    /// | write after shutdown, or after the call ended | `BrokenPipe` |
    /// | status `Unauthenticated`, `PermissionDenied` | `PermissionDenied` |
    /// | status `Unavailable`, `Cancelled`, `Aborted` | `ConnectionAborted`, or the kind of the underlying I/O error (e.g. `ConnectionRefused`) |
    /// | status `DeadlineExceeded` | `TimedOut` |
    /// | status `ResourceExhausted`, `OutOfRange`, `DataLoss` (e.g. a frame over the size limit) | `InvalidData` |
    /// | status `InvalidArgument` | `InvalidInput` |
    /// | status `NotFound` / `AlreadyExists` / `Unimplemented` | `NotFound` / `AlreadyExists` / `Unsupported` |
    /// | anything else | `Other` |
    pub fn kind(&self) -> io::ErrorKind {
        use io::ErrorKind as K;
        use tonic::Code;
        match self {
            Error::Reset => K::ConnectionReset,
            Error::UnexpectedEnd => K::UnexpectedEof,
            Error::WriteAfterShutdown | Error::CallEnded => K::BrokenPipe,
            Error::Dropped | Error::PeerGone(_) => K::ConnectionAborted,
            Error::Status(s) => match s.code() {
                Code::Unauthenticated | Code::PermissionDenied => K::PermissionDenied,
                Code::Unavailable | Code::Cancelled | Code::Aborted => {
                    io_source_kind(s).unwrap_or(K::ConnectionAborted)
                }
                Code::DeadlineExceeded => K::TimedOut,
                Code::ResourceExhausted | Code::OutOfRange | Code::DataLoss => K::InvalidData,
                Code::InvalidArgument => K::InvalidInput,
                Code::NotFound => K::NotFound,
                Code::AlreadyExists => K::AlreadyExists,
                Code::Unimplemented => K::Unsupported,
                // A status tonic made from a transport failure carries its cause: the
                // connection broke. A status the peer sent has no source.
                _ => io_source_kind(s).unwrap_or(if s.source().is_some() {
                    K::ConnectionAborted
                } else {
                    K::Other
                }),
            },
        }
    }

    /// The gRPC status, when the call ended with one.
    pub fn status(&self) -> Option<&tonic::Status> {
        match self {
            Error::Status(s) => Some(s),
            _ => None,
        }
    }

    /// Finds an error of this crate inside an [`io::Error`] returned by a
    /// [`RouterStream`](crate::RouterStream).
    pub fn from_io(err: &io::Error) -> Option<&Error> {
        err.get_ref().and_then(|e| e.downcast_ref::<Error>())
    }
}

/// The kind of the first `io::Error` in the source chain of a status (a refused connection
/// keeps `ConnectionRefused` rather than a generic "aborted").
fn io_source_kind(s: &tonic::Status) -> Option<io::ErrorKind> {
    io_kind_in(s.source())
}

/// The kind of the first `io::Error` in a chain of errors.
fn io_kind_in(mut cur: Option<&(dyn StdError + 'static)>) -> Option<io::ErrorKind> {
    while let Some(e) = cur {
        if let Some(ioe) = e.downcast_ref::<io::Error>() {
            return Some(ioe.kind());
        }
        // hyper and h2 wrap I/O errors a few levels deep.
        cur = e.source();
    }
    None
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Status(s)
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        io::Error::new(e.kind(), e)
    }
}

impl From<Error> for tonic::Status {
    /// The status a router or servicer ends a call with when this error ends its stream.
    fn from(e: Error) -> Self {
        match e {
            Error::Status(s) => s,
            Error::Reset => tonic::Status::aborted("peer reset the stream"),
            Error::UnexpectedEnd => tonic::Status::aborted("peer ended its stream without GOAWAY"),
            Error::Dropped => tonic::Status::cancelled("stream dropped without shutdown"),
            other => tonic::Status::internal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn kinds_are_deliberate() {
        let k = |c: Code| Error::Status(tonic::Status::new(c, "x")).kind();
        assert_eq!(k(Code::Unauthenticated), io::ErrorKind::PermissionDenied);
        assert_eq!(k(Code::Unavailable), io::ErrorKind::ConnectionAborted);
        assert_eq!(k(Code::Cancelled), io::ErrorKind::ConnectionAborted);
        assert_eq!(k(Code::DeadlineExceeded), io::ErrorKind::TimedOut);
        assert_eq!(k(Code::ResourceExhausted), io::ErrorKind::InvalidData);
        assert_eq!(k(Code::Internal), io::ErrorKind::Other);
        assert_eq!(Error::Reset.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(Error::UnexpectedEnd.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(Error::WriteAfterShutdown.kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn a_transport_failure_is_an_aborted_connection_not_other() {
        let mut s = tonic::Status::unknown("h2 protocol error: error reading a body");
        s.set_source(std::sync::Arc::new(std::fmt::Error));
        assert_eq!(Error::Status(s).kind(), io::ErrorKind::ConnectionAborted);
    }

    #[test]
    fn io_error_keeps_the_status_as_source() {
        let e: io::Error = Error::Status(tonic::Status::unauthenticated("bad token")).into();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        let inner = Error::from_io(&e).unwrap();
        assert_eq!(inner.status().unwrap().message(), "bad token");
        let src = StdError::source(inner).unwrap();
        assert!(src.downcast_ref::<tonic::Status>().is_some());
    }

    #[test]
    fn unavailable_with_io_source_keeps_its_kind() {
        let mut s = tonic::Status::unavailable("connect failed");
        s.set_source(std::sync::Arc::new(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "refused",
        )));
        assert_eq!(Error::Status(s).kind(), io::ErrorKind::ConnectionRefused);
        // The same through tonic's own conversion of an io error.
        let io = io::Error::new(io::ErrorKind::ConnectionRefused, "refused");
        let s = tonic::Status::from_error(Box::new(io));
        assert_eq!(Error::Status(s).kind(), io::ErrorKind::ConnectionRefused);
    }
}
