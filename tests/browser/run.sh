#!/usr/bin/env bash
# The browser test: web/chronus-transcription.js and /demo in real headless
# Chromium against a real `chronus-gateway demo` (docs/browser-client.md); and
# the two chronus frontends recording 90 s each (chronus-frontends.test.mjs).
#
#   bash tests/browser/run.sh
#
# Installs what a fresh machine lacks (Debian's chromium, Node.js and npm when
# missing, the npm packages of tests/browser), builds the gateway (debug), then
# runs the Node tests. Exits non-zero on any failure.
#
# Environment:
#   GATEWAY_BIN     a gateway binary to test instead of building one
#   CHROMIUM_BIN    default /usr/bin/chromium
#   DEMO_SCREENSHOT where the page's screenshot goes (default target/demo-screenshot.png)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
start=$(date +%s)

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'tests/browser/run.sh: %s\n' "$*" >&2; exit 1; }

apt_install() {
    [ "$(id -u)" -eq 0 ] || fail "need root to apt-get install $*"
    export DEBIAN_FRONTEND=noninteractive
    if [ -z "${apt_updated:-}" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    apt-get install -y -qq "$@"
}

export CHROMIUM_BIN="${CHROMIUM_BIN:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM_BIN" ]; then
    step "installing chromium (Debian)"
    apt_install chromium
    [ -x "$CHROMIUM_BIN" ] || fail "$CHROMIUM_BIN still missing after installing chromium"
fi
"$CHROMIUM_BIN" --version 2>/dev/null || true

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    step "installing Node.js and npm (Debian)"
    apt_install nodejs npm
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || fail "Node.js >= 20 needed (playwright-core), found $(node --version)"

# npm ci starts from scratch: only when node_modules does not hold what the lock file names.
locked_version() {
    node -e 'const fs = require("fs"); const [lock, mod] = process.argv.slice(1);
             const want = JSON.parse(fs.readFileSync(lock)).packages["node_modules/playwright-core"].version;
             let have = null; try { have = JSON.parse(fs.readFileSync(mod)).version; } catch {}
             process.exit(want === have ? 0 : 1);' \
        "$here/package-lock.json" "$here/node_modules/playwright-core/package.json"
}
if locked_version; then
    echo "tests/browser/node_modules is up to date"
else
    step "npm ci (tests/browser)"
    (cd "$here" && npm ci --no-audit --no-fund)
fi

if [ -z "${GATEWAY_BIN:-}" ]; then
    step "cargo build"
    (cd "$root" && cargo build --bin chronus-gateway)
    GATEWAY_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/chronus-gateway"
fi
[ -x "$GATEWAY_BIN" ] || fail "no gateway binary at $GATEWAY_BIN"
export GATEWAY_BIN

step "node --test tests/browser (gateway: $GATEWAY_BIN)"
cd "$here"
node --test --test-reporter=spec ./*.test.mjs

echo
echo "browser tests passed in $(( $(date +%s) - start )) s; screenshot: ${DEMO_SCREENSHOT:-$root/target/demo-screenshot.png}"
