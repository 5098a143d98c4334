//! A raw HTTP/2 client that shows every frame the router sends, with its arrival time: what
//! the `h2` crate hides (PINGs it answers by itself, the GOAWAY frames of a graceful close,
//! their codes). The keepalive tests observe the router's settings on the wire with it.
//!
//! Requests are encoded by hand (HPACK literals without indexing or Huffman, valid for any
//! decoder); responses are not decoded, only framed.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};
use tokio_rustls::rustls;

/// The connection under HTTP/2: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}
type Writer = WriteHalf<Box<dyn Io>>;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const NO_ERROR: u32 = 0x0;
pub const CANCEL: u32 = 0x8;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame the router sent, and when it arrived.
#[derive(Clone, Debug)]
pub struct Frame {
    pub ty: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
    pub at: Instant,
}

impl Frame {
    /// A GOAWAY's (last stream id, error code, debug data).
    pub fn goaway(&self) -> Option<(u32, u32, String)> {
        (self.ty == GOAWAY && self.payload.len() >= 8).then(|| {
            let p = &self.payload;
            (
                u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff,
                u32::from_be_bytes([p[4], p[5], p[6], p[7]]),
                String::from_utf8_lossy(&p[8..]).into_owned(),
            )
        })
    }

    pub fn is_ping(&self) -> bool {
        self.ty == PING && self.flags & ACK == 0
    }
}

/// A raw HTTP/2 client connection.
pub struct RawH2 {
    write: Arc<Mutex<Writer>>,
    frames: mpsc::UnboundedReceiver<Frame>,
    /// When the connection was made.
    pub start: Instant,
    next_stream: u32,
    addr: SocketAddr,
}

/// Whether the client answers the router's PINGs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pings {
    Answer,
    Ignore,
}

pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK string literal (no Huffman): its length with a 7-bit prefix, then the bytes.
fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    let mut n = s.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

/// A header block of literals without indexing.
pub fn header_block(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in headers {
        out.push(0x00);
        hpack_string(&mut out, name.as_bytes());
        hpack_string(&mut out, value.as_bytes());
    }
    out
}

/// A gRPC message: flag 0, length, bytes.
pub fn grpc_message(msg: &[u8]) -> Vec<u8> {
    let mut m = vec![0];
    m.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    m.extend_from_slice(msg);
    m
}

impl RawH2 {
    /// Connects, sends the preface and empty SETTINGS, and starts reading frames (answering
    /// the router's SETTINGS, and its PINGs when `pings` says so).
    pub async fn connect(addr: SocketAddr, pings: Pings) -> RawH2 {
        let tcp = TcpStream::connect(addr)
            .await
            .expect("connect to the router");
        tcp.set_nodelay(true).unwrap();
        Self::handshake(Box::new(tcp), addr, pings).await
    }

    /// [`RawH2::connect`] over TLS (ALPN `h2`), trusting `ca_pem` for `server_name`.
    pub async fn connect_tls(
        addr: SocketAddr,
        server_name: &str,
        ca_pem: &[u8],
        pings: Pings,
    ) -> RawH2 {
        let mut roots = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(cert.expect("a PEM certificate")).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(addr)
            .await
            .expect("connect to the router");
        tcp.set_nodelay(true).unwrap();
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .expect("the TLS handshake");
        Self::handshake(Box::new(tls), addr, pings).await
    }

    async fn handshake(io: Box<dyn Io>, addr: SocketAddr, pings: Pings) -> RawH2 {
        let (read, mut write) = tokio::io::split(io);
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        write.write_all(&hello).await.unwrap();
        let write = Arc::new(Mutex::new(write));
        let (tx, frames) = mpsc::unbounded_channel();
        tokio::spawn(read_frames(read, tx, write.clone(), pings));
        RawH2 {
            write,
            frames,
            start: Instant::now(),
            next_stream: 1,
            addr,
        }
    }

    /// Writes raw bytes (frames); `Err` once the router closed the connection.
    pub async fn send(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut w = self.write.lock().await;
        w.write_all(bytes).await?;
        w.flush().await
    }

    /// A PING of ours.
    pub async fn ping(&self, data: [u8; 8]) -> std::io::Result<()> {
        self.send(&frame(PING, 0, 0, &data)).await
    }

    /// Opens a `RouterService/Stream` call with `token`; returns its stream id.
    pub async fn open_stream_call(&mut self, token: &str) -> u32 {
        let id = self.next_stream;
        self.next_stream += 2;
        let authority = self.addr.to_string();
        let bearer = format!("Bearer {token}");
        let block = header_block(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/jumpstarter.v1.RouterService/Stream"),
            (":authority", &authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("authorization", &bearer),
        ]);
        self.send(&frame(HEADERS, END_HEADERS, id, &block))
            .await
            .expect("send the call's headers");
        id
    }

    /// Sends `payload` as a Jumpstarter DATA frame (a `StreamRequest` with only its
    /// `payload`, under 128 bytes) on `stream`.
    pub async fn send_payload(&self, stream: u32, payload: &[u8]) -> std::io::Result<()> {
        assert!(payload.len() < 128);
        let mut msg = vec![0x0a, payload.len() as u8];
        msg.extend_from_slice(payload);
        self.send(&frame(DATA, 0, stream, &grpc_message(&msg)))
            .await
    }

    /// Resets `stream` with CANCEL.
    pub async fn cancel(&self, stream: u32) -> std::io::Result<()> {
        self.send(&frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()))
            .await
    }

    /// The next frame from the router; `None` when it closed the connection.
    pub async fn next(&mut self) -> Option<Frame> {
        self.frames.recv().await
    }

    /// Frames until one matches `want` (returned), or `None` when the connection closed
    /// first. Every frame seen on the way is passed to `seen`.
    pub async fn until(
        &mut self,
        mut want: impl FnMut(&Frame) -> bool,
        mut seen: impl FnMut(&Frame),
    ) -> Option<Frame> {
        while let Some(f) = self.next().await {
            if want(&f) {
                return Some(f);
            }
            seen(&f);
        }
        None
    }

    /// The frames that have arrived and not been taken yet.
    pub fn arrived(&mut self) -> Vec<Frame> {
        let mut v = Vec::new();
        while let Ok(f) = self.frames.try_recv() {
            v.push(f);
        }
        v
    }

    /// The router's first PING: seconds after the connection was made (within `secs`).
    pub async fn first_ping(&mut self, secs: u64) -> f64 {
        let ping = super::within(
            secs,
            "the router's first PING",
            self.until(|f| f.is_ping(), |_| {}),
        )
        .await
        .expect("a PING before the connection closed");
        self.secs(ping.at)
    }

    /// The next GOAWAY (within `secs`): seconds after the connection was made, and its code.
    pub async fn goaway(&mut self, secs: u64, what: &str) -> (f64, u32) {
        let f = super::within(secs, what, self.until(|f| f.ty == GOAWAY, |_| {}))
            .await
            .expect("a GOAWAY before the connection closed");
        (self.secs(f.at), f.goaway().expect("a GOAWAY payload").1)
    }

    /// Waits (at most `secs`) for the router to close the connection: seconds after it was
    /// made.
    pub async fn closed(&mut self, secs: u64, what: &str) -> f64 {
        super::within(secs, what, async { while self.next().await.is_some() {} }).await;
        self.elapsed().as_secs_f64()
    }

    /// Seconds since the connection was made.
    pub fn secs(&self, at: Instant) -> f64 {
        at.duration_since(self.start).as_secs_f64()
    }

    /// Seconds since the connection was made, now.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

async fn read_frames(
    mut read: ReadHalf<Box<dyn Io>>,
    tx: mpsc::UnboundedSender<Frame>,
    write: Arc<Mutex<Writer>>,
    pings: Pings,
) {
    loop {
        let mut head = [0u8; 9];
        if read.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        if read.read_exact(&mut payload).await.is_err() {
            return;
        }
        let f = Frame {
            ty: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
            at: Instant::now(),
        };
        let answer = if f.ty == SETTINGS && f.flags & ACK == 0 {
            Some(frame(SETTINGS, ACK, 0, &[]))
        } else if f.is_ping() && pings == Pings::Answer {
            Some(frame(PING, ACK, 0, &f.payload))
        } else {
            None
        };
        if let Some(a) = answer {
            let mut w = write.lock().await;
            let _ = w.write_all(&a).await;
        }
        if tx.send(f).is_err() {
            return;
        }
    }
}
