//! Which Mistral model a native-proxy session opens (PROTOCOL.md 2.6): the
//! client's `model` query (what Mistral's SDKs always send) when it is on the
//! `MISTRAL_MODELS` allowlist, else the model of `MISTRAL_WS_URL`. A model
//! not on the list is refused before anything is opened upstream.

use std::collections::HashMap;

use crate::error::{ErrorCode, GatewayError};
use crate::upstream::mistral::MistralEndpoint;

/// Longest model name echoed back in a refusal.
const MAX_ECHOED_MODEL_CHARS: usize = 64;

/// The endpoint a session with this query string connects to; `BAD_MESSAGE`
/// (closed with 4400 by the admission path) for a model not allowed.
pub fn endpoint_for_query(
    query: &str,
    endpoint: &MistralEndpoint,
    allowed: &[String],
) -> Result<MistralEndpoint, GatewayError> {
    let params: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    match params.get("model").map(String::as_str) {
        None | Some("") => Ok(endpoint.clone()),
        Some(model) if allowed.iter().any(|m| m == model) => Ok(endpoint.with_model(model)),
        Some(model) => {
            let shown: String = model.chars().take(MAX_ECHOED_MODEL_CHARS).collect();
            log::info!("mistral native: model {shown:?} refused (not in MISTRAL_MODELS)");
            Err(GatewayError::with_message(
                ErrorCode::BadMessage,
                format!(
                    "Model {shown:?} is not available through this gateway; available: {}",
                    allowed.join(", ")
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> MistralEndpoint {
        MistralEndpoint {
            url: "wss://mistral.test/v1/audio/transcriptions/realtime?model=default-model".into(),
            tls: crate::upstream::connect::tls_config(None).unwrap(),
            retry_base: std::time::Duration::from_millis(1),
        }
    }

    fn allowed() -> Vec<String> {
        vec!["default-model".into(), "other-model".into()]
    }

    #[test]
    fn no_model_keeps_the_configured_url() {
        let chosen = endpoint_for_query("token=x", &endpoint(), &allowed()).unwrap();
        assert_eq!(chosen.url, endpoint().url);
    }

    #[test]
    fn an_allowed_model_replaces_the_model_of_the_url() {
        let chosen = endpoint_for_query("model=other-model", &endpoint(), &allowed()).unwrap();
        assert_eq!(
            chosen.url,
            "wss://mistral.test/v1/audio/transcriptions/realtime?model=other-model"
        );
    }

    #[test]
    fn a_model_not_on_the_list_is_bad_message_naming_the_list() {
        let Err(error) = endpoint_for_query("model=secret-model", &endpoint(), &allowed()) else {
            panic!("an unlisted model was accepted");
        };
        assert_eq!(error.code, ErrorCode::BadMessage);
        assert!(error.message.contains("secret-model"), "{}", error.message);
        assert!(error.message.contains("default-model, other-model"));
    }
}
