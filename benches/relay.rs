//! End to end through a router: raw TCP, a plain tonic relay, and this crate's stack, measured
//! side by side in one run; then the router's memory.
//!
//! ```text
//! cargo bench --all-features --bench relay
//! RELAY_RUNS=5 RELAY_MIB=256 RELAY_PINGS=2000 RELAY_PAIRS=1000,10000 cargo bench --all-features --bench relay
//! RELAY_ONLY=throughput|memory|memory-shape|session|idle ...
//! ```
//!
//! Layout, the same for every variant: sender, router and receiver each run on their own
//! thread and tokio runtime (like three machines), joined by separate loopback TCP connections.
//!
//! - **TCP**: the sender writes to the receiver directly (the limit).
//! - **tonic relay**: a plain relay written here as one would by hand (pairs two calls by a
//!   metadata value, a task per direction forwards messages through a channel), raw tonic
//!   clients sending one message per write, 4 MiB stream / 8 MiB connection windows (its best).
//! - **ours**: app `TcpStream` -> [`bridge`](jumpstarter_router::bridge) -> `RouterStream` ->
//!   our router -> `RouterStream` -> `bridge` -> `TcpStream` app, all with the crate's defaults
//!   (as the CLI runs it; `RELAY_BRIDGE=copy` puts tokio's `copy_bidirectional` in place of
//!   `bridge`).
//!
//! Throughput at 1, 16 and 64 KiB application writes, and ping-pong of 64 bytes (p50, p99).
//! Memory: the router in a child process; its RSS per paired idle stream with many pairs over
//! shared connections, and every process's RSS growth while a stalled reader's sender pushes
//! 1 GiB.
//!
//! Memory in the real shape (`RELAY_ONLY=memory-shape`, `RELAY_SHAPE_PAIRS`, default 1000):
//! the router's RSS per paired idle stream with the streams on 16 shared plaintext
//! connections, with a plaintext connection per caller, and with a TLS connection per caller
//! (as jumpstarter's `connect_router_stream` makes them): what each layer costs.
//! `RELAY_SHAPE=shared|plaintext|tls` runs one shape; `RELAY_ROUTER_WRAP="heaptrack -o
//! /tmp/router"` runs the router child under a profiler (then its RSS is the profiler's).
//!
//! The real shape (`RELAY_ONLY=session`, not in the default run: about 12 minutes): what a lab
//! sees. jumpstarter 0.9.0's own Python peers (`RouterStream.send` per write, the interop
//! venv), each on its own TLS connection, through our router as labs run it (the
//! `jumpstarter-router serve` binary with its defaults) and through the plain tonic relay
//! behind the same TLS on tokio's default runtime; a fresh router process per run, the two
//! alternating. Throughput and the router's CPU per GiB; its context switches and syscalls
//! per message in one more run of each with `perf stat` on the router (the
//! `syscalls:sys_enter_*` tracepoints, each syscall's count; not in the timed runs, since the
//! tracepoints cost each syscall some CPU), at 1, 16 and 64 KiB writes (`RELAY_SIZES`); ping-pong of 64 B
//! (`RELAY_PINGS`); `RELAY_OURS_THREADS` / `RELAY_RELAY_THREADS` set each router's threads,
//! `RELAY_PERF=0` skips perf, `RELAY_ROUTER_LOG=FILE` appends our router's log to FILE.
//!
//! Idle cost (`RELAY_ONLY=idle`, not in the default run: minutes): what the router's keepalive
//! traffic costs with idle pairs, the router in a child process: its CPU and the bytes it
//! sends (the sockets' counts, from `ss`) over `RELAY_IDLE_SECS` (60), per hour, with its HTTP/2 PINGs and its PING frames
//! off, one of them on, or both (the defaults). 10,000 pairs over 64 shared connections, and
//! 4,000 pairs with a connection per caller (this machine allows 20,000 open files per
//! process).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc as smpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use jumpstarter_router::proto::router_service_client::RouterServiceClient;
use jumpstarter_router::proto::router_service_server::{RouterService, RouterServiceServer};
use jumpstarter_router::proto::{FrameType, StreamRequest, StreamResponse};
use jumpstarter_router::router::{Auth, Keepalive, Router};
use jumpstarter_router::{ClientBuilder, RouterStream};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status, Streaming};

#[path = "../tests/support/python.rs"]
mod python;

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;
const KEY: &[u8] = b"relay-bench-key";
const WINDOW: u32 = 4 << 20;
const CONN_WINDOW: u32 = 8 << 20;
/// copy_bidirectional's buffers in our stack (as the CLI uses).
const COPY_BUF: usize = 64 * KIB;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if let Ok(role) = std::env::var("RELAY_CHILD") {
        return child(&role);
    }
    let only = std::env::var("RELAY_ONLY").unwrap_or_default();
    if only.is_empty() || only == "throughput" {
        throughput();
    }
    if only.is_empty() || only == "memory" {
        memory();
    }
    if only == "idle" {
        idle_cost();
    }
    if only == "memory-shape" {
        memory_shape();
    }
    if only == "session" {
        session();
    }
}

// ===== roles: a thread with its own runtime =====

struct Role {
    handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Role {
    fn new(name: &str) -> Role {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                let _ = rt.block_on(stopped);
            })
            .unwrap();
        Role {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Runs `f` on this role's runtime and waits for its result.
    fn run<T: Send + 'static>(
        &self,
        f: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        let (tx, rx) = smpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().expect("role task panicked")
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sender, router and receiver, with both routers started on the router's runtime.
struct Roles {
    sender: Role,
    receiver: Role,
    relay: SocketAddr,
    ours: SocketAddr,
    // Last: its runtime (and the routers on it) stops after the others.
    _router: Role,
}

impl Roles {
    fn new() -> Roles {
        let router = Role::new("router");
        let relay = router.run(start_plain_relay());
        let ours = router.run(start_our_router());
        Roles {
            sender: Role::new("sender"),
            receiver: Role::new("receiver"),
            relay,
            ours,
            _router: router,
        }
    }
}

// ===== the plain tonic relay =====

type Replies = mpsc::Sender<Result<StreamResponse, Status>>;

/// A relay as one writes it by hand: pair by the `stream` metadata, forward with a task and a
/// channel per direction.
#[derive(Default)]
struct PlainRelay {
    pending: Mutex<HashMap<String, (Replies, oneshot::Sender<Replies>)>>,
}

async fn forward(mut inbound: Streaming<StreamRequest>, to: Replies) {
    while let Ok(Some(m)) = inbound.message().await {
        let out = StreamResponse {
            payload: m.payload,
            frame_type: m.frame_type,
        };
        if to.send(Ok(out)).await.is_err() {
            return;
        }
    }
}

#[tonic::async_trait]
impl RouterService for PlainRelay {
    type StreamStream = ReceiverStream<Result<StreamResponse, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<StreamRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        // Its own raw calls name the stream; a real peer's bearer token names it by its
        // subject (verified, as a router must).
        let md = request.metadata();
        let key = match md.get("stream") {
            Some(v) => v.to_str().ok().map(str::to_owned),
            None => md
                .get("authorization")
                .and_then(|v| v.to_str().ok()?.strip_prefix("Bearer "))
                .and_then(token_subject),
        }
        .ok_or_else(|| Status::invalid_argument("no stream"))?;
        let inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let waiting = self.pending.lock().unwrap().remove(&key);
        match waiting {
            Some((peer_tx, give)) => {
                let _ = give.send(tx);
                tokio::spawn(forward(inbound, peer_tx));
            }
            None => {
                let (give, take) = oneshot::channel();
                self.pending.lock().unwrap().insert(key, (tx, give));
                tokio::spawn(async move {
                    if let Ok(peer_tx) = take.await {
                        forward(inbound, peer_tx).await;
                    }
                });
            }
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The subject of a controller-form token signed with [`KEY`].
fn token_subject(token: &str) -> Option<String> {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.validate_aud = false;
    let key = jsonwebtoken::DecodingKey::from_secret(KEY);
    let claims = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
        .ok()?
        .claims;
    Some(claims["sub"].as_str()?.to_owned())
}

async fn start_plain_relay() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .initial_stream_window_size(WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .tcp_nodelay(true)
            .serve_with_incoming(
                RouterServiceServer::new(PlainRelay::default()),
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            ),
    );
    addr
}

async fn plain_channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .tcp_nodelay(true)
        .connect()
        .await
        .unwrap()
}

/// How a raw call names its stream: the plain relay's `stream` metadata, or our router's
/// bearer token.
#[derive(Clone)]
enum Name {
    Plain(String),
    Token(String),
}

impl Name {
    /// The name of stream `key` for the router at `v`.
    fn of(v: Variant, key: String) -> Name {
        match v {
            Variant::Raw => Name::Token(token(&key)),
            _ => Name::Plain(key),
        }
    }
}

/// A raw tonic call (one message per write): a sender of requests and the response messages.
async fn plain_call(
    addr: SocketAddr,
    name: &Name,
) -> (mpsc::Sender<StreamRequest>, Streaming<StreamResponse>) {
    let (tx, rx) = mpsc::channel(16);
    let mut req = Request::new(ReceiverStream::new(rx));
    match name {
        Name::Plain(stream) => req.metadata_mut().insert("stream", stream.parse().unwrap()),
        Name::Token(t) => req
            .metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap()),
    };
    let resp = RouterServiceClient::new(plain_channel(addr).await)
        .stream(req)
        .await
        .unwrap()
        .into_inner();
    (tx, resp)
}

fn data(payload: Bytes) -> StreamRequest {
    StreamRequest {
        payload,
        frame_type: FrameType::Data as i32,
    }
}

// ===== our stack =====

async fn start_our_router() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::builder(Auth::new(KEY)).build();
    tokio::spawn(router.serve_plaintext(listener, std::future::pending()));
    addr
}

/// Our client, with `RELAY_MAX_PAYLOAD` (bytes) when set.
fn client(router: SocketAddr) -> ClientBuilder {
    let b = ClientBuilder::new(format!("http://{router}"));
    match std::env::var("RELAY_MAX_PAYLOAD")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(p) => b.stream_options(jumpstarter_router::StreamOptions::new().max_payload(p)),
        None => b,
    }
}

/// A stream for `Streams` (the client constructors) or `StreamsTonic` (tonic's codec).
async fn stream_of(v: Variant, router: SocketAddr, tok: &str) -> RouterStream {
    let b = client(router);
    if v != Variant::StreamsTonic {
        return b.connect(tok).await.unwrap();
    }
    let mut rpc = RouterServiceClient::new(b.channel().await.unwrap())
        .max_decoding_message_size(jumpstarter_router::DEFAULT_MAX_MESSAGE_SIZE);
    let auth: tonic::metadata::MetadataValue<_> = format!("Bearer {tok}").parse().unwrap();
    let opts = match std::env::var("RELAY_MAX_PAYLOAD")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(p) => jumpstarter_router::StreamOptions::new().max_payload(p),
        None => jumpstarter_router::StreamOptions::new(),
    };
    RouterStream::from_call(
        move |requests| async move {
            let mut request = Request::new(requests);
            request.metadata_mut().insert("authorization", auth);
            rpc.stream(request).await
        },
        &opts,
    )
}

fn token(stream: &str) -> String {
    Auth::new(KEY)
        .mint(stream, Duration::from_secs(3600))
        .unwrap()
}

/// The client end: a local TCP port bridged to a router stream. Returns the port.
async fn our_client_bridge(router: SocketAddr, tok: String) -> SocketAddr {
    let stream = client(router).connect(&tok).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        bridge(tcp, stream).await;
    });
    addr
}

/// The exporter end: a router stream bridged to a TCP target.
async fn our_exporter_bridge(router: SocketAddr, tok: String, target: SocketAddr) {
    let stream = client(router).connect(&tok).await.unwrap();
    tokio::spawn(async move {
        let tcp = TcpStream::connect(target).await.unwrap();
        bridge(tcp, stream).await;
    });
}

async fn bridge(tcp: TcpStream, mut stream: RouterStream) {
    tcp.set_nodelay(true).unwrap();
    let mut tcp = tcp;
    // RELAY_BRIDGE=copy: tokio's `copy_bidirectional` (a 64 KiB buffer each way) instead of
    // the crate's `bridge` (the CLI's; no buffer of its own).
    let r = if std::env::var("RELAY_BRIDGE").is_ok_and(|v| v == "copy") {
        tokio::io::copy_bidirectional_with_sizes(&mut tcp, &mut stream, COPY_BUF, COPY_BUF).await
    } else {
        jumpstarter_router::bridge(&mut tcp, &mut stream).await
    };
    if r.is_ok() {
        let _ = stream.close().await;
    }
}

// ===== throughput =====

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Tcp,
    Relay,
    Ours,
    /// `RouterStream` -> our router -> `RouterStream`, no TCP legs: the relay's own layout.
    Streams,
    /// The relay's raw tonic clients against our router: the routers alone compared.
    Raw,
    /// `Streams` with both ends made by `RouterStream::from_call` on tonic's generated client
    /// (tonic's codec), instead of the client constructors' raw bodies: the codec lever alone.
    StreamsTonic,
}

const VARIANTS: [Variant; 6] = [
    Variant::Tcp,
    Variant::Relay,
    Variant::Ours,
    Variant::Streams,
    Variant::Raw,
    Variant::StreamsTonic,
];
const NAMES: [&str; 6] = ["tcp", "relay", "ours", "streams", "raw", "streams-tonic"];

/// CPU seconds each thread named in `names` has used (utime + stime, USER_HZ ticks) and the
/// part of them in the kernel (stime), in one pass over `/proc/self/task`; NaN for a thread not
/// found.
fn threads_cpu<const N: usize>(names: [&str; N]) -> [(f64, f64); N] {
    let mut cpu = [(f64::NAN, f64::NAN); N];
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return cpu;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let Some(i) = names.iter().position(|n| *n == comm.trim()) else {
            continue;
        };
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        // Fields 14 and 15 of stat(5); `rest` starts at field 3.
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks = |i: usize| {
            f.get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        if cpu[i].0.is_nan() {
            cpu[i] = ((ticks(11) + ticks(12)) / 100.0, ticks(12) / 100.0);
        }
    }
    cpu
}

/// An instant, with the CPU seconds the router's thread and the clients' threads had used by
/// then: two marks give a transfer's CPU over exactly its timed window.
#[derive(Clone, Copy)]
struct Mark {
    at: Instant,
    cpu: Cpu,
}

/// CPU seconds of the router's, the sender's and the receiver's threads.
#[derive(Clone, Copy)]
struct Cpu {
    router: f64,
    sender: f64,
    receiver: f64,
    /// The kernel's part: the router's, and the sender's and receiver's together.
    router_sys: f64,
    clients_sys: f64,
}

impl Cpu {
    /// What was used between `start` and this.
    fn since(&self, start: &Cpu) -> Cpu {
        Cpu {
            router: self.router - start.router,
            sender: self.sender - start.sender,
            receiver: self.receiver - start.receiver,
            router_sys: self.router_sys - start.router_sys,
            clients_sys: self.clients_sys - start.clients_sys,
        }
    }
}

impl Mark {
    fn now() -> Mark {
        let [router, sender, receiver] = threads_cpu(["router", "sender", "receiver"]);
        Mark {
            at: Instant::now(),
            cpu: Cpu {
                router: router.0,
                sender: sender.0,
                receiver: receiver.0,
                router_sys: router.1,
                clients_sys: sender.1 + receiver.1,
            },
        }
    }
}

/// One timed transfer: MiB/s, and the CPU seconds used within its window.
struct Measured {
    mibs: f64,
    secs: f64,
    cpu: Cpu,
}

/// Reads `total` bytes (in `buf`-sized reads) and drops them.
async fn read_exactly<R: tokio::io::AsyncRead + Unpin>(r: &mut R, buf: &mut [u8], total: usize) {
    let mut got = 0;
    while got < total {
        let n = r.read(buf).await.unwrap();
        assert!(n > 0, "early EOF at {got} of {total}");
        got += n;
    }
}

/// A TCP sink on the receiver: counts bytes to `total`, reports when they are all in.
async fn tcp_sink(total: usize) -> (SocketAddr, oneshot::Receiver<Mark>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = vec![0u8; 256 * KIB];
        read_exactly(&mut s, &mut buf, total).await;
        let _ = tx.send(Mark::now());
        // Drain to EOF so the sender's shutdown completes.
        while s.read(&mut buf).await.map(|n| n > 0).unwrap_or(false) {}
    });
    (addr, rx)
}

async fn tcp_send(to: SocketAddr, slab: Bytes, write: usize, total: usize, warm: bool) -> Mark {
    // A bulk sender keeps Nagle's algorithm on, as TCP's default.
    let mut s = TcpStream::connect(to).await.unwrap();
    let mut left = total;
    if warm {
        // One byte through first, so the pairing is not timed.
        s.write_all(&slab[..1]).await.unwrap();
        left -= 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let start = Mark::now();
    while left > 0 {
        let n = write.min(left);
        s.write_all(&slab[..n]).await.unwrap();
        left -= n;
    }
    s.shutdown().await.unwrap();
    // Keep the socket until the far end closes, so no RST cuts the tail.
    let mut b = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read(&mut b)).await;
    start
}

/// `total` bytes in writes of `write` bytes: MiB/s and the CPU used.
fn run_throughput(
    v: Variant,
    roles: &Roles,
    slab: &Bytes,
    write: usize,
    total: usize,
    n: u64,
) -> Measured {
    let (start, end) = match v {
        Variant::Tcp => {
            let (addr, done) = roles.receiver.run(tcp_sink(total));
            let start = roles
                .sender
                .run(tcp_send(addr, slab.clone(), write, total, false));
            (start, done.blocking_recv().unwrap())
        }
        Variant::Relay | Variant::Raw => {
            let relay = if v == Variant::Raw {
                roles.ours
            } else {
                roles.relay
            };
            let key = Name::of(v, format!("t{n}"));
            let (rtx, rrx) = smpsc::channel();
            let k2 = key.clone();
            roles.receiver.handle.spawn(async move {
                let (_keep, mut inbound) = plain_call(relay, &k2).await;
                let mut got = 0;
                while got < total {
                    let m = inbound.message().await.unwrap().expect("relay ended early");
                    got += m.payload.len();
                }
                let _ = rtx.send(Mark::now());
            });
            let slab = slab.clone();
            let (stx, srx) = smpsc::channel();
            roles.sender.handle.spawn(async move {
                let (tx, mut inbound) = plain_call(relay, &key).await;
                let _ = stx.send(Mark::now());
                let mut left = total;
                while left > 0 {
                    let n = write.min(left);
                    tx.send(data(slab.slice(..n))).await.unwrap();
                    left -= n;
                }
                // A clean finish, then keep the call until the receiver is done.
                let goaway = StreamRequest {
                    payload: Bytes::new(),
                    frame_type: FrameType::Goaway as i32,
                };
                let _ = tx.send(goaway).await;
                drop(tx);
                while let Ok(Some(_)) = inbound.message().await {}
            });
            let start = srx.recv().unwrap();
            (start, rrx.recv().unwrap())
        }
        Variant::Ours => {
            let router = roles.ours;
            let tok = token(&format!("t{n}"));
            let (sink, done) = roles.receiver.run(tcp_sink(total));
            let t2 = tok.clone();
            roles
                .receiver
                .run(async move { our_exporter_bridge(router, t2, sink).await });
            let port = roles.sender.run(our_client_bridge(router, tok));
            let start = roles
                .sender
                .run(tcp_send(port, slab.clone(), write, total, true));
            (start, done.blocking_recv().unwrap())
        }
        Variant::Streams | Variant::StreamsTonic => {
            let router = roles.ours;
            let tok = token(&format!("t{n}"));
            let (rtx, rrx) = smpsc::channel();
            let t2 = tok.clone();
            roles.receiver.handle.spawn(async move {
                let mut s = stream_of(v, router, &t2).await;
                let mut buf = vec![0u8; 64 * KIB];
                read_exactly(&mut s, &mut buf, total).await;
                let _ = rtx.send(Mark::now());
                assert_eq!(s.read(&mut buf).await.unwrap(), 0);
                s.shutdown().await.unwrap();
                s.close().await.unwrap();
            });
            let slab = slab.clone();
            let start = roles.sender.run(async move {
                let mut s = stream_of(v, router, &tok).await;
                // One byte through first, so the pairing is not timed.
                s.write_all(&slab[..1]).await.unwrap();
                s.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(50)).await;
                let start = Mark::now();
                let mut left = total - 1;
                while left > 0 {
                    let n = write.min(left);
                    s.write_all(&slab[..n]).await.unwrap();
                    left -= n;
                }
                s.shutdown().await.unwrap();
                tokio::spawn(async move { s.close().await });
                start
            });
            (start, rrx.recv().unwrap())
        }
    };
    let secs = end.at.duration_since(start.at).as_secs_f64();
    Measured {
        mibs: (total as f64 - 1.0) / MIB as f64 / secs,
        secs,
        cpu: end.cpu.since(&start.cpu),
    }
}

// ===== ping-pong =====

/// A TCP echo server on the receiver.
async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
    });
    addr
}

async fn tcp_pings(to: SocketAddr, pings: usize) -> Vec<Duration> {
    let mut s = TcpStream::connect(to).await.unwrap();
    s.set_nodelay(true).unwrap();
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let mut rtts = Vec::with_capacity(pings);
    for i in 0..pings + pings / 10 {
        let t = Instant::now();
        s.write_all(&msg).await.unwrap();
        s.read_exact(&mut back).await.unwrap();
        if i >= pings / 10 {
            rtts.push(t.elapsed());
        }
    }
    rtts
}

fn run_pings(v: Variant, roles: &Roles, pings: usize, n: u64) -> Vec<Duration> {
    match v {
        Variant::Tcp => {
            let echo = roles.receiver.run(tcp_echo());
            roles.sender.run(tcp_pings(echo, pings))
        }
        Variant::Relay | Variant::Raw => {
            let relay = if v == Variant::Raw {
                roles.ours
            } else {
                roles.relay
            };
            let key = Name::of(v, format!("p{n}"));
            let k2 = key.clone();
            roles.receiver.handle.spawn(async move {
                let (tx, mut inbound) = plain_call(relay, &k2).await;
                while let Ok(Some(m)) = inbound.message().await {
                    if tx.send(data(m.payload)).await.is_err() {
                        break;
                    }
                }
            });
            roles.sender.run(async move {
                let (tx, mut inbound) = plain_call(relay, &key).await;
                let msg = Bytes::from_static(&[7u8; 64]);
                let mut rtts = Vec::with_capacity(pings);
                for i in 0..pings + pings / 10 {
                    let t = Instant::now();
                    tx.send(data(msg.clone())).await.unwrap();
                    let m = inbound.message().await.unwrap().unwrap();
                    assert_eq!(m.payload.len(), 64);
                    if i >= pings / 10 {
                        rtts.push(t.elapsed());
                    }
                }
                rtts
            })
        }
        Variant::Ours => {
            let router = roles.ours;
            let tok = token(&format!("p{n}"));
            let echo = roles.receiver.run(tcp_echo());
            let t2 = tok.clone();
            roles
                .receiver
                .run(async move { our_exporter_bridge(router, t2, echo).await });
            let port = roles.sender.run(our_client_bridge(router, tok));
            roles.sender.run(tcp_pings(port, pings))
        }
        Variant::Streams | Variant::StreamsTonic => {
            let router = roles.ours;
            let tok = token(&format!("p{n}"));
            let t2 = tok.clone();
            roles.receiver.handle.spawn(async move {
                let mut s = stream_of(v, router, &t2).await;
                let mut buf = [0u8; 64];
                while s.read_exact(&mut buf).await.is_ok() {
                    s.write_all(&buf).await.unwrap();
                    s.flush().await.unwrap();
                }
            });
            roles.sender.run(async move {
                let mut s = stream_of(v, router, &tok).await;
                let msg = [7u8; 64];
                let mut back = [0u8; 64];
                let mut rtts = Vec::with_capacity(pings);
                for i in 0..pings + pings / 10 {
                    let t = Instant::now();
                    s.write_all(&msg).await.unwrap();
                    s.flush().await.unwrap();
                    s.read_exact(&mut back).await.unwrap();
                    if i >= pings / 10 {
                        rtts.push(t.elapsed());
                    }
                }
                s.shutdown().await.unwrap();
                rtts
            })
        }
    }
}

// ===== statistics and the table =====

fn min_med_max(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}

/// min/median/max of variant `a` over variant `b` at writes of `w`, taken run by run (same
/// run, same machine state).
fn run_ratio(
    m: &HashMap<(usize, usize), Vec<f64>>,
    w: usize,
    a: usize,
    b: usize,
) -> (f64, f64, f64) {
    let r: Vec<f64> = m[&(w, a)]
        .iter()
        .zip(&m[&(w, b)])
        .map(|(x, y)| x / y)
        .collect();
    min_med_max(r)
}

fn fmt3((a, b, c): (f64, f64, f64), prec: usize) -> String {
    format!("{a:.prec$}/{b:.prec$}/{c:.prec$}")
}

fn throughput() {
    let runs: usize = env_or("RELAY_RUNS", 5);
    let mib: usize = env_or("RELAY_MIB", 256);
    let pings: usize = env_or("RELAY_PINGS", 2000);
    let total = mib * MIB;
    let slab = Bytes::from(vec![0x5a_u8; 64 * KIB]);
    let roles = Roles::new();
    // RELAY_SIZES=64,16,1 (KiB) and RELAY_VARIANTS=tcp,relay,ours narrow a run (for profiling).
    let sizes: Vec<usize> = std::env::var("RELAY_SIZES")
        .unwrap_or_else(|_| "64,16,1".into())
        .split(',')
        .filter_map(|s| s.parse::<usize>().ok())
        .map(|k| k * KIB)
        .collect();
    let wanted = std::env::var("RELAY_VARIANTS").unwrap_or_else(|_| NAMES.join(","));
    let on = |vi: usize| wanted.split(',').any(|w| w == NAMES[vi]);
    let mut tput: HashMap<(usize, usize), Vec<f64>> = HashMap::new();
    // Router CPU seconds per GiB forwarded.
    let mut cpu: HashMap<(usize, usize), Vec<f64>> = HashMap::new();
    // Sender and receiver CPU seconds per GiB.
    let mut ccpu: HashMap<(usize, usize), Vec<f64>> = HashMap::new();
    // The kernel's part of the router's and of the clients' CPU seconds per GiB.
    let mut sys: HashMap<(usize, usize), Vec<[f64; 2]>> = HashMap::new();
    // Sender, router and receiver CPU over each transfer's time (cores busy).
    let mut busy: HashMap<(usize, usize), Vec<[f64; 3]>> = HashMap::new();
    let mut p50: HashMap<usize, Vec<f64>> = HashMap::new();
    let mut p99: HashMap<usize, Vec<f64>> = HashMap::new();
    let mut n = 0;
    eprintln!("relay bench: {runs} runs, {mib} MiB per transfer, {pings} pings");
    for run in 0..runs {
        for &w in &sizes {
            for (vi, &v) in VARIANTS.iter().enumerate() {
                if !on(vi) {
                    tput.entry((w, vi)).or_default().push(f64::NAN);
                    continue;
                }
                n += 1;
                let m = run_throughput(v, &roles, &slab, w, total, n);
                let (c, secs) = (m.cpu, m.secs);
                let gib = total as f64 / (1024.0 * MIB as f64);
                busy.entry((w, vi)).or_default().push([
                    c.sender / secs,
                    c.router / secs,
                    c.receiver / secs,
                ]);
                ccpu.entry((w, vi))
                    .or_default()
                    .push((c.sender + c.receiver) / gib);
                tput.entry((w, vi)).or_default().push(m.mibs);
                cpu.entry((w, vi)).or_default().push(c.router / gib);
                sys.entry((w, vi))
                    .or_default()
                    .push([c.router_sys / gib, c.clients_sys / gib]);
            }
        }
        for (vi, &v) in VARIANTS.iter().enumerate() {
            if !on(vi) || pings == 0 {
                p50.entry(vi).or_default().push(f64::NAN);
                p99.entry(vi).or_default().push(f64::NAN);
                continue;
            }
            n += 1;
            let mut rtts = run_pings(v, &roles, pings, n);
            rtts.sort();
            p50.entry(vi).or_default().push(percentile(&rtts, 0.50));
            p99.entry(vi).or_default().push(percentile(&rtts, 0.99));
        }
        eprintln!("  run {} of {runs} done", run + 1);
    }

    println!();
    println!("Throughput, MiB/s, min/median/max of {runs} runs ({mib} MiB per transfer)");
    println!(
        "| writes | TCP | tonic relay | ours (TCP legs) | ours (streams) | ours / relay | streams / relay | ours / TCP |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for &w in &sizes {
        let m: Vec<(f64, f64, f64)> = (0..4)
            .map(|vi| min_med_max(tput[&(w, vi)].clone()))
            .collect();
        let ratio = |a: usize, b: usize| run_ratio(&tput, w, a, b);
        println!(
            "| {} KiB | {} | {} | {} | {} | {} | {} | {} |",
            w / KIB,
            fmt3(m[0], 0),
            fmt3(m[1], 0),
            fmt3(m[2], 0),
            fmt3(m[3], 0),
            fmt3(ratio(2, 1), 2),
            fmt3(ratio(3, 1), 2),
            fmt3(ratio(2, 0), 2),
        );
    }
    // The codec lever (needs both `streams` and `streams-tonic`).
    if on(3) && on(5) {
        println!();
        println!("Our client's codec: the streams layout with raw bodies (client constructors) against tonic's codec (from_call), same router");
        println!("| writes | raw bodies MiB/s | tonic codec MiB/s | raw / tonic | raw clients' CPU s/GiB | tonic clients' CPU s/GiB | raw / tonic CPU |");
        println!("|---|---|---|---|---|---|---|");
        for &w in &sizes {
            let ratio = |m: &HashMap<(usize, usize), Vec<f64>>| run_ratio(m, w, 3, 5);
            println!(
                "| {} KiB | {} | {} | {} | {} | {} | {} |",
                w / KIB,
                fmt3(min_med_max(tput[&(w, 3)].clone()), 0),
                fmt3(min_med_max(tput[&(w, 5)].clone()), 0),
                fmt3(ratio(&tput), 2),
                fmt3(min_med_max(ccpu[&(w, 3)].clone()), 2),
                fmt3(min_med_max(ccpu[&(w, 5)].clone()), 2),
                fmt3(ratio(&ccpu), 2),
            );
        }
        let r: Vec<f64> = p50[&3].iter().zip(&p50[&5]).map(|(x, y)| x / y).collect();
        println!(
            "| ping p50 | {} µs | {} µs | {} |",
            fmt3(min_med_max(p50[&3].clone()), 0),
            fmt3(min_med_max(p50[&5].clone()), 0),
            fmt3(min_med_max(r), 2)
        );
    }
    // Where the CPU goes: every thread's CPU per GiB, and the cores each side kept busy over
    // the transfer (the router is one thread: 1.0 is all of it; the machine has 2 cores).
    println!();
    println!("CPU per GiB (clients: sender + receiver threads) and cores busy over each transfer, medians of {runs}");
    println!("| writes | variant | clients s/GiB | router s/GiB | clients' kernel s/GiB | router's kernel s/GiB | sender busy | router busy | receiver busy |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &w in &sizes {
        for (vi, name) in NAMES.iter().enumerate() {
            if !on(vi) {
                continue;
            }
            let med = |m: &HashMap<(usize, usize), Vec<f64>>| min_med_max(m[&(w, vi)].clone()).1;
            let b = |i: usize| min_med_max(busy[&(w, vi)].iter().map(|x| x[i]).collect()).1;
            let k = |i: usize| min_med_max(sys[&(w, vi)].iter().map(|x| x[i]).collect()).1;
            println!(
                "| {} KiB | {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                w / KIB,
                med(&ccpu),
                med(&cpu),
                k(1),
                k(0),
                b(0),
                b(1),
                b(2),
            );
        }
    }
    // The routers alone (needs both `relay` and `raw`).
    if on(1) && on(4) {
        println!();
        println!("The routers alone: the relay's raw tonic clients (one message per write) against the tonic relay and against our router; router CPU (its thread) per GiB forwarded");
        println!("| writes | tonic relay MiB/s | our router MiB/s | ours / relay | relay CPU s/GiB | ours CPU s/GiB | ours / relay CPU |");
        println!("|---|---|---|---|---|---|---|");
        for &w in &sizes {
            let ratio = |m: &HashMap<(usize, usize), Vec<f64>>| run_ratio(m, w, 4, 1);
            println!(
                "| {} KiB | {} | {} | {} | {} | {} | {} |",
                w / KIB,
                fmt3(min_med_max(tput[&(w, 1)].clone()), 0),
                fmt3(min_med_max(tput[&(w, 4)].clone()), 0),
                fmt3(ratio(&tput), 2),
                fmt3(min_med_max(cpu[&(w, 1)].clone()), 2),
                fmt3(min_med_max(cpu[&(w, 4)].clone()), 2),
                fmt3(ratio(&cpu), 2),
            );
        }
    }
    println!();
    println!("Ping-pong 64 B, microseconds, min/median/max of {runs} runs of {pings}");
    println!("| | TCP | tonic relay | ours (TCP legs) | ours (streams) | our router, raw clients | ours / relay | streams / relay | raw / relay |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, m) in [("p50", &p50), ("p99", &p99)] {
        let ratio = |a: usize| {
            let r: Vec<f64> = m[&a].iter().zip(&m[&1]).map(|(x, y)| x / y).collect();
            min_med_max(r)
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fmt3(min_med_max(m[&0].clone()), 0),
            fmt3(min_med_max(m[&1].clone()), 0),
            fmt3(min_med_max(m[&2].clone()), 0),
            fmt3(min_med_max(m[&3].clone()), 0),
            fmt3(min_med_max(m[&4].clone()), 0),
            fmt3(ratio(2), 2),
            fmt3(ratio(3), 2),
            fmt3(ratio(4), 2),
        );
    }
}

// ===== memory =====

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A child process of this bench (`RELAY_CHILD=role`), talking in lines.
struct ChildProc {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl ChildProc {
    fn spawn(role: &str, env: &[(&str, String)]) -> ChildProc {
        // RELAY_ROUTER_WRAP="heaptrack -o /tmp/router": the router child under a profiler.
        let wrap = std::env::var("RELAY_ROUTER_WRAP")
            .ok()
            .filter(|_| role == "router");
        let mut cmd = match wrap.as_deref().map(str::split_whitespace) {
            Some(mut words) => {
                let mut c = Command::new(words.next().expect("a command"));
                c.args(words).arg(std::env::current_exe().unwrap());
                c
            }
            None => Command::new(std::env::current_exe().unwrap()),
        };
        cmd.env("RELAY_CHILD", role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        ChildProc { child, lines }
    }

    fn line(&mut self) -> String {
        self.lines.next().expect("child ended").unwrap()
    }

    /// The router child's address: its first line that is one (a profiler may print first).
    fn addr(&mut self) -> SocketAddr {
        loop {
            if let Ok(a) = self.line().trim().parse() {
                return a;
            }
        }
    }

    fn ask(&mut self, q: &str) -> String {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{q}").unwrap();
        stdin.flush().unwrap();
        self.line()
    }

    fn rss(&self) -> u64 {
        rss_kib(self.child.id())
    }

    /// Asks a router child for its counters until `pairs` are active (or `limit` passed):
    /// how many are.
    fn wait_active(&mut self, pairs: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let active = self
                .ask("stats")
                .split(' ')
                .next()
                .and_then(|a| a.parse().ok())
                .unwrap_or(0);
            if active >= pairs || Instant::now() > deadline {
                return active;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        // Stdin closed first: a router child then exits on its own (a profiler around it
        // writes its report); killed if it is still there after a while.
        drop(self.child.stdin.take());
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child's stream (RELAY_ROUTER, RELAY_TOKEN), opened, `ready` printed, once a line arrives
/// on stdin.
async fn child_stream_when_told() -> RouterStream {
    let router: SocketAddr = std::env::var("RELAY_ROUTER").unwrap().parse().unwrap();
    let mut s = client(router)
        .connect(&std::env::var("RELAY_TOKEN").unwrap())
        .await
        .unwrap();
    s.flush().await.unwrap();
    println!("ready");
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let _ = lines.next_line().await;
    s
}

fn child(role: &str) {
    // RELAY_CHILD_THREADS=1: the child on a current-thread runtime.
    let rt = if env_or("RELAY_CHILD_THREADS", 2) == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        runtime()
    };
    match role {
        "router" => rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            // RELAY_ROUTER_PINGS: which of the router's keepalive traffic is on (default both).
            let mut keepalive = Keepalive::default();
            let pings = std::env::var("RELAY_ROUTER_PINGS").unwrap_or_default();
            if pings == "off" || pings == "frames" {
                keepalive.interval = None;
            }
            if pings == "off" || pings == "h2" {
                keepalive.ping_frame_interval = None;
            }
            let router = Router::builder(Auth::new(KEY)).keepalive(keepalive).build();
            println!("{}", listener.local_addr().unwrap());
            // RELAY_ROUTER_TLS=1: TLS with a self-signed certificate for localhost.
            let tls = std::env::var_os("RELAY_ROUTER_TLS")
                .map(|_| jumpstarter_router::router::ServerTls::self_signed("localhost").unwrap());
            tokio::spawn(
                router
                    .clone()
                    .serve_listener(listener, tls, std::future::pending()),
            );
            // Commands on stdin: `stats` -> `active pending`.
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(_)) = lines.next_line().await {
                let s = router.stats();
                println!("{} {}", s.active, s.pending);
            }
        }),
        "receiver" => rt.block_on(async {
            // Reads nothing until told to on stdin, then reads to EOF.
            let mut s = child_stream_when_told().await;
            let mut buf = vec![0u8; 64 * KIB];
            let mut got = 0u64;
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            s.shutdown().await.unwrap();
            s.close().await.unwrap();
            println!("{got}");
        }),
        "sender" => rt.block_on(async {
            // Pushes RELAY_STALL_MIB MiB once told to on stdin, then prints `done`.
            let total: u64 = env_or::<u64>("RELAY_STALL_MIB", 1024) * MIB as u64;
            let mut s = child_stream_when_told().await;
            let buf = vec![0x5a_u8; 64 * KIB];
            let mut left = total;
            while left > 0 {
                let n = (buf.len() as u64).min(left) as usize;
                s.write_all(&buf[..n]).await.unwrap();
                left -= n as u64;
            }
            s.shutdown().await.unwrap();
            s.close().await.unwrap();
            println!("done");
        }),
        "relay" => rt.block_on(async {
            // The plain tonic relay, behind TLS with a self-signed certificate for localhost.
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            println!("{}", listener.local_addr().unwrap());
            let conns = tls_incoming(listener);
            let server = Server::builder()
                .initial_stream_window_size(WINDOW)
                .initial_connection_window_size(CONN_WINDOW)
                .serve_with_incoming(RouterServiceServer::new(PlainRelay::default()), conns);
            tokio::spawn(server);
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(_)) = lines.next_line().await {}
        }),
        other => panic!("unknown RELAY_CHILD role {other}"),
    }
}

/// `n` channels (connections) to `endpoint`; a TLS one trusts any certificate (the router
/// child's is self-signed).
async fn channels(endpoint: &str, n: usize) -> Vec<Channel> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(
            ClientBuilder::new(endpoint)
                .insecure_skip_verify(true)
                .channel()
                .await
                .unwrap(),
        );
    }
    v
}

/// A two-worker runtime: each child of this bench, and the clients of a measurement.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The comma-separated counts in the environment variable `name`, or in `default`.
fn counts(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn memory() {
    let pairs = counts("RELAY_PAIRS", "1000,10000");
    let rt = runtime();

    println!();
    println!("Router memory per paired idle stream (router in its own process)");
    println!(
        "| pairs | paired (router's count) | connections | router RSS before | after | per pair |"
    );
    println!("|---|---|---|---|---|---|");
    for &p in &pairs {
        let mut router = ChildProc::spawn("router", &[]);
        let addr = router.addr();
        let conns = 16;
        let channels = rt.block_on(channels(&format!("http://{addr}"), conns));
        // Warm up: one pair through, so the router's one-time allocations are done.
        for t in rt.block_on(idle_pairs(&channels, 0, 50)) {
            t.abort();
        }
        std::thread::sleep(Duration::from_millis(500));
        let _ = router.ask("stats");
        let before = router.rss();
        let held = rt.block_on(idle_pairs(&channels, 1_000_000, p));
        let active = router.wait_active(p, Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(500));
        let after = router.rss();
        println!(
            "| {p} | {active} | {conns} | {} KiB | {} KiB | {:.1} KiB |",
            before,
            after,
            (after.saturating_sub(before)) as f64 / p as f64
        );
        for t in held {
            t.abort();
        }
        drop(channels);
    }

    // A stalled reader while the sender pushes 1 GiB.
    let gib: u64 = env_or("RELAY_STALL_MIB", 1024);
    let mut router = ChildProc::spawn("router", &[]);
    let addr = router.addr();
    let tok = token("stalled");
    let mut receiver = ChildProc::spawn(
        "receiver",
        &[
            ("RELAY_ROUTER", addr.to_string()),
            ("RELAY_TOKEN", tok.clone()),
        ],
    );
    assert_eq!(receiver.line(), "ready");
    let mut sender = ChildProc::spawn(
        "sender",
        &[
            ("RELAY_ROUTER", addr.to_string()),
            ("RELAY_TOKEN", tok.clone()),
            ("RELAY_STALL_MIB", gib.to_string()),
        ],
    );
    assert_eq!(sender.line(), "ready");
    std::thread::sleep(Duration::from_millis(300));
    let base = [sender.rss(), router.rss(), receiver.rss()];
    let peak = Arc::new(Mutex::new(base));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (sp, rp, qp) = (sender.child.id(), router.child.id(), receiver.child.id());
    let monitor = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let now = [rss_kib(sp), rss_kib(rp), rss_kib(qp)];
                let mut p = peak.lock().unwrap();
                for i in 0..3 {
                    p[i] = p[i].max(now[i]);
                }
                drop(p);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let total = gib * MIB as u64;
    let stdin = sender.child.stdin.as_mut().unwrap();
    writeln!(stdin, "go").unwrap();
    stdin.flush().unwrap();
    // The reader stalls for 3 s while the sender pushes, then reads it all.
    std::thread::sleep(Duration::from_secs(3));
    let stalled = *peak.lock().unwrap();
    let got: u64 = receiver.ask("read").parse().unwrap();
    assert_eq!(sender.line(), "done");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    monitor.join().unwrap();
    assert_eq!(got, total, "the receiver got every byte");
    let peak = *peak.lock().unwrap();
    println!();
    println!(
        "Stalled reader, {gib} MiB pushed (stalled 3 s, then read): RSS growth over the baseline"
    );
    println!("| process | baseline | growth while stalled | peak growth |");
    println!("|---|---|---|---|");
    for (i, name) in ["sender", "router", "receiver"].iter().enumerate() {
        println!(
            "| {name} | {} KiB | {} KiB | {} KiB |",
            base[i],
            stalled[i].saturating_sub(base[i]),
            peak[i].saturating_sub(base[i])
        );
    }
}

/// Opens `pairs` idle pairs (stream ids from `first`) over the channels: each stream is held
/// by a task waiting to read. Abort the tasks to drop them.
async fn idle_pairs(
    channels: &[Channel],
    first: usize,
    pairs: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut v = Vec::with_capacity(2 * pairs);
    for i in 0..pairs {
        let tok = token(&format!("idle-{}", first + i));
        for side in 0..2 {
            let ch = channels[(2 * i + side) % channels.len()].clone();
            let mut s = jumpstarter_router::open(ch, &tok).unwrap();
            v.push(tokio::spawn(async move {
                let mut b = [0u8; 1];
                let _ = s.read(&mut b).await;
            }));
        }
    }
    v
}

/// A process's CPU time (user + system) in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces): state is field 3; utime 14, stime 15.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// The bytes the router sent on its established connections (the kernel's `bytes_sent` of
/// each TCP socket on `port`, from `ss -ti`): what went on the wire, headers of HTTP/2 frames
/// included, TCP/IP headers not.
fn bytes_sent_from(port: u16) -> u64 {
    let out = Command::new("ss")
        .args(["-tinH", "state", "established"])
        .arg(format!("( sport = :{port} )"))
        .output()
        .expect("ss (iproute2) to read the sockets' byte counts");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("bytes_sent:"))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

fn idle_cost() {
    let secs: u64 = env_or("RELAY_IDLE_SECS", 60);
    let rt = runtime();
    println!();
    println!("The router's keepalive traffic with idle pairs, over {secs} s, per hour (HTTP/2 PINGs every 10 s, PING frames after 20 s of quiet; the clients ping every 20 s in every row)");
    println!("| pairs | connections | router's pings | router CPU s/hour | bytes sent/hour | per pair: bytes/hour |");
    println!("|---|---|---|---|---|---|");
    for (pairs, per_caller) in [(10_000usize, false), (4_000, true)] {
        for pings in ["off", "h2", "frames", "both"] {
            let mut router =
                ChildProc::spawn("router", &[("RELAY_ROUTER_PINGS", pings.to_string())]);
            let addr = router.addr();
            let conns = if per_caller { 2 * pairs } else { 64 };
            let channels = rt.block_on(channels(&format!("http://{addr}"), conns));
            let held = rt.block_on(idle_pairs(&channels, 0, pairs));
            router.wait_active(pairs, Duration::from_secs(120));
            // Past the first PINGs of every connection and call.
            std::thread::sleep(Duration::from_secs(25));
            let pid = router.child.id();
            let (cpu0, w0) = (cpu_secs(pid), bytes_sent_from(addr.port()));
            std::thread::sleep(Duration::from_secs(secs));
            let (cpu1, w1) = (cpu_secs(pid), bytes_sent_from(addr.port()));
            let per_hour = 3600.0 / secs as f64;
            let bytes = w1.saturating_sub(w0) as f64 * per_hour;
            println!(
                "| {pairs} | {conns} | {pings} | {:.1} | {:.1} MB | {:.0} |",
                (cpu1 - cpu0) * per_hour,
                bytes / 1e6,
                bytes / pairs as f64
            );
            for t in held {
                t.abort();
            }
            drop(channels);
            drop(router);
        }
    }
}

/// The router's RSS per paired idle stream in three shapes (see the module's docs).
fn memory_shape() {
    let pairs = counts("RELAY_SHAPE_PAIRS", "1000");
    let rt = runtime();
    println!();
    println!("Router memory per paired idle stream, by shape (router in its own process)");
    println!("| pairs | shape | connections | router RSS before | after | per pair |");
    println!("|---|---|---|---|---|---|");
    for &p in &pairs {
        // RELAY_SHAPE=shared|plaintext|tls: one shape only.
        let only = std::env::var("RELAY_SHAPE").unwrap_or_default();
        for (name, shape, tls, per_caller) in [
            ("shared", "shared, plaintext", false, false),
            (
                "plaintext",
                "a plaintext connection per caller",
                false,
                true,
            ),
            ("tls", "a TLS connection per caller", true, true),
        ] {
            if !only.is_empty() && only != name {
                continue;
            }
            let env: Vec<(&str, String)> = if tls {
                vec![("RELAY_ROUTER_TLS", "1".into())]
            } else {
                Vec::new()
            };
            let mut router = ChildProc::spawn("router", &env);
            let addr = router.addr();
            let endpoint = if tls {
                format!("https://localhost:{}", addr.port())
            } else {
                format!("http://{addr}")
            };
            let conns = if per_caller { 2 * p } else { 16 };
            // Warm up: connections and pairs through, so one-time allocations are done.
            let warm = rt.block_on(channels(&endpoint, 16));
            for t in rt.block_on(idle_pairs(&warm, 0, 50)) {
                t.abort();
            }
            drop(warm);
            std::thread::sleep(Duration::from_millis(500));
            let before = router.rss();
            let channels = rt.block_on(channels(&endpoint, conns));
            let held = rt.block_on(idle_pairs(&channels, 1_000_000, p));
            let active = router.wait_active(p, Duration::from_secs(120));
            std::thread::sleep(Duration::from_secs(1));
            let after = router.rss();
            println!(
                "| {p} ({active} paired) | {shape} | {conns} | {before} KiB | {after} KiB | {:.1} kB |",
                (after.saturating_sub(before)) as f64 * 1.024 / p as f64
            );
            for t in held {
                t.abort();
            }
            drop(channels);
        }
    }
}

// ===== the real shape: Jumpstarter's Python peers over TLS =====

/// A TLS connection of the relay child (tonic needs its `Connected`).
struct TlsConn(tokio_rustls::server::TlsStream<TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The relay child's connections: TLS (ALPN h2, a self-signed certificate for localhost),
/// each handshake in a task of its own, as our router does it.
fn tls_incoming(listener: TcpListener) -> ReceiverStream<std::io::Result<TlsConn>> {
    use tokio_rustls::rustls;
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let _ = tx.send(Ok(TlsConn(tls))).await;
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// What one measured run saw in the router's process.
#[derive(Default, Clone)]
struct RouterCost {
    cpu_s: f64,
    /// From `perf stat` when it works here: context switches and syscalls, in all, and each
    /// syscall's count.
    ctx_switches: Option<f64>,
    syscalls: Vec<(String, f64)>,
}

impl RouterCost {
    fn syscalls_total(&self) -> Option<f64> {
        (!self.syscalls.is_empty()).then(|| self.syscalls.iter().map(|(_, n)| n).sum())
    }
}

/// `perf stat` on a process, from now until [`PerfStat::stop`]: its context switches and every
/// syscall it enters (the `syscalls:sys_enter_*` tracepoints: counted in the kernel, nearly
/// free, unlike strace). `None` when perf is missing or may not trace here.
struct PerfStat {
    child: Child,
    out: std::path::PathBuf,
}

impl PerfStat {
    fn start(pid: u32, tag: &str) -> Option<PerfStat> {
        if std::env::var("RELAY_PERF").is_ok_and(|v| v == "0") {
            return None;
        }
        let out = std::env::temp_dir().join(format!("relay-perf-{}-{tag}.csv", std::process::id()));
        let child = Command::new("perf")
            .args([
                "stat",
                "-x,",
                "-e",
                "context-switches,syscalls:sys_enter_*",
                "-o",
            ])
            .arg(&out)
            .args(["-p", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        // perf attaches in a few milliseconds; the runs it measures take seconds.
        std::thread::sleep(Duration::from_millis(200));
        Some(PerfStat { child, out })
    }

    fn stop(mut self, cost: &mut RouterCost) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let _ = std::fs::remove_file(&self.out);
        for line in text.lines() {
            let f: Vec<&str> = line.split(',').collect();
            let (Some(n), Some(event)) = (f.first().and_then(|n| n.parse::<f64>().ok()), f.get(2))
            else {
                continue;
            };
            if *event == "context-switches" {
                cost.ctx_switches = Some(n);
            } else if let Some(call) = event.strip_prefix("syscalls:sys_enter_") {
                if n > 0.0 {
                    cost.syscalls.push((call.to_string(), n));
                }
            }
        }
    }
}

/// A router over TLS in a process of its own: ours as labs run it (the `jumpstarter-router
/// serve` binary, its defaults; `RELAY_OURS_THREADS` sets `--worker-threads`), or the plain
/// tonic relay on tokio's default runtime (a worker per core; `RELAY_RELAY_THREADS`).
struct TlsRouter {
    port: u16,
    pid: u32,
    /// Held for its drop: the bench's child ends when its stdin closes; the CLI is killed.
    _proc: RouterProc,
}

#[allow(dead_code)] // held for their drops
enum RouterProc {
    Bench(ChildProc),
    Cli(KillOnDrop),
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl TlsRouter {
    fn start(variant: &str) -> TlsRouter {
        if variant == "ours" {
            return TlsRouter::cli();
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = std::env::var("RELAY_RELAY_THREADS").unwrap_or_else(|_| cores.to_string());
        let mut bench = ChildProc::spawn("relay", &[("RELAY_CHILD_THREADS", threads)]);
        TlsRouter {
            port: bench.addr().port(),
            pid: bench.child.id(),
            _proc: RouterProc::Bench(bench),
        }
    }

    /// `jumpstarter-router serve` with a self-signed certificate for localhost; its address
    /// from its JSON log.
    fn cli() -> TlsRouter {
        let Some(bin) = option_env!("CARGO_BIN_EXE_jumpstarter-router") else {
            panic!("RELAY_ONLY=session runs the CLI: cargo bench --all-features --bench relay");
        };
        let mut cmd = Command::new(bin);
        cmd.args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
            .env("ROUTER_KEY", std::str::from_utf8(KEY).unwrap())
            .env("GRPC_ROUTER_ENDPOINT", "localhost:8083")
            .env_remove("EXTERNAL_CERT_PEM")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Ok(n) = std::env::var("RELAY_OURS_THREADS") {
            cmd.args(["--worker-threads", &n]);
        }
        let mut child = cmd.spawn().unwrap();
        let err = child.stderr.take().unwrap();
        let (tx, rx) = smpsc::channel();
        // RELAY_ROUTER_LOG=FILE: the router's log lines, appended to FILE.
        let mut log = std::env::var_os("RELAY_ROUTER_LOG").map(|f| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)
                .expect("RELAY_ROUTER_LOG")
        });
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(f) = log.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["message"] == "router listening" {
                        let _ = tx.send(v["addr"].as_str().unwrap_or_default().to_owned());
                    }
                }
            }
        });
        let addr: SocketAddr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("jumpstarter-router serve: no \"router listening\"")
            .parse()
            .unwrap();
        TlsRouter {
            port: addr.port(),
            pid: child.id(),
            _proc: RouterProc::Cli(KillOnDrop(child)),
        }
    }
}

/// A `harness.py bench-peer` of stream `stream` on the router at `port`.
fn bench_peer(py: &std::path::Path, port: u16, stream: &str, args: &[&str]) -> python::Py {
    let endpoint = format!("localhost:{port}");
    let key = std::str::from_utf8(KEY).unwrap();
    let mut all = vec!["bench-peer", "--endpoint", &endpoint, "--tls-insecure"];
    all.extend(["--key", key, "--stream", stream]);
    all.extend(args);
    python::Py::spawn(py, "harness.py", &all, false)
}

/// One transfer of `bytes` one way in writes of `chunk`, between two real peers, each on its
/// own TLS connection, through a fresh router child: MiB/s and what the router spent (with
/// `counted`, its context switches and syscalls too).
async fn session_transfer(
    py: &std::path::Path,
    variant: &str,
    chunk: usize,
    bytes: usize,
    counted: bool,
) -> (f64, RouterCost) {
    let router = TlsRouter::start(variant);
    let (port, pid) = (router.port, router.pid);
    let stream = format!("bulk-{chunk}");
    let mut rx = bench_peer(py, port, &stream, &["--role", "recv"]);
    let (send, chunk_arg) = (bytes.to_string(), chunk.to_string());
    let mut tx = bench_peer(
        py,
        port,
        &stream,
        &["--role", "send", "--send", &send, "--chunk", &chunk_arg],
    );
    let perf = counted.then(|| PerfStat::start(pid, variant)).flatten();
    let cpu0 = cpu_secs(pid);
    // Both at once: a peer that fails says why at once, rather than its peer's timeout.
    tokio::join!(rx.next("paired", 120), tx.next("paired", 120));
    let done = rx.next("done", 600).await;
    let mut cost = RouterCost {
        cpu_s: cpu_secs(pid) - cpu0,
        ..RouterCost::default()
    };
    if let Some(p) = perf {
        p.stop(&mut cost);
    }
    tx.next("done", 120).await;
    assert_eq!(done["received"].as_u64(), Some(bytes as u64), "{done}");
    let secs = done["secs"].as_f64().unwrap();
    (bytes as f64 / MIB as f64 / secs, cost)
}

/// Ping-pong of `count` messages of `size` bytes between two real peers through a fresh
/// router child: p50 and p99 in microseconds.
async fn session_pings(
    py: &std::path::Path,
    variant: &str,
    size: usize,
    count: usize,
) -> (f64, f64) {
    let router = TlsRouter::start(variant);
    let mut echo = bench_peer(py, router.port, "pings", &["--role", "echo"]);
    let (size, count) = (size.to_string(), count.to_string());
    let mut ping = bench_peer(
        py,
        router.port,
        "pings",
        &["--role", "ping", "--chunk", &size, "--count", &count],
    );
    tokio::join!(ping.next("paired", 120), echo.next("paired", 120));
    let done = ping.next("done", 600).await;
    echo.next("done", 120).await;
    (
        done["p50_us"].as_f64().unwrap(),
        done["p99_us"].as_f64().unwrap(),
    )
}

/// `runs` measurements of ours and of the relay, alternating which goes first.
fn alternating<T>(runs: usize, mut f: impl FnMut(&str) -> T) -> HashMap<&'static str, Vec<T>> {
    let mut m: HashMap<&'static str, Vec<T>> = HashMap::new();
    for run in 0..runs {
        let order = if run % 2 == 0 {
            ["ours", "relay"]
        } else {
            ["relay", "ours"]
        };
        for v in order {
            m.entry(v).or_default().push(f(v));
        }
    }
    m
}

/// The real shape (see the module's docs): jumpstarter 0.9.0's Python peers over TLS, one
/// connection per caller, through our router and through the plain tonic relay behind the
/// same TLS; a fresh router process per run, the two alternating.
fn session() {
    if cfg!(skip_interop) {
        panic!("JUMPSTARTER_ROUTER_SKIP_INTEROP is set: this measurement needs the Python peers");
    }
    let py = python::python().clone();
    let rt = runtime();
    let runs: usize = env_or("RELAY_RUNS", 5);
    let pings: usize = env_or("RELAY_PINGS", 2000);
    // RELAY_SIZES=1,16,64 (KiB); the bytes of a run scale with the write (RELAY_MIB at 64 KiB).
    let sizes: Vec<usize> = counts("RELAY_SIZES", "1,16,64");
    let mib64: usize = env_or("RELAY_MIB", 512);
    let variants = ["ours", "relay"];
    println!();
    println!("The real shape: jumpstarter 0.9.0's Python peers (RouterStream.send per write), TLS, a connection per caller, a fresh router process per run; ours and the plain tonic relay behind the same TLS, alternating; min/median/max of {runs}");
    println!("| writes | MiB/s ours | MiB/s relay | ours/relay | router CPU s/GiB ours | relay | ours/relay | ctx switches/msg ours (a counted run) | relay | syscalls/msg ours | relay |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut syscall_tables = Vec::new();
    for &kib in &sizes {
        let chunk = kib * KIB;
        // 1 KiB: 1/16 of the bytes of 64 KiB (the peers send ~10k messages a second).
        let bytes = (mib64 * MIB * kib.max(4) / 64).max(chunk);
        let msgs = (bytes / chunk) as f64;
        // Timed runs without perf (its tracepoints cost each syscall some CPU, and the relay
        // makes more of them), then one counted run of each.
        let m = alternating(runs, |v| {
            rt.block_on(session_transfer(&py, v, chunk, bytes, false))
        });
        let counted = alternating(1, |v| {
            rt.block_on(session_transfer(&py, v, chunk, bytes, true))
        });
        let gib = bytes as f64 / (1u64 << 30) as f64;
        let col = |v: &str, f: &dyn Fn(&(f64, RouterCost)) -> f64| -> Vec<f64> {
            m[v].iter().map(f).collect()
        };
        let ratio = |f: &dyn Fn(&(f64, RouterCost)) -> f64| -> Vec<f64> {
            m["ours"]
                .iter()
                .zip(&m["relay"])
                .map(|(a, b)| f(a) / f(b))
                .collect()
        };
        let thr = |r: &(f64, RouterCost)| r.0;
        let cpu = |r: &(f64, RouterCost)| r.1.cpu_s / gib;
        let per_msg = |v: &str, f: fn(&RouterCost) -> Option<f64>| {
            f(&counted[v][0].1).map_or("n/a".to_string(), |n| format!("{:.2}", n / msgs))
        };
        let ctx = |c: &RouterCost| c.ctx_switches;
        let sys = |c: &RouterCost| c.syscalls_total();
        println!(
            "| {kib} KiB | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fmt3(min_med_max(col("ours", &thr)), 1),
            fmt3(min_med_max(col("relay", &thr)), 1),
            fmt3(min_med_max(ratio(&thr)), 2),
            fmt3(min_med_max(col("ours", &cpu)), 2),
            fmt3(min_med_max(col("relay", &cpu)), 2),
            fmt3(min_med_max(ratio(&cpu)), 2),
            per_msg("ours", ctx),
            per_msg("relay", ctx),
            per_msg("ours", sys),
            per_msg("relay", sys),
        );
        // Where the syscalls go: each one per message, in the counted run.
        for v in variants {
            let mut calls = counted[v][0].1.syscalls.clone();
            calls.sort_by(|a, b| b.1.total_cmp(&a.1));
            let list: Vec<String> = calls
                .iter()
                .take(8)
                .map(|(c, n)| format!("{c} {:.2}", n / msgs))
                .collect();
            if !list.is_empty() {
                syscall_tables.push(format!("{kib} KiB, {v}: {}", list.join(", ")));
            }
        }
    }
    if !syscall_tables.is_empty() {
        println!();
        println!("Syscalls per message in the router (the counted run), most first:");
        for l in syscall_tables {
            println!("- {l}");
        }
    }
    println!();
    println!("Ping-pong of 64 B, {pings} round trips, as the peers see it: p50 and p99 in microseconds, min/median/max of {runs}");
    println!("| | p50 ours | p50 relay | ours/relay | p99 ours | p99 relay | ours/relay |");
    println!("|---|---|---|---|---|---|---|");
    let p = alternating(runs, |v| rt.block_on(session_pings(&py, v, 64, pings)));
    let of = |v: &str, f: fn(&(f64, f64)) -> f64| p[v].iter().map(f).collect::<Vec<_>>();
    let ratio = |f: fn(&(f64, f64)) -> f64| {
        p["ours"]
            .iter()
            .zip(&p["relay"])
            .map(|(a, b)| f(a) / f(b))
            .collect::<Vec<_>>()
    };
    println!(
        "| 64 B | {} | {} | {} | {} | {} | {} |",
        fmt3(min_med_max(of("ours", |x| x.0)), 0),
        fmt3(min_med_max(of("relay", |x| x.0)), 0),
        fmt3(min_med_max(ratio(|x| x.0)), 2),
        fmt3(min_med_max(of("ours", |x| x.1)), 0),
        fmt3(min_med_max(of("relay", |x| x.1)), 0),
        fmt3(min_med_max(ratio(|x| x.1)), 2),
    );
}
