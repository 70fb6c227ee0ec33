//! Fault scenario: thoth stops reading (its TCP window fills). The gateway
//! must hold bounded memory, cut the sessions with a code, and stay
//! responsive to new sessions.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A "thoth" that completes the mux handshake, then never reads again.
async fn stalled_thoth() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(64).unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&request).to_string();
            let Some(key) = text.lines().find_map(|l| {
                l.strip_prefix("sec-websocket-key: ")
                    .or_else(|| l.strip_prefix("Sec-WebSocket-Key: "))
            }) else {
                continue;
            };
            let accept = actix_http::ws::hash_key(key.trim().as_bytes());
            let response = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: thoth.mux.v1\r\n\r\n",
                std::str::from_utf8(&accept).unwrap()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            held.push(stream); // never read again
        }
    });
    (addr, task)
}

#[actix_rt::test]
async fn a_thoth_that_stops_reading_gets_its_sessions_cut_with_bounded_memory() {
    let (addr, thoth) = stalled_thoth().await;
    let mut env = base_env(&format!("ws://{addr}/stream-audio"));
    env.insert("MAX_AUDIO_RATE".into(), "1000".into());
    env.insert("THOTH_REPLAY_MAX_SECS".into(), "2".into());
    env.insert("THOTH_RESUME_TIMEOUT_SECS".into(), "3".into());
    let gateway = start_gateway(&env).await;
    let rss_before = rss_mib();

    let url = ws_url(&gateway, "/api/audio/transcribe");
    let mut sessions = Vec::new();
    for i in 0..4 {
        let mut client = connect(&url, Auth::Query(&token_for(&format!("s{i}"))), None)
            .await
            .client;
        client.expect_type("ready").await;
        sessions.push(client);
    }
    // Flood thoth's direction until the sessions are cut (or 60 s pass).
    let chunk = f32_audio(0.5, 1.0); // 64 KB
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for mut client in sessions {
        let chunk = chunk.clone();
        outcomes.push(actix_rt::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline && client.try_send_binary(chunk.clone()).await {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            client.until_close(Duration::from_secs(60)).await
        }));
    }
    let mut codes = Vec::new();
    for outcome in outcomes {
        let (messages, close) = outcome.await.unwrap();
        let last = messages
            .iter()
            .rev()
            .find(|m| m["type"] == "error")
            .cloned();
        codes.push((last.map(|m| m["code"].as_str().unwrap().to_string()), close));
    }
    let elapsed = started.elapsed();
    let rss_after = rss_mib();
    report_figure(&format!(
        "FIGURES stalled thoth: 4 flooding sessions cut in {} ms with {codes:?}; RSS {rss_before:.1} -> {rss_after:.1} MiB",
        elapsed.as_millis()
    ));
    for (code, close) in &codes {
        assert_eq!(code.as_deref(), Some("THOTH_UNAVAILABLE"));
        assert_eq!(*close, Some(1011));
    }
    assert!(rss_after - rss_before < 256.0, "memory stayed bounded");
    // The gateway stays responsive: a new session is admitted and answered.
    let mut late = connect(&url, Auth::Query(&token_for("late")), None)
        .await
        .client;
    let answer = late.json().await;
    assert!(
        answer["type"] == "ready" || answer["type"] == "error",
        "{answer}"
    );
    let health = awc::Client::new()
        .get(format!("http://{}/healthz", gateway.admin_addr))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    gateway.stop().await;
    thoth.abort();
}
