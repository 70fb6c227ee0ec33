//! A dev thoth: a small, real thoth stand-in (a WebSocket server) used by the
//! gateway's tests, by `chronus-gateway demo` and by `chronus-gateway
//! dev-thoth`.
//!
//! It transcribes nothing: it answers audio with deterministic text that
//! describes the audio ([`describe_audio`]), so a test can check every result
//! exactly. It speaks both sides of `/work/shared/PROTOCOL.md` section 3 from
//! thoth's side:
//! - **mux v1** (3.1) when the client offers the subprotocol `thoth.mux.v1`
//!   and [`DevThothOptions::mux`] is on: many sessions per socket, a final
//!   `transcription` per second of a session's audio, interim results,
//!   `session.done` after `session.end`, per-session errors ([`error_code`]);
//! - **legacy** (3.2) otherwise, behaving like today's thoth
//!   (`REAL-PEERS.md` 3): one stream per process, `{"transcription"}` per
//!   3 s window (none for a window whose RMS is below 0.01), every refusal
//!   (busy, `Origin`, token) an HTTP 403 before the upgrade, a text frame or
//!   a partial sample closed with 1000, no end-of-audio message.
//!
//! Both are served on [`STREAM_PATH`]; every other path answers 404. A mux
//! handshake carrying `Origin` is upgraded then closed with 4403 (unless that
//! origin was allowed, see [`DevThothOptions::allowed_origins`]), and a
//! missing or wrong `x-thoth-token` (when one is configured) with 4401; a
//! legacy one gets HTTP 403 for either.
//!
//! The server runs on its own thread with its own actix `System`, so it can be
//! stopped and restarted independently of the caller, and stopping it really
//! drops every socket (what a crashed thoth looks like to the gateway).

mod describe;
mod frames;
mod legacy;
mod mux;
mod refused;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use actix::{Actor, Message, Recipient, StreamHandler};
use actix_web::dev::ServerHandle;
use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;

pub use describe::{describe_audio, Encoding, S16_FULL_SCALE};
pub use mux::error_code;

/// The only path the dev thoth serves (like thoth).
pub const STREAM_PATH: &str = "/stream-audio";
/// The WebSocket subprotocol of thoth's multiplexed protocol v1.
pub const MUX_SUBPROTOCOL: &str = "thoth.mux.v1";
/// The header carrying the stream token, checked when one is configured.
pub const TOKEN_HEADER: &str = "x-thoth-token";
/// Largest WebSocket message accepted (the codec's default is 64 KiB, too
/// small for the gateway's batched audio).
pub const MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;
/// Sample rate of the legacy protocol (float32 LE mono).
pub const LEGACY_SAMPLE_RATE: u32 = 16_000;
/// Accepted mux `sample_rate` range, in Hz.
pub const MUX_SAMPLE_RATES: std::ops::RangeInclusive<u64> = 8_000..=48_000;
/// Seconds of audio per legacy window, as today's thoth buffers.
pub const DEFAULT_LEGACY_WINDOW_SECS: f64 = 3.0;
/// Legacy windows whose RMS is below this get no answer (thoth's silence gate).
pub const LEGACY_SILENCE_RMS: f64 = 0.01;
/// Legacy texts shorter than this (in characters, trimmed) are dropped.
pub const LEGACY_MIN_TEXT_CHARS: usize = 3;
/// Default `--bind` of the `dev-thoth` command (the library default is port 0).
pub const DEFAULT_CLI_BIND: &str = "127.0.0.1:8765";

/// Close codes the dev thoth sends.
pub mod close_code {
    /// Mux: a handshake carrying `Origin` (a browser).
    pub const FORBIDDEN_ORIGIN: u16 = 4403;
    /// Mux: `x-thoth-token` missing or wrong.
    pub const BAD_TOKEN: u16 = 4401;
    /// Legacy: a text frame or a partial sample (thoth raises, then closes).
    pub const LEGACY_BAD_INPUT: u16 = 1000;
    /// Mux: a message no session can be blamed for (after a session-less
    /// `BAD_MESSAGE` error).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// After [`super::DevThoth::send_socket_error_and_close`].
    pub const SOCKET_ERROR: u16 = 1011;
}

/// How to run a dev thoth.
#[derive(Debug, Clone)]
pub struct DevThothOptions {
    /// Where to listen; default `127.0.0.1:0` (a free port, see [`DevThoth::addr`]).
    pub bind: SocketAddr,
    /// `true`: select the subprotocol `thoth.mux.v1` when offered; `false`:
    /// behave like today's legacy-only thoth (never select it).
    pub mux: bool,
    /// When `Some`, require header `x-thoth-token` equal to it, else close
    /// 4401 right after the handshake (mux) or answer HTTP 403 (legacy).
    pub stream_token: Option<String>,
    /// Legacy mode: seconds of audio per `{"transcription"}` window (default
    /// 3.0, i.e. 48000 samples, like today's thoth).
    pub legacy_window_secs: f64,
    /// Mux: after a binary frame that leaves a partial second pending, send a
    /// non-final hypothesis `listening {secs:.2}s`; default true.
    pub interim_results: bool,
    /// Browser origins (`http://127.0.0.1:8080`) whose handshakes are served
    /// rather than refused (legacy: HTTP 403; mux: closed with 4403). Empty, the default, refuses every
    /// `Origin`, as real thoth does; the demo allows its own page so the
    /// browser client's legacy mode can be tried. More can be added while
    /// running with [`DevThoth::allow_origins`].
    pub allowed_origins: Vec<String>,
}

impl Default for DevThothOptions {
    fn default() -> Self {
        DevThothOptions {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            mux: true,
            stream_token: None,
            legacy_window_secs: DEFAULT_LEGACY_WINDOW_SECS,
            interim_results: true,
            allowed_origins: Vec::new(),
        }
    }
}

impl DevThothOptions {
    /// Samples per legacy window (at least one).
    fn legacy_window_samples(&self) -> usize {
        let samples = (self.legacy_window_secs * f64::from(LEGACY_SAMPLE_RATE)).round();
        if samples.is_finite() && samples >= 1.0 {
            samples as usize
        } else {
            1
        }
    }
}

/// Counters of what a dev thoth has seen, readable while it runs.
#[derive(Debug, Default)]
pub struct DevThothStats {
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
    connections_open: AtomicU64,
    mux_connections: AtomicU64,
    legacy_streams: AtomicU64,
    mux_sessions_started: AtomicU64,
    sessions_done: AtomicU64,
    sessions_cancelled: AtomicU64,
    sessions_ended: AtomicU64,
    audio_bytes_received: AtomicU64,
    finals_sent: AtomicU64,
    interims_sent: AtomicU64,
    errors_sent: AtomicU64,
}

impl DevThothStats {
    /// WebSocket handshakes completed, mux refusals (4403/4401) included.
    pub fn connections_accepted(&self) -> u64 {
        self.connections_accepted.load(Ordering::SeqCst)
    }
    /// Handshakes refused: legacy ones with HTTP 403 (busy, `Origin`,
    /// token), mux ones closed right after the upgrade (4403, 4401).
    pub fn connections_refused(&self) -> u64 {
        self.connections_refused.load(Ordering::SeqCst)
    }
    /// Sockets open right now (refused mux ones count until they are closed).
    pub fn connections_open(&self) -> u64 {
        self.connections_open.load(Ordering::SeqCst)
    }
    /// Sockets that selected `thoth.mux.v1`.
    pub fn mux_connections(&self) -> u64 {
        self.mux_connections.load(Ordering::SeqCst)
    }
    /// Legacy streams served (not counting 403 refusals).
    pub fn legacy_streams(&self) -> u64 {
        self.legacy_streams.load(Ordering::SeqCst)
    }
    /// Accepted `session.start`s.
    pub fn mux_sessions_started(&self) -> u64 {
        self.mux_sessions_started.load(Ordering::SeqCst)
    }
    /// Sessions finished with `session.done`.
    pub fn sessions_done(&self) -> u64 {
        self.sessions_done.load(Ordering::SeqCst)
    }
    /// Sessions discarded by `session.cancel`.
    pub fn sessions_cancelled(&self) -> u64 {
        self.sessions_cancelled.load(Ordering::SeqCst)
    }
    /// Mux sessions ended for any reason: done, cancel, a per-session error,
    /// or their socket closing.
    pub fn sessions_ended(&self) -> u64 {
        self.sessions_ended.load(Ordering::SeqCst)
    }
    /// Audio payload bytes received (mux: without the 16-byte session id).
    pub fn audio_bytes_received(&self) -> u64 {
        self.audio_bytes_received.load(Ordering::SeqCst)
    }
    /// Final results sent (mux `is_final: true` and legacy `{"transcription"}`).
    pub fn finals_sent(&self) -> u64 {
        self.finals_sent.load(Ordering::SeqCst)
    }
    /// Mux interim (`is_final: false`) results sent.
    pub fn interims_sent(&self) -> u64 {
        self.interims_sent.load(Ordering::SeqCst)
    }
    /// Mux error messages sent (legacy thoth sends none).
    pub fn errors_sent(&self) -> u64 {
        self.errors_sent.load(Ordering::SeqCst)
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::SeqCst);
    }
}

/// Close this socket at once, without a close frame: what a crashed thoth
/// looks like.
#[derive(Message)]
#[rtype(result = "()")]
struct DropAbruptly;

/// Send a session-less `{"type":"error","code","message"}` on a mux socket,
/// then close it.
#[derive(Message)]
#[rtype(result = "()")]
struct SendSocketError {
    code: String,
}

/// How the test hooks reach one live (mux or legacy) socket.
struct ConnectionControl {
    drop_abruptly: Recipient<DropAbruptly>,
    /// Only mux sockets have a session-less error message.
    socket_error: Option<Recipient<SendSocketError>>,
}

/// State shared by the server's connections and the [`DevThoth`] handle.
struct Shared {
    opts: DevThothOptions,
    stats: Arc<DevThothStats>,
    connections: Mutex<HashMap<u64, ConnectionControl>>,
    /// Today's thoth has one process-wide buffer: one legacy stream at a time.
    legacy_stream_busy: AtomicBool,
    /// Normalized ([`normalize_origin`]) origins that are not refused.
    allowed_origins: RwLock<Vec<String>>,
    next_connection_id: AtomicU64,
}

impl Shared {
    fn register(&self, control: ConnectionControl) -> u64 {
        let id = self.next_connection_id.fetch_add(1, Ordering::SeqCst);
        self.connections_lock().insert(id, control);
        id
    }

    fn unregister(&self, id: u64) {
        self.connections_lock().remove(&id);
    }

    /// Whether a handshake with this `Origin` header value is served.
    fn origin_allowed(&self, origin: &[u8]) -> bool {
        let Ok(origin) = std::str::from_utf8(origin) else {
            return false;
        };
        let origin = normalize_origin(origin);
        self.allowed_origins
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&origin)
    }

    /// Whether the handshake carries an `Origin` that is not allowed.
    fn origin_refused(&self, req: &HttpRequest) -> bool {
        req.headers()
            .get(header::ORIGIN)
            .is_some_and(|origin| !self.origin_allowed(origin.as_bytes()))
    }

    /// Whether the handshake's `x-thoth-token` is right (or none is required).
    fn token_accepted(&self, req: &HttpRequest) -> bool {
        match &self.opts.stream_token {
            Some(expected) => {
                req.headers().get(TOKEN_HEADER).map(|v| v.as_bytes()) == Some(expected.as_bytes())
            }
            None => true,
        }
    }

    fn connections_lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, ConnectionControl>> {
        // The map stays consistent even if a holder panicked: recover it.
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every socket actor calls this from `started`.
    fn connection_opened(&self) {
        DevThothStats::add(&self.stats.connections_accepted, 1);
        DevThothStats::add(&self.stats.connections_open, 1);
    }

    /// Every socket actor calls this from `stopped`.
    fn connection_closed(&self) {
        self.stats.connections_open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running dev thoth. Dropping it stops it too.
pub struct DevThoth {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl DevThoth {
    /// Starts the server on its own thread and actix `System` (so it can be
    /// stopped and restarted independently of the caller's System, and so
    /// stopping it really drops sockets). Returns once it listens.
    pub fn start(opts: DevThothOptions) -> std::io::Result<DevThoth> {
        let allowed_origins = opts
            .allowed_origins
            .iter()
            .map(|o| normalize_origin(o))
            .collect();
        let shared = Arc::new(Shared {
            opts,
            allowed_origins: RwLock::new(allowed_origins),
            stats: Arc::new(DevThothStats::default()),
            connections: Mutex::new(HashMap::new()),
            legacy_stream_busy: AtomicBool::new(false),
            next_connection_id: AtomicU64::new(0),
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let server_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("dev-thoth".to_owned())
            .spawn(move || serve(server_shared, ready_tx))?;
        let ready = ready_rx
            .recv()
            .map_err(|_| std::io::Error::other("dev thoth thread ended before it was listening"));
        match ready.and_then(|started| started) {
            Ok((addr, server)) => {
                log::info!("dev thoth listening on ws://{addr}{STREAM_PATH}");
                Ok(DevThoth {
                    addr,
                    shared,
                    server,
                    thread: Some(thread),
                })
            }
            Err(err) => {
                let _ = thread.join();
                Err(err)
            }
        }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://ADDR/stream-audio`.
    pub fn url(&self) -> String {
        format!("ws://{}{}", self.addr, STREAM_PATH)
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<DevThothStats> {
        Arc::clone(&self.shared.stats)
    }

    /// The options it runs with.
    pub fn options(&self) -> &DevThothOptions {
        &self.shared.opts
    }

    /// Serves handshakes from these origins too, from now on: for a caller
    /// that learns its own address only after the dev thoth started (the
    /// demo's gateway may bind port 0).
    pub fn allow_origins<I, S>(&self, origins: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut allowed = self
            .shared
            .allowed_origins
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for origin in origins {
            let origin = normalize_origin(origin.as_ref());
            if !allowed.contains(&origin) {
                allowed.push(origin);
            }
        }
    }

    /// Closes every open mux and legacy socket abruptly, without a close frame
    /// (the TCP connection just ends). The server keeps accepting new
    /// connections. Asynchronous: wait on
    /// [`DevThothStats::connections_open`] if you need the sockets gone.
    pub fn drop_all_connections(&self) {
        for control in self.shared.connections_lock().values() {
            control.drop_abruptly.do_send(DropAbruptly);
        }
    }

    /// Sends `{"type":"error","code":CODE,"message":…}` (no `session_id`:
    /// "thoth is about to close the socket") on every mux socket, then closes
    /// each with 1011. Legacy sockets are left alone. Asynchronous, like
    /// [`DevThoth::drop_all_connections`].
    pub fn send_socket_error_and_close(&self, code: &str) {
        for control in self.shared.connections_lock().values() {
            if let Some(socket_error) = &control.socket_error {
                socket_error.do_send(SendSocketError {
                    code: code.to_owned(),
                });
            }
        }
    }

    /// Stops the server, drops every socket abruptly (no close frame) and
    /// joins its thread. The port is free when this returns.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(thread) = self.thread.take() {
            // A forced stop does not wait for busy workers, so live sockets
            // are dropped first, then (bounded) waited for.
            self.drop_all_connections();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while self.shared.stats.connections_open() > 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            // `stop` sends its command before the returned future is polled;
            // the server future on the dev thoth's thread then completes,
            // dropping the workers and with them every connection.
            drop(self.server.stop(false));
            if thread.join().is_err() {
                log::error!("dev thoth thread panicked");
            }
            log::info!("dev thoth on {} stopped", self.addr);
        }
    }
}

impl Drop for DevThoth {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for DevThoth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevThoth")
            .field("addr", &self.addr)
            .field("mux", &self.shared.opts.mux)
            .finish_non_exhaustive()
    }
}

type Ready = std::io::Result<(SocketAddr, ServerHandle)>;

/// The dev thoth thread: binds, reports readiness, serves until stopped.
fn serve(shared: Arc<Shared>, ready: mpsc::Sender<Ready>) {
    let bind = shared.opts.bind;
    let data = web::Data::from(shared);
    actix_rt::System::new().block_on(async move {
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route(STREAM_PATH, web::get().to(stream_audio))
                .default_service(web::to(HttpResponse::NotFound))
        })
        // One worker is plenty for tests and keeps the thread count low.
        .workers(1)
        // The caller owns Ctrl-C; stop() is the only way down.
        .disable_signals()
        .shutdown_timeout(0)
        .bind(bind);
        let server = match server {
            Ok(server) => server,
            Err(err) => {
                let _ = ready.send(Err(err));
                return;
            }
        };
        let Some(addr) = server.addrs().first().copied() else {
            let _ = ready.send(Err(std::io::Error::other("dev thoth bound no address")));
            return;
        };
        let server = server.run();
        if ready.send(Ok((addr, server.handle()))).is_err() {
            return;
        }
        if let Err(err) = server.await {
            log::error!("dev thoth server failed: {err}");
        }
    });
}

/// `GET /stream-audio`: decide what this connection is, then upgrade.
async fn stream_audio(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> Result<HttpResponse, actix_web::Error> {
    let shared = shared.into_inner();
    let protocols: &[&str] = if shared.opts.mux {
        &[MUX_SUBPROTOCOL]
    } else {
        &[]
    };

    if shared.opts.mux && offers_mux(&req) {
        // The mux protocol (a thoth that does not exist yet) upgrades first
        // and refuses with a close code a browser could read.
        let refusal = mux_refusal(&req, &shared);
        if let Some((close_code, description)) = refusal {
            let socket = refused::RefusedSocket::new(shared, close_code, description);
            return upgrade(socket, &req, payload, protocols);
        }
        return upgrade(mux::MuxSocket::new(shared), &req, payload, protocols);
    }
    // Today's thoth refuses before accepting the WebSocket: under uvicorn
    // every refusal is an HTTP 403 on the handshake (REAL-PEERS.md 3).
    if let Some(reason) = legacy::handshake_refusal(&req, &shared) {
        return Ok(legacy::refuse(&shared, reason));
    }
    match legacy::LegacySlot::claim(&shared) {
        Some(slot) => upgrade(
            legacy::LegacySocket::new(shared, slot),
            &req,
            payload,
            protocols,
        ),
        None => Ok(legacy::refuse(&shared, legacy::Refusal::Busy)),
    }
}

/// Why a mux handshake is refused (close code, description), if it is.
fn mux_refusal(req: &HttpRequest, shared: &Shared) -> Option<(u16, &'static str)> {
    if shared.origin_refused(req) {
        return Some((close_code::FORBIDDEN_ORIGIN, "browser origins are refused"));
    }
    if !shared.token_accepted(req) {
        return Some((close_code::BAD_TOKEN, "invalid stream token"));
    }
    None
}

/// An origin as browsers send it: lowercase, no trailing slash.
fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Whether the client's `Sec-WebSocket-Protocol` lists `thoth.mux.v1` (the
/// same test actix's handshake uses to select it).
fn offers_mux(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|offered| offered.split(',').any(|p| p.trim() == MUX_SUBPROTOCOL))
}

fn upgrade<A>(
    socket: A,
    req: &HttpRequest,
    payload: web::Payload,
    protocols: &[&str],
) -> Result<HttpResponse, actix_web::Error>
where
    A: Actor<Context = ws::WebsocketContext<A>>
        + StreamHandler<Result<ws::Message, ws::ProtocolError>>,
{
    ws::WsResponseBuilder::new(socket, req, payload)
        .frame_size(MAX_FRAME_BYTES)
        .protocols(protocols)
        .start()
}

/// `chronus-gateway dev-thoth [--bind ADDR] [--legacy-only] [--token TOKEN]
/// [--window-secs SECS] [--no-interim] [--allow-origin ORIGIN]…`: runs a dev
/// thoth until Ctrl-C.
/// `args` are the arguments after `dev-thoth`.
pub fn run_cli(args: &[String]) -> std::io::Result<()> {
    let Some(opts) = parse_cli_args(args)? else {
        println!("{CLI_USAGE}");
        return Ok(());
    };
    let thoth = DevThoth::start(opts)?;
    let mode = if thoth.options().mux {
        "mux v1 and legacy"
    } else {
        "legacy only"
    };
    println!("dev thoth listening on {} ({mode})", thoth.url());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(tokio::signal::ctrl_c())?;
    println!("dev thoth stopping");
    thoth.stop();
    Ok(())
}

const CLI_USAGE: &str = "usage: chronus-gateway dev-thoth [--bind ADDR] [--legacy-only] \
[--token TOKEN] [--window-secs SECS] [--no-interim] [--allow-origin ORIGIN]...\n\
  --bind ADDR         listen address (default 127.0.0.1:8765)\n\
  --legacy-only       never select thoth.mux.v1 (today's thoth)\n\
  --token TOKEN       require header x-thoth-token: TOKEN (else mux: close\n\
                      4401; legacy: HTTP 403)\n\
  --window-secs SECS  legacy: seconds of audio per transcription (default 3)\n\
  --no-interim        mux: send no interim results\n\
  --allow-origin ORIGIN\n\
                      serve browsers from ORIGIN (e.g. http://localhost:5173)\n\
                      instead of refusing them; repeatable";

/// Parses the `dev-thoth` arguments; `Ok(None)` for `--help`.
fn parse_cli_args(args: &[String]) -> std::io::Result<Option<DevThothOptions>> {
    let invalid = |message: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, message);
    let mut opts = DevThothOptions {
        bind: DEFAULT_CLI_BIND
            .parse()
            .expect("DEFAULT_CLI_BIND is a valid socket address"),
        ..DevThothOptions::default()
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .cloned()
                .ok_or_else(|| invalid(format!("{name} needs a value\n{CLI_USAGE}")))
        };
        match arg.as_str() {
            "--bind" => {
                let addr = value("--bind")?;
                opts.bind = addr
                    .parse()
                    .map_err(|err| invalid(format!("--bind {addr}: {err}")))?;
            }
            "--legacy-only" => opts.mux = false,
            "--token" => opts.stream_token = Some(value("--token")?),
            "--window-secs" => {
                let secs = value("--window-secs")?;
                opts.legacy_window_secs = secs
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .ok_or_else(|| {
                        invalid(format!("--window-secs {secs}: not a positive number"))
                    })?;
            }
            "--no-interim" => opts.interim_results = false,
            "--allow-origin" => opts.allowed_origins.push(value("--allow-origin")?),
            "-h" | "--help" => return Ok(None),
            other => return Err(invalid(format!("unknown argument {other:?}\n{CLI_USAGE}"))),
        }
    }
    Ok(Some(opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn cli_defaults_to_mux_on_the_fixed_port() {
        let opts = parse_cli_args(&[]).unwrap().unwrap();
        assert_eq!(opts.bind, DEFAULT_CLI_BIND.parse().unwrap());
        assert!(opts.mux);
        assert!(opts.stream_token.is_none());
        assert!(opts.interim_results);
    }

    #[test]
    fn cli_reads_every_flag() {
        let opts = parse_cli_args(&args(&[
            "--bind",
            "0.0.0.0:9000",
            "--legacy-only",
            "--token",
            "s3cret",
            "--window-secs",
            "3",
            "--no-interim",
            "--allow-origin",
            "http://localhost:5173",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(opts.bind, "0.0.0.0:9000".parse().unwrap());
        assert!(!opts.mux);
        assert_eq!(opts.stream_token.as_deref(), Some("s3cret"));
        assert_eq!(opts.legacy_window_samples(), 48_000);
        assert!(!opts.interim_results);
        assert_eq!(opts.allowed_origins, vec!["http://localhost:5173"]);
    }

    #[test]
    fn cli_refuses_bad_input() {
        assert!(parse_cli_args(&args(&["--bind"])).is_err());
        assert!(parse_cli_args(&args(&["--bind", "nowhere"])).is_err());
        assert!(parse_cli_args(&args(&["--window-secs", "0"])).is_err());
        assert!(parse_cli_args(&args(&["--frobnicate"])).is_err());
        assert!(parse_cli_args(&args(&["--help"])).unwrap().is_none());
    }

    #[test]
    fn legacy_window_is_at_least_one_sample() {
        let opts = DevThothOptions {
            legacy_window_secs: 0.0,
            ..DevThothOptions::default()
        };
        assert_eq!(opts.legacy_window_samples(), 1);
        assert_eq!(DevThothOptions::default().legacy_window_samples(), 48_000);
    }
}
