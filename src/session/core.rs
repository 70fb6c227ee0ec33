//! The browser-socket core both browser actors own ([`BrowserSocket`] plus the
//! [`BrowserSession`] trait): one timer for heartbeat, idle timeout, token
//! expiry and `MAX_SESSION_SECS`; fragment reassembly and the UTF-8 check;
//! the outbound byte bound; drain on SIGTERM; report/close with the error
//! envelope; the session metrics. The actors keep only what differs.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web_actors::ws;
use bytes::Bytes;

use crate::error::{ErrorCode, GatewayError};
use crate::metrics;
use crate::session::admission::validate_refresh;
use crate::session::fragments::{FrameFault, Reassembler};
use crate::session::outbound::OutboundQueue;
use crate::session::session_clock::SessionClock;
use crate::state::AppState;
use crate::wire::browser::ErrorDialect;

/// The gateway pings the browser this often…
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(20);
/// …and drops it when nothing at all was heard for this long (dead TCP).
pub const CLIENT_SILENCE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a browser actor is created with, besides its own concerns.
pub struct BrowserSocketSettings {
    /// How logs name the session, e.g. `session <id>`.
    pub log_name: String,
    /// The session id as sent in envelopes.
    pub id_text: String,
    pub user: String,
    /// The `provider` label of the session metrics.
    pub metrics_label: &'static str,
    /// The token's `exp` at connect.
    pub token_exp: u64,
    /// Which clients read the gateway's error envelopes.
    pub dialect: ErrorDialect,
    pub state: Arc<AppState>,
    /// Bytes the server took from the response stream (the outbound bound).
    pub taken: Arc<AtomicUsize>,
}

/// The state of one browser WebSocket, whatever protocol it speaks.
pub struct BrowserSocket {
    pub log_name: String,
    pub id_text: String,
    pub user: String,
    metrics_label: &'static str,
    dialect: ErrorDialect,
    pub state: Arc<AppState>,
    /// When the session must end: `MAX_SESSION_SECS`, and the token's `exp`
    /// under `SESSION_TOKEN_CHECK=continuous` (moves with a refresh).
    clock: SessionClock,
    started: Instant,
    /// When any frame was last heard (the heartbeat's silence check).
    pub last_heard: Instant,
    /// When the browser last sent data that keeps it from idling out.
    pub last_activity: Instant,
    /// When the browser is pinged next.
    next_ping: Instant,
    /// The one timer a session has: expiry, idle timeout and heartbeat share
    /// it (each timer is polled on every wake-up of the session, and costs
    /// memory for every held session).
    tick: Option<SpawnHandle>,
    fragments: Reassembler,
    /// Frames written to the browser and not yet taken by the server.
    outbound: OutboundQueue,
    /// An error or the end was sent, or the browser left: write nothing more.
    closed: bool,
}

impl BrowserSocket {
    pub fn new(settings: BrowserSocketSettings) -> Self {
        let now = Instant::now();
        BrowserSocket {
            clock: SessionClock::new(&settings.state.config.chronus, settings.token_exp, now),
            log_name: settings.log_name,
            id_text: settings.id_text,
            user: settings.user,
            metrics_label: settings.metrics_label,
            dialect: settings.dialect,
            state: settings.state,
            started: now,
            last_heard: now,
            last_activity: now,
            next_ping: now + HEARTBEAT_INTERVAL,
            tick: None,
            fragments: Reassembler::default(),
            outbound: OutboundQueue::new(settings.taken),
            closed: false,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }
}

/// A browser actor: owns a [`BrowserSocket`] and says only what differs.
pub trait BrowserSession: Actor<Context = ws::WebsocketContext<Self>> {
    fn socket(&self) -> &BrowserSocket;
    fn socket_mut(&mut self) -> &mut BrowserSocket;
    /// A whole text or binary message (fragments joined, UTF-8 checked).
    fn on_message(&mut self, message: ws::Message, ctx: &mut ws::WebsocketContext<Self>);
    /// The session is closing: let the upstream go now rather than at stop.
    fn release_upstream(&mut self) {}
    /// The browser asked to end and waits for the last results: a drain
    /// gives it the grace period.
    fn finishing(&self) -> bool;
    /// Whether the idle timeout is paused now.
    fn idle_paused(&self) -> bool {
        self.finishing()
    }
    /// Each heartbeat, after the browser was pinged.
    fn on_heartbeat(&mut self) {}
    /// The close frame answering the browser's own close.
    fn close_reply(&self) -> Option<ws::CloseReason> {
        Some(ws::CloseCode::Normal.into())
    }

    // ---- writing to the browser ------------------------------------------

    /// Counts a frame toward the browser's write queue; a browser that
    /// stopped reading (queue over its bound) ends the session instead.
    fn browser_keeps_up(&mut self, len: usize, ctx: &mut ws::WebsocketContext<Self>) -> bool {
        let socket = self.socket_mut();
        if socket.outbound.push(len) {
            metrics::GATEWAY_TO_CLIENT.record(len);
            return true;
        }
        log::warn!(
            "{}: browser not reading ({} bytes waiting); closing",
            socket.log_name,
            socket.outbound.queued()
        );
        self.drop_browser(ctx);
        false
    }

    fn send_text(&mut self, text: String, ctx: &mut ws::WebsocketContext<Self>) {
        if self.browser_keeps_up(text.len(), ctx) {
            ctx.text(text);
        }
    }

    fn send_binary(&mut self, data: Bytes, ctx: &mut ws::WebsocketContext<Self>) {
        if self.browser_keeps_up(data.len(), ctx) {
            ctx.binary(data);
        }
    }

    // ---- ending ------------------------------------------------------------

    /// Sends the error envelope; closes the session when the code says so.
    fn report(&mut self, error: GatewayError, ctx: &mut ws::WebsocketContext<Self>) {
        let socket = self.socket();
        if socket.closed {
            return;
        }
        metrics::count_session_error(error.code);
        let envelope = error.envelope_in(socket.dialect, Some(&socket.id_text));
        self.send_text(envelope, ctx);
        if self.socket().closed {
            return;
        }
        if let Some(code) = error.code.close_code() {
            log::info!(
                "{}: closing with {} ({code})",
                self.socket().log_name,
                error.for_log()
            );
            self.close(code, error.code.as_str(), ctx);
        }
    }

    /// Closes the browser's socket with `code`.
    fn close(&mut self, code: u16, description: &str, ctx: &mut ws::WebsocketContext<Self>) {
        self.socket_mut().closed = true;
        self.release_upstream();
        ctx.close(Some(ws::CloseReason {
            code: ws::CloseCode::from(code),
            description: Some(description.to_string()),
        }));
        ctx.stop();
    }

    /// Ends the session without a close frame (the browser is gone or stuck).
    fn drop_browser(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        self.socket_mut().closed = true;
        self.release_upstream();
        ctx.stop();
    }

    /// The gateway is shutting down. A session waiting for its last results
    /// gets the grace period; every other one is told now.
    fn drain(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if self.finishing() {
            let grace = self.socket().state.config.shutdown_grace;
            ctx.run_later(grace, |act, ctx| {
                act.report(GatewayError::new(ErrorCode::ServerShuttingDown), ctx)
            });
        } else {
            self.report(GatewayError::new(ErrorCode::ServerShuttingDown), ctx);
        }
    }

    /// Replaces the session's token (same user) so it outlives the first one.
    fn refresh_token(&mut self, token: &str, ctx: &mut ws::WebsocketContext<Self>) {
        let socket = self.socket_mut();
        match validate_refresh(&socket.state.jwt, &socket.user, token) {
            Ok(claims) => {
                log::info!("{}: token refreshed", socket.log_name);
                socket.clock.token_refreshed(claims.exp);
                self.schedule_tick(ctx);
            }
            Err(error) => self.report(error, ctx),
        }
    }

    // ---- the one timer -----------------------------------------------------

    /// Arms the session's timer for its next deadline: expiry, idle timeout
    /// (unless paused) or heartbeat.
    fn schedule_tick(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let idle_paused = self.idle_paused();
        let socket = self.socket_mut();
        if let Some(timer) = socket.tick.take() {
            ctx.cancel_future(timer);
        }
        let mut next = socket.clock.next_deadline().min(socket.next_ping);
        if !idle_paused {
            next = next.min(socket.last_activity + socket.state.config.idle_timeout);
        }
        let delay = next.saturating_duration_since(Instant::now());
        socket.tick = Some(ctx.run_later(delay, |act, ctx| {
            act.socket_mut().tick = None;
            act.on_tick(ctx);
        }));
    }

    fn on_tick(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let now = Instant::now();
        let idle_paused = self.idle_paused();
        let socket = self.socket_mut();
        if let Some(code) = socket.clock.expired(now) {
            return self.report(GatewayError::new(code), ctx);
        }
        let idle_limit = socket.state.config.idle_timeout;
        if !idle_paused && now.duration_since(socket.last_activity) >= idle_limit {
            return self.report(GatewayError::new(ErrorCode::IdleTimeout), ctx);
        }
        if now >= socket.next_ping {
            if now.duration_since(socket.last_heard) > CLIENT_SILENCE_TIMEOUT {
                log::info!("{}: client silent for too long, dropping", socket.log_name);
                return self.drop_browser(ctx);
            }
            socket.next_ping = now + HEARTBEAT_INTERVAL;
            ctx.ping(b"");
            self.on_heartbeat();
        }
        self.schedule_tick(ctx);
    }

    // ---- frames from the browser -------------------------------------------

    /// Starts the timer, counts the session and listens for the drain.
    fn start_socket(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        metrics::SESSIONS_ACTIVE
            .with_label_values(&[self.socket().metrics_label])
            .inc();
        self.schedule_tick(ctx);
        let mut shutdown = self.socket().state.shutdown.clone();
        ctx.spawn(
            async move {
                // An error means the gateway itself is gone: drain as well.
                let _ = shutdown.wait_for(|draining| *draining).await;
            }
            .into_actor(self)
            .map(|_, act, ctx| act.drain(ctx)),
        );
    }

    /// Counts the session's end; call from `stopped`.
    fn stop_socket(&mut self) {
        self.release_upstream();
        let socket = self.socket();
        metrics::SESSIONS_ACTIVE
            .with_label_values(&[socket.metrics_label])
            .dec();
        metrics::SESSION_DURATION
            .with_label_values(&[socket.metrics_label])
            .observe(socket.started.elapsed().as_secs_f64());
    }

    /// Every item of the browser's frame stream goes through here.
    fn on_browser_item(
        &mut self,
        item: Result<ws::Message, ws::ProtocolError>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        self.socket_mut().last_heard = Instant::now();
        if self.socket().closed {
            return;
        }
        match item {
            Ok(frame) => self.on_frame(frame, ctx),
            Err(e) => match FrameFault::of_protocol_error(&e) {
                Some(fault) => self.on_frame_fault(fault, ctx),
                None => {
                    log::info!(
                        "{}: protocol error from client: {e}",
                        self.socket().log_name
                    );
                    self.drop_browser(ctx);
                }
            },
        }
    }

    /// The browser's TCP stream ended (maybe without a close frame).
    fn on_browser_finished(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        self.drop_browser(ctx);
    }

    fn on_frame(&mut self, frame: ws::Message, ctx: &mut ws::WebsocketContext<Self>) {
        let data_len = match &frame {
            ws::Message::Text(text) => Some(text.len()),
            ws::Message::Binary(data) => Some(data.len()),
            _ => None,
        };
        if let Some(len) = data_len {
            metrics::CLIENT_TO_GATEWAY.record(len);
            return self.on_message(frame, ctx);
        }
        match frame {
            ws::Message::Continuation(item) => self.on_fragment(item, ctx),
            ws::Message::Ping(payload) => ctx.pong(&payload),
            ws::Message::Close(_) => {
                log::info!("{}: client closed", self.socket().log_name);
                self.socket_mut().closed = true;
                self.release_upstream();
                ctx.close(self.close_reply());
                ctx.stop();
            }
            ws::Message::Text(_) | ws::Message::Binary(_) => {}
            ws::Message::Pong(_) | ws::Message::Nop => {}
        }
    }

    /// Reassembles a fragmented message, bounded by `MAX_FRAME_BYTES` in all.
    fn on_fragment(&mut self, item: actix_http::ws::Item, ctx: &mut ws::WebsocketContext<Self>) {
        let socket = self.socket_mut();
        let max_frame_bytes = socket.state.config.max_frame_bytes;
        match socket.fragments.push(item, max_frame_bytes) {
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
            if !self.socket().closed {
                self.close(code, description, ctx);
            }
        }
    }
}
