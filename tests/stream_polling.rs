#![cfg(feature = "client")]
//! Poll-level behaviour of `RouterStream` over real loopback sockets, with a mock task whose
//! wake-ups the test awaits: reads that are `Pending` until the peer sends (or its response headers arrive) and
//! are woken then, writes that are `Pending` on backpressure and woken once the peer reads,
//! and the transitions of `poll_flush` and `poll_shutdown`. The stream is only polled again
//! after a wake-up, so a missing waker registration fails the test (by its deadline) instead
//! of being papered over by busy polling. The same transitions without sockets, where
//! "nothing woke the task" is exact, are the unit tests in `src/stream/tests.rs`.

mod support;
use support::raw;
use support::test_bytes;

use std::io::{self, ErrorKind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};

use jumpstarter_router::{connect, Frame, RouterStream};
use raw::{data_of, describe, PeerServer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio_test::{assert_pending, assert_ready, assert_ready_ok};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// A mock task whose wake-ups can be awaited (`tokio_test`'s can only be asked): `enter`
/// polls with its waker, `woken` waits for the next wake-up since the last `enter`.
struct Task(Arc<Flag>);

#[derive(Default)]
struct Flag {
    woken: AtomicBool,
    notify: Notify,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }
}

impl Task {
    fn new() -> Self {
        Task(Arc::default())
    }

    fn enter<R>(&mut self, f: impl FnOnce(&mut Context<'_>) -> R) -> R {
        self.0.woken.store(false, Ordering::SeqCst);
        let waker = Waker::from(self.0.clone());
        f(&mut Context::from_waker(&waker))
    }

    /// Waits for the next wake-up since the last `enter` (failing the test after 5 s).
    async fn expect_woken(&self, what: &str) {
        let woken = async {
            loop {
                let notified = self.0.notify.notified();
                if self.0.woken.load(Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        };
        raw::within(5, &format!("never woken: {what}"), woken).await;
    }

    /// Polls `f` each time the task is woken, until it is ready.
    async fn ready_when_woken<R>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&mut Context<'_>) -> Poll<R>,
    ) -> R {
        loop {
            if let Poll::Ready(r) = self.enter(&mut f) {
                return r;
            }
            self.expect_woken(what).await;
        }
    }
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
    let mut task = Task::new();

    assert_pending!(task.enter(|cx| poll_read_vec(&mut s, cx, 64)));
    call.send_data(b"hello world").await;
    task.expect_woken("read after the peer sent DATA").await;
    let got = task
        .ready_when_woken("read", |cx| poll_read_vec(&mut s, cx, 5))
        .await
        .unwrap();
    assert_eq!(got, b"hello");
    // The rest is buffered: ready at once, no I/O.
    let got = assert_ready_ok!(task.enter(|cx| poll_read_vec(&mut s, cx, 64)));
    assert_eq!(got, b" world");

    // Pending again; an empty DATA frame or a PING is not data (nor EOF): the next read is
    // the DATA after them. (That they wake the reader without a result is checked exactly
    // by the scripted unit tests in src/stream/tests.rs.)
    assert_pending!(task.enter(|cx| poll_read_vec(&mut s, cx, 64)));
    call.send(Frame::Data(bytes::Bytes::new())).await;
    call.send(Frame::ping()).await;
    call.send_data(b"z").await;
    let got = task
        .ready_when_woken("read after an empty DATA and a PING", |cx| {
            poll_read_vec(&mut s, cx, 64)
        })
        .await
        .unwrap();
    assert_eq!(got, b"z");

    // GOAWAY wakes the reader with EOF, which stays.
    assert_pending!(task.enter(|cx| poll_read_vec(&mut s, cx, 64)));
    call.send(Frame::go_away()).await;
    task.expect_woken("read after GOAWAY").await;
    let got = task
        .ready_when_woken("EOF", |cx| poll_read_vec(&mut s, cx, 64))
        .await
        .unwrap();
    assert!(got.is_empty(), "{got:?}");
    let got = assert_ready_ok!(task.enter(|cx| poll_read_vec(&mut s, cx, 64)));
    assert!(got.is_empty());
    assert!(s.is_read_closed());
}

#[tokio::test]
async fn read_while_connecting_is_woken_by_the_response_headers() {
    let mut peer = PeerServer::start_holding_headers().await;
    let mut s = connect(&peer.endpoint(), "t").await.unwrap();
    let mut call = peer.call().await;
    let mut task = Task::new();

    assert_pending!(task.enter(|cx| poll_read_vec(&mut s, cx, 64)));
    // Writes are not held back by the missing headers.
    let n = assert_ready_ok!(task.enter(|cx| Pin::new(&mut s).poll_write(cx, b"early")));
    assert_eq!(n, 5);
    task.ready_when_woken("flush before the headers", |cx| {
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
    task.expect_woken("read after the headers and DATA").await;
    let got = task
        .ready_when_woken("read", |cx| poll_read_vec(&mut s, cx, 64))
        .await
        .unwrap();
    assert_eq!(got, b"answer");
}

/// Writes pattern bytes with `poll_write` until it is `Pending`, with no await in between:
/// on this current-thread runtime nothing else runs meanwhile, so the stream and HTTP/2 stay
/// as they are until the test awaits. Returns the bytes accepted (each `Ready(n)` counts `n`).
/// (That a stalled peer keeps the writer `Pending`, with no wake-up, is exact in the scripted
/// unit tests of `src/stream/tests.rs`; here, over sockets, the kernel may take more.)
fn write_until_pending(task: &mut Task, s: &mut RouterStream) -> Vec<u8> {
    let pattern = test_bytes(64 * MIB, 3);
    let mut written = 0;
    loop {
        let buf = &pattern[written..written + 64 * KIB];
        match task.enter(|cx| Pin::new(&mut *s).poll_write(cx, buf)) {
            Poll::Ready(Ok(n)) => {
                assert!(n > 0);
                written += n;
            }
            Poll::Ready(Err(e)) => panic!("write failed: {e}"),
            Poll::Pending => return pattern[..written].to_vec(),
        }
        assert!(
            written + 64 * KIB <= pattern.len(),
            "the writer never stalled"
        );
    }
}

/// Writes `more` pattern bytes after `written`, polling only when woken.
async fn write_more(task: &mut Task, s: &mut RouterStream, written: &mut Vec<u8>, more: usize) {
    let next = test_bytes(written.len() + more, 5);
    while written.len() < next.len() {
        let buf = &next[written.len()..];
        let n = task
            .ready_when_woken("write", |cx| Pin::new(&mut *s).poll_write(cx, buf))
            .await
            .unwrap();
        written.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn write_pending_on_backpressure_is_woken_when_the_peer_reads() {
    let mut peer = PeerServer::start().await;
    let mut s = connect(&peer.endpoint(), "t").await.unwrap();
    let mut call = peer.call().await; // not read yet
    let mut task = Task::new();

    // Nobody reads yet: the writer stops after the frames in flight and one buffered.
    let mut written = write_until_pending(&mut task, &mut s);
    assert!(written.len() <= 4 * 64 * KIB, "{} bytes", written.len());
    let next = test_bytes(1000, 99);
    assert_pending!(task.enter(|cx| Pin::new(&mut s).poll_write(cx, &next)));

    // The peer reads: the writer is woken each time there is room, and 8 MiB more (twice the
    // stream window) go through.
    let reader = tokio::spawn(async move {
        let frames = call.frames_to_end().await;
        (call, frames)
    });
    write_more(&mut task, &mut s, &mut written, 8 * MIB).await;
    task.ready_when_woken("shutdown", |cx| Pin::new(&mut s).poll_shutdown(cx))
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
    let mut task = Task::new();

    // Nothing buffered: flush is ready at once.
    assert_ready_ok!(task.enter(|cx| Pin::new(&mut s).poll_flush(cx)));
    // A small write is only buffered: nothing reaches the peer before the flush.
    let n = assert_ready_ok!(task.enter(|cx| Pin::new(&mut s).poll_write(cx, b"x")));
    assert_eq!(n, 1);
    // (That it is not sent before the flush is exact in src/stream/tests.rs.)
    task.ready_when_woken("flush", |cx| Pin::new(&mut s).poll_flush(cx))
        .await
        .unwrap();
    assert_eq!(
        call.next_frame().await.unwrap(),
        Some(Frame::Data(bytes::Bytes::from_static(b"x")))
    );

    // With the peer stalled and a full frame buffered, flush and shutdown wait.
    let mut written = b"x".to_vec();
    written.extend(write_until_pending(&mut task, &mut s));
    assert_pending!(task.enter(|cx| Pin::new(&mut s).poll_flush(cx)));
    assert_pending!(task.enter(|cx| Pin::new(&mut s).poll_shutdown(cx)));

    // The peer reads: shutdown is woken and completes.
    let reader = tokio::spawn(async move {
        let frames = call.frames_to_end().await;
        (call, frames)
    });
    task.expect_woken("shutdown once the peer reads").await;
    task.ready_when_woken("shutdown", |cx| Pin::new(&mut s).poll_shutdown(cx))
        .await
        .unwrap();
    // Idempotent, and the write half is closed.
    assert_ready_ok!(task.enter(|cx| Pin::new(&mut s).poll_shutdown(cx)));
    assert_ready_ok!(task.enter(|cx| Pin::new(&mut s).poll_flush(cx)));
    let e = assert_ready!(task.enter(|cx| Pin::new(&mut s).poll_write(cx, b"y"))).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BrokenPipe, "{e}");

    let (_call, frames) = raw::within(10, "peer reads", reader).await.unwrap();
    let (last, data) = frames.split_last().unwrap();
    assert_eq!(last, &Frame::go_away(), "{}", describe(&frames));
    let got = data_of(data);
    // The first frame "x" was taken by the test above.
    assert_eq!(got.len() + 1, written.len());
    assert!(got == written[1..], "the peer received different bytes");
}
