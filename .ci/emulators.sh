#!/usr/bin/env bash
# Object store emulator for the object-store adapter's live conformance tests: moto
# (S3) on 127.0.0.1, installed from PyPI when missing.
#
#   eval "$(./.ci/emulators.sh start)"   # install if missing, start, wait, make the bucket
#   ./.ci/emulators.sh stop              # stop what `start` started
#
# `start` prints only `export` lines on stdout (progress goes to stderr):
#   JETBRIDGE_S3_ENDPOINT, JETBRIDGE_S3_BUCKET
# A server already answering on the port is reused. Port: JETBRIDGE_S3_PORT (default
# 9301). Logs and pid files live in JETBRIDGE_EMULATOR_DIR (default
# ${TMPDIR:-/tmp}/jetbridge-emulators).
#
# There is no GCS emulator here: the object_store GCS client speaks the GCS XML API
# (HEAD, DELETE, `?list-type=2` listings, XML multipart uploads), and
# gcp-storage-emulator implements the JSON API plus plain XML GET/PUT only (it answers
# 501 to the rest, and to percent-encoded bucket names). The GCS suite runs against a
# real bucket instead: JETBRIDGE_GCS_URL=gs://bucket/prefix (see the adapter README).
set -euo pipefail

S3_PORT="${JETBRIDGE_S3_PORT:-9301}"
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
  local s3="http://127.0.0.1:$S3_PORT"
  if answers "$s3/"; then
    log "reusing the S3 emulator at $s3"
  else
    log "starting moto_server on $s3"
    start_bg moto moto_server -H 127.0.0.1 -p "$S3_PORT"
  fi
  wait_for moto "$s3/"
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
  log "the S3 emulator is up at $s3 (bucket $BUCKET)"
  echo "export JETBRIDGE_S3_ENDPOINT=$s3"
  echo "export JETBRIDGE_S3_BUCKET=$BUCKET"
}

stop() {
  for name in moto; do
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
