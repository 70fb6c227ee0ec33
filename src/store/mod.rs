//! What the gateway keeps and protects: the database (`db/`), users' API
//! keys encrypted at rest (`keys.rs`, rotation in `key_rotation.rs`), the
//! cipher (`crypto.rs`), the secret type (`secret.rs`) and the one redactor
//! for secret-bearing strings (`redact.rs`).

pub mod crypto;
pub mod db;
pub mod key_rotation;
pub mod keys;
pub mod redact;
pub mod secret;

pub use secret::SecretString;
