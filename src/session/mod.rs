//! The browser side: admission (auth, Origin, limits) and one upgrade path for
//! every WebSocket route, the browser-socket [`core`] both browser actors own,
//! one [`client::ClientActor`] per chronus session, and one
//! [`mistral_proxy::MistralProxyActor`] per native Mistral session.

pub mod admission;
pub mod client;
pub mod core;
pub mod fragments;
pub mod limits;
pub mod mistral_model;
pub mod mistral_proxy;
pub mod note_access;
pub mod note_sessions;
pub mod outbound;
pub mod paced;
pub mod rate;
pub mod routes;
pub mod session_clock;
