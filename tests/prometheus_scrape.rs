//! A real Prometheus scrapes the gateway's admin listener every second while
//! sessions come and go, and the series are read back through Prometheus's
//! HTTP API: the reference count follows the open sessions, reconnects are
//! counted across a thoth restart, refusals and auth failures by reason,
//! relay latency quantiles. Then every query of the Grafana dashboard
//! (deploy/grafana/dashboards) runs against the same Prometheus and returns
//! data, and the alert rules (deploy/prometheus/alerts.yml) load in it, two
//! of them shown to hold on the real series at the moment they should.
//!
//! Metrics are process-global, so this binary holds one scenario. Needs
//! `prometheus` (scripts/install-test-deps.sh); without it the test prints a
//! SKIP note, or fails when `CI` is set.

mod common;

use std::time::Duration;

use chronus_gateway::devthoth::{DevThoth, DevThothOptions};
use chronus_gateway::RunningGateway;
use common::prometheus::{repo_path, sample_value, tool_or_skip, Prometheus, GATEWAY_JOB};
use common::*;
use serde_json::{json, Value};

const TRANSCRIBE: &str = "/api/audio/transcribe";
/// The gateway's MAX_SESSIONS: the scenario fills it.
const MAX_SESSIONS: usize = 4;
/// 20 ms of f32le audio at 16 kHz.
const FRAME_BYTES: usize = 1280;
/// How long a series may take to show a change: a few 1 s scrapes.
const SETTLE: Duration = Duration::from_secs(15);
const ALERTS: &str = "deploy/prometheus/alerts.yml";
const DASHBOARD: &str = "deploy/grafana/dashboards/chronus-gateway.json";
/// What the dashboard's Grafana variables stand for in the test.
const DASHBOARD_VARIABLES: &[(&str, &str)] = &[("$__rate_interval", "5m"), ("$instance", ".*")];

/// A PromQL label matcher value for `s` (quotes and backslashes escaped).
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `{provider: value}` of a `sum by (provider)` result (or any one label).
fn by_label(result: &[Value], label: &str) -> Vec<(String, f64)> {
    let mut pairs: Vec<(String, f64)> = result
        .iter()
        .map(|s| {
            (
                s["metric"][label].as_str().unwrap_or_default().to_string(),
                sample_value(s),
            )
        })
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    pairs
}

/// A session that got `ready`.
async fn open_session(gateway: &RunningGateway, user: &str) -> WsClient {
    let token = token_for(user);
    let mut client = connect(&ws_url(gateway, TRANSCRIBE), Auth::Query(&token), None)
        .await
        .client;
    client.expect_type("ready").await;
    client
}

/// The alert rule named `alert`'s expression, from the rules file.
fn alert_expr(alert: &str) -> String {
    let text = std::fs::read_to_string(repo_path(ALERTS)).expect("alert rules");
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    rules["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .find(|r| r["alert"].as_str() == Some(alert))
        .and_then(|r| r["expr"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no alert {alert} in {ALERTS}"))
}

/// Every `(panel title, expr)` of the dashboard, variables substituted.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_path(DASHBOARD)).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("panel title");
        let targets = panel["targets"].as_array().expect("panel targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            let mut expr = target["expr"].as_str().expect("target expr").to_string();
            for (variable, value) in DASHBOARD_VARIABLES {
                expr = expr.replace(variable, value);
            }
            assert!(!expr.contains('$'), "unknown variable in {expr}");
            queries.push((title.to_string(), expr));
        }
    }
    queries
}

#[actix_rt::test]
async fn a_real_prometheus_scrape_follows_sessions_and_feeds_every_dashboard_query() {
    let Some(binary) = tool_or_skip("prometheus", "prometheus_scrape") else {
        return;
    };
    // Two thoth endpoints: sessions are spread over both, each with its own
    // `endpoint` series. The first one is restarted later.
    let mut thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let other_thoth = DevThoth::start(DevThothOptions::default()).unwrap();
    let thoth_addr = thoth.addr();
    let mut env = base_env(&format!("{},{}", thoth.url(), other_thoth.url()));
    env.insert("MAX_SESSIONS".into(), MAX_SESSIONS.to_string());
    // Sessions outlive thoth's restart by far (a down thoth is observed first).
    env.insert("THOTH_RESUME_TIMEOUT_SECS".into(), "60".into());
    let gateway = start_gateway(&env).await;
    let prometheus = Prometheus::start(
        &binary,
        &[gateway.admin_addr.to_string()],
        &[repo_path(ALERTS)],
    )
    .await;
    let pool = pool_report(&gateway).await;
    let endpoints: Vec<String> = (0..2)
        .map(|i| {
            pool["thoth"][i]["url"]
                .as_str()
                .expect("the pool names its endpoints")
                .to_string()
        })
        .collect();
    let ep = quoted(&endpoints[0]);
    let ref_counts = "chronus_thoth_ref_count";
    let total_ref_count = format!("sum({ref_counts})");
    // Both endpoints at 0, as `by_label` sorts them.
    let mut at_zero: Vec<(String, f64)> = endpoints.iter().map(|e| (e.clone(), 0.0)).collect();
    at_zero.sort_by(|a, b| a.0.cmp(&b.0));

    // The target is up and the rule file loaded (an alert rule evaluates).
    prometheus
        .wait_value(
            "gateway target up",
            &format!("up{{job={}}}", quoted(GATEWAY_JOB)),
            1.0,
            SETTLE,
        )
        .await;
    prometheus
        .wait_for("reference counts at rest", ref_counts, SETTLE, |r| {
            by_label(r, "endpoint") == at_zero
        })
        .await;
    prometheus
        .wait_value(
            "MAX_SESSIONS exported",
            "chronus_sessions_max",
            MAX_SESSIONS as f64,
            SETTLE,
        )
        .await;

    // The reference counts rise with each session, to the number of open
    // sessions in all, spread over both endpoints.
    let mut clients = Vec::new();
    for n in 1..=MAX_SESSIONS {
        clients.push(open_session(&gateway, &format!("scrape-{n}")).await);
        prometheus
            .wait_value("reference count rises", &total_ref_count, n as f64, SETTLE)
            .await;
    }
    let spread = by_label(&prometheus.query(ref_counts).await, "endpoint");
    assert_eq!(spread.len(), 2, "{spread:?}");
    assert!(spread.iter().all(|(_, count)| *count >= 1.0), "{spread:?}");
    prometheus
        .wait_for(
            "sessions by provider",
            "sum by (provider) (chronus_sessions_active)",
            SETTLE,
            |r| {
                by_label(r, "provider")
                    == [
                        ("mistral".into(), 0.0),
                        ("thoth".into(), MAX_SESSIONS as f64),
                    ]
            },
        )
        .await;
    // At the cap, the near-limit alert's expression holds (its `for:`
    // keeps it pending; the promtool tests cover the timing).
    prometheus
        .wait_for(
            "ChronusSessionsNearLimit expression",
            &alert_expr("ChronusSessionsNearLimit"),
            SETTLE,
            |r| r.len() == 1 && sample_value(&r[0]) == 1.0,
        )
        .await;

    // One more session is refused at MAX_SESSIONS, and counted.
    let extra = token_for("scrape-extra");
    let mut refused = connect(&ws_url(&gateway, TRANSCRIBE), Auth::Query(&extra), None)
        .await
        .client;
    let (messages, _close) = refused.until_close(Duration::from_secs(5)).await;
    assert_eq!(messages[0]["code"], "TOO_MANY_SESSIONS");
    prometheus
        .wait_value(
            "refusal counted by reason",
            "chronus_admission_refusals_total{reason=\"max_sessions\"}",
            1.0,
            SETTLE,
        )
        .await;

    // Audio flows to thoth on every session.
    let audio = f32_audio(0.25, 0.5);
    for client in clients.iter_mut() {
        for frame in audio.chunks(FRAME_BYTES) {
            client.send_binary(frame.to_vec()).await;
        }
    }
    // The first thoth restarts on the same address with the sessions open:
    // the gateway reconnects to it and counts it against that endpoint only.
    thoth.stop();
    // While it is down, its sessions wait to resume: the disconnected
    // alert's expression (without its `for:`) picks out exactly that endpoint.
    prometheus
        .wait_for(
            "ChronusThothDisconnected expression",
            &alert_expr("ChronusThothDisconnected"),
            SETTLE,
            |r| r.len() == 1 && r[0]["metric"]["endpoint"] == endpoints[0].as_str(),
        )
        .await;
    thoth = DevThoth::start(DevThothOptions {
        bind: thoth_addr,
        ..DevThothOptions::default()
    })
    .unwrap();
    prometheus
        .wait_for(
            "reconnect counted",
            &format!("chronus_thoth_reconnects_total{{endpoint={ep}}}"),
            SETTLE,
            |r| r.len() == 1 && sample_value(&r[0]) >= 1.0,
        )
        .await;
    // The other endpoint's counter is absent (never incremented) or 0.
    let untouched = quoted(&endpoints[1]);
    let other = prometheus
        .query(&format!(
            "chronus_thoth_reconnects_total{{endpoint={untouched}}}"
        ))
        .await;
    assert!(other.iter().all(|s| sample_value(s) == 0.0), "{other:?}");
    prometheus
        .wait_value(
            "reconnected",
            &format!("chronus_thoth_connection_state{{endpoint={ep}}}"),
            2.0,
            SETTLE,
        )
        .await;

    // The sessions end: every reference count falls back to 0.
    let end = json!({"type": "end"}).to_string();
    for mut client in clients {
        client.send_text(end.clone()).await;
        client.until_close(Duration::from_secs(10)).await;
    }
    prometheus
        .wait_for("reference counts fall", ref_counts, SETTLE, |r| {
            by_label(r, "endpoint") == at_zero
        })
        .await;
    prometheus
        .wait_value(
            "no thoth session left",
            "chronus_sessions_active{provider=\"thoth\"}",
            0.0,
            SETTLE,
        )
        .await;

    // Frames went both ways: both relay-latency histograms give quantiles.
    for direction in ["upstream", "downstream"] {
        for quantile in [0.5, 0.99] {
            let query = format!(
                "histogram_quantile({quantile}, sum by (le) (rate(chronus_relay_latency_seconds_bucket{{direction=\"{direction}\"}}[1m])))"
            );
            prometheus
                .wait_for("relay latency quantile", &query, SETTLE, |r| {
                    r.len() == 1 && sample_value(&r[0]).is_finite() && sample_value(&r[0]) > 0.0
                })
                .await;
        }
    }

    // Bad tokens are counted by reason.
    let expired = token_with(json!({"sub": "late", "exp": now() - 120}));
    // The signature's first character changed (all six of its bits count).
    let forged = {
        let token = token_for("forger");
        let at = token.rfind('.').expect("three parts") + 1;
        let swapped = if token[at..].starts_with('A') {
            "B"
        } else {
            "A"
        };
        format!("{}{swapped}{}", &token[..at], &token[at + 1..])
    };
    for token in [&expired, &expired, &forged] {
        let mut client = connect(&ws_url(&gateway, TRANSCRIBE), Auth::Query(token), None)
            .await
            .client;
        let (messages, _) = client.until_close(Duration::from_secs(5)).await;
        assert_eq!(messages[0]["code"], "UNAUTHORIZED");
    }
    prometheus
        .wait_for(
            "auth failures by reason",
            "sum by (reason) (chronus_auth_failures_total)",
            SETTLE,
            |r| by_label(r, "reason") == [("bad_signature".into(), 1.0), ("expired".into(), 2.0)],
        )
        .await;

    // The alert rules loaded, and every one evaluates without error against
    // the real series (healthy after its last evaluation).
    let alerts_in_file = std::fs::read_to_string(repo_path(ALERTS))
        .expect("alert rules")
        .matches("- alert: ")
        .count();
    let rules = prometheus.api("/api/v1/rules").await;
    let loaded: Vec<Value> = rules["groups"]
        .as_array()
        .expect("rule groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(loaded.len(), alerts_in_file, "{rules}");
    for rule in loaded {
        assert_eq!(rule["health"], "ok", "{rule}");
    }

    // Every dashboard query returns data from this Prometheus.
    for (panel, expr) in dashboard_queries() {
        prometheus
            .wait_for(&format!("dashboard panel {panel:?}"), &expr, SETTLE, |r| {
                !r.is_empty()
            })
            .await;
    }

    drop(prometheus);
    gateway.stop().await;
    thoth.stop();
    other_thoth.stop();
}
