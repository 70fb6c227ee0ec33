//! `MAX_AUDIO_RATE`: a token bucket measured in seconds of audio, so a client
//! may catch up after a hiccup but cannot stream faster than N × real time.

use std::time::Instant;

/// Seconds of audio a session may send ahead of real time at any moment
/// (e.g. what a browser buffered while the socket was opening).
pub const BURST_AUDIO_SECS: f64 = 10.0;

pub struct AudioRateLimiter {
    max_rate: f64,
    allowance_secs: f64,
    last: Instant,
}

impl AudioRateLimiter {
    pub fn new(max_rate: f64) -> Self {
        AudioRateLimiter {
            max_rate,
            allowance_secs: BURST_AUDIO_SECS,
            last: Instant::now(),
        }
    }

    /// Whether `audio_secs` more audio, arriving at `now`, stays within the rate.
    pub fn admit_at(&mut self, audio_secs: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.allowance_secs = (self.allowance_secs + elapsed * self.max_rate).min(BURST_AUDIO_SECS);
        self.allowance_secs -= audio_secs;
        self.allowance_secs >= 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn real_time_audio_always_passes() {
        let mut limiter = AudioRateLimiter::new(2.0);
        let mut now = Instant::now();
        for _ in 0..10_000 {
            now += Duration::from_millis(20);
            assert!(limiter.admit_at(0.02, now));
        }
    }

    #[test]
    fn a_flood_is_stopped_after_the_burst() {
        let mut limiter = AudioRateLimiter::new(2.0);
        let now = Instant::now();
        let admitted = (0..1000).take_while(|_| limiter.admit_at(0.1, now)).count();
        assert_eq!(admitted, 100); // 10 s of burst in 0.1 s chunks
    }

    #[test]
    fn faster_than_the_limit_is_stopped_eventually() {
        let mut limiter = AudioRateLimiter::new(2.0);
        let mut now = Instant::now();
        // 3 × real time: gains 1 s of debt per second of wall time.
        let passed = (0..100_000)
            .take_while(|_| {
                now += Duration::from_millis(20);
                limiter.admit_at(0.06, now)
            })
            .count();
        assert!((450..=550).contains(&passed), "{passed}");
    }
}
