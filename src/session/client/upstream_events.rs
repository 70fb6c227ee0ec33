//! What the upstream tells a [`ClientActor`] (`ToClient`): `ready`, results,
//! notices, failure and `done`, written to the browser as chronus events.

use std::time::Instant;

use actix::prelude::*;
use actix_web_actors::ws;

use super::{ClientActor, Phase, MAX_TRANSCRIPT_BYTES};
use crate::error::GatewayError;
use crate::metrics;
use crate::session::core::BrowserSession;
use crate::upstream::{ToClient, UpstreamEvent};
use crate::wire::browser::{now_rfc3339, ServerEvent};

impl ClientActor {
    /// Streaming starts once both the upstream said `Ready` and the link to
    /// it is known: the upstream may announce `Ready` before the subscribe
    /// call returns the link, and audio must not race past either.
    pub(super) fn on_ready(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if self.phase != Phase::Connecting
            || !self.upstream_ready
            || self.upstream.is_none()
            || self.socket.is_closed()
        {
            return;
        }
        self.phase = Phase::Streaming;
        log::info!("{}: upstream ready", self.socket.log_name);
        let ready = ServerEvent::Ready {
            session_id: &self.socket.id_text,
            provider: self.session.provider,
        }
        .to_json();
        self.send_text(ready, ctx);
        let now = Instant::now();
        for audio in std::mem::take(&mut self.pending) {
            // Held on purpose until `ready`: latency counts from here.
            self.forward(audio, now, ctx);
        }
        self.pending_bytes = 0;
        if self.end_requested {
            self.send_end();
        }
    }

    fn on_transcript(
        &mut self,
        text: String,
        is_final: bool,
        start: Option<f64>,
        end: Option<f64>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let event = if is_final {
            if !text.is_empty() && self.transcript.len() + text.len() < MAX_TRANSCRIPT_BYTES {
                if !self.transcript.is_empty() {
                    self.transcript.push(' ');
                }
                self.transcript.push_str(&text);
            }
            ServerEvent::Transcription {
                data: &text,
                text: &text,
                timestamp: now_rfc3339(),
                start,
                end,
            }
        } else {
            ServerEvent::Partial {
                data: &text,
                text: &text,
                timestamp: now_rfc3339(),
            }
        };
        let json = event.to_json();
        self.send_text(json, ctx);
    }

    /// The session cannot go on upstream: it ends here too, even for codes
    /// that leave a session open when the browser causes them (e.g. thoth
    /// refusing the audio).
    pub(super) fn on_failed(&mut self, error: GatewayError, ctx: &mut ws::WebsocketContext<Self>) {
        let close = error.code.close_code().unwrap_or(1011);
        let description = error.code.as_str();
        self.report(error.clone(), ctx);
        if !self.socket.is_closed() {
            self.close(close, description, ctx);
        }
    }

    fn on_done(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let done = ServerEvent::Done {
            data: &self.transcript,
            text: &self.transcript,
            timestamp: now_rfc3339(),
        }
        .to_json();
        self.send_text(done, ctx);
        // The upstream already forgot the session.
        self.upstream = None;
        log::info!("{}: done", self.socket.log_name);
        self.close(1000, "done", ctx);
    }
}

impl Handler<ToClient> for ClientActor {
    type Result = ();

    fn handle(&mut self, ToClient { event, sent }: ToClient, ctx: &mut Self::Context) {
        self.events.handled_one();
        if self.socket.is_closed() {
            return;
        }
        match event {
            UpstreamEvent::Ready => {
                self.upstream_ready = true;
                self.on_ready(ctx);
            }
            UpstreamEvent::Transcript {
                text,
                is_final,
                start,
                end,
            } => self.on_transcript(text, is_final, start, end, ctx),
            UpstreamEvent::Done => self.on_done(ctx),
            UpstreamEvent::Notice(notice) => {
                let status = ServerEvent::Status {
                    code: notice.code.as_str(),
                    message: &notice.message,
                    session_id: &self.socket.id_text,
                    timestamp: now_rfc3339(),
                }
                .to_json();
                self.send_text(status, ctx);
            }
            UpstreamEvent::Failed(error) => {
                // The upstream already dropped the session.
                self.upstream = None;
                self.on_failed(error, ctx);
            }
            UpstreamEvent::DoneWithTranscript(whole) => {
                // The upstream knows the whole text (Mistral's done.text).
                self.transcript = whole;
                self.on_done(ctx)
            }
        }
        metrics::LATENCY_DOWNSTREAM.observe(sent.elapsed().as_secs_f64());
    }
}
