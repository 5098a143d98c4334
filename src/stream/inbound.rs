//! [`CallFrames`]: the frames a tonic call delivers, as the read half of a
//! [`RouterStream`](crate::RouterStream) takes them.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tonic::codec::Streaming;
use tonic::Status;

use crate::proto::{StreamRequest, StreamResponse};
use crate::Frame;

/// The inbound messages of a `Stream` call, client side (responses) or servicer side
/// (requests), as [`Frame`]s. The default frame source of a
/// [`RouterStream`](crate::RouterStream); other sources come in through
/// [`RouterStream::from_frames`](crate::RouterStream::from_frames).
pub struct CallFrames(Messages);

enum Messages {
    Responses(Streaming<StreamResponse>),
    Requests(Streaming<StreamRequest>),
    /// A client call's response body, read without tonic's decoder.
    #[cfg(feature = "client")]
    Raw(super::call::RawResponse),
}

impl CallFrames {
    pub(super) fn responses(s: Streaming<StreamResponse>) -> Self {
        CallFrames(Messages::Responses(s))
    }

    pub(super) fn requests(s: Streaming<StreamRequest>) -> Self {
        CallFrames(Messages::Requests(s))
    }

    #[cfg(feature = "client")]
    pub(super) fn raw(r: super::call::RawResponse) -> Self {
        CallFrames(Messages::Raw(r))
    }
}

impl Stream for CallFrames {
    type Item = Result<Frame, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match &mut self.get_mut().0 {
            Messages::Responses(s) => Pin::new(s)
                .poll_next(cx)
                .map(|o| o.map(|r| r.map(Frame::from))),
            Messages::Requests(s) => Pin::new(s)
                .poll_next(cx)
                .map(|o| o.map(|r| r.map(Frame::from))),
            #[cfg(feature = "client")]
            Messages::Raw(r) => r.poll_frame(cx),
        }
    }
}

impl fmt::Debug for CallFrames {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = match self.0 {
            Messages::Responses(_) => "responses",
            Messages::Requests(_) => "requests",
            #[cfg(feature = "client")]
            Messages::Raw(_) => "responses (raw)",
        };
        f.debug_tuple("CallFrames").field(&side).finish()
    }
}
