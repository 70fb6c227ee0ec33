//! MistralUpstreamActor: one per Mistral session (PROTOCOL.md 4), holding a
//! socket of its own to Mistral's realtime endpoint, authenticated with the
//! user's own API key.
//!
//! A session goes: connect (`Authorization: Bearer <key>`, retried like
//! thoth on network errors) → wait for `session.created` → send
//! `session.update` with the browser's audio format → tell the ClientActor
//! [`Ready`](crate::upstream::UpstreamEvent::Ready) → relay audio as
//! `input_audio.append` → on `end`, `input_audio.flush` + `input_audio.end`
//! → Mistral's last segments and `transcription.done` → the last text no
//! segment delivered, then
//! [`DoneWithTranscript`](crate::upstream::UpstreamEvent::DoneWithTranscript);
//! the socket closes with 1000 and the actor stops. No text is lost on the
//! way (`transcript.rs`).
//!
//! **Pauses.** Mistral ends a session that gets no audio for about 30 s
//! (error 3804). The browser still holds its session, so that is no error:
//! the actor delivers what was pending, drops the socket, and opens a fresh
//! Mistral session when the next audio arrives (held, bounded, until it is
//! ready), its timestamps continuing after the audio already sent.
//!
//! **Partials.** Mistral's `transcription.text.delta` carries only the *new*
//! piece of text. The browser gets, as `transcription.partial`, the text of
//! the current segment so far (every delta since the last
//! `transcription.segment`, concatenated and trimmed): the same "whole
//! current hypothesis" meaning thoth's interim results have, so a frontend can
//! replace its interim line instead of appending to it.
//!
//! The key lives in a [`SecretString`](crate::store::SecretString) (wiped on
//! drop, never logged) for as long as the session does, since a pause may
//! need a fresh Mistral session.
//!
//! Files: `endpoint.rs` (where Mistral is, opening an authenticated socket),
//! `key.rs` (the user's stored key), `actor.rs` (the per-session actor, its
//! inbound half in `actor/inbound.rs`), `transcript.rs` (no-text-lost
//! bookkeeping), `sessions.rs` (per-user monitoring counts). Frames are
//! parsed and built only in [`crate::wire::mistral`].

mod actor;
mod endpoint;
mod key;
pub mod sessions;
pub mod transcript;

pub use actor::MistralUpstreamActor;
pub use endpoint::{
    connect_failure_error, open_mistral_socket, FromMistral, MistralEndpoint, WriterFailed,
    MAX_EVENT_BYTES,
};
pub use key::user_key;
