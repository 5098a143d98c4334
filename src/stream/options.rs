//! [`StreamOptions`]: how a [`RouterStream`](crate::RouterStream) frames its writes and keeps
//! its call alive.

use std::time::Duration;

/// The default largest DATA payload a [`RouterStream`](crate::RouterStream) sends in one
/// frame: 64 KiB.
///
/// Writes are coalesced up to this size. Jumpstarter peers accept up to 4 MiB per message
/// (gRPC's default decoder limit); the benchmark in `benches/stream.rs` shows no gain above
/// 64 KiB and a loss below 16 KiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;

/// The largest [`StreamOptions::max_payload`]: 16 MiB (far above any gRPC peer's default
/// decoder limit of 4 MiB).
pub const MAX_PAYLOAD_LIMIT: usize = 16 * 1024 * 1024;

/// Options for a [`RouterStream`](crate::RouterStream).
///
/// ```
/// use std::time::Duration;
/// use jumpstarter_router::StreamOptions;
///
/// let opts = StreamOptions::new()
///     .max_payload(16 * 1024)
///     .ping_interval(Some(Duration::from_secs(30)));
/// # let _ = opts;
/// ```
#[derive(Clone, Debug)]
pub struct StreamOptions {
    pub(super) max_payload: usize,
    pub(super) ping_interval: Option<Duration>,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            max_payload: DEFAULT_MAX_PAYLOAD,
            ping_interval: None,
        }
    }
}

impl StreamOptions {
    /// The defaults: [`DEFAULT_MAX_PAYLOAD`], no PING frames.
    pub fn new() -> Self {
        Self::default()
    }

    /// The largest DATA payload sent in one frame (and the coalescing limit), between 1 byte
    /// and [`MAX_PAYLOAD_LIMIT`].
    ///
    /// Keep it under the peer's gRPC decoder limit (4 MiB by default, minus 5 bytes of
    /// message framing and a few bytes of protobuf header).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes.clamp(1, MAX_PAYLOAD_LIMIT);
        self
    }

    /// Sends a PING frame at this period (at least 1 ms) while the stream is being read and
    /// its write half is open; skipped when frames are already queued. Off by default (the
    /// HTTP/2 keepalive of the channel covers idle connections).
    pub fn ping_interval(mut self, every: Option<Duration>) -> Self {
        self.ping_interval = every.map(|d| d.max(Duration::from_millis(1)));
        self
    }
}
