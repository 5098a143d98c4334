//! I/O wrappers that sit between a socket and HTTP/2 (hyper and h2), on the client and the
//! router:
//!
//! - [`BatchedRead`]: large socket reads under load (h2 reads through an 8 KiB buffer);
//! - [`KeepalivePolicy`] (router): the HTTP/2 keepalive enforcement of grpc-go's server, and
//!   the deadline for the client's connection preface, on the decrypted bytes.

mod batched_read;
#[cfg(feature = "router")]
mod keepalive_policy;

pub(crate) use batched_read::BatchedRead;
#[cfg(feature = "router")]
pub(crate) use keepalive_policy::KeepalivePolicy;
