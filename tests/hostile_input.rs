//! Property tests for every parser that reads what a browser or an upstream
//! sends: whatever arrives, the gateway answers with an error, never a panic,
//! and what it accepts means exactly what the protocol says (PROTOCOL.md 2.2,
//! 2.3, 2.5, 3.1).
//!
//! Case counts are kept modest so the whole file runs in a few seconds; the
//! cargo-fuzz targets in `fuzz/` are for long runs.

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::header::{self, HeaderValue};
use actix_web::test::TestRequest;
use actix_web_actors::ws;
use base64::Engine;
use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{json, Value};
use uuid::Uuid;

use chronus_gateway::audio::{
    decode_base64_audio, s16le_to_f32le, AudioFormat, Encoding, SAMPLE_RATES,
};
use chronus_gateway::auth::{
    origin_allowed, token_from_request, AuthFailure, JwtValidator, TokenSource, JWT_SUBPROTOCOL,
};
use chronus_gateway::config::{JwtConfig, JwtKey};
use chronus_gateway::error::ErrorCode;
use chronus_gateway::session::admission::SELECTABLE_SUBPROTOCOLS;
use chronus_gateway::session::routes::parse_session_query;
use chronus_gateway::upstream::mux_frame::{audio_frame, MuxEvent};
use chronus_gateway::upstream::replay::ReplayBuffer;
use chronus_gateway::wire::browser::{ClientMessage, Provider};

const CASES: u32 = 256;
const SECRET: &[u8] = b"hostile-input-secret-hostile-input-secret";
const COOKIE: &str = "chronus_token";

fn config() -> ProptestConfig {
    ProptestConfig::with_cases(CASES)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

// ---- strategies ----------------------------------------------------------------

/// Words the parsers give meaning to: near-misses hit the interesting paths
/// far more often than random text.
const WORDS: &[&str] = &[
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

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(WORDS).prop_map(str::to_string),
        1 => ".{0,12}",
    ]
}

/// Arbitrary JSON trees, biased towards the keys and values our parsers use.
fn json_value() -> impl Strategy<Value = Value> {
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
fn frame_like() -> impl Strategy<Value = String> {
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
fn json_ish() -> impl Strategy<Value = String> {
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

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<[u8; 16]>().prop_map(Uuid::from_bytes)
}

/// Bytes `HeaderValue::from_bytes` accepts: visible ASCII, space, tab, obs-text.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![8 => 0x20u8..=0x7e, 1 => 0x80u8..=0xff, 1 => Just(b'\t')],
        0..80,
    )
}

/// A header value from raw bytes; leading/trailing whitespace is legal on the wire.
fn header_value(bytes: &[u8]) -> HeaderValue {
    HeaderValue::from_bytes(bytes).expect("strategy only yields legal header bytes")
}

/// What a JWT looks like on the wire (base64url segments).
fn jwt_shaped() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-]{1,24}\\.[A-Za-z0-9_-]{1,48}\\.[A-Za-z0-9_-]{1,43}"
}

/// Query-string text the `http` crate accepts in a URI, including broken
/// percent escapes and empty pairs.
fn raw_query() -> impl Strategy<Value = String> {
    "[A-Za-z0-9%&=+._~!$'()*,;:@/?-]{0,64}"
}

// ---- browser text frames (ClientMessage::parse) ----------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn client_message_parse_never_panics(text in json_ish()) {
        if let Err(error) = ClientMessage::parse(&text) {
            prop_assert_eq!(error.code, ErrorCode::BadMessage);
        }
    }

    #[test]
    fn valid_client_messages_round_trip(payload in any::<String>(), kind in 0..4u8, type_first in any::<bool>()) {
        let (value, expected) = match kind {
            0 => (json!({"type": "audio", "data": payload}), ClientMessage::Audio { data: payload.clone() }),
            1 => (json!({"type": "auth", "token": payload}), ClientMessage::Auth { token: payload.clone() }),
            2 => (json!({"type": "end"}), ClientMessage::End {}),
            _ => (json!({"type": "ping"}), ClientMessage::Ping {}),
        };
        // serde_json's map is sorted, so `type` comes last; also try it first.
        let text = if type_first {
            let mut fields = value.as_object().unwrap().clone();
            let kind = fields.remove("type").unwrap();
            let rest = Value::Object(fields).to_string();
            let rest = rest.trim_start_matches('{').trim_end_matches('}');
            let sep = if rest.is_empty() { "" } else { "," };
            format!("{{\"type\":{kind}{sep}{rest}}}")
        } else {
            value.to_string()
        };
        prop_assert_eq!(ClientMessage::parse(&text).unwrap(), expected);
    }

    #[test]
    fn client_messages_with_unknown_fields_are_bad_messages(
        kind in prop::sample::select(&["audio", "auth"][..]),
        extra in "[a-z_]{1,10}".prop_filter("not a known field", |k| !["type", "data", "token"].contains(&k.as_str())),
        value in json_value(),
    ) {
        let mut frame = json!({"type": kind, "data": "AAA=", "token": "t"});
        let object = frame.as_object_mut().unwrap();
        match kind {
            "audio" => { object.remove("token"); }
            _ => { object.remove("data"); }
        }
        object.insert(extra, value);
        prop_assert_eq!(ClientMessage::parse(&frame.to_string()).unwrap_err().code, ErrorCode::BadMessage);
    }
}

/// `deny_unknown_fields` is not enforced by serde for the unit variants of an
/// internally tagged enum, so `end` and `ping` take any extra field while
/// `audio` and `auth` refuse them (docs/security.md, "Findings").
#[test]
fn end_and_ping_with_unknown_fields_are_bad_messages() {
    for text in [
        r#"{"type":"end","x":1}"#,
        r#"{"type":"ping","data":"AAA="}"#,
    ] {
        assert_eq!(
            ClientMessage::parse(text).unwrap_err().code,
            ErrorCode::BadMessage,
            "{text}"
        );
    }
}

#[test]
fn deeply_nested_json_is_refused_without_overflowing_the_stack() {
    for nest in ["[", "{\"type\":"] {
        let text = nest.repeat(100_000);
        assert_eq!(
            ClientMessage::parse(&text).unwrap_err().code,
            ErrorCode::BadMessage
        );
        assert_eq!(MuxEvent::parse(&text), None);
    }
}

// ---- base64 audio in text frames ---------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn base64_audio_never_panics_and_decodes_to_the_exact_length(data in prop_oneof![
        any::<String>(),
        "[A-Za-z0-9+/=]{0,64}",
        "[A-Za-z0-9_=-]{0,64}",
    ]) {
        match decode_base64_audio(&data) {
            Ok(audio) => {
                // Standard padded base64: whole 4-character groups, 3 bytes
                // each, less one per `=`.
                prop_assert_eq!(data.len() % 4, 0);
                let padding = data.bytes().rev().take_while(|b| *b == b'=').count();
                prop_assert!(padding <= 2);
                prop_assert_eq!(audio.len(), data.len() / 4 * 3 - padding);
            }
            Err(error) => prop_assert_eq!(error.code, ErrorCode::InvalidAudioFormat),
        }
    }

    #[test]
    fn base64_audio_round_trips_what_a_browser_encodes(audio in prop::collection::vec(any::<u8>(), 0..512)) {
        let data = base64::engine::general_purpose::STANDARD.encode(&audio);
        prop_assert_eq!(decode_base64_audio(&data).unwrap(), Bytes::from(audio));
    }

    #[test]
    fn base64_audio_without_padding_or_in_the_url_alphabet_is_refused(
        audio in prop::collection::vec(any::<u8>(), 1..256),
    ) {
        if audio.len() % 3 != 0 {
            let unpadded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&audio);
            prop_assert!(decode_base64_audio(&unpadded).is_err());
        }
        let url = base64::engine::general_purpose::URL_SAFE.encode(&audio);
        if url.contains(['-', '_']) {
            prop_assert!(decode_base64_audio(&url).is_err());
        }
    }

    #[test]
    fn decoded_audio_is_checked_for_whole_samples(audio in prop::collection::vec(any::<u8>(), 0..64), s16 in any::<bool>()) {
        let format = AudioFormat {
            encoding: if s16 { Encoding::S16le } else { Encoding::F32le },
            sample_rate: 16_000,
        };
        let data = base64::engine::general_purpose::STANDARD.encode(&audio);
        let decoded = decode_base64_audio(&data).unwrap();
        prop_assert_eq!(
            format.check_whole_samples(&decoded).is_ok(),
            audio.len() % format.encoding.bytes_per_sample() == 0
        );
    }
}

// ---- whole samples and s16le → f32le ----------------------------------------------

#[test]
fn s16_to_f32_is_exact_for_every_i16() {
    let all: Vec<u8> = (i16::MIN..=i16::MAX).flat_map(i16::to_le_bytes).collect();
    let converted = s16le_to_f32le(&all);
    assert_eq!(converted.len(), all.len() * 2);
    for (sample, float) in (i16::MIN..=i16::MAX).zip(converted.chunks_exact(4)) {
        let float = f32::from_le_bytes(float.try_into().unwrap());
        // Exact: scaling back gives the sample with no rounding at all.
        assert_eq!(float * 32768.0, f32::from(sample), "sample {sample}");
        assert!((-1.0..1.0).contains(&float), "sample {sample}");
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn whole_sample_check_accepts_exactly_multiples_of_the_sample_size(
        len in 0usize..4096,
        s16 in any::<bool>(),
        rate in SAMPLE_RATES,
    ) {
        let format = AudioFormat {
            encoding: if s16 { Encoding::S16le } else { Encoding::F32le },
            sample_rate: rate,
        };
        let audio = vec![0u8; len];
        match format.check_whole_samples(&audio) {
            Ok(()) => prop_assert_eq!(len % format.encoding.bytes_per_sample(), 0),
            Err(error) => {
                prop_assert_ne!(len % format.encoding.bytes_per_sample(), 0);
                prop_assert_eq!(error.code, ErrorCode::InvalidAudioFormat);
            }
        }
    }

    #[test]
    fn s16_to_f32_doubles_the_length_and_keeps_sample_order(audio in prop::collection::vec(any::<u8>(), 0..1024)) {
        let converted = s16le_to_f32le(&audio);
        // A trailing half sample is dropped; the caller refuses it before.
        prop_assert_eq!(converted.len(), audio.len() / 2 * 4);
        if audio.len() % 2 == 0 {
            prop_assert_eq!(converted.len(), audio.len() * 2);
        }
        for (pair, float) in audio.chunks_exact(2).zip(converted.chunks_exact(4)) {
            let sample = i16::from_le_bytes([pair[0], pair[1]]);
            let float = f32::from_le_bytes(float.try_into().unwrap());
            prop_assert_eq!(float, f32::from(sample) / 32768.0);
        }
    }
}

// ---- thoth mux frames --------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mux_event_parse_never_panics(text in json_ish()) {
        let _ = MuxEvent::parse(&text);
    }

    #[test]
    fn valid_mux_events_round_trip(
        id in uuid(),
        text in any::<String>(),
        is_final in any::<bool>(),
        span in prop::option::of((0u32..10_000_000, 0u32..10_000_000)),
        kind in 0..4u8,
        code in any::<String>(),
    ) {
        let session_id = id.hyphenated().to_string();
        let (frame, expected) = match kind {
            0 => {
                let mut frame = json!({"type": "transcription", "session_id": session_id, "text": text, "is_final": is_final});
                let (start, end) = match span {
                    Some((a, b)) => (Some(f64::from(a) / 1000.0), Some(f64::from(b) / 1000.0)),
                    None => (None, None),
                };
                if let (Some(start), Some(end)) = (start, end) {
                    frame["start"] = start.into();
                    frame["end"] = end.into();
                }
                (frame, MuxEvent::Transcription { session_id: id, text, is_final, start, end })
            }
            1 => (json!({"type": "session.done", "session_id": session_id}), MuxEvent::SessionDone { session_id: id }),
            2 => (
                json!({"type": "error", "session_id": session_id, "code": code, "message": text}),
                MuxEvent::Error { session_id: Some(id), code, message: text },
            ),
            _ => (
                json!({"type": "error", "code": code, "message": text}),
                MuxEvent::Error { session_id: None, code, message: text },
            ),
        };
        prop_assert_eq!(MuxEvent::parse(&frame.to_string()), Some(expected));
    }

    #[test]
    fn mux_events_with_a_malformed_session_id_are_skipped(
        id in "[0-9a-z-]{0,40}".prop_filter("not a uuid", |s| Uuid::parse_str(s).is_err()),
        kind in prop::sample::select(&["transcription", "session.done", "error"][..]),
    ) {
        let frame = json!({"type": kind, "session_id": id, "text": "a", "is_final": true});
        prop_assert_eq!(MuxEvent::parse(&frame.to_string()), None);
    }

    #[test]
    fn audio_frame_is_the_uuid_then_the_audio(id in uuid(), audio in prop::collection::vec(any::<u8>(), 0..2048)) {
        let frame = audio_frame(&id, &audio);
        prop_assert_eq!(frame.len(), 16 + audio.len());
        prop_assert_eq!(&frame[..16], id.as_bytes());
        prop_assert_eq!(&frame[16..], &audio[..]);
        prop_assert_eq!(Uuid::from_slice(&frame[..16]).unwrap(), id);
    }
}

// ---- the replay buffer -------------------------------------------------------------

#[derive(Debug, Clone)]
enum ReplayOp {
    /// Push this many whole samples.
    Push(u16),
    /// A final result ended at this many seconds (anything thoth may send).
    Confirm(f64),
}

fn replay_op() -> impl Strategy<Value = ReplayOp> {
    prop_oneof![
        3 => (0u16..2_000).prop_map(ReplayOp::Push),
        2 => (0u32..400_000).prop_map(|ms| ReplayOp::Confirm(f64::from(ms) / 1000.0)),
        1 => any::<f64>().prop_map(ReplayOp::Confirm),
        1 => prop::sample::select(&[f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, -1.0, 1e300][..])
            .prop_map(ReplayOp::Confirm),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// A model of the buffer: positions in samples from the session's start.
    /// `start` is where the kept audio begins; it only moves forward, to the
    /// confirmed point or to what the bound forces out.
    #[test]
    fn replay_buffer_keeps_exactly_the_unconfirmed_suffix_within_its_bound(
        s16 in any::<bool>(),
        rate in prop::sample::select(&[8_000u32, 16_000, 44_100, 48_000][..]),
        max_secs in 0u64..3,
        ops in prop::collection::vec(replay_op(), 0..40),
    ) {
        let format = AudioFormat {
            encoding: if s16 { Encoding::S16le } else { Encoding::F32le },
            sample_rate: rate,
        };
        let bps = format.encoding.bytes_per_sample() as u64;
        let max_samples = max_secs * u64::from(rate);
        let mut buffer = ReplayBuffer::new(format, max_secs);
        let mut pushed: Vec<u8> = Vec::new();
        let mut confirmed = 0u64;
        let mut counter = 0u8;
        for op in ops {
            match op {
                ReplayOp::Push(samples) => {
                    let chunk: Vec<u8> = (0..u64::from(samples) * bps)
                        .map(|_| { counter = counter.wrapping_add(1); counter })
                        .collect();
                    pushed.extend_from_slice(&chunk);
                    buffer.push(Bytes::from(chunk));
                }
                ReplayOp::Confirm(end) => {
                    let total = pushed.len() as u64 / bps;
                    if end.is_finite() && end >= 0.0 {
                        // The nearest sample, never past the audio sent.
                        let end = ((end * f64::from(rate)).round() as u64).min(total);
                        confirmed = confirmed.max(end);
                    }
                    buffer.confirm(end);
                }
            }
            let total = pushed.len() as u64 / bps;
            let start = confirmed.max(total.saturating_sub(max_samples));
            let kept: Vec<u8> = buffer.chunks().flat_map(|c| c.iter().copied()).collect();

            prop_assert!(buffer.kept_bytes() <= max_samples * bps, "bounded");
            prop_assert_eq!(buffer.kept_bytes(), kept.len() as u64);
            prop_assert_eq!(&kept[..], &pushed[(start * bps) as usize..], "kept = suffix from start");
            prop_assert_eq!(buffer.resumable(), start == confirmed, "resumable iff no gap");
            if buffer.resumable() {
                prop_assert_eq!(&kept[..], &pushed[(confirmed * bps) as usize..]);
            }
            prop_assert_eq!(buffer.resume_offset_ms(), start * 1000 / u64::from(rate));
        }
    }
}

// ---- token extraction (header, subprotocol, query, cookie) -------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Place {
    Header,
    Subprotocol,
    Query,
    Cookie,
}

const PLACES: [Place; 4] = [
    Place::Header,
    Place::Subprotocol,
    Place::Query,
    Place::Cookie,
];

fn source_of(place: Place) -> TokenSource {
    match place {
        Place::Header => TokenSource::AuthorizationHeader,
        Place::Subprotocol => TokenSource::Subprotocol,
        Place::Query => TokenSource::Query,
        Place::Cookie => TokenSource::Cookie,
    }
}

/// A WebSocket upgrade request, as a browser sends it.
fn upgrade_request() -> TestRequest {
    TestRequest::get()
        .insert_header((header::UPGRADE, "websocket"))
        .insert_header((header::CONNECTION, "Upgrade"))
        .insert_header((header::SEC_WEBSOCKET_VERSION, "13"))
        .insert_header((header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ=="))
}

/// The subprotocol the handshake selects for this request (what the gateway answers).
fn selected_subprotocol(req: &actix_web::HttpRequest) -> Option<String> {
    let response = ws::handshake_with_protocols(req, SELECTABLE_SUBPROTOCOLS)
        .expect("a valid upgrade request")
        .finish();
    response
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .map(|v| v.to_str().unwrap().to_string())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn token_extraction_never_panics_on_arbitrary_headers(
        authorization in prop::option::of(header_bytes()),
        protocols in prop::collection::vec(header_bytes(), 0..3),
        cookie in prop::option::of(header_bytes()),
        origin in prop::option::of(header_bytes()),
        query in raw_query(),
        cookie_name in ".{0,12}",
        allowed in prop::collection::vec("[a-z:/.]{0,20}", 0..3),
    ) {
        let mut req = upgrade_request().uri(&format!("/api/audio/transcribe?{query}"));
        if let Some(v) = &authorization {
            req = req.insert_header((header::AUTHORIZATION, header_value(v)));
        }
        for v in &protocols {
            req = req.append_header((header::SEC_WEBSOCKET_PROTOCOL, header_value(v)));
        }
        if let Some(v) = &cookie {
            req = req.insert_header((header::COOKIE, header_value(v)));
        }
        if let Some(v) = &origin {
            req = req.insert_header((header::ORIGIN, header_value(v)));
        }
        let req = req.to_http_request();
        if let Some((token, _)) = token_from_request(&req, &cookie_name) {
            prop_assert!(!token.is_empty());
        }
        let _ = origin_allowed(&req, Some(&allowed));
        prop_assert!(origin_allowed(&req, None));
        // Whatever is offered, only `chronus.jwt` can ever be selected.
        let selected = selected_subprotocol(&req);
        prop_assert!(selected.is_none() || selected.as_deref() == Some(JWT_SUBPROTOCOL));
    }

    #[test]
    fn a_token_in_any_one_source_is_found(
        token in jwt_shaped(),
        place in prop::sample::select(PLACES.to_vec()),
        cookie_name in "[A-Za-z0-9_]{1,16}",
        before in prop::collection::vec("[a-z.]{1,10}", 0..3),
        after in prop::collection::vec("[a-z.]{1,10}", 0..3),
        noise in any::<bool>(),
    ) {
        let mut req = upgrade_request();
        // Decoys that hold no token: a request may carry them all.
        if noise {
            req = req
                .insert_header((header::AUTHORIZATION, "Basic dXNlcjpwYXNz"))
                .uri("/api/audio/transcribe?token=&noteId=1");
        } else {
            req = req.uri("/api/audio/transcribe?provider=thoth");
        }
        let mut cookies = vec!["other=1".to_string()];
        match place {
            Place::Header => {
                req = req.insert_header((header::AUTHORIZATION, format!("Bearer {token}")));
            }
            Place::Subprotocol => {
                let mut offered = before.clone();
                offered.push(JWT_SUBPROTOCOL.to_string());
                offered.push(token.clone());
                offered.extend(after.iter().cloned());
                req = req.insert_header((header::SEC_WEBSOCKET_PROTOCOL, offered.join(", ")));
            }
            Place::Query => {
                let encoded: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
                req = req.uri(&format!("/api/audio/transcribe?provider=thoth&token={encoded}&noteId=2"));
            }
            Place::Cookie => cookies.push(format!("{cookie_name}={token}")),
        }
        req = req.insert_header((header::COOKIE, cookies.join("; ")));
        let req = req.to_http_request();
        prop_assert_eq!(token_from_request(&req, &cookie_name), Some((token.clone(), source_of(place))));
        // The token is extracted, never selected: the answer names only the marker.
        let selected = selected_subprotocol(&req);
        let expected = (place == Place::Subprotocol).then_some(JWT_SUBPROTOCOL);
        prop_assert_eq!(selected.as_deref(), expected);
    }

    #[test]
    fn sources_are_tried_in_protocol_order(
        tokens in [jwt_shaped(), jwt_shaped(), jwt_shaped(), jwt_shaped()],
        present in [any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()],
    ) {
        let mut req = upgrade_request();
        if present[0] {
            req = req.insert_header((header::AUTHORIZATION, format!("bearer {}", tokens[0])));
        }
        if present[1] {
            req = req.insert_header((header::SEC_WEBSOCKET_PROTOCOL, format!("{JWT_SUBPROTOCOL}, {}", tokens[1])));
        }
        let query = if present[2] { format!("token={}", tokens[2]) } else { String::new() };
        req = req.uri(&format!("/api/audio/transcribe?{query}"));
        if present[3] {
            req = req.insert_header((header::COOKIE, format!("{COOKIE}={}", tokens[3])));
        }
        let req = req.to_http_request();
        let expected = (0..4)
            .find(|i| present[*i])
            .map(|i| (tokens[i].clone(), source_of(PLACES[i])));
        prop_assert_eq!(token_from_request(&req, COOKIE), expected);
    }

    #[test]
    fn origin_is_compared_case_and_trailing_slash_insensitively(
        origin in "https?://[a-zA-Z0-9.-]{1,20}(:[0-9]{1,5})?/?",
        allowed in prop::collection::vec("https?://[a-z0-9.-]{1,20}(:[0-9]{1,5})?", 0..3),
    ) {
        let req = TestRequest::default().insert_header((header::ORIGIN, origin.as_str())).to_http_request();
        let normalized = origin.trim_end_matches('/').to_ascii_lowercase();
        prop_assert_eq!(origin_allowed(&req, Some(&allowed)), allowed.contains(&normalized));
    }
}

// ---- JWT validation ----------------------------------------------------------------

fn hs256_validator() -> JwtValidator {
    JwtValidator::new(&JwtConfig {
        algorithm: jsonwebtoken::Algorithm::HS256,
        key: JwtKey::Secret(SECRET.to_vec()),
        issuer: None,
        audience: None,
        cookie_name: COOKIE.into(),
    })
    .expect("a secret is a usable key")
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sign_hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A header an attacker may write: any algorithm name, key hints.
fn hostile_header() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            prop::sample::select(
                &[
                    "HS256", "HS384", "HS512", "RS256", "PS256", "ES256", "EdDSA", "none", "None",
                    "NONE", ""
                ][..]
            )
            .prop_map(|s| Value::String(s.into())),
            json_value(),
        ],
        prop::option::of(word()),
        prop::option::of(word()),
    )
        .prop_map(|(alg, kid, jku)| {
            let mut header = json!({"alg": alg, "typ": "JWT"});
            if let Some(kid) = kid {
                header["kid"] = kid.into();
            }
            if let Some(jku) = jku {
                header["jku"] = jku.into();
            }
            header
        })
}

/// Signatures anyone without the secret can produce.
fn forged_signature(message: String) -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        prop::collection::vec(any::<u8>(), 0..80).prop_map(|b| b64url(&b)),
        "[A-Za-z0-9_-]{0,90}",
        // An HMAC under a key that is not ours (empty, guessed, near-miss).
        prop_oneof![
            Just(Vec::new()),
            Just(SECRET[..SECRET.len() - 1].to_vec()),
            prop::collection::vec(any::<u8>(), 1..48),
        ]
        .prop_filter("not the key", |k| k.as_slice() != SECRET)
        .prop_map(move |key| {
            jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &jsonwebtoken::EncodingKey::from_secret(&key),
                jsonwebtoken::Algorithm::HS256,
            )
            .unwrap()
        }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn jwt_validate_never_panics(token in prop_oneof![any::<String>(), jwt_shaped(), json_ish()]) {
        let _ = hs256_validator().validate(&token);
    }

    #[test]
    fn jwt_validate_never_accepts_a_token_not_signed_with_the_key(
        (message, signature) in (hostile_header(), prop_oneof![
            Just(json!({"sub": "user-1", "exp": now() + 600})),
            json_value(),
        ])
        .prop_map(|(header, claims)| {
            format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()))
        })
        .prop_flat_map(|message| (Just(message.clone()), forged_signature(message))),
    ) {
        let token = format!("{message}.{signature}");
        prop_assert!(hs256_validator().validate(&token).is_err(), "accepted {token}");
    }

    #[test]
    fn any_single_character_change_to_a_valid_token_is_refused(
        sub in "[a-z0-9-]{1,36}",
        at in any::<prop::sample::Index>(),
        replacement in prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ".chars().collect::<Vec<_>>()
        ),
    ) {
        let validator = hs256_validator();
        let token = sign_hs256(SECRET, &json!({"sub": sub, "exp": now() + 600}));
        prop_assert!(validator.validate(&token).is_ok());
        let at = at.index(token.len());
        prop_assume!(token.as_bytes()[at] != replacement as u8);
        let mut forged = token.clone();
        forged.replace_range(at..=at, &replacement.to_string());
        let refused = validator.validate(&forged);
        prop_assert!(refused.is_err(), "accepted a token changed at {}", at);
    }

    #[test]
    fn a_genuine_token_is_accepted_iff_its_subject_is_usable(sub in any::<String>(), ttl in 10u64..100_000) {
        let token = sign_hs256(SECRET, &json!({"sub": sub, "exp": now() + ttl}));
        match hs256_validator().validate(&token) {
            Ok(claims) => {
                prop_assert!(!sub.is_empty() && sub.len() <= 256);
                prop_assert_eq!(claims.sub, sub);
            }
            Err(failure) => {
                prop_assert!(sub.is_empty() || sub.len() > 256);
                prop_assert_eq!(failure, AuthFailure::MissingClaim);
            }
        }
    }
}

// ---- the session query -------------------------------------------------------------

fn query_value(known: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        prop::sample::select(known).prop_map(str::to_string),
        ".{0,40}",
    ])
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_session_query_never_panics(query in prop_oneof![any::<String>(), raw_query()]) {
        if let Err(error) = parse_session_query(&query) {
            prop_assert!(matches!(error.code, ErrorCode::BadMessage | ErrorCode::InvalidAudioFormat));
            // A refused value is echoed truncated (32 characters, escaped), never whole.
            prop_assert!(error.message.chars().count() < 400);
        }
    }

    #[test]
    fn parse_session_query_follows_the_protocol(
        provider in query_value(&["thoth", "mistral", "Thoth", ""]),
        encoding in query_value(&["f32le", "s16le", "F32LE", "s16"]),
        rate in prop::option::of(prop_oneof![
            (0u32..100_000).prop_map(|r| r.to_string()),
            SAMPLE_RATES.prop_map(|r| r.to_string()),
            "[^0-9]{0,8}",
        ]),
        extra in prop::collection::vec(("(noteId|language|token|[a-z]{1,6})", ".{0,20}"), 0..3),
    ) {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &extra {
            if !["provider", "encoding", "sampleRate"].contains(&k.as_str()) {
                query.append_pair(k, v);
            }
        }
        for (k, v) in [("provider", &provider), ("encoding", &encoding), ("sampleRate", &rate)] {
            if let Some(v) = v {
                query.append_pair(k, v);
            }
        }
        let result = parse_session_query(&query.finish());
        let expected_provider = match provider.as_deref() {
            None | Some("thoth") => Ok(Provider::Thoth),
            Some("mistral") => Ok(Provider::Mistral),
            Some(_) => Err(ErrorCode::BadMessage),
        };
        let expected_encoding = match encoding.as_deref() {
            None | Some("f32le") => Ok(Encoding::F32le),
            Some("s16le") => Ok(Encoding::S16le),
            Some(_) => Err(ErrorCode::InvalidAudioFormat),
        };
        let expected_rate = match rate.as_deref() {
            None => Ok(16_000),
            Some(raw) => raw
                .parse::<u32>()
                .ok()
                .filter(|r| SAMPLE_RATES.contains(r))
                .ok_or(ErrorCode::InvalidAudioFormat),
        };
        match (expected_provider, expected_encoding, expected_rate) {
            (Ok(provider), Ok(encoding), Ok(sample_rate)) => {
                let request = result.unwrap();
                prop_assert_eq!(request.provider, provider);
                prop_assert_eq!(request.format, AudioFormat { encoding, sample_rate });
            }
            (Err(code), _, _) | (Ok(_), Err(code), _) | (Ok(_), Ok(_), Err(code)) => {
                prop_assert_eq!(result.unwrap_err().code, code);
            }
        }
    }
}
