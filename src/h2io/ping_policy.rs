//! HTTP/2 keepalive enforcement, like the Go router's gRPC server
//! (`keepalive.EnforcementPolicy`, by default `{MinTime: 1s, PermitWithoutStream: true}`).
//!
//! Jumpstarter's clients ping every 20 s, also with no call open: that is allowed by default.
//! A client that pings more often than `min_time` more than [`MAX_PING_STRIKES`] times in a
//! row (or, without `permit_without_stream`, more often than every two hours with no call
//! open) gets a GOAWAY `ENHANCE_YOUR_CALM` "too_many_pings", as grpc-go sends it, and its
//! connection is closed. hyper has no such policy, so the wrapper writes that GOAWAY itself,
//! between two of hyper's frames (it follows the frame boundaries of what hyper writes; in
//! the rare case hyper is mid-frame, the connection is closed without it), and hyper's later
//! writes wait until it is out. As in grpc-go, a ping that follows DATA or HEADERS *sent by the server*
//! resets the strikes: a client receiving data may ping as often as its flow control wants
//! (BDP probes of grpc-core and of hyper's adaptive window do exactly that).
//!
//! hyper answers every PING by itself and has no such policy, so this wrapper watches the
//! HTTP/2 frame headers of the decrypted bytes both ways. It costs a few comparisons per frame
//! and copies nothing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

// tokio's clock: paused time drives the policy in tests.
use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Strikes allowed before the connection is closed (grpc-go's `maxPingStrikes`).
pub(crate) const MAX_PING_STRIKES: u32 = 2;
/// Without `permit_without_stream`, pings with no call open closer together than this are
/// strikes (grpc-go's `defaultPingTimeout`).
const PING_WITHOUT_STREAM_INTERVAL: Duration = Duration::from_secs(2 * 60 * 60);

/// The client ping policy of a connection (grpc-go's `keepalive.EnforcementPolicy`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PingRules {
    /// Pings closer together than this earn a strike.
    pub(crate) min_time: Duration,
    /// Pings are allowed with no call open.
    pub(crate) permit_without_stream: bool,
}

impl From<&crate::router::Keepalive> for PingRules {
    fn from(k: &crate::router::Keepalive) -> Self {
        PingRules {
            min_time: k.min_time,
            permit_without_stream: k.permit_without_stream,
        }
    }
}

#[cfg(test)]
impl Default for PingRules {
    /// The router's default policy.
    fn default() -> Self {
        Self::from(&crate::router::Keepalive::default())
    }
}

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const TYPE_DATA: u8 = 0x0;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_PING: u8 = 0x6;
const TYPE_GOAWAY: u8 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const FLAG_ACK: u8 = 0x1;

/// Finds the frame headers in one direction of an HTTP/2 byte stream.
#[derive(Debug)]
enum FrameScanner {
    /// Skipping the client connection preface (inbound only).
    Preface(usize),
    /// Collecting a frame header.
    Header([u8; FRAME_HEADER_LEN], usize),
    /// Skipping a frame payload.
    Payload(usize),
}

impl FrameScanner {
    fn header() -> Self {
        FrameScanner::Header([0; FRAME_HEADER_LEN], 0)
    }

    /// Between two frames: a frame of our own can go in here.
    fn at_boundary(&self) -> bool {
        matches!(self, FrameScanner::Header(_, 0))
    }

    /// Feeds bytes; calls `on_frame(type, flags, stream id)` for each frame header completed.
    fn feed<E>(
        &mut self,
        mut bytes: &[u8],
        mut on_frame: impl FnMut(u8, u8, u32) -> Result<(), E>,
    ) -> Result<(), E> {
        while !bytes.is_empty() {
            match self {
                FrameScanner::Preface(left) | FrameScanner::Payload(left) => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        *self = FrameScanner::header();
                    }
                }
                FrameScanner::Header(h, have) => {
                    let n = (FRAME_HEADER_LEN - *have).min(bytes.len());
                    h[*have..*have + n].copy_from_slice(&bytes[..n]);
                    *have += n;
                    bytes = &bytes[n..];
                    if *have == FRAME_HEADER_LEN {
                        let len =
                            usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                        let (ty, flags) = (h[3], h[4]);
                        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                        *self = if len == 0 {
                            FrameScanner::header()
                        } else {
                            FrameScanner::Payload(len)
                        };
                        on_frame(ty, flags, stream)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// grpc-go's ping policy for one server connection.
#[derive(Debug)]
pub(crate) struct PingPolicy {
    rules: PingRules,
    inbound: FrameScanner,
    outbound: FrameScanner,
    last_ping: Option<Instant>,
    strikes: u32,
    /// The server sent DATA or HEADERS since the last ping (grpc-go's `resetPingStrikes`).
    reset: bool,
    /// The highest stream the client opened (for a GOAWAY's last stream id).
    last_stream: u32,
}

impl PingPolicy {
    pub(crate) fn new(rules: PingRules) -> Self {
        PingPolicy {
            rules,
            inbound: FrameScanner::Preface(PREFACE_LEN),
            outbound: FrameScanner::header(),
            last_ping: None,
            strikes: 0,
            reset: false,
            last_stream: 0,
        }
    }

    /// Feeds bytes the client sent; `Err` when it pinged too often. `calls()` says how many
    /// calls the connection has open (asked only for a PING).
    pub(crate) fn feed(
        &mut self,
        bytes: &[u8],
        now: Instant,
        calls: impl Fn() -> usize,
    ) -> io::Result<()> {
        let Self {
            rules,
            inbound,
            last_ping,
            strikes,
            reset,
            last_stream,
            ..
        } = self;
        inbound.feed(bytes, |ty, flags, stream| {
            if ty == TYPE_HEADERS {
                *last_stream = (*last_stream).max(stream);
            }
            if ty != TYPE_PING || flags & FLAG_ACK != 0 {
                return Ok(());
            }
            let last = last_ping.replace(now);
            if std::mem::take(reset) {
                *strikes = 0;
                return Ok(());
            }
            let min = if rules.permit_without_stream || calls() > 0 {
                rules.min_time
            } else {
                PING_WITHOUT_STREAM_INTERVAL
            };
            if last.is_some_and(|t| now.duration_since(t) < min) {
                *strikes += 1;
            }
            if *strikes > MAX_PING_STRIKES {
                return Err(too_many_pings());
            }
            Ok(())
        })
    }

    /// Feeds bytes the server wrote.
    pub(crate) fn sent(&mut self, bytes: &[u8]) {
        let reset = &mut self.reset;
        let _ = self.outbound.feed(bytes, |ty, _, _| {
            if ty == TYPE_DATA || ty == TYPE_HEADERS {
                *reset = true;
            }
            Ok::<(), ()>(())
        });
    }

    /// A GOAWAY `ENHANCE_YOUR_CALM` "too_many_pings", as grpc-go sends it, when it can go out
    /// now (the server's bytes are between two frames).
    fn calm_down(&self) -> Option<Vec<u8>> {
        if !self.outbound.at_boundary() {
            return None;
        }
        const DEBUG: &[u8] = b"too_many_pings";
        let len = 8 + DEBUG.len();
        let mut f = vec![0, 0, len as u8, TYPE_GOAWAY, 0, 0, 0, 0, 0];
        f.extend_from_slice(&self.last_stream.to_be_bytes());
        f.extend_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
        f.extend_from_slice(DEBUG);
        Some(f)
    }

    fn sent_vectored(&mut self, bufs: &[io::IoSlice<'_>], mut n: usize) {
        for b in bufs {
            if n == 0 {
                break;
            }
            let k = b.len().min(n);
            self.sent(&b[..k]);
            n -= k;
        }
    }
}

fn too_many_pings() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "too_many_pings: the client pings more often than the router's keepalive policy allows",
    )
}

/// What the calls and the server loop of a client connection know of it, shared by the
/// connection and its requests (through [`ConnInfo`]):
///
/// - What became of it: hyper ends a request body the same way (no error) for an HTTP/2
///   cancel, a keepalive timeout and a caller that ended its stream, so the router asks the
///   connection.
/// - How many calls it has open, and since when it has had none (for the ping policy and
///   `max_connection_idle`).
#[derive(Clone, Debug)]
pub(crate) struct ConnState(Arc<ConnShared>);

#[derive(Debug)]
struct ConnShared {
    fate: AtomicU8,
    calls: AtomicUsize,
    /// When the last call ended (or the connection began).
    idle_since: Mutex<Instant>,
}

impl Default for ConnState {
    fn default() -> Self {
        ConnState(Arc::new(ConnShared {
            fate: AtomicU8::new(Self::OPEN),
            calls: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }))
    }
}

/// One call open on a connection, until dropped.
#[derive(Debug)]
pub(crate) struct CallGuard(ConnState);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let shared = &(self.0).0;
        if shared.calls.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Ok(mut since) = shared.idle_since.lock() {
                *since = Instant::now();
            }
        }
    }
}

impl ConnState {
    const OPEN: u8 = 0;
    const EOF: u8 = 1;
    const FAILED: u8 = 2;
    const DROPPED: u8 = 3;

    /// The first word counts.
    fn set(&self, fate: u8) {
        let _ = self
            .0
            .fate
            .compare_exchange(Self::OPEN, fate, Ordering::AcqRel, Ordering::Acquire);
    }

    /// A call begins; it ends when the guard is dropped.
    pub(crate) fn call(&self) -> CallGuard {
        self.0.calls.fetch_add(1, Ordering::AcqRel);
        CallGuard(self.clone())
    }

    /// How many calls are open.
    pub(crate) fn calls(&self) -> usize {
        self.0.calls.load(Ordering::Acquire)
    }

    /// Since when the connection has had no call open; `None` while it has one.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        let since = *self.0.idle_since.lock().ok()?;
        (self.calls() == 0).then_some(since)
    }

    /// How the connection ended, if it did.
    pub(crate) fn ended(&self) -> Option<&'static str> {
        match self.0.fate.load(Ordering::Acquire) {
            Self::OPEN => None,
            Self::EOF => Some("its connection was closed from its end"),
            Self::FAILED => Some("its connection failed"),
            _ => {
                Some("the router closed its connection (no answer to keepalive pings, or shutdown)")
            }
        }
    }
}

/// The connect info of a router connection: its addresses, and its [`ConnState`].
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    pub(crate) tcp: TcpConnectInfo,
    pub(crate) state: ConnState,
}

/// A server connection whose inbound bytes go through a [`PingPolicy`], and that fails when
/// the client's HTTP/2 preface does not arrive in time (hyper would wait for it for ever).
pub(crate) struct PolicedIo<IO> {
    io: IO,
    policy: PingPolicy,
    info: TcpConnectInfo,
    state: ConnState,
    /// A GOAWAY of ours going out (and how much of it went) before the connection fails.
    closing: Option<(Vec<u8>, usize)>,
    /// Until the preface is in: the deadline, and the bytes seen so far.
    preface: Option<(Pin<Box<tokio::time::Sleep>>, usize)>,
}

impl<IO> PolicedIo<IO> {
    /// `deadline`: when the connection fails if the preface is not in.
    pub(crate) fn new(
        io: IO,
        info: TcpConnectInfo,
        deadline: tokio::time::Instant,
        rules: PingRules,
    ) -> Self {
        PolicedIo {
            io,
            policy: PingPolicy::new(rules),
            info,
            state: ConnState::default(),
            closing: None,
            preface: Some((Box::pin(tokio::time::sleep_until(deadline)), 0)),
        }
    }
}

impl<IO: AsyncWrite + Unpin> PolicedIo<IO> {
    /// Writes what is left of our GOAWAY, and flushes it.
    fn poll_goaway(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some((frame, written)) = &mut self.closing {
            while *written < frame.len() {
                let n =
                    std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &frame[*written..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                *written += n;
            }
            std::task::ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// The client pinged too often: GOAWAY `ENHANCE_YOUR_CALM` (when it can go in between
    /// two of hyper's frames), then the connection fails.
    fn poll_too_many_pings(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.closing.is_none() {
            tracing::warn!("router: closing a connection that pings too often (too_many_pings)");
            self.closing = Some((self.policy.calm_down().unwrap_or_default(), 0));
        }
        // A write error here changes nothing: the connection fails either way.
        let _ = std::task::ready!(self.poll_goaway(cx));
        Poll::Ready(Err(too_many_pings()))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for PolicedIo<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.closing.is_some() {
            return me.poll_too_many_pings(cx);
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut me.io).poll_read(cx, buf);
        if let Some((deadline, seen)) = &mut me.preface {
            match &read {
                Poll::Ready(Ok(())) => {
                    *seen += buf.filled().len() - before;
                    if *seen >= PREFACE_LEN {
                        me.preface = None;
                    }
                }
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no HTTP/2 preface within the handshake timeout",
                    )));
                }
                _ => {}
            }
        }
        if let Err(e) = std::task::ready!(read) {
            me.state.set(ConnState::FAILED);
            return Poll::Ready(Err(e));
        }
        if buf.filled().len() == before && buf.remaining() > 0 {
            me.state.set(ConnState::EOF);
        }
        let state = &me.state;
        if me
            .policy
            .feed(&buf.filled()[before..], Instant::now(), || state.calls())
            .is_err()
        {
            return me.poll_too_many_pings(cx);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO> Drop for PolicedIo<IO> {
    fn drop(&mut self) {
        self.state.set(ConnState::DROPPED);
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for PolicedIo<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        // Our GOAWAY goes out whole before anything more of hyper's.
        std::task::ready!(me.poll_goaway(cx))?;
        let n = std::task::ready!(Pin::new(&mut me.io).poll_write(cx, buf))?;
        me.policy.sent(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        std::task::ready!(me.poll_goaway(cx))?;
        let n = std::task::ready!(Pin::new(&mut me.io).poll_write_vectored(cx, bufs))?;
        me.policy.sent_vectored(bufs, n);
        Poll::Ready(Ok(n))
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

impl<IO> Connected for PolicedIo<IO> {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            tcp: self.info.clone(),
            state: self.state.clone(),
        }
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
        let mut p = PingPolicy::new(PingRules::default());
        for b in wire.chunks(1) {
            p.feed(b, t0, || 1).unwrap();
        }
        let ping = frame(TYPE_PING, 0, &[1; 8]);
        // The first ping and MAX_PING_STRIKES early ones pass...
        for i in 0..=MAX_PING_STRIKES {
            for b in ping.chunks(1) {
                p.feed(b, t0 + Duration::from_millis(10 * i as u64), || 1)
                    .unwrap();
            }
        }
        // ... one more is too many.
        assert!(p.feed(&ping, t0 + Duration::from_millis(50), || 1).is_err());
    }

    #[test]
    fn pings_a_second_apart_acks_and_activity_are_fine() {
        let mut p = PingPolicy::new(PingRules::default());
        let t0 = Instant::now();
        p.feed(PREFACE, t0, || 1).unwrap();
        for i in 0..10 {
            p.feed(
                &frame(TYPE_PING, 0, &[0; 8]),
                t0 + Duration::from_millis(1001 * i),
                || 1,
            )
            .unwrap();
            // ACKs never count
            p.feed(&frame(TYPE_PING, FLAG_ACK, &[0; 8]), t0, || 1)
                .unwrap();
        }
        // Inbound DATA does not reset the strikes (as in grpc-go)...
        let t1 = t0 + Duration::from_secs(20);
        let mut struck = false;
        for i in 0..10 {
            p.feed(&frame(TYPE_DATA, 0, &[7; 100]), t1, || 1).unwrap();
            if p.feed(
                &frame(TYPE_PING, 0, &[0; 8]),
                t1 + Duration::from_millis(i),
                || 1,
            )
            .is_err()
            {
                struck = true;
                break;
            }
        }
        assert!(
            struck,
            "rapid pings between inbound DATA must be struck out"
        );
    }

    /// The policy in its I/O wrapper, on a scripted connection and paused time: a client
    /// that pings once a second is served, a flood fails the connection, and a preface that
    /// does not come fails it at the deadline.
    #[tokio::test(start_paused = true)]
    async fn the_wrapper_passes_pings_a_second_apart_and_fails_a_flood() {
        use tokio::io::AsyncReadExt;
        let ping = frame(TYPE_PING, 0, &[0; 8]);
        let mut script = tokio_test::io::Builder::new();
        script.read(PREFACE);
        for _ in 0..4 {
            script.wait(Duration::from_millis(1050)).read(&ping);
        }
        for _ in 0..=MAX_PING_STRIKES {
            script.read(&ping);
        }
        let info = TcpConnectInfo {
            local_addr: None,
            remote_addr: None,
        };
        // The flood's answer: GOAWAY ENHANCE_YOUR_CALM "too_many_pings", last stream 0.
        let mut goaway = vec![
            0,
            0,
            22,
            TYPE_GOAWAY,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0xb,
        ];
        goaway.extend_from_slice(b"too_many_pings");
        script.write(&goaway);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut io = PolicedIo::new(script.build(), info, deadline, PingRules::default());
        let mut buf = [0u8; 64];
        assert_eq!(io.read(&mut buf).await.unwrap(), PREFACE.len());
        for _ in 0..4 {
            assert_eq!(io.read(&mut buf).await.unwrap(), ping.len());
        }
        // The last spaced ping and MAX_PING_STRIKES - 1 more pass; then one too many.
        for _ in 0..MAX_PING_STRIKES {
            assert_eq!(io.read(&mut buf).await.unwrap(), ping.len());
        }
        let e = io.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted, "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_wrapper_fails_a_connection_whose_preface_does_not_come() {
        use tokio::io::AsyncReadExt;
        // A client that connects and says nothing.
        let (silent, _client) = tokio::io::duplex(64);
        let info = TcpConnectInfo {
            local_addr: None,
            remote_addr: None,
        };
        let start = Instant::now();
        let mut io = PolicedIo::new(
            silent,
            info,
            start + Duration::from_secs(10),
            PingRules::default(),
        );
        let e = io.read(&mut [0u8; 64]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[test]
    fn server_data_or_headers_reset_the_strikes() {
        let mut p = PingPolicy::new(PingRules::default());
        let t0 = Instant::now();
        p.feed(PREFACE, t0, || 1).unwrap();
        // A receiving client's BDP pings: each follows DATA the server sent, split anywhere.
        for i in 0..100u64 {
            let mut out = frame(TYPE_DATA, 0, &[7; 300]);
            out.extend(frame(TYPE_PING, FLAG_ACK, &[0; 8]));
            let (a, b) = out.split_at((i as usize * 7) % out.len());
            p.sent_vectored(&[io::IoSlice::new(a), io::IoSlice::new(b)], out.len());
            p.feed(
                &frame(TYPE_PING, 0, &[0; 8]),
                t0 + Duration::from_millis(i),
                || 1,
            )
            .unwrap();
        }
        // HEADERS count too; PING ACKs and SETTINGS do not.
        p.sent(&frame(TYPE_HEADERS, 0x4, &[0; 20]));
        p.feed(&frame(TYPE_PING, 0, &[0; 8]), t0, || 1).unwrap();
        let mut struck = false;
        for _ in 0..=MAX_PING_STRIKES {
            p.sent(&frame(TYPE_PING, FLAG_ACK, &[0; 8]));
            p.sent(&frame(0x4, 0, &[]));
            struck |= p.feed(&frame(TYPE_PING, 0, &[0; 8]), t0, || 1).is_err();
        }
        assert!(struck, "control frames alone must not reset the strikes");
    }
}
