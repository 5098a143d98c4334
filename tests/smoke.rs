//! A first end-to-end check: a client stream against an echoing servicer over loopback.
#![cfg(feature = "client")]

use jumpstarter_router::proto::router_service_server::{RouterService, RouterServiceServer};
use jumpstarter_router::proto::StreamRequest;
use jumpstarter_router::{ResponseStream, RouterStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};

struct Echo;

#[tonic::async_trait]
impl RouterService for Echo {
    type StreamStream = ResponseStream;

    async fn stream(
        &self,
        request: Request<Streaming<StreamRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let (mut stream, response) = RouterStream::accept(request.into_inner());
        tokio::spawn(async move {
            let mut buf = Vec::new();
            stream.read_to_end(&mut buf).await.unwrap();
            stream.write_all(&buf).await.unwrap();
            stream.shutdown().await.unwrap();
        });
        Ok(Response::new(response))
    }
}

#[tokio::test]
async fn echo_after_half_close() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .serve_with_incoming(RouterServiceServer::new(Echo), TcpIncoming::from(listener)),
    );
    let mut s = jumpstarter_router::connect(&format!("http://{addr}"), "t")
        .await
        .unwrap();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
    s.write_all(&data).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, data);
}
