#!/usr/bin/env bash
# bench/cutover/run.sh - cutover pauses and dual-write cost under load
# (issue #5, item 7).
#
# One run: two PostgreSQL 15 clusters, a (default and control store) and b,
# one pgshift in front of both (log_level=info for the cutover step timings).
# driver.py then
#   - seeds TENANTS tenants (half on a, half routed to b), one aggregate per
#     client and tenant with HISTORY events each;
#   - measures pgshift's maximum append TPS with CLIENTS asyncpg clients
#     (BEGIN; version probe; INSERT ... RETURNING; COMMIT), tenants spread;
#   - runs the same append load at LOAD_FRACTION (0.5) of that rate, rate
#     limited per client, and meanwhile migrates MIGRATIONS tenants one after
#     another (a->b and b->a alternately) with MIGRATE ... WITH
#     (max_bulk_copy_rate = 0), DW_HOLD seconds in DUAL_WRITE, then CUTOVER
#     once ready (retried while refused 55000);
#   - reports the pause per cutover (runner's pause_ms and the longest append
#     of the tenant overlapping the CUTOVER, client-side), p50/p99/max,
#     rollbacks, client errors, pgshift's step timings, append latency p50/p99
#     of the tenant in DUAL_WRITE vs a never-migrated tenant on the same store
#     over the same windows, and a row check per tenant.
#
#   bench/cutover/run.sh                 full run (24 cutovers, 20 s max-TPS, 5 s DW)
#   QUICK=1 bench/cutover/run.sh         shorter phases, same 24 cutovers
#   OUT=bench/cutover/RESULTS.md bench/cutover/run.sh   also write the report
#
# Knobs: CLIENTS (32), PROCS (client processes, 4), TENANTS (30), MIGRATIONS
# (24), HISTORY (events per aggregate, 50), MAX_SECONDS, DW_HOLD, SETTLE,
# LOAD_FRACTION (0.5), LOAD_TPS (a fixed load in appends/s instead of
# LOAD_FRACTION x the measured maximum, to compare builds; the maximum is still
# measured and reported), HOT_SHARE (0.5: share of the appends that go to the
# migrating tenant and the reference tenant of its store, half each, while
# it migrates - so that appends are in flight at its CUTOVER), OUT, PGSHIFT_LOG_LEVEL (info), plus those of
# bench/common/lib.sh (BENCH_KEEP=1 keeps the logs).

set -u -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../common/lib.sh
. "$HERE/../common/lib.sh"

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    MAX_SECONDS=${MAX_SECONDS:-8}
    DW_HOLD=${DW_HOLD:-2}
    SETTLE=${SETTLE:-2}
    HISTORY=${HISTORY:-20}
else
    MAX_SECONDS=${MAX_SECONDS:-20}
    DW_HOLD=${DW_HOLD:-5}
    SETTLE=${SETTLE:-3}
    HISTORY=${HISTORY:-50}
fi
CLIENTS=${CLIENTS:-32}
PROCS=${PROCS:-4}
TENANTS=${TENANTS:-30}
MIGRATIONS=${MIGRATIONS:-24}
LOAD_FRACTION=${LOAD_FRACTION:-0.5}
LOAD_TPS=${LOAD_TPS:-0}
HOT_SHARE=${HOT_SHARE:-0.5}
PGSHIFT_LOG_LEVEL=${PGSHIFT_LOG_LEVEL:-info}
OUT=${OUT:-}
BENCH_CMD="${BENCH_CMD:-$(env | grep -E '^(QUICK|CLIENTS|PROCS|TENANTS|MIGRATIONS|HISTORY|MAX_SECONDS|DW_HOLD|SETTLE|LOAD_FRACTION|LOAD_TPS)=' | sort | tr '\n' ' ')bench/cutover/run.sh}"

"$BENCH_PY" -c 'import asyncpg' 2>/dev/null || bench_die "$BENCH_PY lacks asyncpg"
# Others rebuild build/pgshift while we run: name and keep what we started.
PGSHIFT_REV=${PGSHIFT_REV:-$(git -C "$BENCH_REPO" rev-parse --short HEAD 2>/dev/null || echo '?')
(HEAD at start; binary modified $(date -u -r "$PGSHIFT_BIN" '+%Y-%m-%d %H:%M:%S UTC' 2>/dev/null))}
PGSHIFT_REV=${PGSHIFT_REV//$'\n'/ }
bench_init
cp "$PGSHIFT_BIN" "$BENCH_TMP/pgshift.bin" || bench_die "cannot copy $PGSHIFT_BIN"
PGSHIFT_BIN=$BENCH_TMP/pgshift.bin
T_START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

bench_pg_start a
bench_pg_start b
bench_pgshift_start a,b "pgshift.log_level=$PGSHIFT_LOG_LEVEL" pgshift.hold_log_size=100000
admin_port=$(awk -F' = ' '/^admin_port/ {print $2}' "$BENCH_TMP/pgshift/pgshift.ini")
bench_wait_port "$admin_port" 15 "$PGSHIFT_PID" || bench_die "no admin console on $admin_port"
bench_log "pgshift on 127.0.0.1:$PGSHIFT_PORT (admin $admin_port), stores a (default, control), b"

admin() { "$PG_BIN/psql" -X -h 127.0.0.1 -p "$admin_port" -d pgshift -c "$1"; }

BODY=$BENCH_TMP/body.md
# shellcheck disable=SC2154 # PG_a_PORT, PG_b_PORT: set by bench_pg_start
"$BENCH_PY" "$HERE/driver.py" --port "$PGSHIFT_PORT" --admin-port "$admin_port" \
    --store "a=$PG_a_PORT" --store "b=$PG_b_PORT" --db "$BENCH_DB" --user "$BENCH_USER" \
    --password "$BENCH_PASSWORD" --clients "$CLIENTS" --procs "$PROCS" --tenants "$TENANTS" \
    --migrations "$MIGRATIONS" --history "$HISTORY" --max-seconds "$MAX_SECONDS" \
    --load-fraction "$LOAD_FRACTION" --load-tps "$LOAD_TPS" --hot-share "$HOT_SHARE" --dw-hold "$DW_HOLD" --settle "$SETTLE" \
    --pgshift-log "$BENCH_TMP/pgshift/pgshift.log" --workdir "$BENCH_TMP" >"$BODY" ||
    bench_die "driver failed (BENCH_KEEP=1 keeps $BENCH_TMP)"
STATS=$(admin "SHOW STATS" 2>&1)
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
T_END=$(date +%s)
WARN=$(grep -cE ' (WARN|WARNING|ERROR|FATAL|PANIC) ' "$BENCH_TMP/pgshift/pgshift.log")

report() {
    echo "# bench/cutover: cutover pauses and dual-write cost under load"
    echo
    echo '```'
    bench_machine_info | grep -v '^pgbouncer:\|^pgbench:'
    echo "command: $BENCH_CMD"
    echo "settings: clients=$CLIENTS in $PROCS asyncpg processes, tenants=$TENANTS" \
        "(half on a, half on b), migrations=$MIGRATIONS, history=$HISTORY events per" \
        "aggregate (one aggregate per client and tenant), max-TPS window ${MAX_SECONDS}s," \
        "load=$([ "$LOAD_TPS" != 0 ] && echo "$LOAD_TPS appends/s (fixed)" ||
            echo "$LOAD_FRACTION x max"), ${DW_HOLD}s in DUAL_WRITE before each CUTOVER; while a" \
        "tenant migrates, it and the never-migrated tenant of its source store each take" \
        "$HOT_SHARE/2 of the appends (the rest uniform over all tenants)"
    echo "pgshift: log_level=$PGSHIFT_LOG_LEVEL, migration defaults (cutover_timeout_ms 500," \
        "cutover_max_lag_events 100, dual_write_interval_ms 20), MIGRATE ... WITH" \
        "(max_bulk_copy_rate = 0)"
    echo "postgresql: fsync=off synchronous_commit=off full_page_writes=off shared_buffers=256MB"
    echo "cpu: $(nproc) cores shared by both clusters, pgshift and the Python clients," \
        "nothing pinned; the machine is shared with other engineers running builds and tests" \
        "at the same time; load average at start $LOAD_START, at end $LOAD_END"
    echo "wall time: $(((T_END - T_START) / 60)) min $(((T_END - T_START) % 60)) s;" \
        "pgshift log lines at WARN or above: $WARN"
    echo '```'
    echo
    cat "$BODY"
    echo
    echo "pgshift SHOW STATS at the end (the proxy's own view of the holds):"
    echo
    echo '```'
    echo "$STATS"
    echo '```'
}
if [ -n "$OUT" ]; then report | tee "$OUT"; else report; fi
