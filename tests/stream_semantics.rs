#![cfg(all(feature = "client", feature = "router"))]
//! The frame semantics table of DESIGN.md, row by row, over real loopback sockets: a scripted
//! peer sends exact raw frames and statuses to our client (and records the raw frames the
//! client sends), a raw tonic client drives our servicer side, and the in-process router
//! carries `copy_bidirectional` and `tokio_util::codec::Framed` sessions end to end.

mod support;

use support::raw;

use std::collections::HashMap;
use std::io::{ErrorKind, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use jumpstarter_router::proto::router_service_server::RouterService;
use jumpstarter_router::proto::{StreamRequest, StreamResponse};
use jumpstarter_router::{connect, ClientBuilder, Error, Frame, RouterStream, StreamOptions};
use raw::{data_of, describe, serve, within, AcceptingServer, BoxResponses, PeerServer, RawCall};
use support::{pattern_sha, recv_all, send_pattern, test_bytes, token, TestRouter};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::codec::{Framed, FramedRead, FramedWrite, LengthDelimitedCodec, LinesCodec};
use tonic::{Code, Request, Response, Status, Streaming};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

fn go_away_count(frames: &[Frame]) -> usize {
    frames
        .iter()
        .filter(|f| matches!(f, Frame::GoAway(_)))
        .count()
}

/// Splits recorded client frames into the DATA payload and checks they end with exactly one
/// GOAWAY and nothing else.
fn data_then_one_go_away(frames: &[Frame]) -> Vec<u8> {
    let (last, data) = frames.split_last().expect("no frames at all");
    assert!(
        matches!(last, Frame::GoAway(_)),
        "the last frame is not GOAWAY: {}",
        describe(frames)
    );
    assert_eq!(go_away_count(frames), 1, "frames: {}", describe(frames));
    data_of(data)
}

async fn read_n(s: &mut RouterStream, buf: &mut [u8]) -> std::io::Result<usize> {
    within(5, "read", s.read(buf)).await
}

// ----- 1. empty DATA, PING, unknown frame types -----

#[tokio::test]
async fn empty_data_ping_and_unknown_frames_are_skipped() {
    let mut peer = PeerServer::start().await;
    let mut s = connect(&peer.endpoint(), "t").await.unwrap();
    let mut call = peer.call().await;

    call.send(Frame::Data(Bytes::new())).await;
    call.send_data(b"hello").await;
    call.send(Frame::Data(Bytes::new())).await;
    call.send(Frame::ping()).await;
    call.send(Frame::Ping(Bytes::from_static(b"ping payload")))
        .await;
    call.send(Frame::Data(Bytes::new())).await;
    call.send(Frame::Unknown {
        frame_type: 9,
        payload: Bytes::from_static(b"from the future"),
    })
    .await;
    call.send(Frame::Data(Bytes::new())).await;
    call.send_data(b", world").await;
    call.send(Frame::Data(Bytes::new())).await;
    call.send(Frame::go_away()).await;

    let mut buf = [0u8; 64];
    let n = read_n(&mut s, &mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"hello");
    let n = read_n(&mut s, &mut buf).await.unwrap();
    assert_eq!(
        &buf[..n],
        b", world",
        "an empty DATA, PING or unknown frame ended the stream"
    );
    assert_eq!(read_n(&mut s, &mut buf).await.unwrap(), 0);
    assert!(s.is_read_closed());
    assert!(s.error().is_none(), "{:?}", s.error());

    s.shutdown().await.unwrap();
    assert_eq!(call.frames_to_end().await, vec![Frame::go_away()]);
    let _inbound = call.end();
    within(5, "close", s.close()).await.unwrap();
}

#[tokio::test]
async fn read_chunk_skips_empty_frames_and_keeps_frame_boundaries() {
    let mut peer = PeerServer::start().await;
    let mut s = connect(&peer.endpoint(), "t").await.unwrap();
    let call = peer.call().await;
    call.send_data(b"one").await;
    call.send(Frame::Data(Bytes::new())).await;
    call.send(Frame::ping()).await;
    call.send_data(b"two").await;
    call.send(Frame::Unknown {
        frame_type: 9,
        payload: Bytes::new(),
    })
    .await;
    call.send(Frame::go_away()).await;

    let chunk = |r: std::io::Result<Option<Bytes>>| r.unwrap().map(|b| b.to_vec());
    assert_eq!(
        chunk(within(5, "chunk", s.read_chunk()).await),
        Some(b"one".to_vec())
    );
    assert_eq!(
        chunk(within(5, "chunk", s.read_chunk()).await),
        Some(b"two".to_vec())
    );
    assert_eq!(chunk(within(5, "chunk", s.read_chunk()).await), None);
    assert_eq!(chunk(within(5, "chunk", s.read_chunk()).await), None);
    s.shutdown().await.unwrap();
    let _inbound = call.end();
    within(5, "close", s.close()).await.unwrap();
}

// ----- 2. GOAWAY behind a partially read payload; half-close -----

#[tokio::test]
async fn go_away_after_buffered_data_delivers_everything_then_eof_and_write_half_stays_open() {
    let mut peer = PeerServer::start().await;
    let mut s = connect(&peer.endpoint(), "t").await.unwrap();
    let mut call = peer.call().await;
    let payload = test_bytes(1000, 7);
    call.send_data(&payload).await;
    call.send(Frame::go_away()).await;

    let mut first = [0u8; 10];
    within(5, "first bytes", s.read_exact(&mut first))
        .await
        .unwrap();
    assert_eq!(&first[..], &payload[..10]);
    // (With the GOAWAY queued behind the buffered rest, exactly: the scripted unit test
    // `goaway_is_eof_that_stays_and_the_write_half_goes_on` in src/stream/tests.rs.)

    let mut rest = Vec::new();
    let mut buf = [0u8; 97];
    loop {
        let n = read_n(&mut s, &mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        rest.extend_from_slice(&buf[..n]);
    }
    assert_eq!(rest, &payload[10..], "buffered bytes lost at GOAWAY");
    assert!(s.is_read_closed());
    assert_eq!(
        read_n(&mut s, &mut buf).await.unwrap(),
        0,
        "EOF is not sticky"
    );

    // Half-close: our write half still works after the peer's GOAWAY.
    s.write_all(b"written after EOF").await.unwrap();
    s.shutdown().await.unwrap();
    let frames = call.frames_to_end().await;
    assert_eq!(
        frames,
        vec![
            Frame::Data(Bytes::from_static(b"written after EOF")),
            Frame::go_away()
        ]
    );
    let _inbound = call.end();
    within(5, "close", s.close()).await.unwrap();
}

// ----- 3. RST_STREAM -----

#[tokio::test]
async fn rst_stream_fails_read_and_write_with_connection_reset() {
    let mut peer = PeerServer::start().await;
    let mut s = connect(&peer.endpoint(), "t").await.unwrap();
    let call = peer.call().await;
    call.send_data(b"abc").await;
    call.send(Frame::rst_stream()).await;

    let mut buf = [0u8; 16];
    let n = read_n(&mut s, &mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"abc");
    let e = read_n(&mut s, &mut buf).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    assert!(matches!(Error::from_io(&e), Some(Error::Reset)), "{e:?}");
    // Sticky, on both halves.
    let e = read_n(&mut s, &mut buf).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    let e = s.write_all(b"x").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    let e = s.flush().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    let e = s.shutdown().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    assert!(matches!(s.error(), Some(Error::Reset)));
    let e = within(5, "close", s.close()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
}

#[tokio::test]
async fn a_call_that_fails_after_the_peers_go_away_fails_writes_with_its_status() {
    let mut peer = PeerServer::start().await;
    let mut s = connect(&peer.endpoint(), "t").await.unwrap();
    let call = peer.call().await;
    call.send_data(b"bye").await;
    call.send(Frame::go_away()).await;
    let mut got = Vec::new();
    within(5, "read to EOF", s.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, b"bye");
    // Our write half is still open; now the call is aborted (say the router saw a reset).
    call.fail(tonic::Status::aborted("peer aborted the stream"))
        .await;
    drop(call); // as a router does: the call is over, our request stream is reset
    let e = within(5, "a write to fail", async {
        loop {
            if let Err(e) = s.write_all(&[0u8; 16 * 1024]).await {
                return e;
            }
            if let Err(e) = s.flush().await {
                return e;
            }
        }
    })
    .await;
    // The status, not a bare "call ended" BrokenPipe.
    assert_eq!(e.kind(), ErrorKind::ConnectionAborted, "{e:?}");
    assert_eq!(
        Error::from_io(&e)
            .and_then(Error::status)
            .map(|st| st.code()),
        Some(tonic::Code::Aborted),
        "{e:?}"
    );
}

// ----- 4. the call ends with OK but without GOAWAY -----

#[tokio::test]
async fn end_of_call_without_go_away_is_unexpected_eof() {
    let mut peer = PeerServer::start().await;
    let mut s = connect(&peer.endpoint(), "t").await.unwrap();
    let call = peer.call().await;
    call.send_data(b"partial").await;
    let _inbound = call.end(); // status OK, no GOAWAY

    let mut buf = [0u8; 16];
    let n = read_n(&mut s, &mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"partial");
    for _ in 0..3 {
        let e = read_n(&mut s, &mut buf)
            .await
            .expect_err("a vanished peer must not look like EOF");
        assert_eq!(e.kind(), ErrorKind::UnexpectedEof, "{e}");
        assert!(
            matches!(Error::from_io(&e), Some(Error::UnexpectedEnd)),
            "{e:?}"
        );
    }
    let e = s.write_all(b"x").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnexpectedEof, "{e}");

    // read_to_end on a fresh stream: an error, never Ok.
    let mut s2 = connect(&peer.endpoint(), "t").await.unwrap();
    let call = peer.call().await;
    let _inbound = call.end();
    let mut all = Vec::new();
    let e = within(5, "read_to_end", s2.read_to_end(&mut all))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::UnexpectedEof, "{e}");
}

// ----- 5. error statuses -----

const STATUS_KINDS: [(Code, ErrorKind); 7] = [
    (Code::Unavailable, ErrorKind::ConnectionAborted),
    (Code::Internal, ErrorKind::Other),
    (Code::Unauthenticated, ErrorKind::PermissionDenied),
    (Code::PermissionDenied, ErrorKind::PermissionDenied),
    (Code::DeadlineExceeded, ErrorKind::TimedOut),
    (Code::ResourceExhausted, ErrorKind::InvalidData),
    (Code::NotFound, ErrorKind::NotFound),
];

fn assert_status_error(e: &std::io::Error, code: Code, kind: ErrorKind, message: &str) {
    assert_eq!(e.kind(), kind, "{code:?}: {e}");
    let status = Error::from_io(e)
        .and_then(|e| e.status())
        .unwrap_or_else(|| panic!("{code:?}: no status in {e:?}"));
    assert_eq!(status.code(), code, "{e}");
    assert_eq!(status.message(), message, "{e}");
    assert!(e.to_string().contains(message), "{e}");
}

#[tokio::test]
async fn error_status_after_data_maps_to_its_kind_and_keeps_the_status() {
    let mut peer = PeerServer::start().await;
    for (code, kind) in STATUS_KINDS {
        let mut s = connect(&peer.endpoint(), "t").await.unwrap();
        let call = peer.call().await;
        call.send_data(b"x").await;
        call.fail(Status::new(code, "scripted failure")).await;

        let mut buf = [0u8; 8];
        let n = read_n(&mut s, &mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"x");
        let e = read_n(&mut s, &mut buf).await.unwrap_err();
        assert_status_error(&e, code, kind, "scripted failure");
        // The first error is kept, for both halves.
        let e = read_n(&mut s, &mut buf).await.unwrap_err();
        assert_status_error(&e, code, kind, "scripted failure");
        let e = s.write_all(b"y").await.unwrap_err();
        assert_status_error(&e, code, kind, "scripted failure");
        assert_eq!(s.error().and_then(|e| e.status()).unwrap().code(), code);
    }
}

#[tokio::test]
async fn error_status_instead_of_headers_maps_to_its_kind() {
    for (code, kind) in STATUS_KINDS {
        let peer = PeerServer::start_rejecting(Status::new(code, "rejected")).await;
        let mut s = connect(&peer.endpoint(), "t").await.unwrap();
        let mut buf = [0u8; 8];
        let e = read_n(&mut s, &mut buf).await.unwrap_err();
        assert_status_error(&e, code, kind, "rejected");
        let e = s.write_all(b"y").await.unwrap_err();
        assert_status_error(&e, code, kind, "rejected");
    }
}

// ----- 6. trailing ABORTED after both GOAWAYs (Jumpstarter's Python peers) -----

#[tokio::test]
async fn trailing_aborted_after_both_go_aways_is_a_clean_close() {
    let mut peer = PeerServer::start().await;
    let mut s = connect(&peer.endpoint(), "t").await.unwrap();
    let mut call = peer.call().await;
    let payload = test_bytes(50 * KIB, 3);
    call.send_data(&payload[..20 * KIB]).await;
    call.send_data(&payload[20 * KIB..]).await;
    call.send(Frame::go_away()).await;

    let mut got = Vec::new();
    within(5, "read to EOF", s.read_to_end(&mut got))
        .await
        .unwrap();
    assert_eq!(got, payload);

    s.shutdown().await.unwrap();
    assert_eq!(call.frames_to_end().await, vec![Frame::go_away()]);
    // What a Python servicer does next: GOAWAY again from aclose(), then the call is aborted.
    call.send(Frame::go_away()).await;
    call.fail(Status::aborted("aclose")).await;

    within(5, "close", s.close())
        .await
        .expect("a trailing ABORTED after both GOAWAYs must not fail close()");
    let mut buf = [0u8; 8];
    assert_eq!(read_n(&mut s, &mut buf).await.unwrap(), 0);
}

// ----- 7. a peer frame over the size limit -----

#[tokio::test]
async fn frame_over_the_decoding_limit_is_an_error_not_eof() {
    let mut peer = PeerServer::start().await;
    let mut s = ClientBuilder::new(peer.endpoint())
        .max_message_size(64 * KIB)
        .connect("t")
        .await
        .unwrap();
    let call = peer.call().await;
    call.send_data(b"fits").await;
    call.send_data(&test_bytes(128 * KIB, 1)).await;
    call.send(Frame::go_away()).await;

    let mut buf = vec![0u8; 256 * KIB];
    let n = read_n(&mut s, &mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"fits");
    let e = read_n(&mut s, &mut buf)
        .await
        .expect_err("an oversized frame was taken for data or EOF");
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("too large") && msg.contains("65536"),
        "unclear message: {msg}"
    );
    let e = read_n(&mut s, &mut buf).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidData, "{e}");
}

// ----- 8. writes -----

#[tokio::test]
async fn large_write_is_split_into_frames_of_at_most_max_payload() {
    let mut peer = PeerServer::start().await;
    let mut s = ClientBuilder::new(peer.endpoint())
        .stream_options(StreamOptions::new().max_payload(64 * KIB))
        .connect("t")
        .await
        .unwrap();
    let mut call = peer.call().await;
    let data = test_bytes(200 * KIB, 5);
    s.write_all(&data).await.unwrap();
    s.shutdown().await.unwrap();

    let frames = call.frames_to_end().await;
    let sent = data_then_one_go_away(&frames);
    assert_eq!(sent, data);
    for f in &frames[..frames.len() - 1] {
        let len = f.payload().len();
        assert!(
            len > 0 && len <= 64 * KIB,
            "bad frame size: {}",
            describe(&frames)
        );
    }
    assert_eq!(frames.len() - 1, 4, "frames: {}", describe(&frames));
}

#[tokio::test]
async fn small_writes_are_coalesced_until_flush() {
    let mut peer = PeerServer::start().await;
    let mut s = connect(&peer.endpoint(), "t").await.unwrap();
    let mut call = peer.call().await;
    let data = test_bytes(10_000, 9);
    for piece in data.chunks(10) {
        s.write_all(piece).await.unwrap();
    }
    s.flush().await.unwrap();

    let mut frames = Vec::new();
    let mut got = 0;
    while got < data.len() {
        let f = call
            .next_frame()
            .await
            .unwrap()
            .expect("request ended early");
        got += f.payload().len();
        frames.push(f);
    }
    assert_eq!(data_of(&frames), data);
    assert_eq!(
        frames.len(),
        1,
        "10-byte writes were not coalesced: {}",
        describe(&frames)
    );

    s.shutdown().await.unwrap();
    assert_eq!(call.frames_to_end().await, vec![Frame::go_away()]);
}

#[tokio::test]
async fn vectored_writes_arrive_in_order() {
    let mut peer = PeerServer::start().await;
    let mut s = ClientBuilder::new(peer.endpoint())
        .stream_options(StreamOptions::new().max_payload(1000))
        .connect("t")
        .await
        .unwrap();
    let mut call = peer.call().await;
    let parts = [
        test_bytes(300, 1),
        Vec::new(),
        test_bytes(900, 2),
        test_bytes(2500, 3),
    ];
    let mut expected = Vec::new();
    for p in &parts {
        expected.extend_from_slice(p);
    }
    // Write the parts as one vectored write at a time, from where the last one stopped.
    let mut at = 0;
    while at < expected.len() {
        let mut slices = Vec::new();
        let mut skip = at;
        for p in &parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            slices.push(IoSlice::new(&p[skip..]));
            skip = 0;
        }
        let n = s.write_vectored(&slices).await.unwrap();
        assert!(n > 0);
        at += n;
    }
    s.shutdown().await.unwrap();
    let frames = call.frames_to_end().await;
    assert_eq!(data_then_one_go_away(&frames), expected);
    assert!(frames.len() > 1, "{}", describe(&frames));
    assert!(frames.iter().all(|f| f.payload().len() <= 1000));
}

#[tokio::test]
async fn zero_length_write_sends_no_frame() {
    let mut peer = PeerServer::start().await;
    let mut s = connect(&peer.endpoint(), "t").await.unwrap();
    let mut call = peer.call().await;
    assert_eq!(s.write(&[]).await.unwrap(), 0);
    s.flush().await.unwrap();
    let empty: [IoSlice<'_>; 2] = [IoSlice::new(&[]), IoSlice::new(&[])];
    assert_eq!(s.write_vectored(&empty).await.unwrap(), 0);
    s.flush().await.unwrap();
    s.flush().await.unwrap();
    s.write_all(b"x").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(
        call.frames_to_end().await,
        vec![Frame::Data(Bytes::from_static(b"x")), Frame::go_away()]
    );
}

#[tokio::test]
async fn shutdown_sends_one_go_away_ends_the_request_and_is_idempotent() {
    let mut peer = PeerServer::start().await;
    let mut s = connect(&peer.endpoint(), "t").await.unwrap();
    let mut call = peer.call().await;
    s.write_all(b"bye").await.unwrap();
    s.shutdown().await.unwrap();
    s.shutdown().await.unwrap();
    s.flush().await.unwrap();
    s.shutdown().await.unwrap();

    let e = s.write(b"more").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BrokenPipe, "{e}");
    assert!(
        matches!(Error::from_io(&e), Some(Error::WriteAfterShutdown)),
        "{e:?}"
    );
    let e = s.write_all(b"more").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BrokenPipe, "{e}");

    // Exactly: the data, one GOAWAY, and the end of the request stream.
    assert_eq!(
        call.frames_to_end().await,
        vec![Frame::Data(Bytes::from_static(b"bye")), Frame::go_away()]
    );
    // Reading still works after our shutdown.
    call.send_data(b"answer").await;
    call.send(Frame::go_away()).await;
    let _inbound = call.end();
    let mut got = Vec::new();
    within(5, "read", s.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"answer");
    within(5, "close", s.close()).await.unwrap();
    // And the broken pipe stays.
    let e = s.write(b"more").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::BrokenPipe, "{e}");
}

// ----- 9. drop without shutdown -----

/// A client stream that wrote "abc", in the given read state, dropped without shutdown;
/// returns what the peer saw after "abc" (up to the end of the request stream).
async fn drop_client_stream(read_first: bool) -> (Vec<Frame>, raw::Call) {
    let mut peer = PeerServer::start().await;
    let mut s = connect(&peer.endpoint(), "t").await.unwrap();
    let mut call = peer.call().await;
    s.write_all(b"abc").await.unwrap();
    s.flush().await.unwrap();
    if read_first {
        // The response headers and a first frame are in: the read half is open.
        call.send_data(b"x").await;
        let mut b = [0u8; 1];
        within(5, "read", s.read_exact(&mut b)).await.unwrap();
    }
    assert_eq!(
        call.next_frame().await.unwrap(),
        Some(Frame::Data(Bytes::from_static(b"abc")))
    );
    drop(s);
    let mut after = Vec::new();
    // Then the request ends, or the call is reset (a tonic server sees a client's cancel as
    // the end of the request stream).
    while let Ok(Some(f)) = call.next_frame().await {
        after.push(f);
    }
    (after, call)
}

#[tokio::test]
async fn client_drop_without_shutdown_cancels_the_call_and_never_looks_finished() {
    for read_first in [false, true] {
        let (after, call) = drop_client_stream(read_first).await;
        assert!(
            !after.is_empty() && after.iter().all(|f| matches!(f, Frame::RstStream(_))),
            "a dropped stream must send RST_STREAM and nothing else: {}",
            describe(&after)
        );
        // The call is cancelled: tonic drops the response stream.
        within(5, "the call to be cancelled", call.tx.closed()).await;
    }
}

#[tokio::test]
async fn client_drop_without_shutdown_sends_rst_stream() {
    for read_first in [false, true] {
        let (after, _call) = drop_client_stream(read_first).await;
        assert_eq!(
            after,
            vec![Frame::rst_stream()],
            "the peer must see RST_STREAM (read half open: {read_first})"
        );
    }
}

#[tokio::test]
async fn servicer_drop_without_shutdown_resets_and_ends_with_an_error_status() {
    let mut srv = AcceptingServer::start().await;
    let mut raw = within(5, "raw call", RawCall::open(&srv.endpoint()))
        .await
        .unwrap();
    let mut st = srv.stream().await;
    raw.send_data(b"hello").await;
    let mut buf = [0u8; 5];
    within(5, "servicer read", st.read_exact(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf, b"hello");
    drop(st);

    assert_eq!(raw.next_frame().await.unwrap(), Some(Frame::rst_stream()));
    let status = raw
        .next_frame()
        .await
        .expect_err("a dropped servicer stream must end the call with an error status");
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
}

// ----- 10. a servicer keeps its response open after its own GOAWAY -----

#[tokio::test]
async fn servicer_keeps_the_response_open_after_its_go_away_until_its_read_half_ends() {
    let mut srv = AcceptingServer::start().await;
    let mut raw = within(5, "raw call", RawCall::open(&srv.endpoint()))
        .await
        .unwrap();
    let mut st = srv.stream().await;

    st.write_all(b"from servicer").await.unwrap();
    within(5, "servicer shutdown", st.shutdown()).await.unwrap();
    assert_eq!(
        raw.next_frame().await.unwrap(),
        Some(Frame::Data(Bytes::from_static(b"from servicer")))
    );
    assert_eq!(raw.next_frame().await.unwrap(), Some(Frame::go_away()));
    // The response must stay open: nothing more, and no end of the call yet.
    let early = tokio::time::timeout(Duration::from_millis(300), raw.responses.message()).await;
    assert!(
        early.is_err(),
        "the servicer ended its response before its read half was done: {early:?}"
    );

    // The client goes on sending after the servicer's GOAWAY.
    let big = test_bytes(300 * KIB, 4);
    raw.send_data(b"late ").await;
    for piece in big.chunks(60 * KIB) {
        raw.send_data(piece).await;
    }
    raw.send(Frame::go_away()).await;
    raw.end();

    let mut got = Vec::new();
    within(5, "servicer reads to EOF", st.read_to_end(&mut got))
        .await
        .unwrap();
    let mut expected = b"late ".to_vec();
    expected.extend_from_slice(&big);
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "servicer read different bytes");
    // With the read half done (and the stream still alive), the response ends with OK.
    assert_eq!(raw.next_frame().await.unwrap(), None);
    within(5, "servicer close", st.close()).await.unwrap();
}

// ----- 11. a write cancelled at Pending -----

/// Writes pattern bytes until a write makes no progress for 300 ms (the peer does not read);
/// returns the bytes accepted. Each timed-out write is a write cancelled at `Pending`.
async fn fill_until_stalled(s: &mut RouterStream, limit: usize) -> Vec<u8> {
    let mut written = Vec::new();
    let mut buf = vec![0u8; 64 * KIB];
    loop {
        support::fill_pattern(&mut buf, written.len() as u64, 11);
        match tokio::time::timeout(Duration::from_millis(300), s.write(&buf)).await {
            Ok(Ok(n)) => {
                assert!(n > 0 && n <= buf.len());
                written.extend_from_slice(&buf[..n]);
            }
            Ok(Err(e)) => panic!("write failed: {e}"),
            Err(_) => return written,
        }
        assert!(
            written.len() < limit,
            "a stalled peer never stopped the writer: {} bytes accepted",
            written.len()
        );
    }
}

#[tokio::test]
async fn write_cancelled_at_pending_never_sends_its_bytes() {
    let mut peer = PeerServer::start().await;
    let mut s = connect(&peer.endpoint(), "t").await.unwrap();
    let mut call = peer.call().await; // not read until the end

    let mut written = fill_until_stalled(&mut s, 64 * MIB).await;
    // One more cancelled write, of a different buffer, polled by hand.
    let a = vec![0xEEu8; 64 * KIB];
    let mut task = tokio_test::task::spawn(());
    loop {
        match task.enter(|cx, _| Pin::new(&mut s).poll_write(cx, &a)) {
            std::task::Poll::Ready(Ok(n)) => written.extend_from_slice(&a[..n]),
            std::task::Poll::Ready(Err(e)) => panic!("write failed: {e}"),
            std::task::Poll::Pending => break,
        }
        assert!(written.len() < 64 * MIB);
    }
    drop(task); // the write of `a` is cancelled at Pending

    let b: Vec<u8> = b"BBBB-the-next-buffer-".repeat(100);
    let b2 = b.clone();
    let writer = tokio::spawn(async move {
        s.write_all(&b2).await.unwrap();
        s.shutdown().await.unwrap();
        s
    });
    // Now the peer reads everything.
    let frames = within(10, "peer reads", call.frames_to_end()).await;
    let got = data_then_one_go_away(&frames);
    written.extend_from_slice(&b);
    assert_eq!(got.len(), written.len(), "wrong byte count");
    assert!(
        got == written,
        "the peer received bytes of a cancelled write (first difference at {:?})",
        got.iter().zip(&written).position(|(x, y)| x != y)
    );
    let mut s = within(5, "writer", writer).await.unwrap();
    call.send(Frame::go_away()).await;
    let _inbound = call.end();
    within(5, "close", s.close()).await.unwrap();
}

// ----- 12. a stalled reader keeps memory bounded -----

#[tokio::test]
async fn stalled_reader_stops_the_writer_within_a_few_mib() {
    let mut peer = PeerServer::start().await;
    let mut s = connect(&peer.endpoint(), "t").await.unwrap();
    let mut call = peer.call().await;

    let written = fill_until_stalled(&mut s, 64 * MIB).await;
    assert!(
        written.len() < 16 * MIB,
        "{} bytes accepted by a stream whose peer does not read",
        written.len()
    );
    assert!(written.len() >= 64 * KIB, "{} bytes", written.len());
    // Still stalled a moment later.
    let more = tokio::time::timeout(Duration::from_millis(200), s.write(&[1u8; 1024])).await;
    assert!(more.is_err(), "a write went through a stalled peer");

    // Once the peer reads, everything accepted arrives intact.
    let writer = tokio::spawn(async move {
        s.shutdown().await.unwrap();
        s
    });
    let frames = within(10, "peer reads", call.frames_to_end()).await;
    let got = data_then_one_go_away(&frames);
    assert_eq!(got.len(), written.len());
    assert!(got == written);
    let mut s = within(5, "writer", writer).await.unwrap();
    call.send(Frame::go_away()).await;
    let _inbound = call.end();
    within(5, "close", s.close()).await.unwrap();
}

// ----- 13. copy_bidirectional with a TcpStream, half-close, 64 MiB each way -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_bidirectional_tcp_to_router_stream_64_mib_each_way() {
    const LEN: u64 = 64 * 1024 * 1024;
    let r = TestRouter::start().await;
    let tok = token("copy-bidirectional");
    let mut direct = connect(&r.endpoint(), &tok).await.unwrap();
    let mut bridged = connect(&r.endpoint(), &tok).await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut tcp_client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (mut tcp_server, _) = listener.accept().await.unwrap();

    let bridge = tokio::spawn(async move {
        let counts = tokio::io::copy_bidirectional(&mut tcp_server, &mut bridged).await?;
        bridged.close().await?;
        Ok::<_, std::io::Error>(counts)
    });
    // The TCP side: reads everything to EOF, then answers with its own 64 MiB and a FIN.
    let tcp_side = tokio::spawn(async move {
        let got = recv_all(&mut tcp_client).await?;
        let sent = send_pattern(&mut tcp_client, LEN, 22, 64 * 1024).await?;
        tcp_client.shutdown().await?;
        Ok::<_, std::io::Error>((got, sent))
    });
    // The direct side: sends 64 MiB, half-closes, then reads the answer to EOF.
    let direct_side = async {
        let sent = send_pattern(&mut direct, LEN, 21, 64 * 1024).await?;
        direct.shutdown().await?;
        let got = recv_all(&mut direct).await?;
        direct.close().await?;
        Ok::<_, std::io::Error>((sent, got))
    };
    let (direct_sent, direct_got) = within(240, "direct side", direct_side).await.unwrap();
    let (tcp_got, tcp_sent) = within(60, "tcp side", tcp_side).await.unwrap().unwrap();
    let counts = within(60, "bridge", bridge).await.unwrap().unwrap();

    assert_eq!(direct_sent, pattern_sha(LEN, 21));
    assert_eq!(tcp_got, (LEN, direct_sent));
    assert_eq!(tcp_sent, pattern_sha(LEN, 22));
    assert_eq!(direct_got, (LEN, tcp_sent));
    assert_eq!(counts, (LEN, LEN));
    r.wait_for("pair to end", |s| s.active == 0).await;
    assert_eq!(r.router.stats().aborts_total, 0);
}

// ----- 14. tokio_util::codec::Framed over a RouterStream -----

/// Runs `msgs` from A to B through the router and B's echo back.
async fn framed_echo<C, T, E>(name: &str, codec: impl Fn() -> C, msgs: Vec<T>) -> Vec<T>
where
    C: tokio_util::codec::Decoder<Item = T, Error = E>
        + tokio_util::codec::Encoder<T, Error = E>
        + Send
        + 'static,
    E: std::fmt::Debug + From<std::io::Error> + Send + 'static,
    T: Send + 'static,
{
    let r = TestRouter::start().await;
    let tok = token(name);
    let a = connect(&r.endpoint(), &tok).await.unwrap();
    let b = connect(&r.endpoint(), &tok).await.unwrap();

    // B: one `Framed` that echoes every message, finishes when A does.
    let mut fb = Framed::new(b, codec());
    let echo = tokio::spawn(async move {
        while let Some(m) = fb.next().await {
            fb.send(m.unwrap()).await.unwrap();
        }
        fb.close().await.unwrap(); // shutdown: GOAWAY
        fb.into_inner().close().await.unwrap();
    });

    // A: a framed reader and writer over the halves of a split stream, in two tasks.
    let (ar, aw) = tokio::io::split(a);
    let mut a_in = FramedRead::new(ar, codec());
    let mut a_out = FramedWrite::new(aw, codec());
    let sender = tokio::spawn(async move {
        for m in msgs {
            a_out.send(m).await.unwrap();
        }
        a_out.close().await.unwrap(); // shutdown: GOAWAY
        a_out
    });
    let mut back = Vec::new();
    while let Some(m) = within(10, "echoed message", a_in.next()).await {
        back.push(m.unwrap());
    }
    let a_out = within(5, "sender", sender).await.unwrap();
    within(5, "echo", echo).await.unwrap();
    let mut a = a_in.into_inner().unsplit(a_out.into_inner());
    within(5, "close", a.close()).await.unwrap();
    back
}

#[tokio::test]
async fn framed_length_delimited_round_trip() {
    let msgs: Vec<BytesMut> = [
        &b"hello"[..],
        b"",
        &test_bytes(200 * KIB, 1),
        b"x",
        &test_bytes(70_000, 2),
        b"bye",
    ]
    .iter()
    .map(|m| BytesMut::from(*m))
    .collect();
    let back = framed_echo(
        "framed-length-delimited",
        || {
            Ld(LengthDelimitedCodec::builder()
                .max_frame_length(MIB)
                .new_codec())
        },
        msgs.clone(),
    )
    .await;
    assert_eq!(back, msgs);
}

// `framed_echo` needs the codec to decode what it encodes; `LengthDelimitedCodec` decodes
// `BytesMut` and encodes `Bytes`, so it goes through this adapter.
#[derive(Clone)]
struct Ld(LengthDelimitedCodec);

impl tokio_util::codec::Decoder for Ld {
    type Item = BytesMut;
    type Error = std::io::Error;
    fn decode(&mut self, src: &mut BytesMut) -> std::io::Result<Option<BytesMut>> {
        self.0.decode(src)
    }
}

impl tokio_util::codec::Encoder<BytesMut> for Ld {
    type Error = std::io::Error;
    fn encode(&mut self, item: BytesMut, dst: &mut BytesMut) -> std::io::Result<()> {
        self.0.encode(item.freeze(), dst)
    }
}

#[tokio::test]
async fn framed_lines_round_trip() {
    let long = "λ".repeat(50_000);
    let msgs: Vec<String> = vec![
        "hello".into(),
        String::new(),
        "ünïcödé ✓".into(),
        long,
        "last line".into(),
    ];
    let back = framed_echo("framed-lines", LinesCodec::new, msgs.clone()).await;
    assert_eq!(back, msgs);
}

// ----- 15. a router that holds response headers until the peer's first frame -----

struct Waiting {
    inbound: Streaming<StreamRequest>,
    tx: mpsc::Sender<Result<StreamResponse, Status>>,
    /// Lets this caller's handler return its response headers.
    release: oneshot::Sender<()>,
    done: Arc<tokio::sync::Barrier>,
}

/// Pairs two callers by their authorization header, like Jumpstarter's Go router, and
/// returns each caller's response (headers) only once the other caller's first frame arrived.
struct HoldingRouter {
    pending: Arc<Mutex<HashMap<String, Waiting>>>,
    /// Each caller that starts waiting for its peer.
    arrivals: mpsc::UnboundedSender<String>,
}

/// Forwards `from` to `to`; the first frame releases the receiver's headers. `to` ends (OK)
/// only once both request streams have ended, as a router must.
async fn forward(
    mut from: Streaming<StreamRequest>,
    to: mpsc::Sender<Result<StreamResponse, Status>>,
    release: oneshot::Sender<()>,
    done: Arc<tokio::sync::Barrier>,
) {
    let mut release = Some(release);
    loop {
        match from.message().await {
            Ok(Some(m)) => {
                if let Some(r) = release.take() {
                    let _ = r.send(());
                }
                let msg = StreamResponse {
                    payload: m.payload,
                    frame_type: m.frame_type,
                };
                if to.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
            Ok(None) => break,
            Err(s) => {
                let _ = to.send(Err(s)).await;
                return;
            }
        }
    }
    done.wait().await;
}

#[tonic::async_trait]
impl RouterService for HoldingRouter {
    type StreamStream = BoxResponses;

    async fn stream(
        &self,
        request: Request<Streaming<StreamRequest>>,
    ) -> Result<Response<BoxResponses>, Status> {
        let id = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::unauthenticated("no token"))?
            .to_string();
        let (tx, rx) = mpsc::channel(16);
        let (release, released) = oneshot::channel();
        let me = Waiting {
            inbound: request.into_inner(),
            tx,
            release,
            done: Arc::new(tokio::sync::Barrier::new(2)),
        };
        let peer = {
            let mut pending = self.pending.lock().unwrap();
            match pending.remove(&id) {
                Some(peer) => Some((peer, me)),
                None => {
                    pending.insert(id.clone(), me);
                    let _ = self.arrivals.send(id);
                    None
                }
            }
        };
        if let Some((peer, me)) = peer {
            tokio::spawn(forward(
                me.inbound,
                peer.tx,
                peer.release,
                peer.done.clone(),
            ));
            tokio::spawn(forward(peer.inbound, me.tx, me.release, peer.done));
        }
        // The headers wait for the peer's first frame.
        released
            .await
            .map_err(|_| Status::aborted("peer left before speaking"))?;
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as BoxResponses
        ))
    }
}

#[tokio::test]
async fn connect_does_not_wait_for_headers_held_until_the_peer_speaks() {
    let (arrivals, mut arrived) = mpsc::unbounded_channel();
    let router = HoldingRouter {
        pending: Arc::default(),
        arrivals,
    };
    let (addr, _stop) = serve(router).await;
    let endpoint = format!("http://{addr}");

    // A connects first and waits to be spoken to.
    let mut a = within(5, "connect A", connect(&endpoint, "pair-15"))
        .await
        .expect("connect() must not wait for response headers");
    let first = within(5, "A waits at the router", arrived.recv()).await;
    assert_eq!(first.as_deref(), Some("Bearer pair-15"));
    let a_side = tokio::spawn(async move {
        let mut req = [0u8; 12];
        a.read_exact(&mut req).await?;
        assert_eq!(&req, b"hello from B");
        let mut rest = Vec::new();
        a.read_to_end(&mut rest).await?;
        assert!(rest.is_empty());
        a.write_all(b"reply from A").await?;
        a.shutdown().await?;
        a.close().await?;
        Ok::<_, std::io::Error>(())
    });

    // B connects and speaks first.
    let mut b = within(5, "connect B", connect(&endpoint, "pair-15"))
        .await
        .expect("connect() must not wait for response headers");
    within(5, "B writes", async {
        b.write_all(b"hello from B").await?;
        b.shutdown().await
    })
    .await
    .unwrap();
    let mut reply = Vec::new();
    within(5, "B reads the reply", b.read_to_end(&mut reply))
        .await
        .unwrap();
    assert_eq!(reply, b"reply from A");
    within(5, "B close", b.close()).await.unwrap();
    within(5, "A side", a_side).await.unwrap().unwrap();
}

#[tokio::test]
async fn writes_go_out_while_response_headers_are_held() {
    let mut peer = PeerServer::start_holding_headers().await;
    let mut s = connect(&peer.endpoint(), "t").await.unwrap();
    let mut call = peer.call().await;
    within(5, "write before headers", async {
        s.write_all(b"early").await?;
        s.flush().await
    })
    .await
    .unwrap();
    assert_eq!(
        call.next_frame().await.unwrap(),
        Some(Frame::Data(Bytes::from_static(b"early")))
    );
    // A read waits for the headers (the server holds them: nothing can come before), and
    // gets the data once they come.
    let mut got = Vec::new();
    let mut reader = tokio_test::task::spawn(s.read_to_end(&mut got));
    tokio_test::assert_pending!(reader.poll());
    call.release.take().unwrap().send(()).unwrap();
    call.send_data(b"late answer").await;
    call.send(Frame::go_away()).await;
    within(5, "reader", reader).await.unwrap();
    assert_eq!(got, b"late answer");
    s.shutdown().await.unwrap();
    assert_eq!(call.frames_to_end().await, vec![Frame::go_away()]);
    let _inbound = call.end();
    within(5, "close", s.close()).await.unwrap();
}

// ----- PING (opt-in keepalive frames) -----

#[tokio::test]
async fn opt_in_pings_are_sent_while_an_idle_stream_is_read() {
    let mut peer = PeerServer::start().await;
    let mut s = ClientBuilder::new(peer.endpoint())
        .stream_options(StreamOptions::new().ping_interval(Some(Duration::from_millis(50))))
        .connect("t")
        .await
        .unwrap();
    let mut call = peer.call().await;
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.map(|_| (s, got))
    });
    // Idle while being read: PING frames reach the peer.
    for _ in 0..2 {
        assert_eq!(call.next_frame().await.unwrap(), Some(Frame::ping()));
    }
    call.send_data(b"data").await;
    call.send(Frame::go_away()).await;
    let (mut s, got) = within(5, "reader", reader).await.unwrap().unwrap();
    assert_eq!(got, b"data");
    s.shutdown().await.unwrap();
    let frames = call.frames_to_end().await;
    let (last, pings) = frames.split_last().unwrap();
    assert_eq!(last, &Frame::go_away());
    assert!(
        pings.iter().all(|f| f == &Frame::ping()),
        "{}",
        describe(&frames)
    );
    // The two PINGs read above came before these; none need follow.
    let _inbound = call.end();
    within(5, "close", s.close()).await.unwrap();
}
