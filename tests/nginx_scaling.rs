//! Scaling out as docs/deployment.md describes it: `deploy/nginx.conf`,
//! rendered with loopback ports, in front of two real gateways sharing one
//! dev thoth. Sessions opened through nginx are spread across both replicas,
//! each replica keeps its own shared thoth socket, and every session gets
//! exactly its own transcriptions.
//!
//! Needs an `nginx` binary (`scripts/install-test-deps.sh` installs it):
//! without one the test prints a SKIP note, or fails when `CI` is set.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chronus_gateway::devthoth::{describe_audio, DevThoth, DevThothOptions};
use common::harness::Harness;
use common::*;
use futures_util::future::join_all;
use serde_json::{json, Value};

/// The example configuration under test.
const NGINX_CONF: &str = "deploy/nginx.conf";
/// Where Debian and the nginx.org packages put the binary, when PATH lacks it.
const NGINX_FALLBACK_PATHS: &[&str] = &["/usr/sbin/nginx", "/usr/local/nginx/sbin/nginx"];
/// Sessions opened through nginx (an even number: least_conn splits them evenly).
const SESSIONS: usize = 6;
/// How long nginx may take to start.
const NGINX_PATIENCE: Duration = Duration::from_secs(10);
const TRANSCRIBE: &str = "/api/audio/transcribe";

// ---- finding and rendering ----------------------------------------------------

fn find_nginx() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("nginx"));
    on_path
        .chain(NGINX_FALLBACK_PATHS.iter().map(PathBuf::from))
        .find(|candidate| candidate.is_file())
}

/// The nginx binary, or `None` after a loud SKIP note. Under CI a missing
/// nginx is a failure, not a skip.
fn nginx_or_skip() -> Option<PathBuf> {
    let found = find_nginx();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but no nginx binary was found: run scripts/install-test-deps.sh first"
        );
        let note = format!(
            "\n**********************************************************************\n\
             SKIP nginx_scaling: no `nginx` binary on PATH or in {NGINX_FALLBACK_PATHS:?}.\n\
             Install it with `sudo bash scripts/install-test-deps.sh` to run this test.\n\
             **********************************************************************\n"
        );
        // Straight to stderr: the test harness captures eprintln! of a
        // passing test, and this note must be seen.
        let _ = std::io::stderr().write_all(note.as_bytes());
    }
    found
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// Where the rendered copy puts what the example sends to system paths.
struct RenderTarget<'a> {
    dir: &'a Path,
    listen: SocketAddr,
    replicas: &'a [SocketAddr],
    as_root: bool,
}

/// `deploy/nginx.conf` with loopback ports and every path inside `dir`:
/// a directive-aware rewrite of the lines the example keeps one per line
/// (`user`, `pid`, `error_log`, `worker_processes`, `access_log`, `listen`,
/// the upstream's `server` lines). Everything else (the WebSocket proxying
/// under test) is kept verbatim. Panics if a rewritten directive is missing,
/// so the example cannot silently drift from what this test exercises.
fn render_nginx_conf(example: &str, target: &RenderTarget<'_>) -> String {
    let dir = target.dir.display();
    let mut out = vec![
        "# Rendered by tests/nginx_scaling.rs from deploy/nginx.conf.".to_string(),
        "daemon off;".to_string(),
    ];
    if target.as_root {
        // Workers would otherwise run as `nobody`, who cannot use `dir`.
        out.push("user root;".to_string());
    }
    let mut blocks: Vec<String> = Vec::new();
    let mut rewritten: Vec<&str> = Vec::new();
    let mut upstream_servers = 0;
    let mut listens = 0;
    for line in example.lines() {
        let code = line.split('#').next().unwrap_or_default().trim();
        let directive = code.split_whitespace().next().unwrap_or_default();
        let context = blocks.last().map(String::as_str).unwrap_or("main");
        let replaced: Option<Vec<String>> = match (context, directive) {
            ("main", "user") => Some(vec![]),
            ("main", "pid") => Some(vec![format!("pid {dir}/nginx.pid;")]),
            ("main", "error_log") => Some(vec![format!("error_log {dir}/error.log info;")]),
            ("main", "worker_processes") => Some(vec!["worker_processes 1;".to_string()]),
            ("http", "access_log") => {
                let format = code
                    .trim_end_matches(';')
                    .split_whitespace()
                    .nth(2)
                    .unwrap_or("combined");
                Some(vec![format!("access_log {dir}/access.log {format};")])
            }
            ("upstream", "server") => {
                upstream_servers += 1;
                if upstream_servers == 1 {
                    // Keep the example's parameters (max_fails, …) on each replica.
                    let params: Vec<&str> = code
                        .trim_end_matches(';')
                        .split_whitespace()
                        .skip(2)
                        .collect();
                    Some(
                        target
                            .replicas
                            .iter()
                            .map(|addr| format!("server {addr} {};", params.join(" ")))
                            .collect(),
                    )
                } else {
                    Some(vec![])
                }
            }
            ("server", "listen") => {
                listens += 1;
                Some(if listens == 1 {
                    vec![format!("listen {};", target.listen)]
                } else {
                    vec![]
                })
            }
            _ => None,
        };
        match replaced {
            Some(lines) => {
                rewritten.push(directive);
                out.extend(lines);
            }
            None => out.push(line.to_string()),
        }
        if code.ends_with('{') {
            blocks.push(directive.to_string());
            if directive == "http" {
                // Debian's compiled-in temp paths live under /var/lib/nginx.
                for temp in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
                    out.push(format!("    {temp}_temp_path {dir}/{temp}_temp;"));
                }
            }
        } else if code == "}" {
            blocks.pop();
        }
    }
    for needed in [
        "user",
        "pid",
        "error_log",
        "worker_processes",
        "access_log",
        "server",
        "listen",
    ] {
        assert!(
            rewritten.contains(&needed),
            "{NGINX_CONF} no longer has the `{needed}` directive this test rewrites"
        );
    }
    assert!(
        upstream_servers >= 2,
        "{NGINX_CONF} should show several replicas"
    );
    assert!(blocks.is_empty(), "{NGINX_CONF}: unbalanced braces");
    out.join("\n") + "\n"
}

fn example_conf() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(NGINX_CONF);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {NGINX_CONF}: {e}"))
}

/// A loopback port nothing listens on right now.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

// ---- running nginx -------------------------------------------------------------

/// A running nginx: a process of the test's [`Harness`], so it is stopped
/// (TERM, then KILL) even when the test panics; its folder goes with the
/// harness unless the test failed.
struct Nginx {
    dir: PathBuf,
}

impl Nginx {
    fn start(
        harness: &mut Harness,
        nginx: &Path,
        dir: &Path,
        conf: &Path,
        listen: SocketAddr,
    ) -> Nginx {
        harness.keep_if_failed(dir);
        let stderr = std::fs::File::create(dir.join("stderr.log")).expect("stderr log");
        let pid = harness.spawn(
            "nginx",
            Command::new(nginx)
                .args(nginx_args(dir, conf))
                .stdout(Stdio::null())
                .stderr(stderr),
        );
        let proxy = Nginx {
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + NGINX_PATIENCE;
        while TcpStream::connect(listen).is_err() {
            if let Ok(Some(status)) = harness.child(pid).try_wait() {
                panic!("nginx exited with {status}: {}", proxy.logs());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {listen}: {}",
                proxy.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    fn logs(&self) -> String {
        ["stderr.log", "error.log"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
                format!("\n--- {name} ---\n{text}")
            })
            .collect()
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }
}

fn nginx_args(dir: &Path, conf: &Path) -> Vec<String> {
    vec![
        "-p".into(),
        format!("{}/", dir.display()),
        "-e".into(),
        dir.join("error.log").display().to_string(),
        "-c".into(),
        conf.display().to_string(),
    ]
}

// ---- the tests -------------------------------------------------------------------

/// Checks what makes WebSockets work through the example, without nginx.
#[test]
fn the_example_proxies_websockets_without_buffering_or_short_timeouts() {
    let conf = example_conf();
    let directives: Vec<String> = conf
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim())
        .filter(|l| !l.is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    let has = |wanted: &str| directives.iter().any(|d| d == wanted);
    for wanted in [
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_buffering off;",
        "proxy_pass http://chronus_gateway;",
    ] {
        assert!(has(wanted), "{NGINX_CONF} lacks `{wanted}`");
    }
    assert!(
        has("least_conn;") || directives.iter().any(|d| d.starts_with("hash ")),
        "balances with least_conn or hash"
    );
    for timeout in ["proxy_read_timeout", "proxy_send_timeout"] {
        let secs: u64 = directives
            .iter()
            .find_map(|d| d.strip_prefix(&format!("{timeout} ")))
            .and_then(|v| v.trim_end_matches(';').strip_suffix('s'))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{NGINX_CONF} sets {timeout} in seconds"));
        assert!(secs >= 600, "{timeout} {secs}s would cut quiet sessions");
    }
    // Tokens may travel in the query string: the access log must not show it.
    let log_format: String = conf
        .split("log_format")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .expect("a log_format")
        .to_string();
    for leaky in [
        "$request ",
        "$request\"",
        "$request_uri",
        "$args",
        "$query_string",
    ] {
        assert!(!log_format.contains(leaky), "log_format logs {leaky}");
    }
}

/// What the dev thoth says for `seconds` whole seconds of constant `level`.
fn expected_finals(level: f32, whole_seconds: u64) -> Vec<String> {
    let second = vec![level; 16_000];
    (0..whole_seconds)
        .map(|i| describe_audio(i, &second))
        .collect()
}

#[actix_rt::test]
async fn sessions_through_nginx_spread_across_two_replicas_each_with_its_own_thoth_socket() {
    let Some(nginx) = nginx_or_skip() else {
        return;
    };
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let replicas = [
        start_gateway(&base_env(&thoth.url())).await,
        start_gateway(&base_env(&thoth.url())).await,
    ];

    let mut harness = Harness::new();
    let dir = std::env::temp_dir().join(format!("chronus-nginx-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let listen = free_port();
    let replica_addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.public_addr).collect();
    let rendered = render_nginx_conf(
        &example_conf(),
        &RenderTarget {
            dir: &dir,
            listen,
            replicas: &replica_addrs,
            as_root: running_as_root(),
        },
    );
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, &rendered).unwrap();

    let check = Command::new(&nginx)
        .arg("-t")
        .args(nginx_args(&dir, &conf))
        .output()
        .expect("nginx -t runs");
    assert!(
        check.status.success(),
        "nginx -t rejects the rendered {NGINX_CONF}:\n{}\n--- rendered ---\n{rendered}",
        String::from_utf8_lossy(&check.stderr)
    );
    let proxy = Nginx::start(&mut harness, &nginx, &dir, &conf, listen);

    // Sessions open one after another through nginx and stay open.
    let url = format!("ws://{listen}{TRANSCRIBE}");
    let mut clients = Vec::new();
    for i in 0..SESSIONS {
        let token = token_for(&format!("scaled-{i}"));
        let mut client = connect(&url, Auth::Query(&token), None).await.client;
        let ready = client.expect_type("ready").await;
        assert_eq!(ready["provider"], "thoth");
        clients.push(client);
    }

    // Each replica reports only its own sessions; together they hold all.
    let mut counts = Vec::new();
    for replica in &replicas {
        let report = pool_report(replica).await;
        let endpoint = &report["thoth"][0];
        assert_eq!(endpoint["state"], "open");
        let count = endpoint["refCount"].as_u64().unwrap();
        assert_eq!(
            endpoint["sessionIds"].as_array().unwrap().len() as u64,
            count
        );
        assert_eq!(report["sessionsOpen"].as_u64(), Some(count));
        counts.push(count);
    }
    assert_eq!(counts.iter().sum::<u64>(), SESSIONS as u64, "{counts:?}");
    assert!(
        counts.iter().all(|&c| c >= 1),
        "both replicas serve sessions: {counts:?}"
    );
    assert!(
        counts[0].abs_diff(counts[1]) <= 1,
        "least_conn balances: {counts:?}"
    );
    assert_eq!(
        thoth.stats().connections_accepted(),
        2,
        "one shared thoth socket per replica"
    );
    assert_eq!(thoth.stats().connections_open(), 2);

    // Every session streams its own audio through nginx and gets exactly
    // its own transcriptions back.
    let sessions = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| async move {
            let level = (i as f32 + 1.0) / 16.0;
            for frame in f32_audio(level, 2.0).chunks(1280) {
                client.send_binary(frame.to_vec()).await;
            }
            client.send_json(json!({"type": "end"})).await;
            let (messages, close) = client.until_close(Duration::from_secs(20)).await;
            (i, level, messages, close)
        });
    for (i, level, messages, close) in join_all(sessions).await {
        let finals: Vec<String> = messages
            .iter()
            .filter(|m| m["type"] == "transcription")
            .map(|m| m["data"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(finals, expected_finals(level, 2), "session {i}");
        let done: &Value = messages.last().unwrap();
        assert_eq!(done["type"], "done", "session {i}");
        assert_eq!(done["data"], finals.join(" "), "session {i}");
        assert_eq!(close, Some(1000), "session {i}");
    }
    assert_eq!(thoth.stats().mux_sessions_started(), SESSIONS as u64);

    for replica in &replicas {
        assert!(
            eventually(Duration::from_secs(3), || async {
                ref_count(replica).await == 0
            })
            .await,
            "refCount falls to 0 on {}",
            replica.admin_addr
        );
    }

    // nginx logged every session, and never a token.
    assert!(
        eventually(Duration::from_secs(3), || async {
            proxy.access_log().matches(TRANSCRIBE).count() == SESSIONS
        })
        .await,
        "access log:\n{}",
        proxy.access_log()
    );
    assert!(!proxy.access_log().contains("token="));

    // nginx goes first, then the replicas it proxies to.
    drop(harness);
    for replica in replicas {
        replica.stop().await;
    }
    thoth.stop();
}

#[test]
fn rendering_rewrites_addresses_and_paths_but_keeps_the_proxying() {
    let dir = Path::new("/tmp/render-check");
    let replicas: Vec<SocketAddr> = vec![
        "127.0.0.1:1001".parse().unwrap(),
        "127.0.0.1:1002".parse().unwrap(),
    ];
    let rendered = render_nginx_conf(
        &example_conf(),
        &RenderTarget {
            dir,
            listen: "127.0.0.1:1000".parse().unwrap(),
            replicas: &replicas,
            as_root: false,
        },
    );
    assert!(rendered.contains("listen 127.0.0.1:1000;"));
    assert!(rendered.contains("server 127.0.0.1:1001 max_fails"));
    assert!(rendered.contains("server 127.0.0.1:1002 max_fails"));
    assert!(rendered.contains("pid /tmp/render-check/nginx.pid;"));
    assert!(rendered.contains("access_log /tmp/render-check/access.log chronus;"));
    assert!(!rendered.contains("gateway-1"));
    assert!(!rendered.contains("/var/log"));
    assert!(!rendered.contains("\nuser "));
    assert!(rendered.contains("proxy_set_header Upgrade $http_upgrade;"));
}
