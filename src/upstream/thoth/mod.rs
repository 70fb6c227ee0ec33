//! The thoth upstream: the pool that hands sessions to endpoints, and the
//! actors that own each endpoint's socket(s).

pub mod actor;
pub mod audio_route;
pub mod legacy_actor;
pub mod monitor;
pub mod mux_actor;
pub mod pool;
pub mod resume;
pub mod stall;

pub use actor::ThothUpstreamActor;
pub use legacy_actor::LegacyThothActor;
pub use monitor::EndpointSnapshot;
pub use mux_actor::MuxThothActor;
pub use pool::ThothPool;
