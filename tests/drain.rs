//! Graceful drain, with a real SIGTERM to a real gateway process.

mod common;
mod fake_mistral;

use std::process::Command;
use std::time::{Duration, Instant};

use chronus_gateway::devthoth::{DevThoth, DevThothOptions};
use common::harness::Harness;
use common::*;
use fake_mistral::{FakeMistral, FakeMistralOptions, Mode};
use serde_json::json;

#[actix_rt::test]
async fn sigterm_drains_streaming_sessions_and_lets_ending_ones_finish() {
    // Legacy mode makes `end` take LEGACY_FLUSH_GRACE_MS, so the ending
    // session is still waiting for `done` when the signal arrives.
    let thoth_a = DevThoth::start(DevThothOptions::default()).unwrap();
    let thoth_b = DevThoth::start(DevThothOptions::default()).unwrap();
    let mut env = base_env(&format!("{},{}", thoth_a.url(), thoth_b.url()));
    env.insert("THOTH_PROTOCOL".into(), "legacy".into());
    env.insert("LEGACY_FLUSH_GRACE_MS".into(), "1500".into());
    env.insert("SHUTDOWN_GRACE_SECS".into(), "4".into());
    env.insert("RUST_LOG".into(), "info".into());
    let mut harness = Harness::new();
    let gateway = harness.start_gateway(env);
    let public_addr = gateway.public_addr.clone();
    let url = format!("ws://{public_addr}/api/audio/transcribe");

    let streaming_token = token_for("streaming");
    let mut streaming = connect(&url, Auth::Query(&streaming_token), None)
        .await
        .client;
    streaming.expect_type("ready").await;
    let ending_token = token_for("ending");
    let mut ending = connect(&url, Auth::Query(&ending_token), None).await.client;
    ending.expect_type("ready").await;
    // One whole window of the legacy dev thoth (3 s, like today's thoth).
    ending.send_binary(f32_audio(0.5, 3.0)).await;
    ending.expect_type("transcription").await;
    ending.send_json(json!({"type": "end"})).await;
    streaming.send_binary(f32_audio(0.25, 0.5)).await;

    let signalled = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &gateway.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let (messages, close) = streaming.until_close(Duration::from_secs(5)).await;
    assert_eq!(messages.last().unwrap()["code"], "SERVER_SHUTTING_DOWN");
    assert_eq!(messages.last().unwrap()["retryable"], true);
    assert_eq!(close, Some(1012));

    let (messages, close) = ending.until_close(Duration::from_secs(6)).await;
    assert_eq!(messages.last().unwrap()["type"], "done", "{messages:?}");
    assert_eq!(close, Some(1000));

    // No new sessions while draining.
    let refused = awc::Client::new().ws(url.as_str()).connect().await;
    assert!(refused.is_err(), "the listener is closed during the drain");

    // The process exits 0 once drained, within the grace period.
    let exit = loop {
        if let Some(status) = gateway.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "gateway did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(exit.success(), "exit status {exit:?}");
    let log = gateway.drain_log(Duration::from_millis(500));
    assert!(
        log.iter()
            .any(|l| l.contains("draining: 2 session(s) open")),
        "{log:?}"
    );
    thoth_a.stop();
    thoth_b.stop();
}

#[actix_rt::test]
async fn sigterm_tells_native_mistral_sessions_server_shutting_down() {
    // Fake Mistral in mode "segments"; the native proxy's session is open.
    let key = "mk-TESTKEY-drain-51c0";
    let fake = FakeMistral::start(FakeMistralOptions::new(key, Mode::Segments));
    let mut env = base_env("ws://127.0.0.1:9/stream-audio");
    env.insert("MISTRAL_WS_URL".into(), fake.url());
    env.insert("SHUTDOWN_GRACE_SECS".into(), "2".into());
    env.insert("RUST_LOG".into(), "info".into());
    let mut harness = Harness::new();
    let gateway = harness.start_gateway(env);
    let public_addr = gateway.public_addr.clone();
    let token = token_for("native");
    let stored = awc::Client::new()
        .put(format!(
            "http://{public_addr}/api/settings/api-keys/mistral"
        ))
        .bearer_auth(&token)
        .insert_header(("content-type", "application/json"))
        .send_body(json!({"apiKey": key}).to_string())
        .await
        .unwrap();
    assert_eq!(stored.status().as_u16(), 204);
    let url = format!("ws://{public_addr}/api/mistral/ws");
    let mut native = connect(&url, Auth::Header(&token), None).await.client;
    assert_eq!(native.json().await["type"], "session.created");

    let status = Command::new("kill")
        .args(["-TERM", &gateway.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (messages, close) = native.until_close(Duration::from_secs(5)).await;
    let last = messages.last().expect("a message before the close");
    assert_eq!(last["code"], "SERVER_SHUTTING_DOWN", "{messages:?}");
    assert_eq!(close, Some(1012));
    let upstream = fake.wait_ended(0).await;
    assert_eq!(upstream.closed_by_gateway(), Some(Some(1000)));
    let started = Instant::now();
    while gateway.child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "gateway did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
