//! The key store's databases themselves: SQLite files never hold a plaintext
//! key, every URL form connects, connect failures are fast and leak no
//! password, a PostgreSQL URL never creates a SQLite file, and PostgreSQL
//! going away makes the store unavailable.
//!
//! PostgreSQL comes from `TEST_DATABASE_URL_PG` (see `key_store.rs`).

#[path = "common/key_store_fixture.rs"]
mod key_store_fixture;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chronus_gateway::store::db::Database;
use chronus_gateway::store::keys::{KeyStoreError, Provider};
use chronus_gateway::store::SecretString;
use key_store_fixture::*;

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
