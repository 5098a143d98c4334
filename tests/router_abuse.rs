//! The router under abuse, over loopback: many callers that never get a peer (bounded memory,
//! caps with RESOURCE_EXHAUSTED, all cleaned up by the pairing timeout), honest pairs served
//! meanwhile.
#![cfg(all(feature = "router", feature = "client"))]

mod support;

use std::time::Duration;

use jumpstarter_router::proto::router_service_client::RouterServiceClient;
use jumpstarter_router::router::{Auth, Router};
use support::*;
use tonic::transport::Channel;
use tonic::Code;

fn rss_kib() -> u64 {
    proc_status_kib(std::process::id(), "VmRSS")
}

/// Opens a `Stream` call on `channel` as stream `stream`, with an open request stream that
/// sends one message; returns the response (or the status it was refused with).
async fn open(
    channel: &Channel,
    stream: &str,
) -> Result<tonic::Streaming<jumpstarter_router::proto::StreamResponse>, tonic::Status> {
    let mut req = tonic::Request::new(raw::data_then_open(b"x"));
    let token = token(stream);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    RouterServiceClient::new(channel.clone())
        .stream(req)
        .await
        .map(|r| r.into_inner())
}

/// 1,000 callers (`ROUTER_UNPAIRED_CALLERS`: 10,000 for the README's figure) with distinct
/// valid tokens that never get a peer: memory per caller is small and bounded, a cap refuses
/// the next one with RESOURCE_EXHAUSTED (a caller whose peer waits still pairs), honest pairs
/// go on, and the pairing timeout removes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaired_callers_are_capped_and_cleaned_up() {
    let n: usize = env_or("ROUTER_UNPAIRED_CALLERS", 1000);
    // Long enough to open them all.
    let pairing_timeout = Duration::from_secs(3 + n as u64 / 250);
    let r = TestRouter::with(
        Router::builder(Auth::new(KEY))
            .pairing_timeout(Some(pairing_timeout))
            .max_pending(Some(n))
            .build(),
    )
    .await;
    // 8 connections or more (hyper allows 200 streams on each; we use 100).
    let mut channels = Vec::new();
    for _ in 0..(n / 100).max(8) {
        channels.push(r.channel().await);
    }
    let before = rss_kib();
    let mut waiting = Vec::new();
    for i in 0..n {
        let c = &channels[i % channels.len()];
        waiting.push(
            within(10, "a waiting caller", open(c, &format!("lonely-{i}")))
                .await
                .unwrap(),
        );
    }
    r.wait_for("all to wait", |s| s.pending == n).await;
    let per_caller = (rss_kib().saturating_sub(before)) as f64 / n as f64;
    eprintln!("router + client RSS per pending caller: {per_caller:.1} KiB");
    assert!(per_caller < 64.0, "{per_caller} KiB per pending caller");

    // One more would wait: refused, and says why.
    let err = open(&channels[0], "one-too-many").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains(&format!("limit {n}")), "{err:?}");
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
    r.wait_for("the pair", |s| s.pending == n - 1).await;
    let tok = token("honest");
    let (mut a, mut b) = pair_up(&r.endpoint(), &tok, b"hello").await;
    send_and_finish(&mut a, &mut b, b"bye").await;
    send_and_finish(&mut b, &mut a, b"bye").await;

    // The pairing timeout ends every waiting call with DEADLINE_EXCEEDED.
    for mut w in waiting {
        let status = within(
            10 + pairing_timeout.as_secs(),
            "the pairing timeout",
            w.message(),
        )
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
    let (one, two) = (r.channel().await, r.channel().await);
    let _a = open(&one, "a").await.unwrap();
    let _b = open(&one, "b").await.unwrap();
    let err = open(&one, "c").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("on this connection"), "{err:?}");
    let _c = open(&two, "c").await.unwrap();
    r.wait_for("three waiting", |s| s.pending == 3).await;
}

/// Opens `n` connections to `addr` that send nothing and `n` that send `partial` and stop; then
/// runs `honest` (callers that must get through meanwhile), and checks that the router closes
/// every stalled connection (EOF or a reset, never a hang) within its 1 s handshake timeout
/// + 1 s. Returns how long it took from the first connection to the last close.
async fn stall_handshakes<F: std::future::Future<Output = ()>>(
    addr: std::net::SocketAddr,
    n: usize,
    partial: &[u8],
    honest: F,
) -> Duration {
    let start = tokio::time::Instant::now();
    let mut stalled = Vec::new();
    for i in 0..2 * n {
        let part = if i % 2 == 1 { partial } else { &[][..] };
        stalled.push(attack::stalled_connection(addr, part).await.unwrap());
    }
    honest.await;
    for tcp in stalled {
        within(5, "the handshake timeout", attack::closed_by_router(tcp)).await;
    }
    let took = start.elapsed();
    assert!(took < Duration::from_secs(4), "{took:?}");
    took
}

/// Connections that never finish their handshake: 1,000 that send nothing and 1,000 that stop
/// inside the HTTP/2 preface, on a router with a 1 s handshake timeout. Honest callers pair
/// meanwhile, and every stalled connection is closed by the router within the timeout + 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_finish_the_handshake_time_out() {
    let r = TestRouter::with(
        Router::builder(Auth::new(KEY))
            .handshake_timeout(Duration::from_secs(1))
            .build(),
    )
    .await;
    let honest = async {
        let (mut a, mut b) = pair_up(&r.endpoint(), &token("honest"), b"hello").await;
        send_and_finish(&mut a, &mut b, b"bye").await;
    };
    let took = stall_handshakes(r.addr, 1000, attack::PARTIAL_PREFACE, honest).await;
    eprintln!("2,000 stalled plaintext handshakes closed within {took:?}");
    // And the router still serves.
    let (mut a, mut b) = pair_up(&r.endpoint(), &token("after"), b"hello").await;
    send_and_finish(&mut a, &mut b, b"bye").await;
}

/// The same over TLS: 1,000 connections that never send their ClientHello and 1,000 that stop
/// inside it; honest TLS callers pair meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_that_never_finish_the_handshake_time_out() {
    use jumpstarter_router::router::ServerTls;
    use jumpstarter_router::ClientBuilder;
    let router = Router::builder(Auth::new(KEY))
        .handshake_timeout(Duration::from_secs(1))
        .build();
    let tls = ServerTls::self_signed("localhost").unwrap();
    let r = TestRouter::with_tls(router, Some(tls)).await;
    let endpoint = r.tls_endpoint();
    let pair = |name: &'static str| {
        let endpoint = endpoint.clone();
        async move {
            let tok = token(name);
            let client = ClientBuilder::new(&endpoint).insecure_skip_verify(true);
            let mut a = within(10, "TLS connect", client.connect(&tok))
                .await
                .unwrap();
            let mut b = within(10, "TLS connect", client.connect(&tok))
                .await
                .unwrap();
            send_and_finish(&mut a, &mut b, b"over tls").await;
            send_and_finish(&mut b, &mut a, b"back").await;
        }
    };
    let took = stall_handshakes(
        r.addr,
        1000,
        attack::PARTIAL_CLIENT_HELLO,
        pair("tls-honest"),
    )
    .await;
    eprintln!("2,000 stalled TLS handshakes closed within {took:?}");
    pair("tls-after").await;
}

/// A request whose header list is over the limit (a 1 MiB header; hyper's limit is 16 KiB) is
/// refused on its own: the caller gets an error, never a session, and the router goes on
/// serving others, on the same connection too.
#[tokio::test]
async fn header_lists_over_the_limit_are_refused() {
    let r = TestRouter::start().await;
    let tcp = tokio::net::TcpStream::connect(r.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let request = |extra: Option<String>| {
        let mut req = attack::stream_request(r.addr, &format!("Bearer {}", token("big-headers")));
        if let Some(v) = extra {
            req = req.header("x-padding", v);
        }
        req.body(()).unwrap()
    };
    let mut client = within(5, "ready", client.ready()).await.unwrap();
    let (response, _body) = client
        .send_request(request(Some("a".repeat(1 << 20))), true)
        .unwrap();
    match within(10, "the refusal", response).await {
        // h2 answers 431, or resets the stream: either way no call.
        Ok(resp) => assert_eq!(resp.status(), 431, "{resp:?}"),
        Err(e) => assert!(e.is_reset() || e.is_go_away(), "{e:?}"),
    }
    assert_eq!(r.router.stats().pending, 0);
    // The same connection still carries a normal call (refused here for its lone caller's
    // missing body, after it reached the router: it was heard).
    if !conn.is_finished() {
        let mut client = within(5, "ready", client.ready()).await.unwrap();
        let (response, _body) = client.send_request(request(None), true).unwrap();
        let resp = within(10, "a normal call", response).await.unwrap();
        assert_eq!(resp.status(), 200, "{resp:?}");
    }
    // And other callers pair.
    let (mut a, mut b) = pair_up(&r.endpoint(), &token("after"), b"hello").await;
    send_and_finish(&mut a, &mut b, b"bye").await;
}

/// Malformed input while an honest pair moves 8 MiB: 2 connections send 25 rounds of each kind
/// (a 4 GiB length prefix, the compressed flag, a non-protobuf message, each after pairing
/// with a waiting peer; a 1 MiB header list). Every sender gets its clear status
/// (OUT_OF_RANGE, INTERNAL) and every peer ABORTED, never a clean end; the header lists are
/// refused; the honest pair delivers every byte; nothing is left active or pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_clear_statuses_while_honest_pairs_go_on() {
    const ROUNDS: usize = 25;
    let r = TestRouter::start().await;
    let addr = r.addr;
    let workers: Vec<_> = (0..2)
        .map(|w| {
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let (mut client, mut connections) = (None, 0);
                for i in 0..ROUNDS * attack::Malformed::ALL.len() {
                    let kind = attack::Malformed::ALL[i % attack::Malformed::ALL.len()];
                    let name = format!("malformed-{w}-{i}");
                    // The router may close a connection after a refused header list.
                    let outcome = attack::malformed_pair_reconnecting(
                        &mut client,
                        addr,
                        &name,
                        kind,
                        &mut connections,
                    )
                    .await
                    .unwrap();
                    outcomes.push(outcome);
                }
                outcomes
            })
        })
        .collect();
    let (a, mut b) = pair_up(&r.endpoint(), &token("honest"), b"hello").await;
    one_way(a, &mut b, 8 << 20, 9).await;
    for w in workers {
        let outcomes = within(60, "the malformed rounds", w).await.unwrap();
        assert_eq!(outcomes.len(), ROUNDS * attack::Malformed::ALL.len());
        for o in outcomes {
            assert!(o.as_it_must(), "{o:?}");
        }
    }
    r.wait_for("no pair or caller left", |s| {
        s.pending == 0 && s.active <= 1
    })
    .await;
}

/// HTTP/2 rapid reset (CVE-2023-44487): connections that open `Stream` calls (valid and bad
/// tokens) and reset them at once, as fast as they can, through an honest transfer and 1 s
/// more. The router stays up, its
/// pending table and memory stay bounded, and an honest pair moves 32 MiB meanwhile (its
/// throughput against an undisturbed run is printed, not asserted: speed is for benches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_leaves_the_router_serving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const MIB: u64 = 1024 * 1024;
    let r = TestRouter::start().await;

    async fn honest(r: &TestRouter, name: &str) -> Duration {
        let (a, mut b) = pair_up(&r.endpoint(), &token(name), b"hello").await;
        let (mut a, took) = one_way(a, &mut b, 32 * MIB, 5).await;
        b.shutdown().await.unwrap();
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).await.unwrap();
        took
    }
    let undisturbed = honest(&r, "before").await;
    let before = rss_kib();

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let attackers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(attack::rapid_reset(r.addr, stopped.clone())))
        .collect();
    let during = honest(&r, "during").await;
    tokio::time::sleep(Duration::from_secs(1)).await; // the attack's length, not a sync
    stop.send_replace(true);
    let mut tally = attack::Tally::default();
    for a in attackers {
        tally += within(10, "the attackers to stop", a).await.unwrap();
    }
    let (opened, connections) = (tally.attempts, tally.connections);
    let grown = rss_kib().saturating_sub(before);
    eprintln!(
        "rapid reset: {opened} streams opened and reset on {connections} connections; honest 32 MiB in {during:?} (undisturbed {undisturbed:?}, {:.2}x the throughput); RSS +{grown} KiB",
        undisturbed.as_secs_f64() / during.as_secs_f64()
    );
    assert!(opened > 1000, "the attack did not run: {opened}");
    assert!(grown < 64 * 1024, "RSS grew {grown} KiB");
    // Nothing is left behind, and the router still pairs.
    r.wait_for("no waiting caller left", |s| s.pending == 0)
        .await;
    let _ = honest(&r, "after").await;
}
