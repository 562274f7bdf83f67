#!/usr/bin/env bash
# bench/passthrough/run.sh - what does pgshift cost in front of PostgreSQL?
#
# One run, one PostgreSQL 15 cluster; pgbench against it directly, through
# pgshift and through PgBouncer (pool_mode=session), back to back for every
# (workload, clients, mode) cell, the order rotated from cell to cell and
# round to round. Workloads: pgbench's select-only (-S, after pgbench -i -s
# $SCALE) and the event-store append (append.sql: BEGIN; version probe;
# INSERT ... RETURNING global_position; COMMIT). Then the memory per idle client
# connection of pgshift and PgBouncer (bench/common/idle_clients.py).
# Prints a Markdown report (TPS, latency, ratios, memory) on stdout.
#
#   bench/passthrough/run.sh            full run (3 rounds x 4 s; ~20 min on 2 cores,
#                                       25 when the machine is busy)
#   QUICK=1 bench/passthrough/run.sh    short run (1 round x 3 s, 1,000 idle only; ~5 min)
#
# Knobs (environment): ROUNDS, DURATION (s per pgbench run), WORKLOADS
# ("select-only append"), CLIENTS ("1 8 32"), MODES ("simple extended
# prepared"), MEM_CLIENTS ("1000 10000", empty = skip), SCALE (10), OUT (also
# write the report to this file), plus PGSHIFT_BIN, BENCH_AUTH, BENCH_KEEP and
# the others of bench/common/lib.sh.

set -u -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/common/lib.sh
. "$HERE/../common/lib.sh"

# The command line as given (only the knobs that were set), for the report.
BENCH_CMD=""
for v in QUICK ROUNDS DURATION WORKLOADS CLIENTS MODES MEM_CLIENTS SCALE BENCH_AUTH PGSHIFT_BIN; do
    if [ -n "${!v+x}" ]; then BENCH_CMD+="$v=\"${!v}\" "; fi
done
BENCH_CMD+="bench/passthrough/run.sh"

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    ROUNDS=${ROUNDS:-1}
    DURATION=${DURATION:-3}
else
    ROUNDS=${ROUNDS:-3}
    DURATION=${DURATION:-4}
fi
WORKLOADS=${WORKLOADS:-select-only append}
CLIENTS=${CLIENTS:-1 8 32}
MODES=${MODES:-simple extended prepared}
if [ "$QUICK" = 1 ]; then
    MEM_CLIENTS=${MEM_CLIENTS-1000}
else
    MEM_CLIENTS=${MEM_CLIENTS-1000 10000}
fi
SCALE=${SCALE:-10}
OUT=${OUT:-}
TARGETS=(direct pgshift pgbouncer)

max_mem=0
for n in $MEM_CLIENTS; do ((n > max_mem)) && max_mem=$n; done
export BENCH_MAX_CLIENTS=$((max_mem > 1000 ? max_mem : 1000))

bench_init
RAW_TPS=$BENCH_TMP/tps.tsv
RAW_MEM=$BENCH_TMP/mem.jsonl
HEADER=$BENCH_TMP/header.md
: >"$RAW_TPS"
: >"$RAW_MEM"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(date +%s)

bench_pg_start main
bench_log "pgbench -i -s $SCALE"
"$PG_BIN/pgbench" -i -q -s "$SCALE" -p "$PG_main_PORT" >"$BENCH_TMP/pgbench-init.log" 2>&1 ||
    bench_die "pgbench -i failed: $(tail "$BENCH_TMP/pgbench-init.log")"
bench_psql_super main -c "VACUUM ANALYZE" >/dev/null

port_of() {
    case $1 in
    direct) echo "$PG_main_PORT" ;;
    pgshift) echo "$PGSHIFT_PORT" ;;
    pgbouncer) echo "$PGBOUNCER_PORT" ;;
    esac
}

# run_pgbench TARGET WORKLOAD CLIENTS MODE ROUND: one pgbench run, one TSV line.
run_pgbench() {
    local target=$1 workload=$2 clients=$3 mode=$4 round=$5 jobs=1 tps lat
    ((clients > 1)) && jobs=2
    local args=(-n -T "$DURATION" -c "$clients" -j "$jobs" -M "$mode" -h 127.0.0.1
        -p "$(port_of "$target")")
    case $workload in
    select-only) args+=(-S) ;;
    append) args+=(-f "$HERE/append.sql") ;;
    *) bench_die "unknown workload $workload" ;;
    esac
    local log="$BENCH_TMP/pgbench-$workload-$clients-$mode-$target-$round.log"
    if ! "$PG_BIN/pgbench" "${args[@]}" >"$log" 2>&1; then
        bench_die "pgbench failed ($target $workload c=$clients $mode): $(tail -5 "$log")"
    fi
    tps=$(awk '/^tps = .*without initial connection time/ {print $3}' "$log")
    lat=$(awk '/^latency average = / {print $4}' "$log")
    if [ -z "$tps" ] || [ -z "$lat" ]; then bench_die "cannot parse $log"; fi
    echo "$workload $clients $mode $target $round $tps $lat" >>"$RAW_TPS"
    bench_log "round $round $workload c=$clients $mode $target: $tps tps, $lat ms"
}

ncells=0
for _ in $WORKLOADS; do for _ in $CLIENTS; do for _ in $MODES; do ((ncells++)); done; done; done
if ((ncells > 0)); then
    bench_pgshift_start main
    bench_pgbouncer_start main
    bench_log "$ncells cells x 3 targets x $ROUNDS rounds x ${DURATION}s" \
        "(~$((ncells * 3 * ROUNDS * (DURATION + 1) / 60)) min)"
    for ((round = 1; round <= ROUNDS; round++)); do
        cell=0
        for workload in $WORKLOADS; do
            for clients in $CLIENTS; do
                for mode in $MODES; do
                    # Rotate who goes first so no target always runs on the
                    # same side of its neighbours (cache, autovacuum, noise).
                    for ((i = 0; i < 3; i++)); do
                        t=${TARGETS[$(((cell + round - 1 + i) % 3))]}
                        run_pgbench "$t" "$workload" "$clients" "$mode" "$round"
                    done
                    ((cell++))
                done
            done
        done
    done
    bench_pgshift_stop
    bench_pgbouncer_stop
fi

# Memory per idle client: a fresh proxy for each (proxy, N).
for n in $MEM_CLIENTS; do
    for t in pgshift pgbouncer; do
        if [ "$t" = pgshift ]; then
            bench_pgshift_start main
            pid=$PGSHIFT_PID port=$PGSHIFT_PORT
        else
            bench_pgbouncer_start main
            pid=$PGBOUNCER_PID port=$PGBOUNCER_PORT
        fi
        bench_log "$t: $n idle clients"
        res=$("$BENCH_PY" "$BENCH_COMMON_DIR/idle_clients.py" --port "$port" --pid "$pid" \
            --clients "$n" --backends-dsn "$(bench_pg_super_dsn main)") ||
            bench_log "warning: idle-client test $t $n reported failures"
        [ -n "$res" ] || bench_die "idle-client test $t $n produced no result"
        bench_log "$t $n idle: $res"
        echo "{\"target\": \"$t\", \"requested\": $n, ${res#\{}" >>"$RAW_MEM"
        if [ "$t" = pgshift ]; then bench_pgshift_stop; else bench_pgbouncer_stop; fi
    done
done

T_END=$(date +%s)
{
    echo "## bench/passthrough"
    echo
    echo '```'
    bench_machine_info
    echo "command: $BENCH_CMD"
    echo "settings: rounds=$ROUNDS duration=${DURATION}s scale=$SCALE workloads=[$WORKLOADS]" \
        "clients=[$CLIENTS] modes=[$MODES] idle=[$MEM_CLIENTS]"
    echo "pgbench: -n -T $DURATION -j min(clients,2) -h 127.0.0.1, pgbench on the same machine"
    echo "cpu: $(nproc) cores shared by PostgreSQL, the proxy and pgbench; nothing pinned;" \
        "load average at start $LOAD_START, at end $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "postgresql: fsync=off synchronous_commit=off shared_buffers=256MB"
    echo "pgbouncer: pool_mode=session default_pool_size=200 log_connections=0"
    echo "pgshift: log_level=warning, one store, defaults otherwise"
    echo "proxy log warnings/errors during the run: pgshift" \
        "$(grep -cE 'WARNING|ERROR|FATAL' "$BENCH_TMP/pgshift/pgshift.log" 2>/dev/null)," \
        "pgbouncer $(grep -cE 'WARNING|ERROR|FATAL' "$BENCH_TMP/pgbouncer/pgbouncer.log" 2>/dev/null)"
    echo "wall time: $(((T_END - T_START) / 60)) min $(((T_END - T_START) % 60)) s"
    echo '```'
} >"$HEADER"

if [ -n "$OUT" ]; then
    "$BENCH_PY" "$HERE/report.py" "$RAW_TPS" "$RAW_MEM" "$HEADER" | tee "$OUT"
else
    "$BENCH_PY" "$HERE/report.py" "$RAW_TPS" "$RAW_MEM" "$HEADER"
fi
