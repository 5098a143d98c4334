//! The state machine driven by scripted frames: the peer's frames come from a channel the
//! test fills, the sent frames are taken by the test, and every poll runs on `tokio_test`'s
//! mock task. With no I/O under the stream, "Pending and not woken" is exact: nothing can
//! happen that the test does not do.

use std::io::{self, ErrorKind};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_test::task::{spawn, Spawn};
use tokio_test::{assert_pending, assert_ready, assert_ready_err, assert_ready_ok};
use tonic::Status;

use super::*;

/// The peer's side of a scripted transport.
struct Peer {
    tx: Option<mpsc::UnboundedSender<Result<Frame, Status>>>,
    sent: Spawn<SentFrames>,
}

impl Peer {
    fn send(&self, frame: Frame) {
        self.tx.as_ref().unwrap().send(Ok(frame)).unwrap();
    }

    fn fail(&self, status: Status) {
        self.tx.as_ref().unwrap().send(Err(status)).unwrap();
    }

    /// The transport ends the inbound frames (the call ended).
    fn end(&mut self) {
        self.tx = None;
    }

    /// The next sent frame, if one is ready.
    fn poll_sent(&mut self) -> Poll<Option<Result<Frame, Error>>> {
        self.sent.poll_next()
    }

    fn sent_frame(&mut self) -> Frame {
        match self.poll_sent() {
            Poll::Ready(Some(Ok(f))) => f,
            other => panic!("expected a sent frame, got {other:?}"),
        }
    }
}

/// The inbound frames of a scripted transport.
struct Script(mpsc::UnboundedReceiver<Result<Frame, Status>>);

impl Stream for Script {
    type Item = Result<Frame, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().0.poll_recv(cx)
    }
}

fn scripted(max_payload: usize) -> (RouterStream<Script>, Peer) {
    let (tx, rx) = mpsc::unbounded_channel();
    let opts = StreamOptions::new().max_payload(max_payload);
    let (stream, sent) = RouterStream::from_frames(Script(rx), &opts);
    let peer = Peer {
        tx: Some(tx),
        sent: spawn(sent),
    };
    (stream, peer)
}

type Task = Spawn<()>;

fn read(task: &mut Task, s: &mut RouterStream<Script>, max: usize) -> Poll<io::Result<Vec<u8>>> {
    let mut buf = vec![0u8; max];
    task.enter(|cx, _| {
        let mut rb = ReadBuf::new(&mut buf);
        Pin::new(&mut *s)
            .poll_read(cx, &mut rb)
            .map_ok(|()| rb.filled().to_vec())
    })
}

fn write(task: &mut Task, s: &mut RouterStream<Script>, buf: &[u8]) -> Poll<io::Result<usize>> {
    task.enter(|cx, _| Pin::new(&mut *s).poll_write(cx, buf))
}

fn flush(task: &mut Task, s: &mut RouterStream<Script>) -> Poll<io::Result<()>> {
    task.enter(|cx, _| Pin::new(&mut *s).poll_flush(cx))
}

fn shutdown(task: &mut Task, s: &mut RouterStream<Script>) -> Poll<io::Result<()>> {
    task.enter(|cx, _| Pin::new(&mut *s).poll_shutdown(cx))
}

fn data(b: &'static [u8]) -> Frame {
    Frame::Data(Bytes::from_static(b))
}

#[test]
fn read_is_pending_until_data_and_woken_by_it() {
    let (mut s, peer) = scripted(64);
    let mut task = spawn(());
    assert_pending!(read(&mut task, &mut s, 16));
    assert!(!task.is_woken());
    peer.send(data(b"hello world"));
    assert!(task.is_woken());
    assert_eq!(assert_ready_ok!(read(&mut task, &mut s, 5)), b"hello");
    // The rest of the payload is handed out without another frame.
    assert_eq!(assert_ready_ok!(read(&mut task, &mut s, 64)), b" world");
}

#[test]
fn empty_data_ping_and_unknown_frames_wake_but_are_not_data() {
    let (mut s, peer) = scripted(64);
    let mut task = spawn(());
    assert_pending!(read(&mut task, &mut s, 16));
    peer.send(Frame::Data(Bytes::new()));
    peer.send(Frame::ping());
    peer.send(Frame::Unknown {
        frame_type: 42,
        payload: Bytes::from_static(b"x"),
    });
    assert!(task.is_woken());
    assert_pending!(read(&mut task, &mut s, 16));
    assert!(!task.is_woken());
    peer.send(data(b"z"));
    assert_eq!(assert_ready_ok!(read(&mut task, &mut s, 16)), b"z");
}

#[test]
fn goaway_is_eof_that_stays_and_the_write_half_goes_on() {
    let (mut s, mut peer) = scripted(64);
    let mut task = spawn(());
    peer.send(data(b"last"));
    peer.send(Frame::go_away());
    assert_eq!(assert_ready_ok!(read(&mut task, &mut s, 16)), b"last");
    assert!(assert_ready_ok!(read(&mut task, &mut s, 16)).is_empty());
    assert!(s.is_read_closed());
    // Frames after GOAWAY are not read; EOF stays.
    peer.send(data(b"late"));
    assert!(assert_ready_ok!(read(&mut task, &mut s, 16)).is_empty());

    assert_eq!(assert_ready_ok!(write(&mut task, &mut s, b"reply")), 5);
    assert_ready_ok!(flush(&mut task, &mut s));
    assert_eq!(peer.sent_frame(), data(b"reply"));
    assert_ready_ok!(shutdown(&mut task, &mut s));
    assert_eq!(peer.sent_frame(), Frame::go_away());
    // Both halves are done: the sent frames end (the servicer's response may end).
    assert!(matches!(peer.poll_sent(), Poll::Ready(None)));
    assert!(s.error().is_none());
}

#[test]
fn rst_stream_fails_both_halves_with_the_same_sticky_error() {
    let (mut s, peer) = scripted(64);
    let mut task = spawn(());
    assert_eq!(assert_ready_ok!(write(&mut task, &mut s, b"buffered")), 8);
    peer.send(data(b"before"));
    peer.send(Frame::rst_stream());
    peer.send(data(b"after"));
    assert_eq!(assert_ready_ok!(read(&mut task, &mut s, 64)), b"before");
    let e = assert_ready_err!(read(&mut task, &mut s, 64));
    assert_eq!(e.kind(), ErrorKind::ConnectionReset);
    // Sticky: the data after RST_STREAM is never handed out, and every half fails the same.
    for _ in 0..2 {
        let e = assert_ready_err!(read(&mut task, &mut s, 64));
        assert_eq!(e.kind(), ErrorKind::ConnectionReset);
    }
    let e = assert_ready_err!(write(&mut task, &mut s, b"more"));
    assert_eq!(e.kind(), ErrorKind::ConnectionReset);
    let e = assert_ready_err!(flush(&mut task, &mut s));
    assert_eq!(e.kind(), ErrorKind::ConnectionReset);
    let e = assert_ready_err!(shutdown(&mut task, &mut s));
    assert_eq!(e.kind(), ErrorKind::ConnectionReset);
    assert!(matches!(s.error(), Some(Error::Reset)));
}

#[test]
fn an_end_without_goaway_is_unexpected_eof_never_a_clean_finish() {
    let (mut s, mut peer) = scripted(64);
    let mut task = spawn(());
    peer.send(data(b"partial"));
    peer.end();
    assert_eq!(assert_ready_ok!(read(&mut task, &mut s, 64)), b"partial");
    let e = assert_ready_err!(read(&mut task, &mut s, 64));
    assert_eq!(e.kind(), ErrorKind::UnexpectedEof);
    assert!(matches!(s.error(), Some(Error::UnexpectedEnd)));
}

#[test]
fn an_error_status_fails_with_its_kind() {
    let (mut s, peer) = scripted(64);
    let mut task = spawn(());
    assert_pending!(read(&mut task, &mut s, 64));
    peer.fail(Status::permission_denied("no"));
    assert!(task.is_woken());
    let e = assert_ready_err!(read(&mut task, &mut s, 64));
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
    let e = assert_ready_err!(write(&mut task, &mut s, b"x"));
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
}

#[test]
fn writes_coalesce_into_frames_of_max_payload() {
    let (mut s, mut peer) = scripted(4);
    let mut task = spawn(());
    assert_eq!(assert_ready_ok!(write(&mut task, &mut s, b"ab")), 2);
    assert_eq!(assert_ready_ok!(write(&mut task, &mut s, b"cdef")), 2);
    // A full frame goes out at once, without a flush.
    assert_eq!(peer.sent_frame(), data(b"abcd"));
    assert_eq!(assert_ready_ok!(write(&mut task, &mut s, b"ef")), 2);
    assert_pending!(peer.poll_sent());
    assert_ready_ok!(flush(&mut task, &mut s));
    assert_eq!(peer.sent_frame(), data(b"ef"));
    // Zero-length writes send nothing.
    assert_eq!(assert_ready_ok!(write(&mut task, &mut s, b"")), 0);
    assert_ready_ok!(flush(&mut task, &mut s));
    assert_pending!(peer.poll_sent());
}

#[test]
fn backpressure_is_exact_and_the_writer_is_woken_when_a_frame_is_taken() {
    let (mut s, mut peer) = scripted(4);
    let mut task = spawn(());
    let mut accepted = Vec::new();
    let mut next = 0u8;
    // Nobody takes frames: the writer stops after the frames in flight plus one buffered.
    let stalled = loop {
        let buf = [next; 3];
        match write(&mut task, &mut s, &buf) {
            Poll::Ready(Ok(n)) => {
                assert!(n > 0, "Ready(0) for a non-empty write");
                accepted.extend_from_slice(&buf[..n]);
                next = next.wrapping_add(1);
            }
            Poll::Ready(Err(e)) => panic!("{e}"),
            Poll::Pending => break accepted.len(),
        }
        assert!(accepted.len() < 64, "the writer never stalled");
    };
    // Two frames in the channel, one full frame buffered.
    assert_eq!(stalled, 4 * 3);
    assert!(!task.is_woken());
    assert_pending!(write(&mut task, &mut s, b"x"));
    assert_pending!(flush(&mut task, &mut s));
    assert!(!task.is_woken());

    // Taking one frame makes room: the writer is woken, and everything arrives in order.
    let mut got = match peer.sent_frame() {
        Frame::Data(b) => b.to_vec(),
        other => panic!("{other:?}"),
    };
    assert!(task.is_woken());
    // Shutdown flushes the buffered frame and queues GOAWAY, frame by frame as room appears.
    let mut sent = Vec::new();
    while shutdown(&mut task, &mut s).is_pending() {
        assert!(!task.is_woken());
        sent.push(peer.sent_frame());
        assert!(task.is_woken());
    }
    while let Poll::Ready(Some(frame)) = peer.poll_sent() {
        sent.push(frame.unwrap());
    }
    assert_eq!(sent.pop(), Some(Frame::go_away()));
    for frame in sent {
        match frame {
            Frame::Data(b) => got.extend_from_slice(&b),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, accepted);
}

#[test]
fn shutdown_holds_the_outbound_open_until_the_read_half_is_done() {
    let (mut s, mut peer) = scripted(64);
    let mut task = spawn(());
    assert_eq!(assert_ready_ok!(write(&mut task, &mut s, b"bye")), 3);
    assert_ready_ok!(shutdown(&mut task, &mut s));
    assert_ready_ok!(shutdown(&mut task, &mut s)); // idempotent
    assert_eq!(peer.sent_frame(), data(b"bye"));
    assert_eq!(peer.sent_frame(), Frame::go_away());
    // The peer's data may still be in flight: the sent frames do not end yet.
    assert_pending!(peer.poll_sent());
    let e = assert_ready_err!(write(&mut task, &mut s, b"x"));
    assert_eq!(e.kind(), ErrorKind::BrokenPipe);

    peer.send(data(b"in flight"));
    assert_eq!(assert_ready_ok!(read(&mut task, &mut s, 64)), b"in flight");
    assert_pending!(peer.poll_sent());
    peer.send(Frame::go_away());
    assert!(assert_ready_ok!(read(&mut task, &mut s, 64)).is_empty());
    assert!(peer.sent.is_woken());
    assert!(matches!(peer.poll_sent(), Poll::Ready(None)));
}

#[test]
fn drop_without_shutdown_aborts_after_the_queued_frames() {
    let (mut s, mut peer) = scripted(64);
    let mut task = spawn(());
    assert_eq!(assert_ready_ok!(write(&mut task, &mut s, b"queued")), 6);
    assert_ready_ok!(flush(&mut task, &mut s));
    assert_eq!(assert_ready_ok!(write(&mut task, &mut s, b"lost")), 4);
    drop(s);
    assert_eq!(peer.sent_frame(), data(b"queued"));
    assert_eq!(peer.sent_frame(), Frame::rst_stream());
    assert!(matches!(
        peer.poll_sent(),
        Poll::Ready(Some(Err(Error::Dropped)))
    ));
    assert!(matches!(peer.poll_sent(), Poll::Ready(None)));
}

#[test]
fn get_ref_and_into_inner_give_the_inbound_frames_and_into_inner_aborts_like_drop() {
    let (mut s, mut peer) = scripted(64);
    let mut task = spawn(());
    peer.send(data(b"one"));
    peer.send(data(b"two"));
    assert!(s.get_ref().is_some() && s.get_mut().is_some());
    assert_eq!(assert_ready_ok!(read(&mut task, &mut s, 16)), b"one");
    assert_eq!(assert_ready_ok!(write(&mut task, &mut s, b"unsent")), 6);
    let mut inbound = s.into_inner().expect("the inbound frames");
    // What the stream had not read is still there.
    let next = task.enter(|cx, _| Pin::new(&mut inbound).poll_next(cx));
    assert!(matches!(next, Poll::Ready(Some(Ok(f))) if f == data(b"two")));
    // The write half was not shut down: the peer is told of an abort, never a clean end.
    assert_eq!(peer.sent_frame(), Frame::rst_stream());
    // A failed read half has no frames to give.
    let (mut s, peer) = scripted(64);
    peer.send(Frame::rst_stream());
    assert_ready_err!(read(&mut task, &mut s, 16));
    assert!(s.get_ref().is_none());
    assert!(s.into_inner().is_none());
}

#[test]
fn drop_after_shutdown_is_a_clean_end() {
    let (mut s, mut peer) = scripted(64);
    let mut task = spawn(());
    assert_ready_ok!(shutdown(&mut task, &mut s));
    drop(s);
    assert_eq!(peer.sent_frame(), Frame::go_away());
    assert!(matches!(peer.poll_sent(), Poll::Ready(None)));
}

#[test]
fn a_transport_that_stops_taking_frames_fails_the_writer_with_call_ended() {
    let (mut s, peer) = scripted(4);
    let mut task = spawn(());
    drop(peer.sent);
    assert_eq!(assert_ready_ok!(write(&mut task, &mut s, b"abcd")), 4);
    let e = assert_ready_err!(flush(&mut task, &mut s));
    assert_eq!(e.kind(), ErrorKind::BrokenPipe);
    assert!(matches!(s.error(), Some(Error::CallEnded)));
    // Sticky for the writer.
    let e = assert_ready_err!(write(&mut task, &mut s, b"x"));
    assert_eq!(e.kind(), ErrorKind::BrokenPipe);
}

#[test]
fn a_writer_that_found_the_call_ended_keeps_its_error_and_the_reader_reports_the_cause() {
    let (mut s, peer) = scripted(4);
    let mut task = spawn(());
    peer.send(data(b"left"));
    // The transport stops taking frames: the writer learns only that the call is gone.
    let Peer { tx, sent } = peer;
    drop(sent);
    let peer = tx.unwrap();
    assert_eq!(assert_ready_ok!(write(&mut task, &mut s, b"abcd")), 4);
    let e = assert_ready_err!(flush(&mut task, &mut s));
    assert_eq!(e.kind(), ErrorKind::BrokenPipe);
    assert!(matches!(s.error(), Some(Error::CallEnded)));
    // The read half still hands out what came before, then finds why the call ended.
    assert_eq!(assert_ready_ok!(read(&mut task, &mut s, 16)), b"left");
    peer.send(Err(Status::aborted("exporter went"))).unwrap();
    let cause = |e: &io::Error| {
        Error::from_io(e)
            .and_then(Error::status)
            .map(|st| st.message().to_owned())
    };
    for _ in 0..2 {
        let e = assert_ready_err!(read(&mut task, &mut s, 16));
        assert_eq!(e.kind(), ErrorKind::ConnectionAborted);
        assert_eq!(cause(&e).as_deref(), Some("exporter went"));
    }
    // The first error never changes, and stays the writer's.
    assert!(matches!(s.error(), Some(Error::CallEnded)));
    let e = assert_ready_err!(write(&mut task, &mut s, b"x"));
    assert_eq!(e.kind(), ErrorKind::BrokenPipe);
}

#[test]
fn a_writer_after_eof_gets_the_final_status_of_the_call() {
    let (mut s, peer) = scripted(4);
    let mut task = spawn(());
    peer.send(Frame::go_away());
    peer.fail(Status::aborted("peer reset the stream"));
    assert!(assert_ready_ok!(read(&mut task, &mut s, 8)).is_empty());
    drop(peer.sent);
    // The status is in: the write fails with it at once, and so does a flush.
    let e = assert_ready_err!(write(&mut task, &mut s, b"abcd"));
    assert_eq!(e.kind(), ErrorKind::ConnectionAborted, "{e}");
    let e = assert_ready_err!(flush(&mut task, &mut s));
    assert_eq!(e.kind(), ErrorKind::ConnectionAborted, "{e}");
    assert_eq!(
        s.error().and_then(Error::status).unwrap().message(),
        "peer reset the stream"
    );
    // The read half stays at EOF.
    assert!(assert_ready_ok!(read(&mut task, &mut s, 8)).is_empty());
}

#[test]
fn buf_read_and_read_chunk_hand_out_the_payload_itself() {
    let (mut s, peer) = scripted(64);
    let mut task = spawn(());
    let payload = Bytes::from(vec![7u8; 100]);
    let ptr = payload.as_ptr();
    peer.send(Frame::Data(payload));
    peer.send(data(b"second"));
    peer.send(Frame::go_away());
    let got = assert_ready!(task.enter(|cx, _| {
        Pin::new(&mut s)
            .poll_fill_buf(cx)
            .map_ok(|b| (b.as_ptr(), b.len()))
    }))
    .unwrap();
    assert_eq!(got, (ptr, 100));
    Pin::new(&mut s).consume(40);
    let chunk = assert_ready_ok!(task.enter(|cx, _| s.poll_read_chunk(cx))).unwrap();
    assert_eq!((chunk.as_ptr(), chunk.len()), (ptr.wrapping_add(40), 60));
    let chunk = assert_ready_ok!(task.enter(|cx, _| s.poll_read_chunk(cx))).unwrap();
    assert_eq!(chunk, Bytes::from_static(b"second"));
    assert!(assert_ready_ok!(task.enter(|cx, _| s.poll_read_chunk(cx))).is_none());
}

#[test]
fn close_waits_until_the_transport_has_dropped_the_sent_frames() {
    let (mut s, mut peer) = scripted(64);
    let mut task = spawn(());
    peer.send(data(b"discarded"));
    peer.send(Frame::go_away());
    peer.end();
    assert_pending!(task.enter(|cx, _| s.poll_close(cx)));
    assert_eq!(peer.sent_frame(), Frame::go_away());
    assert!(matches!(peer.poll_sent(), Poll::Ready(None)));
    assert!(!task.is_woken());
    drop(peer.sent);
    assert!(task.is_woken());
    assert_ready_ok!(task.enter(|cx, _| s.poll_close(cx)));
    // Again: at once (found by the router_stream fuzz target: it panicked in tokio's oneshot).
    assert_ready_ok!(task.enter(|cx, _| s.poll_close(cx)));
    assert!(s.error().is_none());
}

#[test]
fn a_goaway_with_a_reason_is_the_routers_word_that_the_peer_went() {
    let (mut s, peer) = scripted(64);
    let mut task = spawn(());
    peer.send(data(b"last"));
    let reason = "peer vanished: its connection was lost: I/O error";
    peer.send(Frame::GoAway(Bytes::from_static(reason.as_bytes())));
    // What came before is all there; then an error, never EOF.
    assert_eq!(assert_ready_ok!(read(&mut task, &mut s, 16)), b"last");
    let e = assert_ready_err!(read(&mut task, &mut s, 16));
    assert_eq!(e.kind(), ErrorKind::ConnectionAborted);
    assert!(e.to_string().contains(reason), "{e}");
    assert!(matches!(s.error(), Some(Error::PeerGone(r)) if r == reason));
    // Writes and shutdown fail the same way: nobody reads what they would send.
    let e = assert_ready_err!(write(&mut task, &mut s, b"x"));
    assert_eq!(e.kind(), ErrorKind::ConnectionAborted);
    let e = assert_ready_err!(shutdown(&mut task, &mut s));
    assert!(e.to_string().contains(reason), "{e}");
}

#[test]
fn a_bare_goaway_then_an_error_status_fails_the_next_write_and_shutdown() {
    let (mut s, peer) = scripted(64);
    let mut task = spawn(());
    peer.send(Frame::go_away());
    assert!(assert_ready_ok!(read(&mut task, &mut s, 16)).is_empty());
    // The half-closed writer goes on while the call is up.
    assert_eq!(assert_ready_ok!(write(&mut task, &mut s, b"more")), 4);
    assert_ready_ok!(flush(&mut task, &mut s));
    // The call ends with an error: the next write fails with it, and so does shutdown.
    peer.fail(Status::aborted("peer cancelled its call"));
    let e = assert_ready_err!(write(&mut task, &mut s, b"lost"));
    assert_eq!(e.kind(), ErrorKind::ConnectionAborted);
    assert!(e.to_string().contains("peer cancelled its call"), "{e}");
    let e = assert_ready_err!(shutdown(&mut task, &mut s));
    assert_eq!(e.kind(), ErrorKind::ConnectionAborted);
    // The read half stays at EOF.
    assert!(assert_ready_ok!(read(&mut task, &mut s, 8)).is_empty());
}

#[test]
fn a_bare_goaway_then_an_error_status_fails_shutdown_at_once() {
    let (mut s, mut peer) = scripted(64);
    let mut task = spawn(());
    peer.send(Frame::go_away());
    peer.fail(Status::aborted("peer vanished"));
    assert!(assert_ready_ok!(read(&mut task, &mut s, 16)).is_empty());
    let e = assert_ready_err!(shutdown(&mut task, &mut s));
    assert_eq!(e.kind(), ErrorKind::ConnectionAborted);
    // No GOAWAY went out.
    assert!(matches!(
        peer.poll_sent(),
        Poll::Ready(None) | Poll::Pending
    ));
}

/// `copy_bidirectional` and `bridge` over a stream whose peer went, with an idle local side:
/// both return the router's reason as an error at once.
#[tokio::test]
async fn copy_bidirectional_and_bridge_fail_when_the_router_says_the_peer_went() {
    for use_bridge in [false, true] {
        let (mut s, peer) = scripted(64);
        let (mut local, mut app) = tokio::io::duplex(1024);
        peer.send(data(b"hello"));
        peer.send(Frame::GoAway(Bytes::from_static(b"peer reset the stream")));
        let e = if use_bridge {
            crate::bridge(&mut local, &mut s).await.unwrap_err()
        } else {
            tokio::io::copy_bidirectional(&mut local, &mut s)
                .await
                .unwrap_err()
        };
        assert_eq!(
            e.kind(),
            ErrorKind::ConnectionAborted,
            "bridge: {use_bridge}"
        );
        assert!(e.to_string().contains("peer reset the stream"), "{e}");
        // What came before the GOAWAY reached the local side.
        let mut got = [0u8; 5];
        tokio::io::AsyncReadExt::read_exact(&mut app, &mut got)
            .await
            .unwrap();
        assert_eq!(&got, b"hello");
    }
}

/// A router that sends a bare GOAWAY, then an error: `bridge` sees the error while the local
/// side is idle.
#[tokio::test]
async fn bridge_fails_on_an_error_after_a_bare_goaway_with_an_idle_local_side() {
    let (mut s, peer) = scripted(64);
    let (mut local, _app) = tokio::io::duplex(1024);
    peer.send(Frame::go_away());
    let bridged = tokio::spawn(async move { crate::bridge(&mut local, &mut s).await });
    // The bridge is waiting on the idle local side; the call's error ends it.
    tokio::task::yield_now().await;
    peer.fail(Status::aborted("peer vanished"));
    let e = bridged.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionAborted, "{e}");
}
