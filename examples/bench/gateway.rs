//! The gateway under test, as a separate process (the real binary), and the
//! `/proc` figures read from it: CPU seconds and resident memory.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The HS256 secret of the benchmark's tokens (never a real one).
pub const JWT_SECRET: &str = "bench-secret-bench-secret-bench-secret-0123";
const ENCRYPTION_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
/// How long the gateway may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long it may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// `MAX_SESSIONS` and `MAX_SESSIONS_PER_USER` unless `--max-sessions` is
/// given: no cap of the gateway's own gets in the load's way.
const UNCAPPED_SESSIONS: usize = 1_000_000;
const BYTES_PER_MIB: u64 = 1024 * 1024;

/// Settings the load and the command line decide.
pub struct GatewaySettings {
    pub max_audio_rate: f64,
    /// `MAX_SESSIONS`; [`UNCAPPED_SESSIONS`] when `None`.
    pub max_sessions: Option<usize>,
    /// `AUDIO_BUFFER_BUDGET_BYTES` = this many MiB; the gateway's default when `None`.
    pub audio_budget_mib: Option<u64>,
}

/// A running gateway process; stopped (SIGTERM, then SIGKILL) when dropped.
pub struct GatewayProcess {
    pub addr: SocketAddr,
    /// The admin listener (`/metrics`); the lean relay has none.
    pub admin_addr: Option<SocketAddr>,
    child: Child,
    dir: PathBuf,
}

/// The release binary next to this example's own executable
/// (`target/release/examples/bench` → `target/release/chronus-gateway`).
pub fn default_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my executable: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("unexpected executable location")?;
    let bin = profile_dir.join("chronus-gateway");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it first (`cargo build --release --bin chronus-gateway`) or pass --gateway-bin PATH",
            bin.display()
        ))
    }
}

/// A port that was free a moment ago (the gateway binds it right after).
fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

impl GatewayProcess {
    pub fn start(
        binary: &Path,
        thoth_url: &str,
        settings: &GatewaySettings,
    ) -> Result<GatewayProcess, String> {
        let addr = free_port().map_err(|e| e.to_string())?;
        let admin_addr = free_port().map_err(|e| e.to_string())?;
        let dir = std::env::temp_dir().join(format!("chronus-bench-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("gateway.log")).map_err(|e| e.to_string())?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        // The child runs in its own directory: a relative path must not follow it.
        let binary = &binary
            .canonicalize()
            .map_err(|e| format!("cannot find {}: {e}", binary.display()))?;
        let mut command = Command::new(binary);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to
        // SIGTERM the gateway if this thread dies (e.g. the bench is killed),
        // so no gateway outlives its benchmark.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        command
            .arg("serve")
            // Its own directory: no stray `.env` is read, the SQLite file lands here.
            .current_dir(&dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("BIND_ADDR", addr.to_string())
            .env("ADMIN_BIND_ADDR", admin_addr.to_string())
            .env("JWT_SECRET", JWT_SECRET)
            .env("API_KEY_ENCRYPTION_KEY", ENCRYPTION_KEY)
            .env("THOTH_WS_URL", thoth_url)
            .env("THOTH_PROTOCOL", "mux")
            .env("DATABASE_URL", dir.join("gateway.db"))
            .env(
                "MAX_SESSIONS",
                settings
                    .max_sessions
                    .unwrap_or(UNCAPPED_SESSIONS)
                    .to_string(),
            )
            .env("MAX_SESSIONS_PER_USER", UNCAPPED_SESSIONS.to_string())
            .env("MAX_AUDIO_RATE", settings.max_audio_rate.to_string())
            .env("IDLE_TIMEOUT_SECS", "3600")
            .env("THOTH_IDLE_CLOSE_SECS", "3600")
            .env("SHUTDOWN_GRACE_SECS", "1")
            .env("RUST_LOG", "warn");
        // After `env_clear` above, like every other setting.
        if let Some(mib) = settings.audio_budget_mib {
            command.env(
                "AUDIO_BUFFER_BUDGET_BYTES",
                (mib * BYTES_PER_MIB).to_string(),
            );
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut gateway = GatewayProcess {
            addr,
            admin_addr: Some(admin_addr),
            child,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = gateway.child.try_wait() {
                return Err(format!(
                    "gateway exited at start ({status}):\n{}",
                    gateway.log_tail()
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                && TcpStream::connect_timeout(&admin_addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(gateway);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "gateway did not listen within {START_TIMEOUT:?}:\n{}",
                    gateway.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The lean reference relay (`bench --lean-relay`, this very executable)
    /// in front of `thoth_url`, as a process of its own like the gateway.
    pub fn start_lean_relay(thoth_url: &str) -> Result<GatewayProcess, String> {
        let addr = free_port().map_err(|e| e.to_string())?;
        let dir = std::env::temp_dir().join(format!("chronus-bench-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("gateway.log")).map_err(|e| e.to_string())?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut command = Command::new(&exe);
        // SAFETY: as in `start`: the relay dies with its benchmark.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command
            .arg(crate::lean_relay::RELAY_FLAG)
            .current_dir(&dir)
            .env("BIND_ADDR", addr.to_string())
            .env("THOTH_WS_URL", thoth_url)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot start the lean relay: {e}"))?;
        let mut relay = GatewayProcess {
            addr,
            admin_addr: None,
            child,
            dir,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = relay.child.try_wait() {
                return Err(format!(
                    "lean relay exited at start ({status}):\n{}",
                    relay.log_tail()
                ));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(relay);
            }
            if Instant::now() > deadline {
                return Err("the lean relay did not listen in time".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines the gateway logged (warnings and errors only).
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.join("gateway.log")) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Lines the gateway logged at all (it runs with RUST_LOG=warn).
    pub fn log_lines(&self) -> usize {
        std::fs::read_to_string(self.dir.join("gateway.log"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        // SIGTERM to our own child, by its pid; SIGKILL if it does not stop.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self.dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// CPU seconds (user + system) a process has used so far, all threads.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after `) `.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Resident memory of a process: (current VmRSS, peak VmHWM), in KiB.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// This process's own CPU seconds (load generator + fake thoth).
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The 1-minute load average, from `/proc/loadavg`.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Raises this process's open-file limit to its hard limit (the gateway,
/// started afterwards, inherits it). Returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: get/setrlimit write/read the struct we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur
    }
}

/// Starts `perf record` on the gateway (our child, by pid): cpu-clock
/// samples, since hardware counters may be missing in a VM. Flat by default:
/// DWARF call graphs copy each sampled stack and slow the gateway enough to
/// change what is measured; `BENCH_PERF_CALLGRAPH=1` asks for them anyway
/// (at a lower rate).
pub fn start_perf(pid: u32, path: &Path) -> Option<Child> {
    let call_graph = std::env::var_os("BENCH_PERF_CALLGRAPH").is_some_and(|v| v == "1");
    let mut command = Command::new("perf");
    command.args(["record", "-e", "cpu-clock"]);
    if call_graph {
        command.args(["-F", "199", "--call-graph", "dwarf,16384"]);
    } else {
        command.args(["-F", "999"]);
    }
    let child = command
        .arg("-o")
        .arg(path)
        .args(["-p", &pid.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match child {
        Ok(child) => Some(child),
        Err(e) => {
            eprintln!("bench: cannot start perf: {e}");
            None
        }
    }
}

/// Stops `perf record` with SIGINT (it then writes its file), bounded.
pub fn stop_perf(mut perf: Child) {
    // SAFETY: signals our own child by its pid.
    unsafe {
        libc::kill(perf.id() as libc::pid_t, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = perf.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = perf.kill();
    let _ = perf.wait();
}
