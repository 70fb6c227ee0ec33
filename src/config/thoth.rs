//! Thoth settings: how the endpoints speak, the default stream path, and the
//! audio-buffer budget toward them.

use super::vars::Vars;
use super::ConfigError;

/// How the configured thoth endpoints speak (PROTOCOL.md 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ThothProtocol {
    /// One shared socket per endpoint, sessions multiplexed (3.1).
    Mux,
    /// Today's thoth: one socket per session, one session per endpoint (3.2).
    Legacy,
}

impl ThothProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ThothProtocol::Mux => "mux",
            ThothProtocol::Legacy => "legacy",
        }
    }
}

/// Thoth's stream path, appended to a `THOTH_WS_URL` that names none (chronus
/// configures thoth as `ws://host:port` and appends it itself).
pub const DEFAULT_THOTH_PATH: &str = "/stream-audio";

/// `ws://host:8765` (or `ws://host:8765/`) → `ws://host:8765/stream-audio`;
/// a URL with a path is kept exactly as written.
pub(super) fn with_default_thoth_path(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut url) if url.path().is_empty() || url.path() == "/" => {
            url.set_path(DEFAULT_THOTH_PATH);
            url.to_string()
        }
        _ => raw.to_string(),
    }
}

/// `AUDIO_BUFFER_BUDGET_BYTES`: always on, so at least one second of one
/// 48 kHz f32 session (a smaller budget would refuse every session).
pub(super) fn read_audio_buffer_budget(vars: &Vars<'_>) -> Result<usize, ConfigError> {
    const VAR: &str = "AUDIO_BUFFER_BUDGET_BYTES";
    use crate::upstream::audio_budget::DEFAULT_AUDIO_BUFFER_BUDGET_BYTES as DEFAULT;
    let budget = vars.parsed("AUDIO_BUFFER_BUDGET_BYTES", DEFAULT)?;
    if budget < 192_000 {
        return Err(ConfigError::new(VAR, "must be at least 192000 (bytes)"));
    }
    Ok(budget)
}
