//! The write half of a per-session upstream socket (Mistral): a task drains a
//! queue into the socket, and the bytes waiting in that queue are counted so
//! that a peer that stops reading cannot make the gateway hold unbounded
//! memory. A simpler sibling of the shared thoth socket's writer
//! (`thoth_writer.rs`, which adds backpressure and replays).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use awc::ws::{CloseReason, Message as WsMessage};
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use tokio::sync::mpsc;

use super::connect::WsFramed;
use crate::error::{ErrorCode, GatewayError};

/// After our close frame, the TCP connection stays open this long before the
/// gateway shuts it down: a peer that reads the close frame and the FIN in
/// one go may report a broken connection instead of a clean close (actix-web
/// servers do). The peer normally answers and hangs up well before.
pub const CLOSE_LINGER: Duration = Duration::from_millis(500);

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFailure {
    /// More than the writer's byte bound is waiting: the peer stopped reading.
    Stalled,
    /// The writer task is gone (the socket failed or was closed).
    Closed,
}

impl SendFailure {
    /// What the session hears when its Mistral socket cannot take a frame.
    pub fn session_error(self) -> GatewayError {
        match self {
            SendFailure::Stalled => GatewayError::with_message(
                ErrorCode::MistralUnavailable,
                "Mistral is not keeping up with the audio",
            ),
            SendFailure::Closed => GatewayError::new(ErrorCode::MistralUnavailable),
        }
    }
}

/// Queues frames toward one upstream socket. Dropping it (or [`close`])
/// lets the writer task close the socket and end.
///
/// [`close`]: SocketWriter::close
pub struct SocketWriter {
    outbound: mpsc::UnboundedSender<WsMessage>,
    /// Bytes handed to the writer and not yet written to the socket.
    queued_bytes: Arc<AtomicUsize>,
    max_queued_bytes: usize,
}

impl SocketWriter {
    /// Starts the writer task on the current arbiter. `on_failure` runs (on
    /// that task) if writing to the socket fails; it is not called for a
    /// clean close.
    pub fn spawn(
        mut sink: SplitSink<WsFramed, WsMessage>,
        max_queued_bytes: usize,
        on_failure: impl FnOnce(String) + 'static,
    ) -> SocketWriter {
        let (outbound, mut queue) = mpsc::unbounded_channel::<WsMessage>();
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let writer_bytes = queued_bytes.clone();
        actix_rt::spawn(async move {
            let result: Result<(), actix_http::ws::ProtocolError> = async {
                let mut close_sent = false;
                while let Some(first) = queue.recv().await {
                    close_sent |= matches!(first, WsMessage::Close(_));
                    writer_bytes.fetch_sub(message_len(&first), Ordering::Relaxed);
                    // Batch whatever else is already queued into one flush.
                    sink.feed(first).await?;
                    while let Ok(next) = queue.try_recv() {
                        close_sent |= matches!(next, WsMessage::Close(_));
                        writer_bytes.fetch_sub(message_len(&next), Ordering::Relaxed);
                        sink.feed(next).await?;
                    }
                    sink.flush().await?;
                }
                if close_sent {
                    actix_rt::time::sleep(CLOSE_LINGER).await;
                }
                // The owner dropped the queue: close the socket.
                sink.close().await
            }
            .await;
            if let Err(e) = result {
                on_failure(e.to_string());
            }
        });
        SocketWriter {
            outbound,
            queued_bytes,
            max_queued_bytes,
        }
    }

    /// Queues one frame, unless the queue is over its bound.
    pub fn send(&self, message: WsMessage) -> Result<(), SendFailure> {
        let len = message_len(&message);
        if self.queued_bytes.load(Ordering::Relaxed) + len > self.max_queued_bytes {
            return Err(SendFailure::Stalled);
        }
        self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        self.outbound.send(message).map_err(|_| SendFailure::Closed)
    }

    /// Sends a close frame after everything already queued, then lets the
    /// writer close the socket.
    pub fn close(self, reason: CloseReason) {
        // An error only means the writer is already gone.
        let _ = self.outbound.send(WsMessage::Close(Some(reason)));
    }
}

/// Payload bytes of a frame, as counted against the bound.
pub fn message_len(message: &WsMessage) -> usize {
    match message {
        WsMessage::Text(text) => text.len(),
        WsMessage::Binary(bytes) => bytes.len(),
        _ => 0,
    }
}
