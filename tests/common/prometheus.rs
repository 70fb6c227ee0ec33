//! A real Prometheus (Debian's `prometheus`, 2.42) for the tests: its own
//! data directory in a temporary directory, a loopback port, a 1 s scrape
//! interval. Killed on drop, even when a test panics.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// Scrape and rule-evaluation interval of the test Prometheus.
pub const SCRAPE_INTERVAL: &str = "1s";
/// The job name the gateway's admin listener is scraped under (as in
/// deploy/prometheus.yml).
pub const GATEWAY_JOB: &str = "chronus-gateway";
/// How long Prometheus may take to become ready.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Pause between two queries of a poll.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// Where Debian installs the binaries, for a PATH that lacks it.
const FALLBACK_DIRS: &[&str] = &["/usr/bin", "/usr/local/bin"];

/// `name` on PATH or in a fallback directory.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(FALLBACK_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `name`, or `None` after a loud SKIP note. Under CI a missing tool is a
/// failure, not a skip.
pub fn tool_or_skip(name: &str, test: &str) -> Option<PathBuf> {
    let found = find_tool(name);
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but no `{name}` binary was found: run scripts/install-test-deps.sh first"
        );
        let note = format!(
            "\n**********************************************************************\n\
             SKIP {test}: no `{name}` binary (Debian package `prometheus`).\n\
             Install it with `sudo bash scripts/install-test-deps.sh` to run this test.\n\
             **********************************************************************\n"
        );
        // Straight to stderr: the harness captures the output of a passing test.
        let _ = std::io::stderr().write_all(note.as_bytes());
    }
    found
}

/// The repository's copy of `path`.
pub fn repo_path(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A running Prometheus; stopped and its directory removed on drop.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    /// `127.0.0.1:port` of its HTTP API.
    pub addr: String,
    http: awc::Client,
}

impl Prometheus {
    /// Starts `binary` scraping `targets` (host:port of admin listeners) under
    /// the job [`GATEWAY_JOB`], with `rule_files` loaded, and waits until it
    /// is ready.
    pub async fn start(binary: &Path, targets: &[String], rule_files: &[PathBuf]) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("chronus-prometheus-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("data")).expect("temp dir");
        let config = serde_json::json!({
            "global": {
                "scrape_interval": SCRAPE_INTERVAL,
                "evaluation_interval": SCRAPE_INTERVAL,
            },
            "rule_files": rule_files,
            "scrape_configs": [{
                "job_name": GATEWAY_JOB,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": targets}],
            }],
        });
        // JSON is YAML: no YAML writer needed.
        std::fs::write(dir.join("prometheus.yml"), config.to_string()).expect("config");
        let addr = free_loopback_addr();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            // Console templates are not needed, and Debian's paths may be absent.
            .arg("--web.console.templates=/nonexistent")
            .arg("--web.console.libraries=/nonexistent")
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let http = awc::Client::builder()
            .timeout(Duration::from_secs(10))
            .finish();
        let mut prometheus = Prometheus {
            child,
            dir,
            addr,
            http,
        };
        prometheus.wait_ready().await;
        prometheus
    }

    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + READY_WITHIN;
        let url = format!("http://{}/-/ready", self.addr);
        loop {
            if let Ok(response) = self.http.get(url.as_str()).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}): {}", self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "prometheus not ready within {READY_WITHIN:?}: {}",
                self.log()
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Prometheus's own log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query: its `data.result` (a vector's samples).
    pub async fn query(&self, promql: &str) -> Vec<Value> {
        let url = format!("http://{}/api/v1/query", self.addr);
        let mut response = self
            .http
            .get(url.as_str())
            .query(&[("query", promql)])
            .expect("query string")
            .send()
            .await
            .unwrap_or_else(|e| panic!("query {promql:?}: {e}"));
        let body: Value = response
            .json()
            .limit(16 * 1024 * 1024)
            .await
            .unwrap_or_else(|e| panic!("query {promql:?}: bad JSON: {e}"));
        assert_eq!(body["status"], "success", "query {promql:?}: {body}");
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The `data` of an API endpoint answering `GET path` (e.g. `/api/v1/rules`).
    pub async fn api(&self, path: &str) -> Value {
        let url = format!("http://{}{path}", self.addr);
        let mut response = self
            .http
            .get(url.as_str())
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let body: Value = response
            .json()
            .limit(16 * 1024 * 1024)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: bad JSON: {e}"));
        assert_eq!(body["status"], "success", "GET {path}: {body}");
        body["data"].clone()
    }

    /// Queries until `check` accepts the result or `within` passes; panics
    /// with the last result and `what` on the deadline.
    pub async fn wait_for(
        &self,
        what: &str,
        promql: &str,
        within: Duration,
        check: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let result = self.query(promql).await;
            if check(&result) {
                return result;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: {promql} did not hold within {within:?}; last result {}",
                Value::Array(result)
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Waits until the single-series `promql` equals `expected`.
    pub async fn wait_value(&self, what: &str, promql: &str, expected: f64, within: Duration) {
        self.wait_for(what, promql, within, |r| {
            r.len() == 1 && sample_value(&r[0]) == expected
        })
        .await;
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A sample's value (`"value": [time, "1.5"]`); NaN when it has none.
pub fn sample_value(sample: &Value) -> f64 {
    sample["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A loopback address no one listens on right now. Prometheus cannot report
/// the port it picked for `:0`, so the port is chosen here (and the tiny
/// window in which another process could take it is accepted).
fn free_loopback_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").to_string()
}
