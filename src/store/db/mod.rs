//! The database: one pool, SQLite or PostgreSQL chosen at run time from
//! `DATABASE_URL`, migrations embedded in the binary and run at connect.
//!
//! diesel is blocking: from async code go through [`Database::run`], which
//! moves the work onto actix's blocking thread pool (`web::block`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use diesel::prelude::*;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

mod connection;
pub mod models;
pub mod schema;
mod url;

pub use connection::{AnyConnection, AnyConnectionManager, ConnectionFailure, SqlitePragmas};
pub use url::PG_CONNECT_TIMEOUT_SECS;

use crate::store::redact::{redact, Scrubber};
use connection::LogPoolErrors;
use url::Target;

/// How long `Database::connect` and every pool checkout wait for a
/// connection before giving up (the database is then "unavailable").
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound of open connections per gateway process.
pub const POOL_MAX_SIZE: u32 = 8;
/// Connections kept open while idle.
pub const POOL_MIN_IDLE: u32 = 1;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Key of the PostgreSQL advisory lock that serialises migrations when
/// several gateways (or test processes) start against one database.
const MIGRATION_LOCK_KEY: i64 = 0x0063_6872_6f6e_7573; // "chronus" in ASCII

/// A pooled connection, checked out with [`Database::conn`].
pub type PooledConnection = r2d2::PooledConnection<AnyConnectionManager>;

/// Database errors. Messages name the URL only with its password replaced
/// by `***`, and driver messages are scrubbed of it as well.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported DATABASE_URL {url}: {reason}")]
    UnsupportedUrl { url: String, reason: &'static str },
    #[error("cannot create directory {path} for the SQLite database: {source}")]
    CreateDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to the {backend} database at {url}: {message}")]
    Connect {
        backend: &'static str,
        url: String,
        message: String,
    },
    #[error("cannot run the {backend} database migrations: {message}")]
    Migration {
        backend: &'static str,
        message: String,
    },
    /// No connection could be had from the pool within [`CONNECTION_TIMEOUT`].
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    /// The blocking task was dropped (the runtime is shutting down).
    #[error("database task was cancelled")]
    Cancelled,
}

/// Handle to the database; cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Database {
    pool: r2d2::Pool<AnyConnectionManager>,
    backend: &'static str,
    redacted_url: Arc<str>,
    redactor: Arc<Scrubber>,
}

impl Database {
    /// Open the database named by `url` and bring its schema up to date.
    ///
    /// `postgres://…`/`postgresql://…` select PostgreSQL; `sqlite://PATH`,
    /// `file:PATH` or a plain path select a SQLite file (its directory is
    /// created if missing). Fails within a few seconds, with the driver's
    /// own message, when the database cannot be reached. Blocking.
    pub fn connect(url: &str) -> Result<Database, DbError> {
        let target = Target::parse(url)?;
        let backend = target.backend();
        let redacted_url: Arc<str> = redact(url.trim()).into();
        let redactor = Scrubber::for_secrets_in(url);

        if let Target::Sqlite { file, .. } = &target {
            if let Some(dir) = file.parent().filter(|dir| !dir.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| DbError::CreateDir {
                    path: dir.to_owned(),
                    source,
                })?;
            }
        }

        let manager = AnyConnectionManager::new(target, redactor.clone());
        let connect_error = |message: String| DbError::Connect {
            backend,
            url: redacted_url.to_string(),
            message,
        };

        // One connection up front: it reports the driver's real error at
        // once (r2d2 would retry until its timeout and keep only the last
        // message) and runs the migrations before the pool opens.
        let mut first = manager.establish().map_err(|err| connect_error(err.0))?;
        SqlitePragmas::apply(&mut first).map_err(|err| connect_error(err.0))?;
        let applied = run_migrations(&mut first).map_err(|message| DbError::Migration {
            backend,
            message: redactor.scrub(&message),
        })?;
        for migration in &applied {
            log::info!("applied {backend} migration {migration}");
        }
        drop(first);

        let mut builder = r2d2::Pool::builder()
            .max_size(POOL_MAX_SIZE)
            .min_idle(Some(POOL_MIN_IDLE))
            .connection_timeout(CONNECTION_TIMEOUT)
            .error_handler(Box::new(LogPoolErrors));
        if backend == "sqlite" {
            builder = builder.connection_customizer(Box::new(SqlitePragmas));
        }
        let pool = builder
            .build(manager)
            .map_err(|err| connect_error(redactor.scrub(&err.to_string())))?;

        log::info!("connected to {backend} database at {redacted_url}");
        Ok(Database {
            pool,
            backend,
            redacted_url,
            redactor: Arc::new(redactor),
        })
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// The URL this database was opened with, password replaced by `***`.
    pub fn redacted_url(&self) -> &str {
        &self.redacted_url
    }

    /// Pool gauges: open and idle connections.
    pub fn pool_state(&self) -> r2d2::State {
        self.pool.state()
    }

    /// Check out a connection. Blocking: from async code use
    /// [`Database::run`].
    pub fn conn(&self) -> Result<PooledConnection, DbError> {
        self.pool
            .get()
            .map_err(|err| DbError::Unavailable(self.redactor.scrub(&err.to_string())))
    }

    /// Run `SELECT 1`. Blocking.
    pub fn ping(&self) -> Result<(), DbError> {
        let mut conn = self.conn()?;
        diesel::sql_query("SELECT 1").execute(&mut *conn)?;
        Ok(())
    }

    /// Run blocking database work `f` on actix's blocking thread pool,
    /// with a pooled connection.
    pub async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut AnyConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let db = self.clone();
        run_blocking(move || {
            let mut conn = db.conn()?;
            f(&mut conn)
        })
        .await
        .map_err(E::from)?
    }
}

/// Runs blocking work `f` on actix's blocking thread pool (the one
/// `web::block` uses). A panic in `f` is re-raised in the caller, as a bug
/// must be, not turned into an ordinary error; only a task dropped by a
/// runtime shutting down is [`DbError::Cancelled`].
pub async fn run_blocking<T, F>(f: F) -> Result<T, DbError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match actix_rt::task::spawn_blocking(f).await {
        Ok(value) => Ok(value),
        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Err(_) => Err(DbError::Cancelled),
    }
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("backend", &self.backend)
            .field("url", &self.redacted_url)
            .field("pool", &self.pool.state())
            .finish()
    }
}

/// Why migrations failed inside their transaction.
enum MigrationFailure {
    Diesel(diesel::result::Error),
    Harness(String),
}

impl From<diesel::result::Error> for MigrationFailure {
    fn from(err: diesel::result::Error) -> Self {
        MigrationFailure::Diesel(err)
    }
}

impl fmt::Display for MigrationFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrationFailure::Diesel(err) => err.fmt(f),
            MigrationFailure::Harness(message) => f.write_str(message),
        }
    }
}

/// Apply pending migrations of the connection's backend, all in one
/// transaction that also excludes other gateways doing the same. Returns
/// the versions applied.
fn run_migrations(conn: &mut AnyConnection) -> Result<Vec<String>, String> {
    fn versions(
        applied: Result<
            Vec<diesel::migration::MigrationVersion<'_>>,
            Box<dyn std::error::Error + Send + Sync>,
        >,
    ) -> Result<Vec<String>, MigrationFailure> {
        applied
            .map(|versions| versions.iter().map(ToString::to_string).collect())
            .map_err(|err| MigrationFailure::Harness(err.to_string()))
    }
    let result = match conn {
        AnyConnection::Postgres(pg) => pg.transaction(|pg| {
            diesel::sql_query(format!(
                "SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"
            ))
            .execute(pg)?;
            versions(pg.run_pending_migrations(POSTGRES_MIGRATIONS))
        }),
        // IMMEDIATE takes the write lock first, so two processes opening a
        // fresh file cannot both decide to create the tables.
        AnyConnection::Sqlite(sqlite) => sqlite.immediate_transaction(|sqlite| {
            versions(sqlite.run_pending_migrations(SQLITE_MIGRATIONS))
        }),
    };
    result.map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::panic::AssertUnwindSafe;

    #[actix_rt::test]
    async fn a_panic_in_a_database_task_is_re_raised_not_reported_as_cancelled() {
        let task = run_blocking(|| -> u32 { panic!("disk on fire") });
        let payload = AssertUnwindSafe(task)
            .catch_unwind()
            .await
            .expect_err("the panic reaches the caller");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"disk on fire"));
    }

    #[actix_rt::test]
    async fn a_panic_in_a_query_closure_reaches_the_caller_of_run() {
        let file = std::env::temp_dir().join(format!(
            "chronus-db-panic-{}-{}.sqlite",
            std::process::id(),
            rand::random::<u64>()
        ));
        let url = file.to_string_lossy().into_owned();
        let db = run_blocking(move || Database::connect(&url))
            .await
            .unwrap()
            .expect("a SQLite file opens");
        let query = db.run(|_conn| -> Result<(), DbError> { panic!("bug in a query") });
        let outcome = AssertUnwindSafe(query).catch_unwind().await;
        let _ = std::fs::remove_file(&file);
        let payload = outcome.expect_err("not Cancelled: the panic itself");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"bug in a query"));
    }

    #[actix_rt::test]
    async fn blocking_work_returns_its_value() {
        assert_eq!(run_blocking(|| 42).await.unwrap(), 42);
    }
}
