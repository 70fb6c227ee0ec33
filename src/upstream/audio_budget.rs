//! The process-wide audio-buffer budget (`AUDIO_BUFFER_BUDGET_BYTES`): one
//! count of the live audio bytes queued toward every thoth socket, read
//! lock-free by admission (new sessions are refused above 80% of it), by the
//! writers (senders pause above 90% of it) and by each sender before it
//! queues a frame (a frame that would cross the budget waits for room).

use std::sync::atomic::{AtomicUsize, Ordering};

/// Default budget: sized for a 2-core / 24 GiB machine, where a few seconds
/// of audio for thousands of sessions fit many times over.
pub const DEFAULT_AUDIO_BUFFER_BUDGET_BYTES: usize = 256 * 1024 * 1024;

/// How often a sender waiting for room in the budget looks again.
const ROOM_RECHECK: std::time::Duration = std::time::Duration::from_millis(10);

/// Bytes counted against a budget, and the budget.
#[derive(Debug)]
pub struct AudioBudget {
    limit: AtomicUsize,
    used: AtomicUsize,
}

/// The one budget of this process, set from the configuration at start.
pub static AUDIO_BUDGET: AudioBudget = AudioBudget::new(DEFAULT_AUDIO_BUFFER_BUDGET_BYTES);

impl AudioBudget {
    pub const fn new(limit: usize) -> AudioBudget {
        AudioBudget {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
        }
    }

    /// Sets the budget (at start, from `AUDIO_BUFFER_BUDGET_BYTES`).
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Bytes queued now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// `bytes` were queued toward a socket.
    pub fn add(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// `bytes` left the queue (written, or dropped with the socket).
    pub fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Whether `bytes` more stay within the budget (always, when nothing is
    /// queued: a frame larger than the whole budget must still go out).
    pub fn has_room_for(&self, bytes: usize) -> bool {
        let used = self.used();
        used == 0 || used + bytes <= self.limit()
    }

    /// Resolves once [`Self::has_room_for`] `bytes`. The writers free room
    /// as they write (or as a given-up socket drops its queue), from other
    /// threads: looked at every few milliseconds rather than woken.
    pub async fn room_for(&'static self, bytes: usize) {
        while !self.has_room_for(bytes) {
            actix_rt::time::sleep(ROOM_RECHECK).await;
        }
    }

    /// Over 80%: new sessions are refused (`THOTH_BUSY`, at capacity).
    pub fn refuses_new_sessions(&self) -> bool {
        self.used() > self.limit() / 10 * 8
    }

    /// Over 90%: senders pause reading their browsers until it drained. The
    /// last tenth is headroom for the frame each running sender may still
    /// queue before it sees the pause, so the budget itself is not crossed.
    pub fn senders_pause(&self) -> bool {
        self.used() > self.limit() / 10 * 9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_refuses_above_80_percent_and_senders_pause_above_90() {
        let budget = AudioBudget::new(1000);
        budget.add(800);
        assert!(!budget.refuses_new_sessions());
        budget.add(1);
        assert!(budget.refuses_new_sessions());
        assert!(!budget.senders_pause());
        budget.add(100);
        assert!(budget.senders_pause());
        budget.release(901);
        assert_eq!(budget.used(), 0);
        assert!(!budget.refuses_new_sessions() && !budget.senders_pause());
    }

    #[test]
    fn a_frame_fits_only_within_the_budget_unless_nothing_is_queued() {
        let budget = AudioBudget::new(100);
        assert!(budget.has_room_for(500), "an empty budget takes any frame");
        budget.add(60);
        assert!(budget.has_room_for(40));
        assert!(!budget.has_room_for(41));
        budget.release(60);
        assert!(budget.has_room_for(41));
    }

    #[test]
    fn zero_byte_frames_count_nothing() {
        let budget = AudioBudget::new(10);
        budget.add(0);
        budget.release(0);
        assert_eq!(budget.used(), 0);
    }
}
