//! What every request handler shares.

use std::sync::Arc;

use crate::auth::JwtValidator;
use crate::config::Config;
use crate::session::limits::SessionLimiter;
use crate::store::keys::ApiKeyStore;
use crate::upstream::mistral::sessions::MistralSessions;
use crate::upstream::mistral::MistralEndpoint;
use crate::upstream::thoth::ThothPool;

/// The gateway's shared state, one per process.
pub struct AppState {
    pub config: Arc<Config>,
    pub jwt: JwtValidator,
    pub thoth: ThothPool,
    pub sessions: SessionLimiter,
    /// Users' own upstream API keys, encrypted at rest.
    pub keys: ApiKeyStore,
    /// Turns `true` when the gateway starts draining (SIGTERM).
    pub shutdown: tokio::sync::watch::Receiver<bool>,
    /// Where Mistral sessions connect to.
    pub mistral: MistralEndpoint,
    /// Open Mistral sessions per user, for monitoring.
    pub mistral_sessions: MistralSessions,
    /// Open notes-path sessions and their notes, for monitoring.
    pub note_sessions: crate::session::note_sessions::NoteSessions,
}
