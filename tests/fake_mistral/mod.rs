//! A fake Mistral realtime server: a real WebSocket server (actix-web on its
//! own thread and System, like the dev thoth) speaking PROTOCOL.md section 4
//! from Mistral's side, recording everything it receives and sends.
//!
//! - The handshake needs `Authorization: Bearer <api_key>`; anything else
//!   gets HTTP 401 (what Mistral answers a bad key).
//! - On connect it sends `session.created` (after
//!   [`FakeMistralOptions::session_created_delay`]); `session.update` is
//!   answered with `session.updated` and sets the audio format.
//! - Audio (`input_audio.append`) is cut into segments of
//!   [`FakeMistralOptions::segment_secs`] of audio; each full segment is
//!   announced by three `transcription.text.delta`s and then a
//!   `transcription.segment` whose text is [`segment_text`]. The first audio
//!   also draws a `transcription.language`.
//! - `input_audio.end` sends the partial last segment (if any), then
//!   `transcription.done` with every segment's text joined by spaces.
//! - [`FakeMistralOptions::error_code`]: the first audio is answered with an
//!   `error` event carrying that code (and a message naming an internal
//!   host), then the socket is closed with 1011.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use actix::{Actor, ActorContext, AsyncContext, StreamHandler};
use actix_web::dev::ServerHandle;
use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;
use base64::Engine;
use serde_json::{json, Value};

/// The path Mistral serves realtime transcription on.
pub const REALTIME_PATH: &str = "/v1/audio/transcriptions/realtime";
/// What a fake `error` event says: internals the browser must never see.
pub const INTERNAL_ERROR_MESSAGE: &str = "worker gpu-7.mistral.internal crashed: CUDA OOM";

/// How a fake Mistral behaves.
#[derive(Debug, Clone)]
pub struct FakeMistralOptions {
    /// The only key accepted.
    pub api_key: String,
    /// Seconds of audio per `transcription.segment`.
    pub segment_secs: f64,
    /// Answer the first audio with an `error` event of this code.
    pub error_code: Option<u64>,
    /// Wait this long after the handshake before `session.created`.
    pub session_created_delay: Duration,
    /// Wait this long before answering the handshake.
    pub accept_delay: Duration,
}

impl FakeMistralOptions {
    pub fn new(api_key: &str) -> Self {
        FakeMistralOptions {
            api_key: api_key.to_owned(),
            segment_secs: 0.5,
            error_code: None,
            session_created_delay: Duration::ZERO,
            accept_delay: Duration::ZERO,
        }
    }
}

/// The text of segment `index` (0-based) made of `bytes` bytes of audio.
pub fn segment_text(index: usize, bytes: usize) -> String {
    format!("segment {index} of {bytes} bytes")
}

/// The deltas that precede segment `index`: concatenated, its text.
pub fn segment_deltas(index: usize, bytes: usize) -> Vec<String> {
    vec![
        "segment".to_owned(),
        format!(" {index} of"),
        format!(" {bytes} bytes"),
    ]
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
    /// The `Authorization` header of the handshake, as received.
    pub authorization: Option<String>,
    /// Whether the handshake was accepted (right key).
    pub accepted: bool,
    pub received: Vec<Upstreamed>,
    /// Every text frame the fake sent, exactly.
    pub sent: Vec<String>,
    /// The socket is gone.
    pub ended: bool,
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

    /// Whether the gateway sent a close frame.
    pub fn closed_by_gateway(&self) -> Option<Option<u16>> {
        self.received.iter().find_map(|r| match r {
            Upstreamed::Close(code) => Some(*code),
            _ => None,
        })
    }
}

struct Shared {
    opts: FakeMistralOptions,
    connections: Mutex<Vec<ConnectionLog>>,
}

impl Shared {
    fn with_log<T>(&self, id: usize, f: impl FnOnce(&mut ConnectionLog) -> T) -> T {
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
        format!(
            "ws://{}{REALTIME_PATH}?model=voxtral-mini-transcribe-realtime-2602",
            self.addr
        )
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
    let id = {
        let mut connections = shared.connections.lock().unwrap();
        connections.push(ConnectionLog {
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
    ws::WsResponseBuilder::new(FakeSession::new(id, shared), &req, payload)
        .frame_size(4 * 1024 * 1024)
        .start()
}

struct FakeSession {
    id: usize,
    shared: Arc<Shared>,
    bytes_per_second: f64,
    bytes_per_sample: usize,
    /// Audio bytes not yet covered by a segment.
    pending: usize,
    /// Audio bytes covered by segments so far.
    covered: usize,
    segments: Vec<String>,
    heard_audio: bool,
}

impl FakeSession {
    fn new(id: usize, shared: Arc<Shared>) -> Self {
        FakeSession {
            id,
            shared,
            bytes_per_second: 16_000.0 * 4.0,
            bytes_per_sample: 4,
            pending: 0,
            covered: 0,
            segments: Vec::new(),
            heard_audio: false,
        }
    }

    fn send(&self, event: Value, ctx: &mut ws::WebsocketContext<Self>) {
        let text = event.to_string();
        self.shared
            .with_log(self.id, |log| log.sent.push(text.clone()));
        ctx.text(text);
    }

    fn segment_bytes(&self) -> usize {
        let bytes = (self.shared.opts.segment_secs * self.bytes_per_second) as usize;
        (bytes - bytes % self.bytes_per_sample).max(self.bytes_per_sample)
    }

    fn emit_segment(&mut self, bytes: usize, ctx: &mut ws::WebsocketContext<Self>) {
        let index = self.segments.len();
        for delta in segment_deltas(index, bytes) {
            self.send(
                json!({"type": "transcription.text.delta", "text": delta}),
                ctx,
            );
        }
        let start = self.covered as f64 / self.bytes_per_second;
        self.covered += bytes;
        let end = self.covered as f64 / self.bytes_per_second;
        let text = segment_text(index, bytes);
        self.send(
            json!({"type": "transcription.segment", "text": text, "start": start, "end": end, "speaker_id": null}),
            ctx,
        );
        self.segments.push(text);
    }

    fn on_event(&mut self, event: Value, ctx: &mut ws::WebsocketContext<Self>) {
        match event["type"].as_str() {
            Some("session.update") => {
                let format = &event["session"]["audio_format"];
                self.bytes_per_sample = match format["encoding"].as_str() {
                    Some("pcm_s16le") => 2,
                    _ => 4,
                };
                let rate = format["sample_rate"].as_f64().unwrap_or(16_000.0);
                self.bytes_per_second = rate * self.bytes_per_sample as f64;
                self.send(
                    json!({"type": "session.updated", "session": event["session"].clone()}),
                    ctx,
                );
            }
            Some("input_audio.append") => {
                if let Some(code) = self.shared.opts.error_code {
                    self.send(
                        json!({"type": "error", "error": {"message": INTERNAL_ERROR_MESSAGE, "code": code}}),
                        ctx,
                    );
                    ctx.close(Some(ws::CloseReason {
                        code: ws::CloseCode::Error,
                        description: None,
                    }));
                    ctx.stop();
                    return;
                }
                let audio = base64::engine::general_purpose::STANDARD
                    .decode(event["audio"].as_str().unwrap_or_default())
                    .expect("audio is base64");
                if !self.heard_audio {
                    self.heard_audio = true;
                    self.send(
                        json!({"type": "transcription.language", "audio_language": "en"}),
                        ctx,
                    );
                }
                self.pending += audio.len();
                let segment = self.segment_bytes();
                while self.pending >= segment {
                    self.pending -= segment;
                    self.emit_segment(segment, ctx);
                }
            }
            Some("input_audio.end") => {
                if self.pending > 0 {
                    let last = std::mem::take(&mut self.pending);
                    self.emit_segment(last, ctx);
                }
                self.send(
                    json!({"type": "transcription.done", "text": self.segments.join(" "), "model": "voxtral-fake", "usage": {}}),
                    ctx,
                );
            }
            _ => {} // input_audio.flush and anything else: recorded only
        }
    }
}

impl Actor for FakeSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let created = json!({
            "type": "session.created",
            "session": {"request_id": format!("fake-{}", self.id), "audio_format": {"encoding": "pcm_s16le", "sample_rate": 16000}},
        });
        let delay = self.shared.opts.session_created_delay;
        if delay.is_zero() {
            self.send(created, ctx);
        } else {
            ctx.run_later(delay, move |act, ctx| act.send(created, ctx));
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.shared.with_log(self.id, |log| log.ended = true);
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for FakeSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        match msg {
            Ok(ws::Message::Text(text)) => {
                self.shared.with_log(self.id, |log| {
                    log.received.push(Upstreamed::Text(text.to_string()))
                });
                match serde_json::from_str(&text) {
                    Ok(event) => self.on_event(event, ctx),
                    Err(_) => self.send(
                        json!({"type": "error", "error": {"message": "invalid JSON", "code": 1002}}),
                        ctx,
                    ),
                }
            }
            Ok(ws::Message::Binary(data)) => {
                self.shared.with_log(self.id, |log| {
                    log.received.push(Upstreamed::Binary(data.len()))
                });
            }
            Ok(ws::Message::Ping(payload)) => ctx.pong(&payload),
            Ok(ws::Message::Close(reason)) => {
                let code = reason.as_ref().map(|r| u16::from(r.code));
                self.shared
                    .with_log(self.id, |log| log.received.push(Upstreamed::Close(code)));
                ctx.close(reason);
                ctx.stop();
            }
            Ok(_) => {}
            Err(e) => {
                self.shared.with_log(self.id, |log| {
                    log.received.push(Upstreamed::ProtocolError(e.to_string()))
                });
                ctx.stop()
            }
        }
    }
}
