//! How late the public workers' event loops run: the gateway's own
//! saturation signal. A worker whose CPU is spent runs every ready task
//! later and later (its run queue grows), including a timer ticking on it;
//! that lateness, smoothed, is what a new session would wait for each frame.
//! What counts is the lateness *sustained* over the last half second (the
//! least of its smoothed values then): a burst of new connections makes a
//! worker late for a moment, a spent CPU makes it late all along. Admission
//! refuses new thoth sessions while the sustained lateness is over
//! `OVERLOAD_LOOP_LAG_MS` (the gateway is at capacity), and
//! `chronus_worker_loop_lag_seconds` shows it.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often each worker's ticker wakes.
pub const TICK: Duration = Duration::from_millis(50);
/// Weight of the newest lateness in the smoothed value (time constant about
/// four ticks, 200 ms: one slow tick does not refuse anyone, a saturated
/// worker is seen within a few hundred milliseconds).
const NEW_WEIGHT: f64 = 0.25;
/// Ticks over which the lateness must last: half a second.
const SUSTAINED_TICKS: usize = 10;

/// Each watched worker's sustained lateness, in microseconds.
static WORKERS: Mutex<Vec<Arc<AtomicU64>>> = Mutex::new(Vec::new());

thread_local! {
    static WATCHED: Cell<bool> = const { Cell::new(false) };
}

/// Starts the ticker on the current thread's arbiter, once per thread (an
/// app factory runs per worker, and may run again).
pub fn watch_this_worker() {
    if WATCHED.with(|watched| watched.replace(true)) {
        return;
    }
    let slot = Arc::new(AtomicU64::new(0));
    WORKERS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(slot.clone());
    let watched = Watched(slot.clone());
    actix_rt::spawn(async move {
        let _watched = watched;
        let mut smoothed_us = 0.0_f64;
        let mut recent = [0_u64; SUSTAINED_TICKS];
        for tick in 0.. {
            let started = Instant::now();
            actix_rt::time::sleep(TICK).await;
            let late = started.elapsed().saturating_sub(TICK);
            smoothed_us = smooth(smoothed_us, late.as_secs_f64() * 1e6);
            recent[tick % SUSTAINED_TICKS] = smoothed_us as u64;
            slot.store(sustained(&recent), Ordering::Relaxed);
            crate::metrics::WORKER_LOOP_LAG.set(worst().as_secs_f64());
        }
    });
}

/// Unregisters a worker whose ticker ended (its arbiter stopped), so a
/// stopped server's last reading does not count.
struct Watched(Arc<AtomicU64>);

impl Drop for Watched {
    fn drop(&mut self) {
        WORKERS
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|slot| !Arc::ptr_eq(slot, &self.0));
        let _ = WATCHED.try_with(|watched| watched.set(false));
    }
}

fn smooth(previous_us: f64, newest_us: f64) -> f64 {
    previous_us * (1.0 - NEW_WEIGHT) + newest_us * NEW_WEIGHT
}

/// The lateness every recent tick had at least.
fn sustained(recent: &[u64]) -> u64 {
    recent.iter().copied().min().unwrap_or(0)
}

/// The most late worker's sustained lateness.
pub fn worst() -> Duration {
    let workers = WORKERS.lock().unwrap_or_else(PoisonError::into_inner);
    let worst_us = workers
        .iter()
        .map(|slot| slot.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    Duration::from_micros(worst_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_late_tick_moves_the_smoothed_value_a_quarter_of_the_way() {
        assert_eq!(smooth(0.0, 100_000.0), 25_000.0);
        // A worker late by 100 ms on every tick is seen as such within ~10 ticks.
        let mut value = 0.0;
        for _ in 0..10 {
            value = smooth(value, 100_000.0);
        }
        assert!(value > 90_000.0, "{value}");
    }

    #[test]
    fn a_burst_is_not_sustained_lateness() {
        let mut recent = [2_000_u64; SUSTAINED_TICKS];
        recent[3] = 150_000; // one slow moment
        assert_eq!(sustained(&recent), 2_000);
        let all_late = [60_000_u64; SUSTAINED_TICKS];
        assert_eq!(sustained(&all_late), 60_000);
    }

    #[actix_rt::test]
    async fn a_worker_kept_busy_shows_its_lateness() {
        watch_this_worker();
        watch_this_worker(); // once per thread
                             // Block this thread's loop for longer than a tick, again and again:
                             // every tick of the last half second is late.
        for _ in 0..(SUSTAINED_TICKS + 4) {
            actix_rt::time::sleep(Duration::from_millis(5)).await;
            std::thread::sleep(Duration::from_millis(120));
        }
        actix_rt::time::sleep(Duration::from_millis(5)).await;
        assert!(worst() >= Duration::from_millis(20), "{:?}", worst());
    }
}
