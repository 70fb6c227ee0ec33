//! Rotating `API_KEY_ENCRYPTION_KEY`: the cipher built from the configuration
//! (current key + previous ones) and the re-encryption of stale rows.
//!
//! 1. Generate a new key (`openssl rand -base64 32`).
//! 2. Start the gateway with the new key as current, with a higher version,
//!    and the old key as previous (see [`cipher_from_config`]):
//!    `API_KEY_ENCRYPTION_KEY=<new>`, `API_KEY_ENCRYPTION_KEY_VERSION=2`,
//!    `API_KEY_PREVIOUS_ENCRYPTION_KEYS=1:<old>`.
//!    Stored keys stay readable; new writes use version 2.
//! 3. Run `chronus-gateway reencrypt-keys` (same environment), which calls
//!    [`ApiKeyStore::reencrypt_all`]: it reports how many rows it moved to
//!    the current version (rows that cannot be decrypted are logged and left
//!    alone).
//! 4. Once it reports 0, drop the previous key from the configuration.

use std::sync::Arc;

use diesel::prelude::*;

use super::crypto::{CryptoError, KeyCipher};
use super::db::models::ApiKeyRow;
use super::db::schema::api_keys;
use super::db::AnyConnection;
use super::keys::{aad, db_version, sealed_from_row, ApiKeyStore, KeyStoreError};

/// Rows re-encrypted per query by `reencrypt_all`.
const REENCRYPT_BATCH_ROWS: i64 = 100;

/// The gateway's cipher from its configuration: the current key with its
/// version, plus every previous key (decryption only).
pub fn cipher_from_config(config: &crate::config::Config) -> Result<KeyCipher, CryptoError> {
    let mut cipher = KeyCipher::from_base64(config.api_key_encryption_key.expose())?
        .with_version(config.api_key_encryption_key_version)?;
    for (version, key) in &config.api_key_previous_encryption_keys {
        cipher = cipher.with_previous(*version, key.expose())?;
    }
    Ok(cipher)
}

impl ApiKeyStore {
    /// Re-encrypt every stored key whose key version is not the cipher's
    /// current one (see the module docs on rotation). Returns the number
    /// of rows re-encrypted. Rows that cannot be decrypted are logged and
    /// left as they are; rows replaced meanwhile are skipped.
    pub async fn reencrypt_all(&self) -> Result<usize, KeyStoreError> {
        let cipher = Arc::clone(self.cipher());
        self.database()
            .run(move |conn| reencrypt_stale_rows(conn, &cipher))
            .await
    }
}

fn reencrypt_stale_rows(
    conn: &mut AnyConnection,
    cipher: &KeyCipher,
) -> Result<usize, KeyStoreError> {
    let current = db_version(cipher.current_version());
    let mut after_id = 0i64;
    let mut reencrypted = 0usize;
    let mut failed = 0usize;
    loop {
        let rows: Vec<ApiKeyRow> = api_keys::table
            .filter(api_keys::key_version.ne(current))
            .filter(api_keys::id.gt(after_id))
            .order(api_keys::id.asc())
            .limit(REENCRYPT_BATCH_ROWS)
            .select(ApiKeyRow::as_select())
            .load(conn)?;
        let Some(last) = rows.last() else {
            break;
        };
        after_id = last.id;
        for row in &rows {
            let aad = aad(&row.user_id, &row.provider);
            let plaintext =
                match sealed_from_row(row).and_then(|sealed| cipher.decrypt_bytes(&sealed, &aad)) {
                    Ok(plaintext) => plaintext,
                    Err(err) => {
                        failed += 1;
                        log::error!(
                            "cannot re-encrypt {} API key of user {} (key version {}): {err}",
                            row.provider,
                            row.user_id,
                            row.key_version
                        );
                        continue;
                    }
                };
            let sealed = cipher.encrypt(&plaintext, &aad);
            // Only if the row is still the one we read: a concurrent `put`
            // has already written it with the current key.
            let updated = diesel::update(
                api_keys::table
                    .filter(api_keys::id.eq(row.id))
                    .filter(api_keys::nonce.eq(&row.nonce)),
            )
            .set((
                api_keys::ciphertext.eq(&sealed.ciphertext),
                api_keys::nonce.eq(&sealed.nonce[..]),
                api_keys::key_version.eq(current),
            ))
            .execute(conn)?;
            reencrypted += updated;
        }
    }
    log::info!(
        "re-encrypted {reencrypted} API keys to key version {current}; {failed} could not be decrypted"
    );
    Ok(reencrypted)
}
