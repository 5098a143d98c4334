//! The router frame: [`Frame`], and its lossless conversions from and to the messages that
//! carry it, [`StreamRequest`] and [`StreamResponse`].
//!
//! Every message of a router stream carries a frame type and a payload. This module turns
//! the two generated message types into one enum and back, losslessly: the payload of every
//! frame is kept (also for control frames, which Jumpstarter sends empty), and a frame type
//! this crate does not know survives with its raw value, so a router or a proxy built on
//! [`Frame`] forwards frames from newer peers unchanged.
//!
//! Conversions never copy a payload: [`Bytes`] is reference counted.
//!
//! ```
//! use bytes::Bytes;
//! use jumpstarter_router::Frame;
//! use jumpstarter_router::proto::StreamRequest;
//!
//! let req: StreamRequest = Frame::Data(Bytes::from_static(b"hello")).into();
//! assert_eq!(req.frame_type, 0);
//! assert_eq!(Frame::from(req), Frame::Data(Bytes::from_static(b"hello")));
//!
//! // A frame type from a newer protocol revision is kept as it is.
//! let odd = StreamRequest { payload: Bytes::new(), frame_type: 9 };
//! assert_eq!(Frame::from(odd.clone()), Frame::Unknown { frame_type: 9, payload: Bytes::new() });
//! assert_eq!(StreamRequest::from(Frame::from(odd.clone())), odd);
//! ```

use bytes::Bytes;

use crate::proto::{FrameType, StreamRequest, StreamResponse};

/// One frame of a router stream.
///
/// | variant | wire `frame_type` | meaning |
/// |---|---|---|
/// | [`Data`](Frame::Data) | `FRAME_TYPE_DATA` (0) | bytes of the stream |
/// | [`RstStream`](Frame::RstStream) | `FRAME_TYPE_RST_STREAM` (3) | the sender aborted the stream |
/// | [`Ping`](Frame::Ping) | `FRAME_TYPE_PING` (6) | keepalive, ignored by readers |
/// | [`GoAway`](Frame::GoAway) | `FRAME_TYPE_GOAWAY` (7) | the sender finished writing (half-close) |
/// | [`Unknown`](Frame::Unknown) | anything else | kept for forward compatibility, ignored by readers |
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Stream bytes.
    Data(Bytes),
    /// A keepalive; its payload (normally empty) is kept as received.
    Ping(Bytes),
    /// End of the sender's data: the receiver's read half reaches EOF.
    GoAway(Bytes),
    /// The sender aborted the stream.
    RstStream(Bytes),
    /// A frame type this crate does not know, kept with its raw value.
    Unknown {
        /// The raw `frame_type` field.
        frame_type: i32,
        /// The payload as received.
        payload: Bytes,
    },
}

// ===== impl Frame =====

impl Frame {
    /// A GOAWAY frame with an empty payload, as Jumpstarter sends it.
    pub fn go_away() -> Self {
        Frame::GoAway(Bytes::new())
    }

    /// A RST_STREAM frame with an empty payload, as Jumpstarter sends it.
    pub fn rst_stream() -> Self {
        Frame::RstStream(Bytes::new())
    }

    /// A PING frame with an empty payload.
    pub fn ping() -> Self {
        Frame::Ping(Bytes::new())
    }

    /// Builds a frame from the two wire fields.
    pub fn from_parts(frame_type: i32, payload: Bytes) -> Self {
        match FrameType::try_from(frame_type) {
            Ok(FrameType::Data) => Frame::Data(payload),
            Ok(FrameType::Ping) => Frame::Ping(payload),
            Ok(FrameType::Goaway) => Frame::GoAway(payload),
            Ok(FrameType::RstStream) => Frame::RstStream(payload),
            Err(_) => Frame::Unknown {
                frame_type,
                payload,
            },
        }
    }

    /// Splits the frame into the two wire fields: `(frame_type, payload)`.
    pub fn into_parts(self) -> (i32, Bytes) {
        match self {
            Frame::Data(p) => (FrameType::Data as i32, p),
            Frame::Ping(p) => (FrameType::Ping as i32, p),
            Frame::GoAway(p) => (FrameType::Goaway as i32, p),
            Frame::RstStream(p) => (FrameType::RstStream as i32, p),
            Frame::Unknown {
                frame_type,
                payload,
            } => (frame_type, payload),
        }
    }

    /// The frame as one whole gRPC message on the wire: the 5-byte prefix, then the
    /// `StreamRequest` (which is `StreamResponse` on the wire too). For control frames, whose
    /// payload is small; DATA is built in place elsewhere.
    #[cfg(any(feature = "client", feature = "router"))]
    pub(crate) fn into_message(self) -> Bytes {
        use bytes::BufMut;
        use prost::Message;
        let m = StreamRequest::from(self);
        let len = m.encoded_len();
        let mut buf = bytes::BytesMut::with_capacity(5 + len);
        buf.put_u8(0);
        buf.put_u32(len as u32);
        // A buffer with room for the message: encoding cannot fail.
        let _ = m.encode(&mut buf);
        buf.freeze()
    }

    /// The frame's payload.
    pub fn payload(&self) -> &Bytes {
        match self {
            Frame::Data(p) | Frame::Ping(p) | Frame::GoAway(p) | Frame::RstStream(p) => p,
            Frame::Unknown { payload, .. } => payload,
        }
    }
}

impl From<StreamRequest> for Frame {
    fn from(m: StreamRequest) -> Self {
        Frame::from_parts(m.frame_type, m.payload)
    }
}

impl From<StreamResponse> for Frame {
    fn from(m: StreamResponse) -> Self {
        Frame::from_parts(m.frame_type, m.payload)
    }
}

impl From<Frame> for StreamRequest {
    fn from(f: Frame) -> Self {
        let (frame_type, payload) = f.into_parts();
        StreamRequest {
            payload,
            frame_type,
        }
    }
}

impl From<Frame> for StreamResponse {
    fn from(f: Frame) -> Self {
        let (frame_type, payload) = f.into_parts();
        StreamResponse {
            payload,
            frame_type,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_frames() -> Vec<Frame> {
        let p = Bytes::from_static(b"payload");
        vec![
            Frame::Data(p.clone()),
            Frame::Data(Bytes::new()),
            Frame::Ping(p.clone()),
            Frame::go_away(),
            Frame::GoAway(p.clone()),
            Frame::rst_stream(),
            Frame::Unknown {
                frame_type: 1,
                payload: p.clone(),
            },
            Frame::Unknown {
                frame_type: -5,
                payload: Bytes::new(),
            },
            Frame::Unknown {
                frame_type: i32::MAX,
                payload: p,
            },
        ]
    }

    #[test]
    fn wire_values_match_the_proto() {
        assert_eq!(Frame::Data(Bytes::new()).into_parts().0, 0x00);
        assert_eq!(Frame::rst_stream().into_parts().0, 0x03);
        assert_eq!(Frame::ping().into_parts().0, 0x06);
        assert_eq!(Frame::go_away().into_parts().0, 0x07);
    }

    #[test]
    fn request_round_trip_is_lossless() {
        for f in all_frames() {
            let req = StreamRequest::from(f.clone());
            assert_eq!(&req.payload, f.payload());
            assert_eq!(Frame::from(req), f);
        }
    }

    #[test]
    fn response_round_trip_is_lossless() {
        for f in all_frames() {
            let resp = StreamResponse::from(f.clone());
            assert_eq!(Frame::from(resp), f);
        }
    }

    #[test]
    fn unknown_values_survive_encoding() {
        use prost::Message;
        for ty in [1, 2, 4, 5, 8, 255, 1 << 20, -1] {
            let msg = StreamResponse {
                payload: Bytes::from_static(b"x"),
                frame_type: ty,
            };
            let wire = msg.encode_to_vec();
            let back = StreamResponse::decode(wire.as_slice()).unwrap();
            assert_eq!(
                Frame::from(back),
                Frame::Unknown {
                    frame_type: ty,
                    payload: Bytes::from_static(b"x")
                }
            );
        }
    }

    #[test]
    fn payloads_are_not_copied() {
        let p = Bytes::from(vec![7u8; 1024]);
        let ptr = p.as_ptr();
        let req = StreamRequest::from(Frame::Data(p));
        let resp = StreamResponse {
            payload: req.payload,
            frame_type: req.frame_type,
        };
        match Frame::from(resp) {
            Frame::Data(b) => assert_eq!(b.as_ptr(), ptr),
            other => panic!("unexpected {other:?}"),
        }
    }
}
