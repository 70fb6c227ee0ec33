//! The user's own Mistral API key, looked up in the key store when a
//! Mistral session opens.

use crate::error::{ErrorCode, GatewayError};
use crate::store::keys::{ApiKeyStore, KeyStoreError, Provider};
use crate::store::SecretString;

/// The user's Mistral key, or the error the browser gets instead:
/// `NO_API_KEY` when none is stored (or it can no longer be decrypted),
/// `MISTRAL_UNAVAILABLE` when the key store is down.
pub async fn user_key(keys: &ApiKeyStore, user: &str) -> Result<SecretString, GatewayError> {
    match keys.get(user, Provider::Mistral).await {
        Ok(Some(key)) => Ok(key),
        Ok(None) => {
            log::info!("mistral session refused for user {user}: no API key stored");
            Err(GatewayError::new(ErrorCode::NoApiKey))
        }
        Err(KeyStoreError::Corrupt) => Err(GatewayError::with_message(
            ErrorCode::NoApiKey,
            "Your stored Mistral API key can no longer be read; enter it again in your settings",
        )),
        Err(err) => {
            log::warn!("mistral session refused for user {user}: {err}");
            Err(GatewayError::new(ErrorCode::MistralUnavailable))
        }
    }
}
