//! Fault injection, per-session thoth errors: a man in the middle plays thoth
//! reporting an error for one session; only that session ends.

mod common;
#[path = "common/live_session.rs"]
mod live_session;
#[path = "common/scenario.rs"]
mod scenario;

use std::time::Duration;

use actix_codec::Framed;
use awc::ws::{Frame, Message};
use chronus_gateway::devthoth::{DevThoth, DevThothOptions};
use common::*;
use futures_util::future::join_all;
use futures_util::{SinkExt, StreamExt};
use live_session::*;
use scenario::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

// ---- 7. a per-session thoth error ----------------------------------------------

/// A man in the middle between the gateway and the dev thoth: it forwards
/// every frame both ways and, on request, plays thoth reporting an error for
/// one session — the error goes to the gateway, a `session.cancel` to the dev
/// thoth, since thoth ends a session it reports an error for. (The gateway
/// validates audio before thoth sees it, so the dev thoth cannot be made to
/// send a per-session error through it.)
struct ErrorInjector {
    url: String,
    inject: tokio::sync::mpsc::UnboundedSender<(String, String)>,
}

impl ErrorInjector {
    /// Relays the first (shared) socket the gateway opens to `thoth_url`.
    async fn start(thoth_url: String) -> ErrorInjector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/stream-audio", listener.local_addr().unwrap());
        let (inject, requests) = tokio::sync::mpsc::unbounded_channel();
        actix_rt::spawn(async move {
            let (gateway_side, _) = listener.accept().await.expect("the gateway connects");
            relay(gateway_side, &thoth_url, requests).await;
        });
        ErrorInjector { url, inject }
    }

    /// Thoth reports `code` for `session_id`.
    fn fail_session(&self, session_id: &str, code: &str) {
        self.inject
            .send((session_id.to_string(), code.to_string()))
            .expect("relay running");
    }
}

/// The server half of the upgrade by hand, then frames both ways.
async fn relay(
    mut gateway_side: TcpStream,
    thoth_url: &str,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        gateway_side
            .read_exact(&mut byte)
            .await
            .expect("upgrade request");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let key = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_string())
        })
        .expect("Sec-WebSocket-Key");
    let (_, thoth_side) = awc::Client::new()
        .ws(thoth_url)
        .protocols(["thoth.mux.v1"])
        .max_frame_size(4 * 1024 * 1024)
        .connect()
        .await
        .expect("relay reaches the dev thoth");
    let accept = actix_http::ws::hash_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: thoth.mux.v1\r\n\r\n",
        std::str::from_utf8(&accept).expect("base64")
    );
    gateway_side.write_all(response.as_bytes()).await.unwrap();
    let codec = actix_http::ws::Codec::new().max_size(4 * 1024 * 1024);
    let (mut to_gateway, mut from_gateway) = Framed::new(gateway_side, codec).split();
    let (mut to_thoth, mut from_thoth) = thoth_side
        .into_map_codec(|c| c.max_size(4 * 1024 * 1024))
        .split();
    loop {
        tokio::select! {
            frame = from_gateway.next() => {
                let Some(Ok(frame)) = frame else { break };
                if let Some(message) = as_message(frame) {
                    if to_thoth.send(message).await.is_err() {
                        break;
                    }
                }
            }
            frame = from_thoth.next() => {
                let Some(Ok(frame)) = frame else { break };
                if let Some(message) = as_message(frame) {
                    if to_gateway.send(message).await.is_err() {
                        break;
                    }
                }
            }
            Some((session_id, code)) = requests.recv() => {
                let error = json!({"type": "error", "session_id": session_id, "code": code,
                    "message": "injected at relay.internal:9999"});
                let cancel = json!({"type": "session.cancel", "session_id": session_id});
                let _ = to_gateway.send(Message::Text(error.to_string().into())).await;
                let _ = to_thoth.send(Message::Text(cancel.to_string().into())).await;
            }
        }
    }
}

/// A received frame, to be sent on unchanged.
fn as_message(frame: Frame) -> Option<Message> {
    match frame {
        Frame::Text(text) => Some(Message::Text(String::from_utf8(text.to_vec()).ok()?.into())),
        Frame::Binary(bytes) => Some(Message::Binary(bytes)),
        Frame::Ping(payload) => Some(Message::Ping(payload)),
        Frame::Pong(payload) => Some(Message::Pong(payload)),
        Frame::Close(reason) => Some(Message::Close(reason)),
        Frame::Continuation(_) => None,
    }
}

/// A victim per `(thoth code, browser code, close code)` gets that error for
/// its session mid-stream while bystanders stream on the same socket.
async fn per_session_errors_end_only_their_session(victims: &[(&str, &str, u16)]) {
    const BYSTANDERS: usize = 4;
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let injector = ErrorInjector::start(thoth.url()).await;
    let gateway = start_gateway(&base_env(&injector.url)).await;

    let audio: Vec<TestAudio> = (0..BYSTANDERS)
        .map(|i| TestAudio::for_session(i, 3.0, encoding_of(i)))
        .collect();
    let bystanders = open_sessions(&gateway, "bystander", &audio).await;
    let victim_audio = TestAudio::for_session(500, 4.0, Encoding::F32le);
    let mut victims_open = Vec::new();
    for (thoth_code, _, _) in victims {
        let session = LiveSession::open(&gateway, &format!("victim-{thoth_code}"), "").await;
        victims_open.push(session);
    }
    let epoch = Instant::now() + Duration::from_millis(100);
    let handles = stream_all(bystanders, &audio, 100, epoch);

    // Each victim: 1.5 s of audio, its first final, then thoth's error; it
    // keeps sending until the gateway closes it.
    let frames = victim_audio.frames(100);
    let victim_runs = victims_open
        .into_iter()
        .zip(victims)
        .map(|(mut session, &code)| {
            let (frames, injector) = (frames.clone(), &injector);
            async move {
                let finals = session.finals_counter();
                for frame in &frames[..15] {
                    assert!(session.send_audio(frame.clone()).await);
                }
                let first = eventually(Duration::from_secs(10), || {
                    let one = finals.get() == 1;
                    async move { one }
                })
                .await;
                assert!(first, "{code:?}: first final");
                injector.fail_session(&session.session_id, code.0);
                session
                    .stream_until_refused(&frames[15..], Duration::from_millis(100), Instant::now())
                    .await;
                let sent_end = session.send_json(json!({"type": "end"})).await;
                let transcript = timeout(Duration::from_secs(10), session.finish())
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "{code:?}: the session was not closed after thoth's error \
                         (end sent: {sent_end})"
                        )
                    });
                (code, transcript)
            }
        });
    for (code, transcript) in join_all(victim_runs).await {
        let (_, browser_code, close_code) = code;
        assert_eq!(transcript.error_codes(), vec![browser_code], "{code:?}");
        let error = &transcript.events.last().unwrap().1;
        assert_eq!(
            error["code"], browser_code,
            "{code:?}: the error is the last message"
        );
        assert!(
            !error["message"]
                .as_str()
                .unwrap()
                .contains("relay.internal"),
            "{code:?}: thoth's message is not passed on"
        );
        assert_eq!(transcript.close, Some(close_code), "{code:?}");
        transcript.assert_finals(&victim_audio.expected_finals()[..1], &format!("{code:?}"));
    }
    for (i, (transcript, a)) in transcripts(handles).await.iter().zip(&audio).enumerate() {
        let label = format!("bystander {i}");
        assert!(transcript.error_codes().is_empty(), "{label}");
        transcript.assert_complete(&a.expected_finals(), &label);
    }
    let stats = thoth.stats();
    assert_eq!(
        stats.connections_accepted(),
        1,
        "the shared socket survived"
    );
    assert_eq!(stats.sessions_done(), BYSTANDERS as u64);
    assert_nothing_left(&gateway, Duration::from_secs(5)).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            stats.sessions_ended() == stats.mux_sessions_started()
        })
        .await,
        "every thoth session ended"
    );
    gateway.stop().await;
    thoth.stop();
}

#[actix_rt::test]
async fn a_per_session_thoth_error_ends_only_that_session() {
    let _one_at_a_time = one_at_a_time();
    per_session_errors_end_only_their_session(&[
        ("OVERLOADED", "THOTH_BUSY", 1013),
        ("UNKNOWN_SESSION", "THOTH_ERROR", 1011),
        ("BAD_MESSAGE", "THOTH_ERROR", 1011),
        ("SOMETHING_NEW", "THOTH_ERROR", 1011),
    ])
    .await;
}

#[actix_rt::test]
async fn a_per_session_unsupported_audio_error_ends_that_session() {
    let _one_at_a_time = one_at_a_time();
    // INVALID_AUDIO_FORMAT has no close code of its own (a browser's bad frame
    // does not end its session); when thoth reports it, the session is over
    // upstream and must be closed — 1011 like the other thoth session errors.
    per_session_errors_end_only_their_session(&[(
        "UNSUPPORTED_AUDIO",
        "INVALID_AUDIO_FORMAT",
        1011,
    )])
    .await;
}
