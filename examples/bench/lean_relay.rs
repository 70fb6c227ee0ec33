//! A lean reference relay, the benchmark's baseline row (issue 13): the
//! gateway's browser protocol in front of thoth mux, and nothing else.
//!
//! It runs as a separate process (`bench --lean-relay`, with `BIND_ADDR` and
//! `THOTH_WS_URL` set) so that its CPU and memory are read exactly as the
//! gateway's are. Shape: one single-threaded tokio runtime per core, all
//! accepting from one listener; one task per browser socket doing both
//! directions; one writer task for the shared thoth socket that drains its
//! bounded queue, yields once, drains again, then flushes once; mux frames
//! cut from one reused per-session buffer; thoth events parsed once, without
//! copying the text when it has no escapes, and formatted straight into the
//! browser frame; a 16-shard session table; a token is only checked for the
//! shape of a JWT; no logging on the hot path. Not a product: no resume, no
//! limits, no admission.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;

use crate::thoth::MUX_SUBPROTOCOL;

/// The bench binary's argument that makes it this relay instead.
pub const RELAY_FLAG: &str = "--lean-relay";
const SHARDS: usize = 16;
/// Frames queued for the thoth socket, at most: a full queue makes browser
/// tasks wait, so the relay's memory stays bounded.
const THOTH_QUEUE: usize = 8192;
const MUX_ID_BYTES: usize = 16;
/// As the gateway's default `MAX_FRAME_BYTES`.
const MAX_FRAME_BYTES: usize = 256 * 1024;
/// Bytes read from a browser socket at once.
const BROWSER_READ_BUFFER: usize = 8 * 1024;

type Ws = WebSocketStream<TcpStream>;

/// What the thoth reader hands a browser task: frames already formatted.
enum ToBrowser {
    Partial(String),
    /// A final result; `text` is the JSON-escaped text's range in `frame`,
    /// kept for `done` (the session's final texts joined with spaces).
    Final {
        frame: String,
        text: std::ops::Range<usize>,
    },
    Done,
    Error(String),
}

type SessionTable = [Mutex<HashMap<Uuid, mpsc::UnboundedSender<ToBrowser>>>; SHARDS];

struct Shared {
    to_thoth: mpsc::Sender<Message>,
    sessions: SessionTable,
}

impl Shared {
    fn shard(&self, id: &Uuid) -> &Mutex<HashMap<Uuid, mpsc::UnboundedSender<ToBrowser>>> {
        // v4 uuids: the last byte is random.
        &self.sessions[id.as_bytes()[15] as usize % SHARDS]
    }
}

/// Serves until killed.
pub fn serve_from_env() -> ExitCode {
    let (Some(bind), Some(thoth_url)) = (
        std::env::var("BIND_ADDR").ok(),
        std::env::var("THOTH_WS_URL").ok(),
    ) else {
        eprintln!("lean relay: BIND_ADDR and THOTH_WS_URL must be set");
        return ExitCode::from(2);
    };
    match serve(&bind, &thoth_url) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lean relay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

fn serve(bind: &str, thoth_url: &str) -> Result<(), String> {
    let listener = std::net::TcpListener::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let first = runtime().map_err(|e| e.to_string())?;
    // The thoth socket's tasks live on the first runtime.
    let shared = first.block_on(async {
        let ws = connect_thoth(thoth_url).await?;
        let (sink, stream) = ws.split();
        let (to_thoth, queue) = mpsc::channel(THOTH_QUEUE);
        let shared = Arc::new(Shared {
            to_thoth,
            sessions: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        });
        tokio::spawn(thoth_writer(sink, queue));
        tokio::spawn(thoth_reader(stream, shared.clone()));
        Ok::<_, String>(shared)
    })?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = Vec::new();
    for _ in 1..cores {
        let (listener, shared) = (
            listener.try_clone().map_err(|e| e.to_string())?,
            shared.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let rt = runtime().expect("relay runtime");
            rt.block_on(accept_loop(listener, shared));
        }));
    }
    first.block_on(accept_loop(listener, shared));
    Ok(())
}

async fn accept_loop(listener: std::net::TcpListener, shared: Arc<Shared>) {
    let listener = TcpListener::from_std(listener).expect("listener");
    loop {
        if let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(browser_session(stream, shared.clone()));
        }
    }
}

async fn connect_thoth(url: &str) -> Result<Ws, String> {
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    let host = request.uri().authority().map(|a| a.to_string());
    let addr: SocketAddr = host
        .and_then(|h| h.parse().ok())
        .ok_or("THOTH_WS_URL must name ip:port")?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(MUX_SUBPROTOCOL),
    );
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("thoth: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let config = WebSocketConfig::default().max_message_size(Some(16 << 20));
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| format!("thoth handshake: {e}"))?;
    Ok(ws)
}

/// Drains the queue, yields once so that other tasks can add to it, drains
/// again, then flushes once: one write for everything queued meanwhile.
async fn thoth_writer(mut sink: SplitSink<Ws, Message>, mut queue: mpsc::Receiver<Message>) {
    while let Some(first) = queue.recv().await {
        if sink.feed(first).await.is_err() {
            return;
        }
        for round in 0..2 {
            while let Ok(next) = queue.try_recv() {
                if sink.feed(next).await.is_err() {
                    return;
                }
            }
            if round == 0 {
                tokio::task::yield_now().await;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// What thoth sends, borrowed from the frame.
#[derive(serde::Deserialize)]
struct ThothEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    is_final: Option<bool>,
    start: Option<f64>,
    end: Option<f64>,
}

async fn thoth_reader(mut stream: SplitStream<Ws>, shared: Arc<Shared>) {
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(event) = serde_json::from_str::<ThothEvent>(text.as_str()) else {
            continue;
        };
        let Some(id) = event
            .session_id
            .as_deref()
            .and_then(|s| Uuid::parse_str(s).ok())
        else {
            continue; // a socket-wide error: the baseline has no resume
        };
        let Some(to_browser) = browser_event(&event) else {
            continue;
        };
        let shard = shared.shard(&id).lock().expect("shard lock");
        if let Some(tx) = shard.get(&id) {
            let _ = tx.send(to_browser);
        }
    }
    // Thoth is gone: every session ends.
    for shard in &shared.sessions {
        for tx in shard.lock().expect("shard lock").values() {
            let _ = tx.send(ToBrowser::Error(error_frame("THOTH_UNAVAILABLE")));
        }
    }
}

fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Formats thoth's event straight into the browser frame.
fn browser_event(event: &ThothEvent) -> Option<ToBrowser> {
    match event.kind.as_ref() {
        "transcription" => {
            let text = event.text.as_deref().unwrap_or_default();
            let final_ = event.is_final == Some(true);
            let mut frame = Vec::with_capacity(text.len() * 2 + 128);
            frame.extend_from_slice(if final_ {
                br#"{"type":"transcription","data":"#
            } else {
                br#"{"type":"transcription.partial","data":"#
            });
            let start = frame.len() + 1;
            serde_json::to_writer(&mut frame, text).ok()?;
            let end = frame.len() - 1;
            frame.extend_from_slice(br#","text":"#);
            frame.extend_from_within(start - 1..end + 1);
            frame.extend_from_slice(br#","timestamp":""#);
            frame.extend_from_slice(timestamp().as_bytes());
            frame.push(b'"');
            if let (true, Some(s), Some(e)) = (final_, event.start, event.end) {
                use std::io::Write;
                let _ = write!(frame, r#","start":{s},"end":{e}"#);
            }
            frame.push(b'}');
            let frame = String::from_utf8(frame).ok()?;
            Some(if final_ {
                ToBrowser::Final {
                    frame,
                    text: start..end,
                }
            } else {
                ToBrowser::Partial(frame)
            })
        }
        "session.done" => Some(ToBrowser::Done),
        "error" => Some(ToBrowser::Error(error_frame("THOTH_ERROR"))),
        _ => None,
    }
}

fn error_frame(code: &str) -> String {
    format!(
        r#"{{"type":"error","code":"{code}","message":"Transcription failed","retryable":true,"timestamp":"{}"}}"#,
        timestamp()
    )
}

/// Accepts `/api/audio/transcribe?token=<something shaped like a JWT>`.
#[allow(clippy::result_large_err)] // the callback's signature is tungstenite's
fn check_request(request: &Request, response: Response) -> Result<Response, ErrorResponse> {
    let token_ok = request.uri().path() == "/api/audio/transcribe"
        && request
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
            .is_some_and(|t| t.split('.').filter(|p| !p.is_empty()).count() == 3);
    if token_ok {
        return Ok(response);
    }
    let mut refusal = ErrorResponse::new(Some("unauthorized".into()));
    *refusal.status_mut() = StatusCode::UNAUTHORIZED;
    Err(refusal)
}

/// One browser socket, both directions, from handshake to close.
async fn browser_session(stream: TcpStream, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    // Small buffers: tungstenite's defaults (128 KiB each way) would cost
    // every held socket a quarter MiB; frames are read whole anyway, and every
    // write is flushed at once.
    let config = WebSocketConfig::default()
        .read_buffer_size(BROWSER_READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_FRAME_BYTES))
        .max_frame_size(Some(MAX_FRAME_BYTES));
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, check_request, Some(config)).await
    else {
        return;
    };
    let id = Uuid::new_v4();
    let (tx, mut events) = mpsc::unbounded_channel();
    shared.shard(&id).lock().expect("shard lock").insert(id, tx);
    let id_text = id.hyphenated().to_string();
    let _ = relay(&mut ws, &shared, id, &id_text, &mut events).await;
    shared.shard(&id).lock().expect("shard lock").remove(&id);
}

/// Returns when the session is over; `Err` when either side failed.
async fn relay(
    ws: &mut Ws,
    shared: &Shared,
    id: Uuid,
    id_text: &str,
    events: &mut mpsc::UnboundedReceiver<ToBrowser>,
) -> Result<(), String> {
    let to_thoth = &shared.to_thoth;
    let thoth_gone = |_| "thoth queue closed".to_string();
    let browser_gone = |e: tokio_tungstenite::tungstenite::Error| e.to_string();
    to_thoth
        .send(Message::text(format!(
            r#"{{"type":"session.start","session_id":"{id_text}","encoding":"f32le","sample_rate":16000,"offset_ms":0}}"#
        )))
        .await
        .map_err(thoth_gone)?;
    ws.send(Message::text(format!(
        r#"{{"type":"ready","sessionId":"{id_text}","provider":"thoth"}}"#
    )))
    .await
    .map_err(browser_gone)?;
    let mut mux = BytesMut::new();
    let mut finals = String::new();
    loop {
        tokio::select! {
            biased;
            event = events.recv() => match event {
                Some(ToBrowser::Partial(frame)) => {
                    ws.send(Message::text(frame)).await.map_err(browser_gone)?
                }
                Some(ToBrowser::Final { frame, text }) => {
                    if !finals.is_empty() {
                        finals.push(' ');
                    }
                    finals.push_str(&frame[text]);
                    ws.send(Message::text(frame)).await.map_err(browser_gone)?
                }
                Some(ToBrowser::Done) => {
                    let ts = timestamp();
                    let done = format!(
                        r#"{{"type":"done","data":"{finals}","text":"{finals}","timestamp":"{ts}"}}"#
                    );
                    ws.send(Message::text(done)).await.map_err(browser_gone)?;
                    let _ = ws.close(None).await;
                    return Ok(());
                }
                Some(ToBrowser::Error(frame)) => {
                    let _ = ws.send(Message::text(frame)).await;
                    let _ = ws.close(None).await;
                    return Ok(());
                }
                None => return Ok(()),
            },
            message = ws.next() => match message {
                Some(Ok(Message::Binary(audio))) => {
                    // Reuses the buffer once thoth's writer has sent the last frame.
                    mux.reserve(MUX_ID_BYTES + audio.len());
                    mux.extend_from_slice(id.as_bytes());
                    mux.extend_from_slice(&audio);
                    let frame = mux.split().freeze();
                    to_thoth.send(Message::Binary(frame)).await.map_err(thoth_gone)?;
                }
                Some(Ok(Message::Text(text))) => {
                    let text = text.as_str();
                    if text.contains(r#""type":"end""#) {
                        let end = format!(r#"{{"type":"session.end","session_id":"{id_text}"}}"#);
                        to_thoth.send(Message::text(end)).await.map_err(thoth_gone)?;
                    } else if text.contains(r#""type":"ping""#) {
                        ws.send(Message::text(r#"{"type":"pong"}"#)).await.map_err(browser_gone)?;
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    let cancel = format!(r#"{{"type":"session.cancel","session_id":"{id_text}"}}"#);
                    let _ = to_thoth.send(Message::text(cancel)).await;
                    return Ok(());
                }
                Some(Ok(_)) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_final_is_formatted_once_and_its_text_kept_for_done() {
        let thoth = r#"{"type":"transcription","session_id":"x","text":"a \"b\"","is_final":true,"start":0,"end":3.072}"#;
        let event: ThothEvent = serde_json::from_str(thoth).unwrap();
        let Some(ToBrowser::Final { frame, text }) = browser_event(&event) else {
            panic!("not a final");
        };
        let value: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(value["type"], "transcription");
        assert_eq!(value["data"], "a \"b\"");
        assert_eq!(value["text"], "a \"b\"");
        assert_eq!(value["end"], 3.072);
        assert_eq!(&frame[text], r#"a \"b\""#);
    }
}
