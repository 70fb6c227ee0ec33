//! [`DevThothStats`]: counters of what a dev thoth has seen, readable while
//! it runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of what a dev thoth has seen, readable while it runs.
#[derive(Debug, Default)]
pub struct DevThothStats {
    pub(super) connections_accepted: AtomicU64,
    pub(super) connections_refused: AtomicU64,
    pub(super) connections_open: AtomicU64,
    pub(super) mux_connections: AtomicU64,
    pub(super) legacy_streams: AtomicU64,
    pub(super) mux_sessions_started: AtomicU64,
    pub(super) sessions_done: AtomicU64,
    pub(super) sessions_cancelled: AtomicU64,
    pub(super) sessions_ended: AtomicU64,
    pub(super) audio_bytes_received: AtomicU64,
    pub(super) finals_sent: AtomicU64,
    pub(super) interims_sent: AtomicU64,
    pub(super) errors_sent: AtomicU64,
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

    pub(super) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::SeqCst);
    }
}
