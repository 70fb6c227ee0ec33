//! What every fault scenario shares: one scenario at a time, a thoth crash,
//! opening and streaming many sessions at once, and the measurements the
//! scenarios print.
#![allow(dead_code)]

use std::time::Duration;

use chronus_gateway::devthoth::DevThoth;
use chronus_gateway::RunningGateway;
use futures_util::future::join_all;
use tokio::time::Instant;

use crate::common::{eventually, pool_report};
use crate::live_session::{Encoding, LiveSession, TestAudio, Transcript};

// ---- measurements -----------------------------------------------------------

/// Resident memory of this test process (gateway, dev thoth and clients), KiB.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `refCount` 0 and `sessionsOpen` 0, eventually.
pub async fn assert_nothing_left(gateway: &RunningGateway, within: Duration) {
    let clean = eventually(within, || async {
        let report = pool_report(gateway).await;
        report["thoth"][0]["refCount"] == 0 && report["sessionsOpen"] == 0
    })
    .await;
    assert!(
        clean,
        "sessions left behind: {}",
        pool_report(gateway).await
    );
}

/// Thoth crashes: every socket drops at once (no close frame) and the port
/// closes. `DevThoth::stop` alone is not enough while its worker is saturated:
/// it returns once the listener is closed, but the worker thread drops its
/// sockets only when it next gets to its stop command, which can take seconds
/// while a socket keeps it busy. The drop is queued first so the sockets go as
/// the listener closes.
pub fn crash(thoth: DevThoth) {
    thoth.drop_all_connections();
    thoth.stop();
}

/// Each scenario loads the machine on purpose (and some measure time): they
/// run one at a time, not in parallel test threads. Held for a whole test.
pub struct OneAtATime;

static SCENARIO_RUNNING: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
static SCENARIO_DONE: std::sync::Condvar = std::sync::Condvar::new();

/// Waits until no other scenario runs. (A failed scenario's guard is dropped
/// while it unwinds, so it does not hold up the next one.)
pub fn one_at_a_time() -> OneAtATime {
    let lock = |m: &'static std::sync::Mutex<bool>| m.lock().unwrap_or_else(|e| e.into_inner());
    let mut running = lock(&SCENARIO_RUNNING);
    while *running {
        running = SCENARIO_DONE
            .wait(running)
            .unwrap_or_else(|e| e.into_inner());
    }
    *running = true;
    OneAtATime
}

impl Drop for OneAtATime {
    fn drop(&mut self) {
        *SCENARIO_RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = false;
        SCENARIO_DONE.notify_one();
    }
}

pub fn ms(duration: Duration) -> u128 {
    duration.as_millis()
}

pub fn encoding_of(session: usize) -> Encoding {
    if session.is_multiple_of(2) {
        Encoding::F32le
    } else {
        Encoding::S16le
    }
}

/// Opens one session per audio, user `{prefix}-{i}`.
pub async fn open_sessions(
    gateway: &RunningGateway,
    prefix: &str,
    audio: &[TestAudio],
) -> Vec<LiveSession> {
    let mut sessions = Vec::with_capacity(audio.len());
    for (i, a) in audio.iter().enumerate() {
        sessions.push(LiveSession::open(gateway, &format!("{prefix}-{i}"), &a.query()).await);
    }
    sessions
}

/// Streams each session's audio in real time (frames of `frame_ms`) then
/// `end`, each in its own task; resolves to the transcripts, in order.
pub fn stream_all(
    sessions: Vec<LiveSession>,
    audio: &[TestAudio],
    frame_ms: usize,
    epoch: Instant,
) -> Vec<tokio::task::JoinHandle<Transcript>> {
    sessions
        .into_iter()
        .zip(audio)
        .map(|(mut session, a)| {
            let frames = a.frames(frame_ms);
            actix_rt::spawn(async move {
                let frame = Duration::from_millis(frame_ms as u64);
                session.stream_in_real_time(&frames, frame, epoch).await;
                session.finish().await
            })
        })
        .collect()
}

pub async fn transcripts(handles: Vec<tokio::task::JoinHandle<Transcript>>) -> Vec<Transcript> {
    join_all(handles)
        .await
        .into_iter()
        .map(|t| t.expect("session task"))
        .collect()
}
