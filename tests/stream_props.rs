#![cfg(feature = "client")]
//! Property tests over real loopback calls: arbitrary write chunkings (with flushes) and
//! arbitrary `max_payload`, on the client and the servicer side, reach the peer as the same
//! bytes in DATA frames of at most `max_payload` bytes; and arbitrary frame splittings from the
//! peer (with empty DATA, PING and unknown frames among them), read with arbitrary buffer sizes
//! or `read_chunk`, deliver the same bytes and then EOF.

mod support;
use support::raw;
use support::test_bytes;

use bytes::Bytes;
use jumpstarter_router::{ClientBuilder, Frame, StreamOptions};
use proptest::prelude::*;
use raw::{describe, within, AcceptingServer, PeerServer, RawCall};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// At most this many DATA frames per case, so that a `max_payload` of a few bytes stays fast.
const MAX_FRAMES: usize = 1000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Writes `data` in `chunks` (flushing where asked), then shuts down.
async fn write_chunked<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8], chunks: &[(usize, bool)]) {
    let mut at = 0;
    for &(len, flush) in chunks {
        if at == data.len() {
            break;
        }
        let n = len.min(data.len() - at);
        w.write_all(&data[at..at + n]).await.unwrap();
        at += n;
        if flush {
            w.flush().await.unwrap();
        }
    }
    w.write_all(&data[at..]).await.unwrap();
    w.shutdown().await.unwrap();
}

/// Checks the frames a writer sent: DATA of 1..=max_payload bytes carrying `data`, no more
/// frames than full frames plus one per flush and shutdown, then exactly one GOAWAY.
fn check_sent(frames: &[Frame], data: &[u8], max_payload: usize, flushes: usize) {
    let (last, body) = frames.split_last().expect("no frames");
    assert_eq!(last, &Frame::go_away(), "{}", describe(frames));
    let mut got = Vec::with_capacity(data.len());
    for f in body {
        match f {
            Frame::Data(p) => {
                assert!(
                    !p.is_empty() && p.len() <= max_payload,
                    "bad DATA size (max {max_payload}): {}",
                    describe(frames)
                );
                got.extend_from_slice(p);
            }
            other => panic!("unexpected {other:?} in {}", describe(frames)),
        }
    }
    assert_eq!(got.len(), data.len());
    assert!(got == data, "different bytes");
    assert!(
        body.len() <= data.len() / max_payload + flushes + 1,
        "writes not coalesced ({} bytes, max {max_payload}, {flushes} flushes): {}",
        data.len(),
        describe(frames)
    );
}

async fn client_writes(chunks: Vec<(usize, bool)>, max_payload: usize) {
    let mut peer = PeerServer::start().await;
    let mut s = ClientBuilder::new(peer.endpoint())
        .stream_options(StreamOptions::new().max_payload(max_payload))
        .connect("t")
        .await
        .unwrap();
    let mut call = peer.call().await;
    let total: usize = chunks.iter().map(|c| c.0).sum();
    let data = test_bytes(total.min(max_payload * MAX_FRAMES), 42);
    let reader = tokio::spawn(async move { call.frames_to_end().await });
    within(20, "client writes", write_chunked(&mut s, &data, &chunks)).await;
    let frames = within(20, "peer reads", reader).await.unwrap();
    let flushes = chunks.iter().filter(|c| c.1).count();
    check_sent(&frames, &data, max_payload, flushes);
}

async fn servicer_writes(chunks: Vec<(usize, bool)>, max_payload: usize) {
    let mut srv = AcceptingServer::with(StreamOptions::new().max_payload(max_payload)).await;
    let mut raw = within(5, "raw call", RawCall::open(&srv.endpoint()))
        .await
        .unwrap();
    let mut st = srv.stream().await;
    let total: usize = chunks.iter().map(|c| c.0).sum();
    let data = test_bytes(total.min(max_payload * MAX_FRAMES), 43);
    let reader = tokio::spawn(async move {
        let mut frames = Vec::new();
        loop {
            let f = raw
                .next_frame()
                .await
                .unwrap()
                .expect("response ended early");
            let done = f == Frame::go_away();
            frames.push(f);
            if done {
                break;
            }
        }
        raw.send(Frame::go_away()).await;
        raw.end();
        // The servicer's response ends with OK once it read our GOAWAY.
        assert_eq!(raw.next_frame().await.unwrap(), None);
        frames
    });
    within(
        20,
        "servicer writes",
        write_chunked(&mut st, &data, &chunks),
    )
    .await;
    let mut rest = Vec::new();
    within(5, "servicer reads EOF", st.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(rest.is_empty());
    let frames = within(20, "client reads", reader).await.unwrap();
    let flushes = chunks.iter().filter(|c| c.1).count();
    check_sent(&frames, &data, max_payload, flushes);
}

#[derive(Clone, Debug)]
enum PeerFrame {
    Data(usize),
    EmptyData,
    Ping,
    Unknown,
}

#[derive(Clone, Copy, Debug)]
enum ReadOp {
    Read(usize),
    Chunk,
}

async fn client_reads(frames: Vec<PeerFrame>, reads: Vec<ReadOp>) {
    let mut peer = PeerServer::start().await;
    let mut s = ClientBuilder::new(peer.endpoint())
        .connect("t")
        .await
        .unwrap();
    let call = peer.call().await;
    let total: usize = frames
        .iter()
        .map(|f| match f {
            PeerFrame::Data(n) => *n,
            _ => 0,
        })
        .sum();
    let data = Bytes::from(test_bytes(total, 44));
    let to_send = data.clone();
    let sender = tokio::spawn(async move {
        let mut at = 0;
        for f in frames {
            let frame = match f {
                PeerFrame::Data(n) => {
                    at += n;
                    Frame::Data(to_send.slice(at - n..at))
                }
                PeerFrame::EmptyData => Frame::Data(Bytes::new()),
                PeerFrame::Ping => Frame::ping(),
                PeerFrame::Unknown => Frame::Unknown {
                    frame_type: 9,
                    payload: Bytes::from_static(b"?"),
                },
            };
            call.send(frame).await;
        }
        call.send(Frame::go_away()).await;
        call
    });

    let mut got = Vec::with_capacity(total);
    let mut buf = vec![0u8; 100_000];
    let mut ops = reads.iter().cycle();
    let read_all = async {
        loop {
            let n = match *ops.next().unwrap() {
                ReadOp::Read(max) => {
                    let n = s.read(&mut buf[..max]).await.unwrap();
                    got.extend_from_slice(&buf[..n]);
                    n
                }
                ReadOp::Chunk => match s.read_chunk().await.unwrap() {
                    Some(chunk) => {
                        assert!(!chunk.is_empty(), "read_chunk returned an empty chunk");
                        got.extend_from_slice(&chunk);
                        chunk.len()
                    }
                    None => 0,
                },
            };
            if n == 0 {
                break;
            }
            assert!(got.len() <= total, "more bytes than sent");
        }
    };
    within(30, "reads to EOF", read_all).await;
    assert_eq!(got.len(), total, "EOF before all data");
    assert!(got == data[..], "different bytes");
    assert!(s.is_read_closed());
    let _call = within(5, "sender", sender).await.unwrap();
}

fn peer_frame() -> impl Strategy<Value = PeerFrame> {
    prop_oneof![
        6 => (1usize..100_000).prop_map(PeerFrame::Data),
        2 => (1usize..64).prop_map(PeerFrame::Data),
        2 => Just(PeerFrame::EmptyData),
        1 => Just(PeerFrame::Ping),
        1 => Just(PeerFrame::Unknown),
    ]
}

fn read_op() -> impl Strategy<Value = ReadOp> {
    prop_oneof![
        3 => (1usize..100_000).prop_map(ReadOp::Read),
        1 => (1usize..16).prop_map(ReadOp::Read),
        1 => Just(ReadOp::Chunk),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn any_write_chunking_and_max_payload_deliver_the_same_bytes(
        chunks in prop::collection::vec((1usize..100_000, any::<bool>()), 1..8),
        max_payload in prop_oneof![1usize..200_000, 1usize..64],
        servicer in any::<bool>(),
    ) {
        let rt = runtime();
        if servicer {
            rt.block_on(servicer_writes(chunks, max_payload));
        } else {
            rt.block_on(client_writes(chunks, max_payload));
        }
    }

    #[test]
    fn any_peer_frame_splitting_delivers_the_same_bytes(
        frames in prop::collection::vec(peer_frame(), 0..12),
        reads in prop::collection::vec(read_op(), 1..6),
    ) {
        runtime().block_on(client_reads(frames, reads));
    }
}
