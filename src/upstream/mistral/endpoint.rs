//! Where Mistral is and how to reach it: the endpoint (URL, TLS, model),
//! opening a socket authenticated with a user's key, and the messages the
//! native proxy's socket reader and writer send to their actor.

use std::time::Duration;

use actix::prelude::*;
use awc::http::header::{HeaderValue, AUTHORIZATION};
use awc::ws::Frame;
use zeroize::Zeroizing;

use crate::config::{Config, ConfigError};
use crate::error::{ErrorCode, GatewayError};
use crate::store::SecretString;
use crate::upstream::connect::{self, ConnectFailure, WsFramed, WsTarget};
use crate::upstream::writer::SendFailure;

/// Largest frame accepted from Mistral.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Where Mistral is and how to reach it; one per gateway.
#[derive(Clone)]
pub struct MistralEndpoint {
    /// `MISTRAL_WS_URL`.
    pub url: String,
    /// System roots (Mistral has a public certificate).
    pub tls: std::sync::Arc<rustls::ClientConfig>,
    /// First retry delay; doubles per attempt (shared with thoth's setting).
    pub retry_base: Duration,
}

impl MistralEndpoint {
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        Ok(MistralEndpoint {
            url: config.mistral_ws_url.clone(),
            tls: connect::tls_config(None)?,
            retry_base: config.thoth_retry_base,
        })
    }

    /// The same endpoint asking for `model` (replacing the URL's own `model`).
    pub fn with_model(&self, model: &str) -> MistralEndpoint {
        let mut chosen = self.clone();
        if let Ok(mut url) = url::Url::parse(&self.url) {
            let others: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(name, _)| name != "model")
                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                .collect();
            url.query_pairs_mut()
                .clear()
                .extend_pairs(others)
                .append_pair("model", model);
            chosen.url = url.to_string();
        }
        chosen
    }

    /// The URL as logs show it.
    pub fn display_url(&self) -> String {
        crate::store::redact::redact(&self.url)
    }
}

/// Opens a socket to Mistral with `Authorization: Bearer <key>`, retrying
/// network failures. The key is dropped (and wiped) when this returns.
pub async fn open_mistral_socket(
    endpoint: &MistralEndpoint,
    key: SecretString,
    session: &str,
) -> Result<WsFramed, ConnectFailure> {
    let bearer = Zeroizing::new(format!("Bearer {}", key.expose()));
    drop(key);
    // Stored keys are printable ASCII (checked when stored): always a valid header.
    let mut authorization = HeaderValue::from_str(&bearer)
        .map_err(|_| ConnectFailure::Rejected("the stored key is not a valid header".into()))?;
    drop(bearer);
    // Sensitive: never shown by the HTTP client's Debug output.
    authorization.set_sensitive(true);
    let target = WsTarget {
        url: endpoint.url.clone(),
        subprotocol: None,
        headers: vec![(AUTHORIZATION, authorization)],
        max_frame_bytes: MAX_EVENT_BYTES,
        tls: endpoint.tls.clone(),
    };
    let url = endpoint.display_url();
    let connected = connect::open_with_retries(&target, endpoint.retry_base, |attempt, failure| {
        log::warn!(
            "mistral {url}: session {session}: connection attempt {} failed: {failure}",
            attempt + 1
        );
    })
    .await?;
    Ok(connected.framed)
}

/// What the browser sees when connecting to Mistral failed.
pub fn connect_failure_error(failure: &ConnectFailure) -> GatewayError {
    let error = match failure {
        ConnectFailure::Refused(_) => GatewayError::with_message(
            ErrorCode::AuthFailed,
            "Mistral refused your API key: check the Mistral API key in your settings",
        ),
        _ => GatewayError::new(ErrorCode::MistralUnavailable),
    };
    error.because(failure.to_string())
}

/// A frame read from the Mistral socket (the native proxy's stream).
pub struct FromMistral(pub Result<Frame, actix_http::ws::ProtocolError>);

impl Message for FromMistral {
    type Result = ();
}

/// The writer gave Mistral up (a write failed, or Mistral is not reading).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WriterFailed {
    pub reason: String,
}

impl SendFailure {
    /// What the session hears when its Mistral socket cannot take a frame.
    pub fn session_error(self) -> GatewayError {
        match self {
            SendFailure::Stalled => GatewayError::with_message(
                ErrorCode::MistralUnavailable,
                "Mistral is not keeping up with the audio",
            ),
            SendFailure::Closed => GatewayError::new(ErrorCode::MistralUnavailable),
        }
    }
}
