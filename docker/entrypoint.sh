#!/bin/sh
# docker/entrypoint.sh - wait until every store of the config accepts
# connections (compose also waits on their health checks), then run pgshift.
# Stores are read from the [stores] section: host=NAME port=PORT.
set -eu

CONFIG=${PGSHIFT_CONFIG:-/etc/pgshift/pgshift.ini}
WAIT_SECONDS=${PGSHIFT_WAIT_SECONDS:-60}

stores=$(sed -n '/^\[stores\]/,/^\[/p' "$CONFIG" | grep -v '^[;#[]' | grep '=' || true)
while IFS= read -r line; do
    [ -n "$line" ] || continue
    host=$(echo "$line" | sed -n 's/.*host=\([^ ]*\).*/\1/p')
    port=$(echo "$line" | sed -n 's/.*port=\([0-9]*\).*/\1/p')
    [ -n "$host" ] || continue
    i=0
    until pg_isready -q -h "$host" -p "${port:-5432}"; do
        i=$((i + 1))
        if [ "$i" -ge "$WAIT_SECONDS" ]; then
            echo "entrypoint: store $host:${port:-5432} not ready after ${WAIT_SECONDS}s" >&2
            exit 1
        fi
        sleep 1
    done
    echo "entrypoint: store $host:${port:-5432} is ready"
done <<EOF_STORES
$stores
EOF_STORES

exec "$@"
