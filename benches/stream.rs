//! `RouterStream` against the raw tonic stream it wraps, over a loopback tonic connection.
//!
//! ```text
//! cargo bench --all-features --bench stream
//! ```
//!
//! One tonic server (a raw `RouterService`) and, per benchmark, one client call:
//!
//! - `upload/{adapter,raw}/W`: the client sends 8 MiB in writes of W bytes, the server acks
//!   every 8 MiB with a 1-byte DATA frame, the client waits for the ack. The adapter gets
//!   `write_all(&[u8])` + `flush`; the raw client sends one `StreamRequest` per write with a
//!   zero-copy `Bytes` payload through a channel, as a hand-written tonic client would.
//! - `download/{adapter,raw}/W`: the client asks for 8 MiB and the server sends it in DATA
//!   frames of W bytes. The adapter reads with `AsyncRead::read` into a 64 KiB buffer (a copy,
//!   as `copy_bidirectional` does), `adapter_chunks` with `read_chunk` (no copy); the raw
//!   client takes the messages.
//! - `max_payload/P`: the adapter uploading with 64 KiB writes and a largest frame of P bytes;
//!   this chooses [`DEFAULT_MAX_PAYLOAD`](jumpstarter_router::DEFAULT_MAX_PAYLOAD).

use std::pin::Pin;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_core::Stream;
use jumpstarter_router::proto::router_service_client::RouterServiceClient;
use jumpstarter_router::proto::router_service_server::{RouterService, RouterServiceServer};
use jumpstarter_router::proto::{FrameType, StreamRequest, StreamResponse};
use jumpstarter_router::{ClientBuilder, RouterStream, StreamOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

/// Bytes per iteration.
const BATCH: usize = 8 << 20;
const SIZES: [usize; 3] = [1 << 10, 16 << 10, 64 << 10];

// ===== the server =====

type Frames = Pin<Box<dyn Stream<Item = Result<StreamResponse, Status>> + Send>>;

/// Upload: counts DATA bytes, acks every `BATCH`. Download: each DATA frame from the client
/// asks for `BATCH` bytes in frames of the `frame` metadata's size.
struct Bench {
    slab: Bytes,
}

fn data(payload: Bytes) -> StreamResponse {
    StreamResponse {
        payload,
        frame_type: FrameType::Data as i32,
    }
}

#[tonic::async_trait]
impl RouterService for Bench {
    type StreamStream = Frames;

    async fn stream(
        &self,
        request: Request<Streaming<StreamRequest>>,
    ) -> Result<Response<Frames>, Status> {
        let frame: usize = request
            .metadata()
            .get("frame")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let slab = self.slab.clone();
        tokio::spawn(async move {
            let mut counted = 0;
            while let Ok(Some(req)) = inbound.message().await {
                if req.frame_type != FrameType::Data as i32 {
                    continue;
                }
                if frame == 0 {
                    counted += req.payload.len();
                    while counted >= BATCH {
                        counted -= BATCH;
                        if tx.send(Ok(data(Bytes::from_static(b"k")))).await.is_err() {
                            return;
                        }
                    }
                } else {
                    let mut left = BATCH;
                    while left > 0 {
                        let n = frame.min(left);
                        if tx.send(Ok(data(slab.slice(..n)))).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Setup {
    rt: Runtime,
    channel: Channel,
    slab: Bytes,
}

fn setup() -> Setup {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let slab = Bytes::from(vec![0x5a; 1 << 20]);
    let channel = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = RouterServiceServer::new(Bench { slab: slab.clone() })
            .max_decoding_message_size(8 << 20);
        tokio::spawn(
            tonic::transport::Server::builder()
                .initial_stream_window_size(4 << 20)
                .initial_connection_window_size(8 << 20)
                .tcp_nodelay(true)
                .serve_with_incoming(
                    svc,
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                ),
        );
        // The same channel settings for both clients: the crate's defaults.
        ClientBuilder::new(format!("http://{addr}"))
            .channel()
            .await
            .unwrap()
    });
    Setup { rt, channel, slab }
}

// ===== the clients =====

/// A raw tonic call: requests through a channel, responses as tonic's `Streaming`.
struct Raw {
    tx: mpsc::Sender<StreamRequest>,
    rx: Streaming<StreamResponse>,
}

async fn raw(channel: &Channel, frame: usize) -> Raw {
    let (tx, rx) = mpsc::channel(4);
    let mut req = Request::new(ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("frame", frame.to_string().parse().unwrap());
    let rx = RouterServiceClient::new(channel.clone())
        .max_decoding_message_size(8 << 20)
        .stream(req)
        .await
        .unwrap()
        .into_inner();
    Raw { tx, rx }
}

fn adapter(channel: &Channel, frame: usize, opts: &StreamOptions) -> RouterStream {
    let mut client = RouterServiceClient::new(channel.clone()).max_decoding_message_size(8 << 20);
    RouterStream::from_call(
        move |requests| async move {
            let mut req = Request::new(requests);
            req.metadata_mut()
                .insert("frame", frame.to_string().parse().unwrap());
            client.stream(req).await
        },
        opts,
    )
}

fn req(payload: Bytes) -> StreamRequest {
    StreamRequest {
        payload,
        frame_type: FrameType::Data as i32,
    }
}

async fn upload_adapter(s: &mut RouterStream, src: &[u8], write: usize) {
    for chunk in src[..BATCH].chunks(write) {
        s.write_all(chunk).await.unwrap();
    }
    s.flush().await.unwrap();
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await.unwrap();
}

async fn upload_raw(r: &mut Raw, slab: &Bytes, write: usize) {
    let mut left = BATCH;
    while left > 0 {
        let n = write.min(left);
        let at = (BATCH - left) % (slab.len() - n + 1);
        r.tx.send(req(slab.slice(at..at + n))).await.unwrap();
        left -= n;
    }
    let ack = r.rx.message().await.unwrap().unwrap();
    assert_eq!(ack.payload.len(), 1);
}

async fn download_adapter(s: &mut RouterStream, buf: &mut [u8]) {
    s.write_all(b"?").await.unwrap();
    s.flush().await.unwrap();
    let mut left = BATCH;
    while left > 0 {
        let n = s.read(buf).await.unwrap();
        assert!(n > 0, "early EOF");
        left -= n;
    }
}

async fn download_chunks(s: &mut RouterStream) {
    s.write_all(b"?").await.unwrap();
    s.flush().await.unwrap();
    let mut left = BATCH;
    while left > 0 {
        let chunk = s.read_chunk().await.unwrap().expect("early EOF");
        left -= chunk.len();
    }
}

async fn download_raw(r: &mut Raw) {
    r.tx.send(req(Bytes::from_static(b"?"))).await.unwrap();
    let mut left = BATCH;
    while left > 0 {
        let m = r.rx.message().await.unwrap().unwrap();
        left -= m.payload.len();
    }
}

/// Times `iters` runs of an async expression inside the runtime.
macro_rules! timed {
    ($rt:expr, $iters:expr, $run:expr) => {
        $rt.block_on(async {
            let start = Instant::now();
            for _ in 0..$iters {
                $run.await;
            }
            start.elapsed()
        })
    };
}

// ===== the benchmarks =====

fn upload(c: &mut Criterion) {
    let Setup { rt, channel, slab } = setup();
    let src = vec![0x5a_u8; BATCH];
    let mut g = c.benchmark_group("upload");
    g.throughput(Throughput::Bytes(BATCH as u64));
    for &w in &SIZES {
        let mut s = adapter(&channel, 0, &StreamOptions::default());
        g.bench_with_input(BenchmarkId::new("adapter", w), &w, |b, &w| {
            b.iter_custom(|iters| timed!(rt, iters, upload_adapter(&mut s, &src, w)))
        });
        let mut r = rt.block_on(raw(&channel, 0));
        g.bench_with_input(BenchmarkId::new("raw", w), &w, |b, &w| {
            b.iter_custom(|iters| timed!(rt, iters, upload_raw(&mut r, &slab, w)))
        });
    }
    g.finish();
}

fn download(c: &mut Criterion) {
    let Setup { rt, channel, .. } = setup();
    let mut g = c.benchmark_group("download");
    g.throughput(Throughput::Bytes(BATCH as u64));
    for &w in &SIZES {
        let mut s = adapter(&channel, w, &StreamOptions::default());
        let mut buf = vec![0u8; 64 << 10];
        g.bench_with_input(BenchmarkId::new("adapter", w), &w, |b, _| {
            b.iter_custom(|iters| timed!(rt, iters, download_adapter(&mut s, &mut buf)))
        });
        let mut s = adapter(&channel, w, &StreamOptions::default());
        g.bench_with_input(BenchmarkId::new("adapter_chunks", w), &w, |b, _| {
            b.iter_custom(|iters| timed!(rt, iters, download_chunks(&mut s)))
        });
        let mut r = rt.block_on(raw(&channel, w));
        g.bench_with_input(BenchmarkId::new("raw", w), &w, |b, _| {
            b.iter_custom(|iters| timed!(rt, iters, download_raw(&mut r)))
        });
    }
    g.finish();
}

fn max_payload(c: &mut Criterion) {
    let Setup { rt, channel, .. } = setup();
    let src = vec![0x5a_u8; BATCH];
    let mut g = c.benchmark_group("max_payload");
    g.throughput(Throughput::Bytes(BATCH as u64));
    for p in [
        8 << 10,
        16 << 10,
        32 << 10,
        64 << 10,
        128 << 10,
        256 << 10,
        1 << 20,
    ] {
        let mut s = adapter(&channel, 0, &StreamOptions::new().max_payload(p));
        g.bench_with_input(BenchmarkId::from_parameter(p), &p, |b, _| {
            b.iter_custom(|iters| timed!(rt, iters, upload_adapter(&mut s, &src, 64 << 10)))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = upload, download, max_payload
}
criterion_main!(benches);
