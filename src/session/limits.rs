//! Process-wide and per-user caps on open sessions (`MAX_SESSIONS`,
//! `MAX_SESSIONS_PER_USER`). A session holds a [`SessionPermit`]; dropping it
//! frees the slot, so no exit path can leak one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{ErrorCode, GatewayError};
use crate::metrics;

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_user: HashMap<String, usize>,
}

/// Counts open sessions. Cheap to clone.
#[derive(Clone)]
pub struct SessionLimiter {
    max_total: usize,
    max_per_user: usize,
    counts: Arc<Mutex<Counts>>,
}

impl SessionLimiter {
    pub fn new(max_total: usize, max_per_user: usize) -> Self {
        metrics::SESSIONS_MAX.set(i64::try_from(max_total).unwrap_or(i64::MAX));
        SessionLimiter {
            max_total,
            max_per_user,
            counts: Arc::new(Mutex::new(Counts::default())),
        }
    }

    /// Takes a slot for `user`, or `TOO_MANY_SESSIONS`: close 4409 for the
    /// user's cap, 1013 for the process-wide one (chronus reads 4409 as "a
    /// recording is already in progress", which is about the user).
    pub fn acquire(&self, user: &str) -> Result<SessionPermit, GatewayError> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.total >= self.max_total {
            metrics::count_refusal(metrics::REFUSAL_MAX_SESSIONS);
            return Err(GatewayError::with_message(
                ErrorCode::TooManySessionsInGateway,
                "The gateway is at its session limit; try again shortly",
            ));
        }
        let mine = counts.per_user.get(user).copied().unwrap_or(0);
        if mine >= self.max_per_user {
            metrics::count_refusal(metrics::REFUSAL_MAX_SESSIONS_PER_USER);
            return Err(GatewayError::with_message(
                ErrorCode::TooManySessions,
                format!("You already have {mine} transcription sessions open"),
            ));
        }
        counts.total += 1;
        *counts.per_user.entry(user.to_string()).or_insert(0) += 1;
        Ok(SessionPermit {
            user: user.to_string(),
            counts: self.counts.clone(),
        })
    }

    /// Sessions open now.
    pub fn total(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// One open session's slot; released on drop.
#[derive(Debug)]
pub struct SessionPermit {
    user: String,
    counts: Arc<Mutex<Counts>>,
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(mine) = counts.per_user.get_mut(&self.user) {
            *mine -= 1;
            if *mine == 0 {
                counts.per_user.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_user_and_total_caps_hold_and_release() {
        let limiter = SessionLimiter::new(3, 2);
        let a1 = limiter.acquire("a").unwrap();
        let _a2 = limiter.acquire("a").unwrap();
        assert_eq!(
            limiter.acquire("a").unwrap_err().code,
            ErrorCode::TooManySessions
        );
        let _b1 = limiter.acquire("b").unwrap();
        assert_eq!(
            limiter.acquire("c").unwrap_err().code,
            ErrorCode::TooManySessionsInGateway
        );
        drop(a1);
        assert_eq!(limiter.total(), 2);
        assert!(limiter.acquire("c").is_ok());
    }
}
