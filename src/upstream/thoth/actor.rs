//! ThothUpstreamActor: owns one thoth endpoint's socket and every session on
//! it. This file: the session table, the reference count and idle close,
//! the stall sweep and the messages; `socket.rs`: the socket's lifecycle
//! (connect, heartbeat, reconnect, close, what arrives on it).
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
use std::time::Duration;

use actix::prelude::*;
use awc::ws::CloseCode;
use uuid::Uuid;

use super::audio_route::AudioRoute;
use super::monitor::{self, EndpointSnapshot, GetSnapshot};
use super::stall::{StallWatch, CLIENT_STALL_TIMEOUT};
use crate::audio::AudioFormat;
use crate::error::{ErrorCode, GatewayError};
use crate::upstream::{ClientHandle, EndSession, Subscribe, Unsubscribe, UpstreamEvent};

use super::endpoint::{EndpointProtocol, ThothEndpointConfig};
use super::socket::{ThothSocket, PING_INTERVAL};

/// How often sessions whose ClientActor died without unsubscribing (e.g. it
/// stopped while its subscription was in flight) are swept out.
const DEAD_CLIENT_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

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

/// A session joins this endpoint. The answer is its audio route; the actor
/// later sends [`UpstreamEvent::Ready`] or [`UpstreamEvent::Failed`].
#[derive(Message)]
#[rtype(result = "Result<AudioRoute, GatewayError>")]
pub struct Join(pub Subscribe);

/// Owns one thoth endpoint's socket(s) and the sessions subscribed to it.
pub struct ThothUpstreamActor<P: EndpointProtocol> {
    pub(super) config: ThothEndpointConfig,
    pub(super) display_url: String,
    pub(super) sessions: HashMap<Uuid, SessionSlot>,
    /// Shared with the pool, which reads it to pick an endpoint.
    pub(super) ref_count: Arc<AtomicUsize>,
    pub(super) link: ThothSocket,
    pub(super) generation: u64,
    pub(super) idle_timer: Option<SpawnHandle>,
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
            link: ThothSocket::Down,
            generation: 0,
            idle_timer: None,
            reconnects: 0,
            lost_unexpectedly: false,
            last_error: None,
        }
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
        if matches!(self.link, ThothSocket::Down) || self.idle_timer.is_some() {
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

    /// Forgets sessions whose ClientActor is gone, so the reference count
    /// cannot leak whatever path a client took out, and cuts off sessions
    /// whose browser stopped reading its results.
    pub(super) fn sweep_clients(&mut self, ctx: &mut Context<Self>) {
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
        self.set_link(ThothSocket::Down);
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
                ThothSocket::Open(socket) => Some(socket.since),
                _ => None,
            },
            reconnects: self.reconnects,
            last_error: self.last_error.clone(),
            last_refusal: self.protocol.last_refusal(),
        })
    }
}
