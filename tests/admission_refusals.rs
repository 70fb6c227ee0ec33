//! `chronus_admission_refusals_total{reason}` counts each refused session
//! under the reason the alert rules and the dashboard read: the per-user cap
//! and a busy thoth here (the process-wide cap in tests/prometheus_scrape.rs).
//!
//! Metrics are process-global: each test here moves only its own `reason`
//! and compares deltas, so they may run in parallel.

mod common;

use std::time::Duration;

use chronus_gateway::devthoth::{DevThoth, DevThothOptions};
use chronus_gateway::RunningGateway;
use common::*;

const TRANSCRIBE: &str = "/api/audio/transcribe";

/// The value of `chronus_admission_refusals_total{reason="…"}` on `/metrics`.
async fn refusals(gateway: &RunningGateway, reason: &str) -> f64 {
    let series = format!("chronus_admission_refusals_total{{reason=\"{reason}\"}} ");
    metric_value(gateway, &series).await
}

/// Opens a session for `user`; returns it with its first message.
async fn open(gateway: &RunningGateway, user: &str) -> (WsClient, serde_json::Value) {
    let token = token_for(user);
    let mut client = connect(&ws_url(gateway, TRANSCRIBE), Auth::Query(&token), None)
        .await
        .client;
    let first = client.json().await;
    (client, first)
}

#[actix_rt::test]
async fn a_session_over_the_per_user_cap_is_counted_as_max_sessions_per_user() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let mut env = base_env(&thoth.url());
    env.insert("MAX_SESSIONS_PER_USER".into(), "1".into());
    let gateway = start_gateway(&env).await;
    let before = refusals(&gateway, "max_sessions_per_user").await;
    let process_cap_before = refusals(&gateway, "max_sessions").await;

    let (mut first, ready) = open(&gateway, "one-tab-only").await;
    assert_eq!(ready["type"], "ready");
    let (mut second, refused) = open(&gateway, "one-tab-only").await;
    assert_eq!(refused["code"], "TOO_MANY_SESSIONS");
    second.until_close(Duration::from_secs(5)).await;

    assert_eq!(
        refusals(&gateway, "max_sessions_per_user").await - before,
        1.0
    );
    assert_eq!(
        refusals(&gateway, "max_sessions").await,
        process_cap_before,
        "not the process-wide cap"
    );
    first.close().await;
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn a_session_refused_with_thoth_busy_is_counted_as_thoth_busy() {
    // Legacy thoth: one session per endpoint, and there is one endpoint.
    let thoth = DevThoth::start(DevThothOptions {
        mux: false,
        ..DevThothOptions::default()
    })
    .unwrap();
    let mut env = base_env(&thoth.url());
    env.insert("THOTH_PROTOCOL".into(), "legacy".into());
    let gateway = start_gateway(&env).await;
    let before = refusals(&gateway, "thoth_busy").await;

    let (mut first, ready) = open(&gateway, "first-caller").await;
    assert_eq!(ready["type"], "ready");
    let (mut second, refused) = open(&gateway, "second-caller").await;
    assert_eq!(refused["code"], "THOTH_BUSY");
    second.until_close(Duration::from_secs(5)).await;

    assert_eq!(refusals(&gateway, "thoth_busy").await - before, 1.0);
    first.close().await;
    gateway.stop().await;
    thoth.stop();
}
