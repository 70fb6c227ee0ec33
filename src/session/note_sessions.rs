//! Which open sessions record into which note, for monitoring: the pool JSON
//! (`GET /api/transcription/pool`) lists each notes-path session's id beside
//! its `noteId`. A session holds a [`NoteSessionGuard`]; dropping it (however
//! the session ends) takes the entry off the books.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use uuid::Uuid;

use crate::session::note_access::NoteId;
use crate::wire::browser::Provider;

/// One notes-path session, as the pool JSON shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NoteSessionEntry {
    pub session_id: String,
    pub note_id: NoteId,
    pub provider: Provider,
}

/// Open notes-path sessions by session id. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct NoteSessions {
    open: Arc<Mutex<HashMap<Uuid, NoteSessionEntry>>>,
}

impl NoteSessions {
    /// Books `session_id` as recording into `note` until the guard drops.
    pub fn open(&self, session_id: Uuid, note: NoteId, provider: Provider) -> NoteSessionGuard {
        let entry = NoteSessionEntry {
            session_id: session_id.to_string(),
            note_id: note,
            provider,
        };
        self.lock().insert(session_id, entry);
        NoteSessionGuard {
            session_id,
            note,
            open: self.open.clone(),
        }
    }

    /// The open sessions, sorted by session id (a stable order for readers).
    pub fn snapshot(&self) -> Vec<NoteSessionEntry> {
        let mut entries: Vec<NoteSessionEntry> = self.lock().values().cloned().collect();
        entries.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        entries
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, NoteSessionEntry>> {
        // A map of plain values stays consistent even if a holder panicked.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One notes-path session on the books; released on drop.
#[derive(Debug)]
pub struct NoteSessionGuard {
    session_id: Uuid,
    note: NoteId,
    open: Arc<Mutex<HashMap<Uuid, NoteSessionEntry>>>,
}

impl NoteSessionGuard {
    pub fn note(&self) -> NoteId {
        self.note
    }
}

impl Drop for NoteSessionGuard {
    fn drop(&mut self) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.session_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_listed_until_its_guard_drops() {
        let notes = NoteSessions::default();
        let id = Uuid::new_v4();
        let guard = notes.open(id, NoteId(7), Provider::Thoth);
        assert_eq!(guard.note(), NoteId(7));
        let listed = notes.snapshot();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].session_id, id.to_string());
        assert_eq!(listed[0].note_id, NoteId(7));
        drop(guard);
        assert!(notes.snapshot().is_empty());
    }
}
