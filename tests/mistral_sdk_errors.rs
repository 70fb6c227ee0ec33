//! On the native Mistral proxy's routes, an error the gateway itself raises
//! carries `error.message` / `error.code` beside the chronus envelope fields,
//! because Mistral's SDKs read `error.message` (issue 11's SDK finding). The
//! chronus routes' envelopes stay as they were. A real gateway on
//! 127.0.0.1:0 against the fake Mistral (`fake_mistral`).

mod common;
mod fake_mistral;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use fake_mistral::*;

const KEY: &str = "mk-TESTKEY-sdkerr-5b1e07cc";
const SDK_PATH: &str = "/api/mistral/v1/audio/transcriptions/realtime";

fn env_for(fake: &FakeMistral) -> HashMap<String, String> {
    let mut env = base_env("ws://127.0.0.1:9/stream-audio");
    env.insert("MISTRAL_WS_URL".into(), fake.url());
    env
}

#[actix_rt::test]
async fn a_refused_model_on_a_native_route_carries_error_message_for_the_sdks() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let gateway = start_gateway(&env_for(&fake)).await;
    store_mistral_key(&gateway, "sdk-reader", KEY).await;
    let token = token_for("sdk-reader");
    for path in [SDK_PATH, "/api/mistral/ws"] {
        let url = ws_url(&gateway, &format!("{path}?model=voxtral-huge"));
        let mut client = connect(&url, Auth::Header(&token), None).await.client;
        let (messages, close) = client.until_close(Duration::from_secs(5)).await;
        assert_eq!(messages.len(), 1, "{messages:?}");
        let frame = &messages[0];
        // The chronus envelope, unchanged…
        assert_eq!(frame["type"], "error");
        assert_eq!(frame["code"], "BAD_MESSAGE");
        assert_eq!(frame["retryable"], false);
        let message = frame["message"].as_str().unwrap();
        assert!(message.contains("voxtral-huge"), "{message}");
        // …and what Mistral's SDKs parse.
        assert_eq!(frame["error"]["message"], message);
        assert_eq!(frame["error"]["code"], 4400);
        assert_eq!(close, Some(4400));
    }
    gateway.stop().await;
}

#[actix_rt::test]
async fn a_native_session_drained_carries_error_message_with_its_close_code() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let mut env = env_for(&fake);
    env.insert("SHUTDOWN_GRACE_SECS".into(), "1".into());
    let gateway = start_gateway(&env).await;
    store_mistral_key(&gateway, "drained-sdk", KEY).await;
    let token = token_for("drained-sdk");
    let url = ws_url(&gateway, "/api/mistral/ws");
    let mut client = connect(&url, Auth::Header(&token), None).await.client;
    assert_eq!(client.json().await["type"], "session.created");
    let drain = actix_rt::spawn(gateway.drain());
    let (messages, close) = client.until_close(Duration::from_secs(5)).await;
    let error = messages.last().expect("an error before the close");
    assert_eq!(error["code"], "SERVER_SHUTTING_DOWN");
    assert_eq!(error["error"]["message"], error["message"]);
    assert_eq!(error["error"]["code"], 1012);
    assert_eq!(close, Some(1012));
    drain.await.unwrap();
}

#[actix_rt::test]
async fn chronus_route_refusals_carry_no_sdk_error_field() {
    let gateway = start_gateway(&base_env("ws://127.0.0.1:9/stream-audio")).await;
    let url = ws_url(&gateway, "/api/audio/transcribe?provider=dance");
    let token = token_for("chronus-reader");
    let mut client = connect(&url, Auth::Query(&token), None).await.client;
    let (messages, _) = client.until_close(Duration::from_secs(5)).await;
    assert_eq!(messages[0]["code"], "BAD_MESSAGE");
    assert!(messages[0].get("error").is_none(), "{:?}", messages[0]);
    gateway.stop().await;
}
