//! Shared test harness: a real gateway on 127.0.0.1:0, real WebSocket clients,
//! tokens of every kind. Each test binary uses the parts it needs.
//!
//! Every test binary compiles this module, so it holds only what many use.
//! Helpers of one subject live beside it (`live_session.rs` and
//! `scenario.rs` for the fault scenarios, `mistral.rs`, `relay.rs`,
//! `devthoth_client.rs`, `deploy.rs`, `hostile.rs`, `jwt_forge.rs`,
//! `key_store_fixture.rs`) and are declared only by the test files of that
//! subject: `#[path = "common/relay.rs"] mod relay;`. Processes a test
//! starts belong to a [`harness::Harness`].
#![allow(dead_code)]

pub mod harness;
pub mod process;
pub mod prometheus;
pub mod raw_ws;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_codec::Framed;
use awc::ws::{self, Frame, Message};
use awc::BoxedSocket;
use base64::Engine;
use bytes::Bytes;
use chronus_gateway::config::Config;
use chronus_gateway::RunningGateway;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;

pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";
pub const ENCRYPTION_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The base configuration of a test gateway: loopback, ephemeral ports,
/// fast retries, a throwaway SQLite file.
pub fn base_env(thoth_url: &str) -> HashMap<String, String> {
    let db = std::env::temp_dir().join(format!("chronus-test-{}.db", uuid::Uuid::new_v4()));
    HashMap::from([
        ("BIND_ADDR".into(), "127.0.0.1:0".into()),
        ("ADMIN_BIND_ADDR".into(), "127.0.0.1:0".into()),
        ("JWT_SECRET".into(), SECRET.into()),
        ("API_KEY_ENCRYPTION_KEY".into(), ENCRYPTION_KEY.into()),
        ("THOTH_WS_URL".into(), thoth_url.into()),
        ("THOTH_RETRY_BASE_MS".into(), "20".into()),
        ("THOTH_IDLE_CLOSE_SECS".into(), "1".into()),
        ("LEGACY_FLUSH_GRACE_MS".into(), "300".into()),
        ("DATABASE_URL".into(), db.display().to_string()),
        ("MAX_SESSIONS_PER_USER".into(), "1000".into()),
        // Off: the tests of one binary share a process (its CPU time) and
        // a busy CI machine; tests/overload.rs turns it on.
        ("OVERLOAD_CPU_PERCENT".into(), "0".into()),
    ])
}

pub async fn start_gateway(env: &HashMap<String, String>) -> RunningGateway {
    let _ = env_logger::builder().is_test(true).try_init();
    let config = Config::from_map(env).expect("test config is valid");
    chronus_gateway::start(config)
        .await
        .expect("gateway starts")
}

/// An HS256 token with arbitrary claims, signed with the test secret.
pub fn token_with(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A valid token for `sub`, good for an hour.
pub fn token_for(sub: &str) -> String {
    token_with(serde_json::json!({"sub": sub, "exp": now() + 3600}))
}

/// An unsigned token (`alg: none`).
pub fn alg_none_token(sub: &str) -> String {
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!(
        "{}.{}.",
        b64(serde_json::json!({"alg": "none", "typ": "JWT"})),
        b64(serde_json::json!({"sub": sub, "exp": now() + 3600}))
    )
}

/// A WebSocket client speaking to the gateway.
pub struct WsClient {
    framed: Framed<BoxedSocket, ws::Codec>,
}

/// How a client may present its token.
pub enum Auth<'a> {
    Query(&'a str),
    Header(&'a str),
    Subprotocol(&'a str),
    Cookie(&'a str),
    None,
}

pub struct Connected {
    pub client: WsClient,
    pub subprotocol: Option<String>,
}

pub async fn connect(url: &str, auth: Auth<'_>, origin: Option<&str>) -> Connected {
    let mut url = url.to_string();
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    if let Auth::Query(token) = auth {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("token=");
        url.push_str(token);
    }
    let mut request = client.ws(url.as_str()).max_frame_size(4 * 1024 * 1024);
    match auth {
        Auth::Header(token) => request = request.bearer_auth(token),
        Auth::Subprotocol(token) => request = request.protocols(["chronus.jwt", token]),
        Auth::Cookie(token) => {
            request = request.cookie(awc::cookie::Cookie::new("chronus_token", token.to_string()))
        }
        _ => {}
    }
    if let Some(origin) = origin {
        request = request.origin(origin);
    }
    let (response, framed) = request
        .connect()
        .await
        .unwrap_or_else(|e| panic!("websocket handshake to {url}: {e}"));
    let subprotocol = response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_string());
    Connected {
        client: WsClient {
            framed: framed.into_map_codec(|c| c.max_size(4 * 1024 * 1024)),
        },
        subprotocol,
    }
}

/// What the server sent, as a test sees it.
#[derive(Debug)]
pub enum Received {
    Json(Value),
    Closed(Option<u16>),
}

impl WsClient {
    pub async fn send_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        self.framed.send(Message::Text(text.into())).await.unwrap();
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(value.to_string()).await
    }

    pub async fn send_binary(&mut self, data: impl Into<Bytes>) {
        self.framed
            .send(Message::Binary(data.into()))
            .await
            .unwrap();
    }

    /// Best effort: the server may already have closed.
    pub async fn try_send_binary(&mut self, data: impl Into<Bytes>) -> bool {
        self.framed.send(Message::Binary(data.into())).await.is_ok()
    }

    pub async fn close(&mut self) {
        let _ = self
            .framed
            .send(Message::Close(Some(ws::CloseCode::Normal.into())))
            .await;
    }

    /// The next JSON message or close, skipping pings.
    /// The text messages that arrive within `within` (stops early at a close).
    pub async fn drain_for(&mut self, within: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + within;
        let mut messages = Vec::new();
        while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, self.framed.next()).await
        {
            match frame {
                Frame::Text(text) => {
                    messages.push(serde_json::from_slice(&text).expect("server sends JSON"))
                }
                Frame::Close(_) => break,
                Frame::Ping(p) => {
                    let _ = self.framed.send(Message::Pong(p)).await;
                }
                _ => {}
            }
        }
        messages
    }

    pub async fn recv(&mut self, within: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.framed.next())
                .await
                .expect("server answered in time");
            match frame {
                Some(Ok(Frame::Text(text))) => {
                    return Received::Json(
                        serde_json::from_slice(&text).expect("server sends JSON"),
                    )
                }
                Some(Ok(Frame::Close(reason))) => {
                    return Received::Closed(reason.map(|r| u16::from(r.code)))
                }
                Some(Ok(Frame::Ping(p))) => {
                    let _ = self.framed.send(Message::Pong(p)).await;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("protocol error: {e}"),
                None => return Received::Closed(None),
            }
        }
    }

    /// The next JSON message; panics on close.
    pub async fn json(&mut self) -> Value {
        match self.recv(Duration::from_secs(15)).await {
            Received::Json(v) => v,
            Received::Closed(code) => panic!("closed ({code:?}) while a message was expected"),
        }
    }

    /// The next message of type `ty`, skipping `transcription.partial`.
    pub async fn expect_type(&mut self, ty: &str) -> Value {
        loop {
            let msg = self.json().await;
            if msg["type"] == "transcription.partial" && ty != "transcription.partial" {
                continue;
            }
            assert_eq!(msg["type"], ty, "unexpected message {msg}");
            return msg;
        }
    }

    /// Reads until the server closes; returns the messages and the close code.
    pub async fn until_close(&mut self, within: Duration) -> (Vec<Value>, Option<u16>) {
        let mut messages = Vec::new();
        loop {
            match self.recv(within).await {
                Received::Json(v) => messages.push(v),
                Received::Closed(code) => return (messages, code),
            }
        }
    }
}

/// `seconds` of f32le audio at 16 kHz, every sample `level`.
pub fn f32_audio(level: f32, seconds: f64) -> Vec<u8> {
    let samples = (16_000.0 * seconds) as usize;
    std::iter::repeat_n(level.to_le_bytes(), samples)
        .flatten()
        .collect()
}

/// Admin JSON of the pool.
pub async fn pool_report(gateway: &RunningGateway) -> Value {
    let url = format!("http://{}/api/transcription/pool", gateway.admin_addr);
    awc::Client::new()
        .get(url)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .limit(16 * 1024 * 1024)
        .await
        .unwrap()
}

/// The first endpoint's reference count, from the monitoring endpoint.
/// Stores `key` as `user`'s Mistral API key through the public settings API
/// (`PUT /api/settings/api-keys/mistral`), asserting the documented `204`.
pub async fn store_mistral_key(gateway: &RunningGateway, user: &str, key: &str) {
    let reply = awc::Client::new()
        .put(format!(
            "http://{}/api/settings/api-keys/mistral",
            gateway.public_addr
        ))
        .bearer_auth(token_for(user))
        .insert_header(("content-type", "application/json"))
        .send_body(serde_json::json!({ "apiKey": key }).to_string())
        .await
        .expect("PUT key");
    assert_eq!(reply.status().as_u16(), 204);
}

pub async fn ref_count(gateway: &RunningGateway) -> u64 {
    pool_report(gateway).await["thoth"][0]["refCount"]
        .as_u64()
        .unwrap()
}

/// Polls `check` every 20 ms until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check().await
}

/// The value on the gateway's `/metrics` of the series whose exposition
/// line starts with `series` (name, labels and the space before the value).
pub async fn metric_value(gateway: &RunningGateway, series: &str) -> f64 {
    let url = format!("http://{}/metrics", gateway.admin_addr);
    let body = awc::Client::new()
        .get(url)
        .send()
        .await
        .expect("scrape")
        .body()
        .limit(16 * 1024 * 1024)
        .await
        .expect("body");
    let text = String::from_utf8(body.to_vec()).expect("UTF-8");
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .unwrap_or_else(|| panic!("no {series} in the exposition"))
        .trim()
        .parse()
        .expect("a number")
}

pub fn ws_url(gateway: &RunningGateway, path_and_query: &str) -> String {
    format!("ws://{}{}", gateway.public_addr, path_and_query)
}

/// Prints a measured figure and keeps it in `figures.txt` under cargo's
/// test scratch directory, so the test command can show it after a run that
/// captured the test output.
pub fn report_figure(line: &str) {
    println!("{line}");
    if let Some(dir) = option_env!("CARGO_TARGET_TMPDIR") {
        use std::io::Write;
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(std::path::Path::new(dir).join("figures.txt"))
        {
            let _ = writeln!(file, "{line}");
        }
    }
}

/// This process's resident memory, MiB (the gateway runs in-process).
pub fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}
