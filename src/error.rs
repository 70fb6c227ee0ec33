//! The one error type the browser ever sees, and the single place that decides
//! its chronus `code`, human message, `retryable` flag and WebSocket close code
//! (PROTOCOL.md 2.5). Its JSON envelope is wire format and is built in
//! [`crate::wire::browser`].

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// Stable chronus error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    Unauthorized,
    TokenExpired,
    Forbidden,
    NoApiKey,
    BadMessage,
    InvalidAudioFormat,
    MessageTooLarge,
    RateLimited,
    TooManySessions,
    ThothBusy,
    ThothUnavailable,
    ThothReconnecting,
    AuthFailed,
    ThothError,
    MistralUnavailable,
    MistralError,
    IdleTimeout,
    ServerShuttingDown,
    Internal,
    /// A status code, not an error: the shared thoth socket is back.
    ThothResumed,
    SessionExpired,
    NoteNotFound,
    /// A service needed for admission (the note access check) did not answer.
    Unavailable,
    /// The process-wide session cap (`MAX_SESSIONS`): `TOO_MANY_SESSIONS`
    /// like the per-user cap, but closed 1013 (try again later) rather than
    /// 4409, which chronus reads as "a recording is already in progress".
    TooManySessionsInGateway,
}

/// Where a failure came from (after pingora's error model): it decides who can
/// fix it and whether retrying helps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    /// The browser sent something wrong or is not allowed.
    Downstream,
    /// thoth or Mistral failed or refused.
    Upstream,
    /// The gateway itself (limits, shutdown, bugs).
    Gateway,
}

impl ErrorSource {
    /// Its name in logs and in the `source` label of `chronus_errors_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorSource::Downstream => "downstream",
            ErrorSource::Upstream => "upstream",
            ErrorSource::Gateway => "gateway",
        }
    }
}

/// Why an error happened: an underlying error or a context string, with its
/// own `source()` chain. Logged beside the error, never sent to a client.
pub type ErrorCause = Arc<dyn std::error::Error + Send + Sync>;

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            Unauthorized => "UNAUTHORIZED",
            TokenExpired => "TOKEN_EXPIRED",
            Forbidden => "FORBIDDEN",
            NoApiKey => "NO_API_KEY",
            BadMessage => "BAD_MESSAGE",
            InvalidAudioFormat => "INVALID_AUDIO_FORMAT",
            MessageTooLarge => "MESSAGE_TOO_LARGE",
            RateLimited => "RATE_LIMITED",
            TooManySessions => "TOO_MANY_SESSIONS",
            ThothBusy => "THOTH_BUSY",
            ThothUnavailable => "THOTH_UNAVAILABLE",
            ThothReconnecting => "THOTH_RECONNECTING",
            AuthFailed => "AUTH_FAILED",
            ThothError => "THOTH_ERROR",
            MistralUnavailable => "MISTRAL_UNAVAILABLE",
            MistralError => "MISTRAL_ERROR",
            IdleTimeout => "IDLE_TIMEOUT",
            ServerShuttingDown => "SERVER_SHUTTING_DOWN",
            Internal => "INTERNAL",
            ThothResumed => "THOTH_RESUMED",
            SessionExpired => "SESSION_EXPIRED",
            NoteNotFound => "NOTE_NOT_FOUND",
            Unavailable => "UNAVAILABLE",
            TooManySessionsInGateway => "TOO_MANY_SESSIONS",
        }
    }

    /// The message shown to people when the raiser gives none.
    pub fn default_message(self) -> &'static str {
        use ErrorCode::*;
        match self {
            Unauthorized => "Authentication required: the token is missing, invalid or expired",
            TokenExpired => "Your session token expired; reconnect with a fresh token",
            Forbidden => "This origin is not allowed to use the transcription service",
            NoApiKey => "No Mistral API key configured",
            BadMessage => "Message not understood",
            InvalidAudioFormat => {
                "Audio must be a whole number of samples in the session's encoding"
            }
            MessageTooLarge => "Message too large",
            RateLimited => "Audio is arriving faster than the service allows",
            TooManySessions => "Too many transcription sessions are open",
            ThothBusy => "The transcription service is busy; try again shortly",
            ThothUnavailable => "Transcription service temporarily unavailable",
            ThothReconnecting => "Connection to the transcription service lost; reconnecting",
            AuthFailed => "The transcription service refused the gateway's credentials",
            ThothError => "The transcription service could not process this session",
            MistralUnavailable => "Mistral transcription temporarily unavailable",
            MistralError => "Mistral reported an error for this session",
            IdleTimeout => "No audio received for too long; session closed",
            ServerShuttingDown => "The gateway is restarting; please reconnect",
            Internal => "Internal error",
            ThothResumed => "Connection to the transcription service restored",
            SessionExpired => "Maximum session length reached; start a new recording",
            NoteNotFound => "Note not found",
            Unavailable => "A service the gateway needs is unavailable; try again shortly",
            TooManySessionsInGateway => "The gateway is at its session limit; try again shortly",
        }
    }

    /// Whether the same request may succeed later.
    pub fn retryable(self) -> bool {
        use ErrorCode::*;
        matches!(
            self,
            RateLimited
                | TooManySessions
                | ThothBusy
                | ThothUnavailable
                | ThothReconnecting
                | MistralUnavailable
                | IdleTimeout
                | ServerShuttingDown
                | Unavailable
                | TooManySessionsInGateway
        )
    }

    /// The WebSocket close code that follows the error, or `None` when the
    /// session goes on. Never a reserved code (1005, 1006, 1015).
    pub fn close_code(self) -> Option<u16> {
        use ErrorCode::*;
        match self {
            Unauthorized | TokenExpired => Some(4401),
            Forbidden => Some(4403),
            NoApiKey => Some(4400),
            BadMessage | InvalidAudioFormat | ThothReconnecting => None,
            MessageTooLarge => Some(1009),
            RateLimited => Some(4429),
            TooManySessions => Some(4409),
            // No free legacy thoth (PROTOCOL.md 2.5): try again later. 4409
            // would read as "a recording is already in progress" in chronus.
            ThothBusy => Some(1013),
            IdleTimeout => Some(4408),
            ServerShuttingDown => Some(1012),
            ThothUnavailable | AuthFailed | ThothError | MistralUnavailable | MistralError
            | Internal => Some(1011),
            ThothResumed => None,
            SessionExpired => Some(4408),
            NoteNotFound => Some(4404),
            Unavailable => Some(1011),
            TooManySessionsInGateway => Some(1013),
        }
    }

    pub fn source(self) -> ErrorSource {
        use ErrorCode::*;
        match self {
            Unauthorized | TokenExpired | Forbidden | NoApiKey | BadMessage
            | InvalidAudioFormat | MessageTooLarge | RateLimited | IdleTimeout => {
                ErrorSource::Downstream
            }
            ThothBusy | ThothUnavailable | ThothReconnecting | AuthFailed | ThothError
            | MistralUnavailable | MistralError => ErrorSource::Upstream,
            TooManySessions | ServerShuttingDown | Internal => ErrorSource::Gateway,
            ThothResumed => ErrorSource::Upstream,
            SessionExpired | NoteNotFound => ErrorSource::Downstream,
            Unavailable | TooManySessionsInGateway => ErrorSource::Gateway,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error bound for a browser: a code, a human message (never upstream
/// internals), and the upstream's own code when it gave one (Mistral). Its
/// cause goes to the log only (see [`GatewayError::for_log`]).
#[derive(Debug, Clone)]
pub struct GatewayError {
    pub code: ErrorCode,
    pub message: Cow<'static, str>,
    pub upstream_code: Option<serde_json::Value>,
    cause: Option<ErrorCause>,
}

/// Two errors are the same error whatever caused them.
impl PartialEq for GatewayError {
    fn eq(&self, other: &Self) -> bool {
        self.code == other.code
            && self.message == other.message
            && self.upstream_code == other.upstream_code
    }
}

impl GatewayError {
    pub fn new(code: ErrorCode) -> Self {
        GatewayError {
            code,
            message: Cow::Borrowed(code.default_message()),
            upstream_code: None,
            cause: None,
        }
    }

    pub fn with_message(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        GatewayError {
            code,
            message: message.into(),
            upstream_code: None,
            cause: None,
        }
    }

    /// Records why the error happened (an error, or a context string): it
    /// is logged with [`Self::for_log`] and never sent to a client.
    pub fn because(mut self, cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        self.cause = Some(Arc::from(cause.into()));
        self
    }

    /// Why the error happened, if the raiser said.
    pub fn cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.cause.as_deref()
    }

    /// The error as the log shows it: code, where it came from, message, and
    /// its cause chain. Never for a client: the cause may name internals.
    pub fn for_log(&self) -> impl fmt::Display + '_ {
        ForLog(self)
    }

    pub fn with_upstream_code(mut self, upstream_code: serde_json::Value) -> Self {
        self.upstream_code = Some(upstream_code);
        self
    }
}

impl From<ErrorCode> for GatewayError {
    fn from(code: ErrorCode) -> Self {
        GatewayError::new(code)
    }
}

impl fmt::Display for GatewayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for GatewayError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|cause| cause as &(dyn std::error::Error + 'static))
    }
}

/// See [`GatewayError::for_log`].
struct ForLog<'a>(&'a GatewayError);

impl fmt::Display for ForLog<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let error = self.0;
        let source = error.code.source().as_str();
        write!(f, "{} ({source}): {}", error.code, error.message)?;
        let mut cause = std::error::Error::source(error);
        while let Some(current) = cause {
            write!(f, "; cause: {current}")?;
            cause = current.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ErrorCode; 19] = [
        ErrorCode::Unauthorized,
        ErrorCode::TokenExpired,
        ErrorCode::Forbidden,
        ErrorCode::NoApiKey,
        ErrorCode::BadMessage,
        ErrorCode::InvalidAudioFormat,
        ErrorCode::MessageTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::TooManySessions,
        ErrorCode::ThothBusy,
        ErrorCode::ThothUnavailable,
        ErrorCode::ThothReconnecting,
        ErrorCode::AuthFailed,
        ErrorCode::ThothError,
        ErrorCode::MistralUnavailable,
        ErrorCode::MistralError,
        ErrorCode::IdleTimeout,
        ErrorCode::ServerShuttingDown,
        ErrorCode::Internal,
    ];

    #[test]
    fn reserved_close_codes_are_never_used() {
        for code in ALL {
            if let Some(close) = code.close_code() {
                assert!(![1005, 1006, 1015].contains(&close), "{code}");
            }
        }
    }

    #[test]
    fn close_codes_follow_the_protocol_table() {
        assert_eq!(ErrorCode::Unauthorized.close_code(), Some(4401));
        assert_eq!(ErrorCode::Forbidden.close_code(), Some(4403));
        assert_eq!(ErrorCode::NoApiKey.close_code(), Some(4400));
        assert_eq!(ErrorCode::BadMessage.close_code(), None);
        assert_eq!(ErrorCode::MessageTooLarge.close_code(), Some(1009));
        assert_eq!(ErrorCode::RateLimited.close_code(), Some(4429));
        assert_eq!(ErrorCode::ThothBusy.close_code(), Some(1013));
        assert_eq!(ErrorCode::ThothUnavailable.close_code(), Some(1011));
        assert_eq!(ErrorCode::IdleTimeout.close_code(), Some(4408));
        assert_eq!(ErrorCode::ServerShuttingDown.close_code(), Some(1012));
    }

    #[test]
    fn chronus_codes_close_as_the_protocol_says() {
        assert_eq!(ErrorCode::SessionExpired.close_code(), Some(4408));
        assert_eq!(ErrorCode::NoteNotFound.close_code(), Some(4404));
        assert_eq!(ErrorCode::Unavailable.close_code(), Some(1011));
        assert_eq!(ErrorCode::ThothResumed.close_code(), None);
        assert_eq!(ErrorCode::TooManySessions.close_code(), Some(4409));
        assert_eq!(ErrorCode::TooManySessionsInGateway.close_code(), Some(1013));
        assert_eq!(
            ErrorCode::TooManySessionsInGateway.as_str(),
            "TOO_MANY_SESSIONS"
        );
    }

    #[test]
    fn the_cause_is_logged_but_never_sent_in_the_envelope() {
        let err = GatewayError::new(ErrorCode::Internal).because("host=db password=hunter2");
        assert!(!err.envelope(Some("abc")).contains("hunter2"));
        assert!(!err.to_string().contains("hunter2"));
        let logged = err.for_log().to_string();
        assert!(
            logged.starts_with("INTERNAL (gateway): Internal error"),
            "{logged}"
        );
        assert!(
            logged.ends_with("; cause: host=db password=hunter2"),
            "{logged}"
        );
    }

    #[test]
    fn the_log_follows_the_cause_chain_in_order() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let inner = GatewayError::new(ErrorCode::ThothUnavailable).because(io);
        let outer = GatewayError::new(ErrorCode::ThothBusy).because(inner);
        assert_eq!(
            outer.for_log().to_string(),
            "THOTH_BUSY (upstream): The transcription service is busy; try again shortly\
             ; cause: THOTH_UNAVAILABLE: Transcription service temporarily unavailable\
             ; cause: refused"
        );
    }

    #[test]
    fn errors_are_equal_whatever_caused_them() {
        let plain = GatewayError::new(ErrorCode::MistralUnavailable);
        assert_eq!(plain.clone().because("socket reset"), plain);
        assert!(plain.cause().is_none());
    }
}
