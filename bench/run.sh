#!/usr/bin/env bash
# bench/run.sh - run every benchmark (bench/*/run.sh), one after the other.
# `make bench` calls it. Environment knobs (QUICK=1, PGSHIFT_BIN, ...) pass
# through; see bench/README.md. Exit status: 1 if any benchmark failed.
set -u
here=$(cd "$(dirname "$0")" && pwd)
rc=0
for b in "$here"/*/run.sh; do
    [ -x "$b" ] || continue
    echo "==> ${b#"$here"/}" >&2
    if ! "$b"; then
        echo "==> ${b#"$here"/} FAILED" >&2
        rc=1
    fi
done
exit $rc
