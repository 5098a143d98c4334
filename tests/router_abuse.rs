//! The router under abuse, over loopback: many callers that never get a peer (bounded memory,
//! caps with RESOURCE_EXHAUSTED, all cleaned up by the pairing timeout), honest pairs served
//! meanwhile.
#![cfg(all(feature = "router", feature = "client"))]

mod support;

use std::time::Duration;

use jumpstarter_router::proto::router_service_client::RouterServiceClient;
use jumpstarter_router::proto::StreamRequest;
use jumpstarter_router::router::{Auth, Router};
use support::*;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn channel(r: &TestRouter) -> Channel {
    Endpoint::from_shared(r.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Opens a `Stream` call on `channel` as stream `stream`, with an open request stream that
/// sends one message; returns the response (or the status it was refused with).
async fn open(
    channel: &Channel,
    stream: &str,
) -> Result<tonic::Streaming<jumpstarter_router::proto::StreamResponse>, tonic::Status> {
    use futures_util::StreamExt;
    let first = StreamRequest {
        payload: b"x".to_vec().into(),
        frame_type: 0,
    };
    let requests = futures_util::stream::iter([first]).chain(futures_util::stream::pending());
    let mut req = tonic::Request::new(requests);
    let token = Auth::new(KEY)
        .mint(stream, Duration::from_secs(600))
        .unwrap();
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    RouterServiceClient::new(channel.clone())
        .stream(req)
        .await
        .map(|r| r.into_inner())
}

/// 1,000 callers with distinct valid tokens that never get a peer: memory per caller is small
/// and bounded, a cap refuses the next one with RESOURCE_EXHAUSTED (a caller whose peer waits
/// still pairs), honest pairs go on, and the pairing timeout removes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaired_callers_are_capped_and_cleaned_up() {
    const N: usize = 1000;
    let r = TestRouter::with(
        Router::builder(Auth::new(KEY))
            .pairing_timeout(Some(Duration::from_secs(3)))
            .max_pending(Some(N))
            .build(),
    )
    .await;
    // 8 connections (HTTP/2 allows a few hundred streams on each).
    let mut channels = Vec::new();
    for _ in 0..8 {
        channels.push(channel(&r).await);
    }
    let before = rss_kib();
    let mut waiting = Vec::new();
    for i in 0..N {
        let c = &channels[i % channels.len()];
        waiting.push(
            within(10, "a waiting caller", open(c, &format!("lonely-{i}")))
                .await
                .unwrap(),
        );
    }
    r.wait_for("all to wait", |s| s.pending == N).await;
    let per_caller = (rss_kib().saturating_sub(before)) as f64 / N as f64;
    eprintln!("router + client RSS per pending caller: {per_caller:.1} KiB");
    assert!(per_caller < 64.0, "{per_caller} KiB per pending caller");

    // One more would wait: refused, and says why.
    let err = open(&channels[0], "one-too-many").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("limit 1000"), "{err:?}");
    // A caller whose peer waits pairs all the same.
    let mut peer_of_0 = open(&channels[1], "lonely-0").await.unwrap();
    let mut first = waiting.swap_remove(0);
    let m = within(10, "the pair's first frame", peer_of_0.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"x");
    let m = within(10, "the pair's first frame", first.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.payload[..], b"x");
    // The pairing freed a slot: an honest pair (whose first caller waits too) goes through
    // while the table holds 999 waiters.
    r.wait_for("the pair", |s| s.pending == N - 1).await;
    let tok = r.token("honest");
    let (mut a, mut b) = pair_up(&r.endpoint(), &tok, b"hello").await;
    send_and_finish(&mut a, &mut b, b"bye").await;
    send_and_finish(&mut b, &mut a, b"bye").await;

    // The pairing timeout ends every waiting call with DEADLINE_EXCEEDED.
    for mut w in waiting {
        let status = within(10, "the pairing timeout", w.message())
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded);
    }
    r.wait_for("the table to empty", |s| s.pending == 0).await;
}

/// The per-connection cap: one connection's waiting callers are limited, another
/// connection's are not.
#[tokio::test]
async fn waiting_callers_per_connection_are_capped() {
    let r = TestRouter::with(
        Router::builder(Auth::new(KEY))
            .max_pending_per_connection(Some(2))
            .build(),
    )
    .await;
    let (one, two) = (channel(&r).await, channel(&r).await);
    let _a = open(&one, "a").await.unwrap();
    let _b = open(&one, "b").await.unwrap();
    let err = open(&one, "c").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("on this connection"), "{err:?}");
    let _c = open(&two, "c").await.unwrap();
    r.wait_for("three waiting", |s| s.pending == 3).await;
}

/// Connections that never finish their handshake: 300 that send nothing and 300 that stop
/// inside the HTTP/2 preface, on a router with a 1 s handshake timeout. Honest callers pair
/// meanwhile, and every stalled connection is closed by the router within the timeout + 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_the_handshake_time_out() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let r = TestRouter::with(
        Router::builder(Auth::new(KEY))
            .handshake_timeout(Duration::from_secs(1))
            .build(),
    )
    .await;
    let start = tokio::time::Instant::now();
    let mut stalled = Vec::new();
    for i in 0..600 {
        let mut tcp = tokio::net::TcpStream::connect(r.addr).await.unwrap();
        if i % 2 == 1 {
            tcp.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        }
        stalled.push(tcp);
    }
    // Honest callers connect and pair while those hang.
    let (mut a, mut b) = pair_up(&r.endpoint(), &r.token("honest"), b"hello").await;
    send_and_finish(&mut a, &mut b, b"bye").await;
    // Each stalled connection is closed by the router: EOF or a reset, never a hang.
    for mut tcp in stalled {
        let mut buf = [0u8; 64];
        let closed = within(5, "the handshake timeout", async {
            loop {
                match tcp.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    // The server's own preface and settings: keep reading.
                    Ok(_) => {}
                }
            }
        });
        closed.await;
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(4), "{took:?}");
    // And the router still serves.
    let (mut a, mut b) = pair_up(&r.endpoint(), &r.token("after"), b"hello").await;
    send_and_finish(&mut a, &mut b, b"bye").await;
}
