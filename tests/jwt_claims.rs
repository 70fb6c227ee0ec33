//! JWT claims against a real [`JwtValidator`] (HS256 and RS256): issuer,
//! audience and subject are required as configured, and `sub` is a string or
//! an integer as chronus writes it (PROTOCOL.md 2.2), nothing else.

#[path = "common/jwt_forge.rs"]
mod jwt_forge;

use serde_json::json;

use chronus_gateway::auth::AuthFailure;

use jwt_forge::*;

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
