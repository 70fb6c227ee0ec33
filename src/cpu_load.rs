//! How busy the gateway's CPUs are: the process's CPU time over wall time,
//! per core it may use (`available_parallelism`: affinity and cgroup quota
//! included), smoothed over a few hundred milliseconds. It is the gateway's
//! own saturation signal: a gateway whose cores are spent reads its
//! browsers later and later (their audio waits in socket buffers, where no
//! queue of ours sees it), so admission refuses new thoth sessions while it
//! is over `OVERLOAD_CPU_PERCENT`, leaving the rest as headroom for the
//! sessions already admitted. `chronus_cpu_utilization_ratio` shows it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the CPU time is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Weight of the newest sample (time constant about 300 ms: a ramp of new
/// sessions is seen quickly, one busy tenth of a second is not a trend).
const NEW_WEIGHT: f64 = 0.3;

/// The smoothed utilisation, in millionths (lock-free for admission).
static UTILIZATION_PPM: AtomicU64 = AtomicU64::new(0);

/// The smoothed share of the gateway's cores in use, 0.0 to 1.0 (and
/// briefly above, when another sampler of the same process ran late).
pub fn utilization() -> f64 {
    UTILIZATION_PPM.load(Ordering::Relaxed) as f64 / 1e6
}

/// Samples forever (spawned once per gateway on its main arbiter).
pub async fn sample() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mut last_cpu = process_cpu_time();
    let mut last_wall = Instant::now();
    let mut smoothed = 0.0;
    loop {
        actix_rt::time::sleep(SAMPLE_EVERY).await;
        let (cpu, wall) = (process_cpu_time(), Instant::now());
        let busy = share(cpu - last_cpu, wall - last_wall, cores);
        (last_cpu, last_wall) = (cpu, wall);
        smoothed = smoothed * (1.0 - NEW_WEIGHT) + busy * NEW_WEIGHT;
        UTILIZATION_PPM.store((smoothed * 1e6) as u64, Ordering::Relaxed);
        crate::metrics::CPU_UTILIZATION.set(smoothed);
    }
}

/// CPU time used over `wall`, as a share of `cores` cores.
fn share(cpu: Duration, wall: Duration, cores: f64) -> f64 {
    if wall.is_zero() {
        return 0.0;
    }
    cpu.as_secs_f64() / wall.as_secs_f64() / cores
}

/// CPU time of the whole process (every thread), user and system.
fn process_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the clock id is a constant
    // every Linux supports. On failure `now` stays zero (no sample).
    unsafe {
        libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now);
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_is_cpu_time_over_wall_time_per_core() {
        let second = Duration::from_secs(1);
        assert_eq!(share(second, second, 2.0), 0.5);
        assert_eq!(share(second * 2, second, 2.0), 1.0);
        assert_eq!(share(second, Duration::ZERO, 2.0), 0.0);
    }

    #[test]
    fn a_spinning_thread_shows_in_the_process_cpu_time() {
        let before = process_cpu_time();
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(0u64);
        }
        let used = process_cpu_time() - before;
        assert!(used >= Duration::from_millis(40), "{used:?}");
    }
}
