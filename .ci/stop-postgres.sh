#!/usr/bin/env bash
# Stop the server started by .ci/start-postgres.sh and delete its files.
set -euo pipefail

PGTEST_DIR="${PGTEST_DIR:-/tmp/chronus-pgtest}"
DATA="$PGTEST_DIR/data"

[ -d "$DATA" ] || { echo "stop-postgres: nothing in $PGTEST_DIR" >&2; exit 0; }

BINDIR=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -n 1)")
if [ "$(id -u)" -eq 0 ]; then
    as_pg() { runuser -u postgres -- "$@"; }
else
    as_pg() { "$@"; }
fi

if as_pg "$BINDIR/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    as_pg "$BINDIR/pg_ctl" -D "$DATA" -m fast -w stop >&2
fi
rm -rf "$PGTEST_DIR"
echo "stop-postgres: stopped and removed $PGTEST_DIR" >&2
