//! Prometheus metrics (PROTOCOL.md 5), registered once and exported on the
//! admin listener. Hot-path counters are resolved to their label values once,
//! so a relayed frame costs an atomic add, not a label lookup.

use std::sync::LazyLock;

use prometheus::{
    exponential_buckets, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::ErrorCode;

/// The gateway's registry (not the crate's default one, so tests and the
/// bench can read exactly what the gateway exports).
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn register<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    // Each metric is registered exactly once, from its LazyLock.
    REGISTRY
        .register(Box::new(collector.clone()))
        .expect("metric registered once");
    collector
}

pub static SESSIONS_ACTIVE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "chronus_sessions_active",
                "Browser sessions open, by provider",
            ),
            &["provider"],
        )
        .expect("valid metric"),
    )
});

pub static THOTH_REF_COUNT: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "chronus_thoth_ref_count",
                "Sessions subscribed to a thoth endpoint's upstream actor",
            ),
            &["endpoint"],
        )
        .expect("valid metric"),
    )
});

pub static THOTH_CONNECTION_STATE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "chronus_thoth_connection_state",
                "Upstream socket state: 0 down, 1 connecting, 2 open",
            ),
            &["endpoint"],
        )
        .expect("valid metric"),
    )
});

pub static THOTH_SOCKETS_OPEN: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "chronus_thoth_sockets_open",
                "Open upstream sockets per thoth endpoint",
            ),
            &["endpoint"],
        )
        .expect("valid metric"),
    )
});

pub static THOTH_RECONNECTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "chronus_thoth_reconnects_total",
                "Upstream sockets re-opened after an unexpected loss",
            ),
            &["endpoint"],
        )
        .expect("valid metric"),
    )
});

static FRAMES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "chronus_frames_total",
                "WebSocket frames relayed, by direction",
            ),
            &["direction"],
        )
        .expect("valid metric"),
    )
});

static BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("chronus_bytes_total", "Payload bytes relayed, by direction"),
            &["direction"],
        )
        .expect("valid metric"),
    )
});

pub static AUTH_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new("chronus_auth_failures_total", "Refused requests, by reason"),
            &["reason"],
        )
        .expect("valid metric"),
    )
});

/// Why a session was refused admission under load (values of the `reason`
/// label of `chronus_admission_refusals_total`).
pub const REFUSAL_MAX_SESSIONS: &str = "max_sessions";
pub const REFUSAL_MAX_SESSIONS_PER_USER: &str = "max_sessions_per_user";
pub const REFUSAL_THOTH_BUSY: &str = "thoth_busy";
/// The shared thoth socket is congested or the audio budget nearly spent.
pub const REFUSAL_AT_CAPACITY: &str = "at_capacity";

pub static ADMISSION_REFUSALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "chronus_admission_refusals_total",
                "Sessions refused for lack of capacity, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric"),
    )
});

pub static ERRORS_SENT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(
        IntCounterVec::new(
            Opts::new(
                "chronus_errors_total",
                "Error envelopes sent to browsers, by code and where the failure came from (downstream, upstream, gateway)",
            ),
            &["code", "source"],
        )
        .expect("valid metric"),
    )
});

/// The configured `MAX_SESSIONS`, so alerts can compare the load with it.
pub static SESSIONS_MAX: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "chronus_sessions_max",
            "The process-wide session cap (MAX_SESSIONS)",
        )
        .expect("valid metric"),
    )
});

/// The share of its cores the gateway uses, smoothed (`cpu_load.rs`): its
/// own saturation, which admission compares with `OVERLOAD_CPU_PERCENT`.
pub static CPU_UTILIZATION: LazyLock<Gauge> = LazyLock::new(|| {
    register(
        Gauge::new(
            "chronus_cpu_utilization_ratio",
            "Share of the cores available to the gateway that it uses (smoothed)",
        )
        .expect("valid metric"),
    )
});

/// Audio the gateway holds for thoth, by kind (`queued` toward the sockets,
/// `replay` kept for resumes), against `AUDIO_BUFFER_BUDGET_BYTES`.
pub static AUDIO_BUFFERED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register(
        IntGaugeVec::new(
            Opts::new(
                "chronus_audio_buffered_bytes",
                "Audio held for thoth: queued toward its sockets, or kept for replay",
            ),
            &["kind"],
        )
        .expect("valid metric"),
    )
});

/// The configured `AUDIO_BUFFER_BUDGET_BYTES`.
pub static AUDIO_BUDGET_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        IntGauge::new(
            "chronus_audio_buffer_budget_bytes",
            "The process-wide audio-buffer budget (AUDIO_BUFFER_BUDGET_BYTES)",
        )
        .expect("valid metric"),
    )
});

/// Counts a session refused by `reason` (one of the `REFUSAL_…` values).
pub fn count_refusal(reason: &str) {
    ADMISSION_REFUSALS.with_label_values(&[reason]).inc();
}

/// Counts an error that ends a session as a refusal when it is one (thoth
/// said it is busy: no free legacy endpoint, `OVERLOADED`, close 1013).
pub fn count_session_error(code: ErrorCode) {
    if code == ErrorCode::ThothBusy {
        count_refusal(REFUSAL_THOTH_BUSY);
    }
}

pub static SESSION_DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new("chronus_session_duration_seconds", "Session lifetimes")
                .buckets(exponential_buckets(1.0, 2.0, 14).expect("valid buckets")),
            &["provider"],
        )
        .expect("valid metric"),
    )
});

static RELAY_LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(
        HistogramVec::new(
            HistogramOpts::new(
                "chronus_relay_latency_seconds",
                "Time a frame spends in the gateway: browser frame received → bytes queued to the upstream socket (upstream), upstream result received → browser write (downstream)",
            )
            .buckets(exponential_buckets(0.000_01, 2.0, 18).expect("valid buckets")),
            &["direction"],
        )
        .expect("valid metric"),
    )
});

/// Counters and histograms for one direction of traffic.
pub struct Direction {
    pub frames: IntCounter,
    pub bytes: IntCounter,
}

impl Direction {
    fn new(name: &str) -> Direction {
        Direction {
            frames: FRAMES.with_label_values(&[name]),
            bytes: BYTES.with_label_values(&[name]),
        }
    }

    pub fn record(&self, bytes: usize) {
        self.frames.inc();
        self.bytes.inc_by(bytes as u64);
    }
}

pub static CLIENT_TO_GATEWAY: LazyLock<Direction> =
    LazyLock::new(|| Direction::new("client_to_gateway"));
pub static GATEWAY_TO_UPSTREAM: LazyLock<Direction> =
    LazyLock::new(|| Direction::new("gateway_to_upstream"));
pub static UPSTREAM_TO_GATEWAY: LazyLock<Direction> =
    LazyLock::new(|| Direction::new("upstream_to_gateway"));
pub static GATEWAY_TO_CLIENT: LazyLock<Direction> =
    LazyLock::new(|| Direction::new("gateway_to_client"));

pub static LATENCY_UPSTREAM: LazyLock<Histogram> =
    LazyLock::new(|| RELAY_LATENCY.with_label_values(&["upstream"]));
pub static LATENCY_DOWNSTREAM: LazyLock<Histogram> =
    LazyLock::new(|| RELAY_LATENCY.with_label_values(&["downstream"]));

/// Makes every metric family visible from the first scrape, even at zero.
pub fn init() {
    for provider in ["thoth", "mistral"] {
        SESSIONS_ACTIVE.with_label_values(&[provider]);
        SESSION_DURATION.with_label_values(&[provider]);
    }
    LazyLock::force(&CLIENT_TO_GATEWAY);
    LazyLock::force(&GATEWAY_TO_UPSTREAM);
    LazyLock::force(&UPSTREAM_TO_GATEWAY);
    LazyLock::force(&GATEWAY_TO_CLIENT);
    LazyLock::force(&LATENCY_UPSTREAM);
    LazyLock::force(&LATENCY_DOWNSTREAM);
    LazyLock::force(&AUTH_FAILURES);
    // Refusal counters exist at 0, so `increase()` sees the first refusal.
    for reason in [
        REFUSAL_MAX_SESSIONS,
        REFUSAL_MAX_SESSIONS_PER_USER,
        REFUSAL_THOTH_BUSY,
        REFUSAL_AT_CAPACITY,
    ] {
        ADMISSION_REFUSALS.with_label_values(&[reason]);
    }
    LazyLock::force(&SESSIONS_MAX);
    LazyLock::force(&CPU_UTILIZATION);
    LazyLock::force(&ERRORS_SENT);
    LazyLock::force(&THOTH_REF_COUNT);
    LazyLock::force(&THOTH_CONNECTION_STATE);
    LazyLock::force(&THOTH_SOCKETS_OPEN);
    LazyLock::force(&THOTH_RECONNECTS);
}

/// The Prometheus text exposition of every metric.
pub fn render() -> String {
    // Read off the lock-free counts at scrape time.
    let budget = &crate::upstream::audio_budget::AUDIO_BUDGET;
    AUDIO_BUFFERED
        .with_label_values(&["queued"])
        .set(budget.used() as i64);
    AUDIO_BUFFERED
        .with_label_values(&["replay"])
        .set(budget.held() as i64);
    AUDIO_BUDGET_BYTES.set(budget.limit() as i64);
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail for well-formed metric families.
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}
