//! Today's thoth (PROTOCOL.md 3.2, `THOTH_PROTOCOL=legacy`) as a
//! [`ThothUpstreamActor<Legacy>`]: `/stream-audio`, one stream per process,
//! so an endpoint serves one session at a time on a socket of its own, which
//! closes as soon as the session ends. Frames: `wire/thoth_legacy.rs`.
//!
//! Today's thoth refuses every handshake it does not want (busy, `Origin`,
//! `x-thoth-token`) with an HTTP 403 before the upgrade (`REAL-PEERS.md` 3),
//! and a thoth that accepts first may close with 1013 at once. Either is a
//! *refusal*: the session's `Join` is answered with `THOTH_BUSY` only once
//! the handshake has settled, so the pool can move the session to the next
//! free endpoint before the browser hears of it. A 403 cannot tell busy from
//! a wrong `THOTH_STREAM_TOKEN`, so each refusal is logged with what it may
//! mean and kept for the pool report (`lastRefusal`).

use std::time::Duration;

use actix::prelude::*;
use awc::ws::CloseCode;
use chrono::Utc;
use futures_util::future::LocalBoxFuture;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::actor::{SessionSlot, ThothUpstreamActor};
use super::audio_route::AudioRoute;
use super::endpoint::{EndpointProtocol, ThothEndpointConfig};
use super::monitor::Refusal;
use super::socket::ThothSocket;
use crate::audio::AudioFormat;
use crate::error::{ErrorCode, GatewayError};
use crate::upstream::connect::{ConnectFailure, Connected};
use crate::upstream::{Subscribe, UpstreamEvent};
use crate::wire::thoth_legacy;

/// After a legacy socket opens, a close 1013 within this long still counts as
/// a refused handshake (the session moves on); later it is `THOTH_BUSY` for
/// the session. The browser hears `ready` only after it: its audio waits in
/// the session's pre-ready buffer meanwhile, so nothing is lost.
pub const LEGACY_REFUSAL_WINDOW: Duration = Duration::from_millis(150);

/// What an HTTP 403 from today's thoth may mean (it says no more).
pub const HTTP_403_MAY_MEAN: &str = "thoth is serving another stream (busy), or it refuses \
this gateway's Origin header or THOTH_STREAM_TOKEN";

/// What a close 1013 right after the handshake means.
const CLOSE_1013_MEANS: &str = "thoth is serving another stream (busy)";

/// The answer to a legacy session's `Join`.
type JoinReply = Result<AudioRoute, GatewayError>;

/// A legacy `Join` waiting for its handshake to settle.
struct PendingJoin {
    session_id: Uuid,
    route: AudioRoute,
    reply: oneshot::Sender<JoinReply>,
}

/// The one-stream-per-socket protocol's own state.
#[derive(Default)]
pub struct Legacy {
    /// The session whose handshake is not settled yet.
    pending_join: Option<PendingJoin>,
    last_refusal: Option<Refusal>,
}

/// The actor that owns one legacy endpoint and its one session.
pub type LegacyThothActor = ThothUpstreamActor<Legacy>;

impl EndpointProtocol for Legacy {
    const SUBPROTOCOL: Option<&'static str> = None;

    fn new(_: &ThothEndpointConfig) -> Self {
        Legacy::default()
    }

    /// A legacy socket belongs to its one session: close it at once.
    fn idle_close(_: &ThothEndpointConfig) -> Duration {
        Duration::ZERO
    }

    fn join(
        act: &mut LegacyThothActor,
        msg: Subscribe,
        ctx: &mut Context<LegacyThothActor>,
    ) -> Response<JoinReply> {
        Response::fut(act.join_legacy(msg, ctx))
    }

    fn connected(
        act: &mut LegacyThothActor,
        generation: u64,
        connected: Connected,
        ctx: &mut Context<LegacyThothActor>,
    ) {
        act.open_socket(generation, connected.framed, ctx);
        // The session starts once thoth has kept the socket.
        act.legacy_socket_opened(generation, ctx);
    }

    fn retry_connect(
        _: &mut LegacyThothActor,
        _: &ConnectFailure,
        _: &mut Context<LegacyThothActor>,
    ) -> bool {
        false
    }

    fn connect_error(act: &mut LegacyThothActor, failure: &ConnectFailure) -> GatewayError {
        match failure {
            ConnectFailure::Refused(403) => act.legacy_refused_with_403(),
            ConnectFailure::Refused(_) => GatewayError::new(ErrorCode::AuthFailed),
            _ => GatewayError::new(ErrorCode::ThothUnavailable),
        }
    }

    /// Legacy thoth has no start message: the socket is the session.
    fn start_upstream(
        _: &mut LegacyThothActor,
        _: Uuid,
        _: AudioFormat,
        _: &mut Context<LegacyThothActor>,
    ) {
    }

    /// Closing the socket is the cancel (it closes with its last session).
    fn cancel_upstream(
        _: &mut LegacyThothActor,
        _: &Uuid,
        _: &SessionSlot,
        _: &mut Context<LegacyThothActor>,
    ) {
    }

    /// Legacy thoth has no end-of-audio message: wait for a last window.
    fn end(act: &mut LegacyThothActor, session_id: Uuid, ctx: &mut Context<LegacyThothActor>) {
        ctx.run_later(act.config.legacy_flush_grace, move |act, ctx| {
            act.finish_session(session_id, UpstreamEvent::Done, ctx);
        });
    }

    /// A legacy session cannot resume: it ends.
    fn socket_lost(act: &mut LegacyThothActor, ctx: &mut Context<LegacyThothActor>) {
        act.fail_all(GatewayError::new(ErrorCode::ThothUnavailable), ctx);
    }

    fn on_text(act: &mut LegacyThothActor, text: &str, ctx: &mut Context<LegacyThothActor>) {
        act.on_legacy_text(text, ctx);
    }

    fn closed_with(act: &mut LegacyThothActor, code: Option<u16>) {
        if code == Some(1013) {
            act.legacy_closed_with_1013();
        }
    }

    fn forgetting(&mut self, session_id: &Uuid) {
        if self
            .pending_join
            .as_ref()
            .is_some_and(|pending| pending.session_id == *session_id)
        {
            self.pending_join = None;
        }
    }

    /// A session whose handshake is not settled hears it from the pool.
    fn failing_all(act: &mut LegacyThothActor, error: &GatewayError) {
        act.refuse_pending_join(error);
    }

    fn last_refusal(&self) -> Option<Refusal> {
        self.last_refusal.clone()
    }
}

impl LegacyThothActor {
    /// A session joins a legacy endpoint: its socket is opened, and the
    /// answer waits until thoth has accepted it (or refused).
    fn join_legacy(
        &mut self,
        msg: Subscribe,
        ctx: &mut Context<Self>,
    ) -> LocalBoxFuture<'static, JoinReply> {
        if !self.sessions.is_empty() {
            // This gateway already streams to it: no handshake needed to know.
            let busy = Err(GatewayError::new(ErrorCode::ThothBusy));
            return Box::pin(std::future::ready(busy));
        }
        let route = AudioRoute::new(msg.session_id, None);
        let session_id = msg.session_id;
        self.sessions
            .insert(session_id, SessionSlot::waiting(msg, route.clone()));
        if matches!(self.link, ThothSocket::Open(_)) {
            // The last session's socket, not closed yet: thoth's buffer
            // resets only when it closes, so a new session gets a new one.
            self.close_link(ctx, CloseCode::Normal);
        }
        let (reply, answer) = oneshot::channel();
        self.protocol.pending_join = Some(PendingJoin {
            session_id,
            route,
            reply,
        });
        log::info!(
            "thoth {}: session {} opening a legacy stream",
            self.display_url,
            session_id
        );
        self.sessions_changed(ctx);
        self.connect(ctx);
        Box::pin(async move {
            // Dropped unanswered: the session left while its handshake ran.
            answer
                .await
                .unwrap_or_else(|_| Err(GatewayError::new(ErrorCode::ThothUnavailable)))
        })
    }

    /// The socket is open; a close 1013 may still follow at once.
    fn legacy_socket_opened(&mut self, generation: u64, ctx: &mut Context<Self>) {
        log::info!(
            "thoth {}: legacy stream open; starting it unless refused within {LEGACY_REFUSAL_WINDOW:?}",
            self.display_url
        );
        ctx.run_later(LEGACY_REFUSAL_WINDOW, move |act, ctx| {
            if act.socket_is(generation) {
                act.legacy_accepted(ctx);
            }
        });
    }

    /// Thoth kept the socket: the session streams and its `Join` is answered.
    fn legacy_accepted(&mut self, ctx: &mut Context<Self>) {
        let Some(pending) = self.protocol.pending_join.take() else {
            return;
        };
        if !self.sessions.contains_key(&pending.session_id) {
            return;
        }
        self.start_session(pending.session_id, ctx);
        if pending.reply.send(Ok(pending.route)).is_err() {
            // Nobody waits for the answer any more: give the stream back.
            self.forget(&pending.session_id);
            self.sessions_changed(ctx);
        }
    }

    /// Ends a `Join` still waiting for its handshake with `error`, without
    /// telling the session's client: the pool decides what it hears (the
    /// next endpoint, or this error). Returns whether there was one.
    fn refuse_pending_join(&mut self, error: &GatewayError) -> bool {
        let Some(pending) = self.protocol.pending_join.take() else {
            return false;
        };
        if let Some(slot) = self.sessions.remove(&pending.session_id) {
            slot.route.lock().close();
        }
        let _ = pending.reply.send(Err(error.clone()));
        true
    }

    /// Thoth answered the handshake with HTTP 403: a refusal (`THOTH_BUSY`,
    /// the pool tries the next endpoint), never `AUTH_FAILED`.
    fn legacy_refused_with_403(&mut self) -> GatewayError {
        self.note_refusal("HTTP 403 on the handshake", HTTP_403_MAY_MEAN);
        GatewayError::new(ErrorCode::ThothBusy)
    }

    /// Thoth closed with 1013 (busy).
    fn legacy_closed_with_1013(&mut self) {
        let what = if self.protocol.pending_join.is_some() {
            "close 1013 right after the handshake"
        } else {
            "close 1013 while streaming"
        };
        self.note_refusal(what, CLOSE_1013_MEANS);
    }

    fn note_refusal(&mut self, what: &str, may_mean: &'static str) {
        log::warn!(
            "thoth {}: refused: {what}; this may mean {may_mean}",
            self.display_url
        );
        self.protocol.last_refusal = Some(Refusal {
            what: what.to_owned(),
            at: Utc::now(),
            may_mean,
        });
    }

    /// `{"transcription":"…"}` → a final result for the endpoint's session.
    fn on_legacy_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        let Some(transcription) = thoth_legacy::parse_transcription(text) else {
            log::warn!(
                "thoth {}: skipping a frame that is not a transcription",
                self.display_url
            );
            return;
        };
        // A legacy endpoint carries at most one session.
        if let Some(session_id) = self.sessions.keys().next().copied() {
            let event = UpstreamEvent::Transcript {
                text: transcription,
                is_final: true,
                start: None,
                end: None,
            };
            self.notify(session_id, event, ctx);
        }
    }
}
