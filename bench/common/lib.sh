# shellcheck shell=bash
# bench/common/lib.sh - shared helpers for the benchmarks under bench/.
#
# Source it from a bench/NAME/run.sh (bash). It starts throwaway PostgreSQL 15
# clusters, pgshift and PgBouncer on free loopback ports inside one temporary
# directory, and tears all of them down on exit (only the processes it
# started, by pid).
#
#   . "$(dirname "$0")/../common/lib.sh"
#   bench_init                       # temp dir, fd limit, exit trap
#   bench_pg_start main              # cluster "main": PG_main_PORT, database bench
#   bench_pgshift_start main         # PGSHIFT_PORT, PGSHIFT_PID (stores = main)
#   bench_pgbouncer_start main       # PGBOUNCER_PORT, PGBOUNCER_PID
#   bench_rss_kb "$PGSHIFT_PID"      # VmRSS in kB
#   bench_pgshift_stop; bench_pgbouncer_stop
#
# Every client (pgbench, psql, python) logs in as $BENCH_USER/$BENCH_PASSWORD
# (exported as PGUSER/PGPASSWORD) to database $BENCH_DB over TCP 127.0.0.1,
# with the same auth_type ($BENCH_AUTH, default scram-sha-256) on PostgreSQL,
# pgshift and PgBouncer.
#
# Environment knobs:
#   PG_BIN         PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
#   PGSHIFT_BIN    pgshift binary (default: <repo>/build/pgshift, built by
#                  `make pgshift` if missing)
#   PGSHIFT_REV    the commit PGSHIFT_BIN was built from (for the report)
#   PGBOUNCER_BIN  default /usr/sbin/pgbouncer
#   BENCH_AUTH     scram-sha-256 (default) or md5, for all three
#   BENCH_KEEP=1   keep the temp directory (logs) after the run

BENCH_COMMON_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BENCH_REPO=$(cd "$BENCH_COMMON_DIR/../.." && pwd)
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PGBOUNCER_BIN=${PGBOUNCER_BIN:-/usr/sbin/pgbouncer}
PGSHIFT_BIN=${PGSHIFT_BIN:-$BENCH_REPO/build/pgshift}
BENCH_AUTH=${BENCH_AUTH:-scram-sha-256}
BENCH_USER=${BENCH_USER:-bench}
BENCH_PASSWORD=${BENCH_PASSWORD:-bench-secret}
BENCH_DB=${BENCH_DB:-bench}
BENCH_PY=${BENCH_PY:-/usr/bin/python3}
# Most connections any benchmark opens at once (idle-client memory test).
BENCH_MAX_CLIENTS=${BENCH_MAX_CLIENTS:-10000}

export PGUSER=$BENCH_USER PGPASSWORD=$BENCH_PASSWORD PGDATABASE=$BENCH_DB PGHOST=127.0.0.1
export PGCONNECT_TIMEOUT=10

BENCH_PIDS_PG=()    # data directories of clusters we started
PGSHIFT_PID=
PGBOUNCER_PID=

bench_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
bench_die() {
    bench_log "ERROR: $*"
    exit 1
}

# Run a command as the PostgreSQL OS user (postgres when we are root).
bench_as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# A TCP port on 127.0.0.1 nobody listens on right now.
bench_free_port() {
    "$BENCH_PY" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# bench_wait_port PORT TIMEOUT_S [PID]: wait until 127.0.0.1:PORT accepts.
bench_wait_port() {
    local port=$1 timeout=$2 pid=${3:-} i
    for ((i = 0; i < timeout * 20; i++)); do
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# VmRSS of a process in kB.
bench_rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# Machine and versions, one "key: value" per line (for result headers).
bench_machine_info() {
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "host: $(nproc) CPUs, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)," \
        "$(awk '/^MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo)"
    echo "kernel: $(uname -sr)"
    echo "postgresql: $("$PG_BIN/postgres" --version)"
    echo "pgbench: $("$PG_BIN/pgbench" --version)"
    echo "pgbouncer: $("$PGBOUNCER_BIN" --version 2>/dev/null | head -1)"
    echo "pgshift: $("$PGSHIFT_BIN" --version 2>/dev/null | head -1), $PGSHIFT_BIN," \
        "built from ${PGSHIFT_REV:-$(git -C "$BENCH_REPO" rev-parse --short HEAD 2>/dev/null || echo '?') (repo HEAD; set PGSHIFT_REV if the binary is from elsewhere)}"
    echo "auth: $BENCH_AUTH on all three, TCP 127.0.0.1"
}

# bench_init: temp dir ($BENCH_TMP, readable by postgres), fd limit, traps.
bench_init() {
    [ -x "$PG_BIN/initdb" ] || bench_die "no PostgreSQL 15 in $PG_BIN"
    [ -x "$PGBOUNCER_BIN" ] || bench_die "no pgbouncer at $PGBOUNCER_BIN"
    if [ ! -x "$PGSHIFT_BIN" ]; then
        bench_log "building pgshift (make pgshift)"
        make -C "$BENCH_REPO" pgshift >&2 || bench_die "make pgshift failed; set PGSHIFT_BIN"
    fi
    "$BENCH_PY" -c 'import psycopg' 2>/dev/null || bench_die "$BENCH_PY lacks psycopg"
    # Each proxy and the idle-client driver hold one fd per client.
    local want=$((BENCH_MAX_CLIENTS + 1000))
    if [ "$(ulimit -n)" -lt "$want" ]; then
        ulimit -n "$want" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    fi
    [ "$(ulimit -n)" -ge "$want" ] ||
        bench_log "warning: fd limit $(ulimit -n) < $want; the largest idle-client test may fail"
    # A system PgBouncer would compete for the CPUs; stop it.
    if [ -f /run/postgresql/pgbouncer.pid ] &&
        kill -0 "$(cat /run/postgresql/pgbouncer.pid)" 2>/dev/null; then
        bench_log "stopping the system pgbouncer service"
        service pgbouncer stop >&2 || true
    fi
    BENCH_TMP=$(mktemp -d /tmp/pgshift-bench.XXXXXX)
    chmod 755 "$BENCH_TMP"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$BENCH_TMP"; fi
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

bench_cleanup() {
    local d
    bench_pgshift_stop
    bench_pgbouncer_stop
    for d in "${BENCH_PIDS_PG[@]}"; do
        bench_as_pg "$PG_BIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1 || true
    done
    BENCH_PIDS_PG=()
    if [ -n "${BENCH_TMP:-}" ] && [ -d "$BENCH_TMP" ]; then
        if [ "${BENCH_KEEP:-0}" = 1 ]; then
            bench_log "kept $BENCH_TMP"
        else
            rm -rf "$BENCH_TMP"
        fi
    fi
}

# bench_pg_start NAME: initdb + start a cluster in $BENCH_TMP/NAME on a free
# port; role $BENCH_USER (password), database $BENCH_DB owned by it, the
# event-store schema of tests/integration/schema.sql. Sets PG_<NAME>_PORT and
# PG_<NAME>_DATA. Tuned for throughput, not durability (fsync off).
bench_pg_start() {
    local name=$1 dir="$BENCH_TMP/$1" port
    port=$(bench_free_port)
    mkdir -p "$dir/sock"
    if [ "$(id -u)" = 0 ]; then chown -R postgres: "$dir"; fi
    bench_as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C -N \
        >"$dir/initdb.log" 2>&1 || bench_die "initdb failed: $dir/initdb.log"
    cat >>"$dir/data/postgresql.auto.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/sock'
password_encryption = '$([ "$BENCH_AUTH" = md5 ] && echo md5 || echo scram-sha-256)'
max_connections = 300
shared_buffers = 256MB
fsync = off
synchronous_commit = off
full_page_writes = off
checkpoint_timeout = 30min
max_wal_size = 4GB
logging_collector = off
log_min_messages = warning
EOF
    cat >"$dir/data/pg_hba.conf" <<EOF
local all postgres trust
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 $BENCH_AUTH
EOF
    bench_as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start \
        >/dev/null || bench_die "PostgreSQL $name did not start: $dir/postgres.log"
    BENCH_PIDS_PG+=("$dir/data")
    local psql=("$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir/sock" -p "$port" -U postgres)
    "${psql[@]}" -d postgres -c "CREATE ROLE $BENCH_USER LOGIN PASSWORD '$BENCH_PASSWORD'" \
        -c "CREATE DATABASE $BENCH_DB OWNER $BENCH_USER" >/dev/null ||
        bench_die "bootstrap of $name failed"
    "${psql[@]}" -d "$BENCH_DB" -c "SET ROLE $BENCH_USER" \
        -f "$BENCH_REPO/tests/integration/schema.sql" >/dev/null ||
        bench_die "schema load on $name failed"
    # The role's stored secret (SCRAM-SHA-256$... or md5...), as production
    # setups copy it from pg_authid into the proxies' auth files: neither
    # proxy then derives a key from a plain password at each login.
    BENCH_SECRET=$("${psql[@]}" -At -d postgres -c \
        "SELECT rolpassword FROM pg_authid WHERE rolname = '$BENCH_USER'")
    printf -v "PG_${name}_PORT" '%s' "$port"
    printf -v "PG_${name}_DATA" '%s' "$dir/data"
    bench_log "PostgreSQL $name on 127.0.0.1:$port"
}

# bench_psql_super NAME ARGS...: psql as superuser on cluster NAME.
bench_psql_super() {
    local name=$1 port_var="PG_${1}_PORT"
    shift
    "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$BENCH_TMP/$name/sock" -p "${!port_var}" \
        -U postgres -d "$BENCH_DB" "$@"
}

# Client backends of $BENCH_USER on cluster NAME (server connections in use).
bench_pg_backends() {
    bench_psql_super "$1" -c "SELECT count(*) FROM pg_stat_activity
        WHERE usename = '$BENCH_USER' AND backend_type = 'client backend'"
}

# Superuser connection string (unix socket) of cluster NAME.
bench_pg_super_dsn() {
    local port_var="PG_${1}_PORT"
    echo "host=$BENCH_TMP/$1/sock port=${!port_var} user=postgres dbname=$BENCH_DB"
}

# bench_pgshift_start STORES [section.key=value ...]: pgshift in front of the
# clusters STORES (comma-separated cluster names, each a store of that name;
# the first is the default store), same auth as PostgreSQL. Extra args are
# passed as -o overrides. Its auth_file holds the role's secret from pg_authid; it logs
# into the store with the password in the store's conninfo. Sets PGSHIFT_PORT,
# PGSHIFT_PID.
bench_pgshift_start() {
    local stores=$1 dir="$BENCH_TMP/pgshift" o st port_var
    shift
    mkdir -p "$dir"
    PGSHIFT_PORT=$(bench_free_port)
    printf '"%s" "%s"\n' "$BENCH_USER" "${BENCH_SECRET:-$BENCH_PASSWORD}" >"$dir/userlist.txt"
    chmod 600 "$dir/userlist.txt"
    cat >"$dir/pgshift.ini" <<EOF
; written by bench/common/lib.sh
[pgshift]
listen_addr = 127.0.0.1
listen_port = $PGSHIFT_PORT
admin_port = $(bench_free_port)
http_port = 0
auth_type = $BENCH_AUTH
auth_file = $dir/userlist.txt
admin_users = $BENCH_USER
log_level = warning
max_client_conn = $((BENCH_MAX_CLIENTS + 100))

[stores]
EOF
    for st in ${stores//,/ }; do
        port_var="PG_${st}_PORT"
        echo "$st = host=127.0.0.1 port=${!port_var} dbname=$BENCH_DB user=$BENCH_USER" \
            "password=$BENCH_PASSWORD" >>"$dir/pgshift.ini"
    done
    local args=(-c "$dir/pgshift.ini")
    for o in "$@"; do args+=(-o "$o"); done
    "$PGSHIFT_BIN" "${args[@]}" </dev/null >>"$dir/pgshift.log" 2>&1 &
    PGSHIFT_PID=$!
    bench_wait_port "$PGSHIFT_PORT" 15 "$PGSHIFT_PID" ||
        bench_die "pgshift did not start: $(tail -20 "$dir/pgshift.log")"
}

bench_pgshift_stop() {
    if [ -n "${PGSHIFT_PID:-}" ]; then
        kill -INT "$PGSHIFT_PID" 2>/dev/null || true
        wait "$PGSHIFT_PID" 2>/dev/null || true
        PGSHIFT_PID=
    fi
}

# bench_pgbouncer_start STORE [key=value ...]: PgBouncer (run as postgres) in
# front of cluster STORE, pool_mode=session (BENCH_POOL_MODE), a server per
# client for up to 200 clients (BENCH_POOL_SIZE), for database $BENCH_DB (or
# each of BENCH_POOLER_DBS), the secret BENCH_POOLER_SECRET if set, same auth_type and auth_file secret as PostgreSQL and pgshift
# (with a SCRAM secret it logs into PostgreSQL with the client's SCRAM keys).
# Extra args are added to [pgbouncer]. Sets PGBOUNCER_PORT, PGBOUNCER_PID.
bench_pgbouncer_start() {
    local store=$1 dir="$BENCH_TMP/pgbouncer" kv
    local port_var="PG_${store}_PORT"
    shift
    mkdir -p "$dir"
    PGBOUNCER_PORT=$(bench_free_port)
    printf '"%s" "%s"\n' "$BENCH_USER" "${BENCH_POOLER_SECRET:-${BENCH_SECRET:-$BENCH_PASSWORD}}" \
        >"$dir/userlist.txt"
    {
        cat <<EOF
; written by bench/common/lib.sh
[databases]
$(for db in ${BENCH_POOLER_DBS:-$BENCH_DB}; do
            echo "$db = host=127.0.0.1 port=${!port_var} dbname=$db"
        done)

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBOUNCER_PORT
unix_socket_dir =
auth_type = $BENCH_AUTH
auth_file = $dir/userlist.txt
admin_users = $BENCH_USER
pool_mode = ${BENCH_POOL_MODE:-session}
max_client_conn = $((BENCH_MAX_CLIENTS + 100))
default_pool_size = ${BENCH_POOL_SIZE:-200}
max_db_connections = 0
min_pool_size = 0
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
log_connections = 0
log_disconnections = 0
ignore_startup_parameters = extra_float_digits
EOF
        for kv in "$@"; do echo "$kv"; done
    } >"$dir/pgbouncer.ini"
    chmod 600 "$dir/userlist.txt"
    if [ "$(id -u)" = 0 ]; then chown -R postgres: "$dir"; fi
    # Not -d (daemon): it stays our child. runuser's PAM session resets the
    # soft fd limit, so raise it again inside.
    bench_as_pg /bin/sh -c 'ulimit -n "$1" && exec "$2" "$3"' sh "$(ulimit -n)" \
        "$PGBOUNCER_BIN" "$dir/pgbouncer.ini" </dev/null >>"$dir/stderr.log" 2>&1 &
    local launcher=$! i
    for ((i = 0; i < 100; i++)); do
        [ -s "$dir/pgbouncer.pid" ] && break
        sleep 0.05
    done
    PGBOUNCER_PID=$(cat "$dir/pgbouncer.pid" 2>/dev/null)
    PGBOUNCER_LAUNCHER=$launcher
    [ -n "$PGBOUNCER_PID" ] && bench_wait_port "$PGBOUNCER_PORT" 15 "$PGBOUNCER_PID" ||
        bench_die "pgbouncer did not start: $(tail -20 "$dir/pgbouncer.log" "$dir/stderr.log")"
}

bench_pgbouncer_stop() {
    if [ -n "${PGBOUNCER_PID:-}" ]; then
        kill -TERM "$PGBOUNCER_PID" 2>/dev/null || true
        wait "$PGBOUNCER_LAUNCHER" 2>/dev/null || true
        local i
        for ((i = 0; i < 100; i++)); do
            kill -0 "$PGBOUNCER_PID" 2>/dev/null || break
            sleep 0.05
        done
        PGBOUNCER_PID=
        rm -f "$BENCH_TMP/pgbouncer/pgbouncer.pid"
    fi
}
