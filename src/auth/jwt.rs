//! Validation of chronus JWTs.

use jsonwebtoken::{decode, errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::{ConfigError, JwtConfig, JwtKey};

/// Longer tokens are refused before any decoding work.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECS: u64 = 5;

/// The claims the gateway uses.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The chronus user id: a JSON string or integer (chronus issues
    /// integers), normalised to its decimal string. Any other type is refused.
    #[serde(deserialize_with = "sub_as_decimal_string")]
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

/// `sub` as a string, or an integer in the i64/u64 range written as its
/// decimal string (so `7` and `"7"` are the same user). Floats, booleans,
/// objects, arrays and integers beyond u64 (which JSON parsers read as
/// floats) are refused: a user id must not depend on float rounding.
fn sub_as_decimal_string<'de, D>(deserializer: D) -> Result<String, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::Error;
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::String(sub) => Ok(sub),
        serde_json::Value::Number(n) if n.is_u64() || n.is_i64() => Ok(n.to_string()),
        _ => Err(D::Error::custom("sub must be a string or an integer")),
    }
}

/// Why a token was refused; the label feeds the auth-failure metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Oversized,
    Malformed,
    BadSignature,
    WrongAlgorithm,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    MissingClaim,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Oversized => "oversized",
            AuthFailure::Malformed => "malformed",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::WrongAlgorithm => "wrong_algorithm",
            AuthFailure::Expired => "expired",
            AuthFailure::NotYetValid => "not_yet_valid",
            AuthFailure::WrongIssuer => "wrong_issuer",
            AuthFailure::WrongAudience => "wrong_audience",
            AuthFailure::MissingClaim => "missing_claim",
        }
    }
}

/// Verifies tokens with the configured key and algorithm only.
pub struct JwtValidator {
    key: DecodingKey,
    validation: Validation,
}

impl JwtValidator {
    pub fn new(config: &JwtConfig) -> Result<JwtValidator, ConfigError> {
        let key = match &config.key {
            JwtKey::Secret(secret) => DecodingKey::from_secret(secret),
            JwtKey::PublicKeyPem(pem) => {
                let parsed = match config.algorithm {
                    Algorithm::RS256 => DecodingKey::from_rsa_pem(pem),
                    _ => DecodingKey::from_ec_pem(pem),
                };
                parsed.map_err(|e| ConfigError {
                    var: "JWT_PUBLIC_KEY_FILE",
                    problem: format!("unusable public key: {e}"),
                })?
            }
        };
        // `Validation::new` pins the one algorithm: a token's own `alg` header
        // (including `none` or an HS/RS swap) is never trusted.
        let mut validation = Validation::new(config.algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // A configured issuer or audience must also be present: a token
        // without the claim is refused, not waved through.
        // `sub` is required by `Claims` itself: the library's own check would
        // refuse chronus's integer `sub`, which it only recognises as a string.
        let mut required = vec!["exp"];
        match &config.issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &config.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(JwtValidator { key, validation })
    }

    /// Checks signature, algorithm, `exp`, `nbf`, and `iss`/`aud` when configured.
    pub fn validate(&self, token: &str) -> Result<Claims, AuthFailure> {
        if token.is_empty() {
            return Err(AuthFailure::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthFailure::Oversized);
        }
        let data =
            decode::<Claims>(token, &self.key, &self.validation).map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthFailure::Expired,
                ErrorKind::ImmatureSignature => AuthFailure::NotYetValid,
                ErrorKind::InvalidSignature => AuthFailure::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    AuthFailure::WrongAlgorithm
                }
                ErrorKind::InvalidIssuer => AuthFailure::WrongIssuer,
                ErrorKind::InvalidAudience => AuthFailure::WrongAudience,
                ErrorKind::MissingRequiredClaim(_) => AuthFailure::MissingClaim,
                _ => AuthFailure::Malformed,
            })?;
        if data.claims.sub.is_empty() || data.claims.sub.len() > 256 {
            return Err(AuthFailure::MissingClaim);
        }
        Ok(data.claims)
    }
}

/// Mints an HS256 token for development (`chronus-gateway token`, the demo,
/// tests). Production tokens come from chronus itself.
pub fn mint_hs256(
    secret: &[u8],
    sub: &str,
    ttl_secs: u64,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut claims = serde_json::json!({"sub": sub, "iat": now, "exp": now + ttl_secs});
    if let Some(iss) = issuer {
        claims["iss"] = iss.into();
    }
    if let Some(aud) = audience {
        claims["aud"] = aud.into();
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
}
