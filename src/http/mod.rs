//! Plain HTTP surfaces: the admin listener (monitoring) and, on the public
//! listener, the REST routes and the browser client with its demo page.

pub mod admin;
pub mod error;
pub mod web;
