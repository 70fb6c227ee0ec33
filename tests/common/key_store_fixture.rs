//! The key store tests' fixture: a store over a real database — a fresh
//! SQLite file, the shared PostgreSQL, or a scratch PostgreSQL database of
//! its own — cleaned up when dropped.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use chronus_gateway::store::db::models::ApiKeyRow;
use chronus_gateway::store::db::schema::api_keys;
use chronus_gateway::store::db::Database;
use chronus_gateway::store::keys::{ApiKeyStore, Provider};
use chronus_gateway::store::{crypto::KeyCipher, SecretString};
use diesel::prelude::*;

pub const PG_URL_VAR: &str = "TEST_DATABASE_URL_PG";
pub const KEY_A: [u8; 32] = [0xA1; 32];
pub const KEY_B: [u8; 32] = [0xB2; 32];
/// What `Database::connect` may take against a dead server (brief: ~10 s).
pub const CONNECT_FAILS_WITHIN: Duration = Duration::from_secs(11);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL URL, or `None` (after a loud note) when it is not set
/// outside CI. Panics in CI without it.
pub fn pg_url() -> Option<String> {
    match std::env::var(PG_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) => panic!(
            "CI is set but {PG_URL_VAR} is not: start PostgreSQL with \
             eval \"$(bash .ci/start-postgres.sh)\" before the tests"
        ),
        _ => {
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !! {PG_URL_VAR} is not set: SKIPPING this PostgreSQL test.\n\
                 !! Run: eval \"$(bash .ci/start-postgres.sh)\"\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            None
        }
    }
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub fn b64(key: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("chronus-keystore-test"));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A PostgreSQL database created for one test and dropped after it.
pub struct ScratchPgDatabase {
    pub admin_url: String,
    pub name: String,
}

impl ScratchPgDatabase {
    pub fn create(admin_url: &str) -> (Self, String) {
        let name = unique("gateway_test_scratch").replace('-', "_");
        let mut admin = PgConnection::establish(admin_url).expect("connect to the test PostgreSQL");
        diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .expect("create scratch database");
        let (base, query) = match admin_url.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (admin_url, String::new()),
        };
        let base = &base[..base.rfind('/').expect("database URL has a path") + 1];
        let url = format!("{base}{name}{query}");
        (
            Self {
                admin_url: admin_url.to_owned(),
                name,
            },
            url,
        )
    }

    pub fn drop_now(&self) {
        let mut admin =
            PgConnection::establish(&self.admin_url).expect("connect to the test PostgreSQL");
        diesel::sql_query(format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .expect("drop scratch database");
    }
}

impl Drop for ScratchPgDatabase {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.drop_now();
        } else {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.drop_now()));
        }
    }
}

/// A store over a real database. Field order matters: the pool closes
/// before the scratch database is dropped and the directory removed.
pub struct Fixture {
    pub store: ApiKeyStore,
    pub db: Database,
    pub sqlite_file: Option<PathBuf>,
    pub scratch: Option<ScratchPgDatabase>,
    pub _dir: Option<TempDir>,
}

impl Fixture {
    /// A store on the shared test database (PostgreSQL) or a fresh SQLite
    /// file; `None` when PostgreSQL is skipped.
    pub fn open(backend: Backend) -> Option<Self> {
        Self::open_with(backend, false)
    }

    /// Like `open`, but on a database of its own even for PostgreSQL.
    pub fn open_isolated(backend: Backend) -> Option<Self> {
        Self::open_with(backend, true)
    }

    pub fn open_with(backend: Backend, isolated: bool) -> Option<Self> {
        let (url, scratch, dir, sqlite_file) = match backend {
            Backend::Sqlite => {
                let dir = TempDir::new();
                let file = dir.0.join("nested").join("gateway.db");
                (
                    format!("sqlite://{}", file.display()),
                    None,
                    Some(dir),
                    Some(file),
                )
            }
            Backend::Postgres => {
                let base = pg_url()?;
                if isolated {
                    let (scratch, url) = ScratchPgDatabase::create(&base);
                    (url, Some(scratch), None, None)
                } else {
                    (base, None, None, None)
                }
            }
        };
        let db = Database::connect(&url).expect("connect to the test database");
        let expected = match backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        assert_eq!(db.backend(), expected);
        Some(Fixture {
            store: ApiKeyStore::new(db.clone(), Arc::new(KeyCipher::from_bytes(&KEY_A))),
            db,
            sqlite_file,
            scratch,
            _dir: dir,
        })
    }

    pub fn store_with(&self, cipher: KeyCipher) -> ApiKeyStore {
        ApiKeyStore::new(self.db.clone(), Arc::new(cipher))
    }

    /// The user's rows as stored (blocking; fine in a test).
    pub fn raw_rows(&self, user_id: &str) -> Vec<ApiKeyRow> {
        let mut conn = self.db.conn().expect("connection");
        api_keys::table
            .filter(api_keys::user_id.eq(user_id))
            .select(ApiKeyRow::as_select())
            .load(&mut *conn)
            .expect("select rows")
    }
}

pub async fn put(store: &ApiKeyStore, user: &str, key: &str) {
    store
        .put(user, Provider::Mistral, SecretString::from(key))
        .await
        .expect("put");
}

pub async fn get(store: &ApiKeyStore, user: &str) -> Option<String> {
    store
        .get(user, Provider::Mistral)
        .await
        .expect("get")
        .map(|key| key.expose().to_owned())
}
