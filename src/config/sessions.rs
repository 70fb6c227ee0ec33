//! How chronus sessions are bounded and admitted (issue 10): token check,
//! session length cap, note access check.

use std::time::Duration;

use super::vars::Vars;
use super::ConfigError;

/// What happens at a token's `exp` during a session (PROTOCOL.md 2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionTokenCheck {
    /// Checked once, at connect; `MAX_SESSION_SECS` bounds the session.
    Connect,
    /// The session ends at `exp` unless the client sends a fresh token.
    Continuous,
}

/// How sessions are bounded and admitted for chronus (issue 10): the token
/// check, the session length cap and the optional note access check.
#[derive(Debug, Clone)]
pub struct ChronusSessionSettings {
    pub token_check: SessionTokenCheck,
    /// `MAX_SESSION_SECS` (default 14400): `SESSION_EXPIRED` 4408 after it.
    pub max_session: Duration,
    /// `NOTE_ACCESS_URL`: a URL with `{noteId}`, asked before a notes-path
    /// session is admitted; `None` admits every positive `noteId`.
    pub note_access_url: Option<String>,
    /// How long the note access check may take (`NOTE_ACCESS_TIMEOUT_MS`,
    /// default 5000; shorter in tests).
    pub note_access_timeout: Duration,
}

pub(super) fn read_chronus_settings(
    vars: &Vars<'_>,
) -> Result<ChronusSessionSettings, ConfigError> {
    let token_check = match vars.get("SESSION_TOKEN_CHECK").as_deref() {
        None | Some("connect") => SessionTokenCheck::Connect,
        Some("continuous") => SessionTokenCheck::Continuous,
        Some(other) => {
            return Err(ConfigError::new(
                "SESSION_TOKEN_CHECK",
                format!("must be `connect` or `continuous`, not {other:?}"),
            ))
        }
    };
    let max_session = vars.secs("MAX_SESSION_SECS", 14_400)?;
    if max_session.is_zero() {
        return Err(ConfigError::new("MAX_SESSION_SECS", "must be at least 1"));
    }
    let note_access_url = vars.get("NOTE_ACCESS_URL");
    if let Some(url) = &note_access_url {
        check_note_access_url(url)?;
    }
    Ok(ChronusSessionSettings {
        token_check,
        max_session,
        note_access_url,
        note_access_timeout: vars.millis("NOTE_ACCESS_TIMEOUT_MS", 5_000)?,
    })
}

fn check_note_access_url(raw: &str) -> Result<(), ConfigError> {
    const VAR: &str = "NOTE_ACCESS_URL";
    if !raw.contains("{noteId}") {
        return Err(ConfigError::new(VAR, "must contain {noteId}"));
    }
    let url = url::Url::parse(&raw.replace("{noteId}", "1"))
        .map_err(|e| ConfigError::new(VAR, format!("not a URL: {e}")))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(()),
        _ => Err(ConfigError::new(
            VAR,
            "must be an http:// or https:// URL with a host",
        )),
    }
}
