//! What the Mistral tests share: the test key, HTTP calls to the settings
//! endpoints, a chronus session over Mistral, and a raw WebSocket client
//! that sees the native proxy's frames exactly as sent.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use actix_codec::Framed;
use awc::ws::{self, Frame, Message};
use awc::BoxedSocket;
use chronus_gateway::RunningGateway;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use crate::common::{base_env, connect, pool_report, token_for, ws_url, Auth, WsClient};

pub const TRANSCRIBE_MISTRAL: &str = "/api/audio/transcribe?provider=mistral";
pub const NATIVE: &str = "/api/mistral/ws";
/// A Mistral key as the tests store it; distinctive enough to grep for.
pub const KEY: &str = "mk-TESTKEY-4f9a1c7e2b8d6053aa";
pub const PG_URL_VAR: &str = "TEST_DATABASE_URL_PG";

/// A gateway configuration whose Mistral is at `mistral_url` (thoth is never used).
pub fn env_for(mistral_url: String) -> HashMap<String, String> {
    let mut env = base_env("ws://127.0.0.1:9/stream-audio");
    env.insert("MISTRAL_WS_URL".into(), mistral_url);
    env
}

/// An HTTP answer: status and body text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|_| panic!("not JSON: {self:?}"))
    }
}

pub async fn call(method: &str, url: String, token: Option<&str>, body: Option<&str>) -> Reply {
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

pub fn http_url(gateway: &RunningGateway, path: &str) -> String {
    format!("http://{}{path}", gateway.public_addr)
}

pub async fn put_key(gateway: &RunningGateway, user: &str, key: &str) -> Reply {
    call(
        "PUT",
        http_url(gateway, "/api/settings/api-keys/mistral"),
        Some(&token_for(user)),
        Some(&json!({"apiKey": key}).to_string()),
    )
    .await
}

/// A chronus Mistral session, connected (not yet ready).
pub async fn chronus_session(gateway: &RunningGateway, user: &str, query: &str) -> WsClient {
    let token = token_for(user);
    let url = ws_url(gateway, &format!("{TRANSCRIBE_MISTRAL}{query}"));
    connect(&url, Auth::Query(&token), None).await.client
}

/// Sends `audio` in 20 ms frames of 16 kHz f32 (1,280 bytes), then `end`.
pub async fn stream_then_end(client: &mut WsClient, audio: &[u8]) {
    for frame in audio.chunks(1280) {
        client.send_binary(frame.to_vec()).await;
    }
    client.send_json(json!({"type": "end"})).await;
}

pub fn of_type<'a>(messages: &'a [Value], ty: &str) -> Vec<&'a Value> {
    messages.iter().filter(|m| m["type"] == ty).collect()
}

pub fn data_of(messages: &[&Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["data"].as_str().unwrap().to_owned())
        .collect()
}

/// Audio whose every sample is different, so that reordering shows.
pub fn distinct_f32_audio(first_sample: usize, samples: usize) -> Vec<u8> {
    (first_sample..first_sample + samples)
        .flat_map(|i| (i as f32 / 1.0e6).to_le_bytes())
        .collect()
}

/// A WebSocket client that sees frames exactly as sent (for the native proxy).
pub struct RawClient {
    framed: Framed<BoxedSocket, ws::Codec>,
}

/// What a raw client read.
#[derive(Debug, PartialEq)]
pub enum RawFrame {
    Text(String),
    Closed(Option<u16>),
}

impl RawClient {
    pub async fn connect(url: &str, token: &str) -> RawClient {
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

    pub async fn send_text(&mut self, text: &str) {
        self.framed
            .send(Message::Text(text.to_owned().into()))
            .await
            .unwrap();
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.framed
            .send(Message::Binary(data.into()))
            .await
            .unwrap();
    }

    pub async fn close(&mut self) {
        let _ = self
            .framed
            .send(Message::Close(Some(ws::CloseCode::Normal.into())))
            .await;
    }

    pub async fn next(&mut self) -> RawFrame {
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
    pub async fn texts_until(&mut self, ty: &str) -> Vec<String> {
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
    pub async fn until_close(&mut self) -> (Vec<Value>, Option<u16>) {
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
pub async fn mistral_pool(gateway: &RunningGateway) -> Value {
    pool_report(gateway).await["mistral"].clone()
}
