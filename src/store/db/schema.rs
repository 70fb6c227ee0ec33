// Shared by both backends; the same as `diesel print-schema` gives for the
// PostgreSQL migrations (see diesel.toml). Keep migrations/sqlite in step.

diesel::table! {
    /// Users' provider API keys, encrypted at rest.
    api_keys (id) {
        id -> Int8,
        user_id -> Text,
        provider -> Text,
        /// XChaCha20-Poly1305 ciphertext including its tag.
        ciphertext -> Bytea,
        /// 24 random bytes, fresh for every write.
        nonce -> Bytea,
        /// Version of the encryption key that sealed `ciphertext`.
        key_version -> Int4,
        /// Last characters of the key, shown to the user to recognise it.
        last4 -> Text,
        /// UTC.
        created_at -> Timestamp,
        /// UTC.
        updated_at -> Timestamp,
    }
}
