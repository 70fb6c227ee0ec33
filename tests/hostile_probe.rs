//! The defects a hostile-input probe found (issue 15), each through a real
//! socket. Where the usual clients refuse to send the bad input (an HTTP/1.0
//! upgrade, a draft WebSocket version, a text frame that is not UTF-8) a raw
//! TCP client writes the bytes itself.

mod common;
mod fake_mistral;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chronus_gateway::devthoth::{DevThoth, DevThothOptions};
use chronus_gateway::store::keys::Provider;
use chronus_gateway::store::SecretString;
use common::raw_ws::*;
use common::*;
use fake_mistral::{FakeMistral, FakeMistralOptions};
use serde_json::{json, Value};

const TRANSCRIBE: &str = "/api/audio/transcribe";
const NATIVE: &str = "/api/mistral/ws";
const MISTRAL_KEY: &str = "mk-HOSTILE-PROBE-7f1e2d3c4b5a";

fn unix_now_secs_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

// ---- item 3: non-RFC upgrades ----------------------------------------------------

#[actix_rt::test]
async fn an_http_1_0_upgrade_is_refused_with_426_on_every_websocket_route() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let gateway = start_gateway(&base_env(&thoth.url())).await;
    let addr = gateway.public_addr.to_string();
    let token = token_for("http10");
    for path in [TRANSCRIBE, NATIVE] {
        let request = upgrade_request(&addr, &format!("{path}?token={token}"), "HTTP/1.0", "13");
        let (head, _) = send_request(&addr, &request).await;
        assert_eq!(head.status, 426, "{path}: HTTP/1.0 cannot upgrade");
        assert_eq!(head.header("sec-websocket-version"), Some("13"), "{path}");
        assert_eq!(head.header("sec-websocket-accept"), None, "{path}");
    }
    // Nothing was opened upstream for either.
    assert_eq!(ref_count(&gateway).await, 0);
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn websocket_versions_other_than_13_get_426_naming_13_before_auth() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let gateway = start_gateway(&base_env(&thoth.url())).await;
    let addr = gateway.public_addr.to_string();
    let token = token_for("draft-versions");
    for path in [TRANSCRIBE, NATIVE] {
        // With a valid token and with none: refused the same way, before auth.
        for target in [format!("{path}?token={token}"), path.to_owned()] {
            for version in ["8", "7", "12", "14"] {
                let request = upgrade_request(&addr, &target, "HTTP/1.1", version);
                let (head, _) = send_request(&addr, &request).await;
                assert_eq!(head.status, 426, "{path}, version {version}");
                assert_eq!(
                    head.header("sec-websocket-version"),
                    Some("13"),
                    "{path}, version {version}"
                );
            }
        }
    }
    assert_eq!(ref_count(&gateway).await, 0);
    // Version 13 is still welcome.
    let mut raw = open_raw_websocket(&addr, &format!("{TRANSCRIBE}?token={token}")).await;
    match raw.next_frame().await {
        ServerFrame::Text(ready) => assert_eq!(ready["type"], "ready"),
        other => panic!("expected ready, got {other:?}"),
    }
    gateway.stop().await;
    thoth.stop();
}

// ---- item 2: a text frame that is not UTF-8 --------------------------------------

/// Opens a chronus session over a raw socket and waits for `ready`.
async fn ready_raw_session(gateway: &chronus_gateway::RunningGateway, user: &str) -> Raw {
    let addr = gateway.public_addr.to_string();
    let token = token_for(user);
    let mut raw = open_raw_websocket(&addr, &format!("{TRANSCRIBE}?token={token}")).await;
    match raw.next_frame().await {
        ServerFrame::Text(ready) => assert_eq!(ready["type"], "ready"),
        other => panic!("expected ready, got {other:?}"),
    }
    assert_eq!(ref_count(gateway).await, 1);
    raw
}

fn assert_bad_message_then_1007(texts: &[Value], end: ServerFrame) {
    let last = texts.last().expect("an error envelope before the close");
    assert_eq!(last["type"], "error", "{last}");
    assert_eq!(last["code"], "BAD_MESSAGE", "{last}");
    assert_eq!(last["retryable"], false, "{last}");
    match end {
        ServerFrame::Close(code) => assert_eq!(code, Some(1007)),
        other => panic!("expected a close frame with 1007, got {other:?}"),
    }
}

#[actix_rt::test]
async fn a_text_frame_that_is_not_utf8_gets_bad_message_and_1007_and_frees_thoth() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let gateway = start_gateway(&base_env(&thoth.url())).await;
    let mut raw = ready_raw_session(&gateway, "invalid-utf8").await;

    raw.send_frame(true, OPCODE_TEXT, &[b'{', 0xFF, 0xFE, b'}'])
        .await;
    let (texts, end) = raw.until_close().await;
    assert_bad_message_then_1007(&texts, end);
    assert!(
        eventually(Duration::from_secs(5), || async {
            ref_count(&gateway).await == 0
        })
        .await,
        "the thoth slot is freed"
    );
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn a_fragmented_text_message_that_is_not_utf8_gets_bad_message_and_1007() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let gateway = start_gateway(&base_env(&thoth.url())).await;
    let mut raw = ready_raw_session(&gateway, "invalid-utf8-fragments").await;

    // The bad byte sequence spans the two fragments: each is checked whole.
    raw.send_frame(false, OPCODE_TEXT, b"{\"type\":\"\xC3")
        .await;
    raw.send_frame(true, OPCODE_CONTINUATION, b"\x28\"}").await;
    let (texts, end) = raw.until_close().await;
    assert_bad_message_then_1007(&texts, end);
    assert!(
        eventually(Duration::from_secs(5), || async {
            ref_count(&gateway).await == 0
        })
        .await,
        "the thoth slot is freed"
    );
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn a_native_mistral_text_frame_that_is_not_utf8_gets_bad_message_and_1007() {
    let fake = FakeMistral::start(FakeMistralOptions::new(
        MISTRAL_KEY,
        fake_mistral::Mode::Segments,
    ));
    let mut env = base_env("ws://127.0.0.1:9/stream-audio");
    env.insert("MISTRAL_WS_URL".into(), fake.url());
    let gateway = start_gateway(&env).await;
    let user = "native-invalid-utf8";
    gateway
        .state
        .keys
        .put(user, Provider::Mistral, SecretString::from(MISTRAL_KEY))
        .await
        .unwrap();
    let addr = gateway.public_addr.to_string();
    let token = token_for(user);
    let mut raw = open_raw_websocket(&addr, &format!("{NATIVE}?token={token}")).await;
    // Mistral's socket is open once its `session.created` is relayed.
    match raw.next_frame().await {
        ServerFrame::Text(created) => assert_eq!(created["type"], "session.created"),
        other => panic!("expected session.created, got {other:?}"),
    }

    raw.send_frame(true, OPCODE_TEXT, &[0xFF, 0xFE, 0xFD]).await;
    let (texts, end) = raw.until_close().await;
    assert_bad_message_then_1007(&texts, end);
    let upstream = fake.wait_ended(0).await;
    assert!(upstream.ended, "the Mistral socket is closed too");
    assert!(
        upstream.closed_by_gateway().is_some(),
        "the gateway closed Mistral's socket"
    );
    gateway.stop().await;
    fake.stop();
}

// ---- item 4: one leeway rule -------------------------------------------------------

#[actix_rt::test]
async fn a_token_a_few_seconds_past_exp_is_refused_at_connect_not_admitted_then_expired() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let gateway = start_gateway(&base_env(&thoth.url())).await;
    for ago in [1, 3, 5] {
        let token = token_with(json!({"sub": "just-expired", "exp": now() - ago}));
        let mut client = connect(&ws_url(&gateway, TRANSCRIBE), Auth::Query(&token), None)
            .await
            .client;
        let (messages, close) = client.until_close(Duration::from_secs(5)).await;
        let codes: Vec<&Value> = messages.iter().map(|m| &m["type"]).collect();
        assert_eq!(
            messages.len(),
            1,
            "{ago} s ago: only the refusal, no ready: {codes:?}"
        );
        assert_eq!(messages[0]["code"], "UNAUTHORIZED", "{ago} s ago");
        assert_eq!(close, Some(4401), "{ago} s ago");
    }
    assert_eq!(ref_count(&gateway).await, 0, "no upstream work for them");
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn mid_session_a_token_expires_by_the_same_rule_not_before_exp() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    // The mid-session check exists only where tokens are checked continuously.
    let mut env = base_env(&thoth.url());
    env.insert("SESSION_TOKEN_CHECK".into(), "continuous".into());
    let gateway = start_gateway(&env).await;
    let exp = now() + 2;
    let token = token_with(json!({"sub": "expiring", "exp": exp}));
    let mut client = connect(&ws_url(&gateway, TRANSCRIBE), Auth::Query(&token), None)
        .await
        .client;
    client.expect_type("ready").await;
    let (messages, close) = client.until_close(Duration::from_secs(8)).await;
    let closed_at = unix_now_secs_f64();
    assert_eq!(messages.last().unwrap()["code"], "TOKEN_EXPIRED");
    assert_eq!(close, Some(4401));
    // Valid for the whole second `exp` (as at connect), closed after it. The
    // gateway times the deadline on the monotonic clock and this reads the
    // wall clock: a few milliseconds apart on a busy machine, far from the
    // whole second a check at `exp` would cut.
    const CLOCKS_APART_SECS: f64 = 0.1;
    assert!(
        closed_at >= (exp + 1) as f64 - CLOCKS_APART_SECS,
        "closed at {closed_at}, while a connect would still admit exp {exp}"
    );
    gateway.stop().await;
    thoth.stop();
}

// ---- item 5: the settings PUT takes JSON only ------------------------------------

async fn put_key_as(
    gateway: &chronus_gateway::RunningGateway,
    token: &str,
    content_type: &str,
    body: String,
) -> (u16, String) {
    let mut response = awc::Client::new()
        .put(format!(
            "http://{}/api/settings/api-keys/mistral",
            gateway.public_addr
        ))
        .bearer_auth(token)
        .insert_header(("content-type", content_type))
        .send_body(body)
        .await
        .expect("HTTP request");
    let body = response.body().limit(1 << 16).await.unwrap();
    (
        response.status().as_u16(),
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

#[actix_rt::test]
async fn putting_a_key_as_a_form_or_plain_text_is_415_and_stores_nothing() {
    let gateway = start_gateway(&base_env("ws://127.0.0.1:9/stream-audio")).await;
    let token = token_for("form-poster");
    let json_body = json!({"apiKey": MISTRAL_KEY}).to_string();
    for (content_type, body) in [
        (
            "application/x-www-form-urlencoded",
            format!("apiKey={MISTRAL_KEY}"),
        ),
        ("text/plain", json_body.clone()),
        ("multipart/form-data; boundary=x", json_body.clone()),
    ] {
        let (status, reply) = put_key_as(&gateway, &token, content_type, body).await;
        assert_eq!(status, 415, "{content_type}");
        let error: Value = serde_json::from_str(&reply).expect("a JSON error body");
        assert!(error["error"]
            .as_str()
            .unwrap()
            .contains("application/json"));
        assert!(!reply.contains(MISTRAL_KEY), "{content_type}");
    }
    let stored = gateway.state.keys.list("form-poster").await.unwrap();
    assert!(stored.is_empty(), "a refused body stores nothing");
    // JSON, with or without a charset, is taken.
    let (status, _) = put_key_as(
        &gateway,
        &token,
        "application/json; charset=utf-8",
        json_body,
    )
    .await;
    assert_eq!(status, 204);
    gateway.stop().await;
}
