//! The servicer side: [`RouterStream::accept`] turns an incoming `Stream` call into a
//! stream and the response stream to return to tonic.

use tonic::codec::Streaming;

use super::outbound::{Outbound, ResponseStream};
use super::{CallFrames, EndOfOutbound, ReadState, RouterStream, StreamOptions};
use crate::proto::StreamRequest;

impl RouterStream {
    /// Makes the servicer side of a `Stream` call: the stream to read and write, and the
    /// response stream to return to tonic.
    ///
    /// Use it in your own [`RouterService`](crate::proto::router_service_server::RouterService)
    /// implementation (an exporter that is called directly rather than through a router):
    ///
    /// ```no_run
    /// use jumpstarter_router::proto::router_service_server::RouterService;
    /// use jumpstarter_router::proto::StreamRequest;
    /// use jumpstarter_router::{ResponseStream, RouterStream};
    /// use tonic::{Request, Response, Status, Streaming};
    ///
    /// struct Exporter;
    ///
    /// #[tonic::async_trait]
    /// impl RouterService for Exporter {
    ///     type StreamStream = ResponseStream;
    ///
    ///     async fn stream(
    ///         &self,
    ///         request: Request<Streaming<StreamRequest>>,
    ///     ) -> Result<Response<ResponseStream>, Status> {
    ///         let (mut stream, response) = RouterStream::accept(request.into_inner());
    ///         tokio::spawn(async move {
    ///             let mut target = tokio::net::TcpStream::connect("127.0.0.1:22").await?;
    ///             tokio::io::copy_bidirectional(&mut stream, &mut target).await
    ///         });
    ///         Ok(Response::new(response))
    ///     }
    /// }
    /// ```
    pub fn accept(inbound: Streaming<StreamRequest>) -> (RouterStream, ResponseStream) {
        Self::accept_with(inbound, &StreamOptions::default())
    }

    /// [`accept`](RouterStream::accept) with options.
    pub fn accept_with(
        inbound: Streaming<StreamRequest>,
        opts: &StreamOptions,
    ) -> (RouterStream, ResponseStream) {
        let (handle, outbound) = Outbound::channel();
        let stream = RouterStream::from_parts(
            ReadState::Open(CallFrames::requests(inbound)),
            // Ending the response ends the call: it waits for the read half.
            EndOfOutbound::EndsCall,
            opts,
            handle,
        );
        (stream, ResponseStream(outbound))
    }
}
