//! When a browser session must end on time (PROTOCOL.md 2.2): at
//! `MAX_SESSION_SECS` always (`SESSION_EXPIRED`, 4408), and at its token's
//! `exp` only under `SESSION_TOKEN_CHECK=continuous` (`TOKEN_EXPIRED`, 4401,
//! unless the client refreshed it). Both browser actors own one.

use std::time::{Duration, Instant};

use crate::config::{ChronusSessionSettings, SessionTokenCheck};
use crate::error::ErrorCode;

/// A session's two deadlines.
#[derive(Debug, Clone, Copy)]
pub struct SessionClock {
    /// `MAX_SESSION_SECS` after the session opened.
    session_ends_at: Instant,
    /// The token's `exp`; `None` when tokens are checked at connect only.
    token_expires_at: Option<Instant>,
}

impl SessionClock {
    pub fn new(settings: &ChronusSessionSettings, token_exp: u64, opened: Instant) -> Self {
        let token_expires_at = match settings.token_check {
            SessionTokenCheck::Connect => None,
            // Measured from now, not from `opened`: the wall-clock time left is
            // read now, so the deadline never falls before the token's end.
            SessionTokenCheck::Continuous => Some(Instant::now() + until_unix_time(token_exp)),
        };
        SessionClock {
            session_ends_at: opened + settings.max_session,
            token_expires_at,
        }
    }

    /// A refreshed token moves the token deadline (continuous mode only; in
    /// connect mode the session never depended on `exp`).
    pub fn token_refreshed(&mut self, exp: u64) {
        if self.token_expires_at.is_some() {
            self.token_expires_at = Some(Instant::now() + until_unix_time(exp));
        }
    }

    /// The earlier of the two deadlines.
    pub fn next_deadline(&self) -> Instant {
        match self.token_expires_at {
            Some(token) => token.min(self.session_ends_at),
            None => self.session_ends_at,
        }
    }

    /// The error ending the session at `now`, if a deadline has passed. The
    /// session length cap wins a tie: it is the one a refresh cannot lift.
    pub fn expired(&self, now: Instant) -> Option<ErrorCode> {
        if now >= self.session_ends_at {
            Some(ErrorCode::SessionExpired)
        } else if self.token_expires_at.is_some_and(|token| now >= token) {
            Some(ErrorCode::TokenExpired)
        } else {
            None
        }
    }
}

/// Time the token has left, by the same rule as the check at connect
/// (`auth::time_left`), so a token is never admitted only to expire at once.
fn until_unix_time(exp: u64) -> Duration {
    crate::auth::time_left(exp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(check: SessionTokenCheck, max_secs: u64) -> ChronusSessionSettings {
        ChronusSessionSettings {
            token_check: check,
            max_session: Duration::from_secs(max_secs),
            note_access_url: None,
            note_access_timeout: Duration::from_secs(5),
        }
    }

    fn unix_now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn connect_mode_ignores_exp_and_ends_at_the_session_cap() {
        let opened = Instant::now();
        let clock = SessionClock::new(
            &settings(SessionTokenCheck::Connect, 60),
            unix_now(),
            opened,
        );
        assert_eq!(clock.expired(opened + Duration::from_secs(30)), None);
        assert_eq!(clock.next_deadline(), opened + Duration::from_secs(60));
        assert_eq!(
            clock.expired(opened + Duration::from_secs(60)),
            Some(ErrorCode::SessionExpired)
        );
    }

    #[test]
    fn continuous_mode_ends_at_exp_unless_refreshed() {
        let opened = Instant::now();
        let mut clock = SessionClock::new(
            &settings(SessionTokenCheck::Continuous, 3600),
            unix_now() + 10,
            opened,
        );
        let after_exp = opened + Duration::from_secs(12);
        assert_eq!(clock.expired(after_exp), Some(ErrorCode::TokenExpired));
        clock.token_refreshed(unix_now() + 100);
        assert_eq!(clock.expired(after_exp), None);
        assert_eq!(
            clock.expired(opened + Duration::from_secs(3600)),
            Some(ErrorCode::SessionExpired)
        );
    }
}
