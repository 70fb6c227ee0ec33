//! The classic JWT attacks, each tried against a real [`JwtValidator`]
//! configured for HS256 and, separately, RS256 (PROTOCOL.md 2.2: the algorithm
//! is pinned by configuration, never taken from the token). Each test asserts
//! the refusal and its [`AuthFailure`] kind, which is the label of the
//! auth-failure metric. `docs/security.md` lists them as a table.
//!
//! The RSA keys under `tests/keys/` are throwaway test keys, used nowhere else.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

use chronus_gateway::auth::{AuthFailure, Claims, JwtValidator, MAX_TOKEN_BYTES};
use chronus_gateway::config::{JwtConfig, JwtKey};

const ISSUER: &str = "https://chronus.test";
const AUDIENCE: &str = "chronus-gateway";
const SECRET: &[u8] = b"jwt-attacks-secret-jwt-attacks-secret-0123";
const OTHER_SECRET: &[u8] = b"not-the-gateway-secret-not-the-gateway-secret";
const RS256_PUBLIC: &[u8] = include_bytes!("keys/rs256_public.pem");
const RS256_PRIVATE: &[u8] = include_bytes!("keys/rs256_private.pem");
const OTHER_RS256_PRIVATE: &[u8] = include_bytes!("keys/other_rs256_private.pem");

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// The two ways the gateway can be configured.
#[derive(Debug, Clone, Copy)]
enum Setup {
    Hs256,
    Rs256,
}

const SETUPS: [Setup; 2] = [Setup::Hs256, Setup::Rs256];

impl Setup {
    fn validator(self) -> JwtValidator {
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

    fn algorithm(self) -> Algorithm {
        match self {
            Setup::Hs256 => Algorithm::HS256,
            Setup::Rs256 => Algorithm::RS256,
        }
    }

    /// The key chronus signs with.
    fn signing_key(self) -> EncodingKey {
        match self {
            Setup::Hs256 => EncodingKey::from_secret(SECRET),
            Setup::Rs256 => EncodingKey::from_rsa_pem(RS256_PRIVATE).unwrap(),
        }
    }

    /// A key of the same kind that is not the gateway's.
    fn attacker_key(self) -> EncodingKey {
        match self {
            Setup::Hs256 => EncodingKey::from_secret(OTHER_SECRET),
            Setup::Rs256 => EncodingKey::from_rsa_pem(OTHER_RS256_PRIVATE).unwrap(),
        }
    }

    /// A genuine token with these claims.
    fn token(self, claims: &Value) -> String {
        forge(
            &json!({"alg": alg_name(self.algorithm()), "typ": "JWT"}),
            claims,
            &self.signing_key(),
            self.algorithm(),
        )
    }
}

fn alg_name(alg: Algorithm) -> String {
    serde_json::to_value(alg)
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with exactly this header and these claims, signed with `key` as
/// `alg` — whatever the header says, as an attacker would write it.
fn forge(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

/// Claims a genuine chronus token carries.
fn claims() -> Value {
    let now = now();
    json!({"sub": "user-42", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600})
}

fn claims_with(changes: Value) -> Value {
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
fn assert_refused(setup: Setup, token: &str, expected: AuthFailure) {
    assert_eq!(
        setup.validator().validate(token),
        Err(expected),
        "{setup:?} validator"
    );
}

#[track_caller]
fn assert_accepted(setup: Setup, token: &str) -> Claims {
    setup
        .validator()
        .validate(token)
        .unwrap_or_else(|e| panic!("{setup:?} validator refused a genuine token: {e:?}"))
}

// ---- the baseline: the refusals below are not refusals of everything ----------

#[test]
fn genuine_tokens_are_accepted() {
    for setup in SETUPS {
        let claims = assert_accepted(setup, &setup.token(&claims()));
        assert_eq!(claims.sub, "user-42");
    }
}

// ---- algorithm attacks -------------------------------------------------------------

#[test]
fn alg_none_is_refused() {
    for setup in SETUPS {
        let genuine = setup.token(&claims());
        let genuine_signature = genuine.rsplit('.').next().unwrap();
        for alg in ["none", "None", "NONE", "nOnE"] {
            let message = format!(
                "{}.{}",
                b64url(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes()),
                b64url(claims().to_string().as_bytes())
            );
            // An unsigned token, and one carrying a borrowed signature.
            for signature in ["", genuine_signature] {
                // `none` is not an algorithm jsonwebtoken knows: the header
                // does not even parse.
                assert_refused(
                    setup,
                    &format!("{message}.{signature}"),
                    AuthFailure::Malformed,
                );
            }
        }
    }
}

#[test]
fn hs256_signed_with_the_rs256_public_key_is_refused() {
    // The HS/RS confusion: the public key is public, so an attacker can HMAC
    // with its PEM bytes and hope the validator uses them as a secret.
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let pem = std::str::from_utf8(RS256_PUBLIC).unwrap();
    for secret in [pem, pem.trim_end(), pem.trim()] {
        let token = forge(
            &header,
            &claims(),
            &EncodingKey::from_secret(secret.as_bytes()),
            Algorithm::HS256,
        );
        assert_refused(Setup::Rs256, &token, AuthFailure::WrongAlgorithm);
    }
}

#[test]
fn rs256_token_presented_to_the_hs256_validator_is_refused() {
    let token = Setup::Rs256.token(&claims());
    assert_refused(Setup::Hs256, &token, AuthFailure::WrongAlgorithm);
}

#[test]
fn another_algorithm_with_the_right_key_is_refused() {
    // HS512 with the right secret: the algorithm is pinned, so even a
    // correctly signed token of another algorithm is refused.
    let hs512 = forge(
        &json!({"alg": "HS512", "typ": "JWT"}),
        &claims(),
        &Setup::Hs256.signing_key(),
        Algorithm::HS512,
    );
    assert_refused(Setup::Hs256, &hs512, AuthFailure::WrongAlgorithm);
    for alg in [Algorithm::RS512, Algorithm::PS256] {
        let token = forge(
            &json!({"alg": alg_name(alg), "typ": "JWT"}),
            &claims(),
            &Setup::Rs256.signing_key(),
            alg,
        );
        assert_refused(Setup::Rs256, &token, AuthFailure::WrongAlgorithm);
    }
}

// ---- key attacks -------------------------------------------------------------------

#[test]
fn token_signed_by_another_key_is_refused() {
    for setup in SETUPS {
        let token = forge(
            &json!({"alg": alg_name(setup.algorithm()), "typ": "JWT"}),
            &claims(),
            &setup.attacker_key(),
            setup.algorithm(),
        );
        assert_refused(setup, &token, AuthFailure::BadSignature);
    }
}

#[test]
fn header_kid_jku_x5u_and_jwk_are_ignored() {
    let attacker_rsa = EncodingKey::from_rsa_pem(OTHER_RS256_PRIVATE).unwrap();
    let attacker_jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&attacker_rsa, Algorithm::RS256)
        .expect("a JWK of the attacker's public key");
    for setup in SETUPS {
        let header = json!({
            "alg": alg_name(setup.algorithm()),
            "typ": "JWT",
            "kid": "../../../../dev/null",
            "jku": "https://attacker.test/jwks.json",
            "x5u": "https://attacker.test/cert.pem",
            "jwk": attacker_jwk,
        });
        // Signed by the attacker, pointing at the attacker's key: refused.
        let forged = forge(&header, &claims(), &setup.attacker_key(), setup.algorithm());
        assert_refused(setup, &forged, AuthFailure::BadSignature);
        // Signed by chronus with the same junk hints: accepted, so the hints
        // played no part in choosing the key.
        let genuine = forge(&header, &claims(), &setup.signing_key(), setup.algorithm());
        assert_accepted(setup, &genuine);
    }
    // The HS256 `kid` trick: point at an empty file and sign with an empty key.
    let empty_key = forge(
        &json!({"alg": "HS256", "typ": "JWT", "kid": "/dev/null"}),
        &claims(),
        &EncodingKey::from_secret(b""),
        Algorithm::HS256,
    );
    assert_refused(Setup::Hs256, &empty_key, AuthFailure::BadSignature);
}

// ---- time claims -------------------------------------------------------------------

#[test]
fn expired_token_is_refused() {
    for setup in SETUPS {
        let token = setup.token(&claims_with(json!({"exp": now() - 60})));
        assert_refused(setup, &token, AuthFailure::Expired);
    }
}

#[test]
fn expiry_within_the_5_s_leeway_is_tolerated() {
    for setup in SETUPS {
        let token = setup.token(&claims_with(json!({"exp": now() - 2})));
        assert_accepted(setup, &token);
    }
}

#[test]
fn not_yet_valid_token_is_refused() {
    for setup in SETUPS {
        let token = setup.token(&claims_with(json!({"nbf": now() + 60})));
        assert_refused(setup, &token, AuthFailure::NotYetValid);
        let within_leeway = setup.token(&claims_with(json!({"nbf": now() + 2})));
        assert_accepted(setup, &within_leeway);
    }
}

#[test]
fn exp_as_a_string_is_refused() {
    for setup in SETUPS {
        let far_future = (now() + 600).to_string();
        let token = setup.token(&claims_with(json!({"exp": far_future})));
        assert_refused(setup, &token, AuthFailure::Malformed);
    }
}

#[test]
fn missing_exp_is_refused() {
    for setup in SETUPS {
        let token = setup.token(&claims_with(json!({"exp": null})));
        assert_refused(setup, &token, AuthFailure::Malformed);
    }
}

// ---- issuer, audience, subject -----------------------------------------------------

#[test]
fn wrong_issuer_is_refused() {
    for setup in SETUPS {
        for iss in [json!("https://evil.test"), json!(["https://evil.test"])] {
            let token = setup.token(&claims_with(json!({ "iss": iss })));
            assert_refused(setup, &token, AuthFailure::WrongIssuer);
        }
    }
}

#[test]
fn wrong_audience_is_refused() {
    for setup in SETUPS {
        for aud in [json!("another-service"), json!(["another-service", "x"])] {
            let token = setup.token(&claims_with(json!({ "aud": aud })));
            assert_refused(setup, &token, AuthFailure::WrongAudience);
        }
    }
}

/// PROTOCOL.md 2.2: `iss`/`aud` are enforced when configured. jsonwebtoken
/// only compares them when present; `JwtValidator::new` does not add them to
/// the required claims, so a token that omits them passes.
#[test]
fn missing_issuer_is_refused_when_one_is_configured() {
    for setup in SETUPS {
        let token = setup.token(&claims_with(json!({"iss": null})));
        assert_refused(setup, &token, AuthFailure::MissingClaim);
    }
}

#[test]
fn missing_audience_is_refused_when_one_is_configured() {
    for setup in SETUPS {
        let token = setup.token(&claims_with(json!({"aud": null})));
        assert_refused(setup, &token, AuthFailure::MissingClaim);
    }
}

#[test]
fn missing_sub_is_refused() {
    for setup in SETUPS {
        // Absent: the claims do not deserialize at all.
        let token = setup.token(&claims_with(json!({"sub": null})));
        assert_refused(setup, &token, AuthFailure::Malformed);
        // Present but unusable as a user id.
        for sub in [String::new(), "u".repeat(257)] {
            let token = setup.token(&claims_with(json!({ "sub": sub })));
            assert_refused(setup, &token, AuthFailure::MissingClaim);
        }
    }
}

// ---- `sub` as chronus writes it: a string or an integer (PROTOCOL.md 2.2) ----

#[test]
fn integer_sub_is_accepted_as_its_decimal_string() {
    for setup in SETUPS {
        // What chronus signs: an integer `sub` and a `username` that is ignored.
        let token = setup.token(&claims_with(json!({"sub": 42, "username": "ada"})));
        assert_eq!(assert_accepted(setup, &token).sub, "42");
        // The same user as the string form.
        let token = setup.token(&claims_with(json!({"sub": "42"})));
        assert_eq!(assert_accepted(setup, &token).sub, "42");
    }
}

#[test]
fn integer_sub_at_the_edges_of_the_64_bit_range_is_its_decimal_string() {
    for setup in SETUPS {
        for (sub, expected) in [
            (json!(u64::MAX), u64::MAX.to_string()),
            (json!(i64::MIN), i64::MIN.to_string()),
            (json!(-7), "-7".to_string()),
            (json!(0), "0".to_string()),
        ] {
            let token = setup.token(&claims_with(json!({ "sub": sub })));
            assert_eq!(assert_accepted(setup, &token).sub, expected);
        }
    }
}

/// A claims object with a raw JSON `sub`, for values `json!` cannot write
/// (an integer beyond u64).
fn token_with_raw_sub(setup: Setup, raw_sub: &str) -> String {
    let text = claims_with(json!({"sub": "PLACEHOLDER"}))
        .to_string()
        .replace("\"PLACEHOLDER\"", raw_sub);
    let message = format!(
        "{}.{}",
        b64url(
            json!({"alg": alg_name(setup.algorithm()), "typ": "JWT"})
                .to_string()
                .as_bytes()
        ),
        b64url(text.as_bytes())
    );
    let signature =
        jsonwebtoken::crypto::sign(message.as_bytes(), &setup.signing_key(), setup.algorithm())
            .unwrap();
    format!("{message}.{signature}")
}

#[test]
fn integer_sub_beyond_the_64_bit_range_is_refused() {
    for setup in SETUPS {
        let token = token_with_raw_sub(setup, "123456789012345678901234567890");
        assert_refused(setup, &token, AuthFailure::Malformed);
    }
}

#[test]
fn float_sub_is_refused() {
    for setup in SETUPS {
        for raw in ["42.0", "4.2", "1e3"] {
            let token = token_with_raw_sub(setup, raw);
            assert_refused(setup, &token, AuthFailure::Malformed);
        }
    }
}

#[test]
fn boolean_sub_is_refused() {
    for setup in SETUPS {
        let token = setup.token(&claims_with(json!({"sub": true})));
        assert_refused(setup, &token, AuthFailure::Malformed);
    }
}

#[test]
fn object_or_array_sub_is_refused() {
    for setup in SETUPS {
        for sub in [json!({"id": 42}), json!([42])] {
            let token = setup.token(&claims_with(json!({ "sub": sub })));
            assert_refused(setup, &token, AuthFailure::Malformed);
        }
    }
}

// ---- shape attacks -----------------------------------------------------------------

#[test]
fn truncated_token_is_refused() {
    for setup in SETUPS {
        let token = setup.token(&claims());
        let (message, _signature) = token.rsplit_once('.').unwrap();
        // The signature stripped: nothing verifies an empty signature.
        assert_refused(setup, &format!("{message}."), AuthFailure::BadSignature);
        // Only two segments, or one: not a JWT at all.
        assert_refused(setup, message, AuthFailure::Malformed);
        assert_refused(
            setup,
            message.split('.').next().unwrap(),
            AuthFailure::Malformed,
        );
        // Cut inside the claims.
        let header_len = message.find('.').unwrap();
        assert_refused(setup, &token[..header_len + 10], AuthFailure::Malformed);
        // Cut inside the signature, at a whole base64 group so it still
        // decodes: a shorter signature never verifies.
        let signature_len = token.len() - message.len() - 1;
        let cut = match signature_len % 4 {
            0 => 4,
            partial => partial,
        };
        assert_refused(
            setup,
            &token[..token.len() - cut],
            AuthFailure::BadSignature,
        );
    }
}

#[test]
fn oversized_token_is_refused_before_decoding() {
    for setup in SETUPS {
        // Genuinely signed, but over the limit: refused on size alone.
        let padding = "x".repeat(MAX_TOKEN_BYTES);
        let token = setup.token(&claims_with(json!({ "pad": padding })));
        assert!(token.len() > MAX_TOKEN_BYTES);
        assert_refused(setup, &token, AuthFailure::Oversized);
        assert_refused(
            setup,
            &"a".repeat(MAX_TOKEN_BYTES + 1),
            AuthFailure::Oversized,
        );
    }
}

#[test]
fn empty_token_is_missing() {
    for setup in SETUPS {
        assert_refused(setup, "", AuthFailure::Missing);
    }
}
