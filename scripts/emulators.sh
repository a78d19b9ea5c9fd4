#!/usr/bin/env bash
# Object store emulators for the object-store adapter's live conformance tests:
# moto (S3) and gcp-storage-emulator (GCS), both on 127.0.0.1.
#
#   eval "$(./scripts/emulators.sh start)"   # install if missing, start, wait, make buckets
#   ./scripts/emulators.sh stop              # stop what `start` started
#
# `start` prints only `export` lines on stdout (progress goes to stderr):
#   JETBRIDGE_S3_ENDPOINT, JETBRIDGE_S3_BUCKET, JETBRIDGE_GCS_ENDPOINT, JETBRIDGE_GCS_BUCKET
# Emulators already answering on their ports are reused. Ports: JETBRIDGE_S3_PORT
# (default 9301), JETBRIDGE_GCS_PORT (default 9302). Logs and pid files live in
# JETBRIDGE_EMULATOR_DIR (default ${TMPDIR:-/tmp}/jetbridge-emulators).
set -euo pipefail

S3_PORT="${JETBRIDGE_S3_PORT:-9301}"
GCS_PORT="${JETBRIDGE_GCS_PORT:-9302}"
BUCKET="${JETBRIDGE_EMULATOR_BUCKET:-jetbridge-test}"
STATE="${JETBRIDGE_EMULATOR_DIR:-${TMPDIR:-/tmp}/jetbridge-emulators}"
PY="${PYTHON:-python3}"

log() { echo "emulators: $*" >&2; }

# Whether an HTTP server answers at $1 (any status counts as an answer).
answers() {
  "$PY" - "$1" <<'EOF' 2>/dev/null
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError:
    pass
except Exception:
    sys.exit(1)
EOF
}

wait_for() { # name url
  for _ in $(seq 1 60); do
    if answers "$2"; then return 0; fi
    sleep 0.5
  done
  log "$1 did not answer at $2; its log:"
  tail -n 30 "$STATE/$1.log" >&2 || true
  return 1
}

install_missing() {
  local want=()
  command -v moto_server >/dev/null 2>&1 || want+=('moto[server]')
  command -v gcp-storage-emulator >/dev/null 2>&1 || want+=('gcp-storage-emulator')
  if [ "${#want[@]}" -gt 0 ]; then
    log "installing ${want[*]} from PyPI"
    "$PY" -m pip install --quiet --disable-pip-version-check "${want[@]}" >&2
    # pyenv installs console scripts behind shims that need a rehash.
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash >/dev/null 2>&1 || true; fi
  fi
}

start_bg() { # name command...
  local name="$1"
  shift
  nohup "$@" >"$STATE/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
}

start() {
  mkdir -p "$STATE"
  install_missing
  local s3="http://127.0.0.1:$S3_PORT" gcs="http://127.0.0.1:$GCS_PORT"
  if answers "$s3/"; then
    log "reusing the S3 emulator at $s3"
  else
    log "starting moto_server on $s3"
    start_bg moto moto_server -H 127.0.0.1 -p "$S3_PORT"
  fi
  if answers "$gcs/"; then
    log "reusing the GCS emulator at $gcs"
  else
    log "starting gcp-storage-emulator on $gcs"
    start_bg gcs gcp-storage-emulator start --host 127.0.0.1 --port "$GCS_PORT" \
      --in-memory --default-bucket "$BUCKET" --quiet
  fi
  wait_for moto "$s3/"
  wait_for gcs "$gcs/"
  # Create the S3 bucket (idempotent: an existing bucket answers 409, also fine).
  "$PY" - "$s3/$BUCKET" <<'EOF' >&2
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], method="PUT")
try:
    urllib.request.urlopen(req, timeout=10)
except urllib.error.HTTPError as e:
    if e.code != 409:
        raise
EOF
  # The GCS bucket comes from --default-bucket; create it too when reusing a server.
  "$PY" - "$gcs" "$BUCKET" <<'EOF' >&2
import json, sys, urllib.request, urllib.error
base, bucket = sys.argv[1], sys.argv[2]
req = urllib.request.Request(
    f"{base}/storage/v1/b?project=test", method="POST",
    data=json.dumps({"name": bucket}).encode(), headers={"Content-Type": "application/json"})
try:
    urllib.request.urlopen(req, timeout=10)
except urllib.error.HTTPError as e:
    if e.code != 409:
        raise
EOF
  log "S3 and GCS emulators are up (bucket $BUCKET)"
  echo "export JETBRIDGE_S3_ENDPOINT=$s3"
  echo "export JETBRIDGE_S3_BUCKET=$BUCKET"
  echo "export JETBRIDGE_GCS_ENDPOINT=$gcs"
  echo "export JETBRIDGE_GCS_BUCKET=$BUCKET"
}

stop() {
  for name in moto gcs; do
    local pidfile="$STATE/$name.pid"
    if [ -f "$pidfile" ]; then
      local pid
      pid="$(cat "$pidfile")"
      if kill "$pid" 2>/dev/null; then log "stopped $name ($pid)"; fi
      rm -f "$pidfile"
    fi
  done
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *)
    echo "usage: $0 [start|stop]" >&2
    exit 2
    ;;
esac
