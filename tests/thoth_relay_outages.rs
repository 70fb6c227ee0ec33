//! The thoth relay when thoth fails: a dropped socket is resumed with nothing
//! lost or repeated, a thoth that does not come back or does not speak mux is
//! reported, and thoth's stream token is sent.

mod common;
#[path = "common/relay.rs"]
mod relay;

use std::time::Duration;

use chronus_gateway::devthoth::{DevThoth, DevThothOptions};
use common::*;
use relay::*;
use serde_json::{json, Value};

#[actix_rt::test]
async fn a_dropped_thoth_socket_is_resumed_and_no_result_is_lost_or_repeated() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let gateway = start_gateway(&base_env(&thoth.url())).await;
    let mut a = open_session(&gateway, "a").await;
    let mut b = open_session(&gateway, "b").await;
    // 1.5 s each: one final per session before the drop, half a second pending.
    a.send_binary(f32_audio(0.25, 1.5)).await;
    b.send_binary(f32_audio(0.5, 1.5)).await;
    assert_eq!(
        a.expect_type("transcription").await["data"],
        expected_finals(0.25, 1)[0]
    );
    assert_eq!(
        b.expect_type("transcription").await["data"],
        expected_finals(0.5, 1)[0]
    );

    thoth.drop_all_connections();
    for client in [&mut a, &mut b] {
        // A status notice, not an error: chronus's frontends show every error.
        let notice = client.expect_type("status").await;
        assert_eq!(notice["code"], "THOTH_RECONNECTING");
        assert!(notice["sessionId"].is_string());
        assert!(notice["message"].is_string());
        assert!(notice["timestamp"].is_string());
    }
    // Audio sent during the outage is held and follows the replay.
    a.send_binary(f32_audio(0.25, 1.5)).await;
    b.send_binary(f32_audio(0.5, 1.5)).await;
    a.send_json(json!({"type": "end"})).await;
    b.send_json(json!({"type": "end"})).await;
    for (client, level) in [(&mut a, 0.25), (&mut b, 0.5)] {
        let (messages, close) = client.until_close(Duration::from_secs(10)).await;
        let finals: Vec<&Value> = messages
            .iter()
            .filter(|m| m["type"] == "transcription")
            .collect();
        let texts: Vec<String> = finals
            .iter()
            .map(|m| m["data"].as_str().unwrap().to_string())
            .collect();
        // Seconds 1 and 2 after the resume, each exactly once, none repeated.
        assert_eq!(texts, expected_finals(level, 3)[1..].to_vec());
        assert!(messages.iter().all(|m| m["type"] != "error"));
        let resumed = messages
            .iter()
            .position(|m| m["type"] == "status" && m["code"] == "THOTH_RESUMED")
            .expect("THOTH_RESUMED once the socket is back");
        let first_final = messages
            .iter()
            .position(|m| m["type"] == "transcription")
            .unwrap();
        assert!(resumed < first_final, "resumed before the replayed results");
        assert_eq!(finals[0]["text"], finals[0]["data"]);
        assert_eq!(finals[0]["start"], 1.0);
        assert_eq!(finals[1]["end"], 3.0);
        let done = messages.last().unwrap();
        assert_eq!(done["type"], "done");
        assert_eq!(done["text"], done["data"]);
        assert_eq!(done["data"], expected_finals(level, 3).join(" "));
        assert_eq!(close, Some(1000));
    }
    assert_eq!(
        thoth.stats().connections_accepted(),
        2,
        "one reconnect for both sessions"
    );
    assert_eq!(pool_report(&gateway).await["thoth"][0]["reconnects"], 1);
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn sessions_end_with_thoth_unavailable_when_thoth_does_not_come_back() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let mut env = base_env(&thoth.url());
    env.insert("THOTH_RESUME_TIMEOUT_SECS".into(), "1".into());
    let gateway = start_gateway(&env).await;
    let mut a = open_session(&gateway, "a").await;
    let mut b = open_session(&gateway, "b").await;
    let started = std::time::Instant::now();
    thoth.stop();
    for client in [&mut a, &mut b] {
        let (messages, close) = client.until_close(Duration::from_secs(10)).await;
        let codes: Vec<&str> = messages
            .iter()
            .map(|m| m["code"].as_str().unwrap())
            .collect();
        assert_eq!(codes, vec!["THOTH_RECONNECTING", "THOTH_UNAVAILABLE"]);
        let types: Vec<&str> = messages
            .iter()
            .map(|m| m["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, vec!["status", "error"]);
        assert_eq!(close, Some(1011));
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "within the resume timeout"
    );
    assert_eq!(ref_count(&gateway).await, 0);
    gateway.stop().await;
}

#[actix_rt::test]
async fn audio_beyond_the_replay_buffer_during_an_outage_ends_the_session_at_once() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let mut env = base_env(&thoth.url());
    env.insert("THOTH_REPLAY_MAX_SECS".into(), "1".into());
    env.insert("THOTH_RESUME_TIMEOUT_SECS".into(), "30".into());
    let gateway = start_gateway(&env).await;
    let mut talker = open_session(&gateway, "talker").await;
    let mut quiet = open_session(&gateway, "quiet").await;
    thoth.stop();
    for client in [&mut talker, &mut quiet] {
        assert_eq!(
            client.expect_type("status").await["code"],
            "THOTH_RECONNECTING"
        );
    }
    let outage = std::time::Instant::now();
    // One second fits the replay buffer; the half second after it does not.
    for _ in 0..3 {
        talker.send_binary(f32_audio(0.25, 0.5)).await;
    }
    let (messages, close) = talker.until_close(Duration::from_secs(10)).await;
    let codes: Vec<&str> = messages
        .iter()
        .map(|m| m["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, vec!["THOTH_UNAVAILABLE"]);
    assert_eq!(close, Some(1011));
    assert!(
        outage.elapsed() < Duration::from_secs(5),
        "ended when the audio overflowed, not at the 30 s resume timeout"
    );
    // The quiet session still waits for thoth, and holds its place.
    assert_eq!(ref_count(&gateway).await, 1);
    quiet.send_json(json!({"type": "ping"})).await;
    assert_eq!(quiet.json().await["type"], "pong");
    gateway.stop().await;
}

#[actix_rt::test]
async fn a_thoth_that_does_not_speak_mux_is_reported_as_a_configuration_error() {
    let thoth = DevThoth::start(DevThothOptions {
        mux: false,
        ..Default::default()
    })
    .unwrap();
    let gateway = start_gateway(&base_env(&thoth.url())).await;
    let token = token_for("misconfigured");
    let mut client = connect(&ws_url(&gateway, TRANSCRIBE), Auth::Query(&token), None)
        .await
        .client;
    let (messages, close) = client.until_close(Duration::from_secs(5)).await;
    assert_eq!(messages.last().unwrap()["code"], "THOTH_UNAVAILABLE");
    assert_eq!(close, Some(1011));
    let report = pool_report(&gateway).await;
    assert!(report["thoth"][0]["lastError"]
        .as_str()
        .unwrap()
        .contains("THOTH_PROTOCOL=legacy"));
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn the_thoth_stream_token_is_sent_and_a_refusal_is_auth_failed() {
    let thoth = DevThoth::start(DevThothOptions {
        stream_token: Some("thoth-shared-token".into()),
        ..Default::default()
    })
    .unwrap();
    let mut env = base_env(&thoth.url());
    env.insert("THOTH_STREAM_TOKEN".into(), "thoth-shared-token".into());
    let gateway = start_gateway(&env).await;
    let mut client = open_session(&gateway, "tokened").await;
    stream_then_end(&mut client, &f32_audio(0.5, 1.0)).await;
    let (messages, _) = client.until_close(Duration::from_secs(10)).await;
    assert_eq!(
        texts_of(&messages, "transcription"),
        expected_finals(0.5, 1)
    );
    gateway.stop().await;

    env.insert("THOTH_STREAM_TOKEN".into(), "wrong".into());
    let gateway = start_gateway(&env).await;
    let token = token_for("tokened");
    let mut client = connect(&ws_url(&gateway, TRANSCRIBE), Auth::Query(&token), None)
        .await
        .client;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    assert_eq!(messages.last().unwrap()["code"], "AUTH_FAILED");
    assert_eq!(close, Some(1011));
    gateway.stop().await;
    thoth.stop();
}
