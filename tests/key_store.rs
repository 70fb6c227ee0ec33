//! The encrypted API key store against real databases: every behaviour runs
//! on SQLite (a temporary file) and on PostgreSQL.
//!
//! PostgreSQL comes from `TEST_DATABASE_URL_PG`:
//!   eval "$(bash .ci/start-postgres.sh)" && cargo test --test key_store
//! Without it the PostgreSQL variants are skipped with a loud note, unless
//! `CI` is set, where they fail. Tests use their own random user ids, so they
//! share one PostgreSQL database; those that need the whole table (key
//! rotation, a database going away) create a scratch database.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use chronus_gateway::crypto::{KeyCipher, SecretString};
use chronus_gateway::db::models::ApiKeyRow;
use chronus_gateway::db::schema::api_keys;
use chronus_gateway::db::Database;
use chronus_gateway::keys::{ApiKeyStore, KeyStoreError, Provider};
use diesel::prelude::*;

const PG_URL_VAR: &str = "TEST_DATABASE_URL_PG";
const KEY_A: [u8; 32] = [0xA1; 32];
const KEY_B: [u8; 32] = [0xB2; 32];
/// What `Database::connect` may take against a dead server (brief: ~10 s).
const CONNECT_FAILS_WITHIN: Duration = Duration::from_secs(11);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL URL, or `None` (after a loud note) when it is not set
/// outside CI. Panics in CI without it.
fn pg_url() -> Option<String> {
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

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn b64(key: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
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
struct ScratchPgDatabase {
    admin_url: String,
    name: String,
}

impl ScratchPgDatabase {
    fn create(admin_url: &str) -> (Self, String) {
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

    fn drop_now(&self) {
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
struct Fixture {
    store: ApiKeyStore,
    db: Database,
    sqlite_file: Option<PathBuf>,
    scratch: Option<ScratchPgDatabase>,
    _dir: Option<TempDir>,
}

impl Fixture {
    /// A store on the shared test database (PostgreSQL) or a fresh SQLite
    /// file; `None` when PostgreSQL is skipped.
    fn open(backend: Backend) -> Option<Self> {
        Self::open_with(backend, false)
    }

    /// Like `open`, but on a database of its own even for PostgreSQL.
    fn open_isolated(backend: Backend) -> Option<Self> {
        Self::open_with(backend, true)
    }

    fn open_with(backend: Backend, isolated: bool) -> Option<Self> {
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

    fn store_with(&self, cipher: KeyCipher) -> ApiKeyStore {
        ApiKeyStore::new(self.db.clone(), Arc::new(cipher))
    }

    /// The user's rows as stored (blocking; fine in a test).
    fn raw_rows(&self, user_id: &str) -> Vec<ApiKeyRow> {
        let mut conn = self.db.conn().expect("connection");
        api_keys::table
            .filter(api_keys::user_id.eq(user_id))
            .select(ApiKeyRow::as_select())
            .load(&mut *conn)
            .expect("select rows")
    }
}

async fn put(store: &ApiKeyStore, user: &str, key: &str) {
    store
        .put(user, Provider::Mistral, SecretString::from(key))
        .await
        .expect("put");
}

async fn get(store: &ApiKeyStore, user: &str) -> Option<String> {
    store
        .get(user, Provider::Mistral)
        .await
        .expect("get")
        .map(|key| key.expose().to_owned())
}

// ---------------------------------------------------------------------------
// The suite, run on both backends.

async fn put_then_get_returns_the_key(backend: Backend) {
    let Some(fx) = Fixture::open(backend) else {
        return;
    };
    let user = unique("user");
    put(&fx.store, &user, "sk-round-trip-0123456789").await;
    assert_eq!(
        get(&fx.store, &user).await.as_deref(),
        Some("sk-round-trip-0123456789")
    );
}

async fn get_without_a_stored_key_returns_none(backend: Backend) {
    let Some(fx) = Fixture::open(backend) else {
        return;
    };
    assert_eq!(get(&fx.store, &unique("user")).await, None);
}

async fn surrounding_whitespace_is_trimmed(backend: Backend) {
    let Some(fx) = Fixture::open(backend) else {
        return;
    };
    let user = unique("user");
    put(&fx.store, &user, "  sk-trimmed-key-42\r\n").await;
    assert_eq!(
        get(&fx.store, &user).await.as_deref(),
        Some("sk-trimmed-key-42")
    );
    assert_eq!(fx.raw_rows(&user)[0].last4, "y-42");
}

async fn keys_of_different_users_are_independent(backend: Backend) {
    let Some(fx) = Fixture::open(backend) else {
        return;
    };
    let (alice, bob) = (unique("alice"), unique("bob"));
    put(&fx.store, &alice, "sk-alice-key-aaaa").await;
    put(&fx.store, &bob, "sk-bob-key-bbbb").await;
    assert_eq!(
        get(&fx.store, &alice).await.as_deref(),
        Some("sk-alice-key-aaaa")
    );
    assert_eq!(
        get(&fx.store, &bob).await.as_deref(),
        Some("sk-bob-key-bbbb")
    );
    assert!(fx.store.delete(&alice, Provider::Mistral).await.unwrap());
    assert_eq!(
        get(&fx.store, &bob).await.as_deref(),
        Some("sk-bob-key-bbbb")
    );
}

async fn replacing_a_key_keeps_one_row_and_updates_last4_and_updated_at(backend: Backend) {
    let Some(fx) = Fixture::open(backend) else {
        return;
    };
    let user = unique("user");
    put(&fx.store, &user, "sk-first-key-1111").await;
    let before = fx.raw_rows(&user);
    assert_eq!(before.len(), 1);
    let listed_before = fx.store.list(&user).await.unwrap();

    actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    put(&fx.store, &user, "sk-second-key-2222").await;

    let after = fx.raw_rows(&user);
    assert_eq!(after.len(), 1, "a replacement must not add a row");
    assert_eq!(after[0].id, before[0].id);
    assert_eq!(after[0].last4, "2222");
    assert_eq!(
        after[0].created_at, before[0].created_at,
        "created_at is kept"
    );
    assert!(
        after[0].updated_at > before[0].updated_at,
        "updated_at is bumped"
    );
    let listed_after = fx.store.list(&user).await.unwrap();
    assert_eq!(listed_after.len(), 1);
    assert!(listed_after[0].updated_at > listed_before[0].updated_at);
    assert_eq!(
        get(&fx.store, &user).await.as_deref(),
        Some("sk-second-key-2222")
    );
}

async fn list_shows_provider_last4_and_time_but_never_the_key(backend: Backend) {
    let Some(fx) = Fixture::open(backend) else {
        return;
    };
    let user = unique("user");
    let key = "sk-listed-secret-value-9876";
    let started = chrono::Utc::now() - chrono::Duration::seconds(1);
    put(&fx.store, &user, key).await;

    let listed = fx.store.list(&user).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].provider, "mistral");
    assert_eq!(listed[0].last4, "9876");
    assert!(listed[0].updated_at >= started && listed[0].updated_at <= chrono::Utc::now());

    let json = serde_json::to_value(&listed).unwrap();
    let entry = json[0].as_object().unwrap();
    let mut fields: Vec<&str> = entry.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(fields, ["last4", "provider", "updatedAt"]);
    assert!(entry["updatedAt"].as_str().unwrap().ends_with('Z'));
    let text = json.to_string();
    assert!(
        !text.contains(key) && !text.contains("listed-secret"),
        "{text}"
    );
    assert!(!format!("{listed:?}").contains("listed-secret"));

    assert!(fx.store.list(&unique("nobody")).await.unwrap().is_empty());
}

async fn delete_reports_whether_a_key_was_there(backend: Backend) {
    let Some(fx) = Fixture::open(backend) else {
        return;
    };
    let user = unique("user");
    assert!(!fx.store.delete(&user, Provider::Mistral).await.unwrap());
    put(&fx.store, &user, "sk-to-be-deleted-0000").await;
    assert!(fx.store.delete(&user, Provider::Mistral).await.unwrap());
    assert_eq!(get(&fx.store, &user).await, None);
    assert!(fx.store.list(&user).await.unwrap().is_empty());
    assert!(!fx.store.delete(&user, Provider::Mistral).await.unwrap());
}

async fn invalid_keys_are_rejected_and_nothing_is_stored(backend: Backend) {
    let Some(fx) = Fixture::open(backend) else {
        return;
    };
    let user = unique("user");
    let too_long = format!("sk-{}", "x".repeat(510));
    for bad in [
        "",
        "   \t\n",
        &too_long,
        "sk-with\u{1}control",
        "sk-with\nnewline",
        "sk with space",
        "sk-ünïcode",
    ] {
        let err = fx
            .store
            .put(&user, Provider::Mistral, SecretString::from(bad))
            .await
            .expect_err("invalid key accepted");
        assert!(
            matches!(err, KeyStoreError::InvalidKey(_)),
            "{bad:?}: {err:?}"
        );
        let message = err.to_string();
        if !bad.trim().is_empty() {
            assert!(
                !message.contains(bad.trim()),
                "error quotes the key: {message}"
            );
        }
    }
    assert!(fx.raw_rows(&user).is_empty());
    // The limit itself is fine.
    put(&fx.store, &user, &"k".repeat(512)).await;
}

async fn every_write_uses_a_fresh_nonce(backend: Backend) {
    let Some(fx) = Fixture::open(backend) else {
        return;
    };
    let user = unique("user");
    put(&fx.store, &user, "sk-same-key-twice-5555").await;
    let first = fx.raw_rows(&user).remove(0);
    put(&fx.store, &user, "sk-same-key-twice-5555").await;
    let second = fx.raw_rows(&user).remove(0);
    assert_eq!(first.nonce.len(), 24);
    assert_ne!(first.nonce, second.nonce);
    assert_ne!(first.ciphertext, second.ciphertext);
    // And two users with the same key do not share a ciphertext either.
    let other = unique("user");
    put(&fx.store, &other, "sk-same-key-twice-5555").await;
    assert_ne!(fx.raw_rows(&other)[0].ciphertext, second.ciphertext);
}

async fn a_row_copied_to_another_user_does_not_decrypt(backend: Backend) {
    let Some(fx) = Fixture::open(backend) else {
        return;
    };
    let (alice, mallory) = (unique("alice"), unique("mallory"));
    put(&fx.store, &alice, "sk-alice-only-7777").await;
    {
        // Raw SQL, as someone with database access would do it. The ids are
        // hex uuids, safe to inline.
        let mut conn = fx.db.conn().unwrap();
        let copied = diesel::sql_query(format!(
            "INSERT INTO api_keys \
               (user_id, provider, ciphertext, nonce, key_version, last4, created_at, updated_at) \
             SELECT '{mallory}', provider, ciphertext, nonce, key_version, last4, created_at, updated_at \
             FROM api_keys WHERE user_id = '{alice}'"
        ))
        .execute(&mut *conn)
        .unwrap();
        assert_eq!(copied, 1);
    }
    let err = fx.store.get(&mallory, Provider::Mistral).await.unwrap_err();
    assert!(matches!(err, KeyStoreError::Corrupt), "{err:?}");
    assert_eq!(
        get(&fx.store, &alice).await.as_deref(),
        Some("sk-alice-only-7777")
    );
}

async fn a_tampered_ciphertext_is_reported_corrupt(backend: Backend) {
    let Some(fx) = Fixture::open(backend) else {
        return;
    };
    let user = unique("user");
    put(&fx.store, &user, "sk-tamper-target-3333").await;
    let mut row = fx.raw_rows(&user).remove(0);
    row.ciphertext[0] ^= 0x01;
    {
        let mut conn = fx.db.conn().unwrap();
        diesel::update(api_keys::table.filter(api_keys::id.eq(row.id)))
            .set(api_keys::ciphertext.eq(&row.ciphertext))
            .execute(&mut *conn)
            .unwrap();
    }
    let err = fx.store.get(&user, Provider::Mistral).await.unwrap_err();
    assert!(matches!(err, KeyStoreError::Corrupt), "{err:?}");
    assert!(!err.to_string().contains("tamper-target"));
}

async fn a_store_with_another_encryption_key_reports_corrupt(backend: Backend) {
    let Some(fx) = Fixture::open(backend) else {
        return;
    };
    let user = unique("user");
    put(&fx.store, &user, "sk-written-with-key-a").await;
    let other = fx.store_with(KeyCipher::from_bytes(&KEY_B));
    let err = other.get(&user, Provider::Mistral).await.unwrap_err();
    assert!(matches!(err, KeyStoreError::Corrupt), "{err:?}");
}

async fn concurrent_first_puts_leave_one_row(backend: Backend) {
    let Some(fx) = Fixture::open(backend) else {
        return;
    };
    let user = unique("user");
    let keys: Vec<String> = (0..8).map(|i| format!("sk-concurrent-{i:04}")).collect();
    let puts = keys.iter().map(|key| {
        fx.store
            .put(&user, Provider::Mistral, SecretString::from(key.as_str()))
    });
    for result in futures_util::future::join_all(puts).await {
        result.expect("concurrent put");
    }
    let rows = fx.raw_rows(&user);
    assert_eq!(rows.len(), 1);
    let stored = get(&fx.store, &user).await.unwrap();
    assert!(keys.contains(&stored));
    assert_eq!(rows[0].last4, stored[stored.len() - 4..]);
}

async fn reencrypt_all_moves_every_row_to_the_current_key_version(backend: Backend) {
    let Some(fx) = Fixture::open_isolated(backend) else {
        return;
    };
    let users: Vec<String> = (0..3).map(|_| unique("user")).collect();
    for (i, user) in users.iter().enumerate() {
        put(&fx.store, user, &format!("sk-rotate-me-{i:04}")).await;
    }
    let listed_before = fx.store.list(&users[0]).await.unwrap();

    let rotated = fx.store_with(
        KeyCipher::from_bytes(&KEY_B)
            .with_version(2)
            .unwrap()
            .with_previous(1, &b64(&KEY_A))
            .unwrap(),
    );
    // Readable before the rotation, through the previous key...
    assert_eq!(
        get(&rotated, &users[0]).await.as_deref(),
        Some("sk-rotate-me-0000")
    );
    assert_eq!(rotated.reencrypt_all().await.unwrap(), 3);
    // ...and after it, under the new key only.
    let new_key_only = fx.store_with(KeyCipher::from_bytes(&KEY_B).with_version(2).unwrap());
    for (i, user) in users.iter().enumerate() {
        let rows = fx.raw_rows(user);
        assert_eq!(rows[0].key_version, 2);
        let expected = format!("sk-rotate-me-{i:04}");
        assert_eq!(get(&rotated, user).await, Some(expected.clone()));
        assert_eq!(get(&new_key_only, user).await, Some(expected));
    }
    // Re-encryption is not an update by the user.
    assert_eq!(rotated.list(&users[0]).await.unwrap(), listed_before);
    // The old cipher no longer opens anything; nothing is left to move.
    assert!(matches!(
        fx.store.get(&users[1], Provider::Mistral).await,
        Err(KeyStoreError::Corrupt)
    ));
    assert_eq!(rotated.reencrypt_all().await.unwrap(), 0);
    // New writes use the current version.
    put(&rotated, &users[2], "sk-written-after-rotation").await;
    assert_eq!(fx.raw_rows(&users[2])[0].key_version, 2);
}

async fn connecting_again_to_a_migrated_database_works(backend: Backend) {
    let Some(fx) = Fixture::open(backend) else {
        return;
    };
    fx.db.ping().expect("ping");
    let user = unique("user");
    put(&fx.store, &user, "sk-survives-reconnect").await;
    let url = match backend {
        Backend::Sqlite => fx.sqlite_file.as_ref().unwrap().display().to_string(),
        Backend::Postgres => pg_url().unwrap(),
    };
    let again = Database::connect(&url).expect("second connect runs no migration twice");
    again.ping().unwrap();
    let store = ApiKeyStore::new(again, Arc::new(KeyCipher::from_bytes(&KEY_A)));
    assert_eq!(
        get(&store, &user).await.as_deref(),
        Some("sk-survives-reconnect")
    );
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[actix_web::test]
                async fn $name() {
                    super::$name(super::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[actix_web::test]
                async fn $name() {
                    super::$name(super::Backend::Postgres).await;
                }
            )*
        }
    };
}

on_both_backends!(
    put_then_get_returns_the_key,
    get_without_a_stored_key_returns_none,
    surrounding_whitespace_is_trimmed,
    keys_of_different_users_are_independent,
    replacing_a_key_keeps_one_row_and_updates_last4_and_updated_at,
    list_shows_provider_last4_and_time_but_never_the_key,
    delete_reports_whether_a_key_was_there,
    invalid_keys_are_rejected_and_nothing_is_stored,
    every_write_uses_a_fresh_nonce,
    a_row_copied_to_another_user_does_not_decrypt,
    a_tampered_ciphertext_is_reported_corrupt,
    a_store_with_another_encryption_key_reports_corrupt,
    concurrent_first_puts_leave_one_row,
    reencrypt_all_moves_every_row_to_the_current_key_version,
    connecting_again_to_a_migrated_database_works,
);

// ---------------------------------------------------------------------------
// One backend only.

/// Every file SQLite may have written for `db_file`.
fn sqlite_files(db_file: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    ["", "-wal", "-shm", "-journal"]
        .iter()
        .map(|suffix| PathBuf::from(format!("{}{suffix}", db_file.display())))
        .filter_map(|path| std::fs::read(&path).ok().map(|bytes| (path, bytes)))
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[actix_web::test]
async fn sqlite_plaintext_keys_never_reach_the_database_files() {
    let fx = Fixture::open(Backend::Sqlite).unwrap();
    let user = unique("user");
    let first = format!("sk-CANARY-{}", uuid::Uuid::new_v4().simple());
    let second = format!("sk-CANARY-{}", uuid::Uuid::new_v4().simple());
    put(&fx.store, &user, &first).await;
    put(&fx.store, &user, &second).await;
    put(&fx.store, &unique("user"), &first).await;

    let files = sqlite_files(fx.sqlite_file.as_ref().unwrap());
    assert!(!files.is_empty());
    // The user id is stored in clear: finding it proves we read the data.
    assert!(
        files
            .iter()
            .any(|(_, bytes)| contains(bytes, user.as_bytes())),
        "written rows not found in {:?}",
        files.iter().map(|(path, _)| path).collect::<Vec<_>>()
    );
    for (path, bytes) in &files {
        for key in [&first, &second] {
            assert!(
                !contains(bytes, key.as_bytes()),
                "plaintext key found in {}",
                path.display()
            );
            // Not even the part without the visible last 4 characters.
            assert!(
                !contains(bytes, &key.as_bytes()[..key.len() - 4]),
                "key prefix in {}",
                path.display()
            );
        }
    }
}

#[test]
fn sqlite_connect_creates_missing_directories_and_accepts_every_url_form() {
    let dir = TempDir::new();
    let cases = [
        format!("{}", dir.0.join("plain/a/b/gateway.db").display()),
        format!("sqlite://{}", dir.0.join("scheme/gateway.db").display()),
        format!("file:{}", dir.0.join("uri/gateway.db").display()),
    ];
    for (url, file) in cases.iter().zip([
        "plain/a/b/gateway.db",
        "scheme/gateway.db",
        "uri/gateway.db",
    ]) {
        let db = Database::connect(url).unwrap_or_else(|err| panic!("{url}: {err}"));
        assert_eq!(db.backend(), "sqlite");
        db.ping().unwrap();
        assert!(dir.0.join(file).is_file(), "{url} did not create {file}");
        // WAL mode is on (the -wal file exists while connections are open).
        assert!(
            dir.0.join(format!("{file}-wal")).exists(),
            "{url}: no WAL file"
        );
    }
}

#[test]
fn connect_to_postgres_on_a_closed_port_fails_fast_without_leaking_the_password() {
    // Bind then release a port: nothing listens there any more.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://gateway:Sup3rS3cretPw@127.0.0.1:{port}/gateway");
    let started = Instant::now();
    let err = Database::connect(&url).expect_err("connected to a closed port");
    assert!(
        started.elapsed() < CONNECT_FAILS_WITHIN,
        "took {:?}",
        started.elapsed()
    );
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains("Sup3rS3cretPw"), "password leaked: {text}");
        assert!(
            !text.contains("Invalid connection url"),
            "driver error hidden: {text}"
        );
    }
    let message = err.to_string();
    assert!(message.contains("postgres"), "{message}");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
}

#[test]
fn connect_to_a_server_that_never_answers_times_out() {
    // The kernel completes the TCP handshake for the backlog, but nobody
    // ever speaks PostgreSQL on this socket.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let url = format!("postgresql://gateway:An0therSecret@127.0.0.1:{port}/gateway");
    let started = Instant::now();
    let err = Database::connect(&url).expect_err("connected to a silent server");
    assert!(
        started.elapsed() < CONNECT_FAILS_WITHIN,
        "took {:?}",
        started.elapsed()
    );
    assert!(!format!("{err} {err:?}").contains("An0therSecret"));
    drop(silent);
}

#[test]
fn a_postgres_url_never_creates_a_sqlite_file() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let marker = unique("nofile");
    let cwd = std::env::current_dir().unwrap();
    let before: Vec<_> = std::fs::read_dir(&cwd)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    for url in [
        format!("postgres://gw:pw@127.0.0.1:{port}/{marker}"),
        format!("postgresql://127.0.0.1:{port}/{marker}"),
        // libpq's key=value form is refused rather than taken for a path.
        format!("host=127.0.0.1 port={port} dbname={marker}"),
    ] {
        assert!(Database::connect(&url).is_err(), "{url}");
    }
    let after: Vec<_> = std::fs::read_dir(&cwd)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let created: Vec<_> = after.iter().filter(|name| !before.contains(name)).collect();
    assert!(
        !created.iter().any(|name| {
            let name = name.to_string_lossy();
            name.contains(&marker) || name.starts_with("postgres") || name.starts_with("host=")
        }),
        "files created: {created:?}"
    );
    assert!(!cwd.join("postgres:").exists() && !cwd.join("postgresql:").exists());
}

#[actix_web::test]
async fn postgres_going_away_makes_the_store_unavailable() {
    let Some(fx) = Fixture::open_isolated(Backend::Postgres) else {
        return;
    };
    let user = unique("user");
    put(&fx.store, &user, "sk-before-the-outage").await;
    fx.scratch.as_ref().unwrap().drop_now();

    let started = Instant::now();
    let err = fx.store.get(&user, Provider::Mistral).await.unwrap_err();
    assert!(matches!(err, KeyStoreError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < CONNECT_FAILS_WITHIN,
        "took {:?}",
        started.elapsed()
    );
    let err = fx
        .store
        .put(
            &user,
            Provider::Mistral,
            SecretString::from("sk-during-the-outage"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, KeyStoreError::Unavailable(_)), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("during-the-outage"));
}
