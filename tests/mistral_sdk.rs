//! Mistral's official SDKs, unchanged, in the test suite (docs/mistral.md):
//! the PyPI `mistralai` 3.7.0 and npm `@mistralai/mistralai` 2.7.0 realtime
//! transcription clients (tests/sdk/, installed by
//! scripts/install-sdk-test-deps.sh) run as child processes.
//!
//! - Straight against the fake Mistral, in every mode: the SDK is the judge
//!   of the fake (a fake the SDK cannot parse proves nothing about the
//!   gateway), so every event must parse as the SDK's own model.
//! - Through the gateway's native proxy (PROTOCOL.md 2.6) with the fake as
//!   Mistral: the SDK sees `session.created`, its own `session.update`
//!   reaches Mistral intact, the user's stored key reaches Mistral as
//!   `Bearer`, and the SDK receives every segment and `done`.
//!
//! A missing SDK fails these tests; outside CI `SKIP_SDK_TESTS=1` skips them.

mod common;
mod fake_mistral;
mod sdk_clients;

use std::time::Duration;

use fake_mistral::*;
use sdk_clients::expect::*;
use sdk_clients::{run, Sdk};
use serde_json::{json, Value};

// ---- the SDKs judge the fake, mode by mode -----------------------------------

/// Mode::Segments: every utterance a segment, `done` with the full text and
/// its segments.
async fn sdk_reads_the_fake_in_segments_mode(sdk: Sdk) {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let Some(run) = run(sdk, &scenario(&fake.server_url(), KEY, "transcribe_stream")).await else {
        return;
    };
    let log = fake.wait_ended(0).await;
    assert_parsed_cleanly(sdk, &run);
    assert_session_updated_to_s16le(sdk, &run);
    assert_update_arrived_intact(sdk, &run, &log);
    assert_eq!(
        log.authorization.as_deref(),
        Some(&*format!("Bearer {KEY}"))
    );
    assert_eq!(log.model, DEFAULT_MODEL, "the SDK's model query");
    assert_eq!(
        run.types(),
        log.sent_types(),
        "{sdk:?} sees every event the fake sent"
    );

    let expected: Vec<String> = (0..3).map(|i| segment_text(i, UTTERANCES[i])).collect();
    assert_eq!(texts(&run.of_type("transcription.segment")), expected);
    let done = run.of_type("transcription.done");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["text"], full_text(&UTTERANCES));
    assert_eq!(run.deltas_text(), full_text(&UTTERANCES));
    assert_eq!(done[0]["model"], DEFAULT_MODEL);
    assert_eq!(done[0]["language"], Value::Null);
    assert_eq!(done[0]["segments"].as_array().map(Vec::len), Some(3));
}

#[actix_rt::test]
async fn the_python_sdk_reads_every_event_of_the_fake_in_segments_mode() {
    sdk_reads_the_fake_in_segments_mode(Sdk::Python).await;
}

#[actix_rt::test]
async fn the_npm_sdk_reads_every_event_of_the_fake_in_segments_mode() {
    sdk_reads_the_fake_in_segments_mode(Sdk::Node).await;
}

/// Mode::DeltasThenDone: no segment at all; the text is the deltas and
/// `done.text`.
async fn sdk_reads_the_fake_in_deltas_then_done_mode(sdk: Sdk) {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::DeltasThenDone));
    let Some(run) = run(sdk, &scenario(&fake.server_url(), KEY, "transcribe_stream")).await else {
        return;
    };
    assert_parsed_cleanly(sdk, &run);
    assert!(run.of_type("transcription.segment").is_empty());
    let done = run.of_type("transcription.done");
    assert_eq!(done[0]["text"], full_text(&UTTERANCES));
    assert_eq!(run.deltas_text(), full_text(&UTTERANCES));
    assert!(
        done[0]["segments"].is_null(),
        "{sdk:?}: no segments in done"
    );
    assert_eq!(run.types(), fake.wait_ended(0).await.sent_types());
}

#[actix_rt::test]
async fn the_python_sdk_reads_the_fake_in_deltas_then_done_mode() {
    sdk_reads_the_fake_in_deltas_then_done_mode(Sdk::Python).await;
}

#[actix_rt::test]
async fn the_npm_sdk_reads_the_fake_in_deltas_then_done_mode() {
    sdk_reads_the_fake_in_deltas_then_done_mode(Sdk::Node).await;
}

/// Mode::TrailingDeltas: the short last utterance is deltas and `done.text`
/// only, after the last segment.
async fn sdk_reads_the_fake_in_trailing_deltas_mode(sdk: Sdk) {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::TrailingDeltas));
    let Some(run) = run(sdk, &scenario(&fake.server_url(), KEY, "transcribe_stream")).await else {
        return;
    };
    assert_parsed_cleanly(sdk, &run);
    assert_eq!(
        texts(&run.of_type("transcription.segment")),
        [segment_text(0, 16_000), segment_text(1, 16_000)]
    );
    let types = run.types();
    let last_segment = types
        .iter()
        .rposition(|t| *t == "transcription.segment")
        .unwrap();
    assert_eq!(
        types[last_segment + 1..],
        [
            "transcription.text.delta",
            "transcription.text.delta",
            "transcription.text.delta",
            "transcription.done"
        ],
        "deltas trail the last segment"
    );
    let done = run.of_type("transcription.done");
    assert_eq!(done[0]["text"], full_text(&UTTERANCES));
    assert_eq!(done[0]["segments"].as_array().map(Vec::len), Some(2));
}

#[actix_rt::test]
async fn the_python_sdk_reads_the_fake_in_trailing_deltas_mode() {
    sdk_reads_the_fake_in_trailing_deltas_mode(Sdk::Python).await;
}

#[actix_rt::test]
async fn the_npm_sdk_reads_the_fake_in_trailing_deltas_mode() {
    sdk_reads_the_fake_in_trailing_deltas_mode(Sdk::Node).await;
}

/// "3804 after N s of no audio": what was heard arrives as deltas, then the
/// SDK gets error 3804 as its own error model and the session ends.
async fn sdk_sees_3804_after_a_pause(sdk: Sdk) {
    let fake = FakeMistral::start(FakeMistralOptions {
        idle_timeout: Some(Duration::from_millis(800)),
        ..FakeMistralOptions::new(KEY, Mode::Segments)
    });
    let Some(run) = run(sdk, &scenario(&fake.server_url(), KEY, "pause")).await else {
        return;
    };
    assert_parsed_cleanly(sdk, &run);
    let types = run.types();
    assert_eq!(types.last(), Some(&"error"), "{sdk:?}: {types:?}");
    let error = &run.events.last().unwrap().event["error"];
    assert_eq!(error["code"], IDLE_TIMEOUT_CODE);
    assert_eq!(error["message"], IDLE_TIMEOUT_MESSAGE);
    assert_eq!(
        texts(&run.of_type("transcription.segment")),
        [segment_text(0, 16_000), segment_text(1, 16_000)]
    );
    assert_eq!(
        run.deltas_text(),
        full_text(&UTTERANCES),
        "the short last utterance came as deltas before the error"
    );
    assert!(run.of_type("transcription.done").is_empty());
    let log = fake.wait_ended(0).await;
    assert!(log.timed_out);
}

#[actix_rt::test]
async fn the_python_sdk_sees_error_3804_and_the_end_after_a_pause() {
    sdk_sees_3804_after_a_pause(Sdk::Python).await;
}

#[actix_rt::test]
async fn the_npm_sdk_sees_error_3804_and_the_end_after_a_pause() {
    sdk_sees_3804_after_a_pause(Sdk::Node).await;
}

/// "Rejects session.update after audio": error 3051 as the SDK's error
/// model; the session is unchanged and still transcribes to `done`.
async fn sdk_is_refused_a_session_change_after_audio(sdk: Sdk) {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let mut scenario = scenario(&fake.server_url(), KEY, "update_after_audio");
    scenario["late_update"] =
        json!({"audio_format": {"encoding": "pcm_f32le", "sample_rate": 16000}});
    let Some(run) = run(sdk, &scenario).await else {
        return;
    };
    assert_parsed_cleanly(sdk, &run);
    let errors = run.of_type("error");
    assert_eq!(errors.len(), 1, "{sdk:?}: {:?}", run.types());
    assert_eq!(errors[0]["error"]["code"], SESSION_LOCKED_CODE);
    assert_eq!(errors[0]["error"]["message"], SESSION_LOCKED_MESSAGE);
    assert_eq!(run.of_type("session.updated").len(), 1, "only the first");
    let done = run.of_type("transcription.done");
    assert_eq!(done[0]["text"], full_text(&UTTERANCES), "still s16le");
    let log = fake.wait_ended(0).await;
    assert_eq!(log.session_updates().len(), 2, "both updates reached it");
}

#[actix_rt::test]
async fn the_python_sdk_is_refused_a_session_change_after_audio() {
    sdk_is_refused_a_session_change_after_audio(Sdk::Python).await;
}

#[actix_rt::test]
async fn the_npm_sdk_is_refused_a_session_change_after_audio() {
    sdk_is_refused_a_session_change_after_audio(Sdk::Node).await;
}

// ---- the SDKs through the gateway's native proxy -----------------------------

/// A gateway whose Mistral is `fake`, and the server URL the SDK gets from
/// `/api/mistral/token` for `user`, whose key `KEY` is stored.
async fn gateway_for(
    fake: &FakeMistral,
    user: &str,
    extra_env: &[(&str, &str)],
) -> (chronus_gateway::RunningGateway, String) {
    let mut env = common::base_env("ws://127.0.0.1:9/stream-audio");
    env.insert("MISTRAL_WS_URL".into(), fake.url());
    for (name, value) in extra_env {
        env.insert((*name).into(), (*value).into());
    }
    let gateway = common::start_gateway(&env).await;
    let base = format!("http://{}", gateway.public_addr);
    let token = common::token_for(user);
    let stored = awc::Client::new()
        .put(format!("{base}/api/settings/api-keys/mistral"))
        .bearer_auth(&token)
        .send_json(&json!({"apiKey": KEY}))
        .await
        .expect("PUT the key");
    assert_eq!(stored.status(), 204);
    let mut answer = awc::Client::new()
        .get(format!("{base}/api/mistral/token"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET /api/mistral/token");
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.expect("token JSON");
    let server_url = body["serverUrl"].as_str().expect("serverUrl").to_owned();
    assert_eq!(server_url, format!("{base}/api/mistral"));
    (gateway, server_url)
}

/// The SDK, given the gateway's server URL and the chronus JWT as its API
/// key, transcribes through the native proxy as if it spoke to Mistral.
async fn sdk_transcribes_through_the_native_proxy(sdk: Sdk) {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let (gateway, server_url) = gateway_for(&fake, "sdk-user", &[]).await;
    let jwt = common::token_for("sdk-user");
    let Some(run) = run(sdk, &scenario(&server_url, &jwt, "transcribe_stream")).await else {
        gateway.stop().await;
        return;
    };
    let log = fake.wait_ended(0).await;

    assert_parsed_cleanly(sdk, &run);
    assert_session_updated_to_s16le(sdk, &run);
    assert_update_arrived_intact(sdk, &run, &log);
    assert_eq!(
        log.authorization.as_deref(),
        Some(&*format!("Bearer {KEY}")),
        "{sdk:?}: the user's stored key reaches Mistral, not the JWT"
    );
    assert_eq!(
        log.path_and_query,
        format!("{REALTIME_PATH}?model={DEFAULT_MODEL}")
    );
    assert_eq!(
        run.types(),
        log.sent_types(),
        "{sdk:?} receives every event Mistral sent"
    );
    let sent_segments: Vec<Value> = log
        .sent_json()
        .into_iter()
        .filter(|e| e["type"] == "transcription.segment")
        .collect();
    assert_eq!(sent_segments.len(), 3);
    assert_eq!(
        texts(&run.of_type("transcription.segment")),
        texts(&sent_segments.iter().collect::<Vec<_>>())
    );
    let done = run.of_type("transcription.done");
    assert_eq!(done.len(), 1, "{sdk:?}: {:?}", run.types());
    assert_eq!(done[0]["text"], full_text(&UTTERANCES));
    let appended: usize = log.appends().iter().map(Vec::len).sum();
    assert_eq!(appended, AUDIO_BYTES, "every audio byte reached Mistral");
    gateway.stop().await;
}

#[actix_rt::test]
async fn the_python_sdk_transcribes_through_the_native_proxy_with_the_stored_key() {
    sdk_transcribes_through_the_native_proxy(Sdk::Python).await;
}

#[actix_rt::test]
async fn the_npm_sdk_transcribes_through_the_native_proxy_with_the_stored_key() {
    sdk_transcribes_through_the_native_proxy(Sdk::Node).await;
}

/// Mode::DeltasThenDone through the proxy: the SDK gets Mistral's documented
/// flow verbatim, the whole text in `done`.
#[actix_rt::test]
async fn the_python_sdk_gets_deltas_and_the_full_done_text_through_the_native_proxy() {
    let sdk = Sdk::Python;
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::DeltasThenDone));
    let (gateway, server_url) = gateway_for(&fake, "deltas-user", &[]).await;
    let jwt = common::token_for("deltas-user");
    let Some(run) = run(sdk, &scenario(&server_url, &jwt, "transcribe_stream")).await else {
        gateway.stop().await;
        return;
    };
    assert_parsed_cleanly(sdk, &run);
    assert!(run.of_type("transcription.segment").is_empty());
    assert_eq!(run.deltas_text(), full_text(&UTTERANCES));
    assert_eq!(
        run.of_type("transcription.done")[0]["text"],
        full_text(&UTTERANCES)
    );
    gateway.stop().await;
}

/// "3804 after N s of no audio" through the proxy: the native proxy stays
/// verbatim (pause survival is for the chronus routes), so the SDK gets
/// Mistral's error 3804 as its own error model, then a clean end.
#[actix_rt::test]
async fn the_npm_sdk_gets_mistrals_3804_verbatim_through_the_native_proxy() {
    let sdk = Sdk::Node;
    let fake = FakeMistral::start(FakeMistralOptions {
        idle_timeout: Some(Duration::from_millis(800)),
        ..FakeMistralOptions::new(KEY, Mode::Segments)
    });
    let (gateway, server_url) = gateway_for(&fake, "pause-user", &[]).await;
    let jwt = common::token_for("pause-user");
    let Some(run) = run(sdk, &scenario(&server_url, &jwt, "pause")).await else {
        gateway.stop().await;
        return;
    };
    assert_parsed_cleanly(sdk, &run);
    let log = fake.wait_ended(0).await;
    assert!(log.timed_out);
    assert_eq!(run.types(), log.sent_types(), "verbatim, error included");
    assert_eq!(
        run.events.last().unwrap().event["error"]["code"],
        IDLE_TIMEOUT_CODE
    );
    assert_eq!(run.deltas_text(), full_text(&UTTERANCES));
    assert_eq!(
        fake.connections().len(),
        1,
        "the proxy opens no second session"
    );
    gateway.stop().await;
}

/// The SDK's `model` travels to Mistral when `MISTRAL_MODELS` offers it.
#[actix_rt::test]
async fn the_python_sdk_opens_the_model_it_asks_for_when_mistral_models_offers_it() {
    let sdk = Sdk::Python;
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let models = format!("{DEFAULT_MODEL},voxtral-other-model");
    let (gateway, server_url) =
        gateway_for(&fake, "model-user", &[("MISTRAL_MODELS", &models)]).await;
    let mut scenario = scenario(
        &server_url,
        &common::token_for("model-user"),
        "transcribe_stream",
    );
    scenario["model"] = json!("voxtral-other-model");
    let Some(run) = run(sdk, &scenario).await else {
        gateway.stop().await;
        return;
    };
    assert_eq!(run.exception, None, "{run:#?}");
    assert_eq!(
        run.events[0].event["session"]["model"],
        "voxtral-other-model"
    );
    assert_eq!(fake.wait_ended(0).await.model, "voxtral-other-model");
    gateway.stop().await;
}

/// A model the gateway does not offer: the SDK fails at once with the
/// gateway's own message (read from the envelope's `error.message`), and
/// Mistral is never contacted.
#[actix_rt::test]
async fn the_python_sdk_fails_fast_on_a_model_the_gateway_does_not_offer() {
    let sdk = Sdk::Python;
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let (gateway, server_url) = gateway_for(&fake, "bad-model-user", &[]).await;
    let mut scenario = scenario(
        &server_url,
        &common::token_for("bad-model-user"),
        "transcribe_stream",
    );
    scenario["model"] = json!("not-a-voxtral-model");
    let Some(run) = run(sdk, &scenario).await else {
        gateway.stop().await;
        return;
    };
    let (class, message) = run.exception.clone().expect("the SDK raises");
    assert_eq!(class, "RealtimeTranscriptionWSError", "{run:#?}");
    // The envelope's `error.message`: the gateway's message, naming the
    // models on offer.
    assert!(message.contains("not-a-voxtral-model"), "{message}");
    assert!(message.contains("available:"), "{message}");
    assert!(fake.connections().is_empty(), "Mistral never contacted");
    gateway.stop().await;
}
