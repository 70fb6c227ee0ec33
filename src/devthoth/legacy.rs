//! Legacy mode (PROTOCOL.md 3.2): today's thoth `/stream-audio`
//! (`REAL-PEERS.md` 3). One stream per process; every refusal (busy,
//! `Origin`, token) is an HTTP 403 before the upgrade; binary float32 LE
//! 16 kHz mono frames only (anything else: close 1000, no message); a
//! `{"transcription":"…"}` per complete window unless the window is silent
//! or its text too short; no end-of-audio message; the buffer resets when
//! the connection closes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::{Actor, ActorContext, AsyncContext, Handler, StreamHandler};
use actix_web::{HttpRequest, HttpResponse};
use actix_web_actors::ws::{self, CloseCode, CloseReason};
use serde_json::json;

use super::frames::{self, DataMessage};
use super::{
    close_code, describe_audio, ConnectionControl, DevThothStats, DropAbruptly, Encoding, Shared,
    LEGACY_MIN_TEXT_CHARS, LEGACY_SILENCE_RMS,
};

/// Why today's thoth refuses a handshake. Each one reaches the client as the
/// same HTTP 403; the reason is only logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// An `Origin` not in the allowed list (a browser).
    Origin,
    /// `x-thoth-token` missing or wrong.
    Token,
    /// The one stream is already being served.
    Busy,
}

impl Refusal {
    fn describe(self) -> &'static str {
        match self {
            Refusal::Origin => "origin not allowed",
            Refusal::Token => "missing or wrong x-thoth-token",
            Refusal::Busy => "a stream is already being served",
        }
    }
}

/// The refusal today's thoth makes before looking at its stream, in its
/// order: `Origin` first, then the token.
pub(super) fn handshake_refusal(req: &HttpRequest, shared: &Shared) -> Option<Refusal> {
    if shared.origin_refused(req) {
        return Some(Refusal::Origin);
    }
    if !shared.token_accepted(req) {
        return Some(Refusal::Token);
    }
    None
}

/// The HTTP 403 uvicorn answers when thoth closes before accepting.
pub(super) fn refuse(shared: &Shared, refusal: Refusal) -> HttpResponse {
    DevThothStats::add(&shared.stats.connections_refused, 1);
    log::info!(
        "dev thoth: refusing a legacy handshake with HTTP 403 ({})",
        refusal.describe()
    );
    HttpResponse::Forbidden().finish()
}

/// What thoth answers for one complete window: nothing for silence (RMS
/// below [`LEGACY_SILENCE_RMS`]) or for a text shorter than
/// [`LEGACY_MIN_TEXT_CHARS`], else the window's description.
pub(super) fn window_answer(index: u64, window: &[f32]) -> Option<String> {
    if rms(window) < LEGACY_SILENCE_RMS {
        return None;
    }
    keep_text(describe_audio(index, window))
}

/// Thoth's filter on a transcription: too short a text is noise.
fn keep_text(text: String) -> Option<String> {
    (text.trim().chars().count() >= LEGACY_MIN_TEXT_CHARS).then_some(text)
}

fn rms(samples: &[f32]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / samples.len() as f64).sqrt()
}

/// The right to serve the one legacy stream; released when dropped (also when
/// the handshake fails before the socket actor ever starts).
pub(super) struct LegacySlot {
    shared: Arc<Shared>,
}

impl LegacySlot {
    /// Takes the slot, or `None` when a legacy stream is already served.
    pub(super) fn claim(shared: &Arc<Shared>) -> Option<LegacySlot> {
        shared
            .legacy_stream_busy
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .ok()
            .map(|_| LegacySlot {
                shared: Arc::clone(shared),
            })
    }
}

impl Drop for LegacySlot {
    fn drop(&mut self) {
        self.shared
            .legacy_stream_busy
            .store(false, Ordering::SeqCst);
    }
}

/// One legacy stream.
pub(super) struct LegacySocket {
    shared: Arc<Shared>,
    connection_id: Option<u64>,
    window_samples: usize,
    pending: Vec<f32>,
    next_window: u64,
    /// Held for the socket's life; dropping it frees the stream.
    _slot: LegacySlot,
}

impl LegacySocket {
    pub(super) fn new(shared: Arc<Shared>, slot: LegacySlot) -> Self {
        LegacySocket {
            window_samples: shared.opts.legacy_window_samples(),
            shared,
            connection_id: None,
            pending: Vec::new(),
            next_window: 0,
            _slot: slot,
        }
    }

    fn on_audio(&mut self, bytes: &[u8], ctx: &mut ws::WebsocketContext<Self>) {
        let stats = &self.shared.stats;
        DevThothStats::add(&stats.audio_bytes_received, bytes.len() as u64);
        let Some(samples) = Encoding::F32le.decode(bytes) else {
            log::info!("dev thoth: a partial float32 sample; closing the stream");
            return close_for_bad_input(ctx);
        };
        self.pending.extend(samples);
        while self.pending.len() >= self.window_samples {
            let window: Vec<f32> = self.pending.drain(..self.window_samples).collect();
            let answer = window_answer(self.next_window, &window);
            self.next_window += 1;
            if let Some(text) = answer {
                ctx.text(json!({ "transcription": text }).to_string());
                DevThothStats::add(&stats.finals_sent, 1);
            }
        }
    }
}

/// Today's thoth raises on input it cannot read and closes with 1000,
/// sending no message.
fn close_for_bad_input(ctx: &mut ws::WebsocketContext<LegacySocket>) {
    ctx.close(Some(CloseReason {
        code: CloseCode::from(close_code::LEGACY_BAD_INPUT),
        description: None,
    }));
    ctx.stop();
}

impl Actor for LegacySocket {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.shared.connection_opened();
        DevThothStats::add(&self.shared.stats.legacy_streams, 1);
        self.connection_id = Some(self.shared.register(ConnectionControl {
            drop_abruptly: ctx.address().recipient(),
            socket_error: None,
        }));
        log::info!("dev thoth: legacy stream started");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        if let Some(id) = self.connection_id.take() {
            self.shared.unregister(id);
        }
        self.shared.connection_closed();
        log::info!(
            "dev thoth: legacy stream ended after {} windows",
            self.next_window
        );
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for LegacySocket {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        match frames::receive(msg, ctx) {
            Some(DataMessage::Binary(bytes)) => self.on_audio(&bytes, ctx),
            Some(DataMessage::Text(_)) => {
                log::info!("dev thoth: a text frame on a legacy stream; closing it");
                close_for_bad_input(ctx);
            }
            None => {}
        }
    }
}

impl Handler<DropAbruptly> for LegacySocket {
    type Result = ();

    fn handle(&mut self, _msg: DropAbruptly, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_below_the_silence_gate_gets_no_answer() {
        assert_eq!(window_answer(0, &[0.0099; 480]), None);
        assert_eq!(window_answer(0, &[]), None);
        let loud = [0.0101f32; 480];
        assert_eq!(window_answer(4, &loud), Some(describe_audio(4, &loud)));
    }

    #[test]
    fn texts_under_three_characters_are_dropped() {
        assert_eq!(keep_text("ok".into()), None);
        assert_eq!(keep_text("  ab \n".into()), None);
        assert_eq!(keep_text("éé".into()), None, "characters, not bytes");
        assert_eq!(keep_text("yes".into()), Some("yes".into()));
    }
}
