//! Everything checked before a WebSocket is accepted (PROTOCOL.md 2.2): Origin,
//! token, session caps. A refused browser still gets an upgrade, because a
//! browser cannot read an HTTP status on a failed handshake: it receives the
//! chronus error envelope and a 44xx close code. No upstream is touched.
//!
//! Every WebSocket route goes through the same path: [`admit_upgrade`], its
//! own checks (each refused with [`reject_websocket`]), then [`accept`] or
//! [`accept_detached`].

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use actix::prelude::*;
use actix_web::{http::header, web, HttpRequest, HttpResponse};
use actix_web_actors::ws;

use crate::auth::{
    origin_allowed, token_from_request, AuthFailure, Claims, JwtValidator, JWT_SUBPROTOCOL,
};
use crate::error::{ErrorCode, GatewayError};
use crate::http::error::ApiError;
use crate::metrics;
use crate::session::limits::SessionPermit;
use crate::session::outbound::{detached, CountedStream};
use crate::state::AppState;
use crate::wire::browser::ErrorDialect;

/// A request that passed admission.
pub struct Admitted {
    pub claims: Claims,
    pub permit: SessionPermit,
}

/// The only WebSocket version there is (RFC 6455 4.4); actix also takes the
/// drafts' 7 and 8, which no browser has sent since 2012.
pub const WEBSOCKET_VERSION: &str = "13";

/// Whether the request is a WebSocket upgrade the gateway accepts: HTTP/1.1
/// or later, `Upgrade: websocket` and `Sec-WebSocket-Version: 13`. Checked
/// before any token or upstream work; anything else gets
/// [`upgrade_required`] (426), an HTTP/1.0 upgrade included (HTTP/1.0 has
/// no `Upgrade`).
pub fn is_websocket_upgrade(req: &HttpRequest) -> bool {
    let asks_for_websocket = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let speaks_version_13 = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == WEBSOCKET_VERSION.as_bytes());
    asks_for_websocket && speaks_version_13 && req.version() >= actix_web::http::Version::HTTP_11
}

/// `426 Upgrade Required` for a WebSocket path hit by plain HTTP, HTTP/1.0
/// or another WebSocket version; names the version it speaks (RFC 6455 4.4).
pub fn upgrade_required() -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::UPGRADE_REQUIRED)
        .insert_header((header::UPGRADE, "websocket"))
        .insert_header((header::SEC_WEBSOCKET_VERSION, WEBSOCKET_VERSION))
        .json(serde_json::json!({
            "error": "This endpoint only speaks WebSocket (RFC 6455: HTTP/1.1, Sec-WebSocket-Version 13)"
        }))
}

/// Why a WebSocket request is not admitted.
pub enum Refusal {
    /// Not an RFC 6455 upgrade: answered `426` (see [`upgrade_required`]).
    NotAnUpgrade,
    /// Refused by upgrading and closing with the error's code.
    Refused(GatewayError),
}

impl Refusal {
    /// The answer to the refused request, in `dialect`'s error envelope.
    pub fn respond(
        self,
        req: &HttpRequest,
        payload: web::Payload,
        dialect: ErrorDialect,
    ) -> Result<HttpResponse, actix_web::Error> {
        match self {
            Refusal::NotAnUpgrade => Ok(upgrade_required()),
            Refusal::Refused(error) => reject_websocket(req, payload, error, dialect),
        }
    }
}

/// The first step of every WebSocket route: a real RFC 6455 upgrade, then
/// Origin, token and session caps.
pub fn admit_upgrade(req: &HttpRequest, state: &AppState) -> Result<Admitted, Refusal> {
    if !is_websocket_upgrade(req) {
        return Err(Refusal::NotAnUpgrade);
    }
    admit_websocket(req, state).map_err(Refusal::Refused)
}

/// The last step of every WebSocket route: upgrades to `actor`, built with
/// the counter of bytes the server takes from its response stream (the
/// write-queue bound, see [`crate::session::outbound`]).
pub fn accept<A>(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    actor: impl FnOnce(Arc<AtomicUsize>) -> A,
) -> Result<HttpResponse, actix_web::Error>
where
    A: Actor<Context = ws::WebsocketContext<A>>
        + StreamHandler<Result<ws::Message, ws::ProtocolError>>,
{
    let (frames, taken) = counted_frames(payload, state, actor);
    Ok(ws::handshake_with_protocols(req, SELECTABLE_SUBPROTOCOLS)?
        .streaming(CountedStream::new(frames, taken)))
}

/// [`accept`], with the actor's frames on a task of their own (see
/// [`detached`]): for an actor relaying a producer that does not wait for
/// the browser.
pub fn accept_detached<A>(
    req: &HttpRequest,
    payload: web::Payload,
    state: &AppState,
    actor: impl FnOnce(Arc<AtomicUsize>) -> A,
) -> Result<HttpResponse, actix_web::Error>
where
    A: Actor<Context = ws::WebsocketContext<A>>
        + StreamHandler<Result<ws::Message, ws::ProtocolError>>,
{
    let (frames, taken) = counted_frames(payload, state, actor);
    Ok(ws::handshake_with_protocols(req, SELECTABLE_SUBPROTOCOLS)?
        .streaming(CountedStream::new(detached(frames), taken)))
}

/// The actor's frame stream (the codec sized by `MAX_FRAME_BYTES`) and the
/// counter of what the browser took of it. Built by hand rather than with
/// `WsResponseBuilder` so the response stream can count what the browser takes.
fn counted_frames<A>(
    payload: web::Payload,
    state: &AppState,
    actor: impl FnOnce(Arc<AtomicUsize>) -> A,
) -> (
    impl futures_util::Stream<Item = Result<bytes::Bytes, actix_web::Error>> + 'static,
    Arc<AtomicUsize>,
)
where
    A: Actor<Context = ws::WebsocketContext<A>>
        + StreamHandler<Result<ws::Message, ws::ProtocolError>>,
{
    let taken = Arc::new(AtomicUsize::new(0));
    let codec = actix_http::ws::Codec::new().max_size(state.config.max_frame_bytes);
    // One frame per turn: a session that falls behind leaves its backlog
    // in the socket instead of in an ever-growing buffer (paced.rs).
    let body = super::paced::PacedFrames::new(payload, state.config.max_frame_bytes);
    let frames = ws::WebsocketContext::with_codec(actor(taken.clone()), body, codec);
    (frames, taken)
}

/// Checks the caller of a WebSocket endpoint: Origin, then token, then caps.
pub fn admit_websocket(req: &HttpRequest, state: &AppState) -> Result<Admitted, GatewayError> {
    if !origin_allowed(req, state.config.allowed_origins.as_deref()) {
        metrics::AUTH_FAILURES.with_label_values(&["origin"]).inc();
        log::info!("session refused: origin not allowed");
        return Err(GatewayError::new(ErrorCode::Forbidden));
    }
    let claims = authenticate(req, state).map_err(|failure| {
        GatewayError::with_message(ErrorCode::Unauthorized, unauthorized_message(failure))
    })?;
    let permit = state.sessions.acquire(&claims.sub).inspect_err(|_| {
        log::info!(
            "session refused for user {}: session cap reached",
            claims.sub
        );
    })?;
    Ok(Admitted { claims, permit })
}

/// Validates the request's token; counts and logs (without the token) a failure.
pub fn authenticate(req: &HttpRequest, state: &AppState) -> Result<Claims, AuthFailure> {
    let result = match token_from_request(req, &state.config.jwt.cookie_name) {
        None => Err(AuthFailure::Missing),
        Some((token, _source)) => state.jwt.validate(&token),
    };
    match &result {
        Ok(claims) => log::debug!("authenticated user {}", claims.sub),
        Err(failure) => {
            metrics::AUTH_FAILURES
                .with_label_values(&[failure.as_str()])
                .inc();
            log::info!("authentication failed: {}", failure.as_str());
        }
    }
    result
}

/// For plain HTTP endpoints: the caller's claims, or 401 / 403.
pub fn authenticate_http(req: &HttpRequest, state: &AppState) -> Result<Claims, ApiError> {
    if !origin_allowed(req, state.config.allowed_origins.as_deref()) {
        metrics::AUTH_FAILURES.with_label_values(&["origin"]).inc();
        return Err(ApiError::Forbidden);
    }
    authenticate(req, state).map_err(|_| ApiError::Unauthorized)
}

fn unauthorized_message(failure: AuthFailure) -> &'static str {
    match failure {
        AuthFailure::Missing => "Authentication required: no token was sent",
        AuthFailure::Expired => "Your token has expired; sign in again",
        _ => "Authentication failed: the token is invalid",
    }
}

/// The subprotocols the gateway may select (never the token itself).
pub const SELECTABLE_SUBPROTOCOLS: &[&str] = &[JWT_SUBPROTOCOL];

/// Upgrades only to deliver `error` and close with its code.
pub fn reject_websocket(
    req: &HttpRequest,
    payload: web::Payload,
    error: GatewayError,
    dialect: ErrorDialect,
) -> Result<HttpResponse, actix_web::Error> {
    ws::WsResponseBuilder::new(RejectedSession { error, dialect }, req, payload)
        .protocols(SELECTABLE_SUBPROTOCOLS)
        .start()
}

/// Lives just long enough to send one error and close.
struct RejectedSession {
    error: GatewayError,
    dialect: ErrorDialect,
}

impl Actor for RejectedSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.text(self.error.envelope_in(self.dialect, None));
        let code = self.error.code.close_code().unwrap_or(4400);
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::from(code),
            description: Some(self.error.code.as_str().to_string()),
        }));
        ctx.stop();
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for RejectedSession {
    fn handle(&mut self, _: Result<ws::Message, ws::ProtocolError>, _: &mut Self::Context) {}
}

/// Checks a token a live session sends to outlive its first one: valid, and
/// for the same user. Failures are counted like any refused token.
pub fn validate_refresh(
    jwt: &JwtValidator,
    user: &str,
    token: &str,
) -> Result<Claims, GatewayError> {
    match jwt.validate(token) {
        Ok(claims) if claims.sub == user => Ok(claims),
        Ok(_) => {
            metrics::AUTH_FAILURES
                .with_label_values(&["refresh_other_user"])
                .inc();
            Err(GatewayError::with_message(
                ErrorCode::Unauthorized,
                "A refreshed token must belong to the same user",
            ))
        }
        Err(failure) => {
            metrics::AUTH_FAILURES
                .with_label_values(&[failure.as_str()])
                .inc();
            Err(GatewayError::with_message(
                ErrorCode::Unauthorized,
                "The refreshed token is invalid",
            ))
        }
    }
}

/// Time left until a token with this `exp` expires, by the same rule as at
/// connect ([`crate::auth::time_left`]; zero once past).
pub fn until_expiry(exp: u64) -> std::time::Duration {
    crate::auth::time_left(exp)
}
