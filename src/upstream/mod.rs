//! Upstream side: the thoth pool and its ThothUpstreamActors, the per-session
//! MistralUpstreamActor, and the messages every upstream actor exchanges with
//! its ClientActors.
//!
//! A transcription travels `thoth/mux_actor.rs` or `mistral/actor/inbound.rs` (socket frame →
//! [`UpstreamEvent`]) → `session/client/upstream_events.rs` (event → browser frame).

pub mod audio_budget;
pub mod connect;
pub mod mistral;
pub mod thoth;
pub mod writer;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;
use uuid::Uuid;

use crate::audio::AudioFormat;
use crate::error::GatewayError;
use thoth::audio_route::AudioRoute;

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
    /// The same, from an upstream that knows the session's whole text
    /// (Mistral's `done.text`): `done` carries it instead of the joined finals.
    DoneWithTranscript(String),
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
    pub client: ClientHandle,
}

/// Events a session's ClientActor may have waiting before its browser counts
/// as stalled (it stopped reading, so its actor stopped running).
pub const MAX_CLIENT_BACKLOG: usize = 1024;

/// Events queued for a ClientActor, and how many it handled: shared by the
/// upstream (which queues) and the ClientActor (which handles).
#[derive(Default)]
pub struct EventCounts {
    backlog: AtomicUsize,
    handled: AtomicU64,
}

impl EventCounts {
    /// The ClientActor handled one event.
    pub fn handled_one(&self) {
        self.backlog.fetch_sub(1, Ordering::Relaxed);
        self.handled.fetch_add(1, Ordering::Relaxed);
    }
}

/// How an upstream reaches one session's ClientActor, with a bound on the
/// events waiting for it: `Addr::do_send` ignores mailbox capacity, so the
/// bound is kept here.
#[derive(Clone)]
pub struct ClientHandle {
    recipient: Recipient<ToClient>,
    counts: Arc<EventCounts>,
}

impl ClientHandle {
    /// The handle, and the counts the ClientActor updates per event handled.
    pub fn new(recipient: Recipient<ToClient>) -> (ClientHandle, Arc<EventCounts>) {
        let counts = Arc::new(EventCounts::default());
        (
            ClientHandle {
                recipient,
                counts: counts.clone(),
            },
            counts,
        )
    }

    /// Queues an event; `false` when the client is stalled (the event is not
    /// queued) — the caller then ends the session with [`Self::cut_off`].
    #[must_use]
    pub fn deliver(&self, event: UpstreamEvent) -> bool {
        let backlog = &self.counts.backlog;
        if backlog.fetch_add(1, Ordering::Relaxed) >= MAX_CLIENT_BACKLOG {
            backlog.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        self.send(event);
        true
    }

    fn send(&self, event: UpstreamEvent) {
        self.recipient.do_send(ToClient {
            event,
            sent: Instant::now(),
        });
    }

    /// The session's last event, queued past the bound (one more at most).
    pub fn cut_off(&self, event: UpstreamEvent) {
        self.counts.backlog.fetch_add(1, Ordering::Relaxed);
        self.send(event);
    }

    /// Events queued for the ClientActor and not handled yet.
    pub fn backlog(&self) -> usize {
        self.counts.backlog.load(Ordering::Relaxed)
    }

    /// Events the ClientActor handled so far.
    pub fn handled(&self) -> u64 {
        self.counts.handled.load(Ordering::Relaxed)
    }

    /// Whether the ClientActor still runs.
    pub fn connected(&self) -> bool {
        self.recipient.connected()
    }
}

/// A chunk of a session's audio, already in the upstream's encoding.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SessionAudio {
    pub session_id: Uuid,
    pub audio: Bytes,
    /// When the gateway received it from the browser (relay latency).
    pub received: Instant,
}

/// An [`UpstreamEvent`] on its way to a ClientActor, stamped when the
/// upstream handed it over (relay latency).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ToClient {
    pub event: UpstreamEvent,
    pub sent: Instant,
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

/// Where a ClientActor sends its session's audio.
#[derive(Clone)]
pub enum AudioSink {
    /// To the upstream actor's mailbox (Mistral: one actor per session).
    Actor(Recipient<SessionAudio>),
    /// Straight onto the shared thoth socket's writer (see `thoth/audio_route.rs`).
    Route(AudioRoute),
}

/// How a ClientActor talks to whichever upstream serves it.
#[derive(Clone)]
pub struct UpstreamLink {
    pub audio: AudioSink,
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
            audio: AudioSink::Actor(addr.clone().recipient()),
            end: addr.clone().recipient(),
            unsubscribe: addr.clone().recipient(),
        }
    }
}
