//! The prost codec of `RouterService` calls, with smaller per-call buffers than tonic's
//! (the message codec under the generated client and server; [`Frame`](crate::Frame) is the
//! router frame those messages carry).
//!
//! tonic allocates an 8 KiB encode buffer and an 8 KiB decode buffer for every call up front.
//! A router holds two calls per stream, most of them idle for hours (an SSH session, a
//! console), so that is 32 KiB per idle stream before anything is sent. Buffers of
//! [`BUFFER_SIZE`] grow on demand (amortized, as `BytesMut` does) once data flows, and the
//! relay benchmark shows no throughput cost (`benches/relay.rs`).

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The initial encode and decode buffer of a call.
const BUFFER_SIZE: usize = 1024;
/// Encoded messages are handed to HTTP/2 once this much is buffered (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

/// [`ProstCodec`] with [`BUFFER_SIZE`] buffers; used by the generated client and server.
#[derive(Debug)]
pub(crate) struct RouterCodec<T, U>(PhantomData<fn(T) -> U>);

impl<T, U> Default for RouterCodec<T, U> {
    fn default() -> Self {
        RouterCodec(PhantomData)
    }
}

impl<T, U> Codec for RouterCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
