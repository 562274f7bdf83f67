#!/usr/bin/env bash
# scripts/install-deps.sh - install what building and testing pgshift needs on
# Debian 12, as root. Idempotent: asks dpkg which packages are missing and
# installs only those (apt-get update only when something is missing), then
# installs the node test driver (npm `pg`) when tests/integration/node has no
# node_modules yet.
#
# The pgbouncer and postgresql packages start system services on install; we
# only use their binaries, so whatever they started is stopped again. The tests
# never depend on the packaged cluster.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

PKGS=(
    build-essential pkg-config clang libuv1-dev libpq-dev libssl-dev
    libpg-query-dev libcmocka-dev libclang-rt-14-dev
    postgresql-15 postgresql-client-15 pgbouncer
    python3-psycopg python3-asyncpg python3-pytest python3-yaml
    nodejs openssl procps iproute2
)

log() { echo "install-deps: $*"; }

sudo_cmd=()
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        sudo_cmd=(sudo)
    fi
fi

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

missing=()
for p in "${PKGS[@]}"; do
    is_installed "$p" || missing+=("$p")
done
# npm: Debian ships it as its own package; nodejs builds from other sources
# bundle it (and conflict with Debian's npm package). Ask for it only when the
# command is absent.
if ! command -v npm >/dev/null 2>&1 && ! is_installed npm; then
    missing+=(npm)
fi

installed_services=0
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ] && [ ${#sudo_cmd[@]} = 0 ]; then
        log "missing packages: ${missing[*]}; run this script as root" >&2
        exit 1
    fi
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo_cmd[@]}" apt-get update -q
    "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
    installed_services=1
else
    log "all Debian packages present"
fi

# Stop the system services the packages may have started (only their
# binaries are used). Only the packaged service is touched: pgbouncer
# processes that tests or benchmarks start have pidfiles of their own.
stop_services() {
    local pidfile=/var/run/postgresql/pgbouncer.pid pid
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        "${sudo_cmd[@]}" systemctl disable --now pgbouncer >/dev/null 2>&1 || true
    fi
    if [ -f "$pidfile" ]; then
        pid=$(cat "$pidfile" 2>/dev/null || true)
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            log "stopping the system pgbouncer service"
            "${sudo_cmd[@]}" service pgbouncer stop >/dev/null 2>&1 || true
            if kill -0 "$pid" 2>/dev/null; then
                "${sudo_cmd[@]}" kill "$pid" 2>/dev/null || true
            fi
        fi
    fi
    if command -v pg_lsclusters >/dev/null 2>&1; then
        # Stop the packaged cluster only when this script just installed it.
        if [ "$installed_services" = 1 ] && pg_lsclusters -h 2>/dev/null | grep -q '^15 main .* online'; then
            log "stopping the packaged PostgreSQL 15 cluster (tests start their own)"
            "${sudo_cmd[@]}" pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
        fi
    fi
}
stop_services

# The node test driver.
nodedir="$here/tests/integration/node"
if [ -f "$nodedir/package.json" ] && [ ! -d "$nodedir/node_modules/pg" ]; then
    log "installing node test dependencies in tests/integration/node"
    if [ -f "$nodedir/package-lock.json" ]; then
        (cd "$nodedir" && npm ci --no-audit --no-fund --loglevel=error)
    else
        (cd "$nodedir" && npm install --no-audit --no-fund --loglevel=error)
    fi
fi

log "ok"
