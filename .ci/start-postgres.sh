#!/usr/bin/env bash
# Start a throwaway PostgreSQL for the tests (trust auth, fsync off) and print
# the variable the tests read:
#   eval "$(bash .ci/start-postgres.sh)"
#   cargo test --test key_store
#   bash .ci/stop-postgres.sh
# Idempotent: if the server is already up it only (re)creates the database.
# Everything but the final `export` line goes to stderr.
# Settings: PGTEST_DIR (default /tmp/chronus-pgtest), PGTEST_PORT (25432: below the ephemeral port range, so a
# client socket of a busy machine cannot be holding it),
# PGTEST_DB (gateway_test).
set -euo pipefail

PGTEST_DIR="${PGTEST_DIR:-/tmp/chronus-pgtest}"
PGTEST_PORT="${PGTEST_PORT:-25432}"
PGTEST_DB="${PGTEST_DB:-gateway_test}"

log() { echo "start-postgres: $*" >&2; }

find_bindir() {
    local initdb
    initdb=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)
    [ -n "$initdb" ] && dirname "$initdb"
}

BINDIR=$(find_bindir || true)
if [ -z "$BINDIR" ]; then
    log "PostgreSQL server not found; installing it with apt-get"
    if [ "$(id -u)" -ne 0 ]; then
        log "need root to install postgresql"; exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    BINDIR=$(find_bindir || true)
    [ -n "$BINDIR" ] || { log "initdb still missing after installing postgresql"; exit 1; }
fi

# initdb and postgres refuse to run as root: use the postgres account then.
if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/false postgres
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

DATA="$PGTEST_DIR/data"
running() { as_pg "$BINDIR/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

answers() {
    as_pg "$BINDIR/psql" -h 127.0.0.1 -p "$PGTEST_PORT" -U postgres -d postgres -tAc "SELECT 1" >/dev/null 2>&1
}

if [ -d "$DATA" ] && running; then
    log "already running in $PGTEST_DIR"
elif answers; then
    # Another throwaway server (trust auth) already holds the port: share it.
    log "a PostgreSQL already answers on 127.0.0.1:$PGTEST_PORT; using it"
else
    # Throwaway: a leftover directory from an earlier run is wiped.
    rm -rf "$PGTEST_DIR"
    mkdir -p "$PGTEST_DIR"
    chmod 700 "$PGTEST_DIR"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$PGTEST_DIR"
    as_pg "$BINDIR/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --no-sync >/dev/null
    # The port may still be held for a moment by a server that is shutting
    # down (e.g. a previous run's): retry a few times before giving up.
    for attempt in 1 2 3 4 5; do
        if as_pg "$BINDIR/pg_ctl" -D "$DATA" -l "$PGTEST_DIR/server.log" -w -t 30 \
            -o "-c listen_addresses=127.0.0.1 -p $PGTEST_PORT -k $PGTEST_DIR -c fsync=off -c full_page_writes=off -c synchronous_commit=off" \
            start >&2; then
            break
        fi
        if [ "$attempt" -eq 5 ]; then
            cat "$PGTEST_DIR/server.log" >&2
            exit 1
        fi
        log "start failed (attempt $attempt), retrying in 3 s"
        sleep 3
    done
    log "started in $PGTEST_DIR on 127.0.0.1:$PGTEST_PORT"
fi

exists=$(as_pg "$BINDIR/psql" -h 127.0.0.1 -p "$PGTEST_PORT" -U postgres -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname = '$PGTEST_DB'")
if [ "$exists" != "1" ]; then
    as_pg "$BINDIR/createdb" -h 127.0.0.1 -p "$PGTEST_PORT" -U postgres "$PGTEST_DB"
    log "created database $PGTEST_DB"
fi

echo "export TEST_DATABASE_URL_PG=postgres://postgres@127.0.0.1:$PGTEST_PORT/$PGTEST_DB"
