//! Upstream side: the thoth pool and its ThothUpstreamActors, the per-session
//! MistralUpstreamActor, and the messages every upstream actor exchanges with
//! its ClientActors.
//!
//! A transcription travels `thoth.rs` or `mistral.rs` (socket frame →
//! [`UpstreamEvent`]) → `gateway/client.rs` (event → browser frame).

pub mod connect;
pub mod mistral;
pub mod mistral_sessions;
pub mod mux_frame;
pub mod pool;
pub mod socket;
pub mod thoth;

use actix::prelude::*;
use bytes::Bytes;
use uuid::Uuid;

use crate::audio::AudioFormat;
use crate::error::GatewayError;

/// What an upstream tells one session's ClientActor.
#[derive(Debug, Clone, PartialEq, Message)]
#[rtype(result = "()")]
pub enum UpstreamEvent {
    /// The upstream can take this session's audio.
    Ready,
    /// A result; `is_final` decides `transcription` vs `transcription.partial`.
    Transcript {
        text: String,
        is_final: bool,
        start: Option<f64>,
        end: Option<f64>,
    },
    /// The upstream delivered everything after `end`.
    Done,
    /// A non-fatal notice (e.g. `THOTH_RECONNECTING`); the session goes on.
    Notice(GatewayError),
    /// The session is over on the upstream's side.
    Failed(GatewayError),
}

/// A session joins an upstream. The answer says whether it was accepted; the
/// upstream later sends [`UpstreamEvent::Ready`] or [`UpstreamEvent::Failed`].
#[derive(Message)]
#[rtype(result = "Result<(), GatewayError>")]
pub struct Subscribe {
    pub session_id: Uuid,
    pub format: AudioFormat,
    pub client: Recipient<UpstreamEvent>,
}

/// A chunk of a session's audio, already in the upstream's encoding.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionAudio {
    pub session_id: Uuid,
    pub audio: Bytes,
}

/// The browser sent `end`: flush and finish.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EndSession {
    pub session_id: Uuid,
}

/// The session is gone (client closed, failed, or finished): forget it and
/// cancel it upstream if it was still open. Idempotent.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub session_id: Uuid,
}

/// How a ClientActor talks to whichever upstream serves it.
#[derive(Clone)]
pub struct UpstreamLink {
    pub audio: Recipient<SessionAudio>,
    pub end: Recipient<EndSession>,
    pub unsubscribe: Recipient<Unsubscribe>,
}

impl UpstreamLink {
    pub fn of<A>(addr: &Addr<A>) -> UpstreamLink
    where
        A: Actor<Context = Context<A>>
            + Handler<SessionAudio>
            + Handler<EndSession>
            + Handler<Unsubscribe>,
    {
        UpstreamLink {
            audio: addr.clone().recipient(),
            end: addr.clone().recipient(),
            unsubscribe: addr.clone().recipient(),
        }
    }
}
