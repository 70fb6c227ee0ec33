//! The endpoint's socket, for either protocol: connecting (through
//! `upstream/connect.rs`, the one connect path), the writer task and reader
//! stream it is split into, heartbeat, close, loss, and the frames that
//! arrive on it (text goes to the protocol's `on_text`).

use std::time::{Duration, Instant};

use actix::prelude::*;
use awc::http::header::{HeaderName, HeaderValue};
use awc::ws::{CloseCode, CloseReason, Frame, Message as WsMessage};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::{stream, StreamExt};

use super::actor::ThothUpstreamActor;
use super::endpoint::EndpointProtocol;
use super::monitor::{self, LinkState};
use crate::error::{ErrorCode, GatewayError};
use crate::metrics;
use crate::upstream::connect::{self, ConnectFailure, WsTarget};
use crate::upstream::writer::{SendFailure, SocketWriter, WriterPolicy};

/// The gateway pings thoth this often; two intervals without a pong mean the
/// socket is dead.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);
const MISSED_PONGS_ALLOWED: u32 = 2;

/// A closing socket's writer must be done by then, or it is dropped.
const WRITER_CLOSE_DEADLINE: Duration = Duration::from_secs(5);

/// An open socket: a bounded writer task and a reader stream on this actor.
pub struct OpenSocket {
    generation: u64,
    /// Queues frames for the writer task; sessions' routes hold clones.
    writer: SocketWriter,
    reader: SpawnHandle,
    /// Owns the socket's write half; aborted if it cannot finish closing.
    writer_task: actix_rt::task::JoinHandle<()>,
    pub(super) since: DateTime<Utc>,
    last_pong: Instant,
}

/// The endpoint's socket (named apart from [`crate::upstream::UpstreamLink`],
/// which is a session's handle on its upstream actor).
pub enum ThothSocket {
    Down,
    Connecting { generation: u64 },
    Open(OpenSocket),
}

impl ThothSocket {
    pub(super) fn state(&self) -> LinkState {
        match self {
            ThothSocket::Down => LinkState::Down,
            ThothSocket::Connecting { .. } => LinkState::Connecting,
            ThothSocket::Open(_) => LinkState::Open,
        }
    }
}

/// One item of a socket's reader stream, tagged with the socket's generation
/// so that frames of a replaced socket are ignored.
pub enum Inbound {
    Frame(u64, Result<Frame, actix_http::ws::ProtocolError>),
    Ended(u64),
}

/// The writer of socket `generation` gave thoth up (a write failed, or a
/// sender found thoth not reading).
#[derive(Message)]
#[rtype(result = "()")]
pub struct WriterFailed {
    pub generation: u64,
    pub reason: String,
}

impl<P: EndpointProtocol> ThothUpstreamActor<P> {
    /// Whether the open socket is the one of `generation`.
    pub(super) fn socket_is(&self, generation: u64) -> bool {
        matches!(&self.link, ThothSocket::Open(socket) if socket.generation == generation)
    }

    pub(super) fn set_link(&mut self, link: ThothSocket) {
        self.link = link;
        monitor::publish_link_state(&self.display_url, self.link.state());
    }

    // ---- connecting -----------------------------------------------------

    fn target(&self) -> WsTarget {
        let mut headers = Vec::new();
        if let Some(token) = &self.config.stream_token {
            match HeaderValue::from_str(token.expose()) {
                Ok(value) => headers.push((HeaderName::from_static("x-thoth-token"), value)),
                Err(_) => log::error!("THOTH_STREAM_TOKEN is not a valid header value; not sent"),
            }
        }
        WsTarget {
            url: self.config.url.clone(),
            subprotocol: P::SUBPROTOCOL,
            headers,
            // Room for the 16-byte session prefix on top of a full browser frame.
            max_frame_bytes: self.config.max_frame_bytes + 64,
            tls: self.config.tls.clone(),
        }
    }

    pub(super) fn connect(&mut self, ctx: &mut Context<Self>) {
        self.generation += 1;
        let generation = self.generation;
        self.set_link(ThothSocket::Connecting { generation });
        let target = self.target();
        let url = self.display_url.clone();
        let backoff = self.config.retry_base;
        log::info!("thoth {url}: opening upstream socket");
        let attempt = async move {
            connect::open_with_retries(&target, backoff, |attempt, failure| {
                log::warn!(
                    "thoth {url}: connection attempt {} failed: {failure}",
                    attempt + 1
                );
            })
            .await
        };
        ctx.spawn(
            attempt
                .into_actor(self)
                .map(move |result, act, ctx| act.on_connect_result(generation, result, ctx)),
        );
    }

    fn on_connect_result(
        &mut self,
        generation: u64,
        result: Result<connect::Connected, ConnectFailure>,
        ctx: &mut Context<Self>,
    ) {
        if !matches!(self.link, ThothSocket::Connecting { generation: g } if g == generation) {
            return; // superseded (e.g. every session left and the link was reset)
        }
        match result {
            Ok(connected) => P::connected(self, generation, connected, ctx),
            Err(failure) => self.on_connect_failure(failure, ctx),
        }
    }

    fn on_connect_failure(&mut self, failure: ConnectFailure, ctx: &mut Context<Self>) {
        self.last_error = Some(failure.to_string());
        self.set_link(ThothSocket::Down);
        if P::retry_connect(self, &failure, ctx) {
            return;
        }
        let error = P::connect_error(self, &failure);
        log::error!("thoth {}: giving up: {failure}", self.display_url);
        self.fail_all(error, ctx);
    }

    /// Splits the socket: a writer task drains a queue into it (batching
    /// frames per flush), the reader stream is attached to this actor.
    pub(super) fn open_socket(
        &mut self,
        generation: u64,
        framed: connect::WsFramed,
        ctx: &mut Context<Self>,
    ) {
        let (source, sink) = crate::upstream::writer::sink::split(framed);
        let actor = ctx.address();
        let queued = self.config.queued.clone();
        let (writer, writer_task) =
            SocketWriter::spawn_counted(sink, WriterPolicy::THOTH, queued, move |reason| {
                actor.do_send(WriterFailed { generation, reason })
            });
        let frames = source
            .map(move |frame| Inbound::Frame(generation, frame))
            .chain(stream::once(async move { Inbound::Ended(generation) }));
        let reader = ctx.add_stream(frames);
        self.set_link(ThothSocket::Open(OpenSocket {
            generation,
            writer,
            reader,
            writer_task,
            since: Utc::now(),
            last_pong: Instant::now(),
        }));
    }

    // ---- sending ----------------------------------------------------

    /// The open socket's writer.
    pub(super) fn writer(&self) -> Option<&SocketWriter> {
        match &self.link {
            ThothSocket::Open(socket) => Some(&socket.writer),
            _ => None,
        }
    }

    /// Queues a frame toward thoth. A queue over its bound means thoth stopped
    /// reading: the socket is given up rather than grown without limit.
    pub(super) fn send(&mut self, message: WsMessage, ctx: &mut Context<Self>) {
        let Some(writer) = self.writer() else {
            return;
        };
        match writer.send(message) {
            Ok(()) => {}
            // The writer told this actor already; the report arrives next.
            Err(SendFailure::Stalled) => {}
            Err(SendFailure::Closed) => self.link_lost("writer stopped", ctx),
        }
    }

    pub(super) fn close_link(&mut self, ctx: &mut Context<Self>, code: CloseCode) {
        if let ThothSocket::Open(socket) = std::mem::replace(&mut self.link, ThothSocket::Down) {
            ctx.cancel_future(socket.reader);
            // The writer flushes what is queued, sends the close frame and
            // ends. A peer that stopped reading would keep it (and its queue)
            // forever, so it gets a deadline.
            socket.writer.close(CloseReason::from(code));
            let writer_task = socket.writer_task;
            actix_rt::spawn(async move {
                actix_rt::time::sleep(WRITER_CLOSE_DEADLINE).await;
                writer_task.abort();
            });
        }
        self.generation += 1;
        self.set_link(ThothSocket::Down);
    }

    /// The socket died under us (closed, errored, stalled, no pongs): the
    /// protocol decides what becomes of its sessions.
    pub(super) fn link_lost(&mut self, reason: &str, ctx: &mut Context<Self>) {
        if matches!(self.link, ThothSocket::Down) {
            return;
        }
        log::warn!(
            "thoth {}: upstream socket lost: {reason} ({} session(s) affected)",
            self.display_url,
            self.sessions.len()
        );
        self.last_error = Some(reason.to_string());
        self.lost_unexpectedly = true;
        self.close_link(ctx, CloseCode::Away);
        P::socket_lost(self, ctx);
    }

    // ---- receiving ------------------------------------------------------

    fn on_close(&mut self, reason: Option<CloseReason>, ctx: &mut Context<Self>) {
        let code = reason.as_ref().map(|r| u16::from(r.code));
        let error = match code {
            Some(1013) => Some(ErrorCode::ThothBusy),
            Some(4401) | Some(4403) => Some(ErrorCode::AuthFailed),
            _ => None,
        };
        P::closed_with(self, code);
        match error {
            Some(code_for_sessions) => {
                let why = format!("thoth closed the socket with {}", code.unwrap_or_default());
                log::warn!("thoth {}: {why}", self.display_url);
                self.last_error = Some(why);
                self.close_link(ctx, CloseCode::Normal);
                self.fail_all(GatewayError::new(code_for_sessions), ctx);
            }
            None => self.link_lost(
                &format!(
                    "thoth closed the socket ({})",
                    code.map_or("no code".into(), |c| c.to_string())
                ),
                ctx,
            ),
        }
    }

    pub(super) fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let ThothSocket::Open(socket) = &self.link else {
            return;
        };
        if socket.last_pong.elapsed() > PING_INTERVAL * MISSED_PONGS_ALLOWED + PING_INTERVAL / 2 {
            self.link_lost("two pings went unanswered", ctx);
            return;
        }
        self.send(WsMessage::Ping(Bytes::new()), ctx);
    }
}

impl<P: EndpointProtocol> StreamHandler<Inbound> for ThothUpstreamActor<P> {
    fn handle(&mut self, item: Inbound, ctx: &mut Context<Self>) {
        let current = match &self.link {
            ThothSocket::Open(socket) => socket.generation,
            _ => return,
        };
        match item {
            Inbound::Frame(generation, _) | Inbound::Ended(generation) if generation != current => {
            }
            Inbound::Frame(_, Ok(frame)) => match frame {
                Frame::Text(text) => {
                    metrics::UPSTREAM_TO_GATEWAY.record(text.len());
                    match std::str::from_utf8(&text) {
                        Ok(text) => P::on_text(self, text, ctx),
                        Err(_) => log::warn!(
                            "thoth {}: skipping a non-UTF-8 text frame",
                            self.display_url
                        ),
                    }
                }
                Frame::Ping(payload) => self.send(WsMessage::Pong(payload), ctx),
                Frame::Pong(_) => {
                    if let ThothSocket::Open(socket) = &mut self.link {
                        socket.last_pong = Instant::now();
                    }
                }
                Frame::Close(reason) => self.on_close(reason, ctx),
                Frame::Binary(_) | Frame::Continuation(_) => {
                    log::debug!("thoth {}: skipping a binary frame", self.display_url)
                }
            },
            Inbound::Frame(_, Err(e)) => self.link_lost(&format!("protocol error: {e}"), ctx),
            Inbound::Ended(_) => self.link_lost("socket closed without a close frame", ctx),
        }
    }

    fn finished(&mut self, _ctx: &mut Context<Self>) {
        // A socket's stream ending is handled through `Inbound::Ended`; the
        // actor outlives its sockets.
    }
}

impl<P: EndpointProtocol> Handler<WriterFailed> for ThothUpstreamActor<P> {
    type Result = ();

    fn handle(&mut self, msg: WriterFailed, ctx: &mut Context<Self>) {
        if matches!(&self.link, ThothSocket::Open(socket) if socket.generation == msg.generation) {
            self.link_lost(&msg.reason, ctx);
        }
    }
}
