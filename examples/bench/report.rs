//! Figures derived from a run, medians over repeats, the table and the JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::admin_metrics::AudioWatch;
use crate::find_max::FindMax;
use crate::load::{LoadPlan, LoadResult, Mode};

/// An overload figure's latency mark: its admitted sessions' p99 stays under it.
pub const OVERLOAD_P99_LIMIT_MS: f64 = 100.0;
/// Width of the figure-name column (`overload-chronus-10000`, `find-max-chronus-5000`).
const FIGURE_COLUMN: usize = 22;
const BYTES_PER_MIB: f64 = 1024.0 * 1024.0;

/// Where the load went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Gateway,
    /// The lean reference relay (examples/bench/lean_relay.rs).
    LeanRelay,
    Direct,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Gateway => "gateway",
            Side::LeanRelay => "relay",
            Side::Direct => "direct",
        }
    }
}

/// What was read from the gateway process and the machine.
pub struct ProcessFigures {
    /// Gateway CPU seconds (user + system) inside the window.
    pub cpu_seconds: Option<f64>,
    pub rss_idle_kib: Option<u64>,
    /// RSS at the end of the window, every session still held.
    pub rss_held_kib: Option<u64>,
    pub rss_peak_kib: Option<u64>,
    /// The bench process's own CPU (load generator + fake thoth), whole run.
    pub own_cpu_seconds: f64,
    pub load_before: f64,
    pub load_after: f64,
    /// Lines the gateway logged at `warn` and above.
    pub gateway_log_lines: usize,
    pub gateway_log_tail: Option<String>,
    pub thoth: ThothChecks,
    /// The `AUDIO_BUFFER_BUDGET_BYTES` the bench gave the gateway, in MiB.
    pub audio_budget_mib: Option<u64>,
    /// The gateway's audio gauges over the run (`None`: not a gateway row).
    pub audio: Option<AudioWatch>,
}

/// What the fake thoth found wrong on its side of the relay.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ThothChecks {
    /// Audio or `session.end` for a session that was not open.
    pub unknown_session: u64,
    /// Audio that is not exactly the frame it names.
    pub corrupt_frames: u64,
    /// Audio of the wrong session, or out of order, under a session id.
    pub misrouted_frames: u64,
    pub problems: Vec<String>,
    /// Sessions thoth saw start, end and be cancelled (not failures: a
    /// closed browser cancels; every session ends one of the two ways).
    pub starts: u64,
    pub ends: u64,
    pub cancels: u64,
    pub audio_frames: u64,
}

impl ThothChecks {
    pub fn from_stats(stats: &crate::thoth::ThothStats) -> ThothChecks {
        use std::sync::atomic::Ordering::Relaxed;
        ThothChecks {
            unknown_session: stats.unknown_session.load(Relaxed),
            corrupt_frames: stats.corrupt_frames.load(Relaxed),
            misrouted_frames: stats.misrouted_frames.load(Relaxed),
            problems: stats.problems.lock().map(|p| p.clone()).unwrap_or_default(),
            starts: stats.starts.load(Relaxed),
            ends: stats.ends.load(Relaxed),
            cancels: stats.cancels.load(Relaxed),
            audio_frames: stats.audio_frames.load(Relaxed),
        }
    }

    pub fn total(&self) -> u64 {
        self.unknown_session + self.corrupt_frames + self.misrouted_frames
    }
}

/// Named figures of one run (NaN: not applicable).
pub type Figures = BTreeMap<&'static str, f64>;

/// One run of one figure on one side.
pub struct RunRecord {
    pub figure: String,
    pub side: Side,
    pub plan: LoadPlan,
    pub result: LoadResult,
    pub process: ProcessFigures,
    pub figures: Figures,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl RunRecord {
    pub fn new(
        figure: String,
        side: Side,
        plan: LoadPlan,
        result: LoadResult,
        process: ProcessFigures,
    ) -> RunRecord {
        let secs = plan.seconds;
        let mut f = Figures::new();
        let n = plan.sessions as f64;
        f.insert(
            "sessions",
            if plan.mode == Mode::Connect {
                f64::NAN
            } else {
                n
            },
        );
        f.insert("seconds", secs);
        // Real-time and sparse: frames sent in the window (each is checked);
        // flood: frames acknowledged in the window (its throughput).
        let (frames, bytes) = match plan.mode {
            Mode::Flood => (result.acked_frames_in_window, result.acked_bytes_in_window),
            Mode::Connect => (0, 0),
            _ => (result.frames_in_window, result.bytes_in_window),
        };
        let nan_if_connect = |v: f64| {
            if plan.mode == Mode::Connect {
                f64::NAN
            } else {
                v
            }
        };
        f.insert("frames_per_s", nan_if_connect(frames as f64 / secs));
        f.insert("mb_per_s", nan_if_connect(bytes as f64 / secs / 1e6));
        let lat = if plan.mode == Mode::Connect {
            &result.connect_latency
        } else {
            &result.latency
        };
        let q = |p: f64| {
            if lat.is_empty() {
                f64::NAN
            } else {
                ms(lat.value_at_quantile(p))
            }
        };
        f.insert("p50_ms", q(0.5));
        f.insert("p99_ms", q(0.99));
        f.insert("p999_ms", q(0.999));
        f.insert(
            "max_ms",
            if lat.is_empty() {
                f64::NAN
            } else {
                ms(lat.max())
            },
        );
        f.insert(
            "send_lag_p99_ms",
            if result.send_lag.is_empty() {
                f64::NAN
            } else {
                ms(result.send_lag.value_at_quantile(0.99))
            },
        );
        // Client-side checks plus what the fake thoth found on its side.
        f.insert(
            "failures",
            (result.failures.total() + process.thoth.total()) as f64,
        );
        f.insert("sessions_ready", result.sessions_ready as f64);
        // Admitted: reached `ready`; refused: at capacity, before `ready`
        // (not failures in an overload figure, failures too elsewhere).
        f.insert("admitted", result.sessions_ready as f64);
        f.insert("refused", result.refused as f64);
        let refuse = &result.refuse_latency;
        let rq = |p: f64| {
            if refuse.is_empty() {
                f64::NAN
            } else {
                ms(refuse.value_at_quantile(p))
            }
        };
        f.insert("refuse_p50_ms", rq(0.5));
        f.insert("refuse_p99_ms", rq(0.99));
        f.insert("refuse_max_ms", rq(1.0));
        f.insert("ready_late", result.ready_late as f64);
        let cpu = process.cpu_seconds.unwrap_or(f64::NAN);
        f.insert("gw_cpu_s", cpu);
        f.insert("gw_cpu_pct", cpu / secs * 100.0);
        f.insert(
            "gw_us_per_frame",
            if frames > 0 {
                cpu * 1e6 / frames as f64
            } else {
                f64::NAN
            },
        );
        let mib = |k: Option<u64>| k.map_or(f64::NAN, |k| k as f64 / 1024.0);
        f.insert("rss_idle_mib", mib(process.rss_idle_kib));
        f.insert("rss_held_mib", mib(process.rss_held_kib));
        f.insert("rss_peak_mib", mib(process.rss_peak_kib));
        // Audio held: queued toward thoth + kept for replay, from the
        // gateway's own gauges; the budget is the one given or its default.
        let audio = process.audio.unwrap_or_default();
        let audio_mib = |b: Option<f64>| b.map_or(f64::NAN, |b| b / BYTES_PER_MIB);
        f.insert("audio_held_peak_mib", audio_mib(audio.held_peak_bytes));
        f.insert("replay_end_mib", audio_mib(audio.replay_end_bytes));
        f.insert(
            "cpu_utilization_peak",
            audio.cpu_utilization_peak.unwrap_or(f64::NAN),
        );
        f.insert(
            "audio_budget_mib",
            match process.audio_budget_mib {
                Some(given) => given as f64,
                None => audio_mib(audio.budget_bytes),
            },
        );
        f.insert(
            "kib_per_session",
            match (process.rss_idle_kib, process.rss_held_kib) {
                (Some(idle), Some(held)) if plan.mode != Mode::Connect => {
                    (held as f64 - idle as f64) / n
                }
                _ => f64::NAN,
            },
        );
        f.insert(
            "connects_per_s",
            if plan.mode == Mode::Connect {
                result.connects_in_window as f64 / secs
            } else {
                f64::NAN
            },
        );
        f.insert("bench_cpu_s", process.own_cpu_seconds);
        f.insert("load_1m", process.load_after.max(process.load_before));
        RunRecord {
            figure,
            side,
            plan,
            result,
            process,
            figures: f,
        }
    }

    pub fn failures(&self) -> u64 {
        self.result.failures.total() + self.process.thoth.total()
    }

    pub fn one_line(&self) -> String {
        let f = &self.figures;
        let refused = if self.result.refused > 0 {
            format!(
                ", {} refused (connect → refusal p99 {:.2} ms)",
                self.result.refused, f["refuse_p99_ms"]
            )
        } else {
            String::new()
        };
        let audio = if self.side == Side::Gateway {
            format!(
                ", audio held peak {} MiB (replay {} MiB at the window's end)",
                cell(f["audio_held_peak_mib"], 1),
                cell(f["replay_end_mib"], 1)
            )
        } else {
            String::new()
        };
        format!(
            "  {} sessions ready{refused}, {:.0} frames/s, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, {} failure(s), gateway CPU {:.1}% ({:.2} µs/frame), RSS idle {:.1} → held {:.1} MiB{audio}, send lag p99 {:.2} ms, load {:.2}",
            self.result.sessions_ready,
            f["frames_per_s"],
            f["p50_ms"],
            f["p99_ms"],
            f["p999_ms"],
            self.failures(),
            f["gw_cpu_pct"],
            f["gw_us_per_frame"],
            f["rss_idle_mib"],
            f["rss_held_mib"],
            f["send_lag_p99_ms"],
            f["load_1m"],
        )
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.retain(|v| !v.is_nan());
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Field-wise medians of several runs' figures (failures: the maximum).
pub fn median_record<'a>(runs: impl Iterator<Item = &'a RunRecord>) -> Figures {
    let runs: Vec<&RunRecord> = runs.collect();
    let mut out = Figures::new();
    if let Some(first) = runs.first() {
        for key in first.figures.keys() {
            let values: Vec<f64> = runs.iter().map(|r| r.figures[key]).collect();
            let v = if *key == "failures" {
                values.iter().copied().fold(0.0, f64::max)
            } else {
                median(values)
            };
            out.insert(key, v);
        }
    }
    out
}

/// The figures grouped as printed: (figure, side) → medians, in run order.
fn grouped(records: &[RunRecord]) -> Vec<(String, Side, Figures, usize)> {
    let mut keys: Vec<(String, Side)> = Vec::new();
    for r in records {
        if !keys.iter().any(|(f, s)| *f == r.figure && *s == r.side) {
            keys.push((r.figure.clone(), r.side));
        }
    }
    keys.into_iter()
        .map(|(figure, side)| {
            let runs: Vec<&RunRecord> = records
                .iter()
                .filter(|r| r.figure == figure && r.side == side)
                .collect();
            let count = runs.len();
            (figure, side, median_record(runs.into_iter()), count)
        })
        .collect()
}

pub fn cell(v: f64, decimals: usize) -> String {
    if v.is_nan() {
        "-".into()
    } else {
        format!("{v:.decimals$}")
    }
}

/// The results table (medians when runs were repeated).
pub fn table(records: &[RunRecord], repeat: usize) -> String {
    let mut out = String::new();
    let _ =
        writeln!(
        out,
        "{}results{}; latency = frame sent → its ack back at the client (connect: connect → ready)",
        if repeat > 1 { "median " } else { "" },
        if repeat > 1 { format!(" of {repeat} runs") } else { String::new() },
    );
    let header = format!(
        "{:<w$} {:<8} {:>6} {:>6} {:>6} {:>9} {:>7} {:>7} {:>7} {:>8} {:>5} {:>7} {:>8} {:>7} {:>7} {:>8} {:>7} {:>6} {:>5}",
        "figure", "via", "N", "admit", "refusd", "frames/s", "MB/s", "p50 ms", "p99 ms", "p99.9ms", "fail",
        "gwCPU%", "µs/frame", "RSS0MiB", "RSS MiB", "KiB/sess", "conn/s", "lag99", "load",
        w = FIGURE_COLUMN,
    );
    let _ = writeln!(out, "{header}");
    let _ = writeln!(out, "{}", "-".repeat(header.chars().count()));
    let groups = grouped(records);
    for (figure, side, f, _) in &groups {
        let _ = writeln!(
            out,
            "{:<w$} {:<8} {:>6} {:>6} {:>6} {:>9} {:>7} {:>7} {:>7} {:>8} {:>5} {:>7} {:>8} {:>7} {:>7} {:>8} {:>7} {:>6} {:>5}",
            figure,
            side.as_str(),
            cell(f["sessions"], 0),
            cell(f["admitted"], 0),
            cell(f["refused"], 0),
            cell(f["frames_per_s"], 0),
            cell(f["mb_per_s"], 2),
            cell(f["p50_ms"], 2),
            cell(f["p99_ms"], 2),
            cell(f["p999_ms"], 2),
            cell(f["failures"], 0),
            cell(f["gw_cpu_pct"], 1),
            cell(f["gw_us_per_frame"], 2),
            cell(f["rss_idle_mib"], 1),
            cell(f["rss_held_mib"], 1),
            cell(f["kib_per_session"], 1),
            cell(f["connects_per_s"], 0),
            cell(f["send_lag_p99_ms"], 1),
            cell(f["load_1m"], 2),
            w = FIGURE_COLUMN,
        );
        if *side == Side::LeanRelay {
            if let Some((_, _, g, _)) = groups
                .iter()
                .find(|(name, s, _, _)| name == figure && *s == Side::Gateway)
            {
                let _ = writeln!(
                    out,
                    "{:<w$} {:<8} µs/frame ×{}  p99 ×{}  peak RSS ×{} ({} ÷ {} MiB)   (gateway ÷ lean relay)",
                    figure,
                    "ratio",
                    cell(g["gw_us_per_frame"] / f["gw_us_per_frame"], 2),
                    cell(g["p99_ms"] / f["p99_ms"], 2),
                    cell(g["rss_peak_mib"] / f["rss_peak_mib"], 2),
                    cell(g["rss_peak_mib"], 1),
                    cell(f["rss_peak_mib"], 1),
                    w = FIGURE_COLUMN,
                );
            }
        }
        if *side == Side::Direct {
            if let Some((_, _, g, _)) = groups
                .iter()
                .find(|(name, s, _, _)| name == figure && *s == Side::Gateway)
            {
                let _ = writeln!(
                    out,
                    "{:<w$} {:<8} {:>20} {:>8}% {:>6}% {:>7} {:>7} {:>8}   (gateway ÷ direct; latencies: gateway − direct)",
                    figure,
                    "ratio",
                    "",
                    cell(g["frames_per_s"] / f["frames_per_s"] * 100.0, 1),
                    cell(g["mb_per_s"] / f["mb_per_s"] * 100.0, 1),
                    cell(g["p50_ms"] - f["p50_ms"], 2),
                    cell(g["p99_ms"] - f["p99_ms"], 2),
                    cell(g["p999_ms"] - f["p999_ms"], 2),
                    w = FIGURE_COLUMN,
                );
            }
        }
    }
    out.push_str(&overload_table(records, &groups));
    out.push_str(&budget_lines(records, &groups));
    out
}

/// Whether an overload figure's admitted sessions did what the issue asks:
/// zero failures and p99 under [`OVERLOAD_P99_LIMIT_MS`]. No memory verdict:
/// the peak audio held is printed next to the budget for the reader to judge.
pub fn overload_passes(f: &Figures) -> bool {
    f["failures"] == 0.0 && f["p99_ms"] < OVERLOAD_P99_LIMIT_MS
}

/// Whether `figure` is an overload figure (`--overload`).
fn is_overload(records: &[RunRecord], figure: &str) -> bool {
    records
        .iter()
        .any(|r| r.figure == figure && r.plan.overload)
}

/// The peak audio held against the audio budget, as `peak / budget`.
fn audio_over_budget(f: &Figures) -> String {
    format!(
        "{} / {}",
        cell(f["audio_held_peak_mib"], 1),
        cell(f["audio_budget_mib"], 0)
    )
}

/// The second table: overload figures only (empty when there are none).
fn overload_table(records: &[RunRecord], groups: &[(String, Side, Figures, usize)]) -> String {
    let rows: Vec<_> = groups
        .iter()
        .filter(|(figure, side, _, _)| *side == Side::Gateway && is_overload(records, figure))
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\noverload: N offered; refused = THOTH_BUSY + close 1013 before ready (not failures); refuse ms = connect → refusal; p99 and fail: admitted sessions only"
    );
    let header = format!(
        "{:<w$} {:>6} {:>8} {:>7} {:>10} {:>10} {:>7} {:>5} {:>23} {:>12}  {}",
        "figure",
        "N",
        "admitted",
        "refused",
        "refuse p50",
        "refuse p99",
        "p99 ms",
        "fail",
        "audio peak / budget MiB",
        "RSS peak MiB",
        format_args!("p99 < {OVERLOAD_P99_LIMIT_MS:.0} ms, 0 fail"),
        w = FIGURE_COLUMN,
    );
    let _ = writeln!(out, "{header}");
    let _ = writeln!(out, "{}", "-".repeat(header.chars().count()));
    for (figure, _, f, _) in rows {
        let _ = writeln!(
            out,
            "{:<w$} {:>6} {:>8} {:>7} {:>10} {:>10} {:>7} {:>5} {:>23} {:>12}  {}",
            figure,
            cell(f["sessions"], 0),
            cell(f["admitted"], 0),
            cell(f["refused"], 0),
            cell(f["refuse_p50_ms"], 2),
            cell(f["refuse_p99_ms"], 2),
            cell(f["p99_ms"], 2),
            cell(f["failures"], 0),
            audio_over_budget(f),
            cell(f["rss_peak_mib"], 1),
            if overload_passes(f) { "yes" } else { "NO" },
            w = FIGURE_COLUMN,
        );
    }
    out
}

/// Peak audio held next to the audio budget, and the peak RSS, for the
/// other figures run with a budget given (`--audio-budget-mib`).
fn budget_lines(records: &[RunRecord], groups: &[(String, Side, Figures, usize)]) -> String {
    let mut out = String::new();
    for (figure, side, f, _) in groups {
        let budget_given = records.iter().any(|r| {
            r.figure == *figure && r.side == *side && r.process.audio_budget_mib.is_some()
        });
        if !budget_given || is_overload(records, figure) {
            continue;
        }
        let _ = writeln!(
            out,
            "{figure} via {}: audio peak / budget {} MiB, RSS peak {} MiB",
            side.as_str(),
            audio_over_budget(f),
            cell(f["rss_peak_mib"], 1)
        );
    }
    out
}

fn figures_json(f: &Figures) -> Value {
    Value::Object(
        f.iter()
            .map(|(k, v)| {
                let v = if v.is_nan() { Value::Null } else { json!(v) };
                (k.to_string(), v)
            })
            .collect(),
    )
}

/// Every run, the medians, and the find-max outcome.
pub fn json(records: &[RunRecord], repeat: usize, find_max: Option<&FindMax>) -> Value {
    let runs: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({
                "figure": r.figure,
                "via": r.side.as_str(),
                "mode": r.plan.mode.as_str(),
                "sessions": r.plan.sessions,
                "seconds": r.plan.seconds,
                "client_threads": r.plan.client_threads,
                "overload": r.plan.overload,
                "figures": figures_json(&r.figures),
                "failures": r.result.failures,
                "thoth_checks": r.process.thoth,
                "gateway_log_lines": r.process.gateway_log_lines,
                "errors": r.result.errors,
            })
        })
        .collect();
    let medians: Vec<Value> = grouped(records)
        .into_iter()
        .map(|(figure, side, f, count)| {
            let figures = figures_json(&f);
            let overload = (side == Side::Gateway && is_overload(records, &figure)).then(|| {
                json!({
                    "admitted": figures["admitted"],
                    "refused": figures["refused"],
                    "refuse_p99_ms": figures["refuse_p99_ms"],
                    "audio_held_peak_mib": figures["audio_held_peak_mib"],
                    "audio_budget_mib": figures["audio_budget_mib"],
                    "rss_peak_mib": figures["rss_peak_mib"],
                    "admitted_p99_under_100_ms_and_no_failures": overload_passes(&f),
                })
            });
            json!({"figure": figure, "via": side.as_str(), "runs": count, "figures": figures, "overload": overload})
        })
        .collect();
    json!({
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "repeat": repeat,
        "runs": runs,
        "medians": medians,
        "find_max": find_max.map(|m| json!({
            "largest_passing": m.largest_passing,
            "largest_keeping_up": m.largest_keeping_up,
            "trials": m.trials.iter().map(|(n, pass, f)| json!({"sessions": n, "pass": pass, "figures": figures_json(f)})).collect::<Vec<_>>(),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(failures: f64, p99_ms: f64) -> Figures {
        Figures::from([("failures", failures), ("p99_ms", p99_ms)])
    }

    #[test]
    fn an_overload_figure_passes_with_no_failures_and_p99_under_100_ms() {
        assert!(overload_passes(&figures(0.0, 99.9)));
        assert!(!overload_passes(&figures(0.0, 100.0)));
        assert!(!overload_passes(&figures(1.0, 10.0)));
        // Nobody admitted: no latency to vouch for.
        assert!(!overload_passes(&figures(0.0, f64::NAN)));
    }
}
