//! What the JWT attack tests share: validators configured for HS256 and
//! RS256 with throwaway keys (`tests/keys/`), tokens forged with any header,
//! claims, key and algorithm, and the refusal and acceptance checks.
#![allow(dead_code)]

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

use chronus_gateway::auth::{AuthFailure, Claims, JwtValidator};
use chronus_gateway::config::{JwtConfig, JwtKey};

pub const ISSUER: &str = "https://chronus.test";
pub const AUDIENCE: &str = "chronus-gateway";
pub const SECRET: &[u8] = b"jwt-attacks-secret-jwt-attacks-secret-0123";
pub const OTHER_SECRET: &[u8] = b"not-the-gateway-secret-not-the-gateway-secret";
pub const RS256_PUBLIC: &[u8] = include_bytes!("../keys/rs256_public.pem");
pub const RS256_PRIVATE: &[u8] = include_bytes!("../keys/rs256_private.pem");
pub const OTHER_RS256_PRIVATE: &[u8] = include_bytes!("../keys/other_rs256_private.pem");

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The two ways the gateway can be configured.
#[derive(Debug, Clone, Copy)]
pub enum Setup {
    Hs256,
    Rs256,
}

pub const SETUPS: [Setup; 2] = [Setup::Hs256, Setup::Rs256];

impl Setup {
    pub fn validator(self) -> JwtValidator {
        let (algorithm, key) = match self {
            Setup::Hs256 => (Algorithm::HS256, JwtKey::Secret(SECRET.to_vec())),
            Setup::Rs256 => (
                Algorithm::RS256,
                JwtKey::PublicKeyPem(RS256_PUBLIC.to_vec()),
            ),
        };
        JwtValidator::new(&JwtConfig {
            algorithm,
            key,
            issuer: Some(ISSUER.into()),
            audience: Some(AUDIENCE.into()),
            cookie_name: "chronus_token".into(),
        })
        .expect("test keys are usable")
    }

    pub fn algorithm(self) -> Algorithm {
        match self {
            Setup::Hs256 => Algorithm::HS256,
            Setup::Rs256 => Algorithm::RS256,
        }
    }

    /// The key chronus signs with.
    pub fn signing_key(self) -> EncodingKey {
        match self {
            Setup::Hs256 => EncodingKey::from_secret(SECRET),
            Setup::Rs256 => EncodingKey::from_rsa_pem(RS256_PRIVATE).unwrap(),
        }
    }

    /// A key of the same kind that is not the gateway's.
    pub fn attacker_key(self) -> EncodingKey {
        match self {
            Setup::Hs256 => EncodingKey::from_secret(OTHER_SECRET),
            Setup::Rs256 => EncodingKey::from_rsa_pem(OTHER_RS256_PRIVATE).unwrap(),
        }
    }

    /// A genuine token with these claims.
    pub fn token(self, claims: &Value) -> String {
        forge(
            &json!({"alg": alg_name(self.algorithm()), "typ": "JWT"}),
            claims,
            &self.signing_key(),
            self.algorithm(),
        )
    }
}

pub fn alg_name(alg: Algorithm) -> String {
    serde_json::to_value(alg)
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with exactly this header and these claims, signed with `key` as
/// `alg` — whatever the header says, as an attacker would write it.
pub fn forge(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

/// Claims a genuine chronus token carries.
pub fn claims() -> Value {
    let now = now();
    json!({"sub": "user-42", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600})
}

pub fn claims_with(changes: Value) -> Value {
    let mut claims = claims();
    for (key, value) in changes.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(key);
        } else {
            claims[key] = value.clone();
        }
    }
    claims
}

#[track_caller]
pub fn assert_refused(setup: Setup, token: &str, expected: AuthFailure) {
    assert_eq!(
        setup.validator().validate(token),
        Err(expected),
        "{setup:?} validator"
    );
}

#[track_caller]
pub fn assert_accepted(setup: Setup, token: &str) -> Claims {
    setup
        .validator()
        .validate(token)
        .unwrap_or_else(|e| panic!("{setup:?} validator refused a genuine token: {e:?}"))
}
