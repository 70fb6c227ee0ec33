//! The encrypted API key store against real databases: every behaviour runs
//! on SQLite (a temporary file) and on PostgreSQL.
//!
//! PostgreSQL comes from `TEST_DATABASE_URL_PG`:
//!   eval "$(bash .ci/start-postgres.sh)" && cargo test --test key_store
//! Without it the PostgreSQL variants are skipped with a loud note, unless
//! `CI` is set, where they fail. Tests use their own random user ids, so they
//! share one PostgreSQL database; those that need the whole table (key
//! rotation, a database going away) create a scratch database.
//!
//! This file: the behaviours run on both backends; the databases themselves
//! are in `key_store_database.rs`.

#[path = "common/key_store_fixture.rs"]
mod key_store_fixture;

use std::sync::Arc;
use std::time::Duration;

use chronus_gateway::store::db::schema::api_keys;
use chronus_gateway::store::db::Database;
use chronus_gateway::store::keys::{ApiKeyStore, KeyStoreError, Provider};
use chronus_gateway::store::{crypto::KeyCipher, SecretString};
use diesel::prelude::*;
use key_store_fixture::*;

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
