//! The browser ⇄ gateway wire types (PROTOCOL.md 2.3 to 2.5): the only code
//! that parses or builds chronus browser frames, the error envelope included.

use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, GatewayError};

/// RFC 3339 UTC timestamp with millisecond precision, as every event carries.
pub fn now_rfc3339() -> String {
    // Formatting costs more than the rest of an event; under load many
    // events share a millisecond, so each thread reuses its last one.
    thread_local! {
        static LAST: std::cell::RefCell<(i64, String)> =
            const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    let now = chrono::Utc::now();
    let millis = now.timestamp_millis();
    LAST.with_borrow_mut(|(last_millis, text)| {
        if *last_millis != millis {
            *last_millis = millis;
            *text = now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        }
        text.clone()
    })
}

/// Who reads the gateway's error envelopes on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorDialect {
    /// chronus frontends: the envelope fields only.
    Chronus,
    /// The native Mistral proxy's routes: Mistral's SDKs parse
    /// `error.message`, so the envelope carries `error` as well.
    MistralSdk,
}

/// `error.code` for an error that leaves the socket open (it has no close
/// code): the generic "bad request" of the 44xx range.
const SDK_ERROR_CODE_WITHOUT_CLOSE: u16 = 4400;

/// The chronus error envelope (PROTOCOL.md 2.5) is wire JSON, so it is built
/// here beside the other browser frames; `error.rs` keeps the type and codes.
impl GatewayError {
    /// The chronus envelope as a JSON text frame (never the cause). Every
    /// envelope built is sent, so building one counts it in
    /// `chronus_errors_total` by code and source.
    pub fn envelope(&self, session_id: Option<&str>) -> String {
        self.envelope_in(ErrorDialect::Chronus, session_id)
    }

    /// The envelope as `dialect`'s clients read it: the chronus fields, and
    /// for Mistral's SDKs also `error.message` / `error.code`.
    pub fn envelope_in(&self, dialect: ErrorDialect, session_id: Option<&str>) -> String {
        crate::metrics::ERRORS_SENT
            .with_label_values(&[self.code.as_str(), self.code.source().as_str()])
            .inc();
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Envelope<'a> {
            r#type: &'static str,
            code: &'static str,
            message: &'a str,
            retryable: bool,
            #[serde(skip_serializing_if = "Option::is_none")]
            session_id: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            upstream_code: Option<&'a serde_json::Value>,
            timestamp: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            error: Option<SdkError<'a>>,
        }
        /// What Mistral's SDKs read from an `error` event (`error.message`).
        #[derive(Serialize)]
        struct SdkError<'a> {
            message: &'a str,
            code: u16,
        }
        let error = match dialect {
            ErrorDialect::Chronus => None,
            ErrorDialect::MistralSdk => Some(SdkError {
                message: &self.message,
                code: self
                    .code
                    .close_code()
                    .unwrap_or(SDK_ERROR_CODE_WITHOUT_CLOSE),
            }),
        };
        let envelope = Envelope {
            r#type: "error",
            code: self.code.as_str(),
            message: &self.message,
            retryable: self.code.retryable(),
            session_id,
            upstream_code: self.upstream_code.as_ref(),
            timestamp: now_rfc3339(),
            error,
        };
        // Serializing a struct of strings and numbers cannot fail.
        serde_json::to_string(&envelope).expect("envelope serializes")
    }
}

/// A text frame from the browser.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientMessage {
    /// Base64 audio in the session's encoding.
    Audio {
        data: String,
    },
    /// No more audio: flush, deliver the last results, `done`, close.
    /// (Empty struct variants, so serde refuses unknown fields as for the others.)
    End {},
    Ping {},
    /// A fresh token for the same user before the current one expires.
    Auth {
        token: String,
    },
}

impl ClientMessage {
    /// Parses a text frame; anything unparsable or unknown is `BAD_MESSAGE`.
    pub fn parse(text: &str) -> Result<ClientMessage, GatewayError> {
        serde_json::from_str(text).map_err(|_| {
            GatewayError::with_message(
                ErrorCode::BadMessage,
                "Message not understood: expected JSON with type audio, end, ping or auth",
            )
        })
    }
}

/// Which backend serves a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Thoth,
    Mistral,
}

impl Provider {
    pub const ALL: [Provider; 2] = [Provider::Thoth, Provider::Mistral];
    /// The providers a user stores an API key for (settings, key store).
    pub const WITH_API_KEY: [Provider; 1] = [Provider::Mistral];

    /// The name used in URLs, JSON and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Thoth => "thoth",
            Provider::Mistral => "mistral",
        }
    }

    pub fn takes_api_key(self) -> bool {
        Provider::WITH_API_KEY.contains(&self)
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider name that is not one of [`Provider::ALL`] (HTTP: 404).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider {0:?}")]
pub struct UnknownProvider(pub String);

impl std::str::FromStr for Provider {
    type Err = UnknownProvider;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Provider::ALL
            .into_iter()
            .find(|provider| provider.as_str() == name)
            .ok_or_else(|| UnknownProvider(name.to_owned()))
    }
}

/// A text frame to the browser (errors are built by [`GatewayError::envelope`]).
#[derive(Debug, Serialize)]
#[serde(tag = "type")]
pub enum ServerEvent<'a> {
    #[serde(rename = "ready", rename_all = "camelCase")]
    Ready {
        session_id: &'a str,
        provider: Provider,
    },
    /// `data` and `text` carry the same string: the spec-005 chronus
    /// frontend reads `data`, the later one `text` (PROTOCOL.md 2.4).
    #[serde(rename = "transcription")]
    Transcription {
        data: &'a str,
        text: &'a str,
        timestamp: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        start: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        end: Option<f64>,
    },
    #[serde(rename = "transcription.partial")]
    Partial {
        data: &'a str,
        text: &'a str,
        timestamp: String,
    },
    #[serde(rename = "done")]
    Done {
        data: &'a str,
        text: &'a str,
        timestamp: String,
    },
    /// A non-fatal notice (`THOTH_RECONNECTING`, `THOTH_RESUMED`): not an
    /// `error`, which chronus's frontends would show as one.
    #[serde(rename = "status", rename_all = "camelCase")]
    Status {
        code: &'a str,
        message: &'a str,
        session_id: &'a str,
        timestamp: String,
    },
    #[serde(rename = "pong")]
    Pong,
}

impl ServerEvent<'_> {
    pub fn to_json(&self) -> String {
        // Only strings, numbers and enums: serialization cannot fail.
        serde_json::to_string(self).expect("server event serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_current_rfc3339_milliseconds() {
        let parse = |text: &str| chrono::DateTime::parse_from_rfc3339(text).unwrap();
        let first = now_rfc3339();
        assert_eq!(first.len(), "2026-11-22T03:00:00.000Z".len(), "{first}");
        assert!(first.ends_with('Z'));
        std::thread::sleep(std::time::Duration::from_millis(5));
        let later = now_rfc3339();
        // The per-thread cache must not hand out a stale time.
        let gap = parse(&later) - parse(&first);
        assert!(gap.num_milliseconds() >= 5, "{first} → {later}");
        let wall = chrono::Utc::now();
        assert!((wall - parse(&later).with_timezone(&chrono::Utc)).num_milliseconds() < 1000);
    }

    #[test]
    fn parses_every_client_message() {
        assert_eq!(
            ClientMessage::parse(r#"{"type":"audio","data":"AAA="}"#).unwrap(),
            ClientMessage::Audio {
                data: "AAA=".into()
            }
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"end"}"#).unwrap(),
            ClientMessage::End {}
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"ping"}"#).unwrap(),
            ClientMessage::Ping {}
        );
        assert_eq!(
            ClientMessage::parse(r#"{"type":"auth","token":"t"}"#).unwrap(),
            ClientMessage::Auth { token: "t".into() }
        );
    }

    #[test]
    fn rejects_unknown_or_malformed_messages() {
        for bad in [
            "",
            "not json",
            "[]",
            r#"{"type":"dance"}"#,
            r#"{"data":"AAA="}"#,
            r#"{"type":"audio"}"#,
            r#"{"type":"audio","data":5}"#,
        ] {
            assert_eq!(
                ClientMessage::parse(bad).unwrap_err().code,
                ErrorCode::BadMessage,
                "{bad}"
            );
        }
    }

    #[test]
    fn events_serialize_to_the_wire_shape() {
        let ready = ServerEvent::Ready {
            session_id: "s1",
            provider: Provider::Thoth,
        }
        .to_json();
        assert_eq!(
            ready,
            r#"{"type":"ready","sessionId":"s1","provider":"thoth"}"#
        );
        let t = ServerEvent::Transcription {
            data: "hi",
            text: "hi",
            timestamp: "T".into(),
            start: Some(0.0),
            end: Some(1.0),
        }
        .to_json();
        assert_eq!(
            t,
            r#"{"type":"transcription","data":"hi","text":"hi","timestamp":"T","start":0.0,"end":1.0}"#
        );
        let p = ServerEvent::Partial {
            data: "h",
            text: "h",
            timestamp: "T".into(),
        }
        .to_json();
        assert_eq!(
            p,
            r#"{"type":"transcription.partial","data":"h","text":"h","timestamp":"T"}"#
        );
        let done = ServerEvent::Done {
            data: "a b",
            text: "a b",
            timestamp: "T".into(),
        }
        .to_json();
        assert_eq!(
            done,
            r#"{"type":"done","data":"a b","text":"a b","timestamp":"T"}"#
        );
        let status = ServerEvent::Status {
            code: "THOTH_RESUMED",
            message: "m",
            session_id: "s1",
            timestamp: "T".into(),
        }
        .to_json();
        assert_eq!(
            status,
            r#"{"type":"status","code":"THOTH_RESUMED","message":"m","sessionId":"s1","timestamp":"T"}"#
        );
        assert_eq!(ServerEvent::Pong.to_json(), r#"{"type":"pong"}"#);
    }

    #[test]
    fn envelope_has_every_field() {
        let err = GatewayError::new(ErrorCode::ThothUnavailable);
        let v: serde_json::Value = serde_json::from_str(&err.envelope(Some("abc"))).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "THOTH_UNAVAILABLE");
        assert_eq!(
            v["message"],
            "Transcription service temporarily unavailable"
        );
        assert_eq!(v["retryable"], true);
        assert_eq!(v["sessionId"], "abc");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        assert!(v.get("upstreamCode").is_none());
    }

    #[test]
    fn sent_envelopes_are_counted_by_code_and_source() {
        let counter =
            crate::metrics::ERRORS_SENT.with_label_values(&["IDLE_TIMEOUT", "downstream"]);
        let before = counter.get();
        GatewayError::new(ErrorCode::IdleTimeout).envelope(None);
        assert!(counter.get() > before);
    }

    #[test]
    fn upstream_code_is_kept() {
        let err = GatewayError::new(ErrorCode::MistralError).with_upstream_code(3001.into());
        let v: serde_json::Value = serde_json::from_str(&err.envelope(None)).unwrap();
        assert_eq!(v["upstreamCode"], 3001);
        assert!(v.get("sessionId").is_none());
    }

    #[test]
    fn mistral_sdk_envelope_adds_error_message_and_code() {
        let err = GatewayError::with_message(ErrorCode::Forbidden, "no");
        let v: serde_json::Value =
            serde_json::from_str(&err.envelope_in(ErrorDialect::MistralSdk, Some("s"))).unwrap();
        assert_eq!(v["code"], "FORBIDDEN");
        assert_eq!(v["message"], "no");
        assert_eq!(v["error"]["message"], "no");
        assert_eq!(v["error"]["code"], 4403);
        let chronus: serde_json::Value = serde_json::from_str(&err.envelope(None)).unwrap();
        assert!(chronus.get("error").is_none());
    }

    #[test]
    fn provider_names_round_trip_and_unknown_ones_fail() {
        for provider in Provider::ALL {
            assert_eq!(provider.as_str().parse::<Provider>().unwrap(), provider);
        }
        assert_eq!("mistral".parse::<Provider>().unwrap(), Provider::Mistral);
        assert!("openai".parse::<Provider>().is_err());
        assert!("".parse::<Provider>().is_err());
        assert!(Provider::Mistral.takes_api_key());
        assert!(!Provider::Thoth.takes_api_key());
    }
}
