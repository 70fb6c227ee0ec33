//! What the thoth actors show the outside: the pool report's per-endpoint
//! JSON (`GET /pool` on the admin listener) and the thoth gauges refreshed
//! on every change of socket state or reference count.

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::config::ThothProtocol;
use crate::metrics;

/// Where an endpoint's socket stands, as monitoring names and numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Down,
    Connecting,
    Open,
}

impl LinkState {
    /// The pool report's `state`.
    pub fn name(self) -> &'static str {
        match self {
            LinkState::Down => "down",
            LinkState::Connecting => "connecting",
            LinkState::Open => "open",
        }
    }

    /// The `thoth_connection_state` gauge's value.
    pub fn metric(self) -> i64 {
        match self {
            LinkState::Down => 0,
            LinkState::Connecting => 1,
            LinkState::Open => 2,
        }
    }
}

/// An endpoint's last refused handshake, for the pool report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    /// What thoth answered, e.g. `HTTP 403 on the handshake`.
    pub what: String,
    pub at: DateTime<Utc>,
    /// What that answer may mean (an HTTP 403 is ambiguous).
    pub may_mean: &'static str,
}

/// The per-endpoint figures the pool monitoring endpoint shows.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSnapshot {
    pub url: String,
    pub protocol: ThothProtocol,
    pub state: &'static str,
    pub ref_count: usize,
    pub session_ids: Vec<Uuid>,
    pub connected_since: Option<DateTime<Utc>>,
    pub reconnects: u64,
    pub last_error: Option<String>,
    /// Legacy: the last refused handshake (what, when, what it may mean).
    pub last_refusal: Option<Refusal>,
}

/// Asks an upstream actor for its [`EndpointSnapshot`].
#[derive(Message)]
#[rtype(result = "EndpointSnapshot")]
pub struct GetSnapshot;

/// Publishes an endpoint's socket state.
pub fn publish_link_state(display_url: &str, state: LinkState) {
    metrics::THOTH_CONNECTION_STATE
        .with_label_values(&[display_url])
        .set(state.metric());
    metrics::THOTH_SOCKETS_OPEN
        .with_label_values(&[display_url])
        .set(i64::from(state == LinkState::Open));
}

/// Publishes an endpoint's reference count (sessions held).
pub fn publish_ref_count(display_url: &str, count: usize) {
    metrics::THOTH_REF_COUNT
        .with_label_values(&[display_url])
        .set(count as i64);
}

/// Counts a socket that came back after an unexpected loss.
pub fn count_reconnect(display_url: &str) {
    metrics::THOTH_RECONNECTS
        .with_label_values(&[display_url])
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_serializes_for_the_pool_report() {
        let refusal = Refusal {
            what: "HTTP 403 on the handshake".into(),
            at: DateTime::parse_from_rfc3339("2026-12-06T05:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            may_mean: "thoth refuses this gateway's THOTH_STREAM_TOKEN",
        };
        let json = serde_json::to_value(&refusal).unwrap();
        assert_eq!(json["what"], "HTTP 403 on the handshake");
        assert_eq!(json["at"], "2026-12-06T05:00:00Z");
        assert!(json["mayMean"]
            .as_str()
            .unwrap()
            .contains("THOTH_STREAM_TOKEN"));
    }

    #[test]
    fn link_states_keep_their_report_names_and_gauge_values() {
        let states = [LinkState::Down, LinkState::Connecting, LinkState::Open];
        let names: Vec<_> = states.iter().map(|s| s.name()).collect();
        let values: Vec<_> = states.iter().map(|s| s.metric()).collect();
        assert_eq!(names, ["down", "connecting", "open"]);
        assert_eq!(values, [0, 1, 2]);
    }
}
