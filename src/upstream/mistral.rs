//! MistralUpstreamActor: one per Mistral session (PROTOCOL.md 4), holding a
//! socket of its own to Mistral's realtime endpoint, authenticated with the
//! user's own API key.
//!
//! A session goes: connect (`Authorization: Bearer <key>`, retried like
//! thoth on network errors) → wait for `session.created` → send
//! `session.update` with the browser's audio format → tell the ClientActor
//! [`UpstreamEvent::Ready`] → relay audio as `input_audio.append` → on `end`,
//! `input_audio.flush` + `input_audio.end` → Mistral's last segments and
//! `transcription.done` → [`UpstreamEvent::Done`]; the socket closes with
//! 1000 and the actor stops.
//!
//! **Partials.** Mistral's `transcription.text.delta` carries only the *new*
//! piece of text. The browser gets, as `transcription.partial`, the text of
//! the current segment so far (every delta since the last
//! `transcription.segment`, concatenated and trimmed): the same "whole
//! current hypothesis" meaning thoth's interim results have, so a frontend can
//! replace its interim line instead of appending to it.
//!
//! The key lives in a [`SecretString`] only until the handshake is done (the
//! connection attempt owns it and drops it), and is never logged.

use std::time::{Duration, Instant};

use actix::prelude::*;
use awc::http::header::{HeaderValue, AUTHORIZATION};
use awc::ws::{CloseCode, CloseReason, Frame, Message as WsMessage};
use base64::Engine;
use futures_util::StreamExt;
use serde::Deserialize;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::connect::{self, ConnectFailure, WsFramed, WsTarget};
use super::mistral_sessions::MistralSessionGuard;
use super::socket::{SendFailure, SocketWriter};
use super::{ClientHandle, EndSession, SessionAudio, Subscribe, Unsubscribe, UpstreamEvent};
use crate::audio::{AudioFormat, Encoding};
use crate::config::{Config, ConfigError};
use crate::crypto::SecretString;
use crate::error::{ErrorCode, GatewayError};
use crate::keys::{ApiKeyStore, KeyStoreError, Provider};
use crate::metrics;

/// Largest audio payload of one `input_audio.append`, in decoded bytes
/// (Mistral's limit). Bigger chunks are split on sample boundaries.
pub const MAX_APPEND_BYTES: usize = 262_144;
/// How long Mistral may take to send `session.created` once the socket is open.
pub const SESSION_CREATED_TIMEOUT: Duration = Duration::from_secs(10);
/// The gateway pings Mistral this often…
pub const PING_INTERVAL: Duration = Duration::from_secs(15);
/// …and gives the socket up when nothing at all was heard for this long.
pub const UPSTREAM_SILENCE_TIMEOUT: Duration = Duration::from_secs(40);
/// Bytes queued toward one Mistral socket before it counts as stalled (about
/// 20 s of 48 kHz f32 audio once base64-encoded).
pub const MAX_OUTBOUND_QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// Largest frame accepted from Mistral.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Where Mistral is and how to reach it; one per gateway.
#[derive(Clone)]
pub struct MistralEndpoint {
    /// `MISTRAL_WS_URL`.
    pub url: String,
    /// System roots (Mistral has a public certificate).
    pub tls: std::sync::Arc<rustls::ClientConfig>,
    /// First retry delay; doubles per attempt (shared with thoth's setting).
    pub retry_base: Duration,
}

impl MistralEndpoint {
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        Ok(MistralEndpoint {
            url: config.mistral_ws_url.clone(),
            tls: connect::tls_config(None)?,
            retry_base: config.thoth_retry_base,
        })
    }

    /// The same endpoint asking for `model` (replacing the URL's own `model`).
    pub fn with_model(&self, model: &str) -> MistralEndpoint {
        let mut chosen = self.clone();
        if let Ok(mut url) = url::Url::parse(&self.url) {
            let others: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(name, _)| name != "model")
                .map(|(n, v)| (n.into_owned(), v.into_owned()))
                .collect();
            url.query_pairs_mut()
                .clear()
                .extend_pairs(others)
                .append_pair("model", model);
            chosen.url = url.to_string();
        }
        chosen
    }

    /// The URL as logs show it.
    pub fn display_url(&self) -> String {
        crate::redact::strip_credentials(&self.url)
    }
}

/// The user's Mistral key, or the error the browser gets instead:
/// `NO_API_KEY` when none is stored (or it can no longer be decrypted),
/// `MISTRAL_UNAVAILABLE` when the key store is down.
pub async fn user_key(keys: &ApiKeyStore, user: &str) -> Result<SecretString, GatewayError> {
    match keys.get(user, Provider::Mistral).await {
        Ok(Some(key)) => Ok(key),
        Ok(None) => {
            log::info!("mistral session refused for user {user}: no API key stored");
            Err(GatewayError::new(ErrorCode::NoApiKey))
        }
        Err(KeyStoreError::Corrupt) => Err(GatewayError::with_message(
            ErrorCode::NoApiKey,
            "Your stored Mistral API key can no longer be read; enter it again in your settings",
        )),
        Err(err) => {
            log::warn!("mistral session refused for user {user}: {err}");
            Err(GatewayError::new(ErrorCode::MistralUnavailable))
        }
    }
}

/// Opens a socket to Mistral with `Authorization: Bearer <key>`, retrying
/// network failures. The key is dropped (and wiped) when this returns.
pub async fn open_mistral_socket(
    endpoint: &MistralEndpoint,
    key: SecretString,
    session: &str,
) -> Result<WsFramed, ConnectFailure> {
    let bearer = Zeroizing::new(format!("Bearer {}", key.expose()));
    drop(key);
    // Stored keys are printable ASCII (checked when stored): always a valid header.
    let mut authorization = HeaderValue::from_str(&bearer)
        .map_err(|_| ConnectFailure::Rejected("the stored key is not a valid header".into()))?;
    drop(bearer);
    // Sensitive: never shown by the HTTP client's Debug output.
    authorization.set_sensitive(true);
    let target = WsTarget {
        url: endpoint.url.clone(),
        subprotocol: None,
        headers: vec![(AUTHORIZATION, authorization)],
        max_frame_bytes: MAX_EVENT_BYTES,
        tls: endpoint.tls.clone(),
    };
    let url = endpoint.display_url();
    let connected = connect::open_with_retries(&target, endpoint.retry_base, |attempt, failure| {
        log::warn!(
            "mistral {url}: session {session}: connection attempt {} failed: {failure}",
            attempt + 1
        );
    })
    .await?;
    Ok(connected.framed)
}

/// What the browser sees when connecting to Mistral failed.
pub fn connect_failure_error(failure: &ConnectFailure) -> GatewayError {
    match failure {
        ConnectFailure::Refused(_) => GatewayError::with_message(
            ErrorCode::AuthFailed,
            "Mistral refused your API key: check the Mistral API key in your settings",
        ),
        _ => GatewayError::new(ErrorCode::MistralUnavailable),
    }
}

/// `session.update` announcing the session's audio format.
pub fn session_update(format: AudioFormat) -> String {
    let encoding = match format.encoding {
        Encoding::F32le => "pcm_f32le",
        Encoding::S16le => "pcm_s16le",
    };
    serde_json::json!({
        "type": "session.update",
        "session": {"audio_format": {"encoding": encoding, "sample_rate": format.sample_rate}},
    })
    .to_string()
}

/// `input_audio.append` frames for `audio`, each carrying at most
/// [`MAX_APPEND_BYTES`] and a whole number of `bytes_per_sample` samples.
pub fn append_frames(audio: &[u8], bytes_per_sample: usize) -> Vec<String> {
    let bytes_per_sample = bytes_per_sample.max(1);
    let chunk = MAX_APPEND_BYTES - MAX_APPEND_BYTES % bytes_per_sample;
    audio
        .chunks(chunk)
        .map(|piece| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(piece);
            // Base64 needs no JSON escaping.
            format!(r#"{{"type":"input_audio.append","audio":"{encoded}"}}"#)
        })
        .collect()
}

/// `input_audio.flush`: transcribe everything sent so far.
pub const INPUT_AUDIO_FLUSH: &str = r#"{"type":"input_audio.flush"}"#;
/// `input_audio.end`: no more audio; Mistral answers with `transcription.done`.
pub const INPUT_AUDIO_END: &str = r#"{"type":"input_audio.end"}"#;

/// The Mistral events the gateway reads (PROTOCOL.md 4); other fields and
/// unknown types are ignored.
#[derive(Debug, PartialEq, Deserialize)]
#[serde(tag = "type")]
pub enum MistralEvent {
    #[serde(rename = "session.created")]
    SessionCreated,
    #[serde(rename = "session.updated")]
    SessionUpdated,
    #[serde(rename = "transcription.language")]
    Language,
    #[serde(rename = "transcription.text.delta")]
    TextDelta { text: String },
    #[serde(rename = "transcription.segment")]
    Segment {
        text: String,
        start: Option<f64>,
        end: Option<f64>,
    },
    #[serde(rename = "transcription.done")]
    Done,
    #[serde(rename = "error")]
    Error {
        #[serde(default)]
        error: MistralErrorBody,
    },
    #[serde(other)]
    Unknown,
}

/// `{"message", "code"}` of a Mistral `error` event.
#[derive(Debug, Default, PartialEq, Deserialize)]
pub struct MistralErrorBody {
    /// A string or an object; logged, never shown to the browser.
    #[serde(default)]
    pub message: serde_json::Value,
    /// Numeric; kept as the envelope's `upstreamCode`.
    #[serde(default)]
    pub code: serde_json::Value,
}

impl MistralEvent {
    pub fn parse(text: &str) -> Option<MistralEvent> {
        serde_json::from_str(text).ok()
    }
}

/// The browser-facing error for a Mistral `error` event: Mistral's text may
/// name internals, so the browser gets a message of ours and the code.
pub fn mistral_error(body: &MistralErrorBody) -> GatewayError {
    let error = GatewayError::new(ErrorCode::MistralError);
    match &body.code {
        serde_json::Value::Null => error,
        code => error.with_upstream_code(code.clone()),
    }
}

/// Mistral's message, shortened, for the gateway's own log.
fn loggable_message(message: &serde_json::Value) -> String {
    let text = match message {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text.chars().take(200).collect()
}

/// A frame read from the Mistral socket.
pub struct FromMistral(pub Result<Frame, actix_http::ws::ProtocolError>);

impl Message for FromMistral {
    type Result = ();
}

/// The writer task could not write to the socket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WriterFailed {
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Opening the socket.
    Connecting,
    /// Socket open; waiting for `session.created`.
    AwaitingSession,
    /// `session.update` sent, `Ready` told: audio flows.
    Streaming,
    /// `input_audio.end` sent; waiting for `transcription.done`.
    Ending,
    /// The session is over; the actor is stopping.
    Finished,
}

/// One Mistral session's upstream: its own socket, its one client.
pub struct MistralUpstreamActor {
    session_id: Uuid,
    user: String,
    client: ClientHandle,
    format: AudioFormat,
    endpoint: MistralEndpoint,
    /// Until the connection attempt takes it.
    key: Option<SecretString>,
    phase: Phase,
    writer: Option<SocketWriter>,
    /// Deltas since the last segment (the partial shown to the browser).
    segment_text: String,
    last_heard: Instant,
    /// Keeps the session in the per-user monitoring counts while it lives.
    _counted: MistralSessionGuard,
}

impl MistralUpstreamActor {
    /// A session for `subscribe`'s client; started with `.start()` on the
    /// current arbiter (the ClientActor's), one actor per session.
    pub fn new(
        subscribe: Subscribe,
        user: String,
        endpoint: MistralEndpoint,
        key: SecretString,
        counted: MistralSessionGuard,
    ) -> Self {
        MistralUpstreamActor {
            session_id: subscribe.session_id,
            user,
            client: subscribe.client,
            format: subscribe.format,
            endpoint,
            key: Some(key),
            phase: Phase::Connecting,
            writer: None,
            segment_text: String::new(),
            last_heard: Instant::now(),
            _counted: counted,
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        let Some(key) = self.key.take() else {
            return;
        };
        let endpoint = self.endpoint.clone();
        let session = self.session_id.to_string();
        log::info!(
            "mistral {}: session {} of user {}: connecting",
            self.endpoint.display_url(),
            self.session_id,
            self.user
        );
        let attempt = async move { open_mistral_socket(&endpoint, key, &session).await };
        ctx.spawn(
            attempt
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(framed) => act.on_connected(framed, ctx),
                    Err(failure) => {
                        log::warn!(
                            "mistral {}: session {}: giving up: {failure}",
                            act.endpoint.display_url(),
                            act.session_id
                        );
                        act.finish(
                            Some(UpstreamEvent::Failed(connect_failure_error(&failure))),
                            ctx,
                        );
                    }
                }),
        );
    }

    fn on_connected(&mut self, framed: WsFramed, ctx: &mut Context<Self>) {
        if self.phase != Phase::Connecting {
            return; // unsubscribed meanwhile; dropping `framed` closes it
        }
        let (sink, source) = framed.split();
        let actor = ctx.address();
        self.writer = Some(SocketWriter::spawn(
            sink,
            MAX_OUTBOUND_QUEUE_BYTES,
            move |reason| actor.do_send(WriterFailed { reason }),
        ));
        ctx.add_stream(source.map(FromMistral));
        self.phase = Phase::AwaitingSession;
        self.last_heard = Instant::now();
        ctx.run_later(SESSION_CREATED_TIMEOUT, |act, ctx| {
            if act.phase == Phase::AwaitingSession {
                log::warn!(
                    "mistral: session {}: no session.created within {:?}",
                    act.session_id,
                    SESSION_CREATED_TIMEOUT
                );
                act.fail(GatewayError::new(ErrorCode::MistralUnavailable), ctx);
            }
        });
    }

    /// Queues a text frame toward Mistral; a stalled or dead socket ends the
    /// session.
    fn send(&mut self, text: String, ctx: &mut Context<Self>) {
        let Some(writer) = &self.writer else {
            return;
        };
        metrics::GATEWAY_TO_UPSTREAM.record(text.len());
        if let Err(failure) = writer.send(WsMessage::Text(text.into())) {
            if failure == SendFailure::Stalled {
                log::warn!(
                    "mistral: session {}: Mistral is not reading (outbound queue full)",
                    self.session_id
                );
            }
            self.fail(failure.session_error(), ctx);
        }
    }

    /// Delivers an event; a client whose browser stopped reading (its event
    /// backlog is full) ends the session instead of growing the queue.
    fn notify(&mut self, event: UpstreamEvent, ctx: &mut Context<Self>) {
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

    fn fail(&mut self, error: GatewayError, ctx: &mut Context<Self>) {
        self.finish(Some(UpstreamEvent::Failed(error)), ctx);
    }

    /// Ends the session: tells the client (unless it left), closes the socket
    /// with 1000, stops the actor. Idempotent.
    fn finish(&mut self, event: Option<UpstreamEvent>, ctx: &mut Context<Self>) {
        if self.phase == Phase::Finished {
            return;
        }
        self.phase = Phase::Finished;
        if let Some(event) = event {
            self.client.cut_off(event);
        }
        if let Some(writer) = self.writer.take() {
            writer.close(CloseReason::from(CloseCode::Normal));
        }
        ctx.stop();
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
                self.send(session_update(self.format), ctx);
                if self.phase == Phase::AwaitingSession {
                    self.phase = Phase::Streaming;
                    log::info!("mistral: session {}: ready", self.session_id);
                    self.notify(UpstreamEvent::Ready, ctx);
                }
            }
            MistralEvent::SessionCreated
            | MistralEvent::SessionUpdated
            | MistralEvent::Language => {}
            MistralEvent::TextDelta { text } => {
                self.segment_text.push_str(&text);
                let partial = self.segment_text.trim();
                if !partial.is_empty() {
                    let event = UpstreamEvent::Transcript {
                        text: partial.to_owned(),
                        is_final: false,
                        start: None,
                        end: None,
                    };
                    self.notify(event, ctx);
                }
            }
            MistralEvent::Segment { text, start, end } => {
                self.segment_text.clear();
                let text = text.trim();
                if !text.is_empty() {
                    let event = UpstreamEvent::Transcript {
                        text: text.to_owned(),
                        is_final: true,
                        start,
                        end,
                    };
                    self.notify(event, ctx);
                }
            }
            MistralEvent::Done => {
                log::info!("mistral: session {}: done", self.session_id);
                self.finish(Some(UpstreamEvent::Done), ctx);
            }
            MistralEvent::Error { error } => {
                log::warn!(
                    "mistral: session {}: error event (code {}): {}",
                    self.session_id,
                    error.code,
                    loggable_message(&error.message)
                );
                self.fail(mistral_error(&error), ctx);
            }
            MistralEvent::Unknown => log::debug!(
                "mistral: session {}: skipping an event of unknown type",
                self.session_id
            ),
        }
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if !self.client.connected() {
            // The ClientActor is gone without unsubscribing (e.g. its arbiter stopped).
            self.finish(None, ctx);
            return;
        }
        if self.writer.is_none() {
            return;
        }
        if self.last_heard.elapsed() > UPSTREAM_SILENCE_TIMEOUT {
            log::warn!(
                "mistral: session {}: nothing heard from Mistral for {:?}",
                self.session_id,
                UPSTREAM_SILENCE_TIMEOUT
            );
            self.fail(GatewayError::new(ErrorCode::MistralUnavailable), ctx);
            return;
        }
        if let Some(writer) = &self.writer {
            let _ = writer.send(WsMessage::Ping(bytes::Bytes::new()));
        }
    }
}

impl Actor for MistralUpstreamActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(PING_INTERVAL, |act, ctx| act.heartbeat(ctx));
        self.connect(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(writer) = self.writer.take() {
            writer.close(CloseReason::from(CloseCode::Normal));
        }
        log::info!(
            "mistral: session {} of user {}: upstream closed",
            self.session_id,
            self.user
        );
    }
}

impl Handler<SessionAudio> for MistralUpstreamActor {
    type Result = ();

    fn handle(&mut self, msg: SessionAudio, ctx: &mut Context<Self>) {
        if self.phase != Phase::Streaming {
            // The ClientActor sends audio only after Ready and before end.
            log::debug!(
                "mistral: session {}: audio outside streaming ignored",
                self.session_id
            );
            return;
        }
        for frame in append_frames(&msg.audio, self.format.encoding.bytes_per_sample()) {
            self.send(frame, ctx);
            if self.phase != Phase::Streaming {
                return;
            }
        }
    }
}

impl Handler<EndSession> for MistralUpstreamActor {
    type Result = ();

    fn handle(&mut self, _: EndSession, ctx: &mut Context<Self>) {
        if self.phase != Phase::Streaming {
            return;
        }
        self.phase = Phase::Ending;
        self.send(INPUT_AUDIO_FLUSH.to_owned(), ctx);
        self.send(INPUT_AUDIO_END.to_owned(), ctx);
    }
}

impl Handler<Unsubscribe> for MistralUpstreamActor {
    type Result = ();

    fn handle(&mut self, _: Unsubscribe, ctx: &mut Context<Self>) {
        log::info!("mistral: session {}: client left, closing", self.session_id);
        self.finish(None, ctx);
    }
}

impl Handler<WriterFailed> for MistralUpstreamActor {
    type Result = ();

    fn handle(&mut self, msg: WriterFailed, ctx: &mut Context<Self>) {
        log::warn!(
            "mistral: session {}: write failed: {}",
            self.session_id,
            msg.reason
        );
        self.fail(GatewayError::new(ErrorCode::MistralUnavailable), ctx);
    }
}

impl StreamHandler<FromMistral> for MistralUpstreamActor {
    fn handle(&mut self, FromMistral(frame): FromMistral, ctx: &mut Context<Self>) {
        if self.phase == Phase::Finished {
            return;
        }
        self.last_heard = Instant::now();
        match frame {
            Ok(Frame::Text(text)) => {
                metrics::UPSTREAM_TO_GATEWAY.record(text.len());
                match std::str::from_utf8(&text) {
                    Ok(text) => self.on_text(text, ctx),
                    Err(_) => log::warn!(
                        "mistral: session {}: skipping a non-UTF-8 frame",
                        self.session_id
                    ),
                }
            }
            Ok(Frame::Ping(payload)) => {
                if let Some(writer) = &self.writer {
                    let _ = writer.send(WsMessage::Pong(payload));
                }
            }
            Ok(Frame::Pong(_)) => {}
            Ok(Frame::Binary(_)) | Ok(Frame::Continuation(_)) => log::debug!(
                "mistral: session {}: skipping a binary frame",
                self.session_id
            ),
            Ok(Frame::Close(reason)) => {
                log::warn!(
                    "mistral: session {}: Mistral closed the socket ({}) before transcription.done",
                    self.session_id,
                    reason.map_or("no code".into(), |r| u16::from(r.code).to_string())
                );
                self.fail(GatewayError::new(ErrorCode::MistralUnavailable), ctx);
            }
            Err(e) => {
                log::warn!("mistral: session {}: protocol error: {e}", self.session_id);
                self.fail(GatewayError::new(ErrorCode::MistralUnavailable), ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        if self.phase != Phase::Finished {
            log::warn!(
                "mistral: session {}: socket ended without a close frame",
                self.session_id
            );
            self.fail(GatewayError::new(ErrorCode::MistralUnavailable), ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(frame: &str) -> Vec<u8> {
        let v: serde_json::Value = serde_json::from_str(frame).unwrap();
        assert_eq!(v["type"], "input_audio.append");
        base64::engine::general_purpose::STANDARD
            .decode(v["audio"].as_str().unwrap())
            .unwrap()
    }

    #[test]
    fn big_chunks_are_split_at_the_append_limit_on_sample_boundaries() {
        let audio: Vec<u8> = (0..600_000u32).map(|i| i as u8).collect();
        let frames = append_frames(&audio, 4);
        let sizes: Vec<usize> = frames.iter().map(|f| decoded(f).len()).collect();
        assert_eq!(sizes, vec![262_144, 262_144, 75_712]);
        let joined: Vec<u8> = frames.iter().flat_map(|f| decoded(f)).collect();
        assert_eq!(joined, audio);
        // A sample size that does not divide the limit still gets whole samples.
        let frames = append_frames(&vec![0u8; 600_000], 3);
        assert!(frames.iter().all(|f| decoded(f).len().is_multiple_of(3)));
        assert_eq!(decoded(&frames[0]).len(), 262_143);
    }

    #[test]
    fn small_chunks_are_one_append() {
        let frames = append_frames(&[1, 2, 3, 4], 2);
        assert_eq!(
            frames,
            vec![r#"{"type":"input_audio.append","audio":"AQIDBA=="}"#]
        );
    }

    #[test]
    fn session_update_names_the_pcm_encoding_and_rate() {
        let update: serde_json::Value = serde_json::from_str(&session_update(AudioFormat {
            encoding: Encoding::S16le,
            sample_rate: 24_000,
        }))
        .unwrap();
        assert_eq!(
            update,
            serde_json::json!({"type": "session.update", "session": {"audio_format": {"encoding": "pcm_s16le", "sample_rate": 24000}}})
        );
    }

    #[test]
    fn events_parse_with_extra_fields_and_unknown_types() {
        assert_eq!(
            MistralEvent::parse(r#"{"type":"session.created","session":{"id":"x"}}"#),
            Some(MistralEvent::SessionCreated)
        );
        assert_eq!(
            MistralEvent::parse(r#"{"type":"transcription.text.delta","text":" hi"}"#),
            Some(MistralEvent::TextDelta { text: " hi".into() })
        );
        assert_eq!(
            MistralEvent::parse(
                r#"{"type":"transcription.segment","text":"hi","start":0.5,"end":1.0,"speaker_id":null}"#
            ),
            Some(MistralEvent::Segment {
                text: "hi".into(),
                start: Some(0.5),
                end: Some(1.0)
            })
        );
        assert_eq!(
            MistralEvent::parse(r#"{"type":"transcription.done","text":"a b","usage":{}}"#),
            Some(MistralEvent::Done)
        );
        assert_eq!(
            MistralEvent::parse(r#"{"type":"something.new","x":1}"#),
            Some(MistralEvent::Unknown)
        );
        assert_eq!(MistralEvent::parse("not json"), None);
    }

    #[test]
    fn an_error_event_keeps_the_code_but_not_the_message() {
        let Some(MistralEvent::Error { error }) = MistralEvent::parse(
            r#"{"type":"error","error":{"message":"db-7.internal exploded","code":3001}}"#,
        ) else {
            panic!("not an error event");
        };
        let gateway_error = mistral_error(&error);
        assert_eq!(gateway_error.code, ErrorCode::MistralError);
        assert_eq!(gateway_error.upstream_code, Some(3001.into()));
        assert!(!gateway_error.message.contains("internal"));
        let Some(MistralEvent::Error { error }) = MistralEvent::parse(r#"{"type":"error"}"#) else {
            panic!("not an error event");
        };
        assert_eq!(mistral_error(&error).upstream_code, None);
    }
}
