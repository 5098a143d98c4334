//! Raw-frame helpers for the stream tests: a scripted `RouterService` peer that hands every
//! call to the test (the raw inbound frames and a sender for the raw responses), a raw tonic
//! client, and small polling helpers.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::pin::Pin;

use bytes::Bytes;
use futures_core::Stream;
use jumpstarter_router::proto::router_service_client::RouterServiceClient;
use jumpstarter_router::proto::router_service_server::{RouterService, RouterServiceServer};
use jumpstarter_router::proto::{StreamRequest, StreamResponse};
use jumpstarter_router::{Frame, ResponseStream, RouterStream, StreamOptions};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

pub use super::within;

pub type BoxResponses = Pin<Box<dyn Stream<Item = Result<StreamResponse, Status>> + Send>>;

/// One call the scripted peer received.
pub struct Call {
    /// The raw frames the client sends.
    pub inbound: Streaming<StreamRequest>,
    /// Raw responses to the client; `Err` ends the call with that status, dropping every
    /// sender ends it with OK.
    pub tx: mpsc::Sender<Result<StreamResponse, Status>>,
    pub metadata: MetadataMap,
    /// Set when the server holds the response headers: send to let the handler return.
    pub release: Option<oneshot::Sender<()>>,
}

impl Call {
    /// Ends the response stream with status OK and returns the request stream (kept open, so
    /// the server does not reset the call before the client has read the end).
    pub fn end(self) -> Streaming<StreamRequest> {
        self.inbound
    }

    /// Sends one raw frame to the client.
    pub async fn send(&self, frame: Frame) {
        self.tx
            .send(Ok(frame.into()))
            .await
            .expect("client's response stream is gone");
    }

    pub async fn send_data(&self, data: &[u8]) {
        self.send(Frame::Data(Bytes::copy_from_slice(data))).await;
    }

    /// Ends the call with an error status.
    pub async fn fail(&self, status: Status) {
        self.tx
            .send(Err(status))
            .await
            .expect("client's response stream is gone");
    }

    /// The next raw frame from the client; `Ok(None)` at the end of the request stream.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, Status> {
        within(5, "next frame from the client", self.inbound.message())
            .await
            .map(|m| m.map(Frame::from))
    }

    /// Every frame until the end of the request stream (which must end cleanly).
    pub async fn frames_to_end(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            match self.next_frame().await {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return frames,
                Err(s) => panic!("request stream failed after {frames:?}: {s:?}"),
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Accept,
    HoldHeaders,
}

struct ScriptedPeer {
    calls: mpsc::Sender<Call>,
    mode: Mode,
    reject: Option<Status>,
}

#[tonic::async_trait]
impl RouterService for ScriptedPeer {
    type StreamStream = BoxResponses;

    async fn stream(
        &self,
        request: Request<Streaming<StreamRequest>>,
    ) -> Result<Response<BoxResponses>, Status> {
        if let Some(status) = &self.reject {
            return Err(status.clone());
        }
        let metadata = request.metadata().clone();
        let (tx, rx) = mpsc::channel(64);
        let (release, released) = oneshot::channel();
        let hold = self.mode == Mode::HoldHeaders;
        let call = Call {
            inbound: request.into_inner(),
            tx,
            metadata,
            release: hold.then_some(release),
        };
        if self.calls.send(call).await.is_err() {
            return Err(Status::unavailable("test is over"));
        }
        if hold {
            let _ = released.await;
        }
        Ok(Response::new(
            Box::pin(ReceiverStream::new(rx)) as BoxResponses
        ))
    }
}

/// A scripted router peer on 127.0.0.1: every call is handed to the test.
pub struct PeerServer {
    pub addr: SocketAddr,
    calls: mpsc::Receiver<Call>,
    _stop: oneshot::Sender<()>,
}

impl PeerServer {
    /// Answers every call with response headers at once.
    pub async fn start() -> Self {
        Self::spawn(Mode::Accept, None).await
    }

    /// Holds every call's response headers until the test sends on `Call::release`.
    pub async fn start_holding_headers() -> Self {
        Self::spawn(Mode::HoldHeaders, None).await
    }

    /// Fails every call at once with `status` (no response headers, trailers only).
    pub async fn start_rejecting(status: Status) -> Self {
        Self::spawn(Mode::Accept, Some(status)).await
    }

    async fn spawn(mode: Mode, reject: Option<Status>) -> Self {
        let (calls_tx, calls) = mpsc::channel(16);
        let svc = ScriptedPeer {
            calls: calls_tx,
            mode,
            reject,
        };
        let (addr, stop) = serve(svc).await;
        PeerServer {
            addr,
            calls,
            _stop: stop,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next call the peer received.
    pub async fn call(&mut self) -> Call {
        within(5, "a call to reach the scripted peer", self.calls.recv())
            .await
            .expect("server stopped")
    }
}

/// A raw client call: the request frames to send and the response stream.
pub struct RawCall {
    pub tx: Option<mpsc::Sender<StreamRequest>>,
    pub responses: Streaming<StreamResponse>,
}

impl RawCall {
    /// Opens a `Stream` call on `endpoint` and waits for its response headers.
    pub async fn open(endpoint: &str) -> Result<RawCall, Status> {
        Self::open_with(endpoint, None).await
    }

    /// Opens a `Stream` call with `authorization: Bearer <token>` and waits for its
    /// response headers.
    pub async fn open_with_token(endpoint: &str, token: &str) -> Result<RawCall, Status> {
        Self::open_with(endpoint, Some(token)).await
    }

    async fn open_with(endpoint: &str, token: Option<&str>) -> Result<RawCall, Status> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| Status::invalid_argument(e.to_string()))?
            .connect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut client = RouterServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(64);
        let mut request = Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::invalid_argument("token is not a header value"))?;
            request.metadata_mut().insert("authorization", value);
        }
        let responses = client.stream(request).await?.into_inner();
        Ok(RawCall {
            tx: Some(tx),
            responses,
        })
    }

    pub async fn send(&self, frame: Frame) {
        self.tx
            .as_ref()
            .expect("request stream already ended")
            .send(frame.into())
            .await
            .expect("request stream is gone");
    }

    pub async fn send_data(&self, data: &[u8]) {
        self.send(Frame::Data(Bytes::copy_from_slice(data))).await;
    }

    /// Ends the request stream (END_STREAM).
    pub fn end(&mut self) {
        self.tx = None;
    }

    /// The next raw frame from the servicer; `Ok(None)` when the call ended with OK.
    pub async fn next_frame(&mut self) -> Result<Option<Frame>, Status> {
        within(5, "next frame from the servicer", self.responses.message())
            .await
            .map(|m| m.map(Frame::from))
    }
}

/// A request stream that sends one DATA frame of `payload`, then stays open (as a grpc-core
/// client does until it has more to say).
pub fn data_then_open(
    payload: &'static [u8],
) -> impl Stream<Item = StreamRequest> + Send + 'static {
    use futures_util::StreamExt;
    let first = StreamRequest {
        payload: Bytes::from_static(payload),
        frame_type: 0,
    };
    futures_util::stream::iter([first]).chain(futures_util::stream::pending())
}

/// Concatenates the payloads of DATA frames; panics on any other frame.
pub fn data_of(frames: &[Frame]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        match f {
            Frame::Data(p) => out.extend_from_slice(p),
            other => panic!("expected only DATA frames, got {other:?} in {frames:?}"),
        }
    }
    out
}

/// A short description of frames (kind and length), for assertion messages.
pub fn describe(frames: &[Frame]) -> String {
    frames
        .iter()
        .map(|f| match f {
            Frame::Data(p) => format!("DATA({})", p.len()),
            Frame::GoAway(_) => "GOAWAY".into(),
            Frame::RstStream(_) => "RST_STREAM".into(),
            Frame::Ping(_) => "PING".into(),
            Frame::Unknown { frame_type, .. } => format!("UNKNOWN({frame_type})"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Serves `svc` on 127.0.0.1; stops when the returned sender is dropped.
pub async fn serve<S: RouterService>(svc: S) -> (SocketAddr, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder().serve_with_incoming_shutdown(
            RouterServiceServer::new(svc),
            TcpIncoming::from(listener),
            async {
                let _ = stopped.await;
            },
        ),
    );
    (addr, stop)
}

struct Accepting {
    streams: mpsc::Sender<RouterStream>,
    opts: StreamOptions,
}

#[tonic::async_trait]
impl RouterService for Accepting {
    type StreamStream = ResponseStream;

    async fn stream(
        &self,
        request: Request<Streaming<StreamRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let (stream, response) = RouterStream::accept_with(request.into_inner(), &self.opts);
        self.streams
            .send(stream)
            .await
            .map_err(|_| Status::unavailable("test is over"))?;
        Ok(Response::new(response))
    }
}

/// A servicer on 127.0.0.1 that accepts every call with [`RouterStream::accept_with`] and
/// hands the servicer-side stream to the test.
pub struct AcceptingServer {
    pub addr: SocketAddr,
    streams: mpsc::Receiver<RouterStream>,
    _stop: oneshot::Sender<()>,
}

impl AcceptingServer {
    pub async fn start() -> Self {
        Self::with(StreamOptions::new()).await
    }

    pub async fn with(opts: StreamOptions) -> Self {
        let (tx, streams) = mpsc::channel(16);
        let (addr, stop) = serve(Accepting { streams: tx, opts }).await;
        AcceptingServer {
            addr,
            streams,
            _stop: stop,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The servicer side of the next call.
    pub async fn stream(&mut self) -> RouterStream {
        within(5, "a call to reach the servicer", self.streams.recv())
            .await
            .expect("server stopped")
    }
}
