//! Mux v1 (PROTOCOL.md 3.1), thoth's side: one socket carries many sessions.
//!
//! - `session.start` opens a session (`encoding` `f32le`|`s16le`,
//!   `sample_rate` 8000..=48000, `offset_ms`).
//! - A binary frame is the session's 16-byte uuid (RFC 4122 byte order) then
//!   audio. Each completed second (`sample_rate` samples) becomes a final
//!   `transcription` with `start`/`end` in seconds of the session's audio
//!   including `offset_ms / 1000`, and the text
//!   [`describe_audio`]`(floor(start), second)`. When the frame leaves a
//!   partial second pending, an interim `listening {pending_secs:.2}s`
//!   follows the frame's finals (if interim results are on).
//! - `session.end` emits the pending partial second (if any) as a final, then
//!   `session.done`; `session.cancel` discards silently.
//! - Errors name their session and end it. An error no session can be blamed
//!   for (unparsable JSON, no `type` or `session_id`, a binary frame shorter
//!   than a uuid) is sent without `session_id`, which the protocol defines as
//!   "thoth is about to close the socket": the socket is then closed with
//!   1008.

use std::collections::HashMap;
use std::sync::Arc;

use actix::{Actor, ActorContext, AsyncContext, Handler, StreamHandler};
use actix_web_actors::ws::{self, CloseCode};
use serde_json::{json, Value};
use uuid::Uuid;

use super::frames::{self, DataMessage};
use super::{
    close_code, describe_audio, ConnectionControl, DevThothStats, DropAbruptly, Encoding,
    SendSocketError, Shared, MUX_SAMPLE_RATES,
};

/// Error codes thoth sends in `{"type":"error","code":…}`.
pub mod error_code {
    /// Audio, `session.end` or a per-session message for a session that is
    /// not open.
    pub const UNKNOWN_SESSION: &str = "UNKNOWN_SESSION";
    /// `session.start` for a session that is already open (which ends it).
    pub const DUPLICATE_SESSION: &str = "DUPLICATE_SESSION";
    /// Unknown `encoding`, `sample_rate` out of range, or audio that is not a
    /// whole number of samples.
    pub const UNSUPPORTED_AUDIO: &str = "UNSUPPORTED_AUDIO";
    /// Unparsable JSON, unknown `type`, missing or mistyped fields.
    pub const BAD_MESSAGE: &str = "BAD_MESSAGE";
}

/// Bytes of the session id at the start of every binary frame.
const SESSION_ID_BYTES: usize = 16;

/// One open session's audio bookkeeping.
struct MuxSession {
    encoding: Encoding,
    sample_rate: u32,
    offset_ms: u64,
    /// Samples already covered by final results.
    finalized_samples: u64,
    /// Samples of the second in progress.
    pending: Vec<f32>,
}

/// A final result, before it is put on the wire.
struct FinalResult {
    start: f64,
    end: f64,
    text: String,
}

impl MuxSession {
    /// Seconds of the session's audio (offset included) at sample `sample`.
    fn seconds_at(&self, sample: u64) -> f64 {
        self.offset_ms as f64 / 1000.0 + sample as f64 / f64::from(self.sample_rate)
    }

    /// `floor(seconds_at(sample))`, in exact integer arithmetic.
    fn whole_seconds_at(&self, sample: u64) -> u64 {
        let rate = u128::from(self.sample_rate);
        let numerator = u128::from(self.offset_ms) * rate + u128::from(sample) * 1000;
        // Fits: offset_ms and sample counts are far below 2^64 / 1000.
        u64::try_from(numerator / (1000 * rate)).unwrap_or(u64::MAX)
    }

    /// Turns `samples` (the next audio after `finalized_samples`) into a final.
    fn finalize(&mut self, samples: &[f32]) -> FinalResult {
        let first = self.finalized_samples;
        self.finalized_samples += samples.len() as u64;
        FinalResult {
            start: self.seconds_at(first),
            end: self.seconds_at(self.finalized_samples),
            text: describe_audio(self.whole_seconds_at(first), samples),
        }
    }

    /// Finals for every whole second pending.
    fn take_whole_seconds(&mut self) -> Vec<FinalResult> {
        let per_second = self.sample_rate as usize;
        let mut finals = Vec::new();
        while self.pending.len() >= per_second {
            let second: Vec<f32> = self.pending.drain(..per_second).collect();
            finals.push(self.finalize(&second));
        }
        finals
    }

    /// The final for the partial second still pending, if any (`session.end`).
    fn take_rest(&mut self) -> Option<FinalResult> {
        if self.pending.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.pending);
        Some(self.finalize(&rest))
    }

    /// The whole current hypothesis while a second is in progress.
    fn interim_text(&self) -> String {
        format!(
            "listening {:.2}s",
            self.pending.len() as f64 / f64::from(self.sample_rate)
        )
    }
}

/// Whom an error is about.
enum Blame<'a> {
    /// A session (as the client named it, even if it is not a valid uuid).
    Session(&'a str),
    /// Nobody: the socket is closed after the error.
    Socket,
}

/// One mux socket and its sessions.
pub(super) struct MuxSocket {
    shared: Arc<Shared>,
    connection_id: Option<u64>,
    sessions: HashMap<Uuid, MuxSession>,
}

type Ctx = ws::WebsocketContext<MuxSocket>;

impl MuxSocket {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        MuxSocket {
            shared,
            connection_id: None,
            sessions: HashMap::new(),
        }
    }

    fn stats(&self) -> &DevThothStats {
        &self.shared.stats
    }

    fn on_text(&mut self, text: &str, ctx: &mut Ctx) {
        let frame: Value = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(err) => {
                let message = format!("not JSON: {err}");
                return self.send_error(ctx, Blame::Socket, error_code::BAD_MESSAGE, &message);
            }
        };
        let named = frame.get("session_id").and_then(Value::as_str);
        let blame = named.map_or(Blame::Socket, Blame::Session);
        let Some(kind) = frame.get("type").and_then(Value::as_str) else {
            return self.send_error(ctx, blame, error_code::BAD_MESSAGE, "missing \"type\"");
        };
        if !matches!(kind, "session.start" | "session.end" | "session.cancel") {
            let message = format!("unknown type {kind:?}");
            return self.send_error(ctx, blame, error_code::BAD_MESSAGE, &message);
        }
        let Some(named) = named else {
            let message = format!("{kind}: missing \"session_id\"");
            return self.send_error(ctx, Blame::Socket, error_code::BAD_MESSAGE, &message);
        };
        let Ok(session_id) = Uuid::parse_str(named) else {
            let message = "session_id is not a UUID";
            return self.send_error(ctx, blame, error_code::BAD_MESSAGE, message);
        };
        match kind {
            "session.start" => self.on_session_start(session_id, &frame, ctx),
            "session.end" => self.on_session_end(session_id, ctx),
            _ => self.on_session_cancel(session_id),
        }
    }

    fn on_session_start(&mut self, session_id: Uuid, frame: &Value, ctx: &mut Ctx) {
        let id = session_id.to_string();
        let blame = Blame::Session(&id);
        if self.sessions.contains_key(&session_id) {
            return self.send_error(
                ctx,
                blame,
                error_code::DUPLICATE_SESSION,
                "session already started",
            );
        }
        let Some(encoding) = frame.get("encoding").and_then(Value::as_str) else {
            return self.send_error(ctx, blame, error_code::BAD_MESSAGE, "missing \"encoding\"");
        };
        let Some(sample_rate) = frame.get("sample_rate").and_then(Value::as_u64) else {
            let message = "missing or non-integer \"sample_rate\"";
            return self.send_error(ctx, blame, error_code::BAD_MESSAGE, message);
        };
        let Some(offset_ms) = frame.get("offset_ms").and_then(Value::as_u64) else {
            let message = "missing or negative \"offset_ms\"";
            return self.send_error(ctx, blame, error_code::BAD_MESSAGE, message);
        };
        let Some(encoding) = Encoding::parse(encoding) else {
            let message = format!("unsupported encoding {encoding:?} (f32le or s16le)");
            return self.send_error(ctx, blame, error_code::UNSUPPORTED_AUDIO, &message);
        };
        if !MUX_SAMPLE_RATES.contains(&sample_rate) {
            let message = format!("unsupported sample_rate {sample_rate}");
            return self.send_error(ctx, blame, error_code::UNSUPPORTED_AUDIO, &message);
        }
        // The range check above makes this conversion lossless.
        let sample_rate = sample_rate as u32;
        self.sessions.insert(
            session_id,
            MuxSession {
                encoding,
                sample_rate,
                offset_ms,
                finalized_samples: 0,
                pending: Vec::new(),
            },
        );
        DevThothStats::add(&self.stats().mux_sessions_started, 1);
        log::debug!("dev thoth: session {id} started ({encoding:?}, {sample_rate} Hz, offset {offset_ms} ms)");
    }

    fn on_audio(&mut self, frame: &[u8], ctx: &mut Ctx) {
        if frame.len() < SESSION_ID_BYTES {
            let message = "binary frame shorter than a session id";
            return self.send_error(ctx, Blame::Socket, error_code::BAD_MESSAGE, message);
        }
        let (id_bytes, audio) = frame.split_at(SESSION_ID_BYTES);
        let session_id = Uuid::from_slice(id_bytes).expect("split_at gave exactly 16 bytes");
        let id = session_id.to_string();
        DevThothStats::add(&self.stats().audio_bytes_received, audio.len() as u64);
        let Some(session) = self.sessions.get_mut(&session_id) else {
            let message = "audio for a session that is not open";
            return self.send_error(
                ctx,
                Blame::Session(&id),
                error_code::UNKNOWN_SESSION,
                message,
            );
        };
        let Some(samples) = session.encoding.decode(audio) else {
            let message = format!(
                "{} bytes is not a whole number of {:?} samples",
                audio.len(),
                session.encoding
            );
            return self.send_error(
                ctx,
                Blame::Session(&id),
                error_code::UNSUPPORTED_AUDIO,
                &message,
            );
        };
        session.pending.extend(samples);
        let finals = session.take_whole_seconds();
        let interim = (self.shared.opts.interim_results && !session.pending.is_empty())
            .then(|| session.interim_text());
        for result in finals {
            self.send_final(ctx, &id, result);
        }
        if let Some(text) = interim {
            ctx.text(
                json!({
                    "type": "transcription",
                    "session_id": id,
                    "text": text,
                    "is_final": false,
                })
                .to_string(),
            );
            DevThothStats::add(&self.stats().interims_sent, 1);
        }
    }

    fn on_session_end(&mut self, session_id: Uuid, ctx: &mut Ctx) {
        let id = session_id.to_string();
        let Some(mut session) = self.sessions.remove(&session_id) else {
            let message = "session.end for a session that is not open";
            return self.send_error(
                ctx,
                Blame::Session(&id),
                error_code::UNKNOWN_SESSION,
                message,
            );
        };
        if let Some(result) = session.take_rest() {
            self.send_final(ctx, &id, result);
        }
        ctx.text(json!({ "type": "session.done", "session_id": id }).to_string());
        DevThothStats::add(&self.stats().sessions_done, 1);
        DevThothStats::add(&self.stats().sessions_ended, 1);
        log::debug!("dev thoth: session {id} done");
    }

    fn on_session_cancel(&mut self, session_id: Uuid) {
        // No answer either way: the client is gone.
        if self.sessions.remove(&session_id).is_some() {
            DevThothStats::add(&self.stats().sessions_cancelled, 1);
            DevThothStats::add(&self.stats().sessions_ended, 1);
            log::debug!("dev thoth: session {session_id} cancelled");
        }
    }

    fn send_final(&self, ctx: &mut Ctx, id: &str, result: FinalResult) {
        ctx.text(
            json!({
                "type": "transcription",
                "session_id": id,
                "text": result.text,
                "is_final": true,
                "start": result.start,
                "end": result.end,
            })
            .to_string(),
        );
        DevThothStats::add(&self.stats().finals_sent, 1);
    }

    /// Sends an error. A per-session error ends that session; a socket error
    /// closes the socket.
    fn send_error(&mut self, ctx: &mut Ctx, blame: Blame<'_>, code: &str, message: &str) {
        DevThothStats::add(&self.stats().errors_sent, 1);
        match blame {
            Blame::Session(id) => {
                log::debug!("dev thoth: session {id}: {code}: {message}");
                ctx.text(
                    json!({ "type": "error", "session_id": id, "code": code, "message": message })
                        .to_string(),
                );
                let open = Uuid::parse_str(id)
                    .ok()
                    .and_then(|u| self.sessions.remove(&u));
                if open.is_some() {
                    DevThothStats::add(&self.stats().sessions_ended, 1);
                }
            }
            Blame::Socket => {
                log::info!("dev thoth: closing a mux socket: {code}: {message}");
                ctx.text(json!({ "type": "error", "code": code, "message": message }).to_string());
                frames::close_and_stop(
                    ctx,
                    CloseCode::Other(close_code::POLICY_VIOLATION),
                    message,
                );
            }
        }
    }
}

impl Actor for MuxSocket {
    type Context = Ctx;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.shared.connection_opened();
        DevThothStats::add(&self.stats().mux_connections, 1);
        self.connection_id = Some(self.shared.register(ConnectionControl {
            drop_abruptly: ctx.address().recipient(),
            socket_error: Some(ctx.address().recipient()),
        }));
        log::info!("dev thoth: mux socket opened");
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        let open_sessions = self.sessions.len() as u64;
        DevThothStats::add(&self.stats().sessions_ended, open_sessions);
        if let Some(id) = self.connection_id.take() {
            self.shared.unregister(id);
        }
        self.shared.connection_closed();
        log::info!("dev thoth: mux socket closed with {open_sessions} sessions open");
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for MuxSocket {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        match frames::receive(msg, ctx) {
            Some(DataMessage::Text(text)) => self.on_text(&text, ctx),
            Some(DataMessage::Binary(bytes)) => self.on_audio(&bytes, ctx),
            None => {}
        }
    }
}

impl Handler<DropAbruptly> for MuxSocket {
    type Result = ();

    fn handle(&mut self, _msg: DropAbruptly, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<SendSocketError> for MuxSocket {
    type Result = ();

    fn handle(&mut self, msg: SendSocketError, ctx: &mut Self::Context) {
        DevThothStats::add(&self.stats().errors_sent, 1);
        let message = "dev thoth is closing this socket";
        ctx.text(json!({ "type": "error", "code": msg.code, "message": message }).to_string());
        frames::close_and_stop(ctx, CloseCode::Other(close_code::SOCKET_ERROR), message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(sample_rate: u32, offset_ms: u64) -> MuxSession {
        MuxSession {
            encoding: Encoding::F32le,
            sample_rate,
            offset_ms,
            finalized_samples: 0,
            pending: Vec::new(),
        }
    }

    #[test]
    fn finals_cover_whole_seconds_and_keep_the_rest_pending() {
        let mut s = session(8000, 0);
        s.pending = vec![0.5; 8000 * 2 + 100];
        let finals = s.take_whole_seconds();
        assert_eq!(finals.len(), 2);
        assert_eq!((finals[1].start, finals[1].end), (1.0, 2.0));
        assert_eq!(finals[1].text, describe_audio(1, &[0.5; 8000]));
        assert_eq!(s.pending.len(), 100);
        assert_eq!(s.interim_text(), "listening 0.01s");
        let rest = s.take_rest().expect("100 samples pending");
        assert_eq!((rest.start, rest.end), (2.0, 2.0125));
        assert!(s.take_rest().is_none());
    }

    #[test]
    fn offset_shifts_timestamps_and_the_index_is_floor_of_start() {
        let mut s = session(16000, 2500);
        s.pending = vec![0.0; 16000];
        let finals = s.take_whole_seconds();
        assert_eq!((finals[0].start, finals[0].end), (2.5, 3.5));
        assert!(finals[0].text.starts_with("second 2:"));
    }

    #[test]
    fn whole_seconds_are_exact_even_where_floats_are_not() {
        let s = session(48000, 2999);
        assert_eq!(s.whole_seconds_at(48), 3);
        assert_eq!(s.whole_seconds_at(47), 2);
    }
}
