//! MistralUpstreamActor: one per Mistral session (PROTOCOL.md 4), holding a
//! socket of its own to Mistral's realtime endpoint, authenticated with the
//! user's own API key.
//!
//! A session goes: connect (`Authorization: Bearer <key>`, retried like
//! thoth on network errors) → wait for `session.created` → send
//! `session.update` with the browser's audio format → tell the ClientActor
//! [`UpstreamEvent::Ready`] → relay audio as `input_audio.append` → on `end`,
//! `input_audio.flush` + `input_audio.end` → Mistral's last segments and
//! `transcription.done` → the last text no segment delivered, then
//! [`UpstreamEvent::DoneWithTranscript`]; the socket closes with 1000 and the
//! actor stops. No text is lost on the way (`mistral_transcript.rs`).
//!
//! **Pauses.** Mistral ends a session that gets no audio for about 30 s
//! (error 3804). The browser still holds its session, so that is no error:
//! the actor delivers what was pending, drops the socket, and opens a fresh
//! Mistral session when the next audio arrives (held, bounded, until it is
//! ready), its timestamps continuing after the audio already sent.
//!
//! **Partials.** Mistral's `transcription.text.delta` carries only the *new*
//! piece of text. The browser gets, as `transcription.partial`, the text of
//! the current segment so far (every delta since the last
//! `transcription.segment`, concatenated and trimmed): the same "whole
//! current hypothesis" meaning thoth's interim results have, so a frontend can
//! replace its interim line instead of appending to it.
//!
//! The key lives in a [`SecretString`] (wiped on drop, never logged) for as
//! long as the session does, since a pause may need a fresh Mistral session.

use std::time::{Duration, Instant};

use actix::prelude::*;
use awc::http::header::{HeaderValue, AUTHORIZATION};
use awc::ws::{CloseCode, CloseReason, Frame, Message as WsMessage};
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use std::collections::VecDeque;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::connect::{self, ConnectFailure, WsFramed, WsTarget};
use super::mistral_sessions::MistralSessionGuard;
use super::writer::{SendFailure, SocketWriter, WriterPolicy};
use super::mistral_transcript::{FinalText, Transcript};
pub use super::mistral_wire::{
    append_frames, loggable_message, mistral_error, session_update, MistralErrorBody, MistralEvent,
    INPUT_AUDIO_END, INPUT_AUDIO_FLUSH, MAX_APPEND_BYTES,
};
use super::{ClientHandle, EndSession, SessionAudio, Subscribe, Unsubscribe, UpstreamEvent};
use crate::audio::AudioFormat;
use crate::config::{Config, ConfigError};
use crate::crypto::SecretString;
use crate::error::{ErrorCode, GatewayError};
use crate::keys::{ApiKeyStore, KeyStoreError, Provider};
use crate::metrics;

/// How long Mistral may take to send `session.created` once the socket is open.
pub const SESSION_CREATED_TIMEOUT: Duration = Duration::from_secs(10);
/// The gateway pings Mistral this often…
pub const PING_INTERVAL: Duration = Duration::from_secs(15);
/// …and gives the socket up when nothing at all was heard for this long.
pub const UPSTREAM_SILENCE_TIMEOUT: Duration = Duration::from_secs(40);
/// Largest frame accepted from Mistral.
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;
/// Audio held while a fresh Mistral session opens after a pause, in seconds.
pub const MAX_HELD_AUDIO_SECS: f64 = 10.0;
/// A clean close from Mistral counts as "Mistral closed an idle session"
/// (a pause, not an error) when no audio was sent to it for this long.
pub const IDLE_BEFORE_CLOSE_IS_PAUSE: Duration = Duration::from_secs(5);

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
        crate::redact::redact(&self.url)
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
    let error = match failure {
        ConnectFailure::Refused(_) => GatewayError::with_message(
            ErrorCode::AuthFailed,
            "Mistral refused your API key: check the Mistral API key in your settings",
        ),
        _ => GatewayError::new(ErrorCode::MistralUnavailable),
    };
    error.because(failure.to_string())
}

/// A frame read from the Mistral socket (the native proxy's stream).
pub struct FromMistral(pub Result<Frame, actix_http::ws::ProtocolError>);

impl Message for FromMistral {
    type Result = ();
}

/// The writer gave Mistral up (a write failed, or Mistral is not reading).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WriterFailed {
    pub reason: String,
}

impl SendFailure {
    /// What the session hears when its Mistral socket cannot take a frame.
    pub fn session_error(self) -> GatewayError {
        match self {
            SendFailure::Stalled => GatewayError::with_message(
                ErrorCode::MistralUnavailable,
                "Mistral is not keeping up with the audio",
            ),
            SendFailure::Closed => GatewayError::new(ErrorCode::MistralUnavailable),
        }
    }
}

/// A frame of Mistral socket number `socket` (`None`: the socket ended).
/// The number tells a dropped socket's stragglers from the current one's.
#[derive(Message)]
#[rtype(result = "()")]
struct FromMistralSocket {
    socket: u32,
    frame: Option<Result<Frame, actix_http::ws::ProtocolError>>,
}

/// The writer of Mistral socket number `socket` failed.
#[derive(Message)]
#[rtype(result = "()")]
struct SocketWriterFailed {
    socket: u32,
    reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Opening the socket.
    Connecting,
    /// Socket open; waiting for `session.created`.
    AwaitingSession,
    /// `session.update` sent, `Ready` told: audio flows.
    Streaming,
    /// Mistral ended an idle session; a fresh one opens on the next audio.
    Paused,
    /// `input_audio.end` sent; waiting for `transcription.done`.
    Ending,
    /// The session is over; the actor is stopping.
    Finished,
}

/// One chronus session's upstream: its own socket(s) to Mistral, its one client.
pub struct MistralUpstreamActor {
    session_id: Uuid,
    user: String,
    client: ClientHandle,
    format: AudioFormat,
    endpoint: MistralEndpoint,
    /// Kept for the fresh Mistral session a pause may need.
    key: SecretString,
    phase: Phase,
    /// Numbers the Mistral sockets of this session (one per Mistral session).
    socket: u32,
    writer: Option<SocketWriter>,
    /// `Ready` was told (once per chronus session, not per Mistral session).
    ready_told: bool,
    /// The browser sent `end` while a Mistral session was opening.
    end_requested: bool,
    /// Audio waiting for a fresh Mistral session, and its size.
    held: VecDeque<Bytes>,
    held_bytes: usize,
    /// Audio bytes sent to the current Mistral session.
    sent_bytes: usize,
    last_audio_sent: Instant,
    transcript: Transcript,
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
            key,
            phase: Phase::Connecting,
            socket: 0,
            writer: None,
            ready_told: false,
            end_requested: false,
            held: VecDeque::new(),
            held_bytes: 0,
            sent_bytes: 0,
            last_audio_sent: Instant::now(),
            transcript: Transcript::default(),
            last_heard: Instant::now(),
            _counted: counted,
        }
    }

    /// Opens a Mistral session (the first one, or a fresh one after a pause).
    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.phase = Phase::Connecting;
        self.socket += 1;
        let socket = self.socket;
        let endpoint = self.endpoint.clone();
        let key = self.key.clone();
        let session = self.session_id.to_string();
        log::info!(
            "mistral {}: session {} of user {}: connecting (Mistral session {socket})",
            self.endpoint.display_url(),
            self.session_id,
            self.user
        );
        let attempt = async move { open_mistral_socket(&endpoint, key, &session).await };
        ctx.spawn(
            attempt
                .into_actor(self)
                .map(move |result, act, ctx| match result {
                    _ if act.socket != socket || act.phase != Phase::Connecting => {
                        // Unsubscribed meanwhile; dropping the socket closes it.
                    }
                    Ok(framed) => act.on_connected(framed, ctx),
                    Err(failure) => {
                        log::warn!(
                            "mistral {}: session {}: giving up: {failure}",
                            act.endpoint.display_url(),
                            act.session_id
                        );
                        act.fail(connect_failure_error(&failure), ctx);
                    }
                }),
        );
    }

    fn on_connected(&mut self, framed: WsFramed, ctx: &mut Context<Self>) {
        let socket = self.socket;
        let (sink, source) = framed.split();
        let actor = ctx.address();
        self.writer = Some(SocketWriter::spawn(
            sink,
            WriterPolicy::MISTRAL,
            move |reason| actor.do_send(SocketWriterFailed { socket, reason }),
        ));
        let frames = source
            .map(move |frame| FromMistralSocket {
                socket,
                frame: Some(frame),
            })
            .chain(stream::once(async move {
                FromMistralSocket {
                    socket,
                    frame: None,
                }
            }));
        ctx.add_message_stream(frames);
        self.phase = Phase::AwaitingSession;
        self.last_heard = Instant::now();
        ctx.run_later(SESSION_CREATED_TIMEOUT, move |act, ctx| {
            if act.socket == socket && act.phase == Phase::AwaitingSession {
                log::warn!(
                    "mistral: session {}: no session.created within {:?}",
                    act.session_id,
                    SESSION_CREATED_TIMEOUT
                );
                act.fail(GatewayError::new(ErrorCode::MistralUnavailable), ctx);
            }
        });
    }

    /// `session.created`: announce the format, then audio may flow.
    fn on_session_created(&mut self, ctx: &mut Context<Self>) {
        self.send(session_update(self.format), ctx);
        if self.phase != Phase::AwaitingSession {
            return;
        }
        self.phase = Phase::Streaming;
        self.sent_bytes = 0;
        log::info!(
            "mistral: session {}: ready (Mistral session {})",
            self.session_id,
            self.socket
        );
        if !self.ready_told {
            self.ready_told = true;
            self.notify(UpstreamEvent::Ready, ctx);
        }
        self.held_bytes = 0;
        for audio in std::mem::take(&mut self.held) {
            if self.phase != Phase::Streaming {
                return;
            }
            self.send_audio(&audio, ctx);
        }
        if self.end_requested && self.phase == Phase::Streaming {
            self.send_end(ctx);
        }
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

    fn send_audio(&mut self, audio: &[u8], ctx: &mut Context<Self>) {
        for frame in append_frames(audio, self.format.encoding.bytes_per_sample()) {
            self.send(frame, ctx);
            if self.phase != Phase::Streaming {
                return;
            }
        }
        self.sent_bytes += audio.len();
        self.last_audio_sent = Instant::now();
    }

    /// Holds audio until a fresh Mistral session is ready (bounded).
    fn hold(&mut self, audio: Bytes, ctx: &mut Context<Self>) {
        let limit = (self.format.bytes_per_second() * MAX_HELD_AUDIO_SECS) as usize;
        if self.held_bytes + audio.len() > limit {
            return self.fail(
                GatewayError::with_message(
                    ErrorCode::RateLimited,
                    "Too much audio arrived before the transcription service was ready",
                ),
                ctx,
            );
        }
        self.held_bytes += audio.len();
        self.held.push_back(audio);
    }

    fn send_end(&mut self, ctx: &mut Context<Self>) {
        self.phase = Phase::Ending;
        self.send(INPUT_AUDIO_FLUSH.to_owned(), ctx);
        self.send(INPUT_AUDIO_END.to_owned(), ctx);
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
    fn on_done(&mut self, done_text: Option<&str>, ctx: &mut Context<Self>) {
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

    /// Closes the current socket; its late frames are ignored from now on.
    fn drop_socket(&mut self) {
        self.socket += 1;
        if let Some(writer) = self.writer.take() {
            writer.close(CloseReason::from(CloseCode::Normal));
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
        self.drop_socket();
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

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        if !self.client.connected() {
            // The ClientActor is gone without unsubscribing (e.g. its arbiter stopped).
            self.finish(None, ctx);
            return;
        }
        let Some(writer) = &self.writer else {
            return;
        };
        if self.last_heard.elapsed() > UPSTREAM_SILENCE_TIMEOUT {
            log::warn!(
                "mistral: session {}: nothing heard from Mistral for {:?}",
                self.session_id,
                UPSTREAM_SILENCE_TIMEOUT
            );
            self.fail(GatewayError::new(ErrorCode::MistralUnavailable), ctx);
            return;
        }
        let _ = writer.send(WsMessage::Ping(Bytes::new()));
    }
}

impl Actor for MistralUpstreamActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(PING_INTERVAL, |act, ctx| act.heartbeat(ctx));
        self.connect(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.drop_socket();
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
        match self.phase {
            Phase::Streaming => self.send_audio(&msg.audio, ctx),
            Phase::Connecting | Phase::AwaitingSession => self.hold(msg.audio, ctx),
            Phase::Paused => {
                self.hold(msg.audio, ctx);
                if self.phase == Phase::Paused {
                    self.connect(ctx);
                }
            }
            // The ClientActor sends no audio after `end`.
            Phase::Ending | Phase::Finished => log::debug!(
                "mistral: session {}: audio after end ignored",
                self.session_id
            ),
        }
    }
}

impl Handler<EndSession> for MistralUpstreamActor {
    type Result = ();

    fn handle(&mut self, _: EndSession, ctx: &mut Context<Self>) {
        match self.phase {
            Phase::Streaming => self.send_end(ctx),
            // Nothing was said since the pause: the session is complete.
            Phase::Paused => self.on_done(None, ctx),
            Phase::Connecting | Phase::AwaitingSession => self.end_requested = true,
            Phase::Ending | Phase::Finished => {}
        }
    }
}

impl Handler<Unsubscribe> for MistralUpstreamActor {
    type Result = ();

    fn handle(&mut self, _: Unsubscribe, ctx: &mut Context<Self>) {
        log::info!("mistral: session {}: client left, closing", self.session_id);
        self.finish(None, ctx);
    }
}

impl Handler<SocketWriterFailed> for MistralUpstreamActor {
    type Result = ();

    fn handle(&mut self, msg: SocketWriterFailed, ctx: &mut Context<Self>) {
        if msg.socket != self.socket {
            return;
        }
        log::warn!(
            "mistral: session {}: {}",
            self.session_id,
            msg.reason
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
