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
//!
//! Files: this one holds the options and the [`DevThoth`] handle;
//! `server.rs` the thread, shared state and handshake; `mux.rs` +
//! `mux_session.rs` and `legacy.rs` the two protocols; `refused.rs`,
//! `frames.rs`, `describe.rs`, `stats.rs`, `cli.rs` (`dev-thoth` command).

mod cli;
mod describe;
mod frames;
mod legacy;
mod mux;
mod mux_session;
mod refused;
mod server;
mod stats;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{mpsc, Arc, Mutex, PoisonError, RwLock};
use std::thread::JoinHandle;

use actix_web::dev::ServerHandle;

pub use cli::run_cli;
pub use describe::{describe_audio, Encoding, S16_FULL_SCALE};
pub use mux::error_code;
use server::{normalize_origin, serve, ConnectionControl, DropAbruptly, SendSocketError, Shared};
pub use stats::DevThothStats;

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

#[cfg(test)]
mod tests {
    use super::*;

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
