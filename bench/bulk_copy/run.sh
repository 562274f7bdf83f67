#!/usr/bin/env bash
# bench/bulk_copy/run.sh - how fast does pgshift's bulk copy move a tenant,
# compared with the raw pipe between the same two servers? (issue #4, item 7)
#
# One run, two PostgreSQL 15 clusters (src, dst). src gets TOTAL_EVENTS
# events, TENANT_EVENTS of them of one tenant, interleaved with two other
# tenants. Then, back to back:
#   raw      psql -c "COPY (SELECT * FROM events WHERE tenant_id = T ORDER BY
#            global_position) TO STDOUT (FORMAT binary)" | psql -c "COPY events
#            FROM STDIN (FORMAT binary)"  (dst emptied afterwards)
#   pgshift  MIGRATE TENANT T TO dst WITH (batch_size = BATCH,
#            max_bulk_copy_rate = 0) through the admin console, timed from the
#            migration record (bulk_copy_started_at .. bulk_copy_completed_at);
#            a small tenant (SMALL_EVENTS) is migrated first so that pgshift's
#            peak RSS (VmHWM) can be compared for two tenant sizes.
# PGSHIFT_LOG=debug logs each batch's timings in pgshift.log (BENCH_KEEP=1).
# Prints a Markdown report: events/s, MB/s (of the binary COPY stream), the
# ratio pgshift/raw, and pgshift's peak RSS after the small and the large copy.
#
#   bench/bulk_copy/run.sh            1,000,000-event tenant among 3,000,000
#   QUICK=1 bench/bulk_copy/run.sh    100,000 among 300,000
#
# Knobs: TENANT_EVENTS, TOTAL_EVENTS, SMALL_EVENTS, BATCH (10000), ROUNDS (3
# alternating raw/pgshift copies; the best of each is compared), OUT (also
# write the report there), plus those of bench/common/lib.sh.

set -u -o pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../common/lib.sh
. "$HERE/../common/lib.sh"

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    TENANT_EVENTS=${TENANT_EVENTS:-100000}
    TOTAL_EVENTS=${TOTAL_EVENTS:-300000}
    SMALL_EVENTS=${SMALL_EVENTS:-10000}
else
    TENANT_EVENTS=${TENANT_EVENTS:-1000000}
    TOTAL_EVENTS=${TOTAL_EVENTS:-3000000}
    SMALL_EVENTS=${SMALL_EVENTS:-50000}
fi
BATCH=${BATCH:-10000}
ROUNDS=${ROUNDS:-3}
OUT=${OUT:-}
BIG=11111111-0000-0000-0000-000000000001
SMALL=11111111-0000-0000-0000-000000000002
OTHER1=22222222-0000-0000-0000-000000000001
OTHER2=22222222-0000-0000-0000-000000000002

now_s() { date +%s.%N; }

bench_init
bench_pg_start src
bench_pg_start dst

# -- data ----------------------------------------------------------------------
others=$((TOTAL_EVENTS - TENANT_EVENTS - SMALL_EVENTS))
((others >= 0)) || bench_die "TOTAL_EVENTS must be at least TENANT_EVENTS + SMALL_EVENTS"
bench_log "loading $TOTAL_EVENTS events into src ($TENANT_EVENTS of the tenant)"
# The big tenant's events are spread evenly over the whole table.
bench_psql_super src -c "
    INSERT INTO events (event_id, aggregate_id, aggregate_type, event_type, tenant_id,
                        actor_id, version, timestamp, payload)
    SELECT gen_random_uuid(), md5(tn::text || (g / 100)::text)::uuid, 'Order', 'OrderPlaced',
           tn, 'actor-' || (g % 13), g, now(),
           jsonb_build_object('order', g, 'amount', g % 1000, 'note', repeat('n', 40 + g % 60))
    FROM (SELECT g, CASE WHEN g % $TOTAL_EVENTS < $SMALL_EVENTS THEN '$SMALL'::uuid
                          WHEN (g::numeric * $TENANT_EVENTS / $TOTAL_EVENTS)::bigint
                               <> ((g - 1)::numeric * $TENANT_EVENTS / $TOTAL_EVENTS)::bigint
                               THEN '$BIG'::uuid
                          WHEN g % 2 = 0 THEN '$OTHER1'::uuid ELSE '$OTHER2'::uuid END AS tn
          FROM generate_series(1, $TOTAL_EVENTS) g) s" || bench_die "load failed"
bench_psql_super src -c "VACUUM ANALYZE events" || true
big_n=$(bench_psql_super src -c "SELECT count(*) FROM events WHERE tenant_id = '$BIG'")
small_n=$(bench_psql_super src -c "SELECT count(*) FROM events WHERE tenant_id = '$SMALL'")
bench_log "tenant $BIG: $big_n events; small tenant: $small_n events"

# -- the copies ------------------------------------------------------------------
src_dsn="host=127.0.0.1 port=$PG_src_PORT dbname=$BENCH_DB"
dst_dsn="host=127.0.0.1 port=$PG_dst_PORT dbname=$BENCH_DB"
bytes_file=$BENCH_TMP/raw.bytes

# raw_copy: one raw pipe of the large tenant into the empty dst; prints seconds.
raw_copy() {
    local t0 t1 n
    t0=$(now_s)
    "$PG_BIN/psql" -X -q -d "$src_dsn" -c "COPY (SELECT * FROM events WHERE tenant_id = '$BIG'
        ORDER BY global_position) TO STDOUT (FORMAT binary)" |
        tee >(wc -c >"$bytes_file") |
        "$PG_BIN/psql" -X -q -d "$dst_dsn" -c "COPY events FROM STDIN (FORMAT binary)" ||
        bench_die "raw pipe failed"
    t1=$(now_s)
    n=$(bench_psql_super dst -c "SELECT count(*) FROM events")
    [ "$n" = "$big_n" ] || bench_die "raw pipe copied $n of $big_n events"
    bench_psql_super dst -c "TRUNCATE events" >/dev/null
    bench_psql_super dst -c "VACUUM events" >/dev/null
    echo "$t1 - $t0" | bc -l
}

bench_pgshift_start src,dst ${PGSHIFT_LOG:+pgshift.log_level=$PGSHIFT_LOG}
admin_port=$(awk -F' = ' '/^admin_port/ {print $2}' "$BENCH_TMP/pgshift/pgshift.ini")
admin() { "$PG_BIN/psql" -X -q -At -F '|' -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$admin_port" \
    -d pgshift -c "$1"; }
ctl() { bench_psql_super src -c "$1"; }
rss_idle=$(bench_rss_kb "$PGSHIFT_PID")

# migrate TENANT: runs one migration to copy-complete; prints its id.
migrate() {
    local id i
    id=$(admin "MIGRATE TENANT '$1' TO 'dst' WITH (batch_size = $BATCH, max_bulk_copy_rate = 0)" |
        cut -d'|' -f1) || bench_die "MIGRATE failed"
    # Poll gently (one psql a second): the copy is timed from the record, not from here.
    for ((i = 0; i < 7200; i++)); do
        case $(ctl "SELECT CASE WHEN bulk_copy_completed_at IS NOT NULL THEN 'done'
                    ELSE phase END FROM pgshift.migrations WHERE id = $id") in
        done) break ;;
        FAILED | ABORTED)
            bench_die "migration $id failed: $(ctl "SELECT last_error FROM pgshift.migrations WHERE id = $id")" ;;
        esac
        sleep 1
    done
    echo "$id"
}

bench_log "pgshift: small tenant ($small_n events)"
small_id=$(migrate "$SMALL")
hwm_small=$(awk '/^VmHWM:/ {print $2}' "/proc/$PGSHIFT_PID/status")
# Abort it (the target is emptied again), so the large copy keeps positions.
admin "ABORT MIGRATION $small_id" >/dev/null || bench_die "ABORT failed"
bench_psql_super dst -c "VACUUM events" >/dev/null

# Alternate raw and pgshift copies of the large tenant: the machine's noise
# hits both alike. The best of each is compared.
raw_times=()
pg_times=()
same=yes
pg_mode=?
for ((round = 1; round <= ROUNDS; round++)); do
    bench_log "round $round: raw pipe"
    raw_times+=("$(raw_copy)")
    bench_log "round $round: pgshift"
    big_id=$(migrate "$BIG")
    pg_times+=("$(ctl "SELECT extract(epoch FROM bulk_copy_completed_at - bulk_copy_started_at)
                       FROM pgshift.migrations WHERE id = $big_id")")
    hwm_big=$(awk '/^VmHWM:/ {print $2}' "/proc/$PGSHIFT_PID/status")
    pg_mode=$(ctl "SELECT position_mode FROM pgshift.migrations WHERE id = $big_id")
    a=$(bench_psql_super src -c "SELECT count(*) || md5(string_agg(e::text, '|' ORDER BY global_position)) FROM events e WHERE tenant_id = '$BIG'")
    b=$(bench_psql_super dst -c "SELECT count(*) || md5(string_agg(e::text, '|' ORDER BY global_position)) FROM events e WHERE tenant_id = '$BIG'")
    [ "$a" = "$b" ] || same=NO
    admin "ABORT MIGRATION $big_id" >/dev/null || bench_die "ABORT failed"
    bench_psql_super dst -c "VACUUM events" >/dev/null
done
raw_bytes=$(cat "$bytes_file")
best() { printf '%s\n' "$@" | sort -g | head -1; }
raw_s=$(best "${raw_times[@]}")
pg_s=$(best "${pg_times[@]}")

# -- report ----------------------------------------------------------------------
report() {
    local raw_eps pg_eps raw_mbs pg_mbs ratio
    raw_eps=$(echo "$big_n / $raw_s" | bc -l)
    pg_eps=$(echo "$big_n / $pg_s" | bc -l)
    raw_mbs=$(echo "$raw_bytes / 1048576 / $raw_s" | bc -l)
    pg_mbs=$(echo "$raw_bytes / 1048576 / $pg_s" | bc -l)
    ratio=$(echo "$pg_eps / $raw_eps" | bc -l)
    echo "# bulk copy: pgshift vs the raw COPY pipe"
    echo
    bench_machine_info | sed 's/^/    /'
    echo
    echo "Tenant of $big_n events among $TOTAL_EVENTS; binary COPY stream $((raw_bytes / 1048576)) MiB;" \
        "batch_size $BATCH, no rate limit, positions: $pg_mode; rows identical on both sides" \
        "(every column, positions included): $same."
    echo
    echo "Best of $ROUNDS alternating runs each (all runs, seconds: raw ${raw_times[*]};" \
        "pgshift ${pg_times[*]})."
    echo
    echo "| copy | seconds | events/s | MB/s | vs raw |"
    echo "| --- | ---: | ---: | ---: | ---: |"
    printf '| raw pipe | %.2f | %.0f | %.1f | 1.00x |\n' "$raw_s" "$raw_eps" "$raw_mbs"
    printf '| pgshift | %.2f | %.0f | %.1f | %.2fx |\n' "$pg_s" "$pg_eps" "$pg_mbs" "$ratio"
    echo
    echo "pgshift RSS: idle $((rss_idle / 1024)) MiB; peak (VmHWM) after copying $small_n events" \
        "$((hwm_small / 1024)) MiB, after copying $big_n events $((hwm_big / 1024)) MiB."
}
if [ -n "$OUT" ]; then report | tee "$OUT"; else report; fi
