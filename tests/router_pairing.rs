//! The router service: pairing, forwarding, half-close and aborts, over loopback.
#![cfg(all(feature = "router", feature = "client"))]

use support::raw;
mod support;

use std::io::ErrorKind;
use std::time::Duration;

use jumpstarter_router::router::{Auth, Router};
use jumpstarter_router::{connect, ClientBuilder, StreamOptions};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1024 * 1024;

#[tokio::test]
async fn half_close_through_the_router() {
    let r = TestRouter::start().await;
    let tok = token("half-close");
    let mut a = connect(&r.endpoint(), &tok).await.unwrap();
    let mut b = connect(&r.endpoint(), &tok).await.unwrap();

    // A sends a request and finishes.
    let a_task = tokio::spawn(async move {
        let sent = send_pattern(&mut a, MIB, 1, 16 * 1024).await.unwrap();
        a.shutdown().await.unwrap();
        // ... and still receives all of B's answer after its own shutdown.
        let (n, sha) = recv_all(&mut a).await.unwrap();
        (sent, n, sha)
    });
    // B reads to EOF, then sends 16 MiB, then finishes.
    let (n, sha) = within(30, "B reads A", recv_all(&mut b)).await.unwrap();
    assert_eq!((n, sha), (MIB, pattern_sha(MIB, 1)));
    let b_sent = send_pattern(&mut b, 16 * MIB, 2, 64 * 1024).await.unwrap();
    b.shutdown().await.unwrap();
    let (_, a_n, a_sha) = within(30, "A reads B", a_task).await.unwrap();
    assert_eq!(a_n, 16 * MIB);
    assert_eq!(a_sha, b_sent);
    r.wait_for("pair to end", |s| s.active == 0).await;
    let s = r.router.stats();
    assert_eq!(s.pairs_total, 1);
    assert_eq!(
        s.aborts_total, 0,
        "a clean session counted as an abort: {s:?}"
    );
    assert!(s.bytes_forwarded >= 17 * MIB);
}

#[tokio::test]
async fn lone_caller_leaving_empties_the_pending_table() {
    let r = TestRouter::start().await;
    let tok = token("lonely");
    let a = connect(&r.endpoint(), &tok).await.unwrap();
    r.wait_for("caller to wait", |s| s.pending == 1).await;
    drop(a);
    r.wait_for("pending table to empty", |s| s.pending == 0)
        .await;
}

#[tokio::test]
async fn peer_abort_is_an_error_not_eof() {
    let r = TestRouter::start().await;
    let (a, mut b) = pair_up(&r.endpoint(), &token("abort"), b"hello").await;
    drop(a); // no shutdown: abort
    let err = read_to_error(&mut b, 2, "abort to reach B").await;
    // The dropped stream's RST_STREAM frame went through the router: a reset, not a vague end.
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err:?}");
    // The router forwards the RST_STREAM frame and keeps the pair; it ends the pair when the
    // dropped side's request ends without GOAWAY (after its linger of at most 1 s).
    let t = std::time::Instant::now();
    r.wait_for("the pair to end", |s| s.active == 0).await;
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(r.router.stats().aborts_total, 1);
}

/// The router is a transparent pipe: every frame arrives unchanged (empty DATA, PING with and
/// without payload, unknown types, RST_STREAM) and forwarding goes on after a RST_STREAM, as
/// in Jumpstarter's Go router. Raw tonic clients on both sides.
#[tokio::test]
async fn every_frame_passes_unchanged_and_forwarding_goes_on_after_rst_stream() {
    use bytes::Bytes;
    use jumpstarter_router::Frame;
    use raw::RawCall;

    let r = TestRouter::start().await;
    let tok = token("transparent");
    let mut a = RawCall::open_with_token(&r.endpoint(), &tok).await.unwrap();
    let mut b = RawCall::open_with_token(&r.endpoint(), &tok).await.unwrap();
    let b_ = |s: &'static str| Bytes::from_static(s.as_bytes());
    let frames = vec![
        Frame::Data(Bytes::new()),
        Frame::Data(b_("hello")),
        Frame::Ping(Bytes::new()),
        Frame::Ping(b_("ping payload")),
        Frame::Unknown {
            frame_type: 9,
            payload: b_("xyz"),
        },
        Frame::Unknown {
            frame_type: 1 << 30,
            payload: Bytes::new(),
        },
        Frame::RstStream(b_("why")),
        Frame::Data(b_("after")),
    ];
    for f in &frames {
        a.send(f.clone()).await;
    }
    for (i, want) in frames.iter().enumerate() {
        let got = b.next_frame().await.unwrap();
        assert_eq!(got.as_ref(), Some(want), "frame {i}");
    }
    // Both ways, and after a RST_STREAM in each direction the pair is still up.
    b.send(Frame::rst_stream()).await;
    b.send_data(b"back").await;
    assert_eq!(a.next_frame().await.unwrap(), Some(Frame::rst_stream()));
    assert_eq!(a.next_frame().await.unwrap(), Some(Frame::Data(b_("back"))));
    let s = r.router.stats();
    assert_eq!((s.active, s.aborts_total), (1, 0), "{s:?}");
    // GOAWAY each way, then the ends of both requests: a clean end of both calls.
    a.send(Frame::go_away()).await;
    assert_eq!(b.next_frame().await.unwrap(), Some(Frame::go_away()));
    b.send(Frame::go_away()).await;
    assert_eq!(a.next_frame().await.unwrap(), Some(Frame::go_away()));
    a.end();
    b.end();
    assert_eq!(a.next_frame().await.unwrap(), None);
    assert_eq!(b.next_frame().await.unwrap(), None);
    r.wait_for("the pair to end", |s| s.active == 0).await;
    assert_eq!(r.router.stats().aborts_total, 0);
}

#[tokio::test]
async fn third_caller_does_not_hijack_a_pair() {
    let r = TestRouter::start().await;
    let tok = token("trio");
    let (mut a, mut b) = pair_up(&r.endpoint(), &tok, b"a->b").await;
    r.wait_for("pair", |s| s.active == 1 && s.pending == 0)
        .await;

    // A third caller of the same stream id waits on its own; the pair is untouched.
    let mut c = connect(&r.endpoint(), &tok).await.unwrap();
    c.write_all(b"intruder").await.unwrap();
    c.flush().await.unwrap();
    r.wait_for("third caller to wait", |s| s.pending == 1).await;
    send_and_finish(&mut b, &mut a, b"b->a").await;
    a.shutdown().await.unwrap();
    let mut got_b = Vec::new();
    within(10, "B reads A's end", b.read_to_end(&mut got_b))
        .await
        .unwrap();
    assert!(got_b.is_empty(), "B got the intruder's bytes: {got_b:?}");
    // The intruder never saw a peer.
    let mut one = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(200), c.read(&mut one))
            .await
            .is_err()
    );
    drop(c);
    r.wait_for("all gone", |s| s.pending == 0 && s.active == 0)
        .await;
}

#[tokio::test]
async fn expired_token_drops_a_waiting_caller() {
    let r = TestRouter::start().await;
    let tok = jumpstarter_router::router::Auth::new(KEY)
        .mint("short-lived", Duration::from_secs(1))
        .unwrap();
    let mut a = connect(&r.endpoint(), &tok).await.unwrap();
    r.wait_for("caller to wait", |s| s.pending == 1).await;
    let mut buf = [0u8; 1];
    let err = within(5, "expiry", a.read(&mut buf)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err:?}");
    assert!(err.to_string().contains("token expired"), "{err}");
    r.wait_for("pending table to empty", |s| s.pending == 0)
        .await;
}

#[tokio::test]
async fn pairing_timeout_drops_a_waiting_caller() {
    let router =
        jumpstarter_router::router::Router::builder(jumpstarter_router::router::Auth::new(KEY))
            .pairing_timeout(Some(Duration::from_millis(300)))
            .build();
    let r = TestRouter::with(router).await;
    let mut a = connect(&r.endpoint(), &token("nobody-comes"))
        .await
        .unwrap();
    let mut buf = [0u8; 1];
    let err = within(5, "pairing timeout", a.read(&mut buf))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err:?}");
    assert!(err.to_string().contains("pairing timeout"), "{err}");
    assert_eq!(r.router.stats().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_pairs() {
    // 200 in CI; `ROUTER_LOAD_PAIRS=1000 cargo test --release --all-features --test
    // router_pairing concurrent -- --nocapture` for the load figure.
    let pairs: usize = env_or("ROUTER_LOAD_PAIRS", 200);
    let started = std::time::Instant::now();
    let r = TestRouter::start().await;
    // Streams multiplexed over a few shared connections, as an exporter host would.
    let builder = jumpstarter_router::ClientBuilder::new(r.endpoint());
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(builder.channel().await.unwrap());
    }
    load_pairs(&channels, pairs, 300, |i| token(&format!("pair-{i}"))).await;
    r.wait_for("all pairs to end", |s| s.active == 0 && s.pending == 0)
        .await;
    let s = r.router.stats();
    assert_eq!(s.pairs_total, pairs as u64);
    assert_eq!(s.aborts_total, 0, "{s:?}");
    assert_eq!(s.bytes_forwarded, 2 * pairs as u64 * MIB);
    let peak = proc_status_kib(std::process::id(), "VmHWM");
    eprintln!(
        "{pairs} pairs x 1 MiB each way: {:.1} s, peak RSS {peak} kB (router and all clients in one process)",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn an_oversized_frame_aborts_both_sides_with_a_clear_error() {
    let limit = 1024 * 1024;
    let r = TestRouter::with(
        Router::builder(Auth::new(KEY))
            .max_message_size(limit)
            .build(),
    )
    .await;
    let tok = token("oversized");
    // A sender whose frames are larger than the router takes.
    let mut a = ClientBuilder::new(r.endpoint())
        .stream_options(StreamOptions::new().max_payload(2 * limit))
        .connect(&tok)
        .await
        .unwrap();
    let mut b = connect(&r.endpoint(), &tok).await.unwrap();
    b.flush().await.unwrap();
    let big = vec![1u8; 2 * limit];
    let _ = a.write_all(&big).await;
    let _ = a.flush().await;
    let err_a = read_to_error(&mut a, 5, "the sender of an oversized frame").await;
    let err_b = read_to_error(&mut b, 5, "the peer of an oversized frame").await;
    assert_eq!(err_a.kind(), ErrorKind::ConnectionAborted, "{err_a:?}");
    assert_eq!(err_b.kind(), ErrorKind::ConnectionAborted, "{err_b:?}");
    // The sender learns why.
    let why = err_a.to_string();
    assert!(
        why.contains("too large") || why.contains("OutOfRange"),
        "{why}"
    );
    r.wait_for("the pair to end", |s| s.active == 0).await;
}

/// `bridge` between a TCP connection and a stream, the far end a stream read directly:
/// half-close in both orders, every byte checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_copies_both_ways_with_half_close() {
    let r = TestRouter::start().await;
    let tok = token("bridge");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut bridged = connect(&r.endpoint(), &tok).await.unwrap();
    let bridging = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let n = jumpstarter_router::bridge(&mut tcp, &mut bridged).await?;
        bridged.close().await?;
        Ok::<_, std::io::Error>(n)
    });
    let mut far = connect(&r.endpoint(), &tok).await.unwrap();
    let mut app = tokio::net::TcpStream::connect(addr).await.unwrap();
    let size = 8 * MIB;
    // The app sends and finishes (FIN); the far end reads to EOF, then answers and finishes.
    let (sent, far_got) = tokio::join!(
        async {
            let sha = send_pattern(&mut app, size, 1, 1500).await.unwrap();
            app.shutdown().await.unwrap();
            sha
        },
        async { recv_all(&mut far).await.unwrap() }
    );
    assert_eq!(far_got, (size, sent));
    let back = send_pattern(&mut far, size, 2, 64 * 1024).await.unwrap();
    far.shutdown().await.unwrap();
    let app_got = within(30, "the answer", recv_all(&mut app)).await.unwrap();
    assert_eq!(app_got, (size, back));
    within(10, "far close", far.close()).await.unwrap();
    let n = within(10, "the bridge", bridging).await.unwrap().unwrap();
    assert_eq!(n, (size, size));
    r.wait_for("the pair to end", |s| s.active == 0).await;
    assert_eq!(r.router.stats().aborts_total, 0);
}

/// An error on the TCP side of a bridge (a reset) aborts the stream: the far end gets an
/// error, not EOF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridge_turns_a_reset_socket_into_an_abort() {
    let r = TestRouter::start().await;
    let tok = token("bridge-reset");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut bridged = connect(&r.endpoint(), &tok).await.unwrap();
    let bridging = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        // On an error the bridge returns it and the stream is dropped without shutdown.
        jumpstarter_router::bridge(&mut tcp, &mut bridged).await
    });
    let mut far = connect(&r.endpoint(), &tok).await.unwrap();
    let app = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut app = app.into_std().unwrap();
    use std::io::Write;
    app.write_all(b"partial").unwrap();
    let mut buf = [0u8; 7];
    within(10, "the first bytes", far.read_exact(&mut buf))
        .await
        .unwrap();
    // A reset: SO_LINGER 0, then close.
    let sock = socket_linger_zero(app);
    drop(sock);
    let e = within(10, "the bridge's error", bridging)
        .await
        .unwrap()
        .expect_err("a reset socket must fail the bridge");
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e:?}");
    let err = read_to_error(&mut far, 5, "the far end of a reset socket").await;
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err:?}");
}

/// Sets SO_LINGER to 0 so that closing the socket sends RST.
fn socket_linger_zero(s: std::net::TcpStream) -> std::net::TcpStream {
    let s = tokio::net::TcpStream::from_std(s).unwrap();
    s.set_zero_linger().unwrap();
    s.into_std().unwrap()
}

/// A writer that keeps what it is given until flushed, and whose shutdown does not flush
/// (as tokio's stdout).
#[derive(Default)]
struct FlushToKeep {
    pending: Vec<u8>,
    kept: Vec<u8>,
}

impl tokio::io::AsyncWrite for FlushToKeep {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.get_mut().pending.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let me = self.get_mut();
        me.kept.append(&mut me.pending);
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn bridge_flushes_before_it_shuts_the_writer_down() {
    let r = TestRouter::start().await;
    let tok = token("bridge-flush");
    let mut bridged = connect(&r.endpoint(), &tok).await.unwrap();
    let mut far = connect(&r.endpoint(), &tok).await.unwrap();
    let sent = send_pattern(&mut far, 256 * 1024, 3, 4096).await.unwrap();
    far.shutdown().await.unwrap();
    let mut io = tokio::io::join(tokio::io::empty(), FlushToKeep::default());
    within(
        10,
        "the bridge",
        jumpstarter_router::bridge(&mut io, &mut bridged),
    )
    .await
    .unwrap();
    let (_, out) = io.into_inner();
    assert!(
        out.pending.is_empty(),
        "{} bytes never flushed",
        out.pending.len()
    );
    assert_eq!(out.kept.len(), 256 * 1024);
    assert_eq!(
        hex(&<sha2::Sha256 as sha2::Digest>::digest(&out.kept)),
        sent
    );
}
