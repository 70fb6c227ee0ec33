//! How one thoth session's audio reaches the shared socket: its ClientActor
//! frames the audio and queues it on the socket's writer itself, on its own
//! thread. The ThothUpstreamActor only opens and re-points the route (start,
//! resume, end), so live audio costs no mailbox round trip through the actor
//! that every session shares.
//!
//! The route also keeps the session's replay buffer (mux mode), filled with
//! every frame sent and trimmed by final results: while the socket is down
//! the route holds audio there, and a resume replays it before new audio.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use awc::ws::Message as WsMessage;
use bytes::Bytes;
use uuid::Uuid;

use super::resume::ReplayBuffer;
use crate::metrics;
use crate::upstream::writer::SocketWriter;
use crate::wire::thoth_mux as mux_frame;

/// What became of a chunk of audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routed {
    /// Queued toward thoth (and kept for a resume, in mux mode).
    Sent,
    /// Queued, but the socket's queue is congested: the session should stop
    /// reading its browser until [`AudioRoute::drained`].
    Congested,
    /// The socket is down: kept for the resume.
    Held,
    /// The socket is down for longer than the replay buffer holds: the
    /// session cannot be resumed without losing audio.
    Overflowed,
    /// The session is over upstream (its client hears why from the actor).
    Dropped,
}

/// The route's state, shared by the ClientActor (sending) and the upstream
/// actor (opening, re-pointing, trimming).
pub struct RouteState {
    writer: Option<SocketWriter>,
    replay: Option<ReplayBuffer>,
    /// The socket is down and the session waits to resume.
    holding: bool,
    closed: bool,
}

impl RouteState {
    /// Points the route at a socket; audio flows from now on.
    pub fn attach(&mut self, writer: SocketWriter) {
        if !self.closed {
            self.writer = Some(writer);
            self.holding = false;
        }
    }

    /// The socket is gone; audio is kept for the resume.
    pub fn hold(&mut self) {
        self.writer = None;
        self.holding = true;
    }

    /// The session is over upstream: audio is dropped from now on.
    pub fn close(&mut self) {
        self.writer = None;
        self.closed = true;
        self.replay = None;
    }

    pub fn replay(&self) -> Option<&ReplayBuffer> {
        self.replay.as_ref()
    }

    pub fn replay_mut(&mut self) -> Option<&mut ReplayBuffer> {
        self.replay.as_mut()
    }
}

/// One session's audio route. Cloning shares it.
#[derive(Clone)]
pub struct AudioRoute {
    session_id: Uuid,
    /// Mux frames carry the session id; legacy frames are the bare audio.
    mux: bool,
    state: Arc<Mutex<RouteState>>,
}

impl AudioRoute {
    /// A closed-off route (no socket yet). `replay` is `Some` in mux mode.
    pub fn new(session_id: Uuid, replay: Option<ReplayBuffer>) -> AudioRoute {
        AudioRoute {
            session_id,
            mux: replay.is_some(),
            state: Arc::new(Mutex::new(RouteState {
                writer: None,
                replay,
                holding: false,
                closed: false,
            })),
        }
    }

    /// The route's state, for the upstream actor. Holding the guard keeps
    /// the session's audio out, so what the actor queues meanwhile (a
    /// `session.start` and the replay) goes before it.
    pub fn lock(&self) -> MutexGuard<'_, RouteState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resolves once the socket's queue drained (see
    /// [`SocketWriter::drained`]); at once when the route has no socket.
    pub fn drained(&self) -> impl std::future::Future<Output = ()> + 'static {
        let writer = self.lock().writer.clone();
        async move {
            if let Some(writer) = writer {
                writer.drained().await;
            }
        }
    }

    /// Sends a chunk of audio (a whole number of samples, in thoth's
    /// encoding), stamped with when the browser's frame arrived.
    pub fn send(&self, audio: Bytes, received: Instant) -> Routed {
        // Copied before taking the lock, in mux mode: the copy is what the
        // replay keeps and what the writer frames. Exact-size, it does not
        // pin the browser socket's (larger) read buffer the way `audio` does.
        let audio = if self.mux {
            Bytes::copy_from_slice(&audio)
        } else {
            audio
        };
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.closed {
            return Routed::Dropped;
        }
        if let Some(replay) = state.replay.as_mut() {
            replay.push(audio.clone());
            if state.holding {
                return if replay.resumable() {
                    Routed::Held
                } else {
                    Routed::Overflowed
                };
            }
        }
        let Some(writer) = &state.writer else {
            return Routed::Dropped;
        };
        let sent = if self.mux {
            metrics::GATEWAY_TO_UPSTREAM.record(mux_frame::PREFIX_LEN + audio.len());
            writer.send_mux_audio(self.session_id, audio, received)
        } else {
            metrics::GATEWAY_TO_UPSTREAM.record(audio.len());
            writer.send_stamped(WsMessage::Binary(audio), Some(received))
        };
        match sent {
            Ok(()) if writer.congested() => Routed::Congested,
            Ok(()) => Routed::Sent,
            // The actor was told (stall) or will be (writer gone) and drops
            // the socket; the replay has this audio for the resume.
            Err(_) => Routed::Held,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{AudioFormat, Encoding};

    const FORMAT: AudioFormat = AudioFormat {
        encoding: Encoding::F32le,
        sample_rate: 16_000,
    };

    /// A mux route whose replay keeps `secs` of audio.
    fn mux_route(secs: u64) -> AudioRoute {
        AudioRoute::new(Uuid::from_u128(7), Some(ReplayBuffer::new(FORMAT, secs)))
    }

    /// 20 ms of f32le at 16 kHz.
    fn frame(fill: u8) -> Bytes {
        Bytes::from(vec![fill; 1280])
    }

    #[test]
    fn audio_without_a_socket_is_dropped_until_the_route_holds() {
        let route = mux_route(1);
        assert_eq!(route.send(frame(1), Instant::now()), Routed::Dropped);
        route.lock().hold();
        assert_eq!(route.send(frame(2), Instant::now()), Routed::Held);
    }

    #[test]
    fn held_audio_is_kept_in_order_for_the_replay() {
        let route = mux_route(1);
        route.lock().hold();
        for fill in 1..=3 {
            assert_eq!(route.send(frame(fill), Instant::now()), Routed::Held);
        }
        let state = route.lock();
        let kept: Vec<u8> = state.replay().unwrap().chunks().map(|c| c[0]).collect();
        assert_eq!(kept, vec![1, 2, 3]);
        assert!(state.replay().unwrap().chunks().all(|c| c.len() == 1280));
    }

    #[test]
    fn holding_longer_than_the_replay_buffer_overflows() {
        // One second is 50 frames of 20 ms; the 51st cannot be kept.
        let route = mux_route(1);
        route.lock().hold();
        for _ in 0..50 {
            assert_eq!(route.send(frame(0), Instant::now()), Routed::Held);
        }
        assert_eq!(route.send(frame(0), Instant::now()), Routed::Overflowed);
    }

    #[test]
    fn a_closed_route_drops_audio_and_keeps_nothing() {
        let route = mux_route(1);
        route.lock().hold();
        route.send(frame(1), Instant::now());
        route.lock().close();
        assert_eq!(route.send(frame(2), Instant::now()), Routed::Dropped);
        assert!(route.lock().replay().is_none());
    }

    #[test]
    fn the_replay_keeps_a_compact_copy_not_the_callers_buffer() {
        // The browser's audio is a slice of its socket's read buffer; the
        // replay must not keep that buffer alive.
        let big = Bytes::from(vec![9u8; 64 * 1024]);
        let audio = big.slice(0..1280);
        let route = mux_route(1);
        route.lock().hold();
        route.send(audio, Instant::now());
        let state = route.lock();
        let kept = state.replay().unwrap().chunks().next().unwrap().clone();
        let big_range = big.as_ptr() as usize..big.as_ptr() as usize + big.len();
        assert!(!big_range.contains(&(kept.as_ptr() as usize)));
        assert_eq!(&kept[..], &[9u8; 1280][..]);
    }
}
