//! One owner for everything a test starts outside its own process: child
//! processes (the gateway binary, nginx, a demo, an SDK script) and the
//! temporary files and folders they use. Dropping the [`Harness`] stops
//! every process (TERM, then KILL) and removes every path, so a test that
//! panics half-way leaves nothing running and nothing behind.
//!
//! ```ignore
//! let mut harness = Harness::builder(&thoth.url()).env("MAX_SESSIONS", "2").start();
//! let gateway = harness.gateway(); // the real binary, on 127.0.0.1:0
//! let pid = harness.spawn("nginx", Command::new("nginx").args(...));
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::base_env;
use super::process::GatewayProcess;

/// How long a process may take to exit after SIGTERM before it is killed.
pub const STOP_PATIENCE: Duration = Duration::from_secs(5);

/// A process the harness started.
struct Owned {
    name: String,
    child: Child,
}

/// Owns a test's processes and temporary paths; see the module docs.
#[derive(Default)]
pub struct Harness {
    gateways: Vec<GatewayProcess>,
    processes: Vec<Owned>,
    paths: Vec<PathBuf>,
    /// Removed like `paths`, but kept for inspection when the test fails.
    kept_if_failed: Vec<PathBuf>,
}

impl Harness {
    /// An empty harness, for tests that start their own processes.
    pub fn new() -> Harness {
        Harness::default()
    }

    /// A harness that will run the gateway binary with [`base_env`] for
    /// `thoth_url`, adjusted by the builder's calls.
    pub fn builder(thoth_url: &str) -> HarnessBuilder {
        HarnessBuilder {
            env: base_env(thoth_url),
        }
    }

    /// The gateway binary the builder started (the first, if several).
    pub fn gateway(&mut self) -> &mut GatewayProcess {
        self.gateways
            .first_mut()
            .expect("the harness was built with start()")
    }

    /// Starts another gateway binary with exactly `env`; its database file
    /// (when a path) is removed with the harness.
    pub fn start_gateway(&mut self, env: HashMap<String, String>) -> &mut GatewayProcess {
        if let Some(file) = env.get("DATABASE_URL").filter(|url| !url.contains("://")) {
            self.remove_later(file);
        }
        self.gateways.push(GatewayProcess::start(&env));
        self.gateways.last_mut().expect("just pushed")
    }

    /// Starts `command` (stdin closed) and owns it; returns its pid.
    pub fn spawn(&mut self, name: &str, command: &mut Command) -> u32 {
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let pid = child.id();
        self.processes.push(Owned {
            name: name.to_owned(),
            child,
        });
        pid
    }

    /// The owned process `pid`, e.g. to read its pipes.
    pub fn child(&mut self, pid: u32) -> &mut Child {
        &mut self.owned(pid).child
    }

    /// Stops the owned process `pid` now (TERM, then KILL after
    /// [`STOP_PATIENCE`]) and returns how it ended.
    pub fn stop(&mut self, pid: u32) -> Option<ExitStatus> {
        let index = self.processes.iter().position(|p| p.child.id() == pid)?;
        let mut owned = self.processes.swap_remove(index);
        stop_child(&mut owned.child)
    }

    /// A fresh, empty folder under the system temp dir, removed with the harness.
    pub fn temp_dir(&mut self, label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("chronus-{label}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        self.remove_later(&dir);
        dir
    }

    /// Removes `path` (a file, or a folder and its contents) with the harness.
    pub fn remove_later(&mut self, path: impl Into<PathBuf>) {
        self.paths.push(path.into());
    }

    /// Removes `path` with the harness, unless the test is failing: then it
    /// is kept (and named on stderr) so its logs can be read.
    pub fn keep_if_failed(&mut self, path: impl Into<PathBuf>) {
        self.kept_if_failed.push(path.into());
    }

    fn owned(&mut self, pid: u32) -> &mut Owned {
        self.processes
            .iter_mut()
            .find(|p| p.child.id() == pid)
            .unwrap_or_else(|| panic!("process {pid} is not owned by the harness"))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Gateways kill their own child on drop; stopping them first lets
        // the processes that talk to them (nginx, clients) go next.
        self.gateways.clear();
        for mut owned in self.processes.drain(..) {
            if stop_child(&mut owned.child).is_none() {
                eprintln!(
                    "harness: could not stop {} ({})",
                    owned.name,
                    owned.child.id()
                );
            }
        }
        if std::thread::panicking() {
            for path in self.kept_if_failed.drain(..) {
                eprintln!("harness: kept {} for inspection", path.display());
            }
        }
        let kept_if_failed = std::mem::take(&mut self.kept_if_failed);
        for path in self.paths.drain(..).chain(kept_if_failed) {
            // SQLite's side files go with the database.
            for suffix in ["", "-wal", "-shm", "-journal"] {
                let mut name = path.clone().into_os_string();
                name.push(suffix);
                let side = PathBuf::from(name);
                let _ = std::fs::remove_dir_all(&side).or_else(|_| std::fs::remove_file(&side));
            }
        }
    }
}

/// Builds a [`Harness`] around the gateway binary.
pub struct HarnessBuilder {
    env: HashMap<String, String>,
}

impl HarnessBuilder {
    /// Sets one environment variable of the gateway.
    pub fn env(mut self, name: &str, value: impl Into<String>) -> Self {
        self.env.insert(name.to_owned(), value.into());
        self
    }

    /// Leaves one of the base variables out.
    pub fn without(mut self, name: &str) -> Self {
        self.env.remove(name);
        self
    }

    /// The environment the gateway will get.
    pub fn env_map(&self) -> &HashMap<String, String> {
        &self.env
    }

    /// Starts the gateway binary and waits until it listens.
    pub fn start(self) -> Harness {
        let mut harness = Harness::new();
        harness.start_gateway(self.env);
        harness
    }
}

/// TERM, then KILL after [`STOP_PATIENCE`]; reaps the child. `None` if it
/// could not be waited for.
fn stop_child(child: &mut Child) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) with a pid this harness spawned and has not reaped
    // yet (so it cannot have been reused); no memory is involved.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_PATIENCE;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    child.wait().ok()
}
