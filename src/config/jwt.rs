//! JWT validation settings (PROTOCOL.md 2.2): the pinned algorithm and key.

use std::fmt;

use jsonwebtoken::Algorithm;

use super::vars::Vars;
use super::ConfigError;

/// How tokens are verified. The algorithm is pinned here, never read from a token.
#[derive(Clone)]
pub enum JwtKey {
    /// HS256 shared secret.
    Secret(Vec<u8>),
    /// PEM public key for RS256 / ES256.
    PublicKeyPem(Vec<u8>),
}

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtKey::Secret(_) => f.write_str("Secret(***)"),
            JwtKey::PublicKeyPem(_) => f.write_str("PublicKeyPem(..)"),
        }
    }
}

/// Settings of JWT validation (PROTOCOL.md 2.2).
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub algorithm: Algorithm,
    pub key: JwtKey,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub cookie_name: String,
}

pub(super) fn read_jwt_config(vars: &Vars<'_>) -> Result<JwtConfig, ConfigError> {
    let algorithm = match vars.get("JWT_ALGORITHM").as_deref() {
        None | Some("HS256") => Algorithm::HS256,
        Some("RS256") => Algorithm::RS256,
        Some("ES256") => Algorithm::ES256,
        Some(other) => {
            return Err(ConfigError::new(
                "JWT_ALGORITHM",
                format!("must be HS256, RS256 or ES256, not {other:?}"),
            ))
        }
    };
    let key = if algorithm == Algorithm::HS256 {
        let secret = vars.required("JWT_SECRET")?;
        if secret.len() < 32 {
            return Err(ConfigError::new(
                "JWT_SECRET",
                "must be at least 32 characters (HS256 needs a strong secret)",
            ));
        }
        JwtKey::Secret(secret.into_bytes())
    } else {
        let path = vars.required("JWT_PUBLIC_KEY_FILE")?;
        let pem = std::fs::read(&path).map_err(|e| {
            ConfigError::new("JWT_PUBLIC_KEY_FILE", format!("cannot read {path}: {e}"))
        })?;
        // Parse now so a bad key stops start-up instead of failing every request.
        let parsed = match algorithm {
            Algorithm::RS256 => jsonwebtoken::DecodingKey::from_rsa_pem(&pem).map(|_| ()),
            _ => jsonwebtoken::DecodingKey::from_ec_pem(&pem).map(|_| ()),
        };
        parsed.map_err(|e| {
            ConfigError::new(
                "JWT_PUBLIC_KEY_FILE",
                format!("not a {algorithm:?} public key in PEM: {e}"),
            )
        })?;
        JwtKey::PublicKeyPem(pem)
    };
    Ok(JwtConfig {
        algorithm,
        key,
        issuer: vars.get("JWT_ISSUER"),
        audience: vars.get("JWT_AUDIENCE"),
        cookie_name: vars
            .get("JWT_COOKIE_NAME")
            .unwrap_or_else(|| "chronus_token".to_string()),
    })
}
