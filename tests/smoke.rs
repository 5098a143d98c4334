//! A first end-to-end check: a client stream against an echoing servicer over loopback.
#![cfg(feature = "client")]

mod support;

use jumpstarter_router::proto::router_service_server::RouterService;
use jumpstarter_router::proto::StreamRequest;
use jumpstarter_router::{ResponseStream, RouterStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    let (addr, _stop) = support::raw::serve(Echo).await;
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
