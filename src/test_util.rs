//! Helpers of the unit tests that read gRPC messages (`wire.rs`, `router/forward.rs`,
//! `stream/call.rs`).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;
use tonic::Status;

/// A gRPC message as a peer sends it, encoded by prost rather than by this crate: the 5-byte
/// prefix and a `StreamRequest` (its fields are `StreamResponse`'s too).
pub(crate) fn grpc_message(frame_type: i32, payload: &[u8]) -> Vec<u8> {
    let body = crate::proto::StreamRequest {
        payload: payload.to_vec().into(),
        frame_type,
    }
    .encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// What a [`ScriptedBody`] yields.
pub(crate) type BodyItem = Result<http_body::Frame<Bytes>, Status>;

/// An HTTP body whose frames the test sends: `Pending` until the next one is sent, and its
/// end when the sender is dropped.
pub(crate) struct ScriptedBody(mpsc::UnboundedReceiver<BodyItem>);

impl ScriptedBody {
    /// A body, and the sender of its frames.
    pub(crate) fn channel() -> (mpsc::UnboundedSender<BodyItem>, tonic::body::Body) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, tonic::body::Body::new(ScriptedBody(rx)))
    }

    /// A body that yields `frames` at once, then ends.
    pub(crate) fn of(frames: impl IntoIterator<Item = BodyItem>) -> tonic::body::Body {
        let (tx, body) = Self::channel();
        for f in frames {
            let _ = tx.send(f);
        }
        body
    }
}

impl http_body::Body for ScriptedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<BodyItem>> {
        self.get_mut().0.poll_recv(cx)
    }
}
