#!/usr/bin/env bash
# Installs the system packages the integration tests use when they are missing
# (today: nginx, for tests/nginx_scaling.rs; Debian's prometheus, whose
# `prometheus` and `promtool` binaries tests/prometheus_scrape.rs and
# tests/alert_rules.rs run). Idempotent: a machine that has everything is left
# alone and the package index is not even refreshed.
#   bash scripts/install-test-deps.sh
set -euo pipefail

log() { echo "install-test-deps: $*" >&2; }

# Debian puts nginx in /usr/sbin, which a non-login shell's PATH may lack.
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

missing=()
have nginx || missing+=(nginx)
# Debian's prometheus package (2.42) ships both binaries.
{ have prometheus && have promtool; } || missing+=(prometheus)

if [ ${#missing[@]} -eq 0 ]; then
    log "nothing to install"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    log "need root to install: ${missing[*]}"
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
log "installing ${missing[*]}"
# Other jobs on the machine may hold dpkg's lock: wait for it rather than fail.
apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }
apt_get update -qq
# --no-install-recommends: the tests need the binary, not a running service.
apt_get install -y -qq --no-install-recommends "${missing[@]}"
# Debian's package starts a system nginx on port 80; the tests run their own.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
    systemctl stop nginx || true
fi
# Same for prometheus (port 9090) and the node exporter it recommends: the
# tests start their own prometheus with a temporary data directory.
# Without systemd, Debian's init script may have started it instead.
for service in prometheus prometheus-node-exporter; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$service" 2>/dev/null; then
        systemctl stop "$service" || true
    elif [ -x "/etc/init.d/$service" ]; then
        "/etc/init.d/$service" stop >/dev/null 2>&1 || true
    fi
done
log "installed ${missing[*]}"
