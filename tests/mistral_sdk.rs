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
use sdk_clients::{run, Sdk, SdkRun};
use serde_json::{json, Value};

/// A Mistral key as the tests store it.
const KEY: &str = "mk-SDKTEST-93c1e0f4b2a87d65";
/// 1.25 s of 16 kHz s16le: utterances of 0.5 s, 0.5 s and a short 0.25 s.
const AUDIO_BYTES: usize = 40_000;
const UTTERANCES: [usize; 3] = [16_000, 16_000, 8_000];

/// What an SDK program is asked to do (tests/sdk/realtime_client.py).
fn scenario(server_url: &str, api_key: &str, flow: &str) -> Value {
    json!({
        "server_url": server_url,
        "api_key": api_key,
        "model": DEFAULT_MODEL,
        "encoding": "pcm_s16le",
        "sample_rate": 16000,
        "audio_bytes": AUDIO_BYTES,
        "chunk_bytes": 4096,
        "flow": flow,
    })
}

/// A field of the SDK's session model: snake_case in Python, camelCase in
/// the npm SDK's model.
fn session_field<'a>(session: &'a Value, snake: &str, camel: &str) -> &'a Value {
    session
        .get(snake)
        .or_else(|| session.get(camel))
        .unwrap_or(&Value::Null)
}

fn texts(events: &[&Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// What every run against a faithful peer shows: no exception, every event
/// parsed as the SDK's own model, `session.created` first with the session
/// the fake announced.
fn assert_parsed_cleanly(sdk: Sdk, run: &SdkRun) {
    assert_eq!(run.exception, None, "{sdk:?}: {run:#?}");
    assert!(
        run.unknown().is_empty(),
        "{sdk:?} could not parse: {:#?}",
        run.unknown()
    );
    assert_eq!(run.types().first(), Some(&"session.created"), "{sdk:?}");
    let created = &run.events[0].event["session"];
    assert_eq!(created["model"], DEFAULT_MODEL, "{sdk:?}");
    assert!(session_field(created, "request_id", "requestId").is_string());
}

/// The SDK's view of the session after `session.updated`: the applied one.
fn assert_session_updated_to_s16le(sdk: Sdk, run: &SdkRun) {
    let updated = run.of_type("session.updated");
    assert_eq!(updated.len(), 1, "{sdk:?}: {:?}", run.types());
    let format = session_field(&updated[0]["session"], "audio_format", "audioFormat");
    assert_eq!(format["encoding"], "pcm_s16le", "{sdk:?}");
    assert_eq!(
        session_field(format, "sample_rate", "sampleRate"),
        16000,
        "{sdk:?}"
    );
    assert_eq!(updated[0]["session"]["model"], DEFAULT_MODEL);
}

/// The SDK's own `session.update` arrived at `log`'s end byte for byte.
fn assert_update_arrived_intact(sdk: Sdk, run: &SdkRun, log: &ConnectionLog) {
    let sent = run.sent_session_updates();
    assert_eq!(sent.len(), 1, "{sdk:?}: {:?}", run.sdk_sent);
    assert_eq!(
        log.received.first(),
        Some(&Upstreamed::Text(sent[0].to_owned())),
        "{sdk:?}: its session.update reaches Mistral intact"
    );
    assert_eq!(
        log.session_updates()[0],
        json!({"type": "session.update", "session": {"audio_format": {"encoding": "pcm_s16le", "sample_rate": 16000}}}),
        "{sdk:?}"
    );
}

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
#[actix_rt::test]
async fn the_python_sdk_reads_the_fake_in_trailing_deltas_mode() {
    let sdk = Sdk::Python;
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
