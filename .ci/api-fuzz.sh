#!/usr/bin/env bash
# Fuzzes the HTTP API of `jetbridge server` with schemathesis against the OpenAPI
# document the server itself serves, and fails on any failure schemathesis reports.
#
#   ./.ci/api-fuzz.sh [path/to/jetbridge]   # default ${CARGO_TARGET_DIR:-target}/debug/jetbridge
#
# The server runs on free 127.0.0.1 ports with a fresh data dir and a random API
# token, all in a temp dir removed on exit. Knobs: API_FUZZ_MAX_EXAMPLES (default 50,
# per operation), API_FUZZ_TIMEOUT (seconds, default 300, a hard bound on the
# schemathesis run), API_FUZZ_SEED (replay a run with the seed it printed).
# schemathesis is installed by .ci/install-tools.sh.
set -euo pipefail

BIN="${1:-${CARGO_TARGET_DIR:-target}/debug/jetbridge}"
PY="${PYTHON:-python3}"
MAX_EXAMPLES="${API_FUZZ_MAX_EXAMPLES:-50}"
RUN_TIMEOUT="${API_FUZZ_TIMEOUT:-300}"

log() { echo "api-fuzz: $*" >&2; }

if [ ! -x "$BIN" ]; then
  log "no jetbridge binary at $BIN (build it with: cargo build -p jetbridge --locked)"
  exit 2
fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
command -v schemathesis >/dev/null 2>&1 || {
  log "schemathesis is not installed (run ./.ci/install-tools.sh)"
  exit 2
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/jetbridge-api-fuzz.XXXXXX")"
SERVER_LOG="$WORK/server.log"
SERVER_PID=""

cleanup() {
  local rc=$?
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    # A bounded wait for a graceful shutdown, then SIGKILL.
    for _ in $(seq 1 50); do
      kill -0 "$SERVER_PID" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

server_log_tail() {
  log "server log (last 60 lines):"
  tail -n 60 "$SERVER_LOG" >&2 || true
}

# Two distinct free ports (both sockets are held open while choosing).
read -r PORT MPORT < <("$PY" -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])
')
TOKEN="$("$PY" -c 'import secrets; print(secrets.token_urlsafe(32))')"
TOKENFILE="$WORK/token"
DATA="$WORK/data"
(umask 077 && printf '%s\n' "$TOKEN" >"$TOKENFILE")
mkdir -p "$DATA"
BASE="http://127.0.0.1:$PORT"

log "starting $BIN server on $BASE (metrics on 127.0.0.1:$MPORT)"
"$BIN" server \
  --listen "127.0.0.1:$PORT" \
  --metrics-listen "127.0.0.1:$MPORT" \
  --api-token-file "$TOKENFILE" \
  --data-dir "$DATA" \
  --max-queued 20 \
  >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!

# Up to ~30 s for /healthz; fail at once if the server exits.
up=""
for _ in $(seq 1 60); do
  if curl -fsS --max-time 2 "$BASE/healthz" >/dev/null 2>&1; then
    up=1
    break
  fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "the server exited before answering on $BASE/healthz"
    break
  fi
  sleep 0.5
done
if [ -z "$up" ]; then
  log "the server did not come up on $BASE/healthz"
  server_log_tail
  exit 1
fi

SCHEMA="$WORK/schema.json"
if ! curl -fsS --max-time 10 -H "Authorization: Bearer $TOKEN" \
  "$BASE/api/v1/openapi.json" -o "$SCHEMA"; then
  log "could not fetch $BASE/api/v1/openapi.json"
  server_log_tail
  exit 1
fi

# --url: the document's paths are absolute (/api/v1/..., /healthz), so the base URL
#   is just the origin.
# --exclude-path-regex: GET /api/v1/builds/{id}/events is Server-Sent Events that
#   follow a running build and never end; excluded from every phase (stateful too).
# --request-timeout: any other response that hangs is a reported error, not a stuck CI.
# --generation-database none: nothing written outside the temp dir, runs independent.
# timeout: a hard bound on the whole run.
seed_args=()
if [ -n "${API_FUZZ_SEED:-}" ]; then seed_args=(--seed "$API_FUZZ_SEED"); fi
log "running schemathesis $(schemathesis --version | awk '{print $NF}') against $BASE"
set +e
(
  cd "$WORK" &&
    timeout --signal=TERM --kill-after=15 "$RUN_TIMEOUT" \
      schemathesis run "$SCHEMA" \
      --url "$BASE" \
      -H "Authorization: Bearer $TOKEN" \
      --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
      --exclude-path-regex '^/api/v1/builds/\{[^/]+\}/events$' \
      --max-examples "$MAX_EXAMPLES" \
      --request-timeout 10 \
      --generation-database none \
      --no-color \
      "${seed_args[@]}"
)
rc=$?
set -e
if [ "$rc" -ne 0 ]; then
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    log "schemathesis did not finish within ${RUN_TIMEOUT}s"
  else
    log "schemathesis reported failures (exit $rc)"
  fi
  server_log_tail
  exit 1
fi
log "no failures"
