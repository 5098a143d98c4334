//! `RouterStream` driven by an arbitrary sequence of peer frames and local operations (read,
//! write of arbitrary sizes, flush, shutdown, close, the transport taking or dropping sent
//! frames, drop), every poll a single one with a waker that does nothing, so each `Pending`
//! stays where it falls. After each step the invariants hold:
//!
//! - the bytes read are a prefix of the DATA the peer sent before its first GOAWAY,
//!   RST_STREAM, error or end; at EOF they are all of it, and at a read error all of what came
//!   before the error;
//! - no read after EOF or after an error returns data, and a read error stays (same kind);
//! - the first error of the stream (`error()`) never changes once set;
//! - no `Ready(Ok(0))` for a non-empty write, and the DATA sent is a prefix of the bytes
//!   accepted, in order; GOAWAY comes after all of it; a drop before shutdown sends RST_STREAM
//!   and then `Err(Dropped)`, never a clean end.
#![no_main]

use std::io::ErrorKind;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_core::Stream;
use jumpstarter_router::{Error, Frame, RouterStream, SentFrames, StreamOptions};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tonic::Status;

struct Script(mpsc::UnboundedReceiver<Result<Frame, Status>>);

impl Stream for Script {
    type Item = Result<Frame, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().0.poll_recv(cx)
    }
}

/// Byte `i` of what the local side writes.
fn local_byte(i: usize) -> u8 {
    (i.wrapping_mul(131) ^ (i >> 8)) as u8
}

/// Byte `i` of what the peer sends.
fn peer_byte(i: usize) -> u8 {
    (i.wrapping_mul(197) ^ (i >> 9) ^ 0x5a) as u8
}

#[derive(Default)]
struct Peer {
    /// DATA sent before the first terminal event (GOAWAY, RST_STREAM, error, end).
    before_end: Vec<u8>,
    /// The kind a read fails with, if the first terminal event is an error; `None` for GOAWAY.
    end: Option<Option<ErrorKind>>,
    sent_len: usize,
}

struct Run {
    tx: Option<mpsc::UnboundedSender<Result<Frame, Status>>>,
    stream: Option<RouterStream<Script>>,
    sent: Option<SentFrames>,
    peer: Peer,
    /// Bytes read so far.
    read: Vec<u8>,
    /// The read half reached EOF, or failed with this kind.
    read_end: Option<Option<ErrorKind>>,
    /// Bytes accepted by writes.
    written: usize,
    /// DATA bytes taken from the sent frames.
    sent_data: usize,
    /// GOAWAY was taken from the sent frames.
    sent_goaway: bool,
    /// The sent frames ended (`None`) or failed.
    sent_over: bool,
    /// RST_STREAM (and `Err(Dropped)`) was taken from the sent frames.
    sent_rst: bool,
    shut_down: bool,
    /// `close()` was called: it reads to EOF and discards what it reads.
    discarding: bool,
    first_error: Option<String>,
}

impl Run {
    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    fn peer_send(&mut self, item: Result<Frame, Status>) {
        let Some(tx) = &self.tx else { return };
        if self.peer.end.is_none() {
            match &item {
                Ok(Frame::Data(p)) => self.peer.before_end.extend_from_slice(p),
                Ok(Frame::GoAway(_)) => self.peer.end = Some(None),
                Ok(Frame::RstStream(_)) => self.peer.end = Some(Some(ErrorKind::ConnectionReset)),
                Err(s) => {
                    let kind = std::io::Error::from(Error::Status(s.clone())).kind();
                    self.peer.end = Some(Some(kind));
                }
                Ok(_) => {}
            }
        }
        let _ = tx.send(item);
    }

    fn peer_end(&mut self) {
        if self.tx.take().is_some() && self.peer.end.is_none() {
            self.peer.end = Some(Some(ErrorKind::UnexpectedEof));
        }
    }

    fn check_read(&mut self, got: Poll<std::io::Result<Vec<u8>>>, asked: usize) {
        match got {
            Poll::Pending => {}
            Poll::Ready(Ok(bytes)) if !bytes.is_empty() => {
                assert!(self.read_end.is_none(), "data after the read half ended");
                self.read.extend_from_slice(&bytes);
                assert!(
                    self.discarding || self.peer.before_end.starts_with(&self.read),
                    "read bytes are not a prefix of the peer's DATA"
                );
            }
            Poll::Ready(Ok(_)) => {
                if asked == 0 {
                    return;
                }
                // EOF: only after the peer's GOAWAY, with everything before it read.
                assert_eq!(self.peer.end, Some(None), "EOF without a GOAWAY");
                assert!(
                    self.discarding || self.read == self.peer.before_end,
                    "EOF before all DATA was read"
                );
                if let Some(Some(kind)) = self.read_end {
                    panic!("EOF after a read error of kind {kind:?}");
                }
                self.read_end = Some(None);
            }
            Poll::Ready(Err(e)) => {
                if let Some(end) = self.read_end {
                    match end {
                        Some(kind) => assert_eq!(e.kind(), kind, "the read error changed"),
                        None => panic!("a read error after EOF: {e}"),
                    }
                    return;
                }
                let Some(Some(kind)) = self.peer.end else {
                    panic!("a read error without one from the peer: {e}");
                };
                assert_eq!(e.kind(), kind, "{e}");
                assert!(
                    self.discarding || self.read == self.peer.before_end,
                    "error before all DATA was read"
                );
                self.read_end = Some(Some(kind));
            }
        }
    }

    fn read(&mut self, n: usize) {
        let Some(s) = self.stream.as_mut() else { return };
        let mut buf = vec![0u8; n];
        let mut rb = ReadBuf::new(&mut buf);
        let got = Pin::new(s)
            .poll_read(&mut Self::cx(), &mut rb)
            .map_ok(|()| rb.filled().to_vec());
        self.check_read(got, n);
    }

    fn read_chunk(&mut self) {
        let Some(s) = self.stream.as_mut() else { return };
        let got = s
            .poll_read_chunk(&mut Self::cx())
            .map_ok(|c| c.map(|b| b.to_vec()).unwrap_or_default());
        self.check_read(got, 1);
    }

    fn write(&mut self, n: usize) {
        let Some(s) = self.stream.as_mut() else { return };
        let buf: Vec<u8> = (self.written..self.written + n).map(local_byte).collect();
        if let Poll::Ready(Ok(k)) = Pin::new(s).poll_write(&mut Self::cx(), &buf) {
            assert!(k <= n);
            assert!(n == 0 || k > 0, "Ready(0) for a non-empty write");
            assert!(k == 0 || !self.shut_down, "a write accepted after shutdown");
            self.written += k;
        }
    }

    fn flush(&mut self) {
        if let Some(s) = self.stream.as_mut() {
            let _ = Pin::new(s).poll_flush(&mut Self::cx());
        }
    }

    fn shutdown(&mut self) {
        if let Some(s) = self.stream.as_mut() {
            if let Poll::Ready(Ok(())) = Pin::new(s).poll_shutdown(&mut Self::cx()) {
                self.shut_down = true;
            }
        }
    }

    fn close(&mut self) {
        if let Some(s) = self.stream.as_mut() {
            self.discarding = true;
            if let Poll::Ready(Ok(())) = s.poll_close(&mut Self::cx()) {
                self.shut_down = true;
            }
        }
    }

    /// The transport takes up to `k` sent frames.
    fn take_sent(&mut self, k: usize) {
        let Some(sent) = self.sent.as_mut() else { return };
        for _ in 0..k {
            match Pin::new(&mut *sent).poll_next(&mut Self::cx()) {
                Poll::Pending => return,
                Poll::Ready(Some(Ok(Frame::Data(p)))) => {
                    assert!(!self.sent_goaway, "DATA after GOAWAY");
                    assert!(!p.is_empty(), "an empty DATA frame was sent");
                    for (i, b) in p.iter().enumerate() {
                        assert_eq!(*b, local_byte(self.sent_data + i), "sent DATA out of order");
                    }
                    self.sent_data += p.len();
                    assert!(self.sent_data <= self.written, "sent more than was written");
                }
                Poll::Ready(Some(Ok(Frame::GoAway(_)))) => {
                    assert!(!self.sent_goaway, "two GOAWAYs");
                    assert_eq!(self.sent_data, self.written, "GOAWAY before all DATA");
                    self.sent_goaway = true;
                }
                Poll::Ready(Some(Ok(Frame::RstStream(_)))) => {
                    assert!(!self.sent_goaway, "RST_STREAM after GOAWAY");
                    match Pin::new(&mut *sent).poll_next(&mut Self::cx()) {
                        Poll::Ready(Some(Err(Error::Dropped))) => {}
                        other => panic!("RST_STREAM not followed by Err(Dropped): {other:?}"),
                    }
                    self.sent_rst = true;
                    self.sent_over = true;
                    return;
                }
                Poll::Ready(Some(Ok(Frame::Ping(_)))) => {}
                Poll::Ready(Some(other)) => panic!("unexpected sent item {other:?}"),
                Poll::Ready(None) => {
                    self.sent_over = true;
                    return;
                }
            }
        }
    }

    fn check_error(&mut self) {
        let Some(s) = &self.stream else { return };
        let now = s.error().map(|e| e.to_string());
        match (&self.first_error, now) {
            (None, now) => self.first_error = now,
            (Some(first), Some(now)) => assert_eq!(first, &now, "the first error changed"),
            (Some(first), None) => panic!("the error {first} went away"),
        }
    }

    fn drop_stream(&mut self) {
        let Some(s) = self.stream.take() else { return };
        let failed = s.error().is_some();
        drop(s);
        if !failed && !self.sent_over && self.sent.is_some() {
            // Everything queued comes out, then GOAWAY (it was shut down) or RST_STREAM and
            // Err(Dropped): never a clean end without GOAWAY.
            self.take_sent(usize::MAX);
            assert!(self.sent_over, "a dropped stream's frames did not end");
            assert!(
                self.sent_goaway || self.sent_rst,
                "a stream dropped before GOAWAY ended its frames cleanly"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [first, ops @ ..] = data else { return };
    let max_payload = 1 + usize::from(*first) * 37;
    let (tx, rx) = mpsc::unbounded_channel();
    let (stream, sent) =
        RouterStream::from_frames(Script(rx), &StreamOptions::new().max_payload(max_payload));
    let mut run = Run {
        tx: Some(tx),
        stream: Some(stream),
        sent: Some(sent),
        peer: Peer::default(),
        read: Vec::new(),
        read_end: None,
        written: 0,
        sent_data: 0,
        sent_goaway: false,
        sent_over: false,
        sent_rst: false,
        shut_down: false,
        discarding: false,
        first_error: None,
    };
    let mut ops = ops.iter().copied();
    while let Some(op) = ops.next() {
        let arg = usize::from(ops.next().unwrap_or(0));
        match op % 17 {
            0 => {
                let n = arg * 97 % 9000;
                let start = run.peer.sent_len;
                run.peer.sent_len += n;
                let p: Vec<u8> = (start..start + n).map(peer_byte).collect();
                run.peer_send(Ok(Frame::Data(Bytes::from(p))));
            }
            1 => run.peer_send(Ok(Frame::Data(Bytes::new()))),
            2 => run.peer_send(Ok(Frame::ping())),
            3 => run.peer_send(Ok(Frame::Unknown {
                frame_type: 8 + arg as i32,
                payload: Bytes::from_static(b"?"),
            })),
            4 => run.peer_send(Ok(Frame::go_away())),
            5 => run.peer_send(Ok(Frame::rst_stream())),
            6 => run.peer_send(Err(Status::new(tonic::Code::from_i32(arg as i32 % 17), "x"))),
            7 => run.peer_end(),
            8 => run.read(arg),
            9 => run.read_chunk(),
            10 => run.write(arg * 53 % 20000),
            11 => run.flush(),
            12 => run.shutdown(),
            13 => run.take_sent(arg % 5),
            14 => run.sent = None,
            15 => run.close(),
            _ => run.drop_stream(),
        }
        run.check_error();
    }
    run.drop_stream();
});
