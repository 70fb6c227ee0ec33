//! Mux v1 (PROTOCOL.md 3.1), thoth's side: one socket carries many sessions.
//!
//! - `session.start` opens a session (`encoding` `f32le`|`s16le`,
//!   `sample_rate` 8000..=48000, `offset_ms`).
//! - A binary frame is the session's 16-byte uuid (RFC 4122 byte order) then
//!   audio. Each completed second (`sample_rate` samples) becomes a final
//!   `transcription` with `start`/`end` in seconds of the session's audio
//!   including `offset_ms / 1000`, and the text
//!   [`describe_audio`](super::describe_audio)`(floor(start), second)`. When the frame leaves a
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
use super::mux_session::{FinalResult, MuxSession};
use super::{
    close_code, ConnectionControl, DevThothStats, DropAbruptly, Encoding, SendSocketError, Shared,
    MUX_SAMPLE_RATES,
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
