//! Benchmark of the gateway's relay: a load generator, a fast fake thoth, the
//! real gateway binary as a separate process, and a lean reference relay as
//! the baseline row (docs/performance.md).
//!
//! ```text
//! cargo build --release --examples --bin chronus-gateway
//! cargo run --release --example bench -- --mode realtime --sessions 1000 --seconds 10
//! cargo run --release --example bench -- --profile chronus --sessions 3000
//! cargo run --release --example bench -- --suite --repeat 3 --json bench.json
//! cargo run --example bench -- --smoke --gateway-bin target/debug/chronus-gateway
//! ```

#[path = "bench/audio.rs"]
mod audio;
#[path = "bench/direct.rs"]
mod direct;
#[path = "bench/gateway.rs"]
mod gateway;
#[path = "bench/lean_relay.rs"]
mod lean_relay;
#[path = "bench/load.rs"]
mod load;
#[path = "bench/micro.rs"]
mod micro;
#[path = "bench/profile.rs"]
mod profile;
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

use gateway::{GatewayProcess, GatewaySettings};
use load::{LoadPlan, Mode, Target, Timeline};
use profile::Profile;
use report::{RunRecord, Side};
use thoth::FakeThoth;

const USAGE: &str = "\
bench — load generator and benchmark of chronus-gateway

USAGE: cargo run --release --example bench -- [OPTIONS]

  --mode M            realtime (default) | flood | sparse | connect
  --profile P         realtime (default): 1,280-byte frames every 20 ms, each
                      answered; chronus: 16,384-byte frames (4,096 f32 samples)
                      every 256 ms, one final result per ~3 s of a session's audio
  --sessions N        concurrent sessions (default 1000; sparse 10000; flood 100)
  --seconds S         measured window (default 10)
  --ramp S            seconds over which sessions open (default N/1000, at least 1)
  --warmup S          seconds between the ramp and the window (default 1)
  --client-threads T  load generator threads (default 2)
  --window W          flood: frames in flight per session (default 32)
  --concurrency C     connect: connections opened at once (default 64)
  --users U           distinct users (one token each; default min(N, 1000))
  --no-direct         skip the direct-to-thoth row
  --no-relay          skip the lean reference relay's row (gateway ÷ relay ratios)
  --final-every F     realtime profile: the fake thoth's reply is a final result every
                      F frames of a session (default 50: once per second of audio)
  --find-max          real-time, either profile: raise N by --step from --from to --to (until two
                      misses in a row), report the
                      largest N with zero failures and p99 < 50 ms
  --from N --to N --step N   (defaults 1000, 8000, 500)
  --suite             every figure of docs/performance.md, both profiles
  --repeat R          run each figure R times, report medians (default 1)
  --micro             CPU cost of the gateway's per-frame library work (no sockets)
  --smoke             20 real-time sessions for 2 s, 20 chronus-profile sessions for
                      4 s, through the gateway and direct; exit 1 on any failure
  --gateway-bin PATH  gateway binary (default: chronus-gateway next to this example)
  --json PATH         also write the results as JSON
  --perf PATH         record a perf profile (cpu-clock; BENCH_PERF_CALLGRAPH=1 for call graphs) of the
                      gateway during the measured window (needs `perf`)
";

/// A benchmark figure: one mode, one size, through the gateway and/or direct.
#[derive(Debug, Clone)]
struct Figure {
    name: String,
    plan: LoadPlan,
    direct: bool,
    relay: bool,
}

struct Options {
    figures: Vec<Figure>,
    find_max: Option<(usize, usize, usize, LoadPlan)>,
    repeat: usize,
    smoke: bool,
    gateway_bin: Option<PathBuf>,
    json: Option<PathBuf>,
    users: Option<usize>,
    /// Record a `perf` profile of the gateway during each window, to this file.
    perf: Option<PathBuf>,
    micro: bool,
    /// The fake thoth's final-result period, in frames (realtime profile).
    final_every: u64,
    /// `--find-max` also finds the lean relay's maximum.
    find_max_relay: bool,
}

fn plan_for(mode: Mode, profile: Profile, sessions: Option<usize>, seconds: f64) -> LoadPlan {
    let sessions = sessions.unwrap_or(match mode {
        Mode::Sparse => 10_000,
        Mode::Flood => 100,
        _ => 1000,
    });
    LoadPlan {
        mode,
        profile,
        sessions,
        seconds,
        ramp: Duration::from_secs_f64((sessions as f64 / 1000.0).max(1.0)),
        warmup: Duration::from_secs(1),
        client_threads: 2,
        window: 32,
        concurrency: 64,
    }
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut mode = Mode::Realtime;
    let mut profile = Profile::Realtime;
    let mut relay = true;
    let mut sessions = None;
    let mut seconds = 10.0;
    let mut ramp = None;
    let mut warmup = None;
    let mut threads = None;
    let mut window = None;
    let mut concurrency = None;
    let mut direct = true;
    let mut find_max = false;
    let (mut from, mut to, mut step) = (1000, 8000, 500);
    let mut suite = false;
    let mut opts = Options {
        figures: Vec::new(),
        find_max: None,
        repeat: 1,
        smoke: false,
        gateway_bin: None,
        json: None,
        users: None,
        perf: None,
        micro: false,
        final_every: thoth::DEFAULT_FINAL_EVERY_FRAMES,
        find_max_relay: false,
    };
    let mut it = args.iter();
    let num = |v: Option<&String>, name: &str| -> Result<f64, String> {
        v.ok_or(format!("{name} needs a value"))?
            .parse::<f64>()
            .map_err(|e| format!("{name}: {e}"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--mode" => {
                let m = it.next().ok_or("--mode needs a value")?;
                mode = Mode::parse(m).ok_or(format!("unknown mode {m:?}"))?;
            }
            "--profile" => {
                let p = it.next().ok_or("--profile needs a value")?;
                profile = Profile::parse(p).ok_or(format!("unknown profile {p:?}"))?;
            }
            "--no-relay" => relay = false,
            "--sessions" => sessions = Some(num(it.next(), arg)? as usize),
            "--seconds" => seconds = num(it.next(), arg)?,
            "--ramp" => ramp = Some(Duration::from_secs_f64(num(it.next(), arg)?)),
            "--warmup" => warmup = Some(Duration::from_secs_f64(num(it.next(), arg)?)),
            "--client-threads" => threads = Some(num(it.next(), arg)? as usize),
            "--window" => window = Some(num(it.next(), arg)? as usize),
            "--concurrency" => concurrency = Some(num(it.next(), arg)? as usize),
            "--users" => opts.users = Some(num(it.next(), arg)?.max(1.0) as usize),
            "--no-direct" => direct = false,
            "--final-every" => opts.final_every = (num(it.next(), arg)? as u64).max(1),
            "--find-max" => find_max = true,
            "--from" => from = num(it.next(), arg)? as usize,
            "--to" => to = num(it.next(), arg)? as usize,
            "--step" => step = (num(it.next(), arg)? as usize).max(1),
            "--suite" => suite = true,
            "--micro" => opts.micro = true,
            "--repeat" => opts.repeat = (num(it.next(), arg)? as usize).max(1),
            "--smoke" => opts.smoke = true,
            "--gateway-bin" => {
                opts.gateway_bin = Some(it.next().ok_or("--gateway-bin needs a path")?.into())
            }
            "--perf" => opts.perf = Some(it.next().ok_or("--perf needs a path")?.into()),
            "--json" => opts.json = Some(it.next().ok_or("--json needs a path")?.into()),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if !(seconds > 0.0 && seconds <= 3600.0) {
        return Err("--seconds must be in (0, 3600]".into());
    }
    let customize = |mut plan: LoadPlan| {
        if let Some(r) = ramp {
            plan.ramp = r;
        }
        if let Some(w) = warmup {
            plan.warmup = w;
        }
        if let Some(t) = threads {
            plan.client_threads = t.clamp(1, 64);
        }
        if let Some(w) = window {
            plan.window = w.clamp(1, 4096);
        }
        if let Some(c) = concurrency {
            plan.concurrency = c.clamp(1, 4096);
        }
        plan
    };
    let figure = |name: &str, plan: LoadPlan, direct: bool, with_relay: bool| Figure {
        name: name.to_string(),
        plan,
        direct,
        relay: with_relay && relay,
    };
    if opts.smoke {
        // The relay is left out: the smoke run checks the gateway, briefly.
        let mut plan = customize(plan_for(Mode::Realtime, Profile::Realtime, Some(20), 2.0));
        plan.ramp = Duration::from_millis(200);
        plan.warmup = Duration::from_millis(300);
        opts.figures.push(figure("smoke", plan, true, false));
        // 4 s: each session's audio crosses one ~3 s final window.
        let mut plan = customize(plan_for(Mode::Realtime, Profile::Chronus, Some(20), 4.0));
        plan.ramp = Duration::from_millis(200);
        plan.warmup = Duration::from_millis(300);
        opts.figures
            .push(figure("smoke-chronus", plan, true, false));
    } else if suite {
        for (name, mode, suite_profile, n, with_direct, with_relay) in [
            (
                "chronus-1000",
                Mode::Realtime,
                Profile::Chronus,
                1000,
                true,
                true,
            ),
            (
                "chronus-3000",
                Mode::Realtime,
                Profile::Chronus,
                3000,
                true,
                true,
            ),
            (
                "chronus-5000",
                Mode::Realtime,
                Profile::Chronus,
                5000,
                false,
                true,
            ),
            (
                "realtime-250",
                Mode::Realtime,
                Profile::Realtime,
                250,
                true,
                true,
            ),
            (
                "realtime-500",
                Mode::Realtime,
                Profile::Realtime,
                500,
                true,
                false,
            ),
            (
                "realtime-1000",
                Mode::Realtime,
                Profile::Realtime,
                1000,
                true,
                true,
            ),
            (
                "realtime-3000",
                Mode::Realtime,
                Profile::Realtime,
                3000,
                true,
                false,
            ),
            (
                "sparse-10000",
                Mode::Sparse,
                Profile::Realtime,
                10_000,
                false,
                false,
            ),
            (
                "flood-100",
                Mode::Flood,
                Profile::Realtime,
                100,
                true,
                false,
            ),
            ("connect", Mode::Connect, Profile::Realtime, 0, false, false),
        ] {
            let plan = customize(plan_for(mode, suite_profile, Some(n), seconds));
            opts.figures
                .push(figure(name, plan, with_direct && direct, with_relay));
        }
    } else if find_max {
        let plan = customize(plan_for(Mode::Realtime, profile, None, seconds));
        opts.find_max = Some((from, to.max(from), step, plan));
        opts.find_max_relay = relay;
    } else {
        let plan = customize(plan_for(mode, profile, sessions, seconds));
        let name = match (mode, profile) {
            (Mode::Connect, _) => "connect".to_string(),
            (Mode::Realtime, Profile::Chronus) => format!("chronus-{}", plan.sessions),
            (_, Profile::Chronus) => format!("chronus-{}-{}", mode.as_str(), plan.sessions),
            _ => format!("{}-{}", mode.as_str(), plan.sessions),
        };
        let direct = direct && mode != Mode::Connect;
        opts.figures
            .push(figure(&name, plan, direct, mode != Mode::Connect));
    }
    Ok(opts)
}

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
    let own_cpu_before = gateway::own_cpu_seconds();
    let result = load::run(plan, &target, timeline);
    let own_cpu = gateway::own_cpu_seconds() - own_cpu_before;
    let window = sampler.join().map_err(|_| "sampler panicked")?;
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
            .saturating_sub(Duration::from_millis(5)),
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
        find_max = Some(report::find_max(from, to, step, plan, |figure_plan| {
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
