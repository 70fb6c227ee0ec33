//! A chronus session against the dev thoth, as the relay tests drive it:
//! open it, stream audio then `end`, and the texts the dev thoth will send.
#![allow(dead_code)]

use chronus_gateway::devthoth::describe_audio;
use serde_json::{json, Value};

use crate::common::{connect, token_for, ws_url, Auth, WsClient};

pub const TRANSCRIBE: &str = "/api/audio/transcribe";

/// What the dev thoth says for `seconds` whole seconds of constant `level`.
pub fn expected_finals(level: f32, whole_seconds: u64) -> Vec<String> {
    let second = vec![level; 16_000];
    (0..whole_seconds)
        .map(|i| describe_audio(i, &second))
        .collect()
}

pub fn texts_of(messages: &[Value], ty: &str) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m["type"] == ty)
        .map(|m| m["data"].as_str().unwrap().to_string())
        .collect()
}

pub async fn open_session(gateway: &chronus_gateway::RunningGateway, user: &str) -> WsClient {
    let token = token_for(user);
    let mut client = connect(&ws_url(gateway, TRANSCRIBE), Auth::Query(&token), None)
        .await
        .client;
    let ready = client.expect_type("ready").await;
    assert_eq!(ready["provider"], "thoth");
    client
}

/// Sends `audio` in 20 ms frames (1,280 bytes), then `end`.
pub async fn stream_then_end(client: &mut WsClient, audio: &[u8]) {
    for frame in audio.chunks(1280) {
        client.send_binary(frame.to_vec()).await;
    }
    client.send_json(json!({"type": "end"})).await;
}
