//! The dev thoth's server: its thread and actix `System`, the state its
//! connections share, and the handshake on [`STREAM_PATH`] that decides
//! whether a connection is mux, legacy or refused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError, RwLock};

use actix::{Actor, Message, Recipient, StreamHandler};
use actix_web::dev::ServerHandle;
use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use actix_web_actors::ws;

use super::{
    close_code, legacy, mux, refused, DevThothOptions, DevThothStats, MAX_FRAME_BYTES,
    MUX_SUBPROTOCOL, STREAM_PATH, TOKEN_HEADER,
};

/// Close this socket at once, without a close frame: what a crashed thoth
/// looks like.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct DropAbruptly;

/// Send a session-less `{"type":"error","code","message"}` on a mux socket,
/// then close it.
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct SendSocketError {
    pub(super) code: String,
}

/// How the test hooks reach one live (mux or legacy) socket.
pub(super) struct ConnectionControl {
    pub(super) drop_abruptly: Recipient<DropAbruptly>,
    /// Only mux sockets have a session-less error message.
    pub(super) socket_error: Option<Recipient<SendSocketError>>,
}

/// State shared by the server's connections and the [`DevThoth`] handle.
pub(super) struct Shared {
    pub(super) opts: DevThothOptions,
    pub(super) stats: Arc<DevThothStats>,
    pub(super) connections: Mutex<HashMap<u64, ConnectionControl>>,
    /// Today's thoth has one process-wide buffer: one legacy stream at a time.
    pub(super) legacy_stream_busy: AtomicBool,
    /// Normalized ([`normalize_origin`]) origins that are not refused.
    pub(super) allowed_origins: RwLock<Vec<String>>,
    pub(super) next_connection_id: AtomicU64,
}

impl Shared {
    pub(super) fn register(&self, control: ConnectionControl) -> u64 {
        let id = self.next_connection_id.fetch_add(1, Ordering::SeqCst);
        self.connections_lock().insert(id, control);
        id
    }

    pub(super) fn unregister(&self, id: u64) {
        self.connections_lock().remove(&id);
    }

    /// Whether a handshake with this `Origin` header value is served.
    pub(super) fn origin_allowed(&self, origin: &[u8]) -> bool {
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
    pub(super) fn origin_refused(&self, req: &HttpRequest) -> bool {
        req.headers()
            .get(header::ORIGIN)
            .is_some_and(|origin| !self.origin_allowed(origin.as_bytes()))
    }

    /// Whether the handshake's `x-thoth-token` is right (or none is required).
    pub(super) fn token_accepted(&self, req: &HttpRequest) -> bool {
        match &self.opts.stream_token {
            Some(expected) => {
                req.headers().get(TOKEN_HEADER).map(|v| v.as_bytes()) == Some(expected.as_bytes())
            }
            None => true,
        }
    }

    pub(super) fn connections_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, ConnectionControl>> {
        // The map stays consistent even if a holder panicked: recover it.
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every socket actor calls this from `started`.
    pub(super) fn connection_opened(&self) {
        DevThothStats::add(&self.stats.connections_accepted, 1);
        DevThothStats::add(&self.stats.connections_open, 1);
    }

    /// Every socket actor calls this from `stopped`.
    pub(super) fn connection_closed(&self) {
        self.stats.connections_open.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) type Ready = std::io::Result<(SocketAddr, ServerHandle)>;

/// The dev thoth thread: binds, reports readiness, serves until stopped.
pub(super) fn serve(shared: Arc<Shared>, ready: mpsc::Sender<Ready>) {
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
pub(super) fn mux_refusal(req: &HttpRequest, shared: &Shared) -> Option<(u16, &'static str)> {
    if shared.origin_refused(req) {
        return Some((close_code::FORBIDDEN_ORIGIN, "browser origins are refused"));
    }
    if !shared.token_accepted(req) {
        return Some((close_code::BAD_TOKEN, "invalid stream token"));
    }
    None
}

/// An origin as browsers send it: lowercase, no trailing slash.
pub(super) fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// Whether the client's `Sec-WebSocket-Protocol` lists `thoth.mux.v1` (the
/// same test actix's handshake uses to select it).
pub(super) fn offers_mux(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|offered| offered.split(',').any(|p| p.trim() == MUX_SUBPROTOCOL))
}

pub(super) fn upgrade<A>(
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
