//! `--find-max`: raise N until the gateway misses the target twice, and
//! what counts as meeting it.

use crate::load::LoadPlan;
use crate::report::{cell, Figures};

/// The outcome of `--find-max`.
pub struct FindMax {
    /// The profile's frame interval (the full frame rate is N per interval).
    pub interval: std::time::Duration,
    pub largest_passing: Option<usize>,
    /// Largest N with p99 < 50 ms and the full frame rate, failures aside.
    pub largest_keeping_up: Option<usize>,
    pub trials: Vec<(usize, bool, Figures)>,
}

impl std::fmt::Display for FindMax {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "find-max (pass: zero failures, p99 < 50 ms, ≥ 98% of the real-time frame rate):"
        )?;
        for (n, pass, fig) in &self.trials {
            writeln!(
                f,
                "  N={n:<6} {}  p99 {} ms, {} failures, {} frames/s of {}",
                if *pass { "pass" } else { "FAIL" },
                cell(fig["p99_ms"], 2),
                cell(fig["failures"], 0),
                cell(fig["frames_per_s"], 0),
                *n as f64 / self.interval.as_secs_f64(),
            )?;
        }
        match self.largest_passing {
            Some(n) => writeln!(f, "largest passing N: {n}")?,
            None => writeln!(f, "no N passed")?,
        }
        match self.largest_keeping_up {
            Some(n) => write!(
                f,
                "largest N with p99 < 50 ms at full rate (failures aside): {n}"
            ),
            None => write!(f, "no N kept p99 < 50 ms at full rate"),
        }
    }
}

/// Whether a real-time run meets the target.
pub fn passes(n: usize, interval: std::time::Duration, f: &Figures) -> bool {
    f["failures"] == 0.0 && keeps_up(n, interval, f)
}

/// p99 under 50 ms at ≥ 98% of the real-time frame rate, failures aside.
pub fn keeps_up(n: usize, interval: std::time::Duration, f: &Figures) -> bool {
    let expected = n as f64 / interval.as_secs_f64();
    f["p99_ms"] < 50.0 && f["frames_per_s"] >= 0.98 * expected
}

/// Raises N from `from` by `step` until two runs in a row miss the latency or
/// rate target (or `to` is passed).
pub fn find_max(
    from: &usize,
    to: &usize,
    step: &usize,
    plan: &LoadPlan,
    mut run: impl FnMut(LoadPlan) -> Result<Figures, String>,
) -> Result<FindMax, String> {
    let mut out = FindMax {
        interval: plan.interval(),
        largest_passing: None,
        largest_keeping_up: None,
        trials: Vec::new(),
    };
    let mut n = *from;
    let mut misses = 0;
    while n <= *to {
        let mut trial = plan.clone();
        trial.sessions = n;
        trial.ramp = std::time::Duration::from_secs_f64((n as f64 / 1000.0).max(1.0));
        let figures = run(trial)?;
        let pass = passes(n, plan.interval(), &figures);
        let keeps_up = keeps_up(n, plan.interval(), &figures);
        out.trials.push((n, pass, figures));
        if pass {
            out.largest_passing = Some(n);
        }
        if keeps_up {
            out.largest_keeping_up = Some(n);
            misses = 0;
        } else {
            misses += 1;
            if misses == 2 {
                break; // past capacity: larger N only take longer to fail
            }
        }
        n += *step;
    }
    Ok(out)
}
