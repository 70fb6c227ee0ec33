//! The thoth relay end to end: a real gateway on 127.0.0.1:0, the dev thoth as
//! a real upstream, real WebSocket clients.

mod common;

use std::time::Duration;

use chronus_gateway::devthoth::{describe_audio, DevThoth, DevThothOptions};
use common::*;
use futures_util::future::join_all;
use serde_json::{json, Value};

const TRANSCRIBE: &str = "/api/audio/transcribe";

/// What the dev thoth says for `seconds` whole seconds of constant `level`.
fn expected_finals(level: f32, whole_seconds: u64) -> Vec<String> {
    let second = vec![level; 16_000];
    (0..whole_seconds)
        .map(|i| describe_audio(i, &second))
        .collect()
}

fn texts_of(messages: &[Value], ty: &str) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m["type"] == ty)
        .map(|m| m["data"].as_str().unwrap().to_string())
        .collect()
}

async fn open_session(gateway: &chronus_gateway::RunningGateway, user: &str) -> WsClient {
    let token = token_for(user);
    let mut client = connect(&ws_url(gateway, TRANSCRIBE), Auth::Query(&token), None)
        .await
        .client;
    let ready = client.expect_type("ready").await;
    assert_eq!(ready["provider"], "thoth");
    client
}

/// Sends `audio` in 20 ms frames (1,280 bytes), then `end`.
async fn stream_then_end(client: &mut WsClient, audio: &[u8]) {
    for frame in audio.chunks(1280) {
        client.send_binary(frame.to_vec()).await;
    }
    client.send_json(json!({"type": "end"})).await;
}

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

#[actix_rt::test]
async fn every_auth_failure_is_refused_before_thoth_is_touched() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let mut env = base_env(&thoth.url());
    env.insert("JWT_ISSUER".into(), "chronus".into());
    env.insert("JWT_AUDIENCE".into(), "transcription".into());
    env.insert("ALLOWED_ORIGINS".into(), "https://app.chronus.test".into());
    let gateway = start_gateway(&env).await;
    let good = |extra: Value| {
        let mut claims =
            json!({"sub": "u", "exp": now() + 600, "iss": "chronus", "aud": "transcription"});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    };
    let other_secret = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &good(json!({})),
        &jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-0000"),
    )
    .unwrap();
    let hs384 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS384),
        &good(json!({})),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    // (case, token, Origin, expected code, expected close code)
    type Case<'a> = (&'a str, Option<String>, Option<&'a str>, &'a str, u16);
    let cases: Vec<Case> = vec![
        ("missing", None, None, "UNAUTHORIZED", 4401),
        (
            "garbage",
            Some("not.a.jwt".into()),
            None,
            "UNAUTHORIZED",
            4401,
        ),
        (
            "bad signature",
            Some(other_secret),
            None,
            "UNAUTHORIZED",
            4401,
        ),
        (
            "expired",
            Some(token_with(good(json!({"exp": now() - 120})))),
            None,
            "UNAUTHORIZED",
            4401,
        ),
        (
            "not yet valid",
            Some(token_with(good(json!({"nbf": now() + 600})))),
            None,
            "UNAUTHORIZED",
            4401,
        ),
        ("wrong algorithm", Some(hs384), None, "UNAUTHORIZED", 4401),
        (
            "alg none",
            Some(alg_none_token("u")),
            None,
            "UNAUTHORIZED",
            4401,
        ),
        (
            "wrong issuer",
            Some(token_with(good(json!({"iss": "evil"})))),
            None,
            "UNAUTHORIZED",
            4401,
        ),
        (
            "wrong audience",
            Some(token_with(good(json!({"aud": "other"})))),
            None,
            "UNAUTHORIZED",
            4401,
        ),
        (
            "no sub",
            Some(token_with(
                json!({"exp": now() + 600, "iss": "chronus", "aud": "transcription"}),
            )),
            None,
            "UNAUTHORIZED",
            4401,
        ),
        (
            "bad origin",
            Some(token_with(good(json!({})))),
            Some("https://evil.test"),
            "FORBIDDEN",
            4403,
        ),
    ];
    for (name, token, origin, code, close_code) in cases {
        let auth = match &token {
            Some(t) => Auth::Query(t),
            None => Auth::None,
        };
        let mut client = connect(&ws_url(&gateway, TRANSCRIBE), auth, origin)
            .await
            .client;
        let (messages, close) = client.until_close(Duration::from_secs(5)).await;
        assert_eq!(messages.len(), 1, "{name}: {messages:?}");
        assert_eq!(messages[0]["type"], "error", "{name}");
        assert_eq!(messages[0]["code"], code, "{name}");
        assert_eq!(close, Some(close_code), "{name}");
    }
    assert_eq!(
        thoth.stats().connections_accepted(),
        0,
        "no upstream work for refused requests"
    );

    // The same gateway accepts a good token from an allowed origin, and from no origin.
    let token = token_with(good(json!({})));
    for origin in [Some("https://app.chronus.test"), None] {
        let mut client = connect(&ws_url(&gateway, TRANSCRIBE), Auth::Query(&token), origin)
            .await
            .client;
        client.expect_type("ready").await;
    }
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn a_token_is_read_from_header_subprotocol_query_and_cookie() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let gateway = start_gateway(&base_env(&thoth.url())).await;
    let token = token_for("sources");
    for (name, auth) in [
        ("header", Auth::Header(&token)),
        ("subprotocol", Auth::Subprotocol(&token)),
        ("query", Auth::Query(&token)),
        ("cookie", Auth::Cookie(&token)),
    ] {
        let connected = connect(&ws_url(&gateway, TRANSCRIBE), auth, None).await;
        if name == "subprotocol" {
            assert_eq!(
                connected.subprotocol.as_deref(),
                Some("chronus.jwt"),
                "never the token"
            );
        }
        let mut client = connected.client;
        assert_eq!(client.json().await["type"], "ready", "{name}");
    }
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn bad_input_gets_its_code_without_harming_other_sessions() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let mut env = base_env(&thoth.url());
    env.insert("MAX_FRAME_BYTES".into(), "65536".into());
    let gateway = start_gateway(&env).await;
    let mut bystander = open_session(&gateway, "bystander").await;
    let mut client = open_session(&gateway, "clumsy").await;

    let cases: [(&str, &str); 4] = [
        ("{not json", "BAD_MESSAGE"),
        (r#"{"type":"dance"}"#, "BAD_MESSAGE"),
        (
            r#"{"type":"audio","data":"%%%not base64"}"#,
            "INVALID_AUDIO_FORMAT",
        ),
        (r#"{"type":"audio","data":"AAA="}"#, "INVALID_AUDIO_FORMAT"), // 2 bytes: half a sample
    ];
    for (frame, code) in cases {
        client.send_text(frame).await;
        let error = client.json().await;
        assert_eq!(error["code"], code, "{frame}");
        assert_eq!(error["retryable"], false);
    }
    client.send_binary(vec![0u8; 7]).await;
    assert_eq!(client.json().await["code"], "INVALID_AUDIO_FORMAT");
    // The session goes on after all of those.
    client.send_json(json!({"type": "ping"})).await;
    assert_eq!(client.json().await["type"], "pong");

    client.send_binary(vec![0u8; 65_540]).await;
    let (messages, close) = client.until_close(Duration::from_secs(5)).await;
    assert_eq!(messages.last().unwrap()["code"], "MESSAGE_TOO_LARGE");
    assert_eq!(close, Some(1009));

    stream_then_end(&mut bystander, &f32_audio(0.75, 1.0)).await;
    let (messages, close) = bystander.until_close(Duration::from_secs(10)).await;
    assert_eq!(
        texts_of(&messages, "transcription"),
        expected_finals(0.75, 1)
    );
    assert!(messages.iter().all(|m| m["type"] != "error"));
    assert_eq!(close, Some(1000));
    gateway.stop().await;
    thoth.stop();
}

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
