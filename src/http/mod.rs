//! Plain HTTP surfaces: the admin listener (monitoring) and, on the public
//! listener, the REST routes.

pub mod admin;
pub mod error;
