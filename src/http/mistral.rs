//! `GET /api/mistral/token` (where a frontend that speaks Mistral's native
//! protocol connects) and the route of that native proxy,
//! `GET /api/mistral/ws` (PROTOCOL.md 2.1, 2.6).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use crate::config::Config;
use crate::gateway::admission::authenticate_http;
use crate::gateway::mistral_proxy;
use crate::http::error::ApiError;
use crate::keys::Provider;
use crate::state::AppState;

/// Path of the native Mistral proxy on the public listener.
pub const MISTRAL_WS_PATH: &str = "/api/mistral/ws";

/// Routes of the public listener under `/api/mistral`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/mistral/token", web::get().to(token))
        .route(MISTRAL_WS_PATH, web::get().to(mistral_proxy::mistral_ws));
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenResponse {
    websocket_url: String,
}

/// The public WebSocket URL of the native proxy: `PUBLIC_WS_BASE_URL` when
/// set, else built from the request's host (`wss` when the request came over
/// https, as seen through `Forwarded`/`X-Forwarded-Proto`).
pub fn public_ws_url(req: &HttpRequest, config: &Config) -> String {
    match &config.public_ws_base_url {
        Some(base) => format!("{base}{MISTRAL_WS_PATH}"),
        None => {
            let info = req.connection_info();
            let scheme = if info.scheme() == "https" {
                "wss"
            } else {
                "ws"
            };
            format!("{scheme}://{}{MISTRAL_WS_PATH}", info.host())
        }
    }
}

/// `200 {"websocketUrl"}` when the user has a Mistral key, `400 NO_API_KEY`
/// when not. Only the key's presence is checked: it is not decrypted here.
async fn token(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let claims = authenticate_http(&req, &state)?;
    let keys = state.keys.list(&claims.sub).await?;
    if !keys
        .iter()
        .any(|k| k.provider == Provider::Mistral.as_str())
    {
        return Err(ApiError::BadRequest {
            message: "No Mistral API key configured".into(),
            code: Some("NO_API_KEY"),
        });
    }
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(TokenResponse {
            websocket_url: public_ws_url(&req, &state.config),
        }))
}
