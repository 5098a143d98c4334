//! The view of a `Stream` call's message stream that forwarding and zero-copy reading need:
//! message boundaries, frame types and where the payloads lie, nothing else. The router scans
//! request bodies with it; the client reads response bodies with it (payloads as slices of
//! the HTTP/2 DATA chunks, [`Events`]).
//!
//! A `Stream` call's request body is a sequence of gRPC messages, each a 5-byte prefix (a
//! compression flag and a big-endian length) and a protobuf `StreamRequest`. `StreamRequest`
//! and `StreamResponse` are the same on the wire (field 1 `bytes payload`, field 2 `FrameType
//! frame_type`), so the router forwards the received bytes as they are, as slices of the
//! HTTP/2 DATA chunks, and this parser only follows along: where messages end, which of them
//! is a GOAWAY, how many payload bytes went by, and where the stream stops being valid.
//!
//! It never buffers: each chunk is scanned through a small state machine, and the result says
//! how much of the chunk to forward. A stream goes bad at the first byte that no continuation
//! could make right (a flag other than 0, a length over the limit, a malformed protobuf
//! field); the chunk is then forwarded up to the start of the message that went bad, so the
//! peer gets whole messages and then the abort (only bytes of that message that went out in
//! earlier chunks are gone already). Unknown protobuf fields are forwarded unchanged (prost
//! skips them as well), except groups (deprecated, never sent by Jumpstarter peers), which are
//! refused.
//!
//! ```text
//!            flag, len (4 bytes, big-endian)       len bytes of protobuf fields
//!   ──► Prefix ───────────────────────► Varint(Tag) ─┬─► Varint(Value) ──────┬─► Varint(Tag)
//!         ▲                                         ├─► Varint(Len) ► Skip ─┤
//!         │                                         └─► Skip (fixed) ───────┤
//!         └────────────────────── the message's last byte ◄─────────────────┘
//! ```

use tonic::Status;

use crate::proto::FrameType;

/// What one chunk held.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Scanned {
    /// Bytes of the chunk to forward: all of it, or with `error` up to the start of the
    /// message that went bad.
    pub(crate) valid: usize,
    /// Messages that ended in the chunk.
    pub(crate) messages: u64,
    /// Of those, messages with frame type GOAWAY.
    pub(crate) goaways: u64,
    /// Of those, messages with frame type RST_STREAM.
    pub(crate) resets: u64,
    /// Payload bytes (field 1, the last one of each message, as prost reads it) of the
    /// messages that ended in the chunk.
    pub(crate) payload: u64,
    /// Why the stream stops being valid at `valid`.
    pub(crate) error: Option<StreamError>,
    /// When the chunk ends inside a message: where that message starts in the chunk (0 when
    /// it started in an earlier one). A forwarder holds those bytes back until the message is
    /// whole, so that whatever it sends next starts at a message boundary.
    pub(crate) open_from: Option<usize>,
}

/// What a reader of the messages (rather than a forwarder of their bytes) learns from
/// [`Parser::scan_with`], in order, for each message.
pub(crate) trait Events {
    /// A field 1 (the payload) starts in the current message: it replaces what earlier ones
    /// held.
    fn payload_start(&mut self) {}
    /// These bytes of the chunk are payload of the current message's field 1.
    fn payload(&mut self, _range: std::ops::Range<usize>) {}
    /// The current message ended; its frame type as prost reads it (the low 32 bits).
    fn message(&mut self, _frame_type: i32) {}
}

/// A forwarder's events: none.
impl Events for () {}

/// Why a request body is not a valid stream of `StreamRequest` messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StreamError {
    /// A message with the compressed flag set (no `grpc-encoding` was negotiated).
    Compressed,
    /// A flag other than 0 or 1.
    BadFlag(u8),
    /// A message longer than the limit.
    TooLarge {
        /// At least this long (the length is known once its 4 bytes are in).
        len: u64,
        limit: usize,
        /// `len` is a lower bound: the prefix was known too large before its last byte.
        at_least: bool,
    },
    /// Not a protobuf `StreamRequest`.
    Malformed(&'static str),
    /// The body ended inside a message.
    Truncated,
}

impl StreamError {
    /// The status for the caller that sent it, as tonic words its own decoding errors.
    pub(crate) fn status(&self) -> Status {
        match self {
            StreamError::Compressed => Status::internal(
                "protocol error: received message with compressed-flag but no grpc-encoding was specified",
            ),
            StreamError::BadFlag(f) => Status::internal(format!(
                "protocol error: received message with invalid compression flag: {f} (valid flags are 0 and 1)"
            )),
            StreamError::TooLarge {
                len,
                limit,
                at_least,
            } => Status::out_of_range(format!(
                "Error, decoded message length too large: found {}{len} bytes, the limit is: {limit} bytes",
                if *at_least { "at least " } else { "" }
            )),
            StreamError::Malformed(why) => {
                Status::internal(format!("failed to decode Protobuf message: StreamRequest: {why}"))
            }
            StreamError::Truncated => Status::internal("Unexpected EOF decoding stream."),
        }
    }
}

/// The incremental parser of one request body.
#[derive(Debug)]
pub(crate) struct Parser {
    limit: usize,
    state: State,
    /// The frame type of the message being read (proto3 default DATA; the last one wins).
    frame_type: u64,
    /// Bytes of the current message still to come.
    left: u64,
    /// The payload length of the current message (its last field 1).
    payload: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// `n` bytes of a prefix read; `len` holds the length bytes so far.
    Prefix { n: u8, len: u64 },
    /// Inside a message, reading a varint: what it is, its value so far, its next shift.
    Varint {
        of: VarintOf,
        value: u64,
        shift: u32,
    },
    /// Bytes to pass over: a field's contents (`payload`: of field 1).
    Skip { n: u64, payload: bool },
    /// The stream is invalid; nothing more is read.
    Failed,
}

/// What a varint inside a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VarintOf {
    /// A field's tag (the start of a field).
    Tag,
    /// A varint field's value (`field` 2 is the frame type).
    Value { field: u64 },
    /// A length-delimited field's length.
    Len { field: u64 },
}

impl State {
    const TAG: State = State::Varint {
        of: VarintOf::Tag,
        value: 0,
        shift: 0,
    };
}

const PREFIX_LEN: u8 = 5;

impl Parser {
    /// A parser for messages of at most `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Parser {
            limit,
            state: State::Prefix { n: 0, len: 0 },
            frame_type: 0,
            left: 0,
            payload: 0,
        }
    }

    /// Follows the stream through `chunk`.
    #[cfg(any(feature = "router", test))]
    pub(crate) fn scan(&mut self, chunk: &[u8]) -> Scanned {
        self.scan_with(chunk, &mut ())
    }

    /// [`scan`](Parser::scan), telling `ev` where the payloads lie and where messages end.
    pub(crate) fn scan_with<E: Events>(&mut self, chunk: &[u8], ev: &mut E) -> Scanned {
        let mut scan = Scanned::default();
        let mut i = 0;
        // Where the current message starts in this chunk (0: in an earlier one).
        let mut start = 0;
        while i < chunk.len() {
            if self.state == State::Failed {
                break;
            }
            if let State::Prefix { n: 0, .. } = self.state {
                start = i;
            }
            // Contents to skip are passed over in one step (payloads are most of the bytes).
            if let State::Skip { n, payload } = self.state {
                let take = n.min((chunk.len() - i) as u64);
                if payload {
                    ev.payload(i..i + take as usize);
                }
                i += take as usize;
                self.left -= take;
                self.state = if take == n {
                    self.field_done(&mut scan, ev)
                } else {
                    State::Skip {
                        n: n - take,
                        payload,
                    }
                };
                continue;
            }
            match self.step(chunk[i], &mut scan, ev) {
                Ok(()) => i += 1,
                Err(e) => {
                    self.state = State::Failed;
                    scan.error = Some(e);
                    scan.valid = start;
                    return scan;
                }
            }
        }
        scan.valid = i;
        if self.in_message() {
            scan.open_from = Some(start);
        }
        scan
    }

    /// Whether the bytes so far end inside a message (not at a boundary, not failed).
    pub(crate) fn in_message(&self) -> bool {
        !matches!(self.state, State::Prefix { n: 0, .. } | State::Failed)
    }

    /// The end of the body: an error if it ended inside a message.
    pub(crate) fn finish(&self) -> Result<(), StreamError> {
        if self.in_message() {
            Err(StreamError::Truncated)
        } else {
            Ok(())
        }
    }

    /// One byte outside a skip.
    fn step<E: Events>(
        &mut self,
        b: u8,
        scan: &mut Scanned,
        ev: &mut E,
    ) -> Result<(), StreamError> {
        self.state = match self.state {
            State::Prefix { n: 0, .. } => match b {
                0 => State::Prefix { n: 1, len: 0 },
                1 => return Err(StreamError::Compressed),
                f => return Err(StreamError::BadFlag(f)),
            },
            State::Prefix { n, len } => {
                let len = len << 8 | u64::from(b);
                let n = n + 1;
                // The smallest length the remaining bytes could still make.
                let least = len << (8 * u32::from(PREFIX_LEN - n));
                if least > self.limit as u64 {
                    return Err(StreamError::TooLarge {
                        len: least,
                        limit: self.limit,
                        at_least: n < PREFIX_LEN,
                    });
                }
                if n < PREFIX_LEN {
                    State::Prefix { n, len }
                } else {
                    self.left = len;
                    self.frame_type = FrameType::Data as u64;
                    if len == 0 {
                        self.message_done(scan, ev)
                    } else {
                        State::TAG
                    }
                }
            }
            State::Varint { of, value, shift } => {
                self.left -= 1;
                let value = varint_step(value, shift, b)?;
                if b & 0x80 != 0 {
                    self.more()?;
                    State::Varint {
                        of,
                        value,
                        shift: shift + 7,
                    }
                } else {
                    self.varint_done(of, value, scan, ev)?
                }
            }
            State::Skip { .. } | State::Failed => unreachable!("handled by scan"),
        };
        Ok(())
    }

    /// A varint ended with `value`: what follows it.
    fn varint_done<E: Events>(
        &mut self,
        of: VarintOf,
        value: u64,
        scan: &mut Scanned,
        ev: &mut E,
    ) -> Result<State, StreamError> {
        Ok(match of {
            VarintOf::Tag => self.field(value >> 3, (value & 7) as u8)?,
            VarintOf::Value { field } => {
                if field == 2 {
                    self.frame_type = value;
                }
                self.field_done(scan, ev)
            }
            VarintOf::Len { field } => {
                if value > self.left {
                    return Err(StreamError::Malformed("a field is longer than its message"));
                }
                if field == 1 {
                    // The last field 1 is the payload (as prost reads it).
                    self.payload = value;
                    ev.payload_start();
                }
                if value == 0 {
                    self.field_done(scan, ev)
                } else {
                    State::Skip {
                        n: value,
                        payload: field == 1,
                    }
                }
            }
        })
    }

    /// A varint needs another byte: there must be one left in the message.
    fn more(&self) -> Result<(), StreamError> {
        if self.left == 0 {
            return Err(StreamError::Malformed("a varint runs past its message"));
        }
        Ok(())
    }

    /// A tag was read: what its field's contents are.
    fn field(&mut self, field: u64, wire: u8) -> Result<State, StreamError> {
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(StreamError::Malformed("invalid field number"));
        }
        let need = match (field, wire) {
            (1, 2) | (2, 0) => 1,
            (1 | 2, _) => return Err(StreamError::Malformed("invalid wire type")),
            (_, 0 | 2) => 1,
            (_, 1) => 8,
            (_, 5) => 4,
            (_, 3 | 4) => return Err(StreamError::Malformed("groups are not supported")),
            _ => return Err(StreamError::Malformed("invalid wire type")),
        };
        if self.left < need {
            return Err(StreamError::Malformed("a field runs past its message"));
        }
        let varint = |of| State::Varint {
            of,
            value: 0,
            shift: 0,
        };
        Ok(match wire {
            0 => varint(VarintOf::Value { field }),
            2 => varint(VarintOf::Len { field }),
            _ => State::Skip {
                n: need,
                payload: false,
            },
        })
    }

    /// A field ended: the next tag, or the end of the message.
    fn field_done<E: Events>(&mut self, scan: &mut Scanned, ev: &mut E) -> State {
        if self.left == 0 {
            self.message_done(scan, ev)
        } else {
            State::TAG
        }
    }

    fn message_done<E: Events>(&mut self, scan: &mut Scanned, ev: &mut E) -> State {
        // prost reads an enum as int32: the low 32 bits.
        let frame_type = self.frame_type as u32 as i32;
        ev.message(frame_type);
        scan.messages += 1;
        scan.payload += std::mem::take(&mut self.payload);
        if frame_type == FrameType::Goaway as i32 {
            scan.goaways += 1;
        } else if frame_type == FrameType::RstStream as i32 {
            scan.resets += 1;
        }
        State::Prefix { n: 0, len: 0 }
    }
}

/// Scans `stream` cut at `points` (sorted, from 0 to its length) as the router does, stopping
/// at the first error: the totals, and the verdict at the end. Checks on the way that no
/// chunk forwards more than it held, that only an error drops bytes, and that nothing is read
/// after an error. For the tests and the fuzz target.
#[cfg(any(test, fuzzing))]
pub(crate) fn scan_split(
    limit: usize,
    stream: &[u8],
    points: &[usize],
) -> (Scanned, Result<(), StreamError>) {
    let mut p = Parser::new(limit);
    let mut total = Scanned::default();
    let mut events = PayloadCount::default();
    // What a forwarder that holds back the open message releases, and holds.
    let (mut released, mut held) = (0usize, 0usize);
    for w in points.windows(2) {
        let chunk = &stream[w[0]..w[1]];
        let s = p.scan_with(chunk, &mut events);
        // A reader's events agree with a forwarder's counts.
        assert_eq!(
            (events.messages, events.payload),
            (total.messages + s.messages, total.payload + s.payload),
            "the events disagree with the scan"
        );
        assert!(
            events.ranges_in(chunk.len()),
            "a payload range outside its chunk"
        );
        assert!(s.valid <= chunk.len(), "forwards more than it got");
        assert!(
            s.error.is_some() || s.valid == chunk.len(),
            "drops bytes without an error"
        );
        if s.messages > 0 {
            let upto = s.open_from.unwrap_or(s.valid);
            released += held + upto;
            held = s.valid - upto;
        } else {
            held += s.valid;
        }
        if s.error.is_some() {
            // The bad message's bytes from earlier chunks were held: they go nowhere.
            held = 0;
        }
        assert_eq!(
            s.open_from.is_some(),
            p.in_message(),
            "open_from and the parser disagree"
        );
        total.valid += s.valid;
        total.messages += s.messages;
        total.goaways += s.goaways;
        total.resets += s.resets;
        total.payload += s.payload;
        if s.error.is_some() {
            total.error = s.error;
            let after = p.scan(&stream[w[1]..]);
            assert_eq!(
                (after.valid, after.messages),
                (0, 0),
                "reads after an error"
            );
            assert_whole_messages(limit, &stream[..released]);
            return (total, Ok(()));
        }
    }
    assert_whole_messages(limit, &stream[..released]);
    assert_eq!(
        released + held,
        total.valid,
        "a holding forwarder lost or made up bytes"
    );
    (total, p.finish())
}

/// What a holding forwarder released is whole, valid messages: the router can always append
/// a message of its own (its GOAWAY when a peer vanishes).
#[cfg(any(test, fuzzing))]
fn assert_whole_messages(limit: usize, released: &[u8]) {
    let mut q = Parser::new(limit);
    let r = q.scan(released);
    assert!(
        r.error.is_none() && !q.in_message(),
        "released bytes that are not whole messages"
    );
}

/// What [`scan_split`] checks the events against: the payload bytes of the messages that
/// ended (the last field 1 of each) and their number; and that each range lies in its chunk.
#[cfg(any(test, fuzzing))]
#[derive(Default)]
struct PayloadCount {
    current: u64,
    payload: u64,
    messages: u64,
    /// The largest range end seen in the current chunk.
    end: usize,
}

#[cfg(any(test, fuzzing))]
impl PayloadCount {
    fn ranges_in(&mut self, chunk_len: usize) -> bool {
        std::mem::take(&mut self.end) <= chunk_len
    }
}

#[cfg(any(test, fuzzing))]
impl Events for PayloadCount {
    fn payload_start(&mut self) {
        self.current = 0;
    }
    fn payload(&mut self, range: std::ops::Range<usize>) {
        assert!(range.start < range.end, "an empty payload range");
        self.end = self.end.max(range.end);
        self.current += range.len() as u64;
    }
    fn message(&mut self, _frame_type: i32) {
        self.payload += std::mem::take(&mut self.current);
        self.messages += 1;
    }
}

/// Scans `stream` whole and cut at `points`, and checks that both give the same answer (but
/// for bytes of a bad message that went out in earlier chunks). Returns the whole scan.
#[cfg(any(test, fuzzing))]
pub(crate) fn check_chunking(
    limit: usize,
    stream: &[u8],
    points: &[usize],
) -> (Scanned, Result<(), StreamError>) {
    let whole = scan_split(limit, stream, &[0, stream.len()]);
    let split = scan_split(limit, stream, points);
    assert_eq!(whole.0.error, split.0.error);
    assert_eq!(whole.1, split.1);
    assert_eq!(
        (whole.0.messages, whole.0.goaways, whole.0.payload),
        (split.0.messages, split.0.goaways, split.0.payload)
    );
    assert!(split.0.valid >= whole.0.valid && split.0.valid <= stream.len());
    if whole.0.error.is_none() {
        assert_eq!(split.0.valid, whole.0.valid);
    }
    whole
}

/// One byte of a varint (at most 10 bytes, the last at most 1, as prost reads them).
fn varint_step(value: u64, shift: u32, b: u8) -> Result<u64, StreamError> {
    if shift == 63 && b > 1 {
        return Err(StreamError::Malformed("invalid varint"));
    }
    Ok(value | u64::from(b & 0x7f) << shift)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    use crate::test_util::grpc_message as message;

    /// `bytes` in chunks of `chunk` bytes.
    fn scan_all(bytes: &[u8], chunk: usize) -> (Scanned, Result<(), StreamError>) {
        let mut points: Vec<usize> = (0..bytes.len()).step_by(chunk.max(1)).collect();
        points.push(bytes.len());
        scan_split(1024, bytes, &points)
    }

    #[test]
    fn frames_of_every_kind_at_every_split() {
        let mut stream = Vec::new();
        stream.extend(message(0, b"hello"));
        stream.extend(message(0, b""));
        stream.extend(message(6, b"p"));
        stream.extend(message(9, b"xyz"));
        stream.extend(message(3, b""));
        stream.extend(message(7, b""));
        stream.extend(message(0, &[5u8; 300]));
        for chunk in 1..=stream.len() {
            let (s, finish) = scan_all(&stream, chunk);
            assert_eq!(
                s,
                Scanned {
                    valid: stream.len(),
                    messages: 7,
                    goaways: 1,
                    resets: 1,
                    payload: 5 + 1 + 3 + 300,
                    error: None,
                    open_from: None,
                },
                "chunk {chunk}"
            );
            assert_eq!(finish, Ok(()));
        }
    }

    /// The stream goes bad at the first bad byte (`at`, within the second message); what is
    /// forwarded ends before that message, less what of it went out in earlier chunks.
    #[test]
    fn invalid_input_ends_the_stream_before_its_message() {
        let good = message(0, b"ok");
        let cases: Vec<(Vec<u8>, usize, StreamError)> = vec![
            (vec![1, 0, 0, 0, 0], 0, StreamError::Compressed),
            (vec![2, 0, 0, 0, 0], 0, StreamError::BadFlag(2)),
            // 4 GiB - 1: known too large at the first length byte.
            (
                vec![0, 0xff, 0xff, 0xff, 0xff],
                1,
                StreamError::TooLarge {
                    len: 0xff00_0000,
                    limit: 1024,
                    at_least: true,
                },
            ),
            // 1025 bytes: known at the last length byte.
            (
                vec![0, 0, 0, 0x04, 0x01],
                4,
                StreamError::TooLarge {
                    len: 1025,
                    limit: 1024,
                    at_least: false,
                },
            ),
            // Field 1 as a varint.
            (
                vec![0, 0, 0, 0, 2, 0x08, 0x01],
                5,
                StreamError::Malformed("invalid wire type"),
            ),
            // A payload longer than the message.
            (
                vec![0, 0, 0, 0, 2, 0x0a, 0x05],
                6,
                StreamError::Malformed("a field is longer than its message"),
            ),
            // A group.
            (
                vec![0, 0, 0, 0, 2, 0x1b, 0x1c],
                5,
                StreamError::Malformed("groups are not supported"),
            ),
        ];
        for (bad, at, err) in cases {
            let mut stream = good.clone();
            stream.extend_from_slice(&bad);
            for chunk in 1..=stream.len() {
                let (s, _) = scan_all(&stream, chunk);
                if chunk >= stream.len() {
                    assert_eq!(s.valid, good.len(), "{bad:?} in one chunk");
                }
                let sent_before = (good.len() + at) / chunk * chunk;
                assert_eq!(
                    s.valid,
                    good.len().max(sent_before.min(good.len() + at)),
                    "{bad:?} chunk {chunk}"
                );
                assert_eq!(s.error.as_ref(), Some(&err), "{bad:?} chunk {chunk}");
                assert_eq!(s.messages, 1);
            }
        }
    }

    #[test]
    fn a_body_that_ends_inside_a_message_is_truncated() {
        let m = message(0, b"hello");
        for cut in 1..m.len() {
            let mut p = Parser::new(1024);
            assert_eq!(p.scan(&m[..cut]).error, None);
            assert_eq!(p.finish(), Err(StreamError::Truncated), "cut {cut}");
        }
    }

    // ===== properties: any chunking, against prost as the reference decoder =====

    use proptest::prelude::*;

    /// A message as a test writes it: prost's encoding of a `StreamRequest`, then unknown
    /// fields (wire types 0, 1, 2, 5) that prost skips.
    fn encoded(frame_type: i32, payload: &[u8], unknown: &[(u32, u8, u64)]) -> Vec<u8> {
        let mut body = crate::proto::StreamRequest {
            payload: payload.to_vec().into(),
            frame_type,
        }
        .encode_to_vec();
        for &(field, wire, value) in unknown {
            prost::encoding::encode_key(
                field,
                match wire {
                    0 => prost::encoding::WireType::Varint,
                    1 => prost::encoding::WireType::SixtyFourBit,
                    2 => prost::encoding::WireType::LengthDelimited,
                    _ => prost::encoding::WireType::ThirtyTwoBit,
                },
                &mut body,
            );
            match wire {
                0 => prost::encoding::encode_varint(value, &mut body),
                1 => body.extend_from_slice(&value.to_le_bytes()),
                2 => {
                    let n = (value % 40) as usize;
                    prost::encoding::encode_varint(n as u64, &mut body);
                    body.extend(std::iter::repeat_n(0xab, n));
                }
                _ => body.extend_from_slice(&(value as u32).to_le_bytes()),
            }
        }
        let mut out = vec![0u8];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// What goes after the valid messages.
    #[derive(Clone, Debug)]
    enum Tail {
        None,
        BadFlag(u8),
        /// A prefix whose length is over the limit.
        Oversize(u32),
        /// The stream stops `cut` bytes into one more valid message.
        Truncated(usize),
        /// A valid prefix, then bytes that may or may not be a protobuf message.
        Garbage(Vec<u8>),
    }

    const LIMIT: usize = 4096;

    fn tail() -> impl Strategy<Value = Tail> {
        prop_oneof![
            Just(Tail::None),
            (1u8..=255).prop_map(Tail::BadFlag),
            ((LIMIT as u32 + 1)..=u32::MAX).prop_map(Tail::Oversize),
            (1usize..40).prop_map(Tail::Truncated),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(Tail::Garbage),
        ]
    }

    fn any_message() -> impl Strategy<Value = (i32, Vec<u8>, Vec<(u32, u8, u64)>)> {
        (
            prop_oneof![Just(0), Just(3), Just(6), Just(7), any::<i32>()],
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::collection::vec((3u32..2000, 0u8..4, any::<u64>()), 0..3),
        )
    }

    /// `bytes` cut at `cuts` (any values), checked against `bytes` whole.
    fn scan_cut(bytes: &[u8], cuts: &[usize]) -> (Scanned, Result<(), StreamError>) {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.extend([0, bytes.len()]);
        points.sort_unstable();
        points.dedup();
        check_chunking(LIMIT, bytes, &points)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn forwards_exactly_the_valid_prefix_whatever_the_chunking(
            messages in proptest::collection::vec(any_message(), 0..8),
            tail in tail(),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut stream = Vec::new();
            let (mut goaways, mut payload) = (0, 0);
            for (t, p, u) in &messages {
                let m = encoded(*t, p, u);
                // The reference: prost decodes the body the prefix frames.
                let decoded = crate::proto::StreamRequest::decode(&m[5..]).unwrap();
                goaways += u64::from(decoded.frame_type == 7);
                payload += decoded.payload.len() as u64;
                stream.extend(m);
            }
            let good = stream.len();
            let mut tail_prost_ok = None;
            match &tail {
                Tail::None => {}
                Tail::BadFlag(f) => stream.extend_from_slice(&[*f, 0, 0, 0, 0]),
                Tail::Oversize(len) => {
                    stream.push(0);
                    stream.extend_from_slice(&len.to_be_bytes());
                }
                Tail::Truncated(cut) => {
                    let m = encoded(0, &[1u8; 30], &[]);
                    stream.extend_from_slice(&m[..(*cut).min(m.len() - 1)]);
                }
                Tail::Garbage(g) => {
                    stream.push(0);
                    stream.extend_from_slice(&(g.len() as u32).to_be_bytes());
                    stream.extend_from_slice(g);
                    tail_prost_ok = Some(crate::proto::StreamRequest::decode(&g[..]).is_ok());
                }
            }
            // One chunk, and any chunking, give the same answer (checked in `check_chunking`).
            let (scan, finish) = scan_cut(&stream, &cuts);
            prop_assert!(scan.valid <= stream.len());
            match tail {
                Tail::None => {
                    prop_assert_eq!(scan.valid, good);
                    prop_assert_eq!(scan.error, None);
                    prop_assert_eq!(finish, Ok(()));
                    prop_assert_eq!((scan.messages, scan.goaways, scan.payload), (messages.len() as u64, goaways, payload));
                }
                Tail::BadFlag(f) => {
                    prop_assert_eq!(scan.valid, good);
                    let want = if f == 1 { StreamError::Compressed } else { StreamError::BadFlag(f) };
                    prop_assert_eq!(scan.error, Some(want));
                }
                Tail::Oversize(_) => {
                    prop_assert_eq!(scan.valid, good);
                    let too_large = matches!(scan.error, Some(StreamError::TooLarge { .. }));
                    prop_assert!(too_large, "{:?}", scan.error);
                }
                Tail::Truncated(_) => {
                    prop_assert_eq!(scan.valid, stream.len());
                    prop_assert_eq!(scan.error, None);
                    prop_assert_eq!(finish, Err(StreamError::Truncated));
                }
                Tail::Garbage(_) => {
                    let prost_ok = tail_prost_ok.unwrap();
                    match &scan.error {
                        None => {
                            // Accepted: prost accepts it too, and all of it is forwarded.
                            prop_assert!(prost_ok, "we accepted what prost refuses");
                            prop_assert_eq!(scan.valid, stream.len());
                            prop_assert_eq!(scan.messages, messages.len() as u64 + 1);
                        }
                        Some(StreamError::Malformed("groups are not supported")) => {}
                        Some(e) => {
                            prop_assert!(!prost_ok, "we refused what prost accepts: {e:?}");
                            prop_assert_eq!(scan.valid, good, "whole messages only");
                        }
                    }
                }
            }
        }
    }

    /// A reader's view: each message's payload as the joined slices [`Events`] pointed at,
    /// and its frame type.
    #[derive(Default)]
    struct Reader {
        current: Vec<u8>,
        messages: Vec<(i32, Vec<u8>)>,
    }

    struct ChunkEvents<'a> {
        chunk: &'a [u8],
        reader: &'a mut Reader,
    }

    impl Events for ChunkEvents<'_> {
        fn payload_start(&mut self) {
            self.reader.current.clear();
        }
        fn payload(&mut self, range: std::ops::Range<usize>) {
            self.reader.current.extend_from_slice(&self.chunk[range]);
        }
        fn message(&mut self, frame_type: i32) {
            let payload = std::mem::take(&mut self.reader.current);
            self.reader.messages.push((frame_type, payload));
        }
    }

    /// Reads `bytes` cut at `cuts` through [`Parser::scan_with`].
    fn read_cut(bytes: &[u8], cuts: &[usize]) -> Reader {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.extend([0, bytes.len()]);
        points.sort_unstable();
        points.dedup();
        let mut p = Parser::new(LIMIT);
        let mut reader = Reader::default();
        for w in points.windows(2) {
            let chunk = &bytes[w[0]..w[1]];
            let scan = p.scan_with(
                chunk,
                &mut ChunkEvents {
                    chunk,
                    reader: &mut reader,
                },
            );
            assert_eq!(scan.error, None);
        }
        reader
    }

    /// The last field 1 is the payload, as prost reads it; an empty one replaces an earlier.
    #[test]
    fn the_last_payload_field_wins() {
        let mut m = vec![0, 0, 0, 0, 9];
        m.extend_from_slice(&[0x0a, 1, b'a', 0x0a, 2, b'b', b'c', 0x10, 7]);
        let r = read_cut(&m, &[7, 8]);
        assert_eq!(r.messages, vec![(7, b"bc".to_vec())]);
        let mut m = vec![0, 0, 0, 0, 5];
        m.extend_from_slice(&[0x0a, 1, b'a', 0x0a, 0]);
        assert_eq!(read_cut(&m, &[]).messages, vec![(0, vec![])]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The payloads and frame types a reader gets from the events are prost's, whatever
        /// the chunking (unknown fields around the payload included).
        #[test]
        fn events_give_what_prost_decodes_whatever_the_chunking(
            messages in proptest::collection::vec(any_message(), 0..8),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut stream = Vec::new();
            let mut want = Vec::new();
            for (t, p, u) in &messages {
                let m = encoded(*t, p, u);
                let decoded = crate::proto::StreamResponse::decode(&m[5..]).unwrap();
                want.push((decoded.frame_type, decoded.payload.to_vec()));
                stream.extend(m);
            }
            prop_assert_eq!(read_cut(&stream, &cuts).messages, want);
        }
    }
}
