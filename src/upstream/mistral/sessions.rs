//! Which users have Mistral sessions open, for monitoring (PROTOCOL.md 5):
//! each Mistral session (chronus protocol or native proxy) holds a
//! [`MistralSessionGuard`] for as long as its upstream actor lives; dropping
//! it takes the session off the books, so no exit path can leak a count.
//!
//! Caps are not enforced here: `MAX_SESSIONS_PER_USER` and `MAX_SESSIONS`
//! apply to every session at admission (`gateway/limits.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;

/// Open Mistral sessions per user. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct MistralSessions {
    per_user: Arc<Mutex<HashMap<String, usize>>>,
}

/// The `mistral` part of `GET /api/transcription/pool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MistralSessionsSnapshot {
    /// Users with at least one open session, by user id (sorted).
    pub sessions_per_user: BTreeMap<String, usize>,
    /// All open Mistral sessions.
    pub sessions: usize,
}

impl MistralSessions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts a session of `user` until the returned guard is dropped.
    pub fn open(&self, user: &str) -> MistralSessionGuard {
        *self.lock().entry(user.to_owned()).or_insert(0) += 1;
        MistralSessionGuard {
            user: user.to_owned(),
            per_user: self.per_user.clone(),
        }
    }

    /// The counts right now.
    pub fn snapshot(&self) -> MistralSessionsSnapshot {
        let per_user = self.lock();
        MistralSessionsSnapshot {
            sessions_per_user: per_user.iter().map(|(u, n)| (u.clone(), *n)).collect(),
            sessions: per_user.values().sum(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        // Plain counters stay consistent even if a holder panicked.
        self.per_user.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One open Mistral session on the books; released on drop.
#[derive(Debug)]
pub struct MistralSessionGuard {
    user: String,
    per_user: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for MistralSessionGuard {
    fn drop(&mut self) {
        let mut per_user = self.per_user.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = per_user.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                per_user.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_per_user_and_release_on_drop() {
        let sessions = MistralSessions::new();
        let a1 = sessions.open("alice");
        let a2 = sessions.open("alice");
        let b1 = sessions.open("bob");
        let snapshot = sessions.snapshot();
        assert_eq!(snapshot.sessions, 3);
        assert_eq!(snapshot.sessions_per_user["alice"], 2);
        assert_eq!(snapshot.sessions_per_user["bob"], 1);
        drop(a1);
        drop(b1);
        let snapshot = sessions.snapshot();
        assert_eq!(snapshot.sessions, 1);
        assert!(!snapshot.sessions_per_user.contains_key("bob"));
        drop(a2);
        assert_eq!(
            serde_json::to_value(sessions.snapshot()).unwrap(),
            serde_json::json!({"sessionsPerUser": {}, "sessions": 0})
        );
    }
}
