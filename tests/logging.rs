//! Secrets never reach the logs: the real binary runs with `RUST_LOG=debug`,
//! serves sessions whose tokens travel in every allowed place, and its whole
//! log output is searched for them.

mod common;

use std::time::Duration;

use chronus_gateway::devthoth::{DevThoth, DevThothOptions};
use common::harness::Harness;
use common::*;
use serde_json::json;

const THOTH_TOKEN: &str = "thoth-stream-secret-4711";

#[actix_rt::test]
async fn tokens_and_secrets_never_appear_in_the_logs() {
    let thoth = DevThoth::start(DevThothOptions {
        stream_token: Some(THOTH_TOKEN.into()),
        ..Default::default()
    })
    .unwrap();
    let mut env = base_env(&thoth.url());
    env.insert("THOTH_STREAM_TOKEN".into(), THOTH_TOKEN.into());
    env.insert("RUST_LOG".into(), "trace".into());
    let mut harness = Harness::new();
    let gateway = harness.start_gateway(env);
    let public_addr = gateway.public_addr.clone();

    let tokens: Vec<String> = (0..4)
        .map(|i| token_for(&format!("logged-user-{i}")))
        .collect();
    let url = format!("ws://{public_addr}/api/audio/transcribe");
    let auths = [
        Auth::Query(&tokens[0]),
        Auth::Header(&tokens[1]),
        Auth::Subprotocol(&tokens[2]),
        Auth::Cookie(&tokens[3]),
    ];
    for auth in auths {
        let mut client = connect(&url, auth, None).await.client;
        client.expect_type("ready").await;
        client.send_binary(f32_audio(0.5, 1.0)).await;
        client.send_json(json!({"type": "end"})).await;
        let (_, close) = client.until_close(Duration::from_secs(10)).await;
        assert_eq!(close, Some(1000));
    }
    // A refused token and a refreshed one go through the logs as well.
    let mut refused = connect(
        &format!("{url}?token=not-a-valid-jwt-123"),
        Auth::None,
        None,
    )
    .await
    .client;
    refused.until_close(Duration::from_secs(5)).await;

    gateway.child.kill().unwrap();
    let log = gateway.drain_log(Duration::from_secs(2)).join("\n");
    if std::env::var("SHOW_LOG").is_ok() {
        eprintln!("{log}");
    }

    // The capture really holds the session traffic…
    assert!(log.contains("logged-user-0"), "log capture is working");
    assert!(log.contains("subscribed (refCount 1)"));
    assert!(
        log.contains("/api/audio/transcribe"),
        "access log line present"
    );
    // …and none of the secrets.
    for token in &tokens {
        assert!(!log.contains(token.as_str()), "a JWT leaked into the log");
        let signature = token.rsplit('.').next().unwrap();
        assert!(
            !log.contains(signature),
            "a JWT signature leaked into the log"
        );
    }
    assert!(
        !log.contains("not-a-valid-jwt-123"),
        "a refused token leaked"
    );
    assert!(
        !log.contains("?token=") && !log.contains("&token="),
        "a token-bearing query string leaked"
    );
    assert!(!log.contains(THOTH_TOKEN), "the thoth stream token leaked");
    assert!(!log.contains(SECRET), "the JWT secret leaked");
    assert!(!log.contains(ENCRYPTION_KEY), "the encryption key leaked");
    thoth.stop();
}
