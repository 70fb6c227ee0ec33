//! Encryption of users' provider API keys at rest.
//!
//! Keys are sealed with XChaCha20-Poly1305: a 32-byte key from
//! `API_KEY_ENCRYPTION_KEY` (base64) and a fresh random 24-byte nonce per
//! encryption. XChaCha's 192-bit nonce makes random nonces safe for any
//! realistic number of writes. Every sealed value records the *version* of
//! the key that sealed it, so the key can be rotated: the cipher holds one
//! current key (used to encrypt) and, optionally, older keys by version (used
//! only to decrypt), see [`KeyCipher::with_previous`] and
//! [`crate::store::keys::ApiKeyStore::reencrypt_all`].

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use chacha20poly1305::aead::rand_core::RngCore as _;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, Zeroizing};

use super::secret::SecretString;

/// Environment variable that holds the current encryption key; named in
/// error messages (its value never is).
pub const ENCRYPTION_KEY_VAR: &str = "API_KEY_ENCRYPTION_KEY";
/// Length of an XChaCha20-Poly1305 key.
pub const KEY_BYTES: usize = 32;
/// Length of an XChaCha20-Poly1305 nonce.
pub const NONCE_BYTES: usize = 24;
/// Key version a cipher starts with unless told otherwise.
pub const DEFAULT_KEY_VERSION: u32 = 1;
/// Versions are stored in an SQL `INTEGER` column, hence the `i32` bound.
const MAX_KEY_VERSION: u32 = i32::MAX as u32;

/// Why a key could not be loaded or a value could not be opened. Display
/// never contains key material or plaintext.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The configured key is not usable; `name` says which one.
    #[error("{name} must be exactly 32 bytes encoded as base64: {reason}")]
    InvalidKey { name: String, reason: String },
    /// A key version outside `1..=i32::MAX` or one used twice.
    #[error("invalid encryption key version {version}: {reason}")]
    InvalidVersion { version: u32, reason: &'static str },
    /// The value was sealed with a key version this cipher does not hold.
    #[error("no encryption key with version {0} is configured")]
    UnknownKeyVersion(u32),
    /// Authentication failed: wrong key, tampered data, or data bound to
    /// another owner (AAD mismatch).
    #[error("decryption failed: wrong key, tampered data or wrong owner")]
    Decrypt,
    /// The plaintext is not UTF-8 (cannot happen for values we sealed).
    #[error("decrypted value is not valid UTF-8")]
    NotUtf8,
}

/// An encrypted value and what is needed to open it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Ciphertext including the 16-byte Poly1305 tag.
    pub ciphertext: Vec<u8>,
    pub nonce: [u8; NONCE_BYTES],
    /// Version of the key that sealed it.
    pub key_version: u32,
}

/// XChaCha20-Poly1305 with a current key and optional older keys kept for
/// decryption only. The key bytes live inside [`XChaCha20Poly1305`], which
/// zeroizes them on drop; `Debug` shows versions only.
pub struct KeyCipher {
    current_version: u32,
    current: XChaCha20Poly1305,
    previous: BTreeMap<u32, XChaCha20Poly1305>,
}

impl KeyCipher {
    /// Load the current key from its base64 form (as in
    /// `API_KEY_ENCRYPTION_KEY`), with version [`DEFAULT_KEY_VERSION`].
    pub fn from_base64(encoded: &str) -> Result<Self, CryptoError> {
        let key = decode_key(encoded, ENCRYPTION_KEY_VAR)?;
        Ok(Self::from_bytes(&key))
    }

    /// Build a cipher from raw key bytes, with version [`DEFAULT_KEY_VERSION`].
    pub fn from_bytes(key: &[u8; KEY_BYTES]) -> Self {
        Self {
            current_version: DEFAULT_KEY_VERSION,
            current: new_aead(key),
            previous: BTreeMap::new(),
        }
    }

    /// Set the version of the current key (what new ciphertexts are tagged
    /// with). Bump it whenever `API_KEY_ENCRYPTION_KEY` changes.
    pub fn with_version(mut self, version: u32) -> Result<Self, CryptoError> {
        check_version(version)?;
        if self.previous.contains_key(&version) {
            return Err(CryptoError::InvalidVersion {
                version,
                reason: "already used by a previous key",
            });
        }
        self.current_version = version;
        Ok(self)
    }

    /// Add an older key (base64), used only to decrypt values sealed with
    /// `version`. Keep it until `reencrypt_all` has moved every row over.
    pub fn with_previous(mut self, version: u32, key_base64: &str) -> Result<Self, CryptoError> {
        check_version(version)?;
        if version == self.current_version || self.previous.contains_key(&version) {
            return Err(CryptoError::InvalidVersion {
                version,
                reason: "already used by another key",
            });
        }
        let name = format!("previous {ENCRYPTION_KEY_VAR} (version {version})");
        let key = decode_key(key_base64, &name)?;
        self.previous.insert(version, new_aead(&key));
        Ok(self)
    }

    /// Version new ciphertexts are sealed with.
    pub fn current_version(&self) -> u32 {
        self.current_version
    }

    /// Whether this cipher can open values sealed with `version`.
    pub fn knows_version(&self, version: u32) -> bool {
        version == self.current_version || self.previous.contains_key(&version)
    }

    /// Seal `plaintext` with the current key and a fresh random nonce.
    /// `aad` is authenticated but not stored: the same `aad` must be given
    /// to [`KeyCipher::decrypt`].
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> Sealed {
        let mut nonce = [0u8; NONCE_BYTES];
        OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .current
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            // XChaCha20-Poly1305 only refuses messages of ~256 GiB; API
            // keys are capped far below that by the key store.
            .expect("XChaCha20-Poly1305 encryption of a bounded message cannot fail");
        Sealed {
            ciphertext,
            nonce,
            key_version: self.current_version,
        }
    }

    /// Open a value sealed by [`KeyCipher::encrypt`] (with this key or a
    /// previous one) and bound to `aad`.
    pub fn decrypt(&self, sealed: &Sealed, aad: &[u8]) -> Result<SecretString, CryptoError> {
        let plaintext = self.decrypt_bytes(sealed, aad)?;
        match std::str::from_utf8(&plaintext) {
            Ok(text) => Ok(SecretString::new(text.to_owned())),
            Err(_) => Err(CryptoError::NotUtf8),
        }
    }

    /// Like [`KeyCipher::decrypt`] for binary plaintexts; the buffer is
    /// wiped on drop.
    pub fn decrypt_bytes(
        &self,
        sealed: &Sealed,
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let aead = if sealed.key_version == self.current_version {
            &self.current
        } else {
            self.previous
                .get(&sealed.key_version)
                .ok_or(CryptoError::UnknownKeyVersion(sealed.key_version))?
        };
        aead.decrypt(
            &XNonce::from(sealed.nonce),
            Payload {
                msg: &sealed.ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Decrypt)
    }
}

impl fmt::Debug for KeyCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyCipher")
            .field("current_version", &self.current_version)
            .field(
                "previous_versions",
                &self.previous.keys().collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

fn new_aead(key: &[u8; KEY_BYTES]) -> XChaCha20Poly1305 {
    // `Key::from` copies into a stack array; wipe that copy once the cipher
    // (which zeroizes its own copy on drop) is built.
    let mut key = Key::from(*key);
    let aead = XChaCha20Poly1305::new(&key);
    key.as_mut_slice().zeroize();
    aead
}

/// Decode a base64 key; `name` says which setting it came from.
fn decode_key(encoded: &str, name: &str) -> Result<Zeroizing<[u8; KEY_BYTES]>, CryptoError> {
    let invalid = |reason: String| CryptoError::InvalidKey {
        name: name.to_owned(),
        reason,
    };
    let encoded = encoded.trim();
    if encoded.is_empty() {
        return Err(invalid("it is empty".to_owned()));
    }
    // Accept both alphabets: keys come from `openssl rand -base64 32` as
    // often as from URL-safe generators.
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(encoded))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded))
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded))
        .map(Zeroizing::new)
        .map_err(|_| invalid("it is not valid base64".to_owned()))?;
    if decoded.len() != KEY_BYTES {
        return Err(invalid(format!("it decodes to {} bytes", decoded.len())));
    }
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    key.copy_from_slice(&decoded);
    Ok(key)
}

fn check_version(version: u32) -> Result<(), CryptoError> {
    if version == 0 || version > MAX_KEY_VERSION {
        return Err(CryptoError::InvalidVersion {
            version,
            reason: "must be between 1 and 2147483647",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: [u8; 32] = [7u8; 32];
    const KEY_B: [u8; 32] = [9u8; 32];

    fn b64(key: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(key)
    }

    #[test]
    fn round_trip_with_matching_aad() {
        let cipher = KeyCipher::from_bytes(&KEY_A);
        let sealed = cipher.encrypt(b"sk-secret-value", b"aad");
        assert_eq!(sealed.key_version, 1);
        assert_eq!(
            cipher.decrypt(&sealed, b"aad").unwrap().expose(),
            "sk-secret-value"
        );
    }

    #[test]
    fn each_encryption_uses_a_fresh_nonce() {
        let cipher = KeyCipher::from_bytes(&KEY_A);
        let first = cipher.encrypt(b"same", b"aad");
        let second = cipher.encrypt(b"same", b"aad");
        assert_ne!(first.nonce, second.nonce);
        assert_ne!(first.ciphertext, second.ciphertext);
    }

    #[test]
    fn wrong_key_fails() {
        let sealed = KeyCipher::from_bytes(&KEY_A).encrypt(b"secret", b"aad");
        let other = KeyCipher::from_bytes(&KEY_B);
        assert_eq!(
            other.decrypt(&sealed, b"aad").unwrap_err(),
            CryptoError::Decrypt
        );
    }

    #[test]
    fn wrong_aad_fails() {
        let cipher = KeyCipher::from_bytes(&KEY_A);
        let sealed = cipher.encrypt(b"secret", b"user-1");
        assert_eq!(
            cipher.decrypt(&sealed, b"user-2").unwrap_err(),
            CryptoError::Decrypt
        );
    }

    #[test]
    fn tampered_ciphertext_fails() {
        let cipher = KeyCipher::from_bytes(&KEY_A);
        let mut sealed = cipher.encrypt(b"secret", b"aad");
        sealed.ciphertext[0] ^= 0x01;
        assert_eq!(
            cipher.decrypt(&sealed, b"aad").unwrap_err(),
            CryptoError::Decrypt
        );
    }

    #[test]
    fn tampered_nonce_fails() {
        let cipher = KeyCipher::from_bytes(&KEY_A);
        let mut sealed = cipher.encrypt(b"secret", b"aad");
        sealed.nonce[23] ^= 0x80;
        assert_eq!(
            cipher.decrypt(&sealed, b"aad").unwrap_err(),
            CryptoError::Decrypt
        );
    }

    #[test]
    fn base64_key_of_32_bytes_is_accepted() {
        let cipher = KeyCipher::from_base64(&b64(&KEY_A)).unwrap();
        let sealed = KeyCipher::from_bytes(&KEY_A).encrypt(b"x", b"");
        assert_eq!(cipher.decrypt(&sealed, b"").unwrap().expose(), "x");
    }

    #[test]
    fn bad_base64_is_rejected_naming_the_variable() {
        let err = KeyCipher::from_base64("not base64 !!!").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("API_KEY_ENCRYPTION_KEY"), "{message}");
        assert!(!message.contains("not base64 !!!"), "{message}");
    }

    #[test]
    fn wrong_length_key_is_rejected_without_printing_it() {
        let short = b64(&[1u8; 16]);
        let err = KeyCipher::from_base64(&short).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("API_KEY_ENCRYPTION_KEY"), "{message}");
        assert!(message.contains("16 bytes"), "{message}");
        assert!(!message.contains(&short), "{message}");

        let long = b64(&[1u8; 33]);
        assert!(KeyCipher::from_base64(&long).is_err());
        assert!(KeyCipher::from_base64("").is_err());
    }

    #[test]
    fn debug_prints_no_key_material() {
        let cipher = KeyCipher::from_base64(&b64(&KEY_A))
            .unwrap()
            .with_version(2)
            .unwrap()
            .with_previous(1, &b64(&KEY_B))
            .unwrap();
        let debug = format!("{cipher:?}");
        assert!(debug.contains("current_version: 2"), "{debug}");
        assert!(
            !debug.contains(&b64(&KEY_A)) && !debug.contains(&b64(&KEY_B)),
            "{debug}"
        );
        assert!(
            !debug.contains("7, 7") && !debug.contains("9, 9"),
            "{debug}"
        );
    }

    #[test]
    fn previous_key_decrypts_old_values_and_new_values_use_current_version() {
        let old = KeyCipher::from_bytes(&KEY_A);
        let sealed_v1 = old.encrypt(b"old secret", b"aad");

        let rotated = KeyCipher::from_bytes(&KEY_B)
            .with_version(2)
            .unwrap()
            .with_previous(1, &b64(&KEY_A))
            .unwrap();
        assert_eq!(
            rotated.decrypt(&sealed_v1, b"aad").unwrap().expose(),
            "old secret"
        );
        let sealed_v2 = rotated.encrypt(b"new secret", b"aad");
        assert_eq!(sealed_v2.key_version, 2);
        assert_eq!(
            old.decrypt(&sealed_v2, b"aad").unwrap_err(),
            CryptoError::UnknownKeyVersion(2)
        );
    }

    #[test]
    fn invalid_and_duplicate_versions_are_rejected() {
        assert!(KeyCipher::from_bytes(&KEY_A).with_version(0).is_err());
        assert!(KeyCipher::from_bytes(&KEY_A)
            .with_version(u32::MAX)
            .is_err());
        assert!(KeyCipher::from_bytes(&KEY_A)
            .with_previous(1, &b64(&KEY_B))
            .is_err());
        assert!(KeyCipher::from_bytes(&KEY_A)
            .with_version(2)
            .unwrap()
            .with_previous(1, &b64(&KEY_B))
            .unwrap()
            .with_version(1)
            .is_err());
    }
}
