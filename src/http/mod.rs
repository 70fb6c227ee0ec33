//! Plain HTTP surfaces: the admin listener (monitoring) and, on the public
//! listener, the REST routes (API key settings, the Mistral token endpoint),
//! and the browser client with its demo page.

pub mod admin;
pub mod error;
pub mod mistral;
pub mod settings;
pub mod web;
