//! Rows of the tables in [`super::schema`].

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::api_keys;

/// One stored API key, as read from `api_keys`.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = api_keys)]
pub struct ApiKeyRow {
    pub id: i64,
    pub user_id: String,
    pub provider: String,
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
    pub key_version: i32,
    pub last4: String,
    /// UTC.
    pub created_at: NaiveDateTime,
    /// UTC.
    pub updated_at: NaiveDateTime,
}

/// A row to insert into `api_keys`.
#[derive(Debug, Insertable)]
#[diesel(table_name = api_keys)]
pub struct NewApiKey<'a> {
    pub user_id: &'a str,
    pub provider: &'a str,
    pub ciphertext: &'a [u8],
    pub nonce: &'a [u8],
    pub key_version: i32,
    pub last4: &'a str,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// The columns that change when a key is replaced or re-encrypted
/// (`created_at` stays).
#[derive(Debug, AsChangeset)]
#[diesel(table_name = api_keys)]
pub struct SealedKeyChange<'a> {
    pub ciphertext: &'a [u8],
    pub nonce: &'a [u8],
    pub key_version: i32,
    pub last4: &'a str,
    pub updated_at: NaiveDateTime,
}
