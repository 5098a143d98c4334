//! gRPC over one router stream, as Jumpstarter runs a whole client/exporter session: a tonic
//! server (plaintext HTTP/2) whose one connection is the exporter's `RouterStream`, and a
//! tonic `Channel` whose one connection is the client's `RouterStream` (see
//! `examples/grpc_over_stream.rs` for the walk-through).
//!
//! The session serves `grpc.health.v1.Health` (`tonic-health`: unary `Check`, server-streaming
//! `Watch`) and an echo `jumpstarter.v1.RouterService` (bidi, message for message). Cases:
//! unary and streaming calls, many calls at once, messages of 1 and 3 MiB, a `RouterStream`
//! inside the session, the exporter's stream dropped mid-call (the client's calls fail, never
//! hang), and the same session through a TLS router with a custom CA.
#![cfg(all(feature = "router", feature = "client"))]

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use jumpstarter_router::proto::router_service_client::RouterServiceClient;
use jumpstarter_router::proto::router_service_server::{RouterService, RouterServiceServer};
use jumpstarter_router::proto::{FrameType, StreamRequest, StreamResponse};
use jumpstarter_router::router::{Auth, Router, ServerTls};
use jumpstarter_router::{ClientBuilder, RouterStream};
use support::*;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_health::pb::health_check_response::ServingStatus as Pb;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

const MIB: usize = 1024 * 1024;

// ===== the glue: a RouterStream as a tonic server's and a tonic channel's connection =====

/// The exporter's router stream as a tonic server connection, with a kill switch: when `kill`
/// fires (or its sender is dropped) the stream is dropped without shutdown (an abort: the
/// peer gets RST_STREAM) and the server's connection fails.
struct ServerConn {
    stream: Option<RouterStream>,
    kill: oneshot::Receiver<()>,
}

impl ServerConn {
    fn stream(&mut self, cx: &mut Context<'_>) -> io::Result<Pin<&mut RouterStream>> {
        // hyper always has a read pending, so the kill switch is always watched.
        if self.stream.is_some() && Pin::new(&mut self.kill).poll(cx).is_ready() {
            self.stream = None;
        }
        match &mut self.stream {
            Some(s) => Ok(Pin::new(s)),
            None => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the exporter's router stream was dropped",
            )),
        }
    }
}

impl Connected for ServerConn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for ServerConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().stream(cx)?.poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().stream(cx)?.poll_write(cx, b)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream(cx)?.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream(cx)?.poll_shutdown(cx)
    }
}

// ===== the session's services =====

/// Health and the echo, dispatched by path (tonic's `add_service` needs its `router` feature).
#[derive(Clone)]
struct Services {
    health: HealthServer<HealthService>,
    echo: RouterServiceServer<Echo>,
}

impl Service<http::Request<Body>> for Services {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let service = req.uri().path().split('/').nth(1).unwrap_or_default();
        if service == HealthServer::<HealthService>::NAME {
            self.health.call(req)
        } else {
            self.echo.call(req)
        }
    }
}

/// `RouterService/Stream` as an echo, message for message (frame types too, so a
/// `RouterStream` client gets its data back and its GOAWAY as EOF).
#[derive(Clone)]
struct Echo;

#[tonic::async_trait]
impl RouterService for Echo {
    type StreamStream = ReceiverStream<Result<StreamResponse, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<StreamRequest>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                let echo = StreamResponse {
                    payload: m.payload,
                    frame_type: m.frame_type,
                };
                if tx.send(Ok(echo)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A gRPC session over a pair of router streams.
struct Session {
    channel: Channel,
    reporter: HealthReporter,
    /// Drops the exporter's router stream (an abort).
    kill: Option<oneshot::Sender<()>>,
}

impl Session {
    /// Opens two streams named `token` with `client` and runs the session over them.
    async fn open(client: &ClientBuilder, token: &str) -> Session {
        let exporter_end = client.connect(token).await.unwrap();
        let client_end = client.connect(token).await.unwrap();
        let reporter = HealthReporter::new();
        let services = Services {
            health: HealthServer::new(HealthService::from_health_reporter(reporter.clone())),
            echo: RouterServiceServer::new(Echo),
        };
        let (kill, killed) = oneshot::channel();
        let conn = ServerConn {
            stream: Some(exporter_end),
            kill: killed,
        };
        let incoming = futures_util::stream::iter([Ok::<_, io::Error>(conn)]);
        tokio::spawn(Server::builder().serve_with_incoming(services, incoming));
        let channel = within(
            10,
            "the channel over the stream",
            jumpstarter_router::grpc::channel(client_end),
        )
        .await
        .unwrap();
        Session {
            channel,
            reporter,
            kill: Some(kill),
        }
    }

    fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel.clone())
    }

    fn echo(&self) -> RouterServiceClient<Channel> {
        RouterServiceClient::new(self.channel.clone())
    }
}

async fn plaintext_session(name: &str) -> (TestRouter, Session) {
    let router = TestRouter::start().await;
    let session = Session::open(&ClientBuilder::new(router.endpoint()), &token(name)).await;
    (router, session)
}

fn check(service: &str) -> Request<HealthCheckRequest> {
    Request::new(HealthCheckRequest {
        service: service.into(),
    })
}

fn data(payload: Vec<u8>) -> StreamRequest {
    StreamRequest {
        payload: payload.into(),
        frame_type: FrameType::Data as i32,
    }
}

/// Sends `messages` on one echo call and returns what came back, message for message.
async fn echo_call(
    client: &mut RouterServiceClient<Channel>,
    messages: Vec<Vec<u8>>,
) -> Result<Vec<Vec<u8>>, Status> {
    let requests = futures_util::stream::iter(messages.into_iter().map(data));
    let mut replies = client.stream(requests).await?.into_inner();
    let mut got = Vec::new();
    while let Some(m) = replies.message().await? {
        got.push(m.payload.to_vec());
    }
    Ok(got)
}

/// The kind of the first `io::Error` in `status`'s chain of sources: tonic's status wraps
/// hyper's error, which wraps h2's, which holds the router stream's `io::Error` (h2's error has
/// no `source()`: `get_io()`).
fn io_cause(status: &Status) -> Option<io::ErrorKind> {
    let mut e: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(err) = e {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return Some(io.kind());
        }
        if let Some(io) = err.downcast_ref::<h2::Error>().and_then(h2::Error::get_io) {
            return Some(io.kind());
        }
        e = err.source();
    }
    None
}

// ===== the cases =====

#[tokio::test]
async fn unary_calls() {
    let (_router, s) = plaintext_session("grpc-unary").await;
    let mut health = s.health();
    let reply = within(10, "Check", health.check(check(""))).await.unwrap();
    assert_eq!(reply.into_inner().status(), Pb::Serving);
    let err = within(10, "Check(nope)", health.check(check("nope")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    // A 1 MiB request in one unary call.
    let err = within(10, "Check(1 MiB)", health.check(check(&"x".repeat(MIB))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test]
async fn server_streaming_call_sees_every_change() {
    let (_router, s) = plaintext_session("grpc-watch").await;
    s.reporter
        .set_service_status("exporter", ServingStatus::Serving)
        .await;
    let mut watch = within(10, "Watch", s.health().watch(check("exporter")))
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        within(10, "the next Watch message", watch.message())
            .await
            .unwrap()
            .expect("Watch ended")
            .status()
    };
    assert_eq!(next().await, Pb::Serving);
    // Each change after the previous one was seen: a watch channel keeps only the latest.
    for status in [
        ServingStatus::NotServing,
        ServingStatus::Serving,
        ServingStatus::NotServing,
    ] {
        s.reporter.set_service_status("exporter", status).await;
        let want = match status {
            ServingStatus::Serving => Pb::Serving,
            _ => Pb::NotServing,
        };
        assert_eq!(next().await, want);
    }
}

#[tokio::test]
async fn many_concurrent_calls() {
    let (_router, s) = plaintext_session("grpc-many").await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..200 {
        let mut health = s.health();
        calls.spawn(async move {
            let r = health
                .check(check(""))
                .await
                .map_err(|e| format!("{i}: {e}"))?;
            assert_eq!(r.into_inner().status(), Pb::Serving);
            Ok::<_, String>(())
        });
    }
    for i in 0..20u8 {
        let mut echo = s.echo();
        calls.spawn(async move {
            let sent: Vec<Vec<u8>> = (0..20).map(|k| test_bytes(4096 + k, i)).collect();
            let got = echo_call(&mut echo, sent.clone())
                .await
                .map_err(|e| format!("echo {i}: {e}"))?;
            assert!(got == sent, "echo {i}: the replies differ");
            Ok(())
        });
    }
    within(60, "220 concurrent calls", async {
        while let Some(r) = calls.join_next().await {
            r.unwrap().unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn large_messages() {
    let (_router, s) = plaintext_session("grpc-large").await;
    let sent = vec![
        test_bytes(MIB, 1),
        test_bytes(3 * MIB, 2),
        test_bytes(MIB, 3),
    ];
    let got = within(
        30,
        "1 and 3 MiB messages echoed",
        echo_call(&mut s.echo(), sent.clone()),
    )
    .await
    .unwrap();
    assert_eq!(got.len(), 3);
    assert!(got == sent, "the echoed messages differ");
}

/// A `RouterStream` inside the session (how Jumpstarter's drivers stream over the session):
/// 4 MiB each way, half-close, and a clean end.
#[tokio::test]
async fn router_stream_inside_the_session() {
    let (_router, s) = plaintext_session("grpc-nested").await;
    let mut inner = jumpstarter_router::open(s.channel.clone(), "inner").unwrap();
    let len = 4 * MIB as u64;
    let (mut rd, mut wr) = tokio::io::split(&mut inner);
    let (sent, got) = within(60, "4 MiB through the nested stream", async {
        tokio::join!(
            async {
                let sha = send_pattern(&mut wr, len, 9, 64 * 1024).await?;
                wr.shutdown().await?;
                Ok::<_, io::Error>(sha)
            },
            recv_all(&mut rd)
        )
    })
    .await;
    assert_eq!(got.unwrap(), (len, sent.unwrap()));
    within(10, "close", inner.close()).await.unwrap();
}

/// The exporter's router stream dropped in the middle of calls: every open call, and any new
/// one, fails with an error status; nothing hangs.
#[tokio::test]
async fn exporter_stream_dropped_mid_call_fails_the_calls() {
    let (_router, mut s) = plaintext_session("grpc-abort").await;
    // A server-streaming call waiting for its next message ...
    let mut watch = within(10, "Watch", s.health().watch(check("")))
        .await
        .unwrap()
        .into_inner();
    let first = within(10, "the first Watch message", watch.message()).await;
    assert_eq!(first.unwrap().unwrap().status(), Pb::Serving);
    // ... and a bidi call with a request in flight and one answered.
    let (tx, rx) = mpsc::channel(1);
    tx.send(data(b"before".to_vec())).await.unwrap();
    let mut echo = within(10, "echo call", s.echo().stream(ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    let m = within(10, "the first echo", echo.message()).await;
    assert_eq!(&m.unwrap().unwrap().payload[..], b"before");

    s.kill.take().unwrap().send(()).unwrap();

    let err = within(10, "the Watch call fails", watch.message())
        .await
        .expect_err("the Watch call went on after the abort");
    eprintln!("Watch after the abort: {err:?}");
    assert_eq!(
        io_cause(&err),
        Some(io::ErrorKind::ConnectionReset),
        "{err:?}"
    );
    let _ = tx.send(data(b"after".to_vec())).await;
    let err = within(10, "the echo call fails", echo.message())
        .await
        .expect_err("the echo call went on after the abort");
    eprintln!("echo after the abort: {err:?}");
    assert_eq!(
        io_cause(&err),
        Some(io::ErrorKind::ConnectionReset),
        "{err:?}"
    );
    // A new call: the channel cannot reconnect (the stream is gone), so it fails too.
    let err = within(10, "a new call fails", s.health().check(check("")))
        .await
        .expect_err("a call succeeded after the abort");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

/// The two ends opened with `ClientBuilder` over TLS (a CA the client is given), the session
/// through the TLS router as through the plaintext one.
#[tokio::test]
async fn session_through_a_tls_router() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let tls = ServerTls::from_pem(
        ck.cert.pem().as_bytes(),
        ck.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    let r = TestRouter::with_tls(Router::builder(Auth::new(KEY)).build(), Some(tls)).await;
    let client = ClientBuilder::new(r.tls_endpoint()).ca_certificate_pem(ck.cert.pem());
    let token = token("grpc-tls");
    let s = Session::open(&client, &token).await;
    let reply = within(10, "Check over TLS", s.health().check(check("")))
        .await
        .unwrap();
    assert_eq!(reply.into_inner().status(), Pb::Serving);
    let sent = vec![test_bytes(MIB, 4), b"small".to_vec()];
    let got = within(30, "echo over TLS", echo_call(&mut s.echo(), sent.clone()))
        .await
        .unwrap();
    assert!(got == sent, "the echoed messages differ");
}
