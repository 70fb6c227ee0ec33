//! chronus-gateway: the authenticated WebSocket gateway between the chronus
//! web app and its speech-to-text backends (thoth, Mistral Voxtral realtime).
//!
//! `lib.rs` only wires modules together so that tests and `main.rs` start the
//! very same server.

pub mod crypto;
pub mod db;
pub mod devthoth;
pub mod keys;
