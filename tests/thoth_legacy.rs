//! `THOTH_PROTOCOL=legacy` against today's thoth (PROTOCOL.md 3.2,
//! REAL-PEERS.md 3): a real gateway on 127.0.0.1:0, the dev thoth in its
//! faithful legacy mode (HTTP 403 refusals, 3 s windows), and, for what the
//! dev thoth never does (accept, then close), a small real WebSocket server.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use chronus_gateway::devthoth::{describe_audio, DevThoth, DevThothOptions};
use chronus_gateway::RunningGateway;
use common::harness::Harness;
use common::*;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

const TRANSCRIBE: &str = "/api/audio/transcribe";
/// Samples in one window of today's thoth: 3 s at 16 kHz.
const WINDOW: usize = 48_000;

fn legacy_env(thoth_urls: &[String]) -> std::collections::HashMap<String, String> {
    let mut env = base_env(&thoth_urls.join(","));
    env.insert("THOTH_PROTOCOL".into(), "legacy".into());
    env.insert("LEGACY_FLUSH_GRACE_MS".into(), "300".into());
    env
}

fn start_thoth(opts: DevThothOptions) -> DevThoth {
    DevThoth::start(opts).expect("dev thoth starts")
}

/// Holds a dev thoth's one legacy stream, as another client would: every
/// further handshake gets HTTP 403.
async fn occupy(thoth: &DevThoth) -> impl Sized {
    let (_, socket) = awc::Client::new()
        .ws(thoth.url())
        .connect()
        .await
        .expect("the stream was free");
    socket
}

async fn connect_session(gateway: &RunningGateway, user: &str) -> WsClient {
    let token = token_for(user);
    connect(&ws_url(gateway, TRANSCRIBE), Auth::Query(&token), None)
        .await
        .client
}

/// One 3 s window of constant `level`, and what the dev thoth says for it.
fn window(level: f32, index: u64) -> (Vec<u8>, String) {
    (
        f32_audio(level, 3.0),
        describe_audio(index, &vec![level; WINDOW]),
    )
}

/// A thoth that accepts the upgrade, then closes at once with `code`;
/// counts the handshakes it accepted.
async fn accept_then_close(code: u16) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = accepted.clone();
    actix_rt::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counter = counter.clone();
            actix_rt::spawn(async move {
                let Ok(mut socket) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let frame = CloseFrame {
                    code: CloseCode::from(code),
                    reason: "".into(),
                };
                let _ = socket.close(Some(frame)).await;
            });
        }
    });
    (addr, accepted)
}

fn endpoint(report: &Value, index: usize) -> &Value {
    &report["thoth"][index]
}

#[actix_rt::test]
async fn a_403_from_the_first_endpoint_lands_the_session_on_the_second() {
    let busy = start_thoth(DevThothOptions::default());
    let free = start_thoth(DevThothOptions::default());
    let _other_client = occupy(&busy).await;
    let gateway = start_gateway(&legacy_env(&[busy.url(), free.url()])).await;

    let mut client = connect_session(&gateway, "moved").await;
    client.expect_type("ready").await;
    let (audio, text) = window(0.25, 0);
    client.send_binary(audio).await;
    assert_eq!(client.expect_type("transcription").await["data"], text);

    assert_eq!(
        busy.stats().connections_refused(),
        1,
        "one attempt, no retry"
    );
    assert_eq!(free.stats().legacy_streams(), 1);
    let report = pool_report(&gateway).await;
    assert_eq!(endpoint(&report, 0)["refCount"], 0);
    assert_eq!(endpoint(&report, 1)["refCount"], 1);
    gateway.stop().await;
}

#[actix_rt::test]
async fn when_every_endpoint_refuses_the_session_gets_thoth_busy_1013_retryable() {
    let first = start_thoth(DevThothOptions::default());
    let second = start_thoth(DevThothOptions::default());
    let _hold_first = occupy(&first).await;
    let _hold_second = occupy(&second).await;
    let gateway = start_gateway(&legacy_env(&[first.url(), second.url()])).await;

    let mut client = connect_session(&gateway, "refused").await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    assert_eq!(messages.len(), 1, "no ready, only the error: {messages:?}");
    assert_eq!(messages[0]["type"], "error");
    assert_eq!(messages[0]["code"], "THOTH_BUSY");
    assert_eq!(messages[0]["retryable"], true);
    assert_eq!(close, Some(1013));
    // A 403 is not "unavailable": it is not retried with backoff.
    assert_eq!(first.stats().connections_refused(), 1);
    assert_eq!(second.stats().connections_refused(), 1);
    gateway.stop().await;
}

#[actix_rt::test]
async fn the_pool_report_shows_each_endpoints_last_refusal() {
    let busy = start_thoth(DevThothOptions::default());
    let free = start_thoth(DevThothOptions::default());
    let _other_client = occupy(&busy).await;
    let gateway = start_gateway(&legacy_env(&[busy.url(), free.url()])).await;
    let before = chrono::Utc::now();

    let mut client = connect_session(&gateway, "reported").await;
    client.expect_type("ready").await;

    let report = pool_report(&gateway).await;
    let refusal = &endpoint(&report, 0)["lastRefusal"];
    assert_eq!(refusal["what"], "HTTP 403 on the handshake");
    let at = chrono::DateTime::parse_from_rfc3339(refusal["at"].as_str().unwrap()).unwrap();
    assert!(at >= before, "{at} is when it was refused");
    let may_mean = refusal["mayMean"].as_str().unwrap();
    for cause in ["busy", "Origin", "THOTH_STREAM_TOKEN"] {
        assert!(may_mean.contains(cause), "{may_mean}");
    }
    assert!(endpoint(&report, 1)["lastRefusal"].is_null());
    gateway.stop().await;
}

#[actix_rt::test]
async fn a_wrong_stream_token_is_a_refusal_not_auth_failed() {
    let thoth = start_thoth(DevThothOptions {
        stream_token: Some("thoth-shared-token".into()),
        ..DevThothOptions::default()
    });
    let mut env = legacy_env(&[thoth.url()]);
    env.insert("THOTH_STREAM_TOKEN".into(), "wrong".into());
    let gateway = start_gateway(&env).await;

    let mut client = connect_session(&gateway, "tokened").await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    assert_eq!(messages.last().unwrap()["code"], "THOTH_BUSY");
    assert_eq!(close, Some(1013));
    assert_eq!(thoth.stats().connections_refused(), 1, "not retried");
    let report = pool_report(&gateway).await;
    assert!(endpoint(&report, 0)["lastRefusal"]["mayMean"]
        .as_str()
        .unwrap()
        .contains("THOTH_STREAM_TOKEN"));
    gateway.stop().await;

    env.insert("THOTH_STREAM_TOKEN".into(), "thoth-shared-token".into());
    let gateway = start_gateway(&env).await;
    let mut client = connect_session(&gateway, "tokened").await;
    client.expect_type("ready").await;
    let (audio, text) = window(0.5, 0);
    client.send_binary(audio).await;
    assert_eq!(client.expect_type("transcription").await["data"], text);
    gateway.stop().await;
}

#[actix_rt::test]
async fn a_close_1013_right_after_the_upgrade_moves_the_session_to_the_next_endpoint() {
    let (refusing, accepted) = accept_then_close(1013).await;
    let free = start_thoth(DevThothOptions::default());
    let urls = [format!("ws://{refusing}/stream-audio"), free.url()];
    let gateway = start_gateway(&legacy_env(&urls)).await;

    let mut client = connect_session(&gateway, "moved").await;
    client.expect_type("ready").await;
    let (audio, text) = window(0.25, 0);
    client.send_binary(audio).await;
    assert_eq!(client.expect_type("transcription").await["data"], text);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    let report = pool_report(&gateway).await;
    assert_eq!(
        endpoint(&report, 0)["lastRefusal"]["what"],
        "close 1013 right after the handshake"
    );
    gateway.stop().await;
}

#[actix_rt::test]
async fn a_4401_or_4403_close_after_the_upgrade_is_auth_failed() {
    for code in [4401, 4403] {
        let (refusing, accepted) = accept_then_close(code).await;
        let free = start_thoth(DevThothOptions::default());
        // The next endpoint is free, but shares the refused credentials.
        let urls = [format!("ws://{refusing}/stream-audio"), free.url()];
        let gateway = start_gateway(&legacy_env(&urls)).await;

        let mut client = connect_session(&gateway, "refused").await;
        let (messages, close) = client.until_close(Duration::from_secs(10)).await;
        assert_eq!(messages.last().unwrap()["code"], "AUTH_FAILED", "{code}");
        assert_eq!(messages.last().unwrap()["retryable"], false);
        assert_eq!(close, Some(1011));
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(free.stats().legacy_streams(), 0);
        gateway.stop().await;
    }
}

#[actix_rt::test]
async fn text_frames_from_the_browser_never_reach_thoth() {
    let thoth = start_thoth(DevThothOptions::default());
    let gateway = start_gateway(&legacy_env(&[thoth.url()])).await;
    let mut client = connect_session(&gateway, "texter").await;
    client.expect_type("ready").await;

    // The dev thoth, like today's thoth, closes on any text frame: the
    // session only survives if none is forwarded.
    let (audio, text) = window(0.25, 0);
    let (first_half, second_half) = audio.split_at(audio.len() / 2);
    let b64 = base64::engine::general_purpose::STANDARD;
    client
        .send_json(json!({"type": "audio", "data": b64.encode(first_half)}))
        .await;
    client.send_json(json!({"type": "ping"})).await;
    client.expect_type("pong").await;
    client.send_text("not json").await;
    assert_eq!(client.expect_type("error").await["code"], "BAD_MESSAGE");
    client.send_binary(second_half.to_vec()).await;
    assert_eq!(client.expect_type("transcription").await["data"], text);
    assert_eq!(thoth.stats().audio_bytes_received(), audio.len() as u64);
    assert_eq!(thoth.stats().connections_open(), 1, "thoth kept the stream");
    gateway.stop().await;
}

#[actix_rt::test]
async fn a_partial_sample_is_refused_to_the_browser_and_not_forwarded() {
    let thoth = start_thoth(DevThothOptions::default());
    let gateway = start_gateway(&legacy_env(&[thoth.url()])).await;
    let mut client = connect_session(&gateway, "partial").await;
    client.expect_type("ready").await;

    client.send_binary(vec![0u8; 4 * 100 + 2]).await;
    let error = client.expect_type("error").await;
    assert_eq!(error["code"], "INVALID_AUDIO_FORMAT");
    // The session goes on, and thoth's samples stay aligned.
    let (audio, text) = window(0.25, 0);
    client.send_binary(audio.clone()).await;
    assert_eq!(client.expect_type("transcription").await["data"], text);
    assert_eq!(thoth.stats().audio_bytes_received(), audio.len() as u64);
    gateway.stop().await;
}

#[actix_rt::test]
async fn end_waits_for_a_last_result_sends_done_and_closes_the_thoth_socket() {
    let thoth = start_thoth(DevThothOptions::default());
    let gateway = start_gateway(&legacy_env(&[thoth.url()])).await;
    let mut client = connect_session(&gateway, "ender").await;
    client.expect_type("ready").await;
    let (audio, text) = window(0.25, 0);
    // Half a window more: thoth never answers it (its limit).
    client.send_binary(audio).await;
    client.send_binary(f32_audio(0.25, 1.5)).await;
    client.send_json(json!({"type": "end"})).await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    let types: Vec<&str> = messages
        .iter()
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["transcription", "done"]);
    assert_eq!(messages[1]["data"], text);
    assert_eq!(close, Some(1000));
    assert!(
        eventually(Duration::from_secs(3), || async {
            thoth.stats().connections_open() == 0
        })
        .await,
        "the thoth socket is closed, freeing its stream"
    );
    gateway.stop().await;
}

#[actix_rt::test]
async fn a_thoth_url_without_a_path_gets_stream_audio() {
    let thoth = start_thoth(DevThothOptions::default());
    // What chronus writes: no path (the dev thoth answers 404 anywhere else).
    let gateway = start_gateway(&legacy_env(&[format!("ws://{}", thoth.addr())])).await;
    let mut client = connect_session(&gateway, "pathless").await;
    client.expect_type("ready").await;
    let (audio, text) = window(0.25, 0);
    client.send_binary(audio).await;
    assert_eq!(client.expect_type("transcription").await["data"], text);
    let report = pool_report(&gateway).await;
    assert_eq!(endpoint(&report, 0)["url"], thoth.url());
    gateway.stop().await;
}

#[actix_rt::test]
async fn the_log_says_what_a_403_may_mean_without_the_stream_token() {
    const WRONG_TOKEN: &str = "wrong-thoth-token-4242";
    let thoth = start_thoth(DevThothOptions {
        stream_token: Some("right-thoth-token".into()),
        ..DevThothOptions::default()
    });
    let mut env = legacy_env(&[thoth.url()]);
    env.insert("THOTH_STREAM_TOKEN".into(), WRONG_TOKEN.into());
    env.insert("RUST_LOG".into(), "info".into());
    let mut harness = Harness::new();
    let gateway = harness.start_gateway(env);
    let url = format!("ws://{}{TRANSCRIBE}", gateway.public_addr);
    let token = token_for("logged");
    let mut client = connect(&url, Auth::Query(&token), None).await.client;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    assert_eq!(messages.last().unwrap()["code"], "THOTH_BUSY");
    assert_eq!(close, Some(1013));

    gateway.child.kill().unwrap();
    let log = gateway.drain_log(Duration::from_millis(500)).join("\n");
    let line = log
        .lines()
        .find(|l| l.contains("HTTP 403") && l.contains("may mean"))
        .unwrap_or_else(|| panic!("no 403 line in {log}"));
    for cause in ["busy", "Origin", "THOTH_STREAM_TOKEN"] {
        assert!(line.contains(cause), "{line}");
    }
    assert!(!log.contains(WRONG_TOKEN), "the stream token leaked");
    assert!(!log.contains("AUTH_FAILED"), "{log}");
}
