#!/usr/bin/env bash
# scripts/demo.sh - `make demo`: pgshift in front of two local PostgreSQL 15
# servers, an event-store application writing through it, the operator's view
# (pgshift-ctl, /metrics), a live migration of one tenant from the source
# store to the target store, and the check that every acknowledged append is
# where it must be, exactly once.
#
# Everything lives in a fresh temporary folder on free loopback ports and is
# stopped on exit, whatever happens: run it as often as you like. Meant for
# a fresh Debian 12 machine as root (PostgreSQL runs as user postgres); as
# another user PostgreSQL runs as that user.
#
# Environment:
#   PGSHIFT_BIN      the pgshift binary       (default: ./pgshift)
#   PGSHIFT_CTL_BIN  the pgshift-ctl binary   (default: ./pgshift-ctl)
#   PG_BIN           PostgreSQL's binaries    (default: /usr/lib/postgresql/15/bin)
#   DEMO_KEEP=1      keep the temporary folder (it is kept anyway on failure)
#   DEMO_SEED_EVENTS history of the migrating tenant before the demo (default 20000)
#   DEMO_WATCH_SECONDS  how long to watch the migration at most (default 45)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PGSHIFT_BIN=${PGSHIFT_BIN:-$ROOT/pgshift}
CTL_BIN=${PGSHIFT_CTL_BIN:-$ROOT/pgshift-ctl}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PY=/usr/bin/python3
WORKLOAD=$ROOT/scripts/demo-workload.py
SEED_EVENTS=${DEMO_SEED_EVENTS:-20000}
WATCH_SECONDS=${DEMO_WATCH_SECONDS:-45}

DB=eventstore
APP_PW=app-demo-secret
ADMIN_PW=admin-demo-secret

# ---- output helpers -----------------------------------------------------------
if [ -t 1 ]; then B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' Y=$'\e[33m' N=$'\e[0m'; else B= G= R= Y= N=; fi
T0=$(date +%s)
step() { printf '\n%s==> [%3ss] %s%s\n' "$B" "$(($(date +%s) - T0))" "$*" "$N"; }
info() { printf '    %s\n' "$*"; }
warn() { printf '    %s%s%s\n' "$Y" "$*" "$N"; }
fail() { printf '%sdemo: %s%s\n' "$R" "$*" "$N" >&2; exit 1; }
# Run a command, showing it first as an operator would type it.
show() {
    local line="$*"
    printf '%s$ %s%s\n' "$B" "${line/#ctl /pgshift-ctl }" "$N"
    "$@"
}

# ---- preconditions ------------------------------------------------------------
[ -x "$PGSHIFT_BIN" ] || fail "no pgshift binary at $PGSHIFT_BIN (run make, or set PGSHIFT_BIN)"
[ -x "$CTL_BIN" ] || fail "no pgshift-ctl binary at $CTL_BIN (run make pgshift-ctl, or set PGSHIFT_CTL_BIN)"
[ -x "$PG_BIN/initdb" ] || fail "no PostgreSQL 15 at $PG_BIN (run scripts/install-deps.sh)"
[ -x "$PY" ] || fail "no $PY (Debian's python3)"
"$PY" -c 'import psycopg' 2>/dev/null || fail "$PY has no psycopg (apt-get install python3-psycopg)"
SCHEMA=$ROOT/tests/integration/schema.sql
[ -f "$SCHEMA" ] || SCHEMA=$ROOT/scripts/demo-schema.sql
[ -f "$SCHEMA" ] || fail "no event-store schema (tests/integration/schema.sql)"

if [ "$(id -u)" = 0 ]; then
    PG_USER=postgres
    as_pg() { runuser -u postgres -- "$@"; }
else
    PG_USER=$(id -un)
    as_pg() { "$@"; }
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgshift-demo.XXXXXX")
chmod 755 "$WORK"
PGSHIFT_PID=
WORKLOAD_PID=
CLUSTERS=()
STARTERS=() # background jobs setting up a cluster
DEMO_OK=0

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [ -n "$WORKLOAD_PID" ] && kill -0 "$WORKLOAD_PID" 2>/dev/null; then
        kill -TERM "$WORKLOAD_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$WORKLOAD_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$WORKLOAD_PID" 2>/dev/null
        wait "$WORKLOAD_PID" 2>/dev/null
    fi
    if [ -n "$PGSHIFT_PID" ] && kill -0 "$PGSHIFT_PID" 2>/dev/null; then
        kill -TERM "$PGSHIFT_PID" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$PGSHIFT_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$PGSHIFT_PID" 2>/dev/null
        wait "$PGSHIFT_PID" 2>/dev/null
    fi
    # A cluster still being set up would start after we looked: let its job end first
    # (initdb and pg_ctl are bounded; an interrupt usually reached them as well).
    for p in "${STARTERS[@]}"; do
        if kill -0 "$p" 2>/dev/null; then
            echo "demo: waiting for the PostgreSQL setup to finish, to stop it" >&2
            wait "$p" 2>/dev/null
        fi
    done
    for d in "${CLUSTERS[@]}"; do
        if [ -f "$d/data/postmaster.pid" ]; then
            as_pg "$PG_BIN/pg_ctl" -D "$d/data" -m fast -w -t 20 stop >/dev/null 2>&1 ||
                as_pg "$PG_BIN/pg_ctl" -D "$d/data" -m immediate -w -t 10 stop >/dev/null 2>&1
        fi
    done
    if [ "$rc" = 0 ] && [ "${DEMO_KEEP:-0}" != 1 ]; then
        rm -rf "$WORK"
    else
        echo "demo: logs and data kept in $WORK" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A free TCP port on 127.0.0.1 (nobody listens there right now).
free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Wait until 127.0.0.1:$1 accepts connections; $2 = pid that must stay alive.
wait_port() {
    local port=$1 pid=${2:-} i
    for i in $(seq 150); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        sleep 0.1
    done
    return 1
}

# ---- PostgreSQL ---------------------------------------------------------------
# start_cluster NAME: initdb, scram for TCP, the app role and database, the
# schema; writes the port to $WORK/NAME/port. Runs in a subshell (the two
# clusters start in parallel), so it only reports through files and exit codes.
start_cluster() {
    local name=$1 dir=$WORK/$1 port
    port=$(free_port)
    echo "$port" >"$dir/port"
    as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C -N \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; fail "initdb of $name failed"; }
    as_pg tee -a "$dir/data/postgresql.auto.conf" >/dev/null <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/sock'
password_encryption = 'scram-sha-256'
max_connections = 100
shared_buffers = 64MB
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = logical
log_min_messages = warning
EOF
    as_pg tee "$dir/data/pg_hba.conf" >/dev/null <<EOF
# written by scripts/demo.sh: superuser over the unix socket, scram over TCP
local all $PG_USER trust
local all postgres trust
host  all all 127.0.0.1/32 scram-sha-256
EOF
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start >/dev/null ||
        { cat "$dir/postgres.log" >&2; fail "PostgreSQL $name did not start"; }
    psql_su "$name" postgres -c "CREATE ROLE app LOGIN PASSWORD '$APP_PW'" >/dev/null
    psql_su "$name" postgres -c "CREATE DATABASE $DB OWNER app" >/dev/null
    # The schema belongs to app, as the application's own migrations would make it.
    { echo "SET ROLE app;"; cat "$SCHEMA"; } | psql_su "$name" "$DB" -f - >/dev/null
    info "$name: PostgreSQL 15 on 127.0.0.1:$port, database $DB, schema from ${SCHEMA#"$ROOT"/}"
}

# psql_su CLUSTER DBNAME ARGS...: psql as the superuser over the unix socket.
psql_su() {
    local dir=$WORK/$1 db=$2 port
    shift 2
    port=$(cat "$dir/port")
    as_pg "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir/sock" -p "$port" -U postgres -d "$db" "$@"
}

dsn() { # dsn PORT: a libpq connection string as app
    echo "host=127.0.0.1 port=$1 dbname=$DB user=app password=$APP_PW"
}

ctl() { "$CTL_BIN" -h 127.0.0.1 -p "$ADMIN_PORT" -U admin "$@"; }
export PGPASSWORD=$ADMIN_PW # pgshift-ctl's password, as libpq reads it

# ---- 1. two stores ------------------------------------------------------------
step "Starting two PostgreSQL 15 servers (source and target) in $WORK"
for c in source target; do
    mkdir -p "$WORK/$c/sock"
    [ "$(id -u)" = 0 ] && chown -R postgres: "$WORK/$c"
    CLUSTERS+=("$WORK/$c") # before it starts, so that cleanup stops it whatever happens
done
start_cluster source &
SRC_JOB=$!
STARTERS+=("$SRC_JOB")
start_cluster target &
TGT_JOB=$!
STARTERS+=("$TGT_JOB")
wait "$SRC_JOB" || fail "the source store did not start"
wait "$TGT_JOB" || fail "the target store did not start"
PORT_SOURCE=$(cat "$WORK/source/port")
PORT_TARGET=$(cat "$WORK/target/port")

# ---- 2. pgshift ---------------------------------------------------------------
step "Starting pgshift in front of them"
LISTEN_PORT=$(free_port)
ADMIN_PORT=$(free_port)
HTTP_PORT=$(free_port)
mkdir -p "$WORK/pgshift"
cat >"$WORK/pgshift/userlist.txt" <<EOF
"app" "$APP_PW"
"admin" "$ADMIN_PW"
EOF
chmod 600 "$WORK/pgshift/userlist.txt"
cat >"$WORK/pgshift/pgshift.ini" <<EOF
; written by scripts/demo.sh
[pgshift]
listen_addr = 127.0.0.1
listen_port = $LISTEN_PORT
admin_port = $ADMIN_PORT
http_port = $HTTP_PORT
auth_type = scram-sha-256
auth_file = $WORK/pgshift/userlist.txt
admin_users = admin
default_store = source
log_level = info

[stores]
source = $(dsn "$PORT_SOURCE")
target = $(dsn "$PORT_TARGET")
EOF
"$PGSHIFT_BIN" -c "$WORK/pgshift/pgshift.ini" >"$WORK/pgshift/pgshift.log" 2>&1 </dev/null &
PGSHIFT_PID=$!
if ! wait_port "$LISTEN_PORT" "$PGSHIFT_PID" || ! wait_port "$ADMIN_PORT" "$PGSHIFT_PID"; then
    tail -20 "$WORK/pgshift/pgshift.log" >&2
    fail "pgshift did not start (log above)"
fi
info "pgshift $("$PGSHIFT_BIN" --version 2>/dev/null | head -1 | sed 's/^pgshift //') (pid $PGSHIFT_PID):" \
    "applications 127.0.0.1:$LISTEN_PORT, admin 127.0.0.1:$ADMIN_PORT, http 127.0.0.1:$HTTP_PORT"
info "config: $WORK/pgshift/pgshift.ini"
APP_DSN=$(dsn "$LISTEN_PORT")

# ---- 3. the application -------------------------------------------------------
TENANTS=()
for _ in 1 2 3 4; do TENANTS+=("$("$PY" -c 'import uuid; print(uuid.uuid4())')"); done
MOVER=${TENANTS[0]}
step "Seeding $SEED_EVENTS events of history for tenant $MOVER on the source"
"$PY" "$WORKLOAD" seed --dsn "$(dsn "$PORT_SOURCE")" --tenant "$MOVER" \
    --events "$SEED_EVENTS" --out "$WORK/seeded.json" | sed 's/^/    /'

step "Starting the application: ${#TENANTS[@]} tenants x 2 connections through pgshift"
info "each append: BEGIN; version probe; INSERT ... RETURNING global_position; COMMIT"
"$PY" "$WORKLOAD" run --dsn "$APP_DSN" --tenants "$(IFS=,; echo "${TENANTS[*]}")" \
    --out "$WORK/results.json" --workers-per-tenant 2 --rate 40 >"$WORK/workload.log" 2>&1 &
WORKLOAD_PID=$!
sleep 5
kill -0 "$WORKLOAD_PID" 2>/dev/null || { cat "$WORK/workload.log" >&2; fail "the workload died"; }
tail -1 "$WORK/workload.log" | sed 's/^/    /'

# ---- 4. the operator's view ----------------------------------------------------
step "The operator's view: pgshift-ctl"
show ctl show stores
show ctl show clients
show ctl show stats

step "HTTP /metrics (excerpt)"
"$PY" - "$HTTP_PORT" <<'EOF' || warn "no /metrics answer"
import sys, urllib.request
body = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read()
lines = [l for l in body.decode().splitlines() if l and not l.startswith("#")]
for l in lines[:16]:
    print("    " + l)
if len(lines) > 16:
    print("    ... (%d more series)" % (len(lines) - 16))
EOF

# ---- 5. live migration ---------------------------------------------------------
step "Live migration of tenant $MOVER: source -> target"
MIG_ID=
MIGRATED=0
MIG_STATUS="not attempted"
set +e
printf '%s$ pgshift-ctl migrate %s target%s\n' "$B" "$MOVER" "$N"
MIG_OUT=$(ctl --json migrate "$MOVER" target 2>"$WORK/migrate.err")
MIG_RC=$?
set -e
if [ "$MIG_RC" = 0 ]; then
    echo "$MIG_OUT" | sed 's/^/    /'
    # The answer is a row with the id (or a tag carrying it): take the first integer.
    MIG_ID=$("$PY" -c '
import json, re, sys
d = json.loads(sys.stdin.read())
rows = d if isinstance(d, list) else [d]
for r in rows:
    keys = sorted(r, key=lambda k: (("id" not in k.lower()), k))
    for k in keys:
        m = re.search(r"\b(\d+)\b", str(r[k] or ""))
        if m:
            print(m.group(1)); sys.exit(0)
' <<<"$MIG_OUT" || true)
    if [ -z "$MIG_ID" ]; then
        warn "MIGRATE answered, but without a migration id I can read"
        MIG_STATUS="started, id unknown"
    fi
elif grep -qi "unknown command" "$WORK/migrate.err"; then
    sed 's/^/    /' "$WORK/migrate.err"
    warn "live migration: not available in this build yet (issue #4/#5)"
    MIG_STATUS="not available in this build yet (issue #4/#5)"
else
    sed 's/^/    /' "$WORK/migrate.err"
    warn "live migration: pgshift refused MIGRATE"
    MIG_STATUS="refused by pgshift"
    DEMO_OK=1
fi

if [ -n "$MIG_ID" ]; then
    # Watch until the target has caught up and the cutover may go (or a terminal phase).
    set +e
    show ctl watch "$MIG_ID" --until ready --timeout "$WATCH_SECONDS"
    W_RC=$?
    set -e
    case $W_RC in
    0) ;;
    4) warn "the migration did not become ready for cutover within ${WATCH_SECONDS}s" ;;
    3) warn "the migration ended ABORTED or FAILED"; DEMO_OK=1 ;;
    *) warn "watch failed (exit $W_RC)" ;;
    esac
    set +e
    show ctl cutover "$MIG_ID" 2>"$WORK/cutover.err"
    C_RC=$?
    set -e
    sed 's/^/    /' "$WORK/cutover.err"
    if [ "$C_RC" = 0 ]; then
        MIGRATED=1
        MIG_STATUS="migration $MIG_ID: cut over to target"
        show ctl show migration "$MIG_ID" || true
    elif grep -qi "unknown command" "$WORK/cutover.err"; then
        warn "cutover: not available in this build yet (issue #5)"
        MIG_STATUS="migration $MIG_ID: copied, cutover not available in this build yet (issue #5)"
        show ctl show migration "$MIG_ID" || true
    else
        warn "cutover refused; the tenant stays on the source"
        MIG_STATUS="migration $MIG_ID: cutover refused"
    fi
fi
# Let the application write a little more after the switch.
sleep 3

# ---- 6. stop the application and check ------------------------------------------
step "Stopping the application"
kill -TERM "$WORKLOAD_PID"
wait "$WORKLOAD_PID" || { cat "$WORK/workload.log" >&2; fail "the workload failed"; }
WORKLOAD_PID=
tail -2 "$WORK/workload.log" | sed 's/^/    /'

step "Checking every acknowledged append on the stores (directly, not through pgshift)"
MOVED_ARGS=()
[ "$MIGRATED" = 1 ] && MOVED_ARGS=(--moved "$MOVER")
set +e
"$PY" "$WORKLOAD" verify --source "$(dsn "$PORT_SOURCE")" --target "$(dsn "$PORT_TARGET")" \
    --results "$WORK/results.json" --seeded "$WORK/seeded.json" "${MOVED_ARGS[@]}" |
    sed 's/^/    /'
V_RC=${PIPESTATUS[0]}
set -e
[ "$V_RC" = 0 ] || DEMO_OK=1

step "pgshift after the run"
show ctl show stats
if grep -q "BUG\|AddressSanitizer\|runtime error" "$WORK/pgshift/pgshift.log"; then
    warn "pgshift's log reports a problem:"
    grep -m5 "BUG\|AddressSanitizer\|runtime error" "$WORK/pgshift/pgshift.log" | sed 's/^/    /'
    DEMO_OK=1
fi
kill -0 "$PGSHIFT_PID" 2>/dev/null || { warn "pgshift is not running any more"; DEMO_OK=1; }

# ---- summary -------------------------------------------------------------------------
step "Summary"
"$PY" - "$WORK/results.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
n = sum(x["appends"] for x in r.values())
ev = sum(len(x["acked"]) for x in r.values())
secs = max(x["seconds"] for x in r.values())
print("    application: %d append transactions (%d events) in %.0fs through pgshift, "
      "%d optimistic-concurrency conflicts, %d errors"
      % (n, ev, secs, sum(x["conflicts"] for x in r.values()),
         sum(x["n_errors"] + len(x["read_errors"]) for x in r.values())))
EOF
info "live migration: $MIG_STATUS"
info "acknowledged appends: $([ "$V_RC" = 0 ] && echo "every one present exactly once" || echo "PROBLEMS (see above)")"
info "elapsed: $(($(date +%s) - T0))s"
if [ "$DEMO_OK" = 0 ]; then
    printf '%sdemo: OK%s\n' "$G" "$N"
else
    printf '%sdemo: FAILED%s\n' "$R" "$N"
fi
exit "$DEMO_OK"
