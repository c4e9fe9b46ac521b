#!/usr/bin/env bash
# One command for a gated load test on this machine: start geo-offers (embedded: SQLite
# and in-process state, in a temp data dir, on a free loopback port), create keys, seed
# stores and campaigns, run the SLO gate, stop the service, exit with the gate's status.
#
#   loadtest/run.sh                          # 20 users, 30 s, p95 50 ms, p99 150 ms, 1 % errors
#   USERS=50 RUN_TIME=1m STORES=5000 loadtest/run.sh -- --p99-ms 200
#
# Arguments after "--" go to `python -m loadtest.slo` (later flags win); reports land in
# loadtest/reports/<timestamp>/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
BIN=$(dirname "$PY")/geo-offers
USERS=${USERS:-20}
SPAWN_RATE=${SPAWN_RATE:-10}
RUN_TIME=${RUN_TIME:-30s}
STORES=${STORES:-1000}
P95_MS=${P95_MS:-50}
P99_MS=${P99_MS:-150}
MAX_ERROR_RATIO=${MAX_ERROR_RATIO:-0.01}
[[ ${1:-} == "--" ]] && shift

WORK=$(mktemp -d "${TMPDIR:-/tmp}/geo-offers-load.XXXXXX")
SERVER_PID=""
cleanup() {
    if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        # uvicorn drains for a moment; do not leave it behind if it hangs.
        for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Embedded mode whatever the caller's shell says: never load-test a shared database.
unset DATABASE_URL REDIS_URL GEO_OFFERS_DATABASE_URL GEO_OFFERS_REDIS_URL
export GEO_OFFERS_DATA_DIR=$WORK/data
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT

# Keys before the server starts: `keys create` migrates the fresh database itself.
ADMIN=$("$BIN" keys create --role admin --label loadtest 2>>"$WORK/cli.log")
SDK=$("$BIN" keys create --role sdk --label loadtest 2>>"$WORK/cli.log")
SERVER=$("$BIN" keys create --role server --label loadtest 2>>"$WORK/cli.log")

"$BIN" serve --host 127.0.0.1 --port "$PORT" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for i in $(seq 150); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "geo-offers exited during start-up:" >&2; tail -n 30 "$WORK/server.log" >&2; exit 2
    fi
    "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
        "$URL/readyz" 2>/dev/null && break
    [[ $i == 150 ]] && { echo "geo-offers not ready after 30 s" >&2; exit 2; }
    sleep 0.2
done
echo "geo-offers (embedded) ready at $URL, data in $GEO_OFFERS_DATA_DIR" >&2

cd "$ROOT"
# The seed file holds this run's keys; it lives and dies with the temp dir.
"$PY" -m loadtest.seed --url "$URL" --admin-key "$ADMIN" --sdk-key "$SDK" --server-key "$SERVER" \
    --stores "$STORES" --out "$WORK/seed.json" >&2

status=0
"$PY" -m loadtest.slo --host "$URL" --seed "$WORK/seed.json" \
    --users "$USERS" --spawn-rate "$SPAWN_RATE" --run-time "$RUN_TIME" \
    --p95-ms "$P95_MS" --p99-ms "$P99_MS" --max-error-ratio "$MAX_ERROR_RATIO" "$@" || status=$?
if [[ $status != 0 ]]; then
    echo "--- last lines of the service log ---" >&2
    tail -n 20 "$WORK/server.log" >&2
fi
exit "$status"
