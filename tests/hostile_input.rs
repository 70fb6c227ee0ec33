//! Property tests for every parser that reads what a browser or an upstream
//! sends: whatever arrives, the gateway answers with an error, never a panic,
//! and what it accepts means exactly what the protocol says (PROTOCOL.md 2.2,
//! 2.3, 2.5, 3.1).
//!
//! Case counts are kept modest so the whole file runs in a few seconds; the
//! cargo-fuzz targets in `fuzz/` are for long runs.
//!
//! This file: browser text frames, base64 audio, samples and the session
//! query; thoth's frames are in `hostile_upstream_frames.rs`, tokens in
//! `hostile_tokens.rs`.

#[path = "common/hostile.rs"]
mod hostile;

use base64::Engine;
use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{json, Value};

use chronus_gateway::audio::{
    decode_base64_audio, s16le_to_f32le, AudioFormat, Encoding, SAMPLE_RATES,
};
use chronus_gateway::error::ErrorCode;
use chronus_gateway::session::routes::parse_session_query;
use chronus_gateway::wire::browser::{ClientMessage, Provider};
use chronus_gateway::wire::thoth_mux::MuxEvent;

use hostile::*;

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
