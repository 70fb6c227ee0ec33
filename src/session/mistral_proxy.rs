//! `GET /api/mistral/ws` (and the same handler at
//! `/api/mistral/v1/audio/transcriptions/realtime`, the path Mistral's SDKs
//! build from a server URL): Mistral's *native* realtime protocol, proxied
//! (PROTOCOL.md 2.6), for a frontend or SDK that already speaks it. The
//! client's `model` query is honoured from `MISTRAL_MODELS`.
//!
//! Admission is the chronus one (Origin, JWT, session caps), then the user's
//! stored Mistral key is looked up; only then is the browser upgraded and a
//! [`MistralProxyActor`] opens its own socket to Mistral with that key.
//! From there the proxy is transparent: browser text frames go to Mistral
//! verbatim and Mistral's frames come back verbatim. A binary browser frame
//! is raw audio and becomes `{"type":"input_audio.append","audio":"<base64>"}`
//! (split at Mistral's 262,144-byte limit). Frames that arrive before
//! Mistral's socket is open are held (bounded) and sent in order once it is.
//!
//! The gateway only speaks up for errors of its own (admission, Mistral
//! unreachable or refusing the key, limits), with the chronus error envelope
//! and close code. One frame is the gateway's, not Mistral's: a
//! `{"type":"auth","token":…}` refresh (PROTOCOL.md 2.2) is consumed here.

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use awc::ws::Message as UpstreamMessage;
use awc::ws::{CloseCode as UpstreamCloseCode, CloseReason as UpstreamCloseReason, Frame};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use uuid::Uuid;

use crate::crypto::SecretString;
use crate::error::{ErrorCode, GatewayError};
use crate::metrics;
use crate::session::admission::validate_refresh;
use crate::session::admission::{
    admit_websocket, is_websocket_upgrade, reject_websocket, upgrade_required, Admitted,
    SELECTABLE_SUBPROTOCOLS,
};
use crate::session::fragments::{FrameFault, Reassembler};
use crate::session::limits::SessionPermit;
use crate::session::outbound::{CountedStream, OutboundQueue};
use crate::session::session_clock::SessionClock;
use crate::state::AppState;
use crate::upstream::connect::WsFramed;
use crate::upstream::mistral::{
    self, append_frames, connect_failure_error, open_mistral_socket, FromMistral, MistralEndpoint,
    WriterFailed,
};
use crate::upstream::mistral_sessions::MistralSessionGuard;
use crate::upstream::writer::{message_len, SocketWriter, WriterPolicy};

use crate::session::mistral_model::endpoint_for_query;
use crate::session::outbound::detached;

/// The gateway pings both sides this often…
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(20);
/// …and drops a browser it has heard nothing from for this long.
const CLIENT_SILENCE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes held while Mistral's socket is opening (about 20 s of 48 kHz f32
/// audio, base64-encoded).
pub const MAX_PENDING_BYTES: usize = 8 * 1024 * 1024;
/// Text frames shorter than this are checked for the gateway's own `auth`
/// message; audio-carrying frames are far longer and pass untouched.
const MAX_AUTH_FRAME_BYTES: usize = 16 * 1024;
/// Audio of a binary frame is split on multiples of this many bytes (a whole
/// number of samples for both `pcm_s16le` and `pcm_f32le`).
const SAMPLE_ALIGNMENT_BYTES: usize = 4;

/// The native Mistral WebSocket.
pub async fn mistral_ws(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    if !is_websocket_upgrade(&req) {
        return Ok(upgrade_required());
    }
    let admitted = match admit_websocket(&req, &state) {
        Ok(admitted) => admitted,
        Err(error) => return reject_websocket(&req, payload, error),
    };
    // The model is checked before the key is even read: nothing upstream yet.
    let endpoint = match endpoint_for_query(
        req.query_string(),
        &state.mistral,
        &state.config.mistral_models,
    ) {
        Ok(endpoint) => endpoint,
        Err(error) => return reject_websocket(&req, payload, error),
    };
    let key = match mistral::user_key(&state.keys, &admitted.claims.sub).await {
        Ok(key) => key,
        Err(error) => return reject_websocket(&req, payload, error),
    };
    let max_frame_bytes = state.config.max_frame_bytes;
    // The response stream counts what the browser takes: Mistral's events
    // are relayed only while the browser keeps up (the write-queue bound).
    let taken = Arc::new(AtomicUsize::new(0));
    let proxy = MistralProxyActor::new(admitted, key, endpoint, state.into_inner(), taken.clone());
    let codec = actix_http::ws::Codec::new().max_size(max_frame_bytes);
    let frames = ws::WebsocketContext::with_codec(proxy, payload, codec);
    Ok(ws::handshake_with_protocols(&req, SELECTABLE_SUBPROTOCOLS)?
        .streaming(CountedStream::new(detached(frames), taken)))
}

enum Upstream {
    /// The socket is opening; frames wait in `pending`.
    Connecting,
    Open(SocketWriter),
    Closed,
}

/// A short client text frame, read for the two things the gateway cares
/// about: its own token refresh `{"type":"auth","token":"…"}` (consumed),
/// and `input_audio.end` (the session is finishing: a drain waits for it).
#[derive(Deserialize)]
struct ShortFrame {
    r#type: String,
    #[serde(default)]
    token: Option<String>,
}

/// One native Mistral session: the browser's socket and its own Mistral socket.
pub struct MistralProxyActor {
    id_text: String,
    user: String,
    /// `MAX_SESSION_SECS`, and `exp` under `SESSION_TOKEN_CHECK=continuous`.
    clock: SessionClock,
    state: Arc<AppState>,
    /// Until the connection attempt takes it.
    key: Option<SecretString>,
    /// `MISTRAL_WS_URL` with the model the client asked for.
    endpoint: MistralEndpoint,
    upstream: Upstream,
    pending: VecDeque<UpstreamMessage>,
    pending_bytes: usize,
    fragments: Reassembler,
    last_heard: Instant,
    last_data: Instant,
    started: Instant,
    expiry_timer: Option<SpawnHandle>,
    closed: bool,
    /// The client sent `input_audio.end`: Mistral's last events are coming.
    ending: bool,
    /// Frames relayed to the browser and not yet taken by the server.
    outbound: OutboundQueue,
    _permit: SessionPermit,
    _counted: MistralSessionGuard,
}

impl MistralProxyActor {
    pub fn new(
        admitted: Admitted,
        key: SecretString,
        endpoint: MistralEndpoint,
        state: Arc<AppState>,
        taken: Arc<AtomicUsize>,
    ) -> Self {
        let now = Instant::now();
        let user = admitted.claims.sub;
        MistralProxyActor {
            id_text: Uuid::new_v4().to_string(),
            _counted: state.mistral_sessions.open(&user),
            user,
            clock: SessionClock::new(&state.config.chronus, admitted.claims.exp, now),
            state,
            key: Some(key),
            endpoint,
            upstream: Upstream::Connecting,
            pending: VecDeque::new(),
            pending_bytes: 0,
            fragments: Reassembler::default(),
            last_heard: now,
            last_data: now,
            started: now,
            expiry_timer: None,
            closed: false,
            ending: false,
            outbound: OutboundQueue::new(taken),
            _permit: admitted.permit,
        }
    }

    // ---- ending -------------------------------------------------------------

    /// Sends the chronus error envelope; closes both sides when the code says so.
    fn report(&mut self, error: GatewayError, ctx: &mut ws::WebsocketContext<Self>) {
        if self.closed {
            return;
        }
        let envelope = error.envelope(Some(&self.id_text));
        if !self.browser_keeps_up(envelope.len(), ctx) {
            return;
        }
        ctx.text(envelope);
        if let Some(code) = error.code.close_code() {
            log::info!(
                "mistral native {}: closing with {} ({code})",
                self.id_text,
                error.for_log()
            );
            self.close(code, error.code.as_str(), ctx);
        }
    }

    fn close(&mut self, code: u16, description: &str, ctx: &mut ws::WebsocketContext<Self>) {
        self.closed = true;
        self.close_upstream();
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::from(code),
            description: Some(description.to_string()),
        }));
        ctx.stop();
    }

    fn close_upstream(&mut self) {
        if let Upstream::Open(writer) = std::mem::replace(&mut self.upstream, Upstream::Closed) {
            writer.close(UpstreamCloseReason::from(UpstreamCloseCode::Normal));
        }
        self.pending.clear();
        self.pending_bytes = 0;
    }

    /// The gateway is shutting down (SIGTERM): like a chronus session, a
    /// session that sent `input_audio.end` gets the grace period for
    /// Mistral's last events; every other one is told now.
    fn drain(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if self.ending {
            let grace = self.state.config.shutdown_grace;
            ctx.run_later(grace, |act, ctx| {
                act.report(GatewayError::new(ErrorCode::ServerShuttingDown), ctx)
            });
        } else {
            self.report(GatewayError::new(ErrorCode::ServerShuttingDown), ctx);
        }
    }

    // ---- toward Mistral -----------------------------------------------------

    fn connect(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(key) = self.key.take() else {
            return;
        };
        let endpoint = self.endpoint.clone();
        let session = self.id_text.clone();
        let attempt = async move { open_mistral_socket(&endpoint, key, &session).await };
        ctx.spawn(
            attempt
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(framed) => act.on_connected(framed, ctx),
                    Err(failure) => {
                        log::warn!("mistral native {}: giving up: {failure}", act.id_text);
                        act.report(connect_failure_error(&failure), ctx);
                    }
                }),
        );
    }

    fn on_connected(&mut self, framed: WsFramed, ctx: &mut ws::WebsocketContext<Self>) {
        if self.closed {
            return; // the browser left meanwhile; dropping `framed` closes it
        }
        let (sink, source) = framed.split();
        let actor = ctx.address();
        let writer = SocketWriter::spawn(sink, WriterPolicy::MISTRAL, move |reason| {
            actor.do_send(WriterFailed { reason })
        });
        ctx.add_stream(source.map(FromMistral));
        log::info!(
            "mistral native {}: upstream open ({} frame(s) held)",
            self.id_text,
            self.pending.len()
        );
        self.upstream = Upstream::Open(writer);
        self.pending_bytes = 0;
        for message in std::mem::take(&mut self.pending) {
            self.send_to_mistral(message, ctx);
        }
    }

    /// Sends a frame to Mistral, or holds it while the socket is opening.
    fn send_to_mistral(&mut self, message: UpstreamMessage, ctx: &mut ws::WebsocketContext<Self>) {
        let len = message_len(&message);
        match &self.upstream {
            Upstream::Connecting => {
                if self.pending_bytes + len > MAX_PENDING_BYTES {
                    return self.report(
                        GatewayError::with_message(
                            ErrorCode::RateLimited,
                            "Too much data arrived before Mistral was ready",
                        ),
                        ctx,
                    );
                }
                self.pending_bytes += len;
                self.pending.push_back(message);
            }
            Upstream::Open(writer) => {
                metrics::GATEWAY_TO_UPSTREAM.record(len);
                if let Err(failure) = writer.send(message) {
                    self.report(failure.session_error(), ctx);
                }
            }
            Upstream::Closed => {}
        }
    }

    // ---- from the browser ---------------------------------------------------

    fn on_frame(&mut self, msg: ws::Message, ctx: &mut ws::WebsocketContext<Self>) {
        match msg {
            ws::Message::Text(text) => {
                metrics::CLIENT_TO_GATEWAY.record(text.len());
                self.last_data = Instant::now();
                if text.len() < MAX_AUTH_FRAME_BYTES {
                    if let Ok(ShortFrame { r#type, token }) = serde_json::from_str(&text) {
                        match (r#type.as_str(), token) {
                            ("auth", Some(token)) => return self.refresh_token(&token, ctx),
                            ("input_audio.end", _) => self.ending = true,
                            _ => {}
                        }
                    }
                }
                self.send_to_mistral(UpstreamMessage::Text(text), ctx);
            }
            ws::Message::Binary(audio) => {
                metrics::CLIENT_TO_GATEWAY.record(audio.len());
                self.last_data = Instant::now();
                for frame in append_frames(&audio, SAMPLE_ALIGNMENT_BYTES) {
                    self.send_to_mistral(UpstreamMessage::Text(frame.into()), ctx);
                }
            }
            ws::Message::Continuation(item) => self.on_fragment(item, ctx),
            ws::Message::Ping(payload) => ctx.pong(&payload),
            ws::Message::Pong(_) | ws::Message::Nop => {}
            ws::Message::Close(_) => {
                log::info!("mistral native {}: client closed", self.id_text);
                self.closed = true;
                self.close_upstream();
                ctx.close(None);
                ctx.stop();
            }
        }
    }

    /// Reassembles a fragmented message, bounded by `MAX_FRAME_BYTES` in all.
    fn on_fragment(&mut self, item: actix_http::ws::Item, ctx: &mut ws::WebsocketContext<Self>) {
        let max_frame_bytes = self.state.config.max_frame_bytes;
        match self.fragments.push(item, max_frame_bytes) {
            Ok(Some(message)) => self.on_frame(message, ctx),
            Ok(None) => {}
            Err(fault) => self.on_frame_fault(fault, ctx),
        }
    }

    /// A browser frame the session cannot take: the envelope, then the
    /// fault's close code (1007 for text that is not UTF-8).
    fn on_frame_fault(&mut self, fault: FrameFault, ctx: &mut ws::WebsocketContext<Self>) {
        let description = fault.error.code.as_str();
        self.report(fault.error, ctx);
        if let Some(code) = fault.close_code {
            if !self.closed {
                self.close(code, description, ctx);
            }
        }
    }

    /// Replaces the session's token (same user) so it outlives the first one.
    fn refresh_token(&mut self, token: &str, ctx: &mut ws::WebsocketContext<Self>) {
        match validate_refresh(&self.state.jwt, &self.user, token) {
            Ok(claims) => {
                log::info!("mistral native {}: token refreshed", self.id_text);
                self.clock.token_refreshed(claims.exp);
                self.schedule_expiry(ctx);
            }
            Err(error) => self.report(error, ctx),
        }
    }

    fn schedule_expiry(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if let Some(timer) = self.expiry_timer.take() {
            ctx.cancel_future(timer);
        }
        let left = self
            .clock
            .next_deadline()
            .saturating_duration_since(Instant::now());
        self.expiry_timer = Some(ctx.run_later(left, |act, ctx| {
            act.expiry_timer = None;
            match act.clock.expired(Instant::now()) {
                Some(code) => act.report(GatewayError::new(code), ctx),
                // Woken early (timer granularity): wait for the rest.
                None => act.schedule_expiry(ctx),
            }
        }));
    }

    fn schedule_idle_check(&self, delay: Duration, ctx: &mut ws::WebsocketContext<Self>) {
        ctx.run_later(delay, |act, ctx| {
            let idle_for = act.last_data.elapsed();
            let limit = act.state.config.idle_timeout;
            if idle_for >= limit {
                act.report(GatewayError::new(ErrorCode::IdleTimeout), ctx);
            } else {
                act.schedule_idle_check(limit - idle_for, ctx);
            }
        });
    }

    // ---- from Mistral -------------------------------------------------------

    /// Counts a frame toward the browser's write queue; a browser that stopped
    /// reading (queue over its bound) ends the session instead.
    fn browser_keeps_up(&mut self, len: usize, ctx: &mut ws::WebsocketContext<Self>) -> bool {
        if self.outbound.push(len) {
            return true;
        }
        log::warn!(
            "mistral native {}: browser not reading ({} bytes waiting); closing",
            self.id_text,
            self.outbound.queued()
        );
        self.closed = true;
        if let Upstream::Open(writer) = std::mem::replace(&mut self.upstream, Upstream::Closed) {
            writer.close(UpstreamCloseReason::from(UpstreamCloseCode::Normal));
        }
        ctx.stop();
        false
    }

    fn on_mistral_frame(&mut self, frame: Frame, ctx: &mut ws::WebsocketContext<Self>) {
        match frame {
            Frame::Text(text) => {
                metrics::UPSTREAM_TO_GATEWAY.record(text.len());
                match std::str::from_utf8(&text) {
                    Ok(text) => {
                        if self.browser_keeps_up(text.len(), ctx) {
                            metrics::GATEWAY_TO_CLIENT.record(text.len());
                            ctx.text(text.to_owned());
                        }
                    }
                    Err(_) => log::warn!(
                        "mistral native {}: skipping a non-UTF-8 text frame from Mistral",
                        self.id_text
                    ),
                }
            }
            Frame::Binary(data) => {
                metrics::UPSTREAM_TO_GATEWAY.record(data.len());
                if self.browser_keeps_up(data.len(), ctx) {
                    metrics::GATEWAY_TO_CLIENT.record(data.len());
                    ctx.binary(data);
                }
            }
            Frame::Continuation(_) => log::debug!(
                "mistral native {}: skipping a fragmented frame from Mistral",
                self.id_text
            ),
            Frame::Ping(payload) => {
                if let Upstream::Open(writer) = &self.upstream {
                    let _ = writer.send(UpstreamMessage::Pong(payload));
                }
            }
            Frame::Pong(_) => {}
            Frame::Close(reason) => {
                let code = reason.map(|r| u16::from(r.code));
                log::info!(
                    "mistral native {}: Mistral closed the socket ({})",
                    self.id_text,
                    code.map_or("no code".into(), |c| c.to_string())
                );
                // Mistral's close code is mapped, never forwarded (PROTOCOL.md 2.5).
                match code {
                    Some(1000) | Some(1001) => self.close(1000, "mistral closed", ctx),
                    _ => self.report(GatewayError::new(ErrorCode::MistralUnavailable), ctx),
                }
            }
        }
    }
}

impl Actor for MistralProxyActor {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::SESSIONS_ACTIVE
            .with_label_values(&["mistral"])
            .inc();
        log::info!(
            "mistral native {}: opened for user {}",
            self.id_text,
            self.user
        );
        self.schedule_expiry(ctx);
        self.schedule_idle_check(self.state.config.idle_timeout, ctx);
        let mut shutdown = self.state.shutdown.clone();
        ctx.spawn(
            async move {
                // An error means the gateway itself is gone: drain as well.
                let _ = shutdown.wait_for(|draining| *draining).await;
            }
            .into_actor(self)
            .map(|_, act, ctx| act.drain(ctx)),
        );
        ctx.run_interval(HEARTBEAT_INTERVAL, |act, ctx| {
            if act.last_heard.elapsed() > CLIENT_SILENCE_TIMEOUT {
                log::info!(
                    "mistral native {}: client silent for too long, dropping",
                    act.id_text
                );
                act.closed = true;
                act.close_upstream();
                ctx.stop();
                return;
            }
            ctx.ping(b"");
            if let Upstream::Open(writer) = &act.upstream {
                let _ = writer.send(UpstreamMessage::Ping(Bytes::new()));
            }
        });
        self.connect(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.close_upstream();
        metrics::SESSIONS_ACTIVE
            .with_label_values(&["mistral"])
            .dec();
        metrics::SESSION_DURATION
            .with_label_values(&["mistral"])
            .observe(self.started.elapsed().as_secs_f64());
        log::info!("mistral native {}: closed", self.id_text);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for MistralProxyActor {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        if self.closed {
            return;
        }
        match msg {
            Ok(frame) => self.on_frame(frame, ctx),
            Err(e) => match FrameFault::of_protocol_error(&e) {
                Some(fault) => self.on_frame_fault(fault, ctx),
                None => {
                    log::info!(
                        "mistral native {}: protocol error from client: {e}",
                        self.id_text
                    );
                    self.closed = true;
                    self.close_upstream();
                    ctx.stop();
                }
            },
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The browser's TCP stream ended (maybe without a close frame).
        self.closed = true;
        self.close_upstream();
        ctx.stop();
    }
}

impl StreamHandler<FromMistral> for MistralProxyActor {
    fn handle(&mut self, FromMistral(frame): FromMistral, ctx: &mut Self::Context) {
        if self.closed {
            return;
        }
        match frame {
            Ok(frame) => self.on_mistral_frame(frame, ctx),
            Err(e) => {
                log::warn!(
                    "mistral native {}: protocol error from Mistral: {e}",
                    self.id_text
                );
                self.report(GatewayError::new(ErrorCode::MistralUnavailable), ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        if !self.closed {
            log::warn!(
                "mistral native {}: Mistral's socket ended without a close frame",
                self.id_text
            );
            self.report(GatewayError::new(ErrorCode::MistralUnavailable), ctx);
        }
    }
}

impl Handler<WriterFailed> for MistralProxyActor {
    type Result = ();

    fn handle(&mut self, msg: WriterFailed, ctx: &mut Self::Context) {
        log::warn!(
            "mistral native {}: upstream writer: {}",
            self.id_text,
            msg.reason
        );
        self.report(GatewayError::new(ErrorCode::MistralUnavailable), ctx);
    }
}
