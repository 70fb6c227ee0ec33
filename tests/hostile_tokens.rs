//! Property tests for tokens: extraction from the header, subprotocol, query
//! and cookie, and JWT validation against hostile headers and forged
//! signatures — always a refusal, never a panic.

#[path = "common/hostile.rs"]
mod hostile;

use actix_web::http::header::{self};
use actix_web::test::TestRequest;
use actix_web_actors::ws;
use base64::Engine;
use proptest::prelude::*;
use serde_json::{json, Value};

use chronus_gateway::auth::{
    origin_allowed, token_from_request, AuthFailure, JwtValidator, TokenSource, JWT_SUBPROTOCOL,
};
use chronus_gateway::config::{JwtConfig, JwtKey};
use chronus_gateway::session::admission::SELECTABLE_SUBPROTOCOLS;

use hostile::*;

// ---- token extraction (header, subprotocol, query, cookie) -------------------------

#[derive(Debug, Clone, Copy, PartialEq)]
enum Place {
    Header,
    Subprotocol,
    Query,
    Cookie,
}

const PLACES: [Place; 4] = [
    Place::Header,
    Place::Subprotocol,
    Place::Query,
    Place::Cookie,
];

fn source_of(place: Place) -> TokenSource {
    match place {
        Place::Header => TokenSource::AuthorizationHeader,
        Place::Subprotocol => TokenSource::Subprotocol,
        Place::Query => TokenSource::Query,
        Place::Cookie => TokenSource::Cookie,
    }
}

/// A WebSocket upgrade request, as a browser sends it.
fn upgrade_request() -> TestRequest {
    TestRequest::get()
        .insert_header((header::UPGRADE, "websocket"))
        .insert_header((header::CONNECTION, "Upgrade"))
        .insert_header((header::SEC_WEBSOCKET_VERSION, "13"))
        .insert_header((header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ=="))
}

/// The subprotocol the handshake selects for this request (what the gateway answers).
fn selected_subprotocol(req: &actix_web::HttpRequest) -> Option<String> {
    let response = ws::handshake_with_protocols(req, SELECTABLE_SUBPROTOCOLS)
        .expect("a valid upgrade request")
        .finish();
    response
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .map(|v| v.to_str().unwrap().to_string())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn token_extraction_never_panics_on_arbitrary_headers(
        authorization in prop::option::of(header_bytes()),
        protocols in prop::collection::vec(header_bytes(), 0..3),
        cookie in prop::option::of(header_bytes()),
        origin in prop::option::of(header_bytes()),
        query in raw_query(),
        cookie_name in ".{0,12}",
        allowed in prop::collection::vec("[a-z:/.]{0,20}", 0..3),
    ) {
        let mut req = upgrade_request().uri(&format!("/api/audio/transcribe?{query}"));
        if let Some(v) = &authorization {
            req = req.insert_header((header::AUTHORIZATION, header_value(v)));
        }
        for v in &protocols {
            req = req.append_header((header::SEC_WEBSOCKET_PROTOCOL, header_value(v)));
        }
        if let Some(v) = &cookie {
            req = req.insert_header((header::COOKIE, header_value(v)));
        }
        if let Some(v) = &origin {
            req = req.insert_header((header::ORIGIN, header_value(v)));
        }
        let req = req.to_http_request();
        if let Some((token, _)) = token_from_request(&req, &cookie_name) {
            prop_assert!(!token.is_empty());
        }
        let _ = origin_allowed(&req, Some(&allowed));
        prop_assert!(origin_allowed(&req, None));
        // Whatever is offered, only `chronus.jwt` can ever be selected.
        let selected = selected_subprotocol(&req);
        prop_assert!(selected.is_none() || selected.as_deref() == Some(JWT_SUBPROTOCOL));
    }

    #[test]
    fn a_token_in_any_one_source_is_found(
        token in jwt_shaped(),
        place in prop::sample::select(PLACES.to_vec()),
        cookie_name in "[A-Za-z0-9_]{1,16}",
        before in prop::collection::vec("[a-z.]{1,10}", 0..3),
        after in prop::collection::vec("[a-z.]{1,10}", 0..3),
        noise in any::<bool>(),
    ) {
        let mut req = upgrade_request();
        // Decoys that hold no token: a request may carry them all.
        if noise {
            req = req
                .insert_header((header::AUTHORIZATION, "Basic dXNlcjpwYXNz"))
                .uri("/api/audio/transcribe?token=&noteId=1");
        } else {
            req = req.uri("/api/audio/transcribe?provider=thoth");
        }
        let mut cookies = vec!["other=1".to_string()];
        match place {
            Place::Header => {
                req = req.insert_header((header::AUTHORIZATION, format!("Bearer {token}")));
            }
            Place::Subprotocol => {
                let mut offered = before.clone();
                offered.push(JWT_SUBPROTOCOL.to_string());
                offered.push(token.clone());
                offered.extend(after.iter().cloned());
                req = req.insert_header((header::SEC_WEBSOCKET_PROTOCOL, offered.join(", ")));
            }
            Place::Query => {
                let encoded: String = url::form_urlencoded::byte_serialize(token.as_bytes()).collect();
                req = req.uri(&format!("/api/audio/transcribe?provider=thoth&token={encoded}&noteId=2"));
            }
            Place::Cookie => cookies.push(format!("{cookie_name}={token}")),
        }
        req = req.insert_header((header::COOKIE, cookies.join("; ")));
        let req = req.to_http_request();
        prop_assert_eq!(token_from_request(&req, &cookie_name), Some((token.clone(), source_of(place))));
        // The token is extracted, never selected: the answer names only the marker.
        let selected = selected_subprotocol(&req);
        let expected = (place == Place::Subprotocol).then_some(JWT_SUBPROTOCOL);
        prop_assert_eq!(selected.as_deref(), expected);
    }

    #[test]
    fn sources_are_tried_in_protocol_order(
        tokens in [jwt_shaped(), jwt_shaped(), jwt_shaped(), jwt_shaped()],
        present in [any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()],
    ) {
        let mut req = upgrade_request();
        if present[0] {
            req = req.insert_header((header::AUTHORIZATION, format!("bearer {}", tokens[0])));
        }
        if present[1] {
            req = req.insert_header((header::SEC_WEBSOCKET_PROTOCOL, format!("{JWT_SUBPROTOCOL}, {}", tokens[1])));
        }
        let query = if present[2] { format!("token={}", tokens[2]) } else { String::new() };
        req = req.uri(&format!("/api/audio/transcribe?{query}"));
        if present[3] {
            req = req.insert_header((header::COOKIE, format!("{COOKIE}={}", tokens[3])));
        }
        let req = req.to_http_request();
        let expected = (0..4)
            .find(|i| present[*i])
            .map(|i| (tokens[i].clone(), source_of(PLACES[i])));
        prop_assert_eq!(token_from_request(&req, COOKIE), expected);
    }

    #[test]
    fn origin_is_compared_case_and_trailing_slash_insensitively(
        origin in "https?://[a-zA-Z0-9.-]{1,20}(:[0-9]{1,5})?/?",
        allowed in prop::collection::vec("https?://[a-z0-9.-]{1,20}(:[0-9]{1,5})?", 0..3),
    ) {
        let req = TestRequest::default().insert_header((header::ORIGIN, origin.as_str())).to_http_request();
        let normalized = origin.trim_end_matches('/').to_ascii_lowercase();
        prop_assert_eq!(origin_allowed(&req, Some(&allowed)), allowed.contains(&normalized));
    }
}

// ---- JWT validation ----------------------------------------------------------------

fn hs256_validator() -> JwtValidator {
    JwtValidator::new(&JwtConfig {
        algorithm: jsonwebtoken::Algorithm::HS256,
        key: JwtKey::Secret(SECRET.to_vec()),
        issuer: None,
        audience: None,
        cookie_name: COOKIE.into(),
    })
    .expect("a secret is a usable key")
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sign_hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// A header an attacker may write: any algorithm name, key hints.
fn hostile_header() -> impl Strategy<Value = Value> {
    (
        prop_oneof![
            prop::sample::select(
                &[
                    "HS256", "HS384", "HS512", "RS256", "PS256", "ES256", "EdDSA", "none", "None",
                    "NONE", ""
                ][..]
            )
            .prop_map(|s| Value::String(s.into())),
            json_value(),
        ],
        prop::option::of(word()),
        prop::option::of(word()),
    )
        .prop_map(|(alg, kid, jku)| {
            let mut header = json!({"alg": alg, "typ": "JWT"});
            if let Some(kid) = kid {
                header["kid"] = kid.into();
            }
            if let Some(jku) = jku {
                header["jku"] = jku.into();
            }
            header
        })
}

/// Signatures anyone without the secret can produce.
fn forged_signature(message: String) -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        prop::collection::vec(any::<u8>(), 0..80).prop_map(|b| b64url(&b)),
        "[A-Za-z0-9_-]{0,90}",
        // An HMAC under a key that is not ours (empty, guessed, near-miss).
        prop_oneof![
            Just(Vec::new()),
            Just(SECRET[..SECRET.len() - 1].to_vec()),
            prop::collection::vec(any::<u8>(), 1..48),
        ]
        .prop_filter("not the key", |k| k.as_slice() != SECRET)
        .prop_map(move |key| {
            jsonwebtoken::crypto::sign(
                message.as_bytes(),
                &jsonwebtoken::EncodingKey::from_secret(&key),
                jsonwebtoken::Algorithm::HS256,
            )
            .unwrap()
        }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn jwt_validate_never_panics(token in prop_oneof![any::<String>(), jwt_shaped(), json_ish()]) {
        let _ = hs256_validator().validate(&token);
    }

    #[test]
    fn jwt_validate_never_accepts_a_token_not_signed_with_the_key(
        (message, signature) in (hostile_header(), prop_oneof![
            Just(json!({"sub": "user-1", "exp": now() + 600})),
            json_value(),
        ])
        .prop_map(|(header, claims)| {
            format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()))
        })
        .prop_flat_map(|message| (Just(message.clone()), forged_signature(message))),
    ) {
        let token = format!("{message}.{signature}");
        prop_assert!(hs256_validator().validate(&token).is_err(), "accepted {token}");
    }

    #[test]
    fn any_single_character_change_to_a_valid_token_is_refused(
        sub in "[a-z0-9-]{1,36}",
        at in any::<prop::sample::Index>(),
        replacement in prop::sample::select(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ".chars().collect::<Vec<_>>()
        ),
    ) {
        let validator = hs256_validator();
        let token = sign_hs256(SECRET, &json!({"sub": sub, "exp": now() + 600}));
        prop_assert!(validator.validate(&token).is_ok());
        let at = at.index(token.len());
        prop_assume!(token.as_bytes()[at] != replacement as u8);
        let mut forged = token.clone();
        forged.replace_range(at..=at, &replacement.to_string());
        let refused = validator.validate(&forged);
        prop_assert!(refused.is_err(), "accepted a token changed at {}", at);
    }

    #[test]
    fn a_genuine_token_is_accepted_iff_its_subject_is_usable(sub in any::<String>(), ttl in 10u64..100_000) {
        let token = sign_hs256(SECRET, &json!({"sub": sub, "exp": now() + ttl}));
        match hs256_validator().validate(&token) {
            Ok(claims) => {
                prop_assert!(!sub.is_empty() && sub.len() <= 256);
                prop_assert_eq!(claims.sub, sub);
            }
            Err(failure) => {
                prop_assert!(sub.is_empty() || sub.len() > 256);
                prop_assert_eq!(failure, AuthFailure::MissingClaim);
            }
        }
    }
}
