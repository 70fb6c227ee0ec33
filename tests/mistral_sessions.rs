//! Mistral sessions, caps and monitoring: the per-user session cap and the
//! per-user counts in the pool JSON.

mod common;
mod fake_mistral;
#[path = "common/mistral.rs"]
mod mistral;

use std::time::Duration;

use common::*;
use fake_mistral::*;
use mistral::*;
use serde_json::json;

// ---- sessions: caps and monitoring ------------------------------------------------

#[actix_rt::test]
async fn max_sessions_per_user_applies_to_mistral_sessions() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let mut env = env_for(fake.url());
    env.insert("MAX_SESSIONS_PER_USER".into(), "1".into());
    let gateway = start_gateway(&env).await;
    put_key(&gateway, "capped", KEY).await;
    let mut first = chronus_session(&gateway, "capped", "").await;
    first.expect_type("ready").await;

    let token = token_for("capped");
    for path in [TRANSCRIBE_MISTRAL, NATIVE] {
        let mut refused = connect(&ws_url(&gateway, path), Auth::Query(&token), None)
            .await
            .client;
        let (messages, close) = refused.until_close(Duration::from_secs(5)).await;
        assert_eq!(
            messages.last().unwrap()["code"],
            "TOO_MANY_SESSIONS",
            "{path}"
        );
        assert_eq!(close, Some(4409), "{path}");
    }
    assert_eq!(
        fake.connections().len(),
        1,
        "refused sessions never reach Mistral"
    );

    first.close().await;
    fake.wait_ended(0).await;
    assert!(
        eventually(Duration::from_secs(2), || async {
            mistral_pool(&gateway).await["sessions"] == 0
        })
        .await
    );
    let mut again = chronus_session(&gateway, "capped", "").await;
    again.expect_type("ready").await;
    gateway.stop().await;
}

#[actix_rt::test]
async fn per_user_mistral_session_counts_show_in_the_pool_json_and_fall_when_clients_leave() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let gateway = start_gateway(&env_for(fake.url())).await;
    put_key(&gateway, "alice", KEY).await;
    put_key(&gateway, "bob", KEY).await;

    let mut alice_chronus = chronus_session(&gateway, "alice", "").await;
    alice_chronus.expect_type("ready").await;
    let mut alice_native = RawClient::connect(&ws_url(&gateway, NATIVE), &token_for("alice")).await;
    alice_native.texts_until("session.created").await;
    let mut bob = chronus_session(&gateway, "bob", "").await;
    bob.expect_type("ready").await;

    let report = pool_report(&gateway).await;
    assert_eq!(
        report["mistral"],
        json!({"sessionsPerUser": {"alice": 2, "bob": 1}, "sessions": 3})
    );
    assert_eq!(report["sessionsOpen"], 3);

    // Clients that just close (what the legacy frontend does).
    alice_chronus.close().await;
    alice_native.close().await;
    bob.close().await;
    for id in 0..3 {
        let upstream = fake.wait_ended(id).await;
        assert_eq!(
            upstream.closed_by_gateway(),
            Some(Some(1000)),
            "connection {id}"
        );
    }
    assert!(
        eventually(Duration::from_secs(2), || async {
            mistral_pool(&gateway).await == json!({"sessionsPerUser": {}, "sessions": 0})
        })
        .await
    );
    gateway.stop().await;
}
