//! Mistral's realtime wire format (PROTOCOL.md 4, REAL-PEERS.md 4): the
//! frames the gateway builds toward Mistral and the events it reads back.

use base64::Engine;
use serde::Deserialize;

use crate::audio::{AudioFormat, Encoding};
use crate::error::{ErrorCode, GatewayError};

/// Largest audio payload of one `input_audio.append`, in decoded bytes
/// (Mistral's limit). Bigger chunks are split on sample boundaries.
pub const MAX_APPEND_BYTES: usize = 262_144;
/// Mistral's error code for a session it ended because no audio came for
/// about 30 s ("timeout waiting for response").
pub const IDLE_TIMEOUT_CODE: u64 = 3804;

/// `session.update` announcing the session's audio format.
pub fn session_update(format: AudioFormat) -> String {
    let encoding = match format.encoding {
        Encoding::F32le => "pcm_f32le",
        Encoding::S16le => "pcm_s16le",
    };
    serde_json::json!({
        "type": "session.update",
        "session": {"audio_format": {"encoding": encoding, "sample_rate": format.sample_rate}},
    })
    .to_string()
}

/// `input_audio.append` frames for `audio`, each carrying at most
/// [`MAX_APPEND_BYTES`] and a whole number of `bytes_per_sample` samples.
pub fn append_frames(audio: &[u8], bytes_per_sample: usize) -> Vec<String> {
    let bytes_per_sample = bytes_per_sample.max(1);
    let chunk = MAX_APPEND_BYTES - MAX_APPEND_BYTES % bytes_per_sample;
    audio
        .chunks(chunk)
        .map(|piece| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(piece);
            // Base64 needs no JSON escaping.
            format!(r#"{{"type":"input_audio.append","audio":"{encoded}"}}"#)
        })
        .collect()
}

/// `input_audio.flush`: transcribe everything sent so far.
pub const INPUT_AUDIO_FLUSH: &str = r#"{"type":"input_audio.flush"}"#;
/// `input_audio.end`: no more audio; Mistral answers with `transcription.done`.
pub const INPUT_AUDIO_END: &str = r#"{"type":"input_audio.end"}"#;

/// The Mistral events the gateway reads (PROTOCOL.md 4); other fields and
/// unknown types are ignored.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(tag = "type")]
pub enum MistralEvent {
    #[serde(rename = "session.created")]
    SessionCreated,
    #[serde(rename = "session.updated")]
    SessionUpdated,
    #[serde(rename = "transcription.language")]
    Language,
    #[serde(rename = "transcription.text.delta")]
    TextDelta { text: String },
    #[serde(rename = "transcription.segment")]
    Segment {
        text: String,
        start: Option<f64>,
        end: Option<f64>,
    },
    #[serde(rename = "transcription.done")]
    Done {
        /// The session's whole text (absent in some older servers).
        #[serde(default)]
        text: Option<String>,
    },
    #[serde(rename = "error")]
    Error {
        #[serde(default)]
        error: MistralErrorBody,
    },
    #[serde(other)]
    Unknown,
}

/// `{"message", "code"}` of a Mistral `error` event.
#[derive(Debug, Default, PartialEq, Deserialize)]
pub struct MistralErrorBody {
    /// A string or an object; logged, never shown to the browser.
    #[serde(default)]
    pub message: serde_json::Value,
    /// Numeric; kept as the envelope's `upstreamCode`.
    #[serde(default)]
    pub code: serde_json::Value,
}

impl MistralErrorBody {
    /// Mistral ended the session because no audio came for a while.
    pub fn is_idle_timeout(&self) -> bool {
        match &self.code {
            serde_json::Value::Number(n) => n.as_u64() == Some(IDLE_TIMEOUT_CODE),
            serde_json::Value::String(s) => s.trim() == IDLE_TIMEOUT_CODE.to_string(),
            _ => false,
        }
    }
}

impl MistralEvent {
    pub fn parse(text: &str) -> Option<MistralEvent> {
        serde_json::from_str(text).ok()
    }
}

/// The browser-facing error for a Mistral `error` event: Mistral's text may
/// name internals, so the browser gets a message of ours and the code.
pub fn mistral_error(body: &MistralErrorBody) -> GatewayError {
    let error = GatewayError::new(ErrorCode::MistralError);
    match &body.code {
        serde_json::Value::Null => error,
        code => error.with_upstream_code(code.clone()),
    }
}

/// Mistral's message, shortened, for the gateway's own log.
pub fn loggable_message(message: &serde_json::Value) -> String {
    let text = match message {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(frame: &str) -> Vec<u8> {
        let v: serde_json::Value = serde_json::from_str(frame).unwrap();
        assert_eq!(v["type"], "input_audio.append");
        base64::engine::general_purpose::STANDARD
            .decode(v["audio"].as_str().unwrap())
            .unwrap()
    }

    #[test]
    fn big_chunks_are_split_at_the_append_limit_on_sample_boundaries() {
        let audio: Vec<u8> = (0..600_000u32).map(|i| i as u8).collect();
        let frames = append_frames(&audio, 4);
        let sizes: Vec<usize> = frames.iter().map(|f| decoded(f).len()).collect();
        assert_eq!(sizes, vec![262_144, 262_144, 75_712]);
        let joined: Vec<u8> = frames.iter().flat_map(|f| decoded(f)).collect();
        assert_eq!(joined, audio);
        // A sample size that does not divide the limit still gets whole samples.
        let frames = append_frames(&vec![0u8; 600_000], 3);
        assert!(frames.iter().all(|f| decoded(f).len().is_multiple_of(3)));
        assert_eq!(decoded(&frames[0]).len(), 262_143);
    }

    #[test]
    fn small_chunks_are_one_append() {
        let frames = append_frames(&[1, 2, 3, 4], 2);
        assert_eq!(
            frames,
            vec![r#"{"type":"input_audio.append","audio":"AQIDBA=="}"#]
        );
    }

    #[test]
    fn session_update_names_the_pcm_encoding_and_rate() {
        let update: serde_json::Value = serde_json::from_str(&session_update(AudioFormat {
            encoding: Encoding::S16le,
            sample_rate: 24_000,
        }))
        .unwrap();
        assert_eq!(
            update,
            serde_json::json!({"type": "session.update", "session": {"audio_format": {"encoding": "pcm_s16le", "sample_rate": 24000}}})
        );
    }

    #[test]
    fn events_parse_with_extra_fields_and_unknown_types() {
        assert_eq!(
            MistralEvent::parse(r#"{"type":"session.created","session":{"id":"x"}}"#),
            Some(MistralEvent::SessionCreated)
        );
        assert_eq!(
            MistralEvent::parse(r#"{"type":"transcription.text.delta","text":" hi"}"#),
            Some(MistralEvent::TextDelta { text: " hi".into() })
        );
        assert_eq!(
            MistralEvent::parse(
                r#"{"type":"transcription.segment","text":"hi","start":0.5,"end":1.0,"speaker_id":null}"#
            ),
            Some(MistralEvent::Segment {
                text: "hi".into(),
                start: Some(0.5),
                end: Some(1.0)
            })
        );
        assert_eq!(
            MistralEvent::parse(r#"{"type":"transcription.done","text":"a b","usage":{}}"#),
            Some(MistralEvent::Done {
                text: Some("a b".into())
            })
        );
        assert_eq!(
            MistralEvent::parse(r#"{"type":"transcription.done"}"#),
            Some(MistralEvent::Done { text: None })
        );
        assert_eq!(
            MistralEvent::parse(r#"{"type":"something.new","x":1}"#),
            Some(MistralEvent::Unknown)
        );
        assert_eq!(MistralEvent::parse("not json"), None);
    }

    #[test]
    fn an_error_event_keeps_the_code_but_not_the_message() {
        let Some(MistralEvent::Error { error }) = MistralEvent::parse(
            r#"{"type":"error","error":{"message":"db-7.internal exploded","code":3001}}"#,
        ) else {
            panic!("not an error event");
        };
        let gateway_error = mistral_error(&error);
        assert_eq!(gateway_error.code, ErrorCode::MistralError);
        assert_eq!(gateway_error.upstream_code, Some(3001.into()));
        assert!(!gateway_error.message.contains("internal"));
        let Some(MistralEvent::Error { error }) = MistralEvent::parse(r#"{"type":"error"}"#) else {
            panic!("not an error event");
        };
        assert_eq!(mistral_error(&error).upstream_code, None);
    }
}
