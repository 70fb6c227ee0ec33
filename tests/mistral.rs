//! Mistral through the gateway, end to end: a real gateway on 127.0.0.1:0, a
//! fake Mistral realtime server (`fake_mistral`) as a real upstream, real
//! HTTP and WebSocket clients, keys stored through the settings endpoints.
//!
//! The PostgreSQL variant reads `TEST_DATABASE_URL_PG`
//! (`eval "$(bash .ci/start-postgres.sh)"`); without it it is skipped with a
//! loud note, unless `CI` is set, where it fails.

mod common;
mod fake_mistral;

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_codec::Framed;
use awc::ws::{self, Frame, Message};
use awc::BoxedSocket;
use chronus_gateway::RunningGateway;
use common::*;
use fake_mistral::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

const TRANSCRIBE_MISTRAL: &str = "/api/audio/transcribe?provider=mistral";
const NATIVE: &str = "/api/mistral/ws";
/// A Mistral key as the tests store it; distinctive enough to grep for.
const KEY: &str = "mk-TESTKEY-4f9a1c7e2b8d6053aa";
const PG_URL_VAR: &str = "TEST_DATABASE_URL_PG";

// ---- helpers ---------------------------------------------------------------

/// A gateway configuration whose Mistral is `fake` (thoth is never used).
fn env_for(fake: &FakeMistral) -> HashMap<String, String> {
    let mut env = base_env("ws://127.0.0.1:9/stream-audio");
    env.insert("MISTRAL_WS_URL".into(), fake.url());
    env
}

/// An HTTP answer: status and body text.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {self:?}"))
    }
}

async fn call(method: &str, url: String, token: Option<&str>, body: Option<&str>) -> Reply {
    let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = awc::Client::new().request(method, url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let sent = match body {
        Some(body) => {
            request
                .insert_header(("content-type", "application/json"))
                .send_body(body.to_owned())
                .await
        }
        None => request.send().await,
    };
    let mut response = sent.expect("HTTP request");
    let bytes = response.body().limit(1 << 20).await.expect("HTTP body");
    Reply {
        status: response.status().as_u16(),
        body: String::from_utf8(bytes.to_vec()).expect("UTF-8 body"),
    }
}

fn http_url(gateway: &RunningGateway, path: &str) -> String {
    format!("http://{}{path}", gateway.public_addr)
}

async fn put_key(gateway: &RunningGateway, user: &str, key: &str) -> Reply {
    call(
        "PUT",
        http_url(gateway, "/api/settings/api-keys/mistral"),
        Some(&token_for(user)),
        Some(&json!({"apiKey": key}).to_string()),
    )
    .await
}

/// A chronus Mistral session, connected (not yet ready).
async fn chronus_session(gateway: &RunningGateway, user: &str, query: &str) -> WsClient {
    let token = token_for(user);
    let url = ws_url(gateway, &format!("{TRANSCRIBE_MISTRAL}{query}"));
    connect(&url, Auth::Query(&token), None).await.client
}

/// Sends `audio` in 20 ms frames of 16 kHz f32 (1,280 bytes), then `end`.
async fn stream_then_end(client: &mut WsClient, audio: &[u8]) {
    for frame in audio.chunks(1280) {
        client.send_binary(frame.to_vec()).await;
    }
    client.send_json(json!({"type": "end"})).await;
}

fn of_type<'a>(messages: &'a [Value], ty: &str) -> Vec<&'a Value> {
    messages.iter().filter(|m| m["type"] == ty).collect()
}

fn data_of(messages: &[&Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["data"].as_str().unwrap().to_owned())
        .collect()
}

/// Audio whose every sample is different, so that reordering shows.
fn distinct_f32_audio(first_sample: usize, samples: usize) -> Vec<u8> {
    (first_sample..first_sample + samples)
        .flat_map(|i| (i as f32 / 1.0e6).to_le_bytes())
        .collect()
}

/// A WebSocket client that sees frames exactly as sent (for the native proxy).
struct RawClient {
    framed: Framed<BoxedSocket, ws::Codec>,
}

/// What a raw client read.
#[derive(Debug, PartialEq)]
enum RawFrame {
    Text(String),
    Closed(Option<u16>),
}

impl RawClient {
    async fn connect(url: &str, token: &str) -> RawClient {
        let (_, framed) = awc::Client::new()
            .ws(url)
            .bearer_auth(token)
            .max_frame_size(4 << 20)
            .connect()
            .await
            .expect("websocket handshake");
        RawClient {
            framed: framed.into_map_codec(|c| c.max_size(4 << 20)),
        }
    }

    async fn send_text(&mut self, text: &str) {
        self.framed
            .send(Message::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    async fn send_binary(&mut self, data: Vec<u8>) {
        self.framed
            .send(Message::Binary(data.into()))
            .await
            .unwrap();
    }

    async fn close(&mut self) {
        let _ = self
            .framed
            .send(Message::Close(Some(ws::CloseCode::Normal.into())))
            .await;
    }

    async fn next(&mut self) -> RawFrame {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), self.framed.next())
                .await
                .expect("server answered in time");
            match frame {
                Some(Ok(Frame::Text(text))) => {
                    return RawFrame::Text(String::from_utf8(text.to_vec()).unwrap())
                }
                Some(Ok(Frame::Close(reason))) => {
                    return RawFrame::Closed(reason.map(|r| u16::from(r.code)))
                }
                Some(Ok(Frame::Ping(p))) => {
                    let _ = self.framed.send(Message::Pong(p)).await;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("protocol error: {e}"),
                None => return RawFrame::Closed(None),
            }
        }
    }

    /// Text frames until one whose `type` is `ty` (included).
    async fn texts_until(&mut self, ty: &str) -> Vec<String> {
        let mut texts = Vec::new();
        loop {
            match self.next().await {
                RawFrame::Text(text) => {
                    let done = serde_json::from_str::<Value>(&text).unwrap()["type"] == ty;
                    texts.push(text);
                    if done {
                        return texts;
                    }
                }
                RawFrame::Closed(code) => panic!("closed ({code:?}) before {ty}: {texts:?}"),
            }
        }
    }

    /// Text frames until the server closes, and the close code.
    async fn until_close(&mut self) -> (Vec<Value>, Option<u16>) {
        let mut messages = Vec::new();
        loop {
            match self.next().await {
                RawFrame::Text(text) => messages.push(serde_json::from_str(&text).unwrap()),
                RawFrame::Closed(code) => return (messages, code),
            }
        }
    }
}

/// The Mistral part of the admin pool report.
async fn mistral_pool(gateway: &RunningGateway) -> Value {
    pool_report(gateway).await["mistral"].clone()
}

// ---- the chronus protocol over Mistral --------------------------------------

#[actix_rt::test]
async fn a_stored_key_reaches_mistral_as_bearer_and_transcriptions_come_back_mapped() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let gateway = start_gateway(&env_for(&fake)).await;
    assert_eq!(put_key(&gateway, "alice", KEY).await.status, 204);

    let mut client = chronus_session(&gateway, "alice", "").await;
    let ready = client.expect_type("ready").await;
    assert_eq!(ready["provider"], "mistral");
    assert!(ready["sessionId"].is_string());
    // 1.25 s of 16 kHz f32: two full 0.5 s segments and a last quarter second.
    let audio = distinct_f32_audio(0, 20_000);
    stream_then_end(&mut client, &audio).await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;

    let expected = [
        segment_text(0, 32_000),
        segment_text(1, 32_000),
        segment_text(2, 16_000),
    ];
    let finals = of_type(&messages, "transcription");
    assert_eq!(data_of(&finals), expected);
    let bounds: Vec<(f64, f64)> = finals
        .iter()
        .map(|f| (f["start"].as_f64().unwrap(), f["end"].as_f64().unwrap()))
        .collect();
    assert_eq!(bounds, [(0.0, 0.5), (0.5, 1.0), (1.0, 1.25)]);
    // Deltas accumulate into the current segment's text, and restart after it.
    assert_eq!(
        data_of(&of_type(&messages, "transcription.partial"))[..4],
        [
            "segment".to_owned(),
            "segment 0 of".to_owned(),
            expected[0].clone(),
            "segment".to_owned()
        ]
    );
    let done = messages.last().unwrap();
    assert_eq!(done["type"], "done");
    assert_eq!(done["data"], expected.join(" "));
    assert!(
        messages
            .iter()
            .all(|m| m["type"] != "error" && m["type"] != "session.created"),
        "Mistral's own events are consumed: {messages:?}"
    );
    assert_eq!(close, Some(1000));

    let upstream = fake.wait_ended(0).await;
    assert_eq!(
        upstream.authorization.as_deref(),
        Some(&*format!("Bearer {KEY}"))
    );
    let types = upstream.types();
    assert_eq!(
        upstream.json()[0],
        json!({"type": "session.update", "session": {"audio_format": {"encoding": "pcm_f32le", "sample_rate": 16000}}})
    );
    assert_eq!(
        types[types.len() - 2..],
        ["input_audio.flush", "input_audio.end"]
    );
    assert_eq!(upstream.appends().concat(), audio);
    assert_eq!(
        upstream.closed_by_gateway(),
        Some(Some(1000)),
        "the gateway closes Mistral's socket cleanly: {:?}",
        upstream.received.last()
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            mistral_pool(&gateway).await["sessions"] == 0
        })
        .await
    );
    gateway.stop().await;
}

#[actix_rt::test]
async fn s16le_sessions_announce_their_encoding_and_sample_rate_to_mistral() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let gateway = start_gateway(&env_for(&fake)).await;
    put_key(&gateway, "sam", KEY).await;
    let mut client = chronus_session(&gateway, "sam", "&encoding=s16le&sampleRate=24000").await;
    client.expect_type("ready").await;
    client.send_binary(vec![0u8; 24_000]).await; // 0.5 s
    let first = client.expect_type("transcription").await;
    assert_eq!(first["data"], segment_text(0, 24_000));
    assert_eq!(
        (first["start"].as_f64(), first["end"].as_f64()),
        (Some(0.0), Some(0.5))
    );
    assert_eq!(
        fake.only_connection().json()[0]["session"]["audio_format"],
        json!({"encoding": "pcm_s16le", "sample_rate": 24000})
    );
    gateway.stop().await;
}

#[actix_rt::test]
async fn no_stored_key_is_no_api_key_on_both_websockets_and_400_on_the_token_endpoint() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let gateway = start_gateway(&env_for(&fake)).await;
    let token = token_for("keyless");
    for path in [TRANSCRIBE_MISTRAL, NATIVE] {
        let mut client = connect(&ws_url(&gateway, path), Auth::Query(&token), None)
            .await
            .client;
        let (messages, close) = client.until_close(Duration::from_secs(5)).await;
        assert_eq!(messages.len(), 1, "{path}: {messages:?}");
        assert_eq!(messages[0]["type"], "error");
        assert_eq!(messages[0]["code"], "NO_API_KEY", "{path} {messages:?}");
        assert_eq!(messages[0]["retryable"], false);
        assert_eq!(close, Some(4400), "{path}");
    }
    let reply = call(
        "GET",
        http_url(&gateway, "/api/mistral/token"),
        Some(&token),
        None,
    )
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(
        reply.json(),
        json!({"error": "No Mistral API key configured", "code": "NO_API_KEY"})
    );
    assert!(fake.connections().is_empty(), "Mistral is never contacted");
    assert_eq!(mistral_pool(&gateway).await["sessions"], 0);
    gateway.stop().await;
}

#[actix_rt::test]
async fn a_key_mistral_refuses_is_auth_failed_at_once_on_both_websockets() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let gateway = start_gateway(&env_for(&fake)).await;
    put_key(&gateway, "mallory", "mk-revoked-key-000").await;
    let token = token_for("mallory");
    for (n, path) in [TRANSCRIBE_MISTRAL, NATIVE].into_iter().enumerate() {
        let mut client = connect(&ws_url(&gateway, path), Auth::Query(&token), None)
            .await
            .client;
        let (messages, close) = client.until_close(Duration::from_secs(5)).await;
        let error = messages.last().unwrap();
        assert_eq!(error["code"], "AUTH_FAILED", "{path}: {messages:?}");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("Mistral API key"),
            "{error}"
        );
        assert_eq!(close, Some(1011));
        // A refusal is not retried.
        let connections = fake.connections();
        assert_eq!(connections.len(), n + 1, "{path}");
        assert_eq!(
            connections[n].authorization.as_deref(),
            Some("Bearer mk-revoked-key-000")
        );
        assert!(!connections[n].accepted);
    }
    gateway.stop().await;
}

#[actix_rt::test]
async fn a_mistral_error_event_is_mistral_error_with_its_upstream_code() {
    let fake = FakeMistral::start(FakeMistralOptions {
        error_code: Some(3001),
        ..FakeMistralOptions::new(KEY, Mode::Segments)
    });
    let gateway = start_gateway(&env_for(&fake)).await;
    put_key(&gateway, "erin", KEY).await;
    let mut client = chronus_session(&gateway, "erin", "").await;
    client.expect_type("ready").await;
    client.send_binary(f32_audio(0.1, 0.1)).await;
    let (messages, close) = client.until_close(Duration::from_secs(5)).await;
    let error = messages.last().unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "MISTRAL_ERROR");
    assert_eq!(error["upstreamCode"], 3001);
    assert_eq!(error["retryable"], false);
    let message = error["message"].as_str().unwrap();
    assert!(
        !message.contains("gpu-7") && !message.contains("internal"),
        "{message}"
    );
    assert!(error["sessionId"].is_string());
    assert_eq!(close, Some(1011));
    gateway.stop().await;
}

#[actix_rt::test]
async fn an_unreachable_mistral_is_mistral_unavailable_after_three_retries() {
    // A "Mistral" that accepts TCP and hangs up at once, counting attempts.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = attempts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    let mut env = base_env("ws://127.0.0.1:9/stream-audio");
    env.insert("MISTRAL_WS_URL".into(), format!("ws://{addr}/v1/realtime"));
    let gateway = start_gateway(&env).await;
    put_key(&gateway, "unlucky", KEY).await;
    let mut client = chronus_session(&gateway, "unlucky", "").await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["code"], "MISTRAL_UNAVAILABLE");
    assert_eq!(messages[0]["retryable"], true);
    assert!(!messages[0]["message"]
        .as_str()
        .unwrap()
        .contains("127.0.0.1"));
    assert_eq!(close, Some(1011));
    assert_eq!(attempts.load(std::sync::atomic::Ordering::SeqCst), 4);
    gateway.stop().await;
}

#[actix_rt::test]
async fn audio_sent_before_session_created_arrives_intact_and_in_order() {
    let fake = FakeMistral::start(FakeMistralOptions {
        session_created_delay: Duration::from_millis(800),
        ..FakeMistralOptions::new(KEY, Mode::Segments)
    });
    let gateway = start_gateway(&env_for(&fake)).await;
    put_key(&gateway, "eager", KEY).await;
    let mut client = chronus_session(&gateway, "eager", "").await;
    // No wait for `ready`: Mistral has not even said session.created.
    let audio = distinct_f32_audio(1, 12_000); // 0.75 s
    stream_then_end(&mut client, &audio).await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    assert_eq!(messages[0]["type"], "ready");
    assert_eq!(
        data_of(&of_type(&messages, "transcription")),
        [segment_text(0, 32_000), segment_text(1, 16_000)]
    );
    assert_eq!(close, Some(1000));

    let upstream = fake.wait_ended(0).await;
    let types = upstream.types();
    assert_eq!(types[0], "session.update", "{types:?}");
    assert!(types[1..types.len() - 2]
        .iter()
        .all(|t| t == "input_audio.append"));
    assert_eq!(upstream.appends().concat(), audio, "every byte, in order");
    gateway.stop().await;
}

#[actix_rt::test]
async fn a_chunk_larger_than_262144_bytes_is_split_on_sample_boundaries() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let mut env = env_for(&fake);
    env.insert("MAX_FRAME_BYTES".into(), "1048576".into());
    let gateway = start_gateway(&env).await;
    put_key(&gateway, "bulk", KEY).await;
    let mut client = chronus_session(&gateway, "bulk", "&sampleRate=48000").await;
    client.expect_type("ready").await;
    let audio = distinct_f32_audio(0, 150_000); // 600,000 bytes in one frame
    client.send_binary(audio.clone()).await;
    client.send_json(json!({"type": "end"})).await;
    let (_, close) = client.until_close(Duration::from_secs(10)).await;
    assert_eq!(close, Some(1000));
    let appends = fake.wait_ended(0).await.appends();
    let sizes: Vec<usize> = appends.iter().map(Vec::len).collect();
    assert_eq!(sizes, [262_144, 262_144, 75_712]);
    assert_eq!(appends.concat(), audio);
    gateway.stop().await;
}

// ---- the native proxy ---------------------------------------------------------

#[actix_rt::test]
async fn the_native_proxy_relays_text_verbatim_both_ways_and_wraps_binary_audio() {
    // Mistral takes its time to answer the handshake: everything below is
    // sent before its socket is open, and must be held, not dropped.
    let fake = FakeMistral::start(FakeMistralOptions {
        accept_delay: Duration::from_millis(500),
        ..FakeMistralOptions::new(KEY, Mode::Segments)
    });
    let gateway = start_gateway(&env_for(&fake)).await;
    put_key(&gateway, "native", KEY).await;
    let mut client = RawClient::connect(&ws_url(&gateway, NATIVE), &token_for("native")).await;

    let update = r#"{"type": "session.update",  "session": {"audio_format": {"encoding": "pcm_s16le", "sample_rate": 16000}}}"#;
    let audio: Vec<u8> = (0..32_000u32).map(|i| (i % 251) as u8).collect(); // 1 s of s16le
    client.send_text(update).await;
    client.send_binary(audio.clone()).await;
    client.send_text(r#"{"type":"input_audio.end"}"#).await;

    let received = client.texts_until("transcription.done").await;
    client.close().await;
    let upstream = fake.wait_ended(0).await;
    assert_eq!(
        received, upstream.sent,
        "Mistral's frames come back verbatim"
    );
    assert!(received[0].contains("session.created"), "{received:?}");

    assert_eq!(
        upstream.authorization.as_deref(),
        Some(&*format!("Bearer {KEY}"))
    );
    assert_eq!(
        upstream.received[0],
        Upstreamed::Text(update.to_owned()),
        "verbatim"
    );
    assert_eq!(upstream.types()[1], "input_audio.append");
    assert_eq!(upstream.appends().concat(), audio);
    assert_eq!(
        upstream.received[2],
        Upstreamed::Text(r#"{"type":"input_audio.end"}"#.to_owned())
    );
    assert_eq!(upstream.closed_by_gateway(), Some(Some(1000)));
    let segments: Vec<Value> = received
        .iter()
        .map(|t| serde_json::from_str::<Value>(t).unwrap())
        .filter(|v| v["type"] == "transcription.segment")
        .collect();
    assert_eq!(segments.len(), 2);
    assert_eq!(segments[1]["text"], segment_text(1, 16_000));
    gateway.stop().await;
}

#[actix_rt::test]
async fn the_native_proxy_refuses_plain_http_and_missing_tokens_before_mistral_is_touched() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let gateway = start_gateway(&env_for(&fake)).await;
    put_key(&gateway, "someone", KEY).await;
    let plain = call(
        "GET",
        http_url(&gateway, NATIVE),
        Some(&token_for("someone")),
        None,
    )
    .await;
    assert_eq!(plain.status, 426);

    let mut client = connect(&ws_url(&gateway, NATIVE), Auth::None, None)
        .await
        .client;
    let (messages, close) = client.until_close(Duration::from_secs(5)).await;
    assert_eq!(messages[0]["code"], "UNAUTHORIZED");
    assert_eq!(close, Some(4401));
    assert!(fake.connections().is_empty());
    gateway.stop().await;
}

#[actix_rt::test]
async fn the_native_proxy_reports_a_frame_over_max_frame_bytes_in_the_chronus_envelope() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let mut env = env_for(&fake);
    env.insert("MAX_FRAME_BYTES".into(), "65536".into());
    let gateway = start_gateway(&env).await;
    put_key(&gateway, "big", KEY).await;
    let mut client = RawClient::connect(&ws_url(&gateway, NATIVE), &token_for("big")).await;
    client.texts_until("session.created").await;
    client.send_binary(vec![0u8; 65_540]).await;
    let (messages, close) = client.until_close().await;
    assert_eq!(messages.last().unwrap()["code"], "MESSAGE_TOO_LARGE");
    assert_eq!(close, Some(1009));
    assert_eq!(
        fake.wait_ended(0).await.closed_by_gateway(),
        Some(Some(1000))
    );
    gateway.stop().await;
}

// ---- sessions: caps and monitoring ------------------------------------------------

#[actix_rt::test]
async fn max_sessions_per_user_applies_to_mistral_sessions() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let mut env = env_for(&fake);
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
    let gateway = start_gateway(&env_for(&fake)).await;
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

// ---- settings endpoints ---------------------------------------------------------

/// Every settings behaviour, for users named `<prefix>-…` (the PostgreSQL
/// database is shared between runs).
async fn settings_endpoints_behave(gateway: &RunningGateway, prefix: &str) {
    let alice = token_for(&format!("{prefix}-alice"));
    let bob = token_for(&format!("{prefix}-bob"));
    let keys_url = http_url(gateway, "/api/settings/api-keys");
    let mistral_url = http_url(gateway, "/api/settings/api-keys/mistral");
    let token_url = http_url(gateway, "/api/mistral/token");
    let body = json!({"apiKey": KEY}).to_string();

    // Without a token: 401 everywhere, with the REST error body.
    for (method, url, body) in [
        ("GET", &keys_url, None),
        ("PUT", &mistral_url, Some(body.as_str())),
        ("DELETE", &mistral_url, None),
        ("GET", &token_url, None),
    ] {
        let reply = call(method, url.clone(), None, body).await;
        assert_eq!(reply.status, 401, "{method} {url}");
        assert_eq!(reply.json(), json!({"error": "Unauthorized"}));
    }
    // Unknown provider: 404.
    let openai = http_url(gateway, "/api/settings/api-keys/openai");
    assert_eq!(
        call("PUT", openai.clone(), Some(&alice), Some(&body))
            .await
            .status,
        404
    );
    assert_eq!(call("DELETE", openai, Some(&alice), None).await.status, 404);

    // Invalid bodies and keys: 400 with a reason, never the input.
    let too_long = "k".repeat(513);
    let oversized = json!({"apiKey": KEY, "padding": "x".repeat(5000)}).to_string();
    let invalid = [
        String::new(),
        "not json".to_owned(),
        json!({"key": KEY}).to_string(),
        json!({"apiKey": 12345}).to_string(),
        json!({"apiKey": ""}).to_string(),
        json!({"apiKey": format!("{KEY} with spaces")}).to_string(),
        json!({"apiKey": too_long}).to_string(),
        oversized,
    ];
    for bad in &invalid {
        let reply = call("PUT", mistral_url.clone(), Some(&alice), Some(bad)).await;
        assert_eq!(reply.status, 400, "{bad:.60}: {reply:?}");
        assert!(reply.json()["error"].is_string(), "{reply:?}");
        assert!(
            !reply.body.contains(KEY) && !reply.body.contains("kkkk"),
            "{reply:?}"
        );
    }
    assert_eq!(
        call("GET", keys_url.clone(), Some(&alice), None)
            .await
            .json(),
        json!([])
    );

    // Store, list, replace.
    let stored = call("PUT", mistral_url.clone(), Some(&alice), Some(&body)).await;
    assert_eq!((stored.status, stored.body.as_str()), (204, ""));
    let listed = call("GET", keys_url.clone(), Some(&alice), None).await;
    assert_eq!(listed.status, 200);
    assert!(!listed.body.contains(KEY), "GET never returns the key");
    let entries = listed.json();
    assert_eq!(entries.as_array().unwrap().len(), 1, "{entries}");
    assert_eq!(entries[0]["provider"], "mistral");
    assert_eq!(entries[0]["last4"], &KEY[KEY.len() - 4..]);
    let first_update = entries[0]["updatedAt"].as_str().unwrap().to_owned();
    assert!(chrono::DateTime::parse_from_rfc3339(&first_update).is_ok());
    assert_eq!(entries[0].as_object().unwrap().len(), 3, "{entries}");

    let token = call("GET", token_url.clone(), Some(&alice), None).await;
    assert_eq!(token.status, 200);
    assert_eq!(
        token.json(),
        json!({
            "websocketUrl": format!("ws://{}/api/mistral/ws", gateway.public_addr),
            "serverUrl": format!("http://{}/api/mistral", gateway.public_addr),
        })
    );

    tokio::time::sleep(Duration::from_millis(5)).await;
    let replaced = call(
        "PUT",
        mistral_url.clone(),
        Some(&alice),
        Some(&json!({"apiKey": "  mk-second-key-WXYZ\n"}).to_string()),
    )
    .await;
    assert_eq!(replaced.status, 204);
    let entries = call("GET", keys_url.clone(), Some(&alice), None)
        .await
        .json();
    assert_eq!(entries[0]["last4"], "WXYZ");
    assert_ne!(entries[0]["updatedAt"], first_update);

    // Another user sees nothing of it.
    assert_eq!(
        call("GET", keys_url.clone(), Some(&bob), None).await.json(),
        json!([])
    );
    assert_eq!(
        call("DELETE", mistral_url.clone(), Some(&bob), None)
            .await
            .status,
        404
    );
    assert_eq!(
        call("GET", token_url.clone(), Some(&bob), None)
            .await
            .status,
        400
    );

    // Delete: 204, then 404.
    let deleted = call("DELETE", mistral_url.clone(), Some(&alice), None).await;
    assert_eq!((deleted.status, deleted.body.as_str()), (204, ""));
    assert_eq!(
        call("DELETE", mistral_url.clone(), Some(&alice), None)
            .await
            .status,
        404
    );
    assert_eq!(
        call("GET", keys_url, Some(&alice), None).await.json(),
        json!([])
    );
    assert_eq!(call("GET", token_url, Some(&alice), None).await.status, 400);
}

#[actix_rt::test]
async fn settings_endpoints_store_list_replace_and_delete_a_key_without_returning_it() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let gateway = start_gateway(&env_for(&fake)).await;
    settings_endpoints_behave(&gateway, "sqlite").await;
    gateway.stop().await;
}

#[actix_rt::test]
async fn the_token_endpoint_prefers_public_ws_base_url_then_the_forwarded_scheme() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let mut env = env_for(&fake);
    let gateway = start_gateway(&env).await;
    put_key(&gateway, "fwd", KEY).await;
    let reply = awc::Client::new()
        .get(http_url(&gateway, "/api/mistral/token"))
        .bearer_auth(token_for("fwd"))
        .insert_header(("x-forwarded-proto", "https"))
        .insert_header(("x-forwarded-host", "chronus.example"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(
        reply["websocketUrl"],
        "wss://chronus.example/api/mistral/ws"
    );
    assert_eq!(reply["serverUrl"], "https://chronus.example/api/mistral");
    gateway.stop().await;

    env.insert(
        "PUBLIC_WS_BASE_URL".into(),
        "wss://app.chronus.example/gateway/".into(),
    );
    let gateway = start_gateway(&env).await;
    put_key(&gateway, "fwd", KEY).await;
    let reply = call(
        "GET",
        http_url(&gateway, "/api/mistral/token"),
        Some(&token_for("fwd")),
        None,
    )
    .await;
    assert_eq!(
        reply.json(),
        json!({
            "websocketUrl": "wss://app.chronus.example/gateway/api/mistral/ws",
            "serverUrl": "https://app.chronus.example/gateway/api/mistral",
        })
    );
    gateway.stop().await;
}

/// The PostgreSQL URL, or `None` (after a loud note) outside CI.
fn pg_url() -> Option<String> {
    match std::env::var(PG_URL_VAR) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some_and(|ci| !ci.is_empty()) => panic!(
            "CI is set but {PG_URL_VAR} is not: start PostgreSQL with \
             eval \"$(bash .ci/start-postgres.sh)\" before the tests"
        ),
        _ => {
            eprintln!(
                "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
                 !! {PG_URL_VAR} is not set: SKIPPING this PostgreSQL test.\n\
                 !! Run: eval \"$(bash .ci/start-postgres.sh)\"\n\
                 !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
            );
            None
        }
    }
}

#[actix_rt::test]
async fn settings_endpoints_and_a_mistral_session_work_on_postgresql() {
    let Some(database_url) = pg_url() else {
        return;
    };
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let mut env = env_for(&fake);
    env.insert("DATABASE_URL".into(), database_url);
    let gateway = start_gateway(&env).await;
    let prefix = format!("pg-{}", uuid::Uuid::new_v4().simple());
    settings_endpoints_behave(&gateway, &prefix).await;

    // A key stored in PostgreSQL decrypts and reaches Mistral.
    let user = format!("{prefix}-carol");
    assert_eq!(put_key(&gateway, &user, KEY).await.status, 204);
    let mut client = chronus_session(&gateway, &user, "").await;
    client.expect_type("ready").await;
    assert_eq!(
        fake.only_connection().authorization.as_deref(),
        Some(&*format!("Bearer {KEY}"))
    );
    gateway.stop().await;
}

// ---- the key never leaks ---------------------------------------------------------

/// The gateway binary. `CHRONUS_GATEWAY_BIN` may name a copy of it, for a
/// target directory shared with other checkouts that may rebuild it meanwhile.
fn gateway_binary() -> String {
    std::env::var("CHRONUS_GATEWAY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_chronus-gateway").to_owned())
}

/// The real binary, configured from the environment, logging at debug level
/// to a captured stderr.
struct GatewayProcess {
    child: std::process::Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    public: String,
}

impl GatewayProcess {
    fn start(env: &HashMap<String, String>, dir: &std::path::Path) -> GatewayProcess {
        let mut child = Command::new(gateway_binary())
            .arg("serve")
            .current_dir(dir)
            .envs(env)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gateway binary starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut pipe = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut process = GatewayProcess {
            child,
            stderr,
            reader: Some(reader),
            public: String::new(),
        };
        for _ in 0..500 {
            let log = process.stderr.lock().unwrap().clone();
            if let Some(line) = log.lines().find(|l| l.contains("public listener on ")) {
                let addr = line.split("public listener on ").nth(1).unwrap();
                process.public = addr.split(',').next().unwrap().trim().to_owned();
                return process;
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("gateway exited with {status}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("gateway did not start:\n{}", process.stderr.lock().unwrap());
    }

    /// Stops the process and returns everything it logged.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let log = self.stderr.lock().unwrap().clone();
        log
    }
}

#[actix_rt::test]
async fn the_raw_key_never_appears_in_responses_the_sqlite_file_or_the_logs() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let dir = std::env::temp_dir().join(format!("chronus-leak-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("gateway.db");
    let mut env = env_for(&fake);
    env.insert("DATABASE_URL".into(), db.display().to_string());
    env.insert("BIND_ADDR".into(), "127.0.0.1:0".into());
    let process = GatewayProcess::start(&env, &dir);
    let base = format!("http://{}", process.public);
    let token = token_for("leaky");
    let mut seen = Vec::new();

    // Settings: a refused key that carries the real one, then the real one.
    let bad = json!({"apiKey": format!("{KEY} oops")}).to_string();
    let reply = call(
        "PUT",
        format!("{base}/api/settings/api-keys/mistral"),
        Some(&token),
        Some(&bad),
    )
    .await;
    assert_eq!(reply.status, 400);
    seen.push(reply.body);
    let good = json!({"apiKey": KEY}).to_string();
    let reply = call(
        "PUT",
        format!("{base}/api/settings/api-keys/mistral"),
        Some(&token),
        Some(&good),
    )
    .await;
    assert_eq!(reply.status, 204);
    for path in ["/api/settings/api-keys", "/api/mistral/token"] {
        let reply = call("GET", format!("{base}{path}"), Some(&token), None).await;
        assert_eq!(reply.status, 200, "{path}");
        seen.push(reply.body);
    }

    // A whole chronus session and a native one: the key goes to Mistral only.
    let url = format!("ws://{}{TRANSCRIBE_MISTRAL}", process.public);
    let mut client = connect(&url, Auth::Query(&token), None).await.client;
    stream_then_end(&mut client, &f32_audio(0.25, 0.6)).await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    assert_eq!(close, Some(1000), "{messages:?}");
    seen.extend(messages.iter().map(Value::to_string));
    let mut native = RawClient::connect(&format!("ws://{}{NATIVE}", process.public), &token).await;
    seen.extend(native.texts_until("session.created").await);
    native.close().await;
    fake.wait_ended(1).await;
    assert_eq!(
        fake.connections()[0].authorization.as_deref(),
        Some(&*format!("Bearer {KEY}"))
    );

    let log = process.stop();
    assert!(log.contains("DEBUG"), "debug logging was captured:\n{log}");
    assert!(log.contains("stored mistral API key ending in"), "{log}");
    assert!(!log.contains(KEY), "the key is in the logs:\n{log}");
    for body in &seen {
        assert!(!body.contains(KEY), "a response carries the key: {body}");
    }
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        files += 1;
        assert!(
            !bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()),
            "{} holds the key in clear",
            path.display()
        );
    }
    assert!(files >= 1 && db.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- operations: key rotation and the demo ------------------------------------

/// Runs `chronus-gateway reencrypt-keys` with `env`; returns its stdout.
fn reencrypt_keys(env: &HashMap<String, String>, dir: &std::path::Path) -> String {
    let output = Command::new(gateway_binary())
        .arg("reencrypt-keys")
        .current_dir(dir)
        .envs(env)
        .output()
        .expect("gateway binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "reencrypt-keys failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[actix_rt::test]
async fn after_a_key_rotation_reencrypt_keys_moves_stored_keys_to_the_new_encryption_key() {
    const NEW_ENCRYPTION_KEY: &str = "bmV3LWtleS1uZXcta2V5LW5ldy1rZXktbmV3LWtleSE=";
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let dir = std::env::temp_dir().join(format!("chronus-rotate-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut env = env_for(&fake);
    env.insert(
        "DATABASE_URL".into(),
        dir.join("gateway.db").display().to_string(),
    );
    let gateway = start_gateway(&env).await;
    assert_eq!(put_key(&gateway, "rotor", KEY).await.status, 204);
    gateway.stop().await;

    // Step 2 and 3: the new key is current (version 2), the old one previous.
    let old_encryption_key = env["API_KEY_ENCRYPTION_KEY"].clone();
    env.insert("API_KEY_ENCRYPTION_KEY".into(), NEW_ENCRYPTION_KEY.into());
    env.insert("API_KEY_ENCRYPTION_KEY_VERSION".into(), "2".into());
    env.insert(
        "API_KEY_PREVIOUS_ENCRYPTION_KEYS".into(),
        format!("1:{old_encryption_key}"),
    );
    let stdout = reencrypt_keys(&env, &dir);
    assert!(
        stdout.contains("re-encrypted 1 API key(s) to key version 2"),
        "{stdout}"
    );
    assert!(!stdout.contains(KEY));
    let stdout = reencrypt_keys(&env, &dir);
    assert!(stdout.contains("re-encrypted 0 API key(s)"), "{stdout}");

    // Step 4: without the old key, the stored key still reaches Mistral.
    env.remove("API_KEY_PREVIOUS_ENCRYPTION_KEYS");
    let gateway = start_gateway(&env).await;
    let mut client = chronus_session(&gateway, "rotor", "").await;
    client.expect_type("ready").await;
    assert_eq!(
        fake.only_connection().authorization.as_deref(),
        Some(&*format!("Bearer {KEY}"))
    );
    gateway.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[actix_rt::test]
async fn the_demo_stores_its_mistral_key_and_serves_provider_mistral() {
    let fake = FakeMistral::start(FakeMistralOptions::new(KEY, Mode::Segments));
    let dir = std::env::temp_dir().join(format!("chronus-demo-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new(gateway_binary())
        .args([
            "demo",
            "--bind",
            "127.0.0.1:0",
            "--admin-bind",
            "127.0.0.1:0",
        ])
        .args(["--mistral-key", KEY, "--data-dir"])
        .arg(dir.join("data"))
        .current_dir(&dir)
        .env("MISTRAL_WS_URL", fake.url())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("demo starts");
    // The demo prints a ready-made websocat line for provider=mistral.
    let stdout = child.stdout.take().unwrap();
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(start) = line.find("'ws://") {
                if line.contains("provider=mistral") {
                    let url = line[start + 1..].trim_end_matches('\'').to_owned();
                    let _ = url_tx.send(url);
                }
            }
        }
    });
    let url = url_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the demo printed its Mistral URL");
    let mut client = connect(&url, Auth::None, None).await.client;
    let ready = client.expect_type("ready").await;
    assert_eq!(ready["provider"], "mistral");
    stream_then_end(&mut client, &f32_audio(0.5, 0.5)).await;
    let (messages, close) = client.until_close(Duration::from_secs(10)).await;
    assert_eq!(
        data_of(&of_type(&messages, "transcription")),
        [segment_text(0, 32_000)]
    );
    assert_eq!(close, Some(1000));
    assert_eq!(
        fake.only_connection().authorization.as_deref(),
        Some(&*format!("Bearer {KEY}"))
    );
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
