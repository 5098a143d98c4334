//! HTTP/2 keepalive enforcement, like the Go router's gRPC server
//! (`keepalive.EnforcementPolicy{MinTime: 1s, PermitWithoutStream: true}`).
//!
//! Jumpstarter's clients ping every 20 s, also with no call open: that is always allowed. A
//! client that pings more often than once a second more than [`MAX_PING_STRIKES`] times in a row
//! (with no request frames in between) has its connection closed, as grpc-go closes it with
//! GOAWAY `ENHANCE_YOUR_CALM` "too_many_pings". hyper answers every PING by itself and has no
//! such policy, so this wrapper watches the frame headers of the decrypted inbound bytes.
//! It costs a few comparisons per HTTP/2 frame and copies nothing.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Pings closer together than this earn a strike.
pub(crate) const MIN_PING_INTERVAL: Duration = Duration::from_secs(1);
/// Strikes allowed before the connection is closed (grpc-go's `maxPingStrikes`).
pub(crate) const MAX_PING_STRIKES: u32 = 2;

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const TYPE_DATA: u8 = 0x0;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_PING: u8 = 0x6;
const FLAG_ACK: u8 = 0x1;

/// Where the scanner is in the inbound HTTP/2 byte stream.
#[derive(Debug)]
enum Scan {
    /// Skipping the client connection preface.
    Preface(usize),
    /// Collecting a frame header.
    Header([u8; FRAME_HEADER_LEN], usize),
    /// Skipping a frame payload.
    Payload(usize),
}

/// Counts too-frequent PINGs in an HTTP/2 server's inbound bytes.
#[derive(Debug)]
pub(crate) struct PingPolicy {
    scan: Scan,
    last_ping: Option<Instant>,
    strikes: u32,
}

impl PingPolicy {
    pub(crate) fn new() -> Self {
        PingPolicy {
            scan: Scan::Preface(PREFACE_LEN),
            last_ping: None,
            strikes: 0,
        }
    }

    /// Feeds inbound bytes; `Err` when the client pinged too often.
    pub(crate) fn feed(&mut self, mut bytes: &[u8], now: Instant) -> io::Result<()> {
        while !bytes.is_empty() {
            match &mut self.scan {
                Scan::Preface(left) | Scan::Payload(left) => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.scan = Scan::Header([0; FRAME_HEADER_LEN], 0);
                    }
                }
                Scan::Header(h, have) => {
                    let n = (FRAME_HEADER_LEN - *have).min(bytes.len());
                    h[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == FRAME_HEADER_LEN {
                        let len =
                            usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                        let (ty, flags) = (h[3], h[4]);
                        self.on_frame(ty, flags, now)?;
                        self.scan = if len == 0 {
                            Scan::Header([0; FRAME_HEADER_LEN], 0)
                        } else {
                            Scan::Payload(len)
                        };
                    }
                }
            }
        }
        Ok(())
    }

    fn on_frame(&mut self, ty: u8, flags: u8, now: Instant) -> io::Result<()> {
        match ty {
            TYPE_PING if flags & FLAG_ACK == 0 => {
                if self
                    .last_ping
                    .is_some_and(|t| now.duration_since(t) < MIN_PING_INTERVAL)
                {
                    self.strikes += 1;
                }
                self.last_ping = Some(now);
                if self.strikes > MAX_PING_STRIKES {
                    tracing::warn!(
                        "router: closing a connection that pings too often (too_many_pings)"
                    );
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "too_many_pings: the client pings more often than once a second",
                    ));
                }
            }
            TYPE_DATA | TYPE_HEADERS => self.strikes = 0,
            _ => {}
        }
        Ok(())
    }
}

/// A server connection whose inbound bytes go through a [`PingPolicy`].
pub(crate) struct PingGuard<IO> {
    io: IO,
    policy: PingPolicy,
    info: TcpConnectInfo,
}

impl<IO> PingGuard<IO> {
    pub(crate) fn new(io: IO, info: TcpConnectInfo) -> Self {
        PingGuard {
            io,
            policy: PingPolicy::new(),
            info,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for PingGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut me.io).poll_read(cx, buf))?;
        me.policy.feed(&buf.filled()[before..], Instant::now())?;
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for PingGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<IO> Connected for PingGuard<IO> {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(ty: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            ty,
            flags,
            0,
            0,
            0,
            0,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn rapid_pings_are_struck_out_even_split_byte_by_byte() {
        let mut wire = PREFACE.to_vec();
        wire.extend(frame(0x4, 0, &[0; 6])); // SETTINGS
        let t0 = Instant::now();
        let mut p = PingPolicy::new();
        for b in wire.chunks(1) {
            p.feed(b, t0).unwrap();
        }
        let ping = frame(TYPE_PING, 0, &[1; 8]);
        // The first ping and MAX_PING_STRIKES early ones pass...
        for i in 0..=MAX_PING_STRIKES {
            for b in ping.chunks(1) {
                p.feed(b, t0 + Duration::from_millis(10 * i as u64))
                    .unwrap();
            }
        }
        // ... one more is too many.
        assert!(p.feed(&ping, t0 + Duration::from_millis(50)).is_err());
    }

    #[test]
    fn pings_a_second_apart_acks_and_activity_are_fine() {
        let mut p = PingPolicy::new();
        let t0 = Instant::now();
        p.feed(PREFACE, t0).unwrap();
        for i in 0..10 {
            p.feed(
                &frame(TYPE_PING, 0, &[0; 8]),
                t0 + Duration::from_millis(1001 * i),
            )
            .unwrap();
            // ACKs never count
            p.feed(&frame(TYPE_PING, FLAG_ACK, &[0; 8]), t0).unwrap();
        }
        // Early pings with DATA between them reset the strikes.
        let t1 = t0 + Duration::from_secs(20);
        for i in 0..10 {
            p.feed(&frame(TYPE_PING, 0, &[0; 8]), t1).unwrap();
            p.feed(
                &frame(TYPE_DATA, 0, &[7; 100]),
                t1 + Duration::from_millis(i),
            )
            .unwrap();
        }
    }
}
