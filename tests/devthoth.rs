//! The dev thoth over real WebSockets (awc), as the gateway will see it.
//! This file: the mux protocol (sessions, results, per-session errors).

#[path = "common/devthoth_client.rs"]
mod devthoth_client;

use awc::ws::{Frame, Message};
use bytes::Bytes;
use chronus_gateway::devthoth::{describe_audio, DevThothOptions};
use futures_util::SinkExt;
use serde_json::{json, Value};
use uuid::Uuid;

use devthoth_client::*;

#[actix_rt::test]
async fn mux_session_gets_a_final_per_second_then_its_rest_and_done_on_end() {
    let thoth = start_thoth(DevThothOptions::default());
    let mut socket = connect_mux(&thoth).await;
    let session = Uuid::new_v4();
    let audio = square_wave(0.25, 40_000); // 2.5 s at 16 kHz
    send_json(&mut socket, start_session(session, "f32le", 16_000, 0)).await;

    // 25 frames of 0.1 s: a final whenever a second completes (before the
    // frame's interim), an interim whenever a partial second is pending.
    let mut expected = Vec::new();
    for (k, chunk) in audio.chunks(1600).enumerate() {
        send_binary(&mut socket, audio_frame(session, &f32le(chunk))).await;
        let sent = (k + 1) * 1600;
        if sent % 16_000 == 0 {
            let second = sent / 16_000 - 1;
            let text = describe_audio(second as u64, &audio[second * 16_000..sent]);
            assert!(text.contains("rms 0.2500"), "{text}");
            expected.push(final_result(
                session,
                text,
                second as f64,
                (second + 1) as f64,
            ));
        } else {
            let pending = (sent % 16_000) as f64 / 16_000.0;
            expected.push(interim_result(session, &format!("listening {pending:.2}s")));
        }
    }
    for want in &expected {
        assert_eq!(&next_json(&mut socket).await, want);
    }

    send_json(
        &mut socket,
        json!({"type": "session.end", "session_id": session.to_string()}),
    )
    .await;
    let rest = describe_audio(2, &audio[32_000..]);
    assert_eq!(
        next_json(&mut socket).await,
        final_result(session, rest, 2.0, 2.5)
    );
    assert_eq!(next_json(&mut socket).await, done(session));
    expect_nothing_more(&mut socket).await;

    let stats = thoth.stats();
    assert_eq!(stats.mux_sessions_started(), 1);
    assert_eq!(stats.sessions_done(), 1);
    assert_eq!(stats.sessions_ended(), 1);
    assert_eq!(stats.audio_bytes_received(), 160_000);
    assert_eq!(stats.finals_sent(), 3);
}

#[actix_rt::test]
async fn interleaved_sessions_on_one_socket_each_get_only_their_own_results() {
    let thoth = start_thoth(without_interims());
    let mut socket = connect_mux(&thoth).await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let audio_a = square_wave(0.5, 32_000); // 2 s at 16 kHz
    let audio_b = square_wave(0.125, 24_000); // 3 s at 8 kHz
    send_json(&mut socket, start_session(a, "f32le", 16_000, 0)).await;
    send_json(&mut socket, start_session(b, "f32le", 8_000, 0)).await;
    for (chunk_a, chunk_b) in audio_a.chunks(4000).zip(audio_b.chunks(3000)) {
        send_binary(&mut socket, audio_frame(a, &f32le(chunk_a))).await;
        send_binary(&mut socket, audio_frame(b, &f32le(chunk_b))).await;
    }
    for session in [a, b] {
        send_json(
            &mut socket,
            json!({"type": "session.end", "session_id": session.to_string()}),
        )
        .await;
    }

    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    while got_a.last() != Some(&done(a)) || got_b.last() != Some(&done(b)) {
        let frame = next_json(&mut socket).await;
        match frame["session_id"].as_str() {
            Some(id) if id == a.to_string() => got_a.push(frame),
            Some(id) if id == b.to_string() => got_b.push(frame),
            _ => panic!("result for nobody: {frame}"),
        }
    }
    let expected = |session: Uuid, audio: &[f32], rate: usize| {
        let mut frames: Vec<Value> = audio
            .chunks(rate)
            .enumerate()
            .map(|(i, second)| {
                final_result(
                    session,
                    describe_audio(i as u64, second),
                    i as f64,
                    i as f64 + 1.0,
                )
            })
            .collect();
        frames.push(done(session));
        frames
    };
    assert_eq!(got_a, expected(a, &audio_a, 16_000));
    assert_eq!(got_b, expected(b, &audio_b, 8_000));
}

#[actix_rt::test]
async fn s16le_audio_is_converted_as_sample_over_32768() {
    let thoth = start_thoth(without_interims());
    let mut socket = connect_mux(&thoth).await;
    let session = Uuid::new_v4();
    let pcm: Vec<i16> = (0..16_000)
        .map(|i| ((i * 7919) % 65_536 - 32_768) as i16)
        .collect();
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    send_json(&mut socket, start_session(session, "s16le", 16_000, 0)).await;
    send_binary(&mut socket, audio_frame(session, &bytes)).await;

    let converted: Vec<f32> = pcm.iter().map(|&s| s as f32 / 32768.0).collect();
    let want = final_result(session, describe_audio(0, &converted), 0.0, 1.0);
    assert_eq!(next_json(&mut socket).await, want);
    assert_eq!(thoth.stats().audio_bytes_received(), 32_000);
}

#[actix_rt::test]
async fn offset_ms_shifts_timestamps_and_the_index_of_a_resumed_session() {
    let thoth = start_thoth(without_interims());
    let mut socket = connect_mux(&thoth).await;
    let session = Uuid::new_v4();
    let audio = square_wave(0.25, 16_000 + 8_000);
    send_json(&mut socket, start_session(session, "f32le", 16_000, 2_500)).await;
    send_binary(&mut socket, audio_frame(session, &f32le(&audio))).await;
    send_json(
        &mut socket,
        json!({"type": "session.end", "session_id": session.to_string()}),
    )
    .await;

    let first = describe_audio(2, &audio[..16_000]);
    assert!(first.starts_with("second 2: "), "{first}");
    assert_eq!(
        next_json(&mut socket).await,
        final_result(session, first, 2.5, 3.5)
    );
    let rest = describe_audio(3, &audio[16_000..]);
    assert_eq!(
        next_json(&mut socket).await,
        final_result(session, rest, 3.5, 4.0)
    );
    assert_eq!(next_json(&mut socket).await, done(session));
}

#[actix_rt::test]
async fn audio_that_is_not_whole_samples_is_unsupported_and_ends_the_session() {
    let thoth = start_thoth(DevThothOptions::default());
    let mut socket = connect_mux(&thoth).await;
    let session = Uuid::new_v4();
    send_json(&mut socket, start_session(session, "f32le", 16_000, 0)).await;
    send_binary(&mut socket, audio_frame(session, &[0u8; 6])).await;
    let error = next_json(&mut socket).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["session_id"], session.to_string());
    assert_eq!(error["code"], "UNSUPPORTED_AUDIO");

    // The session is over on thoth's side; the socket is not.
    send_json(
        &mut socket,
        json!({"type": "session.end", "session_id": session.to_string()}),
    )
    .await;
    assert_eq!(next_json(&mut socket).await["code"], "UNKNOWN_SESSION");
    assert_eq!(thoth.stats().sessions_ended(), 1);
}

#[actix_rt::test]
async fn odd_s16le_bytes_are_unsupported_audio() {
    let thoth = start_thoth(DevThothOptions::default());
    let mut socket = connect_mux(&thoth).await;
    let session = Uuid::new_v4();
    send_json(&mut socket, start_session(session, "s16le", 16_000, 0)).await;
    send_binary(&mut socket, audio_frame(session, &[0u8; 3])).await;
    let error = next_json(&mut socket).await;
    assert_eq!(
        (error["code"].as_str(), error["session_id"].as_str()),
        (
            Some("UNSUPPORTED_AUDIO"),
            Some(session.to_string().as_str())
        )
    );
}

#[actix_rt::test]
async fn audio_for_an_unknown_session_is_unknown_session() {
    let thoth = start_thoth(DevThothOptions::default());
    let mut socket = connect_mux(&thoth).await;
    let stranger = Uuid::new_v4();
    send_binary(&mut socket, audio_frame(stranger, &f32le(&[0.1; 160]))).await;
    let error = next_json(&mut socket).await;
    assert_eq!(error["code"], "UNKNOWN_SESSION");
    assert_eq!(error["session_id"], stranger.to_string());
}

#[actix_rt::test]
async fn unsupported_formats_and_duplicates_are_per_session_errors() {
    let thoth = start_thoth(without_interims());
    let mut socket = connect_mux(&thoth).await;
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    send_json(&mut socket, start_session(ids[0], "pcm_mulaw", 16_000, 0)).await;
    assert_eq!(next_json(&mut socket).await["code"], "UNSUPPORTED_AUDIO");
    send_json(&mut socket, start_session(ids[1], "f32le", 96_000, 0)).await;
    assert_eq!(next_json(&mut socket).await["code"], "UNSUPPORTED_AUDIO");
    send_json(&mut socket, start_session(ids[2], "f32le", 16_000, 0)).await;
    send_json(&mut socket, start_session(ids[2], "f32le", 16_000, 0)).await;
    let duplicate = next_json(&mut socket).await;
    assert_eq!(duplicate["code"], "DUPLICATE_SESSION");
    assert_eq!(duplicate["session_id"], ids[2].to_string());
    send_json(
        &mut socket,
        json!({"type": "session.pause", "session_id": ids[3].to_string()}),
    )
    .await;
    let unknown_type = next_json(&mut socket).await;
    assert_eq!(unknown_type["code"], "BAD_MESSAGE");
    assert_eq!(unknown_type["session_id"], ids[3].to_string());

    // None of that disturbed the socket: a new session works.
    send_json(&mut socket, start_session(ids[3], "f32le", 8_000, 0)).await;
    send_binary(&mut socket, audio_frame(ids[3], &f32le(&[0.5; 8_000]))).await;
    let result = next_json(&mut socket).await;
    assert_eq!(result["session_id"], ids[3].to_string());
    assert_eq!(result["is_final"], true);
}

#[actix_rt::test]
async fn cancel_discards_silently() {
    let thoth = start_thoth(DevThothOptions::default());
    let mut socket = connect_mux(&thoth).await;
    let session = Uuid::new_v4();
    send_json(&mut socket, start_session(session, "f32le", 16_000, 0)).await;
    send_json(
        &mut socket,
        json!({"type": "session.cancel", "session_id": session.to_string()}),
    )
    .await;
    expect_nothing_more(&mut socket).await;
    assert_eq!(thoth.stats().sessions_cancelled(), 1);
    assert_eq!(thoth.stats().sessions_ended(), 1);
}

#[actix_rt::test]
async fn unreadable_json_is_a_socket_error_then_close() {
    let thoth = start_thoth(DevThothOptions::default());
    let mut socket = connect_mux(&thoth).await;
    socket
        .send(Message::Text("{not json".into()))
        .await
        .expect("send text");
    let error = next_json(&mut socket).await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "BAD_MESSAGE");
    assert!(error.get("session_id").is_none());
    assert_eq!(expect_close(&mut socket).await, 1008);
}

#[actix_rt::test]
async fn one_mebibyte_frames_are_accepted() {
    let thoth = start_thoth(without_interims());
    let mut socket = connect_mux(&thoth).await;
    let session = Uuid::new_v4();
    let audio = square_wave(0.25, 262_144); // 1 MiB of f32le: 16.384 s
    send_json(&mut socket, start_session(session, "f32le", 16_000, 0)).await;
    send_binary(&mut socket, audio_frame(session, &f32le(&audio))).await;
    for second in 0..16u64 {
        let result = next_json(&mut socket).await;
        assert_eq!(result["end"], json!((second + 1) as f64));
    }
    assert_eq!(thoth.stats().audio_bytes_received(), 1 << 20);
}

#[actix_rt::test]
async fn pings_are_answered_with_pongs() {
    let thoth = start_thoth(DevThothOptions::default());
    let mut socket = connect_mux(&thoth).await;
    socket
        .send(Message::Ping(Bytes::from_static(b"hello")))
        .await
        .expect("send ping");
    match next_frame(&mut socket).await {
        Some(Ok(Frame::Pong(payload))) => assert_eq!(&payload[..], b"hello"),
        other => panic!("expected a pong, got {other:?}"),
    }
}
