//! What a refusal at capacity looks like to a browser session: the gateway
//! accepts the upgrade, sends `{"type":"error","code":"THOTH_BUSY",
//! "retryable":true,...}` before any `ready`, and closes with 1013 (Try
//! Again Later). Anything else that ends a session before `ready` is a
//! failure, in every figure.

/// The chronus error code of a refusal at capacity.
pub const REFUSAL_CODE: &str = "THOTH_BUSY";
/// The close code that must follow the refusal's error envelope.
pub const REFUSAL_CLOSE_CODE: u16 = 1013;

/// Whether a session's first text frame is the refusal's error envelope:
/// an `error` with code `THOTH_BUSY` and `retryable: true`.
pub fn is_refusal_envelope(text: &str) -> bool {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return false;
    };
    value["type"] == "error" && value["code"] == REFUSAL_CODE && value["retryable"] == true
}

/// What followed the refusal's envelope on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterEnvelope {
    /// A close frame with this code (`None`: a close frame without a code).
    Close(Option<u16>),
    /// Another data frame (an ack, `ready`, …): a refused session gets nothing more.
    Data,
    /// The socket ended without a close frame, or a read failed or timed out.
    Ended,
}

/// Whether the frame after a refusal's envelope completes the refusal: a
/// close 1013 and nothing else. `Err` says what was wrong.
pub fn completes_refusal(after: AfterEnvelope) -> Result<(), String> {
    match after {
        AfterEnvelope::Close(Some(REFUSAL_CLOSE_CODE)) => Ok(()),
        AfterEnvelope::Close(code) => Err(format!(
            "{REFUSAL_CODE} then close {code:?}, not {REFUSAL_CLOSE_CODE}"
        )),
        AfterEnvelope::Data => Err(format!("{REFUSAL_CODE} then more frames before the close")),
        AfterEnvelope::Ended => Err(format!(
            "{REFUSAL_CODE} without a close {REFUSAL_CLOSE_CODE}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUSY: &str = r#"{"type":"error","code":"THOTH_BUSY","message":"Transcription is at capacity; try again in a moment","retryable":true}"#;

    #[test]
    fn thoth_busy_retryable_then_close_1013_is_a_refusal() {
        assert!(is_refusal_envelope(BUSY));
        assert_eq!(completes_refusal(AfterEnvelope::Close(Some(1013))), Ok(()));
    }

    #[test]
    fn another_code_or_a_final_error_is_not_a_refusal() {
        let too_many = BUSY.replace("THOTH_BUSY", "TOO_MANY_SESSIONS");
        assert!(!is_refusal_envelope(&too_many));
        let not_retryable = BUSY.replace(r#""retryable":true"#, r#""retryable":false"#);
        assert!(!is_refusal_envelope(&not_retryable));
        let no_flag = BUSY.replace(r#","retryable":true"#, "");
        assert!(!is_refusal_envelope(&no_flag));
        assert!(!is_refusal_envelope(r#"{"type":"ready"}"#));
        assert!(!is_refusal_envelope("not json"));
    }

    #[test]
    fn a_refusal_needs_close_1013_and_nothing_before_it() {
        assert!(completes_refusal(AfterEnvelope::Close(Some(1000))).is_err());
        assert!(completes_refusal(AfterEnvelope::Close(None)).is_err());
        assert!(completes_refusal(AfterEnvelope::Data).is_err());
        assert!(completes_refusal(AfterEnvelope::Ended).is_err());
    }
}
