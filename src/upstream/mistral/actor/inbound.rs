//! What Mistral sends one session: socket frames → Mistral events →
//! [`UpstreamEvent`]s for the ClientActor, and how a Mistral session ends
//! (done, idle pause, close).

use std::time::Instant;

use actix::prelude::*;
use awc::ws::{CloseReason, Frame, Message as WsMessage};

use super::{FromMistralSocket, MistralUpstreamActor, Phase, IDLE_BEFORE_CLOSE_IS_PAUSE};
use crate::error::{ErrorCode, GatewayError};
use crate::metrics;
use crate::upstream::mistral::transcript::FinalText;
use crate::upstream::UpstreamEvent;
use crate::wire::mistral::{loggable_message, mistral_error, MistralEvent};

impl MistralUpstreamActor {
    /// Delivers an event; a client whose browser stopped reading (its event
    /// backlog is full) ends the session instead of growing the queue.
    pub(super) fn notify(&mut self, event: UpstreamEvent, ctx: &mut Context<Self>) {
        if !self.client.deliver(event) {
            log::warn!(
                "mistral: session {}: client not reading; closing",
                self.session_id
            );
            self.fail(
                GatewayError::with_message(
                    ErrorCode::RateLimited,
                    "The browser is not reading transcription results; session closed",
                ),
                ctx,
            );
        }
    }

    fn deliver_final(&mut self, last: Option<FinalText>, ctx: &mut Context<Self>) {
        if let Some(FinalText { text, start, end }) = last {
            let event = UpstreamEvent::Transcript {
                text,
                is_final: true,
                start,
                end,
            };
            self.notify(event, ctx);
        }
    }

    /// The current Mistral session is over (`done`, or Mistral gave up on an
    /// idle one): the text no segment delivered goes out as a final.
    fn end_mistral_session(&mut self, done_text: Option<&str>, ctx: &mut Context<Self>) {
        let audio_secs = self.format.seconds(self.sent_bytes);
        self.sent_bytes = 0;
        let last = self.transcript.end_upstream(done_text, audio_secs);
        self.deliver_final(last, ctx);
    }

    /// `transcription.done`: the last text, then `done` with the whole text.
    pub(super) fn on_done(&mut self, done_text: Option<&str>, ctx: &mut Context<Self>) {
        log::info!("mistral: session {}: done", self.session_id);
        self.end_mistral_session(done_text, ctx);
        let whole = self.transcript.whole_text().to_owned();
        self.finish(Some(UpstreamEvent::DoneWithTranscript(whole)), ctx);
    }

    /// Mistral ended an idle session the browser still holds: deliver what
    /// was pending; a fresh Mistral session opens on the next audio.
    fn pause(&mut self, ctx: &mut Context<Self>) {
        log::info!(
            "mistral: session {}: Mistral ended its idle session {}; a fresh one opens on the next audio",
            self.session_id,
            self.socket
        );
        self.end_mistral_session(None, ctx);
        if self.phase == Phase::Finished {
            return;
        }
        self.drop_socket();
        self.phase = Phase::Paused;
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        let Some(event) = MistralEvent::parse(text) else {
            log::warn!(
                "mistral: session {}: skipping a malformed event",
                self.session_id
            );
            return;
        };
        match event {
            MistralEvent::SessionCreated if self.phase == Phase::AwaitingSession => {
                self.on_session_created(ctx)
            }
            MistralEvent::SessionCreated
            | MistralEvent::SessionUpdated
            | MistralEvent::Language => {}
            MistralEvent::TextDelta { text } => {
                if let Some(partial) = self.transcript.on_delta(&text) {
                    let event = UpstreamEvent::Transcript {
                        text: partial,
                        is_final: false,
                        start: None,
                        end: None,
                    };
                    self.notify(event, ctx);
                }
            }
            MistralEvent::Segment { text, start, end } => {
                let segment = self.transcript.on_segment(&text, start, end);
                self.deliver_final(segment, ctx);
            }
            MistralEvent::Done { text } => self.on_done(text.as_deref(), ctx),
            MistralEvent::Error { error } => {
                log::warn!(
                    "mistral: session {}: error event (code {}): {}",
                    self.session_id,
                    error.code,
                    loggable_message(&error.message)
                );
                match self.phase {
                    Phase::Streaming if error.is_idle_timeout() => self.pause(ctx),
                    // Timed out while finishing: what it gave is all there is.
                    Phase::Ending if error.is_idle_timeout() => self.on_done(None, ctx),
                    _ => self.fail(mistral_error(&error), ctx),
                }
            }
            MistralEvent::Unknown => log::debug!(
                "mistral: session {}: skipping an event of unknown type",
                self.session_id
            ),
        }
    }

    fn on_close(&mut self, reason: Option<CloseReason>, ctx: &mut Context<Self>) {
        let code = reason.map(|r| u16::from(r.code));
        let clean = matches!(code, Some(1000) | Some(1001));
        let idle = self.last_audio_sent.elapsed() >= IDLE_BEFORE_CLOSE_IS_PAUSE;
        if self.phase == Phase::Streaming && clean && idle {
            return self.pause(ctx);
        }
        log::warn!(
            "mistral: session {}: Mistral closed the socket ({}) before transcription.done",
            self.session_id,
            code.map_or("no code".into(), |c| c.to_string())
        );
        self.fail(GatewayError::new(ErrorCode::MistralUnavailable), ctx);
    }
}

impl Handler<FromMistralSocket> for MistralUpstreamActor {
    type Result = ();

    fn handle(&mut self, msg: FromMistralSocket, ctx: &mut Context<Self>) {
        if msg.socket != self.socket || self.phase == Phase::Finished {
            return; // a dropped socket's late frames
        }
        self.last_heard = Instant::now();
        match msg.frame {
            Some(Ok(Frame::Text(text))) => {
                metrics::UPSTREAM_TO_GATEWAY.record(text.len());
                match std::str::from_utf8(&text) {
                    Ok(text) => self.on_text(text, ctx),
                    Err(_) => log::warn!(
                        "mistral: session {}: skipping a non-UTF-8 frame",
                        self.session_id
                    ),
                }
            }
            Some(Ok(Frame::Ping(payload))) => {
                if let Some(writer) = &self.writer {
                    let _ = writer.send(WsMessage::Pong(payload));
                }
            }
            Some(Ok(Frame::Pong(_))) => {}
            Some(Ok(Frame::Binary(_))) | Some(Ok(Frame::Continuation(_))) => log::debug!(
                "mistral: session {}: skipping a binary frame",
                self.session_id
            ),
            Some(Ok(Frame::Close(reason))) => self.on_close(reason, ctx),
            Some(Err(e)) => {
                log::warn!("mistral: session {}: protocol error: {e}", self.session_id);
                self.fail(GatewayError::new(ErrorCode::MistralUnavailable), ctx);
            }
            None => {
                log::warn!(
                    "mistral: session {}: socket ended without a close frame",
                    self.session_id
                );
                self.fail(GatewayError::new(ErrorCode::MistralUnavailable), ctx);
            }
        }
    }
}
