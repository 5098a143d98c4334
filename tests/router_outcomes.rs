//! How a caller goes, over real sockets, and what its peer and the router's counters make of
//! it: a raw HTTP/2 client (the `h2` crate, not this crate's client) cancels its call, resets
//! it, or loses its connection; the survivor is a [`RouterStream`] that must get the router's
//! GOAWAY with the reason as an error, never a clean EOF, and the router must count a cancel
//! as a cancel (the normal end of a real Jumpstarter client), never as an abort.
#![cfg(all(feature = "router", feature = "client"))]

mod support;

use std::io::ErrorKind;

use bytes::Bytes;
use jumpstarter_router::router::CallResult;
use jumpstarter_router::{Error, RouterStream};
use prost::Message;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// A caller made with the `h2` crate: its HTTP/2 connection's task, and its request body.
struct RawCaller {
    conn: JoinHandle<()>,
    body: h2::SendStream<Bytes>,
    _response: h2::client::ResponseFuture,
}

impl RawCaller {
    async fn open(r: &TestRouter, token: &str) -> RawCaller {
        let tcp = TcpStream::connect(r.addr).await.unwrap();
        let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let request = support::attack::stream_request(r.addr, &format!("Bearer {token}"))
            .body(())
            .unwrap();
        let (response, body) = send.send_request(request, false).unwrap();
        RawCaller {
            conn,
            body,
            _response: response,
        }
    }

    /// Sends one message: a frame of `frame_type` with `payload`.
    fn send(&mut self, frame_type: i32, payload: &[u8]) {
        let msg = jumpstarter_router::proto::StreamRequest {
            payload: payload.to_vec().into(),
            frame_type,
        }
        .encode_to_vec();
        let out = support::wire::grpc_message(&msg);
        self.body.send_data(out.into(), false).unwrap();
    }
}

/// A raw caller and one of ours, paired: the raw one said `hello`, ours read it.
async fn paired(r: &TestRouter, stream: &str) -> (RawCaller, RouterStream) {
    let token = token(stream);
    let mut raw = RawCaller::open(r, &token).await;
    let mut ours = jumpstarter_router::connect(&r.endpoint(), &token)
        .await
        .unwrap();
    raw.send(0, b"hello");
    let mut buf = [0u8; 5];
    within(10, "the raw caller's hello", ours.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"hello");
    (raw, ours)
}

/// The survivor's read fails with the router's reason, which must hold `words`.
async fn survivor_error(ours: &mut RouterStream, words: &str) {
    let e = read_to_error(ours, 5, "the survivor").await;
    assert_eq!(e.kind(), ErrorKind::ConnectionAborted, "{e:?}");
    match e.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
        Some(Error::PeerGone(reason)) => assert!(reason.contains(words), "{reason}"),
        other => panic!("expected the router's GOAWAY with a reason, got {other:?}"),
    }
    // Writing and shutting down fail the same way: nobody reads.
    let e = ours.write_all(b"late").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionAborted, "{e:?}");
    let e = ours.shutdown().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionAborted, "{e:?}");
}

async fn calls_settled(r: &TestRouter) {
    r.wait_for("the pair to end", |s| s.active == 0).await;
}

#[tokio::test]
async fn a_cancelled_call_is_a_cancel_and_its_peer_gets_goaway_then_the_reason() {
    let r = TestRouter::start().await;
    let (mut raw, mut ours) = paired(&r, "cancel").await;
    raw.body.send_reset(h2::Reason::CANCEL);
    survivor_error(&mut ours, "peer cancelled its call").await;
    calls_settled(&r).await;
    let m = r.router.metrics();
    assert_eq!(m.calls(CallResult::Cancelled), 1);
    assert_eq!(m.calls(CallResult::PeerGone), 1);
    assert_eq!(m.calls(CallResult::Aborted), 0);
    assert_eq!(r.router.stats().aborts_total, 0, "a cancel is no abort");
}

#[tokio::test]
async fn a_lost_connection_is_lost_and_its_peer_gets_goaway_then_the_reason() {
    let r = TestRouter::start().await;
    let (raw, mut ours) = paired(&r, "lost").await;
    // The connection goes with no HTTP/2 GOAWAY and no end of the call: a killed process.
    raw.conn.abort();
    drop(raw);
    survivor_error(&mut ours, "peer vanished").await;
    calls_settled(&r).await;
    let m = r.router.metrics();
    assert_eq!(m.calls(CallResult::Lost), 1);
    assert_eq!(m.calls(CallResult::PeerGone), 1);
    assert_eq!(r.router.stats().aborts_total, 1);
}

#[tokio::test]
async fn an_http2_reset_with_an_error_code_is_a_reset() {
    let r = TestRouter::start().await;
    let (mut raw, mut ours) = paired(&r, "reset").await;
    raw.body.send_reset(h2::Reason::INTERNAL_ERROR);
    survivor_error(&mut ours, "peer reset the stream").await;
    calls_settled(&r).await;
    assert_eq!(r.router.metrics().calls(CallResult::Reset), 1);
}

#[tokio::test]
async fn an_end_without_goaway_is_an_abort() {
    let r = TestRouter::start().await;
    let (mut raw, mut ours) = paired(&r, "no-goaway").await;
    raw.body.send_data(Bytes::new(), true).unwrap();
    survivor_error(&mut ours, "ended its stream without GOAWAY").await;
    calls_settled(&r).await;
    assert_eq!(r.router.metrics().calls(CallResult::Aborted), 1);
}

/// Our own stream dropped without shutdown: its RST_STREAM frame reaches the survivor first
/// (a reset), and the router counts a reset.
#[tokio::test]
async fn a_dropped_router_stream_is_a_reset() {
    let r = TestRouter::start().await;
    let token = token("dropped");
    let (a, mut b) = pair_up(&r.endpoint(), &token, b"hi").await;
    drop(a);
    let e = read_to_error(&mut b, 5, "the survivor of a dropped stream").await;
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e:?}");
    calls_settled(&r).await;
    let m = r.router.metrics().encode_text();
    assert_eq!(r.router.metrics().calls(CallResult::Reset), 1, "{m}");
}

/// Half-close, then the peer's connection is lost: the survivor read its peer's own GOAWAY
/// (EOF), and its next write and its shutdown fail with the router's status.
#[tokio::test]
async fn a_peer_lost_after_its_goaway_fails_the_survivors_writes() {
    let r = TestRouter::start().await;
    let (mut raw, mut ours) = paired(&r, "half-closed").await;
    // The raw caller finishes writing (GOAWAY) but never ends its request: then it is lost.
    raw.send(7, b"");
    let mut rest = Vec::new();
    within(5, "EOF", ours.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
    raw.conn.abort();
    drop(raw);
    calls_settled(&r).await;
    let e = within(5, "a write after the peer was lost", async {
        loop {
            ours.write_all(&[0u8; 1024]).await?;
            ours.flush().await?;
            tokio::task::yield_now().await;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    })
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionAborted, "{e:?}");
    assert!(e.to_string().contains("peer vanished"), "{e}");
}
