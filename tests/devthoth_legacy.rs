//! The dev thoth in legacy mode (one stream per socket, 3 s windows), as
//! today's thoth behaves.

#[path = "common/devthoth_client.rs"]
mod devthoth_client;

use awc::ws::{CloseCode, Message};
use chronus_gateway::devthoth::{describe_audio, DevThothOptions, MUX_SUBPROTOCOL};
use futures_util::SinkExt;
use serde_json::json;

use devthoth_client::*;

#[actix_rt::test]
async fn legacy_stream_gets_a_transcription_per_3_second_window() {
    let thoth = start_thoth(DevThothOptions::default());
    let mut socket = connect_legacy(&thoth).await;
    // Two and a half windows, in the frames the chronus frontends send.
    let audio = square_wave(0.25, 2 * WINDOW + WINDOW / 2);
    for chunk in audio.chunks(4096) {
        send_binary(&mut socket, f32le(chunk)).await;
    }
    for window in 0..2 {
        let want = describe_audio(
            window as u64,
            &audio[window * WINDOW..(window + 1) * WINDOW],
        );
        assert_eq!(
            next_json(&mut socket).await,
            json!({ "transcription": want })
        );
    }
    // The half window is never transcribed (no end-of-audio in legacy).
    expect_nothing_more(&mut socket).await;
    assert_eq!(thoth.stats().finals_sent(), 2);
}

#[actix_rt::test]
async fn a_window_below_rms_0_01_gets_no_answer() {
    let thoth = start_thoth(DevThothOptions::default());
    let mut socket = connect_legacy(&thoth).await;
    let loud = square_wave(0.25, WINDOW);
    let quiet = square_wave(0.009, WINDOW);
    let mut audio = loud.clone();
    audio.extend(&quiet);
    audio.extend(&loud);
    for chunk in audio.chunks(4096) {
        send_binary(&mut socket, f32le(chunk)).await;
    }
    // Windows 0 and 2 are answered; the quiet window 1 is skipped, not
    // renumbered.
    for window in [0u64, 2] {
        assert_eq!(
            next_json(&mut socket).await,
            json!({ "transcription": describe_audio(window, &loud) })
        );
    }
    expect_nothing_more(&mut socket).await;
}

#[actix_rt::test]
async fn a_text_frame_closes_the_legacy_stream_with_1000_and_no_message() {
    let thoth = start_thoth(DevThothOptions::default());
    let mut socket = connect_legacy(&thoth).await;
    send_binary(&mut socket, f32le(&square_wave(0.25, WINDOW / 2))).await;
    socket
        .send(Message::Text("{\"type\":\"end\"}".into()))
        .await
        .expect("send text");
    expect_plain_close_1000(&mut socket).await;
    assert_eq!(thoth.stats().errors_sent(), 0);
    eventually("the stream is free again", || {
        thoth.stats().connections_open() == 0
    })
    .await;
}

#[actix_rt::test]
async fn a_partial_float32_sample_closes_the_legacy_stream_with_1000_and_no_message() {
    let thoth = start_thoth(DevThothOptions::default());
    let mut socket = connect_legacy(&thoth).await;
    send_binary(&mut socket, vec![0u8; 4 * 1000 + 2]).await;
    expect_plain_close_1000(&mut socket).await;
    assert_eq!(thoth.stats().finals_sent(), 0);
}

#[actix_rt::test]
async fn a_legacy_stream_has_no_end_of_audio_message() {
    let thoth = start_thoth(DevThothOptions::default());
    let mut socket = connect_legacy(&thoth).await;
    let audio = square_wave(0.25, WINDOW + 100);
    send_binary(&mut socket, f32le(&audio)).await;
    assert_eq!(
        next_json(&mut socket).await,
        json!({ "transcription": describe_audio(0, &audio[..WINDOW]) })
    );
    // Closing is the only way to end: thoth answers the close, nothing else.
    socket
        .send(Message::Close(Some(CloseCode::Normal.into())))
        .await
        .expect("send close");
    assert_eq!(expect_close(&mut socket).await, 1000);
}

#[actix_rt::test]
async fn legacy_windows_follow_the_configured_length() {
    let thoth = start_thoth(DevThothOptions {
        legacy_window_secs: 1.0,
        ..DevThothOptions::default()
    });
    let mut socket = connect_legacy(&thoth).await;
    let audio = square_wave(0.5, 16_000);
    send_binary(&mut socket, f32le(&audio)).await;
    let want = describe_audio(0, &audio);
    assert_eq!(
        next_json(&mut socket).await,
        json!({ "transcription": want })
    );
}

#[actix_rt::test]
async fn a_legacy_only_thoth_never_selects_mux() {
    let thoth = start_thoth(DevThothOptions {
        mux: false,
        ..DevThothOptions::default()
    });
    let (selected, mut socket) = connect_with(&thoth.url(), &[MUX_SUBPROTOCOL], &[]).await;
    assert_eq!(selected, None);
    send_binary(&mut socket, f32le(&[0.25; WINDOW])).await;
    let want = describe_audio(0, &[0.25; WINDOW]);
    assert_eq!(
        next_json(&mut socket).await,
        json!({ "transcription": want })
    );
    assert_eq!(thoth.stats().legacy_streams(), 1);
    assert_eq!(thoth.stats().mux_connections(), 0);
}

#[actix_rt::test]
async fn a_second_concurrent_legacy_handshake_gets_http_403() {
    let thoth = start_thoth(DevThothOptions::default());
    let mut first = connect_legacy(&thoth).await;
    assert_eq!(refused_legacy_status(&thoth, &[]).await, 403);
    assert_eq!(thoth.stats().connections_refused(), 1);
    assert_eq!(thoth.stats().connections_accepted(), 1, "never upgraded");

    // Mux sessions are not limited by the legacy stream.
    let _mux = connect_mux(&thoth).await;

    // Once the first stream closes, the next one starts again from window 0.
    send_binary(&mut first, f32le(&[0.1; 8_000])).await;
    first
        .send(Message::Close(Some(CloseCode::Normal.into())))
        .await
        .expect("send close");
    assert_eq!(expect_close(&mut first).await, 1000);
    let stats = thoth.stats();
    eventually("the legacy stream is released", || {
        stats.connections_open() == 1
    })
    .await;
    let mut third = connect_legacy(&thoth).await;
    send_binary(&mut third, f32le(&[0.1; WINDOW])).await;
    let want = describe_audio(0, &[0.1; WINDOW]);
    assert_eq!(
        next_json(&mut third).await,
        json!({ "transcription": want })
    );
}
