//! A caller's request body as the router reads it: whole messages, as slices of the received
//! HTTP/2 chunks, with [`wire::Parser`](crate::wire) following their boundaries for the frame
//! types and the size limit; how the caller went ([`Cause`]) when it did not finish; and the
//! draining of a body nobody reads any more.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body;
use http_body_util::BodyExt;
use tonic::Status;

use super::metrics::CallResult;
use crate::h2io::ConnState;
use crate::wire::Parser;

/// How a caller went, when it did not finish cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cause {
    /// It cancelled its call (HTTP/2 RST_STREAM `CANCEL` on a live connection): how a real
    /// Jumpstarter client ends its session.
    Cancelled,
    /// Its connection died: reset, closed without ending the call, keepalive timeout.
    Lost,
    /// It sent a RST_STREAM frame (or its HTTP/2 stream was reset with an error code).
    Reset,
    /// It broke the stream: an invalid message, or an end without GOAWAY.
    Aborted,
}

impl Cause {
    pub(super) fn result(self) -> CallResult {
        match self {
            Cause::Cancelled => CallResult::Cancelled,
            Cause::Lost => CallResult::Lost,
            Cause::Reset => CallResult::Reset,
            Cause::Aborted => CallResult::Aborted,
        }
    }

    /// What the survivor is told (the GOAWAY's payload and the status message).
    pub(super) fn for_peer(self, why: &str) -> String {
        match self {
            Cause::Cancelled => format!("peer cancelled its call: {why}"),
            Cause::Lost => format!("peer vanished: its connection was lost: {why}"),
            Cause::Reset => format!("peer reset the stream: {why}"),
            Cause::Aborted => format!("peer aborted the stream: {why}"),
        }
    }
}

// ===== the request body of one caller, as the router reads it =====

/// What a caller's request body gave next.
#[derive(Debug)]
pub(super) enum Inbound {
    /// Whole messages to forward as they are (one or more slices of received chunks):
    /// `goaway` when a GOAWAY message ended in them, `payload` the payload bytes they held.
    Data {
        bytes: Bytes,
        goaway: bool,
        payload: u64,
    },
    /// The body ended after whole messages (whether a RST_STREAM frame went by:
    /// [`RequestBody::reset`]).
    End,
    /// The caller went, or its body stopped being a valid message stream.
    Gone(Cause, String),
}

/// A caller's request body, with the parser that follows its messages.
pub(super) struct RequestBody {
    body: tonic::body::Body,
    parser: Parser,
    state: BodyState,
    /// Received slices: the first `released` are whole messages to hand out before reading
    /// on, the rest the message that is not whole yet.
    pieces: VecDeque<Bytes>,
    released: usize,
    /// The flags of the last released slice (`goaway`, `payload`).
    flags: (bool, u64),
    /// A RST_STREAM frame went by.
    pub(super) reset: bool,
    /// What became of the caller's connection (our own server's connections say).
    fate: Option<ConnState>,
}

enum BodyState {
    Open,
    /// The valid part of a chunk was handed out; this comes next.
    Failing(Cause, String),
    /// `End` or `Gone` was handed out: the body is never polled again.
    Done,
}

impl RequestBody {
    pub(super) fn new(
        body: tonic::body::Body,
        max_message_size: usize,
        fate: Option<ConnState>,
    ) -> Self {
        RequestBody {
            body,
            parser: Parser::new(max_message_size),
            state: BodyState::Open,
            pieces: VecDeque::new(),
            released: 0,
            flags: (false, 0),
            reset: false,
            fate,
        }
    }

    pub(super) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        loop {
            if self.released > 0 {
                self.released -= 1;
                let bytes = self.pieces.pop_front().expect("a released piece");
                let (goaway, payload) = if self.released == 0 {
                    std::mem::take(&mut self.flags)
                } else {
                    (false, 0)
                };
                return Poll::Ready(Inbound::Data {
                    bytes,
                    goaway,
                    payload,
                });
            }
            match std::mem::replace(&mut self.state, BodyState::Open) {
                BodyState::Open => {}
                BodyState::Failing(cause, why) => {
                    self.state = BodyState::Done;
                    return Poll::Ready(Inbound::Gone(cause, why));
                }
                BodyState::Done => {
                    self.state = BodyState::Done;
                    return Poll::Ready(Inbound::End);
                }
            }
            let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(status)) => {
                    self.state = BodyState::Done;
                    self.pieces.clear();
                    let (cause, why) = classify(&status, self.reset);
                    return Poll::Ready(Inbound::Gone(cause, why));
                }
                None => {
                    self.state = BodyState::Done;
                    self.pieces.clear();
                    return Poll::Ready(match self.parser.finish() {
                        Ok(()) => Inbound::End,
                        Err(_) => Inbound::Gone(
                            Cause::Aborted,
                            "its request body ended in the middle of a message (cut short: \
                             a proxy that gives up on a call does this)"
                                .into(),
                        ),
                    });
                }
            };
            // Trailers from a client are not part of the stream.
            let Ok(mut bytes) = frame.into_data() else {
                continue;
            };
            let scan = self.parser.scan(&bytes);
            self.reset |= scan.resets > 0;
            if let Some(e) = scan.error {
                self.state = BodyState::Failing(Cause::Aborted, describe(&e.status()));
                // The bad message's bytes from earlier chunks go nowhere.
                if scan.messages == 0 {
                    self.pieces.clear();
                }
            }
            bytes.truncate(scan.valid);
            if scan.messages == 0 {
                // Still inside one message: hold it all.
                if !bytes.is_empty() {
                    self.pieces.push_back(bytes);
                }
                continue;
            }
            // Whole messages up to where the open one starts; the rest is held.
            let upto = scan.open_from.unwrap_or(bytes.len());
            let tail = bytes.split_off(upto);
            let goaway = scan.goaways > 0;
            if self.pieces.is_empty() {
                self.pieces.extend((!tail.is_empty()).then_some(tail));
                return Poll::Ready(Inbound::Data {
                    bytes,
                    goaway,
                    payload: scan.payload,
                });
            }
            self.pieces.push_back(bytes);
            self.released = self.pieces.len();
            self.flags = (goaway, scan.payload);
            self.pieces.extend((!tail.is_empty()).then_some(tail));
        }
    }

    /// How the caller's connection ended, if it did.
    pub(super) fn connection_ended(&self) -> Option<&'static str> {
        self.fate.as_ref().and_then(ConnState::ended)
    }
}

impl Drop for RequestBody {
    /// A body dropped while its caller may still be sending (its call was answered, or its
    /// peer is gone) is read and dropped for a moment: a reset under the caller's writes would
    /// make a grpc-core client report `INTERNAL` instead of the status it was sent.
    fn drop(&mut self) {
        if matches!(self.state, BodyState::Done) || self.body.is_end_stream() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let body = std::mem::replace(&mut self.body, tonic::body::Body::empty());
            rt.spawn(drain(body));
        }
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody").finish_non_exhaustive()
    }
}

/// "Code: message", for the logs and the peer's status.
fn describe(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// How a caller went, from the error its request body ended with: h2's error when there is
/// one in the chain (tonic keeps hyper's error, which keeps h2's), else the status.
fn classify(status: &Status, reset_frame: bool) -> (Cause, String) {
    if reset_frame {
        return (Cause::Reset, "it sent a RST_STREAM frame".into());
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(status);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return classify_h2(h2);
        }
        if let Some(hyper) = e.downcast_ref::<hyper::Error>() {
            if hyper.is_timeout() {
                return (Cause::Lost, format!("keepalive timeout ({hyper})"));
            }
        }
        source = e.source();
    }
    (Cause::Lost, describe(status))
}

fn classify_h2(e: &h2::Error) -> (Cause, String) {
    match e.reason() {
        Some(h2::Reason::CANCEL) if e.is_reset() && e.is_remote() => {
            (Cause::Cancelled, "HTTP/2 RST_STREAM CANCEL".into())
        }
        Some(reason) if e.is_reset() && e.is_remote() => {
            (Cause::Reset, format!("HTTP/2 RST_STREAM {reason:?}"))
        }
        Some(reason) if e.is_go_away() && e.is_remote() => (
            Cause::Lost,
            format!("its connection was closed (HTTP/2 GOAWAY {reason:?})"),
        ),
        _ if e.is_io() => (Cause::Lost, format!("I/O error: {e}")),
        _ => (Cause::Lost, e.to_string()),
    }
}

// ===== draining =====

/// How long, and how many bytes, a request body that is no longer wanted is still read and
/// dropped (see [`drain`]).
const DRAIN: (Duration, usize) = (Duration::from_secs(5), 4 * 1024 * 1024);

/// Reads and drops what a caller still sends after its call was answered, until it ends its
/// request, within [`DRAIN`] (time and bytes): the caller's writes do not fail under a reset
/// before its client has read the status, and a caller holds no more than that.
pub(super) async fn drain(mut body: tonic::body::Body) {
    let (time, bytes) = DRAIN;
    let mut budget = bytes;
    let _ = tokio::time::timeout(time, async {
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, |d| d.len());
            budget = match budget.checked_sub(n) {
                Some(b) => b,
                None => break,
            };
        }
    })
    .await;
}
