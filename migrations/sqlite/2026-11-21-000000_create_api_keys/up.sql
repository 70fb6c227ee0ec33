-- Users' provider API keys, encrypted at rest (XChaCha20-Poly1305, see
-- src/crypto.rs). One row per (user, provider). Timestamps are UTC.
CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    ciphertext BLOB NOT NULL,
    nonce BLOB NOT NULL CHECK (length(nonce) = 24),
    key_version INTEGER NOT NULL,
    last4 TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    UNIQUE (user_id, provider)
);
