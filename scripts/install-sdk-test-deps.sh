#!/usr/bin/env bash
# Installs Mistral's official SDKs for tests/mistral_sdk.rs (docs/mistral.md,
# "The official SDKs in the test suite"):
#   - PyPI mistralai (tests/sdk/requirements.txt, every version pinned) into
#     the virtualenv tests/sdk/.venv (git-ignored), created here;
#   - npm @mistralai/mistralai (tests/sdk/package-lock.json) into
#     tests/sdk/node_modules, with `npm ci`.
# Idempotent and fast: each half is skipped when what is installed matches
# its pin file (a copy of it is kept beside the install).
#   bash scripts/install-sdk-test-deps.sh
set -euo pipefail
cd "$(dirname "$0")/.."

sdk=tests/sdk
venv=$sdk/.venv
log() { echo "install-sdk-test-deps: $*" >&2; }
fail() { log "$*"; exit 1; }

apt_install() {
    [ "$(id -u)" -eq 0 ] || fail "need root to apt-get install $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@"
}

# ---- Python: mistralai in a virtualenv ---------------------------------------
if cmp -s "$sdk/requirements.txt" "$venv/installed-requirements.txt"; then
    log "Python SDK up to date ($venv)"
else
    command -v python3 >/dev/null || apt_install python3 python3-venv
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || fail "Python >= 3.10 needed (mistralai 3.7.0), found $(python3 --version)"
    if [ ! -x "$venv/bin/python" ]; then
        log "creating $venv"
        # Debian's python3 lacks ensurepip until python3-venv is installed.
        python3 -m venv "$venv" 2>/dev/null || { rm -rf "$venv"; apt_install python3-venv; python3 -m venv "$venv"; }
    fi
    log "installing $sdk/requirements.txt"
    "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q -r "$sdk/requirements.txt"
    "$venv/bin/python" -c 'import mistralai.extra.realtime' || fail "mistralai.extra.realtime does not import"
    cp "$sdk/requirements.txt" "$venv/installed-requirements.txt"
    log "Python SDK installed"
fi

# ---- Node.js: @mistralai/mistralai with npm ci --------------------------------
if cmp -s "$sdk/package-lock.json" "$sdk/node_modules/.installed-package-lock.json"; then
    log "npm SDK up to date ($sdk/node_modules)"
else
    if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
        apt_install nodejs npm
    fi
    node_major=$(node -p 'process.versions.node.split(".")[0]')
    [ "$node_major" -ge 20 ] || fail "Node.js >= 20 needed, found $(node --version)"
    log "npm ci ($sdk)"
    (cd "$sdk" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$sdk/package-lock.json" "$sdk/node_modules/.installed-package-lock.json"
    log "npm SDK installed"
fi
