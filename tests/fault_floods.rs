//! Fault injection, a flooding browser: rate-limited while the other
//! sessions on the same thoth socket stream on unaffected.

mod common;
#[path = "common/live_session.rs"]
mod live_session;
#[path = "common/scenario.rs"]
mod scenario;

use std::time::Duration;

use chronus_gateway::devthoth::{DevThoth, DevThothOptions};
use common::*;
use live_session::*;
use scenario::*;
use tokio::time::{sleep_until, Instant};

// ---- 3. a flooding browser ---------------------------------------------------

#[actix_rt::test]
async fn a_browser_flooding_audio_is_rate_limited_and_others_are_unaffected() {
    let _one_at_a_time = one_at_a_time();
    const BYSTANDERS: usize = 8;
    const MAX_AUDIO_RATE: f64 = 2.0;
    /// The burst the rate limiter grants before it counts (`rate.rs`).
    const BURST_SECS: f64 = 10.0;
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let mut env = base_env(&thoth.url());
    env.insert("MAX_AUDIO_RATE".into(), "2".into());
    let gateway = start_gateway(&env).await;

    let audio: Vec<TestAudio> = (0..BYSTANDERS)
        .map(|i| TestAudio::for_session(i, 4.0, encoding_of(i)))
        .collect();
    let sessions = open_sessions(&gateway, "bystander", &audio).await;
    // 60 s of audio, sent in 1 s frames as fast as the socket takes them.
    let flood_audio = TestAudio::for_session(1000, 60.0, Encoding::F32le);
    let mut flooder = LiveSession::open(&gateway, "flooder", "").await;

    let epoch = Instant::now() + Duration::from_millis(100);
    let handles = stream_all(sessions, &audio, 100, epoch);
    sleep_until(epoch + Duration::from_millis(500)).await;
    let flood_started = Instant::now();
    let mut flood_frames_sent = 0;
    for frame in flood_audio.frames(1000) {
        if flooder.received.is_finished() || !flooder.send_audio(frame).await {
            break;
        }
        flood_frames_sent += 1;
    }
    let flood = flooder.finish().await;
    let flood_lasted = flood_started.elapsed();

    assert_eq!(flood.error_codes(), vec!["RATE_LIMITED"], "flooder");
    assert_eq!(flood.events.last().unwrap().1["code"], "RATE_LIMITED");
    assert_eq!(flood.close, Some(4429), "flooder");
    // What the flooder got before the cut is exact too.
    let flood_finals = flood.finals().len();
    flood.assert_finals(&flood_audio.expected_finals()[..flood_finals], "flooder");

    for (i, (transcript, a)) in transcripts(handles).await.iter().zip(&audio).enumerate() {
        let label = format!("bystander {i}");
        assert!(transcript.error_codes().is_empty(), "{label}");
        transcript.assert_complete(&a.expected_finals(), &label);
    }
    // The flood never stalled the shared socket.
    assert_eq!(thoth.stats().connections_accepted(), 1);
    assert_eq!(pool_report(&gateway).await["thoth"][0]["reconnects"], 0);
    let bystander_bytes: usize = audio.iter().map(|a| a.bytes.len()).sum();
    let flood_secs_admitted = (thoth.stats().audio_bytes_received() as usize - bystander_bytes)
        as f64
        / (SAMPLE_RATE * 4) as f64;
    assert!(
        flood_secs_admitted <= BURST_SECS + MAX_AUDIO_RATE * flood_lasted.as_secs_f64() + 1.0,
        "flooder passed {flood_secs_admitted} s of audio in {flood_lasted:?}"
    );
    assert_nothing_left(&gateway, Duration::from_secs(5)).await;
    report_figure(&format!(
        "FIGURES flood: flooder sent {flood_frames_sent} s of audio in {} ms, {flood_secs_admitted:.1} s \
         reached thoth, {flood_finals} finals before RATE_LIMITED; {BYSTANDERS} bystanders exact",
        ms(flood_lasted)
    ));
    gateway.stop().await;
    thoth.stop();
}
