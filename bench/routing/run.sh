#!/usr/bin/env bash
# bench/routing/run.sh - what does routing tenants over two stores cost?
#
# One run, two PostgreSQL 15 clusters (a, b) and two pgshift processes:
#   direct   pgbench straight into cluster a (database bench)
#   one      pgshift with one store: a (database bench) - pass-through
#   two      pgshift with two stores: a (default) and b (database routed on
#            both clusters); the odd tenants are placed on b with the admin
#            console's ROUTE TENANT, the even ones live on a
# The event-store append workload (gen.py: BEGIN; version probe by
# aggregate_id; INSERT INTO events ... RETURNING global_position; COMMIT,
# tenant chosen per transaction among TENANTS) runs against the three back to
# back for every (variant, clients, mode) cell, the order rotated from cell to
# cell and round to round. Variants: "agg" (the tenant is only in the INSERT;
# the probe routes by pgshift's learned aggregate -> tenant map) and "session"
# (each client first sets pgshift.tenant with set_config, one tenant per
# client). Every aggregate gets its first event through its target before the
# timing, so pgshift's aggregate map is warm. After the rounds: every row of
# database routed is checked to be on its tenant's store, and
# build/bench/classify_bench gives the classifier's cost per statement (cache
# miss, cache hit, route decision). Prints a Markdown report on stdout.
#
#   bench/routing/run.sh            full run (12 cells x 3 targets x 3 rounds x 4 s, ~9 min)
#   QUICK=1 bench/routing/run.sh    1 round x 3 s, variant agg only (6 cells, ~2 min)
#
# Knobs (environment): ROUNDS, DURATION (s per pgbench run), VARIANTS
# ("agg session"), CLIENTS ("8 32"), MODES ("simple extended prepared"),
# TENANTS (8), PER_CLIENT (aggregates per client, 8), HISTORY (events per
# aggregate written before the timing besides its first, 20), LOG_LEVEL (pgshift's,
# warning; debug shows every routing decision), CLASSIFY_ITERS (classify_bench
# iterations, 200000), OUT (also write the report to this file), plus
# PGSHIFT_BIN, BENCH_AUTH, BENCH_KEEP and the others of bench/common/lib.sh.
#
# POOL_SIZE=N runs both pgshift processes with pool_mode = transaction and
# pool_size = N (backends shared between client sessions, per store); unset,
# they run in session mode (one backend per client session and store used).
#
# Diagnosis knobs (they change what is measured; the report says so):
#   B_ON_A=1   two's store b is database routed on cluster a: both stores on
#              one cluster, so a second backend per client session is the
#              only difference from one (no second cluster on the 2 CPUs)
#   POOLER=N   both pgshift processes reach their stores through one PgBouncer
#              in transaction mode with N server connections per database on
#              cluster a (implies B_ON_A): backends shared between client
#              sessions, as a transaction pool would share them. PgBouncer
#              1.18 cannot share named prepared statements, so MODES defaults
#              to "simple extended" and prepared is refused.

set -u -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../common/lib.sh
. "$HERE/../common/lib.sh"

BENCH_CMD=""
for v in QUICK ROUNDS DURATION VARIANTS CLIENTS MODES TENANTS PER_CLIENT HISTORY LOG_LEVEL \
    CLASSIFY_ITERS B_ON_A POOLER POOL_SIZE BENCH_AUTH PGSHIFT_BIN; do
    if [ -n "${!v+x}" ]; then BENCH_CMD+="$v=\"${!v}\" "; fi
done
BENCH_CMD+="bench/routing/run.sh"

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    ROUNDS=${ROUNDS:-1}
    DURATION=${DURATION:-3}
    VARIANTS=${VARIANTS:-agg}
else
    ROUNDS=${ROUNDS:-3}
    DURATION=${DURATION:-4}
    VARIANTS=${VARIANTS:-agg session}
fi
B_ON_A=${B_ON_A:-0}
POOLER=${POOLER:-0}
POOL_SIZE=${POOL_SIZE:-0}
if [ "$POOLER" != 0 ]; then
    B_ON_A=1
    MODES=${MODES:-simple extended}
    case " $MODES " in
    *" prepared "*) bench_die "POOLER: -M prepared cannot go through PgBouncer in transaction mode" ;;
    esac
fi
CLIENTS=${CLIENTS:-8 32}
MODES=${MODES:-simple extended prepared}
TENANTS=${TENANTS:-8}
PER_CLIENT=${PER_CLIENT:-8}
HISTORY=${HISTORY:-20}
LOG_LEVEL=${LOG_LEVEL:-warning}
CLASSIFY_ITERS=${CLASSIFY_ITERS:-200000}
OUT=${OUT:-}
TARGETS=(direct one two)
ROUTED_DB=routed
ADMIN_USER="admin"
ADMIN_PASSWORD="admin-secret"
CLASSIFY_BIN=${CLASSIFY_BIN:-$BENCH_REPO/build/bench/classify_bench}

max_clients=0
for n in $CLIENTS; do ((n > max_clients)) && max_clients=$n; done
export BENCH_MAX_CLIENTS=1000 # fd limit bench_init raises (we need ~200)
CLK_TCK=$(getconf CLK_TCK)

GEN=("$BENCH_PY" "$HERE/gen.py")

# ---- pgshift processes of this benchmark (bench/common starts one only) ----

declare -A PGS_PID PGS_PORT PGS_ADMIN

# routing_pgshift_start NAME DB CLUSTER...: pgshift NAME whose stores are
# database DB on each CLUSTER (store name = cluster name; the first is the
# default and control store). Clients log in as $BENCH_USER with the role's
# secret from pg_authid; $ADMIN_USER may use the admin console.
routing_pgshift_start() {
    local name=$1 db=$2 dir="$BENCH_TMP/pgshift-$1" st port_var
    shift 2
    mkdir -p "$dir"
    PGS_PORT[$name]=$(bench_free_port)
    PGS_ADMIN[$name]=$(bench_free_port)
    {
        printf '"%s" "%s"\n' "$BENCH_USER" "${BENCH_SECRET:-$BENCH_PASSWORD}"
        printf '"%s" "%s"\n' "$ADMIN_USER" "$ADMIN_PASSWORD"
    } >"$dir/userlist.txt"
    chmod 600 "$dir/userlist.txt"
    {
        cat <<EOF
; written by bench/routing/run.sh
[pgshift]
listen_addr = 127.0.0.1
listen_port = ${PGS_PORT[$name]}
admin_port = ${PGS_ADMIN[$name]}
http_port = $(bench_free_port)
auth_type = $BENCH_AUTH
auth_file = $dir/userlist.txt
admin_users = $ADMIN_USER
log_level = $LOG_LEVEL
EOF
        if [ "$POOL_SIZE" != 0 ]; then
            printf 'pool_mode = transaction\npool_size = %s\n' "$POOL_SIZE"
        fi
        printf '\n[stores]\n'
        for st in "$@"; do
            port_var="PG_${st}_PORT"
            [ "$B_ON_A" = 1 ] && port_var=PG_a_PORT
            [ "$POOLER" != 0 ] && port_var=PGBOUNCER_PORT
            echo "$st = host=127.0.0.1 port=${!port_var} dbname=$db user=$BENCH_USER" \
                "password=$BENCH_PASSWORD"
        done
    } >"$dir/pgshift.ini"
    "$PGSHIFT_BIN" -c "$dir/pgshift.ini" </dev/null >>"$dir/pgshift.log" 2>&1 &
    PGS_PID[$name]=$!
    if ! bench_wait_port "${PGS_PORT[$name]}" 15 "${PGS_PID[$name]}" ||
        ! bench_wait_port "${PGS_ADMIN[$name]}" 15 "${PGS_PID[$name]}"; then
        bench_die "pgshift $name did not start: $(tail -20 "$dir/pgshift.log")"
    fi
    bench_log "pgshift $name (stores: $*, database $db) on 127.0.0.1:${PGS_PORT[$name]}," \
        "admin ${PGS_ADMIN[$name]}"
}

routing_pgshift_stop() {
    local name=$1 pid=${PGS_PID[$1]:-}
    if [ -n "$pid" ]; then
        kill -INT "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        PGS_PID[$name]=
    fi
}

# routing_admin NAME SQL: run SQL on pgshift NAME's admin console.
routing_admin() {
    PGPASSWORD=$ADMIN_PASSWORD "$PG_BIN/psql" -X -h 127.0.0.1 -p "${PGS_ADMIN[$1]}" \
        -U "$ADMIN_USER" -d pgshift -c "$2"
}

routing_cleanup() {
    local n
    for n in "${!PGS_PID[@]}"; do routing_pgshift_stop "$n"; done
    bench_cleanup
}

# psql as $BENCH_USER on cluster NAME, database DB (through its unix socket).
routing_psql_db() {
    local name=$1 db=$2 port_var="PG_${1}_PORT"
    shift 2
    "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$BENCH_TMP/$name/sock" -p "${!port_var}" \
        -U postgres -d "$db" "$@"
}

# CPU time (user + system) of a process so far, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

port_of() {
    local port_var=PG_a_PORT # set by bench_pg_start a
    case $1 in
    direct) echo "${!port_var}" ;;
    one | two) echo "${PGS_PORT[$1]}" ;;
    esac
}
db_of() {
    case $1 in
    direct | one) echo "$BENCH_DB" ;;
    two) echo "$ROUTED_DB" ;;
    esac
}
# Aggregate id prefix of a target and variant (gen.py --prefix).
prefix_of() {
    local t v
    case $1 in direct) t=1 ;; one) t=2 ;; two) t=3 ;; esac
    case $2 in agg) v=1 ;; session) v=2 ;; esac
    printf 'b0000%d0%d' "$t" "$v"
}

# ---- set-up ----

# The binary may be rebuilt by others while we run: name what it was at the start.
PGSHIFT_REV=${PGSHIFT_REV:-$(git -C "$BENCH_REPO" rev-parse --short HEAD 2>/dev/null || echo '?')
(HEAD at start; binary modified $(date -u -r "$PGSHIFT_BIN" '+%Y-%m-%d %H:%M:%S UTC' 2>/dev/null))}
PGSHIFT_REV=${PGSHIFT_REV//$'\n'/ }
bench_init
trap routing_cleanup EXIT
RAW=$BENCH_TMP/tps.tsv
HEADER=$BENCH_TMP/header.md
CHECKS=$BENCH_TMP/checks.md
: >"$RAW"
: >"$CHECKS"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(date +%s)

[ -x "$CLASSIFY_BIN" ] || make -C "$BENCH_REPO" build/bench/classify_bench >&2 ||
    bench_die "make build/bench/classify_bench failed"

bench_pg_start a
bench_pg_start b
for c in a b; do
    bench_psql_super "$c" -c "CREATE DATABASE $ROUTED_DB OWNER $BENCH_USER" >/dev/null ||
        bench_die "CREATE DATABASE $ROUTED_DB on $c failed"
    routing_psql_db "$c" "$ROUTED_DB" -c "SET ROLE $BENCH_USER" \
        -f "$BENCH_REPO/tests/integration/schema.sql" >/dev/null ||
        bench_die "schema load on $c/$ROUTED_DB failed"
done

if [ "$POOLER" != 0 ]; then
    # The password itself: PgBouncer logs in to PostgreSQL for pgshift's
    # libpq connections (control store) too, not only with SCRAM keys.
    BENCH_POOLER_SECRET=$BENCH_PASSWORD BENCH_POOLER_DBS="$BENCH_DB $ROUTED_DB" \
        BENCH_POOL_MODE=transaction \
        BENCH_POOL_SIZE=$POOLER bench_pgbouncer_start a
fi
routing_pgshift_start one "$BENCH_DB" a
routing_pgshift_start two "$ROUTED_DB" a b

# Place the odd tenants on store b (the even ones stay on the default a).
for ((i = 1; i < TENANTS; i += 2)); do
    tenant=$("${GEN[@]}" tenant "$i")
    routing_admin two "ROUTE TENANT '$tenant' TO 'b'" >/dev/null ||
        bench_die "ROUTE TENANT $tenant TO b failed"
done
# Every pgshift agrees within a second (LISTEN/NOTIFY); wait for ours.
for ((i = 0; i < 50; i++)); do
    nroutes=$(routing_admin two "SHOW ROUTES" 2>/dev/null | grep -c "| b ")
    ((nroutes >= TENANTS / 2)) && break
    sleep 0.1
done
routing_admin two "SHOW ROUTES" >"$BENCH_TMP/routes.txt" 2>&1
bench_log "routes: $nroutes tenants on b"

# Scripts, and each aggregate's first event through its own target.
for v in $VARIANTS; do
    for t in "${TARGETS[@]}"; do
        for m in $MODES; do
            "${GEN[@]}" script --variant "$v" --mode "$m" --prefix "$(prefix_of "$t" "$v")" \
                --tenants "$TENANTS" --per-client "$PER_CLIENT" >"$BENCH_TMP/$v-$t-$m.sql"
        done
        "${GEN[@]}" warmup --variant "$v" --prefix "$(prefix_of "$t" "$v")" \
            --tenants "$TENANTS" --per-client "$PER_CLIENT" --clients "$max_clients" \
            >"$BENCH_TMP/warmup-$v-$t.sql"
        "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$(port_of "$t")" \
            -d "$(db_of "$t")" -f "$BENCH_TMP/warmup-$v-$t.sql" >/dev/null ||
            bench_die "warm-up of $v through $t failed"
    done
done
# HISTORY more events per aggregate, written straight into the store that
# holds the aggregate (next to its first event), so that the planner's
# statistics see streams of realistic length and the version probe is an
# index-only backward scan with LIMIT 1 from the start, not a scan of the
# whole stream that gets slower as the run appends.
for db in "a $BENCH_DB" "a $ROUTED_DB" "b $ROUTED_DB"; do
    # shellcheck disable=SC2086 # "cluster database"
    routing_psql_db $db -c "INSERT INTO events (event_id, aggregate_id, aggregate_type,
            event_type, tenant_id, actor_id, version, timestamp, payload)
        SELECT gen_random_uuid(), e.aggregate_id, e.aggregate_type, 'History', e.tenant_id,
            'bench', e.version + v, now(), '{}'
        FROM (SELECT aggregate_id, aggregate_type, tenant_id, max(version) AS version
              FROM events GROUP BY 1, 2, 3) e, generate_series(1, $HISTORY) v" \
        -c "VACUUM ANALYZE events" >/dev/null || bench_die "history rows on $db failed"
done
bench_log "warm-up done: $((max_clients * PER_CLIENT)) aggregates per target and variant," \
    "$((HISTORY + 1)) events each"

# CPU time (clock ticks) of PostgreSQL cluster NAME: the postmaster, its
# live children, and the children it has reaped (cutime/cstime).
cluster_ticks() {
    local pm
    pm=$(head -1 "$BENCH_TMP/$1/data/postmaster.pid")
    cat /proc/[0-9]*/stat 2>/dev/null | awk -v pm="$pm" '{
        pid = $1; sub(/^[^(]*\(.*\) /, "")
        if (pid == pm) s += $12 + $13 + $14 + $15; else if ($2 == pm) s += $12 + $13
    } END { print s + 0 }'
}
# CPU ticks of this shell's reaped children (pgbench runs as one).
self_child_ticks() { awk '{sub(/^[^(]*\(.*\) /, ""); print $14 + $15}' "/proc/$$/stat"; }
# CPU ticks of everything a run uses: both clusters, the target's pgshift
# (none for direct), pgbench.
stack_ticks() {
    local pid=$1 p=0
    [ -n "$pid" ] && p=$(cpu_ticks "$pid")
    echo "$p $(($(cluster_ticks a) + $(cluster_ticks b) + $(self_child_ticks)))"
}

# run_pgbench TARGET VARIANT CLIENTS MODE ROUND: one pgbench run, one TSV line:
#   tps        pgbench's, without its connection time
#   latency    pgbench's average, ms
#   txns       transactions completed
#   cpu_pgs    CPU us per transaction of the target's pgshift ("-" for direct)
#   cpu_all    CPU us per transaction of both clusters + pgshift + pgbench
#   steady     mean of pgbench's per-second progress after the first second,
#              when pgshift has logged in its server connections (it opens
#              them at a client's first statement for each store, inside the
#              timed window) and prepared the client's statements there
#   cpu_pgs_s, cpu_all_s  the same CPU figures over that steady part only
#   log        the pgbench log of a failed run ("-" otherwise)
# tps and latency are "fail" for a failed run.
run_pgbench() {
    local target=$1 variant=$2 clients=$3 mode=$4 round=$5 jobs=1 tps lat txns steady first
    local pid=${PGS_PID[$target]:-} s0 s1 s2 cpu=- all=- cpu_s=- all_s=- i
    ((clients > 1)) && jobs=2
    local log="$BENCH_TMP/pgbench-$variant-$clients-$mode-$target-$round.log"
    : >"$log"
    read -ra s0 <<<"$(stack_ticks "$pid")"
    "$PG_BIN/pgbench" -n -T "$DURATION" -P 1 -c "$clients" -j "$jobs" -M "$mode" \
        -h 127.0.0.1 -p "$(port_of "$target")" -D inited=0 \
        -f "$BENCH_TMP/$variant-$target-$mode.sql" "$(db_of "$target")" >"$log" 2>&1 &
    local pgbench_pid=$!
    # The first progress line: one second of benchmark behind us.
    for ((i = 0; i < 600; i++)); do
        grep -q '^progress: ' "$log" && break
        kill -0 "$pgbench_pid" 2>/dev/null || break
        sleep 0.05
    done
    read -ra s1 <<<"$(stack_ticks "$pid")"
    wait "$pgbench_pid"
    local rc=$?
    sleep 0.2 # let the backends of the run exit (their CPU moves to cutime)
    read -ra s2 <<<"$(stack_ticks "$pid")"
    tps=$(awk '/^tps = .*without initial connection time/ {print $3}' "$log")
    lat=$(awk '/^latency average = / {print $4}' "$log")
    txns=$(awk '/^number of transactions actually processed:/ {print $6}' "$log")
    first=$(awk '/^progress: / {printf "%.0f", $4; exit}' "$log")
    steady=$(awk '/^progress: / && $2 + 0 >= 2 {s += $4; n++} END {
        if (n) printf "%.1f", s / n; else print "-" }' "$log")
    if [ "$rc" != 0 ] || [ -z "$tps" ] || [ -z "$lat" ] ||
        grep -q 'aborted\|ERROR' "$log"; then
        bench_log "FAILED round $round $variant c=$clients $mode $target: $(tail -3 "$log")"
        echo "$variant $clients $mode $target $round fail fail ${txns:-0} - - - - - $log" >>"$RAW"
        return
    fi
    if ((txns > 0)); then
        [ -n "$pid" ] && cpu=$(((s2[0] - s0[0]) * 1000000 / CLK_TCK / txns))
        all=$(((s2[0] - s0[0] + s2[1] - s0[1]) * 1000000 / CLK_TCK / txns))
    fi
    if [ -n "$first" ] && ((txns - first > 0)); then
        [ -n "$pid" ] && cpu_s=$(((s2[0] - s1[0]) * 1000000 / CLK_TCK / (txns - first)))
        all_s=$(((s2[0] - s1[0] + s2[1] - s1[1]) * 1000000 / CLK_TCK / (txns - first)))
    fi
    echo "$variant $clients $mode $target $round $tps $lat $txns $cpu $all $steady" \
        "$cpu_s $all_s -" >>"$RAW"
    bench_log "round $round $variant c=$clients $mode $target: $tps tps (steady $steady)," \
        "$lat ms, CPU us/txn: pgshift $cpu (steady $cpu_s), all $all (steady $all_s)"
}

ncells=0
for _ in $VARIANTS; do for _ in $CLIENTS; do for _ in $MODES; do ((ncells++)); done; done; done
bench_log "$ncells cells x 3 targets x $ROUNDS rounds x ${DURATION}s" \
    "(~$((ncells * 3 * ROUNDS * (DURATION + 1) / 60)) min)"
for ((round = 1; round <= ROUNDS; round++)); do
    cell=0
    for variant in $VARIANTS; do
        for clients in $CLIENTS; do
            for mode in $MODES; do
                for ((i = 0; i < 3; i++)); do
                    t=${TARGETS[$(((cell + round - 1 + i) % 3))]}
                    run_pgbench "$t" "$variant" "$clients" "$mode" "$round"
                done
                ((cell++))
            done
        done
    done
done

# ---- checks: where the rows of database routed are, what pgshift saw ----

# Rows per (store, tenant) of the two-store database; tenants routed to b
# must have no row on a and the others none on b.
placement=$BENCH_TMP/placement.tsv
for c in a b; do
    routing_psql_db "$c" "$ROUTED_DB" -F ' ' -c \
        "SELECT '$c', tenant_id, count(*) FROM events GROUP BY tenant_id ORDER BY tenant_id" \
        >>"$placement"
done
routed_total=$(awk '{s += $3} END {print s + 0}' "$placement")
misplaced=0
for ((i = 0; i < TENANTS; i++)); do
    tenant=$("${GEN[@]}" tenant "$i")
    want=a
    ((i % 2 == 1)) && want=b
    n=$(awk -v t="$tenant" -v w="$want" '$2 == t && $1 != w {s += $3} END {print s + 0}' \
        "$placement")
    misplaced=$((misplaced + n))
done
two_txns=$(awk '$4 == "two" && $8 ~ /^[0-9]+$/ {s += $8} END {print s + 0}' "$RAW")
two_warm=0
for v in $VARIANTS; do
    two_warm=$((two_warm + (HISTORY + 1) * $(wc -l <"$BENCH_TMP/warmup-$v-two.sql")))
done
{
    echo "rows in database $ROUTED_DB: a $(awk '$1 == "a" {s += $3} END {print s + 0}' \
        "$placement"), b $(awk '$1 == "b" {s += $3} END {print s + 0}' "$placement");" \
        "expected $((two_txns + two_warm)) (pgbench transactions through two + warm-up and" \
        "history rows)," \
        "found $routed_total"
    if [ "$B_ON_A" = 1 ]; then
        echo "rows on the wrong store: not checked (B_ON_A: both stores are cluster a)"
    else
        echo "rows on the wrong store (tenant on b with row on a, or the reverse): $misplaced"
    fi
    echo "pgshift warnings/errors in the logs: one" \
        "$(grep -cE 'WARN|ERROR|FATAL|PANIC' "$BENCH_TMP/pgshift-one/pgshift.log")," \
        "two $(grep -cE 'WARN|ERROR|FATAL|PANIC' "$BENCH_TMP/pgshift-two/pgshift.log")"
} >>"$CHECKS"
{
    echo "SHOW ROUTES (two):"
    cat "$BENCH_TMP/routes.txt"
    echo "SHOW POOLS (two, after the rounds):"
    routing_admin two "SHOW POOLS" 2>&1
    echo "SHOW STATS (two, after the rounds):"
    routing_admin two "SHOW STATS" 2>&1
} >"$BENCH_TMP/admin.txt"

bench_log "classify_bench $CLASSIFY_ITERS"
"$CLASSIFY_BIN" "$CLASSIFY_ITERS" --json >"$BENCH_TMP/classify.json" ||
    bench_die "classify_bench failed"

for n in one two; do routing_pgshift_stop "$n"; done
T_END=$(date +%s)
{
    echo '```'
    bench_machine_info | grep -v '^pgbouncer:\|^auth:'
    echo "auth: $BENCH_AUTH for pgbench on PostgreSQL and on both pgshift processes, TCP 127.0.0.1"
    echo "command: $BENCH_CMD"
    echo "settings: rounds=$ROUNDS duration=${DURATION}s variants=[$VARIANTS]" \
        "clients=[$CLIENTS] modes=[$MODES] tenants=$TENANTS (odd ones on b)" \
        "aggregates/client=$PER_CLIENT history=$HISTORY events/aggregate"
    echo "pgbench: -n -T $DURATION -P 1 -j min(clients,2) -h 127.0.0.1, on the same machine"
    echo "cpu: $(nproc) cores shared by both PostgreSQL clusters, pgshift and pgbench;" \
        "nothing pinned; load average at start $LOAD_START, at end" \
        "$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "postgresql: fsync=off synchronous_commit=off full_page_writes=off" \
        "shared_buffers=256MB (both clusters)"
    echo "pgshift: log_level=$LOG_LEVEL, defaults otherwise; one: store a; two: stores a" \
        "(default, control) and b"
    if [ "$POOL_SIZE" != 0 ]; then
        echo "pgshift: pool_mode = transaction, pool_size = $POOL_SIZE per store"
    else
        echo "pgshift: pool_mode = session (one backend per client session and store)"
    fi
    if [ "$POOLER" != 0 ]; then
        echo "diagnosis: POOLER=$POOLER - one's and two's stores are reached through" \
            "$("$PGBOUNCER_BIN" --version 2>/dev/null | head -1), pool_mode=transaction," \
            "default_pool_size=$POOLER, on cluster a (store b too)"
    elif [ "$B_ON_A" = 1 ]; then
        echo "diagnosis: B_ON_A=1 - two's store b is database $ROUTED_DB on cluster a"
    fi
    echo "wall time: $(((T_END - T_START) / 60)) min $(((T_END - T_START) % 60)) s"
    echo '```'
} >"$HEADER"

report() {
    "$BENCH_PY" "$HERE/report.py" "$RAW" "$HEADER" "$CHECKS" "$BENCH_TMP/classify.json" \
        "$BENCH_TMP/admin.txt"
}
if [ -n "$OUT" ]; then report | tee "$OUT"; else report; fi
