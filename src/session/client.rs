//! ClientActor: one per browser session. It validates the browser's frames,
//! holds audio until the upstream is ready, relays audio up and results down,
//! and guarantees that however the session ends its upstream slot is freed.

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws;
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use uuid::Uuid;

use crate::audio::{decode_base64_audio, s16le_to_f32le, AudioFormat};
use crate::auth::JwtValidator;
use crate::config::Config;
use crate::error::{ErrorCode, GatewayError};
use crate::metrics;
use crate::session::admission::validate_refresh;
use crate::session::fragments::{FrameFault, Reassembler};
use crate::session::limits::SessionPermit;
use crate::session::note_sessions::NoteSessionGuard;
use crate::session::outbound::OutboundQueue;
use crate::session::rate::AudioRateLimiter;
use crate::session::session_clock::SessionClock;
use crate::state::AppState;
use crate::upstream::audio_route::Routed;
use crate::upstream::{
    AudioSink, ClientHandle, EndSession, EventCounts, SessionAudio, Subscribe, ToClient,
    Unsubscribe, UpstreamEvent, UpstreamLink,
};
use crate::wire::browser::{now_rfc3339, ClientMessage, Provider, ServerEvent};

/// The gateway pings the browser this often…
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(20);
/// …and drops it when nothing at all was heard for this long (dead TCP).
const CLIENT_SILENCE_TIMEOUT: Duration = Duration::from_secs(60);
/// Audio held while the upstream is not ready yet, in seconds of audio.
pub const PRE_READY_BUFFER_SECS: f64 = 10.0;
/// The `done` text keeps at most this many bytes of final results.
const MAX_TRANSCRIPT_BYTES: usize = 1024 * 1024;

/// Opens the session's upstream: subscribes to the thoth pool or starts a
/// Mistral actor. Returns the link audio and `end` travel through.
pub type UpstreamConnector =
    Box<dyn FnOnce(Subscribe) -> LocalBoxFuture<'static, Result<UpstreamLink, GatewayError>>>;

/// What a ClientActor is created with.
pub struct ClientSession {
    pub session_id: Uuid,
    /// The note a notes-path session records into (PROTOCOL.md 2.7); listed
    /// in the pool JSON while the session lives.
    pub note: Option<NoteSessionGuard>,
    pub user: String,
    pub token_exp: u64,
    pub provider: Provider,
    /// The browser's audio format.
    pub format: AudioFormat,
    /// Whether the upstream needs f32le while the browser sends s16le.
    pub convert_to_f32: bool,
    pub state: Arc<AppState>,
    pub permit: SessionPermit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the upstream's `Ready`; audio is buffered.
    Connecting,
    /// Audio flows.
    Streaming,
    /// The browser sent `end`; waiting for the last results and `Done`.
    Ending,
    /// An error or `done` was sent; the socket is closing.
    Closed,
}

pub struct ClientActor {
    session: ClientSession,
    id_text: String,
    upstream: Option<UpstreamLink>,
    connector: Option<UpstreamConnector>,
    phase: Phase,
    pending: VecDeque<Bytes>,
    pending_bytes: usize,
    end_requested: bool,
    /// Final results so far, joined with single spaces, for `done`.
    transcript: String,
    rate: AudioRateLimiter,
    last_heard: Instant,
    last_audio: Instant,
    started: Instant,
    /// When the session must end: `MAX_SESSION_SECS`, and the token's `exp`
    /// under `SESSION_TOKEN_CHECK=continuous` (moves with a refresh).
    clock: SessionClock,
    /// When the browser is pinged next.
    next_ping: Instant,
    /// The one timer a session has: token expiry, idle timeout and
    /// heartbeat share it (each timer is polled on every wake-up of the
    /// session, and costs memory for every held session).
    tick: Option<SpawnHandle>,
    fragments: Reassembler,
    /// The upstream announced `Ready` (streaming also needs the link).
    upstream_ready: bool,
    /// Upstream events queued for this actor, and handled by it.
    events: Arc<EventCounts>,
    /// Frames written to the browser and not yet taken by the server.
    outbound: OutboundQueue,
}

impl ClientActor {
    /// `taken` counts the bytes the server takes from this session's
    /// response stream (see [`crate::session::outbound::CountedStream`]).
    pub fn new(
        session: ClientSession,
        connector: UpstreamConnector,
        taken: Arc<AtomicUsize>,
    ) -> Self {
        let now = Instant::now();
        let clock = SessionClock::new(&session.state.config.chronus, session.token_exp, now);
        ClientActor {
            id_text: session.session_id.to_string(),
            rate: AudioRateLimiter::new(session.state.config.max_audio_rate),
            session,
            upstream: None,
            connector: Some(connector),
            phase: Phase::Connecting,
            pending: VecDeque::new(),
            pending_bytes: 0,
            end_requested: false,
            transcript: String::new(),
            last_heard: now,
            last_audio: now,
            started: now,
            clock,
            next_ping: now + HEARTBEAT_INTERVAL,
            tick: None,
            fragments: Reassembler::default(),
            upstream_ready: false,
            events: Arc::default(),
            outbound: OutboundQueue::new(taken),
        }
    }

    fn jwt(&self) -> &JwtValidator {
        &self.session.state.jwt
    }

    fn config(&self) -> &Config {
        &self.session.state.config
    }

    // ---- writing to the browser ------------------------------------------

    /// Writes a frame to the browser, unless the browser stopped reading: a
    /// queue over its bound closes the session instead of growing.
    fn send_text(&mut self, text: String, ctx: &mut ws::WebsocketContext<Self>) {
        if !self.outbound.push(text.len()) {
            log::warn!(
                "session {}: browser not reading ({} bytes waiting); closing",
                self.id_text,
                self.outbound.queued()
            );
            self.phase = Phase::Closed;
            ctx.stop();
            return;
        }
        metrics::GATEWAY_TO_CLIENT.record(text.len());
        ctx.text(text);
    }

    /// Sends the error envelope; closes the session when the code says so.
    fn report(&mut self, error: GatewayError, ctx: &mut ws::WebsocketContext<Self>) {
        if self.phase == Phase::Closed {
            return;
        }
        metrics::count_session_error(error.code);
        self.send_text(error.envelope(Some(&self.id_text)), ctx);
        if let Some(code) = error.code.close_code() {
            log::info!(
                "session {}: closing with {} ({code})",
                self.id_text,
                error.for_log()
            );
            self.close(code, error.code.as_str(), ctx);
        }
    }

    fn close(&mut self, code: u16, description: &str, ctx: &mut ws::WebsocketContext<Self>) {
        self.phase = Phase::Closed;
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::from(code),
            description: Some(description.to_string()),
        }));
        ctx.stop();
    }

    // ---- audio -----------------------------------------------------------

    fn on_audio(&mut self, audio: Bytes, ctx: &mut ws::WebsocketContext<Self>) {
        // Set when the frame carrying this audio arrived.
        let received = self.last_heard;
        match self.phase {
            Phase::Connecting | Phase::Streaming if !self.end_requested => {}
            Phase::Closed => return,
            _ => {
                return self.report(
                    GatewayError::with_message(ErrorCode::BadMessage, "Audio after end is ignored"),
                    ctx,
                )
            }
        }
        if let Err(e) = self.session.format.check_whole_samples(&audio) {
            return self.report(e, ctx);
        }
        if audio.is_empty() {
            return;
        }
        if !self
            .rate
            .admit_at(self.session.format.seconds(audio.len()), received)
        {
            return self.report(GatewayError::new(ErrorCode::RateLimited), ctx);
        }
        self.last_audio = received;
        let audio = if self.session.convert_to_f32 {
            s16le_to_f32le(&audio)
        } else {
            audio
        };
        if self.phase == Phase::Streaming {
            self.forward(audio, received, ctx);
            return;
        }
        let limit = (self.session.format.bytes_per_second() * PRE_READY_BUFFER_SECS) as usize
            * if self.session.convert_to_f32 { 2 } else { 1 };
        if self.pending_bytes + audio.len() > limit {
            return self.report(
                GatewayError::with_message(
                    ErrorCode::RateLimited,
                    "Too much audio arrived before the transcription service was ready",
                ),
                ctx,
            );
        }
        self.pending_bytes += audio.len();
        self.pending.push_back(audio);
    }

    fn forward(&mut self, audio: Bytes, received: Instant, ctx: &mut ws::WebsocketContext<Self>) {
        let Some(link) = &self.upstream else {
            return;
        };
        match &link.audio {
            AudioSink::Actor(actor) => actor.do_send(SessionAudio {
                session_id: self.session.session_id,
                audio,
                received,
            }),
            AudioSink::Route(route) => match route.send(audio, received) {
                Routed::Sent | Routed::Held | Routed::Dropped => {}
                Routed::Congested => {
                    // Stop reading the browser (its TCP window closes) until
                    // the shared socket's queue has drained.
                    ctx.wait(route.drained().into_actor(self));
                }
                Routed::Overflowed => {
                    log::warn!(
                        "session {}: thoth away for longer than the replay buffer holds",
                        self.id_text
                    );
                    self.on_failed(GatewayError::new(ErrorCode::ThothUnavailable), ctx);
                }
            },
        }
    }

    fn on_end(&mut self) {
        if self.end_requested {
            return;
        }
        self.end_requested = true;
        if self.phase == Phase::Streaming {
            self.send_end();
        }
    }

    fn send_end(&mut self) {
        self.phase = Phase::Ending;
        if let Some(link) = &self.upstream {
            link.end.do_send(EndSession {
                session_id: self.session.session_id,
            });
        }
    }

    // ---- text messages ---------------------------------------------------

    fn on_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        match ClientMessage::parse(text) {
            Ok(ClientMessage::Audio { data }) => match decode_base64_audio(&data) {
                Ok(audio) => self.on_audio(audio, ctx),
                Err(e) => self.report(e, ctx),
            },
            Ok(ClientMessage::End {}) => self.on_end(),
            Ok(ClientMessage::Ping {}) => self.send_text(ServerEvent::Pong.to_json(), ctx),
            Ok(ClientMessage::Auth { token }) => self.refresh_token(&token, ctx),
            Err(e) => self.report(e, ctx),
        }
    }

    /// Replaces the session's token (same user) so it outlives the first one.
    fn refresh_token(&mut self, token: &str, ctx: &mut ws::WebsocketContext<Self>) {
        match validate_refresh(self.jwt(), &self.session.user, token) {
            Ok(claims) => {
                log::info!("session {}: token refreshed", self.id_text);
                self.session.token_exp = claims.exp;
                self.clock.token_refreshed(claims.exp);
                self.schedule_tick(ctx);
            }
            Err(error) => self.report(error, ctx),
        }
    }

    /// Arms the session's one timer for its next deadline: token expiry,
    /// idle timeout (not while ending: `done` closes the session) or ping.
    fn schedule_tick(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if let Some(timer) = self.tick.take() {
            ctx.cancel_future(timer);
        }
        let mut next = self.clock.next_deadline().min(self.next_ping);
        if self.phase != Phase::Ending {
            next = next.min(self.last_audio + self.config().idle_timeout);
        }
        let delay = next.saturating_duration_since(Instant::now());
        self.tick = Some(ctx.run_later(delay, |act, ctx| {
            act.tick = None;
            act.on_tick(ctx);
        }));
    }

    fn on_tick(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let now = Instant::now();
        if let Some(code) = self.clock.expired(now) {
            return self.report(GatewayError::new(code), ctx);
        }
        let idle_limit = self.config().idle_timeout;
        if self.phase != Phase::Ending && now.duration_since(self.last_audio) >= idle_limit {
            return self.report(GatewayError::new(ErrorCode::IdleTimeout), ctx);
        }
        if now >= self.next_ping {
            if now.duration_since(self.last_heard) > CLIENT_SILENCE_TIMEOUT {
                log::info!(
                    "session {}: client silent for too long, dropping",
                    self.id_text
                );
                self.phase = Phase::Closed;
                ctx.stop();
                return;
            }
            ctx.ping(b"");
            self.next_ping = now + HEARTBEAT_INTERVAL;
        }
        self.schedule_tick(ctx);
    }

    // ---- frames from the browser -------------------------------------------

    fn on_frame(&mut self, msg: ws::Message, ctx: &mut ws::WebsocketContext<Self>) {
        match msg {
            ws::Message::Binary(audio) => {
                metrics::CLIENT_TO_GATEWAY.record(audio.len());
                self.on_audio(audio, ctx)
            }
            ws::Message::Text(text) => {
                metrics::CLIENT_TO_GATEWAY.record(text.len());
                self.on_text(&text, ctx)
            }
            ws::Message::Continuation(item) => self.on_fragment(item, ctx),
            ws::Message::Ping(payload) => ctx.pong(&payload),
            ws::Message::Pong(_) | ws::Message::Nop => {}
            ws::Message::Close(_) => {
                log::info!("session {}: client closed", self.id_text);
                self.phase = Phase::Closed;
                ctx.close(Some(ws::CloseCode::Normal.into()));
                ctx.stop();
            }
        }
    }

    /// Reassembles a fragmented message, bounded by `MAX_FRAME_BYTES` in all.
    fn on_fragment(&mut self, item: actix_http::ws::Item, ctx: &mut ws::WebsocketContext<Self>) {
        let max_frame_bytes = self.config().max_frame_bytes;
        match self.fragments.push(item, max_frame_bytes) {
            Ok(Some(message)) => self.on_frame(message, ctx),
            Ok(None) => {}
            Err(fault) => self.on_frame_fault(fault, ctx),
        }
    }

    /// A browser frame the session cannot take: the envelope, then the
    /// fault's close code (1007 for text that is not UTF-8).
    fn on_frame_fault(&mut self, fault: FrameFault, ctx: &mut ws::WebsocketContext<Self>) {
        let description = fault.error.code.as_str();
        self.report(fault.error, ctx);
        if let Some(code) = fault.close_code {
            if self.phase != Phase::Closed {
                self.close(code, description, ctx);
            }
        }
    }

    /// The gateway is shutting down. A session that already sent `end` gets
    /// the grace period to receive its `done`; every other one is told now.
    fn drain(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if self.phase == Phase::Ending {
            let grace = self.config().shutdown_grace;
            ctx.run_later(grace, |act, ctx| {
                act.report(GatewayError::new(ErrorCode::ServerShuttingDown), ctx)
            });
        } else {
            self.report(GatewayError::new(ErrorCode::ServerShuttingDown), ctx);
        }
    }

    // ---- events from the upstream --------------------------------------------

    /// Streaming starts once both the upstream said `Ready` and the link to
    /// it is known: the upstream may announce `Ready` before the subscribe
    /// call returns the link, and audio must not race past either.
    fn on_ready(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if self.phase != Phase::Connecting || !self.upstream_ready || self.upstream.is_none() {
            return;
        }
        self.phase = Phase::Streaming;
        log::info!("session {}: upstream ready", self.id_text);
        let ready = ServerEvent::Ready {
            session_id: &self.id_text,
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
    fn on_failed(&mut self, error: GatewayError, ctx: &mut ws::WebsocketContext<Self>) {
        let close = error.code.close_code().unwrap_or(1011);
        let description = error.code.as_str();
        self.report(error.clone(), ctx);
        if self.phase != Phase::Closed {
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
        log::info!("session {}: done", self.id_text);
        self.close(1000, "done", ctx);
    }
}

impl Actor for ClientActor {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::SESSIONS_ACTIVE
            .with_label_values(&[self.session.provider.as_str()])
            .inc();
        let note = match &self.session.note {
            Some(guard) => format!(" for note {}", guard.note()),
            None => String::new(),
        };
        log::info!(
            "session {}: opened{note} for user {} (provider {}, {} at {} Hz)",
            self.id_text,
            self.session.user,
            self.session.provider.as_str(),
            self.session.format.encoding.as_str(),
            self.session.format.sample_rate
        );
        self.schedule_tick(ctx);
        let mut shutdown = self.session.state.shutdown.clone();
        ctx.spawn(
            async move {
                // An error means the gateway itself is gone: drain as well.
                let _ = shutdown.wait_for(|draining| *draining).await;
            }
            .into_actor(self)
            .map(|_, act, ctx| act.drain(ctx)),
        );

        let mut upstream_format = self.session.format;
        if self.session.convert_to_f32 {
            upstream_format.encoding = crate::audio::Encoding::F32le;
        }
        let (client, events) = ClientHandle::new(ctx.address().recipient());
        self.events = events;
        let subscribe = Subscribe {
            session_id: self.session.session_id,
            format: upstream_format,
            client,
        };
        let connector = self
            .connector
            .take()
            .expect("connector used once, at start");
        ctx.spawn(
            connector(subscribe)
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(link) => {
                        if act.phase == Phase::Closed {
                            // Closed while subscribing: give the slot back at once.
                            link.unsubscribe.do_send(Unsubscribe {
                                session_id: act.session.session_id,
                            });
                        } else {
                            act.upstream = Some(link);
                            act.on_ready(ctx);
                        }
                    }
                    Err(error) => act.report(error, ctx),
                }),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(link) = self.upstream.take() {
            link.unsubscribe.do_send(Unsubscribe {
                session_id: self.session.session_id,
            });
        }
        metrics::SESSIONS_ACTIVE
            .with_label_values(&[self.session.provider.as_str()])
            .dec();
        metrics::SESSION_DURATION
            .with_label_values(&[self.session.provider.as_str()])
            .observe(self.started.elapsed().as_secs_f64());
        match &self.session.note {
            Some(guard) => log::info!("session {} (note {}): closed", self.id_text, guard.note()),
            None => log::info!("session {}: closed", self.id_text),
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for ClientActor {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match msg {
            Ok(frame) => self.on_frame(frame, ctx),
            Err(e) => match FrameFault::of_protocol_error(&e) {
                Some(fault) => self.on_frame_fault(fault, ctx),
                None => {
                    log::info!("session {}: protocol error from client: {e}", self.id_text);
                    self.phase = Phase::Closed;
                    ctx.stop();
                }
            },
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The browser's TCP stream ended (maybe without a close frame).
        self.phase = Phase::Closed;
        ctx.stop();
    }
}

impl Handler<ToClient> for ClientActor {
    type Result = ();

    fn handle(&mut self, ToClient { event, sent }: ToClient, ctx: &mut Self::Context) {
        self.events.handled_one();
        if self.phase == Phase::Closed {
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
                    session_id: &self.id_text,
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
