#!/usr/bin/env bash
# The project's single test command: formatting, lints, the whole test suite
# (SQLite and a throwaway PostgreSQL), and a smoke run of the benchmark.
#   bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

if [ -z "${TEST_DATABASE_URL_PG:-}" ]; then
    step "starting a throwaway PostgreSQL"
    # Assigned first so that a failed start stops the run (set -e).
    pg_env=$(bash .ci/start-postgres.sh)
    eval "$pg_env"
    trap 'bash .ci/stop-postgres.sh >/dev/null 2>&1 || true' EXIT
fi
export TEST_DATABASE_URL_PG

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test"
rm -f "${CARGO_TARGET_DIR:-target}/tmp/figures.txt"
cargo test --all-targets
cargo test --doc

step "benchmark smoke (debug gateway; docs/performance.md)"
cargo run --example bench -- --smoke --gateway-bin "${CARGO_TARGET_DIR:-target}/debug/chronus-gateway"

step "browser test (headless Chromium)"
GATEWAY_BIN="${CARGO_TARGET_DIR:-target}/debug/chronus-gateway" bash tests/browser/run.sh

step "figures measured by the test suite"
cat "${CARGO_TARGET_DIR:-target}/tmp/figures.txt" 2>/dev/null || echo "(none)"
