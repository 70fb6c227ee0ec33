//! Frames of today's thoth `/stream-audio` (PROTOCOL.md 3.2): the gateway
//! sends bare audio in binary frames; thoth answers `{"transcription":"…"}`.

/// The text of a legacy result, `{"transcription":"…"}`; `None` otherwise.
pub fn parse_transcription(text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct LegacyResult {
        transcription: String,
    }
    serde_json::from_str::<LegacyResult>(text)
        .ok()
        .map(|r| r.transcription)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transcription_objects_are_results() {
        assert_eq!(
            parse_transcription(r#"{"transcription":"hello there"}"#).as_deref(),
            Some("hello there")
        );
        assert_eq!(parse_transcription(r#"{"error":"nope"}"#), None);
        assert_eq!(parse_transcription("not json"), None);
    }
}
