//! The native Mistral proxy as Mistral's SDKs and a drain see it (issue 11
//! item 3, issue 12): the SDK path, `model` from `MISTRAL_MODELS`,
//! `SERVER_SHUTTING_DOWN` on drain, and the bound on what waits for a
//! browser that stopped reading. A real gateway on 127.0.0.1:0 against the
//! fake Mistral (`fake_mistral`); each test names the fake's mode.

mod common;
mod fake_mistral;

use std::collections::HashMap;
use std::time::Duration;

use chronus_gateway::RunningGateway;
use common::*;
use fake_mistral::*;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const KEY: &str = "mk-TESTKEY-native-7d3f90aa";
const SDK_PATH: &str = "/api/mistral/v1/audio/transcriptions/realtime";

fn env_for(fake: &FakeMistral) -> HashMap<String, String> {
    let mut env = base_env("ws://127.0.0.1:9/stream-audio");
    env.insert("MISTRAL_WS_URL".into(), fake.url());
    env
}

/// A native-proxy client at `path_and_query`, the chronus JWT as its bearer
/// (what an SDK sends as its "API key").
async fn native_client(gateway: &RunningGateway, path_and_query: &str, user: &str) -> WsClient {
    let token = token_for(user);
    connect(&ws_url(gateway, path_and_query), Auth::Header(&token), None)
        .await
        .client
}

async fn mistral_sessions(gateway: &RunningGateway) -> Value {
    pool_report(gateway).await["mistral"]["sessions"].clone()
}

#[actix_rt::test]
async fn segments_mode_the_sdk_path_is_the_native_proxy() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let gateway = start_gateway(&env_for(&fake)).await;
    store_mistral_key(&gateway, "sdk", KEY).await;
    let mut client = native_client(
        &gateway,
        &format!("{SDK_PATH}?model={DEFAULT_MODEL}"),
        "sdk",
    )
    .await;
    let created = client.json().await;
    assert_eq!(created["type"], "session.created");
    let upstream = fake.only_connection();
    assert_eq!(created, upstream.sent_json()[0], "relayed verbatim");
    assert_eq!(upstream.model, DEFAULT_MODEL);
    assert_eq!(
        upstream.authorization.as_deref(),
        Some(&*format!("Bearer {KEY}"))
    );
    client.close().await;
    gateway.stop().await;
}

#[actix_rt::test]
async fn segments_mode_an_allowed_model_is_the_model_mistral_is_asked_for() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let mut env = env_for(&fake);
    env.insert(
        "MISTRAL_MODELS".into(),
        format!("{DEFAULT_MODEL},voxtral-small-realtime"),
    );
    let gateway = start_gateway(&env).await;
    store_mistral_key(&gateway, "picky", KEY).await;
    let mut client = native_client(
        &gateway,
        &format!("{SDK_PATH}?model=voxtral-small-realtime"),
        "picky",
    )
    .await;
    let created = client.json().await;
    assert_eq!(created["session"]["model"], "voxtral-small-realtime");
    let upstream = fake.only_connection();
    assert_eq!(upstream.model, "voxtral-small-realtime");
    assert!(
        upstream
            .path_and_query
            .ends_with("?model=voxtral-small-realtime"),
        "{}",
        upstream.path_and_query
    );
    client.close().await;
    gateway.stop().await;
}

#[actix_rt::test]
async fn segments_mode_a_model_not_allowed_is_refused_before_mistral_is_touched() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let gateway = start_gateway(&env_for(&fake)).await;
    store_mistral_key(&gateway, "greedy", KEY).await;
    for path in [SDK_PATH, "/api/mistral/ws"] {
        let mut client =
            native_client(&gateway, &format!("{path}?model=voxtral-huge"), "greedy").await;
        let (messages, close) = client.until_close(Duration::from_secs(5)).await;
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert_eq!(messages[0]["code"], "BAD_MESSAGE");
        let message = messages[0]["message"].as_str().unwrap();
        assert!(message.contains("voxtral-huge"), "{message}");
        assert!(message.contains(DEFAULT_MODEL), "{message}");
        assert_eq!(close, Some(4400));
    }
    assert!(fake.connections().is_empty(), "Mistral was never contacted");
    gateway.stop().await;
}

#[actix_rt::test]
async fn segments_mode_native_sessions_get_server_shutting_down_1012_on_drain() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let mut env = env_for(&fake);
    env.insert("SHUTDOWN_GRACE_SECS".into(), "1".into());
    let gateway = start_gateway(&env).await;
    store_mistral_key(&gateway, "drained", KEY).await;
    let mut client = native_client(&gateway, "/api/mistral/ws", "drained").await;
    assert_eq!(client.json().await["type"], "session.created");
    // What SIGTERM runs (RunningGateway::serve_until_signal).
    let drain = actix_rt::spawn(gateway.drain());
    let (messages, close) = client.until_close(Duration::from_secs(5)).await;
    let last = messages.last().expect("a message before the close");
    assert_eq!(last["code"], "SERVER_SHUTTING_DOWN", "{messages:?}");
    assert_eq!(last["retryable"], true);
    assert_eq!(close, Some(1012));
    let upstream = fake.wait_ended(0).await;
    assert_eq!(upstream.closed_by_gateway(), Some(Some(1000)));
    drain.await.unwrap();
}

/// A client-to-server binary frame (masked with a zero key, as RFC 6455
/// allows: the payload stays as is).
fn masked_binary_frame(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 65_536);
    let mut frame = vec![0x82, 0x80 | 126];
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

#[actix_rt::test]
async fn segments_mode_a_native_browser_that_stops_reading_is_cut_off() {
    // One utterance (three deltas and a segment, ~300 bytes of events) per
    // sample: 60 kB of audio draws ~4 MB of events toward the browser.
    let mut options = FakeMistralOptions::new(KEY, Mode::Segments);
    options.segment_secs = 1e-6;
    let fake = FakeMistral::start(options);
    let gateway = start_gateway(&env_for(&fake)).await;
    store_mistral_key(&gateway, "stalled", KEY).await;

    // The stalled browser: a tiny receive buffer it never reads from.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let mut stalled = socket.connect(gateway.public_addr).await.unwrap();
    let request = format!(
        "GET /api/mistral/ws HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        gateway.public_addr,
        token_for("stalled")
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            fake.connections().len() == 1 && mistral_sessions(&gateway).await == 1
        })
        .await,
        "the session opened"
    );
    stalled
        .write_all(&masked_binary_frame(&vec![0u8; 60_000]))
        .await
        .unwrap();

    // The gateway gives the session up instead of queueing megabytes.
    assert!(
        eventually(Duration::from_secs(10), || async {
            mistral_sessions(&gateway).await == 0
        })
        .await,
        "the stalled session was not cut off"
    );
    let upstream = fake.wait_ended(0).await;
    let sent: usize = upstream.sent.iter().map(String::len).sum();
    assert!(sent > 2 << 20, "the fake sent only {sent} bytes");
    drop(stalled);
    gateway.stop().await;
}
