//! chronus's own tokens and session rules, through real sockets (issue 10,
//! PROTOCOL.md 2.2 and 2.5): an integer `sub`, a session that outlives its
//! one-minute token (`SESSION_TOKEN_CHECK=connect`), `continuous` keeping the
//! in-band refresh rule, `MAX_SESSION_SECS` on both WebSocket routes, and the
//! two session caps' close codes.

mod common;
mod fake_mistral;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chronus_gateway::devthoth::{DevThoth, DevThothOptions};
use chronus_gateway::RunningGateway;
use common::*;
use fake_mistral::*;
use serde_json::{json, Value};

const TRANSCRIBE: &str = "/api/audio/transcribe";
const NATIVE: &str = "/api/mistral/ws";
const KEY: &str = "mk-TESTKEY-chronus-sessions-51";

/// A token as chronus's backend signs it: integer `sub`, `username`, `iat`,
/// and an `exp` `ttl_secs` ahead.
fn chronus_token(user_id: i64, ttl_secs: u64) -> String {
    let now = now();
    token_with(json!({"username": "ada", "sub": user_id, "iat": now, "exp": now + ttl_secs}))
}

/// Streams `seconds` of audio in real time (100 ms frames) or until the
/// gateway stops taking it; returns when the last frame went out.
async fn stream_in_real_time(client: &mut WsClient, seconds: f64) {
    let frame = f32_audio(0.25, 0.1);
    let started = Instant::now();
    let frames = (seconds * 10.0) as u32;
    for k in 0..frames {
        tokio::time::sleep_until((started + Duration::from_millis(100) * k).into()).await;
        if !client.try_send_binary(frame.clone()).await {
            return;
        }
    }
}

fn codes_of(messages: &[Value], ty: &str) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m["type"] == ty)
        .map(|m| m["code"].as_str().unwrap_or("?").to_string())
        .collect()
}

async fn refused_with(
    gateway: &RunningGateway,
    path: &str,
    token: &str,
) -> (Vec<Value>, Option<u16>) {
    let mut client = connect(&ws_url(gateway, path), Auth::Query(token), None)
        .await
        .client;
    client.until_close(Duration::from_secs(5)).await
}

// ---- 1. tokens -----------------------------------------------------------------

#[actix_rt::test]
async fn an_integer_sub_is_the_same_user_as_its_decimal_string() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let mut env = base_env(&thoth.url());
    env.insert("MAX_SESSIONS_PER_USER".into(), "1".into());
    let gateway = start_gateway(&env).await;

    let token = chronus_token(7, 60);
    let mut first = connect(&ws_url(&gateway, TRANSCRIBE), Auth::Query(&token), None)
        .await
        .client;
    assert_eq!(first.expect_type("ready").await["provider"], "thoth");
    // `"7"` is the same user: the per-user cap counts them together.
    let (messages, close) = refused_with(&gateway, TRANSCRIBE, &token_for("7")).await;
    assert_eq!(codes_of(&messages, "error"), vec!["TOO_MANY_SESSIONS"]);
    assert_eq!(close, Some(4409));
    first.close().await;
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn a_sub_that_is_a_float_bool_object_or_missing_is_unauthorized_4401() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let gateway = start_gateway(&base_env(&thoth.url())).await;
    let exp = now() + 60;
    for (label, claims) in [
        ("float", json!({"username": "ada", "sub": 7.5, "exp": exp})),
        ("bool", json!({"username": "ada", "sub": true, "exp": exp})),
        (
            "object",
            json!({"username": "ada", "sub": {"id": 7}, "exp": exp}),
        ),
        ("missing", json!({"username": "ada", "exp": exp})),
    ] {
        let (messages, close) = refused_with(&gateway, TRANSCRIBE, &token_with(claims)).await;
        assert_eq!(
            codes_of(&messages, "error"),
            vec!["UNAUTHORIZED"],
            "{label}"
        );
        assert_eq!(close, Some(4401), "{label}");
    }
    assert_eq!(
        thoth.stats().connections_accepted(),
        0,
        "no upstream for a refused token"
    );
    gateway.stop().await;
    thoth.stop();
}

// ---- 2. SESSION_TOKEN_CHECK and MAX_SESSION_SECS ---------------------------------

#[actix_rt::test]
async fn in_connect_mode_a_chronus_token_keeps_streaming_past_its_exp() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let gateway = start_gateway(&base_env(&thoth.url())).await;
    let token = chronus_token(7, 2);
    let exp_passed = Instant::now() + Duration::from_secs(2);
    let mut client = connect(&ws_url(&gateway, TRANSCRIBE), Auth::Query(&token), None)
        .await
        .client;
    client.expect_type("ready").await;
    stream_in_real_time(&mut client, 4.0).await;
    assert!(Instant::now() > exp_passed + Duration::from_secs(1));
    client.send_json(json!({"type": "end"})).await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    assert!(codes_of(&messages, "error").is_empty(), "{messages:?}");
    let finals = messages
        .iter()
        .filter(|m| m["type"] == "transcription")
        .count();
    assert_eq!(finals, 4, "one final per second of audio, past exp too");
    assert_eq!(messages.last().unwrap()["type"], "done");
    assert_eq!(close, Some(1000));
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn in_continuous_mode_the_same_token_ends_with_token_expired_4401() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let mut env = base_env(&thoth.url());
    env.insert("SESSION_TOKEN_CHECK".into(), "continuous".into());
    let gateway = start_gateway(&env).await;
    let token = chronus_token(7, 2);
    let mut client = connect(&ws_url(&gateway, TRANSCRIBE), Auth::Query(&token), None)
        .await
        .client;
    client.expect_type("ready").await;
    stream_in_real_time(&mut client, 5.0).await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    assert_eq!(codes_of(&messages, "error"), vec!["TOKEN_EXPIRED"]);
    assert_eq!(close, Some(4401));
    gateway.stop().await;
    thoth.stop();
}

fn env_with_fake_mistral(thoth: &DevThoth, fake: &FakeMistral) -> HashMap<String, String> {
    let mut env = base_env(&thoth.url());
    env.insert("MISTRAL_WS_URL".into(), fake.url());
    env.insert("MAX_SESSION_SECS".into(), "1".into());
    env
}

#[actix_rt::test]
async fn max_session_secs_ends_sessions_with_session_expired_4408_on_every_route() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let gateway = start_gateway(&env_with_fake_mistral(&thoth, &fake)).await;
    store_mistral_key(&gateway, "7", KEY).await;
    // A long-lived token: the cap, not `exp`, ends these sessions.
    let token = chronus_token(7, 3600);
    for path in [
        TRANSCRIBE.to_string(),
        format!("{TRANSCRIBE}?provider=mistral"),
        NATIVE.to_string(),
    ] {
        let opened = Instant::now();
        let mut client = connect(&ws_url(&gateway, &path), Auth::Header(&token), None)
            .await
            .client;
        // Audio keeps the session from idling; the cap still ends it.
        stream_in_real_time(&mut client, 2.0).await;
        let (messages, close) = client.until_close(Duration::from_secs(5)).await;
        assert_eq!(
            codes_of(&messages, "error"),
            vec!["SESSION_EXPIRED"],
            "{path}"
        );
        assert_eq!(close, Some(4408), "{path}");
        assert!(opened.elapsed() >= Duration::from_secs(1), "{path}");
    }
    gateway.stop().await;
    thoth.stop();
}

// ---- 4. `text` beside `data`, whatever the provider ---------------------------------

#[actix_rt::test]
async fn mistral_results_carry_text_beside_data_too() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let mut env = env_with_fake_mistral(&thoth, &fake);
    env.remove("MAX_SESSION_SECS");
    let gateway = start_gateway(&env).await;
    store_mistral_key(&gateway, "7", KEY).await;
    let token = chronus_token(7, 60);
    let url = ws_url(&gateway, &format!("{TRANSCRIBE}?provider=mistral"));
    let mut client = connect(&url, Auth::Query(&token), None).await.client;
    client.expect_type("ready").await;
    client.send_binary(f32_audio(0.25, 1.25)).await;
    client.send_json(json!({"type": "end"})).await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    let texts: Vec<&Value> = messages
        .iter()
        .filter(|m| {
            ["transcription", "transcription.partial", "done"]
                .contains(&m["type"].as_str().unwrap())
        })
        .collect();
    assert!(texts.iter().any(|m| m["type"] == "transcription"));
    assert_eq!(texts.last().unwrap()["type"], "done");
    for m in texts {
        assert!(m["text"].is_string(), "{m}");
        assert_eq!(m["text"], m["data"], "{m}");
    }
    assert_eq!(close, Some(1000));
    gateway.stop().await;
    thoth.stop();
}

// ---- 5. the two session caps ------------------------------------------------------

#[actix_rt::test]
async fn the_per_user_cap_closes_4409_and_the_process_wide_cap_1013() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let mut env = base_env(&thoth.url());
    env.insert("MAX_SESSIONS".into(), "2".into());
    env.insert("MAX_SESSIONS_PER_USER".into(), "1".into());
    let gateway = start_gateway(&env).await;

    let open = |user: i64| {
        let token = chronus_token(user, 60);
        let url = ws_url(&gateway, TRANSCRIBE);
        async move {
            let mut client = connect(&url, Auth::Query(&token), None).await.client;
            client.expect_type("ready").await;
            client
        }
    };
    let mut first = open(1).await;
    let (messages, close) = refused_with(&gateway, TRANSCRIBE, &chronus_token(1, 60)).await;
    assert_eq!(codes_of(&messages, "error"), vec!["TOO_MANY_SESSIONS"]);
    assert_eq!(close, Some(4409), "the user's own cap");

    let mut second = open(2).await;
    let (messages, close) = refused_with(&gateway, TRANSCRIBE, &chronus_token(3, 60)).await;
    assert_eq!(codes_of(&messages, "error"), vec!["TOO_MANY_SESSIONS"]);
    assert_eq!(messages[0]["retryable"], true);
    assert_eq!(close, Some(1013), "the gateway's cap: try again later");

    first.close().await;
    second.close().await;
    gateway.stop().await;
    thoth.stop();
}
