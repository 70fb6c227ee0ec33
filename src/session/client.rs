//! ClientActor: one per chronus browser session. It speaks the chronus
//! protocol, holds audio until the upstream is ready, relays audio up and
//! results down, and guarantees that however the session ends its upstream
//! slot is freed. The socket itself (timer, fragments, outbound bound, drain,
//! report/close) is the shared core, [`crate::session::core`].

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_web_actors::ws;
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use uuid::Uuid;

use crate::audio::{decode_base64_audio, s16le_to_f32le, AudioFormat};
use crate::error::{ErrorCode, GatewayError};
use crate::session::core::{BrowserSession, BrowserSocket, BrowserSocketSettings};
use crate::session::limits::SessionPermit;
use crate::session::note_sessions::NoteSessionGuard;
use crate::session::rate::AudioRateLimiter;
use crate::state::AppState;
use crate::upstream::audio_budget::AUDIO_BUDGET;
use crate::upstream::thoth::audio_route::Routed;
use crate::upstream::{
    AudioSink, ClientHandle, EndSession, EventCounts, SessionAudio, Subscribe, Unsubscribe,
    UpstreamLink,
};
use crate::wire::browser::{ClientMessage, ErrorDialect, Provider, ServerEvent};

mod upstream_events;

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
}

pub struct ClientActor {
    session: ClientSession,
    socket: BrowserSocket,
    upstream: Option<UpstreamLink>,
    connector: Option<UpstreamConnector>,
    phase: Phase,
    pending: VecDeque<Bytes>,
    pending_bytes: usize,
    end_requested: bool,
    /// Final results so far, joined with single spaces, for `done`.
    transcript: String,
    rate: AudioRateLimiter,
    /// The upstream announced `Ready` (streaming also needs the link).
    upstream_ready: bool,
    /// Upstream events queued for this actor, and handled by it.
    events: Arc<EventCounts>,
}

impl ClientActor {
    /// `taken` counts the bytes the server takes from this session's
    /// response stream (see [`crate::session::outbound::CountedStream`]).
    pub fn new(
        session: ClientSession,
        connector: UpstreamConnector,
        taken: Arc<AtomicUsize>,
    ) -> Self {
        let id_text = session.session_id.to_string();
        let socket = BrowserSocket::new(BrowserSocketSettings {
            log_name: format!("session {id_text}"),
            id_text,
            user: session.user.clone(),
            metrics_label: session.provider.as_str(),
            token_exp: session.token_exp,
            dialect: ErrorDialect::Chronus,
            state: session.state.clone(),
            taken,
        });
        ClientActor {
            socket,
            rate: AudioRateLimiter::new(session.state.config.max_audio_rate),
            session,
            upstream: None,
            connector: Some(connector),
            phase: Phase::Connecting,
            pending: VecDeque::new(),
            pending_bytes: 0,
            end_requested: false,
            transcript: String::new(),
            upstream_ready: false,
            events: Arc::default(),
        }
    }

    // ---- audio -----------------------------------------------------------

    fn on_audio(&mut self, audio: Bytes, ctx: &mut ws::WebsocketContext<Self>) {
        // Set when the frame carrying this audio arrived.
        let received = self.socket.last_heard;
        if self.socket.is_closed() {
            return;
        }
        match self.phase {
            Phase::Connecting | Phase::Streaming if !self.end_requested => {}
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
        self.socket.last_activity = received;
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
            AudioSink::Route(_) if !AUDIO_BUDGET.has_room_for(audio.len()) => {
                // This frame would take the process's audio buffering over
                // its budget: the sender waits (not reading its browser)
                // until the writers made room, then sends it, in order.
                ctx.wait(
                    AUDIO_BUDGET
                        .room_for(audio.len())
                        .into_actor(self)
                        .map(move |(), act, ctx| act.forward(audio, received, ctx)),
                );
            }
            AudioSink::Route(route) => match route.send(audio, received) {
                Routed::Sent | Routed::Held | Routed::Dropped => {}
                Routed::Congested => {
                    // Stop reading the browser (its TCP window closes) until
                    // the shared socket's queue has drained.
                    ctx.wait(route.drained().into_actor(self));
                }
                Routed::Overflowed => {
                    log::warn!(
                        "{}: thoth away for longer than the replay buffer holds",
                        self.socket.log_name
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
}

impl BrowserSession for ClientActor {
    fn socket(&self) -> &BrowserSocket {
        &self.socket
    }

    fn socket_mut(&mut self) -> &mut BrowserSocket {
        &mut self.socket
    }

    fn on_message(&mut self, message: ws::Message, ctx: &mut ws::WebsocketContext<Self>) {
        match message {
            ws::Message::Binary(audio) => self.on_audio(audio, ctx),
            ws::Message::Text(text) => self.on_text(&text, ctx),
            _ => {}
        }
    }

    /// `done` closes the session, so the idle timeout pauses meanwhile.
    fn finishing(&self) -> bool {
        self.phase == Phase::Ending
    }
}

impl Actor for ClientActor {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let note = match &self.session.note {
            Some(guard) => format!(" for note {}", guard.note()),
            None => String::new(),
        };
        log::info!(
            "{}: opened{note} for user {} (provider {}, {} at {} Hz)",
            self.socket.log_name,
            self.session.user,
            self.session.provider.as_str(),
            self.session.format.encoding.as_str(),
            self.session.format.sample_rate
        );
        self.start_socket(ctx);

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
                        if act.socket.is_closed() {
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
        self.stop_socket();
        let name = &self.socket.log_name;
        match &self.session.note {
            Some(guard) => log::info!("{name} (note {}): closed", guard.note()),
            None => log::info!("{name}: closed"),
        }
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for ClientActor {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        self.on_browser_item(msg, ctx);
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        self.on_browser_finished(ctx);
    }
}
