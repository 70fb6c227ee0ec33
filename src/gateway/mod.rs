//! The browser side: admission (auth, Origin, limits) before any upgrade, and
//! one [`client::ClientActor`] per browser session.

pub mod admission;
pub mod client;
pub mod limits;
pub mod outbound;
pub mod rate;
pub mod routes;
