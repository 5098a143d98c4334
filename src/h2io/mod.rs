//! I/O wrappers that sit between a socket and HTTP/2 (hyper and h2), on the client and the
//! router:
//!
//! - [`Transport`]: the TCP connection under HTTP/2, with `BatchedIo` (large socket reads
//!   under load, and the frames h2 flushes one by one written together) unless it is turned
//!   off; the only place a `BatchedIo` is made;
//! - [`PolicedIo`] (router): the HTTP/2 keepalive enforcement of grpc-go's server, and
//!   the deadline for the client's connection preface, on the decrypted bytes; and what
//!   became of the connection and how many calls it has open ([`ConnState`]).

mod batched_io;
#[cfg(feature = "router")]
mod ping_policy;
mod transport;

#[cfg(feature = "router")]
pub(crate) use ping_policy::{CallGuard, ConnInfo, ConnState, PingRules, PolicedIo};
pub(crate) use transport::Transport;
