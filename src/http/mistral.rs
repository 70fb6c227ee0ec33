//! `GET /api/mistral/token` (where a frontend or SDK that speaks Mistral's
//! native protocol connects) and the routes of that native proxy,
//! `GET /api/mistral/ws` and, for Mistral's SDKs,
//! `GET /api/mistral/v1/audio/transcriptions/realtime` (PROTOCOL.md 2.1, 2.6).

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use crate::config::Config;
use crate::http::error::ApiError;
use crate::session::admission::authenticate_http;
use crate::session::routes::mistral_native;
use crate::state::AppState;
use crate::store::keys::Provider;

/// Path of the native Mistral proxy on the public listener.
pub const MISTRAL_WS_PATH: &str = "/api/mistral/ws";
/// Where Mistral's SDKs point: they append [`SDK_REALTIME_PATH`] to it.
pub const MISTRAL_SERVER_PATH: &str = "/api/mistral";
/// The path every Mistral SDK appends to its server URL.
pub const SDK_REALTIME_PATH: &str = "/v1/audio/transcriptions/realtime";

/// Routes of the public listener under `/api/mistral`.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/mistral/token", web::get().to(token))
        .route(MISTRAL_WS_PATH, web::get().to(mistral_native))
        .route(
            &format!("{MISTRAL_SERVER_PATH}{SDK_REALTIME_PATH}"),
            web::get().to(mistral_native),
        );
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenResponse {
    websocket_url: String,
    server_url: String,
}

/// The public WebSocket URL of the native proxy: `PUBLIC_WS_BASE_URL` when
/// set, else built from the request's host (`wss` when the request came over
/// https, as seen through `Forwarded`/`X-Forwarded-Proto`).
pub fn public_ws_url(req: &HttpRequest, config: &Config) -> String {
    format!("{}{MISTRAL_WS_PATH}", public_ws_base(req, config))
}

/// The public http(s) URL of `/api/mistral`, for Mistral's SDKs (which turn
/// `http` into `ws` and `https` into `wss` themselves): derived like
/// [`public_ws_url`].
pub fn public_server_url(req: &HttpRequest, config: &Config) -> String {
    let base = public_ws_base(req, config);
    let http_base = if let Some(rest) = base.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if let Some(rest) = base.strip_prefix("ws://") {
        format!("http://{rest}")
    } else {
        base
    };
    format!("{http_base}{MISTRAL_SERVER_PATH}")
}

/// `ws(s)://host[:port]` the browser reaches the gateway at.
fn public_ws_base(req: &HttpRequest, config: &Config) -> String {
    match &config.public_ws_base_url {
        Some(base) => base.clone(),
        None => {
            let info = req.connection_info();
            let scheme = if info.scheme() == "https" {
                "wss"
            } else {
                "ws"
            };
            format!("{scheme}://{}", info.host())
        }
    }
}

/// `200 {"websocketUrl", "serverUrl"}` when the user has a Mistral key, `400 NO_API_KEY`
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
            server_url: public_server_url(&req, &state.config),
        }))
}
