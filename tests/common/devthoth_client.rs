//! A client of the dev thoth over real WebSockets (awc), as the gateway
//! connects to it: mux and legacy sockets, the frames to send, and what to
//! expect back.
#![allow(dead_code)]

use std::time::Duration;

use awc::error::WsProtocolError;
use awc::ws::{Frame, Message};
use bytes::Bytes;
use chronus_gateway::devthoth::{DevThoth, DevThothOptions, MAX_FRAME_BYTES, MUX_SUBPROTOCOL};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use serde_json::{json, Value};
use uuid::Uuid;

/// How long a test waits for any one thing the dev thoth should do.
pub const PATIENCE: Duration = Duration::from_secs(5);
/// How long a test waits to be sure something does *not* arrive.
pub const QUIET_PERIOD: Duration = Duration::from_millis(300);

/// A connected client socket, whatever awc's concrete type.
pub trait WsSocket:
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
pub async fn connect_with(
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

pub async fn connect_mux(thoth: &DevThoth) -> impl WsSocket {
    let (selected, socket) = connect_with(&thoth.url(), &[MUX_SUBPROTOCOL], &[]).await;
    assert_eq!(selected.as_deref(), Some(MUX_SUBPROTOCOL));
    socket
}

pub async fn connect_legacy(thoth: &DevThoth) -> impl WsSocket {
    let (selected, socket) = connect_with(&thoth.url(), &[], &[]).await;
    assert_eq!(selected, None);
    socket
}

pub async fn send_json(socket: &mut impl WsSocket, frame: Value) {
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .expect("send text");
}

pub async fn send_binary(socket: &mut impl WsSocket, bytes: Vec<u8>) {
    socket
        .send(Message::Binary(Bytes::from(bytes)))
        .await
        .expect("send binary");
}

/// A mux binary frame: the session id then the audio bytes.
pub fn audio_frame(session: Uuid, audio: &[u8]) -> Vec<u8> {
    let mut frame = session.as_bytes().to_vec();
    frame.extend_from_slice(audio);
    frame
}

pub fn f32le(samples: &[f32]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// A square wave of amplitude `level` (so its rms is exactly `level`) whose
/// period does not divide a second, so every second has its own checksum.
pub fn square_wave(level: f32, samples: usize) -> Vec<f32> {
    (0..samples)
        .map(|i| if (i / 37) % 2 == 0 { level } else { -level })
        .collect()
}

pub fn start_session(session: Uuid, encoding: &str, sample_rate: u32, offset_ms: u64) -> Value {
    json!({
        "type": "session.start",
        "session_id": session.to_string(),
        "encoding": encoding,
        "sample_rate": sample_rate,
        "offset_ms": offset_ms,
    })
}

pub fn final_result(session: Uuid, text: String, start: f64, end: f64) -> Value {
    json!({
        "type": "transcription",
        "session_id": session.to_string(),
        "text": text,
        "is_final": true,
        "start": start,
        "end": end,
    })
}

pub fn interim_result(session: Uuid, text: &str) -> Value {
    json!({
        "type": "transcription",
        "session_id": session.to_string(),
        "text": text,
        "is_final": false,
    })
}

pub fn done(session: Uuid) -> Value {
    json!({ "type": "session.done", "session_id": session.to_string() })
}

/// The next frame, answering nothing and skipping nothing.
pub async fn next_frame(socket: &mut impl WsSocket) -> Option<Result<Frame, WsProtocolError>> {
    actix_rt::time::timeout(PATIENCE, socket.next())
        .await
        .expect("the dev thoth answered in time")
}

/// The next text frame, parsed; panics on anything else.
pub async fn next_json(socket: &mut impl WsSocket) -> Value {
    match next_frame(socket).await {
        Some(Ok(Frame::Text(text))) => serde_json::from_slice(&text).expect("JSON text frame"),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// Reads until the close frame and returns its code; panics if the socket
/// ends without one.
pub async fn expect_close(socket: &mut impl WsSocket) -> u16 {
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
pub async fn expect_abrupt_end(socket: &mut impl WsSocket) {
    loop {
        match next_frame(socket).await {
            None | Some(Err(_)) => return,
            Some(Ok(Frame::Close(reason))) => panic!("expected no close frame, got {reason:?}"),
            Some(Ok(_)) => continue,
        }
    }
}

pub async fn expect_nothing_more(socket: &mut impl WsSocket) {
    if let Ok(frame) = actix_rt::time::timeout(QUIET_PERIOD, socket.next()).await {
        panic!("expected silence, got {frame:?}");
    }
}

/// Polls `condition` until it holds (the dev thoth runs on its own thread).
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        actix_rt::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn start_thoth(opts: DevThothOptions) -> DevThoth {
    DevThoth::start(opts).expect("dev thoth starts")
}

pub fn without_interims() -> DevThothOptions {
    DevThothOptions {
        interim_results: false,
        ..DevThothOptions::default()
    }
}

/// Samples in one legacy window of today's thoth: 3 s at 16 kHz.
pub const WINDOW: usize = 48_000;

/// A legacy handshake that today's thoth refuses: the HTTP status it got
/// (no WebSocket is ever opened).
pub async fn refused_legacy_status(thoth: &DevThoth, headers: &[(&str, &str)]) -> u16 {
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
pub async fn expect_plain_close_1000(socket: &mut impl WsSocket) {
    match next_frame(socket).await {
        Some(Ok(Frame::Close(Some(reason)))) => {
            assert_eq!(u16::from(reason.code), 1000);
            assert_eq!(reason.description, None, "no message with the close");
        }
        other => panic!("expected close 1000 at once, got {other:?}"),
    }
}
