//! ThothUpstreamActor: owns one thoth endpoint's socket and every session on
//! it — the socket's lifecycle (connect, heartbeat, close), reconnect, the
//! reference count and idle close, the session table and the stall sweep.
//! What differs between thoth's two protocols is an [`EndpointProtocol`]:
//! [`super::mux_actor::Mux`] (PROTOCOL.md 3.1, every session on one shared
//! socket) and [`super::legacy_actor::Legacy`] (3.2, one session at a time on
//! a socket of its own), so each protocol is its own actor type,
//! `ThothUpstreamActor<Mux>` or `ThothUpstreamActor<Legacy>`.
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
use super::stall::{StallWatch, CLIENT_STALL_TIMEOUT};
use crate::audio::AudioFormat;
use crate::config::ThothProtocol;
use crate::error::{ErrorCode, GatewayError};
use crate::metrics;
use crate::upstream::connect::{self, ConnectFailure, WsTarget};
use crate::upstream::writer::{SendFailure, SocketWriter, WriterPolicy};
use crate::upstream::{ClientHandle, EndSession, Subscribe, Unsubscribe, UpstreamEvent};

/// What differs between thoth's two protocols. The actor calls these hooks
/// where the protocol decides; `Self` is the protocol's own state.
pub trait EndpointProtocol: Sized + Unpin + 'static {
    /// The subprotocol the handshake asks for.
    const SUBPROTOCOL: Option<&'static str>;

    fn new(config: &ThothEndpointConfig) -> Self;

    /// How long a socket without sessions stays open.
    fn idle_close(config: &ThothEndpointConfig) -> Duration;

    /// A session joins; the answer is its audio route.
    fn join(
        act: &mut ThothUpstreamActor<Self>,
        msg: Subscribe,
        ctx: &mut Context<ThothUpstreamActor<Self>>,
    ) -> Response<Result<AudioRoute, GatewayError>>;

    /// The handshake of socket `generation` succeeded.
    fn connected(
        act: &mut ThothUpstreamActor<Self>,
        generation: u64,
        connected: connect::Connected,
        ctx: &mut Context<ThothUpstreamActor<Self>>,
    );

    /// A connection attempt failed: true when the protocol tries again.
    fn retry_connect(
        act: &mut ThothUpstreamActor<Self>,
        failure: &ConnectFailure,
        ctx: &mut Context<ThothUpstreamActor<Self>>,
    ) -> bool;

    /// What every session hears when the endpoint cannot be reached.
    fn connect_error(act: &mut ThothUpstreamActor<Self>, failure: &ConnectFailure) -> GatewayError {
        let _ = act;
        match failure {
            ConnectFailure::Refused(_) => GatewayError::new(ErrorCode::AuthFailed),
            _ => GatewayError::new(ErrorCode::ThothUnavailable),
        }
    }

    /// Tells thoth a session starts (its audio follows).
    fn start_upstream(
        act: &mut ThothUpstreamActor<Self>,
        session_id: Uuid,
        format: AudioFormat,
        ctx: &mut Context<ThothUpstreamActor<Self>>,
    );

    /// Tells thoth to discard a session it was told of.
    fn cancel_upstream(
        act: &mut ThothUpstreamActor<Self>,
        session_id: &Uuid,
        slot: &SessionSlot,
        ctx: &mut Context<ThothUpstreamActor<Self>>,
    );

    /// The browser sent `end` for a streaming session.
    fn end(
        act: &mut ThothUpstreamActor<Self>,
        session_id: Uuid,
        ctx: &mut Context<ThothUpstreamActor<Self>>,
    );

    /// The socket was lost and closed; its sessions are still held.
    fn socket_lost(act: &mut ThothUpstreamActor<Self>, ctx: &mut Context<ThothUpstreamActor<Self>>);

    /// A text frame from thoth.
    fn on_text(
        act: &mut ThothUpstreamActor<Self>,
        text: &str,
        ctx: &mut Context<ThothUpstreamActor<Self>>,
    );

    /// Thoth closed the socket with `code`.
    fn closed_with(act: &mut ThothUpstreamActor<Self>, code: Option<u16>) {
        let _ = (act, code);
    }

    /// A session is being forgotten.
    fn forgetting(&mut self, session_id: &Uuid) {
        let _ = session_id;
    }

    /// Every session is about to end with `error`.
    fn failing_all(act: &mut ThothUpstreamActor<Self>, error: &GatewayError) {
        let _ = (act, error);
    }

    /// The last refused handshake, for the pool report.
    fn last_refusal(&self) -> Option<Refusal> {
        None
    }
}

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
pub enum Phase {
    /// Subscribed; waiting for the socket to open.
    Waiting,
    /// Started upstream; audio flows.
    Streaming,
    /// `end` sent; waiting for the last results and `done`.
    Ending,
}

/// One session held by the endpoint.
pub struct SessionSlot {
    pub client: ClientHandle,
    pub format: AudioFormat,
    pub phase: Phase,
    /// The session's audio path to the socket; in mux mode it also keeps
    /// the audio since the last final result, for resuming.
    pub route: AudioRoute,
    /// Mux only: the socket dropped and this session waits to be re-opened.
    pub resuming: bool,
    /// Watches the client's event backlog for a browser that stopped reading.
    pub stall: StallWatch,
}

impl SessionSlot {
    /// A session waiting for its socket.
    pub fn waiting(msg: Subscribe, route: AudioRoute) -> SessionSlot {
        SessionSlot {
            client: msg.client,
            format: msg.format,
            phase: Phase::Waiting,
            route,
            resuming: false,
            stall: StallWatch::new(),
        }
    }
}

/// An open socket: a bounded writer task and a reader stream on this actor.
pub struct OpenSocket {
    generation: u64,
    /// Queues frames for the writer task; sessions' routes hold clones.
    writer: SocketWriter,
    reader: SpawnHandle,
    /// Owns the socket's write half; aborted if it cannot finish closing.
    writer_task: actix_rt::task::JoinHandle<()>,
    since: DateTime<Utc>,
    last_pong: Instant,
}

/// The endpoint's socket.
pub enum Link {
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
pub enum Inbound {
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
pub struct ThothUpstreamActor<P: EndpointProtocol> {
    pub(super) config: ThothEndpointConfig,
    pub(super) display_url: String,
    pub(super) sessions: HashMap<Uuid, SessionSlot>,
    /// Shared with the pool, which reads it to pick an endpoint.
    ref_count: Arc<AtomicUsize>,
    pub(super) link: Link,
    generation: u64,
    idle_timer: Option<SpawnHandle>,
    pub(super) reconnects: u64,
    pub(super) lost_unexpectedly: bool,
    pub(super) last_error: Option<String>,
    /// The protocol's own state.
    pub(super) protocol: P,
}

impl<P: EndpointProtocol> ThothUpstreamActor<P> {
    pub fn new(config: ThothEndpointConfig, ref_count: Arc<AtomicUsize>) -> Self {
        let display_url = config.display_url();
        ThothUpstreamActor {
            protocol: P::new(&config),
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
        }
    }

    /// Whether the open socket is the one of `generation`.
    pub(super) fn socket_is(&self, generation: u64) -> bool {
        matches!(&self.link, Link::Open(socket) if socket.generation == generation)
    }

    pub(super) fn session_ids(&self, wanted: impl Fn(&SessionSlot) -> bool) -> Vec<Uuid> {
        self.sessions
            .iter()
            .filter(|(_, slot)| wanted(slot))
            .map(|(id, _)| *id)
            .collect()
    }

    // ---- reference count ------------------------------------------------

    /// Publishes the reference count after every change and arms the idle
    /// close when it reaches zero.
    pub(super) fn sessions_changed(&mut self, ctx: &mut Context<Self>) {
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
        let delay = P::idle_close(&self.config);
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

    pub(super) fn set_link(&mut self, link: Link) {
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
            subprotocol: P::SUBPROTOCOL,
            headers,
            // Room for the 16-byte session prefix on top of a full browser frame.
            max_frame_bytes: self.config.max_frame_bytes + 64,
            tls: self.config.tls.clone(),
        }
    }

    pub(super) fn connect(&mut self, ctx: &mut Context<Self>) {
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
        match result {
            Ok(connected) => P::connected(self, generation, connected, ctx),
            Err(failure) => self.on_connect_failure(failure, ctx),
        }
    }

    fn on_connect_failure(&mut self, failure: ConnectFailure, ctx: &mut Context<Self>) {
        self.last_error = Some(failure.to_string());
        self.set_link(Link::Down);
        if P::retry_connect(self, &failure, ctx) {
            return;
        }
        let error = P::connect_error(self, &failure);
        log::error!("thoth {}: giving up: {failure}", self.display_url);
        self.fail_all(error, ctx);
    }

    /// Splits the socket: a writer task drains a queue into it (batching
    /// frames per flush), the reader stream is attached to this actor.
    pub(super) fn open_socket(
        &mut self,
        generation: u64,
        framed: connect::WsFramed,
        ctx: &mut Context<Self>,
    ) {
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
    pub(super) fn writer(&self) -> Option<&SocketWriter> {
        match &self.link {
            Link::Open(socket) => Some(&socket.writer),
            _ => None,
        }
    }

    /// Queues a frame toward thoth. A queue over its bound means thoth stopped
    /// reading: the socket is given up rather than grown without limit.
    pub(super) fn send(&mut self, message: WsMessage, ctx: &mut Context<Self>) {
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

    pub(super) fn start_session(&mut self, session_id: Uuid, ctx: &mut Context<Self>) {
        let Some(slot) = self.sessions.get_mut(&session_id) else {
            return;
        };
        slot.phase = Phase::Streaming;
        let (format, route) = (slot.format, slot.route.clone());
        P::start_upstream(self, session_id, format, ctx);
        // After `session.start` in the queue: the session's audio follows it.
        if let Some(writer) = self.writer() {
            route.lock().attach(writer.clone());
        }
        self.notify(session_id, UpstreamEvent::Ready, ctx);
    }

    /// Delivers an event to a session's client. A client too far behind (its
    /// browser stopped reading, so its actor stopped running) is cut off
    /// instead of queued for without bound.
    pub(super) fn notify(
        &mut self,
        session_id: Uuid,
        event: UpstreamEvent,
        ctx: &mut Context<Self>,
    ) {
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
    pub(super) fn forget(&mut self, session_id: &Uuid) -> Option<SessionSlot> {
        self.protocol.forgetting(session_id);
        let slot = self.sessions.remove(session_id)?;
        slot.route.lock().close();
        Some(slot)
    }

    fn cancel_upstream(&mut self, session_id: &Uuid, slot: &SessionSlot, ctx: &mut Context<Self>) {
        P::cancel_upstream(self, session_id, slot, ctx);
    }

    // ---- ending ---------------------------------------------------------

    /// Ends one session and tells its client how.
    pub(super) fn finish_session(
        &mut self,
        session_id: Uuid,
        event: UpstreamEvent,
        ctx: &mut Context<Self>,
    ) {
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
    pub(super) fn fail_all(&mut self, error: GatewayError, ctx: &mut Context<Self>) {
        P::failing_all(self, &error);
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

    pub(super) fn close_link(&mut self, ctx: &mut Context<Self>, code: CloseCode) {
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

    /// The socket died under us (closed, errored, stalled, no pongs): the
    /// protocol decides what becomes of its sessions.
    pub(super) fn link_lost(&mut self, reason: &str, ctx: &mut Context<Self>) {
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
        P::socket_lost(self, ctx);
    }

    // ---- receiving ------------------------------------------------------

    fn on_close(&mut self, reason: Option<CloseReason>, ctx: &mut Context<Self>) {
        let code = reason.as_ref().map(|r| u16::from(r.code));
        let error = match code {
            Some(1013) => Some(ErrorCode::ThothBusy),
            Some(4401) | Some(4403) => Some(ErrorCode::AuthFailed),
            _ => None,
        };
        P::closed_with(self, code);
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
pub(super) fn stalled_client_error() -> GatewayError {
    GatewayError::with_message(
        ErrorCode::RateLimited,
        "The browser is not reading transcription results; session closed",
    )
}

impl<P: EndpointProtocol> Actor for ThothUpstreamActor<P> {
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

impl<P: EndpointProtocol> Handler<Join> for ThothUpstreamActor<P> {
    /// Mux answers at once; legacy once thoth accepted or refused the stream.
    type Result = Response<Result<AudioRoute, GatewayError>>;

    fn handle(&mut self, Join(msg): Join, ctx: &mut Context<Self>) -> Self::Result {
        P::join(self, msg, ctx)
    }
}

impl<P: EndpointProtocol> Handler<EndSession> for ThothUpstreamActor<P> {
    type Result = ();

    fn handle(&mut self, msg: EndSession, ctx: &mut Context<Self>) {
        let Some(slot) = self.sessions.get_mut(&msg.session_id) else {
            return;
        };
        if slot.phase != Phase::Streaming {
            return;
        }
        slot.phase = Phase::Ending;
        if slot.resuming {
            return; // `session.end` follows the replay once the socket is back
        }
        P::end(self, msg.session_id, ctx);
    }
}

impl<P: EndpointProtocol> Handler<Unsubscribe> for ThothUpstreamActor<P> {
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

impl<P: EndpointProtocol> StreamHandler<Inbound> for ThothUpstreamActor<P> {
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
                        Ok(text) => P::on_text(self, text, ctx),
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

impl<P: EndpointProtocol> Handler<WriterFailed> for ThothUpstreamActor<P> {
    type Result = ();

    fn handle(&mut self, msg: WriterFailed, ctx: &mut Context<Self>) {
        if matches!(&self.link, Link::Open(socket) if socket.generation == msg.generation) {
            self.link_lost(&msg.reason, ctx);
        }
    }
}

impl<P: EndpointProtocol> Handler<GetSnapshot> for ThothUpstreamActor<P> {
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
            last_refusal: self.protocol.last_refusal(),
        })
    }
}
