//! The thoth relay end to end: a real gateway on 127.0.0.1:0, the dev thoth as
//! a real upstream, real WebSocket clients. This file: sessions sharing one
//! socket, reference counting, `end`, buffering, legacy mode, s16le.

mod common;
#[path = "common/relay.rs"]
mod relay;

use std::time::Duration;

use chronus_gateway::devthoth::{describe_audio, DevThoth, DevThothOptions};
use common::*;
use futures_util::future::join_all;
use relay::*;
use serde_json::{json, Value};

#[actix_rt::test]
async fn fifty_sessions_share_one_thoth_socket_and_each_gets_only_its_own_results() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let gateway = start_gateway(&base_env(&thoth.url())).await;

    let mut clients = Vec::new();
    for i in 0..50 {
        clients.push(open_session(&gateway, &format!("user-{i}")).await);
    }
    assert_eq!(ref_count(&gateway).await, 50);

    let sessions = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| async move {
            let level = (i as f32 + 1.0) / 64.0;
            stream_then_end(&mut client, &f32_audio(level, 2.0)).await;
            let (messages, close) = client.until_close(Duration::from_secs(20)).await;
            (i, level, messages, close)
        });
    for (i, level, messages, close) in join_all(sessions).await {
        let finals = texts_of(&messages, "transcription");
        assert_eq!(finals, expected_finals(level, 2), "session {i}");
        let done = messages.last().unwrap();
        assert_eq!(done["type"], "done", "session {i}");
        assert_eq!(done["data"], finals.join(" "));
        assert_eq!(close, Some(1000));
    }
    assert_eq!(thoth.stats().connections_accepted(), 1, "one shared socket");
    assert_eq!(thoth.stats().mux_sessions_started(), 50);
    assert!(
        eventually(Duration::from_secs(2), || async {
            ref_count(&gateway).await == 0
        })
        .await
    );
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn reference_count_rises_and_falls_and_the_idle_socket_closes_then_reopens() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let gateway = start_gateway(&base_env(&thoth.url())).await;

    let mut clients = Vec::new();
    for n in 1..=5 {
        clients.push(open_session(&gateway, "counter").await);
        assert_eq!(ref_count(&gateway).await, n);
    }
    let report = pool_report(&gateway).await;
    let endpoint = &report["thoth"][0];
    assert_eq!(endpoint["state"], "open");
    assert_eq!(endpoint["protocol"], "mux");
    assert_eq!(endpoint["sessionIds"].as_array().unwrap().len(), 5);
    assert!(endpoint["connectedSince"].is_string());

    for (left, mut client) in clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| (4 - i as u64, c))
    {
        client.close().await;
        assert!(
            eventually(Duration::from_secs(2), || async {
                ref_count(&gateway).await == left
            })
            .await,
            "refCount should fall to {left}"
        );
    }
    // Still open right after the last session left…
    assert_eq!(thoth.stats().connections_open(), 1);
    // …closed after THOTH_IDLE_CLOSE_SECS (1 s here).
    assert!(
        eventually(Duration::from_secs(4), || async {
            thoth.stats().connections_open() == 0
        })
        .await
    );
    assert_eq!(pool_report(&gateway).await["thoth"][0]["state"], "down");

    let mut client = open_session(&gateway, "counter").await;
    assert_eq!(
        thoth.stats().connections_accepted(),
        2,
        "a new socket for the next session"
    );
    stream_then_end(&mut client, &f32_audio(0.25, 1.0)).await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    assert_eq!(
        texts_of(&messages, "transcription"),
        expected_finals(0.25, 1)
    );
    assert_eq!(close, Some(1000));
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn end_delivers_the_last_results_then_done_then_close_1000() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let gateway = start_gateway(&base_env(&thoth.url())).await;
    let mut client = open_session(&gateway, "ender").await;

    stream_then_end(&mut client, &f32_audio(0.5, 2.5)).await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    let finals: Vec<&Value> = messages
        .iter()
        .filter(|m| m["type"] == "transcription")
        .collect();
    assert_eq!(finals.len(), 3);
    assert_eq!(finals[0]["start"], 0.0);
    assert_eq!(finals[0]["end"], 1.0);
    assert_eq!(finals[2]["start"], 2.0);
    assert_eq!(finals[2]["end"], 2.5);
    let mut expected = expected_finals(0.5, 2);
    expected.push(describe_audio(2, &vec![0.5; 8_000]));
    assert_eq!(texts_of(&messages, "transcription"), expected);
    assert!(finals
        .iter()
        .all(|f| f["timestamp"].as_str().unwrap().ends_with('Z')));
    // Interim results arrive as transcription.partial and are not part of `done`.
    assert!(!texts_of(&messages, "transcription.partial").is_empty());
    // Every text event carries `text` beside `data` (PROTOCOL.md 2.4).
    for m in messages.iter().filter(|m| m["type"] != "ready") {
        assert_eq!(m["text"], m["data"], "{m}");
    }
    let done = messages.last().unwrap();
    assert_eq!(done["type"], "done");
    assert_eq!(done["data"], expected.join(" "));
    assert_eq!(close, Some(1000));
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn audio_sent_before_ready_is_buffered_not_dropped() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let gateway = start_gateway(&base_env(&thoth.url())).await;
    let token = token_for("eager");
    let mut client = connect(&ws_url(&gateway, TRANSCRIBE), Auth::Query(&token), None)
        .await
        .client;
    // No wait for `ready`: the socket to thoth is not even open yet.
    stream_then_end(&mut client, &f32_audio(0.125, 2.0)).await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    assert_eq!(messages[0]["type"], "ready");
    assert_eq!(
        texts_of(&messages, "transcription"),
        expected_finals(0.125, 2)
    );
    assert_eq!(close, Some(1000));
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn thoth_down_gives_thoth_unavailable_after_exactly_three_retries() {
    // A "thoth" that accepts TCP and hangs up at once, counting attempts.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = attempts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    let gateway = start_gateway(&base_env(&format!("ws://{addr}/stream-audio"))).await;
    let token = token_for("unlucky");
    let mut client = connect(&ws_url(&gateway, TRANSCRIBE), Auth::Query(&token), None)
        .await
        .client;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["code"], "THOTH_UNAVAILABLE");
    assert_eq!(messages[0]["retryable"], true);
    assert!(!messages[0]["message"]
        .as_str()
        .unwrap()
        .contains("127.0.0.1"));
    assert_eq!(close, Some(1011));
    assert_eq!(
        attempts.load(std::sync::atomic::Ordering::SeqCst),
        4,
        "1 attempt + 3 retries"
    );
    let report = pool_report(&gateway).await;
    assert_eq!(report["thoth"][0]["refCount"], 0);
    assert_eq!(report["sessionsOpen"], 0);
    assert!(report["thoth"][0]["lastError"].is_string());
    gateway.stop().await;
}

/// What the legacy dev thoth (like today's thoth) says for window `index`
/// of 3 s of constant `level`.
fn legacy_window_text(level: f32, index: u64) -> String {
    describe_audio(index, &vec![level; 48_000])
}

#[actix_rt::test]
async fn legacy_mode_serves_one_session_and_a_second_gets_thoth_busy() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let mut env = base_env(&thoth.url());
    env.insert("THOTH_PROTOCOL".into(), "legacy".into());
    let gateway = start_gateway(&env).await;

    let mut first = open_session(&gateway, "first").await;
    first.send_binary(f32_audio(0.25, 3.0)).await;
    assert_eq!(
        first.expect_type("transcription").await["data"],
        legacy_window_text(0.25, 0)
    );

    let token = token_for("second");
    let mut second = connect(&ws_url(&gateway, TRANSCRIBE), Auth::Query(&token), None)
        .await
        .client;
    let (messages, close) = second.until_close(Duration::from_secs(5)).await;
    assert_eq!(messages.last().unwrap()["code"], "THOTH_BUSY");
    assert_eq!(messages.last().unwrap()["retryable"], true);
    assert_eq!(close, Some(1013));

    // The first session is unaffected.
    first.send_binary(f32_audio(0.25, 3.0)).await;
    first.send_json(json!({"type": "end"})).await;
    let (messages, close) = first.until_close(Duration::from_secs(5)).await;
    let expected = legacy_window_text(0.25, 1);
    assert_eq!(texts_of(&messages, "transcription"), vec![expected.clone()]);
    assert_eq!(messages.last().unwrap()["type"], "done");
    assert_eq!(
        messages.last().unwrap()["data"],
        format!("{} {expected}", legacy_window_text(0.25, 0))
    );
    assert_eq!(close, Some(1000));

    // The endpoint is free again once its socket is gone.
    assert!(
        eventually(Duration::from_secs(3), || async {
            thoth.stats().connections_open() == 0
        })
        .await
    );
    assert_eq!(ref_count(&gateway).await, 0);
    let mut third = open_session(&gateway, "third").await;
    third.send_binary(f32_audio(0.5, 3.0)).await;
    assert_eq!(
        third.expect_type("transcription").await["data"],
        legacy_window_text(0.5, 0)
    );
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn s16le_audio_is_converted_exactly_in_both_modes() {
    // Three seconds: a mux final is one second, a legacy window three.
    let samples: Vec<i16> = (0..48_000)
        .map(|i| ((i * 37) % 65_536 - 32_768) as i16)
        .collect();
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let as_f32: Vec<f32> = samples.iter().map(|&s| f32::from(s) / 32768.0).collect();

    for (protocol, first_result) in [("mux", 16_000), ("legacy", 48_000)] {
        let expected = describe_audio(0, &as_f32[..first_result]);
        let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
        let mut env = base_env(&thoth.url());
        env.insert("THOTH_PROTOCOL".into(), protocol.into());
        let gateway = start_gateway(&env).await;
        let token = token_for("s16");
        let url = ws_url(&gateway, &format!("{TRANSCRIBE}?encoding=s16le"));
        let mut client = connect(&url, Auth::Query(&token), None).await.client;
        client.expect_type("ready").await;
        client.send_binary(bytes.clone()).await;
        assert_eq!(
            client.expect_type("transcription").await["data"],
            expected,
            "{protocol}"
        );
        gateway.stop().await;
        thoth.stop();
    }
}
