//! The load generator: browser sessions through the gateway, or the same load
//! straight to the fake thoth over one mux socket ("direct").
//!
//! Every run follows one timeline: sessions open along a ramp, stream, and the
//! measured window starts after the ramp and a warm-up. Only frames sent
//! inside the window count toward rates and latencies; every frame, inside
//! the window or not, is checked against its ack.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio::time::{sleep_until, timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;

use crate::audio::{fill_frame, find_ack, Ack, RunningChecksum};
use crate::profile::Profile;
use crate::thoth::MUX_SUBPROTOCOL;

/// A connection, handshake included, must succeed within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// After the window, sessions have this long to receive their last acks and `done`.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// Error texts kept for the report, at most, and at most this many per session.
const MAX_ERROR_SAMPLES: usize = 24;
const MAX_ERROR_SAMPLES_PER_SESSION: usize = 2;
/// Sparse sessions send one frame this often.
const SPARSE_INTERVAL: Duration = Duration::from_secs(1);
/// Latency histogram range: 1 µs .. 120 s, 3 significant digits.
const HIST_MAX_US: u64 = 120_000_000;

type Ws = WebSocketStream<TcpStream>;

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
    fn start_of(&self, plan: &LoadPlan, i: usize) -> Instant {
        let offset = plan.ramp.mul_f64(i as f64 / plan.sessions.max(1) as f64);
        Instant::from_std(self.t0 + offset)
    }

    fn window_start(&self) -> Instant {
        Instant::from_std(self.window_start)
    }

    fn window_end(&self) -> Instant {
        Instant::from_std(self.window_end)
    }
}

/// Every way a session can fail its checks.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Failures {
    /// TCP connect or WebSocket handshake failed or timed out.
    pub connect: u64,
    /// No `ready` within the connect timeout.
    pub no_ready: u64,
    /// The gateway (or thoth) sent an `error`.
    pub error_event: u64,
    /// An ack whose byte count or checksum is not the next expected one.
    pub mismatched_ack: u64,
    /// An ack when no frame was outstanding.
    pub unexpected_ack: u64,
    /// Frames never acknowledged (at the end).
    pub lost_ack: u64,
    /// Frames skipped: a later frame of the session was acknowledged instead.
    pub skipped_frame: u64,
    /// No `done` (or `session.done`) after `end`.
    pub no_done: u64,
    /// The socket closed before the session finished.
    pub closed_early: u64,
}

impl Failures {
    pub fn total(&self) -> u64 {
        self.connect
            + self.no_ready
            + self.error_event
            + self.mismatched_ack
            + self.unexpected_ack
            + self.lost_ack
            + self.skipped_frame
            + self.no_done
            + self.closed_early
    }

    fn add(&mut self, o: &Failures) {
        self.connect += o.connect;
        self.no_ready += o.no_ready;
        self.error_event += o.error_event;
        self.mismatched_ack += o.mismatched_ack;
        self.unexpected_ack += o.unexpected_ack;
        self.lost_ack += o.lost_ack;
        self.skipped_frame += o.skipped_frame;
        self.no_done += o.no_done;
        self.closed_early += o.closed_early;
    }
}

/// What one run measured at the client side.
pub struct LoadResult {
    /// Frame sent → its ack back, µs, frames sent inside the window.
    pub latency: Histogram<u64>,
    /// How late a frame left versus its schedule, µs (load generator health).
    pub send_lag: Histogram<u64>,
    /// Connect mode: connect → `ready`, µs.
    pub connect_latency: Histogram<u64>,
    pub frames_in_window: u64,
    pub bytes_in_window: u64,
    /// Acks received inside the window, and the audio bytes they cover.
    pub acked_frames_in_window: u64,
    pub acked_bytes_in_window: u64,
    pub frames_total: u64,
    pub acks_total: u64,
    pub sessions_ready: u64,
    /// Sessions that became ready only after the window started.
    pub ready_late: u64,
    /// Connect mode: sessions that reached `ready` inside the window.
    pub connects_in_window: u64,
    pub failures: Failures,
    pub errors: Vec<String>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

impl Default for LoadResult {
    fn default() -> Self {
        LoadResult {
            latency: histogram(),
            send_lag: histogram(),
            connect_latency: histogram(),
            frames_in_window: 0,
            bytes_in_window: 0,
            acked_frames_in_window: 0,
            acked_bytes_in_window: 0,
            frames_total: 0,
            acks_total: 0,
            sessions_ready: 0,
            ready_late: 0,
            connects_in_window: 0,
            failures: Failures::default(),
            errors: Vec::new(),
        }
    }
}

impl LoadResult {
    fn merge(&mut self, o: LoadResult) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency.add(&o.latency);
        let _ = self.send_lag.add(&o.send_lag);
        let _ = self.connect_latency.add(&o.connect_latency);
        self.frames_in_window += o.frames_in_window;
        self.bytes_in_window += o.bytes_in_window;
        self.acked_frames_in_window += o.acked_frames_in_window;
        self.acked_bytes_in_window += o.acked_bytes_in_window;
        self.frames_total += o.frames_total;
        self.acks_total += o.acks_total;
        self.sessions_ready += o.sessions_ready;
        self.ready_late += o.ready_late;
        self.connects_in_window += o.connects_in_window;
        self.failures.add(&o.failures);
        for e in o.errors {
            if self.errors.len() < MAX_ERROR_SAMPLES {
                self.errors.push(e);
            }
        }
    }

    /// Keeps a sample of error texts: a few per session, so that one
    /// session's many errors do not hide other kinds.
    fn error(&mut self, text: String) {
        if self.errors.len() >= MAX_ERROR_SAMPLES {
            return;
        }
        let session = text.split(':').next().unwrap_or_default().to_string();
        let same = self
            .errors
            .iter()
            .filter(|e| e.split(':').next() == Some(session.as_str()))
            .count();
        if same < MAX_ERROR_SAMPLES_PER_SESSION {
            self.errors.push(text);
        }
    }
}

fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, HIST_MAX_US)
}

/// A frame sent and not yet acknowledged.
struct Pending {
    frame: u64,
    bytes: u64,
    checksum: u64,
    sent_at: Instant,
    in_window: bool,
}

/// One session's audio and the acks it expects, in order.
struct Track {
    session: u32,
    frame_bytes: usize,
    /// One ack may cover every frame up to the one it names (chronus profile).
    cumulative: bool,
    frames: u64,
    bytes: u64,
    checksum: RunningChecksum,
    pending: VecDeque<Pending>,
    /// Audio bytes of frames that never reached thoth.
    lost_bytes: u64,
    done: bool,
}

impl Track {
    fn new(session: u32, profile: Profile) -> Track {
        Track {
            session,
            frame_bytes: profile.frame_bytes(),
            cumulative: profile.cumulative_acks(),
            frames: 0,
            bytes: 0,
            checksum: RunningChecksum::default(),
            pending: VecDeque::new(),
            lost_bytes: 0,
            done: false,
        }
    }

    /// The next frame, with `prefix` (the mux uuid, or nothing) before the audio.
    fn next_frame(&mut self, prefix: &[u8], tl: &Timeline, result: &mut LoadResult) -> Bytes {
        let mut frame = vec![0u8; prefix.len() + self.frame_bytes];
        frame[..prefix.len()].copy_from_slice(prefix);
        fill_frame(self.session, self.frames, &mut frame[prefix.len()..]);
        self.checksum.update(&frame[prefix.len()..]);
        self.frames += 1;
        self.bytes += self.frame_bytes as u64;
        let now = Instant::now();
        let in_window = now >= tl.window_start() && now < tl.window_end();
        if in_window {
            result.frames_in_window += 1;
            result.bytes_in_window += self.frame_bytes as u64;
        }
        result.frames_total += 1;
        self.pending.push_back(Pending {
            frame: self.frames - 1,
            bytes: self.bytes,
            checksum: self.checksum.0,
            sent_at: now,
            in_window,
        });
        Bytes::from(frame)
    }

    /// Checks an ack against the oldest outstanding frame.
    fn on_ack(&mut self, ack: Ack, tl: &Timeline, result: &mut LoadResult) {
        let now = Instant::now();
        result.acks_total += 1;
        let in_window = now >= tl.window_start() && now < tl.window_end();
        // A cumulative ack (a final result for a ~3 s window) covers every
        // frame up to the one it names; its byte count and checksum, checked
        // below, cover all of them, so nothing lost goes unnoticed.
        if self.cumulative && ack.session == self.session {
            while self.pending.len() > 1 && self.pending[0].frame < ack.frame {
                self.pending.pop_front();
                if in_window {
                    result.acked_frames_in_window += 1;
                    result.acked_bytes_in_window += self.frame_bytes as u64;
                }
            }
        }
        // An ack naming a later frame of this session: the frames before it
        // never reached thoth. Count them once, and go on checking the rest
        // (thoth still checks every frame's content; from here on the client
        // checks byte counts and frame numbers, as the checksum includes the
        // lost audio).
        if ack.session == self.session {
            while self.pending.len() > 1 && self.pending[0].frame < ack.frame {
                let lost = self.pending.pop_front().expect("checked non-empty");
                self.lost_bytes += self.frame_bytes as u64;
                result.failures.skipped_frame += 1;
                result.error(format!(
                    "session {}: frame {} never reached thoth (the next ack names frame {})",
                    self.session, lost.frame, ack.frame
                ));
            }
        }
        let Some(expected) = self.pending.pop_front() else {
            result.failures.unexpected_ack += 1;
            result.error(format!(
                "session {}: ack for {} bytes with nothing outstanding",
                self.session, ack.bytes
            ));
            return;
        };
        let checksum_ok = self.lost_bytes > 0 || expected.checksum == ack.checksum;
        if expected.bytes - self.lost_bytes != ack.bytes
            || !checksum_ok
            || (ack.session, ack.frame) != (self.session, expected.frame)
        {
            result.failures.mismatched_ack += 1;
            result.error(format!(
                "session {}: ack of {} bytes ending with session {} frame {}, expected {} bytes ending with frame {} (checksum {})",
                self.session,
                ack.bytes,
                ack.session,
                ack.frame,
                expected.bytes - self.lost_bytes,
                expected.frame,
                if checksum_ok { "equal" } else { "differs" },
            ));
        }
        if expected.in_window {
            let _ = result.latency.record(micros(now - expected.sent_at));
        }
        if in_window {
            result.acked_frames_in_window += 1;
            result.acked_bytes_in_window += self.frame_bytes as u64;
        }
    }

    /// At the end: whatever is still outstanding was lost.
    fn finish(&mut self, result: &mut LoadResult) {
        if !self.pending.is_empty() {
            result.failures.lost_ack += self.pending.len() as u64;
            result.error(format!(
                "session {}: {} frame(s) never acknowledged",
                self.session,
                self.pending.len()
            ));
            self.pending.clear();
        }
        if !self.done {
            result.failures.no_done += 1;
            result.error(format!("session {}: no done after end", self.session));
        }
    }
}

fn client_config() -> WebSocketConfig {
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

/// Waits for `ready`; audio is never sent before it (the browser may, but
/// then the first latencies would measure the gateway's pre-ready buffer).
async fn wait_ready(ws: &mut Ws, deadline: Instant) -> Result<(), String> {
    loop {
        match timeout_at(deadline, ws.next()).await {
            Err(_) => return Err("no ready in time".into()),
            Ok(Some(Ok(Message::Text(t)))) => match gateway_event(t.as_str()) {
                Event::Ready => return Ok(()),
                Event::Error(e) => return Err(e),
                _ => {}
            },
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(format!("closed before ready: {e}")),
            Ok(None) => return Err("closed before ready".into()),
        }
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
    if let Err(e) = wait_ready(&mut ws, started + CONNECT_TIMEOUT).await {
        let mut r = result.borrow_mut();
        r.failures.no_ready += 1;
        return r.error(format!("session {index}: {e}"));
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
            wait_ready(&mut ws, started + CONNECT_TIMEOUT).await?;
            Ok::<_, String>(ws)
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

// ---- straight to the fake thoth ---------------------------------------------

/// Session `i`'s uuid in direct mode: a fixed prefix, then the index.
fn direct_session_id(i: usize) -> Uuid {
    Uuid::from_u128(0x6265_6e63_6800_4000_8000_0000_0000_0000 | i as u128)
}

fn direct_session_index(id: &str) -> Option<usize> {
    let id = Uuid::parse_str(id).ok()?.as_u128();
    let i = (id & 0xffff_ffff) as usize;
    (direct_session_id(i).as_u128() == id).then_some(i)
}

/// The text between `"<key>":"` and the next quote.
fn json_str<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let rest = &text[start..];
    Some(&rest[..rest.find('"')?])
}

/// What the gateway does upstream, minus the gateway: every session's audio
/// on one mux socket, the same schedule, the same checks.
async fn direct(addr: SocketAddr, plan: &LoadPlan, tl: Timeline, result: Rc<RefCell<LoadResult>>) {
    let ws = match timeout(CONNECT_TIMEOUT, open_mux_socket(addr)).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            let mut r = result.borrow_mut();
            r.failures.connect += plan.sessions as u64;
            return r.error(e);
        }
        Err(_) => {
            let mut r = result.borrow_mut();
            r.failures.connect += plan.sessions as u64;
            return r.error("mux connect timed out".into());
        }
    };
    let (mut sink, mut stream) = ws.split();
    let tracks: RefCell<Vec<Track>> = RefCell::new(
        (0..plan.sessions)
            .map(|i| Track::new(i as u32, plan.profile))
            .collect(),
    );
    let ids: Vec<Uuid> = (0..plan.sessions).map(direct_session_id).collect();
    let acked = tokio::sync::Notify::new();
    let ended = std::cell::Cell::new(0usize);

    let writer = async {
        let outcome: Result<(), String> = async {
            for id in &ids {
                let start = format!(
                    r#"{{"type":"session.start","session_id":"{id}","encoding":"f32le","sample_rate":16000,"offset_ms":0}}"#
                );
                sink.feed(Message::text(start)).await.map_err(|e| e.to_string())?;
            }
            sink.flush().await.map_err(|e| e.to_string())?;
            result.borrow_mut().sessions_ready += plan.sessions as u64;
            match plan.mode {
                Mode::Flood => direct_flood_writer(&mut sink, &tracks, &ids, plan, tl, &result, &acked).await?,
                _ => direct_paced_writer(&mut sink, &tracks, &ids, plan, tl, &result).await?,
            }
            for id in &ids {
                let end = format!(r#"{{"type":"session.end","session_id":"{id}"}}"#);
                sink.feed(Message::text(end)).await.map_err(|e| e.to_string())?;
            }
            sink.flush().await.map_err(|e| e.to_string())
        }
        .await;
        if let Err(e) = outcome {
            result.borrow_mut().error(format!("direct writer: {e}"));
        }
    };

    let reader = async {
        let deadline = tl.window_end() + DRAIN_TIMEOUT;
        while ended.get() < plan.sessions {
            let message = match timeout_at(deadline, stream.next()).await {
                Err(_) => break,
                Ok(Some(Ok(m))) => m,
                Ok(_) => {
                    result.borrow_mut().error("the mux socket closed".into());
                    break;
                }
            };
            let Message::Text(text) = message else {
                continue;
            };
            let text = text.as_str();
            let Some(index) = json_str(text, r#""session_id":""#).and_then(direct_session_index)
            else {
                result
                    .borrow_mut()
                    .error(format!("unroutable: {text:.120}"));
                continue;
            };
            let mut tracks = tracks.borrow_mut();
            let track = &mut tracks[index];
            if let Some(ack) = find_ack(text, r#""text":""#) {
                track.on_ack(ack, &tl, &mut result.borrow_mut());
                acked.notify_one();
            } else if text.contains(r#""type":"session.done""#) {
                track.done = true;
                ended.set(ended.get() + 1);
            } else if text.contains(r#""type":"error""#) {
                let mut r = result.borrow_mut();
                r.failures.error_event += 1;
                r.error(format!("thoth error: {text:.160}"));
                track.done = true;
                ended.set(ended.get() + 1);
            }
        }
    };
    futures_util::future::join(writer, reader).await;
    {
        let mut r = result.borrow_mut();
        for track in tracks.borrow_mut().iter_mut() {
            track.finish(&mut r);
        }
    }
    if let Ok(mut ws) = sink.reunite(stream) {
        let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
    }
}

async fn open_mux_socket(addr: SocketAddr) -> Result<Ws, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut request = format!("ws://{addr}/mux")
        .into_client_request()
        .map_err(|e| e.to_string())?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(MUX_SUBPROTOCOL),
    );
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(client_config()))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    Ok(ws)
}

type MuxSink = futures_util::stream::SplitSink<Ws, Message>;

/// Sends each session's frames on its schedule: sessions are bucketed by
/// the millisecond of their phase, and each millisecond's bucket goes out
/// with one flush, as the gateway's writer batches what is queued.
async fn direct_paced_writer(
    sink: &mut MuxSink,
    tracks: &RefCell<Vec<Track>>,
    ids: &[Uuid],
    plan: &LoadPlan,
    tl: Timeline,
    result: &RefCell<LoadResult>,
) -> Result<(), String> {
    let interval = plan.interval();
    let slots = interval.as_millis().max(1) as usize;
    let mut due: Vec<Instant> = (0..plan.sessions).map(|i| tl.start_of(plan, i)).collect();
    let mut buckets: Vec<Vec<usize>> = vec![Vec::new(); slots];
    for (i, d) in due.iter().enumerate() {
        let phase = (d.into_std() - tl.t0).as_millis() as usize % slots;
        buckets[phase].push(i);
    }
    let mut tick = Instant::from_std(tl.t0);
    let mut slot = 0usize;
    while tick < tl.window_end() {
        sleep_until(tick).await;
        let now = Instant::now();
        let mut fed = false;
        for &i in &buckets[slot] {
            while due[i] <= now && due[i] < tl.window_end() {
                let frame = {
                    let mut r = result.borrow_mut();
                    if now >= tl.window_start() {
                        let _ = r.send_lag.record(micros(now - due[i]));
                    }
                    tracks.borrow_mut()[i].next_frame(ids[i].as_bytes(), &tl, &mut r)
                };
                sink.feed(Message::Binary(frame))
                    .await
                    .map_err(|e| e.to_string())?;
                fed = true;
                due[i] += interval;
            }
        }
        if fed {
            sink.flush().await.map_err(|e| e.to_string())?;
        }
        tick += Duration::from_millis(1);
        slot = (slot + 1) % slots;
    }
    Ok(())
}

/// Keeps `plan.window` frames in flight for every session on the one socket.
async fn direct_flood_writer(
    sink: &mut MuxSink,
    tracks: &RefCell<Vec<Track>>,
    ids: &[Uuid],
    plan: &LoadPlan,
    tl: Timeline,
    result: &RefCell<LoadResult>,
    acked: &tokio::sync::Notify,
) -> Result<(), String> {
    let window = plan.window.max(1);
    sleep_until(Instant::from_std(tl.t0)).await;
    while Instant::now() < tl.window_end() {
        let mut frames = Vec::new();
        {
            let mut tracks = tracks.borrow_mut();
            let mut r = result.borrow_mut();
            for (i, track) in tracks.iter_mut().enumerate() {
                while track.pending.len() < window {
                    frames.push(track.next_frame(ids[i].as_bytes(), &tl, &mut r));
                }
            }
        }
        for frame in frames {
            sink.feed(Message::Binary(frame))
                .await
                .map_err(|e| e.to_string())?;
        }
        sink.flush().await.map_err(|e| e.to_string())?;
        let _ = timeout_at(tl.window_end(), acked.notified()).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::FRAME_BYTES;
    use crate::profile::CHRONUS_FRAME_BYTES;

    fn plan() -> LoadPlan {
        LoadPlan {
            mode: Mode::Realtime,
            profile: Profile::Realtime,
            sessions: 1,
            seconds: 1.0,
            ramp: Duration::ZERO,
            warmup: Duration::ZERO,
            client_threads: 1,
            window: 1,
            concurrency: 1,
        }
    }

    /// The ack thoth would send after `frames` of `session`.
    fn ack_after(session: u32, frames: std::ops::Range<u64>) -> Ack {
        ack_after_sized(session, frames, FRAME_BYTES)
    }

    fn ack_after_sized(session: u32, frames: std::ops::Range<u64>, frame_bytes: usize) -> Ack {
        let mut sum = RunningChecksum::default();
        let mut buf = vec![0; frame_bytes];
        for f in frames.clone() {
            fill_frame(session, f, &mut buf);
            sum.update(&buf);
        }
        Ack {
            bytes: (frames.end - frames.start) * frame_bytes as u64,
            checksum: sum.0,
            session,
            frame: frames.end - 1,
        }
    }

    #[tokio::test]
    async fn exact_acks_pass_and_a_skipped_frame_counts_once() {
        let tl = Timeline::new(&plan());
        let mut result = LoadResult::default();
        let mut track = Track::new(3, Profile::Realtime);
        for _ in 0..3 {
            track.next_frame(&[], &tl, &mut result);
        }
        track.on_ack(ack_after(3, 0..1), &tl, &mut result);
        assert_eq!(result.failures.total(), 0);

        let mut lossy = Track::new(3, Profile::Realtime);
        for _ in 0..3 {
            lossy.next_frame(&[], &tl, &mut result);
        }
        // Frame 0 never reached thoth: thoth's acks cover frames 1.. only.
        lossy.on_ack(ack_after(3, 1..2), &tl, &mut result);
        lossy.on_ack(ack_after(3, 1..3), &tl, &mut result);
        assert_eq!(result.failures.skipped_frame, 1);
        assert_eq!(result.failures.total(), 1);

        // Another session's ack is cross-talk.
        track.on_ack(ack_after(4, 0..2), &tl, &mut result);
        assert_eq!(result.failures.mismatched_ack, 1);
    }

    #[tokio::test]
    async fn a_window_final_covers_its_frames_and_a_lost_frame_shows() {
        let tl = Timeline::new(&plan());
        let mut result = LoadResult::default();
        let mut track = Track::new(5, Profile::Chronus);
        for _ in 0..12 {
            track.next_frame(&[], &tl, &mut result);
        }
        track.on_ack(
            ack_after_sized(5, 0..12, CHRONUS_FRAME_BYTES),
            &tl,
            &mut result,
        );
        assert_eq!(result.failures.total(), 0);
        assert!(track.pending.is_empty());

        // Thoth never got frame 0: its final's byte count is one frame short.
        let mut lossy = Track::new(5, Profile::Chronus);
        for _ in 0..12 {
            lossy.next_frame(&[], &tl, &mut result);
        }
        lossy.on_ack(
            ack_after_sized(5, 1..12, CHRONUS_FRAME_BYTES),
            &tl,
            &mut result,
        );
        assert_eq!(result.failures.mismatched_ack, 1);
    }
}
