//! What a writer task shares with its senders: the bytes queued (counted
//! against the policy's bounds and the process-wide audio budget), its
//! progress, and the paused senders to wake; and the queue's last word,
//! uncounting what a writer that ends did not write.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, Notify};

use super::gauge::QueueGauge;
use super::{Outgoing, WriterPolicy};
use crate::upstream::audio_budget::AUDIO_BUDGET;

/// What the writer task shares with every sender: its policy and progress.
pub(super) struct Progress {
    pub(super) policy: WriterPolicy,
    /// Live bytes handed to the writer and not yet taken from the queue;
    /// shared with the writer's owner, who may read it lock-free (the thoth
    /// pool's admission check) and hands it on to the next socket's writer.
    pub(super) queued: Arc<QueueGauge>,
    /// Frames the writer handed to the socket: its progress.
    pub(super) written: AtomicU64,
    /// When the queue went over its watch mark, and the written count then.
    pub(super) over_watch: Mutex<Option<(Instant, u64)>>,
    /// Whether `over_watch` is set: spares the lock while under the mark.
    pub(super) watching: AtomicBool,
    /// Wakes senders paused on a congested queue once it drained.
    pub(super) drained: Notify,
    /// Whether any sender waits on `drained` (spares the notify otherwise).
    pub(super) paused: AtomicBool,
    /// The writer task ended.
    pub(super) ended: AtomicBool,
}

impl Progress {
    /// This queue over its congestion mark, or the process's audio budget
    /// nearly spent: senders pause.
    pub(super) fn congested(&self) -> bool {
        self.locally_congested() || (self.policy.budgeted && AUDIO_BUDGET.senders_pause())
    }

    pub(super) fn locally_congested(&self) -> bool {
        self.policy.congested(self.queued.bytes())
    }

    pub(super) fn count(&self, bytes: usize) {
        self.queued.add(bytes, self.policy.congested_above);
        if self.policy.budgeted {
            AUDIO_BUDGET.add(bytes);
        }
    }

    pub(super) fn uncount(&self, bytes: usize) {
        self.queued.sub(bytes, self.policy.congested_above);
        if self.policy.budgeted {
            AUDIO_BUDGET.release(bytes);
        }
    }

    /// The writer took a frame from the queue: its bytes no longer count,
    /// and paused senders wake once the queue is below the congestion mark.
    pub(super) fn took(&self, counted: usize) {
        self.uncount(counted);
        self.release_paused(false);
    }

    /// After the writer took a frame, or when it ends: wakes paused
    /// senders once the queue is below the congestion mark.
    pub(super) fn release_paused(&self, ended: bool) {
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

/// The writer's queue; when the writer ends (or is aborted), what it did not
/// write is uncounted, so the shared counts do not keep a dead socket's bytes.
pub(super) struct Unwritten {
    pub(super) queue: mpsc::UnboundedReceiver<Outgoing>,
    pub(super) progress: Arc<Progress>,
}

impl Drop for Unwritten {
    fn drop(&mut self) {
        self.queue.close();
        while let Ok(outgoing) = self.queue.try_recv() {
            self.progress.uncount(outgoing.counted);
        }
    }
}
