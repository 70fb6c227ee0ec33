//! What a thoth endpoint is: its configuration, and the hooks in which its
//! protocol (mux or legacy) differs, implemented by `mux_actor.rs` and
//! `legacy_actor.rs`.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use uuid::Uuid;

use super::actor::{SessionSlot, ThothUpstreamActor};
use super::audio_route::AudioRoute;
use super::monitor::Refusal;
use crate::audio::AudioFormat;
use crate::config::ThothProtocol;
use crate::error::{ErrorCode, GatewayError};
use crate::upstream::connect::{self, ConnectFailure};
use crate::upstream::Subscribe;

/// Everything a ThothUpstreamActor needs to know about its endpoint.
#[derive(Clone)]
pub struct ThothEndpointConfig {
    pub url: String,
    pub protocol: ThothProtocol,
    pub stream_token: Option<crate::store::SecretString>,
    pub tls: Arc<rustls::ClientConfig>,
    pub idle_close: Duration,
    pub retry_base: Duration,
    pub legacy_flush_grace: Duration,
    pub max_frame_bytes: usize,
    /// Mux resume: audio kept per session, in seconds.
    pub replay_max_secs: u64,
    /// Mux resume: how long sessions wait for the socket to come back.
    pub resume_timeout: Duration,
    /// Live bytes queued toward this endpoint's socket(s), kept by their
    /// writers and read lock-free by the pool's admission check.
    pub queued: Arc<crate::upstream::writer::QueueGauge>,
}

impl ThothEndpointConfig {
    /// The URL as shown in logs and monitoring, its secrets masked.
    pub fn display_url(&self) -> String {
        crate::store::redact::redact(&self.url)
    }
}

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
