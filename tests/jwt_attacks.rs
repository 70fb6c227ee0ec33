//! The classic JWT attacks, each tried against a real [`JwtValidator`]
//! configured for HS256 and, separately, RS256 (PROTOCOL.md 2.2: the algorithm
//! is pinned by configuration, never taken from the token). Each test asserts
//! the refusal and its [`AuthFailure`] kind, which is the label of the
//! auth-failure metric. `docs/security.md` lists them as a table.
//!
//! The RSA keys under `tests/keys/` are throwaway test keys, used nowhere else.
//!
//! This file: algorithm, key, time and shape attacks; the claims are in
//! `jwt_claims.rs`.

#[path = "common/jwt_forge.rs"]
mod jwt_forge;

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;

use chronus_gateway::auth::{AuthFailure, MAX_TOKEN_BYTES};

use jwt_forge::*;

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

/// No leeway on `exp` (issue 15, item 4): a token past `exp` is refused at
/// connect rather than admitted only to be closed `TOKEN_EXPIRED` at once.
#[test]
fn expiry_a_few_seconds_ago_is_refused_without_leeway() {
    for setup in SETUPS {
        for ago in [1, 2, 5] {
            let token = setup.token(&claims_with(json!({"exp": now() - ago})));
            assert_refused(setup, &token, AuthFailure::Expired);
        }
        let current_second = setup.token(&claims_with(json!({"exp": now() + 1})));
        assert_accepted(setup, &current_second);
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
