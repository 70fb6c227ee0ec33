//! The thoth relay's limits: session caps, idle timeout and rate limit close
//! with their codes, token expiry mid-session, and plain HTTP on the
//! WebSocket path.

mod common;
#[path = "common/relay.rs"]
mod relay;

use std::time::Duration;

use chronus_gateway::devthoth::{DevThoth, DevThothOptions};
use common::*;
use relay::*;
use serde_json::json;

#[actix_rt::test]
async fn session_caps_idle_timeout_and_rate_limit_close_with_their_codes() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let mut env = base_env(&thoth.url());
    env.insert("MAX_SESSIONS_PER_USER".into(), "1".into());
    env.insert("IDLE_TIMEOUT_SECS".into(), "1".into());
    env.insert("MAX_AUDIO_RATE".into(), "1".into());
    let gateway = start_gateway(&env).await;

    let mut first = open_session(&gateway, "capped").await;
    let token = token_for("capped");
    let mut second = connect(&ws_url(&gateway, TRANSCRIBE), Auth::Query(&token), None)
        .await
        .client;
    let (messages, close) = second.until_close(Duration::from_secs(5)).await;
    assert_eq!(messages.last().unwrap()["code"], "TOO_MANY_SESSIONS");
    assert_eq!(close, Some(4409));

    // No audio for IDLE_TIMEOUT_SECS.
    let (messages, close) = first.until_close(Duration::from_secs(5)).await;
    assert_eq!(messages.last().unwrap()["code"], "IDLE_TIMEOUT");
    assert_eq!(close, Some(4408));

    // 20 s of audio at once is far beyond 1 × real time plus the burst.
    let mut flooder = open_session(&gateway, "flooder").await;
    for _ in 0..20 {
        if !flooder.try_send_binary(f32_audio(0.1, 1.0)).await {
            break;
        }
    }
    let (messages, close) = flooder.until_close(Duration::from_secs(5)).await;
    assert_eq!(messages.last().unwrap()["code"], "RATE_LIMITED");
    assert_eq!(close, Some(4429));
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn token_expiry_mid_session_with_and_without_refresh() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let mut env = base_env(&thoth.url());
    env.insert("SESSION_TOKEN_CHECK".into(), "continuous".into());
    let gateway = start_gateway(&env).await;
    let short = |sub: &str| token_with(json!({"sub": sub, "exp": now() + 2}));

    // Without refresh: TOKEN_EXPIRED and 4401 at `exp`.
    let token = short("expiring");
    let mut client = connect(&ws_url(&gateway, TRANSCRIBE), Auth::Query(&token), None)
        .await
        .client;
    let (messages, close) = client.until_close(Duration::from_secs(6)).await;
    assert_eq!(messages.last().unwrap()["code"], "TOKEN_EXPIRED");
    assert_eq!(close, Some(4401));

    // With a refresh for the same user: the session outlives the first token.
    let token = short("refreshing");
    let mut client = connect(&ws_url(&gateway, TRANSCRIBE), Auth::Query(&token), None)
        .await
        .client;
    client.expect_type("ready").await;
    client
        .send_json(json!({"type": "auth", "token": token_for("refreshing")}))
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    client.send_json(json!({"type": "ping"})).await;
    assert_eq!(client.json().await["type"], "pong");

    // A refresh with another user's token is refused.
    client
        .send_json(json!({"type": "auth", "token": token_for("someone-else")}))
        .await;
    let (messages, close) = client.until_close(Duration::from_secs(5)).await;
    assert_eq!(messages.last().unwrap()["code"], "UNAUTHORIZED");
    assert_eq!(close, Some(4401));
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn plain_http_on_the_websocket_path_is_426_and_admin_is_separate() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let gateway = start_gateway(&base_env(&thoth.url())).await;
    let http = awc::Client::new();
    let response = http
        .get(format!("http://{}{TRANSCRIBE}", gateway.public_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 426);
    let health = http
        .get(format!("http://{}/healthz", gateway.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let not_public = http
        .get(format!(
            "http://{}/api/transcription/pool",
            gateway.public_addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        not_public.status().as_u16(),
        404,
        "monitoring is not on the public listener"
    );
    gateway.stop().await;
    thoth.stop();
}
