//! The write half of every upstream socket (thoth's shared one and each
//! Mistral session's own). A writer task owns the socket's write half and
//! drains a queue into it, batching every frame that is waiting into one
//! flush; senders queue through cheap [`SocketWriter`] handles. On the thoth
//! socket those are the ThothUpstreamActor (control frames, replayed audio)
//! and every session's ClientActor (live audio from its own thread, see
//! `thoth/audio_route.rs`), so audio never waits in the shared actor's mailbox.
//!
//! The queue is bounded in bytes, so a peer that stops reading cannot make
//! the gateway hold unbounded memory. What differs between the two upstreams
//! is a [`WriterPolicy`]: the bounds, whether senders are pushed back while
//! the queue is congested (thoth: sessions stop reading their browsers until
//! the writer drained it, so overload turns into latency, not memory and not
//! failed sessions), and how long TCP lingers after the close frame.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use awc::ws::{CloseReason, Message as WsMessage};
use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

use crate::metrics;

/// Live bytes queued toward a thoth socket above which sessions pause reading
/// their browsers until the writer has drained the queue below it.
pub const THOTH_CONGESTED_QUEUE_BYTES: usize = 2 * 1024 * 1024;
/// Live bytes queued toward a thoth socket above which the writer must show
/// progress within [`STALL_AFTER`], or thoth counts as not reading. (Sessions
/// that have not paused yet may still add a frame each.)
pub const THOTH_WATCH_QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// The hard memory bound of a thoth socket's queue, whatever thoth does.
pub const THOTH_MAX_QUEUE_BYTES: usize = 8 * THOTH_WATCH_QUEUE_BYTES;
/// Bytes queued toward one Mistral socket before it counts as stalled (about
/// 20 s of 48 kHz f32 audio once base64-encoded).
pub const MISTRAL_MAX_QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// How long a writer over its watch mark may write nothing before its peer
/// counts as not reading.
pub const STALL_AFTER: Duration = Duration::from_secs(5);
/// After a flush that carried more than one frame (frames arrive faster than
/// the writer wakes), the writer waits this long before draining again, so
/// the next write carries every frame of that moment: one write and one
/// wake-up per batch instead of per frame (adds at most ~2 ms, tokio's timer
/// granularity, and only under load).
const COALESCE_UNDER_LOAD: Duration = Duration::from_millis(1);
/// How often a sender paused only by the process-wide audio budget looks
/// whether it has room again.
const BUDGET_RECHECK: Duration = Duration::from_millis(20);
/// After our close frame, the Mistral socket's TCP connection stays open this
/// long: a peer that reads the close frame and the FIN in one go may report a
/// broken connection instead of a clean close (actix-web servers do). The
/// peer normally answers and hangs up well before.
pub const MISTRAL_CLOSE_LINGER: Duration = Duration::from_millis(500);

/// How a writer bounds its queue: what differs between upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriterPolicy {
    /// Names the peer in the reasons its owner hears ("thoth is not reading").
    pub peer: &'static str,
    /// Live bytes queued above which senders should pause until
    /// [`SocketWriter::drained`]; `None`: senders are never pushed back.
    pub congested_above: Option<usize>,
    /// Live bytes queued above which the writer must show progress within
    /// `stall_after`, or the peer counts as not reading.
    pub watch_above: usize,
    pub stall_after: Duration,
    /// A live frame that would take the queue over this is refused at once:
    /// the peer counts as not reading.
    pub max_queued_bytes: usize,
    /// How long TCP stays open after our close frame.
    pub close_linger: Duration,
    /// Whether live bytes count against the process-wide audio budget
    /// (`AUDIO_BUFFER_BUDGET_BYTES`); senders also pause while it is nearly spent.
    pub budgeted: bool,
}

impl WriterPolicy {
    /// The shared thoth socket: back-pressure, then a progress watch, then a
    /// hard bound.
    pub const THOTH: WriterPolicy = WriterPolicy {
        peer: "thoth",
        congested_above: Some(THOTH_CONGESTED_QUEUE_BYTES),
        watch_above: THOTH_WATCH_QUEUE_BYTES,
        stall_after: STALL_AFTER,
        max_queued_bytes: THOTH_MAX_QUEUE_BYTES,
        close_linger: Duration::ZERO,
        budgeted: true,
    };

    /// A Mistral session's own socket: one bound, reached means stalled.
    pub const MISTRAL: WriterPolicy = WriterPolicy {
        peer: "Mistral",
        congested_above: None,
        watch_above: MISTRAL_MAX_QUEUE_BYTES,
        stall_after: STALL_AFTER,
        max_queued_bytes: MISTRAL_MAX_QUEUE_BYTES,
        close_linger: MISTRAL_CLOSE_LINGER,
        budgeted: false,
    };

    fn congested(&self, queued: usize) -> bool {
        matches!(self.congested_above, Some(mark) if queued > mark)
    }
}

/// Why a frame could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFailure {
    /// The peer is not reading: the queue is over its bound (the writer's
    /// owner has been told).
    Stalled,
    /// The writer task is gone (the socket failed or was closed).
    Closed,
}

/// Tells the writer's owner why the peer was given up: a write that failed
/// (from the writer task) or a stall any sender found.
type OnFailure = Arc<dyn Fn(String) + Send + Sync>;

/// A frame for the writer task, with the time its audio reached the gateway.
struct Outgoing {
    message: Frame,
    received: Option<Instant>,
    /// Bytes counted against the queue bound (0 for replayed audio, which
    /// the replay buffers bound already, and for the close frame).
    counted: usize,
}

/// A handle that queues frames toward one socket. Cheap to clone; the socket
/// closes once a close frame was queued (or every handle is dropped).
#[derive(Clone)]
pub struct SocketWriter {
    outbound: mpsc::UnboundedSender<Outgoing>,
    progress: Arc<Progress>,
    on_failure: OnFailure,
}

impl SocketWriter {
    /// Starts the writer task for `sink` on the current arbiter. `on_failure`
    /// hears why the peer was given up (a failed write, or a stall a sender
    /// found); it is not called for a clean close.
    pub fn spawn(
        sink: FrameSink,
        policy: WriterPolicy,
        on_failure: impl Fn(String) + Send + Sync + 'static,
    ) -> SocketWriter {
        Self::spawn_joinable(sink, policy, on_failure).0
    }

    /// [`Self::spawn`], also returning the task, for an owner that must be
    /// able to abort a writer that cannot finish closing.
    pub fn spawn_joinable(
        sink: FrameSink,
        policy: WriterPolicy,
        on_failure: impl Fn(String) + Send + Sync + 'static,
    ) -> (SocketWriter, actix_rt::task::JoinHandle<()>) {
        Self::spawn_counted(sink, policy, Arc::default(), on_failure)
    }

    /// [`Self::spawn_joinable`], counting the live bytes it queues in
    /// `queued` (shared by every socket of one thoth endpoint, so admission
    /// can read it without asking the endpoint's actor). Whatever
    /// is still queued when the writer ends is uncounted then.
    pub fn spawn_counted(
        sink: FrameSink,
        policy: WriterPolicy,
        queued: Arc<QueueGauge>,
        on_failure: impl Fn(String) + Send + Sync + 'static,
    ) -> (SocketWriter, actix_rt::task::JoinHandle<()>) {
        let (writer, queue) = Self::unattached(policy, queued, Arc::new(on_failure));
        let task = actix_rt::spawn(run_writer(
            sink,
            queue,
            writer.progress.clone(),
            writer.on_failure.clone(),
        ));
        (writer, task)
    }

    /// A handle and the queue it feeds, before a writer task takes the queue.
    fn unattached(
        policy: WriterPolicy,
        queued: Arc<QueueGauge>,
        on_failure: OnFailure,
    ) -> (SocketWriter, mpsc::UnboundedReceiver<Outgoing>) {
        let (outbound, queue) = mpsc::unbounded_channel::<Outgoing>();
        let progress = Arc::new(Progress {
            policy,
            queued,
            written: AtomicU64::new(0),
            over_watch: Mutex::new(None),
            watching: AtomicBool::new(false),
            drained: Notify::new(),
            paused: AtomicBool::new(false),
            ended: AtomicBool::new(false),
        });
        let writer = SocketWriter {
            outbound,
            progress,
            on_failure,
        };
        (writer, queue)
    }

    /// Queues a frame, counted against the bound. [`SendFailure::Stalled`]
    /// means the peer stopped reading; the owner has been told.
    pub fn send(&self, message: WsMessage) -> Result<(), SendFailure> {
        self.send_stamped(message, None)
    }

    /// [`Self::send`] for live audio, with when it reached the gateway (the
    /// relay latency is observed once the frame is flushed).
    pub fn send_stamped(
        &self,
        message: WsMessage,
        received: Option<Instant>,
    ) -> Result<(), SendFailure> {
        self.send_frame(Frame::Message(message), received)
    }

    /// Live audio of one mux session: the writer frames it (session id,
    /// then `audio`) when it writes it.
    pub fn send_mux_audio(
        &self,
        session_id: Uuid,
        audio: Bytes,
        received: Instant,
    ) -> Result<(), SendFailure> {
        self.send_frame(Frame::MuxAudio { session_id, audio }, Some(received))
    }

    fn send_frame(&self, message: Frame, received: Option<Instant>) -> Result<(), SendFailure> {
        let len = message.len();
        if let Some(why) = self.check_queue(len) {
            self.report_not_reading(why);
            return Err(SendFailure::Stalled);
        }
        self.enqueue(Outgoing {
            message,
            received,
            counted: len,
        })
    }

    /// Queues a frame past the bound: replayed audio (bounded by the replay
    /// buffers already; a resume after a long outage must not look like a
    /// peer that stopped reading).
    pub fn send_uncounted(&self, message: WsMessage) -> Result<(), SendFailure> {
        self.enqueue(Outgoing {
            message: Frame::Message(message),
            received: None,
            counted: 0,
        })
    }

    /// Sends a close frame after everything already queued; the writer then
    /// closes the socket (after the policy's linger) and ends.
    pub fn close(&self, reason: CloseReason) {
        // An error only means the writer is already gone.
        let _ = self.send_uncounted(WsMessage::Close(Some(reason)));
    }

    /// Whether the queue is over the policy's congestion mark: senders
    /// should pause until [`Self::drained`].
    pub fn congested(&self) -> bool {
        self.progress.congested()
    }

    /// Resolves once the queue has been below the congestion mark (or the
    /// writer is gone). A writer that writes nothing for the policy's
    /// `stall_after` meanwhile is reported as stalled (the peer is not
    /// reading), and the wait ends: the owner gives the socket up.
    pub fn drained(&self) -> impl std::future::Future<Output = ()> + 'static {
        let writer = self.clone();
        async move {
            let progress = &writer.progress;
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
                // Paused only by the process budget (other sockets hold it):
                // this writer wakes nobody, so look again soon.
                let local = progress.locally_congested();
                let wait = if local {
                    progress.policy.stall_after
                } else {
                    BUDGET_RECHECK
                };
                match actix_rt::time::timeout(wait, notified).await {
                    // Below the mark once: the sender runs again (handles its
                    // events, sends its next frame), even if others have
                    // filled the queue meanwhile — every sender progresses.
                    Ok(()) => return,
                    Err(_) if local && progress.written.load(Ordering::Relaxed) == written => {
                        writer.report_not_reading("no write progress");
                        return;
                    }
                    Err(_) => {} // slow, but writing: keep waiting
                }
            }
        }
    }

    fn report_not_reading(&self, why: &str) {
        (self.on_failure)(format!(
            "{} is not reading ({why})",
            self.progress.policy.peer
        ));
    }

    fn enqueue(&self, outgoing: Outgoing) -> Result<(), SendFailure> {
        let counted = outgoing.counted;
        self.progress.count(counted);
        self.outbound.send(outgoing).map_err(|_| {
            self.progress.uncount(counted);
            SendFailure::Closed
        })
    }

    /// Whether queueing `len` more live bytes means the peer stopped reading
    /// (and why): over the hard bound, or over the watch mark with nothing
    /// written for the policy's `stall_after`.
    fn check_queue(&self, len: usize) -> Option<&'static str> {
        let progress = &self.progress;
        let policy = &progress.policy;
        let queued = progress.queued.bytes() + len;
        if queued > policy.max_queued_bytes {
            return Some("outbound queue at its hard bound");
        }
        if queued <= policy.watch_above && !progress.watching.load(Ordering::Relaxed) {
            return None; // the common case: no lock
        }
        let mut over_watch = progress
            .over_watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if queued <= policy.watch_above {
            *over_watch = None;
            progress.watching.store(false, Ordering::Relaxed);
            return None;
        }
        let written = progress.written.load(Ordering::Relaxed);
        match *over_watch {
            Some((since, seen)) if seen == written => {
                (since.elapsed() >= policy.stall_after).then_some("no write progress")
            }
            // Newly over the mark, or the writer progressed: watch from now.
            _ => {
                *over_watch = Some((Instant::now(), written));
                progress.watching.store(true, Ordering::Relaxed);
                None
            }
        }
    }
}

/// The writer task: drains the queue into one batch and writes it (one
/// write per wake-up, or per [`sink::MAX_BATCH_BYTES`]), until a close frame
/// was written or every sender is gone.
async fn run_writer(
    mut sink: FrameSink,
    queue: mpsc::UnboundedReceiver<Outgoing>,
    progress: Arc<Progress>,
    on_failure: OnFailure,
) {
    let mut queue = Unwritten {
        queue,
        progress: progress.clone(),
    };
    let queue = &mut queue.queue;
    // Receive times of the audio in the current batch, observed once the
    // batch is flushed to the socket.
    let mut stamps: Vec<Instant> = Vec::new();
    // Where mux audio frames are assembled, reused frame after frame.
    let mut scratch = BytesMut::new();
    let result: Result<(), actix_http::ws::ProtocolError> = async {
        let mut closing = false;
        while let Some(first) = queue.recv().await {
            let mut next = Some(first);
            let mut batch = 0;
            let mut emptied = false;
            while let Some(outgoing) = next {
                progress.took(outgoing.counted);
                stamps.extend(outgoing.received);
                closing = outgoing.message.is_close();
                sink.encode(outgoing.message.into_message(&mut scratch))?;
                batch += 1;
                next = if closing || sink.batch_full() {
                    None
                } else {
                    let more = queue.try_recv().ok();
                    emptied = more.is_none();
                    more
                };
            }
            sink.flush().await?;
            progress.written.fetch_add(batch, Ordering::Relaxed);
            for received in stamps.drain(..) {
                metrics::LATENCY_UPSTREAM.observe(received.elapsed().as_secs_f64());
            }
            if closing {
                break;
            }
            // Frames came faster than one per wake-up, and none waits now:
            // let the next ones gather. (A batch cut for size goes on at once.)
            if batch > 1 && emptied {
                actix_rt::time::sleep(COALESCE_UNDER_LOAD).await;
            }
        }
        let linger = progress.policy.close_linger;
        if closing && !linger.is_zero() {
            actix_rt::time::sleep(linger).await;
        }
        // A close frame was sent, or every sender is gone.
        sink.close().await
    }
    .await;
    progress.release_paused(true);
    if let Err(e) = result {
        on_failure(format!("write failed: {e}"));
    }
}

mod frame;
mod gauge;
mod progress;
pub mod sink;
pub use frame::message_len;
use frame::Frame;
pub use gauge::QueueGauge;
use progress::{Progress, Unwritten};
use sink::FrameSink;

/// Unit tests of the policy decisions, without sockets (in `writer/tests.rs`).
#[cfg(test)]
mod tests;
