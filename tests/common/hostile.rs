//! What the hostile-input property tests share: their case count, test
//! secrets, and proptest strategies for words, JSON, frames, headers and
//! tokens that a browser or an upstream might send.
#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::header::HeaderValue;
use proptest::prelude::*;
use serde_json::Value;
use uuid::Uuid;

pub const CASES: u32 = 256;
pub const SECRET: &[u8] = b"hostile-input-secret-hostile-input-secret";
pub const COOKIE: &str = "chronus_token";

pub fn config() -> ProptestConfig {
    ProptestConfig::with_cases(CASES)
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

// ---- strategies ----------------------------------------------------------------

/// Words the parsers give meaning to: near-misses hit the interesting paths
/// far more often than random text.
pub const WORDS: &[&str] = &[
    "type",
    "audio",
    "end",
    "ping",
    "auth",
    "data",
    "token",
    "Audio",
    "AUDIO",
    "transcription",
    "session.done",
    "error",
    "session_id",
    "text",
    "is_final",
    "start",
    "code",
    "message",
    "6f1c1a5e-8d7b-4c1e-9a3f-0b2d4e6f8a10",
    "6F1C1A5E8D7B4C1E9A3F0B2D4E6F8A10",
    "",
    "AAA=",
    "null",
];

pub fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(WORDS).prop_map(str::to_string),
        1 => ".{0,12}",
    ]
}

/// Arbitrary JSON trees, biased towards the keys and values our parsers use.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        word().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((word(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// A JSON object with a `type` and a few fields: the shape of every frame.
pub fn frame_like() -> impl Strategy<Value = String> {
    (word(), prop::collection::vec((word(), json_value()), 0..4)).prop_map(|(kind, fields)| {
        let mut object = serde_json::Map::new();
        object.insert("type".into(), Value::String(kind));
        for (k, v) in fields {
            object.insert(k, v);
        }
        Value::Object(object).to_string()
    })
}

/// Text that is sometimes JSON, sometimes almost JSON, sometimes anything.
pub fn json_ish() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        json_value().prop_map(|v| v.to_string()),
        frame_like(),
        // Valid JSON cut short or with a stray byte: the classic parser traps.
        (frame_like(), any::<prop::sample::Index>()).prop_map(|(s, cut)| {
            let mut end = cut.index(s.len() + 1);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_string()
        }),
        (frame_like(), any::<char>(), any::<prop::sample::Index>()).prop_map(|(s, c, at)| {
            let mut at = at.index(s.len() + 1);
            while !s.is_char_boundary(at) {
                at -= 1;
            }
            let mut s = s;
            s.insert(at, c);
            s
        }),
    ]
}

pub fn uuid() -> impl Strategy<Value = Uuid> {
    any::<[u8; 16]>().prop_map(Uuid::from_bytes)
}

/// Bytes `HeaderValue::from_bytes` accepts: visible ASCII, space, tab, obs-text.
pub fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![8 => 0x20u8..=0x7e, 1 => 0x80u8..=0xff, 1 => Just(b'\t')],
        0..80,
    )
}

/// A header value from raw bytes; leading/trailing whitespace is legal on the wire.
pub fn header_value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).expect("strategy only yields legal header bytes")
}

/// What a JWT looks like on the wire (base64url segments).
pub fn jwt_shaped() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,24}\\.[A-Za-z0-9_-]{1,48}\\.[A-Za-z0-9_-]{1,43}"
}

/// Query-string text the `http` crate accepts in a URI, including broken
/// percent escapes and empty pairs.
pub fn raw_query() -> impl Strategy<Value = String> {
    "[A-Za-z0-9%&=+._~!$'()*,;:@/?-]{0,64}"
}
