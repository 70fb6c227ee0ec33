//! What a ThothUpstreamActor does only in `THOTH_PROTOCOL=legacy`
//! (PROTOCOL.md 3.2): today's thoth `/stream-audio`, one stream per process.
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

use super::super::monitor::Refusal;
use super::{Link, Phase, SessionSlot, StallWatch, ThothUpstreamActor};
use crate::error::{ErrorCode, GatewayError};
use crate::upstream::thoth::audio_route::AudioRoute;
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
pub(super) type JoinReply = Result<AudioRoute, GatewayError>;

/// A legacy `Join` waiting for its handshake to settle.
pub(super) struct PendingJoin {
    session_id: Uuid,
    route: AudioRoute,
    reply: oneshot::Sender<JoinReply>,
}

impl ThothUpstreamActor {
    /// A session joins a legacy endpoint: its socket is opened, and the
    /// answer waits until thoth has accepted it (or refused).
    pub(super) fn join_legacy(
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
        self.sessions.insert(
            msg.session_id,
            SessionSlot {
                client: msg.client,
                format: msg.format,
                phase: Phase::Waiting,
                route: route.clone(),
                resuming: false,
                stall: StallWatch::new(),
            },
        );
        if matches!(self.link, Link::Open(_)) {
            // The last session's socket, not closed yet: thoth's buffer
            // resets only when it closes, so a new session gets a new one.
            self.close_link(ctx, CloseCode::Normal);
        }
        let (reply, answer) = oneshot::channel();
        self.pending_join = Some(PendingJoin {
            session_id: msg.session_id,
            route,
            reply,
        });
        log::info!(
            "thoth {}: session {} opening a legacy stream",
            self.display_url,
            msg.session_id
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
    pub(super) fn legacy_socket_opened(&mut self, generation: u64, ctx: &mut Context<Self>) {
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
        let Some(pending) = self.pending_join.take() else {
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
    pub(super) fn refuse_pending_join(&mut self, error: &GatewayError) -> bool {
        let Some(pending) = self.pending_join.take() else {
            return false;
        };
        if let Some(slot) = self.sessions.remove(&pending.session_id) {
            slot.route.lock().close();
        }
        let _ = pending.reply.send(Err(error.clone()));
        true
    }

    /// Forgets the pending `Join` of a session that left.
    pub(super) fn drop_pending_join(&mut self, session_id: &Uuid) {
        if self
            .pending_join
            .as_ref()
            .is_some_and(|pending| pending.session_id == *session_id)
        {
            self.pending_join = None;
        }
    }

    /// Thoth answered the handshake with HTTP 403: a refusal (`THOTH_BUSY`,
    /// the pool tries the next endpoint), never `AUTH_FAILED`.
    pub(super) fn legacy_refused_with_403(&mut self) -> GatewayError {
        self.note_refusal("HTTP 403 on the handshake", HTTP_403_MAY_MEAN);
        GatewayError::new(ErrorCode::ThothBusy)
    }

    /// Thoth closed with 1013 (busy).
    pub(super) fn legacy_closed_with_1013(&mut self) {
        let what = if self.pending_join.is_some() {
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
        self.last_refusal = Some(Refusal {
            what: what.to_owned(),
            at: Utc::now(),
            may_mean,
        });
    }

    /// `{"transcription":"…"}` → a final result for the endpoint's session.
    pub(super) fn on_legacy_text(&mut self, text: &str, ctx: &mut Context<Self>) {
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
