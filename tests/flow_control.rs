//! A browser that stops reading must not hold memory or its place on the
//! shared thoth socket, nor slow the other sessions.

mod common;

use std::time::{Duration, Instant};

use chronus_gateway::devthoth::{describe_audio, DevThoth, DevThothOptions};
use common::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;

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
async fn a_browser_that_stops_reading_is_cut_off_and_others_are_unaffected() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let mut env = base_env(&thoth.url());
    env.insert("MAX_AUDIO_RATE".into(), "1000".into());
    let gateway = start_gateway(&env).await;

    let mut bystander = connect(
        &ws_url(&gateway, "/api/audio/transcribe"),
        Auth::Query(&token_for("bystander")),
        None,
    )
    .await
    .client;
    bystander.expect_type("ready").await;

    // The stalled browser: a tiny receive buffer it never reads from.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let mut stalled = socket.connect(gateway.public_addr).await.unwrap();
    let request = format!(
        "GET /api/audio/transcribe?token={} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token_for("stalled"),
        gateway.public_addr
    );
    stalled.write_all(request.as_bytes()).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || async {
            ref_count(&gateway).await == 2
        })
        .await,
        "both sessions subscribed"
    );
    // Stream audio as fast as the gateway takes it; each frame earns an
    // interim result the client never reads, until the gateway stops reading.
    let frame = masked_binary_frame(&f32_audio(0.5, 0.02));
    let started = Instant::now();
    let mut frames_written = 0;
    while started.elapsed() < Duration::from_secs(20) {
        match tokio::time::timeout(Duration::from_secs(2), stalled.write_all(&frame)).await {
            Ok(Ok(())) => frames_written += 1,
            _ => break, // the gateway stopped reading this browser
        }
    }
    println!(
        "stalled browser: {frames_written} frames written in {:?}",
        started.elapsed()
    );

    // The stalled session loses its place on the shared socket…
    assert!(
        eventually(Duration::from_secs(30), || async {
            ref_count(&gateway).await == 1
        })
        .await,
        "the stalled session is cut off"
    );
    // …and the other session streams on, with exact results.
    bystander.send_binary(f32_audio(0.25, 1.0)).await;
    bystander.send_json(json!({"type": "end"})).await;
    let (messages, close) = bystander.until_close(Duration::from_secs(10)).await;
    let finals: Vec<&str> = messages
        .iter()
        .filter(|m| m["type"] == "transcription")
        .map(|m| m["data"].as_str().unwrap())
        .collect();
    assert_eq!(finals, vec![describe_audio(0, &[0.25; 16_000])]);
    assert_eq!(close, Some(1000));
    drop(stalled);
    gateway.stop().await;
    thoth.stop();
}
