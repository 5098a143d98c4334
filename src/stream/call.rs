//! The client side of a call: [`RouterStream::from_call`] over a call made with tonic's
//! generated client, and (feature `client`) the raw call of the client constructors: the
//! request built in place (`RawRequest`), the response body read where it lies
//! (`RawResponse`), and HTTP's and gRPC's statuses mapped as tonic's client maps them.

use std::future::Future;
#[cfg(feature = "client")]
use std::pin::Pin;
use std::sync::Arc;
#[cfg(feature = "client")]
use std::task::{Context, Poll, Waker};

#[cfg(feature = "client")]
use bytes::Bytes;
use tonic::codec::Streaming;
use tonic::{Response, Status};

use super::inbound::CallFrames;
use super::outbound::{Outbound, Request, RequestStream};
use super::{CallFuture, EndOfOutbound, ReadState, RouterStream, StreamOptions};
use crate::proto::StreamResponse;
#[cfg(feature = "client")]
use crate::Frame;

impl RouterStream {
    /// The client side of a stream over a call you make yourself.
    ///
    /// `make_call` receives the request stream to pass to
    /// [`RouterServiceClient::stream`](crate::proto::router_service_client::RouterServiceClient::stream)
    /// (with whatever metadata the call needs) and returns the call's future. The future is
    /// never awaited before the stream is usable: the router may hold the response headers
    /// until the peer speaks, so reads wait for them and writes go on. The request goes out
    /// on the first read, flush or shutdown.
    ///
    /// ```no_run
    /// use jumpstarter_router::proto::router_service_client::RouterServiceClient;
    /// use jumpstarter_router::{RouterStream, StreamOptions};
    ///
    /// # async fn demo(channel: tonic::transport::Channel) {
    /// let mut client = RouterServiceClient::new(channel);
    /// let stream = RouterStream::from_call(
    ///     move |requests| async move {
    ///         let mut request = tonic::Request::new(requests);
    ///         request.metadata_mut().insert("authorization", "Bearer TOKEN".parse().unwrap());
    ///         client.stream(request).await
    ///     },
    ///     &StreamOptions::default(),
    /// );
    /// # }
    /// ```
    pub fn from_call<F, Fut>(make_call: F, opts: &StreamOptions) -> RouterStream
    where
        F: FnOnce(RequestStream) -> Fut,
        Fut: Future<Output = Result<Response<Streaming<StreamResponse>>, Status>> + Send + 'static,
    {
        let (handle, outbound) = Outbound::channel();
        let call = make_call(RequestStream(Request::new(outbound)));
        let call: CallFuture<CallFrames> = Box::pin(async move {
            call.await
                .map(|response| CallFrames::responses(response.into_inner()))
        });
        let read = ReadState::Connecting {
            call,
            wakers: Arc::default(),
        };
        RouterStream::from_parts(read, EndOfOutbound::HalfCloses, opts, handle)
    }

    /// The client side of a stream over a `Stream` call on `channel` made without tonic's
    /// codec: the request body is the messages as the writer builds them in its buffer
    /// ([`Queued::seal`]), the response body is read where it lies
    /// ([`RawResponse`]). Headers, errors and the final status as
    /// tonic's generated client has them.
    #[cfg(feature = "client")]
    pub(crate) fn raw_call(
        mut channel: tonic::transport::Channel,
        authorization: tonic::codegen::http::HeaderValue,
        opts: &StreamOptions,
        max_message_size: usize,
    ) -> RouterStream {
        use tonic::codegen::{http, Service};
        let (handle, outbound) = Outbound::channel();
        let body = tonic::body::Body::new(RawRequest(Request::new(outbound)));
        let call: CallFuture<CallFrames> = Box::pin(async move {
            // The channel adds the scheme and authority of its endpoint.
            let request = http::Request::builder()
                .method(http::Method::POST)
                .version(http::Version::HTTP_2)
                .uri("/jumpstarter.v1.RouterService/Stream")
                .header(http::header::TE, "trailers")
                .header(http::header::CONTENT_TYPE, "application/grpc")
                .header(http::header::AUTHORIZATION, authorization)
                .body(body)
                .map_err(|e| Status::internal(e.to_string()))?;
            std::future::poll_fn(|cx| channel.poll_ready(cx))
                .await
                .map_err(|e| Status::from_error(e.into()))?;
            let response = channel
                .call(request)
                .await
                .map_err(|e| Status::from_error(e.into()))?;
            let (parts, body) = response.into_parts();
            // Trailers-only: an error status ends the call here, as in tonic's client.
            let raw = match Status::from_header_map(&parts.headers) {
                Some(status) if status.code() != tonic::Code::Ok => return Err(status),
                Some(_) => RawResponse::empty(body),
                None => RawResponse::new(body, parts.status, max_message_size),
            };
            Ok(CallFrames::raw(raw))
        });
        let read = ReadState::Connecting {
            call,
            wakers: Arc::default(),
        };
        RouterStream::from_parts(read, EndOfOutbound::HalfCloses, opts, handle)
    }

    /// Polls the pending call once, so the request is on its way before the first read or
    /// write (the call future is polled again by both halves until its headers are in).
    #[cfg(feature = "client")]
    pub(crate) fn start_call(&mut self) {
        let _ = self.drive_call(&mut Context::from_waker(Waker::noop()));
    }
}

// ===== the raw call (feature `client`) =====

/// The request body of a client call made by the client constructors: each gRPC message as
/// the writer built it in its buffer, handed to HTTP/2 as it is.
#[cfg(feature = "client")]
pub(super) struct RawRequest(pub(super) Request);

#[cfg(feature = "client")]
impl http_body::Body for RawRequest {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        self.get_mut()
            .0
            .poll_next(cx)
            .map(|q| q.map(|q| Ok(http_body::Frame::data(q.into_message()))))
    }
}

/// A client call's response body read as it is: [`Parser`](crate::wire::Parser) follows the
/// gRPC messages through the HTTP/2 DATA chunks, and each DATA message's payload is handed out
/// as slices of those chunks (no decode buffer, no copy). A message is handed out once it is
/// complete (its frame type comes after its payload), so memory is bounded by the largest
/// message, as with tonic's decoder. The end is read as tonic reads it: the `grpc-status` of
/// the trailers, or of the HTTP status when they have none.
#[cfg(feature = "client")]
pub(super) struct RawResponse {
    body: tonic::body::Body,
    parser: crate::wire::Parser,
    http_status: tonic::codegen::http::StatusCode,
    /// Payload slices of the message being read.
    partial: Vec<Bytes>,
    /// Frames of messages that ended, not taken yet.
    ready: std::collections::VecDeque<Frame>,
    state: RawState,
}

#[cfg(feature = "client")]
enum RawState {
    Body,
    /// The frames in `ready` come first, then this.
    Failing(Status),
    /// The body ended with status OK.
    Done,
}

#[cfg(feature = "client")]
impl RawResponse {
    pub(super) fn new(
        body: tonic::body::Body,
        http_status: tonic::codegen::http::StatusCode,
        max_message_size: usize,
    ) -> Self {
        RawResponse {
            body,
            parser: crate::wire::Parser::new(max_message_size),
            http_status,
            partial: Vec::new(),
            ready: Default::default(),
            state: RawState::Body,
        }
    }

    /// A response that ended in its headers with status OK (trailers-only): no frames.
    pub(super) fn empty(body: tonic::body::Body) -> Self {
        let mut r = RawResponse::new(body, tonic::codegen::http::StatusCode::OK, 0);
        r.state = RawState::Done;
        r
    }

    pub(super) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame, Status>>> {
        use http_body::Body;
        loop {
            if let Some(f) = self.ready.pop_front() {
                return Poll::Ready(Some(Ok(f)));
            }
            match std::mem::replace(&mut self.state, RawState::Done) {
                RawState::Body => self.state = RawState::Body,
                RawState::Failing(status) => return Poll::Ready(Some(Err(status))),
                RawState::Done => return Poll::Ready(None),
            }
            let frame = match std::task::ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(status)) => {
                    self.state = RawState::Failing(status);
                    continue;
                }
                None => {
                    self.state = self.end(None);
                    continue;
                }
            };
            match frame.into_data() {
                Ok(chunk) => self.scan(chunk),
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.state = self.end(Some(&trailers));
                    }
                }
            }
        }
    }

    fn scan(&mut self, chunk: Bytes) {
        let mut messages = Collect {
            chunk: &chunk,
            partial: &mut self.partial,
            ready: &mut self.ready,
        };
        let scan = self.parser.scan_with(&chunk, &mut messages);
        if let Some(e) = scan.error {
            self.partial.clear();
            self.state = RawState::Failing(e.status());
        }
    }

    /// The state after the body's end: an error status first (a router that aborts a call
    /// mid-message says why), then a message cut short under status OK.
    fn end(&mut self, trailers: Option<&tonic::codegen::http::HeaderMap>) -> RawState {
        if let Some(status) = grpc_status(trailers, self.http_status) {
            return RawState::Failing(status);
        }
        match self.parser.finish() {
            Ok(()) => RawState::Done,
            Err(e) => RawState::Failing(e.status()),
        }
    }
}

/// The events of one chunk: payload slices gathered, complete messages turned into frames.
#[cfg(feature = "client")]
struct Collect<'a> {
    chunk: &'a Bytes,
    partial: &'a mut Vec<Bytes>,
    ready: &'a mut std::collections::VecDeque<Frame>,
}

#[cfg(feature = "client")]
impl crate::wire::Events for Collect<'_> {
    fn payload_start(&mut self) {
        self.partial.clear();
    }

    fn payload(&mut self, range: std::ops::Range<usize>) {
        self.partial.push(self.chunk.slice(range));
    }

    fn message(&mut self, frame_type: i32) {
        if frame_type == crate::proto::FrameType::Data as i32 {
            // Each slice as its own DATA frame: readers see bytes, not frames.
            self.ready.extend(self.partial.drain(..).map(Frame::Data));
            return;
        }
        // A control frame: its payload (normally empty) in one piece.
        let payload = match self.partial.len() {
            1 => self.partial.pop().expect("one slice"),
            _ => Bytes::from(self.partial.concat()),
        };
        self.partial.clear();
        self.ready.push_back(Frame::from_parts(frame_type, payload));
    }
}

/// The call's final status as tonic reads it: `None` for OK; the trailers' `grpc-status`, or
/// one mapped from the HTTP status when they have none.
#[cfg(feature = "client")]
pub(super) fn grpc_status(
    trailers: Option<&tonic::codegen::http::HeaderMap>,
    http_status: tonic::codegen::http::StatusCode,
) -> Option<Status> {
    use tonic::codegen::http::StatusCode;
    use tonic::Code;
    if let Some(status) = trailers.and_then(Status::from_header_map) {
        return (status.code() != Code::Ok).then_some(status);
    }
    let code = match http_status {
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        StatusCode::OK => {
            return Some(Status::unknown(
                "protocol error: missing grpc-status trailer, stream was terminated without a final status",
            ))
        }
        _ => Code::Unknown,
    };
    Some(Status::new(
        code,
        format!(
            "grpc-status header missing, mapped from HTTP status code {}",
            http_status.as_u16()
        ),
    ))
}

#[cfg(all(test, feature = "client"))]
mod tests {

    use futures_util::StreamExt;

    use tonic::codegen::http::{HeaderMap, StatusCode};
    use tonic::Code;

    use super::*;

    use crate::test_util::{grpc_message as message, ScriptedBody};

    fn trailers(code: Code) -> HeaderMap {
        let mut h = HeaderMap::new();
        Status::new(code, "").add_header(&mut h).unwrap();
        h
    }

    /// What a raw response of `chunks` and then `end` (trailers; none: the body just ends)
    /// yields.
    fn read(chunks: &[Bytes], end: Option<HeaderMap>) -> Vec<Result<Frame, Status>> {
        let frames = chunks
            .iter()
            .map(|c| Ok(http_body::Frame::data(c.clone())))
            .chain(end.map(|t| Ok(http_body::Frame::trailers(t))));
        let body = ScriptedBody::of(frames);
        let raw = CallFrames::raw(RawResponse::new(body, StatusCode::OK, 1024));
        tokio_test::block_on(raw.collect())
    }

    /// DATA payloads come out as slices of the chunks they arrived in (no copy), a message
    /// split across chunks as one slice per chunk; control frames in their place; status OK
    /// ends the frames.
    #[test]
    fn data_payloads_are_slices_of_the_received_chunks() {
        let mut stream = message(0, b"hello");
        stream.extend(message(6, b""));
        stream.extend(message(0, b"world"));
        stream.extend(message(7, b""));
        let cut = stream.len() - 10; // inside "world"
        let stream = Bytes::from(stream);
        let chunks = [stream.slice(..cut), stream.slice(cut..)];
        let got = read(&chunks, Some(trailers(Code::Ok)));
        let frames: Vec<Frame> = got.into_iter().map(Result::unwrap).collect();
        let data: Vec<u8> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Data(d) => Some(d.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(data, b"helloworld");
        let control: Vec<&Frame> = frames
            .iter()
            .filter(|f| !matches!(f, Frame::Data(_)))
            .collect();
        assert_eq!(control, [&Frame::ping(), &Frame::go_away()]);
        assert!(matches!(frames.last(), Some(Frame::GoAway(_))));
        let within = |d: &Bytes| {
            let range = stream.as_ptr_range();
            range.contains(&d.as_ptr()) && d.as_ptr_range().end <= range.end
        };
        for f in &frames {
            if let Frame::Data(d) = f {
                assert!(within(d), "a DATA payload was copied");
            }
        }
        assert_eq!(
            frames
                .iter()
                .filter(|f| matches!(f, Frame::Data(_)))
                .count(),
            3,
            "world arrived in two chunks: {frames:?}"
        );
    }

    fn only_error(got: &[Result<Frame, Status>]) -> &Status {
        match got.last() {
            Some(Err(s)) => s,
            other => panic!("no error at the end: {other:?}"),
        }
    }

    /// An invalid message, a body cut inside one, an error status, or an end without a status:
    /// the valid frames, then one error (as tonic words it), then nothing.
    #[test]
    fn the_valid_frames_then_one_error() {
        let ok = message(0, b"ok");
        let with = |tail: &[u8]| {
            let mut s = ok.clone();
            s.extend_from_slice(tail);
            Bytes::from(s)
        };
        for (chunks, end, code, words) in [
            (
                vec![with(&[2, 0, 0, 0, 0])],
                Some(trailers(Code::Ok)),
                Code::Internal,
                "invalid compression flag",
            ),
            (
                vec![with(&[0, 0, 0, 0x10, 0])],
                Some(trailers(Code::Ok)),
                Code::OutOfRange,
                "too large",
            ),
            (
                vec![with(&[0, 0, 0, 0, 3, 0x0a])],
                Some(trailers(Code::Ok)),
                Code::Internal,
                "Unexpected EOF",
            ),
            (
                vec![with(&[])],
                Some(trailers(Code::Aborted)),
                Code::Aborted,
                "",
            ),
            // Cut short by a router that aborts the call: its status, not the truncation.
            (
                vec![with(&[0, 0, 0, 0, 3, 0x0a])],
                Some(trailers(Code::Aborted)),
                Code::Aborted,
                "",
            ),
            (vec![with(&[])], None, Code::Unknown, "missing grpc-status"),
        ] {
            let got = read(&chunks, end);
            assert_eq!(got.len(), 2, "{got:?}");
            assert_eq!(
                got[0].as_ref().unwrap(),
                &Frame::Data(Bytes::from_static(b"ok"))
            );
            let status = only_error(&got);
            assert_eq!(status.code(), code, "{status:?}");
            assert!(status.message().contains(words), "{status:?}");
        }
    }
}
