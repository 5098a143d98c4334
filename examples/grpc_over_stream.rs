//! gRPC over one router stream, the way Jumpstarter runs a whole client/exporter session:
//!
//! ```text
//! cargo run --all-features --example grpc_over_stream
//! ```
//!
//! It starts, in this process and on loopback,
//! - a router (the crate's `router` service, plaintext),
//! - the exporter side: a `RouterStream` as the one connection of a tonic `Server` (plaintext
//!   HTTP/2, h2c), which serves `grpc.health.v1.Health` (`tonic-health`) and, like
//!   Jumpstarter's exporter session, `jumpstarter.v1.RouterService` for streams inside the
//!   session (here an echo),
//! - the client side: a tonic `Channel` whose one connection is the other `RouterStream`,
//!
//! then makes unary calls (`Health/Check`, 100 of them at once), a server-streaming call
//! (`Health/Watch`, which sees a status change), and a bidi call (a `RouterStream` inside the
//! session, carrying 1 MiB each way), prints what happens and exits 0 on success.
//!
//! The glue is the crate's: `jumpstarter_router::grpc::channel(stream)` on the client side, and
//! on the exporter side a `RouterStream` is a tonic connection (`Connected`), handed to
//! `Server::serve_with_incoming` as a one-item stream. The channel cannot reconnect: once the
//! stream is gone, calls fail with `UNAVAILABLE`.

use std::convert::Infallible;
use std::io;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use jumpstarter_router::proto::router_service_server::{RouterService, RouterServiceServer};
use jumpstarter_router::proto::StreamRequest;
use jumpstarter_router::router::{Auth, Router, ServeConfig, TlsMode};
use jumpstarter_router::{ClientBuilder, ResponseStream, RouterStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::pb::health_check_response::ServingStatus as Pb;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

/// The session's services, dispatched by path: tonic's `Server::add_service` needs its
/// axum-based `router` feature, which this crate does not enable (one `match` does).
#[derive(Clone)]
struct Session {
    health: HealthServer<HealthService>,
    streams: RouterServiceServer<EchoStreams>,
}

impl Service<http::Request<Body>> for Session {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(())) // both generated servers are always ready
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let service = req.uri().path().split('/').nth(1).unwrap_or_default();
        if service == HealthServer::<HealthService>::NAME {
            self.health.call(req)
        } else {
            self.streams.call(req)
        }
    }
}

/// `jumpstarter.v1.RouterService` inside the session: echoes each stream back.
#[derive(Clone)]
struct EchoStreams;

#[tonic::async_trait]
impl RouterService for EchoStreams {
    type StreamStream = ResponseStream;

    async fn stream(
        &self,
        request: Request<Streaming<StreamRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let (mut stream, response) = RouterStream::accept(request.into_inner());
        tokio::spawn(async move {
            while let Some(chunk) = stream.read_chunk().await? {
                stream.write_all(&chunk).await?;
            }
            stream.close().await
        });
        Ok(Response::new(response))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();

    // 1. The router.
    let auth = Auth::new(b"demo-key");
    let token = auth.mint("grpc-session", Duration::from_secs(600))?;
    let router = Router::builder(auth).build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let router_addr = listener.local_addr()?;
    let config = ServeConfig::new(router_addr, TlsMode::Plaintext);
    tokio::spawn(router.clone().serve_listener(
        listener,
        config.tls_config()?,
        std::future::pending(),
    ));
    let client = ClientBuilder::new(format!("http://{router_addr}"));
    println!("router (plaintext) on {router_addr}");

    // 2. Two streams with the same token: the router pairs them.
    let exporter_end = client.connect(&token).await?;
    let client_end = client.connect(&token).await?;

    // 3. The exporter: a tonic server whose one connection is its router stream.
    let reporter = HealthReporter::new();
    let session = Session {
        health: HealthServer::new(HealthService::from_health_reporter(reporter.clone())),
        streams: RouterServiceServer::new(EchoStreams),
    };
    reporter
        .set_service_status("exporter", ServingStatus::Serving)
        .await;
    // A router stream is a tonic connection: serve the session on it.
    let incoming = futures_util::stream::iter([Ok::<_, io::Error>(exporter_end)]);
    tokio::spawn(Server::builder().serve_with_incoming(session, incoming));

    // 4. The client: a channel whose one connection is the other router stream.
    let channel = jumpstarter_router::grpc::channel(client_end).await?;
    println!("gRPC channel up over the router stream");
    let mut health = HealthClient::new(channel.clone());

    // 5a. Unary.
    let check = |service: &str| {
        Request::new(HealthCheckRequest {
            service: service.into(),
        })
    };
    let status = health.check(check("")).await?.into_inner().status();
    println!("Health/Check(\"\"): {status:?}");
    if status != Pb::Serving {
        return Err(format!("Check: {status:?}").into());
    }
    match health.check(check("nope")).await {
        Err(s) if s.code() == tonic::Code::NotFound => {
            println!("Health/Check(\"nope\"): NOT_FOUND, as it should")
        }
        other => return Err(format!("Check(nope): {other:?}").into()),
    }

    // 5b. Many unary calls at once, multiplexed on the one stream.
    let t = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let mut h = health.clone();
        calls.spawn(async move { h.check(check("exporter")).await });
    }
    while let Some(r) = calls.join_next().await {
        let status = r??.into_inner().status();
        if status != Pb::Serving {
            return Err(format!("concurrent Check: {status:?}").into());
        }
    }
    println!(
        "100 concurrent Health/Check calls: all SERVING in {:?}",
        t.elapsed()
    );

    // 5c. Server streaming: Watch sees the exporter's status change.
    let mut watch = health.watch(check("exporter")).await?.into_inner();
    let first = watch.message().await?.ok_or("Watch ended")?.status();
    reporter
        .set_service_status("exporter", ServingStatus::NotServing)
        .await;
    let second = watch.message().await?.ok_or("Watch ended")?.status();
    println!("Health/Watch(\"exporter\"): {first:?}, then {second:?}");
    if (first, second) != (Pb::Serving, Pb::NotServing) {
        return Err("Watch did not see the change".into());
    }
    drop(watch);

    // 5d. Bidi: a stream inside the session (how Jumpstarter's drivers stream), 1 MiB echoed.
    let data: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    let mut inner = jumpstarter_router::open(channel.clone(), "inside-the-session")?;
    let t = Instant::now();
    let (mut rd, mut wr) = tokio::io::split(&mut inner);
    let (sent, echoed) = tokio::join!(
        async {
            wr.write_all(&data).await?;
            wr.shutdown().await
        },
        async {
            let mut echoed = Vec::new();
            rd.read_to_end(&mut echoed).await.map(|_| echoed)
        }
    );
    sent?;
    let echoed = echoed?;
    inner.close().await?;
    println!(
        "RouterService/Stream inside the session: {} bytes echoed in {:?}, equal: {}",
        echoed.len(),
        t.elapsed(),
        echoed == data
    );
    if echoed != data {
        return Err("the echo differs".into());
    }

    let stats = router.stats();
    println!(
        "done in {:?}; the router forwarded {} bytes",
        start.elapsed(),
        stats.bytes_forwarded
    );
    Ok(())
}
