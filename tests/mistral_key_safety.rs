//! The stored Mistral key, operations: it never leaks (responses, the SQLite
//! file, debug logs of the real binary), it survives an encryption-key
//! rotation, and the demo stores its own.

mod common;
mod fake_mistral;
#[path = "common/mistral.rs"]
mod mistral;

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::harness::Harness;
use common::*;
use fake_mistral::*;
use mistral::*;
use serde_json::{json, Value};

// ---- the key never leaks ---------------------------------------------------------

/// The gateway binary. `CHRONUS_GATEWAY_BIN` may name a copy of it, for a
/// target directory shared with other checkouts that may rebuild it meanwhile.
fn gateway_binary() -> String {
    std::env::var("CHRONUS_GATEWAY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_chronus-gateway").to_owned())
}

/// The real binary, configured from the environment, logging at debug level
/// to a captured stderr; a process of the test's [`Harness`], so it is
/// stopped even when the test panics.
struct GatewayProcess {
    pid: u32,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    public: String,
}

impl GatewayProcess {
    fn start(
        harness: &mut Harness,
        env: &HashMap<String, String>,
        dir: &std::path::Path,
    ) -> GatewayProcess {
        let pid = harness.spawn(
            "gateway",
            Command::new(gateway_binary())
                .arg("serve")
                .current_dir(dir)
                .envs(env)
                .env("RUST_LOG", "debug")
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        );
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut pipe = harness.child(pid).stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut process = GatewayProcess {
            pid,
            stderr,
            reader: Some(reader),
            public: String::new(),
        };
        for _ in 0..500 {
            let log = process.stderr.lock().unwrap().clone();
            if let Some(line) = log.lines().find(|l| l.contains("public listener on ")) {
                let addr = line.split("public listener on ").nth(1).unwrap();
                process.public = addr.split(',').next().unwrap().trim().to_owned();
                return process;
            }
            if let Ok(Some(status)) = harness.child(pid).try_wait() {
                panic!("gateway exited with {status}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gateway did not start:\n{}", process.stderr.lock().unwrap());
    }

    /// Stops the process and returns everything it logged.
    fn stop(mut self, harness: &mut Harness) -> String {
        harness.stop(self.pid);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let log = self.stderr.lock().unwrap().clone();
        log
    }
}

#[actix_rt::test]
async fn the_raw_key_never_appears_in_responses_the_sqlite_file_or_the_logs() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let mut harness = Harness::new();
    let dir = harness.temp_dir("leak");
    let db = dir.join("gateway.db");
    let mut env = env_for(fake.url());
    env.insert("DATABASE_URL".into(), db.display().to_string());
    env.insert("BIND_ADDR".into(), "127.0.0.1:0".into());
    let process = GatewayProcess::start(&mut harness, &env, &dir);
    let base = format!("http://{}", process.public);
    let token = token_for("leaky");
    let mut seen = Vec::new();

    // Settings: a refused key that carries the real one, then the real one.
    let bad = json!({"apiKey": format!("{KEY} oops")}).to_string();
    let reply = call(
        "PUT",
        format!("{base}/api/settings/api-keys/mistral"),
        Some(&token),
        Some(&bad),
    )
    .await;
    assert_eq!(reply.status, 400);
    seen.push(reply.body);
    let good = json!({"apiKey": KEY}).to_string();
    let reply = call(
        "PUT",
        format!("{base}/api/settings/api-keys/mistral"),
        Some(&token),
        Some(&good),
    )
    .await;
    assert_eq!(reply.status, 204);
    for path in ["/api/settings/api-keys", "/api/mistral/token"] {
        let reply = call("GET", format!("{base}{path}"), Some(&token), None).await;
        assert_eq!(reply.status, 200, "{path}");
        seen.push(reply.body);
    }

    // A whole chronus session and a native one: the key goes to Mistral only.
    let url = format!("ws://{}{TRANSCRIBE_MISTRAL}", process.public);
    let mut client = connect(&url, Auth::Query(&token), None).await.client;
    stream_then_end(&mut client, &f32_audio(0.25, 0.6)).await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    assert_eq!(close, Some(1000), "{messages:?}");
    seen.extend(messages.iter().map(Value::to_string));
    let mut native = RawClient::connect(&format!("ws://{}{NATIVE}", process.public), &token).await;
    seen.extend(native.texts_until("session.created").await);
    native.close().await;
    fake.wait_ended(1).await;
    assert_eq!(
        fake.connections()[0].authorization.as_deref(),
        Some(&*format!("Bearer {KEY}"))
    );

    let log = process.stop(&mut harness);
    assert!(log.contains("DEBUG"), "debug logging was captured:\n{log}");
    assert!(log.contains("stored mistral API key ending in"), "{log}");
    assert!(!log.contains(KEY), "the key is in the logs:\n{log}");
    for body in &seen {
        assert!(!body.contains(KEY), "a response carries the key: {body}");
    }
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        files += 1;
        assert!(
            !bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
            "{} holds the key in clear",
            path.display()
        );
    }
    assert!(files >= 1 && db.exists());
}

// ---- operations: key rotation and the demo ------------------------------------

/// Runs `chronus-gateway reencrypt-keys` with `env`; returns its stdout.
fn reencrypt_keys(env: &HashMap<String, String>, dir: &std::path::Path) -> String {
    let output = Command::new(gateway_binary())
        .arg("reencrypt-keys")
        .current_dir(dir)
        .envs(env)
        .output()
        .expect("gateway binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "reencrypt-keys failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[actix_rt::test]
async fn after_a_key_rotation_reencrypt_keys_moves_stored_keys_to_the_new_encryption_key() {
    const NEW_ENCRYPTION_KEY: &str = "bmV3LWtleS1uZXcta2V5LW5ldy1rZXktbmV3LWtleSE=";
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let mut harness = Harness::new();
    let dir = harness.temp_dir("rotate");
    let mut env = env_for(fake.url());
    env.insert(
        "DATABASE_URL".into(),
        dir.join("gateway.db").display().to_string(),
    );
    let gateway = start_gateway(&env).await;
    assert_eq!(put_key(&gateway, "rotor", KEY).await.status, 204);
    gateway.stop().await;

    // Step 2 and 3: the new key is current (version 2), the old one previous.
    let old_encryption_key = env["API_KEY_ENCRYPTION_KEY"].clone();
    env.insert("API_KEY_ENCRYPTION_KEY".into(), NEW_ENCRYPTION_KEY.into());
    env.insert("API_KEY_ENCRYPTION_KEY_VERSION".into(), "2".into());
    env.insert(
        "API_KEY_PREVIOUS_ENCRYPTION_KEYS".into(),
        format!("1:{old_encryption_key}"),
    );
    let stdout = reencrypt_keys(&env, &dir);
    assert!(
        stdout.contains("re-encrypted 1 API key(s) to key version 2"),
        "{stdout}"
    );
    assert!(!stdout.contains(KEY));
    let stdout = reencrypt_keys(&env, &dir);
    assert!(stdout.contains("re-encrypted 0 API key(s)"), "{stdout}");

    // Step 4: without the old key, the stored key still reaches Mistral.
    env.remove("API_KEY_PREVIOUS_ENCRYPTION_KEYS");
    let gateway = start_gateway(&env).await;
    let mut client = chronus_session(&gateway, "rotor", "").await;
    client.expect_type("ready").await;
    assert_eq!(
        fake.only_connection().authorization.as_deref(),
        Some(&*format!("Bearer {KEY}"))
    );
    gateway.stop().await;
}

#[actix_rt::test]
async fn the_demo_stores_its_mistral_key_and_serves_provider_mistral() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let mut harness = Harness::new();
    let dir = harness.temp_dir("demo");
    let demo = harness.spawn(
        "demo",
        Command::new(gateway_binary())
            .args([
                "demo",
                "--bind",
                "127.0.0.1:0",
                "--admin-bind",
                "127.0.0.1:0",
            ])
            .args(["--mistral-key", KEY, "--data-dir"])
            .arg(dir.join("data"))
            .current_dir(&dir)
            .env("MISTRAL_WS_URL", fake.url())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    // The demo prints a ready-made websocat line for provider=mistral.
    let stdout = harness.child(demo).stdout.take().unwrap();
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(start) = line.find("'ws://") {
                if line.contains("provider=mistral") {
                    let url = line[start + 1..].trim_end_matches('\'').to_owned();
                    let _ = url_tx.send(url);
                }
            }
        }
    });
    let url = url_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the demo printed its Mistral URL");
    let mut client = connect(&url, Auth::None, None).await.client;
    let ready = client.expect_type("ready").await;
    assert_eq!(ready["provider"], "mistral");
    stream_then_end(&mut client, &f32_audio(0.5, 0.5)).await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    assert_eq!(
        data_of(&of_type(&messages, "transcription")),
        [segment_text(0, 32_000)]
    );
    assert_eq!(close, Some(1000));
    assert_eq!(
        fake.only_connection().authorization.as_deref(),
        Some(&*format!("Bearer {KEY}"))
    );
}
