#!/bin/bash
# bench/passthrough/proxy_cpu.sh - where the CPU of a pgbench transaction goes,
# pgshift vs PgBouncer (session mode), on one local PostgreSQL 15 cluster.
#
# For each round, target and mode: pgbench -S -c $CLIENTS -T $DURATION, then
# per transaction: the machine's busy CPU (/proc/stat), the proxy's own CPU
# and voluntary / involuntary context switches (/proc/PID/stat, status),
# pgbench's CPU (/usr/bin/time), and the rest (PostgreSQL and anything else).
#
#   bench/passthrough/proxy_cpu.sh
#   CLIENTS=8 MODES="prepared" ROUNDS=3 bench/passthrough/proxy_cpu.sh
set -euo pipefail
source "$(dirname "$0")/../common/lib.sh"
CLIENTS=${CLIENTS:-32}
MODES=${MODES:-simple prepared}
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5}
BENCH_MAX_CLIENTS=$((CLIENTS + 100))
export BENCH_MAX_CLIENTS

bench_init
bench_pg_start a
PGPASSWORD=$BENCH_PASSWORD "$PG_BIN/pgbench" -i -s 10 -q -h 127.0.0.1 -p "$PG_a_PORT" \
    -U "$BENCH_USER" "$BENCH_DB" >/dev/null 2>&1
bench_pgshift_start a "pgshift.log_level=warning"
bench_pgbouncer_start a
PGB_PID=$(cat "$BENCH_TMP/pgbouncer/pgbouncer.pid")

busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
csw() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }

printf '%-9s %-8s %8s %10s %10s %8s %8s %10s %10s\n' target mode tps "all us" "proxy us" \
    vcsw ivcsw "pgbench us" "rest us"
for round in $(seq "$ROUNDS"); do
    for mode in $MODES; do
        for tgt in pgbouncer pgshift; do
            if [ "$tgt" = pgshift ]; then port=$PGSHIFT_PORT pid=$PGSHIFT_PID; else
                port=$PGBOUNCER_PORT pid=$PGB_PID; fi
            b0=$(busy) t0=$(ticks "$pid") v0=$(csw "$pid" voluntary_ctxt_switches)
            n0=$(csw "$pid" nonvoluntary_ctxt_switches)
            out=$({ /usr/bin/time -f "PGBENCH_CPU %U %S" env PGPASSWORD="$BENCH_PASSWORD" \
                "$PG_BIN/pgbench" -n -S -M "$mode" -c "$CLIENTS" -j 2 -T "$DURATION" \
                -h 127.0.0.1 -p "$port" -U "$BENCH_USER" "$BENCH_DB"; } 2>&1)
            b1=$(busy) t1=$(ticks "$pid") v1=$(csw "$pid" voluntary_ctxt_switches)
            n1=$(csw "$pid" nonvoluntary_ctxt_switches)
            echo "$out" | awk -v tg="$tgt" -v m="$mode" -v b=$((b1 - b0)) -v t=$((t1 - t0)) \
                -v v=$((v1 - v0)) -v iv=$((n1 - n0)) -v hz="$(getconf CLK_TCK)" '
                /number of transactions actually processed/ { split($NF, a, "/"); n = a[1] }
                /^tps/ && !tps { tps = $3 }
                /PGBENCH_CPU/ { pb = ($2 + $3) * 1e6 }
                END { u = 1e6 / hz
                      printf "%-9s %-8s %8.0f %10.1f %10.1f %8.3f %8.3f %10.1f %10.1f\n", tg, m,
                             tps, b * u / n, t * u / n, v / n, iv / n, pb / n, (b * u - t * u - pb) / n }'
        done
    done
done
