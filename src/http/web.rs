//! The browser client and its demo page (docs/browser-client.md), embedded in
//! the binary so it needs no files beside it:
//! - `GET /web/{file}` — `chronus-transcription.js` and `pcm-worklet.js`;
//! - only under `chronus-gateway demo` ([`crate::config::DemoSettings`]):
//!   `GET /demo` (the demo page), `GET /demo/token` (a token for the demo
//!   user) and `GET /demo/config` (where the dev thoth is, for the page's
//!   legacy mode). Without demo settings all three answer 404: a production
//!   gateway serves no page of its own.

use actix_web::http::header::{self, CacheControl, CacheDirective};
use actix_web::{web, HttpResponse};
use serde::Serialize;

use crate::auth::mint_hs256;
use crate::config::JwtKey;
use crate::http::error::ApiError;
use crate::state::AppState;

const DEMO_PAGE: &str = include_str!("../../web/demo.html");

/// The files served under `/web/`, by name.
const ASSETS: &[(&str, &str)] = &[
    (
        "chronus-transcription.js",
        include_str!("../../web/chronus-transcription.js"),
    ),
    ("pcm-worklet.js", include_str!("../../web/pcm-worklet.js")),
];

const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

/// The demo page loads nothing from elsewhere; its scripts may open
/// WebSockets anywhere (legacy mode talks to thoth on another port).
const DEMO_PAGE_CSP: &str = "default-src 'none'; script-src 'self' 'unsafe-inline'; \
style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self' ws: wss:; \
base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Routes of the public listener.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/demo", web::get().to(demo_page))
        .route("/demo/token", web::get().to(demo_token))
        .route("/demo/config", web::get().to(demo_config))
        .route("/web/{file}", web::get().to(asset));
}

/// The embedded file called `name`, if any.
fn find_asset(name: &str) -> Option<&'static str> {
    ASSETS
        .iter()
        .find(|(asset, _)| *asset == name)
        .map(|(_, body)| *body)
}

/// Revalidate on every load: the files change with the binary.
fn no_cache() -> CacheControl {
    CacheControl(vec![CacheDirective::NoCache])
}

async fn demo_page(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.config.demo.as_ref().ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok()
        .content_type(HTML)
        .insert_header(no_cache())
        .insert_header((header::CONTENT_SECURITY_POLICY, DEMO_PAGE_CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .body(DEMO_PAGE))
}

async fn asset(file: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let body = find_asset(&file).ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok()
        .content_type(JAVASCRIPT)
        .insert_header(no_cache())
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(body))
}

/// `GET /demo/token`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DemoToken<'a> {
    token: String,
    user: &'a str,
    expires_in_secs: u64,
}

async fn demo_token(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let config = &state.config;
    let demo = config.demo.as_ref().ok_or(ApiError::NotFound)?;
    // The demo always runs with an HS256 secret; a gateway verifying with a
    // public key has nothing to mint with.
    let JwtKey::Secret(secret) = &config.jwt.key else {
        return Err(ApiError::NotFound);
    };
    let ttl = demo.token_ttl.as_secs();
    let token = mint_hs256(
        secret,
        &demo.user,
        ttl,
        config.jwt.issuer.as_deref(),
        config.jwt.audience.as_deref(),
    )
    .map_err(|err| {
        log::error!("demo token: {err}");
        ApiError::Internal
    })?;
    Ok(HttpResponse::Ok()
        .insert_header(CacheControl(vec![CacheDirective::NoStore]))
        .json(DemoToken {
            token,
            user: &demo.user,
            expires_in_secs: ttl,
        }))
}

/// `GET /demo/config`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DemoConfig<'a> {
    thoth_ws_url: &'a str,
}

async fn demo_config(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let demo = state.config.demo.as_ref().ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok()
        .insert_header(no_cache())
        .json(DemoConfig {
            thoth_ws_url: &demo.thoth_ws_url,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_client_files_are_embedded_and_nothing_else() {
        assert!(find_asset("chronus-transcription.js").is_some_and(|js| js.contains("export")));
        assert!(find_asset("pcm-worklet.js").is_some_and(|js| js.contains("registerProcessor")));
        assert!(find_asset("demo.html").is_none());
        assert!(find_asset("../Cargo.toml").is_none());
    }

    #[test]
    fn the_demo_page_loads_nothing_from_elsewhere() {
        for needle in ["http://", "https://", "//cdn", "@import"] {
            assert!(!DEMO_PAGE.contains(needle), "demo.html mentions {needle}");
        }
        assert!(DEMO_PAGE.contains("/web/chronus-transcription.js"));
    }
}
