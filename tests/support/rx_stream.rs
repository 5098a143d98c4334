//! [`RxStream`]: an mpsc receiver as a `Stream` (no tokio-stream dependency), for the tests
//! and the benches (`#[path]`-included there).

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::mpsc;

/// A `Stream` over an mpsc receiver.
pub struct RxStream<T>(pub mpsc::Receiver<T>);

impl<T> Stream for RxStream<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.get_mut().0.poll_recv(cx)
    }
}
