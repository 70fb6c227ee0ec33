//! Errors of the REST endpoints, mapped to HTTP statuses in one place.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

/// A REST failure; its body is `{"error": "...", "code"?: "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Unauthorized")]
    Unauthorized,
    #[error("Forbidden")]
    Forbidden,
    #[error("Not found")]
    NotFound,
    #[error("{message}")]
    BadRequest {
        message: String,
        code: Option<&'static str>,
    },
    /// A body in another media type than the route takes (415).
    #[error("{0}")]
    UnsupportedMediaType(&'static str),
    #[error("Service temporarily unavailable")]
    Unavailable,
    #[error("Internal error")]
    Internal,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = serde_json::json!({"error": self.to_string()});
        if let ApiError::BadRequest {
            code: Some(code), ..
        } = self
        {
            body["code"] = (*code).into();
        }
        HttpResponse::build(self.status_code()).json(body)
    }
}

/// Key store failures as the settings and token endpoints answer them. The
/// messages never carry a key (see `KeyStoreError`).
impl From<crate::store::keys::KeyStoreError> for ApiError {
    fn from(err: crate::store::keys::KeyStoreError) -> Self {
        use crate::store::keys::KeyStoreError;
        match err {
            KeyStoreError::InvalidKey(reason) => ApiError::BadRequest {
                message: format!("Invalid API key: {reason}"),
                code: None,
            },
            KeyStoreError::Unavailable(db) => {
                log::warn!("API key store unavailable: {db}");
                ApiError::Unavailable
            }
            KeyStoreError::Corrupt => {
                log::error!("a stored API key cannot be decrypted");
                ApiError::Internal
            }
        }
    }
}
