//! Users' provider API keys (today: Mistral), encrypted at rest.
//!
//! Each key is sealed with [`KeyCipher`] and bound, through the AEAD's
//! associated data, to its owner and provider: a row copied to another user
//! or provider no longer decrypts. Only the last characters (`last4`) are
//! kept in clear, to let the user recognise the key in the settings page.
//! Keys are never logged; logs name the user, the provider and `last4`.
//! Rotating the encryption key: `key_rotation.rs`.

use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

use crate::store::crypto::{CryptoError, KeyCipher, Sealed, NONCE_BYTES};
use crate::store::db::models::{ApiKeyRow, NewApiKey, SealedKeyChange};
use crate::store::db::schema::api_keys;
use crate::store::db::{AnyConnection, Database, DbError};
use crate::store::SecretString;

/// Longest API key accepted, in characters.
pub const MAX_API_KEY_CHARS: usize = 512;
/// Characters of a key kept in clear (fewer for keys shorter than twice
/// this, so that at most half of a key is ever shown).
pub const LAST_CHARS_SHOWN: usize = 4;
/// Associated-data prefix; the version lets the binding format change.
const AAD_PREFIX: &[u8] = b"chronus-api-key:v1:";

/// The one provider enum; the providers a user stores a key for are
/// [`Provider::WITH_API_KEY`].
pub use crate::wire::browser::{Provider, UnknownProvider};

/// What the settings page may know about a stored key: never the key.
/// Serializes as `{"provider":"mistral","last4":"…","updatedAt":"…Z"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyInfo {
    pub provider: String,
    pub last4: String,
    #[serde(serialize_with = "serialize_rfc3339")]
    pub updated_at: DateTime<Utc>,
}

fn serialize_rfc3339<S: serde::Serializer>(
    at: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Key store errors; none of them ever carries the key.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// The submitted key is unacceptable (HTTP: 400); the reason is safe to
    /// show the user.
    #[error("invalid API key: {0}")]
    InvalidKey(String),
    /// The database is down or unreachable (HTTP: 503).
    #[error("API key store unavailable: {0}")]
    Unavailable(#[source] DbError),
    /// A stored key cannot be decrypted: wrong or missing encryption key,
    /// or a tampered row. The user has to enter the key again.
    #[error("stored API key cannot be decrypted")]
    Corrupt,
}

impl From<DbError> for KeyStoreError {
    fn from(err: DbError) -> Self {
        KeyStoreError::Unavailable(err)
    }
}

impl From<DieselError> for KeyStoreError {
    fn from(err: DieselError) -> Self {
        KeyStoreError::Unavailable(DbError::Query(err))
    }
}

/// Encrypted per-user provider API keys. Cheap to clone. Every method runs
/// its database work off the async threads.
#[derive(Debug, Clone)]
pub struct ApiKeyStore {
    db: Database,
    cipher: Arc<KeyCipher>,
}

impl ApiKeyStore {
    pub fn new(db: Database, cipher: Arc<KeyCipher>) -> Self {
        Self { db, cipher }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn cipher(&self) -> &Arc<KeyCipher> {
        &self.cipher
    }

    /// Store or replace `user_id`'s key for `provider`. Surrounding
    /// whitespace is trimmed; the key must then be 1 to
    /// [`MAX_API_KEY_CHARS`] printable ASCII characters without spaces.
    /// A replacement keeps `created_at` and sets `updated_at`.
    pub async fn put(
        &self,
        user_id: &str,
        provider: Provider,
        api_key: SecretString,
    ) -> Result<(), KeyStoreError> {
        let api_key = validate_api_key(&api_key)?;
        let last4 = last_chars(api_key.expose());
        let sealed = self.cipher.encrypt(
            api_key.expose().as_bytes(),
            &aad(user_id, provider.as_str()),
        );
        drop(api_key);

        let user = user_id.to_owned();
        let stored_last4 = last4.clone();
        self.db
            .run(move |conn| upsert(conn, &user, provider, &sealed, &stored_last4, now_utc()))
            .await?;
        log::info!("stored {provider} API key ending in {last4:?} for user {user_id}");
        Ok(())
    }

    /// The user's stored keys, described without the keys, by provider.
    pub async fn list(&self, user_id: &str) -> Result<Vec<ApiKeyInfo>, KeyStoreError> {
        let user = user_id.to_owned();
        let rows: Vec<(String, String, NaiveDateTime)> = self
            .db
            .run(move |conn| {
                api_keys::table
                    .filter(api_keys::user_id.eq(&user))
                    .order(api_keys::provider.asc())
                    .select((api_keys::provider, api_keys::last4, api_keys::updated_at))
                    .load(conn)
                    .map_err(KeyStoreError::from)
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(provider, last4, updated_at)| ApiKeyInfo {
                provider,
                last4,
                updated_at: updated_at.and_utc(),
            })
            .collect())
    }

    /// Remove the user's key for `provider`; `false` when there was none.
    pub async fn delete(&self, user_id: &str, provider: Provider) -> Result<bool, KeyStoreError> {
        let user = user_id.to_owned();
        let deleted = self
            .db
            .run(move |conn| {
                diesel::delete(
                    api_keys::table
                        .filter(api_keys::user_id.eq(&user))
                        .filter(api_keys::provider.eq(provider.as_str())),
                )
                .execute(conn)
                .map_err(KeyStoreError::from)
            })
            .await?;
        if deleted > 0 {
            log::info!("deleted {provider} API key of user {user_id}");
        }
        Ok(deleted > 0)
    }

    /// The user's key for `provider`, decrypted; `None` when there is none.
    pub async fn get(
        &self,
        user_id: &str,
        provider: Provider,
    ) -> Result<Option<SecretString>, KeyStoreError> {
        let user = user_id.to_owned();
        let row: Option<ApiKeyRow> = self
            .db
            .run(move |conn| {
                api_keys::table
                    .filter(api_keys::user_id.eq(&user))
                    .filter(api_keys::provider.eq(provider.as_str()))
                    .select(ApiKeyRow::as_select())
                    .first(conn)
                    .optional()
                    .map_err(KeyStoreError::from)
            })
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        match open_row(&self.cipher, &row) {
            Ok(key) => {
                log::debug!(
                    "read {provider} API key ending in {:?} for user {user_id}",
                    row.last4
                );
                Ok(Some(key))
            }
            Err(err) => {
                log::warn!(
                    "cannot decrypt {provider} API key of user {user_id} (key version {}): {err}",
                    row.key_version
                );
                Err(KeyStoreError::Corrupt)
            }
        }
    }
}

/// The trimmed key, or why it is refused (without quoting it).
fn validate_api_key(api_key: &SecretString) -> Result<SecretString, KeyStoreError> {
    let key = api_key.expose().trim();
    if key.is_empty() {
        return Err(KeyStoreError::InvalidKey("the API key is empty".to_owned()));
    }
    if key.chars().count() > MAX_API_KEY_CHARS {
        return Err(KeyStoreError::InvalidKey(format!(
            "the API key is longer than {MAX_API_KEY_CHARS} characters"
        )));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(KeyStoreError::InvalidKey(
            "the API key may contain only printable ASCII characters, without spaces".to_owned(),
        ));
    }
    Ok(SecretString::from(key))
}

/// The last [`LAST_CHARS_SHOWN`] characters of an (ASCII) key, but never
/// more than half of it.
fn last_chars(key: &str) -> String {
    let shown = LAST_CHARS_SHOWN.min(key.len() / 2);
    key[key.len() - shown..].to_owned()
}

/// Binds a ciphertext to its owner and provider. The provider never
/// contains NUL, so the encoding is unambiguous.
pub(super) fn aad(user_id: &str, provider: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_PREFIX.len() + user_id.len() + 1 + provider.len());
    aad.extend_from_slice(AAD_PREFIX);
    aad.extend_from_slice(user_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(provider.as_bytes());
    aad
}

/// Now, UTC, at the microsecond precision both backends store.
fn now_utc() -> NaiveDateTime {
    Utc::now().naive_utc().trunc_subsecs(6)
}

pub(super) fn db_version(version: u32) -> i32 {
    // KeyCipher only accepts versions in 1..=i32::MAX.
    i32::try_from(version).expect("KeyCipher key versions fit in i32")
}

/// Update the (user, provider) row, or insert it. Portable to both backends
/// (diesel's multi-backend has no ON CONFLICT); a concurrent first insert
/// makes ours fail on the unique constraint, and we then replace it.
fn upsert(
    conn: &mut AnyConnection,
    user_id: &str,
    provider: Provider,
    sealed: &Sealed,
    last4: &str,
    now: NaiveDateTime,
) -> Result<(), KeyStoreError> {
    let change = SealedKeyChange {
        ciphertext: &sealed.ciphertext,
        nonce: &sealed.nonce,
        key_version: db_version(sealed.key_version),
        last4,
        updated_at: now,
    };
    let mut retried = false;
    loop {
        let updated = diesel::update(
            api_keys::table
                .filter(api_keys::user_id.eq(user_id))
                .filter(api_keys::provider.eq(provider.as_str())),
        )
        .set(&change)
        .execute(conn)?;
        if updated > 0 {
            return Ok(());
        }
        let inserted = diesel::insert_into(api_keys::table)
            .values(NewApiKey {
                user_id,
                provider: provider.as_str(),
                ciphertext: &sealed.ciphertext,
                nonce: &sealed.nonce,
                key_version: db_version(sealed.key_version),
                last4,
                created_at: now,
                updated_at: now,
            })
            .execute(conn);
        match inserted {
            Ok(_) => return Ok(()),
            Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) if !retried => {
                retried = true
            }
            Err(err) => return Err(err.into()),
        }
    }
}

pub(super) fn sealed_from_row(row: &ApiKeyRow) -> Result<Sealed, CryptoError> {
    let nonce: [u8; NONCE_BYTES] = row
        .nonce
        .as_slice()
        .try_into()
        .map_err(|_| CryptoError::Decrypt)?;
    let key_version = u32::try_from(row.key_version).map_err(|_| CryptoError::Decrypt)?;
    Ok(Sealed {
        ciphertext: row.ciphertext.clone(),
        nonce,
        key_version,
    })
}

fn open_row(cipher: &KeyCipher, row: &ApiKeyRow) -> Result<SecretString, CryptoError> {
    let sealed = sealed_from_row(row)?;
    cipher.decrypt(&sealed, &aad(&row.user_id, &row.provider))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_info_serializes_camel_case_rfc3339() {
        let info = ApiKeyInfo {
            provider: "mistral".to_owned(),
            last4: "abcd".to_owned(),
            updated_at: DateTime::parse_from_rfc3339("2026-11-21T10:00:00.123456Z")
                .unwrap()
                .with_timezone(&Utc),
        };
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"provider":"mistral","last4":"abcd","updatedAt":"2026-11-21T10:00:00.123Z"}"#
        );
    }

    #[test]
    fn last_chars_never_shows_more_than_half() {
        assert_eq!(last_chars("sk-0123456789"), "6789");
        assert_eq!(last_chars("abcdefgh"), "efgh");
        assert_eq!(last_chars("abcdef"), "def");
        assert_eq!(last_chars("a"), "");
    }

    #[test]
    fn validation_trims_and_refuses_bad_keys_without_quoting_them() {
        let ok = validate_api_key(&SecretString::from("  sk-abc\n")).unwrap();
        assert_eq!(ok.expose(), "sk-abc");
        for bad in ["", "   ", "sk abc", "sk-\u{7}", "sk-é", &"x".repeat(513)] {
            let err = validate_api_key(&SecretString::from(bad)).unwrap_err();
            assert!(matches!(err, KeyStoreError::InvalidKey(_)), "{bad:?}");
            if !bad.trim().is_empty() {
                assert!(!err.to_string().contains(bad.trim()), "{err}");
            }
        }
        assert!(validate_api_key(&SecretString::from("x".repeat(512))).is_ok());
    }

    #[test]
    fn aad_binds_user_and_provider() {
        assert_ne!(aad("alice", "mistral"), aad("bob", "mistral"));
        assert_eq!(
            aad("alice", "mistral"),
            b"chronus-api-key:v1:alice\0mistral".to_vec()
        );
    }
}
