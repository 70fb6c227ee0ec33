//! Legacy mode (PROTOCOL.md 3.2): today's thoth `/stream-audio`. One stream
//! at a time, binary float32 LE 16 kHz mono frames only, a
//! `{"transcription":"…"}` per complete window, no end-of-audio message; the
//! buffer resets when the connection closes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::{Actor, ActorContext, AsyncContext, Handler, StreamHandler};
use actix_web_actors::ws;
use serde_json::json;

use super::frames::{self, DataMessage};
use super::{describe_audio, ConnectionControl, DevThothStats, DropAbruptly, Encoding, Shared};

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
            self.send_error(ctx, "audio must be a whole number of float32 samples");
            return;
        };
        self.pending.extend(samples);
        while self.pending.len() >= self.window_samples {
            let window: Vec<f32> = self.pending.drain(..self.window_samples).collect();
            let text = describe_audio(self.next_window, &window);
            self.next_window += 1;
            ctx.text(json!({ "transcription": text }).to_string());
            DevThothStats::add(&stats.finals_sent, 1);
        }
    }

    fn send_error(&self, ctx: &mut ws::WebsocketContext<Self>, message: &str) {
        ctx.text(json!({ "error": message }).to_string());
        DevThothStats::add(&self.shared.stats.errors_sent, 1);
    }
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
                // Today's thoth: a text frame is an error, and otherwise ignored.
                self.send_error(
                    ctx,
                    "text frames are not supported; send binary float32 audio",
                );
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
