//! Graceful overload (issue 13 item 4): while the shared thoth socket stays
//! congested, or the gateway's own CPU is spent, a new session is refused at once with `THOTH_BUSY` (close 1013,
//! retryable) before thoth hears of it; the sessions already admitted lose
//! nothing; once the pressure is gone, new sessions are admitted again.

mod common;
#[path = "common/live_session.rs"]
mod live_session;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chronus_gateway::devthoth::{DevThoth, DevThothOptions};
use chronus_gateway::RunningGateway;
use common::*;
use live_session::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TCP relay to `target` whose gateway → thoth direction stops while
/// `paused` is set: a thoth that, for a moment, reads nothing.
async fn pausable_relay(target: SocketAddr, paused: Arc<AtomicBool>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            let (mut from_gateway, mut to_gateway) = inbound.into_split();
            let (mut from_thoth, mut to_thoth) = outbound.into_split();
            let paused = paused.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    while paused.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    let n = match from_gateway.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if to_thoth.write_all(&buf[..n]).await.is_err() {
                        break;
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

/// The value of `chronus_admission_refusals_total{reason="at_capacity"}`.
async fn at_capacity_refusals(gateway: &RunningGateway) -> f64 {
    metric_value(
        gateway,
        "chronus_admission_refusals_total{reason=\"at_capacity\"} ",
    )
    .await
}

/// Tries to open a session: `Ok(())` when admitted (then closed again),
/// `Err((messages, close code))` when refused.
async fn try_open(
    gateway: &RunningGateway,
    user: &str,
) -> Result<(), (Vec<serde_json::Value>, Option<u16>)> {
    let url = ws_url(gateway, "/api/audio/transcribe");
    let mut client = connect(&url, Auth::Query(&token_for(user)), None)
        .await
        .client;
    let first = client.json().await;
    if first["type"] == "ready" {
        client.close().await;
        return Ok(());
    }
    let (mut rest, code) = client.until_close(Duration::from_secs(10)).await;
    rest.insert(0, first);
    Err((rest, code))
}

#[actix_rt::test]
async fn a_congested_thoth_socket_refuses_new_sessions_and_the_admitted_lose_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let stats = thoth.stats();
    let paused = Arc::new(AtomicBool::new(false));
    let relay = pausable_relay(thoth.addr(), paused.clone()).await;
    let thoth_url = thoth
        .url()
        .replace(&thoth.addr().to_string(), &relay.to_string());
    let mut env = base_env(&thoth_url);
    env.insert("MAX_AUDIO_RATE".into(), "100000".into());
    // This test is about the queue (the other one spends the CPU).
    env.insert("OVERLOAD_CPU_PERCENT".into(), "0".into());
    let gateway = start_gateway(&env).await;
    let refusals_before = at_capacity_refusals(&gateway).await;

    // Admitted while thoth still reads: the socket is open and idle.
    let audios: Vec<TestAudio> = (0..4)
        .map(|i| TestAudio::for_session(i, 60.0, Encoding::F32le))
        .collect();
    let mut sessions = Vec::new();
    for (i, audio) in audios.iter().enumerate() {
        sessions.push(LiveSession::open(&gateway, &format!("held-{i}"), &audio.query()).await);
    }

    // Thoth stops reading; the sessions send their minute of audio as fast as
    // the gateway takes it, so the queue toward thoth goes over its mark.
    // Thoth has started the four before it stops reading.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.mux_sessions_started() < 4 {
        assert!(Instant::now() < deadline, "thoth started the sessions");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started_before = stats.mux_sessions_started();
    paused.store(true, Ordering::SeqCst);
    let mut senders = Vec::new();
    for (mut session, audio) in sessions.into_iter().zip(&audios) {
        let frames = audio.frames(256);
        senders.push(actix_rt::spawn(async move {
            for frame in frames {
                assert!(session.send_audio(frame).await, "audio sent");
            }
            assert!(session.send_json(json!({"type": "end"})).await, "end sent");
            session
        }));
    }

    // A new session is refused at once while the socket is congested (tried
    // until the floods have filled the queue; well before the 5 s stall watch).
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut admitted_tries = 0;
    let (messages, code) = loop {
        match try_open(&gateway, "latecomer").await {
            Err(refused) => break refused,
            Ok(()) => {
                admitted_tries += 1;
                assert!(
                    Instant::now() < deadline,
                    "never refused while thoth read nothing"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    paused.store(false, Ordering::SeqCst);

    let error = &messages[0];
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["code"], "THOTH_BUSY", "{error}");
    assert_eq!(error["retryable"], true, "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("capacity"),
        "{error}"
    );
    assert_eq!(code, Some(1013));
    assert!(at_capacity_refusals(&gateway).await - refusals_before >= 1.0);

    // The sessions held meanwhile lose nothing: every final, then `done`.
    for (i, sender) in senders.into_iter().enumerate() {
        let session = sender.await.expect("sender task");
        let transcript = session.finish().await;
        transcript.assert_complete(&audios[i].expected_finals(), &format!("held-{i}"));
    }
    // The refused session never reached thoth: what thoth started since are
    // the tries admitted before the queue filled (their frames waited
    // behind the held audio, so they are counted only now).
    assert_eq!(
        stats.mux_sessions_started() - started_before,
        admitted_tries,
        "nothing started for the refused one"
    );

    // Drained: a new session is admitted and transcribed again.
    let audio = TestAudio::for_session(9, 2.0, Encoding::F32le);
    let mut after = LiveSession::open(&gateway, "after-the-rush", &audio.query()).await;
    after
        .stream_in_real_time(
            &audio.frames(256),
            Duration::ZERO,
            tokio::time::Instant::now(),
        )
        .await;
    after
        .finish()
        .await
        .assert_complete(&audio.expected_finals(), "after the rush");

    let pool = pool_report(&gateway).await;
    assert_eq!(pool["thoth"][0]["reconnects"], 0, "{pool}");
    gateway.stop().await;
    thoth.stop();
}

/// The CPU signal is the whole process's: one test at a time, so that one
/// test's flood cannot read as the other's spent CPU.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Spins enough threads to keep about 60% of the machine's cores busy (the
/// gateway's process is this test's process) until `busy` is cleared.
fn spin_cpus(busy: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<()>> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..(cores * 6).div_ceil(10))
        .map(|_| {
            let busy = busy.clone();
            std::thread::spawn(move || {
                while busy.load(Ordering::Relaxed) {
                    std::hint::black_box(0u64);
                }
            })
        })
        .collect()
}

#[actix_rt::test]
async fn a_spent_cpu_refuses_new_sessions_until_it_is_free_again() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let stats = thoth.stats();
    let mut env = base_env(&thoth.url());
    env.insert("OVERLOAD_CPU_PERCENT".into(), "40".into());
    let gateway = start_gateway(&env).await;
    let refusals_before = at_capacity_refusals(&gateway).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while try_open(&gateway, "before").await.is_err() {
        assert!(Instant::now() < deadline, "admitted while the CPU is free");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started_before = stats.mux_sessions_started();

    let busy = Arc::new(AtomicBool::new(true));
    let spinners = spin_cpus(busy.clone());
    // Seen within a few samples: refused, with the envelope and 1013.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (messages, code) = loop {
        match try_open(&gateway, "during").await {
            Err(refused) => break refused,
            Ok(()) => assert!(Instant::now() < deadline, "never refused"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let admitted_meanwhile = stats.mux_sessions_started() - started_before;
    let error = &messages[0];
    assert_eq!(error["code"], "THOTH_BUSY", "{error}");
    assert_eq!(error["retryable"], true, "{error}");
    assert!(error["message"].as_str().unwrap().contains("capacity"));
    assert_eq!(code, Some(1013));
    assert!(at_capacity_refusals(&gateway).await - refusals_before >= 1.0);
    let cpu = metric_value(&gateway, "chronus_cpu_utilization_ratio ").await;
    assert!(cpu > 0.4, "the gauge shows the load: {cpu}");
    // The refused session never reached thoth.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        stats.mux_sessions_started() - started_before,
        admitted_meanwhile
    );

    // The CPU is free again: sessions are admitted within a few samples.
    busy.store(false, Ordering::SeqCst);
    for spinner in spinners {
        spinner.join().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while try_open(&gateway, "after").await.is_err() {
        assert!(
            Instant::now() < deadline,
            "admitted again once the CPU is free"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gateway.stop().await;
    thoth.stop();
}
