//! The dev thoth over real WebSockets (awc), as the gateway will see it.

use std::time::Duration;

use awc::error::WsProtocolError;
use awc::ws::{CloseCode, Frame, Message};
use bytes::Bytes;
use chronus_gateway::devthoth::{
    describe_audio, DevThoth, DevThothOptions, MAX_FRAME_BYTES, MUX_SUBPROTOCOL, TOKEN_HEADER,
};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde_json::{json, Value};
use uuid::Uuid;

/// How long a test waits for any one thing the dev thoth should do.
const PATIENCE: Duration = Duration::from_secs(5);
/// How long a test waits to be sure something does *not* arrive.
const QUIET_PERIOD: Duration = Duration::from_millis(300);

/// A connected client socket, whatever awc's concrete type.
trait WsSocket:
    Stream<Item = Result<Frame, WsProtocolError>> + Sink<Message, Error = WsProtocolError> + Unpin
{
}
impl<T> WsSocket for T where
    T: Stream<Item = Result<Frame, WsProtocolError>>
        + Sink<Message, Error = WsProtocolError>
        + Unpin
{
}

/// Connects like the gateway does: no Origin, optional protocols and headers.
/// Returns the selected subprotocol (if any) and the socket.
async fn connect_with(
    url: &str,
    protocols: &[&str],
    headers: &[(&str, &str)],
) -> (Option<String>, impl WsSocket) {
    let mut request = awc::Client::new().ws(url).max_frame_size(MAX_FRAME_BYTES);
    if !protocols.is_empty() {
        request = request.protocols(protocols.iter().copied());
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let (response, socket) = request.connect().await.expect("websocket handshake");
    let selected = response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().expect("ascii protocol").to_owned());
    (selected, socket)
}

async fn connect_mux(thoth: &DevThoth) -> impl WsSocket {
    let (selected, socket) = connect_with(&thoth.url(), &[MUX_SUBPROTOCOL], &[]).await;
    assert_eq!(selected.as_deref(), Some(MUX_SUBPROTOCOL));
    socket
}

async fn connect_legacy(thoth: &DevThoth) -> impl WsSocket {
    let (selected, socket) = connect_with(&thoth.url(), &[], &[]).await;
    assert_eq!(selected, None);
    socket
}

async fn send_json(socket: &mut impl WsSocket, frame: Value) {
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .expect("send text");
}

async fn send_binary(socket: &mut impl WsSocket, bytes: Vec<u8>) {
    socket
        .send(Message::Binary(Bytes::from(bytes)))
        .await
        .expect("send binary");
}

/// A mux binary frame: the session id then the audio bytes.
fn audio_frame(session: Uuid, audio: &[u8]) -> Vec<u8> {
    let mut frame = session.as_bytes().to_vec();
    frame.extend_from_slice(audio);
    frame
}

fn f32le(samples: &[f32]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// A square wave of amplitude `level` (so its rms is exactly `level`) whose
/// period does not divide a second, so every second has its own checksum.
fn square_wave(level: f32, samples: usize) -> Vec<f32> {
    (0..samples)
        .map(|i| if (i / 37) % 2 == 0 { level } else { -level })
        .collect()
}

fn start_session(session: Uuid, encoding: &str, sample_rate: u32, offset_ms: u64) -> Value {
    json!({
        "type": "session.start",
        "session_id": session.to_string(),
        "encoding": encoding,
        "sample_rate": sample_rate,
        "offset_ms": offset_ms,
    })
}

fn final_result(session: Uuid, text: String, start: f64, end: f64) -> Value {
    json!({
        "type": "transcription",
        "session_id": session.to_string(),
        "text": text,
        "is_final": true,
        "start": start,
        "end": end,
    })
}

fn interim_result(session: Uuid, text: &str) -> Value {
    json!({
        "type": "transcription",
        "session_id": session.to_string(),
        "text": text,
        "is_final": false,
    })
}

fn done(session: Uuid) -> Value {
    json!({ "type": "session.done", "session_id": session.to_string() })
}

/// The next frame, answering nothing and skipping nothing.
async fn next_frame(socket: &mut impl WsSocket) -> Option<Result<Frame, WsProtocolError>> {
    actix_rt::time::timeout(PATIENCE, socket.next())
        .await
        .expect("the dev thoth answered in time")
}

/// The next text frame, parsed; panics on anything else.
async fn next_json(socket: &mut impl WsSocket) -> Value {
    match next_frame(socket).await {
        Some(Ok(Frame::Text(text))) => serde_json::from_slice(&text).expect("JSON text frame"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Reads until the close frame and returns its code; panics if the socket
/// ends without one.
async fn expect_close(socket: &mut impl WsSocket) -> u16 {
    loop {
        match next_frame(socket).await {
            Some(Ok(Frame::Close(reason))) => {
                return reason.map(|r| u16::from(r.code)).unwrap_or(1005);
            }
            Some(Ok(Frame::Text(text))) => panic!("expected close, got text {text:?}"),
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// The socket ends without a close frame (TCP end or error).
async fn expect_abrupt_end(socket: &mut impl WsSocket) {
    loop {
        match next_frame(socket).await {
            None | Some(Err(_)) => return,
            Some(Ok(Frame::Close(reason))) => panic!("expected no close frame, got {reason:?}"),
            Some(Ok(_)) => continue,
        }
    }
}

async fn expect_nothing_more(socket: &mut impl WsSocket) {
    if let Ok(frame) = actix_rt::time::timeout(QUIET_PERIOD, socket.next()).await {
        panic!("expected silence, got {frame:?}");
    }
}

/// Polls `condition` until it holds (the dev thoth runs on its own thread).
async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

fn start_thoth(opts: DevThothOptions) -> DevThoth {
    DevThoth::start(opts).expect("dev thoth starts")
}

fn without_interims() -> DevThothOptions {
    DevThothOptions {
        interim_results: false,
        ..DevThothOptions::default()
    }
}

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

/// Samples in one legacy window of today's thoth: 3 s at 16 kHz.
const WINDOW: usize = 48_000;

/// A legacy handshake that today's thoth refuses: the HTTP status it got
/// (no WebSocket is ever opened).
async fn refused_legacy_status(thoth: &DevThoth, headers: &[(&str, &str)]) -> u16 {
    let mut request = awc::Client::new().ws(thoth.url());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    match request.connect().await {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => status.as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, the handshake was accepted"),
    }
}

/// Reads the close frame and checks it carries 1000 with no reason, and that
/// no message came before it.
async fn expect_plain_close_1000(socket: &mut impl WsSocket) {
    match next_frame(socket).await {
        Some(Ok(Frame::Close(Some(reason)))) => {
            assert_eq!(u16::from(reason.code), 1000);
            assert_eq!(reason.description, None, "no message with the close");
        }
        other => panic!("expected close 1000 at once, got {other:?}"),
    }
}

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

#[actix_rt::test]
async fn an_origin_gets_http_403_in_legacy_and_a_4403_close_in_mux() {
    let thoth = start_thoth(DevThothOptions::default());
    let origin = [("origin", "https://chronus.example")];
    assert_eq!(refused_legacy_status(&thoth, &origin).await, 403);
    let (_, mut mux) = connect_with(&thoth.url(), &[MUX_SUBPROTOCOL], &origin).await;
    assert_eq!(expect_close(&mut mux).await, 4403);
    assert_eq!(thoth.stats().connections_refused(), 2);
    assert_eq!(thoth.stats().mux_connections(), 0);
    assert_eq!(thoth.stats().legacy_streams(), 0);
}

#[actix_rt::test]
async fn an_allowed_origin_gets_a_legacy_stream_and_others_are_still_refused() {
    let thoth = start_thoth(DevThothOptions {
        allowed_origins: vec!["http://127.0.0.1:8080/".to_owned()],
        ..DevThothOptions::default()
    });
    thoth.allow_origins(["http://LOCALHOST:8080"]);

    let other = [("origin", "http://127.0.0.1:8081")];
    assert_eq!(refused_legacy_status(&thoth, &other).await, 403);

    for origin in ["http://127.0.0.1:8080", "http://localhost:8080"] {
        let (selected, mut browser) = connect_with(&thoth.url(), &[], &[("origin", origin)]).await;
        assert_eq!(selected, None, "a browser gets the legacy protocol");
        let window = square_wave(0.25, WINDOW);
        send_binary(&mut browser, f32le(&window)).await;
        assert_eq!(
            next_json(&mut browser).await,
            json!({"transcription": describe_audio(0, &window)})
        );
        browser
            .send(Message::Close(Some(CloseCode::Normal.into())))
            .await
            .expect("send close");
        assert_eq!(expect_close(&mut browser).await, 1000);
        eventually("the legacy stream is free again", || {
            thoth.stats().connections_open() == 0
        })
        .await;
    }
    assert_eq!(thoth.stats().connections_refused(), 1);
    assert_eq!(thoth.stats().legacy_streams(), 2);
}

#[actix_rt::test]
async fn a_missing_or_wrong_token_gets_http_403_in_legacy_and_a_4401_close_in_mux() {
    let thoth = start_thoth(DevThothOptions {
        stream_token: Some("s3cret".to_owned()),
        ..DevThothOptions::default()
    });
    let (_, mut missing) = connect_with(&thoth.url(), &[MUX_SUBPROTOCOL], &[]).await;
    assert_eq!(expect_close(&mut missing).await, 4401);
    let (_, mut wrong) =
        connect_with(&thoth.url(), &[MUX_SUBPROTOCOL], &[(TOKEN_HEADER, "guess")]).await;
    assert_eq!(expect_close(&mut wrong).await, 4401);
    assert_eq!(refused_legacy_status(&thoth, &[]).await, 403);
    assert_eq!(
        refused_legacy_status(&thoth, &[(TOKEN_HEADER, "guess")]).await,
        403
    );
    assert_eq!(thoth.stats().legacy_streams(), 0);

    let (selected, mut right) = connect_with(
        &thoth.url(),
        &[MUX_SUBPROTOCOL],
        &[(TOKEN_HEADER, "s3cret")],
    )
    .await;
    assert_eq!(selected.as_deref(), Some(MUX_SUBPROTOCOL));
    let session = Uuid::new_v4();
    send_json(
        &mut right,
        json!({"type": "session.end", "session_id": session.to_string()}),
    )
    .await;
    assert_eq!(next_json(&mut right).await["code"], "UNKNOWN_SESSION");

    let (selected, mut legacy) = connect_with(&thoth.url(), &[], &[(TOKEN_HEADER, "s3cret")]).await;
    assert_eq!(selected, None);
    send_binary(&mut legacy, f32le(&[0.25; WINDOW])).await;
    assert_eq!(
        next_json(&mut legacy).await,
        json!({"transcription": describe_audio(0, &[0.25; WINDOW])})
    );
}

#[actix_rt::test]
async fn other_paths_answer_404() {
    let thoth = start_thoth(DevThothOptions::default());
    let response = awc::Client::new()
        .get(format!("http://{}/", thoth.addr()))
        .send()
        .await
        .expect("http request");
    assert_eq!(response.status().as_u16(), 404);
    let response = awc::Client::new()
        .get(format!("http://{}/api/audio/transcribe", thoth.addr()))
        .send()
        .await
        .expect("http request");
    assert_eq!(response.status().as_u16(), 404);
}

#[actix_rt::test]
async fn stats_count_connections() {
    let thoth = start_thoth(DevThothOptions::default());
    let stats = thoth.stats();
    assert_eq!(stats.connections_accepted(), 0);
    let mut mux_a = connect_mux(&thoth).await;
    let _mux_b = connect_mux(&thoth).await;
    let _legacy = connect_legacy(&thoth).await;
    eventually("three sockets open", || stats.connections_open() == 3).await;
    assert_eq!(stats.connections_accepted(), 3);
    assert_eq!(stats.mux_connections(), 2);
    assert_eq!(stats.legacy_streams(), 1);

    mux_a
        .send(Message::Close(Some(CloseCode::Normal.into())))
        .await
        .expect("send close");
    assert_eq!(expect_close(&mut mux_a).await, 1000);
    eventually("one socket closed", || stats.connections_open() == 2).await;
    assert_eq!(stats.connections_accepted(), 3);
}

#[actix_rt::test]
async fn stop_really_closes_the_clients_socket() {
    let thoth = start_thoth(DevThothOptions::default());
    let url = thoth.url();
    let mut mux = connect_mux(&thoth).await;
    let mut legacy = connect_legacy(&thoth).await;
    let session = Uuid::new_v4();
    send_json(&mut mux, start_session(session, "f32le", 16_000, 0)).await;

    thoth.stop();
    expect_abrupt_end(&mut mux).await;
    expect_abrupt_end(&mut legacy).await;
    let refused = awc::Client::new().ws(&url).connect().await;
    assert!(refused.is_err(), "nothing listens after stop()");
}

#[actix_rt::test]
async fn a_stopped_thoth_can_be_restarted_on_the_same_port() {
    let thoth = start_thoth(DevThothOptions::default());
    let addr = thoth.addr();
    thoth.stop();
    let thoth = start_thoth(DevThothOptions {
        bind: addr,
        ..DevThothOptions::default()
    });
    assert_eq!(thoth.addr(), addr);
    let _socket = connect_mux(&thoth).await;
}

#[actix_rt::test]
async fn drop_all_connections_ends_sockets_without_a_close_frame() {
    let thoth = start_thoth(DevThothOptions::default());
    let mut mux = connect_mux(&thoth).await;
    let mut legacy = connect_legacy(&thoth).await;
    thoth.drop_all_connections();
    expect_abrupt_end(&mut mux).await;
    expect_abrupt_end(&mut legacy).await;
    let stats = thoth.stats();
    eventually("sockets gone", || stats.connections_open() == 0).await;

    // The server itself is still up, and the legacy stream is free again.
    let _mux = connect_mux(&thoth).await;
    let mut legacy = connect_legacy(&thoth).await;
    send_binary(&mut legacy, f32le(&[0.2; WINDOW])).await;
    let want = describe_audio(0, &[0.2; WINDOW]);
    assert_eq!(
        next_json(&mut legacy).await,
        json!({ "transcription": want })
    );
}

#[actix_rt::test]
async fn send_socket_error_and_close_warns_every_mux_socket() {
    let thoth = start_thoth(DevThothOptions::default());
    let mut first = connect_mux(&thoth).await;
    let mut second = connect_mux(&thoth).await;
    let mut legacy = connect_legacy(&thoth).await;
    eventually("three sockets open", || {
        thoth.stats().connections_open() == 3
    })
    .await;
    thoth.send_socket_error_and_close("OVERLOADED");
    for socket in [&mut first, &mut second] {
        let error = next_json(socket).await;
        assert_eq!(error["type"], "error");
        assert_eq!(error["code"], "OVERLOADED");
        assert!(error.get("session_id").is_none());
        assert_eq!(expect_close(socket).await, 1011);
    }
    expect_nothing_more(&mut legacy).await;
}
