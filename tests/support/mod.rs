//! Shared helpers of the integration tests, one copy each: an in-process router on loopback
//! and its tokens (feature `router`), deterministic data with checksums, deadlines.
//!
//! - [`raw`]: a scripted `RouterService` peer and raw tonic clients;
//! - [`attack`]: raw HTTP/2 attackers for the abuse tests and bench (feature `router`);
//! - [`process`]: processes of the `jumpstarter-router` binary (feature `cli`);
//! - [`python`]: the venv of the real Jumpstarter Python peers, and their scripts' events;
//! - [`wire`]: a raw HTTP/2 client that shows every frame the router sends (feature `router`);
//! - [`apiserver`]: a stand-in Kubernetes API server serving the controller's ConfigMap
//!   (feature `kube`).
#![allow(dead_code, unreachable_pub)]

#[cfg(feature = "kube")]
pub mod apiserver;
#[cfg(feature = "router")]
pub mod attack;
#[cfg(feature = "cli")]
pub mod process;
#[cfg(feature = "cli")]
pub mod proxy;
pub mod python;
pub mod raw;
#[cfg(feature = "router")]
pub mod wire;

#[cfg(feature = "router")]
use std::net::SocketAddr;
use std::time::Duration;

#[cfg(feature = "router")]
use jumpstarter_router::router::{Auth, Router, ServerTls};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The router key of every test: the in-process routers' and `serve`'s (`ROUTER_KEY`, set by
/// `process::cmd`).
pub const KEY: &str = "test-router-key";

/// A token for stream `stream` signed with [`KEY`], valid for an hour (longer than any run of
/// these tests and benches, the soak's included).
#[cfg(feature = "router")]
pub fn token(stream: &str) -> String {
    Auth::new(KEY)
        .mint(stream, Duration::from_secs(3600))
        .unwrap()
}

/// A router on 127.0.0.1 with [`KEY`], plaintext (or TLS: [`TestRouter::with_tls`]); stops when
/// the returned guard drops.
#[cfg(feature = "router")]
pub struct TestRouter {
    pub addr: SocketAddr,
    pub router: Router,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

#[cfg(feature = "router")]
impl TestRouter {
    pub async fn start() -> Self {
        Self::with(Router::builder(Auth::new(KEY)).build()).await
    }

    pub async fn with(router: Router) -> Self {
        Self::with_tls(router, None).await
    }

    /// `router` over TLS when `tls` is given ([`TestRouter::tls_endpoint`]), else plaintext.
    pub async fn with_tls(router: Router, tls: Option<ServerTls>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(router.clone().serve_listener(listener, tls, async {
            let _ = rx.await;
        }));
        TestRouter {
            addr,
            router,
            stop: Some(tx),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The endpoint of a TLS router: `https://localhost:PORT` (the name in the certificates).
    pub fn tls_endpoint(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// A tonic channel to the (plaintext) router.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Waits until the router's counters satisfy `f`, for at most 5 s.
    pub async fn wait_for(
        &self,
        what: &str,
        f: impl Fn(&jumpstarter_router::router::RouterStats) -> bool,
    ) {
        let waited = tokio::time::timeout(Duration::from_secs(5), self.router.wait_for_stats(f));
        if waited.await.is_err() {
            panic!("timed out waiting for {what}: {:?}", self.router.stats());
        }
    }
}

#[cfg(feature = "router")]
impl Drop for TestRouter {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Byte `i` of pattern `seed`: the same formula as the Python harness.
pub fn pattern_byte(i: u64, seed: u64) -> u8 {
    ((i.wrapping_mul(31))
        .wrapping_add(seed * 7)
        .wrapping_add(i >> 12)
        & 0xFF) as u8
}

/// `len` pattern bytes from offset 0.
pub fn test_bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut v = vec![0; len];
    fill_pattern(&mut v, 0, u64::from(seed));
    v
}

/// Fills `buf` with the pattern starting at offset `at`.
pub fn fill_pattern(buf: &mut [u8], at: u64, seed: u64) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(at + k as u64, seed);
    }
}

/// Writes `len` pattern bytes in `chunk`-sized writes; returns their SHA-256.
pub async fn send_pattern<W: AsyncWrite + Unpin>(
    w: &mut W,
    len: u64,
    seed: u64,
    chunk: usize,
) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; chunk];
    let mut at = 0u64;
    while at < len {
        let n = chunk.min((len - at) as usize);
        fill_pattern(&mut buf[..n], at, seed);
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n]).await?;
        at += n as u64;
    }
    w.flush().await?;
    Ok(hex(&hasher.finalize()))
}

/// Reads to EOF; returns (bytes, SHA-256).
pub async fn recv_all<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok((total, hex(&hasher.finalize())));
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

/// SHA-256 of `len` pattern bytes.
pub fn pattern_sha(len: u64, seed: u64) -> String {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = 0;
    while at < len {
        let n = buf.len().min((len - at) as usize);
        fill_pattern(&mut buf[..n], at, seed);
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    hex(&hasher.finalize())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The environment variable `name` parsed, or `default` (the long runs' knobs).
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A line of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Fails the test instead of hanging.
pub async fn within<T>(secs: u64, what: &str, f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {secs} s: {what}"),
    }
}

/// Opens two streams named by `token` on `endpoint` and sends `hello` from the first to the
/// second, so the router has paired them; returns (first, second).
#[cfg(feature = "client")]
pub async fn pair_up(
    endpoint: &str,
    token: &str,
    hello: &[u8],
) -> (
    jumpstarter_router::RouterStream,
    jumpstarter_router::RouterStream,
) {
    pair_up_with(
        &jumpstarter_router::ClientBuilder::new(endpoint),
        token,
        hello,
    )
    .await
}

/// [`pair_up`] with the connections `client` makes (TLS settings, stream options).
#[cfg(feature = "client")]
pub async fn pair_up_with(
    client: &jumpstarter_router::ClientBuilder,
    token: &str,
    hello: &[u8],
) -> (
    jumpstarter_router::RouterStream,
    jumpstarter_router::RouterStream,
) {
    let mut a = client.connect(token).await.unwrap();
    let mut b = client.connect(token).await.unwrap();
    send_and_read(&mut a, &mut b, hello).await;
    (a, b)
}

/// Sends `len` pattern bytes (`seed`) from `a` to `b` in 64 KiB writes and shuts `a` down;
/// `b` reads to EOF within 60 s and must get every byte (SHA-256). Returns `a` and how long
/// the bytes took.
#[cfg(feature = "client")]
pub async fn one_way(
    mut a: jumpstarter_router::RouterStream,
    b: &mut jumpstarter_router::RouterStream,
    len: u64,
    seed: u64,
) -> (jumpstarter_router::RouterStream, Duration) {
    let t = std::time::Instant::now();
    let sent = tokio::spawn(async move {
        let sha = send_pattern(&mut a, len, seed, 64 * 1024).await.unwrap();
        a.shutdown().await.unwrap();
        (a, sha)
    });
    let got = within(60, "the one-way transfer", recv_all(b))
        .await
        .unwrap();
    let took = t.elapsed();
    let (a, sha) = sent.await.unwrap();
    assert_eq!(got, (len, sha), "bytes lost on the way");
    (a, took)
}

/// Reads to the end, which must be an error within `secs`: an abort never looks like EOF.
pub async fn read_to_error<R: AsyncRead + Unpin>(
    r: &mut R,
    secs: u64,
    what: &str,
) -> std::io::Error {
    within(secs, what, async {
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await
    })
    .await
    .expect_err(&format!("{what}: an abort looked like a clean EOF"))
}

/// `from` writes `msg` and flushes, without closing; `to` must read exactly `msg` within 10 s.
pub async fn send_and_read<A, B>(from: &mut A, to: &mut B, msg: &[u8])
where
    A: AsyncWrite + Unpin,
    B: AsyncRead + Unpin,
{
    from.write_all(msg).await.unwrap();
    from.flush().await.unwrap();
    let mut got = vec![0; msg.len()];
    within(10, "the other side reads", to.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(got, msg);
}

/// Half-close hand-over: `from` writes `msg` and shuts down; `to` reads to EOF and must have
/// received exactly `msg`.
pub async fn send_and_finish<A, B>(from: &mut A, to: &mut B, msg: &[u8])
where
    A: AsyncWrite + Unpin,
    B: AsyncRead + Unpin,
{
    from.write_all(msg).await.unwrap();
    from.shutdown().await.unwrap();
    let mut got = Vec::new();
    within(10, "the other side reads to EOF", to.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, msg);
}

/// One side of a load pair: opens the stream named by `token` on `channel`, sends 1 MiB of
/// pattern `2 * pair + side` with half-close while it reads the other side's 1 MiB to EOF,
/// checks every byte (SHA-256), and closes; returns the SHA-256 it sent.
#[cfg(feature = "client")]
pub async fn load_pair_side(
    channel: tonic::transport::Channel,
    token: String,
    pair: usize,
    side: u64,
) -> String {
    const MIB: u64 = 1024 * 1024;
    let mut s = jumpstarter_router::open(channel, &token).unwrap();
    let seed = pair as u64 * 2 + side;
    let (mut rd, mut wr) = tokio::io::split(&mut s);
    let (sent, got) = tokio::join!(
        async {
            let sha = send_pattern(&mut wr, MIB, seed, 32 * 1024).await?;
            wr.shutdown().await?;
            Ok::<_, std::io::Error>(sha)
        },
        recv_all(&mut rd)
    );
    let sent = sent.unwrap();
    let (n, sha) = got.unwrap();
    assert_eq!(n, MIB, "pair {pair} side {side}");
    let want = pattern_sha(MIB, pair as u64 * 2 + (1 - side));
    assert_eq!(sha, want, "pair {pair} side {side}");
    s.close().await.unwrap();
    sent
}

/// `pairs` load pairs at once ([`load_pair_side`] on each side), side `s` of pair `i` on
/// `channels[(2i + s) % channels.len()]` with the stream token `token_of(i)`; every pair must
/// be done within `secs`.
#[cfg(feature = "client")]
pub async fn load_pairs(
    channels: &[tonic::transport::Channel],
    pairs: usize,
    secs: u64,
    token_of: impl Fn(usize) -> String,
) {
    let mut tasks = Vec::new();
    for i in 0..pairs {
        let tok = token_of(i);
        for side in 0..2u64 {
            let ch = channels[(i * 2 + side as usize) % channels.len()].clone();
            tasks.push(tokio::spawn(load_pair_side(ch, tok.clone(), i, side)));
        }
    }
    within(secs, "the pairs", async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
}

// ===== a temporary folder =====

/// A fresh folder under the system's temporary folder, removed (with everything in it) when
/// dropped.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "jumpstarter-router-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// `name` in the folder, as a string (for configuration files and flags).
    pub fn file(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
