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
use futures_util::{Stream, StreamExt};

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

/// Runs a browser actor's frame stream on a task of its own and hands its
/// frames to the response body through a channel. A `WebsocketContext`
/// actor otherwise runs only while the server polls the response body, and
/// the server stops polling it when the browser stops reading: the actor
/// would freeze with its session, never seeing its write queue grow past the
/// bound. Detached, it keeps running, the [`OutboundQueue`] bound cuts the
/// browser off, and the channel holds at most that bound.
pub fn detached<S, E>(frames: S) -> impl Stream<Item = Result<Bytes, E>>
where
    S: Stream<Item = Result<Bytes, E>> + 'static,
    E: 'static,
{
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    actix_rt::spawn(async move {
        let mut frames = std::pin::pin!(frames);
        while let Some(item) = frames.next().await {
            if tx.send(item).is_err() {
                break; // the server dropped the response: the browser is gone
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
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
