//! Network faults between a client and the router, injected by a small TCP proxy on loopback:
//! a blackhole (traffic stops, no FIN, no RST) and a reset of the proxy's sockets mid-stream.
//! Both ends fail, in bounded time, never hang and never see a clean EOF. (A router process
//! killed and restarted mid-session: `tests/cli.rs`.)
#![cfg(all(feature = "router", feature = "client"))]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use jumpstarter_router::router::{Auth, CallResult, Keepalive, Router};
use jumpstarter_router::ClientBuilder;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// Every byte arrives this much later, at most this many bytes a second each way.
    Slow {
        delay: Duration,
        bytes_per_sec: u64,
    },
    /// Stop moving bytes, keep both sockets open.
    Blackhole,
    /// Close both sockets with RST.
    Reset,
}

/// A proxy to `to` for every connection it accepts; `fault` changes what it does.
async fn proxy(to: SocketAddr) -> (SocketAddr, watch::Sender<Fault>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = watch::channel(Fault::None);
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let Ok(server) = TcpStream::connect(to).await else {
                continue;
            };
            tokio::spawn(pipe(client, server, rx.clone()));
        }
    });
    (addr, tx)
}

/// The fault now (the guard is not held across an await).
fn fault_now(fault: &watch::Receiver<Fault>) -> Fault {
    *fault.borrow()
}

async fn pipe(a: TcpStream, b: TcpStream, mut fault: watch::Receiver<Fault>) {
    let _ = (a.set_nodelay(true), b.set_nodelay(true));
    if let Fault::Slow {
        delay,
        bytes_per_sec,
    } = fault_now(&fault)
    {
        let (ar, aw) = a.into_split();
        let (br, bw) = b.into_split();
        tokio::join!(
            slow(ar, bw, delay, bytes_per_sec),
            slow(br, aw, delay, bytes_per_sec)
        );
        return;
    }
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    let mut abuf = vec![0u8; 64 * 1024];
    let mut bbuf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            _ = fault.changed() => match fault_now(&fault) {
                // A slow link is set before the connection is made.
                Fault::None | Fault::Slow { .. } => {}
                Fault::Blackhole => {
                    // Hold the sockets, move nothing, until the ends give up.
                    let _keep = (ar, aw, br, bw);
                    std::future::pending::<()>().await;
                    return;
                }
                Fault::Reset => {
                    for s in [ar.reunite(aw), br.reunite(bw)].into_iter().flatten() {
                        let _ = s.set_zero_linger();
                    }
                    return;
                }
            },
            n = ar.read(&mut abuf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if bw.write_all(&abuf[..n]).await.is_err() { return },
            },
            n = br.read(&mut bbuf) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if aw.write_all(&bbuf[..n]).await.is_err() { return },
            },
        }
    }
}

/// One direction of a slow link: each chunk read is held until `delay` after it was read,
/// and the link moves at most `rate` bytes a second (a reader task and a writer task joined by
/// a queue, so the delay is latency, not a stall).
async fn slow(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    rate: u64,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        let mut next = tokio::time::Instant::now();
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    // The bandwidth: this chunk takes n / rate seconds on the wire (a timer
                    // that wakes late is caught up, unless the link was idle).
                    let now = tokio::time::Instant::now();
                    if next + Duration::from_millis(100) < now {
                        next = now;
                    }
                    next += Duration::from_secs_f64(n as f64 / rate as f64);
                    tokio::time::sleep_until(next).await;
                    if tx.send((next + delay, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((at, bytes)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// A through the proxy, B direct; both with 1 s keepalive pings and a 2 s timeout, as the
/// router. Returns them paired.
async fn pair_through_proxy(
    r: &TestRouter,
    via: SocketAddr,
    name: &str,
) -> (
    jumpstarter_router::RouterStream,
    jumpstarter_router::RouterStream,
) {
    let tok = token(name);
    let client = |addr: SocketAddr| {
        ClientBuilder::new(format!("http://{addr}"))
            .keepalive_interval(Some(Duration::from_secs(1)))
            .keepalive_timeout(Duration::from_secs(2))
    };
    let mut a = client(via).connect(&tok).await.unwrap();
    let mut b = client(r.addr).connect(&tok).await.unwrap();
    a.write_all(b"hello").await.unwrap();
    a.flush().await.unwrap();
    let mut buf = [0u8; 5];
    within(10, "the first bytes", b.read_exact(&mut buf))
        .await
        .unwrap();
    b.write_all(b"hello").await.unwrap();
    b.flush().await.unwrap();
    within(10, "the first bytes back", a.read_exact(&mut buf))
        .await
        .unwrap();
    (a, b)
}

fn router_with_keepalive() -> Router {
    let mut keepalive = Keepalive::default();
    keepalive.interval = Some(Duration::from_secs(1));
    keepalive.timeout = Duration::from_secs(2);
    Router::builder(Auth::new(KEY)).keepalive(keepalive).build()
}

/// A blackhole between A and the router: A's keepalive fails A, the router's fails A's call
/// and so aborts B: both within the keepalive (1 s + 2 s) plus 1 s, never EOF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_fails_both_ends_within_the_keepalive_timeout() {
    let r = TestRouter::with(router_with_keepalive()).await;
    let (via, fault) = proxy(r.addr).await;
    let (mut a, mut b) = pair_through_proxy(&r, via, "blackhole").await;
    let t = std::time::Instant::now();
    fault.send(Fault::Blackhole).unwrap();
    let (ea, eb) = tokio::join!(
        read_to_error(&mut a, 5, "A behind the blackhole"),
        read_to_error(&mut b, 5, "B, A's peer"),
    );
    let took = t.elapsed();
    eprintln!(
        "blackhole: A failed ({:?}), B failed ({:?}) within {took:?}",
        ea.kind(),
        eb.kind()
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
    // B learns it from the router: a GOAWAY that says A's connection was lost.
    assert_eq!(eb.kind(), std::io::ErrorKind::ConnectionAborted, "{eb:?}");
    assert!(eb.to_string().contains("peer vanished"), "{eb}");
    assert!(eb.to_string().contains("keepalive"), "{eb}");
    eprintln!("blackhole: B was told: {eb}");
    r.wait_for("the pair to end", |s| s.active == 0).await;
    let m = r.router.metrics();
    assert_eq!(
        (m.calls(CallResult::Lost), m.calls(CallResult::PeerGone)),
        (1, 1)
    );
}

/// The proxy resets both of its sockets mid-stream: an error on both ends, at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_mid_stream_fails_both_ends() {
    let r = TestRouter::with(router_with_keepalive()).await;
    let (via, fault) = proxy(r.addr).await;
    let (mut a, mut b) = pair_through_proxy(&r, via, "reset").await;
    // Data is flowing when the reset comes.
    let sender = tokio::spawn(async move {
        let r = send_pattern(&mut a, 1 << 30, 1, 64 * 1024).await;
        (a, r)
    });
    let mut buf = vec![0u8; 1 << 20];
    within(10, "data flowing", b.read_exact(&mut buf))
        .await
        .unwrap();
    fault.send(Fault::Reset).unwrap();
    let eb = read_to_error(&mut b, 2, "B after the reset").await;
    let (_a, ra) = within(5, "A's writes to fail", sender).await.unwrap();
    let ea = ra.expect_err("A's 1 GiB write must fail after the reset");
    eprintln!("reset: A {:?}, B {:?}", ea.kind(), eb.kind());
    r.wait_for("the pair to end", |s| s.active == 0).await;
}

/// 50 ms of added latency each way and 10 MiB/s between A and the router: 64 MiB arrive
/// intact. With the default 4 MiB stream window the bandwidth-delay product (10 MiB/s x 0.1 s
/// = 1 MiB) fits, so the link is filled; the throughput is printed against the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_link_delivers_every_byte() {
    const MIB: u64 = 1024 * 1024;
    let r = TestRouter::start().await;
    let (via, fault) = proxy(r.addr).await;
    fault
        .send(Fault::Slow {
            delay: Duration::from_millis(50),
            bytes_per_sec: 10 * MIB,
        })
        .unwrap();
    let tok = token("slow");
    let mut a = ClientBuilder::new(format!("http://{via}"))
        .connect(&tok)
        .await
        .unwrap();
    let mut b = ClientBuilder::new(r.endpoint())
        .connect(&tok)
        .await
        .unwrap();
    let t = std::time::Instant::now();
    let sender = tokio::spawn(async move {
        let sha = send_pattern(&mut a, 64 * MIB, 3, 64 * 1024).await.unwrap();
        a.shutdown().await.unwrap();
        (a, sha)
    });
    let got = within(60, "64 MiB over the slow link", recv_all(&mut b))
        .await
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let (mut a, sha) = sender.await.unwrap();
    assert_eq!(got, (64 * MIB, sha));
    b.shutdown().await.unwrap();
    let mut rest = Vec::new();
    within(10, "A's end", a.read_to_end(&mut rest))
        .await
        .unwrap();
    eprintln!(
        "slow link: 64 MiB in {secs:.1} s = {:.1} MiB/s over a 10 MiB/s, 100 ms round-trip link",
        64.0 / secs
    );
}
