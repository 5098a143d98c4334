//! The router service: a drop-in for Jumpstarter's Go router (feature `router`).
//!
//! Each `Stream` call presents a bearer JWT whose subject names a stream; the router pairs the
//! first and the second caller of a stream id and forwards frames between them unchanged
//! (payload and frame type), with no payload copy and no task or channel per frame.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use jumpstarter_router::router::{Auth, Router};
//!
//! let router = Router::builder(Auth::new(b"secret")).build();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8083").await?;
//! router.serve_plaintext(listener, std::future::pending()).await;
//! # Ok(()) }
//! ```
//!
//! # Rules
//!
//! - Auth exactly as the Go router: see [`Auth`]. Any failure is `Unauthenticated`.
//! - A caller waiting for its peer is removed from the pending table when it leaves, when its
//!   token expires, or when the optional pairing timeout passes (status `DeadlineExceeded`).
//! - A third caller of a stream id never joins or breaks a pair: it waits for a fourth.
//! - Half-close holds end to end: a caller that finished cleanly (GOAWAY, then the end of its
//!   request stream) gets its response ended only once its peer's request stream has ended
//!   too.
//! - A caller that goes any other way (its call cancelled, its connection lost, a RST_STREAM,
//!   an invalid stream, an end without GOAWAY) ends its peer's call at once: the peer gets a
//!   GOAWAY frame whose payload says why (unless it had its peer's own GOAWAY), then status
//!   `Aborted` with the same words. Jumpstarter's peers end a session only on a GOAWAY; a
//!   [`RouterStream`](crate::RouterStream) takes a GOAWAY with a reason as the error it is.
//! - Only whole messages are forwarded: the part of a message that spans HTTP/2 frames is
//!   held until its last byte is in, so a peer that vanishes mid-message leaves no torn
//!   message, and the router's GOAWAY always lands on a message boundary.
//! - Response headers go out as soon as a call is accepted, also to a waiting caller.
//! - Connections are kept alive, their pings policed and their idle time and age limited as
//!   grpc-go's server does it for the Go router: see [`Keepalive`].
//! - A call that had nothing sent to it for [`Keepalive::ping_frame_interval`] (20 s) gets a
//!   Jumpstarter PING frame, waiting for its peer or not: proxies that count only stream data
//!   as activity keep it open. A busy call never gets one; Jumpstarter's peers skip them.
//! - Frames are forwarded unchanged, RST_STREAM and unknown types included, and forwarding
//!   goes on after them; a pair ends only when a call ends or fails.
//! - A refused caller gets its `Unauthenticated` status after its first message (or at most
//!   1 s), and its request stays open a little longer, so that a grpc-core client sees the
//!   status rather than a failed write. Every request body the router stops reading while
//!   its caller may still send is read and dropped that way for up to 5 s (or 4 MiB).
//! - Compressed messages (`grpc-encoding` other than `identity`) are refused with
//!   `Unimplemented`: the router forwards messages as they are and reads their frame types.

//!
//! # Layout
//!
//! Each file builds on the ones before it, never on one after it:
//!
//! - `error.rs`, `auth.rs`, `keepalive.rs`, `metrics.rs`: settings, tokens and counters;
//! - `body.rs`: a caller's request body as the router reads it (whole messages, how the
//!   caller went);
//! - `pair.rs`: what the two callers of a stream share while forwarding;
//! - `pairing.rs`: the table of callers waiting for their peer;
//! - `forward.rs`: a caller's response body, its peer's request body forwarded;
//! - `service.rs`: [`Router`], which ties them together per call;
//! - `connections.rs`: client connections, each served with hyper's HTTP/2 server;
//! - `tls.rs`: [`ServerTls`], and certificate files followed as they are renewed;
//! - `serve.rs`: the listeners (the router's, the metrics and health ports), and
//!   [`Router::run`].

mod auth;
mod body;
mod connections;
mod error;
mod forward;
mod keepalive;
mod metrics;
mod pair;
mod pairing;
mod serve;
mod service;
mod tls;

pub use auth::{Auth, Grant, AUDIENCE, ISSUER};
pub use error::ConfigError;
pub use keepalive::Keepalive;
pub use metrics::{CallResult, Direction, Metrics, RouterStats};
/// The `prometheus-client` this crate's [`Metrics`] are made with, for [`Metrics::register`].
pub use prometheus_client;
pub use serve::{ServeConfig, TlsMode};
pub use service::{Router, RouterBuilder, RouterServer, DEFAULT_HANDSHAKE_TIMEOUT};
pub use tls::ServerTls;
