//! Frames of thoth's multiplex protocol v1 (PROTOCOL.md 3.1).

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::audio::AudioFormat;
use crate::error::ErrorCode;

/// The subprotocol a mux-speaking thoth selects.
pub const MUX_SUBPROTOCOL: &str = "thoth.mux.v1";

/// Gateway → thoth control frames.
#[derive(Debug, Serialize)]
#[serde(tag = "type")]
pub enum MuxCommand<'a> {
    #[serde(rename = "session.start")]
    Start {
        session_id: &'a Uuid,
        encoding: &'static str,
        sample_rate: u32,
        offset_ms: u64,
    },
    #[serde(rename = "session.end")]
    End { session_id: &'a Uuid },
    #[serde(rename = "session.cancel")]
    Cancel { session_id: &'a Uuid },
}

impl MuxCommand<'_> {
    pub fn start(session_id: &Uuid, format: AudioFormat, offset_ms: u64) -> MuxCommand<'_> {
        MuxCommand::Start {
            session_id,
            encoding: format.encoding.as_str(),
            sample_rate: format.sample_rate,
            offset_ms,
        }
    }

    pub fn to_json(&self) -> String {
        // A uuid, strings and integers: cannot fail.
        serde_json::to_string(self).expect("mux command serializes")
    }
}

/// Bytes before the audio in a binary frame: the session id.
pub const PREFIX_LEN: usize = 16;

/// A binary audio frame: the session's 16 uuid bytes (RFC 4122 order), then audio.
pub fn audio_frame(session_id: &Uuid, audio: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(PREFIX_LEN + audio.len());
    frame.put_slice(session_id.as_bytes());
    frame.put_slice(audio);
    frame.freeze()
}

/// Thoth → gateway text frames.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "type")]
pub enum MuxEvent {
    #[serde(rename = "transcription")]
    Transcription {
        session_id: Uuid,
        text: String,
        is_final: bool,
        #[serde(default)]
        start: Option<f64>,
        #[serde(default)]
        end: Option<f64>,
    },
    #[serde(rename = "session.done")]
    SessionDone { session_id: Uuid },
    #[serde(rename = "error")]
    Error {
        #[serde(default)]
        session_id: Option<Uuid>,
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    },
}

impl MuxEvent {
    /// `None` for anything unparsable or of an unknown type: logged and
    /// skipped by the caller, never fatal.
    pub fn parse(text: &str) -> Option<MuxEvent> {
        serde_json::from_str(text).ok()
    }
}

/// Thoth's per-session error codes, as the browser sees them (PROTOCOL.md 3.1).
pub fn map_thoth_error(code: &str) -> ErrorCode {
    match code {
        "UNSUPPORTED_AUDIO" => ErrorCode::InvalidAudioFormat,
        "OVERLOADED" => ErrorCode::ThothBusy,
        _ => ErrorCode::ThothError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::Encoding;

    #[test]
    fn start_frame_has_every_field() {
        let id = Uuid::parse_str("6f1c1a5e-8d7b-4c1e-9a3f-0b2d4e6f8a10").unwrap();
        let fmt = AudioFormat {
            encoding: Encoding::S16le,
            sample_rate: 16_000,
        };
        assert_eq!(
            MuxCommand::start(&id, fmt, 1500).to_json(),
            r#"{"type":"session.start","session_id":"6f1c1a5e-8d7b-4c1e-9a3f-0b2d4e6f8a10","encoding":"s16le","sample_rate":16000,"offset_ms":1500}"#
        );
        assert_eq!(
            MuxCommand::Cancel { session_id: &id }.to_json(),
            r#"{"type":"session.cancel","session_id":"6f1c1a5e-8d7b-4c1e-9a3f-0b2d4e6f8a10"}"#
        );
    }

    #[test]
    fn audio_frame_prefixes_uuid_bytes() {
        let id = Uuid::from_bytes([7; 16]);
        let frame = audio_frame(&id, &[1, 2, 3, 4]);
        assert_eq!(&frame[..16], &[7; 16]);
        assert_eq!(&frame[16..], &[1, 2, 3, 4]);
    }

    #[test]
    fn parses_thoth_events_and_skips_unknown_ones() {
        let id = "6f1c1a5e-8d7b-4c1e-9a3f-0b2d4e6f8a10";
        let ev = MuxEvent::parse(&format!(
            r#"{{"type":"transcription","session_id":"{id}","text":"a","is_final":true,"start":0.0,"end":1.0}}"#
        ))
        .unwrap();
        assert!(
            matches!(ev, MuxEvent::Transcription { is_final: true, end: Some(e), .. } if e == 1.0)
        );
        let ev = MuxEvent::parse(r#"{"type":"error","code":"OVERLOADED","message":"x"}"#).unwrap();
        assert!(matches!(
            ev,
            MuxEvent::Error {
                session_id: None,
                ..
            }
        ));
        assert_eq!(MuxEvent::parse(r#"{"type":"mystery"}"#), None);
        assert_eq!(
            MuxEvent::parse(r#"{"type":"session.done","session_id":"nope"}"#),
            None
        );
    }
}
