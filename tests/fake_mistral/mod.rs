//! A fake Mistral realtime server: a real WebSocket server (actix-web on its
//! own thread and System, like the dev thoth) speaking Mistral's realtime
//! protocol as the official SDKs read it (REAL-PEERS.md 4, PROTOCOL.md 4),
//! recording everything it receives and sends.
//!
//! - The handshake needs `Authorization: Bearer <api_key>`; anything else
//!   gets HTTP 401 (what Mistral answers a bad key). The `model` query is the
//!   session's model.
//! - On connect it sends `session.created` with `request_id`, `model` and
//!   `audio_format` (after [`FakeMistralOptions::session_created_delay`]).
//!   `session.update` is answered with `session.updated` carrying the session
//!   as applied (not the client's update echoed).
//! - Audio is cut into utterances of [`FakeMistralOptions::segment_secs`];
//!   how their text is delivered is the [`Mode`] (`transcript.rs`). The first
//!   audio also draws a `transcription.language`.
//! - `input_audio.end` delivers the short last utterance, then
//!   `transcription.done` with `model`, `text` (every utterance, exactly the
//!   deltas concatenated), `usage`, `language` (the session's, else null) and,
//!   unless the mode has no segments, `segments`.
//! - [`FakeMistralOptions::idle_timeout`] ("3804 after N s of no audio"):
//!   that long without `input_audio.append` (from `session.created` or the
//!   last audio) sends what was heard as deltas, then error 3804, and ends
//!   the session (close 1000).
//! - [`FakeMistralOptions::reject_update_after_audio`] (on by default, as
//!   Mistral does): a `session.update` that would change the session after
//!   audio started is answered with error 3051 and not applied.
//! - [`FakeMistralOptions::error_code`]: the first audio is answered with an
//!   `error` event carrying that code (and a message naming an internal
//!   host), then the socket is closed with 1011.
//!
//! Errors are always `{"type":"error","error":{"message","code"}}`.
#![allow(dead_code)]

mod session;
mod session_state;
mod transcript;

use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;
use base64::Engine;
use serde_json::{json, Value};

use session::FakeSession;
// Each test crate that includes the fake uses a different part of it.
#[allow(unused_imports)]
pub use session_state::{DEFAULT_ENCODING, DEFAULT_SAMPLE_RATE};
#[allow(unused_imports)]
pub use transcript::{full_text, segment_deltas, segment_text, Mode};

/// The path Mistral serves realtime transcription on.
pub const REALTIME_PATH: &str = "/v1/audio/transcriptions/realtime";
/// The model of [`FakeMistral::url`], and of a connection without `model`.
pub const DEFAULT_MODEL: &str = "voxtral-mini-transcribe-realtime-2602";
/// What a fake `error` event says: internals the browser must never see.
pub const INTERNAL_ERROR_MESSAGE: &str = "worker gpu-7.mistral.internal crashed: CUDA OOM";
/// Mistral's error when no audio came for too long (about 30 s for real).
pub const IDLE_TIMEOUT_CODE: u64 = 3804;
pub const IDLE_TIMEOUT_MESSAGE: &str = "timeout waiting for response from client";
/// Mistral's error (docs.mistral.ai, speech-to-text troubleshooting) when a
/// `session.update` would change the session after audio started.
pub const SESSION_LOCKED_CODE: u64 = 3051;
pub const SESSION_LOCKED_MESSAGE: &str =
    "Session fields cannot be changed after audio has started.";
/// The fake's code for a message it cannot use (bad JSON, bad base64, a bad
/// audio format).
pub const INVALID_REQUEST_CODE: u64 = 3000;

/// How a fake Mistral behaves.
#[derive(Debug, Clone)]
pub struct FakeMistralOptions {
    /// The only key accepted.
    pub api_key: String,
    /// How text is delivered: deltas only, segments, trailing deltas.
    pub mode: Mode,
    /// Seconds of audio per utterance (and segment).
    pub segment_secs: f64,
    /// Answer the first audio with an `error` event of this code.
    pub error_code: Option<u64>,
    /// "3804 after N s of no audio": error 3804 and the end of the session.
    pub idle_timeout: Option<Duration>,
    /// Refuse (error 3051) a `session.update` that changes the session once
    /// audio started, as Mistral does. On by default.
    pub reject_update_after_audio: bool,
    /// Wait this long after the handshake before `session.created`.
    pub session_created_delay: Duration,
    /// Wait this long before answering the handshake.
    pub accept_delay: Duration,
}

impl FakeMistralOptions {
    /// A fake accepting `api_key` that delivers text in `mode`.
    pub fn new(api_key: &str, mode: Mode) -> Self {
        FakeMistralOptions {
            api_key: api_key.to_owned(),
            mode,
            segment_secs: 0.5,
            error_code: None,
            idle_timeout: None,
            reject_update_after_audio: true,
            session_created_delay: Duration::ZERO,
            accept_delay: Duration::ZERO,
        }
    }
}

/// One frame a connection received from the gateway.
#[derive(Debug, Clone, PartialEq)]
pub enum Upstreamed {
    Text(String),
    Binary(usize),
    Close(Option<u16>),
    /// The socket broke (not a clean close).
    ProtocolError(String),
}

/// Everything one connection attempt saw.
#[derive(Debug, Clone, Default)]
pub struct ConnectionLog {
    /// The handshake's path and query, as received.
    pub path_and_query: String,
    /// The `model` of the handshake's query ([`DEFAULT_MODEL`] if absent).
    pub model: String,
    /// The `Authorization` header of the handshake, as received.
    pub authorization: Option<String>,
    /// Whether the handshake was accepted (right key).
    pub accepted: bool,
    pub received: Vec<Upstreamed>,
    /// Every text frame the fake sent, exactly.
    pub sent: Vec<String>,
    /// The socket is gone.
    pub ended: bool,
    /// The idle timeout fired (error 3804 sent).
    pub timed_out: bool,
}

impl ConnectionLog {
    /// Upstreamed text frames, parsed.
    pub fn json(&self) -> Vec<Value> {
        self.received
            .iter()
            .filter_map(|r| match r {
                Upstreamed::Text(t) => Some(serde_json::from_str(t).expect("gateway sends JSON")),
                _ => None,
            })
            .collect()
    }

    /// The `type` of each received text frame.
    pub fn types(&self) -> Vec<String> {
        self.json()
            .iter()
            .map(|v| v["type"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    /// Decoded audio of each `input_audio.append`, in order.
    pub fn appends(&self) -> Vec<Vec<u8>> {
        self.json()
            .iter()
            .filter(|v| v["type"] == "input_audio.append")
            .map(|v| {
                base64::engine::general_purpose::STANDARD
                    .decode(v["audio"].as_str().expect("audio is a string"))
                    .expect("audio is base64")
            })
            .collect()
    }

    /// Every `session.update` received, parsed, in order.
    pub fn session_updates(&self) -> Vec<Value> {
        self.json()
            .into_iter()
            .filter(|v| v["type"] == "session.update")
            .collect()
    }

    /// Every event the fake sent, parsed.
    pub fn sent_json(&self) -> Vec<Value> {
        self.sent
            .iter()
            .map(|t| serde_json::from_str(t).expect("the fake sends JSON"))
            .collect()
    }

    /// The `type` of each event the fake sent.
    pub fn sent_types(&self) -> Vec<String> {
        self.sent_json()
            .iter()
            .map(|v| v["type"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    /// Whether the gateway sent a close frame.
    pub fn closed_by_gateway(&self) -> Option<Option<u16>> {
        self.received.iter().find_map(|r| match r {
            Upstreamed::Close(code) => Some(*code),
            _ => None,
        })
    }
}

pub(crate) struct Shared {
    pub(crate) opts: FakeMistralOptions,
    connections: Mutex<Vec<ConnectionLog>>,
}

impl Shared {
    pub(crate) fn with_log<T>(&self, id: usize, f: impl FnOnce(&mut ConnectionLog) -> T) -> T {
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut connections[id])
    }
}

/// A running fake Mistral; stopped on drop.
pub struct FakeMistral {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl FakeMistral {
    pub fn start(opts: FakeMistralOptions) -> FakeMistral {
        let shared = Arc::new(Shared {
            opts,
            connections: Mutex::new(Vec::new()),
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let data = web::Data::from(shared.clone());
        let thread = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .route(REALTIME_PATH, web::get().to(realtime))
                })
                .workers(1)
                .disable_signals()
                .shutdown_timeout(0)
                .bind("127.0.0.1:0")
                .expect("fake mistral binds");
                let addr = server.addrs()[0];
                let server = server.run();
                ready_tx.send((addr, server.handle())).unwrap();
                let _ = server.await;
            })
        });
        let (addr, server) = ready_rx.recv().expect("fake mistral started");
        FakeMistral {
            addr,
            shared,
            server,
            thread: Some(thread),
        }
    }

    /// Its realtime URL, with the model query Mistral's URL has.
    pub fn url(&self) -> String {
        format!("ws://{}{REALTIME_PATH}?model={DEFAULT_MODEL}", self.addr)
    }

    /// Its server URL as the SDKs take it (they append [`REALTIME_PATH`]).
    pub fn server_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every connection attempt so far (refused handshakes included).
    pub fn connections(&self) -> Vec<ConnectionLog> {
        self.shared
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The one connection attempt; panics unless there was exactly one.
    pub fn only_connection(&self) -> ConnectionLog {
        let connections = self.connections();
        assert_eq!(connections.len(), 1, "{connections:#?}");
        connections.into_iter().next().unwrap()
    }

    /// Waits (up to 5 s) until connection `id` has ended.
    pub async fn wait_ended(&self, id: usize) -> ConnectionLog {
        for _ in 0..250 {
            if let Some(log) = self.connections().get(id) {
                if log.ended {
                    return log.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "fake mistral connection {id} did not end: {:#?}",
            self.connections()
        );
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            drop(self.server.stop(false));
            let _ = thread.join();
        }
    }
}

impl Drop for FakeMistral {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn realtime(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> Result<HttpResponse, actix_web::Error> {
    let shared = shared.into_inner();
    if !shared.opts.accept_delay.is_zero() {
        actix_rt::time::sleep(shared.opts.accept_delay).await;
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("<not text>").to_owned());
    let accepted = authorization.as_deref() == Some(&format!("Bearer {}", shared.opts.api_key));
    let model =
        web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
            .ok()
            .and_then(|q| q.get("model").cloned())
            .unwrap_or_else(|| DEFAULT_MODEL.to_owned());
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(String::new, |p| p.to_string());
    let id = {
        let mut connections = shared.connections.lock().unwrap();
        connections.push(ConnectionLog {
            path_and_query,
            model: model.clone(),
            authorization,
            accepted,
            ended: !accepted,
            ..Default::default()
        });
        connections.len() - 1
    };
    if !accepted {
        return Ok(HttpResponse::Unauthorized().json(json!({"message": "Unauthorized"})));
    }
    ws::WsResponseBuilder::new(FakeSession::new(id, shared, model), &req, payload)
        .frame_size(4 * 1024 * 1024)
        .start()
}
