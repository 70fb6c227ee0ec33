//! The process-wide audio-buffer budget (`AUDIO_BUFFER_BUDGET_BYTES`): two
//! counts of the audio the gateway holds for thoth — bytes queued toward
//! every thoth socket, and bytes kept in the sessions' replay buffers — read
//! lock-free by admission (new sessions are refused while both together are
//! above 80% of it), by the writers (senders pause while the queues are
//! above 90% of it) and by each sender before it queues a frame (a frame
//! that would take the queues over the budget waits for room).
//!
//! Replay bytes never pause a sender: they shrink only as thoth finalises,
//! which needs the rest of the sessions' audio, so pausing on them could
//! stall every session at once. Each replay is bounded on its own
//! (`THOTH_REPLAY_MAX_SECS`), and admission stops adding sessions.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Default budget: sized for a 2-core / 24 GiB machine, whose capacity is
/// about 5,000 chronus sessions, each replaying up to ~3 s of 16 kHz f32
/// audio (~100 KiB on average): their replay fits in 80% of it.
pub const DEFAULT_AUDIO_BUFFER_BUDGET_BYTES: usize = 1024 * 1024 * 1024;

/// How often a sender waiting for room in the budget looks again.
const ROOM_RECHECK: std::time::Duration = std::time::Duration::from_millis(10);

/// Bytes counted against a budget, and the budget.
#[derive(Debug)]
pub struct AudioBudget {
    limit: AtomicUsize,
    /// Queued toward thoth sockets.
    used: AtomicUsize,
    /// Kept in replay buffers.
    held: AtomicUsize,
}

/// The one budget of this process, set from the configuration at start.
pub static AUDIO_BUDGET: AudioBudget = AudioBudget::new(DEFAULT_AUDIO_BUFFER_BUDGET_BYTES);

impl AudioBudget {
    pub const fn new(limit: usize) -> AudioBudget {
        AudioBudget {
            limit: AtomicUsize::new(limit),
            used: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
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

    /// Bytes kept in replay buffers now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// A replay buffer kept `bytes` more.
    pub fn hold(&self, bytes: usize) {
        self.held.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A replay buffer let `bytes` go.
    pub fn unhold(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
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

    /// Queued and kept together over 80%: new sessions are refused
    /// (`THOTH_BUSY`, at capacity).
    pub fn refuses_new_sessions(&self) -> bool {
        self.used() + self.held() > self.limit() / 10 * 8
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
    fn replay_bytes_refuse_new_sessions_but_never_pause_senders() {
        let budget = AudioBudget::new(1000);
        budget.hold(700);
        budget.add(100);
        assert!(!budget.refuses_new_sessions());
        budget.hold(1);
        assert!(budget.refuses_new_sessions());
        budget.hold(299);
        assert!(!budget.senders_pause(), "replay alone never pauses");
        assert!(budget.has_room_for(800), "queues have their own room");
        budget.unhold(1000);
        assert_eq!(budget.held(), 0);
        assert!(!budget.refuses_new_sessions());
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
