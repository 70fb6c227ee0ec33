//! The alert rules of deploy/prometheus/alerts.yml, checked by Prometheus's
//! own tool: `promtool check rules` (they parse and their PromQL is valid),
//! `promtool test rules` (each alert fires on its test series and stays quiet
//! on the others), `promtool check config` (deploy/prometheus.yml loads them).
//! Needs `promtool` (Debian package `prometheus`, installed by
//! scripts/install-test-deps.sh); without it the tests print a SKIP note, or
//! fail when `CI` is set.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::prometheus::{repo_path, tool_or_skip};
use serde_yaml::Value;

const ALERTS: &str = "deploy/prometheus/alerts.yml";
const RULE_TESTS_DIR: &str = "deploy/prometheus/tests";
const PROMETHEUS_CONFIG: &str = "deploy/prometheus.yml";
const DEPLOYMENT_DOC: &str = "docs/deployment.md";

/// Runs `promtool args…` in `dir`; panics with its output when it fails.
fn promtool(promtool: &Path, dir: &Path, args: &[&str]) -> String {
    let output = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "promtool {args:?} failed ({}):\n{text}",
        output.status
    );
    text
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

/// (group name, alert names) of the rules file.
fn rule_groups() -> Vec<(String, Vec<String>)> {
    let rules = yaml(&repo_path(ALERTS));
    rules["groups"]
        .as_sequence()
        .expect("groups")
        .iter()
        .map(|group| {
            let alerts = group["rules"]
                .as_sequence()
                .expect("rules")
                .iter()
                .map(|rule| rule["alert"].as_str().expect("alerting rules only").into())
                .collect();
            (group["name"].as_str().expect("group name").into(), alerts)
        })
        .collect()
}

/// The rule test files, sorted.
fn rule_test_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_path(RULE_TESTS_DIR))
        .expect("rule tests directory")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.to_string_lossy().ends_with(".test.yml"))
        .collect();
    files.sort();
    files
}

/// The alert names a rule test file evaluates, with how many of its checks
/// expect the alert firing and how many expect it quiet.
fn tested_alerts(file: &Path) -> Vec<(String, bool)> {
    yaml(file)["tests"]
        .as_sequence()
        .expect("tests")
        .iter()
        .flat_map(|test| {
            test["alert_rule_test"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .map(|check| {
            let name = check["alertname"].as_str().expect("alertname").to_string();
            let fires = check["exp_alerts"]
                .as_sequence()
                .is_some_and(|alerts| !alerts.is_empty());
            (name, fires)
        })
        .collect()
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let Some(promtool_bin) = tool_or_skip("promtool", "promtool_accepts_the_alert_rules") else {
        return;
    };
    let out = promtool(&promtool_bin, &repo_path("."), &["check", "rules", ALERTS]);
    let alerts: usize = rule_groups().iter().map(|(_, a)| a.len()).sum();
    assert!(
        out.contains(&format!("SUCCESS: {alerts} rules found")),
        "{out}"
    );
}

#[test]
fn every_alert_fires_and_stays_quiet_in_its_promtool_unit_tests() {
    let Some(promtool_bin) = tool_or_skip(
        "promtool",
        "every_alert_fires_and_stays_quiet_in_its_promtool_unit_tests",
    ) else {
        return;
    };
    let files = rule_test_files();
    // One test file per rule group, named after it (chronus-thoth → thoth).
    for (group, alerts) in rule_groups() {
        let short = group.trim_start_matches("chronus-");
        let file = repo_path(RULE_TESTS_DIR).join(format!("{short}.test.yml"));
        assert!(files.contains(&file), "no rule test file for group {group}");
        let checks = tested_alerts(&file);
        for alert in alerts {
            for fires in [true, false] {
                assert!(
                    checks.contains(&(alert.clone(), fires)),
                    "{}: no check that {alert} {}",
                    file.display(),
                    if fires { "fires" } else { "stays quiet" }
                );
            }
        }
    }
    let dir = repo_path(RULE_TESTS_DIR);
    for file in files {
        let name = file.file_name().expect("file name").to_string_lossy();
        let out = promtool(&promtool_bin, &dir, &["test", "rules", &name]);
        assert!(out.contains("SUCCESS"), "{out}");
    }
}

#[test]
fn the_compose_prometheus_config_loads_the_alert_rules() {
    let Some(promtool_bin) = tool_or_skip(
        "promtool",
        "the_compose_prometheus_config_loads_the_alert_rules",
    ) else {
        return;
    };
    let out = promtool(
        &promtool_bin,
        &repo_path("."),
        &["check", "config", PROMETHEUS_CONFIG],
    );
    assert!(out.contains("SUCCESS"), "{out}");
    assert!(
        out.contains("alerts.yml"),
        "the config names the rules: {out}"
    );
}

#[test]
fn every_alert_has_a_runbook_section_in_the_deployment_doc() {
    let doc = std::fs::read_to_string(repo_path(DEPLOYMENT_DOC)).expect("deployment doc");
    let headings: BTreeSet<&str> = doc
        .lines()
        .filter_map(|l| l.strip_prefix("#### "))
        .map(str::trim)
        .collect();
    for (_, alerts) in rule_groups() {
        for alert in alerts {
            assert!(
                headings.contains(alert.as_str()),
                "{DEPLOYMENT_DOC} has no `#### {alert}` section"
            );
        }
    }
}
