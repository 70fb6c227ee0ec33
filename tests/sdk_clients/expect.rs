//! What the SDK tests expect of every run: the scenario they give the SDK
//! programs and the checks shared by the tests against the fake and through
//! the gateway.

use serde_json::{json, Value};

use super::{Sdk, SdkRun};
use crate::fake_mistral::{ConnectionLog, Upstreamed, DEFAULT_MODEL};

/// A Mistral key as the tests store it.
pub const KEY: &str = "mk-SDKTEST-93c1e0f4b2a87d65";
/// 1.25 s of 16 kHz s16le: utterances of 0.5 s, 0.5 s and a short 0.25 s.
pub const AUDIO_BYTES: usize = 40_000;
pub const UTTERANCES: [usize; 3] = [16_000, 16_000, 8_000];

/// What an SDK program is asked to do (tests/sdk/realtime_client.py).
pub fn scenario(server_url: &str, api_key: &str, flow: &str) -> Value {
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
pub fn session_field<'a>(session: &'a Value, snake: &str, camel: &str) -> &'a Value {
    session
        .get(snake)
        .or_else(|| session.get(camel))
        .unwrap_or(&Value::Null)
}

pub fn texts(events: &[&Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// What every run against a faithful peer shows: no exception, every event
/// parsed as the SDK's own model, `session.created` first with the session
/// the fake announced.
pub fn assert_parsed_cleanly(sdk: Sdk, run: &SdkRun) {
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
pub fn assert_session_updated_to_s16le(sdk: Sdk, run: &SdkRun) {
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
pub fn assert_update_arrived_intact(sdk: Sdk, run: &SdkRun, log: &ConnectionLog) {
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
