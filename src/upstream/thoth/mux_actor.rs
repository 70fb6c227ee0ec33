//! ThothUpstreamActor: owns one thoth endpoint's socket and every session on it.
//!
//! In `mux` mode all sessions share one socket (PROTOCOL.md 3.1): it opens with
//! the first subscriber and closes `THOTH_IDLE_CLOSE_SECS` after the last one
//! leaves. In `legacy` mode (3.2) the endpoint serves one session at a time on
//! a socket of its own. The reference count is the number of sessions held.
//!
//! When a mux socket drops, its sessions are kept: they hear
//! `THOTH_RECONNECTING`, the actor reconnects with backoff, and each session
//! restarts at the end of its last final result with the audio thoth had not
//! finished replayed first (see `replay.rs`).
//!
//! Live audio does not pass through this actor: each session's ClientActor
//! queues it on the socket's writer through its [`AudioRoute`], which this
//! actor opens, re-points on a resume and closes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use awc::http::header::{HeaderName, HeaderValue};
use awc::ws::{CloseCode, CloseReason, Frame, Message as WsMessage};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{stream, StreamExt};
use uuid::Uuid;

use super::audio_route::AudioRoute;
use super::monitor::{self, EndpointSnapshot, GetSnapshot, LinkState, Refusal};
use super::resume::{self, ReplayBuffer};
use super::stall::{StallWatch, CLIENT_STALL_TIMEOUT};
use crate::audio::AudioFormat;
use crate::config::ThothProtocol;
use crate::error::{ErrorCode, GatewayError};
use crate::metrics;
use crate::upstream::connect::{self, ConnectFailure, WsTarget};
use crate::upstream::writer::{SendFailure, SocketWriter, WriterPolicy};
use crate::upstream::{ClientHandle, EndSession, Subscribe, Unsubscribe, UpstreamEvent};
use crate::wire::thoth_mux::{map_thoth_error, MuxCommand, MuxEvent, MUX_SUBPROTOCOL};

#[path = "legacy_actor.rs"]
mod legacy;
pub use legacy::LEGACY_REFUSAL_WINDOW;

/// The gateway pings thoth this often; two intervals without a pong mean the
/// socket is dead.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);
const MISSED_PONGS_ALLOWED: u32 = 2;

/// How often sessions whose ClientActor died without unsubscribing (e.g. it
/// stopped while its subscription was in flight) are swept out.
const DEAD_CLIENT_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// A closing socket's writer must be done by then, or it is dropped.
const WRITER_CLOSE_DEADLINE: Duration = Duration::from_secs(5);

/// Everything a ThothUpstreamActor needs to know about its endpoint.
#[derive(Clone)]
pub struct ThothEndpointConfig {
    pub url: String,
    pub protocol: ThothProtocol,
    pub stream_token: Option<crate::crypto::SecretString>,
    pub tls: Arc<rustls::ClientConfig>,
    pub idle_close: Duration,
    pub retry_base: Duration,
    pub legacy_flush_grace: Duration,
    pub max_frame_bytes: usize,
    /// Mux resume: audio kept per session, in seconds.
    pub replay_max_secs: u64,
    /// Mux resume: how long sessions wait for the socket to come back.
    pub resume_timeout: Duration,
}

impl ThothEndpointConfig {
    /// The URL as shown in logs and monitoring, its secrets masked.
    pub fn display_url(&self) -> String {
        crate::redact::redact(&self.url)
    }
}

/// Where a session stands with thoth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Subscribed; waiting for the socket to open.
    Waiting,
    /// Started upstream; audio flows.
    Streaming,
    /// `end` sent; waiting for the last results and `done`.
    Ending,
}

struct SessionSlot {
    client: ClientHandle,
    format: AudioFormat,
    phase: Phase,
    /// The session's audio path to the socket; in mux mode it also keeps
    /// the audio since the last final result, for resuming.
    route: AudioRoute,
    /// Mux only: the socket dropped and this session waits to be re-opened.
    resuming: bool,
    /// Watches the client's event backlog for a browser that stopped reading.
    stall: StallWatch,
}

/// An open socket: a bounded writer task and a reader stream on this actor.
struct OpenSocket {
    generation: u64,
    /// Queues frames for the writer task; sessions' routes hold clones.
    writer: SocketWriter,
    reader: SpawnHandle,
    /// Owns the socket's write half; aborted if it cannot finish closing.
    writer_task: actix_rt::task::JoinHandle<()>,
    since: DateTime<Utc>,
    last_pong: Instant,
}

enum Link {
    Down,
    Connecting { generation: u64 },
    Open(OpenSocket),
}

impl Link {
    fn state(&self) -> LinkState {
        match self {
            Link::Down => LinkState::Down,
            Link::Connecting { .. } => LinkState::Connecting,
            Link::Open(_) => LinkState::Open,
        }
    }
}

/// One item of a socket's reader stream, tagged with the socket's generation
/// so that frames of a replaced socket are ignored.
enum Inbound {
    Frame(u64, Result<Frame, actix_http::ws::ProtocolError>),
    Ended(u64),
}

/// A session joins this endpoint. The answer is its audio route; the actor
/// later sends [`UpstreamEvent::Ready`] or [`UpstreamEvent::Failed`].
#[derive(Message)]
#[rtype(result = "Result<AudioRoute, GatewayError>")]
pub struct Join(pub Subscribe);

/// The writer of socket `generation` gave thoth up (a write failed, or a
/// sender found thoth not reading).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WriterFailed {
    pub generation: u64,
    pub reason: String,
}

/// Owns one thoth endpoint's socket(s) and the sessions subscribed to it.
pub struct ThothUpstreamActor {
    config: ThothEndpointConfig,
    display_url: String,
    sessions: HashMap<Uuid, SessionSlot>,
    /// Shared with the pool, which reads it to pick an endpoint.
    ref_count: Arc<AtomicUsize>,
    link: Link,
    generation: u64,
    idle_timer: Option<SpawnHandle>,
    reconnects: u64,
    lost_unexpectedly: bool,
    last_error: Option<String>,
    /// Set while sessions wait for a lost mux socket to come back.
    resume_deadline: Option<Instant>,
    /// Legacy: the session whose handshake is not settled yet.
    pending_join: Option<legacy::PendingJoin>,
    last_refusal: Option<Refusal>,
}

impl ThothUpstreamActor {
    pub fn new(config: ThothEndpointConfig, ref_count: Arc<AtomicUsize>) -> Self {
        let display_url = config.display_url();
        ThothUpstreamActor {
            config,
            display_url,
            sessions: HashMap::new(),
            ref_count,
            link: Link::Down,
            generation: 0,
            idle_timer: None,
            reconnects: 0,
            lost_unexpectedly: false,
            last_error: None,
            resume_deadline: None,
            pending_join: None,
            last_refusal: None,
        }
    }

    /// Whether the open socket is the one of `generation`.
    fn socket_is(&self, generation: u64) -> bool {
        matches!(&self.link, Link::Open(socket) if socket.generation == generation)
    }

    fn is_mux(&self) -> bool {
        self.config.protocol == ThothProtocol::Mux
    }

    fn session_ids(&self, wanted: impl Fn(&SessionSlot) -> bool) -> Vec<Uuid> {
        self.sessions
            .iter()
            .filter(|(_, slot)| wanted(slot))
            .map(|(id, _)| *id)
            .collect()
    }

    // ---- reference count ------------------------------------------------

    /// Publishes the reference count after every change and arms the idle
    /// close when it reaches zero.
    fn sessions_changed(&mut self, ctx: &mut Context<Self>) {
        let count = self.sessions.len();
        self.ref_count.store(count, Ordering::Relaxed);
        monitor::publish_ref_count(&self.display_url, count);
        if count > 0 {
            if let Some(timer) = self.idle_timer.take() {
                ctx.cancel_future(timer);
            }
            return;
        }
        if matches!(self.link, Link::Down) || self.idle_timer.is_some() {
            return;
        }
        // A legacy socket belongs to its one session: close it at once.
        let delay = if self.is_mux() {
            self.config.idle_close
        } else {
            Duration::ZERO
        };
        self.idle_timer = Some(ctx.run_later(delay, |act, ctx| {
            act.idle_timer = None;
            if act.sessions.is_empty() {
                log::info!(
                    "thoth {}: idle, closing the upstream socket",
                    act.display_url
                );
                act.close_link(ctx, CloseCode::Normal);
            }
        }));
    }

    fn set_link(&mut self, link: Link) {
        self.link = link;
        monitor::publish_link_state(&self.display_url, self.link.state());
    }

    // ---- connecting -----------------------------------------------------

    fn target(&self) -> WsTarget {
        let mut headers = Vec::new();
        if let Some(token) = &self.config.stream_token {
            match HeaderValue::from_str(token.expose()) {
                Ok(value) => headers.push((HeaderName::from_static("x-thoth-token"), value)),
                Err(_) => log::error!("THOTH_STREAM_TOKEN is not a valid header value; not sent"),
            }
        }
        WsTarget {
            url: self.config.url.clone(),
            subprotocol: self.is_mux().then_some(MUX_SUBPROTOCOL),
            headers,
            // Room for the 16-byte session prefix on top of a full browser frame.
            max_frame_bytes: self.config.max_frame_bytes + 64,
            tls: self.config.tls.clone(),
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.generation += 1;
        let generation = self.generation;
        self.set_link(Link::Connecting { generation });
        let target = self.target();
        let url = self.display_url.clone();
        let backoff = self.config.retry_base;
        log::info!("thoth {url}: opening upstream socket");
        let attempt = async move {
            connect::open_with_retries(&target, backoff, |attempt, failure| {
                log::warn!(
                    "thoth {url}: connection attempt {} failed: {failure}",
                    attempt + 1
                );
            })
            .await
        };
        ctx.spawn(
            attempt
                .into_actor(self)
                .map(move |result, act, ctx| act.on_connect_result(generation, result, ctx)),
        );
    }

    fn on_connect_result(
        &mut self,
        generation: u64,
        result: Result<connect::Connected, ConnectFailure>,
        ctx: &mut Context<Self>,
    ) {
        if !matches!(self.link, Link::Connecting { generation: g } if g == generation) {
            return; // superseded (e.g. every session left and the link was reset)
        }
        let connected = match result {
            Ok(connected) => connected,
            Err(failure) => return self.on_connect_failure(failure, ctx),
        };
        if self.is_mux() && connected.subprotocol.as_deref() != Some(MUX_SUBPROTOCOL) {
            let problem = format!(
                "endpoint did not select subprotocol {MUX_SUBPROTOCOL}: it does not speak thoth mux v1 (set THOTH_PROTOCOL=legacy for today's thoth)"
            );
            log::error!("thoth {}: configuration error: {problem}", self.display_url);
            self.last_error = Some(problem);
            self.set_link(Link::Down);
            self.resume_deadline = None;
            self.fail_all(GatewayError::new(ErrorCode::ThothUnavailable), ctx);
            return;
        }
        self.open_socket(generation, connected.framed, ctx);
        if !self.is_mux() {
            // Legacy: the session starts once thoth has kept the socket.
            return self.legacy_socket_opened(generation, ctx);
        }
        if self.lost_unexpectedly {
            self.lost_unexpectedly = false;
            self.reconnects += 1;
            monitor::count_reconnect(&self.display_url);
        }
        log::info!(
            "thoth {}: upstream socket open ({} session(s) waiting)",
            self.display_url,
            self.sessions.len()
        );
        let resuming = self.session_ids(|slot| slot.resuming);
        // (The socket is open: `open_socket` just ran.)
        let everyone_back = resume::reopen_all(&resuming, |session_id| {
            self.resume_session(session_id, ctx);
            self.socket_is(generation)
        });
        if everyone_back {
            // Every session of the socket is back: the status notice pairs
            // with THOTH_RECONNECTING (a session that failed is gone).
            for session_id in resuming {
                let notice = UpstreamEvent::Notice(GatewayError::new(ErrorCode::ThothResumed));
                self.notify(session_id, notice, ctx);
            }
            self.resume_deadline = None;
            for session_id in self.session_ids(|slot| slot.phase == Phase::Waiting) {
                self.start_session(session_id, ctx);
            }
        }
        // Everyone may have left while we were connecting.
        self.sessions_changed(ctx);
    }

    fn on_connect_failure(&mut self, failure: ConnectFailure, ctx: &mut Context<Self>) {
        self.last_error = Some(failure.to_string());
        self.set_link(Link::Down);
        let refused = matches!(failure, ConnectFailure::Refused(_));
        if resume::keep_retrying(self.resume_deadline, Instant::now(), refused) {
            // Sessions wait to resume: keep trying until their deadline.
            let pause = resume::retry_pause(self.config.retry_base);
            log::warn!(
                "thoth {}: still unreachable, retrying in {pause:?}",
                self.display_url
            );
            ctx.run_later(pause, |act, ctx| {
                if matches!(act.link, Link::Down) && !act.sessions.is_empty() {
                    act.connect(ctx);
                }
            });
            return;
        }
        let error = match failure {
            ConnectFailure::Refused(403) if !self.is_mux() => self.legacy_refused_with_403(),
            ConnectFailure::Refused(_) => GatewayError::new(ErrorCode::AuthFailed),
            _ => GatewayError::new(ErrorCode::ThothUnavailable),
        };
        log::error!("thoth {}: giving up: {failure}", self.display_url);
        self.resume_deadline = None;
        self.fail_all(error, ctx);
    }

    /// Splits the socket: a writer task drains a queue into it (batching
    /// frames per flush), the reader stream is attached to this actor.
    fn open_socket(&mut self, generation: u64, framed: connect::WsFramed, ctx: &mut Context<Self>) {
        let (sink, source) = framed.split();
        let actor = ctx.address();
        let (writer, writer_task) =
            SocketWriter::spawn_joinable(sink, WriterPolicy::THOTH, move |reason| {
                actor.do_send(WriterFailed { generation, reason })
            });
        let frames = source
            .map(move |frame| Inbound::Frame(generation, frame))
            .chain(stream::once(async move { Inbound::Ended(generation) }));
        let reader = ctx.add_stream(frames);
        self.set_link(Link::Open(OpenSocket {
            generation,
            writer,
            reader,
            writer_task,
            since: Utc::now(),
            last_pong: Instant::now(),
        }));
    }

    // ---- sending ----------------------------------------------------

    /// The open socket's writer.
    fn writer(&self) -> Option<&SocketWriter> {
        match &self.link {
            Link::Open(socket) => Some(&socket.writer),
            _ => None,
        }
    }

    /// Queues a frame toward thoth. A queue over its bound means thoth stopped
    /// reading: the socket is given up rather than grown without limit.
    fn send(&mut self, message: WsMessage, ctx: &mut Context<Self>) {
        let Some(writer) = self.writer() else {
            return;
        };
        match writer.send(message) {
            Ok(()) => {}
            // The writer told this actor already; the report arrives next.
            Err(SendFailure::Stalled) => {}
            Err(SendFailure::Closed) => self.link_lost("writer stopped", ctx),
        }
    }

    fn send_command(&mut self, command: MuxCommand<'_>, ctx: &mut Context<Self>) {
        let text = command.to_json();
        self.send(WsMessage::Text(text.into()), ctx);
    }

    fn start_session(&mut self, session_id: Uuid, ctx: &mut Context<Self>) {
        let Some(slot) = self.sessions.get_mut(&session_id) else {
            return;
        };
        slot.phase = Phase::Streaming;
        let (format, route) = (slot.format, slot.route.clone());
        if self.is_mux() {
            self.send_command(MuxCommand::start(&session_id, format, 0), ctx);
        }
        // After `session.start` in the queue: the session's audio follows it.
        if let Some(writer) = self.writer() {
            route.lock().attach(writer.clone());
        }
        self.notify(session_id, UpstreamEvent::Ready, ctx);
    }

    /// Re-opens a session on a new socket at the end of its last final result
    /// and replays the audio thoth had not finished, before any new audio.
    fn resume_session(&mut self, session_id: Uuid, ctx: &mut Context<Self>) {
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

    /// Delivers an event to a session's client. A client too far behind (its
    /// browser stopped reading, so its actor stopped running) is cut off
    /// instead of queued for without bound.
    fn notify(&mut self, session_id: Uuid, event: UpstreamEvent, ctx: &mut Context<Self>) {
        let Some(slot) = self.sessions.get(&session_id) else {
            return;
        };
        if slot.client.deliver(event) {
            return;
        }
        log::warn!(
            "thoth {}: session {session_id} is not reading its results; cutting it off",
            self.display_url
        );
        if let Some(slot) = self.forget(&session_id) {
            self.cancel_upstream(&session_id, &slot, ctx);
            slot.client
                .cut_off(UpstreamEvent::Failed(GatewayError::with_message(
                    ErrorCode::RateLimited,
                    "The browser is not reading transcription results; session closed",
                )));
        }
        self.sessions_changed(ctx);
    }

    /// Removes a session and closes its audio route.
    fn forget(&mut self, session_id: &Uuid) -> Option<SessionSlot> {
        self.drop_pending_join(session_id);
        let slot = self.sessions.remove(session_id)?;
        slot.route.lock().close();
        Some(slot)
    }

    /// Tells thoth to discard a session it knows of.
    fn cancel_upstream(&mut self, session_id: &Uuid, slot: &SessionSlot, ctx: &mut Context<Self>) {
        if self.is_mux() && slot.phase != Phase::Waiting && !slot.resuming {
            self.send_command(MuxCommand::Cancel { session_id }, ctx);
        }
    }

    // ---- ending ---------------------------------------------------------

    /// Ends one session and tells its client how.
    fn finish_session(&mut self, session_id: Uuid, event: UpstreamEvent, ctx: &mut Context<Self>) {
        if let Some(slot) = self.forget(&session_id) {
            slot.client.cut_off(event);
            log::info!(
                "thoth {}: session {session_id} finished (refCount {})",
                self.display_url,
                self.sessions.len()
            );
            self.sessions_changed(ctx);
        }
    }

    /// Ends every session with `error` and drops the socket.
    fn fail_all(&mut self, error: GatewayError, ctx: &mut Context<Self>) {
        // A legacy session whose handshake is not settled hears it from the pool.
        self.refuse_pending_join(&error);
        log::debug!(
            "thoth {}: ending all {} session(s): {error}",
            self.display_url,
            self.sessions.len()
        );
        for (_, slot) in self.sessions.drain() {
            slot.route.lock().close();
            slot.client.cut_off(UpstreamEvent::Failed(error.clone()));
        }
        self.sessions_changed(ctx);
        self.close_link(ctx, CloseCode::Away);
    }

    fn close_link(&mut self, ctx: &mut Context<Self>, code: CloseCode) {
        if let Link::Open(socket) = std::mem::replace(&mut self.link, Link::Down) {
            ctx.cancel_future(socket.reader);
            // The writer flushes what is queued, sends the close frame and
            // ends. A peer that stopped reading would keep it (and its queue)
            // forever, so it gets a deadline.
            socket.writer.close(CloseReason::from(code));
            let writer_task = socket.writer_task;
            actix_rt::spawn(async move {
                actix_rt::time::sleep(WRITER_CLOSE_DEADLINE).await;
                writer_task.abort();
            });
        }
        self.generation += 1;
        self.set_link(Link::Down);
    }

    /// The socket died under us (closed, errored, stalled, no pongs). Mux
    /// sessions are kept and resumed on a new socket; legacy ones end.
    fn link_lost(&mut self, reason: &str, ctx: &mut Context<Self>) {
        if matches!(self.link, Link::Down) {
            return;
        }
        log::warn!(
            "thoth {}: upstream socket lost: {reason} ({} session(s) affected)",
            self.display_url,
            self.sessions.len()
        );
        self.last_error = Some(reason.to_string());
        self.lost_unexpectedly = true;
        self.close_link(ctx, CloseCode::Away);
        if !self.is_mux() || self.sessions.is_empty() {
            self.fail_all(GatewayError::new(ErrorCode::ThothUnavailable), ctx);
            return;
        }
        for session_id in self.session_ids(|slot| slot.phase != Phase::Waiting) {
            if let Some(slot) = self.sessions.get_mut(&session_id) {
                slot.resuming = true;
                slot.route.lock().hold();
            }
            let notice = UpstreamEvent::Notice(GatewayError::new(ErrorCode::ThothReconnecting));
            self.notify(session_id, notice, ctx);
        }
        let timeout = self.config.resume_timeout;
        log::debug!("thoth {}: resuming within {timeout:?}", self.display_url);
        self.resume_deadline = Some(Instant::now() + timeout);
        ctx.run_later(timeout, |act, ctx| act.resume_timed_out(ctx));
        self.connect(ctx);
    }

    /// Sessions still waiting `THOTH_RESUME_TIMEOUT_SECS` after the drop end.
    fn resume_timed_out(&mut self, ctx: &mut Context<Self>) {
        let overdue = self.session_ids(|slot| slot.resuming);
        if overdue.is_empty() {
            return;
        }
        log::warn!(
            "thoth {}: {} session(s) could not be resumed in time",
            self.display_url,
            overdue.len()
        );
        self.resume_deadline = None;
        for session_id in overdue {
            let error = GatewayError::new(ErrorCode::ThothUnavailable);
            self.finish_session(session_id, UpstreamEvent::Failed(error), ctx);
        }
    }

    // ---- receiving ------------------------------------------------------

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        if self.is_mux() {
            self.on_mux_text(text, ctx);
        } else {
            self.on_legacy_text(text, ctx);
        }
    }

    fn on_mux_text(&mut self, text: &str, ctx: &mut Context<Self>) {
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

    fn on_close(&mut self, reason: Option<CloseReason>, ctx: &mut Context<Self>) {
        let code = reason.as_ref().map(|r| u16::from(r.code));
        let error = match code {
            Some(1013) => Some(ErrorCode::ThothBusy),
            Some(4401) | Some(4403) => Some(ErrorCode::AuthFailed),
            _ => None,
        };
        if code == Some(1013) && !self.is_mux() {
            self.legacy_closed_with_1013();
        }
        match error {
            Some(code_for_sessions) => {
                let why = format!("thoth closed the socket with {}", code.unwrap_or_default());
                log::warn!("thoth {}: {why}", self.display_url);
                self.last_error = Some(why);
                self.close_link(ctx, CloseCode::Normal);
                self.fail_all(GatewayError::new(code_for_sessions), ctx);
            }
            None => self.link_lost(
                &format!(
                    "thoth closed the socket ({})",
                    code.map_or("no code".into(), |c| c.to_string())
                ),
                ctx,
            ),
        }
    }

    /// Forgets sessions whose ClientActor is gone, so the reference count
    /// cannot leak whatever path a client took out, and cuts off sessions
    /// whose browser stopped reading its results.
    fn sweep_clients(&mut self, ctx: &mut Context<Self>) {
        let stalled: Vec<Uuid> = self
            .sessions
            .iter_mut()
            .filter_map(|(id, slot)| {
                let (backlog, handled) = (slot.client.backlog(), slot.client.handled());
                slot.stall
                    .stalled(backlog, handled, CLIENT_STALL_TIMEOUT)
                    .then_some(*id)
            })
            .collect();
        for session_id in stalled {
            log::warn!(
                "thoth {}: session {session_id} has not read its results for {CLIENT_STALL_TIMEOUT:?}; cutting it off",
                self.display_url
            );
            if let Some(slot) = self.forget(&session_id) {
                self.cancel_upstream(&session_id, &slot, ctx);
                slot.client
                    .cut_off(UpstreamEvent::Failed(stalled_client_error()));
            }
            self.sessions_changed(ctx);
        }
        let dead = self.session_ids(|slot| !slot.client.connected());
        if dead.is_empty() {
            return;
        }
        for session_id in &dead {
            if let Some(slot) = self.forget(session_id) {
                self.cancel_upstream(session_id, &slot, ctx);
            }
        }
        log::info!(
            "thoth {}: swept {} session(s) whose client was gone (refCount {})",
            self.display_url,
            dead.len(),
            self.sessions.len()
        );
        self.sessions_changed(ctx);
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let Link::Open(socket) = &self.link else {
            return;
        };
        if socket.last_pong.elapsed() > PING_INTERVAL * MISSED_PONGS_ALLOWED + PING_INTERVAL / 2 {
            self.link_lost("two pings went unanswered", ctx);
            return;
        }
        self.send(WsMessage::Ping(Bytes::new()), ctx);
    }
}

/// What a session whose browser stopped reading is told (should it ever read
/// again): it went over the flow-control bound.
fn stalled_client_error() -> GatewayError {
    GatewayError::with_message(
        ErrorCode::RateLimited,
        "The browser is not reading transcription results; session closed",
    )
}

impl Actor for ThothUpstreamActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(PING_INTERVAL, |act, ctx| act.heartbeat(ctx));
        ctx.run_interval(DEAD_CLIENT_SWEEP_INTERVAL, |act, ctx| {
            act.sweep_clients(ctx)
        });
        self.set_link(Link::Down);
        monitor::publish_ref_count(&self.display_url, 0);
    }
}

impl Handler<Join> for ThothUpstreamActor {
    /// Mux answers at once; legacy once thoth accepted or refused the stream.
    type Result = Response<Result<AudioRoute, GatewayError>>;

    fn handle(&mut self, Join(msg): Join, ctx: &mut Context<Self>) -> Self::Result {
        if !self.is_mux() {
            return Response::fut(self.join_legacy(msg, ctx));
        }
        let replay = ReplayBuffer::new(msg.format, self.config.replay_max_secs);
        let route = AudioRoute::new(msg.session_id, Some(replay));
        self.sessions.insert(
            msg.session_id,
            SessionSlot {
                client: msg.client,
                format: msg.format,
                phase: Phase::Waiting,
                route: route.clone(),
                resuming: false,
                stall: StallWatch::new(),
            },
        );
        log::info!(
            "thoth {}: session {} subscribed (refCount {})",
            self.display_url,
            msg.session_id,
            self.sessions.len()
        );
        self.sessions_changed(ctx);
        match self.link {
            Link::Open(_) => self.start_session(msg.session_id, ctx),
            Link::Down => self.connect(ctx),
            Link::Connecting { .. } => {}
        }
        Response::reply(Ok(route))
    }
}

impl Handler<EndSession> for ThothUpstreamActor {
    type Result = ();

    fn handle(&mut self, msg: EndSession, ctx: &mut Context<Self>) {
        let Some(slot) = self.sessions.get_mut(&msg.session_id) else {
            return;
        };
        if slot.phase != Phase::Streaming {
            return;
        }
        slot.phase = Phase::Ending;
        let session_id = msg.session_id;
        if slot.resuming {
            return; // `session.end` follows the replay once the socket is back
        }
        if self.is_mux() {
            self.send_command(
                MuxCommand::End {
                    session_id: &session_id,
                },
                ctx,
            );
        } else {
            // Legacy thoth has no end-of-audio message: wait for a last window.
            ctx.run_later(self.config.legacy_flush_grace, move |act, ctx| {
                act.finish_session(session_id, UpstreamEvent::Done, ctx);
            });
        }
    }
}

impl Handler<Unsubscribe> for ThothUpstreamActor {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, ctx: &mut Context<Self>) {
        let Some(slot) = self.forget(&msg.session_id) else {
            return;
        };
        self.cancel_upstream(&msg.session_id, &slot, ctx);
        log::info!(
            "thoth {}: session {} unsubscribed (refCount {})",
            self.display_url,
            msg.session_id,
            self.sessions.len()
        );
        self.sessions_changed(ctx);
    }
}

impl StreamHandler<Inbound> for ThothUpstreamActor {
    fn handle(&mut self, item: Inbound, ctx: &mut Context<Self>) {
        let current = match &self.link {
            Link::Open(socket) => socket.generation,
            _ => return,
        };
        match item {
            Inbound::Frame(generation, _) | Inbound::Ended(generation) if generation != current => {
            }
            Inbound::Frame(_, Ok(frame)) => match frame {
                Frame::Text(text) => {
                    metrics::UPSTREAM_TO_GATEWAY.record(text.len());
                    match std::str::from_utf8(&text) {
                        Ok(text) => self.on_text(text, ctx),
                        Err(_) => log::warn!(
                            "thoth {}: skipping a non-UTF-8 text frame",
                            self.display_url
                        ),
                    }
                }
                Frame::Ping(payload) => self.send(WsMessage::Pong(payload), ctx),
                Frame::Pong(_) => {
                    if let Link::Open(socket) = &mut self.link {
                        socket.last_pong = Instant::now();
                    }
                }
                Frame::Close(reason) => self.on_close(reason, ctx),
                Frame::Binary(_) | Frame::Continuation(_) => {
                    log::debug!("thoth {}: skipping a binary frame", self.display_url)
                }
            },
            Inbound::Frame(_, Err(e)) => self.link_lost(&format!("protocol error: {e}"), ctx),
            Inbound::Ended(_) => self.link_lost("socket closed without a close frame", ctx),
        }
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {
        // A socket's stream ending is handled through `Inbound::Ended`; the
        // actor outlives its sockets.
    }
}

impl Handler<WriterFailed> for ThothUpstreamActor {
    type Result = ();

    fn handle(&mut self, msg: WriterFailed, ctx: &mut Context<Self>) {
        if matches!(&self.link, Link::Open(socket) if socket.generation == msg.generation) {
            self.link_lost(&msg.reason, ctx);
        }
    }
}

impl Handler<GetSnapshot> for ThothUpstreamActor {
    type Result = MessageResult<GetSnapshot>;

    fn handle(&mut self, _: GetSnapshot, _: &mut Context<Self>) -> Self::Result {
        let mut session_ids: Vec<Uuid> = self.sessions.keys().copied().collect();
        session_ids.sort();
        MessageResult(EndpointSnapshot {
            url: self.display_url.clone(),
            protocol: self.config.protocol,
            state: self.link.state().name(),
            ref_count: self.sessions.len(),
            session_ids,
            connected_since: match &self.link {
                Link::Open(socket) => Some(socket.since),
                _ => None,
            },
            reconnects: self.reconnects,
            last_error: self.last_error.clone(),
            last_refusal: self.last_refusal.clone(),
        })
    }
}
