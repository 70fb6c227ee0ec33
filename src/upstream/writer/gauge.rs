//! The queue gauge of one upstream (every socket of one thoth endpoint):
//! the live bytes queued toward it, and since when it has been congested.
//! Admission reads it lock-free: a queue that stays congested means thoth
//! (or the writer) is not keeping up, and new sessions would only add
//! latency; a moment over the mark (a scheduling hiccup, a ramp's burst)
//! is not that.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Live bytes queued toward one upstream, and since when over its mark.
#[derive(Debug, Default)]
pub struct QueueGauge {
    bytes: AtomicUsize,
    /// When the queue went over its congestion mark (milliseconds on
    /// [`clock_ms`]), 0 while it is not congested. Set on the way up over
    /// the mark, cleared only once the queue is under half of it, so a
    /// queue that hovers around the mark (senders paused and released in
    /// turn) counts as congested all along.
    congested_since_ms: AtomicU64,
}

impl QueueGauge {
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Counts `bytes` more queued; `mark` is the congestion mark, if any.
    pub fn add(&self, bytes: usize, mark: Option<usize>) {
        let queued = self.bytes.fetch_add(bytes, Ordering::SeqCst) + bytes;
        if matches!(mark, Some(mark) if queued > mark)
            && self.congested_since_ms.load(Ordering::Relaxed) == 0
        {
            // Only the first sender over the mark stamps it.
            let _ = self.congested_since_ms.compare_exchange(
                0,
                clock_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// Counts `bytes` fewer queued (written, or dropped with the socket).
    pub fn sub(&self, bytes: usize, mark: Option<usize>) {
        let queued = self.bytes.fetch_sub(bytes, Ordering::SeqCst) - bytes;
        if matches!(mark, Some(mark) if queued <= mark / 2)
            && self.congested_since_ms.load(Ordering::Relaxed) != 0
        {
            self.congested_since_ms.store(0, Ordering::Relaxed);
        }
    }

    /// How long the queue has been congested (zero when it is not).
    pub fn congested_for(&self) -> Duration {
        match self.congested_since_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(clock_ms().saturating_sub(since)),
        }
    }
}

/// Milliseconds since the first call, plus one (so that 0 means "never").
fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn congestion_starts_over_the_mark_and_ends_under_half_of_it() {
        let gauge = QueueGauge::default();
        gauge.add(100, Some(100));
        assert_eq!(gauge.congested_since_ms.load(Ordering::Relaxed), 0);
        gauge.add(1, Some(100));
        let since = gauge.congested_since_ms.load(Ordering::Relaxed);
        assert_ne!(since, 0, "over the mark");
        // Hovering around the mark keeps the first stamp.
        gauge.sub(30, Some(100));
        gauge.add(30, Some(100));
        assert_eq!(gauge.congested_since_ms.load(Ordering::Relaxed), since);
        gauge.sub(50, Some(100));
        assert_ne!(gauge.congested_since_ms.load(Ordering::Relaxed), 0);
        gauge.sub(1, Some(100));
        assert_eq!(gauge.bytes(), 50);
        assert_eq!(gauge.congested_for(), Duration::ZERO, "under half the mark");
    }

    #[test]
    fn the_congested_time_grows_while_congested() {
        let gauge = QueueGauge::default();
        gauge.add(10, Some(5));
        std::thread::sleep(Duration::from_millis(30));
        assert!(gauge.congested_for() >= Duration::from_millis(25));
    }

    #[test]
    fn without_a_mark_nothing_is_ever_congested() {
        let gauge = QueueGauge::default();
        gauge.add(1 << 30, None);
        assert_eq!(gauge.congested_for(), Duration::ZERO);
        gauge.sub(1 << 30, None);
        assert_eq!(gauge.bytes(), 0);
    }
}
