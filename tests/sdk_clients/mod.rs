//! Runs Mistral's official SDKs (tests/sdk/: the pinned PyPI `mistralai` in
//! tests/sdk/.venv, the pinned npm `@mistralai/mistralai` in
//! tests/sdk/node_modules, both installed by scripts/install-sdk-test-deps.sh)
//! as child processes on a scenario, and reads back what the SDK saw.
//!
//! A missing SDK fails the test, with the command that installs it; only
//! outside CI, and only with `SKIP_SDK_TESTS=1`, is it skipped (loudly).
#![allow(dead_code)]

pub mod expect;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

/// Set to 1 to skip the SDK tests on a machine without the SDKs (never in CI).
pub const SKIP_VAR: &str = "SKIP_SDK_TESTS";
/// How long one SDK run may take before the test gives up on it.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Which official SDK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sdk {
    /// PyPI `mistralai` 3.7.0 (`mistralai.extra.realtime`).
    Python,
    /// npm `@mistralai/mistralai` 2.7.0 (`@mistralai/mistralai/extra/realtime`).
    Node,
}

fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk")
}

impl Sdk {
    /// The interpreter and the client program, or why they are missing.
    fn command(self) -> Result<(PathBuf, PathBuf), String> {
        let dir = sdk_dir();
        match self {
            Sdk::Python => {
                let python = dir.join(".venv/bin/python");
                let installed = dir.join(".venv/installed-requirements.txt");
                if !python.exists() || !installed.exists() {
                    return Err(format!("no SDK virtualenv at {}", python.display()));
                }
                Ok((python, dir.join("realtime_client.py")))
            }
            Sdk::Node => {
                let package = dir.join("node_modules/@mistralai/mistralai/package.json");
                if !package.exists() {
                    return Err(format!("no npm SDK at {}", package.display()));
                }
                Ok((PathBuf::from("node"), dir.join("realtime_client.mjs")))
            }
        }
    }

    /// The SDK's program, or `None` when it is missing and skipping is
    /// allowed; panics when it is missing otherwise.
    pub fn require(self) -> Option<(PathBuf, PathBuf)> {
        match self.command() {
            Ok(command) => Some(command),
            Err(why) => {
                let skip = std::env::var(SKIP_VAR).is_ok_and(|v| v == "1");
                if skip && std::env::var_os("CI").is_none() {
                    eprintln!(
                        "\n*** SKIPPED: the {self:?} Mistral SDK test ({why}; {SKIP_VAR}=1). \
                         Install it with: bash scripts/install-sdk-test-deps.sh ***\n"
                    );
                    return None;
                }
                panic!(
                    "the {self:?} Mistral SDK is missing ({why}): run \
                     `bash scripts/install-sdk-test-deps.sh` (or set {SKIP_VAR}=1 outside CI)"
                );
            }
        }
    }
}

/// One event as the SDK parsed it.
#[derive(Debug, Clone)]
pub struct SdkEvent {
    /// The event as the SDK's model holds it (Python: snake_case fields as
    /// sent; Node: its camelCase model), or the raw payload if unknown.
    pub event: Value,
    /// The SDK class it parsed as (Python), `Known` (Node), or
    /// `UnknownRealtimeEvent` when the SDK could not parse it.
    pub class: String,
    /// Why the SDK could not parse it.
    pub unknown_error: Option<String>,
}

impl SdkEvent {
    pub fn ty(&self) -> &str {
        self.event["type"].as_str().unwrap_or("?")
    }

    pub fn is_unknown(&self) -> bool {
        self.class == "UnknownRealtimeEvent"
    }
}

/// What one SDK run saw and did.
#[derive(Debug, Clone, Default)]
pub struct SdkRun {
    pub events: Vec<SdkEvent>,
    /// Every text frame the SDK sent, exactly.
    pub sdk_sent: Vec<String>,
    /// The exception the SDK raised (class, message), if any.
    pub exception: Option<(String, String)>,
    pub stderr: String,
}

impl SdkRun {
    /// The `type` of every event, in order.
    pub fn types(&self) -> Vec<&str> {
        self.events.iter().map(SdkEvent::ty).collect()
    }

    /// Events the SDK could not parse (a faithful peer causes none).
    pub fn unknown(&self) -> Vec<&SdkEvent> {
        self.events.iter().filter(|e| e.is_unknown()).collect()
    }

    pub fn of_type(&self, ty: &str) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| e.ty() == ty)
            .map(|e| &e.event)
            .collect()
    }

    /// The SDK's own `session.update` frames, exactly as it sent them.
    pub fn sent_session_updates(&self) -> Vec<&str> {
        self.sdk_sent
            .iter()
            .filter(|t| {
                serde_json::from_str::<Value>(t).is_ok_and(|v| v["type"] == "session.update")
            })
            .map(String::as_str)
            .collect()
    }

    /// Every `transcription.text.delta`'s text, concatenated.
    pub fn deltas_text(&self) -> String {
        self.of_type("transcription.text.delta")
            .iter()
            .map(|e| e["text"].as_str().unwrap_or_default())
            .collect()
    }
}

/// Runs `sdk` on `scenario` (see tests/sdk/realtime_client.py for its
/// fields); `None` if the SDK is missing and skipping is allowed.
pub async fn run(sdk: Sdk, scenario: &Value) -> Option<SdkRun> {
    let (interpreter, program) = sdk.require()?;
    let scenario = scenario.to_string();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // The child runs on a thread of its own: the gateway under test shares
    // this test's runtime and must keep serving while the SDK talks to it.
    std::thread::spawn(move || {
        let output = Command::new(&interpreter)
            .arg(&program)
            .arg(&scenario)
            .current_dir(sdk_dir())
            .output();
        let _ = tx.send(output);
    });
    let output = tokio::time::timeout(RUN_TIMEOUT, rx)
        .await
        .unwrap_or_else(|_| panic!("the {sdk:?} SDK run did not finish in {RUN_TIMEOUT:?}"))
        .expect("the SDK thread reports")
        .unwrap_or_else(|e| panic!("cannot start the {sdk:?} SDK program: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut run = SdkRun {
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        ..SdkRun::default()
    };
    assert!(
        output.status.success(),
        "the {sdk:?} SDK program failed: {}\n{stdout}\n{}",
        output.status,
        run.stderr
    );
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("SDK program printed non-JSON ({e}): {line}"));
        if let Some(sent) = value.get("sdk_sent") {
            run.sdk_sent = serde_json::from_value(sent.clone()).expect("a list of strings");
        } else if let Some(class) = value.get("exception") {
            let message = value["message"].as_str().unwrap_or_default().to_owned();
            run.exception = Some((class.as_str().unwrap_or("?").to_owned(), message));
        } else {
            run.events.push(SdkEvent {
                event: value["event"].clone(),
                class: value["class"].as_str().unwrap_or("?").to_owned(),
                unknown_error: value["unknown_error"].as_str().map(str::to_owned),
            });
        }
    }
    Some(run)
}
