#![cfg(feature = "client")]
//! Poll-level behaviour of `RouterStream` over real loopback sockets, with `tokio_test`'s mock
//! task: reads that are `Pending` until the peer sends (or its response headers arrive) and
//! are woken then, writes that are `Pending` on backpressure and woken once the peer reads,
//! and the transitions of `poll_flush` and `poll_shutdown`. The stream is only polled again
//! after a wake-up, so a missing waker registration fails the test (by its deadline) instead
//! of being papered over by busy polling.

mod support;
use support::raw;
use support::test_bytes;

use std::io::{self, ErrorKind};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use jumpstarter_router::{connect, Frame, RouterStream};
use raw::{data_of, describe, PeerServer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_test::task::Spawn;
use tokio_test::{assert_pending, assert_ready, assert_ready_ok};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Whether the mock task is woken within `wait` (yielding to the runtime meanwhile).
async fn woken_within(task: &Spawn<()>, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if task.is_woken() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn expect_woken(task: &Spawn<()>, what: &str) {
    assert!(
        woken_within(task, Duration::from_secs(5)).await,
        "never woken: {what}"
    );
}

/// Polls `f` each time the task is woken, until it is ready (at most 5 s in all).
async fn ready_when_woken<R>(
    task: &mut Spawn<()>,
    what: &str,
    mut f: impl FnMut(&mut Context<'_>) -> Poll<R>,
) -> R {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Poll::Ready(r) = task.enter(|cx, _| f(cx)) {
            return r;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(woken_within(task, left).await, "never woken: {what}");
    }
}

/// Polls `f` until it is `Pending` and stays so without a wake-up for 200 ms; panics if it
/// becomes ready.
async fn settle_pending<R: std::fmt::Debug>(
    task: &mut Spawn<()>,
    what: &str,
    mut f: impl FnMut(&mut Context<'_>) -> Poll<R>,
) {
    for _ in 0..1000 {
        match task.enter(|cx, _| f(cx)) {
            Poll::Ready(r) => panic!("{what}: ready too early: {r:?}"),
            Poll::Pending => {
                if !woken_within(task, Duration::from_millis(200)).await {
                    return;
                }
            }
        }
    }
    panic!("{what}: woken over and over while nothing happens");
}

fn poll_read_vec(
    s: &mut RouterStream,
    cx: &mut Context<'_>,
    max: usize,
) -> Poll<io::Result<Vec<u8>>> {
    let mut buf = vec![0u8; max];
    let mut rb = ReadBuf::new(&mut buf);
    ready!(Pin::new(s).poll_read(cx, &mut rb))?;
    Poll::Ready(Ok(rb.filled().to_vec()))
}

#[tokio::test]
async fn read_is_pending_until_the_peer_sends_and_woken_when_it_does() {
    let mut peer = PeerServer::start().await;
    let mut s = connect(&peer.endpoint(), "t").await.unwrap();
    let call = peer.call().await;
    let mut task = tokio_test::task::spawn(());

    settle_pending(&mut task, "read before the peer sends", |cx| {
        poll_read_vec(&mut s, cx, 64)
    })
    .await;
    call.send_data(b"hello world").await;
    expect_woken(&task, "read after the peer sent DATA").await;
    let got = ready_when_woken(&mut task, "read", |cx| poll_read_vec(&mut s, cx, 5))
        .await
        .unwrap();
    assert_eq!(got, b"hello");
    // The rest is buffered: ready at once, no I/O.
    let got = assert_ready_ok!(task.enter(|cx, _| poll_read_vec(&mut s, cx, 64)));
    assert_eq!(got, b" world");

    // Pending again; an empty DATA frame or a PING wakes the reader but is not data.
    settle_pending(&mut task, "read after the buffer is drained", |cx| {
        poll_read_vec(&mut s, cx, 64)
    })
    .await;
    call.send(Frame::Data(bytes::Bytes::new())).await;
    call.send(Frame::ping()).await;
    settle_pending(&mut task, "read after an empty DATA and a PING", |cx| {
        poll_read_vec(&mut s, cx, 64)
    })
    .await;

    // GOAWAY wakes the reader with EOF, which stays.
    call.send(Frame::go_away()).await;
    expect_woken(&task, "read after GOAWAY").await;
    let got = ready_when_woken(&mut task, "EOF", |cx| poll_read_vec(&mut s, cx, 64))
        .await
        .unwrap();
    assert!(got.is_empty(), "{got:?}");
    let got = assert_ready_ok!(task.enter(|cx, _| poll_read_vec(&mut s, cx, 64)));
    assert!(got.is_empty());
    assert!(s.is_read_closed());
}

#[tokio::test]
async fn read_while_connecting_is_woken_by_the_response_headers() {
    let mut peer = PeerServer::start_holding_headers().await;
    let mut s = connect(&peer.endpoint(), "t").await.unwrap();
    let mut call = peer.call().await;
    let mut task = tokio_test::task::spawn(());

    settle_pending(&mut task, "read before the response headers", |cx| {
        poll_read_vec(&mut s, cx, 64)
    })
    .await;
    // Writes are not held back by the missing headers.
    let n = assert_ready_ok!(task.enter(|cx, _| Pin::new(&mut s).poll_write(cx, b"early")));
    assert_eq!(n, 5);
    ready_when_woken(&mut task, "flush before the headers", |cx| {
        Pin::new(&mut s).poll_flush(cx)
    })
    .await
    .unwrap();
    assert_eq!(
        call.next_frame().await.unwrap(),
        Some(Frame::Data(bytes::Bytes::from_static(b"early")))
    );

    call.release.take().unwrap().send(()).unwrap();
    call.send_data(b"answer").await;
    expect_woken(&task, "read after the headers and DATA").await;
    let got = ready_when_woken(&mut task, "read", |cx| poll_read_vec(&mut s, cx, 64))
        .await
        .unwrap();
    assert_eq!(got, b"answer");
}

/// Writes pattern bytes with `poll_write` until it is `Pending` without a wake-up for 300 ms;
/// returns the bytes accepted (each `Ready(n)` counts `n`).
async fn write_until_stalled(task: &mut Spawn<()>, s: &mut RouterStream) -> Vec<u8> {
    let pattern = test_bytes(64 * MIB, 3);
    let mut written = 0;
    loop {
        let buf = &pattern[written..written + 64 * KIB];
        match task.enter(|cx, _| Pin::new(&mut *s).poll_write(cx, buf)) {
            Poll::Ready(Ok(n)) => {
                assert!(n > 0);
                written += n;
            }
            Poll::Ready(Err(e)) => panic!("write failed: {e}"),
            Poll::Pending => {
                if !woken_within(task, Duration::from_millis(300)).await {
                    return pattern[..written].to_vec();
                }
            }
        }
        assert!(
            written + 64 * KIB <= pattern.len(),
            "the writer never stalled"
        );
    }
}

#[tokio::test]
async fn write_pending_on_backpressure_is_woken_when_the_peer_reads() {
    let mut peer = PeerServer::start().await;
    let mut s = connect(&peer.endpoint(), "t").await.unwrap();
    let mut call = peer.call().await; // not read yet
    let mut task = tokio_test::task::spawn(());

    let mut written = write_until_stalled(&mut task, &mut s).await;
    assert!(written.len() < 16 * MIB, "{} bytes", written.len());
    // Still pending, not woken while the peer does not read.
    let next = test_bytes(1000, 99);
    assert_pending!(task.enter(|cx, _| Pin::new(&mut s).poll_write(cx, &next)));
    assert!(!woken_within(&task, Duration::from_millis(200)).await);

    // The peer reads: the writer is woken and its write goes through.
    let reader = tokio::spawn(async move {
        let frames = call.frames_to_end().await;
        (call, frames)
    });
    expect_woken(&task, "writer once the peer reads").await;
    let n = ready_when_woken(&mut task, "write", |cx| {
        Pin::new(&mut s).poll_write(cx, &next)
    })
    .await
    .unwrap();
    written.extend_from_slice(&next[..n]);
    ready_when_woken(&mut task, "shutdown", |cx| {
        Pin::new(&mut s).poll_shutdown(cx)
    })
    .await
    .unwrap();

    let (call, frames) = raw::within(10, "peer reads", reader).await.unwrap();
    let (last, data) = frames.split_last().unwrap();
    assert_eq!(last, &Frame::go_away(), "{}", describe(&frames));
    let got = data_of(data);
    assert_eq!(got.len(), written.len());
    assert!(got == written, "the peer received different bytes");
    drop(call);
}

#[tokio::test]
async fn flush_and_shutdown_wait_for_room_then_complete() {
    let mut peer = PeerServer::start().await;
    let mut s = connect(&peer.endpoint(), "t").await.unwrap();
    let mut call = peer.call().await;
    let mut task = tokio_test::task::spawn(());

    // Nothing buffered: flush is ready at once.
    assert_ready_ok!(task.enter(|cx, _| Pin::new(&mut s).poll_flush(cx)));
    // A small write is only buffered: nothing reaches the peer before the flush.
    let n = assert_ready_ok!(task.enter(|cx, _| Pin::new(&mut s).poll_write(cx, b"x")));
    assert_eq!(n, 1);
    let early = tokio::time::timeout(Duration::from_millis(200), call.inbound.message()).await;
    assert!(
        early.is_err(),
        "a small write was sent before flush: {early:?}"
    );
    ready_when_woken(&mut task, "flush", |cx| Pin::new(&mut s).poll_flush(cx))
        .await
        .unwrap();
    assert_eq!(
        call.next_frame().await.unwrap(),
        Some(Frame::Data(bytes::Bytes::from_static(b"x")))
    );

    // With the peer stalled and a full frame buffered, flush and shutdown wait.
    let mut written = b"x".to_vec();
    written.extend(write_until_stalled(&mut task, &mut s).await);
    settle_pending(&mut task, "flush on a stalled peer", |cx| {
        Pin::new(&mut s).poll_flush(cx)
    })
    .await;
    settle_pending(&mut task, "shutdown on a stalled peer", |cx| {
        Pin::new(&mut s).poll_shutdown(cx)
    })
    .await;

    // The peer reads: shutdown is woken and completes.
    let reader = tokio::spawn(async move {
        let frames = call.frames_to_end().await;
        (call, frames)
    });
    expect_woken(&task, "shutdown once the peer reads").await;
    ready_when_woken(&mut task, "shutdown", |cx| {
        Pin::new(&mut s).poll_shutdown(cx)
    })
    .await
    .unwrap();
    // Idempotent, and the write half is closed.
    assert_ready_ok!(task.enter(|cx, _| Pin::new(&mut s).poll_shutdown(cx)));
    assert_ready_ok!(task.enter(|cx, _| Pin::new(&mut s).poll_flush(cx)));
    let e = assert_ready!(task.enter(|cx, _| Pin::new(&mut s).poll_write(cx, b"y"))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BrokenPipe, "{e}");

    let (_call, frames) = raw::within(10, "peer reads", reader).await.unwrap();
    let (last, data) = frames.split_last().unwrap();
    assert_eq!(last, &Frame::go_away(), "{}", describe(&frames));
    let got = data_of(data);
    // The first frame "x" was taken by the test above.
    assert_eq!(got.len() + 1, written.len());
    assert!(got == written[1..], "the peer received different bytes");
}
