//! `/api/settings/api-keys`: each user stores, lists and deletes their own
//! provider API keys (PROTOCOL.md 2.1). Every route needs the chronus JWT;
//! the user is the token's `sub`, never a parameter.
//!
//! A key goes in once (`PUT`) and never comes out: responses show `last4` and
//! `updatedAt` only, and neither the body nor a parse error is ever logged or
//! echoed.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::http::error::ApiError;
use crate::session::admission::authenticate_http;
use crate::state::AppState;
use crate::store::keys::Provider;
use crate::store::SecretString;

/// Largest `PUT` body accepted: a key is at most 512 characters.
pub const MAX_BODY_BYTES: usize = 4096;

/// Routes of the public listener under `/api/settings/api-keys`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api/settings/api-keys").route(web::get().to(list_keys)))
        .service(
            web::resource("/api/settings/api-keys/{provider}")
                .route(web::put().to(put_key))
                .route(web::delete().to(delete_key)),
        );
}

/// `{"apiKey": "…"}`; other fields are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PutKeyBody {
    api_key: SecretString,
}

/// The provider named in the path; an unknown one, or one without API keys
/// (thoth), is 404 (no such resource).
fn provider_of(path: &str) -> Result<Provider, ApiError> {
    path.parse::<Provider>()
        .ok()
        .filter(|provider| provider.takes_api_key())
        .ok_or(ApiError::NotFound)
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest {
        message: message.into(),
        code: None,
    }
}

/// Reads the body into a buffer that is wiped on drop, refusing more than
/// [`MAX_BODY_BYTES`]. The buffer never grows past its first allocation, so
/// no unwiped copy of the key is left behind by a reallocation.
async fn read_secret_body(mut payload: web::Payload) -> Result<Zeroizing<Vec<u8>>, ApiError> {
    let mut body = Zeroizing::new(Vec::with_capacity(MAX_BODY_BYTES));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| bad_request("The request body could not be read"))?;
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(bad_request(format!(
                "The request body is larger than {MAX_BODY_BYTES} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Only `application/json` (parameters such as `charset` allowed): a
/// cross-site HTML form can send `application/x-www-form-urlencoded`,
/// `multipart/form-data` or `text/plain` without a CORS preflight, never
/// JSON, so a form post can never store a key even if a deployment adds CORS.
fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(
            "The body must be sent as Content-Type: application/json",
        ))
    }
}

fn no_store(mut response: HttpResponse) -> HttpResponse {
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// `PUT /api/settings/api-keys/{provider}` with `{"apiKey":"…"}` as
/// `application/json` → 204 (415 for any other content type).
async fn put_key(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_json(&req)?;
    let claims = authenticate_http(&req, &state)?;
    let provider = provider_of(&path)?;
    let body = read_secret_body(payload).await?;
    // serde's messages may quote the input: never pass them on.
    let PutKeyBody { api_key } = serde_json::from_slice(&body)
        .map_err(|_| bad_request(r#"The body must be JSON of the form {"apiKey": "..."}"#))?;
    drop(body);
    state.keys.put(&claims.sub, provider, api_key).await?;
    Ok(no_store(HttpResponse::NoContent().finish()))
}

/// `GET /api/settings/api-keys` → `[{"provider","last4","updatedAt"}]`.
async fn list_keys(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let claims = authenticate_http(&req, &state)?;
    let keys = state.keys.list(&claims.sub).await?;
    Ok(no_store(HttpResponse::Ok().json(keys)))
}

/// `DELETE /api/settings/api-keys/{provider}` → 204, or 404 when none is stored.
async fn delete_key(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let claims = authenticate_http(&req, &state)?;
    let provider = provider_of(&path)?;
    if state.keys.delete(&claims.sub, provider).await? {
        Ok(no_store(HttpResponse::NoContent().finish()))
    } else {
        Err(ApiError::NotFound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_providers_with_api_keys_are_key_resources() {
        assert!(matches!(provider_of("mistral"), Ok(Provider::Mistral)));
        assert!(matches!(provider_of("thoth"), Err(ApiError::NotFound)));
        assert!(matches!(provider_of("openai"), Err(ApiError::NotFound)));
    }
}
