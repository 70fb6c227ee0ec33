//! Thoth settings: how the endpoints speak and the default stream path.

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
