#!/usr/bin/env bash
# TEMPORARY (issue 13): the side-by-side benchmark of the concurrency models
# of host/src/driver/proto_models.rs, each served by the same release binary
# (CREDPROXY_PROTO_MODEL in the bench server's environment). Per model and
# connection count: wait for a 1-minute load below MAX_LOAD (at most
# WAIT_LIMIT s), then `bench --baseline` with RUNS runs of DURATION; then
# `bench --memory` per model. JSON results go to OUT (one file per run).
set -euo pipefail
cd "$(dirname "$0")/../.."
MAX_LOAD="${MAX_LOAD:-1.5}"
WAIT_LIMIT="${WAIT_LIMIT:-120}"
RUNS="${RUNS:-3}"
DURATION="${DURATION:-3s}"
OUT="${OUT:-/tmp/credproxy-models}"
MODELS="${MODELS:-mio smol-local smol-mt threads}"
CONNS="${CONNS:-1 8}"
bin="${CARGO_TARGET_DIR:-target}/release/credproxy"
mkdir -p "$OUT"
wait_quiet() {
    local waited=0
    while awk -v max="$MAX_LOAD" '{ exit !($1 >= max) }' /proc/loadavg; do
        [ "$waited" -ge "$WAIT_LIMIT" ] && return
        sleep 5
        waited=$((waited + 5))
    done
}
for c in $CONNS; do
    for m in $MODELS; do
        wait_quiet
        echo "## $m, $c connection(s), load $(cut -d' ' -f1 /proc/loadavg)"
        CREDPROXY_PROTO_MODEL="$m" "$bin" bench --baseline --connections "$c" --runs "$RUNS" \
            --duration "$DURATION" --warmup 1s --json >"$OUT/load-$m-$c.json"
    done
done
if [ "${MEMORY:-1}" = 1 ]; then
    for m in $MODELS; do
        wait_quiet
        echo "## memory $m, load $(cut -d' ' -f1 /proc/loadavg)"
        CREDPROXY_PROTO_MODEL="$m" "$bin" bench --memory --json >"$OUT/memory-$m.json"
    done
fi
