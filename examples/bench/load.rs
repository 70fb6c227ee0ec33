//! The load generator: browser sessions through the gateway (or the lean
//! relay), or the same load straight to the fake thoth (`direct.rs`).
//!
//! Every run follows one timeline: sessions open along a ramp, stream, and the
//! measured window starts after the ramp and a warm-up. Only frames sent
//! inside the window count toward rates and latencies; every frame, inside
//! the window or not, is checked against its ack.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::audio::{find_ack, Ack};
use crate::direct::direct;
use crate::profile::Profile;
use crate::refusal::{completes_refusal, is_refusal_envelope, AfterEnvelope, REFUSAL_CODE};
pub use crate::track::LoadResult;
use crate::track::{micros, Track};

/// A connection, handshake included, must succeed within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// After the window, sessions have this long to receive their last acks and `done`.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// A refused session answers the gateway's close within this, then goes.
const REFUSED_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Error texts kept for the report, at most, and at most this many per session.
pub const MAX_ERROR_SAMPLES: usize = 24;
pub const MAX_ERROR_SAMPLES_PER_SESSION: usize = 2;
/// Sparse sessions send one frame this often.
const SPARSE_INTERVAL: Duration = Duration::from_secs(1);
/// Latency histogram range: 1 µs .. 120 s, 3 significant digits.
pub const HIST_MAX_US: u64 = 120_000_000;

pub type Ws = WebSocketStream<TcpStream>;

/// What the sessions do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One frame per profile interval (20 ms, or chronus's 256 ms).
    Realtime,
    /// As fast as the sockets take it (bounded in-flight window per session).
    Flood,
    /// One frame per second per session: many sessions held.
    Sparse,
    /// New authenticated sessions per second, until `ready`.
    Connect,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Realtime => "realtime",
            Mode::Flood => "flood",
            Mode::Sparse => "sparse",
            Mode::Connect => "connect",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        [Mode::Realtime, Mode::Flood, Mode::Sparse, Mode::Connect]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// Where the load goes.
#[derive(Clone)]
pub enum Target {
    /// Browser sessions to the gateway, one token per user.
    Gateway {
        addr: SocketAddr,
        tokens: Arc<Vec<String>>,
    },
    /// Mux sessions straight to the fake thoth, all on one socket.
    Direct { addr: SocketAddr },
}

/// The shape of one run.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub mode: Mode,
    /// Frame size and pace, and how thoth answers.
    pub profile: Profile,
    pub sessions: usize,
    pub seconds: f64,
    pub ramp: Duration,
    pub warmup: Duration,
    pub client_threads: usize,
    /// Flood: frames in flight per session.
    pub window: usize,
    /// Connect: connections being opened at once.
    pub concurrency: usize,
    /// An overload figure (`--overload`): sessions refused at capacity
    /// (`refusal.rs`) are expected and counted as `refused`, not as failures.
    pub overload: bool,
}

impl LoadPlan {
    /// How often a paced session sends a frame.
    pub fn interval(&self) -> Duration {
        match self.mode {
            Mode::Sparse => SPARSE_INTERVAL,
            _ => self.profile.frame_interval(),
        }
    }
}

/// The instants of a run, shared by every thread.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    pub t0: std::time::Instant,
    pub window_start: std::time::Instant,
    pub window_end: std::time::Instant,
}

impl Timeline {
    pub fn new(plan: &LoadPlan) -> Timeline {
        let t0 = std::time::Instant::now() + Duration::from_millis(100);
        let window_start = t0 + plan.ramp + plan.warmup;
        let window_end = window_start + Duration::from_secs_f64(plan.seconds);
        Timeline {
            t0,
            window_start,
            window_end,
        }
    }

    /// When session `i` of `n` opens.
    pub fn start_of(&self, plan: &LoadPlan, i: usize) -> Instant {
        let offset = plan.ramp.mul_f64(i as f64 / plan.sessions.max(1) as f64);
        Instant::from_std(self.t0 + offset)
    }

    pub fn window_start(&self) -> Instant {
        Instant::from_std(self.window_start)
    }

    pub fn window_end(&self) -> Instant {
        Instant::from_std(self.window_end)
    }
}

pub fn client_config() -> WebSocketConfig {
    // Small read buffers: 10,000 held sessions must not cost the load
    // generator a gigabyte.
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20))
}

/// Runs the plan on `plan.client_threads` threads (one runtime each) and
/// merges what they measured. Direct load uses one socket, so one thread.
pub fn run(plan: &LoadPlan, target: &Target, tl: Timeline) -> LoadResult {
    let threads = match target {
        Target::Direct { .. } => 1,
        Target::Gateway { .. } => plan.client_threads.max(1),
    };
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (plan, target) = (plan.clone(), target.clone());
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("load runtime");
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&runtime, run_thread(plan, target, tl, t, threads))
                })
                .expect("spawn load thread")
        })
        .collect();
    let mut total = LoadResult::default();
    for h in handles {
        match h.join() {
            Ok(r) => total.merge(r),
            Err(_) => total.error("a load thread panicked".into()),
        }
    }
    total
}

async fn run_thread(
    plan: LoadPlan,
    target: Target,
    tl: Timeline,
    thread: usize,
    threads: usize,
) -> LoadResult {
    let result = Rc::new(RefCell::new(LoadResult::default()));
    match (&target, plan.mode) {
        (Target::Direct { addr }, Mode::Connect) => {
            let _ = addr; // connect rate is a gateway figure only
        }
        (Target::Direct { addr }, _) => direct(*addr, &plan, tl, result.clone()).await,
        (Target::Gateway { addr, tokens }, Mode::Connect) => {
            let workers: Vec<_> = (thread..plan.concurrency)
                .step_by(threads)
                .map(|w| {
                    let (tokens, result) = (tokens.clone(), result.clone());
                    let addr = *addr;
                    tokio::task::spawn_local(connect_worker(addr, tokens, w, tl, result))
                })
                .collect();
            for w in workers {
                let _ = w.await;
            }
        }
        (Target::Gateway { addr, tokens }, _) => {
            let sessions: Vec<_> = (thread..plan.sessions)
                .step_by(threads)
                .map(|i| {
                    let token = tokens[i % tokens.len()].clone();
                    let (plan, result) = (plan.clone(), result.clone());
                    let addr = *addr;
                    tokio::task::spawn_local(async move {
                        gateway_session(addr, token, i, &plan, tl, result).await
                    })
                })
                .collect();
            for s in sessions {
                let _ = s.await;
            }
        }
    }
    Rc::try_unwrap(result)
        .map(RefCell::into_inner)
        .unwrap_or_default()
}

// ---- through the gateway --------------------------------------------------

async fn open_browser_session(addr: SocketAddr, token: &str) -> Result<Ws, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let url = format!("ws://{addr}/api/audio/transcribe?token={token}");
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(client_config()))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

/// What a text frame from the gateway means to a session.
enum Event {
    Ack(Ack),
    Ready,
    Done,
    Error(String),
    Other,
}

fn gateway_event(text: &str) -> Event {
    // `done` carries the final results' texts, which are acks too: not one.
    if text.starts_with(r#"{"type":"done""#) {
        return Event::Done;
    }
    if let Some(ack) = find_ack(text, r#""data":""#) {
        return Event::Ack(ack);
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
        return Event::Error(format!("not JSON: {text:.120}"));
    };
    match value["type"].as_str() {
        Some("ready") => Event::Ready,
        Some("done") => Event::Done,
        Some("error") => Event::Error(format!("error event {}", value["code"])),
        _ => Event::Other,
    }
}

/// How a session's opening ended, short of a failure.
enum Opening {
    Ready,
    /// Refused at capacity (`refusal.rs`), this long after its connect started.
    Refused(Duration),
}

/// Waits for `ready`; audio is never sent before it (the browser may, but
/// then the first latencies would measure the gateway's pre-ready buffer).
/// A refusal at capacity is told apart from every other error here; whether
/// it is a failure is the caller's to decide.
async fn wait_ready(ws: &mut Ws, started: Instant, deadline: Instant) -> Result<Opening, String> {
    let mut first_text = true;
    loop {
        match timeout_at(deadline, ws.next()).await {
            Err(_) => return Err("no ready in time".into()),
            Ok(Some(Ok(Message::Text(t)))) => {
                if first_text && is_refusal_envelope(t.as_str()) {
                    let refused_after = started.elapsed();
                    completes_refusal(after_envelope(ws, deadline).await)?;
                    return Ok(Opening::Refused(refused_after));
                }
                first_text = false;
                match gateway_event(t.as_str()) {
                    Event::Ready => return Ok(Opening::Ready),
                    Event::Error(e) => return Err(e),
                    _ => {}
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(format!("closed before ready: {e}")),
            Ok(None) => return Err("closed before ready".into()),
        }
    }
}

/// The frame that follows a refusal's envelope (pings and pongs aside).
async fn after_envelope(ws: &mut Ws, deadline: Instant) -> AfterEnvelope {
    loop {
        return match timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => {
                AfterEnvelope::Close(frame.map(|f| u16::from(f.code)))
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(_))) => AfterEnvelope::Data,
            Ok(Some(Err(_)) | None) | Err(_) => AfterEnvelope::Ended,
        };
    }
}

async fn gateway_session(
    addr: SocketAddr,
    token: String,
    index: usize,
    plan: &LoadPlan,
    tl: Timeline,
    result: Rc<RefCell<LoadResult>>,
) {
    sleep_until(tl.start_of(plan, index)).await;
    let started = Instant::now();
    let mut ws = match timeout(CONNECT_TIMEOUT, open_browser_session(addr, &token)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            let mut r = result.borrow_mut();
            r.failures.connect += 1;
            return r.error(format!("session {index}: {e}"));
        }
        Err(_) => {
            let mut r = result.borrow_mut();
            r.failures.connect += 1;
            return r.error(format!("session {index}: connect timed out"));
        }
    };
    match wait_ready(&mut ws, started, started + CONNECT_TIMEOUT).await {
        Ok(Opening::Ready) => {}
        Ok(Opening::Refused(after)) => {
            // A refused session stops: no audio, no retry.
            {
                let mut r = result.borrow_mut();
                r.refused += 1;
                let _ = r.refuse_latency.record(micros(after));
                if !plan.overload {
                    r.failures.no_ready += 1;
                    r.error(format!(
                        "session {index}: refused ({REFUSAL_CODE}, close 1013) in a figure that is not --overload"
                    ));
                }
            }
            // Answer the gateway's close, as a browser does, bounded.
            let _ = timeout(REFUSED_CLOSE_TIMEOUT, async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
            return;
        }
        Err(e) => {
            let mut r = result.borrow_mut();
            r.failures.no_ready += 1;
            return r.error(format!("session {index}: {e}"));
        }
    }
    {
        let mut r = result.borrow_mut();
        r.sessions_ready += 1;
        if Instant::now() >= tl.window_start() {
            r.ready_late += 1;
        }
    }
    let mut track = Track::new(index as u32, plan.profile);
    let outcome = match plan.mode {
        Mode::Flood => flood_session(&mut ws, &mut track, plan, tl, &result).await,
        _ => paced_session(&mut ws, &mut track, plan, tl, &result).await,
    };
    if let Err(e) = outcome {
        let mut r = result.borrow_mut();
        r.failures.closed_early += 1;
        r.error(format!("session {index}: {e}"));
        track.done = true; // counted as closed early, not also as no-done
        track.pending.clear();
        return;
    }
    let end = finish_session(&mut ws, &mut track, tl, &result).await;
    let mut r = result.borrow_mut();
    if let Err(e) = end {
        r.error(format!("session {index}: {e}"));
    }
    track.finish(&mut r);
}

/// Applies one text frame; `Err` when the session cannot go on.
fn on_gateway_text(
    text: &str,
    track: &mut Track,
    tl: &Timeline,
    result: &RefCell<LoadResult>,
) -> Result<(), String> {
    match gateway_event(text) {
        Event::Ack(ack) => track.on_ack(ack, tl, &mut result.borrow_mut()),
        Event::Done => track.done = true,
        Event::Error(e) => {
            result.borrow_mut().failures.error_event += 1;
            return Err(e);
        }
        Event::Ready | Event::Other => {}
    }
    Ok(())
}

/// Real-time or sparse: one frame per interval, on schedule; a late
/// schedule is caught up at once, as a browser's audio buffer would be.
async fn paced_session(
    ws: &mut Ws,
    track: &mut Track,
    plan: &LoadPlan,
    tl: Timeline,
    result: &RefCell<LoadResult>,
) -> Result<(), String> {
    let interval = plan.interval();
    let mut due = Instant::now();
    loop {
        if due >= tl.window_end() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= due {
            let frame = {
                let mut r = result.borrow_mut();
                if now >= tl.window_start() {
                    let _ = r.send_lag.record(micros(now - due));
                }
                track.next_frame(&[], &tl, &mut r)
            };
            ws.send(Message::Binary(frame))
                .await
                .map_err(|e| format!("send: {e}"))?;
            due += interval;
            continue;
        }
        match timeout_at(due, ws.next()).await {
            Err(_) => {}
            Ok(Some(Ok(Message::Text(t)))) => on_gateway_text(t.as_str(), track, &tl, result)?,
            Ok(Some(Ok(Message::Close(c)))) => return Err(format!("closed by the gateway: {c:?}")),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(format!("read: {e}")),
            Ok(None) => return Err("closed by the gateway".into()),
        }
    }
}

/// Flood: keeps `plan.window` frames in flight, sending whenever acks free room.
async fn flood_session(
    ws: &mut Ws,
    track: &mut Track,
    plan: &LoadPlan,
    tl: Timeline,
    result: &RefCell<LoadResult>,
) -> Result<(), String> {
    let window = plan.window.max(1);
    while Instant::now() < tl.window_end() {
        let mut fed = false;
        while track.pending.len() < window {
            let frame = track.next_frame(&[], &tl, &mut result.borrow_mut());
            ws.feed(Message::Binary(frame))
                .await
                .map_err(|e| format!("send: {e}"))?;
            fed = true;
        }
        if fed {
            ws.flush().await.map_err(|e| format!("flush: {e}"))?;
        }
        let mut next = match timeout_at(tl.window_end(), ws.next()).await {
            Err(_) => break,
            Ok(next) => next,
        };
        loop {
            match next {
                Some(Ok(Message::Text(t))) => on_gateway_text(t.as_str(), track, &tl, result)?,
                Some(Ok(Message::Close(c))) => return Err(format!("closed by the gateway: {c:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("read: {e}")),
                None => return Err("closed by the gateway".into()),
            }
            // Everything already readable, before sending more.
            match ws.next().now_or_never() {
                Some(n) => next = n,
                None => break,
            }
        }
    }
    Ok(())
}

/// Sends `end`, then reads the last acks and `done`.
async fn finish_session(
    ws: &mut Ws,
    track: &mut Track,
    tl: Timeline,
    result: &RefCell<LoadResult>,
) -> Result<(), String> {
    track.ended = true;
    ws.send(Message::text(r#"{"type":"end"}"#))
        .await
        .map_err(|e| format!("send end: {e}"))?;
    let deadline = tl.window_end() + DRAIN_TIMEOUT;
    while !track.done {
        match timeout_at(deadline, ws.next()).await {
            Err(_) => return Err("timed out waiting for done".into()),
            Ok(Some(Ok(Message::Text(t)))) => on_gateway_text(t.as_str(), track, &tl, result)?,
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(format!("read after end: {e}")),
            Ok(None) => return Err("closed before done".into()),
        }
    }
    // The gateway closes after `done`; answer its close, bounded.
    let _ = timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    Ok(())
}

/// Connect mode: opens sessions back to back until the window ends.
async fn connect_worker(
    addr: SocketAddr,
    tokens: Arc<Vec<String>>,
    worker: usize,
    tl: Timeline,
    result: Rc<RefCell<LoadResult>>,
) {
    sleep_until(Instant::from_std(tl.t0)).await;
    let mut n = worker;
    while Instant::now() < tl.window_end() {
        let token = &tokens[n % tokens.len()];
        n += 7919; // another user next time
        let started = Instant::now();
        let opened = timeout(CONNECT_TIMEOUT, async {
            let mut ws = open_browser_session(addr, token).await?;
            match wait_ready(&mut ws, started, started + CONNECT_TIMEOUT).await? {
                Opening::Ready => Ok(ws),
                // Connect figures measure admission: a refusal is a failure.
                Opening::Refused(_) => Err(format!("refused ({REFUSAL_CODE}, close 1013)")),
            }
        })
        .await;
        let ready_at = Instant::now();
        match opened {
            Ok(Ok(mut ws)) => {
                {
                    let mut r = result.borrow_mut();
                    r.sessions_ready += 1;
                    if started >= tl.window_start() && ready_at < tl.window_end() {
                        r.connects_in_window += 1;
                        let _ = r.connect_latency.record(micros(ready_at - started));
                    }
                }
                // A browser leaving: close frame, then the socket goes.
                let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
            }
            Ok(Err(e)) => {
                let mut r = result.borrow_mut();
                r.failures.connect += 1;
                r.error(e);
            }
            Err(_) => {
                let mut r = result.borrow_mut();
                r.failures.connect += 1;
                r.error("connect + ready timed out".into());
            }
        }
    }
}
