//! A fast fake thoth speaking mux v1 (PROTOCOL.md 3.1), in-process on its own
//! thread and runtime.
//!
//! Its results' text is `ack <cumulative bytes> <running checksum> <last
//! frame>`, so the load generator can time frames and verify their content.
//! Realtime profile: every binary audio frame is answered, and every
//! `--final-every` frames of a session's audio (default 50: one second) the
//! reply is a final result with `start`/`end`, which lets the gateway drop
//! that audio from its resume buffer. Chronus profile: like today's thoth, only
//! a final result per ~3 s of a session's audio, nothing in between.
//! `session.end` → a final for any audio not yet answered, then `session.done`;
//! `session.cancel` forgets the session. Replies to everything already read
//! are written with one flush, as a real thoth serving many sessions would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use crate::audio::{ack_text, check_frame, RunningChecksum};
use crate::profile::{ThothReplies, BYTES_PER_SECOND};

/// The subprotocol the gateway offers and thoth must select.
pub const MUX_SUBPROTOCOL: &str = "thoth.mux.v1";
/// Replies buffered before a flush, at most.
const MAX_REPLIES_PER_FLUSH: usize = 1024;
/// By default a final result once per second of audio; every other reply
/// is an interim one.
pub const DEFAULT_FINAL_EVERY_FRAMES: u64 = 50;

/// What the fake thoth saw; read by the report.
#[derive(Default)]
pub struct ThothStats {
    pub connections: AtomicU64,
    pub audio_frames: AtomicU64,
    pub audio_bytes: AtomicU64,
    pub starts: AtomicU64,
    pub ends: AtomicU64,
    pub cancels: AtomicU64,
    /// Audio or `session.end` for a session that is not open: a relay bug.
    pub unknown_session: AtomicU64,
    /// Frames that are not mux v1 at all.
    pub bad_frames: AtomicU64,
    /// Audio that is not exactly the frame it names (corruption).
    pub corrupt_frames: AtomicU64,
    /// Audio of one session under another's id, or out of order (cross-talk,
    /// loss, reordering), seen from thoth's side.
    pub misrouted_frames: AtomicU64,
    /// The first few problems, for the report.
    pub problems: std::sync::Mutex<Vec<String>>,
}

impl ThothStats {
    fn problem(&self, text: String) {
        if let Ok(mut problems) = self.problems.lock() {
            if problems.len() < 8 {
                problems.push(text);
            }
        }
    }
}

/// A running fake thoth. Dropping it stops its thread (bounded wait).
pub struct FakeThoth {
    pub addr: SocketAddr,
    pub stats: Arc<ThothStats>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeThoth {
    /// Binds 127.0.0.1:0 and serves on a thread of its own, answering as
    /// `replies` says.
    pub fn start(replies: ThothReplies) -> std::io::Result<FakeThoth> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let stats = Arc::new(ThothStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (thread_stats, thread_stop) = (stats.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("fake-thoth".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("fake thoth runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async move {
                    let listener = TcpListener::from_std(std_listener).expect("listener");
                    while !thread_stop.load(Ordering::Relaxed) {
                        // Wake up now and then to notice `stop`.
                        let accepted =
                            tokio::time::timeout(Duration::from_millis(100), listener.accept())
                                .await;
                        if let Ok(Ok((stream, _))) = accepted {
                            let stats = thread_stats.clone();
                            let stop = thread_stop.clone();
                            tokio::task::spawn_local(async move {
                                let _ = serve(stream, stats, stop, replies).await;
                            });
                        }
                    }
                });
            })?;
        Ok(FakeThoth {
            addr,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> String {
        format!("ws://{}/mux", self.addr)
    }
}

impl Drop for FakeThoth {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Accepts the handshake only with the mux subprotocol, which it selects.
#[allow(clippy::result_large_err)] // the callback's signature is tungstenite's
fn select_subprotocol(
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    let offered = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == MUX_SUBPROTOCOL);
    if offered {
        response.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(MUX_SUBPROTOCOL),
        );
    }
    Ok(response)
}

/// One session's state on the thoth side.
struct Session {
    id_text: String,
    bytes: u64,
    checksum: RunningChecksum,
    /// The (session number, next frame number) its audio claimed so far.
    expected: Option<(u32, u64)>,
    /// The (session, frame) numbers of the last frame.
    last: (u32, u64),
    /// Bytes up to the end of the last final result.
    finalised: u64,
    /// Bytes covered by the last result, final or not.
    answered: u64,
}

async fn serve(
    stream: TcpStream,
    stats: Arc<ThothStats>,
    stop: Arc<AtomicBool>,
    policy: ThothReplies,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20));
    let mut ws =
        tokio_tungstenite::accept_hdr_async_with_config(stream, select_subprotocol, Some(config))
            .await?;
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let mut sessions: HashMap<Uuid, Session> = HashMap::new();
    let mut replies: Vec<Message> = Vec::with_capacity(MAX_REPLIES_PER_FLUSH);
    let mut scratch = Vec::new();
    let mut handle = |message, sessions: &mut _, replies: &mut _| {
        handle(message, sessions, replies, &stats, &mut scratch, policy)
    };
    while !stop.load(Ordering::Relaxed) {
        let first = match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
            Err(_) => continue,
            Ok(Some(Ok(message))) => message,
            Ok(_) => break,
        };
        let mut closing = handle(first, &mut sessions, &mut replies);
        // Everything already decoded or readable is answered in one flush.
        while !closing && replies.len() < MAX_REPLIES_PER_FLUSH {
            match ws.next().now_or_never() {
                Some(Some(Ok(message))) => closing = handle(message, &mut sessions, &mut replies),
                Some(_) => closing = true,
                None => break,
            }
        }
        for reply in replies.drain(..) {
            ws.feed(reply).await?;
        }
        ws.flush().await?;
        if closing {
            break;
        }
    }
    let _ = ws.close(None).await;
    Ok(())
}

/// Handles one frame; returns whether the peer is closing.
fn handle(
    message: Message,
    sessions: &mut HashMap<Uuid, Session>,
    replies: &mut Vec<Message>,
    stats: &ThothStats,
    scratch: &mut Vec<u8>,
    policy: ThothReplies,
) -> bool {
    match message {
        Message::Binary(frame) => {
            let Some((id, audio)) = frame.split_first_chunk::<16>() else {
                stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                return false;
            };
            let id = Uuid::from_bytes(*id);
            let Some(session) = sessions.get_mut(&id) else {
                stats.unknown_session.fetch_add(1, Ordering::Relaxed);
                replies.push(error_reply(&id, "UNKNOWN_SESSION"));
                return false;
            };
            stats.audio_frames.fetch_add(1, Ordering::Relaxed);
            stats
                .audio_bytes
                .fetch_add(audio.len() as u64, Ordering::Relaxed);
            match check_frame(audio, scratch) {
                Ok((number, frame)) => {
                    let (expected_number, expected_frame) =
                        session.expected.unwrap_or((number, frame));
                    if (number, frame) != (expected_number, expected_frame) {
                        stats.misrouted_frames.fetch_add(1, Ordering::Relaxed);
                        stats.problem(format!(
                            "session {id}: got session {number} frame {frame}, expected session {expected_number} frame {expected_frame}"
                        ));
                    }
                    session.expected = Some((number, frame + 1));
                    session.last = (number, frame);
                }
                Err(e) => {
                    stats.corrupt_frames.fetch_add(1, Ordering::Relaxed);
                    stats.problem(format!("session {id}: {e}"));
                }
            }
            session.bytes += audio.len() as u64;
            session.checksum.update(audio);
            if session.bytes - session.finalised >= policy.final_every_bytes {
                replies.push(final_reply(session));
            } else if policy.every_frame {
                session.answered = session.bytes;
                let text = ack_text(session.bytes, session.checksum, session.last);
                replies.push(Message::text(format!(
                    r#"{{"type":"transcription","session_id":"{}","text":"{text}","is_final":false}}"#,
                    session.id_text
                )));
            }
        }
        Message::Text(text) => on_command(text.as_str(), sessions, replies, stats),
        Message::Close(_) => return true,
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
    }
    false
}

fn on_command(
    text: &str,
    sessions: &mut HashMap<Uuid, Session>,
    replies: &mut Vec<Message>,
    stats: &ThothStats,
) {
    let Ok(command) = serde_json::from_str::<serde_json::Value>(text) else {
        stats.bad_frames.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Some(id) = command["session_id"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
    else {
        stats.bad_frames.fetch_add(1, Ordering::Relaxed);
        return;
    };
    match command["type"].as_str() {
        Some("session.start") => {
            stats.starts.fetch_add(1, Ordering::Relaxed);
            sessions.insert(
                id,
                Session {
                    id_text: id.to_string(),
                    bytes: 0,
                    checksum: RunningChecksum::default(),
                    expected: None,
                    last: (u32::MAX, u64::MAX),
                    finalised: 0,
                    answered: 0,
                },
            );
        }
        Some("session.end") => {
            stats.ends.fetch_add(1, Ordering::Relaxed);
            if let Some(mut session) = sessions.remove(&id) {
                // Thoth finalises what it has not answered yet before it is done.
                if session.answered < session.bytes {
                    replies.push(final_reply(&mut session));
                }
                replies.push(Message::text(format!(
                    r#"{{"type":"session.done","session_id":"{id}"}}"#
                )));
            } else {
                stats.unknown_session.fetch_add(1, Ordering::Relaxed);
                replies.push(error_reply(&id, "UNKNOWN_SESSION"));
            }
        }
        Some("session.cancel") => {
            stats.cancels.fetch_add(1, Ordering::Relaxed);
            sessions.remove(&id);
        }
        _ => {
            stats.bad_frames.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A final result for everything since the last final; marks it answered.
fn final_reply(session: &mut Session) -> Message {
    let text = ack_text(session.bytes, session.checksum, session.last);
    let start = session.finalised as f64 / BYTES_PER_SECOND as f64;
    let end = session.bytes as f64 / BYTES_PER_SECOND as f64;
    session.finalised = session.bytes;
    session.answered = session.bytes;
    Message::text(format!(
        r#"{{"type":"transcription","session_id":"{}","text":"{text}","is_final":true,"start":{start},"end":{end}}}"#,
        session.id_text
    ))
}

fn error_reply(id: &Uuid, code: &str) -> Message {
    Message::text(format!(
        r#"{{"type":"error","session_id":"{id}","code":"{code}","message":"fake thoth"}}"#
    ))
}
