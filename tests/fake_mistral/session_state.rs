//! The session a fake Mistral connection has applied: what `session.created`
//! and `session.updated` report (the SDKs require `request_id`, `model` and
//! `audio_format`, and replace their own view of the session with it).

use serde_json::{json, Map, Value};

/// What `session.created` announces before any `session.update`.
pub const DEFAULT_ENCODING: &str = "pcm_s16le";
pub const DEFAULT_SAMPLE_RATE: u64 = 16_000;
/// The encodings the SDKs' `AudioEncoding` knows.
pub const ENCODINGS: [&str; 6] = [
    "pcm_s16le",
    "pcm_s32le",
    "pcm_f16le",
    "pcm_f32le",
    "pcm_mulaw",
    "pcm_alaw",
];
/// Session fields a `session.update` may set (besides `audio_format`).
const PLAIN_FIELDS: [&str; 5] = [
    "target_streaming_delay_ms",
    "diarize",
    "context_bias",
    "language",
    "turn_detection",
];

/// Why a `session.update` was not applied.
#[derive(Debug, PartialEq)]
pub enum UpdateRefused {
    /// Not an object, or an audio format the SDKs do not know.
    Invalid(String),
}

#[derive(Debug, Clone)]
pub struct AppliedSession {
    fields: Map<String, Value>,
}

impl AppliedSession {
    pub fn new(request_id: String, model: String) -> Self {
        let session = json!({
            "request_id": request_id,
            "model": model,
            "audio_format": {"encoding": DEFAULT_ENCODING, "sample_rate": DEFAULT_SAMPLE_RATE},
        });
        let Value::Object(fields) = session else {
            unreachable!("a json! object literal")
        };
        AppliedSession { fields }
    }

    /// The `session` object of `session.created`/`session.updated`.
    pub fn to_json(&self) -> Value {
        Value::Object(self.fields.clone())
    }

    pub fn model(&self) -> &str {
        self.fields["model"].as_str().unwrap_or_default()
    }

    /// The `language` the client set, if any (`done.language`).
    pub fn language(&self) -> Value {
        self.fields.get("language").cloned().unwrap_or(Value::Null)
    }

    /// Bytes per sample and per second of the applied audio format.
    pub fn audio_rates(&self) -> (usize, f64) {
        let format = &self.fields["audio_format"];
        let bytes_per_sample = match format["encoding"].as_str() {
            Some("pcm_s16le" | "pcm_f16le") => 2,
            Some("pcm_mulaw" | "pcm_alaw") => 1,
            _ => 4,
        };
        let rate = format["sample_rate"]
            .as_f64()
            .unwrap_or(DEFAULT_SAMPLE_RATE as f64);
        (bytes_per_sample, rate * bytes_per_sample as f64)
    }

    /// The session `update` (a `session.update`'s `session`) would make;
    /// `null` fields unset, unknown fields are ignored (as the SDK models do).
    pub fn updated(&self, update: &Value) -> Result<AppliedSession, UpdateRefused> {
        let Some(update) = update.as_object() else {
            return Err(UpdateRefused::Invalid("session must be an object".into()));
        };
        let mut next = self.clone();
        if let Some(format) = update.get("audio_format").filter(|f| !f.is_null()) {
            let encoding = format["encoding"].as_str().unwrap_or_default();
            if !ENCODINGS.contains(&encoding) || !format["sample_rate"].is_u64() {
                return Err(UpdateRefused::Invalid(format!(
                    "invalid audio_format: {format}"
                )));
            }
            next.fields.insert(
                "audio_format".into(),
                json!({"encoding": encoding, "sample_rate": format["sample_rate"]}),
            );
        }
        for field in PLAIN_FIELDS {
            match update.get(field) {
                Some(Value::Null) => {
                    next.fields.remove(field);
                }
                Some(value) => {
                    next.fields.insert(field.into(), value.clone());
                }
                None => {}
            }
        }
        // The update carries speaker name → reference audio; the session
        // reports the names (the SDKs' session model has a list of strings).
        if let Some(Value::Object(references)) = update.get("speaker_references") {
            let names: Vec<Value> = references.keys().cloned().map(Value::String).collect();
            next.fields
                .insert("speaker_references".into(), Value::Array(names));
        }
        Ok(next)
    }

    /// Whether `other` differs from this session in any field.
    pub fn differs_from(&self, other: &AppliedSession) -> bool {
        self.fields != other.fields
    }
}
