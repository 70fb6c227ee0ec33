//! [`MistralProxyActor`]: one native Mistral session (`/api/mistral/ws`,
//! PROTOCOL.md 2.6), Mistral's *native* realtime protocol proxied for a
//! frontend or SDK that already speaks it. Admission and the upgrade are the
//! common ones ([`crate::session::routes::mistral_native`]); the socket core
//! (timer, fragments, bound, drain, report/close) is
//! [`crate::session::core`]. The actor opens its own socket to Mistral with
//! the user's key.
//! From there the proxy is transparent: browser text frames go to Mistral
//! verbatim and Mistral's frames come back verbatim. A binary browser frame
//! is raw audio and becomes `{"type":"input_audio.append","audio":"<base64>"}`
//! (split at Mistral's 262,144-byte limit). Frames that arrive before
//! Mistral's socket is open are held (bounded) and sent in order once it is.
//!
//! The gateway only speaks up for errors of its own (admission, Mistral
//! unreachable or refusing the key, limits), with the chronus error envelope
//! (plus `error.message` for Mistral's SDKs) and close code. One frame is the gateway's, not Mistral's: a
//! `{"type":"auth","token":…}` refresh (PROTOCOL.md 2.2) is consumed here.

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_web_actors::ws;
use awc::ws::Message as UpstreamMessage;
use awc::ws::{CloseCode as UpstreamCloseCode, CloseReason as UpstreamCloseReason, Frame};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use uuid::Uuid;

use crate::error::{ErrorCode, GatewayError};
use crate::metrics;
use crate::session::admission::Admitted;
use crate::session::core::{BrowserSession, BrowserSocket, BrowserSocketSettings};
use crate::session::limits::SessionPermit;
use crate::state::AppState;
use crate::store::SecretString;
use crate::upstream::connect::WsFramed;
use crate::upstream::mistral::sessions::MistralSessionGuard;
use crate::upstream::mistral::{
    connect_failure_error, open_mistral_socket, FromMistral, MistralEndpoint, WriterFailed,
};
use crate::upstream::writer::{message_len, SocketWriter, WriterPolicy};
use crate::wire::browser::ErrorDialect;
use crate::wire::mistral::append_frames;

/// Bytes held while Mistral's socket is opening (about 20 s of 48 kHz f32
/// audio, base64-encoded).
pub const MAX_PENDING_BYTES: usize = 8 * 1024 * 1024;
/// Text frames shorter than this are checked for the gateway's own `auth`
/// message; audio-carrying frames are far longer and pass untouched.
const MAX_AUTH_FRAME_BYTES: usize = 16 * 1024;
/// Audio of a binary frame is split on multiples of this many bytes (a whole
/// number of samples for both `pcm_s16le` and `pcm_f32le`).
const SAMPLE_ALIGNMENT_BYTES: usize = 4;

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
    socket: BrowserSocket,
    /// Until the connection attempt takes it.
    key: Option<SecretString>,
    /// `MISTRAL_WS_URL` with the model the client asked for.
    endpoint: MistralEndpoint,
    upstream: Upstream,
    pending: VecDeque<UpstreamMessage>,
    pending_bytes: usize,
    /// The client sent `input_audio.end`: Mistral's last events are coming.
    ending: bool,
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
        let id_text = Uuid::new_v4().to_string();
        let user = admitted.claims.sub;
        MistralProxyActor {
            _counted: state.mistral_sessions.open(&user),
            socket: BrowserSocket::new(BrowserSocketSettings {
                log_name: format!("mistral native {id_text}"),
                id_text,
                user,
                metrics_label: "mistral",
                token_exp: admitted.claims.exp,
                dialect: ErrorDialect::MistralSdk,
                state,
                taken,
            }),
            key: Some(key),
            endpoint,
            upstream: Upstream::Connecting,
            pending: VecDeque::new(),
            pending_bytes: 0,
            ending: false,
            _permit: admitted.permit,
        }
    }

    fn close_upstream(&mut self) {
        if let Upstream::Open(writer) = std::mem::replace(&mut self.upstream, Upstream::Closed) {
            writer.close(UpstreamCloseReason::from(UpstreamCloseCode::Normal));
        }
        self.pending.clear();
        self.pending_bytes = 0;
    }

    // ---- toward Mistral -----------------------------------------------------

    fn connect(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(key) = self.key.take() else {
            return;
        };
        let endpoint = self.endpoint.clone();
        let session = self.socket.id_text.clone();
        let attempt = async move { open_mistral_socket(&endpoint, key, &session).await };
        ctx.spawn(
            attempt
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(framed) => act.on_connected(framed, ctx),
                    Err(failure) => {
                        log::warn!("{}: giving up: {failure}", act.socket.log_name);
                        act.report(connect_failure_error(&failure), ctx);
                    }
                }),
        );
    }

    fn on_connected(&mut self, framed: WsFramed, ctx: &mut ws::WebsocketContext<Self>) {
        if self.socket.is_closed() {
            return; // the browser left meanwhile; dropping `framed` closes it
        }
        let (source, sink) = crate::upstream::writer::sink::split(framed);
        let actor = ctx.address();
        let writer = SocketWriter::spawn(sink, WriterPolicy::MISTRAL, move |reason| {
            actor.do_send(WriterFailed { reason })
        });
        ctx.add_stream(source.map(FromMistral));
        log::info!(
            "{}: upstream open ({} frame(s) held)",
            self.socket.log_name,
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

    // ---- from Mistral -------------------------------------------------------

    fn on_mistral_frame(&mut self, frame: Frame, ctx: &mut ws::WebsocketContext<Self>) {
        match frame {
            Frame::Text(text) => {
                metrics::UPSTREAM_TO_GATEWAY.record(text.len());
                match String::from_utf8(text.to_vec()) {
                    Ok(text) => self.send_text(text, ctx),
                    Err(_) => log::warn!(
                        "{}: skipping a non-UTF-8 text frame from Mistral",
                        self.socket.log_name
                    ),
                }
            }
            Frame::Binary(data) => {
                metrics::UPSTREAM_TO_GATEWAY.record(data.len());
                self.send_binary(data, ctx);
            }
            Frame::Continuation(_) => log::debug!(
                "{}: skipping a fragmented frame from Mistral",
                self.socket.log_name
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
                    "{}: Mistral closed the socket ({})",
                    self.socket.log_name,
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

impl BrowserSession for MistralProxyActor {
    fn socket(&self) -> &BrowserSocket {
        &self.socket
    }

    fn socket_mut(&mut self) -> &mut BrowserSocket {
        &mut self.socket
    }

    fn on_message(&mut self, message: ws::Message, ctx: &mut ws::WebsocketContext<Self>) {
        match message {
            ws::Message::Text(text) => {
                self.socket.last_activity = Instant::now();
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
                self.socket.last_activity = Instant::now();
                for frame in append_frames(&audio, SAMPLE_ALIGNMENT_BYTES) {
                    self.send_to_mistral(UpstreamMessage::Text(frame.into()), ctx);
                }
            }
            _ => {}
        }
    }

    fn release_upstream(&mut self) {
        self.close_upstream();
    }

    fn finishing(&self) -> bool {
        self.ending
    }

    /// Kept as before the shared core: the idle timeout runs on after
    /// `input_audio.end` (Mistral's events follow within seconds).
    fn idle_paused(&self) -> bool {
        false
    }

    /// Mistral's socket is pinged with the browser's.
    fn on_heartbeat(&mut self) {
        if let Upstream::Open(writer) = &self.upstream {
            let _ = writer.send(UpstreamMessage::Ping(Bytes::new()));
        }
    }

    /// Kept as before the shared core: the native proxy answers a browser's
    /// close with an empty close frame.
    fn close_reply(&self) -> Option<ws::CloseReason> {
        None
    }
}

impl Actor for MistralProxyActor {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        log::info!(
            "{}: opened for user {}",
            self.socket.log_name,
            self.socket.user
        );
        self.start_socket(ctx);
        self.connect(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.stop_socket();
        log::info!("{}: closed", self.socket.log_name);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for MistralProxyActor {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.on_browser_item(msg, ctx);
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        self.on_browser_finished(ctx);
    }
}

impl StreamHandler<FromMistral> for MistralProxyActor {
    fn handle(&mut self, FromMistral(frame): FromMistral, ctx: &mut Self::Context) {
        if self.socket.is_closed() {
            return;
        }
        match frame {
            Ok(frame) => self.on_mistral_frame(frame, ctx),
            Err(e) => {
                log::warn!("{}: protocol error from Mistral: {e}", self.socket.log_name);
                self.report(GatewayError::new(ErrorCode::MistralUnavailable), ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        if !self.socket.is_closed() {
            log::warn!(
                "{}: Mistral's socket ended without a close frame",
                self.socket.log_name
            );
            self.report(GatewayError::new(ErrorCode::MistralUnavailable), ctx);
        }
    }
}

impl Handler<WriterFailed> for MistralProxyActor {
    type Result = ();

    fn handle(&mut self, msg: WriterFailed, ctx: &mut Self::Context) {
        log::warn!("{}: upstream writer: {}", self.socket.log_name, msg.reason);
        self.report(GatewayError::new(ErrorCode::MistralUnavailable), ctx);
    }
}
