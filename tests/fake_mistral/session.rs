//! One fake Mistral realtime session: the WebSocket actor behind a connection
//! the fake accepted. It speaks Mistral's events with every field the
//! official SDKs require (REAL-PEERS.md 4) and records what it sent.

use std::sync::Arc;

use actix::{Actor, ActorContext, AsyncContext, SpawnHandle, StreamHandler};
use actix_web_actors::ws;
use base64::Engine;
use serde_json::{json, Value};

use super::session_state::{AppliedSession, UpdateRefused};
use super::transcript::{segment_deltas, segment_text, SentSegment};
use super::{
    Shared, Upstreamed, IDLE_TIMEOUT_CODE, IDLE_TIMEOUT_MESSAGE, INTERNAL_ERROR_MESSAGE,
    INVALID_REQUEST_CODE, SESSION_LOCKED_CODE, SESSION_LOCKED_MESSAGE,
};

pub(super) struct FakeSession {
    id: usize,
    shared: Arc<Shared>,
    session: AppliedSession,
    /// Audio bytes not yet covered by an utterance.
    pending: usize,
    /// Audio bytes covered by utterances so far.
    covered: usize,
    /// Every utterance's byte count, in order (`done.text`).
    utterances: Vec<usize>,
    segments: Vec<SentSegment>,
    heard_audio: bool,
    /// The pending "no audio" timer of the idle-timeout mode.
    idle_timer: Option<SpawnHandle>,
    finished: bool,
}

impl FakeSession {
    pub(super) fn new(id: usize, shared: Arc<Shared>, model: String) -> Self {
        FakeSession {
            id,
            session: AppliedSession::new(format!("fake-request-{id}"), model),
            shared,
            pending: 0,
            covered: 0,
            utterances: Vec::new(),
            segments: Vec::new(),
            heard_audio: false,
            idle_timer: None,
            finished: false,
        }
    }

    fn send(&self, event: Value, ctx: &mut ws::WebsocketContext<Self>) {
        let text = event.to_string();
        self.shared
            .with_log(self.id, |log| log.sent.push(text.clone()));
        ctx.text(text);
    }

    fn send_error(&self, message: &str, code: u64, ctx: &mut ws::WebsocketContext<Self>) {
        self.send(
            json!({"type": "error", "error": {"message": message, "code": code}}),
            ctx,
        );
    }

    /// Ends the session from Mistral's side: a clean close, then the actor stops.
    fn end_session(&mut self, code: ws::CloseCode, ctx: &mut ws::WebsocketContext<Self>) {
        self.finished = true;
        ctx.close(Some(ws::CloseReason {
            code,
            description: None,
        }));
        ctx.stop();
    }

    fn utterance_bytes(&self) -> usize {
        let (bytes_per_sample, bytes_per_second) = self.session.audio_rates();
        let bytes = (self.shared.opts.segment_secs * bytes_per_second) as usize;
        (bytes - bytes % bytes_per_sample).max(bytes_per_sample)
    }

    /// Announces an utterance of `bytes` bytes: its deltas, then (if
    /// `as_segment`) its `transcription.segment`.
    fn emit_utterance(
        &mut self,
        bytes: usize,
        as_segment: bool,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let index = self.utterances.len();
        for delta in segment_deltas(index, bytes) {
            self.send(
                json!({"type": "transcription.text.delta", "text": delta}),
                ctx,
            );
        }
        let (_, bytes_per_second) = self.session.audio_rates();
        let start = self.covered as f64 / bytes_per_second;
        self.covered += bytes;
        self.utterances.push(bytes);
        if as_segment {
            let segment = SentSegment {
                text: segment_text(index, bytes),
                start,
                end: self.covered as f64 / bytes_per_second,
            };
            self.send(segment.event(), ctx);
            self.segments.push(segment);
        }
    }

    /// (Re)arms the idle-timeout mode's timer: no audio for that long is
    /// error 3804 and the end of the session, as Mistral does after ~30 s.
    fn arm_idle_timer(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(after) = self.shared.opts.idle_timeout else {
            return;
        };
        if let Some(timer) = self.idle_timer.take() {
            ctx.cancel_future(timer);
        }
        self.idle_timer = Some(ctx.run_later(after, |act, ctx| act.idle_timeout(ctx)));
    }

    fn idle_timeout(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        // What Mistral heard before the pause it has transcribed by now: as
        // deltas only, never a segment.
        if self.pending > 0 {
            let last = std::mem::take(&mut self.pending);
            self.emit_utterance(last, false, ctx);
        }
        self.shared.with_log(self.id, |log| log.timed_out = true);
        self.send_error(IDLE_TIMEOUT_MESSAGE, IDLE_TIMEOUT_CODE, ctx);
        self.end_session(ws::CloseCode::Normal, ctx);
    }

    /// `session.created`, and the idle timer starts.
    fn announce(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let created = json!({"type": "session.created", "session": self.session.to_json()});
        self.send(created, ctx);
        self.arm_idle_timer(ctx);
    }

    fn on_session_update(&mut self, event: &Value, ctx: &mut ws::WebsocketContext<Self>) {
        let next = match self.session.updated(&event["session"]) {
            Ok(next) => next,
            Err(UpdateRefused::Invalid(why)) => {
                return self.send_error(&why, INVALID_REQUEST_CODE, ctx);
            }
        };
        if self.heard_audio
            && self.shared.opts.reject_update_after_audio
            && next.differs_from(&self.session)
        {
            return self.send_error(SESSION_LOCKED_MESSAGE, SESSION_LOCKED_CODE, ctx);
        }
        self.session = next;
        self.send(
            json!({"type": "session.updated", "session": self.session.to_json()}),
            ctx,
        );
    }

    fn on_audio(&mut self, event: &Value, ctx: &mut ws::WebsocketContext<Self>) {
        if let Some(code) = self.shared.opts.error_code {
            self.send_error(INTERNAL_ERROR_MESSAGE, code, ctx);
            return self.end_session(ws::CloseCode::Error, ctx);
        }
        let Some(audio) = event["audio"]
            .as_str()
            .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
        else {
            return self.send_error("audio must be base64", INVALID_REQUEST_CODE, ctx);
        };
        if !self.heard_audio {
            self.heard_audio = true;
            self.send(
                json!({"type": "transcription.language", "audio_language": "en"}),
                ctx,
            );
        }
        self.arm_idle_timer(ctx);
        self.pending += audio.len();
        let utterance = self.utterance_bytes();
        let as_segment = self.shared.opts.mode.segments_full_utterances();
        while self.pending >= utterance {
            self.pending -= utterance;
            self.emit_utterance(utterance, as_segment, ctx);
        }
    }

    fn on_end(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if let Some(timer) = self.idle_timer.take() {
            ctx.cancel_future(timer);
        }
        let mode = self.shared.opts.mode;
        if self.pending > 0 {
            let last = std::mem::take(&mut self.pending);
            self.emit_utterance(last, mode.segments_the_last_utterance(), ctx);
        }
        let (_, bytes_per_second) = self.session.audio_rates();
        let audio_seconds = (self.covered as f64 / bytes_per_second).ceil() as u64;
        let words = self.utterances.len() * 4;
        let mut done = json!({
            "type": "transcription.done",
            "model": self.session.model(),
            "text": super::transcript::full_text(&self.utterances),
            "usage": {"prompt_audio_seconds": audio_seconds, "prompt_tokens": 0, "completion_tokens": words, "total_tokens": words},
            "language": self.session.language(),
        });
        if mode.done_lists_segments() {
            done["segments"] = self.segments.iter().map(SentSegment::chunk).collect();
        }
        self.send(done, ctx);
        self.finished = true;
    }

    fn on_event(&mut self, event: Value, ctx: &mut ws::WebsocketContext<Self>) {
        if self.finished {
            return; // after `done`, Mistral ignores the client
        }
        match event["type"].as_str() {
            Some("session.update") => self.on_session_update(&event, ctx),
            Some("input_audio.append") => self.on_audio(&event, ctx),
            Some("input_audio.end") => self.on_end(ctx),
            _ => {} // input_audio.flush and anything else: recorded only
        }
    }
}

impl Actor for FakeSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let delay = self.shared.opts.session_created_delay;
        if delay.is_zero() {
            // At once: frames the client sent with the handshake must find
            // the session created, as on Mistral.
            self.announce(ctx);
        } else {
            ctx.run_later(delay, |act, ctx| act.announce(ctx));
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.shared.with_log(self.id, |log| log.ended = true);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for FakeSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        match msg {
            Ok(ws::Message::Text(text)) => {
                self.shared.with_log(self.id, |log| {
                    log.received.push(Upstreamed::Text(text.to_string()))
                });
                match serde_json::from_str(&text) {
                    Ok(event) => self.on_event(event, ctx),
                    Err(_) => self.send_error("invalid JSON", INVALID_REQUEST_CODE, ctx),
                }
            }
            Ok(ws::Message::Binary(data)) => {
                self.shared.with_log(self.id, |log| {
                    log.received.push(Upstreamed::Binary(data.len()))
                });
            }
            Ok(ws::Message::Ping(payload)) => ctx.pong(&payload),
            Ok(ws::Message::Close(reason)) => {
                let code = reason.as_ref().map(|r| u16::from(r.code));
                self.shared
                    .with_log(self.id, |log| log.received.push(Upstreamed::Close(code)));
                ctx.close(reason);
                ctx.stop();
            }
            Ok(_) => {}
            Err(e) => {
                self.shared.with_log(self.id, |log| {
                    log.received.push(Upstreamed::ProtocolError(e.to_string()))
                });
                ctx.stop()
            }
        }
    }
}
