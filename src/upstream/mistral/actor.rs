//! MistralUpstreamActor: one per Mistral session (PROTOCOL.md 4), holding a
//! socket of its own to Mistral's realtime endpoint; this file owns its
//! state, its lifecycle (connect, pause, reopen, finish) and what it sends
//! to Mistral. What Mistral sends back is handled in `actor/inbound.rs`.

mod inbound;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use actix::prelude::*;
use awc::ws::{CloseCode, CloseReason, Frame, Message as WsMessage};
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use uuid::Uuid;

use super::endpoint::{connect_failure_error, open_mistral_socket, MistralEndpoint};
use super::sessions::MistralSessionGuard;
use super::transcript::Transcript;
use crate::audio::AudioFormat;
use crate::error::{ErrorCode, GatewayError};
use crate::metrics;
use crate::store::SecretString;
use crate::upstream::connect::WsFramed;
use crate::upstream::writer::{self, SendFailure, SocketWriter, WriterPolicy};
use crate::upstream::{
    ClientHandle, EndSession, SessionAudio, Subscribe, Unsubscribe, UpstreamEvent,
};
use crate::wire::mistral::{append_frames, session_update, INPUT_AUDIO_END, INPUT_AUDIO_FLUSH};

/// How long Mistral may take to send `session.created` once the socket is open.
pub const SESSION_CREATED_TIMEOUT: Duration = Duration::from_secs(10);
/// The gateway pings Mistral this often…
pub const PING_INTERVAL: Duration = Duration::from_secs(15);
/// …and gives the socket up when nothing at all was heard for this long.
pub const UPSTREAM_SILENCE_TIMEOUT: Duration = Duration::from_secs(40);
/// Audio held while a fresh Mistral session opens after a pause, in seconds.
pub const MAX_HELD_AUDIO_SECS: f64 = 10.0;
/// A clean close from Mistral counts as "Mistral closed an idle session"
/// (a pause, not an error) when no audio was sent to it for this long.
pub const IDLE_BEFORE_CLOSE_IS_PAUSE: Duration = Duration::from_secs(5);

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
        let (source, sink) = writer::sink::split(framed);
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
        log::warn!("mistral: session {}: {}", self.session_id, msg.reason);
        self.fail(GatewayError::new(ErrorCode::MistralUnavailable), ctx);
    }
}
