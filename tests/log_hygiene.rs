//! What others choose never shapes the gateway's log: the real binary runs
//! with `RUST_LOG=debug`, is fed hostile values, and its whole stderr is
//! searched.

mod common;

use std::time::Duration;

use chronus_gateway::devthoth::{DevThoth, DevThothOptions};
use common::harness::Harness;
use common::*;
use serde_json::json;

/// A `sub` that, logged raw, starts a line that looks like the gateway's own
/// and then flips the rest of the line right-to-left.
const FORGED_SUB: &str = "\r\n[2026-01-01T00:00:00Z INFO  forged] injected\u{202e}";
const FORGED_PREFIX: &str = "[2026-01-01T00:00:00Z INFO  forged]";

#[actix_rt::test]
async fn a_claim_with_line_breaks_and_bidi_controls_cannot_forge_a_log_line() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let mut env = base_env(&thoth.url());
    env.insert("RUST_LOG".into(), "debug".into());
    let mut harness = Harness::new();
    let gateway = harness.start_gateway(env);
    let url = format!("ws://{}/api/audio/transcribe", gateway.public_addr);

    // A string `sub`, signed with the test secret: only an issuer could
    // choose it, but an issuer is not the log's author.
    let token = token_with(json!({"sub": FORGED_SUB, "exp": now() + 3600}));
    let mut client = connect(&url, Auth::Header(&token), None).await.client;
    client.expect_type("ready").await;
    client.send_binary(f32_audio(0.5, 0.5)).await;
    client.send_json(json!({"type": "end"})).await;
    let (_, close) = client.until_close(Duration::from_secs(10)).await;
    assert_eq!(close, Some(1000));

    gateway.child.kill().unwrap();
    let lines = gateway.drain_log(Duration::from_secs(2)).to_vec();
    let log = lines.join("\n");
    if std::env::var("SHOW_LOG").is_ok() {
        eprintln!("{log}");
    }
    // The value never makes a line of its own, nor keeps its raw controls…
    for line in &lines {
        assert!(!line.starts_with(FORGED_PREFIX), "forged line: {line:?}");
        assert!(line.starts_with('['), "every line is a record: {line:?}");
    }
    assert!(!log.contains('\r'), "a raw CR reached the log");
    assert!(!log.contains('\u{202e}'), "a raw U+202E reached the log");
    // …yet it is logged, escaped.
    assert!(
        log.contains("\\r\\n[2026-01-01T00:00:00Z INFO  forged] injected\\u{202e}"),
        "the sub reaches the log in escaped form"
    );
    thoth.stop();
}

/// Runs the binary with `DATABASE_URL` set to `database_url` until it gives
/// up (nothing listens on port 1); returns everything it wrote.
fn output_with_database_url(database_url: &str) -> String {
    let mut env = base_env("ws://127.0.0.1:9/stream-audio");
    env.insert("RUST_LOG".into(), "debug".into());
    env.insert("DATABASE_URL".into(), database_url.into());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chronus-gateway"))
        .env_clear()
        .envs(&env)
        .output()
        .expect("gateway binary runs");
    assert!(
        !output.status.success(),
        "{database_url}: no database there"
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Issue 12: the config log line printed a libpq conninfo whole. Every form
/// of `DATABASE_URL` goes through the one redactor now.
#[test]
fn a_database_password_never_reaches_the_logs_whatever_the_url_form() {
    for database_url in [
        "host=127.0.0.1 port=1 password=hunter2 dbname=x",
        "postgres://gw:hunter2@127.0.0.1:1/x",
        "postgresql://gw@127.0.0.1:1/x?password=hunter2&sslmode=disable",
    ] {
        let output = output_with_database_url(database_url);
        if std::env::var("SHOW_LOG").is_ok() {
            eprintln!("{output}");
        }
        assert!(
            output.contains("starting with Config"),
            "the config is logged: {output}"
        );
        assert!(
            !output.contains("hunter2"),
            "{database_url}: the password leaked:\n{output}"
        );
        assert!(
            output.contains("***"),
            "{database_url}: masked, not dropped"
        );
    }
}
