//! The notes path's admission (PROTOCOL.md 2.7): `noteId` must be a positive
//! integer, and when `NOTE_ACCESS_URL` is set the chronus backend is asked,
//! with the user's own token, whether the user may use that note. Both run
//! before any upstream work; a refusal never reaches thoth or Mistral.

use std::time::Duration;

use crate::config::ChronusSessionSettings;
use crate::error::{ErrorCode, GatewayError};

/// A note's id, as chronus stores it: a positive 64-bit integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct NoteId(pub i64);

impl std::fmt::Display for NoteId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// `noteId` of the query, or `NOTE_NOT_FOUND`: only ASCII digits, a value in
/// 1..=i64::MAX (no sign, no exponent, no fraction, no whitespace).
pub fn note_id_from_query(query: &str) -> Result<NoteId, GatewayError> {
    let raw = url::form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "noteId")
        .map(|(_, value)| value.into_owned());
    raw.as_deref()
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|&id| id > 0)
        .map(NoteId)
        .ok_or_else(|| {
            GatewayError::with_message(
                ErrorCode::NoteNotFound,
                "Note not found: noteId must be a positive integer",
            )
        })
}

/// What the notes backend answered, reduced to the gateway's decision.
fn decision_for_status(status: u16) -> Result<(), GatewayError> {
    match status {
        200..=299 => Ok(()),
        403 => Err(GatewayError::with_message(
            ErrorCode::Forbidden,
            "You do not have access to this note",
        )),
        404 => Err(GatewayError::new(ErrorCode::NoteNotFound)),
        _ => Err(GatewayError::new(ErrorCode::Unavailable)),
    }
}

/// Asks `NOTE_ACCESS_URL` (when set) whether the token's user may use `note`.
/// 2xx admits; 403 → `FORBIDDEN`; 404 → `NOTE_NOT_FOUND`; any other answer,
/// a failed connection or no answer within the timeout → `UNAVAILABLE`.
/// The token goes only into the request's `Authorization` header, never a log.
pub async fn check_note_access(
    settings: &ChronusSessionSettings,
    note: NoteId,
    token: &str,
) -> Result<(), GatewayError> {
    let Some(template) = &settings.note_access_url else {
        return Ok(()); // unset: every positive noteId is admitted (README)
    };
    let url = template.replace("{noteId}", &note.to_string());
    let shown = crate::store::redact::redact(&url);
    let timeout = settings.note_access_timeout;
    let result = tokio::time::timeout(timeout, ask(&url, token, timeout)).await;
    match result {
        Ok(Ok(status)) => {
            log::info!("note {note}: access check at {shown} answered {status}");
            decision_for_status(status)
        }
        Ok(Err(problem)) => {
            log::warn!("note {note}: access check at {shown} failed: {problem}");
            Err(GatewayError::new(ErrorCode::Unavailable))
        }
        Err(_) => {
            log::warn!("note {note}: access check at {shown} gave no answer within {timeout:?}");
            Err(GatewayError::new(ErrorCode::Unavailable))
        }
    }
}

/// One GET; the status only (the body is not the gateway's business).
async fn ask(url: &str, token: &str, timeout: Duration) -> Result<u16, String> {
    let client = awc::Client::builder()
        .timeout(timeout)
        .disable_redirects()
        .finish();
    let response = client
        .get(url)
        .bearer_auth(token)
        .insert_header(("accept", "application/json"))
        .send()
        .await
        // awc's error names the failure (refused, timeout, bad answer), not
        // the request's headers: safe to log.
        .map_err(|e| e.to_string())?;
    Ok(response.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_positive_integer_is_a_note_id() {
        assert_eq!(note_id_from_query("noteId=7").unwrap(), NoteId(7));
        assert_eq!(note_id_from_query("a=b&noteId=42").unwrap(), NoteId(42));
        assert_eq!(
            note_id_from_query(&format!("noteId={}", i64::MAX)).unwrap(),
            NoteId(i64::MAX)
        );
    }

    #[test]
    fn anything_else_is_note_not_found() {
        for query in [
            "",
            "noteId=",
            "noteId=abc",
            "noteId=0",
            "noteId=-1",
            "noteId=%2B1",
            "noteId=1e3",
            "noteId=1.5",
            "noteId=%201",
            "noteId=9223372036854775808",
            "noteId=99999999999999999999999",
        ] {
            let error = note_id_from_query(query).unwrap_err();
            assert_eq!(error.code, ErrorCode::NoteNotFound, "{query}");
            assert_eq!(error.code.close_code(), Some(4404));
        }
    }

    #[test]
    fn backend_statuses_map_to_the_protocol_codes() {
        assert!(decision_for_status(200).is_ok());
        assert!(decision_for_status(204).is_ok());
        let code = |s| decision_for_status(s).unwrap_err().code;
        assert_eq!(code(403), ErrorCode::Forbidden);
        assert_eq!(code(404), ErrorCode::NoteNotFound);
        assert_eq!(code(401), ErrorCode::Unavailable);
        assert_eq!(code(500), ErrorCode::Unavailable);
        assert_eq!(code(302), ErrorCode::Unavailable);
    }
}
