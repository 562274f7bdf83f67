#!/usr/bin/env bash
# tests/integration/run.sh - run the integration suite with Debian's python.
#
#   tests/integration/run.sh [--direct] [pytest args...]
#
# PGSHIFT_BIN     the pgshift binary under test (default ./pgshift)
# PGSHIFT_TARGET  pgshift (default) or postgres (--direct): clients talk to
#                 PostgreSQL itself, to check the harness and the scenarios.
# PGSHIFT_KEEP_TMP=1 keeps the temporary clusters and logs for inspection.
# PGSHIFT_POOL_MODE=transaction (and PGSHIFT_POOL_SIZE=N) run pgshift in that
#                 pool mode unless a test sets it.
# PGSHIFT_SKIP_SLOW=1 deselects tests marked slow (the sanitizer pass in
#                 .ci/run uses it to stay within CI's time budget).
#
# Every test runs (no -x); pytest's summary line is printed; the exit code is
# non-zero when anything failed. PostgreSQL servers left behind by a killed
# run are stopped on exit.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"

if [ "${1:-}" = "--direct" ]; then
    export PGSHIFT_TARGET=postgres
    shift
fi
export PGSHIFT_TARGET="${PGSHIFT_TARGET:-pgshift}"
PGSHIFT_BIN="${PGSHIFT_BIN:-./pgshift}"
case "$PGSHIFT_BIN" in /*) ;; *) PGSHIFT_BIN="$repo/${PGSHIFT_BIN#./}" ;; esac
export PGSHIFT_BIN

PY=/usr/bin/python3
if ! "$PY" -c 'import pytest, psycopg, asyncpg' 2>/dev/null; then
    echo "run.sh: $PY lacks pytest/psycopg/asyncpg; run scripts/install-deps.sh" >&2
    exit 2
fi
if [ "$PGSHIFT_TARGET" = pgshift ] && [ ! -x "$PGSHIFT_BIN" ]; then
    echo "run.sh: no pgshift binary at $PGSHIFT_BIN (build with make, or use --direct)" >&2
    exit 2
fi
if [ ! -d "$here/node/node_modules/pg" ]; then
    echo "run.sh: node test driver missing; run scripts/install-deps.sh" >&2
    exit 2
fi

# All temporary clusters live under one folder, so that a run that is killed
# still gets its servers stopped here.
tmproot=$(mktemp -d /tmp/pgshift-it.XXXXXX)
chmod 755 "$tmproot"
export PGSHIFT_IT_TMP="$tmproot"
cleanup() {
    local pidfile datadir
    while IFS= read -r pidfile; do
        datadir=$(dirname "$pidfile")
        if [ "$(id -u)" = 0 ]; then
            runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$datadir" \
                -m immediate stop >/dev/null 2>&1 || true
        else
            /usr/lib/postgresql/15/bin/pg_ctl -D "$datadir" -m immediate stop \
                >/dev/null 2>&1 || true
        fi
    done < <(find "$tmproot" -name postmaster.pid 2>/dev/null)
    if [ "${PGSHIFT_KEEP_TMP:-0}" != 1 ]; then
        rm -rf "$tmproot"
    else
        echo "run.sh: kept $tmproot"
    fi
}
trap cleanup EXIT

echo "run.sh: target=$PGSHIFT_TARGET${PGSHIFT_TARGET:+}$( [ "$PGSHIFT_TARGET" = pgshift ] && echo " bin=$PGSHIFT_BIN")"
# Default to the whole folder unless the arguments name tests themselves.
paths=("$here")
for a in "$@"; do
    if [ -e "${a%%::*}" ]; then paths=(); break; fi
done
extra=()
if [ "${PGSHIFT_SKIP_SLOW:-0}" = 1 ]; then
    extra=(-m "not slow")
fi
set +e
timeout --signal=INT --kill-after=30 "${PGSHIFT_IT_TIMEOUT:-2400}" \
    "$PY" -m pytest -q -rfEs --tb=short -p no:cacheprovider "${extra[@]}" "${paths[@]}" "$@"
rc=$?
set -e
if [ $rc = 5 ]; then
    echo "run.sh: pytest collected no tests" >&2
fi
exit $rc
