//! Benchmark of the gateway's relay: a load generator, a fast fake thoth, the
//! real gateway binary as a separate process, and a lean reference relay as
//! the baseline row (docs/performance.md).
//!
//! ```text
//! cargo build --release --examples --bin chronus-gateway
//! cargo run --release --example bench -- --mode realtime --sessions 1000 --seconds 10
//! cargo run --release --example bench -- --profile chronus --sessions 3000
//! cargo run --release --example bench -- --profile chronus --overload --sessions 10000 --no-direct --no-relay
//! cargo run --release --example bench -- --suite --repeat 3 --json bench.json
//! cargo run --example bench -- --smoke --gateway-bin target/debug/chronus-gateway
//! ```

#[path = "bench/admin_metrics.rs"]
mod admin_metrics;
#[path = "bench/audio.rs"]
mod audio;
#[path = "bench/direct.rs"]
mod direct;
#[path = "bench/find_max.rs"]
mod find_max;
#[path = "bench/gateway.rs"]
mod gateway;
#[path = "bench/lean_relay.rs"]
mod lean_relay;
#[path = "bench/load.rs"]
mod load;
#[path = "bench/micro.rs"]
mod micro;
#[path = "bench/options.rs"]
mod options;
#[path = "bench/profile.rs"]
mod profile;
#[path = "bench/refusal.rs"]
mod refusal;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/thoth.rs"]
mod thoth;
#[path = "bench/track.rs"]
mod track;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use admin_metrics::AudioWatch;
use gateway::{GatewayProcess, GatewaySettings};
use load::{Mode, Target, Timeline};
use options::{parse_args, Figure, Options, USAGE};
use report::{RunRecord, Side};
use thoth::FakeThoth;

/// How long before the window's end its last figures are read (the
/// sessions are all still held then).
const WINDOW_END_MARGIN: Duration = Duration::from_millis(5);

/// Tokens for `users` users, minted once per run.
fn mint_tokens(users: usize) -> Result<Arc<Vec<String>>, String> {
    (0..users)
        .map(|u| {
            chronus_gateway::auth::mint_hs256(
                gateway::JWT_SECRET.as_bytes(),
                &format!("bench-user-{u}"),
                24 * 3600,
                None,
                None,
            )
            .map_err(|e| format!("minting a token: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Arc::new)
}

/// One run of one figure on one side (a fresh fake thoth and, for the
/// gateway side, a fresh gateway process).
fn run_side(
    figure: &Figure,
    side: Side,
    binary: &std::path::Path,
    opts: &Options,
) -> Result<RunRecord, String> {
    let users = opts.users;
    let plan = &figure.plan;
    let thoth = FakeThoth::start(plan.profile.thoth_replies(opts.final_every))
        .map_err(|e| format!("fake thoth: {e}"))?;
    let load_before = gateway::load_average();
    let (gateway, target) = match side {
        Side::Gateway => {
            let settings = GatewaySettings {
                max_audio_rate: if plan.mode == Mode::Flood { 1e6 } else { 4.0 },
                max_sessions: opts.max_sessions,
                audio_budget_mib: opts.audio_budget_mib,
            };
            let gw = GatewayProcess::start(binary, &thoth.url(), &settings)?;
            let users = users.unwrap_or(plan.sessions.clamp(1, 1000));
            let users = if plan.mode == Mode::Connect {
                users.max(1000)
            } else {
                users
            };
            let tokens = mint_tokens(users)?;
            let addr = gw.addr;
            (Some(gw), Target::Gateway { addr, tokens })
        }
        Side::LeanRelay => {
            let relay = GatewayProcess::start_lean_relay(&thoth.url())?;
            let tokens = mint_tokens(users.unwrap_or(plan.sessions.clamp(1, 1000)))?;
            let addr = relay.addr;
            (Some(relay), Target::Gateway { addr, tokens })
        }
        Side::Direct => (None, Target::Direct { addr: thoth.addr }),
    };
    // Let the gateway settle before the idle figure.
    std::thread::sleep(Duration::from_millis(300));
    let pid = gateway.as_ref().map(|g| g.pid());
    let rss_idle = pid.and_then(gateway::rss_kib).map(|r| r.0);
    let timeline = Timeline::new(plan);
    let perf = opts.perf.clone();
    let sampler = std::thread::spawn(move || sample_window(pid, timeline, perf));
    // The gateway's own gauges, through ramp, warm-up and window (the last
    // scrape answered before the window's end, every session held).
    let audio_watcher = gateway.as_ref().and_then(|g| g.admin_addr).map(|admin| {
        let until = timeline.window_end - WINDOW_END_MARGIN;
        std::thread::spawn(move || AudioWatch::run(admin, until))
    });
    let own_cpu_before = gateway::own_cpu_seconds();
    let result = load::run(plan, &target, timeline);
    let own_cpu = gateway::own_cpu_seconds() - own_cpu_before;
    let window = sampler.join().map_err(|_| "sampler panicked")?;
    let audio = match audio_watcher {
        Some(w) => Some(w.join().map_err(|_| "audio watcher panicked")?),
        None => None,
    };
    let rss_peak = pid.and_then(gateway::rss_kib).map(|r| r.1);
    let gateway_log_lines = gateway.as_ref().map(|g| g.log_lines()).unwrap_or(0);
    let gateway_log_tail = if result.failures.total() > 0 {
        gateway.as_ref().map(|g| g.log_tail())
    } else {
        None
    };
    let thoth_checks = report::ThothChecks::from_stats(&thoth.stats);
    drop(gateway);
    drop(thoth);
    Ok(RunRecord::new(
        figure.name.clone(),
        side,
        plan.clone(),
        result,
        report::ProcessFigures {
            cpu_seconds: window.cpu_seconds,
            rss_idle_kib: rss_idle,
            rss_held_kib: window.rss_end_kib,
            rss_peak_kib: rss_peak,
            own_cpu_seconds: own_cpu,
            load_before,
            load_after: gateway::load_average(),
            gateway_log_lines,
            gateway_log_tail,
            thoth: thoth_checks,
            audio_budget_mib: match side {
                Side::Gateway => opts.audio_budget_mib,
                Side::LeanRelay | Side::Direct => None,
            },
            audio,
        },
    ))
}

struct WindowSample {
    cpu_seconds: Option<f64>,
    rss_end_kib: Option<u64>,
}

/// Reads the gateway's CPU at the window's start and end, and its RSS at the
/// end (every session is still held then).
fn sample_window(pid: Option<u32>, tl: Timeline, perf: Option<PathBuf>) -> WindowSample {
    let Some(pid) = pid else {
        return WindowSample {
            cpu_seconds: None,
            rss_end_kib: None,
        };
    };
    std::thread::sleep(
        tl.window_start
            .saturating_duration_since(std::time::Instant::now()),
    );
    let profiler = perf.and_then(|path| gateway::start_perf(pid, &path));
    let before = gateway::cpu_seconds(pid);
    std::thread::sleep(
        tl.window_end
            .saturating_duration_since(std::time::Instant::now())
            .saturating_sub(WINDOW_END_MARGIN),
    );
    let after = gateway::cpu_seconds(pid);
    if let Some(profiler) = profiler {
        gateway::stop_perf(profiler);
    }
    let rss_end_kib = gateway::rss_kib(pid).map(|r| r.0);
    WindowSample {
        cpu_seconds: before.zip(after).map(|(b, a)| a - b),
        rss_end_kib,
    }
}

fn run_figure(
    figure: &Figure,
    binary: &std::path::Path,
    opts: &Options,
    records: &mut Vec<RunRecord>,
) -> Result<(), String> {
    let mut sides = vec![Side::Gateway];
    if figure.relay {
        sides.push(Side::LeanRelay);
    }
    if figure.direct {
        sides.push(Side::Direct);
    }
    for round in 0..opts.repeat {
        for &side in &sides {
            eprintln!(
                "bench: {} via {} (run {}/{}), load {:.2}",
                figure.name,
                side.as_str(),
                round + 1,
                opts.repeat,
                gateway::load_average()
            );
            let record = run_side(figure, side, binary, opts)?;
            eprintln!("{}", record.one_line());
            records.push(record);
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(lean_relay::RELAY_FLAG) {
        return lean_relay::serve_from_env();
    }
    let opts = match parse_args(&args) {
        Ok(opts) => opts,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("bench: {e}\n");
            }
            eprint!("{USAGE}");
            return if e.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            };
        }
    };
    match run(opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs everything asked for; `Ok(false)` when a check failed.
fn run(opts: Options) -> Result<bool, String> {
    if opts.micro {
        micro::run();
        return Ok(true);
    }
    let binary = match &opts.gateway_bin {
        Some(path) => path.clone(),
        None => gateway::default_binary()?,
    };
    let fd_limit = gateway::raise_fd_limit();
    eprintln!(
        "bench: gateway {}, open-file limit {fd_limit}, {} cores, load {:.2}",
        binary.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        gateway::load_average()
    );
    let mut records = Vec::new();
    let mut find_max = None;
    for figure in &opts.figures {
        run_figure(figure, &binary, &opts, &mut records)?;
    }
    if let Some((from, to, step, plan)) = &opts.find_max {
        find_max = Some(find_max::find_max(from, to, step, plan, |figure_plan| {
            let figure = Figure {
                name: format!(
                    "find-max-{}-{}",
                    figure_plan.profile.as_str(),
                    figure_plan.sessions
                ),
                plan: figure_plan,
                direct: false,
                // The relay's row at each N, for the ratio; only the
                // gateway's figures decide pass or fail.
                relay: opts.find_max_relay,
            };
            let mut one = Vec::new();
            run_figure(&figure, &binary, &opts, &mut one)?;
            records.extend(one);
            Ok(report::median_record(records.iter().filter(|r| {
                r.figure == figure.name && r.side == Side::Gateway
            })))
        })?);
    }
    let table = report::table(&records, opts.repeat);
    println!("{table}");
    if let Some(max) = &find_max {
        println!("{max}");
    }
    if let Some(path) = &opts.json {
        let json = report::json(&records, opts.repeat, find_max.as_ref());
        std::fs::write(
            path,
            serde_json::to_string_pretty(&json).unwrap_or_default(),
        )
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    let failed: u64 = records.iter().map(|r| r.failures()).sum();
    if failed > 0 {
        for r in records.iter().filter(|r| r.failures() > 0) {
            eprintln!(
                "bench: {} via {}: {} failure(s)",
                r.figure,
                r.side.as_str(),
                r.failures()
            );
            eprintln!("  client checks: {:?}", r.result.failures);
            eprintln!(
                "  thoth checks: {} unknown-session, {} corrupt, {} misrouted",
                r.process.thoth.unknown_session,
                r.process.thoth.corrupt_frames,
                r.process.thoth.misrouted_frames
            );
            for e in r.result.errors.iter().chain(&r.process.thoth.problems) {
                eprintln!("  {e}");
            }
            if let Some(tail) = &r.process.gateway_log_tail {
                eprintln!("  gateway log:\n{tail}");
            }
        }
        // find-max runs are expected to fail past the maximum.
        if opts.find_max.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}
