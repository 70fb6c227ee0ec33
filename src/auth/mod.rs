//! Who is calling: JWT validation (algorithm pinned by configuration) and the
//! four places a browser or a service may put its token (PROTOCOL.md 2.2).

mod extract;
mod jwt;

pub use extract::{origin_allowed, token_from_request, TokenSource, JWT_SUBPROTOCOL};
pub use jwt::{mint_hs256, time_left, AuthFailure, Claims, JwtValidator, MAX_TOKEN_BYTES};
