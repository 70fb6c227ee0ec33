//! `/metrics` on the admin listener, scraped while sessions come and go: the
//! series of docs/deployment.md move as documented.
//!
//! Metrics are process-global, so this binary holds a single gateway
//! scenario (the other test only exercises the parser): nothing else in the
//! process moves them. Counters are still compared as deltas from a first
//! scrape.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chronus_gateway::devthoth::{describe_audio, DevThoth, DevThothOptions};
use chronus_gateway::RunningGateway;
use common::*;
use serde_json::{json, Value};

const TRANSCRIBE: &str = "/api/audio/transcribe";
/// Sessions opened at once.
const SESSIONS: usize = 4;
/// Audio per session, in 20 ms frames of f32le at 16 kHz (1,280 bytes each).
const FRAME_BYTES: usize = 1280;
const AUDIO_SECONDS: f64 = 1.0;
/// How long a gauge may take to follow an event.
const SETTLE: Duration = Duration::from_secs(3);

// ---- the Prometheus text format --------------------------------------------

/// One sample line: `name{label="value",…} value [timestamp]`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: its samples and each family's `# TYPE`.
#[derive(Debug)]
struct Scrape {
    samples: Vec<Sample>,
    types: BTreeMap<String, String>,
}

fn parse_exposition(text: &str) -> Scrape {
    let mut samples = Vec::new();
    let mut types = BTreeMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            if words.next() == Some("TYPE") {
                let (Some(name), Some(kind)) = (words.next(), words.next()) else {
                    panic!("line {}: bad TYPE line {line:?}", number + 1);
                };
                types.insert(name.to_string(), kind.to_string());
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        samples.push(
            parse_sample(line).unwrap_or_else(|e| panic!("line {}: {e}: {line:?}", number + 1)),
        );
    }
    Scrape { samples, types }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .ok_or("no value")?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            inner = inner.trim_start_matches([',', ' ']);
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (label, after_eq) = inner.split_once("=\"").ok_or("label without =\"")?;
            let mut value = String::new();
            let mut chars = after_eq.char_indices();
            let close = loop {
                match chars.next().ok_or("unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.insert(label.trim().to_string(), value);
            inner = &after_eq[close + 1..];
        }
    }
    let raw = rest.split_whitespace().next().ok_or("no value")?;
    let value = match raw {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number
            .parse()
            .map_err(|e| format!("value {number:?}: {e}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

impl Scrape {
    /// The one sample of `name` whose labels include `labels`; `None` when
    /// there is none.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(
            matching.len() <= 1,
            "{name}{labels:?} is ambiguous: {matching:?}"
        );
        matching.first().map(|s| s.value)
    }

    /// Like [`Scrape::get`], with a missing series read as 0 (a counter not
    /// yet incremented).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

#[test]
fn the_exposition_parser_reads_labels_escapes_and_special_values() {
    let scrape = parse_exposition(
        "# HELP x_total A counter\n# TYPE x_total counter\n\
         x_total{a=\"1\",b=\"quote \\\" comma , brace } slash \\\\\"} 3\n\
         y_bucket{le=\"+Inf\"} +Inf 1700000000\n\
         z 0.5\n",
    );
    assert_eq!(scrape.types["x_total"], "counter");
    assert_eq!(
        scrape.samples[0].labels["b"],
        "quote \" comma , brace } slash \\"
    );
    assert_eq!(scrape.get("x_total", &[("a", "1")]), Some(3.0));
    assert_eq!(
        scrape.get("y_bucket", &[("le", "+Inf")]),
        Some(f64::INFINITY)
    );
    assert_eq!(scrape.get("z", &[]), Some(0.5));
    assert_eq!(scrape.get("x_total", &[("a", "2")]), None);
}

// ---- the scenario --------------------------------------------------------------

async fn scrape(gateway: &RunningGateway) -> Scrape {
    let url = format!("http://{}/metrics", gateway.admin_addr);
    let mut response = awc::Client::new().get(url).send().await.expect("scrape");
    assert!(response.status().is_success());
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let body = response.body().limit(16 * 1024 * 1024).await.expect("body");
    parse_exposition(std::str::from_utf8(&body).expect("UTF-8 exposition"))
}

/// Scrapes until `check` holds (or `SETTLE` passes); returns the last scrape.
async fn scrape_until(gateway: &RunningGateway, check: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let scraped = scrape(gateway).await;
        if check(&scraped) || tokio::time::Instant::now() >= deadline {
            return scraped;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Series<'a> {
    endpoint: &'a str,
}

impl Series<'_> {
    fn ref_count(&self, s: &Scrape) -> f64 {
        s.value("chronus_thoth_ref_count", &[("endpoint", self.endpoint)])
    }
    fn connection_state(&self, s: &Scrape) -> f64 {
        s.value(
            "chronus_thoth_connection_state",
            &[("endpoint", self.endpoint)],
        )
    }
    fn sockets_open(&self, s: &Scrape) -> f64 {
        s.value("chronus_thoth_sockets_open", &[("endpoint", self.endpoint)])
    }
}

fn sessions_active(s: &Scrape) -> f64 {
    s.value("chronus_sessions_active", &[("provider", "thoth")])
}

fn frames(s: &Scrape, direction: &str) -> f64 {
    s.value("chronus_frames_total", &[("direction", direction)])
}

fn bytes(s: &Scrape, direction: &str) -> f64 {
    s.value("chronus_bytes_total", &[("direction", direction)])
}

fn durations_observed(s: &Scrape) -> f64 {
    s.value(
        "chronus_session_duration_seconds_count",
        &[("provider", "thoth")],
    )
}

fn latencies_observed(s: &Scrape, direction: &str) -> f64 {
    s.value(
        "chronus_relay_latency_seconds_count",
        &[("direction", direction)],
    )
}

fn expired_refusals(s: &Scrape) -> f64 {
    s.value("chronus_auth_failures_total", &[("reason", "expired")])
}

const DIRECTIONS: [&str; 4] = [
    "client_to_gateway",
    "gateway_to_upstream",
    "upstream_to_gateway",
    "gateway_to_client",
];

#[actix_rt::test]
async fn metrics_follow_sessions_as_they_come_and_go() {
    let thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let gateway = start_gateway(&base_env(&thoth.url())).await;
    let endpoint = pool_report(&gateway).await["thoth"][0]["url"]
        .as_str()
        .expect("the pool names its endpoint")
        .to_string();
    let series = Series {
        endpoint: &endpoint,
    };

    // Every family is declared with the type the docs give it.
    let before = scrape(&gateway).await;
    for (family, kind) in [
        ("chronus_sessions_active", "gauge"),
        ("chronus_thoth_ref_count", "gauge"),
        ("chronus_thoth_connection_state", "gauge"),
        ("chronus_thoth_sockets_open", "gauge"),
        ("chronus_frames_total", "counter"),
        ("chronus_bytes_total", "counter"),
        ("chronus_session_duration_seconds", "histogram"),
        ("chronus_relay_latency_seconds", "histogram"),
    ] {
        assert_eq!(
            before.types.get(family).map(String::as_str),
            Some(kind),
            "{family}"
        );
    }
    assert_eq!(series.ref_count(&before), 0.0);
    assert_eq!(series.connection_state(&before), 0.0, "down until needed");
    assert_eq!(sessions_active(&before), 0.0);

    // Sessions arrive one by one: the reference count and the active
    // sessions gauge rise with them; one shared socket opens.
    let mut clients = Vec::new();
    for n in 1..=SESSIONS {
        let token = token_for(&format!("metrics-{n}"));
        let mut client = connect(&ws_url(&gateway, TRANSCRIBE), Auth::Query(&token), None)
            .await
            .client;
        client.expect_type("ready").await;
        clients.push(client);
        let now = scrape_until(&gateway, |s| series.ref_count(s) == n as f64).await;
        assert_eq!(series.ref_count(&now), n as f64, "ref count after {n}");
        assert_eq!(sessions_active(&now), n as f64, "active after {n}");
    }
    let busy = scrape(&gateway).await;
    assert_eq!(series.connection_state(&busy), 2.0, "open");
    assert_eq!(series.sockets_open(&busy), 1.0, "one shared socket");

    // Each session streams a second of audio and ends; the next one only
    // starts once it has finished, so the gauges fall one step at a time.
    let audio_frames = (16_000.0 * AUDIO_SECONDS) as usize * 4 / FRAME_BYTES;
    let end_message = json!({"type": "end"}).to_string();
    let mut received = 0usize;
    for (i, mut client) in clients.into_iter().enumerate() {
        let level = (i as f32 + 1.0) / 8.0;
        let audio = f32_audio(level, AUDIO_SECONDS);
        for frame in audio.chunks(FRAME_BYTES) {
            client.send_binary(frame.to_vec()).await;
        }
        client.send_text(end_message.clone()).await;
        let (messages, close) = client.until_close(Duration::from_secs(10)).await;
        assert_eq!(close, Some(1000));
        let finals: Vec<&Value> = messages
            .iter()
            .filter(|m| m["type"] == "transcription")
            .map(|m| &m["data"])
            .collect();
        assert_eq!(finals, [&json!(describe_audio(0, &vec![level; 16_000]))]);
        received += messages.len() + 1; // + the `ready` read earlier

        let left = (SESSIONS - i - 1) as f64;
        let now = scrape_until(&gateway, |s| {
            series.ref_count(s) == left && sessions_active(s) == left
        })
        .await;
        assert_eq!(series.ref_count(&now), left, "ref count falls");
        assert_eq!(sessions_active(&now), left, "active sessions fall");
    }

    let after = scrape(&gateway).await;
    let delta = |f: &dyn Fn(&Scrape) -> f64| f(&after) - f(&before);
    // The browser side is counted exactly: every audio frame and `end`
    // in, every message out.
    assert_eq!(
        delta(&|s| frames(s, "client_to_gateway")),
        (SESSIONS * (audio_frames + 1)) as f64
    );
    assert_eq!(
        delta(&|s| bytes(s, "client_to_gateway")),
        (SESSIONS * (audio_frames * FRAME_BYTES + end_message.len())) as f64
    );
    assert_eq!(delta(&|s| frames(s, "gateway_to_client")), received as f64);
    for direction in DIRECTIONS {
        assert!(
            delta(&|s| frames(s, direction)) > 0.0,
            "{direction} frames grow"
        );
        assert!(
            delta(&|s| bytes(s, direction)) > 0.0,
            "{direction} bytes grow"
        );
    }
    // At least the audio itself went to thoth.
    assert!(
        delta(&|s| bytes(s, "gateway_to_upstream"))
            >= (SESSIONS * audio_frames * FRAME_BYTES) as f64
    );
    for direction in ["upstream", "downstream"] {
        assert!(
            delta(&|s| latencies_observed(s, direction)) > 0.0,
            "{direction} relay latency observed"
        );
    }

    // Every finished session's lifetime was observed, and the histogram is
    // consistent: the +Inf bucket holds every observation.
    assert_eq!(delta(&durations_observed), SESSIONS as f64);
    assert_eq!(
        after.value(
            "chronus_session_duration_seconds_bucket",
            &[("provider", "thoth"), ("le", "+Inf")]
        ),
        durations_observed(&after)
    );
    assert!(
        after.value(
            "chronus_session_duration_seconds_sum",
            &[("provider", "thoth")]
        ) > 0.0
    );

    // The idle shared socket closes after THOTH_IDLE_CLOSE_SECS (1 s here).
    let idle = scrape_until(&gateway, |s| series.connection_state(s) == 0.0).await;
    assert_eq!(series.connection_state(&idle), 0.0, "down when idle");
    assert_eq!(series.sockets_open(&idle), 0.0);

    // A refused expired token is counted under its reason; no session opens.
    let expired = token_with(json!({"sub": "late", "exp": now() - 120}));
    let mut refused = connect(&ws_url(&gateway, TRANSCRIBE), Auth::Query(&expired), None)
        .await
        .client;
    let (messages, close) = refused.until_close(Duration::from_secs(5)).await;
    assert_eq!(messages[0]["code"], "UNAUTHORIZED");
    assert_eq!(close, Some(4401));
    let last = scrape(&gateway).await;
    assert_eq!(expired_refusals(&last) - expired_refusals(&before), 1.0);
    assert_eq!(sessions_active(&last), 0.0);
    assert_eq!(series.ref_count(&last), 0.0);

    gateway.stop().await;
    thoth.stop();
}
