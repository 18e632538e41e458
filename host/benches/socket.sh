#!/usr/bin/env bash
# The socket, memory and start-up benchmarks of BENCHMARKS.md, with a
# release build. Each measurement waits until the 1-minute load average is
# below MAX_LOAD (default 1.5; other builds on a 2-core machine distort
# everything), giving up after WAIT_LIMIT seconds (default 1800) and then
# running anyway, with the load printed next to every result.
#
#   host/benches/socket.sh            # everything
#   host/benches/socket.sh load       # only the load runs (1 and 8 connections)
#   host/benches/socket.sh memory     # only --memory
#   host/benches/socket.sh startup    # only --startup
#
# RUNS (default 5), DURATION (5s) and WARMUP (1s) tune the load runs;
# JSON=1 prints JSON instead of tables.
set -euo pipefail
cd "$(dirname "$0")/../.."

MAX_LOAD="${MAX_LOAD:-1.5}"
WAIT_LIMIT="${WAIT_LIMIT:-1800}"
RUNS="${RUNS:-5}"
DURATION="${DURATION:-5s}"
WARMUP="${WARMUP:-1s}"
what="${1:-all}"
fmt=()
if [ "${JSON:-0}" = "1" ]; then fmt=(--json); fi

cargo build --release -p credproxy
bin="${CARGO_TARGET_DIR:-target}/release/credproxy"

wait_quiet() {
    local waited=0
    while awk -v max="$MAX_LOAD" '{ exit !($1 >= max) }' /proc/loadavg; do
        if [ "$waited" -ge "$WAIT_LIMIT" ]; then
            echo "# load still $(cut -d' ' -f1-3 /proc/loadavg) after ${WAIT_LIMIT}s: running anyway" >&2
            return
        fi
        sleep 15
        waited=$((waited + 15))
    done
}

if [ "$what" = all ] || [ "$what" = load ]; then
    for c in 1 8; do
        wait_quiet
        echo "## get_token, depth 1, $c connection(s), ours vs echo baseline"
        "$bin" bench --baseline --connections "$c" --depth 1 --runs "$RUNS" \
            --duration "$DURATION" --warmup "$WARMUP" "${fmt[@]}"
    done
fi
if [ "$what" = all ] || [ "$what" = memory ]; then
    wait_quiet
    echo "## memory: 10 000 idle connections, 256 OAuth sessions"
    "$bin" bench --memory --idle-connections 10000 --sessions 256 "${fmt[@]}"
fi
if [ "$what" = all ] || [ "$what" = startup ]; then
    wait_quiet
    echo "## start-up: spawn to first handshake, 20 runs"
    "$bin" bench --startup --runs 20 "${fmt[@]}"
fi
