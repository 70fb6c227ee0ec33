//! The shared thoth socket (PROTOCOL.md 3.1, `THOTH_PROTOCOL=mux`): every
//! session of an endpoint on one socket, as a [`ThothUpstreamActor<Mux>`].
//!
//! Where a frame travels: the browser's audio arrives at its ClientActor
//! (`session/client.rs`), which frames it and queues it on this socket's
//! writer through the session's [`AudioRoute`]; thoth's results come back on
//! the socket, [`MuxEvent`] (`wire/thoth_mux.rs`) parses them here, and each
//! goes to its session's ClientActor as an [`UpstreamEvent`], which turns it
//! into a browser frame (`session/client/upstream_events.rs` → `wire/browser.rs`). The socket's lifecycle is in
//! `socket.rs`; the session table, reference count and idle close in `actor.rs`.
//!
//! The socket opens with the first subscriber and closes
//! `THOTH_IDLE_CLOSE_SECS` after the last one leaves. When it drops, its
//! sessions are kept: they hear `THOTH_RECONNECTING`, the actor reconnects
//! with backoff, and each session restarts at the end of its last final
//! result with the audio thoth had not finished replayed first (`resume.rs`).

use std::time::{Duration, Instant};

use actix::prelude::*;
use awc::ws::Message as WsMessage;
use uuid::Uuid;

use super::actor::{Phase, SessionSlot, ThothUpstreamActor};
use super::audio_route::AudioRoute;
use super::endpoint::{EndpointProtocol, ThothEndpointConfig};
use super::monitor;
use super::resume::{self, ReplayBuffer};
use super::socket::ThothSocket;
use crate::audio::AudioFormat;
use crate::error::{ErrorCode, GatewayError};
use crate::upstream::connect::{ConnectFailure, Connected};
use crate::upstream::writer::SendFailure;
use crate::upstream::{Subscribe, UpstreamEvent};
use crate::wire::thoth_mux::{map_thoth_error, MuxCommand, MuxEvent, MUX_SUBPROTOCOL};

/// The shared-socket protocol's own state.
pub struct Mux {
    /// Set while sessions wait for a lost socket to come back.
    resume_deadline: Option<Instant>,
}

/// The actor that owns one endpoint's shared socket.
pub type MuxThothActor = ThothUpstreamActor<Mux>;

impl EndpointProtocol for Mux {
    const SUBPROTOCOL: Option<&'static str> = Some(MUX_SUBPROTOCOL);

    fn new(_: &ThothEndpointConfig) -> Self {
        Mux {
            resume_deadline: None,
        }
    }

    fn idle_close(config: &ThothEndpointConfig) -> Duration {
        config.idle_close
    }

    fn join(
        act: &mut MuxThothActor,
        msg: Subscribe,
        ctx: &mut Context<MuxThothActor>,
    ) -> Response<Result<AudioRoute, GatewayError>> {
        let session_id = msg.session_id;
        let replay = ReplayBuffer::new(msg.format, act.config.replay_max_secs);
        let route = AudioRoute::new(session_id, Some(replay));
        act.sessions
            .insert(session_id, SessionSlot::waiting(msg, route.clone()));
        log::info!(
            "thoth {}: session {} subscribed (refCount {})",
            act.display_url,
            session_id,
            act.sessions.len()
        );
        act.sessions_changed(ctx);
        match act.link {
            ThothSocket::Open(_) => act.start_session(session_id, ctx),
            ThothSocket::Down => act.connect(ctx),
            ThothSocket::Connecting { .. } => {}
        }
        Response::reply(Ok(route))
    }

    fn connected(
        act: &mut MuxThothActor,
        generation: u64,
        connected: Connected,
        ctx: &mut Context<MuxThothActor>,
    ) {
        if connected.subprotocol.as_deref() != Some(MUX_SUBPROTOCOL) {
            let problem = format!(
                "endpoint did not select subprotocol {MUX_SUBPROTOCOL}: it does not speak thoth mux v1 (set THOTH_PROTOCOL=legacy for today's thoth)"
            );
            log::error!("thoth {}: configuration error: {problem}", act.display_url);
            act.last_error = Some(problem);
            act.set_link(ThothSocket::Down);
            act.protocol.resume_deadline = None;
            act.fail_all(GatewayError::new(ErrorCode::ThothUnavailable), ctx);
            return;
        }
        act.open_socket(generation, connected.framed, ctx);
        if act.lost_unexpectedly {
            act.lost_unexpectedly = false;
            act.reconnects += 1;
            monitor::count_reconnect(&act.display_url);
        }
        log::info!(
            "thoth {}: upstream socket open ({} session(s) waiting)",
            act.display_url,
            act.sessions.len()
        );
        let resuming = act.session_ids(|slot| slot.resuming);
        // (The socket is open: `open_socket` just ran.)
        let everyone_back = resume::reopen_all(&resuming, |session_id| {
            act.resume_session(session_id, ctx);
            act.socket_is(generation)
        });
        if everyone_back {
            // Every session of the socket is back: the status notice pairs
            // with THOTH_RECONNECTING (a session that failed is gone).
            for session_id in resuming {
                let notice = UpstreamEvent::Notice(GatewayError::new(ErrorCode::ThothResumed));
                act.notify(session_id, notice, ctx);
            }
            act.protocol.resume_deadline = None;
            for session_id in act.session_ids(|slot| slot.phase == Phase::Waiting) {
                act.start_session(session_id, ctx);
            }
        }
        // Everyone may have left while we were connecting.
        act.sessions_changed(ctx);
    }

    fn retry_connect(
        act: &mut MuxThothActor,
        failure: &ConnectFailure,
        ctx: &mut Context<MuxThothActor>,
    ) -> bool {
        let refused = matches!(failure, ConnectFailure::Refused(_));
        if !resume::keep_retrying(act.protocol.resume_deadline, Instant::now(), refused) {
            act.protocol.resume_deadline = None;
            return false;
        }
        // Sessions wait to resume: keep trying until their deadline.
        let pause = resume::retry_pause(act.config.retry_base);
        log::warn!(
            "thoth {}: still unreachable, retrying in {pause:?}",
            act.display_url
        );
        ctx.run_later(pause, |act, ctx| {
            if matches!(act.link, ThothSocket::Down) && !act.sessions.is_empty() {
                act.connect(ctx);
            }
        });
        true
    }

    fn start_upstream(
        act: &mut MuxThothActor,
        session_id: Uuid,
        format: AudioFormat,
        ctx: &mut Context<MuxThothActor>,
    ) {
        act.send_command(MuxCommand::start(&session_id, format, 0), ctx);
    }

    fn cancel_upstream(
        act: &mut MuxThothActor,
        session_id: &Uuid,
        slot: &SessionSlot,
        ctx: &mut Context<MuxThothActor>,
    ) {
        if slot.phase != Phase::Waiting && !slot.resuming {
            act.send_command(MuxCommand::Cancel { session_id }, ctx);
        }
    }

    fn end(act: &mut MuxThothActor, session_id: Uuid, ctx: &mut Context<MuxThothActor>) {
        act.send_command(
            MuxCommand::End {
                session_id: &session_id,
            },
            ctx,
        );
    }

    /// Sessions are kept and resumed on a new socket.
    fn socket_lost(act: &mut MuxThothActor, ctx: &mut Context<MuxThothActor>) {
        if act.sessions.is_empty() {
            act.fail_all(GatewayError::new(ErrorCode::ThothUnavailable), ctx);
            return;
        }
        for session_id in act.session_ids(|slot| slot.phase != Phase::Waiting) {
            if let Some(slot) = act.sessions.get_mut(&session_id) {
                slot.resuming = true;
                slot.route.lock().hold();
            }
            let notice = UpstreamEvent::Notice(GatewayError::new(ErrorCode::ThothReconnecting));
            act.notify(session_id, notice, ctx);
        }
        let timeout = act.config.resume_timeout;
        log::debug!("thoth {}: resuming within {timeout:?}", act.display_url);
        act.protocol.resume_deadline = Some(Instant::now() + timeout);
        ctx.run_later(timeout, |act, ctx| act.resume_timed_out(ctx));
        act.connect(ctx);
    }

    fn on_text(act: &mut MuxThothActor, text: &str, ctx: &mut Context<MuxThothActor>) {
        act.on_mux_text(text, ctx);
    }
}

impl MuxThothActor {
    fn send_command(&mut self, command: MuxCommand<'_>, ctx: &mut Context<Self>) {
        let text = command.to_json();
        self.send(WsMessage::Text(text.into()), ctx);
    }

    /// Re-opens a session on a new socket at the end of its last final result
    /// and replays the audio thoth had not finished, before any new audio.
    fn resume_session(&mut self, session_id: Uuid, ctx: &mut Context<MuxThothActor>) {
        let Some(slot) = self.sessions.get_mut(&session_id) else {
            return;
        };
        slot.resuming = false;
        let (format, ending, route) =
            (slot.format, slot.phase == Phase::Ending, slot.route.clone());
        let Some(writer) = self.writer().cloned() else {
            return;
        };
        // Holding the route keeps the session's new audio out until the
        // replay is queued: it follows, in order. Nothing that could take
        // the route's lock again (`link_lost`) runs while it is held.
        let mut state = route.lock();
        let Some(frames) = resume::resume_frames(&session_id, format, state.replay(), ending)
        else {
            drop(state);
            log::warn!(
                "thoth {}: session {session_id} lost audio beyond its replay buffer",
                self.display_url
            );
            let error = GatewayError::new(ErrorCode::ThothUnavailable);
            return self.finish_session(session_id, UpstreamEvent::Failed(error), ctx);
        };
        let queued = (|| {
            writer.send(WsMessage::Text(frames.start.into()))?;
            for frame in frames.audio {
                writer.send_uncounted(WsMessage::Binary(frame))?;
            }
            if let Some(end) = frames.end {
                writer.send(WsMessage::Text(end.into()))?;
            }
            Ok(())
        })();
        if queued != Err(SendFailure::Closed) {
            // (A stalled writer has told this actor; the socket is dropped
            // next and the session held again, its replay intact.)
            state.attach(writer);
        }
        drop(state);
        if queued == Err(SendFailure::Closed) {
            self.link_lost("writer stopped", ctx);
        }
    }

    /// Sessions still waiting `THOTH_RESUME_TIMEOUT_SECS` after the drop end.
    fn resume_timed_out(&mut self, ctx: &mut Context<MuxThothActor>) {
        let overdue = self.session_ids(|slot| slot.resuming);
        if overdue.is_empty() {
            return;
        }
        log::warn!(
            "thoth {}: {} session(s) could not be resumed in time",
            self.display_url,
            overdue.len()
        );
        self.protocol.resume_deadline = None;
        for session_id in overdue {
            let error = GatewayError::new(ErrorCode::ThothUnavailable);
            self.finish_session(session_id, UpstreamEvent::Failed(error), ctx);
        }
    }

    fn on_mux_text(&mut self, text: &str, ctx: &mut Context<MuxThothActor>) {
        let Some(event) = MuxEvent::parse(text) else {
            log::warn!(
                "thoth {}: skipping an unknown or malformed frame",
                self.display_url
            );
            return;
        };
        match event {
            MuxEvent::Transcription {
                session_id,
                text,
                is_final,
                start,
                end,
            } => {
                let Some(slot) = self.sessions.get_mut(&session_id) else {
                    log::debug!(
                        "thoth {}: result for unknown session {session_id}",
                        self.display_url
                    );
                    return;
                };
                if let (true, Some(end)) = (is_final, end) {
                    if let Some(replay) = slot.route.lock().replay_mut() {
                        replay.confirm(end);
                    }
                }
                let event = UpstreamEvent::Transcript {
                    text,
                    is_final,
                    start,
                    end,
                };
                self.notify(session_id, event, ctx);
            }
            MuxEvent::SessionDone { session_id } => {
                self.finish_session(session_id, UpstreamEvent::Done, ctx)
            }
            MuxEvent::Error {
                session_id: Some(session_id),
                code,
                ..
            } => {
                log::warn!(
                    "thoth {}: error {code} for session {session_id}",
                    self.display_url
                );
                let error = GatewayError::new(map_thoth_error(&code));
                self.finish_session(session_id, UpstreamEvent::Failed(error), ctx);
            }
            MuxEvent::Error {
                session_id: None,
                code,
                ..
            } => {
                self.link_lost(&format!("thoth announced it is closing ({code})"), ctx);
            }
        }
    }
}
