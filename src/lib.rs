//! The router protocol of [Jumpstarter](https://jumpstarter.dev), the open-source
//! hardware-in-the-loop test framework, done the way Rust networking is done.
//!
//! A Jumpstarter client and an exporter reach each other through a router: both open the gRPC
//! bidi call `jumpstarter.v1.RouterService/Stream` with a token naming one stream, and the
//! router pairs the two calls and forwards frames between them. This crate gives you that
//! stream as a [`RouterStream`]: a tokio [`AsyncRead`](tokio::io::AsyncRead) +
//! [`AsyncBufRead`](tokio::io::AsyncBufRead) + [`AsyncWrite`](tokio::io::AsyncWrite) duplex, so
//! [`tokio::io::copy_bidirectional`] with a `TcpStream` works against it directly and
//! `tokio_util::codec::Framed` wraps it.
//!
//! ```no_run
//! # #[cfg(feature = "client")]
//! # async fn demo() -> std::io::Result<()> {
//! // Tunnel a local TCP connection through a Jumpstarter router.
//! let mut stream = jumpstarter_router::connect("router.lab.example:443", "TOKEN").await?;
//! let mut tcp = tokio::net::TcpStream::connect("127.0.0.1:5900").await?;
//! tokio::io::copy_bidirectional(&mut tcp, &mut stream).await?;
//! # Ok(()) }
//! ```
//!
//! The frame semantics (the contract shared with Jumpstarter's Python and Go peers) are on
//! [`RouterStream`]: GOAWAY is a half-close, RST_STREAM and a call that ends without GOAWAY
//! are errors (never a clean EOF), backpressure is exact, reads do not copy.
//!
//! # Features
//!
//! - `client` (default): [`connect`], [`ClientBuilder`], [`open`]: tonic's HTTP/2 channel with
//!   rustls TLS (system roots, a custom CA, or Jumpstarter's insecure mode).
//! - `router`: the router service (`router` module), a drop-in for Jumpstarter's Go router.
//! - `cli`: the `jumpstarter-router` binary.
//! - `kube`: the binary reads the `jumpstarter-controller` ConfigMap through the Kubernetes
//!   API, as Jumpstarter's Go router does (Rust 1.89).
//!
//! gRPC inside a stream (what Jumpstarter's session is): [`grpc::channel`] (client) and a
//! [`RouterStream`] as a tonic server's connection (router): see the `grpc` module.
//!
//! With no features, the crate is the bare adapter: [`RouterStream`] over calls you make
//! ([`RouterStream::from_call`]) or receive ([`RouterStream::accept`]), or over any frame
//! transport ([`RouterStream::from_frames`]), and the [`Frame`] type.
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bridge;
mod error;
mod frame;
#[cfg(any(feature = "client", feature = "router"))]
mod h2io;
mod prost_codec;
mod stream;
#[cfg(any(feature = "client", feature = "router"))]
mod wire;

#[cfg(feature = "client")]
mod client;

#[cfg(any(feature = "client", feature = "router"))]
pub mod grpc;

#[cfg(feature = "router")]
pub mod router;

#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzz;

#[cfg(all(test, any(feature = "client", feature = "router")))]
mod test_util;

/// The generated protobuf messages and tonic client and server for
/// `jumpstarter.v1.RouterService` (`proto/jumpstarter/v1/router.proto`).
#[allow(missing_docs, unreachable_pub, missing_debug_implementations)]
pub mod proto {
    tonic::include_proto!("jumpstarter.v1");
}

/// gRPC's default largest message a receiver decodes, and the router's limit: 4 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// The HTTP/2 windows this crate grants on both sides, client and router: 4 MiB per stream,
/// 8 MiB per connection (measured in `benches/relay.rs`; h2's 64 KiB default stalls a stream at
/// a few MiB/s on any real round trip).
#[cfg(any(feature = "client", feature = "router"))]
pub(crate) const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
#[cfg(any(feature = "client", feature = "router"))]
pub(crate) const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
/// The largest HTTP/2 DATA frame the router and the client take (h2's default is 16 KiB). The
/// router passes received chunks on as they are, so fewer, larger chunks cost it less per
/// byte: with the relay bench's raw clients, router CPU per GiB went from 0.77/0.75/0.67x the
/// tonic relay's (64/16/1 KiB writes, medians of 5) at 16 KiB frames to 0.65/0.62/0.48x at
/// 64 KiB, and 0.74/0.72/0.49x at 256 KiB; 64 KiB + 1 KiB (a whole default message in one
/// frame) measured 0.77/0.58/0.50x against 0.63/0.64/0.51x for 64 KiB in the same session,
/// and worse again with the client at the same size. The client's 64 KiB frames: see the
/// docs/performance.md (the router's writes to it, and its reads, then skip `BatchedIo`'s copies).
#[cfg(any(feature = "client", feature = "router"))]
pub(crate) const MAX_FRAME_SIZE: u32 = 64 * 1024;

pub use bridge::bridge;
#[cfg(feature = "client")]
pub use error::ConnectError;
pub use error::Error;
pub use frame::Frame;
pub use stream::{
    CallFrames, RequestStream, ResponseStream, RouterStream, SentFrames, StreamOptions,
    DEFAULT_MAX_PAYLOAD, MAX_PAYLOAD_LIMIT,
};

#[cfg(feature = "client")]
pub use client::{connect, open, ClientBuilder};
