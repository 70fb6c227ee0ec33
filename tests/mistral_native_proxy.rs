//! Mistral through the gateway, the native proxy (`/api/mistral/ws`): text
//! relayed verbatim both ways, binary audio wrapped, refusals before Mistral
//! is touched, the frame limit in the chronus envelope.

mod common;
mod fake_mistral;
#[path = "common/mistral.rs"]
mod mistral;

use std::time::Duration;

use common::*;
use fake_mistral::*;
use mistral::*;
use serde_json::Value;

// ---- the native proxy ---------------------------------------------------------

#[actix_rt::test]
async fn the_native_proxy_relays_text_verbatim_both_ways_and_wraps_binary_audio() {
    // Mistral takes its time to answer the handshake: everything below is
    // sent before its socket is open, and must be held, not dropped.
    let fake = FakeMistral::start(FakeMistralOptions {
        accept_delay: Duration::from_millis(500),
        ..FakeMistralOptions::new(KEY, Mode::Segments)
    });
    let gateway = start_gateway(&env_for(fake.url())).await;
    put_key(&gateway, "native", KEY).await;
    let mut client = RawClient::connect(&ws_url(&gateway, NATIVE), &token_for("native")).await;

    let update = r#"{"type": "session.update",  "session": {"audio_format": {"encoding": "pcm_s16le", "sample_rate": 16000}}}"#;
    let audio: Vec<u8> = (0..32_000u32).map(|i| (i % 251) as u8).collect(); // 1 s of s16le
    client.send_text(update).await;
    client.send_binary(audio.clone()).await;
    client.send_text(r#"{"type":"input_audio.end"}"#).await;

    let received = client.texts_until("transcription.done").await;
    client.close().await;
    let upstream = fake.wait_ended(0).await;
    assert_eq!(
        received, upstream.sent,
        "Mistral's frames come back verbatim"
    );
    assert!(received[0].contains("session.created"), "{received:?}");

    assert_eq!(
        upstream.authorization.as_deref(),
        Some(&*format!("Bearer {KEY}"))
    );
    assert_eq!(
        upstream.received[0],
        Upstreamed::Text(update.to_owned()),
        "verbatim"
    );
    assert_eq!(upstream.types()[1], "input_audio.append");
    assert_eq!(upstream.appends().concat(), audio);
    assert_eq!(
        upstream.received[2],
        Upstreamed::Text(r#"{"type":"input_audio.end"}"#.to_owned())
    );
    assert_eq!(upstream.closed_by_gateway(), Some(Some(1000)));
    let segments: Vec<Value> = received
        .iter()
        .map(|t| serde_json::from_str::<Value>(t).unwrap())
        .filter(|v| v["type"] == "transcription.segment")
        .collect();
    assert_eq!(segments.len(), 2);
    assert_eq!(segments[1]["text"], segment_text(1, 16_000));
    gateway.stop().await;
}

#[actix_rt::test]
async fn the_native_proxy_refuses_plain_http_and_missing_tokens_before_mistral_is_touched() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let gateway = start_gateway(&env_for(fake.url())).await;
    put_key(&gateway, "someone", KEY).await;
    let plain = call(
        "GET",
        http_url(&gateway, NATIVE),
        Some(&token_for("someone")),
        None,
    )
    .await;
    assert_eq!(plain.status, 426);

    let mut client = connect(&ws_url(&gateway, NATIVE), Auth::None, None)
        .await
        .client;
    let (messages, close) = client.until_close(Duration::from_secs(5)).await;
    assert_eq!(messages[0]["code"], "UNAUTHORIZED");
    assert_eq!(close, Some(4401));
    assert!(fake.connections().is_empty());
    gateway.stop().await;
}

#[actix_rt::test]
async fn the_native_proxy_reports_a_frame_over_max_frame_bytes_in_the_chronus_envelope() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let mut env = env_for(fake.url());
    env.insert("MAX_FRAME_BYTES".into(), "65536".into());
    let gateway = start_gateway(&env).await;
    put_key(&gateway, "big", KEY).await;
    let mut client = RawClient::connect(&ws_url(&gateway, NATIVE), &token_for("big")).await;
    client.texts_until("session.created").await;
    client.send_binary(vec![0u8; 65_540]).await;
    let (messages, close) = client.until_close().await;
    assert_eq!(messages.last().unwrap()["code"], "MESSAGE_TOO_LARGE");
    assert_eq!(close, Some(1009));
    assert_eq!(
        fake.wait_ended(0).await.closed_by_gateway(),
        Some(Some(1000))
    );
    gateway.stop().await;
}
