//! gRPC inside a router stream, the way Jumpstarter runs a whole client/exporter session:
//! plaintext HTTP/2 (h2c) whose one connection is a [`RouterStream`].
//!
//! - Client side (feature `client`): [`channel`] makes a tonic [`Channel`] over a stream; any
//!   generated client, or `tonic::client::Grpc` with a codec of your own, calls through it.
//! - Server side (feature `router`, which brings tonic's server): a [`RouterStream`] is a
//!   tonic connection ([`Connected`](tonic::transport::server::Connected)), so
//!   `Server::builder().serve_with_incoming(stream_of_one)` serves your services on it.
//!
//! ```no_run
//! # #[cfg(feature = "client")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use jumpstarter_router::proto::router_service_client::RouterServiceClient;
//!
//! let stream = jumpstarter_router::connect("router.lab.example:443", "TOKEN").await?;
//! let channel = jumpstarter_router::grpc::channel(stream).await?;
//! // Any generated client works over it; this one opens a stream inside the session.
//! let inner = jumpstarter_router::open(channel, "INNER-TOKEN")?;
//! # Ok(()) }
//! ```
//!
//! The channel has the one connection: it cannot reconnect, and once the stream ends its calls
//! fail with `UNAVAILABLE`. `examples/grpc_over_stream.rs` runs both sides.

#[cfg(feature = "client")]
use std::io;
#[cfg(feature = "client")]
use std::task::{Context, Poll};

#[cfg(feature = "client")]
use futures_core::Stream;
#[cfg(feature = "client")]
use tonic::transport::{Channel, Endpoint, Uri};

#[cfg(feature = "client")]
use crate::Frame;
use crate::RouterStream;

/// A tonic [`Channel`] whose one connection is `stream`: the session's gRPC calls go as
/// HTTP/2 inside it.
///
/// # Errors
///
/// The HTTP/2 handshake over the stream failed (the peer is no gRPC server, or the stream
/// ended).
#[cfg(feature = "client")]
pub async fn channel<S>(stream: RouterStream<S>) -> Result<Channel, tonic::transport::Error>
where
    S: Stream<Item = Result<Frame, tonic::Status>> + Send + Unpin + 'static,
{
    // Any authority: the requests go nowhere but into the stream.
    Endpoint::from_static("http://router-stream")
        .connect_with_connector(HandOver(Some(stream)))
        .await
}

/// The channel's connector: hands out its stream once.
#[cfg(feature = "client")]
struct HandOver<S>(Option<RouterStream<S>>);

#[cfg(feature = "client")]
impl<S> tonic::codegen::Service<Uri> for HandOver<S>
where
    S: Stream<Item = Result<Frame, tonic::Status>> + Send + Unpin + 'static,
{
    type Response = hyper_util::rt::TokioIo<RouterStream<S>>;
    type Error = io::Error;
    type Future = std::future::Ready<io::Result<Self::Response>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        std::future::ready(
            self.0
                .take()
                .map(hyper_util::rt::TokioIo::new)
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotConnected,
                        "the router stream under this channel is gone: it cannot reconnect",
                    )
                }),
        )
    }
}

/// A router stream as a tonic server's connection (no address to tell).
#[cfg(feature = "router")]
impl<S> tonic::transport::server::Connected for RouterStream<S> {
    type ConnectInfo = ();

    fn connect_info(&self) {}
}
