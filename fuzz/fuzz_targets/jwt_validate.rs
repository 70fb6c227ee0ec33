//! `JwtValidator::validate` on anything: it must never panic, and no input the
//! fuzzer writes can carry a valid HS256 signature under a key it never saw.
#![no_main]

use std::sync::OnceLock;

use chronus_gateway::auth::JwtValidator;
use chronus_gateway::config::{JwtConfig, JwtKey};
use libfuzzer_sys::fuzz_target;

fn validator() -> &'static JwtValidator {
    static VALIDATOR: OnceLock<JwtValidator> = OnceLock::new();
    VALIDATOR.get_or_init(|| {
        JwtValidator::new(&JwtConfig {
            algorithm: jsonwebtoken::Algorithm::HS256,
            key: JwtKey::Secret(b"fuzz-secret-fuzz-secret-fuzz-secret".to_vec()),
            issuer: Some("https://chronus.test".into()),
            audience: None,
            cookie_name: "chronus_token".into(),
        })
        .expect("a secret is a usable key")
    })
}

fuzz_target!(|token: &str| {
    assert!(
        validator().validate(token).is_err(),
        "forged token accepted"
    );
});
