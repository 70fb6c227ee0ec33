//! The connection type and the r2d2 plumbing behind [`super::Database`].
//!
//! diesel's own `ConnectionManager<MultiConnection>` lets the derived
//! `establish` try every backend in turn and throws the errors away (a down
//! PostgreSQL reads "Invalid connection url"; a key=value conninfo quietly
//! becomes a SQLite file). [`AnyConnectionManager`] instead opens exactly the
//! backend that [`super::Target`] chose from the URL and keeps the real error.

use std::fmt;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::R2D2Connection;
use diesel::{PgConnection, SqliteConnection};

use super::url::Target;
use crate::store::redact::Scrubber;

/// How long SQLite waits for a lock held by another connection before
/// answering "database is locked".
pub const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

/// A connection to whichever backend `DATABASE_URL` names. Queries written
/// once against [`super::schema`] run on both.
#[derive(diesel::MultiConnection)]
pub enum AnyConnection {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

/// Error of one connection attempt or health check; its message has had
/// every credential from the URL removed.
#[derive(Debug)]
pub struct ConnectionFailure(pub String);

impl fmt::Display for ConnectionFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConnectionFailure {}

/// Opens connections to one fixed backend for the r2d2 pool.
pub struct AnyConnectionManager {
    target: Target,
    redactor: Scrubber,
}

impl AnyConnectionManager {
    pub(super) fn new(target: Target, redactor: Scrubber) -> Self {
        Self { target, redactor }
    }

    /// Open a connection without applying any per-connection settings.
    pub(super) fn establish(&self) -> Result<AnyConnection, ConnectionFailure> {
        let result = match &self.target {
            Target::Postgres { conninfo } => {
                PgConnection::establish(conninfo).map(AnyConnection::Postgres)
            }
            Target::Sqlite { open, .. } => {
                SqliteConnection::establish(open).map(AnyConnection::Sqlite)
            }
        };
        result.map_err(|err| ConnectionFailure(self.redactor.scrub(&err.to_string())))
    }
}

impl r2d2::ManageConnection for AnyConnectionManager {
    type Connection = AnyConnection;
    type Error = ConnectionFailure;

    fn connect(&self) -> Result<AnyConnection, ConnectionFailure> {
        self.establish()
    }

    fn is_valid(&self, conn: &mut AnyConnection) -> Result<(), ConnectionFailure> {
        conn.ping()
            .map_err(|err| ConnectionFailure(self.redactor.scrub(&err.to_string())))
    }

    fn has_broken(&self, conn: &mut AnyConnection) -> bool {
        conn.is_broken()
    }
}

/// SQLite settings every pooled connection needs, applied right after it
/// is opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct SqlitePragmas;

impl SqlitePragmas {
    pub(super) fn apply(conn: &mut AnyConnection) -> Result<(), ConnectionFailure> {
        let AnyConnection::Sqlite(conn) = conn else {
            return Ok(());
        };
        // busy_timeout must come first: switching to WAL takes a lock, and
        // r2d2 opens several connections at once on a fresh file; without
        // the timeout they fail with "database is locked".
        let statements = [
            format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS};"),
            "PRAGMA journal_mode = WAL;".to_owned(),
            // WAL makes NORMAL durable against application crashes; only an
            // OS crash can lose the last commits.
            "PRAGMA synchronous = NORMAL;".to_owned(),
            "PRAGMA foreign_keys = ON;".to_owned(),
        ];
        for statement in &statements {
            conn.batch_execute(statement)
                .map_err(|err| ConnectionFailure(format!("{statement} failed: {err}")))?;
        }
        Ok(())
    }
}

impl r2d2::CustomizeConnection<AnyConnection, ConnectionFailure> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut AnyConnection) -> Result<(), ConnectionFailure> {
        Self::apply(conn)
    }
}

/// Logs pool errors (failed background connection attempts) once scrubbed.
#[derive(Debug, Clone, Copy)]
pub(super) struct LogPoolErrors;

impl r2d2::HandleError<ConnectionFailure> for LogPoolErrors {
    fn handle_error(&self, error: ConnectionFailure) {
        // Already scrubbed of credentials by the manager.
        log::warn!("database connection attempt failed: {error}");
    }
}
