//! The write side of one shared thoth socket. A writer task owns the socket's
//! write half and drains a queue into it, batching every frame that is waiting
//! into one flush. Two kinds of senders feed the queue through [`ThothWriter`]
//! handles: the ThothUpstreamActor (control frames, replayed audio) and every
//! session's ClientActor (live audio, straight from its own thread, see
//! `audio_route.rs`), so audio never waits in the actor's mailbox.
//!
//! The queue is bounded in bytes. Over `CONGESTED_QUEUE_BYTES` it pushes
//! back: sessions stop reading their browsers until the writer has drained it
//! (TCP then slows the browsers down), so an overloaded gateway or a slow
//! thoth turns into latency, not memory, and not into failed sessions. A thoth
//! that stops reading altogether is detected (no write progress for
//! `OUTBOUND_STALL_AFTER`) and its socket given up.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;
use awc::ws::Message as WsMessage;
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use tokio::sync::{mpsc, Notify};

use super::connect::WsFramed;
use super::socket::message_len;
use crate::metrics;

/// Live bytes queued toward one thoth socket above which sessions pause
/// reading their browsers until the writer has drained the queue below it.
pub const CONGESTED_QUEUE_BYTES: usize = 2 * 1024 * 1024;
/// Live bytes queued toward one thoth socket above which the writer must show
/// progress within `OUTBOUND_STALL_AFTER`, or thoth counts as not reading.
/// (Sessions that have not paused yet may still add a frame each.)
pub const MAX_OUTBOUND_QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// Over `MAX_OUTBOUND_QUEUE_BYTES` × this, the socket is given up at once:
/// the hard memory bound, whatever thoth does.
const OUTBOUND_HARD_FACTOR: usize = 8;
const OUTBOUND_STALL_AFTER: Duration = Duration::from_secs(5);

/// The writer task of a socket stopped, or a sender found thoth not reading.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WriterFailed {
    pub generation: u64,
    pub reason: String,
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// Thoth is not reading: the queue is over its bound (the actor has been told).
    Stalled,
    /// The writer task is gone.
    Gone,
}

/// A frame for the writer task, with the time its audio reached the gateway.
struct Outgoing {
    message: WsMessage,
    received: Option<Instant>,
    /// Bytes counted against the queue bound (0 for replayed audio, which
    /// the replay buffers bound already).
    counted: usize,
}

/// What the writer task shares with every sender: its progress.
#[derive(Default)]
struct Progress {
    /// Live bytes handed to the writer and not yet taken from the queue.
    queued_bytes: AtomicUsize,
    /// Frames the writer handed to the socket: its progress.
    written: AtomicU64,
    /// When the queue went over its soft bound, and the written count then.
    over_bound: Mutex<Option<(Instant, u64)>>,
    /// Whether `over_bound` is set: spares the lock while under the bound.
    watching: AtomicBool,
    /// Wakes sessions paused on a congested queue once it drained.
    drained: Notify,
    /// Whether any session waits on `drained` (spares the notify otherwise).
    paused: AtomicBool,
    /// The writer task ended.
    ended: AtomicBool,
}

impl Progress {
    fn congested(&self) -> bool {
        self.queued_bytes.load(Ordering::SeqCst) > CONGESTED_QUEUE_BYTES
    }

    /// After the writer took a frame, or when it ends: wakes paused
    /// sessions once the queue is below the congestion mark.
    fn release_paused(&self, ended: bool) {
        if ended {
            self.ended.store(true, Ordering::SeqCst);
        } else if !self.paused.load(Ordering::SeqCst) || self.congested() {
            return;
        }
        if self.paused.swap(false, Ordering::SeqCst) {
            self.drained.notify_waiters();
        }
    }
}

/// A handle that queues frames toward one socket. Cheap to clone; the socket
/// closes once a close frame was queued (or every handle is dropped).
#[derive(Clone)]
pub struct ThothWriter {
    generation: u64,
    outbound: mpsc::UnboundedSender<Outgoing>,
    progress: Arc<Progress>,
    /// The upstream actor, told when a sender finds thoth not reading.
    trouble: Recipient<WriterFailed>,
}

impl ThothWriter {
    /// Spawns the writer task for `sink` on the current arbiter.
    pub fn spawn(
        generation: u64,
        mut sink: SplitSink<WsFramed, WsMessage>,
        trouble: Recipient<WriterFailed>,
    ) -> (ThothWriter, actix_rt::task::JoinHandle<()>) {
        let (outbound, mut queue) = mpsc::unbounded_channel::<Outgoing>();
        let progress = Arc::new(Progress::default());
        let writer_progress = progress.clone();
        let writer_trouble = trouble.clone();
        let task = actix_rt::spawn(async move {
            // Receive times of the audio in the current batch, observed once
            // the batch is flushed to the socket.
            let mut stamps: Vec<Instant> = Vec::new();
            let result: Result<(), actix_http::ws::ProtocolError> = async {
                let mut closing = false;
                while let Some(first) = queue.recv().await {
                    let mut next = Some(first);
                    while let Some(outgoing) = next {
                        writer_progress
                            .queued_bytes
                            .fetch_sub(outgoing.counted, Ordering::SeqCst);
                        writer_progress.release_paused(false);
                        stamps.extend(outgoing.received);
                        closing = matches!(outgoing.message, WsMessage::Close(_));
                        sink.feed(outgoing.message).await?;
                        writer_progress.written.fetch_add(1, Ordering::Relaxed);
                        next = if closing { None } else { queue.try_recv().ok() };
                    }
                    sink.flush().await?;
                    for received in stamps.drain(..) {
                        metrics::LATENCY_UPSTREAM.observe(received.elapsed().as_secs_f64());
                    }
                    if closing {
                        break;
                    }
                }
                // A close frame was sent, or every sender is gone.
                sink.close().await
            }
            .await;
            writer_progress.release_paused(true);
            if let Err(e) = result {
                writer_trouble.do_send(WriterFailed {
                    generation,
                    reason: format!("write failed: {e}"),
                });
            }
        });
        let writer = ThothWriter {
            generation,
            outbound,
            progress,
            trouble,
        };
        (writer, task)
    }

    /// Queues live audio or a control frame, counted against the bound.
    /// [`QueueError::Stalled`] means thoth stopped reading; the upstream
    /// actor has been told, and gives the socket up.
    pub fn send(&self, message: WsMessage, received: Option<Instant>) -> Result<(), QueueError> {
        let len = message_len(&message);
        if let Some(reason) = self.check_queue(len) {
            self.trouble.do_send(WriterFailed {
                generation: self.generation,
                reason: reason.to_string(),
            });
            return Err(QueueError::Stalled);
        }
        self.enqueue(Outgoing {
            message,
            received,
            counted: len,
        })
    }

    /// Queues a frame past the bound: replayed audio (bounded by the replay
    /// buffers already; a resume after a long outage must not look like a
    /// thoth that stopped reading) and the close frame.
    pub fn send_uncounted(&self, message: WsMessage) -> Result<(), QueueError> {
        self.enqueue(Outgoing {
            message,
            received: None,
            counted: 0,
        })
    }

    /// Whether the queue is over `CONGESTED_QUEUE_BYTES`: senders should
    /// pause until [`Self::drained`].
    pub fn congested(&self) -> bool {
        self.progress.congested()
    }

    /// Resolves once the queue has been below `CONGESTED_QUEUE_BYTES` (or
    /// the writer is gone). A writer that writes nothing for
    /// `OUTBOUND_STALL_AFTER` meanwhile is reported as stalled (thoth is not
    /// reading), and the wait ends: the upstream actor gives the socket up.
    pub fn drained(&self) -> impl std::future::Future<Output = ()> + 'static {
        let progress = self.progress.clone();
        let trouble = self.trouble.clone();
        let generation = self.generation;
        async move {
            loop {
                let notified = progress.drained.notified();
                tokio::pin!(notified);
                // Registered before the check, so a release in between is not missed.
                notified.as_mut().enable();
                progress.paused.store(true, Ordering::SeqCst);
                if !progress.congested() || progress.ended.load(Ordering::SeqCst) {
                    return;
                }
                let written = progress.written.load(Ordering::Relaxed);
                match actix_rt::time::timeout(OUTBOUND_STALL_AFTER, notified).await {
                    // Below the mark once: the session runs again (handles its
                    // events, sends its next frame), even if others have
                    // filled the queue meanwhile — every session progresses.
                    Ok(()) => return,
                    Err(_) if progress.written.load(Ordering::Relaxed) == written => {
                        trouble.do_send(WriterFailed {
                            generation,
                            reason: "thoth is not reading (no write progress)".into(),
                        });
                        return;
                    }
                    Err(_) => {} // slow, but writing: keep waiting
                }
            }
        }
    }

    fn enqueue(&self, outgoing: Outgoing) -> Result<(), QueueError> {
        let counted = outgoing.counted;
        self.progress
            .queued_bytes
            .fetch_add(counted, Ordering::Relaxed);
        self.outbound.send(outgoing).map_err(|_| {
            self.progress
                .queued_bytes
                .fetch_sub(counted, Ordering::Relaxed);
            QueueError::Gone
        })
    }

    /// Whether queueing `len` more live bytes means thoth stopped reading:
    /// over the hard bound, or over the soft bound with nothing written for
    /// `OUTBOUND_STALL_AFTER`.
    fn check_queue(&self, len: usize) -> Option<&'static str> {
        let queued = self.progress.queued_bytes.load(Ordering::Relaxed) + len;
        if queued > MAX_OUTBOUND_QUEUE_BYTES * OUTBOUND_HARD_FACTOR {
            return Some("thoth is not reading (outbound queue at its hard bound)");
        }
        let progress = &self.progress;
        if queued <= MAX_OUTBOUND_QUEUE_BYTES && !progress.watching.load(Ordering::Relaxed) {
            return None; // the common case: no lock
        }
        let mut over_bound = progress
            .over_bound
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if queued <= MAX_OUTBOUND_QUEUE_BYTES {
            *over_bound = None;
            progress.watching.store(false, Ordering::Relaxed);
            return None;
        }
        let written = progress.written.load(Ordering::Relaxed);
        match *over_bound {
            Some((since, seen)) if seen == written => (since.elapsed() >= OUTBOUND_STALL_AFTER)
                .then_some("thoth is not reading (no write progress)"),
            // Newly over the bound, or the writer progressed: watch from now.
            _ => {
                *over_bound = Some((Instant::now(), written));
                progress.watching.store(true, Ordering::Relaxed);
                None
            }
        }
    }
}
