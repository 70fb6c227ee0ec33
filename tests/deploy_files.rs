//! Keeps the deployment files honest: `.env.example` lists exactly what the
//! gateway reads, `docker-compose.yml` sets nothing else on the gateway, keeps
//! the admin port private, checks every service's health, and Prometheus
//! scrapes the admin port. Read with real parsers (serde_yaml), not greps.
//!
//! This file: `.env.example`, and the literal reader the checks rely on;
//! compose is in `deploy_compose.rs`, the Dockerfile and docs in
//! `deploy_docker_and_docs.rs`.

#[path = "common/deploy.rs"]
mod deploy;

use std::collections::{BTreeMap, BTreeSet};

use chronus_gateway::config::Config;
use deploy::*;

#[test]
fn env_example_lists_exactly_the_variables_the_gateway_reads() {
    let read = variables_read_by_gateway();
    for anchor in [
        "BIND_ADDR",
        "ADMIN_BIND_ADDR",
        "JWT_SECRET",
        "THOTH_RETRY_BASE_MS",
        "SHUTDOWN_GRACE_SECS",
    ] {
        assert!(
            read.contains(anchor),
            "the source reader missed {anchor}: {read:?}"
        );
    }
    let listed: Vec<String> = env_example().into_iter().map(|v| v.name).collect();
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(unique.len(), listed.len(), "a variable is listed twice");
    let missing: Vec<_> = read.difference(&unique).collect();
    let unknown: Vec<_> = unique.difference(&read).collect();
    assert!(missing.is_empty(), ".env.example lacks {missing:?}");
    assert!(unknown.is_empty(), ".env.example lists unread {unknown:?}");
}

#[test]
fn env_example_comments_every_variable_and_uses_placeholders_and_loopback() {
    let vars = env_example();
    for var in &vars {
        assert!(
            var.comment.is_some(),
            "{} has no one-line comment above it",
            var.name
        );
    }
    let by_name: BTreeMap<&str, &ExampleVar> = vars.iter().map(|v| (v.name.as_str(), v)).collect();
    for secret in ["JWT_SECRET", "API_KEY_ENCRYPTION_KEY", "THOTH_STREAM_TOKEN"] {
        assert!(
            by_name[secret].value.starts_with("REPLACE"),
            "{secret} must be an obvious placeholder"
        );
    }
    // Required settings are set (uncommented); listeners stay on loopback.
    for required in ["JWT_SECRET", "API_KEY_ENCRYPTION_KEY"] {
        assert!(!by_name[required].commented_out, "{required} is required");
    }
    for listener in ["BIND_ADDR", "ADMIN_BIND_ADDR"] {
        assert!(
            by_name[listener].value.starts_with("127.0.0.1:"),
            "{listener} defaults to loopback"
        );
    }
}

#[test]
fn env_example_values_including_commented_ones_are_a_valid_configuration() {
    let all: std::collections::HashMap<String, String> = env_example()
        .into_iter()
        .map(|v| (v.name, v.value))
        .collect();
    let config = Config::from_map(&all).unwrap_or_else(|e| panic!(".env.example: {e}"));
    assert_eq!(config.bind_addr.port(), PUBLIC_PORT);
    assert_eq!(config.admin_bind_addr.port(), ADMIN_PORT);
}

#[test]
fn the_literal_reader_understands_this_crates_syntax() {
    let source = r##"
        // "NOT_A_VAR" in a comment
        /* "NOR_THIS" /* nested */ */
        let c = '"'; let q = '\''; fn f<'a>(x: &'a str) {}
        vars.get("FIRST_VAR"); vars
            .parsed( "SECOND_VAR", 1);
        ConfigError::new("THIRD_VAR", r#"raw "quoted""#);
        let b = br"\";
        other.get("NOT_VARS_CALL");
    "##;
    let literals = string_literals(source);
    let values: Vec<&str> = literals.iter().map(|l| l.value.as_str()).collect();
    assert_eq!(
        values,
        [
            "FIRST_VAR",
            "SECOND_VAR",
            "THIRD_VAR",
            r#"raw "quoted""#,
            "\\",
            "NOT_VARS_CALL"
        ]
    );
    let via_vars: Vec<&str> = literals
        .iter()
        .filter(|l| is_vars_call_argument(l.code_before))
        .map(|l| l.value.as_str())
        .collect();
    assert_eq!(via_vars, ["FIRST_VAR", "SECOND_VAR"]);
    assert!(looks_like_env_var("THOTH_RETRY_BASE_MS"));
    assert!(!looks_like_env_var("HS256"));
    assert!(!looks_like_env_var("Not_A_VAR"));
}
