//! The command line: usage, options, and the figures they ask for.

use std::path::PathBuf;
use std::time::Duration;

use crate::load::{LoadPlan, Mode};
use crate::profile::Profile;
use crate::thoth;

pub const USAGE: &str = "\
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
  --overload          an overload figure (overload-<profile>-<N>), either profile: offer N
                      sessions (say 2× the capacity); a session refused at capacity
                      (THOTH_BUSY, retryable, close 1013, before ready) counts as
                      refused, not as a failure, and stops; the admitted ones keep
                      every check. Reports admitted, refused, connect → refusal p99
                      and whether admitted p99 < 100 ms with zero failures.
                      Ramp: N/500 s, at least 2, unless --ramp. Any other figure
                      counts a refusal as a failure
  --audio-budget-mib M  start the gateway with AUDIO_BUFFER_BUDGET_BYTES = M MiB;
                      the report shows its peak RSS next to it
  --max-sessions N    start the gateway with MAX_SESSIONS = N (default 1000000)
  --smoke             20 real-time sessions for 2 s, 20 chronus-profile sessions for
                      4 s, through the gateway and direct; exit 1 on any failure
  --gateway-bin PATH  gateway binary (default: chronus-gateway next to this example)
  --json PATH         also write the results as JSON
  --perf PATH         record a perf profile (cpu-clock; BENCH_PERF_CALLGRAPH=1 for call graphs) of the
                      gateway during the measured window (needs `perf`)
";

/// A benchmark figure: one mode, one size, through the gateway and/or direct.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub plan: LoadPlan,
    pub direct: bool,
    pub relay: bool,
}

pub struct Options {
    pub figures: Vec<Figure>,
    pub find_max: Option<(usize, usize, usize, LoadPlan)>,
    pub repeat: usize,
    pub smoke: bool,
    pub gateway_bin: Option<PathBuf>,
    pub json: Option<PathBuf>,
    pub users: Option<usize>,
    /// Record a `perf` profile of the gateway during each window, to this file.
    pub perf: Option<PathBuf>,
    pub micro: bool,
    /// The fake thoth's final-result period, in frames (realtime profile).
    pub final_every: u64,
    /// `--find-max` also finds the lean relay's maximum.
    pub find_max_relay: bool,
    /// The gateway's `AUDIO_BUFFER_BUDGET_BYTES`, in MiB (its default when `None`).
    pub audio_budget_mib: Option<u64>,
    /// The gateway's `MAX_SESSIONS` (the bench's default when `None`).
    pub max_sessions: Option<usize>,
}

/// `--audio-budget-mib` at most (1 TiB): the product in bytes stays far from overflow.
const MAX_AUDIO_BUDGET_MIB: f64 = 1024.0 * 1024.0;
/// An overload figure's default ramp: N ÷ this many sessions per second…
const OVERLOAD_RAMP_SESSIONS_PER_S: f64 = 500.0;
/// …and at least this long, so the gateway's admission sees the load build up.
const OVERLOAD_MIN_RAMP: Duration = Duration::from_secs(2);

/// An overload figure's ramp unless `--ramp` says otherwise.
fn overload_ramp(sessions: usize) -> Duration {
    Duration::from_secs_f64(sessions as f64 / OVERLOAD_RAMP_SESSIONS_PER_S).max(OVERLOAD_MIN_RAMP)
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
        overload: false,
    }
}

pub fn parse_args(args: &[String]) -> Result<Options, String> {
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
    let mut overload = false;
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
        audio_budget_mib: None,
        max_sessions: None,
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
            "--overload" => overload = true,
            "--audio-budget-mib" => {
                let mib = num(it.next(), arg)?;
                if !(1.0..=MAX_AUDIO_BUDGET_MIB).contains(&mib) {
                    return Err(format!("{arg} must be in [1, {MAX_AUDIO_BUDGET_MIB}]"));
                }
                opts.audio_budget_mib = Some(mib as u64);
            }
            "--max-sessions" => opts.max_sessions = Some(num(it.next(), arg)?.max(1.0) as usize),
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
    if overload && (opts.smoke || suite || find_max || mode == Mode::Connect) {
        // Those figures measure capacity or admission: a refusal there is a failure.
        return Err("--overload is a figure of its own: not with --smoke, --suite, --find-max or --mode connect".into());
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
    } else if overload {
        let mut plan = plan_for(mode, profile, sessions, seconds);
        plan.overload = true;
        plan.ramp = overload_ramp(plan.sessions);
        let plan = customize(plan);
        let name = match mode {
            Mode::Realtime => format!("overload-{}-{}", profile.as_str(), plan.sessions),
            _ => format!(
                "overload-{}-{}-{}",
                profile.as_str(),
                mode.as_str(),
                plan.sessions
            ),
        };
        opts.figures.push(figure(&name, plan, direct, true));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Options, String> {
        parse_args(
            &args
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn an_overload_figure_is_named_for_its_profile_and_expects_refusals() {
        let opts = parse("--profile chronus --overload --sessions 10000 --no-direct --no-relay")
            .expect("valid options");
        let figure = &opts.figures[0];
        assert_eq!(figure.name, "overload-chronus-10000");
        assert!(figure.plan.overload);
        assert_eq!(figure.plan.ramp, Duration::from_secs(20));
        assert!(!figure.direct && !figure.relay);

        let realtime = parse("--overload --sessions 600").expect("valid options");
        assert_eq!(realtime.figures[0].name, "overload-realtime-600");
        assert_eq!(realtime.figures[0].plan.ramp, OVERLOAD_MIN_RAMP);
    }

    #[test]
    fn ramp_given_overrides_the_overload_default() {
        let opts = parse("--overload --sessions 10000 --ramp 5").expect("valid options");
        assert_eq!(opts.figures[0].plan.ramp, Duration::from_secs(5));
    }

    #[test]
    fn only_overload_figures_expect_refusals() {
        let normal = parse("--profile chronus --sessions 1000").expect("valid options");
        assert!(normal.figures.iter().all(|f| !f.plan.overload));
        let find_max = parse("--profile chronus --find-max").expect("valid options");
        assert!(!find_max.find_max.expect("find-max plan").3.overload);
        assert!(parse("--overload --find-max").is_err());
        assert!(parse("--overload --suite").is_err());
        assert!(parse("--overload --smoke").is_err());
    }

    #[test]
    fn budget_and_session_cap_reach_the_options() {
        let opts = parse("--audio-budget-mib 128 --max-sessions 4000").expect("valid options");
        assert_eq!(opts.audio_budget_mib, Some(128));
        assert_eq!(opts.max_sessions, Some(4000));
        assert!(parse("--audio-budget-mib 0").is_err());
    }
}
