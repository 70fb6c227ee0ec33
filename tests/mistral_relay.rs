//! Mistral through the gateway, the chronus protocol: a stored key reaches
//! the fake Mistral as bearer, transcriptions come back mapped, errors and
//! retries map to chronus codes, audio arrives intact and in order.

mod common;
mod fake_mistral;
#[path = "common/mistral.rs"]
mod mistral;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use fake_mistral::*;
use mistral::*;
use serde_json::json;

// ---- the chronus protocol over Mistral --------------------------------------

#[actix_rt::test]
async fn a_stored_key_reaches_mistral_as_bearer_and_transcriptions_come_back_mapped() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let gateway = start_gateway(&env_for(fake.url())).await;
    assert_eq!(put_key(&gateway, "alice", KEY).await.status, 204);

    let mut client = chronus_session(&gateway, "alice", "").await;
    let ready = client.expect_type("ready").await;
    assert_eq!(ready["provider"], "mistral");
    assert!(ready["sessionId"].is_string());
    // 1.25 s of 16 kHz f32: two full 0.5 s segments and a last quarter second.
    let audio = distinct_f32_audio(0, 20_000);
    stream_then_end(&mut client, &audio).await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;

    let expected = [
        segment_text(0, 32_000),
        segment_text(1, 32_000),
        segment_text(2, 16_000),
    ];
    let finals = of_type(&messages, "transcription");
    assert_eq!(data_of(&finals), expected);
    let bounds: Vec<(f64, f64)> = finals
        .iter()
        .map(|f| (f["start"].as_f64().unwrap(), f["end"].as_f64().unwrap()))
        .collect();
    assert_eq!(bounds, [(0.0, 0.5), (0.5, 1.0), (1.0, 1.25)]);
    // Deltas accumulate into the current segment's text, and restart after it.
    assert_eq!(
        data_of(&of_type(&messages, "transcription.partial"))[..4],
        [
            "segment".to_owned(),
            "segment 0 of".to_owned(),
            expected[0].clone(),
            "segment".to_owned()
        ]
    );
    let done = messages.last().unwrap();
    assert_eq!(done["type"], "done");
    assert_eq!(done["data"], expected.join(" "));
    assert!(
        messages
            .iter()
            .all(|m| m["type"] != "error" && m["type"] != "session.created"),
        "Mistral's own events are consumed: {messages:?}"
    );
    assert_eq!(close, Some(1000));

    let upstream = fake.wait_ended(0).await;
    assert_eq!(
        upstream.authorization.as_deref(),
        Some(&*format!("Bearer {KEY}"))
    );
    let types = upstream.types();
    assert_eq!(
        upstream.json()[0],
        json!({"type": "session.update", "session": {"audio_format": {"encoding": "pcm_f32le", "sample_rate": 16000}}})
    );
    assert_eq!(
        types[types.len() - 2..],
        ["input_audio.flush", "input_audio.end"]
    );
    assert_eq!(upstream.appends().concat(), audio);
    assert_eq!(
        upstream.closed_by_gateway(),
        Some(Some(1000)),
        "the gateway closes Mistral's socket cleanly: {:?}",
        upstream.received.last()
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            mistral_pool(&gateway).await["sessions"] == 0
        })
        .await
    );
    gateway.stop().await;
}

#[actix_rt::test]
async fn s16le_sessions_announce_their_encoding_and_sample_rate_to_mistral() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let gateway = start_gateway(&env_for(fake.url())).await;
    put_key(&gateway, "sam", KEY).await;
    let mut client = chronus_session(&gateway, "sam", "&encoding=s16le&sampleRate=24000").await;
    client.expect_type("ready").await;
    client.send_binary(vec![0u8; 24_000]).await; // 0.5 s
    let first = client.expect_type("transcription").await;
    assert_eq!(first["data"], segment_text(0, 24_000));
    assert_eq!(
        (first["start"].as_f64(), first["end"].as_f64()),
        (Some(0.0), Some(0.5))
    );
    assert_eq!(
        fake.only_connection().json()[0]["session"]["audio_format"],
        json!({"encoding": "pcm_s16le", "sample_rate": 24000})
    );
    gateway.stop().await;
}

#[actix_rt::test]
async fn no_stored_key_is_no_api_key_on_both_websockets_and_400_on_the_token_endpoint() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let gateway = start_gateway(&env_for(fake.url())).await;
    let token = token_for("keyless");
    for path in [TRANSCRIBE_MISTRAL, NATIVE] {
        let mut client = connect(&ws_url(&gateway, path), Auth::Query(&token), None)
            .await
            .client;
        let (messages, close) = client.until_close(Duration::from_secs(5)).await;
        assert_eq!(messages.len(), 1, "{path}: {messages:?}");
        assert_eq!(messages[0]["type"], "error");
        assert_eq!(messages[0]["code"], "NO_API_KEY", "{path} {messages:?}");
        assert_eq!(messages[0]["retryable"], false);
        assert_eq!(close, Some(4400), "{path}");
    }
    let reply = call(
        "GET",
        http_url(&gateway, "/api/mistral/token"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.json(),
        json!({"error": "No Mistral API key configured", "code": "NO_API_KEY"})
    );
    assert!(fake.connections().is_empty(), "Mistral is never contacted");
    assert_eq!(mistral_pool(&gateway).await["sessions"], 0);
    gateway.stop().await;
}

#[actix_rt::test]
async fn a_key_mistral_refuses_is_auth_failed_at_once_on_both_websockets() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let gateway = start_gateway(&env_for(fake.url())).await;
    put_key(&gateway, "mallory", "mk-revoked-key-000").await;
    let token = token_for("mallory");
    for (n, path) in [TRANSCRIBE_MISTRAL, NATIVE].into_iter().enumerate() {
        let mut client = connect(&ws_url(&gateway, path), Auth::Query(&token), None)
            .await
            .client;
        let (messages, close) = client.until_close(Duration::from_secs(5)).await;
        let error = messages.last().unwrap();
        assert_eq!(error["code"], "AUTH_FAILED", "{path}: {messages:?}");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("Mistral API key"),
            "{error}"
        );
        assert_eq!(close, Some(1011));
        // A refusal is not retried.
        let connections = fake.connections();
        assert_eq!(connections.len(), n + 1, "{path}");
        assert_eq!(
            connections[n].authorization.as_deref(),
            Some("Bearer mk-revoked-key-000")
        );
        assert!(!connections[n].accepted);
    }
    gateway.stop().await;
}

#[actix_rt::test]
async fn a_mistral_error_event_is_mistral_error_with_its_upstream_code() {
    let fake = FakeMistral::start(FakeMistralOptions {
        error_code: Some(3001),
        ..FakeMistralOptions::new(KEY, Mode::Segments)
    });
    let gateway = start_gateway(&env_for(fake.url())).await;
    put_key(&gateway, "erin", KEY).await;
    let mut client = chronus_session(&gateway, "erin", "").await;
    client.expect_type("ready").await;
    client.send_binary(f32_audio(0.1, 0.1)).await;
    let (messages, close) = client.until_close(Duration::from_secs(5)).await;
    let error = messages.last().unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "MISTRAL_ERROR");
    assert_eq!(error["upstreamCode"], 3001);
    assert_eq!(error["retryable"], false);
    let message = error["message"].as_str().unwrap();
    assert!(
        !message.contains("gpu-7") && !message.contains("internal"),
        "{message}"
    );
    assert!(error["sessionId"].is_string());
    assert_eq!(close, Some(1011));
    gateway.stop().await;
}

#[actix_rt::test]
async fn an_unreachable_mistral_is_mistral_unavailable_after_three_retries() {
    // A "Mistral" that accepts TCP and hangs up at once, counting attempts.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = attempts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    let mut env = base_env("ws://127.0.0.1:9/stream-audio");
    env.insert("MISTRAL_WS_URL".into(), format!("ws://{addr}/v1/realtime"));
    let gateway = start_gateway(&env).await;
    put_key(&gateway, "unlucky", KEY).await;
    let mut client = chronus_session(&gateway, "unlucky", "").await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["code"], "MISTRAL_UNAVAILABLE");
    assert_eq!(messages[0]["retryable"], true);
    assert!(!messages[0]["message"]
        .as_str()
        .unwrap()
        .contains("127.0.0.1"));
    assert_eq!(close, Some(1011));
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 4);
    gateway.stop().await;
}

#[actix_rt::test]
async fn audio_sent_before_session_created_arrives_intact_and_in_order() {
    let fake = FakeMistral::start(FakeMistralOptions {
        session_created_delay: Duration::from_millis(800),
        ..FakeMistralOptions::new(KEY, Mode::Segments)
    });
    let gateway = start_gateway(&env_for(fake.url())).await;
    put_key(&gateway, "eager", KEY).await;
    let mut client = chronus_session(&gateway, "eager", "").await;
    // No wait for `ready`: Mistral has not even said session.created.
    let audio = distinct_f32_audio(1, 12_000); // 0.75 s
    stream_then_end(&mut client, &audio).await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    assert_eq!(messages[0]["type"], "ready");
    assert_eq!(
        data_of(&of_type(&messages, "transcription")),
        [segment_text(0, 32_000), segment_text(1, 16_000)]
    );
    assert_eq!(close, Some(1000));

    let upstream = fake.wait_ended(0).await;
    let types = upstream.types();
    assert_eq!(types[0], "session.update", "{types:?}");
    assert!(types[1..types.len() - 2]
        .iter()
        .all(|t| t == "input_audio.append"));
    assert_eq!(upstream.appends().concat(), audio, "every byte, in order");
    gateway.stop().await;
}

#[actix_rt::test]
async fn a_chunk_larger_than_262144_bytes_is_split_on_sample_boundaries() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let mut env = env_for(fake.url());
    env.insert("MAX_FRAME_BYTES".into(), "1048576".into());
    let gateway = start_gateway(&env).await;
    put_key(&gateway, "bulk", KEY).await;
    let mut client = chronus_session(&gateway, "bulk", "&sampleRate=48000").await;
    client.expect_type("ready").await;
    let audio = distinct_f32_audio(0, 150_000); // 600,000 bytes in one frame
    client.send_binary(audio.clone()).await;
    client.send_json(json!({"type": "end"})).await;
    let (_, close) = client.until_close(Duration::from_secs(10)).await;
    assert_eq!(close, Some(1000));
    let appends = fake.wait_ended(0).await.appends();
    let sizes: Vec<usize> = appends.iter().map(Vec::len).collect();
    assert_eq!(sizes, [262_144, 262_144, 75_712]);
    assert_eq!(appends.concat(), audio);
    gateway.stop().await;
}
