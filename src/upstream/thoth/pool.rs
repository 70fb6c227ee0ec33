//! The registry of thoth endpoints: one actor per configured URL — a
//! [`super::MuxThothActor`] or a [`super::LegacyThothActor`], as
//! `THOTH_PROTOCOL` says — all living on one dedicated arbiter, and the
//! choice of which endpoint takes a new session.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::actor::{Join, ThothUpstreamActor};
use super::audio_route::AudioRoute;
use super::endpoint::{EndpointProtocol, ThothEndpointConfig};
use super::legacy_actor::Legacy;
use super::monitor::{EndpointSnapshot, GetSnapshot};
use super::mux_actor::Mux;
use crate::config::{Config, ThothProtocol};
use crate::cpu_load;
use crate::error::{ErrorCode, GatewayError};
use crate::upstream::audio_budget::AUDIO_BUDGET;
use crate::upstream::writer::QueueGauge;

/// How long the shared socket's queue must stay congested before new
/// sessions are refused: longer than a scheduling hiccup or a ramp's burst,
/// well short of the seconds of latency admission is there to prevent.
pub const CONGESTED_FOR: Duration = Duration::from_millis(500);
use crate::upstream::{AudioSink, EndSession, Subscribe, Unsubscribe, UpstreamLink};

/// One thoth endpoint as the pool sees it, whichever protocol its actor speaks.
struct Endpoint {
    join: Recipient<Join>,
    snapshot: Recipient<GetSnapshot>,
    end: Recipient<EndSession>,
    unsubscribe: Recipient<Unsubscribe>,
    /// Written by the actor, read here to choose the least loaded endpoint.
    ref_count: Arc<AtomicUsize>,
    /// Live bytes queued toward the endpoint's socket, written by its writer:
    /// read here to refuse new sessions while the socket stays congested.
    queued: Arc<QueueGauge>,
}

impl Endpoint {
    fn start<P: EndpointProtocol>(
        config: ThothEndpointConfig,
        arbiter: &ArbiterHandle,
    ) -> Endpoint {
        let ref_count = Arc::new(AtomicUsize::new(0));
        let queued = config.queued.clone();
        let actor_ref_count = ref_count.clone();
        let addr = ThothUpstreamActor::<P>::start_in_arbiter(arbiter, move |_| {
            ThothUpstreamActor::new(config, actor_ref_count)
        });
        Endpoint {
            join: addr.clone().recipient(),
            snapshot: addr.clone().recipient(),
            end: addr.clone().recipient(),
            unsubscribe: addr.recipient(),
            ref_count,
            queued,
        }
    }

    /// How a session's ClientActor reaches this endpoint.
    fn link(&self, route: AudioRoute) -> UpstreamLink {
        UpstreamLink {
            audio: AudioSink::Route(route),
            end: self.end.clone(),
            unsubscribe: self.unsubscribe.clone(),
        }
    }
}

/// Hands sessions to thoth endpoints. Cheap to clone; shared by all workers.
#[derive(Clone)]
pub struct ThothPool {
    endpoints: Arc<Vec<Endpoint>>,
    protocol: ThothProtocol,
}

impl ThothPool {
    /// Starts one upstream actor per endpoint on `arbiter`.
    /// `tls` verifies `wss://` endpoints (see [`crate::upstream::connect::tls_config`]).
    pub fn start(
        config: &Config,
        tls: Arc<rustls::ClientConfig>,
        arbiter: &ArbiterHandle,
    ) -> ThothPool {
        AUDIO_BUDGET.set_limit(config.audio_buffer_budget_bytes);
        let endpoints = config
            .thoth_ws_urls
            .iter()
            .map(|url| {
                let endpoint_config = ThothEndpointConfig {
                    url: url.clone(),
                    protocol: config.thoth_protocol,
                    stream_token: config.thoth_stream_token.clone(),
                    tls: tls.clone(),
                    idle_close: config.thoth_idle_close,
                    retry_base: config.thoth_retry_base,
                    legacy_flush_grace: config.legacy_flush_grace,
                    max_frame_bytes: config.max_frame_bytes,
                    replay_max_secs: config.thoth_replay_max.as_secs(),
                    resume_timeout: config.thoth_resume_timeout,
                    queued: Arc::default(),
                };
                match config.thoth_protocol {
                    ThothProtocol::Mux => Endpoint::start::<Mux>(endpoint_config, arbiter),
                    ThothProtocol::Legacy => Endpoint::start::<Legacy>(endpoint_config, arbiter),
                }
            })
            .collect();
        ThothPool {
            endpoints: Arc::new(endpoints),
            protocol: config.thoth_protocol,
        }
    }

    /// Why a new session must be refused because the gateway is at
    /// capacity, if it must: the audio it holds for thoth is over 80% of
    /// `AUDIO_BUFFER_BUDGET_BYTES`; or the shared socket the session would
    /// use (the least loaded endpoint's, in `mux` mode) has stayed congested
    /// for [`CONGESTED_FOR`]: thoth is not keeping up; or the gateway uses
    /// more than `max_cpu_percent` of its cores: it is not keeping up itself.
    /// Lock-free: a few atomic loads, no actor round-trip.
    pub fn at_capacity(&self, max_cpu_percent: Option<u32>) -> Option<&'static str> {
        if AUDIO_BUDGET.refuses_new_sessions() {
            return Some("audio buffering over 80% of AUDIO_BUFFER_BUDGET_BYTES");
        }
        if max_cpu_percent.is_some_and(|limit| cpu_load::utilization() * 100.0 > f64::from(limit)) {
            return Some("CPU over OVERLOAD_CPU_PERCENT");
        }
        if self.protocol != ThothProtocol::Mux {
            return None; // one socket per session: no shared queue to congest
        }
        self.endpoints
            .iter()
            .min_by_key(|e| e.ref_count.load(Ordering::Relaxed))
            // Congested since it went over 2 MiB, until it is back under 1 MiB
            // (the gauge's hysteresis): a queue hovering at the mark counts.
            .filter(|e| e.queued.congested_for() >= CONGESTED_FOR)
            .map(|_| "the shared thoth socket stays congested")
    }

    /// Subscribes a session to an endpoint: in `mux` mode the least loaded
    /// one; in `legacy` mode the first free one that accepts the stream
    /// (PROTOCOL.md 3.2): a refused handshake or an unreachable endpoint
    /// moves on to the next, and when none is left the session hears
    /// `THOTH_BUSY` (if any refused) or `THOTH_UNAVAILABLE`.
    pub async fn subscribe(&self, request: Subscribe) -> Result<UpstreamLink, GatewayError> {
        let mut order: Vec<&Endpoint> = self.endpoints.iter().collect();
        order.sort_by_key(|e| e.ref_count.load(Ordering::Relaxed));
        if self.protocol == ThothProtocol::Mux {
            let endpoint = order[0];
            let route = endpoint
                .join
                .send(Join(request))
                .await
                .map_err(mailbox_error)??;
            return Ok(endpoint.link(route));
        }
        // Legacy: the actor itself refuses a second session, so two sessions
        // racing for one free endpoint cannot both get it. Its answer waits
        // until thoth accepted or refused the handshake.
        let Subscribe {
            session_id,
            format,
            client,
        } = request;
        let (mut busy, mut unreachable) = (false, false);
        for endpoint in order
            .into_iter()
            .filter(|e| e.ref_count.load(Ordering::Relaxed) == 0)
        {
            let attempt = Subscribe {
                session_id,
                format,
                client: client.clone(),
            };
            match endpoint
                .join
                .send(Join(attempt))
                .await
                .map_err(mailbox_error)?
            {
                Ok(route) => return Ok(endpoint.link(route)),
                Err(e) if e.code == ErrorCode::ThothBusy => busy = true,
                Err(e) if e.code == ErrorCode::ThothUnavailable => unreachable = true,
                // e.g. AUTH_FAILED (a close 4401/4403 after the upgrade):
                // every endpoint shares the gateway's credentials.
                Err(e) => return Err(e),
            }
        }
        let code = if unreachable && !busy {
            ErrorCode::ThothUnavailable
        } else {
            ErrorCode::ThothBusy
        };
        Err(GatewayError::new(code))
    }

    /// Every endpoint's monitoring snapshot, in configuration order.
    pub async fn snapshot(&self) -> Vec<EndpointSnapshot> {
        let mut out = Vec::with_capacity(self.endpoints.len());
        for endpoint in self.endpoints.iter() {
            if let Ok(snapshot) = endpoint.snapshot.send(GetSnapshot).await {
                out.push(snapshot);
            }
        }
        out
    }

    /// Total sessions held by every endpoint.
    pub fn total_ref_count(&self) -> usize {
        self.endpoints
            .iter()
            .map(|e| e.ref_count.load(Ordering::Relaxed))
            .sum()
    }
}

fn mailbox_error(err: MailboxError) -> GatewayError {
    GatewayError::new(ErrorCode::Internal).because(err)
}
