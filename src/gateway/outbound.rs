//! The bound on what waits to be written to one browser.
//!
//! actix-web-actors queues a WebsocketContext's frames without limit, so the
//! ClientActor counts what it writes and this stream counts what the HTTP
//! layer actually takes; the difference is the browser's write queue.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

/// Bytes of frames that may wait for one browser before it counts as not
/// reading and its session is closed.
pub const MAX_CLIENT_QUEUE_BYTES: usize = 1024 * 1024;

/// Counts the bytes of a browser's response stream as the server takes them.
pub struct CountedStream<S> {
    inner: Pin<Box<S>>,
    taken: Arc<AtomicUsize>,
}

impl<S> CountedStream<S> {
    pub fn new(inner: S, taken: Arc<AtomicUsize>) -> Self {
        CountedStream {
            inner: Box::pin(inner),
            taken,
        }
    }
}

impl<S, E> Stream for CountedStream<S>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    type Item = Result<Bytes, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Ok(bytes))) = &polled {
            self.taken.fetch_add(bytes.len(), Ordering::Relaxed);
        }
        polled
    }
}

/// The ClientActor's side: what it wrote versus what the server took.
pub struct OutboundQueue {
    written: usize,
    taken: Arc<AtomicUsize>,
}

impl OutboundQueue {
    pub fn new(taken: Arc<AtomicUsize>) -> Self {
        OutboundQueue { written: 0, taken }
    }

    /// Records a frame of `payload` bytes; `false` when the queue is over its
    /// bound (the browser stopped reading).
    pub fn push(&mut self, payload: usize) -> bool {
        // A server frame's header is 2 to 10 bytes; 4 covers every event.
        self.written += payload + 4;
        self.queued() <= MAX_CLIENT_QUEUE_BYTES
    }

    /// Bytes written by the actor and not yet taken by the server.
    pub fn queued(&self) -> usize {
        self.written
            .saturating_sub(self.taken.load(Ordering::Relaxed))
    }
}
