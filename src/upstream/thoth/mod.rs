//! The thoth upstream: the pool that hands sessions to endpoints, and the
//! actors that own each endpoint's socket(s).
//!
//! - `pool.rs`: the endpoints, and which one takes a new session.
//! - `mux_actor.rs`: the shared socket (mux) — start here to follow a frame.
//! - `legacy_actor.rs`: today's thoth, one session per socket, refusals.
//! - `actor.rs`: the ThothUpstreamActor both protocols share (session table,
//!   reference count, idle close, stall sweep, messages).
//! - `endpoint.rs`: an endpoint's configuration and the protocol hooks.
//! - `socket.rs`: the socket's lifecycle (connect, heartbeat, loss, close).
//! - `audio_route.rs`: a session's audio path straight to the socket writer.
//! - `resume.rs`, `stall.rs`, `monitor.rs`: resume decisions, the stall
//!   watch, the pool report and gauges — pure, unit-tested.

pub mod actor;
pub mod audio_route;
pub mod endpoint;
pub mod legacy_actor;
pub mod monitor;
pub mod mux_actor;
pub mod pool;
pub mod resume;
pub mod socket;
pub mod stall;

pub use actor::ThothUpstreamActor;
pub use legacy_actor::LegacyThothActor;
pub use monitor::EndpointSnapshot;
pub use mux_actor::MuxThothActor;
pub use pool::ThothPool;
