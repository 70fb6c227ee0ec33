//! The stall watch: tells a session whose browser stopped reading its
//! results from one that is merely busy, without touching any socket.
//!
//! A ClientActor whose browser stops reading stops running (actix polls it
//! only while the socket takes writes), so it stops handling its events:
//! events waiting with none handled for [`CLIENT_STALL_TIMEOUT`] mean a stall.

use std::time::{Duration, Instant};

/// A session whose browser has not consumed a single result for this long is
/// cut off, freeing its place on the shared socket.
pub const CLIENT_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Watches one client's event backlog between sweeps.
#[derive(Debug, Clone)]
pub struct StallWatch {
    last_handled: u64,
    since: Instant,
}

impl StallWatch {
    pub fn new() -> Self {
        Self::started_at(Instant::now())
    }

    /// A watch whose quiet period starts at `now`.
    pub fn started_at(now: Instant) -> Self {
        StallWatch {
            last_handled: 0,
            since: now,
        }
    }

    /// Whether events have been waiting for `limit` with none handled.
    pub fn stalled(&mut self, backlog: usize, handled: u64, limit: Duration) -> bool {
        self.stalled_at(Instant::now(), backlog, handled, limit)
    }

    /// [`Self::stalled`] as seen at `now`: progress is an empty backlog or
    /// any event handled since the last look; either restarts the clock.
    pub fn stalled_at(
        &mut self,
        now: Instant,
        backlog: usize,
        handled: u64,
        limit: Duration,
    ) -> bool {
        let progressed = backlog == 0 || handled != self.last_handled;
        self.last_handled = handled;
        if progressed {
            self.since = now;
            return false;
        }
        now.saturating_duration_since(self.since) >= limit
    }
}

impl Default for StallWatch {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = CLIENT_STALL_TIMEOUT;

    fn secs(start: Instant, s: u64) -> Instant {
        start + Duration::from_secs(s)
    }

    #[test]
    fn a_client_with_nothing_waiting_is_never_stalled() {
        let t0 = Instant::now();
        let mut watch = StallWatch::started_at(t0);
        assert!(!watch.stalled_at(secs(t0, 60), 0, 0, LIMIT));
        assert!(!watch.stalled_at(secs(t0, 600), 0, 0, LIMIT));
    }

    #[test]
    fn events_waiting_with_none_handled_for_the_limit_is_a_stall() {
        let t0 = Instant::now();
        let mut watch = StallWatch::started_at(t0);
        assert!(!watch.stalled_at(secs(t0, 1), 5, 0, LIMIT));
        assert!(!watch.stalled_at(secs(t0, 9), 7, 0, LIMIT));
        assert!(watch.stalled_at(secs(t0, 10), 9, 0, LIMIT));
    }

    #[test]
    fn handling_one_event_restarts_the_clock() {
        let t0 = Instant::now();
        let mut watch = StallWatch::started_at(t0);
        assert!(!watch.stalled_at(secs(t0, 9), 5, 0, LIMIT));
        // One event handled at 9 s: the backlog is old, the client is not.
        assert!(!watch.stalled_at(secs(t0, 9), 5, 1, LIMIT));
        assert!(!watch.stalled_at(secs(t0, 18), 5, 1, LIMIT));
        assert!(watch.stalled_at(secs(t0, 19), 5, 1, LIMIT));
    }

    #[test]
    fn an_emptied_backlog_restarts_the_clock() {
        let t0 = Instant::now();
        let mut watch = StallWatch::started_at(t0);
        assert!(!watch.stalled_at(secs(t0, 8), 0, 0, LIMIT));
        assert!(!watch.stalled_at(secs(t0, 17), 3, 0, LIMIT));
        assert!(watch.stalled_at(secs(t0, 18), 3, 0, LIMIT));
    }
}
