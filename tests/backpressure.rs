//! A thoth slower than the browsers' audio (or a gateway that cannot write
//! to it fast enough) pushes back on the browsers: sessions stop reading
//! while the shared socket's queue is congested, TCP slows the browsers down,
//! and nobody fails — instead of the queue growing until the shared socket is
//! given up.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use chronus_gateway::devthoth::{DevThoth, DevThothOptions};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the throttled link carries toward thoth, per second.
const LINK_BYTES_PER_SEC: f64 = 1024.0 * 1024.0;

/// A TCP relay to `target` that carries gateway → thoth bytes at
/// `LINK_BYTES_PER_SEC` (thoth → gateway unthrottled): a thoth that reads,
/// slowly.
async fn throttled_relay(target: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            let (mut from_gateway, mut to_gateway) = inbound.into_split();
            let (mut from_thoth, mut to_thoth) = outbound.into_split();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let started = Instant::now();
                let mut carried = 0.0;
                loop {
                    let n = match from_gateway.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if to_thoth.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    carried += n as f64;
                    let due = Duration::from_secs_f64(carried / LINK_BYTES_PER_SEC);
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(wait).await;
                    }
                }
            });
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_thoth, &mut to_gateway).await;
            });
        }
    });
    addr
}

#[actix_rt::test]
async fn browsers_faster_than_thoth_are_slowed_down_and_nobody_fails() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let relay = throttled_relay(thoth.addr()).await;
    let thoth_url = thoth
        .url()
        .replace(&thoth.addr().to_string(), &relay.to_string());
    let mut env = base_env(&thoth_url);
    env.insert("MAX_AUDIO_RATE".into(), "100000".into());
    let gateway = start_gateway(&env).await;
    let rss_before = rss_mib();

    let url = ws_url(&gateway, "/api/audio/transcribe");
    let chunk = f32_audio(0.5, 0.25); // 16 KB
    let flood_for = Duration::from_secs(6);
    let started = Instant::now();
    let mut floods = Vec::new();
    for i in 0..4 {
        let mut client = connect(&url, Auth::Query(&token_for(&format!("flood-{i}"))), None)
            .await
            .client;
        client.expect_type("ready").await;
        let chunk = chunk.clone();
        floods.push(actix_rt::spawn(async move {
            let deadline = Instant::now() + flood_for;
            let (mut sent, mut received) = (0usize, Vec::new());
            while Instant::now() < deadline && client.try_send_binary(chunk.clone()).await {
                sent += chunk.len();
                // A browser reads its results as they come.
                received.extend(client.drain_for(Duration::from_millis(1)).await);
            }
            received.extend(client.drain_for(Duration::from_millis(500)).await);
            (client, received, sent)
        }));
    }
    let mut sent_total = 0;
    let mut results = 0;
    let mut clients = Vec::new();
    for flood in floods {
        let (client, received, sent) = flood.await.unwrap();
        clients.push(client);
        sent_total += sent;
        // Nobody was told the socket was lost, or anything else went wrong.
        for message in &received {
            assert_ne!(message["type"], "error", "{message}");
        }
        results += received.len();
    }
    let rss_after = rss_mib();
    report_figure(&format!(
        "FIGURES backpressure: 4 browsers flooding a 1 MiB/s thoth for 6 s sent {:.1} MiB in {:.1} s; gateway RSS {rss_before:.1} -> {rss_after:.1} MiB",
        sent_total as f64 / 1048576.0,
        started.elapsed().as_secs_f64()
    ));

    // Unthrottled, loopback browsers push hundreds of MiB in 6 s (and the
    // queue toward thoth would reach its 64 MiB hard bound); held back, what
    // they got in is the link's rate plus the TCP buffers on the way.
    assert!(sent_total < 64 << 20, "sent {sent_total} bytes");
    assert!(rss_after - rss_before < 64.0, "memory stayed bounded");
    assert!(results > 0, "thoth's results came back meanwhile");
    let pool = pool_report(&gateway).await;
    assert_eq!(pool["thoth"][0]["reconnects"], 0, "{pool}");
    assert_eq!(pool["thoth"][0]["state"], "open", "{pool}");
    assert_eq!(ref_count(&gateway).await, clients.len() as u64);
    gateway.stop().await;
}
