//! Attackers, shared by the abuse tests (`tests/router_abuse.rs`, which check what must hold)
//! and the abuse bench (`benches/abuse.rs`, which measures an honest pair meanwhile). Each
//! speaks raw HTTP/2 (the `h2` crate, not our client) to a router's address.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tonic::codegen::http::{HeaderMap, Request};
use tonic::Code;

use super::token;

/// The headers of a `RouterService/Stream` call to `addr` with `authorization`.
pub fn stream_request(
    addr: SocketAddr,
    authorization: &str,
) -> tonic::codegen::http::request::Builder {
    Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/jumpstarter.v1.RouterService/Stream"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", authorization)
}

/// An HTTP/2 connection to `addr` (its connection task spawned).
pub async fn h2_connect(addr: SocketAddr) -> std::io::Result<h2::client::SendRequest<Bytes>> {
    let tcp = TcpStream::connect(addr).await?;
    let (client, conn) = h2::client::handshake(tcp)
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    Ok(client)
}

/// What one attacker did.
#[derive(Clone, Copy, Debug, Default)]
pub struct Tally {
    /// Attempts (streams opened, connections stalled, pairs tried).
    pub attempts: u64,
    /// Connections used.
    pub connections: u64,
    /// Attempts that ended as they must (the router closed the stalled connection, answered
    /// the malformed message with a clear status).
    pub answered: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.attempts += o.attempts;
        self.connections += o.connections;
        self.answered += o.answered;
    }
}

/// HTTP/2 rapid reset (CVE-2023-44487): opens `Stream` calls on one connection after another
/// and resets each at once, a valid token and a bad one in turn, as fast as it can until
/// `stop` reads true. When the router closes a connection (h2's reset budget), opens another.
pub async fn rapid_reset(addr: SocketAddr, stop: watch::Receiver<bool>) -> Tally {
    let good = format!("Bearer {}", token("reset"));
    let mut t = Tally::default();
    while !*stop.borrow() {
        let Ok(mut client) = h2_connect(addr).await else {
            continue;
        };
        t.connections += 1;
        while !*stop.borrow() {
            let bearer = if t.attempts % 2 == 0 {
                good.as_str()
            } else {
                "Bearer bad"
            };
            let req = stream_request(addr, bearer).body(()).unwrap();
            client = match client.ready().await {
                Ok(c) => c,
                Err(_) => break, // the router closed this connection: a new one
            };
            let Ok((_response, mut stream)) = client.send_request(req, false) else {
                break;
            };
            stream.send_reset(h2::Reason::CANCEL);
            t.attempts += 1;
            if t.attempts % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
    }
    t
}

/// A connection that stops in its handshake: connected, `partial` written (may be empty).
pub async fn stalled_connection(addr: SocketAddr, partial: &[u8]) -> std::io::Result<TcpStream> {
    let mut tcp = TcpStream::connect(addr).await?;
    if !partial.is_empty() {
        tcp.write_all(partial).await?;
    }
    Ok(tcp)
}

/// Reads until the router closes `tcp` (EOF or an error; its own preface and settings are
/// skipped).
pub async fn closed_by_router(mut tcp: TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The first bytes of the HTTP/2 client preface.
pub const PARTIAL_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// The first bytes of a ClientHello record (handshake, TLS 1.0 record version, 512 bytes
/// announced; ClientHello of 508 bytes, version 1.2, and a few bytes of its random).
pub const PARTIAL_CLIENT_HELLO: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x11, 0x22, 0x33,
];

/// Keeps one stalled connection open at all times until `stop`: every other one silent, the
/// rest stopping after `partial`; when the router closes one, opens the next. `answered`
/// counts the closes.
pub async fn keep_stalled(
    addr: SocketAddr,
    partial: &'static [u8],
    mut stop: watch::Receiver<bool>,
) -> Tally {
    let mut t = Tally::default();
    while !*stop.borrow() {
        let part = if t.attempts % 2 == 0 {
            &[][..]
        } else {
            partial
        };
        t.attempts += 1;
        let Ok(tcp) = stalled_connection(addr, part).await else {
            continue;
        };
        t.connections += 1;
        tokio::select! {
            _ = closed_by_router(tcp) => t.answered += 1,
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    t
}

/// A caller that waits for a peer that never comes: its request sent, its body open.
pub type Unpaired = (h2::SendStream<Bytes>, h2::client::ResponseFuture);

/// `n` callers with distinct valid tokens (`{prefix}-{i}`) that never get a peer, 100 to a
/// connection; each is held until the returned value drops.
pub async fn unpaired_callers(
    addr: SocketAddr,
    n: usize,
    prefix: &str,
) -> std::io::Result<Vec<Unpaired>> {
    let mut callers = Vec::with_capacity(n);
    let mut client = None;
    for i in 0..n {
        if i % 100 == 0 {
            client = Some(h2_connect(addr).await?);
        }
        let c = client.take().expect("a connection");
        let mut c = c.ready().await.map_err(std::io::Error::other)?;
        let req = stream_request(addr, &format!("Bearer {}", token(&format!("{prefix}-{i}"))))
            .body(())
            .unwrap();
        let (response, body) = c.send_request(req, false).map_err(std::io::Error::other)?;
        callers.push((body, response));
        client = Some(c);
    }
    Ok(callers)
}

/// The malformed input of [`malformed_pair`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// A message length prefix of 4 GiB - 1.
    HugeLength,
    /// The compressed flag set, with no `grpc-encoding`.
    Compressed,
    /// A complete message that is not a protobuf `StreamRequest`.
    NotProtobuf,
    /// A 1 MiB header (the router's limit is 16 KiB): refused before it is a call.
    HugeHeaders,
}

impl Malformed {
    pub const ALL: [Malformed; 4] = [
        Malformed::HugeLength,
        Malformed::Compressed,
        Malformed::NotProtobuf,
        Malformed::HugeHeaders,
    ];

    fn body(self) -> &'static [u8] {
        match self {
            Malformed::HugeLength => &[0, 0xff, 0xff, 0xff, 0xff, 0x0a],
            Malformed::Compressed => &[1, 0, 0, 0, 2, 0x08, 0x00],
            // Field 1 with wire type 7, which does not exist.
            Malformed::NotProtobuf => &[0, 0, 0, 0, 4, 0x0f, 0xff, 0xff, 0xff],
            Malformed::HugeHeaders => &[],
        }
    }

    /// What the message of the sender's ABORTED status must name (the code and words of the
    /// error tonic would have given; none for a refused header list).
    pub fn reason(self) -> &'static str {
        match self {
            Malformed::HugeLength => "OutOfRange: Error, decoded message length too large",
            Malformed::Compressed => {
                "Internal: protocol error: received message with compressed-flag"
            }
            Malformed::NotProtobuf => "Internal: failed to decode Protobuf message",
            Malformed::HugeHeaders => "",
        }
    }
}

/// A gRPC status as the client read it: its code and message.
pub type Answer = Result<(Code, String), String>;

/// How one malformed pair ended.
#[derive(Debug)]
pub struct Outcome {
    pub kind: Malformed,
    /// The malformed side's gRPC status, or why there is none.
    pub sender: Answer,
    /// Its waiting peer's gRPC status (none for [`Malformed::HugeHeaders`]: no peer).
    pub peer: Option<Answer>,
    /// The header list was refused by HTTP/2 (a 431, the stream reset, or the connection
    /// closed).
    pub refused: bool,
}

impl Outcome {
    /// Both calls ended ABORTED (never a clean end), the sender's status naming the error;
    /// or the header list was refused.
    pub fn as_it_must(&self) -> bool {
        let aborted = |a: &Answer, what: &str| matches!(a, Ok((Code::Aborted, message)) if message.contains(what));
        match self.kind {
            Malformed::HugeHeaders => self.refused,
            kind => {
                aborted(&self.sender, kind.reason())
                    && self
                        .peer
                        .as_ref()
                        .is_some_and(|p| aborted(p, "peer aborted the stream"))
            }
        }
    }
}

/// The gRPC status of a response: in its headers (trailers-only) or its trailers.
async fn grpc_status(response: h2::client::ResponseFuture) -> Answer {
    fn code(h: &HeaderMap) -> Option<(Code, String)> {
        tonic::Status::from_header_map(h).map(|s| (s.code(), s.message().to_string()))
    }
    let response = response.await.map_err(|e| e.to_string())?;
    if let Some(c) = code(response.headers()) {
        return Ok(c);
    }
    if response.status() != 200 {
        return Err(format!("HTTP {}", response.status()));
    }
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.map_err(|e| e.to_string())?;
    trailers
        .as_ref()
        .and_then(code)
        .ok_or_else(|| "no grpc-status".to_string())
}

/// One pair on `client` under stream name `name`: a caller that waits with an open, empty
/// body, and a second that sends `kind`; returns what each got (each within 10 s). For
/// [`Malformed::HugeHeaders`] only the refused caller, without a peer.
pub async fn malformed_pair(
    client: &mut h2::client::SendRequest<Bytes>,
    addr: SocketAddr,
    name: &str,
    kind: Malformed,
) -> Result<Outcome, h2::Error> {
    let bearer = format!("Bearer {}", token(name));
    let within = |f| async move {
        tokio::time::timeout(Duration::from_secs(10), f)
            .await
            .unwrap_or_else(|_| Err("no answer within 10 s".to_string()))
    };
    if kind == Malformed::HugeHeaders {
        let req = stream_request(addr, &bearer)
            .header("x-padding", "a".repeat(1 << 20))
            .body(())
            .unwrap();
        *client = client.clone().ready().await?;
        let (response, _body) = client.send_request(req, true)?;
        let (refused, what) = match tokio::time::timeout(Duration::from_secs(10), response).await {
            Ok(Ok(resp)) => (resp.status() == 431, format!("HTTP {}", resp.status())),
            // A reset stream, a GOAWAY, or the connection closed under the header block.
            Ok(Err(e)) => {
                let closed = e.get_io().is_some_and(|io| {
                    matches!(
                        io.kind(),
                        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                    )
                });
                (e.is_reset() || e.is_go_away() || closed, e.to_string())
            }
            Err(_) => (false, "no answer within 10 s".to_string()),
        };
        return Ok(Outcome {
            kind,
            sender: Err(what),
            peer: None,
            refused,
        });
    }
    *client = client.clone().ready().await?;
    let (peer, _peer_body) =
        client.send_request(stream_request(addr, &bearer).body(()).unwrap(), false)?;
    *client = client.clone().ready().await?;
    let (sender, mut sender_body) =
        client.send_request(stream_request(addr, &bearer).body(()).unwrap(), false)?;
    sender_body.send_data(Bytes::from_static(kind.body()), false)?;
    let (sender, peer) = tokio::join!(within(grpc_status(sender)), within(grpc_status(peer)));
    Ok(Outcome {
        kind,
        sender,
        peer: Some(peer),
        refused: false,
    })
}

/// [`malformed_pair`] on `client`, connecting first when there is none, and once more on a new
/// connection when the router closed this one (a refused header list may take it).
/// `connections` counts the connections opened.
pub async fn malformed_pair_reconnecting(
    client: &mut Option<h2::client::SendRequest<Bytes>>,
    addr: SocketAddr,
    name: &str,
    kind: Malformed,
    connections: &mut u64,
) -> std::io::Result<Outcome> {
    let mut gone = None;
    for _ in 0..2 {
        let c = match client {
            Some(c) => c,
            None => {
                let new = h2_connect(addr).await?;
                *connections += 1;
                client.insert(new)
            }
        };
        match malformed_pair(c, addr, name, kind).await {
            Ok(o) => return Ok(o),
            Err(e) => {
                *client = None;
                gone = Some(e);
            }
        }
    }
    Err(std::io::Error::other(gone.expect("two attempts failed")))
}

/// Malformed pairs back to back, every kind in turn, until `stop`; a new connection when the
/// router closes one. `answered` counts the outcomes that were [`Outcome::as_it_must`];
/// `bad` collects the others (at most 10).
pub async fn malformed_flood(
    addr: SocketAddr,
    worker: usize,
    stop: watch::Receiver<bool>,
    bad: std::sync::Arc<std::sync::Mutex<Vec<Outcome>>>,
) -> Tally {
    let mut t = Tally::default();
    let mut client = None;
    while !*stop.borrow() {
        let kind = Malformed::ALL[t.attempts as usize % Malformed::ALL.len()];
        let name = format!("malformed-{worker}-{}", t.attempts);
        // No answer on two connections: the same kind again.
        let Ok(o) =
            malformed_pair_reconnecting(&mut client, addr, &name, kind, &mut t.connections).await
        else {
            continue;
        };
        t.attempts += 1;
        if o.as_it_must() {
            t.answered += 1;
        } else {
            let mut bad = bad.lock().unwrap();
            if bad.len() < 10 {
                bad.push(o);
            }
        }
    }
    t
}
