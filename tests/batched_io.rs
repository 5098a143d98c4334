//! The socket I/O under HTTP/2 (`src/h2io/`: `BatchedIo`, through `Transport`) end to end as
//! it runs: under TLS and h2 on both the client and the router, with batching on (the
//! default), off (`batched_io(false)`), and on one side only.
//!
//! `BatchedIo` answers a flush with bytes still buffered and writes them at the owner's next
//! read, which is sound only because h2 reads on every poll. If a dependency upgrade broke
//! that, a deferred flush would never go out: the ping-pong below would stall (and fail on
//! its deadline) rather than pass slowly. A batch cut, reordered or lost would fail the bulk
//! transfers' checksums.
#![cfg(all(feature = "router", feature = "client"))]

mod support;

use jumpstarter_router::router::{Auth, Router, ServerTls};
use jumpstarter_router::ClientBuilder;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use support::*;

/// Write sizes that cross `BatchedIo`'s thresholds: under its eager-flush size (4 KiB),
/// between it and a direct write (32 KiB), past a direct write, and past a 64 KiB DATA frame.
const SIZES: &[usize] = &[
    1,
    3,
    100,
    1000,
    4095,
    4097,
    16 * 1024,
    32 * 1024,
    70_000,
    100_000,
];

/// Writes `len` pattern bytes in writes of the sizes above, flushing after every third, then
/// shuts the write half down (GOAWAY).
async fn send_varied<W: AsyncWrite + Unpin>(w: &mut W, len: u64, seed: u64) {
    let mut buf = vec![0u8; *SIZES.iter().max().unwrap()];
    let (mut at, mut i) = (0u64, 0usize);
    while at < len {
        let n = SIZES[i % SIZES.len()].min((len - at) as usize);
        fill_pattern(&mut buf[..n], at, seed);
        w.write_all(&buf[..n]).await.unwrap();
        if i % 3 == 2 {
            w.flush().await.unwrap();
        }
        at += n as u64;
        i += 1;
    }
    w.shutdown().await.unwrap();
}

/// One session through the router: a ping-pong of small flushed messages, then bulk both ways
/// at once, then a clean close on both sides.
async fn session(router_batched: bool, clients_batched: bool) {
    let router = Router::builder(Auth::new(KEY))
        .batched_io(router_batched)
        .build();
    let tls = ServerTls::self_signed("localhost").unwrap();
    let r = TestRouter::with_tls(router, Some(tls)).await;
    let client = || {
        ClientBuilder::new(r.tls_endpoint())
            .insecure_skip_verify(true)
            .batched_io(clients_batched)
    };
    let tok = token("batched-io");
    let mut a = client().connect(&tok).await.unwrap();
    let mut b = client().connect(&tok).await.unwrap();

    // Each small message goes out on its flush alone: nothing else would carry it.
    within(60, "the ping-pong of small messages", async {
        for i in 0..300u64 {
            let len = 1 + (i as usize * 37) % 200;
            let ping = test_bytes(len, i as u8);
            a.write_all(&ping).await.unwrap();
            a.flush().await.unwrap();
            let mut got = vec![0u8; len];
            b.read_exact(&mut got).await.unwrap();
            assert_eq!(got, ping, "ping {i}");
            let pong = test_bytes(len, !(i as u8));
            b.write_all(&pong).await.unwrap();
            b.flush().await.unwrap();
            a.read_exact(&mut got).await.unwrap();
            assert_eq!(got, pong, "pong {i}");
        }
    })
    .await;

    // Bulk both ways at once, in writes of every size class.
    const LEN: u64 = 6 * 1024 * 1024;
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let (_, _, at_b, at_a) = within(120, "the bulk transfers", async {
        tokio::join!(
            send_varied(&mut a_write, LEN, 11),
            send_varied(&mut b_write, LEN, 12),
            recv_all(&mut b_read),
            recv_all(&mut a_read),
        )
    })
    .await;
    assert_eq!(at_b.unwrap(), (LEN, pattern_sha(LEN, 11)), "a -> b");
    assert_eq!(at_a.unwrap(), (LEN, pattern_sha(LEN, 12)), "b -> a");

    let (mut a, mut b) = (a_read.unsplit(a_write), b_read.unsplit(b_write));
    within(10, "the clean close", async {
        let (x, y) = tokio::join!(a.close(), b.close());
        x.unwrap();
        y.unwrap();
    })
    .await;
    assert!(a.error().is_none() && b.error().is_none());
}

#[tokio::test]
async fn batched_on_both_sides_under_tls_and_h2() {
    session(true, true).await;
}

#[tokio::test]
async fn batching_off_on_both_sides() {
    session(false, false).await;
}

#[tokio::test]
async fn batched_router_and_unbatched_clients() {
    session(true, false).await;
}
